/* cluster-backend.c - the cluster backend: connections, schema, accounts, NOTIFY
 *
 * Two PostgreSQL connections: one for queries and transactions, in
 * order, and one that only LISTENs, so a long transaction never delays
 * the news of another node's commit. The schema is set up in one
 * transaction under an advisory lock, so that nodes starting together
 * do not trip over each other; requests queue behind it on the same
 * connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-clock.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-token.h"
#include "cluster-internal.h"
#include "cluster-schema.h"

/* Any constant both nodes agree on: the key of the schema's advisory lock. */
#define SCHEMA_LOCK "7478323623"
/* Tries for a free account ID before registration gives up. */
#define CREATE_TRIES 16

int cluster_waiters_add(ClusterWaiters *ws, const AccountWaker *w) {
        if (!w)
                return 0;
        for (size_t i = 0; i < ws->n; i++)
                if (ws->w[i] == w)
                        return 0;
        if (ws->n == ws->cap) {
                size_t cap = ws->cap ? ws->cap * 2 : 4;
                const AccountWaker **n = reallocarray(ws->w, cap, sizeof(*n));
                if (!n)
                        return -ENOMEM;
                ws->w = n;
                ws->cap = cap;
        }
        ws->w[ws->n++] = w;
        return 0;
}

void cluster_waiters_remove(ClusterWaiters *ws, const AccountWaker *w) {
        for (size_t i = 0; i < ws->n; i++)
                if (ws->w[i] == w) {
                        ws->w[i] = ws->w[--ws->n];
                        return;
                }
}

void cluster_waiters_wake(ClusterWaiters *ws) {
        /* A waker only schedules its owner: none of them changes the list. */
        size_t n = ws->n;
        ws->n = 0;
        for (size_t i = 0; i < n; i++)
                ws->w[i]->fn(ws->w[i]->userdata);
}

void cluster_waiters_done(ClusterWaiters *ws) {
        free(ws->w);
        *ws = (ClusterWaiters) {};
}

bool cluster_account_advance(ClusterAccount *a, uint64_t seq) {
        if (seq <= a->seq)
                return false;
        a->seq = seq;
        return true;
}

static ClusterAccount *find_account(ClusterBackend *b, const char *id) {
        for (ClusterAccount *a = b->accounts; a; a = a->next)
                if (a->state == 0 && strcmp(a->id, id) == 0)
                        return a;
        return NULL;
}

static void advanced(ClusterBackend *b, const char *id, uint64_t seq) {
        ClusterAccount *a = find_account(b, id);
        if (a && cluster_account_advance(a, seq) && b->watch)
                b->watch(b->watch_userdata, id, seq);
}

static void on_seq(Pg *pg, int r, const PGresult *res, void *userdata) {
        if (r < 0 || PQntuples(res) != 1)
                return;
        const char *id = PQgetvalue(res, 0, 0);
        if (bs_id_valid(id, strlen(id)))
                advanced(userdata, id, (uint64_t) cluster_column_int(res, 0, 1));
}

/* "ID SEQ" from a node's commit. Untrusted text: parsed strictly. */
static void on_notify(Pg *pg, const PgNotify *n, void *userdata) {
        ClusterBackend *b = userdata;

        if (n->resync) {
                /* Notifications may have been lost: read every open account's sequence anew. */
                for (ClusterAccount *a = b->accounts; a; a = a->next)
                        if (a->state == 0) {
                                const char *v[] = { a->id };
                                (void) pg_query(b->pg, "SELECT id, seq FROM bs_accounts WHERE id = $1", 1, v, NULL,
                                                NULL, on_seq, b);
                        }
                return;
        }
        const char *p = n->payload, *sp = strchr(p, ' ');
        char *end;
        if (!sp || sp - p != BS_ID_LEN || !bs_id_valid(p, BS_ID_LEN))
                return;
        errno = 0;
        unsigned long long seq = strtoull(sp + 1, &end, 10);
        if (errno || *end || end == sp + 1)
                return;
        char id[BS_ID_LEN + 1];
        memcpy(id, p, BS_ID_LEN);
        id[BS_ID_LEN] = 0;
        advanced(b, id, seq);
}

static void setup_step(ClusterBackend *b, int r) {
        if (r < 0 && b->setup_error == 0)
                b->setup_error = r;
        if (--b->setup > 0)
                return;
        b->setup = b->setup_error;
        cluster_waiters_wake(&b->setup_waiters);
}

static void on_setup(Pg *pg, int r, void *userdata) {
        setup_step(userdata, r);
}

