/* agent-loop.c - backupsync-agent's event loop: watcher, timers, signals, rounds
 *
 * Every event source lives here. A round (agent-round.c) runs to its end
 * without calling back; afterwards run_round() looks at what it left
 * (a dropped connection, settling files, failed changes, a reason to
 * stop) and arms the timers for it.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "agent-brake.h"
#include "agent-conflict.h"
#include "agent-local.h"
#include "agent-loop.h"
#include "agent-round.h"
#include "agent-session.h"
#include "agent.h"
#include "bs-config.h"
#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"

/* Reconnect delay: 1 s doubling to 30 s. The poll timer and local changes
 * also try to connect (see on_coalesce()), so a server back after a
 * restart is found within seconds; the cap only bounds an idle agent. */
#define BACKOFF_MIN_USEC (1 * 1000000ULL)
#define BACKOFF_MAX_USEC (30 * 1000000ULL)
/* Changes the server could not store (disk full): 1 s doubling to 60 s,
 * so a full disk costs a few uploads a minute, not one every round. */
#define FAILED_BACKOFF_MIN_USEC (1 * 1000000ULL)
#define FAILED_BACKOFF_MAX_USEC (60 * 1000000ULL)
/* Quiet after the last local event before a round starts (see schedule_round()). */
#define COALESCE_QUIET_USEC 3000ULL

static void arm_timer(Agent *a, sd_event_source *s, uint64_t usec) {
        uint64_t now;
        sd_event_now(a->event, CLOCK_MONOTONIC, &now);
        sd_event_source_set_time(s, now + usec);
        sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static bool timer_enabled(sd_event_source *s) {
        int enabled = SD_EVENT_OFF;
        return s && sd_event_source_get_enabled(s, &enabled) >= 0 && enabled != SD_EVENT_OFF;
}

/* Make the retry timer fire no later than when (CLOCK_MONOTONIC). */
static void retry_by(Agent *a, uint64_t when) {
        uint64_t t;
        if (timer_enabled(a->retry_timer) && sd_event_source_get_time(a->retry_timer, &t) >= 0 && t <= when)
                return;
        sd_event_source_set_time(a->retry_timer, when);
        sd_event_source_set_enabled(a->retry_timer, SD_EVENT_ONESHOT);
}

/* After a round: changes the server refused for lack of space (or an I/O
 * error) wait on their own timer, with a delay that doubles at each
 * failure and starts over once nothing is failing. */
static void schedule_failed(Agent *a) {
        if (a->n_failed == 0) {
                a->failed_backoff_usec = 0;
                sd_event_source_set_enabled(a->failed_timer, SD_EVENT_OFF);
                return;
        }
        if (timer_enabled(a->failed_timer))
                return;
        a->failed_backoff_usec = a->failed_backoff_usec ? MIN(a->failed_backoff_usec * 2, FAILED_BACKOFF_MAX_USEC)
                                                        : FAILED_BACKOFF_MIN_USEC;
        log_warning("%zu changes could not be stored on the server; retrying in %llus", a->n_failed,
                    (unsigned long long) (a->failed_backoff_usec / 1000000u));
        arm_timer(a, a->failed_timer, a->failed_backoff_usec);
}

/* A round starts once local events pause for COALESCE_QUIET_USEC, so a
 * saved file leaves within a few milliseconds, but no later than
 * coalesce_usec after the first of them, so a long burst is sent in
 * rounds as it goes. */
static void schedule_round(Agent *a) {
        uint64_t now;
        if (!a->coalesce_timer)
                return;
        sd_event_now(a->event, CLOCK_MONOTONIC, &now);
        if (!timer_enabled(a->coalesce_timer))
                a->coalesce_first_usec = now;
        sd_event_source_set_time(a->coalesce_timer,
                                 MIN(now + COALESCE_QUIET_USEC, a->coalesce_first_usec + a->cfg.coalesce_usec));
        sd_event_source_set_enabled(a->coalesce_timer, SD_EVENT_ONESHOT);
}

void agent_ignore_changed(Agent *a, const char *path) {
        char dir[BS_PATH_MAX + 1];
        if (!ignore_is_file(path, dir) || ignore_set_reload(a->ignore, a->rootfd, dir) <= 0)
                return;
        /* What the patterns now say, everywhere: paths no longer ignored
         * are synced like offline changes, both ways. */
        log_info("%s changed: looking at the whole tree again", path);
        watcher_drop_ignored(a->watcher);
        watcher_add_tree(a->watcher, "");
        a->rescan_all = true;
        a->need_snapshot = true;
}

static void on_dirty(void *userdata, const char *path, bool recursive) {
        Agent *a = userdata;
        log_debug("event: %s%s", path, recursive ? " (and below)" : "");
        agent_ignore_changed(a, path);
        agent_closed(a, path, recursive);
        schedule_round(a);
}

static bool on_ignored(void *userdata, const char *path) {
        Agent *a = userdata;
        return ignore_set_path(a->ignore, a->rootfd, path, true);
}

/* Files waiting to settle need the settle timer. */
static void arm_settle(Agent *a) {
        uint64_t next;
        if (a->n_settling == 0 || timer_enabled(a->settle_timer))
                return;
        uint64_t now;
        sd_event_now(a->event, CLOCK_MONOTONIC, &now);
        if (agent_settle_due(a, now, &next))
                schedule_round(a);
        if (next != UINT64_MAX) {
                sd_event_source_set_time(a->settle_timer, next);
                sd_event_source_set_enabled(a->settle_timer, SD_EVENT_ONESHOT);
        }
}

static void on_settle(void *userdata, const char *path) {
        Agent *a = userdata;
        log_debug("event: %s is being written", path);
        agent_settle(a, path);
        arm_settle(a);
}

static int on_settle_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        uint64_t next;
        if (agent_settle_due(a, usec, &next))
                schedule_round(a);
        if (next != UINT64_MAX) {
                sd_event_source_set_time(s, next);
                sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        }
        return 0;
}

