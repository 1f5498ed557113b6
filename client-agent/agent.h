/* agent.h - backupsync-agent: the manager object and what its parts share */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>

#include "agent-conn.h"
#include "agent-state.h"
#include "agent-watch.h"
#include "bs-proto.h"
#include "bs-token.h"

/* Exit codes (sysexits.h), so systemctl status names the cause. */
#define AGENT_EXIT_OK 0
#define AGENT_EXIT_SOFTWARE 70
#define AGENT_EXIT_USAGE 64
#define AGENT_EXIT_DATAERR 65
#define AGENT_EXIT_NOINPUT 66
#define AGENT_EXIT_UNAVAILABLE 69
#define AGENT_EXIT_CANTCREAT 73
#define AGENT_EXIT_TEMPFAIL 75
#define AGENT_EXIT_PROTOCOL 76
#define AGENT_EXIT_NOPERM 77
#define AGENT_EXIT_CONFIG 78

typedef struct AgentConfig {
        char *server;
        char *port;
        char *dir;       /* absolute */
        char *state_dir;
        char *id;        /* token given on the command line, or NULL */
        char *device_name;
        uint64_t poll_usec;
        uint64_t verify_usec;   /* the verification pass; 0: none */
        uint64_t coalesce_usec; /* longest wait from a local event to its round */
        bool once;

        /* With --instance: what SIGHUP re-reads, and what the command line
         * pinned (a reload does not change those). */
        const char *instance; /* NULL: positional form, nothing to reload */
        const char *config_file;
        bool config_must_exist;
        const char *user_config_file; /* NULL: none */
        bool poll_pinned, verify_pinned, device_name_pinned;
} AgentConfig;

typedef struct DirtyPath {
        char *path;
        bool recursive;
} DirtyPath;

/* A file being written: looked at once quiet (see agent_settle()). */
typedef struct SettlePath {
        char *path;
        uint64_t first_usec, last_usec; /* CLOCK_MONOTONIC of its first and last event */
} SettlePath;

typedef struct MovePath {
        char *from;
        char *to;
        bool is_dir;
} MovePath;

/* A directory mode to set once a pull has placed what goes inside. */
typedef struct LateMode {
        char *path;
        uint32_t mode;
} LateMode;

typedef struct Agent {
        AgentConfig cfg;
        AgentState *state;
        Watcher *watcher;
        Conn *conn;
        int rootfd;
        /* While a plan is made: the directory whose entries are being
         * looked at, so each entry costs one fstatat(), not a path walk. */
        bool scanning;
        int scan_fd;
        size_t scan_len;
        char scan_dir[BS_PATH_MAX + 1];

        uint8_t device[BS_DEVICE_LEN];
        char device_label[40];
        char account[BS_ID_LEN + 1];
        char token[BS_TOKEN_MAX + 1];
        uint64_t last_seq;

        /* Local changes waiting to be pushed. */
        DirtyPath *dirty;
        size_t n_dirty, cap_dirty;
        MovePath *moves;
        size_t n_moves, cap_moves;
        SettlePath *settling;
        size_t n_settling, cap_settling;
        /* Changes the server could not store (disk full, I/O error, busy):
         * retried on failed_timer with a growing delay, not at every round. */
        DirtyPath *failed;
        size_t n_failed, cap_failed;
        LateMode *late_modes;
        size_t n_late_modes, cap_late_modes;
        bool rescan_all;
        bool verifying; /* this rescan is the verification pass: report what it finds */
        bool need_snapshot;
        bool no_delta;  /* a delta download failed: fetch whole files until the next round */
        bool again;     /* another round is needed at once */
        bool paused;    /* the watched directory is missing or was emptied */
        bool root_gone;
        int exit_code;  /* set when the agent must stop */
        int state_error; /* the state database could not be written: the failure logged, until a commit works */

        sd_event *event;
        sd_event_source *inotify_source;
        sd_event_source *coalesce_timer;
        uint64_t coalesce_first_usec; /* CLOCK_MONOTONIC of the first event the armed timer waits for */
        sd_event_source *poll_timer;
        sd_event_source *settle_timer;
        sd_event_source *verify_timer;
        sd_event_source *socket_source;
        sd_event_source *retry_timer;
        sd_event_source *failed_timer;
        sd_event_source *sigterm_source;
        sd_event_source *sigint_source;
        sd_event_source *sighup_source;
        uint64_t backoff_usec;        /* reconnect delay; 0 while connected */
        uint64_t failed_backoff_usec; /* next delay for failed changes; 0 after a success */
        uint64_t last_connect_usec;   /* CLOCK_MONOTONIC of the last connect attempt */
        char *reloaded_device_name; /* owns cfg.device_name after a reload */

        /* For the status line and the tests. */
        uint64_t n_uploaded, bytes_uploaded, n_downloaded, bytes_downloaded;
        uint64_t n_conflicts;
        uint64_t last_sync_usec;
        uint64_t progress_usec; /* last progress report within a round */
        /* A big batch logs one summary line, not a line per file: journald
         * drops messages past its rate limit (10,000 per 30 s by default),
         * and an error among them must not be lost. */
        bool quiet_files;
        bool synced_once;
        uint32_t next_req;
} Agent;

