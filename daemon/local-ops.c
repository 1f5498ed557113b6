/* local-ops.c - the embedded backend behind the storage interface
 *
 * Each operation of the interface on a local object is the local_*()
 * function of the same name: here they are only converted from the
 * interface's base structs, which every local object begins with.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-macro.h"
#include "local-internal.h"

/* Every local object begins with its base struct. */
#define LOCAL(a) ((LocalAccount *) (a))
#define CLOCAL(a) ((const LocalAccount *) (a))

/* The embedded backend applies each change at once, inside the account's
 * open transaction: a batch is that transaction. */
typedef struct LocalBatch {
        AccountBatch base;
        LocalAccount *account;
} LocalBatch;

#define BATCH(b) (((LocalBatch *) (b))->account)

typedef struct LocalBackend {
        Backend base;
        char *storage;
} LocalBackend;

Account *local_account(LocalAccount *a) {
        return &a->base;
}

static int ops_wait(Account *a, const AccountWaker *w) {
        return 0; /* opened or created at once */
}

static void ops_forget_waker(Account *a, const AccountWaker *w) {
}

static void ops_free(Account *a) {
        local_free(LOCAL(a));
}

static const char *ops_id(const Account *a) {
        return local_id(CLOCAL(a));
}

static uint64_t ops_committed_seq(const Account *a) {
        return local_committed_seq(CLOCAL(a));
}

static bool ops_key_valid(Account *a, const char *key) {
        return local_key_valid(LOCAL(a), key);
}

static int ops_device_seen(Account *a, const uint8_t device[BS_DEVICE_LEN], const char *name) {
        return local_device_seen(LOCAL(a), device, name);
}

static int ops_batch_new(Account *a, AccountBatch **ret) {
        LocalBatch *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->base.ops = &local_ops;
        b->account = LOCAL(a);
        *ret = &b->base;
        return 0;
}

static int ops_batch_commit(AccountBatch *b, const AccountWaker *w) {
        return local_commit(BATCH(b));
}

static int ops_batch_answer(AccountBatch *b, unsigned i, uint64_t *ret_version) {
        return -EOPNOTSUPP; /* every change was answered at once */
}

static void ops_batch_free(AccountBatch *b) {
        /* What the tree holds already is kept: the metadata must agree with it. */
        (void) local_commit(BATCH(b));
        free(b);
}

static bool ops_needs_recovery(const Account *a) {
        return local_needs_recovery(CLOCAL(a));
}

static int ops_verify(Account *a, bool repair, bool hash_all, account_verify_fn report, void *userdata) {
        return local_verify(LOCAL(a), repair, hash_all, report, userdata);
}

static int ops_prune(Account *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats,
                     const AccountWaker *w) {
        return local_prune(LOCAL(a), ret, now, budget, stats);
}

static int ops_history_usage(Account *a, uint64_t *bytes) {
        return local_history_usage(LOCAL(a), bytes);
}

static int ops_entry_get(Account *a, const char *path, AccountEntry *ret) {
        return local_entry_get(LOCAL(a), path, ret);
}

static int ops_put_check(Account *a, const char *path, uint64_t base, uint64_t size) {
        return local_put_check(LOCAL(a), path, base, size);
}

static int ops_upload_begin(Account *a, AccountUpload **ret) {
        return local_upload_begin(LOCAL(a), (LocalUpload **) ret);
}

static int ops_upload_write(AccountUpload *u, const void *p, size_t n, uint64_t limit) {
        return local_upload_write((LocalUpload *) u, p, n, limit);
}

static void ops_upload_free(AccountUpload *u) {
        local_upload_free((LocalUpload *) u);
}

static int ops_put(AccountBatch *b, AccountUpload *u, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base, uint64_t size, uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN],
                   uint64_t *ret_version) {
        return local_put(BATCH(b), (LocalUpload *) u, device, path, base, size, mode, mtime_ns, sha, ret_version);
}

static int ops_attr(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                    uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        return local_attr(BATCH(b), device, path, base, mode, mtime_ns, sha, ret_version);
}

static int ops_mkdir(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                     uint32_t mode, int64_t mtime_ns, uint64_t *ret_version) {
        return local_mkdir(BATCH(b), device, path, base, mode, mtime_ns, ret_version);
}

static int ops_symlink(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                       const char *target, int64_t mtime_ns, uint64_t *ret_version) {
        return local_symlink(BATCH(b), device, path, base, target, mtime_ns, ret_version);
}

static int ops_delete(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                      uint64_t *ret_version) {
        return local_delete(BATCH(b), device, path, base, ret_version);
}

static int ops_move(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *from, uint64_t base_from,
                    const char *to, uint64_t base_to, uint64_t *ret_version) {
        return local_move(BATCH(b), device, from, base_from, to, base_to, ret_version);
}

static int ops_content_open(Account *a, const uint8_t sha[BS_SHA_LEN], const char *path, const AccountWaker *w,
                            AccountContent **ret) {
        return local_content_open(LOCAL(a), sha, path, (LocalContent **) ret);
}

static void ops_reads_begin(Account *a) {
        local_reads_begin(LOCAL(a));
}

static void ops_reads_end(Account *a) {
        local_reads_end(LOCAL(a));
}