/* The bucket made if it is not there. Credentials that may not create
 * buckets (the administrator made it) answer -EACCES: the first store
 * tells whether they may write. */
static void on_bucket(S3Request *req, int r, void *userdata) {
        setup_step(userdata, r == -EACCES || r == -EEXIST ? 0 : r);
}

int cluster_backend_wait(Backend *base, const AccountWaker *w) {
        ClusterBackend *b = (ClusterBackend *) base;
        if (b->setup <= 0)
                return b->setup;
        int r = cluster_waiters_add(&b->setup_waiters, w);
        return r < 0 ? r : -EINPROGRESS;
}

static int setup_schema(ClusterBackend *b) {
        PgTxn *t;
        int r = pg_txn_begin(b->pg, &t);
        if (r < 0)
                return r;
        r = pg_txn_query(t, "SELECT pg_advisory_xact_lock(" SCHEMA_LOCK ")", 0, NULL, NULL, NULL, NULL, NULL);
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(cluster_schema); i++)
                r = pg_txn_query(t, cluster_schema[i], 0, NULL, NULL, NULL, NULL, NULL);
        if (r < 0) {
                pg_txn_abort(t);
                return r;
        }
        return pg_txn_commit(t, on_setup, b);
}

void cluster_account_drop(ClusterAccount *a) {
        ClusterBackend *b = a->backend;
        if (a->prev)
                a->prev->next = a->next;
        else if (b->accounts == a)
                b->accounts = a->next;
        if (a->next)
                a->next->prev = a->prev;
        a->prev = a->next = NULL;
        cluster_waiters_done(&a->waiters);
        cluster_prune_detach(TAKE_PTR(a->prune));
        if (a->state == 1) {
                a->freed = true; /* its query's answer frees it */
                a->token = NULL;
                return;
        }
        free(a);
}

/* Opening: the account's key hash and sequence. */
static void on_open(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterAccount *a = userdata;
        if (a->freed) {
                free(a);
                return;
        }
        if (r >= 0 && PQntuples(res) == 0)
                r = -ENOENT;
        if (r >= 0) {
                const char *h = PQgetvalue(res, 0, 0);
                if (strlen(h) != 64)
                        r = -EBADMSG;
                else {
                        memcpy(a->key_hash, h, 65);
                        a->seq = (uint64_t) cluster_column_int(res, 0, 1);
                }
        }
        a->state = r < 0 ? r : 0;
        cluster_waiters_wake(&a->waiters);
}

static int create_try(ClusterAccount *a);

/* Creating: inserted, or the ID was taken (no row): another one. */
static void on_create(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterAccount *a = userdata;
        if (a->freed) {
                free(a);
                return;
        }
        if (r >= 0 && PQntuples(res) == 0) {
                r = a->create_tries < CREATE_TRIES ? create_try(a) : -EEXIST;
                if (r >= 0)
                        return;
        }
        a->state = r < 0 ? r : 0;
        if (r < 0 && a->token)
                explicit_bzero(a->token, BS_TOKEN_MAX + 1);
        a->token = NULL;
        cluster_waiters_wake(&a->waiters);
}

static int create_try(ClusterAccount *a) {
        BsToken t = {};
        char now[32];
        a->create_tries++;
        bs_id_generate(t.id);
        int r = bs_key_generate(t.key);
        r = r ?: bs_key_hash(t.key, a->key_hash);
        if (r < 0)
                return r;
        memcpy(a->id, t.id, sizeof(a->id));
        bs_token_format(&t, a->token);
        explicit_bzero(&t, sizeof(t));
        snprintf(now, sizeof(now), "%" PRId64, (int64_t) bs_now());
        const char *v[] = { a->id, a->key_hash, now };
        return pg_query(a->backend->pg,
                        "INSERT INTO bs_accounts (id, key_hash, created) VALUES ($1, $2, $3) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id",
                        3, v, NULL, NULL, on_create, a);
}

int cluster_account_new(ClusterBackend *b, const char *id, char *token, ClusterAccount **ret) {
        ClusterAccount *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->base.ops = &cluster_account_ops;
        a->backend = b;
        a->state = 1;
        a->history_bytes = -1;
        int r;
        if (id) {
                memcpy(a->id, id, BS_ID_LEN);
                const char *v[] = { a->id };
                r = pg_query(b->pg, "SELECT key_hash, seq FROM bs_accounts WHERE id = $1", 1, v, NULL, NULL,
                             on_open, a);
        } else {
                a->token = token;
                r = create_try(a);
        }
        if (r < 0) {
                free(a);
                return r;
        }
        a->next = b->accounts;
        if (a->next)
                a->next->prev = a;
        b->accounts = a;
        *ret = a;
        return -EINPROGRESS;
}

