/* cluster-account.c - an account of the cluster backend: batches, uploads, reads
 *
 * A batch collects its changes and answers each at commit: first every
 * uploaded content is stored as an object (the store answered success),
 * then one transaction applies the changes in order through the schema's
 * functions, records the objects and announces the new sequence. Only
 * then are the answers there, so an acknowledged change never names a
 * missing object; a crash in between leaves an object nothing names. A
 * batch with contents holds its account's objects lock shared from
 * before its first upload to its end, so the collector (cluster-prune.c)
 * removes nothing it stored.
 * Reads look the content up in PostgreSQL and fetch it from the store in
 * windows; a PULL reads one consistent state in one transaction.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-clock.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-token.h"
#include "cluster-internal.h"

/* Bytes fetched from the store per read of a content: a GET streams on
 * from memory between round trips. */
#define CONTENT_WINDOW (4u * 1024 * 1024)

#define ACCOUNT(a) ((ClusterAccount *) (a))

typedef struct ClusterBatch ClusterBatch;

/* One change of a batch, as the agent asked it, and its answer. */
typedef struct Change {
        ClusterBatch *batch;
        uint8_t type; /* BS_MSG_* */
        uint8_t device[BS_DEVICE_LEN];
        char *path, *path2; /* path2: MOVE's target or SYMLINK's link text */
        uint64_t base, base2, size;
        uint32_t mode;
        int64_t mtime_ns;
        uint8_t sha[BS_SHA_LEN];
        int fd;             /* PUT: the spooled content, until the batch is done */
        S3Request *req;     /* PUT: its object being stored */
        bool known;         /* PUT: the store holds its content already */
        ClusterRecipe recipe; /* PUT of a big content: its chunks (none: one object) */
        int r;
        uint64_t version;
} Change;

enum { BATCH_OPEN, BATCH_LOCKING, BATCH_STORING, BATCH_COMMITTING, BATCH_DONE };

/* A chunk of the batch's big contents, once however often they name it. */
typedef struct BatchChunk {
        uint8_t sha[BS_SHA_LEN];
        ClusterBatch *batch;
        Change *from;       /* a change whose spool file holds it */
        size_t idx;         /* its place in that change's recipe */
        bool known, needed;
        S3Request *req;
} BatchChunk;

/* How long a batch waits before asking again for the objects lock the collector holds. */
#define SHARE_RETRY_USEC (20 * 1000ULL)

struct ClusterBatch {
        AccountBatch base;
        ClusterAccount *account;
        Change *changes;
        size_t n, cap;
        int state;
        int result;
        unsigned storing; /* objects in flight */
        const AccountWaker *waker;
        bool freed;       /* let go while locking or committing: the answer frees it */
        bool shared;      /* holds the objects lock shared */
        int share_error;
        bool known_missing; /* the question of known contents was not asked */
        BatchChunk *chunks; /* sorted by SHA-256 */
        size_t n_chunks;
        sd_event_source *retry;
};

typedef struct ClusterUpload {
        AccountUpload base;
        int fd;
        BsSha *sha;
        uint64_t written;
        ClusterCutter cutter;
} ClusterUpload;

typedef struct ClusterContent {
        AccountContent base;
        ClusterAccount *account;
        const AccountWaker *waker;
        int state; /* 1 while looked up, then 0 or -errno */
        bool freed;
        char key[S3_KEY_MAX];
        uint8_t *data; /* a window of the object */
        uint64_t data_off;
        size_t data_len;
        S3Request *req;
        int read_error;
        uint64_t prefetch; /* bytes to fetch as soon as the lookup answered */
        ClusterRecipe recipe; /* a chunked content's chunks (n = 0: one object) */
        struct ContentPart {
                struct ClusterContent *content;
                uint64_t off, len; /* of the window, in this chunk's object */
                uint64_t at;       /* where in the window */
                S3Request *req;
        } *parts;          /* the pieces of chunks of the window being fetched */
        size_t n_parts;
        unsigned fetching;
        uint8_t *fill;     /* the window being fetched */
        size_t fill_len;
} ClusterContent;

/* One consistent state read for a PULL or a HISTORY: a sequence and rows,
 * in one REPEATABLE READ transaction. */
typedef struct ClusterRead {
        void *owner;      /* what to free when it was let go while reading */
        const AccountWaker *waker;
        int state;        /* 1 while reading, then 0 or -errno */
        bool freed;
        uint64_t seq;
        PGresult *rows;
        int row;
} ClusterRead;

typedef struct ClusterCursor {
        AccountCursor base;
        ClusterRead read;
        bool snapshot;
        uint64_t since;
} ClusterCursor;

static void wake(const AccountWaker *w) {
        if (w)
                w->fn(w->userdata);
}

/* --- the account --- */

static int ops_wait(Account *base, const AccountWaker *w) {
        ClusterAccount *a = ACCOUNT(base);
        if (a->state <= 0)
                return a->state;
        int r = cluster_waiters_add(&a->waiters, w);
        return r < 0 ? r : -EINPROGRESS;
}

static void ops_forget_waker(Account *base, const AccountWaker *w) {
        cluster_waiters_remove(&ACCOUNT(base)->waiters, w);
}

static void ops_free(Account *base) {
        cluster_account_drop(ACCOUNT(base));
}

static const char *ops_id(const Account *base) {
        return ((const ClusterAccount *) base)->id;
}

static uint64_t ops_committed_seq(const Account *base) {
        return ((const ClusterAccount *) base)->seq;
}

static bool ops_key_valid(Account *base, const char *key) {
        char h[65];
        return bs_key_hash(key, h) >= 0 && bs_key_hash_equal(h, ACCOUNT(base)->key_hash);
}

static int ops_device_seen(Account *base, const uint8_t device[BS_DEVICE_LEN], const char *name) {
        ClusterAccount *a = ACCOUNT(base);
        char now[32];
        snprintf(now, sizeof(now), "%" PRId64, (int64_t) bs_now());
        const char *v[] = { a->id, (const char *) device, name, now };
        const int len[] = { 0, BS_DEVICE_LEN, 0, 0 }, fmt[] = { 0, 1, 0, 0 };
        /* Only for the status: not waited for. */
        return pg_query(a->backend->pg,
                        "INSERT INTO bs_devices (account, id, name, first_seen, last_seen) "
                        "VALUES ($1, $2::bytea, $3, $4::bigint, $4::bigint) "
                        "ON CONFLICT (account, id) DO UPDATE SET name = $3, last_seen = $4",
                        4, v, len, fmt, NULL, NULL);
}

static bool ops_needs_recovery(const Account *base) {
        return false; /* a transaction commits whole or not at all */
}

static int ops_unsupported(void) {
        return -EOPNOTSUPP;
}

static int ops_verify(Account *a, bool repair, bool hash_all, account_verify_fn report, void *userdata) {
        return ops_unsupported();
}

static int ops_prune(Account *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats,
                     const AccountWaker *w) {
        return cluster_prune(ACCOUNT(a), ret, now, budget, stats, w);
}

