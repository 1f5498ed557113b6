/* account.h - the storage interface: where accounts live, as the sessions see it
 *
 * The server talks to accounts only through this interface, and does not
 * know which implementation is behind it: the embedded backend (local.h:
 * SQLite and plain files on one machine) or the cluster backend. A
 * Backend opens and creates accounts; an Account takes changes in
 * batches, each change checked against its path's current version and
 * recorded as one change-log record. Nothing in a batch is durable, and
 * so nothing of it may be acknowledged, before account_batch_commit()
 * succeeded. A session commits its batch before it reads
 * (account-read.h, account-history.h).
 *
 * A backend that must ask the network answers -EINPROGRESS where this
 * says so, and calls the AccountWaker it was given, on the event loop,
 * when the answer is there; the embedded backend always answers at once.
 *
 * Errors are negative errno values with these meanings for the protocol:
 * -ESTALE base is not the current version (CONFLICT), -ENOENT missing
 * entry, content or parent (NOT_FOUND), -EINVAL/-ELOOP/-EXDEV the path
 * breaks the rules or leaves the tree (BAD_PATH), -EBADMSG size or SHA-256
 * mismatch (CHECKSUM), -EFBIG more data than announced (TOO_LARGE),
 * -ENOSPC/-EDQUOT no space (NO_SPACE); anything else is an I/O error.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "bs-hash.h"
#include "bs-proto.h"
#include "bs-token.h"

typedef struct Backend Backend;
typedef struct Account Account;
typedef struct AccountBatch AccountBatch;
typedef struct AccountCursor AccountCursor;

/* The current state of one path, as kept in the entries table. */
typedef struct AccountEntry {
        BsKind kind;
        uint64_t size;
        uint32_t mode;
        int64_t mtime_ns;
        uint64_t version;
        uint8_t sha[BS_SHA_LEN];
        uint8_t device[BS_DEVICE_LEN];
        size_t target_len;
        char target[BS_PATH_MAX + 1]; /* symlink text */
} AccountEntry;

/* An upload in progress (account_upload_begin()): where its bytes go
 * until account_put() takes them, and their running hash. */
typedef struct AccountUpload AccountUpload;

/* A stored content opened for reading (account_content_open()): it stays
 * readable while the path it came from changes. */
typedef struct AccountContent AccountContent;

/* Whom to tell when an answer given as -EINPROGRESS is there. */
typedef struct AccountWaker {
        void (*fn)(void *userdata);
        void *userdata;
} AccountWaker;

/* What a stored content is, as the entry or version it was found by says. */
typedef struct AccountContentInfo {
        uint64_t size;
        uint32_t mode;
        int64_t mtime_ns;
        uint64_t version;
} AccountContentInfo;

/**
 * Create a new account with a fresh unique ID and key. token receives
 * "ID-KEY" (BS_TOKEN_MAX + 1 bytes; with -EINPROGRESS, by the time
 * account_wait() answers 0, so it must stay valid until then); only its
 * hash is kept. 0 or -EINPROGRESS, and then *ret is the account.
 */
int backend_account_create(Backend *b, Account **ret, char *token);

/**
 * Open an existing account: -ENOENT when there is no such (complete)
 * account. What interrupted uploads left is removed. 0 or -EINPROGRESS
 * (see account_wait()), and then *ret is the account.
 */
int backend_account_open(Backend *b, const char *id, Account **ret);

/**
 * The IDs of the accounts: 0, or -EINPROGRESS while they are being looked
 * up (w is told; call again for the answer). Free with account_list_free().
 */
int backend_account_list(Backend *b, const AccountWaker *w, char ***ret, size_t *ret_n);
char **account_list_free(char **ids, size_t n);

/* An account's sequence advanced through another server node. */
typedef void (*backend_watch_fn)(void *userdata, const char *id, uint64_t seq);
/** Be told of every account advanced elsewhere (never by this process's own commits). */
void backend_set_watch(Backend *b, backend_watch_fn fn, void *userdata);

/** Close the backend; every account must be closed first. Returns NULL. */
Backend *backend_free(Backend *b);
static inline void backend_freep(Backend **b) { if (*b) backend_free(*b); }

typedef void (*account_verify_fn)(void *userdata, const char *path, const char *problem);

/**
 * Compare the stored content with the metadata and call report for each
 * disagreement (contents are hashed when size or mtime differ, or all of
 * them with hash_all). With repair, each difference is recorded as a
 * change, so the metadata agrees with the content again and agents
 * converge on it. Returns the number of disagreements, or a negative errno.
 */
int account_verify(Account *a, bool repair, bool hash_all, account_verify_fn report, void *userdata);

/** True when the account was not closed cleanly (the server was killed). */
bool account_needs_recovery(const Account *a);

/**
 * 0 once the account is open (or created: then the token is filled in),
 * -EINPROGRESS while it is being opened (w is told), or what opening
 * found: -ENOENT for no such account.
 */
int account_wait(Account *a, const AccountWaker *w);
/** Forget w, given to account_wait() by a caller that goes away. */
void account_forget_waker(Account *a, const AccountWaker *w);

/** Close the account; an open transaction is rolled back. Returns NULL. */
Account *account_free(Account *a);
static inline void account_freep(Account **a) { if (*a) account_free(*a); }

