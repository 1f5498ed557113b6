/* local-internal.h - what the embedded backend's files share
 *
 * Not part of the storage interface: only the local-*.c files (and their
 * unit tests) include this header.
 */
#pragma once

#include <sqlite3.h>
#include <sys/types.h>

#include "account-backend.h"
#include "local.h"
#include "bs-writer.h"
#include "store.h"

enum {
        STMT_META_GET,
        STMT_META_SET,
        STMT_ENTRY_GET,
        STMT_ENTRY_PUT,
        STMT_ENTRY_DELETE_TREE,
        STMT_ENTRY_LIST_BELOW,
        STMT_ENTRY_RENAME,
        STMT_ENTRY_BY_SHA,
        STMT_VERSION_ADD,
        STMT_VERSION_BY_SHA,
        STMT_HISTORY_CLOSE,
        STMT_LOG_ADD,
        STMT_DEVICE_SEEN,
        STMT_SAVEPOINT,
        STMT_RELEASE,
        STMT_ROLLBACK_TO,
        STMT_READS_BEGIN,
        STMT_READS_END,
        STMT_SHA_INDEXED,
        _STMT_MAX,
};

/* An upload checked and recorded, whose file waits in tmp/ for the group
 * sync; a small one may still be on its way there (write). */
typedef struct AccountPending {
        char tmp[64];
        char *path;
        int fd; /* the first keep_fds keep it open (fdatasync(), then the page cache dropped), or -1 */
        BsWrite *write; /* handed to the writer: tmp and fd come from it at the flush */
} AccountPending;

/* A directory changed in this transaction, synced before it commits. */
typedef struct AccountDirSync {
        int fd;
        dev_t dev;
        ino_t ino;
} AccountDirSync;

/* Uploads placed per batch: each sync of a batch has a fixed cost (on a
 * journalled file system, a journal commit), so bursts go in big ones. */
#define ACCOUNT_PENDING_MAX 8192
/* Bytes of kept contents cut into the chunk store per pruning slice. */
#define ACCOUNT_PACK_BUDGET (32u * 1024 * 1024)
/* From this many uploads on, a batch is synced with syncfs(); and from
 * this many uploads in batches less than ACCOUNT_BURST_GAP_USEC apart,
 * they are a burst, whose files leave the page cache once on disk. */
#define ACCOUNT_BULK_MIN 16
#define ACCOUNT_BURST_GAP_USEC (1000 * 1000ULL)
/* Directories (and files given a new mode) waiting for their sync at
 * commit, at most (then synced at once). */
#define ACCOUNT_DIR_SYNC_MAX 64
/* Uploads up to this size are kept in memory and written by the
 * account's writer thread (bs-writer.h) while the loop goes on, at most
 * this many bytes of them at once. */
#define LOCAL_BUFFER_MAX (64u * 1024)
#define LOCAL_WRITER_QUEUE (8u * 1024 * 1024)
/* An account database's page cache at most, in KiB (the first user of
 * memory at scale: see open_db()), and its log pages between checkpoints. */
#define LOCAL_DB_CACHE_KIB 16384
#define LOCAL_DB_CHECKPOINT_PAGES 8192
/* The index of entries by content is dropped once this many files were
 * recorded since it was made (and a quarter of the entries it then held),
 * and made again when a lookup needs it or after a commit of fewer than
 * LOCAL_SHA_QUIET records: see local_sha_index(). */
#define LOCAL_SHA_BULK_MIN 4096
#define LOCAL_SHA_QUIET 64
/* Files of a batch kept open until it is durable, at most (and never more
 * than an eighth of the fd limit): a burst's pages are then dropped from
 * the page cache, and its next files are written into them. */
#define LOCAL_KEEP_FDS_MAX 4096
/* Uploads from this size on start their writeback as soon as they end. */
#define ACCOUNT_WRITEBACK_MIN (1024 * 1024)
/* A big upload is synced in the writer's thread every this many bytes
 * while it arrives (see upload_sync_step()). */
#define LOCAL_SYNC_STEP (16u * 1024 * 1024)

/* The interface's operations on local objects (local-ops.c). */
extern const AccountOps local_ops;

struct LocalAccount {
        Account base;
        char id[BS_ID_LEN + 1];
        char *db_path;
        int dir_fd;
        int tree_fd;
        int tmp_fd;
        int versions_fd; /* contents kept by earlier releases, by sequence */
        Store *store;
        sqlite3 *db;
        sqlite3_stmt *stmt[_STMT_MAX];
        uint64_t seq;
        uint64_t committed_seq;
        uint64_t change_seq; /* seq when the current change began */
        bool change_savepoint; /* the current change has one */
        int64_t change_rows; /* rows changed in the connection before it */
        bool in_txn;
        bool reading; /* a run of lookups shares one read transaction (local_reads_begin()) */
        int txn_error; /* a batch that could not be placed: the commit fails */
        AccountPending *pending;
        size_t n_pending, cap_pending;
        uint64_t pending_bytes; /* their sizes: the data a syncfs() would be for */
        size_t keep_fds; /* pending files kept open, at most (see local_alloc()) */
        BsWriter *writer; /* started at the first small upload */
        /* The batches placed less than ACCOUNT_BURST_GAP_USEC apart: when
         * the last ended, how many files, and those kept open until it is
         * known whether they are a burst (fewer than ACCOUNT_BULK_MIN). */
        uint64_t burst_last_usec;
        size_t burst_files;
        int burst_fds[ACCOUNT_BULK_MIN];
        size_t n_burst_fds;
        AccountDirSync dir_sync[ACCOUNT_DIR_SYNC_MAX]; /* see local_defer_sync() */
        /* The last parent directory an upload went to, known to be a
         * directory entry: a burst names the same one again and again. */
        int parent_fd;
        size_t parent_len;
        char parent_path[BS_PATH_MAX + 1];
        size_t n_dir_sync;
        bool unclean; /* not closed by local_free() last time */
        /* The index by content while a bulk of files arrives: files
         * recorded since it was made, the entries' last rowid then (its
         * size), entries recorded by the open transaction, and whether
         * this process dropped it and has not made it again. */
        uint64_t sha_sets;
        uint64_t sha_scale;
        uint64_t txn_sets;
        bool sha_dropped;
        unsigned prune_phase, prune_fan; /* where local_prune() goes on */
        /* The time of change time_seq: see local_change_time(). */
        uint64_t time_seq;
        time_t time_of_seq;
        /* Packing (phase 6): the content last tried in this fan-out
         * directory, and whether it is only partly cut. */
        uint8_t pack_last[BS_SHA_LEN];
        bool pack_started, pack_more;
        char key_hash[65];
};