static int ops_history_usage(Account *base, uint64_t *bytes) {
        ClusterAccount *a = ACCOUNT(base);
        if (a->history_bytes < 0)
                return -ENODATA; /* learnt by pruning */
        *bytes = (uint64_t) a->history_bytes;
        return 0;
}

static int ops_entry_get(Account *a, const char *path, AccountEntry *ret) {
        return ops_unsupported();
}

static int ops_put_check(Account *a, const char *path, uint64_t base, uint64_t size) {
        return 0; /* decided at PUT_END, inside the batch's transaction */
}

/* --- uploads: a file in the spool directory, without a name --- */

static int ops_upload_begin(Account *base, AccountUpload **ret) {
        ClusterAccount *a = ACCOUNT(base);
        ClusterUpload *u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->base.ops = &cluster_account_ops;
        u->fd = openat(a->backend->spool_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        int r = u->fd < 0 ? -errno : bs_sha_new(&u->sha);
        if (r < 0) {
                if (u->fd >= 0)
                        close(u->fd);
                free(u);
                return r;
        }
        *ret = &u->base;
        return 0;
}

static int ops_upload_write(AccountUpload *base, const void *p, size_t n, uint64_t limit) {
        ClusterUpload *u = (ClusterUpload *) base;
        if (n > limit || u->written > limit - n)
                return -EFBIG;
        int r = bs_write_sparse(u->fd, p, n);
        r = r ?: bs_sha_update(u->sha, p, n);
        if (r >= 0)
                u->written += n;
        return r ?: cluster_cutter_feed(&u->cutter, u->fd, u->written, false);
}

static void ops_upload_free(AccountUpload *base) {
        ClusterUpload *u = (ClusterUpload *) base;
        if (u->fd >= 0)
                close(u->fd);
        bs_sha_free(u->sha);
        cluster_cutter_done(&u->cutter);
        free(u);
}

/* --- batches --- */

static void change_done(Change *c) {
        free(c->path);
        free(c->path2);
        cluster_recipe_done(&c->recipe);
        if (c->req)
                s3_request_cancel(c->req);
        if (c->fd >= 0)
                close(c->fd);
        c->req = NULL;
        c->fd = -1;
        c->path = c->path2 = NULL;
}

/* Let go of the objects lock; not waited for. On a connection lost
 * meanwhile it went with it, and this answers false. */
static void batch_unshare(ClusterBatch *b) {
        if (!b->shared)
                return;
        b->shared = false;
        const char *v[] = { b->account->id };
        (void) pg_query(b->account->backend->pg, "SELECT bs_objects_unshare($1)", 1, v, NULL, NULL, NULL, NULL);
}

static void batch_destroy(ClusterBatch *b) {
        batch_unshare(b);
        sd_event_source_disable_unref(b->retry);
        for (size_t i = 0; i < b->n_chunks; i++)
                if (b->chunks[i].req)
                        s3_request_cancel(b->chunks[i].req);
        free(b->chunks);
        for (size_t i = 0; i < b->n; i++)
                change_done(&b->changes[i]);
        free(b->changes);
        free(b);
}

static int ops_batch_new(Account *base, AccountBatch **ret) {
        ClusterBatch *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->base.ops = &cluster_account_ops;
        b->account = ACCOUNT(base);
        *ret = &b->base;
        return 0;
}

/* A new change at the end of the batch: answered at commit. */
static int batch_add(AccountBatch *base, uint8_t type, const uint8_t device[BS_DEVICE_LEN], const char *path,
                     const char *path2, Change **ret) {
        ClusterBatch *b = (ClusterBatch *) base;
        if (b->state != BATCH_OPEN)
                return -EBUSY;
        if (b->n == b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 16;
                Change *n = reallocarray(b->changes, cap, sizeof(*n));
                if (!n)
                        return -ENOMEM;
                b->changes = n;
                b->cap = cap;
        }
        Change *c = &b->changes[b->n];
        *c = (Change) { .batch = b, .type = type, .fd = -1 };
        memcpy(c->device, device, BS_DEVICE_LEN);
        c->path = strdup(path);
        c->path2 = path2 ? strdup(path2) : NULL;
        if (!c->path || (path2 && !c->path2)) {
                change_done(c);
                return -ENOMEM;
        }
        b->n++;
        *ret = c;
        return 0;
}

static int ops_put(AccountBatch *base, AccountUpload *ubase, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base_version, uint64_t size, uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN],
                   uint64_t *ret_version) {
        ClusterUpload *u = (ClusterUpload *) ubase;
        uint8_t got[BS_SHA_LEN];
        Change *c;
        int r = bs_sha_final(u->sha, got);
        if (r >= 0 && (u->written != size || memcmp(got, sha, BS_SHA_LEN) != 0))
                r = -EBADMSG;
        r = r ?: cluster_cutter_feed(&u->cutter, u->fd, u->written, true);
        r = r ?: batch_add(base, BS_MSG_PUT, device, path, NULL, &c);
        if (r >= 0) {
                c->recipe = u->cutter.recipe;
                u->cutter.recipe = (ClusterRecipe) {};
                c->base = base_version;
                c->size = size;
                c->mode = mode;
                c->mtime_ns = mtime_ns;
                memcpy(c->sha, sha, BS_SHA_LEN);
                c->fd = TAKE_FD(u->fd);
        }
        ops_upload_free(ubase);
        return r < 0 ? r : -EINPROGRESS;
}

static int ops_attr(AccountBatch *base, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base_version,
                    uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        Change *c;
        int r = batch_add(base, BS_MSG_ATTR, device, path, NULL, &c);
        if (r < 0)
                return r;
        c->base = base_version;
        c->mode = mode;
        c->mtime_ns = mtime_ns;
        memcpy(c->sha, sha, BS_SHA_LEN);
        return -EINPROGRESS;
}

static int ops_mkdir(AccountBatch *base, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base_version,
                     uint32_t mode, int64_t mtime_ns, uint64_t *ret_version) {
        Change *c;
        int r = batch_add(base, BS_MSG_MKDIR, device, path, NULL, &c);
        if (r < 0)
                return r;
        c->base = base_version;
        c->mode = mode;
        c->mtime_ns = mtime_ns;
        return -EINPROGRESS;
}

static int ops_symlink(AccountBatch *base, const uint8_t device[BS_DEVICE_LEN], const char *path,
                       uint64_t base_version, const char *target, int64_t mtime_ns, uint64_t *ret_version) {
        Change *c;
        size_t n = strlen(target);
        if (n == 0 || n > BS_PATH_MAX)
                return -EINVAL;
        int r = batch_add(base, BS_MSG_SYMLINK, device, path, target, &c);
        if (r < 0)
                return r;
        c->base = base_version;
        c->mtime_ns = mtime_ns;
        return -EINPROGRESS;
}

static int ops_delete(AccountBatch *base, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base_version,
                      uint64_t *ret_version) {
        Change *c;
        int r = batch_add(base, BS_MSG_DELETE, device, path, NULL, &c);
        if (r < 0)
                return r;
        c->base = base_version;
        return -EINPROGRESS;
}

