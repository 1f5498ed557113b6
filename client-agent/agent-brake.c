/* agent-brake.c - the brake on mass deletions
 *
 * A round whose plan would delete more than max-delete allows (default:
 * more than 100 files and more than half of the files synced) sends
 * everything else and holds the deletions: a wrong mount, a script gone
 * astray or a sync tool's "mirror" of an empty directory must not empty
 * the account on every computer. Held paths keep their manifest entries,
 * so each later round with changes, and every start, plans them again.
 * While some are held, every deletion waits with them. They go once
 * `backupsync confirm-deletes` left the number it let go in
 * STATE_DIR/confirm-deletes; the hold ends by itself when none is left
 * (the files came back, another computer changed or deleted them, they
 * became ignored).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent-brake.h"
#include "agent-state.h"
#include "bs-log.h"
#include "bs-status.h"

/* Deletions of rounds less than this apart are one burst. */
#define BRAKE_BURST_GAP_USEC (2ULL * 1000000)
/* A burst of more files than this waits until no more come for BRAKE_QUIET_USEC. */
#define BRAKE_QUIET_FILES 10
#define BRAKE_QUIET_USEC (1ULL * 1000000)

static void held_clear(Agent *a) {
        for (size_t i = 0; i < a->n_held; i++)
                free(a->held[i]);
        free(a->held);
        a->held = NULL;
        a->n_held = 0;
        a->held_files = 0;
        a->held_shown = false;
}

/* A deletion that removes a path (not one replaced by another kind). */
static bool is_removal(const Plan *p, size_t i) {
        return p->ops[i].type == BS_MSG_DELETE && !(i + 1 < p->n && strcmp(p->ops[i + 1].path, p->ops[i].path) == 0);
}

/* The number `backupsync confirm-deletes` left; -ENOENT without one. */
static int confirmed(Agent *a, uint64_t *ret) {
        char line[32], *end;
        int fd = agent_state_dir_fd(a);
        int r = fd < 0 ? fd : bs_line_file_read(fd, BS_CONFIRM_DELETES_FILE, line, sizeof(line));
        if (r == -ENOENT || fd < 0)
                return r;
        /* Taken once, whatever it says. */
        (void) unlinkat(fd, BS_CONFIRM_DELETES_FILE, 0);
        if (r < 0)
                line[0] = 0;
        errno = 0;
        unsigned long long v = line[0] >= '0' && line[0] <= '9' ? strtoull(line, &end, 10) : 0;
        if (errno || line[0] < '0' || line[0] > '9' || *end) {
                log_warning("%s/" BS_CONFIRM_DELETES_FILE " holds '%s', not a number; ignored", a->cfg.state_dir, line);
                return -EBADMSG;
        }
        *ret = v;
        return 0;
}