/* Deletions waiting for the end of a burst are looked at once it ended. */
static void arm_brake(Agent *a) {
        uint64_t due = brake_due(a);
        if (due == 0) {
                (void) sd_event_source_set_enabled(a->brake_timer, SD_EVENT_OFF);
                return;
        }
        (void) sd_event_source_set_time(a->brake_timer, due);
        (void) sd_event_source_set_enabled(a->brake_timer, SD_EVENT_ONESHOT);
}

static int on_brake_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        brake_review(a);
        schedule_round(a);
        return 0;
}

static void on_move(void *userdata, const char *from, const char *to, bool is_dir) {
        Agent *a = userdata;
        log_debug("event: %s moved to %s", from, to);
        agent_mark_moved(a, from, to, is_dir);
        schedule_round(a);
}

static void on_exchange(void *userdata, const char *x, const char *y) {
        Agent *a = userdata;
        log_debug("event: %s and %s exchanged", x, y);
        agent_mark_exchanged(a, x, y);
        schedule_round(a);
}

/* A pass brought forward costs at most 1/VERIFY_SOON_SHARE of the time,
 * and comes at most once a minute. */
#define VERIFY_SOON_SHARE 60
#define VERIFY_SOON_MIN_USEC (60 * 1000000ULL)

/* Bring the verification pass forward (unless switched off). */
static void verify_soon(Agent *a) {
        uint64_t now, at, cur;
        if (!a->cfg.verify_usec || sd_event_now(a->event, CLOCK_MONOTONIC, &now) < 0 ||
            sd_event_source_get_time(a->verify_timer, &cur) < 0)
                return;
        at = now;
        if (a->verify_last_usec)
                at = MAX(at, a->verify_last_usec + MAX(VERIFY_SOON_MIN_USEC, VERIFY_SOON_SHARE * a->verify_cost_usec));
        if (at < cur) {
                log_debug("verification pass brought forward by %llu s", (unsigned long long) ((cur - at) / 1000000u));
                (void) sd_event_source_set_time(a->verify_timer, at);
        }
}