static int ops_move(AccountBatch *base, const uint8_t device[BS_DEVICE_LEN], const char *from, uint64_t base_from,
                    const char *to, uint64_t base_to, uint64_t *ret_version) {
        Change *c;
        int r = batch_add(base, BS_MSG_MOVE, device, from, to, &c);
        if (r < 0)
                return r;
        c->base = base_from;
        c->base2 = base_to;
        return -EINPROGRESS;
}

static void batch_finish(ClusterBatch *b, int r) {
        b->state = BATCH_DONE;
        b->result = r;
        batch_unshare(b);
        for (size_t i = 0; i < b->n; i++)
                if (b->changes[i].fd >= 0) {
                        close(b->changes[i].fd);
                        b->changes[i].fd = -1;
                }
        if (b->freed) {
                batch_destroy(b);
                return;
        }
        wake(b->waker);
}

/* One change's answer, from its function's row (r, version). */
static void on_answer(Pg *pg, int r, const PGresult *res, void *userdata) {
        Change *c = userdata;
        if (PQntuples(res) != 1) {
                c->r = -EIO;
                return;
        }
        c->r = (int) cluster_column_int(res, 0, 0);
        c->version = (uint64_t) cluster_column_int(res, 0, 1);
}

static void on_committed(Pg *pg, int r, void *userdata) {
        ClusterBatch *b = userdata;
        if (r >= 0)
                for (size_t i = 0; i < b->n; i++)
                        if (b->changes[i].r == 0)
                                (void) cluster_account_advance(b->account, b->changes[i].version);
        /* An unknown outcome is a failure here: nothing is acknowledged, and
         * the agent finds out by pulling what became of its changes. */
        batch_finish(b, r == -EINPROGRESS ? -EIO : r);
}

static int query_change(PgTxn *t, const char *id, Change *c) {
        char base[32], base2[32], size[32], mode[32], mtime[32];
        snprintf(base, sizeof(base), "%" PRIu64, c->base);
        snprintf(base2, sizeof(base2), "%" PRIu64, c->base2);
        snprintf(size, sizeof(size), "%" PRIu64, c->size);
        snprintf(mode, sizeof(mode), "%" PRIu32, c->mode);
        snprintf(mtime, sizeof(mtime), "%" PRId64, c->mtime_ns);
        const char *dev = (const char *) c->device, *sha = (const char *) c->sha;
        int plen = (int) strlen(c->path), p2len = c->path2 ? (int) strlen(c->path2) : 0;

        switch (c->type) {
        case BS_MSG_PUT: {
                const char *v[] = { id, dev, c->path, base, size, mode, mtime, sha };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0, 0, 0, 0, BS_SHA_LEN }, f[] = { 0, 1, 1, 0, 0, 0, 0, 1 };
                return pg_txn_query(t, "SELECT r, version FROM bs_put($1, $2::bytea, $3::bytea, $4::bigint, $5::bigint, $6::integer, "
                                       "$7::bigint, $8::bytea)", 8, v, l, f,
                                    on_answer, c);
        }
        case BS_MSG_ATTR: {
                const char *v[] = { id, dev, c->path, base, mode, mtime, sha };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0, 0, 0, BS_SHA_LEN }, f[] = { 0, 1, 1, 0, 0, 0, 1 };
                return pg_txn_query(t, "SELECT r, version FROM bs_attr($1, $2::bytea, $3::bytea, $4::bigint, $5::integer, $6::bigint, "
                                       "$7::bytea)", 7, v, l, f,
                                    on_answer, c);
        }
        case BS_MSG_MKDIR: {
                const char *v[] = { id, dev, c->path, base, mode, mtime };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0, 0, 0 }, f[] = { 0, 1, 1, 0, 0, 0 };
                return pg_txn_query(t, "SELECT r, version FROM bs_mkdir($1, $2::bytea, $3::bytea, $4::bigint, $5::integer, $6::bigint)", 6, v, l, f,
                                    on_answer, c);
        }
        case BS_MSG_SYMLINK: {
                const char *v[] = { id, dev, c->path, base, c->path2, mtime };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0, p2len, 0 }, f[] = { 0, 1, 1, 0, 1, 0 };
                return pg_txn_query(t, "SELECT r, version FROM bs_symlink($1, $2::bytea, $3::bytea, $4::bigint, $5::bytea, $6::bigint)", 6, v, l, f,
                                    on_answer, c);
        }
        case BS_MSG_DELETE: {
                const char *v[] = { id, dev, c->path, base };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0 }, f[] = { 0, 1, 1, 0 };
                return pg_txn_query(t, "SELECT r, version FROM bs_delete($1, $2::bytea, $3::bytea, $4::bigint)", 4, v, l, f, on_answer, c);
        }
        default: {
                const char *v[] = { id, dev, c->path, base, c->path2, base2 };
                const int l[] = { 0, BS_DEVICE_LEN, plen, 0, p2len, 0 }, f[] = { 0, 1, 1, 0, 1, 0 };
                return pg_txn_query(t, "SELECT r, version FROM bs_move($1, $2::bytea, $3::bytea, $4::bigint, $5::bytea, $6::bigint)", 6, v, l, f,
                                    on_answer, c);
        }
        }
}

/* Every object is stored: the transaction that names them. */
static int batch_transaction(ClusterBatch *b) {
        ClusterAccount *a = b->account;
        const char *v[] = { a->id };
        PgTxn *t;
        char now[32];
        int r = pg_txn_begin(a->backend->pg, &t);
        if (r < 0)
                return r;
        snprintf(now, sizeof(now), "%" PRId64, (int64_t) bs_now());
        /* The lock taken on another connection than this one, since lost, protects nothing. */
        if (b->shared)
                r = pg_txn_query(t, "SELECT bs_objects_held($1)", 1, v, NULL, NULL, NULL, NULL);
        for (size_t i = 0; r >= 0 && i < b->n; i++) {
                Change *c = &b->changes[i];
                r = query_change(t, a->id, c);
                if (r >= 0 && c->type == BS_MSG_PUT) {
                        char size[32];
                        _cleanup_(freep) uint8_t *recipe = NULL;
                        size_t recipe_len = 0;
                        snprintf(size, sizeof(size), "%" PRIu64, c->size);
                        if (c->recipe.n > 0)
                                r = cluster_recipe_encode(&c->recipe, &recipe, &recipe_len);
                        const char *ov[] = { a->id, (const char *) c->sha, size, now, (const char *) recipe };
                        const int l[] = { 0, BS_SHA_LEN, 0, 0, (int) recipe_len }, f[] = { 0, 1, 0, 0, 1 };
                        r = r ?: pg_txn_query(t, "SELECT bs_object_add($1, $2::bytea, $3::bigint, $4::bigint, $5::bytea)",
                                              5, ov, l, f, NULL, NULL);
                }
        }
        r = r ?: pg_txn_query(t, "SELECT bs_announce($1)", 1, v, NULL, NULL, NULL, NULL);
        if (r < 0) {
                pg_txn_abort(t);
                return r;
        }
        b->state = BATCH_COMMITTING;
        return pg_txn_commit(t, on_committed, b);
}