const char *account_id(const Account *a);
/** The sequence of the last committed change. */
uint64_t account_committed_seq(const Account *a);

/** Compare key with the stored hash, in constant time. */
bool account_key_valid(Account *a, const char *key);

/** Remember a device (id and readable name) that connected now. */
int account_device_seen(Account *a, const uint8_t device[BS_DEVICE_LEN], const char *name);

/** Start a batch of changes on a (one at a time per caller). */
int account_batch_new(Account *a, AccountBatch **ret);
/**
 * Make the batch's changes durable: 0 when they are, -EINPROGRESS when
 * the waker will be told (then call again: it answers the outcome), or a
 * negative errno: none of it is durable, and no answer of it may be sent.
 */
int account_batch_commit(AccountBatch *b, const AccountWaker *w);
/**
 * The answer of the batch's change number i (from 0, in the order they
 * were made) that was answered -EINPROGRESS, once the commit succeeded:
 * as the change would have answered, with *ret_version.
 */
int account_batch_answer(AccountBatch *b, unsigned i, uint64_t *ret_version);
/**
 * Drop a batch. Of one not committed nothing may be acknowledged; whether
 * it becomes durable is the backend's choice (the embedded one commits
 * what its tree already holds). Returns NULL.
 */
AccountBatch *account_batch_free(AccountBatch *b);
static inline void account_batch_freep(AccountBatch **b) { if (*b) account_batch_free(*b); }

/* What the history keeps, in seconds (see local-prune.c). */
typedef struct AccountRetention {
        uint64_t keep_versions; /* 0: forever */
        uint64_t keep_all, keep_hourly, keep_daily;
        uint64_t max_bytes;     /* 0: no cap */
} AccountRetention;

/* What pruning freed, added up over calls. */
typedef struct AccountPruneStats {
        uint64_t versions;    /* history rows */
        uint64_t contents;    /* contents removed from the store */
        uint64_t bytes;       /* disk space they took */
        uint64_t log_records;
} AccountPruneStats;

/**
 * One bounded slice of pruning (at most budget rows, its own short
 * transaction) as of now: the history the retention no longer keeps, the
 * contents nothing names any more, the log before keep-versions. Adds what
 * it freed to *stats. Returns 1 while more remains, 0 when a whole round
 * is done, -EBUSY while changes wait for a commit, -EINPROGRESS while the
 * slice runs (w is told; call again, with the same arguments, for its
 * outcome), or a negative errno.
 */
int account_prune(Account *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats,
                  const AccountWaker *w);

/** The space the kept versions' contents take (-ENODATA: not known yet). */
int account_history_usage(Account *a, uint64_t *bytes);

/** Look up the entry of path: 0, or -ENOENT. */
int account_entry_get(Account *a, const char *path, AccountEntry *ret);

/**
 * Check a PUT header: 0 when the upload may proceed, 1 when the base is
 * stale but the file has the announced size, so the content decides at
 * the end (identical content is already done), or a negative errno.
 */
int account_put_check(Account *a, const char *path, uint64_t base, uint64_t size);

/** Start an upload; *ret is freed by account_put() or account_upload_free(). */
int account_upload_begin(Account *a, AccountUpload **ret);
/** Append bytes to an upload; -EFBIG once it would pass limit. */
int account_upload_write(AccountUpload *u, const void *p, size_t n, uint64_t limit);
/** Drop an upload and what it wrote. Returns NULL. */
AccountUpload *account_upload_free(AccountUpload *u);
static inline void account_upload_freep(AccountUpload **u) { if (*u) account_upload_free(*u); }

/**
 * Finish an upload as path, in batch b. Checks size and SHA-256, re-checks
 * base, keeps the replaced content as a version and records the change.
 * The upload is consumed (freed), whatever the outcome. Returns 0
 * (applied; *ret_version is the new sequence), 1 (the file already had
 * this content; *ret_version is its version), a negative errno, or
 * -EINPROGRESS: the answer comes with the commit (account_batch_answer()).
 */
int account_put(AccountBatch *b, AccountUpload *u, const uint8_t device[BS_DEVICE_LEN],
                const char *path, uint64_t base, uint64_t size, uint32_t mode,
                int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version);

/* The other changes return 0 (applied) or 1 (already done) like account_put(). */

/**
 * Give the file at path a new mode and mtime, its content unchanged: the
 * agent names the content (sha) it means, so a file changed meanwhile is
 * a conflict (-ESTALE), as is a base that is not the current version.
 */
int account_attr(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                 uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version);
/** Create a directory, or give an existing one a new mode. */
int account_mkdir(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path,
                  uint64_t base, uint32_t mode, int64_t mtime_ns, uint64_t *ret_version);
/** Create or replace a symlink; target is stored verbatim, never followed. */
int account_symlink(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path,
                    uint64_t base, const char *target, int64_t mtime_ns, uint64_t *ret_version);
/** Delete a path and, for a directory, all below it; files are kept as versions. */
int account_delete(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base, uint64_t *ret_version);
/** Move from to to; an entry at to (base_to != 0) is replaced and kept. */
int account_move(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *from,
                 uint64_t base_from, const char *to, uint64_t base_to, uint64_t *ret_version);