static int backend_create(Backend *base, Account **ret, char *token) {
        ClusterAccount *a;
        int r = cluster_account_new((ClusterBackend *) base, NULL, token, &a);
        if (r == -EINPROGRESS)
                *ret = &a->base;
        return r;
}

static int backend_open(Backend *base, const char *id, Account **ret) {
        ClusterAccount *a;
        if (!bs_id_valid(id, strlen(id)))
                return -ENOENT;
        int r = cluster_account_new((ClusterBackend *) base, id, NULL, &a);
        if (r == -EINPROGRESS)
                *ret = &a->base;
        return r;
}

static void on_listed(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterBackend *b = userdata;
        size_t n = r >= 0 ? (size_t) PQntuples(res) : 0;
        b->listing = 2;
        b->list_error = r < 0 ? r : 0;
        b->list_ids = calloc(n ? n : 1, sizeof(char *));
        if (!b->list_ids)
                b->list_error = -ENOMEM;
        for (size_t i = 0; b->list_ids && i < n; i++) {
                const char *id = PQgetvalue(res, (int) i, 0);
                if (!bs_id_valid(id, strlen(id)))
                        continue;
                if (!(b->list_ids[b->n_list_ids] = strdup(id))) {
                        b->list_error = -ENOMEM;
                        break;
                }
                b->n_list_ids++;
        }
        const AccountWaker *w = TAKE_PTR(b->list_waker);
        if (w)
                w->fn(w->userdata);
}

static int backend_list(Backend *base, const AccountWaker *w, char ***ret, size_t *ret_n) {
        ClusterBackend *b = (ClusterBackend *) base;
        if (b->listing == 0) {
                int r = pg_query(b->pg, "SELECT id FROM bs_accounts ORDER BY id", 0, NULL, NULL, NULL, on_listed, b);
                if (r < 0)
                        return r;
                b->listing = 1;
        }
        b->list_waker = w;
        if (b->listing == 1)
                return -EINPROGRESS;
        int r = b->list_error;
        b->listing = 0;
        b->list_waker = NULL;
        if (r < 0) {
                b->list_ids = account_list_free(b->list_ids, b->n_list_ids);
                b->n_list_ids = 0;
                return r;
        }
        *ret = TAKE_PTR(b->list_ids);
        *ret_n = b->n_list_ids;
        b->n_list_ids = 0;
        return 0;
}

static void backend_watch(Backend *base, backend_watch_fn fn, void *userdata) {
        ClusterBackend *b = (ClusterBackend *) base;
        b->watch = fn;
        b->watch_userdata = userdata;
}

static void backend_drop(Backend *base) {
        ClusterBackend *b = (ClusterBackend *) base;
        cluster_prune_free_all(b);
        account_list_free(b->list_ids, b->n_list_ids);
        pg_free(b->pg);
        pg_free(b->listen);
        pg_free(b->gc);
        s3_free(b->s3);
        if (b->spool_fd >= 0)
                close(b->spool_fd);
        cluster_waiters_done(&b->setup_waiters);
        sd_event_unref(b->event);
        free(b);
}

static const BackendOps cluster_backend_ops = {
        .account_create = backend_create,
        .account_open = backend_open,
        .account_list = backend_list,
        .set_watch = backend_watch,
        .free = backend_drop,
};

int cluster_backend_new(sd_event *event, const ClusterConfig *c, Backend **ret) {
        ClusterBackend *b = calloc(1, sizeof(*b));
        int r;

        if (!b)
                return -ENOMEM;
        b->base.ops = &cluster_backend_ops;
        b->event = sd_event_ref(event);
        b->setup = 2; /* the schema, the bucket */
        b->spool_fd = open(c->spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (b->spool_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = pg_new(&b->pg, event, c->metadata);
        r = r ?: pg_new(&b->listen, event, c->metadata);
        r = r ?: pg_new(&b->gc, event, c->metadata);
        r = r ?: s3_new(&b->s3, event, &c->content);
        r = r ?: pg_listen(b->listen, "backupsync", on_notify, b);
        r = r ?: setup_schema(b);
        r = r ?: s3_create_bucket(b->s3, on_bucket, b, NULL);
        if (r < 0)
                goto fail;
        *ret = &b->base;
        return 0;
fail:
        backend_drop(&b->base);
        return r;
}