/* One object stored (or not); after the last, the transaction. */
static void stored_one(ClusterBatch *b, int r) {
        if (r < 0 && b->result == 0)
                b->result = r;
        if (--b->storing > 0)
                return;
        if (b->result < 0) {
                batch_finish(b, b->result);
                return;
        }
        r = batch_transaction(b);
        if (r < 0)
                batch_finish(b, r);
}

static void on_stored(S3Request *req, int r, void *userdata) {
        Change *c = userdata;
        c->req = NULL;
        stored_one(c->batch, r);
}

static void on_chunk_stored(S3Request *req, int r, void *userdata) {
        BatchChunk *k = userdata;
        k->req = NULL;
        stored_one(k->batch, r);
}

static int chunk_compare(const void *x, const void *y) {
        return memcmp(((const BatchChunk *) x)->sha, ((const BatchChunk *) y)->sha, BS_SHA_LEN);
}

static BatchChunk *chunk_find(ClusterBatch *b, const uint8_t sha[BS_SHA_LEN]) {
        BatchChunk key;
        memcpy(key.sha, sha, BS_SHA_LEN);
        return bsearch(&key, b->chunks, b->n_chunks, sizeof(*b->chunks), chunk_compare);
}

/* Every chunk of the batch's big contents, each once, sorted. */
static int chunks_collect(ClusterBatch *b) {
        size_t n = 0;
        for (size_t i = 0; i < b->n; i++)
                n += b->changes[i].type == BS_MSG_PUT ? b->changes[i].recipe.n : 0;
        free(b->chunks);
        b->n_chunks = 0;
        b->chunks = calloc(n ? n : 1, sizeof(*b->chunks));
        if (!b->chunks)
                return -ENOMEM;
        for (size_t i = 0; i < b->n; i++) {
                Change *c = &b->changes[i];
                for (size_t k = 0; c->type == BS_MSG_PUT && k < c->recipe.n; k++) {
                        BatchChunk *x = &b->chunks[b->n_chunks++];
                        *x = (BatchChunk) { .batch = b, .from = c, .idx = k };
                        memcpy(x->sha, c->recipe.sha[k], BS_SHA_LEN);
                }
        }
        qsort(b->chunks, b->n_chunks, sizeof(*b->chunks), chunk_compare);
        size_t k = 0;
        for (size_t i = 0; i < b->n_chunks; i++)
                if (k == 0 || memcmp(b->chunks[k - 1].sha, b->chunks[i].sha, BS_SHA_LEN) != 0)
                        b->chunks[k++] = b->chunks[i];
        b->n_chunks = k;
        return 0;
}

/* Store each PUT's content (once per content in the batch). */
static int batch_store(ClusterBatch *b) {
        ClusterAccount *a = b->account;
        char key[S3_KEY_MAX];

        b->state = BATCH_STORING;
        b->storing = 1; /* held while the requests are made */
        for (size_t i = 0; i < b->n; i++) {
                Change *c = &b->changes[i];
                if (c->type != BS_MSG_PUT)
                        continue;
                bool again = false;
                for (size_t k = 0; k < i && !again; k++)
                        again = b->changes[k].type == BS_MSG_PUT && memcmp(b->changes[k].sha, c->sha, BS_SHA_LEN) == 0;
                if (again || c->known || c->recipe.n > 0)
                        continue;
                cluster_object_key(a->id, c->sha, key);
                int r = s3_put_fd(a->backend->s3, key, c->fd, 0, c->size, on_stored, c, &c->req);
                if (r < 0) {
                        b->result = r;
                        break;
                }
                b->storing++;
        }
        /* The chunks of the big contents to store: only those not stored already. */
        for (size_t i = 0; i < b->n && b->result == 0; i++) {
                Change *c = &b->changes[i];
                for (size_t k = 0; c->type == BS_MSG_PUT && !c->known && k < c->recipe.n; k++) {
                        BatchChunk *x = chunk_find(b, c->recipe.sha[k]);
                        if (x)
                                x->needed = true;
                }
        }
        for (size_t i = 0; i < b->n_chunks && b->result == 0; i++) {
                BatchChunk *x = &b->chunks[i];
                if (!x->needed || x->known)
                        continue;
                const ClusterRecipe *rc = &x->from->recipe;
                cluster_chunk_key(a->id, x->sha, key);
                int r = s3_put_fd(a->backend->s3, key, x->from->fd, rc->off[x->idx],
                                  rc->off[x->idx + 1] - rc->off[x->idx], on_chunk_stored, x, &x->req);
                if (r < 0) {
                        b->result = r;
                        break;
                }
                b->storing++;
        }
        /* Let go of the hold: the last answer (or this) goes on. */
        stored_one(b, 0);
        return 0;
}

static int batch_share(ClusterBatch *b);

static int on_share_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterBatch *b = userdata;
        b->retry = sd_event_source_disable_unref(b->retry);
        int r = batch_share(b);
        if (r < 0)
                batch_finish(b, r);
        return 0;
}

/* Both answers are there: store, wait for the collector, or give up. */
static void share_decide(ClusterBatch *b) {
        if (b->freed) {
                batch_destroy(b);
                return;
        }
        if (b->share_error < 0) {
                batch_finish(b, b->share_error);
                return;
        }
        if (b->shared) {
                (void) batch_store(b);
                return;
        }
        /* The collector is removing this account's unnamed objects: a moment. */
        int r = sd_event_add_time_relative(b->account->backend->event, &b->retry, CLOCK_MONOTONIC, SHARE_RETRY_USEC,
                                           0, on_share_retry, b);
        if (r < 0)
                batch_finish(b, r);
}

static void on_shared(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterBatch *b = userdata;
        b->shared = r >= 0 && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        if (r < 0 && b->share_error == 0)
                b->share_error = r;
        if (b->known_missing)
                share_decide(b);
}

/* The contents the store holds already, read once the lock is held: the
 * collector cannot take them before this batch ends. */
static void on_known(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterBatch *b = userdata;
        if (r < 0 && b->share_error == 0)
                b->share_error = r;
        for (int row = 0; r >= 0 && b->shared && row < PQntuples(res); row++) {
                uint8_t sha[BS_SHA_LEN];
                if (cluster_column_bytes(res, row, 0, sha, BS_SHA_LEN) != BS_SHA_LEN)
                        continue;
                if (cluster_column_int(res, row, 1) == 1) {
                        BatchChunk *x = chunk_find(b, sha);
                        if (x)
                                x->known = true;
                        continue;
                }
                for (size_t i = 0; i < b->n; i++)
                        if (b->changes[i].type == BS_MSG_PUT && memcmp(b->changes[i].sha, sha, BS_SHA_LEN) == 0)
                                b->changes[i].known = true;
        }
        share_decide(b);
}

/* Ask for the objects lock before the first upload, then (a statement of
 * its own, so it reads after the lock was granted) which of the batch's
 * contents the store holds already: those are not stored again. */