static void on_removed_written(void *userdata, const char *path) {
        Agent *a = userdata;
        log_debug("event: %s written after its name was removed", path);
        /* Its other names unknown: made and removed while events waited
         * (the agent busy, stopped or suspended). */
        if (!local_removed_written(a, path))
                a->verify_wanted = true;
        schedule_round(a);
}

static void on_rescan(void *userdata, const char *reason) {
        Agent *a = userdata;
        log_event(LOG_WARNING, BS_MID_RESCAN, a->account, NULL, "%s; rescanning %s", reason, a->cfg.dir);
        watcher_add_tree(a->watcher, "");
        a->rescan_all = true;
        schedule_round(a);
}

static void on_root_gone(void *userdata) {
        Agent *a = userdata;
        if (a->root_gone)
                return;
        a->root_gone = true;
        a->paused = true;
        log_error("%s was removed, moved or unmounted; syncing is paused until it is back", a->cfg.dir);
        agent_update_status(a);
}

static const WatcherOps watcher_ops = {
        .dirty = on_dirty,
        .settle = on_settle,
        .move = on_move,
        .exchange = on_exchange,
        .removed_written = on_removed_written,
        .rescan = on_rescan,
        .root_gone = on_root_gone,
        .ignored = on_ignored,
};

static void report_watch_limit(Agent *a) {
        const char *const *list;
        size_t n = watcher_unwatched(a->watcher, &list);
        if (n == 0)
                return;
        FILE *f = fopen("/proc/sys/fs/inotify/max_user_watches", "re");
        unsigned long limit = 0;
        if (f) {
                if (fscanf(f, "%lu", &limit) != 1)
                        limit = 0;
                fclose(f);
        }
        log_event(LOG_ERR, BS_MID_WATCH_LIMIT, a->account, NULL,
                  "inotify watch limit reached (fs.inotify.max_user_watches=%lu): %zu directories are not watched "
                  "and are rescanned every poll interval instead; raise it with "
                  "'sysctl fs.inotify.max_user_watches=%lu'",
                  limit, n, limit ? limit * 4 : 524288);
}