static int ops_content_wait(AccountContent *c) {
        return 0; /* found when opened */
}

static void ops_content_free(AccountContent *c) {
        local_content_free((LocalContent *) c);
}

static int ops_content_read(AccountContent *c, uint64_t off, void *buf, size_t n) {
        return local_content_read((LocalContent *) c, off, buf, n);
}

static void ops_content_prefetch(AccountContent *c, uint64_t len, BsReadahead *ra) {
        local_content_prefetch((LocalContent *) c, len, ra);
}

static int ops_cursor_new(Account *a, uint64_t since, const AccountWaker *w, AccountCursor **ret) {
        return local_cursor_new(LOCAL(a), since, (LocalCursor **) ret);
}

static void ops_cursor_free(AccountCursor *c) {
        local_cursor_free((LocalCursor *) c);
}

static uint64_t ops_cursor_seq(const AccountCursor *c) {
        return local_cursor_seq((const LocalCursor *) c);
}

static bool ops_cursor_is_snapshot(const AccountCursor *c) {
        return local_cursor_is_snapshot((const LocalCursor *) c);
}

/* A GET of a current file reads it from tree/, in the snapshot's order. */
static int ops_warm_start(Account *a, const BsWarmOps *ops, void *userdata, BsWarm **ret) {
        return bs_warm_start(LOCAL(a)->tree_fd, ops, userdata, ret);
}

static int ops_cursor_next(AccountCursor *c, BsRecord *rec) {
        return local_cursor_next((LocalCursor *) c, rec);
}

static int ops_query_new(Account *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time, uint32_t limit,
                         const AccountWaker *w, AccountQuery **ret) {
        return local_query_new(LOCAL(a), what, path, seq, time, limit, (LocalQuery **) ret);
}

static void ops_query_free(AccountQuery *q) {
        local_query_free((LocalQuery *) q);
}

static uint64_t ops_query_seq(const AccountQuery *q) {
        return local_query_seq((const LocalQuery *) q);
}

static int ops_query_next(AccountQuery *q, BsHistRow *row) {
        return local_query_next((LocalQuery *) q, row);
}

const AccountOps local_ops = {
        .wait = ops_wait,
        .forget_waker = ops_forget_waker,
        .free = ops_free,
        .id = ops_id,
        .committed_seq = ops_committed_seq,
        .key_valid = ops_key_valid,
        .device_seen = ops_device_seen,
        .batch_new = ops_batch_new,
        .batch_commit = ops_batch_commit,
        .batch_answer = ops_batch_answer,
        .batch_free = ops_batch_free,
        .needs_recovery = ops_needs_recovery,
        .verify = ops_verify,
        .prune = ops_prune,
        .history_usage = ops_history_usage,
        .entry_get = ops_entry_get,
        .put_check = ops_put_check,
        .upload_begin = ops_upload_begin,
        .upload_write = ops_upload_write,
        .upload_free = ops_upload_free,
        .put = ops_put,
        .attr = ops_attr,
        .mkdir = ops_mkdir,
        .symlink = ops_symlink,
        .delete = ops_delete,
        .move = ops_move,
        .reads_begin = ops_reads_begin,
        .reads_end = ops_reads_end,
        .content_open = ops_content_open,
        .content_wait = ops_content_wait,
        .content_free = ops_content_free,
        .content_read = ops_content_read,
        .content_prefetch = ops_content_prefetch,
        .cursor_new = ops_cursor_new,
        .cursor_free = ops_cursor_free,
        .cursor_seq = ops_cursor_seq,
        .cursor_is_snapshot = ops_cursor_is_snapshot,
        .warm_start = ops_warm_start,
        .cursor_next = ops_cursor_next,
        .query_new = ops_query_new,
        .query_free = ops_query_free,
        .query_seq = ops_query_seq,
        .query_next = ops_query_next,
};

static int backend_create(Backend *b, Account **ret, char *token) {
        LocalAccount *a;
        int r = local_create(((LocalBackend *) b)->storage, &a, token);
        if (r < 0)
                return r;
        *ret = &a->base;
        return 0;
}

static int backend_open(Backend *b, const char *id, Account **ret) {
        LocalAccount *a;
        int r = local_open(((LocalBackend *) b)->storage, id, &a);
        if (r < 0)
                return r;
        *ret = &a->base;
        return 0;
}

static int backend_list(Backend *b, const AccountWaker *w, char ***ret, size_t *ret_n) {
        return local_list(((LocalBackend *) b)->storage, ret, ret_n);
}

static void backend_set_watch_local(Backend *b, backend_watch_fn fn, void *userdata) {
        /* One process per storage: no account advances elsewhere. */
}

static void backend_drop(Backend *b) {
        LocalBackend *l = (LocalBackend *) b;
        free(l->storage);
        free(l);
}

static const BackendOps local_backend_ops = {
        .account_create = backend_create,
        .account_open = backend_open,
        .account_list = backend_list,
        .set_watch = backend_set_watch_local,
        .free = backend_drop,
};

int local_backend_new(const char *storage, Backend **ret) {
        LocalBackend *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->base.ops = &local_backend_ops;
        l->storage = strdup(storage);
        if (!l->storage) {
                free(l);
                return -ENOMEM;
        }
        *ret = &l->base;
        return 0;
}