static int batch_share(ClusterBatch *b) {
        const char *v[] = { b->account->id, NULL, NULL };
        int r = chunks_collect(b);
        if (r < 0)
                return r;
        _cleanup_(freep) char *list = malloc(CLUSTER_HEX_LIST_SIZE(b->n));
        _cleanup_(freep) char *chunks = malloc(CLUSTER_HEX_LIST_SIZE(b->n_chunks));
        size_t len = 0, clen = 0;
        if (!list || !chunks)
                return -ENOMEM;
        list[0] = chunks[0] = 0;
        for (size_t i = 0; i < b->n; i++) {
                b->changes[i].known = false;
                if (b->changes[i].type == BS_MSG_PUT)
                        cluster_hex_append(list, &len, b->changes[i].sha);
        }
        for (size_t i = 0; i < b->n_chunks; i++)
                cluster_hex_append(chunks, &clen, b->chunks[i].sha);
        v[1] = list;
        v[2] = chunks;
        b->state = BATCH_LOCKING;
        b->share_error = 0;
        b->known_missing = false;
        r = pg_query(b->account->backend->pg, "SELECT bs_objects_share($1)", 1, v, NULL, NULL, on_shared, b);
        if (r < 0)
                return r;
        r = pg_query(b->account->backend->pg,
                     "SELECT sha, 0 FROM bs_objects WHERE account = $1 AND sha = ANY("
                     "SELECT decode(x, 'hex') FROM unnest(string_to_array($2, ',')) x) "
                     "UNION ALL SELECT sha, 1 FROM bs_chunks WHERE account = $1 AND refs > 0 AND sha = ANY("
                     "SELECT decode(x, 'hex') FROM unnest(string_to_array($3, ',')) x)",
                     3, v, NULL, NULL, on_known, b);
        if (r < 0) {
                b->share_error = r;
                b->known_missing = true; /* on_shared decides */
        }
        return 0;
}

static int ops_batch_commit(AccountBatch *base, const AccountWaker *w) {
        ClusterBatch *b = (ClusterBatch *) base;
        b->waker = w;
        switch (b->state) {
        case BATCH_OPEN:
                if (b->n == 0) {
                        b->state = BATCH_DONE;
                        return 0;
                }
                for (size_t i = 0; i < b->n; i++)
                        if (b->changes[i].type == BS_MSG_PUT) {
                                int r = batch_share(b);
                                if (r < 0) {
                                        batch_finish(b, r);
                                        return r;
                                }
                                return -EINPROGRESS;
                        }
                (void) batch_store(b);
                /* batch_store() may have ended it at once, on an error. */
                return b->state == BATCH_DONE ? b->result : -EINPROGRESS;
        case BATCH_DONE:
                return b->result;
        default:
                return -EINPROGRESS;
        }
}

static int ops_batch_answer(AccountBatch *base, unsigned i, uint64_t *ret_version) {
        ClusterBatch *b = (ClusterBatch *) base;
        if (b->state != BATCH_DONE || b->result < 0 || i >= b->n)
                return -EINVAL;
        *ret_version = b->changes[i].version;
        return b->changes[i].r;
}

static void ops_batch_free(AccountBatch *base) {
        ClusterBatch *b = (ClusterBatch *) base;
        if (b->state == BATCH_LOCKING && b->retry)
                b->retry = sd_event_source_disable_unref(b->retry); /* nothing asked: destroy now */
        else if (b->state == BATCH_COMMITTING || b->state == BATCH_LOCKING) {
                b->freed = true; /* the transaction's end frees it */
                b->waker = NULL;
                return;
        }
        batch_destroy(b);
}

/* --- reading contents --- */

static int window_fetch(ClusterContent *c, uint64_t off, uint64_t len);

static void on_found(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterContent *c = userdata;
        if (c->freed) {
                free(c);
                return;
        }
        if (r >= 0 && PQntuples(res) == 0)
                r = -ENOENT;
        if (r >= 0)
                c->base.info = (AccountContentInfo) {
                        .size = (uint64_t) cluster_column_int(res, 0, 0),
                        .mode = (uint32_t) cluster_column_int(res, 0, 1),
                        .mtime_ns = cluster_column_int(res, 0, 2),
                        .version = (uint64_t) cluster_column_int(res, 0, 3),
                };
        if (r >= 0 && !PQgetisnull(res, 0, 4)) {
                size_t n;
                unsigned char *p = PQunescapeBytea((const unsigned char *) PQgetvalue(res, 0, 4), &n);
                r = p ? cluster_recipe_decode(p, n, c->base.info.size, &c->recipe) : -ENOMEM;
                PQfreemem(p);
        }
        c->state = r < 0 ? r : 0;
        if (c->state == 0 && c->prefetch > 0 && c->base.info.size > 0)
                (void) window_fetch(c, 0, MIN(c->prefetch, c->base.info.size));
        wake(c->waker);
}

static int ops_content_open(Account *base, const uint8_t sha[BS_SHA_LEN], const char *path, const AccountWaker *w,
                            AccountContent **ret) {
        ClusterAccount *a = ACCOUNT(base);
        ClusterContent *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->base.ops = &cluster_account_ops;
        c->account = a;
        c->waker = w;
        c->state = 1;
        cluster_object_key(a->id, sha, c->key);
        /* The file at path when it has this content, else any file or kept version with it. */
        const char *v[] = { a->id, (const char *) sha, path ? path : "" };
        const int l[] = { 0, BS_SHA_LEN, path ? (int) strlen(path) : 0 }, f[] = { 0, 1, 1 };
        int r = pg_query(a->backend->pg,
                         "SELECT size, mode, mtime_ns, version,"
                         " (SELECT recipe FROM bs_objects WHERE account = $1 AND sha = $2::bytea) FROM ("
                         " SELECT size, mode, mtime_ns, version, CASE WHEN path = $3::bytea THEN 0 ELSE 1 END AS o"
                         " FROM bs_entries WHERE account = $1 AND sha = $2::bytea AND kind = 1"
                         " UNION ALL SELECT size, mode, mtime_ns, version, 2"
                         " FROM bs_versions WHERE account = $1 AND sha = $2::bytea AND kind = 1) x "
                         "ORDER BY o LIMIT 1",
                         3, v, l, f, on_found, c);
        if (r < 0) {
                free(c);
                return r;
        }
        *ret = &c->base;
        return 0;
}

static int ops_content_wait(AccountContent *base) {
        int state = ((ClusterContent *) base)->state;
        return state > 0 ? -EINPROGRESS : state;
}

static void on_window(S3Request *req, int r, void *userdata) {
        ClusterContent *c = userdata;
        c->req = NULL;
        if (r >= 0) {
                free(c->data);
                c->data = s3_request_take_data(req, &c->data_len);
                if (!c->data)
                        c->data_len = 0;
        } else
                c->read_error = r == -ENOENT || r == -ERANGE ? -EBADMSG : r;
        wake(c->waker);
}

static int ops_content_read(AccountContent *base, uint64_t off, void *buf, size_t n) {
        ClusterContent *c = (ClusterContent *) base;
        if (c->state != 0)
                return c->state > 0 ? -EINPROGRESS : c->state;
        if (n == 0)
                return 0;
        if (c->data && off >= c->data_off && n <= c->data_len && off - c->data_off <= c->data_len - n) {
                memcpy(buf, c->data + (off - c->data_off), n);
                return 0;
        }
        if (c->req || c->fetching)
                return -EINPROGRESS;
        if (c->read_error) {
                int r = c->read_error;
                c->read_error = 0;
                return r;
        }
        /* A window fetched before and still not enough: the object is shorter than its entry says. */
        if (c->data && off == c->data_off && c->data_len < n)
                return -EBADMSG;
        uint64_t len = MAX((uint64_t) n, (uint64_t) CONTENT_WINDOW);
        int r = window_fetch(c, off, MIN(len, c->base.info.size - off));
        return r < 0 ? r : -EINPROGRESS;
}

