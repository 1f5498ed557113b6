/* bs-status.h - an agent's live status file, read by the backupsync command
 *
 * The agent rewrites STATE_DIR/status (KEY=value lines, like os-release)
 * whenever its state changes; readers never lock anything and never see a
 * half-written file (it is replaced by rename()). Unknown keys are skipped,
 * so either side can add some.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "bs-token.h"

#define BS_STATUS_FILE "status"
/* The account token, mode 0600, for the backupsync command: the agent's
 * database is locked while it runs. */
#define BS_TOKEN_FILE "token"
#define BS_STATUS_TEXT_MAX 256
/* Left by `backupsync confirm-deletes`: the number of held deletions the
 * user let go. The agent takes it (and removes it) at its next round. */
#define BS_CONFIRM_DELETES_FILE "confirm-deletes"

typedef enum BsSyncState {
        BS_SYNC_UNKNOWN = 0,
        BS_SYNC_IN_SYNC,  /* nothing pending, connected */
        BS_SYNC_SYNCING,  /* changes pending or being sent */
        BS_SYNC_OFFLINE,  /* the server cannot be reached */
        BS_SYNC_PAUSED,   /* the directory is gone or was emptied */
        BS_SYNC_ERROR,    /* the agent's own state cannot be written */
        BS_SYNC_STOPPED,  /* the agent exited */
        BS_SYNC_HOLDING,  /* connected, but deletions are held back (max-delete) */
        _BS_SYNC_MAX,
} BsSyncState;

typedef struct BsStatus {
        pid_t pid;
        BsSyncState state;
        char dir[BS_STATUS_TEXT_MAX];
        char server[BS_STATUS_TEXT_MAX];
        char port[16];
        char account[BS_ID_LEN + 1];
        char reason[BS_STATUS_TEXT_MAX]; /* why paused, offline or in error; may be empty */
        uint64_t updated_usec;           /* CLOCK_REALTIME of this status */
        uint64_t last_sync_usec;         /* CLOCK_REALTIME of the last successful round; 0: never */
        uint64_t offline_since_usec;     /* CLOCK_REALTIME; 0 while connected */
        uint64_t pending, watched, uploaded, downloaded, conflicts;
        uint64_t conflicts_present; /* conflict copies in the directory now */
        uint64_t held_deletes;      /* files whose deletion waits for confirm-deletes */
        /* A long transfer under way: what ("uploading", "downloading"), how
         * many changes of how many, bytes so far; what is "" otherwise. */
        char progress_what[16];
        uint64_t progress_done, progress_total, progress_bytes;
} BsStatus;

/** "in sync", "syncing", ...; NULL for a value out of range. */
const char *bs_sync_state_to_string(BsSyncState s);
/** Write s to DIR/status atomically (a temporary file renamed over it). */
int bs_status_write(int dir_fd, const BsStatus *s);
/**
 * Read DIR/status into *s. -ENOENT when there is none; -EBADMSG when it
 * is not a status file (a line without '=', a number that does not parse).
 */
int bs_status_read(int dir_fd, BsStatus *s);

/** Write one line to DIR/name (mode 0600) atomically, unless it holds it already. */
int bs_line_file_write(int dir_fd, const char *name, const char *line);
/**
 * Read the one line of DIR/name into buf (without its newline). -ENOENT
 * when there is none, -EBADMSG when it does not fit or holds more lines.
 */
int bs_line_file_read(int dir_fd, const char *name, char *buf, size_t size);

/** Write token to DIR/token (mode 0600) atomically, unless it holds it already. */
int bs_token_file_write(int dir_fd, const char *token);
/**
 * Read DIR/token into token (BS_TOKEN_MAX + 1 bytes). -ENOENT when there
 * is none, -EBADMSG when it holds no valid token.
 */
int bs_token_file_read(int dir_fd, char *token);