bool brake_confirm_waiting(Agent *a) {
        int fd = agent_state_dir_fd(a);
        return a->held_shown && fd >= 0 && faccessat(fd, BS_CONFIRM_DELETES_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

uint64_t brake_due(const Agent *a) {
        return a->n_held > 0 && !a->held_shown ? a->defer_usec + BRAKE_QUIET_USEC : 0;
}

void brake_review(Agent *a) {
        /* A held deletion of a directory stands for all below it: a pull
         * may have made the directory again meanwhile. */
        for (size_t i = 0; i < a->n_held; i++)
                agent_mark_dirty(a, a->held[i], true);
}

static bool keep_unmarked(const PushOp *op, void *userdata) {
        return !op->skipped;
}

/* "more than 100 files and more than 50 % of the 180 synced" */
static void describe(const BsDeleteLimit *l, uint64_t total, char *buf, size_t size) {
        if (l->percent == 0)
                snprintf(buf, size, "more than %" PRIu64 " files", l->files);
        else if (l->files == 0)
                snprintf(buf, size, "more than %u%% of the %" PRIu64 " files synced", l->percent, total);
        else
                snprintf(buf, size, "more than %" PRIu64 " files and more than %u%% of the %" PRIu64 " synced",
                         l->files, l->percent, total);
}

/* Take the plan's removals out into the held list. */
static int take_removals(Agent *a, Plan *p, size_t k) {
        char **v = calloc(k, sizeof(*v));
        if (!v)
                return -ENOMEM;
        size_t j = 0;
        for (size_t i = 0; i < p->n; i++) {
                if (!is_removal(p, i))
                        continue;
                if (!(v[j++] = strdup(p->ops[i].path))) {
                        for (size_t x = 0; x < j; x++)
                                free(v[x]);
                        free(v);
                        return -ENOMEM;
                }
                p->ops[i].skipped = true; /* not sent yet: a mark for plan_filter() */
        }
        for (size_t i = 0; i < a->n_held; i++)
                free(a->held[i]);
        free(a->held);
        a->held = v;
        a->n_held = k;
        plan_filter(p, keep_unmarked, NULL);
        return 0;
}

int brake_apply(Agent *a, Plan *p) {
        uint64_t n = 0, yes = 0, now = now_usec();
        size_t k = 0;
        char limit[200];
        int r;

        for (size_t i = 0; i < p->n; i++)
                if (is_removal(p, i)) {
                        int64_t c = manifest_count_files(a->state, p->ops[i].path);
                        if (c < 0)
                                return (int) c;
                        n += (uint64_t) c;
                        k++;
                }
        if (a->held_shown) {
                /* Once held, deletions wait until none is left: a restore
                 * under way must not let the files not yet back go as a
                 * small batch. */
                if (n == 0) {
                        log_event(LOG_NOTICE, BS_MID_DELETES_LET_GO, a->account, NULL,
                                  "deletions no longer held: the %" PRIu64 " files are back, or were changed "
                                  "or deleted by another computer", a->held_files);
                        held_clear(a);
                        return 0;
                }
                snprintf(limit, sizeof(limit), "%" PRIu64 " were held before", a->held_files);
        } else {
                if (n == 0) {
                        held_clear(a); /* what waited for a quiet moment is back */
                        return 0;
                }
                /* The deletions of rounds close together count as one. */
                if (now - a->burst_usec > BRAKE_BURST_GAP_USEC)
                        a->burst_deleted = 0;
                uint64_t all = a->burst_deleted + n;
                int64_t left = all > a->cfg.max_delete.files ? manifest_count_files(a->state, "") : 0;
                if (left < 0)
                        return (int) left;
                bool over = bs_delete_limit_exceeded(&a->cfg.max_delete, all, (uint64_t) left + a->burst_deleted);
                /* More than a few wait until no more come for a moment,
                 * unsaid: rm -rf reaches us in several rounds, and the
                 * limit, like what the hold says, is for all of them. */
                if ((over || all > BRAKE_QUIET_FILES) && !a->cfg.once && !a->cfg.max_delete.off) {
                        if (a->n_held == 0 || n > a->held_files)
                                a->defer_usec = now;
                        if (now - a->defer_usec < BRAKE_QUIET_USEC) {
                                r = take_removals(a, p, k);
                                if (r < 0)
                                        return r;
                                a->held_files = n;
                                return 1; /* brake_due() tells the loop when to look again */
                        }
                }
                if (!over) {
                        held_clear(a);
                        a->burst_deleted = all;
                        a->burst_usec = now;
                        return 0;
                }
                describe(&a->cfg.max_delete, (uint64_t) left + a->burst_deleted, limit, sizeof(limit));
                if (a->burst_deleted > 0) {
                        size_t w = strlen(limit);
                        snprintf(limit + w, sizeof(limit) - w, "; %" PRIu64 " deleted just before went",
                                 a->burst_deleted);
                }
        }
        r = confirmed(a, &yes);
        if (r == 0 && yes >= n) {
                log_event(LOG_NOTICE, BS_MID_DELETES_LET_GO, a->account, NULL,
                          "deleting %" PRIu64 " files on the server as confirmed with backupsync confirm-deletes", n);
                held_clear(a);
                a->burst_deleted = 0;
                return 0;
        }
        if (r == 0)
                log_warning("backupsync confirm-deletes let %" PRIu64 " deletions go, but %" PRIu64
                            " are held now; nothing deleted, confirm again", yes, n);

        /* Hold: the removals leave the plan; the rest goes. Said once for
         * what comes in one go, again for more later. */
        bool news = !a->held_shown || (n > a->held_files && now - a->held_logged_usec > BRAKE_BURST_GAP_USEC);
        r = take_removals(a, p, k);
        if (r < 0)
                return r;
        a->held_files = n;
        a->held_shown = true;
        if (news) {
                a->held_logged_usec = now;
                log_event(LOG_WARNING, BS_MID_DELETES_HELD, a->account, k == 1 ? a->held[0] : NULL,
                          "holding the deletion of %" PRIu64 " files (%s, max-delete): they stay on the server "
                          "and the other computers. If you meant it, run 'backupsync confirm-deletes'; "
                          "if not, bring them back (backupsync restore --at -10m PATH)",
                          n, limit);
        }
        return 1;
}
