/* account-read.h - reading an account: PULL cursors and content for GET
 *
 * Readers only: nothing here changes the account (see account.h), so the
 * session code that streams answers depends on this and not the reverse.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "account.h"
#include "bs-proto.h"
#include "bs-readahead.h"
#include "bs-warm.h"

/**
 * The lookups from here to account_reads_end() may share one read of the
 * metadata, as a run of GETs opened ahead does: advice, for a backend
 * where each read has a fixed cost. No change may be made in between.
 * Inside a run already begun, a no-op.
 */
void account_reads_begin(Account *a);
/** End what account_reads_begin() started, if anything. */
void account_reads_end(Account *a);

/**
 * Open content for GET: the file at path when it has this SHA-256, else
 * any current file or kept version with it. -ENOENT when there is none,
 * then or from account_content_wait(). w is told whenever an answer of
 * this content given as -EINPROGRESS is there.
 */
int account_content_open(Account *a, const uint8_t sha[BS_SHA_LEN], const char *path, const AccountWaker *w,
                         AccountContent **ret);
/** 0 once the content is found (its info is valid), -EINPROGRESS, or -ENOENT. */
int account_content_wait(AccountContent *c);
AccountContent *account_content_free(AccountContent *c);
static inline void account_content_freep(AccountContent **c) { if (*c) account_content_free(*c); }
/** Size, mode, mtime and version of the content. */
const AccountContentInfo *account_content_info(const AccountContent *c);
/**
 * Read exactly n bytes at off into buf: 0, -EBADMSG when the content
 * ends before (it cannot be what its entry said), -EINPROGRESS (ask
 * again when told), or a negative errno.
 */
int account_content_read(AccountContent *c, uint64_t off, void *buf, size_t n);
/**
 * Start reading the first len bytes of c ahead, without waiting; with ra
 * (may be NULL), at its bs_readahead_submit(), together with the others.
 */
void account_content_prefetch(AccountContent *c, uint64_t len, BsReadahead *ra);

/**
 * Start reading the account for PULL: a snapshot of all entries (since 0,
 * or before the pruned part of the log) or the change-log records after
 * since. The cursor reads one consistent committed state, so changes
 * committed meanwhile do not tear the answer: commit before creating one.
 */
int account_cursor_new(Account *a, uint64_t since, const AccountWaker *w, AccountCursor **ret);
AccountCursor *account_cursor_free(AccountCursor *c);
static inline void account_cursor_freep(AccountCursor **c) { if (*c) account_cursor_free(*c); }
/** The sequence the answer is complete up to (once next() answered other than -EINPROGRESS). */
uint64_t account_cursor_seq(const AccountCursor *c);
bool account_cursor_is_snapshot(const AccountCursor *c);
/** Next record: 1, or 0 at the end, -EINPROGRESS (w is told), or a negative errno. */
int account_cursor_next(AccountCursor *c, BsRecord *rec);

/**
 * Start reading the metadata of the account's files ahead of the GETs
 * that follow a snapshot (bs-warm.h, which says what ops and userdata
 * are, paths being those of the account): 0, -EOPNOTSUPP where the
 * backend keeps no tree of files to walk, or another negative errno.
 */
int account_warm_start(Account *a, const BsWarmOps *ops, void *userdata, BsWarm **ret);

