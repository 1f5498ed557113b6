/* local.h - the embedded backend: one machine, SQLite and plain files
 *
 * An account is the directory STORAGE/<ID>/: tree/ (the current tree as
 * plain files), tmp/ (uploads and what is on its way out), content/ and
 * chunks/ (kept versions' contents by SHA-256, see store.h), and meta.db
 * (SQLite: entries, change log, history, devices). Every change is applied
 * to tree/ only through directory fds; changes join the open SQLite
 * transaction (group commit) and are durable at local_commit(). What each
 * operation means is the interface's (account.h); these are its
 * implementation, which local_backend_new() puts behind the interface and
 * the tests and offline tools may also call directly.
 */
#pragma once

#include "account.h"
#include "account-history.h"
#include "bs-readahead.h"

typedef struct LocalAccount LocalAccount;
typedef struct LocalCursor LocalCursor;
typedef struct LocalQuery LocalQuery;

/** The embedded backend on the storage directory storage (absolute). */
int local_backend_new(const char *storage, Backend **ret);

/** The interface's view of a local account. */
Account *local_account(LocalAccount *a);

/* An upload in progress (local_upload_begin()): where its bytes go
 * until local_put() takes them, and their running hash. */
typedef struct LocalUpload LocalUpload;

/* A stored content opened for reading (local_content_open()): it stays
 * readable while the path it came from changes. */
typedef struct LocalContent LocalContent;

/**
 * Create a new account with a fresh unique ID and key below storage.
 * token receives "ID-KEY" (BS_TOKEN_MAX + 1 bytes); only its hash is kept.
 */
int local_create(const char *storage, LocalAccount **ret, char *token);

/**
 * Compare tree/ with the metadata and call report for each disagreement
 * (files are hashed when size or mtime differ, or all of them with
 * hash_all). With repair, each difference is recorded as a change, so the
 * metadata agrees with the tree again and agents converge on it. Returns
 * the number of disagreements, or a negative errno.
 */
int local_verify(LocalAccount *a, bool repair, bool hash_all, account_verify_fn report, void *userdata);

/**
 * The IDs of the accounts below storage (directories named like one; an
 * incomplete one fails local_open() with -ENOENT). Free with
 * account_list_free().
 */
int local_list(const char *storage, char ***ret, size_t *ret_n);

/** True when the account was not closed cleanly (the server was killed). */
bool local_needs_recovery(const LocalAccount *a);

/**
 * Open an existing account. -ENOENT when there is no such (complete)
 * account. Leftover temporary files of interrupted uploads are removed.
 */
int local_open(const char *storage, const char *id, LocalAccount **ret);

/** Close the account; an open transaction is rolled back. Returns NULL. */
LocalAccount *local_free(LocalAccount *a);
static inline void local_freep(LocalAccount **a) { if (*a) local_free(*a); }

const char *local_id(const LocalAccount *a);
/** The sequence of the last committed change. */
uint64_t local_committed_seq(const LocalAccount *a);

/** Compare key with the stored hash, in constant time. */
bool local_key_valid(LocalAccount *a, const char *key);

/** Remember a device (id and readable name) that connected now. */
int local_device_seen(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *name);

/** True while changes wait for local_commit(). */
bool local_in_transaction(const LocalAccount *a);
/** Make the pending changes durable. On failure they are rolled back. */
int local_commit(LocalAccount *a);
/**
 * The lookups from here to local_reads_end() (content opened, entries
 * read) share one read transaction instead of taking and releasing the
 * database's read lock each. No change may be made between the two.
 * Inside a batch's transaction, or a run already begun, a no-op.
 */
void local_reads_begin(LocalAccount *a);
/** End what local_reads_begin() started, if anything. */
void local_reads_end(LocalAccount *a);

/**
 * One bounded slice of pruning (at most budget rows, its own short
 * transaction) as of now: the history the retention no longer keeps, the
 * contents nothing names any more, the log before keep-versions. Adds what
 * it freed to *stats. Returns 1 while more remains, 0 when a whole round
 * is done, -EBUSY while changes wait for a commit, or a negative errno.
 */
int local_prune(LocalAccount *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats);

/** The disk space the kept versions' contents take (the store, and versions/ of earlier releases). */
int local_history_usage(LocalAccount *a, uint64_t *bytes);

/** Look up the entry of path: 0, or -ENOENT. */
int local_entry_get(LocalAccount *a, const char *path, AccountEntry *ret);

/**
 * Check a PUT header: 0 when the upload may proceed, 1 when the base is
 * stale but the file has the announced size, so the content decides at
 * the end (identical content is already done), or a negative errno.
 */
int local_put_check(LocalAccount *a, const char *path, uint64_t base, uint64_t size);