/* Bounds of "all paths below p" as blobs: [p + "/", p + "0"). */
typedef struct AccountRange {
        char lo[BS_PATH_MAX + 2];
        char hi[BS_PATH_MAX + 2];
        size_t len;
} AccountRange;

static inline void sqlite3_finalizep(sqlite3_stmt **st) {
        sqlite3_finalize(*st);
}

/** Map an SQLite result code to a negative errno. */
int local_sqlite_errno(int rc);
/** A reset, unbound cached statement. */
int local_stmt(LocalAccount *a, unsigned id, sqlite3_stmt **ret);
/** Step a statement that returns no rows (SQLITE_DONE). */
int local_step_done(sqlite3_stmt *st);
/** Bind a NUL-free byte path as a BLOB. */
int local_bind_path(sqlite3_stmt *st, int idx, const char *p);
/** Copy a BLOB path column into out (BS_PATH_MAX + 1 bytes). */
int local_column_path(sqlite3_stmt *st, int col, char *out, size_t *len);
/** Copy a fixed-size BLOB column (a SHA-256, a device id) into out; zeros when it has another size. */
void local_column_fixed(sqlite3_stmt *st, int col, uint8_t *out, size_t n);
void local_range(AccountRange *r, const char *path);
/**
 * A connection of its own inside one read transaction: in WAL mode a
 * consistent snapshot while the account's connection commits on.
 * *ret_seq is the account's sequence in it.
 */
int local_reader_open(LocalAccount *a, sqlite3 **ret, uint64_t *ret_seq);
void local_reader_close(sqlite3 *db);

/**
 * Make the uploads waiting in tmp/ durable and rename them into the tree,
 * in order, then sync the directories that changed. Called before any
 * change that is not a plain upload, and at commit.
 */
int local_flush_pending(LocalAccount *a);
/** Drop the cached parent directory: after a change that can remove or move one. */
void local_forget_parent(LocalAccount *a);
/** Forget the waiting uploads and remove their files. */
void local_drop_pending(LocalAccount *a);
/**
 * Have fd synced before the transaction commits (once, however many
 * changes touched it): a directory whose entries changed, or a file whose
 * mode or mtime did. The fd is duplicated. Returns 0 or -errno.
 */
int local_defer_sync(LocalAccount *a, int dfd);

/** Open a change: the transaction if needed, and a savepoint for this one change. */
int local_change_begin(LocalAccount *a);
/**
 * Open a change that has made every check that can refuse it: a new
 * entry, whose only writes left are its records. No savepoint, whose
 * copies of the pages it touches cost the server a tenth of a first
 * backup: should a write fail after another (the database full or
 * failing), the whole batch fails at commit instead.
 */
int local_change_begin_checked(LocalAccount *a);
/**
 * Close a change: keep it on r >= 0, else roll back to its savepoint; a
 * change opened by local_change_begin_checked() that wrote a row fails
 * its batch. Returns r.
 */
int local_change_end(LocalAccount *a, int r);

/**
 * The server's time of change seq, taken once: its log record, the states
 * it ends and those it begins then agree to the second.
 */
time_t local_change_time(LocalAccount *a, uint64_t seq);
int local_entry_set(LocalAccount *a, const char *path, const AccountEntry *e);
/** Remove the entries of path and all below it. */
int local_entries_remove(LocalAccount *a, const char *path);
/**
 * Make the index of entries by content again if a bulk of new files
 * dropped it (see LOCAL_SHA_BULK_MIN): called before every lookup by
 * content, which without it reads every entry. 0, or -errno when it
 * could not be made; the lookup is then slow, not wrong.
 */
int local_sha_index(LocalAccount *a);
int local_log_add(LocalAccount *a, uint64_t seq, const uint8_t device[BS_DEVICE_LEN], BsOp op,
                    const AccountEntry *e, const char *path, const char *path2);
int local_version_add(LocalAccount *a, const char *path, const AccountEntry *e,
                        const char *stored, uint64_t replaced_seq);
/**
 * Keep the state of path (and, with below, of everything below it) in
 * the history as ended at until: the entries are about to change, move or
 * go. Their contents are the store's or the tree's business.
 */
int local_history_close(LocalAccount *a, const char *path, bool below, uint64_t until);
/** Advance the account's sequence to seq (inside the open change; stored at commit). */
int local_set_seq(LocalAccount *a, uint64_t seq);
