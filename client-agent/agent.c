/* agent.c - backupsync-agent: the Agent object and its queue of local changes
 *
 * What the parts of a round share: paths waiting to be sent (dirty,
 * moved, failed, settling), the status shown by systemctl, and the
 * report of a state database that cannot be written. Nothing here runs
 * the event loop or arms its timers (agent-loop.c does, after a round).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "agent-conflict.h"
#include "agent.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-status.h"

/* "a.example.org, b.example.org": the names in order, spaces around them dropped. */
static int split_servers(const char *list, char ***ret, size_t *ret_n) {
        char **v = NULL;
        size_t n = 0;
        for (const char *p = list; p && *p;) {
                p += strspn(p, " \t");
                size_t len = strcspn(p, ",");
                size_t end = len;
                while (end > 0 && (p[end - 1] == ' ' || p[end - 1] == '\t'))
                        end--;
                if (end > 0) {
                        char **nv = reallocarray(v, n + 1, sizeof(*v));
                        if (!nv || !(nv[n] = strndup(p, end))) {
                                v = nv ? nv : v;
                                for (size_t i = 0; i < n; i++)
                                        free(v[i]);
                                free(v);
                                return -ENOMEM;
                        }
                        v = nv;
                        n++;
                }
                p += len;
                if (*p == ',')
                        p++;
        }
        if (n == 0) {
                free(v);
                return -EINVAL;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

const char *agent_server(const Agent *a) {
        return a->servers[a->server_i];
}

int agent_new(const AgentConfig *cfg, Agent **ret) {
        Agent *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->cfg = *cfg;
        a->rootfd = a->downloads_fd = a->scan_fd = a->state_dir_fd = -1;
        int r = ignore_set_new(!cfg->no_default_ignores, cfg->ignore, cfg->n_ignore, &a->ignore);
        r = r ?: split_servers(cfg->server, &a->servers, &a->n_servers);
        if (r >= 0)
                (void) bs_readahead_new(&a->ra); /* else NULL: read ahead file by file */
        if (r < 0) {
                ignore_set_free(a->ignore);
                free(a);
                return r;
        }
        *ret = a;
        return 0;
}


Agent *agent_free(Agent *a) {
        if (!a)
                return NULL;
        for (size_t i = 0; i < a->n_servers; i++)
                free(a->servers[i]);
        free(a->servers);
        bs_conn_free(a->conn);
        bs_readahead_free(a->ra);
        sd_event_source_disable_unref(a->socket_source);
        sd_event_source_disable_unref(a->inotify_source);
        sd_event_source_disable_unref(a->coalesce_timer);
        sd_event_source_disable_unref(a->poll_timer);
        sd_event_source_disable_unref(a->settle_timer);
        sd_event_source_disable_unref(a->brake_timer);
        sd_event_source_disable_unref(a->verify_timer);
        sd_event_source_disable_unref(a->retry_timer);
        sd_event_source_disable_unref(a->failed_timer);
        sd_event_source_disable_unref(a->sigterm_source);
        sd_event_source_disable_unref(a->sigint_source);
        sd_event_source_disable_unref(a->sighup_source);
        sd_event_unref(a->event);
        watcher_free(a->watcher);
        agent_state_free(a->state);
        ignore_set_free(a->ignore);
        for (size_t i = 0; i < a->n_held; i++)
                free(a->held[i]);
        free(a->held);
        if (a->downloads_fd >= 0)
                close(a->downloads_fd);
        if (a->rootfd >= 0)
                close(a->rootfd);
        if (a->scan_fd >= 0)
                close(a->scan_fd);
        if (a->state_dir_fd >= 0)
                close(a->state_dir_fd);
        for (size_t i = 0; i < a->n_dirty; i++)
                free(a->dirty[i].path);
        free(a->dirty);
        for (size_t i = 0; i < a->n_settling; i++)
                free(a->settling[i].path);
        free(a->settling);
        for (size_t i = 0; i < a->n_late_modes; i++)
                free(a->late_modes[i].path);
        free(a->late_modes);
        for (size_t i = 0; i < a->n_failed; i++)
                free(a->failed[i].path);
        free(a->failed);
        for (size_t i = 0; i < a->n_refused; i++)
                free(a->refused[i].path);
        free(a->refused);
        for (size_t i = 0; i < a->n_moves; i++) {
                free(a->moves[i].from);
                free(a->moves[i].to);
        }
        free(a->moves);
        for (size_t i = 0; i < AGENT_GONE_LINKS; i++)
                free(a->gone_links[i].path);
        free(a->reloaded_device_name);
        free(a);
        return NULL;
}


static int path_list_add(DirtyPath **list, size_t *n, size_t *cap, const char *path, bool recursive) {
        if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 64;
                DirtyPath *d = realloc(*list, c * sizeof(*d));
                if (!d)
                        return -ENOMEM;
                *list = d;
                *cap = c;
        }
        char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        (*list)[(*n)++] = (DirtyPath) { .path = p, .recursive = recursive };
        return 0;
}


void agent_mark_dirty(Agent *a, const char *path, bool recursive) {
        if (path_list_add(&a->dirty, &a->n_dirty, &a->cap_dirty, path, recursive) < 0)
                a->rescan_all = true; /* cannot remember it: look at everything */
}


void agent_remember_gone_link(Agent *a, const char *path, uint64_t ino) {
        char *p = strdup(path);
        if (!p)
                return; /* a hint only: the verification pass finds what it would have */
        GoneLink *g = &a->gone_links[a->next_gone_link];
        free(g->path);
        *g = (GoneLink) { .path = p, .ino = ino };
        a->next_gone_link = (a->next_gone_link + 1) % AGENT_GONE_LINKS;
}

bool agent_gone_link(const Agent *a, const char *path, uint64_t *ino) {
        for (size_t i = 0; i < AGENT_GONE_LINKS; i++)
                if (a->gone_links[i].path && strcmp(a->gone_links[i].path, path) == 0) {
                        *ino = a->gone_links[i].ino;
                        return true;
                }
        return false;
}

int agent_mark_refused(Agent *a, const char *path) {
        return path_list_add(&a->refused, &a->n_refused, &a->cap_refused, path, false);
}

void agent_mark_failed(Agent *a, const char *path, bool recursive) {
        if (path_list_add(&a->failed, &a->n_failed, &a->cap_failed, path, recursive) < 0)
                a->rescan_all = true;
}


void agent_requeue_failed(Agent *a) {
        for (size_t i = 0; i < a->n_failed; i++) {
                agent_mark_dirty(a, a->failed[i].path, a->failed[i].recursive);
                free(a->failed[i].path);
        }
        a->n_failed = 0;
}


int agent_state_failed(Agent *a, int r) {
        if (!a->state_error)
                log_error("cannot write the state database in %s: %s; nothing is recorded or sent until it can "
                          "be, and changes wait (retried with a growing delay)", a->cfg.state_dir, strerror(-r));
        a->state_error = r;
        return r;
}


void agent_state_ok(Agent *a) {
        if (!a->state_error)
                return;
        log_info("the state database in %s can be written again; syncing resumes", a->cfg.state_dir);
        a->state_error = 0;
}


/* For `backupsync status`: the same state, in the state directory. A
 * failure only costs the command its live view; it is not logged each
 * round, only when it starts failing. */
/* The state directory's fd, opened once. */
int agent_state_dir_fd(Agent *a) {
        if (a->state_dir_fd < 0)
                a->state_dir_fd = open(a->cfg.state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        return a->state_dir_fd < 0 ? -errno : a->state_dir_fd;
}

static int count_conflict(const char *path, const ManifestEntry *e, void *userdata) {
        (void) e;
        if (conflict_is_copy(path))
                (*(uint64_t *) userdata)++;
        return 0;
}

/* The conflict copies the directory holds: the user has something to look at. */
static uint64_t conflicts_present(Agent *a) {
        uint64_t now = now_usec(), gen = a->state ? manifest_generation(a->state) : 0;
        uint64_t wait = MAX(2ULL * 1000000, 20 * a->conflicts_cost_usec);
        if (a->state && (!a->conflicts_counted ||
                         (gen != a->conflicts_generation && now - a->conflicts_counted_usec >= wait))) {
                uint64_t n = 0;
                if (manifest_conflict_candidates(a->state, count_conflict, &n) >= 0)
                        a->conflicts_present = n;
                a->conflicts_generation = gen;
                a->conflicts_counted = true;
                a->conflicts_counted_usec = now_usec();
                a->conflicts_cost_usec = a->conflicts_counted_usec - now;
        }
        return a->conflicts_present;
}

static void write_status(Agent *a, BsSyncState state) {
        BsStatus st = {
                .pid = getpid(),
                .state = state,
                .last_sync_usec = a->last_sync_usec,
                .offline_since_usec = a->offline_since_usec,
                .updated_usec = realtime_usec(),
                .pending = agent_pending(a),
                .watched = a->watcher ? watcher_count(a->watcher) : 0,
                .uploaded = a->n_uploaded,
                .downloaded = a->n_downloaded,
                .conflicts = a->n_conflicts,
                .conflicts_present = conflicts_present(a),
                .held_deletes = a->held_shown ? a->held_files : 0,
                .progress_done = a->progress_done,
                .progress_total = a->progress_total,
                .progress_bytes = a->progress_bytes,
        };
        if (a->progress_what)
                (void) strlcpy(st.progress_what, a->progress_what, sizeof(st.progress_what));
        (void) strlcpy(st.dir, a->cfg.dir, sizeof(st.dir));
        (void) strlcpy(st.server, agent_server(a), sizeof(st.server));
        (void) strlcpy(st.port, a->cfg.port, sizeof(st.port));
        (void) strlcpy(st.account, a->account, sizeof(st.account));
        if (state == BS_SYNC_PAUSED)
                (void) strlcpy(st.reason, a->root_gone ? "the directory was removed, moved or unmounted"
                                                       : "the directory is empty but was synced", sizeof(st.reason));
        else if (state == BS_SYNC_HOLDING)
                snprintf(st.reason, sizeof(st.reason),
                         "the deletion of %llu files is held (max-delete); run backupsync confirm-deletes "
                         "to let it go, or bring the files back", (unsigned long long) a->held_files);
        else if (state == BS_SYNC_ERROR)
                snprintf(st.reason, sizeof(st.reason), "the state in %s cannot be written: %s", a->cfg.state_dir,
                         strerror(-a->state_error));
        int fd = agent_state_dir_fd(a);
        int r = fd < 0 ? fd : bs_status_write(fd, &st);
        if (r < 0 && !a->status_failed)
                log_warning("cannot write %s/" BS_STATUS_FILE ": %s", a->cfg.state_dir, strerror(-r));
        a->status_failed = r < 0;
        a->status_written = true;
}

void agent_token_file(Agent *a) {
        int fd = agent_state_dir_fd(a);
        int r = fd < 0 ? fd : bs_token_file_write(fd, a->token);
        if (r < 0)
                log_warning("cannot write %s/" BS_TOKEN_FILE ": %s", a->cfg.state_dir, strerror(-r));
}

void agent_status_stopped(Agent *a) {
        /* Only ours: an agent refused the state directory (another one
         * holds it) must not say that one stopped. */
        if (a->status_written)
                write_status(a, BS_SYNC_STOPPED);
}

void agent_update_status(Agent *a) {
        /* Called between rounds: no transfer is under way. */
        a->progress_what = NULL;
        a->progress_done = a->progress_total = a->progress_bytes = 0;
        if (a->conn)
                a->offline_since_usec = 0;
        else if (!a->offline_since_usec)
                a->offline_since_usec = realtime_usec();
        size_t pending = agent_pending(a);
        write_status(a, a->paused ? BS_SYNC_PAUSED : a->state_error ? BS_SYNC_ERROR : !a->conn ? BS_SYNC_OFFLINE
                        : a->held_shown ? BS_SYNC_HOLDING : pending ? BS_SYNC_SYNCING : BS_SYNC_IN_SYNC);

        char when[32] = "never";
        if (a->last_sync_usec) {
                time_t t = (time_t) (a->last_sync_usec / 1000000u);
                struct tm tm;
                localtime_r(&t, &tm);
                strftime(when, sizeof(when), "%H:%M:%S", &tm);
        }
        char held[64] = "";
        if (a->held_shown)
                snprintf(held, sizeof(held), "%llu DELETIONS HELD (backupsync confirm-deletes) ",
                         (unsigned long long) a->held_files);
        sd_notifyf(false, "STATUS=%s%s%s%s: %zu directories watched, last sync %s, %zu changes pending, %llu uploaded, %llu downloaded%s",
                   a->paused ? "PAUSED " : "", a->state_error ? "STATE NOT WRITABLE " : "", held,
                   a->account[0] ? a->account : "(no account yet)",
                   a->watcher ? watcher_count(a->watcher) : 0, when,
                   pending,
                   (unsigned long long) a->n_uploaded, (unsigned long long) a->n_downloaded,
                   a->conn ? "" : ", not connected");
}


void agent_progress(Agent *a, const char *what, uint64_t done, uint64_t total, uint64_t bytes) {
        uint64_t now = now_usec();
        if (now - a->progress_usec < 1000000u)
                return;
        a->progress_usec = now;
        sd_notifyf(false, "WATCHDOG=1\nSTATUS=%s: %s %llu of %llu changes, %.1f MiB so far", a->account,
                   what, (unsigned long long) done, (unsigned long long) total, (double) bytes / (1024.0 * 1024.0));
        a->progress_what = what;
        a->progress_done = done;
        a->progress_total = total;
        a->progress_bytes = bytes;
        /* Progress does not hide an error that still holds. */
        write_status(a, a->state_error ? BS_SYNC_ERROR : BS_SYNC_SYNCING);
}


void agent_settle(Agent *a, const char *path) {
        uint64_t now = now_usec();
        /* Writes to a file come in runs: look only at the last few. */
        for (size_t i = a->n_settling, k = 0; i-- > 0 && k < 4; k++)
                if (strcmp(a->settling[i].path, path) == 0) {
                        a->settling[i].last_usec = now;
                        return;
                }
        if (a->n_settling == a->cap_settling) {
                size_t cap = a->cap_settling ? a->cap_settling * 2 : 16;
                SettlePath *v = reallocarray(a->settling, cap, sizeof(*v));
                if (!v) {
                        agent_mark_dirty(a, path, false);
                        return;
                }
                a->settling = v;
                a->cap_settling = cap;
        }
        char *d = strdup(path);
        if (!d) {
                agent_mark_dirty(a, path, false);
                return;
        }
        a->settling[a->n_settling++] = (SettlePath) { d, now, now };
}


bool agent_settling(const Agent *a, const char *path) {
        for (size_t i = 0; i < a->n_settling; i++)
                if (strcmp(a->settling[i].path, path) == 0)
                        return true;
        return false;
}


void agent_settle_all(Agent *a) {
        for (size_t i = 0; i < a->n_settling; i++) {
                agent_mark_dirty(a, a->settling[i].path, false);
                free(a->settling[i].path);
        }
        a->n_settling = 0;
}


bool agent_settle_due(Agent *a, uint64_t now, uint64_t *next) {
        size_t kept = 0;
        bool due = false;
        *next = UINT64_MAX;
        for (size_t i = 0; i < a->n_settling; i++) {
                SettlePath *p = &a->settling[i];
                uint64_t when = MIN(p->last_usec + SETTLE_QUIET_USEC, p->first_usec + SETTLE_MAX_USEC);
                if (when <= now) {
                        agent_mark_dirty(a, p->path, false);
                        free(p->path);
                        due = true;
                        continue;
                }
                *next = MIN(*next, when);
                a->settling[kept++] = *p;
        }
        a->n_settling = kept;
        return due;
}

void agent_closed(Agent *a, const char *path, bool recursive) {
        /* Closed after writing: the file need not settle any more. */
        if (a->n_settling > 0 && strcmp(a->settling[a->n_settling - 1].path, path) == 0)
                free(a->settling[--a->n_settling].path);
        agent_mark_dirty(a, path, recursive);
}

/* Rename *path when it is at or below from (to the same place below to). */
static void follow(char **path, const char *from, const char *to) {
        char buf[BS_PATH_MAX + 1];
        if (bs_path_under(*path, from) && bs_path_rebase(*path, from, to, buf, sizeof(buf)) == 0) {
                char *p = strdup(buf);
                if (p) {
                        free(*path);
                        *path = p;
                }
        }
}

/* Queued moves at or below path name places that change now: both ends
 * become plain changes, compared once the change at hand is sent. */
static void moves_to_dirty(Agent *a, const char *path, const char *from, const char *to) {
        size_t kept = 0;
        for (size_t i = 0; i < a->n_moves; i++) {
                MovePath *mv = &a->moves[i];
                if (bs_path_under(mv->from, path) || bs_path_under(mv->to, path)) {
                        if (from) {
                                follow(&mv->from, from, to);
                                follow(&mv->to, from, to);
                        }
                        agent_mark_dirty(a, mv->from, false);
                        agent_mark_dirty(a, mv->to, mv->is_dir);
                        free(mv->from);
                        free(mv->to);
                        continue;
                }
                a->moves[kept++] = *mv;
        }
        a->n_moves = kept;
}

/* Rename *path at or below x to below y and the other way round, through
 * a name no path has. */
static void swap(char **path, const char *x, const char *y) {
        static const char tmp[] = "\001exchange";
        follow(path, x, tmp);
        follow(path, y, x);
        follow(path, tmp, y);
}

void agent_mark_exchanged(Agent *a, const char *x, const char *y) {
        moves_to_dirty(a, x, NULL, NULL);
        moves_to_dirty(a, y, NULL, NULL);
        for (size_t i = 0; i < a->n_dirty; i++)
                swap(&a->dirty[i].path, x, y);
        for (size_t i = 0; i < a->n_failed; i++)
                swap(&a->failed[i].path, x, y);
        for (size_t i = 0; i < a->n_settling; i++)
                swap(&a->settling[i].path, x, y);
        /* Sent as what each name holds now: no MOVE says "swapped". */
        agent_mark_dirty(a, x, true);
        agent_mark_dirty(a, y, true);
}

void agent_mark_moved(Agent *a, const char *from, const char *to, bool is_dir) {
        /* Queued paths name the moved entry by its old name: follow it. */
        for (size_t i = 0; i < a->n_dirty; i++)
                follow(&a->dirty[i].path, from, to);
        for (size_t i = 0; i < a->n_failed; i++)
                follow(&a->failed[i].path, from, to);
        for (size_t i = 0; i < a->n_settling; i++)
                follow(&a->settling[i].path, from, to);
        /* A move queued inside what moves now names places the server
         * never had together (a file renamed, then its directory): send
         * both ends as plain changes, compared after this move. */
        moves_to_dirty(a, from, from, to);
        if (a->n_moves == a->cap_moves) {
                size_t cap = a->cap_moves ? a->cap_moves * 2 : 16;
                MovePath *m = reallocarray(a->moves, cap, sizeof(*m));
                if (!m) {
                        a->rescan_all = true;
                        return;
                }
                a->moves = m;
                a->cap_moves = cap;
        }
        MovePath mv = { .from = strdup(from), .to = strdup(to), .is_dir = is_dir };
        if (!mv.from || !mv.to) {
                free(mv.from);
                free(mv.to);
                a->rescan_all = true;
        } else
                a->moves[a->n_moves++] = mv;
}

bool agent_busy(const Agent *a) {
        return a->n_dirty > 0 || a->n_moves > 0 || a->rescan_all || a->again;
}

bool agent_idle(const Agent *a) {
        return !agent_busy(a) && a->n_failed == 0 && a->n_settling == 0 && !a->paused;
}