static int open_root(Agent *a) {
        int fd = open(a->cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (a->rootfd >= 0)
                close(a->rootfd);
        a->rootfd = fd;
        if (a->downloads_fd >= 0)
                close(a->downloads_fd);
        a->downloads_fd = -1;
        /* Leftovers of an interrupted download. */
        BsDirent *v;
        size_t n;
        if (bs_dir_list(fd, &v, &n) == 0) {
                for (size_t i = 0; i < n; i++)
                        if (bs_path_is_temp(v[i].name))
                                (void) bs_rm_rf_at(fd, v[i].name);
                bs_dir_list_free(v, n);
        }
        return 0;
}

static int watch_root(Agent *a) {
        watcher_reset(a->watcher);
        int r = watcher_add_tree(a->watcher, "");
        if (r == -ENOSPC)
                report_watch_limit(a);
        else if (r < 0)
                return r;
        return 0;
}

/* The watched directory came back (remounted, restored): start over. */
static bool root_back(Agent *a) {
        struct stat st;
        if (stat(a->cfg.dir, &st) < 0 || !S_ISDIR(st.st_mode))
                return false;
        if (open_root(a) < 0 || watch_root(a) < 0)
                return false;
        log_info("%s is back; comparing it with the manifest", a->cfg.dir);
        a->root_gone = false;
        a->rescan_all = true;
        return true;
}

static int on_socket(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* Once the first comparison listed every directory: how many are watched,
 * and the sysctl to raise when some could not be. */
static void report_watches(Agent *a) {
        if (a->watch_in_scan || a->watch_reported)
                return;
        a->watch_reported = true;
        log_info("watching %zu directories of %s", watcher_count(a->watcher), a->cfg.dir);
        report_watch_limit(a);
}

static void run_round(Agent *a) {
        if (a->root_gone && !root_back(a))
                return;
        int r = agent_round(a);
        report_watches(a);
        if (a->stop) {
                sd_event_exit(a->event, (int) a->stop);
                return;
        }
        arm_settle(a); /* files a round found still being written */
        /* A move the round read waits for what may follow it: only the
         * coalesce timer flushes it (on_inotify found nothing left to read). */
        if (watcher_holding(a->watcher))
                schedule_round(a);
        arm_brake(a);
        if (a->verify_wanted) {
                a->verify_wanted = false;
                verify_soon(a);
        }
        if (r < 0 && a->state_error) {
                /* Our own disk, not the server: keep the connection. */
                if (!timer_enabled(a->retry_timer)) {
                        a->backoff_usec = a->backoff_usec ? MIN(a->backoff_usec * 2, BACKOFF_MAX_USEC)
                                                          : BACKOFF_MIN_USEC;
                        arm_timer(a, a->retry_timer, a->backoff_usec);
                }
                agent_update_status(a);
                return;
        }
        if (r < 0) {
                char why[128];
                bool was_connected = a->conn;
                snprintf(why, sizeof(why), "%s", strerror(-r));
                if (a->conn)
                        agent_disconnect(a, why);
                a->socket_source = sd_event_source_disable_unref(a->socket_source);
                /* Only the retry timer's own attempts lengthen the delay: an
                 * attempt made for a local change or by the poll timer must
                 * not push the next retry further away. */
                if (!timer_enabled(a->retry_timer)) {
                        a->backoff_usec = a->backoff_usec ? MIN(a->backoff_usec * 2, BACKOFF_MAX_USEC)
                                                          : BACKOFF_MIN_USEC;
                        if (!was_connected)
                                log_warning("cannot reach %s port %s: %s; retrying in %llus", a->cfg.server,
                                            a->cfg.port, why, (unsigned long long) (a->backoff_usec / 1000000u));
                        arm_timer(a, a->retry_timer, a->backoff_usec);
                }
                agent_update_status(a);
                return;
        }
        a->backoff_usec = 0;
        sd_event_source_set_enabled(a->retry_timer, SD_EVENT_OFF);
        schedule_failed(a);
        if (!a->conn)
                a->socket_source = sd_event_source_disable_unref(a->socket_source);
        if (a->conn && !a->socket_source)
                sd_event_add_io(a->event, &a->socket_source, a->conn->fd, EPOLLIN, on_socket, a);
        if (a->socket_source)
                sd_event_source_set_description(a->socket_source, "server-connection");
        if (!a->synced_once && !a->paused) {
                a->synced_once = true;
                log_event(LOG_INFO, BS_MID_SYNCED, a->account, NULL, "%s is in sync with account %s", a->cfg.dir,
                          a->account);
        }
}

static int on_socket(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Agent *a = userdata;
        BsMsg *m = malloc(sizeof(*m));
        int r = m ? bs_conn_io(a->conn, 0) : -ENOMEM;
        while (r >= 0 && (r = bs_conn_next(a->conn, m)) > 0)
                log_debug("ignoring %s from server while idle", bs_msg_type_name(m->type));
        free(m);
        if (r < 0 && r != -ETIMEDOUT) {
                agent_disconnect(a, r == -ECONNRESET ? "server closed the connection" : strerror(-r));
                a->socket_source = sd_event_source_disable_unref(a->socket_source);
                arm_timer(a, a->retry_timer, BACKOFF_MIN_USEC);
                return 0;
        }
        /* Another computer changed something: fetch it now. */
        if (a->conn->notify_seq > a->last_seq)
                run_round(a);
        return 0;
}

static int on_inotify(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Agent *a = userdata;
        int r = watcher_process(a->watcher);
        if (r < 0)
                log_error("reading inotify events failed: %s", strerror(-r));
        /* A move waits for what may follow it; the round flushes it. */
        if (watcher_holding(a->watcher))
                schedule_round(a);
        return 0;
}

static int on_coalesce(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        /* Events the kernel has queued belong to this round too. */
        watcher_process(a->watcher);
        watcher_flush(a->watcher);
        if (!a->conn) {
                /* Disconnected: a local change is a reason to try the server
                 * now instead of at the end of a long backoff, but no more
                 * than once a second while files keep changing. */
                uint64_t now, due = a->last_connect_usec + BACKOFF_MIN_USEC;
                sd_event_now(a->event, CLOCK_MONOTONIC, &now);
                if (due > now) {
                        retry_by(a, due);
                        return 0;
                }
        }
        run_round(a);
        /* Failed changes are not counted: they wait for failed_timer, or
         * a full disk would be retried every coalesce window. */
        if (agent_busy(a) && a->conn && !a->paused)
                schedule_round(a);
        return 0;
}

static int on_poll(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        const char *const *list;
        size_t n = watcher_unwatched(a->watcher, &list);
        for (size_t i = 0; i < n; i++)
                agent_mark_dirty(a, list[i], true);
        run_round(a);
        sd_event_source_set_time(s, usec + a->cfg.poll_usec);
        return 0;
}

/* The verification pass: the whole tree compared with the manifest while
 * nothing is queued, so whatever it finds is a change no event reported
 * (agent_push() logs each). Busy or paused: again a poll interval later. */
static int on_verify(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        watcher_process(a->watcher);
        watcher_flush(a->watcher);
        if (a->paused || a->root_gone || !agent_idle(a)) {
                sd_event_source_set_time(s, usec + a->cfg.poll_usec);
                return 0;
        }
        a->verifying = true;
        a->rescan_all = true;
        a->verify_last_usec = now_usec();
        run_round(a);
        a->verifying = false;
        a->verify_cost_usec = now_usec() - a->verify_last_usec;
        sd_event_source_set_time(s, usec + a->cfg.verify_usec);
        return 0;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        run_round(userdata);
        return 0;
}

static int on_failed_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Agent *a = userdata;
        log_info("retrying %zu changes the server could not store", a->n_failed);
        agent_requeue_failed(a);
        run_round(a);
        return 0;
}

/* The name in conflict copies: --device-name or device-name=, else the host name. */
static void set_device_label(Agent *a) {
        char buf[256];
        if (a->cfg.device_name)
                snprintf(buf, sizeof(buf), "%s", a->cfg.device_name);
        else if (gethostname(buf, sizeof(buf)) < 0)
                snprintf(buf, sizeof(buf), "device");
        buf[sizeof(buf) - 1] = 0;
        conflict_device_label(buf, a->device_label, sizeof(a->device_label));
}

static bool streq_null(const char *x, const char *y) {
        return (!x && !y) || (x && y && strcmp(x, y) == 0);
}

/* Re-read [agent:NAME]; a broken file keeps the configuration in effect. */
static void reload_config(Agent *a) {
        _cleanup_(bs_agent_config_done) BsAgentConfig c;
        BsConfigError err;
        char msg[PATH_MAX + 1024], port[8];

        bs_agent_config_init(&c);
        if (!a->cfg.instance) {
                log_info("started without --instance: there is no configuration to reload");
                return;
        }
        int r = bs_config_load_agent(a->cfg.config_file, a->cfg.config_must_exist, a->cfg.user_config_file,
                                     a->cfg.instance, &c, &err);
        if (r < 0) {
                bs_config_error_format(&err, msg, sizeof(msg));
                log_error("%s; keeping the old configuration", msg);
                return;
        }
        snprintf(port, sizeof(port), "%u", c.port);
        if (!streq_null(c.server, a->cfg.server) || strcmp(port, a->cfg.port) != 0)
                log_warning("[agent:%s]: server or port changed; that needs a restart", a->cfg.instance);
        if (!streq_null(c.path, a->cfg.dir))
                log_warning("[agent:%s]: path changed; that needs a restart", a->cfg.instance);
        if (!streq_null(c.id, a->cfg.id))
                log_warning("[agent:%s]: id changed; that needs a restart", a->cfg.instance);
        if ((!a->cfg.tls_pinned && c.tls != a->cfg.tls) || !streq_null(c.server_fingerprint, a->cfg.server_fingerprint) ||
            !streq_null(c.ca_file, a->cfg.ca_file))
                log_warning("[agent:%s]: tls, server-fingerprint or ca-file changed; that needs a restart",
                            a->cfg.instance);

        if (!a->cfg.max_delete_pinned)
                a->cfg.max_delete = c.max_delete; /* the next round decides with it */
        if (!a->cfg.poll_pinned && c.poll_usec != a->cfg.poll_usec) {
                a->cfg.poll_usec = c.poll_usec;
                /* Counted from now; arm_timer() makes it one-shot, but on_poll() expects it on. */
                arm_timer(a, a->poll_timer, a->cfg.poll_usec);
                (void) sd_event_source_set_enabled(a->poll_timer, SD_EVENT_ON);
        }
        if (!a->cfg.verify_pinned && c.verify_usec != a->cfg.verify_usec) {
                a->cfg.verify_usec = c.verify_usec;
                if (c.verify_usec) {
                        arm_timer(a, a->verify_timer, c.verify_usec);
                        (void) sd_event_source_set_enabled(a->verify_timer, SD_EVENT_ON);
                } else
                        (void) sd_event_source_set_enabled(a->verify_timer, SD_EVENT_OFF);
        }
        if (!a->cfg.device_name_pinned && !streq_null(c.device_name, a->cfg.device_name)) {
                free(a->reloaded_device_name);
                a->reloaded_device_name = TAKE_PTR(c.device_name);
                a->cfg.device_name = a->reloaded_device_name;
                set_device_label(a);
        }
        if (!a->cfg.ignore_pinned) {
                /* The patterns may have changed: a new set, and everything
                 * looked at again (paths no longer ignored sync like
                 * offline changes, both ways). */
                IgnoreSet *s;
                if (ignore_set_new(c.default_ignores, c.ignore, c.n_ignore, &s) < 0)
                        log_error("out of memory; keeping the old ignore patterns");
                else {
                        ignore_set_free(a->ignore);
                        a->ignore = s;
                        watcher_drop_ignored(a->watcher);
                        watcher_add_tree(a->watcher, "");
                        a->rescan_all = true;
                        a->need_snapshot = true;
                        schedule_round(a);
                }
        }
        log_info("configuration reloaded: poll interval %llu ms, verification every %llu s, device name %s",
                 (unsigned long long) (a->cfg.poll_usec / 1000), (unsigned long long) (a->cfg.verify_usec / 1000000),
                 a->device_label);
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Agent *a = userdata;
        struct timespec ts;

        /* MONOTONIC_USEC lets Type=notify-reload match this to its SIGHUP. */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%llu",
                   (unsigned long long) ts.tv_sec * 1000000ULL + (unsigned long long) ts.tv_nsec / 1000);
        log_info("received SIGHUP, reloading the configuration");
        reload_config(a);
        sd_notify(false, "READY=1");
        agent_update_status(a);
        return 0;
}

