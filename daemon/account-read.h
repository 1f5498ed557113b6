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

/**
 * Open content for GET: the file at path when it has this SHA-256, else
 * any current file or kept version with it. -ENOENT when there is none.
 */
int account_content_open(Account *a, const uint8_t sha[BS_SHA_LEN], const char *path,
                         AccountContent *ret);

/**
 * Start reading the account for PULL: a snapshot of all entries (since 0)
 * or the change-log records after since. The cursor reads one consistent
 * state over its own database connection, so changes committed meanwhile
 * do not tear the answer. Commit before creating one.
 */
int account_cursor_new(Account *a, uint64_t since, AccountCursor **ret);
AccountCursor *account_cursor_free(AccountCursor *c);
static inline void account_cursor_freep(AccountCursor **c) { if (*c) account_cursor_free(*c); }
/** The sequence the answer is complete up to. */
uint64_t account_cursor_seq(const AccountCursor *c);
bool account_cursor_is_snapshot(const AccountCursor *c);
/** Next record: 1, or 0 at the end, or a negative errno. */
int account_cursor_next(AccountCursor *c, BsRecord *rec);

typedef struct AccountQuery AccountQuery;

/**
 * Start reading the account's past (account-history.c): what, for path
 * and below (all of the account when path is ""), at most limit rows (0:
 * no limit). seq bounds the answer from above (0: now); time from below
 * (seconds, 0: none), except for BS_HIST_TREE, where a time without a seq
 * picks the last change made by then. -EINVAL for an unknown what or a
 * path that breaks the rules. Commit before creating one.
 */
int account_query_new(Account *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time,
                      uint32_t limit, AccountQuery **ret);
AccountQuery *account_query_free(AccountQuery *q);
static inline void account_query_freep(AccountQuery **q) { if (*q) account_query_free(*q); }
/** The sequence the answer is as of. */
uint64_t account_query_seq(const AccountQuery *q);
/** Next row: 1, or 0 at the end, or a negative errno. */
int account_query_next(AccountQuery *q, BsHistRow *row);