static void parts_cancel(ClusterContent *c) {
        for (size_t i = 0; i < c->n_parts; i++)
                if (c->parts[i].req)
                        s3_request_cancel(c->parts[i].req);
        free(c->parts);
        free(c->fill);
        c->parts = NULL;
        c->fill = NULL;
        c->n_parts = 0;
        c->fetching = 0;
}

static void on_part(S3Request *req, int r, void *userdata) {
        struct ContentPart *part = userdata;
        ClusterContent *c = part->content;
        size_t n = 0;
        const void *data = r >= 0 ? s3_request_data(req, &n) : NULL;
        part->req = NULL;
        if (r >= 0 && n != part->len)
                r = -EBADMSG; /* the chunk is not what the recipe says */
        if (r >= 0)
                memcpy(c->fill + part->at, data, n);
        else if (c->read_error == 0)
                c->read_error = r == -ENOENT || r == -ERANGE ? -EBADMSG : r;
        if (--c->fetching > 0)
                return;
        free(c->parts);
        c->parts = NULL;
        c->n_parts = 0;
        if (c->read_error == 0) {
                c->data = TAKE_PTR(c->fill);
                c->data_len = c->fill_len;
        }
        free(c->fill);
        c->fill = NULL;
        wake(c->waker);
}

/* Fetch [off, off + len) of the content into the window: of its one
 * object, or of the chunks that hold it, at once. */
static int window_fetch(ClusterContent *c, uint64_t off, uint64_t len) {
        const ClusterRecipe *rc = &c->recipe;
        char key[S3_KEY_MAX];
        free(c->data);
        c->data = NULL;
        c->data_off = off;
        c->data_len = 0;
        if (rc->n == 0)
                return s3_get(c->account->backend->s3, c->key, off, len, on_window, c, &c->req);
        size_t i = cluster_recipe_find(rc, off), j = i;
        while (j + 1 < rc->n && rc->off[j + 1] < off + len)
                j++;
        c->fill_len = (size_t) len;
        c->fill = malloc(c->fill_len);
        c->parts = calloc(j - i + 1, sizeof(*c->parts));
        if (!c->fill || !c->parts) {
                parts_cancel(c);
                return -ENOMEM;
        }
        c->n_parts = j - i + 1;
        for (size_t k = i; k <= j; k++) {
                struct ContentPart *part = &c->parts[k - i];
                uint64_t from = MAX(off, rc->off[k]), to = MIN(off + len, rc->off[k + 1]);
                *part = (struct ContentPart) { .content = c, .off = from - rc->off[k], .len = to - from,
                                               .at = from - off };
                cluster_chunk_key(c->account->id, rc->sha[k], key);
                int r = s3_get(c->account->backend->s3, key, part->off, part->len, on_part, part, &part->req);
                if (r < 0) {
                        if (c->fetching == 0)
                                parts_cancel(c);
                        else if (c->read_error == 0)
                                c->read_error = r; /* the requests made end it */
                        return c->fetching ? 0 : r;
                }
                c->fetching++;
        }
        return 0;
}

static void ops_content_prefetch(AccountContent *base, uint64_t len, BsReadahead *ra) {
        ClusterContent *c = (ClusterContent *) base;
        /* The GET queued behind others: its first bytes travel meanwhile,
         * a request to the store of its own (ra is for local files). */
        c->prefetch = len;
        if (c->state == 0 && !c->req && !c->fetching && !c->data && c->base.info.size > 0)
                (void) window_fetch(c, 0, MIN(len, c->base.info.size));
}

static void ops_content_free(AccountContent *base) {
        ClusterContent *c = (ClusterContent *) base;
        parts_cancel(c);
        cluster_recipe_done(&c->recipe);
        if (c->req)
                s3_request_cancel(c->req);
        free(c->data);
        c->data = NULL;
        c->req = NULL;
        if (c->state == 1) {
                c->freed = true;
                return;
        }
        free(c);
}

/* --- reads of one moment: PULL and HISTORY --- */

static void read_init(ClusterRead *rd, void *owner, const AccountWaker *w) {
        *rd = (ClusterRead) { .owner = owner, .waker = w, .state = 1 };
}

