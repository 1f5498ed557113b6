/* cli-status.c - `backupsync status`
 *
 * Reads each agent's STATE_DIR/status, which the agent rewrites whenever
 * its state changes, and tells whether that agent still runs: a status
 * left by an agent that was killed says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "bs-config.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-status.h"
#include "cli-account.h"
#include "cli-status.h"
#include "cli-util.h"

bool cli_agent_running(const BsStatus *s) {
        char path[64], comm[32] = "";
        if (s->state == BS_SYNC_STOPPED || (kill(s->pid, 0) < 0 && errno == ESRCH))
                return false;
        snprintf(path, sizeof(path), "/proc/%ld/comm", (long) s->pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return true; /* no /proc to ask: the pid exists */
        bool ours = fgets(comm, sizeof(comm), f) && strncmp(comm, "backupsync-agen", 15) == 0;
        fclose(f);
        return ours;
}

static void format_ago(uint64_t usec, char *buf, size_t size) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t now = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
        uint64_t s = now > usec ? (now - usec) / 1000000u : 0;
        if (s < 120)
                snprintf(buf, size, "%" PRIu64 " s ago", s);
        else if (s < 7200)
                snprintf(buf, size, "%" PRIu64 " min ago", s / 60);
        else if (s < 2 * 86400)
                snprintf(buf, size, "%" PRIu64 " h ago", s / 3600);
        else
                snprintf(buf, size, "%" PRIu64 " days ago", s / 86400);
}

static void print_json(const char *name, const char *state_dir, const BsStatus *s, bool running) {
        fputs("{\"name\": ", stdout);
        cli_json_string(name);
        fputs(", \"state_dir\": ", stdout);
        cli_json_string(state_dir);
        printf(", \"running\": %s, \"state\": ", running ? "true" : "false");
        cli_json_string(running ? bs_sync_state_to_string(s->state) : "not running");
        fputs(", \"last_state\": ", stdout);
        cli_json_string(bs_sync_state_to_string(s->state));
        fputs(", \"reason\": ", stdout);
        cli_json_string(s->reason);
        fputs(", \"directory\": ", stdout);
        cli_json_string(s->dir);
        fputs(", \"server\": ", stdout);
        cli_json_string(s->server);
        fputs(", \"port\": ", stdout);
        cli_json_string(s->port);
        fputs(", \"account\": ", stdout);
        cli_json_string(s->account);
        cli_json_time("last_sync", (time_t) (s->last_sync_usec / 1000000u));
        cli_json_time("offline_since", (time_t) (s->offline_since_usec / 1000000u));
        cli_json_time("updated", (time_t) (s->updated_usec / 1000000u));
        printf(", \"pid\": %ld, \"pending\": %" PRIu64 ", \"watched\": %" PRIu64 ", \"uploaded\": %" PRIu64
               ", \"downloaded\": %" PRIu64 ", \"conflicts\": %" PRIu64 ", \"conflicts_present\": %" PRIu64
               ", \"held_deletes\": %" PRIu64,
               (long) s->pid, s->pending, s->watched, s->uploaded, s->downloaded, s->conflicts,
               s->conflicts_present, s->held_deletes);
        if (s->progress_what[0] && running) {
                fputs(", \"progress\": {\"what\": ", stdout);
                cli_json_string(s->progress_what);
                printf(", \"done\": %" PRIu64 ", \"total\": %" PRIu64 ", \"bytes\": %" PRIu64 "}", s->progress_done,
                       s->progress_total, s->progress_bytes);
        } else
                fputs(", \"progress\": null", stdout);
        putchar('}');
}

static void print_text(const char *name, const char *state_dir, const BsStatus *s, bool running) {
        char when[64], ago[64];
        printf("%s (%s)\n", name, state_dir);
        if (running) {
                printf("  state:      %s", bs_sync_state_to_string(s->state));
                if (s->state == BS_SYNC_SYNCING && s->progress_what[0] && s->progress_total)
                        printf(", %s %" PRIu64 " of %" PRIu64 " changes (%" PRIu64 "%%), %.1f MiB so far",
                               s->progress_what, s->progress_done, s->progress_total,
                               s->progress_done * 100 / s->progress_total, (double) s->progress_bytes / (1024.0 * 1024.0));
                else if (s->state == BS_SYNC_SYNCING)
                        printf(", %" PRIu64 " changes pending", s->pending);
                if (s->state == BS_SYNC_OFFLINE && s->offline_since_usec) {
                        cli_format_time((time_t) (s->offline_since_usec / 1000000u), when, sizeof(when));
                        printf(" since %s", when);
                }
                if (s->reason[0])
                        printf(": %s", s->reason);
                putchar('\n');
        } else {
                cli_format_time((time_t) (s->updated_usec / 1000000u), when, sizeof(when));
                printf("  state:      not running (%s at %s%s%s)\n",
                       s->state == BS_SYNC_STOPPED ? "stopped" : "ended without saying so; last", when,
                       s->state == BS_SYNC_STOPPED ? "" : ", ",
                       s->state == BS_SYNC_STOPPED ? "" : bs_sync_state_to_string(s->state));
        }
        printf("  directory:  %s\n", s->dir);
        printf("  server:     %s port %s, account %s\n", s->server, s->port, s->account[0] ? s->account : "(none yet)");
        cli_format_time((time_t) (s->last_sync_usec / 1000000u), when, sizeof(when));
        if (s->last_sync_usec) {
                format_ago(s->last_sync_usec, ago, sizeof(ago));
                printf("  last sync:  %s (%s)\n", when, ago);
        } else
                printf("  last sync:  never\n");
        printf("  pending:    %" PRIu64 " changes\n", s->pending);
        printf("  watching:   %" PRIu64 " directories\n", s->watched);
        printf("  transfers:  %" PRIu64 " uploaded, %" PRIu64 " downloaded, %" PRIu64 " conflict copies made\n",
               s->uploaded, s->downloaded, s->conflicts);
        if (s->conflicts_present)
                printf("  conflicts:  %" PRIu64 " conflict cop%s in the directory to look at\n", s->conflicts_present,
                       s->conflicts_present == 1 ? "y" : "ies");
}