static AgentStop load_identity(Agent *a) {
        char buf[BS_TOKEN_MAX + 64];
        BsToken t;

        if (agent_state_get_blob(a->state, "device", a->device, BS_DEVICE_LEN) < 0) {
                arc4random_buf(a->device, BS_DEVICE_LEN);
                int r = agent_state_set_blob(a->state, "device", a->device, BS_DEVICE_LEN);
                r = r ?: agent_state_flush(a->state);
                if (r < 0) {
                        log_error("cannot save the device id in %s: %s", a->cfg.state_dir, strerror(-r));
                        return AGENT_STOP_STATE;
                }
        }
        set_device_label(a);

        bool have = agent_state_get(a->state, "token", buf, sizeof(buf)) == 0 && bs_token_parse(buf, strlen(buf), &t) == 0;
        if (have)
                bs_token_format(&t, a->token);
        if (a->cfg.id) {
                BsToken given;
                if (bs_token_parse(a->cfg.id, strlen(a->cfg.id), &given) < 0) {
                        log_error("'%s' is not an account token: expected ID (4 characters A-Z, 0-9) or ID-KEY as "
                                  "printed by the first computer", a->cfg.id);
                        return AGENT_STOP_USAGE;
                }
                if (have && strcmp(given.id, t.id) != 0) {
                        log_error("state directory %s belongs to account %s, not %s; use another --state-dir",
                                  a->cfg.state_dir, t.id, given.id);
                        return AGENT_STOP_USAGE;
                }
                if (!have || (given.key[0] && strcmp(given.key, t.key) != 0))
                        bs_token_format(&given, a->token);
        }
        a->last_seq = agent_state_get_u64(a->state, "last_seq");
        return AGENT_STOP_NONE;
}

