/* agent.h - backupsync-agent: the Agent object, its queue of local changes,
 * and what the parts of a round share. The event loop is agent-loop.c. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "bs-conn.h"
#include "bs-readahead.h"
#include "bs-parse.h"
#include "agent-ignore.h"
#include "agent-state.h"
#include "agent-watch.h"
#include "bs-proto.h"
#include "bs-token.h"

/* Why the agent stopped; main() turns each into its exit status. */
typedef enum AgentStop {
        AGENT_STOP_NONE = 0,    /* running, or done as asked */
        AGENT_STOP_USAGE,       /* a token or state directory that does not fit the arguments */
        AGENT_STOP_TREE_GONE,   /* --once: the tree is empty or gone but was synced */
        AGENT_STOP_NO_DIR,      /* the directory does not exist, or cannot be opened or watched */
        AGENT_STOP_UNREACHABLE, /* --once: the server cannot be reached */
        AGENT_STOP_SOFTWARE,    /* out of memory, the event loop failed */
        AGENT_STOP_STATE,       /* the state cannot be created, opened or saved */
        AGENT_STOP_IN_USE,      /* another agent has the state directory */
        AGENT_STOP_NOT_IN_SYNC, /* --once: changes still pending */
        AGENT_STOP_VERSION,     /* no protocol version in common with the server */
        AGENT_STOP_AUTH,        /* the server refused the token */
        AGENT_STOP_IDENTITY,    /* the server's key is not the expected one */
} AgentStop;