/* One agent; returns an exit status. */
int cli_status_read(const char *state_dir, BsStatus *s) {
        int fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int r = fd < 0 ? -errno : bs_status_read(fd, s);
        if (fd >= 0)
                close(fd);
        return r;
}

static int show(const char *state_dir, bool json, bool *first) {
        BsStatus s;
        const char *slash = strrchr(state_dir, '/');
        const char *name = slash && slash[1] ? slash + 1 : state_dir;
        int r = cli_status_read(state_dir, &s);
        if (r == -ENOENT) {
                fprintf(stderr, "backupsync: %s: no agent status here (no agent has run with this state directory)\n",
                        state_dir);
                return EX_NOINPUT;
        }
        if (r < 0) {
                fprintf(stderr, "backupsync: %s/" BS_STATUS_FILE ": %s\n", state_dir,
                        r == -EBADMSG ? "not a status file" : strerror(-r));
                return r == -EBADMSG ? EX_DATAERR : EX_NOINPUT;
        }
        bool running = cli_agent_running(&s);
        if (json) {
                fputs(*first ? "[" : ",\n ", stdout);
                print_json(name, state_dir, &s, running);
        } else {
                if (!*first)
                        putchar('\n');
                print_text(name, state_dir, &s, running);
        }
        *first = false;
        return EX_OK;
}

/* A configured instance whose agent never ran: no state to read. */
static void show_never(const char *name, const char *state_dir, bool json, bool *first) {
        if (json) {
                fputs(*first ? "[" : ",\n ", stdout);
                fputs("{\"name\": ", stdout);
                cli_json_string(name);
                fputs(", \"state_dir\": ", stdout);
                cli_json_string(state_dir);
                fputs(", \"running\": false, \"state\": \"never run\"}", stdout);
        } else {
                if (!*first)
                        putchar('\n');
                printf("%s (%s)\n  state:      never run (configured in [agent:%s]; start it with\n"
                       "              systemctl --user enable --now backupsync-agent@%s)\n",
                       name, state_dir, name, name);
        }
        *first = false;
}

static int cmp_str(const void *x, const void *y) {
        return strcmp(*(char *const *) x, *(char *const *) y);
}

static void free_strv(char **v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

/* Every agent of this user: each configured [agent:NAME] and each state
 * directory under the common base that holds a status file. */
static int status_all(const char *system_file, bool json, bool *first) {
        _cleanup_(freep) char *base = bs_state_base(), *user_file = NULL;
        char **names = NULL, **found = NULL;
        size_t n_names = 0, n_found = 0;
        int ret = EX_OK;

        if (!base) {
                fprintf(stderr, "backupsync: neither XDG_STATE_HOME nor HOME is set; use --state-dir\n");
                return EX_USAGE;
        }
        if (bs_config_agent_instances(system_file, &names, &n_names) < 0 ||
            (bs_config_user_file(&user_file) == 0 && bs_config_agent_instances(user_file, &names, &n_names) < 0)) {
                free_strv(names, n_names);
                return EX_OSERR;
        }
        if (n_names)
                qsort(names, n_names, sizeof(*names), cmp_str);
        cli_find_agents(base, &found, &n_found);
        if (n_names == 0 && n_found == 0) {
                fprintf(stderr, "backupsync: no agent is configured or has run for this user (no [agent:NAME] in %s%s%s, "
                                "nothing in %s)\n", system_file, user_file ? " or " : "", user_file ?: "", base);
                ret = EX_NOINPUT;
        }
        for (size_t i = 0; i < n_names; i++) {
                _cleanup_(freep) char *dir = bs_state_dir_for_instance(names[i]);
                int r = EX_OK;
                if (!dir)
                        continue;
                for (size_t k = 0; k < n_found; k++)
                        if (found[k] && strcmp(found[k], dir) == 0) {
                                free(found[k]);
                                found[k] = NULL;
                        }
                if (faccessat(AT_FDCWD, dir, F_OK, 0) == 0 && (r = show(dir, json, first)) != EX_NOINPUT)
                        ret = ret == EX_OK ? r : ret;
                else
                        show_never(names[i], dir, json, first);
        }
        for (size_t k = 0; k < n_found; k++)
                if (found[k]) {
                        int r = show(found[k], json, first);
                        ret = ret == EX_OK ? r : ret;
                }
        free_strv(names, n_names);
        free_strv(found, n_found);
        return ret;
}

int cli_status(char *const *state_dirs, size_t n, const char *system_file, bool json) {
        bool first = true;
        int ret = EX_OK;
        if (n > 0)
                for (size_t i = 0; i < n; i++) {
                        int r = show(state_dirs[i], json, &first);
                        ret = ret == EX_OK ? r : ret;
                }
        else
                ret = status_all(system_file, json, &first);
        if (json)
                puts(first ? "[]" : "]");
        return ret;
}
