/* account-history.h - reading an account's past: the log, versions, deleted entries, a past tree
 *
 * Readers only, like account-read.h; each query reads one consistent
 * committed state.
 */
#pragma once

#include <stdint.h>

#include "account.h"
#include "bs-proto.h"

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
                      uint32_t limit, const AccountWaker *w, AccountQuery **ret);
AccountQuery *account_query_free(AccountQuery *q);
static inline void account_query_freep(AccountQuery **q) { if (*q) account_query_free(*q); }
/** The sequence the answer is as of (once next() answered other than -EINPROGRESS). */
uint64_t account_query_seq(const AccountQuery *q);
/** Next row: 1, or 0 at the end, -EINPROGRESS (w is told), or a negative errno. */
int account_query_next(AccountQuery *q, BsHistRow *row);