/* Start the transaction; its statements follow, then read_commit(). */
static int read_begin(ClusterAccount *a, PgTxn **ret) {
        int r = pg_txn_begin(a->backend->pg, ret);
        if (r < 0)
                return r;
        /* One snapshot for the sequence and the rows. */
        r = pg_txn_query(*ret, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", 0, NULL, NULL, NULL, NULL, NULL);
        if (r < 0)
                pg_txn_abort(*ret);
        return r;
}

/* Keep a statement's rows as the answer (the first kept stays). */
static void read_keep(ClusterRead *rd, const PGresult *res) {
        if (rd->freed || rd->rows)
                return;
        rd->rows = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
        if (!rd->rows)
                rd->state = -ENOMEM;
}

static void on_read_done(Pg *pg, int r, void *userdata) {
        ClusterRead *rd = userdata;
        if (rd->freed) {
                PQclear(rd->rows);
                free(rd->owner);
                return;
        }
        if (rd->state == 1)
                rd->state = r < 0 ? (r == -EINPROGRESS ? -EIO : r) : 0;
        wake(rd->waker);
}

/* After the statements (r, their outcome): send it all, or drop it. */
static int read_commit(ClusterRead *rd, PgTxn *t, int r) {
        if (r < 0) {
                pg_txn_abort(t);
                return r;
        }
        return pg_txn_commit(t, on_read_done, rd);
}

/* Let go: now (true: free the owner), or when the answer comes. */
static bool read_free(ClusterRead *rd) {
        if (rd->state == 1) {
                rd->freed = true;
                return false;
        }
        PQclear(rd->rows);
        return true;
}

/* 1 and the next row to hand out, 0 at the end, -EINPROGRESS while reading, or -errno. */
static int read_next(ClusterRead *rd, int *ret_row) {
        if (rd->state != 0)
                return rd->state > 0 ? -EINPROGRESS : rd->state;
        if (!rd->rows || rd->row >= PQntuples(rd->rows))
                return 0;
        *ret_row = rd->row++;
        return 1;
}

/* --- PULL: the log after since, or the whole tree, as of one moment --- */

static void on_floor(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterCursor *c = userdata;
        if (PQntuples(res) != 1)
                return;
        c->read.seq = (uint64_t) cluster_column_int(res, 0, 0);
        uint64_t floor = (uint64_t) cluster_column_int(res, 0, 1);
        c->snapshot = c->since == 0 || c->since < floor;
}

/* The rows of the log, or of the tree: only one of the two statements is the answer. */
static void on_log_rows(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterCursor *c = userdata;
        if (!c->snapshot)
                read_keep(&c->read, res);
}

static void on_tree_rows(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterCursor *c = userdata;
        if (c->snapshot)
                read_keep(&c->read, res);
}

static int ops_cursor_new(Account *base, uint64_t since, const AccountWaker *w, AccountCursor **ret) {
        ClusterAccount *a = ACCOUNT(base);
        char s[32];
        PgTxn *t;
        ClusterCursor *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->base.ops = &cluster_account_ops;
        read_init(&c->read, c, w);
        c->since = since;
        snprintf(s, sizeof(s), "%" PRIu64, since);
        const char *v[] = { a->id, s };
        int r = read_begin(a, &t);
        if (r < 0) {
                free(c);
                return r;
        }
        r = pg_txn_query(t, "SELECT seq, log_floor FROM bs_accounts WHERE id = $1", 1, v, NULL, NULL, on_floor, c);
        r = r ?: pg_txn_query(t,
                              "SELECT seq, device, op, kind, path, path2, size, mode, mtime_ns, sha FROM bs_log "
                              "WHERE account = $1 AND seq > $2::bigint AND $2::bigint > 0 AND "
                              "$2::bigint >= (SELECT log_floor FROM bs_accounts WHERE id = $1) ORDER BY seq",
                              2, v, NULL, NULL, on_log_rows, c);
        r = r ?: pg_txn_query(t,
                              "SELECT path, kind, size, mode, mtime_ns, sha, target, version, device FROM bs_entries "
                              "WHERE account = $1 AND ($2::bigint = 0 OR "
                              "$2::bigint < (SELECT log_floor FROM bs_accounts WHERE id = $1)) ORDER BY path",
                              2, v, NULL, NULL, on_tree_rows, c);
        r = read_commit(&c->read, t, r);
        if (r < 0) {
                free(c);
                return r;
        }
        *ret = &c->base;
        return 0;
}

static void ops_cursor_free(AccountCursor *base) {
        ClusterCursor *c = (ClusterCursor *) base;
        if (read_free(&c->read))
                free(c);
}

static uint64_t ops_cursor_seq(const AccountCursor *base) {
        return ((const ClusterCursor *) base)->read.seq;
}

static bool ops_cursor_is_snapshot(const AccountCursor *base) {
        return ((const ClusterCursor *) base)->snapshot;
}

/* Contents are objects in S3, named by hash: no tree to read ahead. */
static int ops_warm_start(Account *a, const BsWarmOps *ops, void *userdata, BsWarm **ret) {
        (void) a;
        (void) ops;
        (void) userdata;
        (void) ret;
        return -EOPNOTSUPP;
}

/* A fixed-size bytea column: its bytes, or zeros when it has another size. */
static void column_fixed(const PGresult *res, int row, int col, uint8_t *out, size_t n) {
        uint8_t buf[64];
        if (cluster_column_bytes(res, row, col, buf, sizeof(buf)) != (ssize_t) n)
                memset(out, 0, n);
        else
                memcpy(out, buf, n);
}

static int column_path(const PGresult *res, int row, int col, char *out, size_t *len) {
        ssize_t n = cluster_column_bytes(res, row, col, out, BS_PATH_MAX);
        if (n < 0)
                return (int) n;
        out[n] = 0;
        *len = (size_t) n;
        return 0;
}

static int ops_cursor_next(AccountCursor *base, BsRecord *rec) {
        ClusterCursor *c = (ClusterCursor *) base;
        const PGresult *res = c->read.rows;
        int i = 0, r = read_next(&c->read, &i);

        if (r <= 0)
                return r;
        memset(rec, 0, offsetof(BsRecord, path));
        if (c->snapshot) {
                rec->kind = (uint8_t) cluster_column_int(res, i, 1);
                rec->op = rec->kind == BS_KIND_DIR       ? BS_OP_MKDIR
                          : rec->kind == BS_KIND_SYMLINK ? BS_OP_SYMLINK
                                                         : BS_OP_PUT;
                rec->size = (uint64_t) cluster_column_int(res, i, 2);
                rec->mode = (uint32_t) cluster_column_int(res, i, 3);
                rec->mtime_ns = cluster_column_int(res, i, 4);
                column_fixed(res, i, 5, rec->sha, BS_SHA_LEN);
                rec->seq = (uint64_t) cluster_column_int(res, i, 7);
                column_fixed(res, i, 8, rec->device, BS_DEVICE_LEN);
                r = column_path(res, i, 0, rec->path, &rec->path_len);
                r = r ?: column_path(res, i, 6, rec->path2, &rec->path2_len);
        } else {
                rec->seq = (uint64_t) cluster_column_int(res, i, 0);
                column_fixed(res, i, 1, rec->device, BS_DEVICE_LEN);
                rec->op = (uint8_t) cluster_column_int(res, i, 2);
                rec->kind = (uint8_t) cluster_column_int(res, i, 3);
                rec->size = (uint64_t) cluster_column_int(res, i, 6);
                rec->mode = (uint32_t) cluster_column_int(res, i, 7);
                rec->mtime_ns = cluster_column_int(res, i, 8);
                column_fixed(res, i, 9, rec->sha, BS_SHA_LEN);
                r = column_path(res, i, 4, rec->path, &rec->path_len);
                r = r ?: column_path(res, i, 5, rec->path2, &rec->path2_len);
        }
        return r < 0 ? r : 1;
}

/* --- HISTORY: the log, a path's versions, what was deleted, a past tree --- */

typedef struct ClusterQuery {
        AccountQuery base;
        ClusterRead read;
} ClusterQuery;

/* $1 the account, $2 the path (bytea), $3 a time, $4 a sequence, $5 the limit (NULL: none).
 * Every query yields: path, version, kind, size, mode, mtime_ns, sha, path2,
 * device, until, time, until_time, name, op. */
#define UNDER(col) "($2::bytea = ''::bytea OR " col " = $2::bytea OR (" col " >= bs_below_lo($2::bytea) AND " \
                   col " < bs_below_hi($2::bytea)))"
#define OP_OF_KIND "CASE kind WHEN 2 THEN 2 WHEN 3 THEN 5 ELSE 1 END"
#define STATE "path, version, kind, size, mode, mtime_ns, sha, target, device, since"
/* The answer's sequence: the one asked for, or now. */
#define SEQ_NOW "(SELECT CASE WHEN $4::bigint > 0 AND $4::bigint < seq THEN $4::bigint ELSE seq END " \
                "FROM bs_accounts WHERE id = $1)"
/* The tree as of a time is as of the last change made by then. */
#define SEQ_AT_TIME "(SELECT COALESCE(MAX(seq), 0) FROM bs_log WHERE account = $1 AND time <= $3::bigint)"

static const char *const query_sql[] = {
        [BS_HIST_LOG] =
                "SELECT l.path, l.seq, l.kind, l.size, l.mode, l.mtime_ns, l.sha, l.path2, l.device, 0, l.time, 0,"
                " d.name, l.op FROM bs_log l LEFT JOIN bs_devices d ON d.account = l.account AND d.id = l.device "
                "WHERE l.account = $1 AND (" UNDER("l.path") " OR (l.op = 4 AND " UNDER("l.path2") "))"
                " AND l.time >= $3::bigint AND l.seq <= %s ORDER BY l.seq DESC LIMIT $5::bigint",
        [BS_HIST_VERSIONS] =
                "SELECT h.path, h.version, h.kind, h.size, h.mode, h.mtime_ns, h.sha, h.target, h.device, h.until,"
                " h.t0, h.t1, (SELECT name FROM bs_devices WHERE account = $1 AND id = h.device), " OP_OF_KIND
                " FROM (SELECT " STATE ", 0::bigint AS until, time AS t0, 0::bigint AS t1 FROM bs_entries"
                "  WHERE account = $1 AND path = $2::bytea"
                "  UNION ALL SELECT " STATE ", replaced_seq, COALESCE(since_time, 0), until_time FROM bs_versions"
                "  WHERE account = $1 AND path = $2::bytea) h "
                "WHERE h.since <= %s ORDER BY h.until = 0 DESC, h.until DESC, h.since DESC LIMIT $5::bigint",
        /* The last deletion of each path not there now; by whom it was deleted. */
        [BS_HIST_DELETED] =
                "SELECT * FROM (SELECT DISTINCT ON (v.path) v.path, v.version, v.kind, v.size, v.mode, v.mtime_ns,"
                " v.sha, v.target, v.device, v.replaced_seq AS until, COALESCE(v.since_time, 0), v.until_time,"
                " (SELECT name FROM bs_devices WHERE account = $1 AND id = l.device), 3"
                " FROM bs_versions v JOIN bs_log l ON l.account = v.account AND l.seq = v.replaced_seq"
                " WHERE v.account = $1 AND l.op = 3 AND " UNDER("v.path") " AND v.until_time >= $3::bigint"
                " AND v.replaced_seq <= %s"
                " AND NOT EXISTS (SELECT 1 FROM bs_entries e WHERE e.account = $1 AND e.path = v.path)"
                " ORDER BY v.path, v.replaced_seq DESC) x ORDER BY until DESC, path LIMIT $5::bigint",
        [BS_HIST_TREE] =
                "SELECT path, version, kind, size, mode, mtime_ns, sha, target, device, until, 0, 0, NULL, "
                OP_OF_KIND " FROM (SELECT " STATE ", 0::bigint AS until FROM bs_entries"
                "  WHERE account = $1 AND " UNDER("path") " UNION ALL SELECT " STATE ", replaced_seq"
                "  FROM bs_versions WHERE account = $1 AND replaced_seq > %1$s AND " UNDER("path") ") x "
                "WHERE since <= %1$s ORDER BY path LIMIT $5::bigint",
};

static void on_query_seq(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterQuery *q = userdata;
        if (PQntuples(res) == 1)
                q->read.seq = (uint64_t) cluster_column_int(res, 0, 0);
}

static void on_query_rows(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterQuery *q = userdata;
        read_keep(&q->read, res);
}

static int ops_query_new(Account *base, BsHistWhat what, const char *path, uint64_t seq, int64_t time, uint32_t limit,
                         const AccountWaker *w, AccountQuery **ret) {
        ClusterAccount *a = ACCOUNT(base);
        char sql[4096], seqsql[512], t[32], sq[32], lim[32];
        PgTxn *txn;

        if (what < BS_HIST_LOG || what > BS_HIST_TREE)
                return -EINVAL;
        if (path[0] && bs_path_check(path, strlen(path)) < 0)
                return -EINVAL;
        const char *q_seq = SEQ_NOW;
        if (what == BS_HIST_TREE && seq == 0 && time != 0)
                q_seq = SEQ_AT_TIME;
        /* Every parameter named with its type, whether the query uses it or not:
         * PostgreSQL cannot prepare one whose type it cannot tell. */
#define PARAMS "WITH params AS (SELECT $1::text, $2::bytea, $3::bigint, $4::bigint, $5::bigint) "
        int n = snprintf(sql, sizeof(sql), PARAMS);
        snprintf(sql + n, sizeof(sql) - (size_t) n, query_sql[what], q_seq);
        snprintf(seqsql, sizeof(seqsql), PARAMS "SELECT %s", q_seq);
        snprintf(t, sizeof(t), "%" PRId64, time);
        snprintf(sq, sizeof(sq), "%" PRIu64, seq);
        snprintf(lim, sizeof(lim), "%" PRIu32, limit);
        const char *v[] = { a->id, path, t, sq, limit ? lim : NULL };
        const int l[] = { 0, (int) strlen(path), 0, 0, 0 }, f[] = { 0, 1, 0, 0, 0 };

        ClusterQuery *q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->base.ops = &cluster_account_ops;
        read_init(&q->read, q, w);
        int r = read_begin(a, &txn);
        if (r < 0) {
                free(q);
                return r;
        }
        r = pg_txn_query(txn, seqsql, 5, v, l, f, on_query_seq, q);
        r = r ?: pg_txn_query(txn, sql, 5, v, l, f, on_query_rows, q);
        r = read_commit(&q->read, txn, r);
        if (r < 0) {
                free(q);
                return r;
        }
        *ret = &q->base;
        return 0;
}

static void ops_query_free(AccountQuery *base) {
        ClusterQuery *q = (ClusterQuery *) base;
        if (read_free(&q->read))
                free(q);
}

static uint64_t ops_query_seq(const AccountQuery *base) {
        return ((const ClusterQuery *) base)->read.seq;
}

static int ops_query_next(AccountQuery *base, BsHistRow *row) {
        ClusterQuery *q = (ClusterQuery *) base;
        const PGresult *res = q->read.rows;
        int i = 0, r = read_next(&q->read, &i);

        if (r <= 0)
                return r;
        memset(&row->rec, 0, offsetof(BsRecord, path));
        row->rec.seq = (uint64_t) cluster_column_int(res, i, 1);
        row->rec.kind = (uint8_t) cluster_column_int(res, i, 2);
        row->rec.size = (uint64_t) cluster_column_int(res, i, 3);
        row->rec.mode = (uint32_t) cluster_column_int(res, i, 4);
        row->rec.mtime_ns = cluster_column_int(res, i, 5);
        column_fixed(res, i, 6, row->rec.sha, BS_SHA_LEN);
        column_fixed(res, i, 8, row->rec.device, BS_DEVICE_LEN);
        row->until = (uint64_t) cluster_column_int(res, i, 9);
        row->time = cluster_column_int(res, i, 10);
        row->until_time = cluster_column_int(res, i, 11);
        row->rec.op = (uint8_t) cluster_column_int(res, i, 13);
        const char *name = PQgetisnull(res, i, 12) ? "" : PQgetvalue(res, i, 12);
        row->name_len = MIN(strlen(name), (size_t) BS_NAME_MAX);
        memcpy(row->device_name, name, row->name_len);
        row->device_name[row->name_len] = 0;
        r = column_path(res, i, 0, row->rec.path, &row->rec.path_len);
        r = r ?: column_path(res, i, 7, row->rec.path2, &row->rec.path2_len);
        return r < 0 ? r : 1;
}

const AccountOps cluster_account_ops = {
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
