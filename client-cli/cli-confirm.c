/* cli-confirm.c - `backupsync confirm-deletes`: let held deletions go
 *
 * An agent holds a round's deletions past max-delete and says how many in
 * its status file. This command writes that number to
 * STATE_DIR/confirm-deletes, where the agent's next round finds it, and
 * waits for the agent's answer. The number keeps the answer exact:
 * deletions made after the user looked are not let go with it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "bs-config.h"
#include "bs-macro.h"
#include "bs-status.h"
#include "cli-account.h"
#include "cli-confirm.h"
#include "cli-status.h"

/* Long enough for an agent's round at the default poll interval (5 s). */
#define CONFIRM_WAIT_MS 20000

/* Leave the answer for the agent of dir, then wait for it to act. */
static int confirm_one(const char *dir, const BsStatus *s) {
        char line[32];
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        snprintf(line, sizeof(line), "%" PRIu64, s->held_deletes);
        int r = fd < 0 ? -errno : bs_line_file_write(fd, BS_CONFIRM_DELETES_FILE, line);
        if (r < 0) {
                fprintf(stderr, "backupsync: %s/" BS_CONFIRM_DELETES_FILE ": %s\n", dir, strerror(-r));
                if (fd >= 0)
                        close(fd);
                return EX_CANTCREAT;
        }
        if (!cli_agent_running(s)) {
                close(fd);
                printf("%s: the agent is not running; it deletes the %" PRIu64 " files when it starts, if no "
                       "more than those are missing then\n", dir, s->held_deletes);
                return EX_OK;
        }
        /* The agent takes the file when it decides; the first status it
         * writes after that says what it decided. */
        uint64_t gone_usec = 0;
        for (int waited = 0; waited < CONFIRM_WAIT_MS; waited += 100) {
                BsStatus now;
                struct timespec ts;
                (void) nanosleep(&(struct timespec) { .tv_nsec = 100 * 1000 * 1000 }, NULL);
                if (!gone_usec) {
                        if (faccessat(fd, BS_CONFIRM_DELETES_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                                continue;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        gone_usec = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
                }
                if (cli_status_read(dir, &now) < 0 || now.updated_usec < gone_usec)
                        continue;
                close(fd);
                if (now.held_deletes > 0) {
                        fprintf(stderr, "backupsync: %s: %" PRIu64 " deletions are held now, not the %" PRIu64
                                        " you let go; nothing was deleted. Look again (backupsync status) and "
                                        "confirm again\n", dir, now.held_deletes, s->held_deletes);
                        return EX_TEMPFAIL;
                }
                printf("%s: deleted %" PRIu64 " files on the server\n", dir, s->held_deletes);
                return EX_OK;
        }
        close(fd);
        printf("%s: the agent has not answered yet; it deletes the %" PRIu64 " files at its next round\n", dir,
               s->held_deletes);
        return EX_OK;
}

int cli_confirm_deletes(char *const *state_dirs, size_t n) {
        _cleanup_(freep) char *base = NULL;
        char **found = NULL;
        size_t n_found = 0, n_holding = 0;
        const char *holding = NULL;
        BsStatus s, hs;
        int ret = EX_OK;

        if (n > 0) {
                for (size_t i = 0; i < n; i++) {
                        int r = cli_status_read(state_dirs[i], &s);
                        if (r < 0) {
                                fprintf(stderr, "backupsync: %s: %s\n", state_dirs[i],
                                        r == -ENOENT ? "no agent has run with this state directory"
                                                     : strerror(-r));
                                ret = ret == EX_OK ? EX_NOINPUT : ret;
                        } else if (s.held_deletes == 0) {
                                fprintf(stderr, "backupsync: %s: no deletions are held\n", state_dirs[i]);
                                ret = ret == EX_OK ? EX_NOINPUT : ret;
                        } else {
                                int k = confirm_one(state_dirs[i], &s);
                                ret = ret == EX_OK ? k : ret;
                        }
                }
                return ret;
        }
        base = bs_state_base();
        if (!base) {
                fprintf(stderr, "backupsync: neither XDG_STATE_HOME nor HOME is set; use --state-dir\n");
                return EX_USAGE;
        }
        cli_find_agents(base, &found, &n_found);
        for (size_t i = 0; i < n_found; i++)
                if (cli_status_read(found[i], &s) == 0 && s.held_deletes > 0 && n_holding++ == 0) {
                        holding = found[i];
                        hs = s;
                }
        if (n_holding == 0) {
                fprintf(stderr, "backupsync: no agent of this user holds deletions\n");
                ret = EX_NOINPUT;
        } else if (n_holding > 1) {
                fprintf(stderr, "backupsync: %zu agents hold deletions; choose one with --instance NAME or "
                                "--state-dir DIR:\n", n_holding);
                for (size_t i = 0; i < n_found; i++)
                        if (cli_status_read(found[i], &s) == 0 && s.held_deletes > 0)
                                fprintf(stderr, "  %s: %" PRIu64 " deletions held\n", found[i], s.held_deletes);
                ret = EX_USAGE;
        } else
                ret = confirm_one(holding, &hs);
        for (size_t i = 0; i < n_found; i++)
                free(found[i]);
        free(found);
        return ret;
}