/** Start an upload; *ret is freed by local_put() or local_upload_free(). */
int local_upload_begin(LocalAccount *a, LocalUpload **ret);
/** Append bytes to an upload; -EFBIG once it would pass limit. */
int local_upload_write(LocalUpload *u, const void *p, size_t n, uint64_t limit);
/** Drop an upload and what it wrote. Returns NULL. */
LocalUpload *local_upload_free(LocalUpload *u);
static inline void local_upload_freep(LocalUpload **u) { if (*u) local_upload_free(*u); }

/**
 * Finish an upload as path. Checks size and SHA-256, re-checks base, keeps
 * the replaced file in versions/ and records the change; the file is
 * renamed into the tree with the rest of its batch, after one sync, at the
 * latest by local_commit().
 * The upload is consumed (freed), whatever the outcome. Returns 0 (applied; *ret_version is the new
 * sequence), 1 (the file already had this content; *ret_version is its
 * version), or a negative errno.
 */
int local_put(LocalAccount *a, LocalUpload *u, const uint8_t device[BS_DEVICE_LEN],
                const char *path, uint64_t base, uint64_t size, uint32_t mode,
                int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version);

/* The other changes return 0 (applied) or 1 (already done) like local_put(). */

/**
 * Give the file at path a new mode and mtime, its content unchanged: the
 * agent names the content (sha) it means, so a file changed meanwhile is
 * a conflict (-ESTALE), as is a base that is not the current version.
 */
int local_attr(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                 uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version);
/** Create a directory, or give an existing one a new mode. */
int local_mkdir(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                  uint64_t base, uint32_t mode, int64_t mtime_ns, uint64_t *ret_version);
/** Create or replace a symlink; target is stored verbatim, never followed. */
int local_symlink(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                    uint64_t base, const char *target, int64_t mtime_ns, uint64_t *ret_version);
/** Delete a path and, for a directory, all below it; files are kept as versions. */
int local_delete(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base, uint64_t *ret_version);
/** Move from to to; an entry at to (base_to != 0) is replaced and kept. */
int local_move(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *from,
                 uint64_t base_from, const char *to, uint64_t base_to, uint64_t *ret_version);

/**
 * Open content for GET: the file at path when it has this SHA-256, else
 * any current file or kept version with it. -ENOENT when there is none.
 */
int local_content_open(LocalAccount *a, const uint8_t sha[BS_SHA_LEN], const char *path,
                         LocalContent **ret);
LocalContent *local_content_free(LocalContent *c);
static inline void local_content_freep(LocalContent **c) { if (*c) local_content_free(*c); }
/** Size, mode, mtime and version of the content. */
const AccountContentInfo *local_content_info(const LocalContent *c);
/**
 * Read exactly n bytes at off into buf: 0, -EBADMSG when the content
 * ends before (it cannot be what its entry said), or a negative errno.
 */
int local_content_read(LocalContent *c, uint64_t off, void *buf, size_t n);
/**
 * Start reading the first len bytes of c ahead, without waiting (with ra,
 * at its submit). What was not cached before leaves the page cache again
 * when c is freed.
 */
void local_content_prefetch(LocalContent *c, uint64_t len, BsReadahead *ra);

/**
 * Start reading the account for PULL: a snapshot of all entries (since 0)
 * or the change-log records after since. The cursor reads one consistent
 * state over its own database connection, so changes committed meanwhile
 * do not tear the answer. Commit before creating one.
 */
int local_cursor_new(LocalAccount *a, uint64_t since, LocalCursor **ret);
LocalCursor *local_cursor_free(LocalCursor *c);
static inline void local_cursor_freep(LocalCursor **c) { if (*c) local_cursor_free(*c); }
/** The sequence the answer is complete up to. */
uint64_t local_cursor_seq(const LocalCursor *c);
bool local_cursor_is_snapshot(const LocalCursor *c);
/** Next record: 1, or 0 at the end, or a negative errno. */
int local_cursor_next(LocalCursor *c, BsRecord *rec);

/**
 * Start reading the account's past (account-history.c): what, for path
 * and below (all of the account when path is ""), at most limit rows (0:
 * no limit). seq bounds the answer from above (0: now); time from below
 * (seconds, 0: none), except for BS_HIST_TREE, where a time without a seq
 * picks the last change made by then. -EINVAL for an unknown what or a
 * path that breaks the rules. Commit before creating one.
 */
int local_query_new(LocalAccount *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time,
                      uint32_t limit, LocalQuery **ret);
LocalQuery *local_query_free(LocalQuery *q);
static inline void local_query_freep(LocalQuery **q) { if (*q) local_query_free(*q); }
/** The sequence the answer is as of. */
uint64_t local_query_seq(const LocalQuery *q);
/** Next row: 1, or 0 at the end, or a negative errno. */
int local_query_next(LocalQuery *q, BsHistRow *row);