AgentStop agent_run(Agent *a) {
        AgentStop stop;
        int r;

        if (mkdir(a->cfg.state_dir, 0700) < 0 && errno != EEXIST) {
                log_error("cannot create state directory %s: %m", a->cfg.state_dir);
                return AGENT_STOP_STATE;
        }
        r = agent_state_open(a->cfg.state_dir, &a->state);
        if (r == -EBUSY) {
                log_error("state directory %s is in use by another backupsync-agent; give each agent its own "
                          "--state-dir", a->cfg.state_dir);
                return AGENT_STOP_IN_USE;
        }
        if (r < 0) {
                log_error("cannot open state in %s: %s", a->cfg.state_dir, strerror(-r));
                return AGENT_STOP_STATE;
        }
        stop = load_identity(a);
        if (stop)
                return stop;

        if (!a->token[0]) {
                struct stat st;
                if (stat(a->cfg.dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
                        log_error("%s is not a directory; to download an existing account into it, pass the "
                                  "account token as the fourth argument", a->cfg.dir);
                        return AGENT_STOP_NO_DIR;
                }
        } else if (mkdir(a->cfg.dir, 0700) < 0 && errno != EEXIST) {
                log_error("cannot create %s: %m", a->cfg.dir);
                return AGENT_STOP_NO_DIR;
        }
        r = open_root(a);
        if (r < 0) {
                log_error("cannot open %s: %s", a->cfg.dir, strerror(-r));
                return AGENT_STOP_NO_DIR;
        }

        sigset_t ss;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        sigprocmask(SIG_BLOCK, &ss, NULL);
        r = sd_event_new(&a->event);
        if (r >= 0) {
                /* WATCHDOG=1 from the loop when WatchdogSec= is set. */
                int w = sd_event_set_watchdog(a->event, true);
                r = w < 0 ? w : 0;
        }
        r = r ?: watcher_new(a->cfg.dir, &watcher_ops, a, &a->watcher);
        r = r ?: sd_event_add_signal(a->event, &a->sigterm_source, SIGTERM, NULL, NULL);
        r = r ?: sd_event_add_signal(a->event, &a->sigint_source, SIGINT, NULL, NULL);
        r = r ?: sd_event_add_signal(a->event, &a->sighup_source, SIGHUP, on_sighup, a);
        r = r ?: sd_event_add_io(a->event, &a->inotify_source, watcher_fd(a->watcher), EPOLLIN, on_inotify, a);
        r = r ?: sd_event_add_time(a->event, &a->coalesce_timer, CLOCK_MONOTONIC, 0, 1000, on_coalesce, a);
        r = r ?: sd_event_add_time_relative(a->event, &a->poll_timer, CLOCK_MONOTONIC, a->cfg.poll_usec, 100000, on_poll, a);
        r = r ?: sd_event_add_time(a->event, &a->retry_timer, CLOCK_MONOTONIC, 0, 100000, on_retry, a);
        r = r ?: sd_event_add_time(a->event, &a->failed_timer, CLOCK_MONOTONIC, 0, 100000, on_failed_retry, a);
        r = r ?: sd_event_add_time(a->event, &a->settle_timer, CLOCK_MONOTONIC, 0, 50000, on_settle_timer, a);
        r = r ?: sd_event_add_time(a->event, &a->brake_timer, CLOCK_MONOTONIC, 0, 50000, on_brake_timer, a);
        r = r ?: sd_event_add_time_relative(a->event, &a->verify_timer, CLOCK_MONOTONIC,
                                            a->cfg.verify_usec ?: UINT64_MAX / 2, 1000000, on_verify, a);
        if (r < 0) {
                log_error("cannot set up the event loop: %s", strerror(-r));
                return AGENT_STOP_SOFTWARE;
        }
        sd_event_source_set_description(a->sigterm_source, "sigterm");
        sd_event_source_set_description(a->sigint_source, "sigint");
        sd_event_source_set_description(a->sighup_source, "sighup");
        sd_event_source_set_description(a->inotify_source, "inotify");
        sd_event_source_set_description(a->coalesce_timer, "coalesce-timer");
        sd_event_source_set_description(a->poll_timer, "poll-timer");
        sd_event_source_set_description(a->retry_timer, "retry-timer");
        sd_event_source_set_description(a->failed_timer, "failed-changes-timer");
        sd_event_source_set_description(a->settle_timer, "settle-timer");
        sd_event_source_set_description(a->brake_timer, "brake-timer");
        sd_event_source_set_description(a->verify_timer, "verify-timer");
        sd_event_source_set_enabled(a->verify_timer, a->cfg.verify_usec ? SD_EVENT_ON : SD_EVENT_OFF);
        sd_event_source_set_enabled(a->settle_timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(a->brake_timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(a->coalesce_timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(a->retry_timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(a->failed_timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(a->poll_timer, SD_EVENT_ON);

        /* Watch the top, then compare: the comparison watches each
         * directory before it lists it, so a change made during the first
         * scan is seen either by the scan or by the watcher. */
        watcher_reset(a->watcher);
        r = watcher_add_dir(a->watcher, "");
        if (r < 0 && r != -ENOSPC) {
                log_error("cannot watch %s: %s", a->cfg.dir, strerror(-r));
                return AGENT_STOP_NO_DIR;
        }
        a->watch_in_scan = true;
        a->rescan_all = true;
        log_info("watching %s, state in %s", a->cfg.dir, a->cfg.state_dir);

        if (a->cfg.once) {
                for (int i = 0; i < 10; i++) {
                        agent_settle_all(a);
                        r = agent_round(a);
                        report_watches(a);
                        if (a->stop)
                                return a->stop;
                        if (r < 0 && a->state_error)
                                return AGENT_STOP_STATE;
                        if (r < 0) {
                                log_error("sync with %s port %s failed: %s", agent_server(a), a->cfg.port, strerror(-r));
                                return AGENT_STOP_UNREACHABLE;
                        }
                        if (a->paused)
                                return AGENT_STOP_TREE_GONE;
                        watcher_process(a->watcher);
                        watcher_flush(a->watcher);
                        agent_settle_all(a);
                        if (agent_idle(a) && a->held_shown) {
                                log_error("%s is not in sync: the deletion of %llu files is held (max-delete)",
                                          a->cfg.dir, (unsigned long long) a->held_files);
                                return AGENT_STOP_NOT_IN_SYNC;
                        }
                        if (agent_idle(a))
                                return AGENT_STOP_NONE;
                        /* What the server could not store will not fit a moment later either. */
                        if (!agent_busy(a))
                                break;
                }
                log_error("%s is not in sync yet: %zu changes still pending", a->cfg.dir, agent_pending(a));
                return AGENT_STOP_NOT_IN_SYNC;
        }

        run_round(a);
        if (a->stop)
                return a->stop;
        sd_notify(false, "READY=1");
        agent_update_status(a);
        r = sd_event_loop(a->event);
        sd_notify(false, "STOPPING=1");
        if (r < 0) {
                log_error("event loop failed: %s", strerror(-r));
                return AGENT_STOP_SOFTWARE;
        }
        return (AgentStop) r; /* what sd_event_exit() was given: 0 on SIGTERM */
}