typedef struct AgentConfig {
        char *server;
        char *port;
        char *dir;       /* absolute */
        char *state_dir;
        char *id;        /* token given on the command line, or NULL */
        char *device_name;
        bool tls;                         /* false: tls = no, clear text */
        const char *server_fingerprint;   /* given; NULL: pinned at first contact */
        const char *ca_file;              /* non-NULL: verify with CAs ("" system store) */
        uint64_t poll_usec;
        uint64_t verify_usec;   /* the verification pass; 0: none */
        uint64_t coalesce_usec; /* longest wait from a local event to its round */
        char *const *ignore;    /* this computer's patterns (ignore =) */
        size_t n_ignore;
        bool no_default_ignores;
        BsDeleteLimit max_delete; /* past it, a round's deletions wait for confirm-deletes */
        bool once;

        /* With --instance: what SIGHUP re-reads, and what the command line
         * pinned (a reload does not change those). */
        const char *instance; /* NULL: positional form, nothing to reload */
        const char *config_file;
        bool config_must_exist;
        const char *user_config_file; /* NULL: none */
        bool poll_pinned, verify_pinned, device_name_pinned, tls_pinned, ignore_pinned, max_delete_pinned;
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

/* A file's name removed: the file may live on under another (a hard link). */
typedef struct GoneLink {
        char *path;
        uint64_t ino;
} GoneLink;

/* How many removed names of linked files are remembered (see agent_gone_link()). */
#define AGENT_GONE_LINKS 256

/* A directory mode to set once a pull has placed what goes inside. */
typedef struct LateMode {
        char *path;
        uint32_t mode;
} LateMode;

typedef struct Agent {
        AgentConfig cfg;
        /* cfg.server as a list (server = a, b): tried in turn from the one that answered last. */
        char **servers;
        size_t n_servers, server_i;
        IgnoreSet *ignore;
        AgentState *state;
        Watcher *watcher;
        BsConn *conn;
        int rootfd;
        BsReadahead *ra; /* batched reading ahead of uploads; NULL: file by file */
        /* Downloads are written here, in the root but unwatched, and
         * renamed into place: no inotify events of our own but the rename.
         * Made at a pull's first download, removed at its end. */
        int downloads_fd;
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
        int64_t events_read_usec; /* CLOCK_REALTIME when a push last read the watcher's events */
        /* Changes the server could not store (disk full, I/O error, busy):
         * retried on failed_timer with a growing delay, not at every round. */
        DirtyPath *failed;
        size_t n_failed, cap_failed;
        LateMode *late_modes;
        size_t n_late_modes, cap_late_modes;
        /* Paths refused as CONFLICT at refused_seq (a last_seq): refused
         * again at the same one, pulling cannot help. */
        DirtyPath *refused;
        size_t n_refused, cap_refused;
        uint64_t refused_seq;
        GoneLink gone_links[AGENT_GONE_LINKS]; /* a ring, oldest overwritten */
        size_t next_gone_link;
        bool rescan_all;
        /* The first comparison of the tree adds each directory's watch as
         * it lists it: one walk of the tree, and the first request leaves
         * before the last directory of a big tree was looked at. */
        bool watch_in_scan;
        bool watch_reported; /* the count of watches, logged once it is known */
        bool verifying; /* this rescan is the verification pass: report what it finds */
        bool need_snapshot;
        bool no_delta;  /* a delta download failed: fetch whole files until the next round */
        bool again;     /* another round is needed at once */
        bool verify_wanted; /* a change may have gone unreported: bring the verification pass forward */
        bool paused;    /* the watched directory is missing or was emptied */
        /* Deletions the brake (agent-brake.c) keeps back: the top paths
         * and the files and symlinks they remove; held_shown when held
         * past max-delete (logged, in the status), else waiting for a
         * burst to end. */
        char **held;
        size_t n_held;
        uint64_t held_files, held_logged_usec, defer_usec;
        bool held_shown;
        /* Files deleted by recent rounds, and when the last one was. */
        uint64_t burst_deleted, burst_usec;
        bool root_gone;
        AgentStop stop; /* set when the agent must stop */
        int state_error; /* the state database could not be written: the failure logged, until a commit works */

        sd_event *event;
        sd_event_source *inotify_source;
        sd_event_source *coalesce_timer;
        uint64_t coalesce_first_usec; /* CLOCK_MONOTONIC of the first event the armed timer waits for */
        sd_event_source *poll_timer;
        sd_event_source *settle_timer;
        sd_event_source *brake_timer; /* deletions waiting for a burst to end */
        sd_event_source *verify_timer;
        uint64_t verify_last_usec; /* CLOCK_MONOTONIC of the last verification pass; 0: none yet */
        uint64_t verify_cost_usec; /* how long it took */
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
        /* Conflict copies in the directory, counted from the manifest after
         * it changed, at most every 2 s and 20 times the last count's cost. */
        uint64_t conflicts_present, conflicts_generation, conflicts_counted_usec, conflicts_cost_usec;
        bool conflicts_counted;
        /* The long transfer under way, for the status file (agent_progress()). */
        const char *progress_what;
        uint64_t progress_done, progress_total, progress_bytes;
        uint64_t last_sync_usec;
        uint64_t offline_since_usec; /* CLOCK_REALTIME when the connection was found gone; 0 while connected */
        bool status_failed;          /* the status file could not be written (said once) */
        bool status_written;         /* this agent has written the status file */
        int state_dir_fd;            /* for the status file; -1 until first needed */
        uint64_t progress_usec; /* last progress report within a round */
        /* A big batch logs one summary line, not a line per file: journald
         * drops messages past its rate limit (10,000 per 30 s by default),
         * and an error among them must not be lost. */
        bool quiet_files;
        bool synced_once;
        uint32_t next_req;
} Agent;

/** CLOCK_MONOTONIC now, in microseconds. */
static inline uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/** CLOCK_REALTIME now, in microseconds (times shown to people). */
static inline uint64_t realtime_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* agent.c */
int agent_new(const AgentConfig *cfg, Agent **ret);
/** The server now in use (of server = a, b: the one that answered last). */
const char *agent_server(const Agent *a);
/** path changed here or on the server: if it is an ignore file, read it again and look at everything. */
void agent_ignore_changed(Agent *a, const char *path);
/** Free everything the agent owns, event sources included; NULL. */
Agent *agent_free(Agent *a);
static inline void agent_freep(Agent **a) { if (*a) agent_free(*a); }
/** Queue path (and, when recursive, what is below it) for the next round. */
void agent_mark_dirty(Agent *a, const char *path, bool recursive);
/** The watcher saw path closed after writing (or otherwise whole): dirty now. */
void agent_closed(Agent *a, const char *path, bool recursive);
/** Queue a move seen by the watcher; queued paths follow it to its new name. */
void agent_mark_moved(Agent *a, const char *from, const char *to, bool is_dir);
/** renameat2(RENAME_EXCHANGE) swapped x and y: queued paths follow, both are compared. */
void agent_mark_exchanged(Agent *a, const char *x, const char *y);
/**
 * path, a file of inode ino, was removed; another name of it may stay.
 * A program holding it open keeps writing through the removed name, and
 * inotify reports those writes under that name only: agent_gone_link()
 * finds the inode again so its remaining names are compared. The last
 * AGENT_GONE_LINKS are kept; older ones are left to the verification pass.
 */
void agent_remember_gone_link(Agent *a, const char *path, uint64_t ino);
/** The inode of a removed name remembered above; false when unknown. */
bool agent_gone_link(const Agent *a, const char *path, uint64_t *ino);
/** Queue a change the server could not store, for a later retry with backoff. */
void agent_mark_failed(Agent *a, const char *path, bool recursive);
/** Remember a path the server refused as CONFLICT (see agent-push.c). */
int agent_mark_refused(Agent *a, const char *path);
/** The failed changes become dirty paths again (their retry is due). */
void agent_requeue_failed(Agent *a);

/* A file being written is looked at once quiet this long, or at the latest
 * this long after its first event (see agent_settle()). */
#define SETTLE_QUIET_USEC (1 * 1000000ULL)
#define SETTLE_MAX_USEC (10 * 1000000ULL)
/**
 * A file is being written (modified while open, created and not yet
 * closed, or changed while it was read for upload): it becomes dirty once
 * it has had no event for a second, or ten seconds after the first, so a
 * log kept open still reaches the server within seconds.
 */
void agent_settle(Agent *a, const char *path);
/** Every settling file becomes dirty now (--once, which cannot wait). */
void agent_settle_all(Agent *a);
/** True when path waits to settle (written lately and not closed). */
bool agent_settling(const Agent *a, const char *path);
/**
 * The settling files whose time has come (CLOCK_MONOTONIC now) become
 * dirty; true when any did. *next: when the next one is due, or
 * UINT64_MAX.
 */
bool agent_settle_due(Agent *a, uint64_t now, uint64_t *next);
/** Local changes waiting: queued, moved, failed and settling. */
static inline size_t agent_pending(const Agent *a) {
        return a->n_dirty + a->n_moves + a->n_failed + a->n_settling;
}
/** True when nothing local waits to be pushed (failed and settling changes included). */
bool agent_idle(const Agent *a);
/** True when a change waits to be pushed now (failed changes wait for their timer). */
bool agent_busy(const Agent *a);
/** Tell systemd (STATUS=) and `backupsync status` (STATE_DIR/status) how things stand. */
void agent_update_status(Agent *a);
/** The status file says the agent stopped (when this agent wrote it before). */
void agent_status_stopped(Agent *a);
/** Leave the account token in STATE_DIR/token for the backupsync command. */
void agent_token_file(Agent *a);
/** The state directory, opened once; a negative errno when it cannot be. */
int agent_state_dir_fd(Agent *a);
/**
 * Called from inside a long round (a first upload can take hours): keeps
 * the watchdog fed and shows "uploading 120 of 10000 changes, 1.2 GiB
 * sent" in systemctl status, at most once a second.
 */
void agent_progress(Agent *a, const char *what, uint64_t done, uint64_t total, uint64_t bytes);
/**
 * A commit of the state failed and was rolled back: log it (once, until a
 * commit works again) and return r, which ends the round; it is retried
 * with a growing delay, and nothing is recorded meanwhile.
 */
int agent_state_failed(Agent *a, int r);
/** A commit worked: say so if one had failed. */
void agent_state_ok(Agent *a);

/** Log level of a per-file line in the current batch (see quiet_files). */
#define AGENT_FILE_LOG(a) ((a)->quiet_files ? LOG_DEBUG : LOG_INFO)
/* A batch larger than this logs a summary instead of a line per file. */
#define AGENT_FILE_LOG_MAX 100