/* agent.c */
int agent_new(const AgentConfig *cfg, Agent **ret);
Agent *agent_free(Agent *a);
static inline void agent_freep(Agent **a) { if (*a) agent_free(*a); }
/** Open state, watch the tree, connect and run until told to stop. Returns an exit code. */
int agent_run(Agent *a);
void agent_mark_dirty(Agent *a, const char *path, bool recursive);
/**
 * A file is being written (modified while open, created and not yet
 * closed, or changed while it was read for upload): it becomes dirty once
 * it has had no event for a second, or ten seconds after the first, so a
 * log kept open still reaches the server within seconds.
 */
void agent_settle(Agent *a, const char *path);
/** Every settling file becomes dirty now (--once, which cannot wait). */
void agent_settle_all(Agent *a);
/** Queue a change the server could not store, for a later retry with backoff. */
void agent_mark_failed(Agent *a, const char *path, bool recursive);
void agent_update_status(Agent *a);
/**
 * A commit of the state failed and was rolled back: log it (once, until a
 * commit works again) and return r, which ends the round; it is retried
 * with a growing delay, and nothing is recorded meanwhile.
 */
int agent_state_failed(Agent *a, int r);
/** A commit worked: say so if one had failed. */
void agent_state_ok(Agent *a);
/**
 * Called from inside a long round (a first upload can take hours): keeps
 * the watchdog fed and shows "uploading 120 of 10000 changes, 1.2 GiB
 * sent" in systemctl status, at most once a second.
 */
void agent_progress(Agent *a, const char *what, uint64_t done, uint64_t total, uint64_t bytes);

/** Log level of a per-file line in the current batch (see quiet_files). */
#define AGENT_FILE_LOG(a) ((a)->quiet_files ? LOG_DEBUG : LOG_INFO)
/* A batch larger than this logs a summary instead of a line per file. */
#define AGENT_FILE_LOG_MAX 100

/* agent-sync.c */
/** Connect (registering or joining when needed). */
int agent_connect(Agent *a);
void agent_disconnect(Agent *a, const char *why);
/** One sync round: pull, apply, push. Negative errno on connection trouble. */
int agent_round(Agent *a);
/** conn_io() for up to timeout_ms, feeding the watchdog meanwhile. */
int agent_io(Agent *a, int timeout_ms);
/** True when nothing local waits to be pushed (failed changes included). */
bool agent_idle(const Agent *a);
/** True when a change waits to be pushed now (failed changes wait for their timer). */
bool agent_busy(const Agent *a);

/* agent-pull.c */
int agent_pull(Agent *a);

/* agent-push.c */
int agent_push(Agent *a);

/* agent-local.c: what is on disk */
typedef struct LocalEntry {
        bool exists;
        uint8_t kind; /* BsKind, or BS_KIND_NONE for a special file */
        struct stat st;
        char target[BS_PATH_MAX + 1];
} LocalEntry;

int local_stat(Agent *a, const char *path, LocalEntry *l);
/**
 * Between these, local_stat() keeps the last parent directory open: for
 * making a plan, where nothing is changed on disk by the agent and a
 * directory replaced meanwhile is seen again through inotify.
 */
void local_scan_begin(Agent *a);
void local_scan_end(Agent *a);
/** True when the disk entry is what the manifest last recorded. */
bool local_matches(const LocalEntry *l, const ManifestEntry *m);
/**
 * SHA-256 of a file in the tree, and in l the stat of the very content
 * hashed; -EAGAIN when the file changed while it was read.
 */
int local_hash(Agent *a, const char *path, uint8_t sha[BS_SHA_LEN], LocalEntry *l);
/** Move a local entry aside as a conflict copy; out gets the new path. */
int local_conflict_copy(Agent *a, const char *path, char *out, size_t outsz);
/** Fill a manifest entry from what is on disk. */
void local_to_manifest(const LocalEntry *l, ManifestEntry *m);
