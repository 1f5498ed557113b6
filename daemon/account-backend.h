/* account-backend.h - what an implementation of the storage interface provides
 *
 * Only implementations (local-*.c for the embedded backend) and the
 * dispatch in account.c include this. Each of their objects begins with
 * the matching base struct below, which names its operations; account.c
 * calls through it, so the sessions never learn whose object they hold.
 */
#pragma once

#include "account.h"
#include "account-history.h"
#include "account-read.h"

typedef struct AccountOps AccountOps;
typedef struct BackendOps BackendOps;

struct Backend {
        const BackendOps *ops;
};

struct Account {
        const AccountOps *ops;
};

struct AccountUpload {
        const AccountOps *ops;
};

struct AccountBatch {
        const AccountOps *ops;
};

struct AccountContent {
        const AccountOps *ops;
        AccountContentInfo info;
};

struct AccountCursor {
        const AccountOps *ops;
};

struct AccountQuery {
        const AccountOps *ops;
};

/* The meaning of each operation is that of the account_*() function of
 * the same name (account.h, account-read.h, account-history.h). */
struct BackendOps {
        int (*account_create)(Backend *b, Account **ret, char *token);
        int (*account_open)(Backend *b, const char *id, Account **ret);
        int (*account_list)(Backend *b, const AccountWaker *w, char ***ret, size_t *ret_n);
        void (*set_watch)(Backend *b, backend_watch_fn fn, void *userdata);
        void (*free)(Backend *b);
};

struct AccountOps {
        int (*wait)(Account *a, const AccountWaker *w);
        void (*forget_waker)(Account *a, const AccountWaker *w);
        void (*free)(Account *a);
        const char *(*id)(const Account *a);
        uint64_t (*committed_seq)(const Account *a);
        bool (*key_valid)(Account *a, const char *key);
        int (*device_seen)(Account *a, const uint8_t device[BS_DEVICE_LEN], const char *name);
        int (*batch_new)(Account *a, AccountBatch **ret);
        int (*batch_commit)(AccountBatch *b, const AccountWaker *w);
        int (*batch_answer)(AccountBatch *b, unsigned i, uint64_t *ret_version);
        void (*batch_free)(AccountBatch *b);
        bool (*needs_recovery)(const Account *a);
        int (*verify)(Account *a, bool repair, bool hash_all, account_verify_fn report, void *userdata);
        int (*prune)(Account *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats,
                     const AccountWaker *w);
        int (*history_usage)(Account *a, uint64_t *bytes);
        int (*entry_get)(Account *a, const char *path, AccountEntry *ret);
        int (*put_check)(Account *a, const char *path, uint64_t base, uint64_t size);

        int (*upload_begin)(Account *a, AccountUpload **ret);
        int (*upload_write)(AccountUpload *u, const void *p, size_t n, uint64_t limit);
        void (*upload_free)(AccountUpload *u);
        int (*put)(AccountBatch *b, AccountUpload *u, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base, uint64_t size, uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN],
                   uint64_t *ret_version);
        int (*attr)(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                    uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version);
        int (*mkdir)(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                     uint32_t mode, int64_t mtime_ns, uint64_t *ret_version);
        int (*symlink)(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                       const char *target, int64_t mtime_ns, uint64_t *ret_version);
        int (*delete)(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                      uint64_t *ret_version);
        int (*move)(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *from, uint64_t base_from,
                    const char *to, uint64_t base_to, uint64_t *ret_version);

        void (*reads_begin)(Account *a); /* optional */
        void (*reads_end)(Account *a);   /* optional */
        int (*content_open)(Account *a, const uint8_t sha[BS_SHA_LEN], const char *path, const AccountWaker *w,
                            AccountContent **ret);
        int (*content_wait)(AccountContent *c);
        void (*content_free)(AccountContent *c);
        int (*content_read)(AccountContent *c, uint64_t off, void *buf, size_t n);
        void (*content_prefetch)(AccountContent *c, uint64_t len, BsReadahead *ra);

        int (*cursor_new)(Account *a, uint64_t since, const AccountWaker *w, AccountCursor **ret);
        void (*cursor_free)(AccountCursor *c);
        uint64_t (*cursor_seq)(const AccountCursor *c);
        bool (*cursor_is_snapshot)(const AccountCursor *c);
        int (*warm_start)(Account *a, const BsWarmOps *ops, void *userdata, BsWarm **ret);
        int (*cursor_next)(AccountCursor *c, BsRecord *rec);

        int (*query_new)(Account *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time,
                         uint32_t limit, const AccountWaker *w, AccountQuery **ret);
        void (*query_free)(AccountQuery *q);
        uint64_t (*query_seq)(const AccountQuery *q);
        int (*query_next)(AccountQuery *q, BsHistRow *row);
};
