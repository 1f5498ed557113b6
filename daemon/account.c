/* account.c - the storage interface: each call goes to the object's implementation
 *
 * Nothing here knows a backend; the checks every implementation needs
 * (a read within the content) are made here once.
 */
#include <errno.h>
#include <stdlib.h>

#include "account-backend.h"
#include "bs-macro.h"

int backend_account_create(Backend *b, Account **ret, char *token) {
        return b->ops->account_create(b, ret, token);
}

int backend_account_open(Backend *b, const char *id, Account **ret) {
        return b->ops->account_open(b, id, ret);
}

int backend_account_list(Backend *b, const AccountWaker *w, char ***ret, size_t *ret_n) {
        return b->ops->account_list(b, w, ret, ret_n);
}

void backend_set_watch(Backend *b, backend_watch_fn fn, void *userdata) {
        b->ops->set_watch(b, fn, userdata);
}

char **account_list_free(char **ids, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(ids[i]);
        free(ids);
        return NULL;
}

Backend *backend_free(Backend *b) {
        if (b)
                b->ops->free(b);
        return NULL;
}

int account_wait(Account *a, const AccountWaker *w) {
        return a->ops->wait(a, w);
}

void account_forget_waker(Account *a, const AccountWaker *w) {
        a->ops->forget_waker(a, w);
}

Account *account_free(Account *a) {
        if (a)
                a->ops->free(a);
        return NULL;
}

const char *account_id(const Account *a) {
        return a->ops->id(a);
}

uint64_t account_committed_seq(const Account *a) {
        return a->ops->committed_seq(a);
}

bool account_key_valid(Account *a, const char *key) {
        return a->ops->key_valid(a, key);
}

int account_device_seen(Account *a, const uint8_t device[BS_DEVICE_LEN], const char *name) {
        return a->ops->device_seen(a, device, name);
}

int account_batch_new(Account *a, AccountBatch **ret) {
        return a->ops->batch_new(a, ret);
}

int account_batch_commit(AccountBatch *b, const AccountWaker *w) {
        return b->ops->batch_commit(b, w);
}

int account_batch_answer(AccountBatch *b, unsigned i, uint64_t *ret_version) {
        return b->ops->batch_answer(b, i, ret_version);
}

AccountBatch *account_batch_free(AccountBatch *b) {
        if (b)
                b->ops->batch_free(b);
        return NULL;
}

bool account_needs_recovery(const Account *a) {
        return a->ops->needs_recovery(a);
}

int account_verify(Account *a, bool repair, bool hash_all, account_verify_fn report, void *userdata) {
        return a->ops->verify(a, repair, hash_all, report, userdata);
}

int account_prune(Account *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats,
                  const AccountWaker *w) {
        return a->ops->prune(a, ret, now, budget, stats, w);
}

int account_history_usage(Account *a, uint64_t *bytes) {
        return a->ops->history_usage(a, bytes);
}

int account_entry_get(Account *a, const char *path, AccountEntry *ret) {
        return a->ops->entry_get(a, path, ret);
}

int account_put_check(Account *a, const char *path, uint64_t base, uint64_t size) {
        return a->ops->put_check(a, path, base, size);
}

int account_upload_begin(Account *a, AccountUpload **ret) {
        return a->ops->upload_begin(a, ret);
}

int account_upload_write(AccountUpload *u, const void *p, size_t n, uint64_t limit) {
        return u->ops->upload_write(u, p, n, limit);
}

AccountUpload *account_upload_free(AccountUpload *u) {
        if (u)
                u->ops->upload_free(u);
        return NULL;
}

int account_put(AccountBatch *b, AccountUpload *u, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                uint64_t size, uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        return b->ops->put(b, u, device, path, base, size, mode, mtime_ns, sha, ret_version);
}

int account_attr(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base, uint32_t mode,
                 int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        return b->ops->attr(b, device, path, base, mode, mtime_ns, sha, ret_version);
}

int account_mkdir(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base, uint32_t mode,
                  int64_t mtime_ns, uint64_t *ret_version) {
        return b->ops->mkdir(b, device, path, base, mode, mtime_ns, ret_version);
}

int account_symlink(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                    const char *target, int64_t mtime_ns, uint64_t *ret_version) {
        return b->ops->symlink(b, device, path, base, target, mtime_ns, ret_version);
}

int account_delete(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                   uint64_t *ret_version) {
        return b->ops->delete(b, device, path, base, ret_version);
}

int account_move(AccountBatch *b, const uint8_t device[BS_DEVICE_LEN], const char *from, uint64_t base_from,
                 const char *to, uint64_t base_to, uint64_t *ret_version) {
        return b->ops->move(b, device, from, base_from, to, base_to, ret_version);
}

void account_reads_begin(Account *a) {
        if (a->ops->reads_begin)
                a->ops->reads_begin(a);
}

void account_reads_end(Account *a) {
        if (a->ops->reads_end)
                a->ops->reads_end(a);
}

int account_content_open(Account *a, const uint8_t sha[BS_SHA_LEN], const char *path, const AccountWaker *w,
                         AccountContent **ret) {
        return a->ops->content_open(a, sha, path, w, ret);
}

int account_content_wait(AccountContent *c) {
        return c->ops->content_wait(c);
}

AccountContent *account_content_free(AccountContent *c) {
        if (c)
                c->ops->content_free(c);
        return NULL;
}

const AccountContentInfo *account_content_info(const AccountContent *c) {
        return &c->info;
}

int account_content_read(AccountContent *c, uint64_t off, void *buf, size_t n) {
        if (off > c->info.size || n > c->info.size - off)
                return -EBADMSG;
        return c->ops->content_read(c, off, buf, n);
}

void account_content_prefetch(AccountContent *c, uint64_t len, BsReadahead *ra) {
        c->ops->content_prefetch(c, len, ra);
}

int account_cursor_new(Account *a, uint64_t since, const AccountWaker *w, AccountCursor **ret) {
        return a->ops->cursor_new(a, since, w, ret);
}

AccountCursor *account_cursor_free(AccountCursor *c) {
        if (c)
                c->ops->cursor_free(c);
        return NULL;
}

uint64_t account_cursor_seq(const AccountCursor *c) {
        return c->ops->cursor_seq(c);
}

bool account_cursor_is_snapshot(const AccountCursor *c) {
        return c->ops->cursor_is_snapshot(c);
}

int account_warm_start(Account *a, const BsWarmOps *ops, void *userdata, BsWarm **ret) {
        return a->ops->warm_start(a, ops, userdata, ret);
}

int account_cursor_next(AccountCursor *c, BsRecord *rec) {
        return c->ops->cursor_next(c, rec);
}

int account_query_new(Account *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time, uint32_t limit,
                      const AccountWaker *w, AccountQuery **ret) {
        return a->ops->query_new(a, what, path, seq, time, limit, w, ret);
}

AccountQuery *account_query_free(AccountQuery *q) {
        if (q)
                q->ops->query_free(q);
        return NULL;
}

uint64_t account_query_seq(const AccountQuery *q) {
        return q->ops->query_seq(q);
}

int account_query_next(AccountQuery *q, BsHistRow *row) {
        return q->ops->query_next(q, row);
}
