/* cluster-prune.c - retention on the cluster: thinning the history, collecting objects
 *
 * Each account_prune() call starts one slice and answers -EINPROGRESS;
 * the next call, once the waker was told, gives the slice's outcome.
 * Phases, each resumed by the next slice until done:
 *
 *  1. rows: bs_prune() drops the states the retention no longer keeps
 *     and trims the log, at most budget rows per call, under the
 *     account's row lock (the same rules as the embedded backend).
 *  2. collect: contents no entry or kept version names lose their
 *     bs_objects rows (and their chunks the names their recipes gave
 *     them), then their objects leave the bucket.
 *  3. chunks no recipe names: their rows, then their objects.
 *  4. sweep: one page of the account's keys in the bucket (contents,
 *     then chunks) is compared with bs_objects and bs_chunks; objects
 *     without a row (a node that died between an upload and its commit,
 *     or the collector between a row and its object) leave the bucket.
 *
 * Rows always go before their objects, so a row always has its object
 * and a batch may trust it. Phases 2 to 4 hold the account's objects
 * lock exclusively, on a connection of their own (cluster-schema.sql:
 * batches hold it shared from their first upload to their commit), and
 * are passed over for this round when a batch holds it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bs-hash.h"
#include "bs-macro.h"
#include "cluster-internal.h"

/* Keys per page of the sweep. */
#define SWEEP_PAGE 1000u

typedef enum PrunePhase { PRUNE_ROWS, PRUNE_COLLECT, PRUNE_CHUNKS, PRUNE_SWEEP } PrunePhase;
typedef enum ObjectKind { OBJECT_CONTENT, OBJECT_CHUNK } ObjectKind;

struct ClusterPrune {
        ClusterBackend *backend;
        ClusterAccount *account; /* NULL once let go: the slice's end frees this */
        ClusterPrune *prev, *next;
        char id[BS_ID_LEN + 1];
        PrunePhase phase;
        bool running, answered;
        int result;              /* the ended slice's outcome */
        const AccountWaker *waker;
        AccountPruneStats got;   /* what the slice freed */
        unsigned budget;
        /* Phases 2 to 4: the objects this slice removes. */
        uint8_t (*sha)[BS_SHA_LEN];
        uint64_t *size;
        bool *named;             /* the sweep: a row names it */
        size_t n;
        unsigned deleting;
        ObjectKind kind;         /* of the slice's objects */
        int error;
        ObjectKind sweep;        /* the keys the sweep is going through */
        char after[S3_KEY_MAX];  /* and where it goes on */
};

static void objects_clear(ClusterPrune *p) {
        free(p->sha);
        free(p->size);
        free(p->named);
        p->sha = NULL;
        p->size = NULL;
        p->named = NULL;
        p->n = 0;
        p->error = 0;
}

static void prune_unlink(ClusterPrune *p) {
        ClusterBackend *b = p->backend;
        if (p->prev)
                p->prev->next = p->next;
        else if (b->prunes == p)
                b->prunes = p->next;
        if (p->next)
                p->next->prev = p->prev;
}

static void prune_destroy(ClusterPrune *p) {
        prune_unlink(p);
        objects_clear(p);
        free(p);
}

void cluster_prune_detach(ClusterPrune *p) {
        if (!p)
                return;
        p->account = NULL;
        p->waker = NULL;
        if (!p->running)
                prune_destroy(p);
}

void cluster_prune_free_all(ClusterBackend *b) {
        while (b->prunes)
                prune_destroy(b->prunes);
}

/* The slice ended with r: tell the owner, or go away if there is none. */
static void slice_end(ClusterPrune *p, int r) {
        p->running = false;
        objects_clear(p);
        if (r < 0)
                p->phase = PRUNE_ROWS; /* the next round starts over */
        if (!p->account) {
                prune_destroy(p);
                return;
        }
        p->result = r;
        p->answered = true;
        if (p->waker)
                p->waker->fn(p->waker->userdata);
}

static int objects_reserve(ClusterPrune *p, size_t n) {
        p->sha = calloc(n ? n : 1, sizeof(*p->sha));
        p->size = calloc(n ? n : 1, sizeof(*p->size));
        p->named = calloc(n ? n : 1, sizeof(*p->named));
        return p->sha && p->size && p->named ? 0 : -ENOMEM;
}

/* --- phase 1 --- */

static void on_rows(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        if (r >= 0 && PQntuples(res) != 1)
                r = -EIO;
        if (r < 0) {
                slice_end(p, r);
                return;
        }
        int64_t versions = cluster_column_int(res, 0, 0), records = cluster_column_int(res, 0, 1),
                history = cluster_column_int(res, 0, 2);
        p->got.versions += (uint64_t) MAX(versions, 0);
        p->got.log_records += (uint64_t) MAX(records, 0);
        if (history >= 0) {
                if (p->account)
                        p->account->history_bytes = history;
                p->phase = PRUNE_COLLECT;
        }
        slice_end(p, 1);
}

static int start_rows(ClusterPrune *p, const AccountRetention *ret, time_t now) {
        char v[8][32];
        snprintf(v[0], sizeof(v[0]), "%" PRId64, (int64_t) now);
        snprintf(v[1], sizeof(v[1]), "%" PRIu64, ret->keep_all);
        snprintf(v[2], sizeof(v[2]), "%" PRIu64, ret->keep_hourly);
        snprintf(v[3], sizeof(v[3]), "%" PRIu64, ret->keep_daily);
        snprintf(v[4], sizeof(v[4]), "%" PRIu64, ret->keep_versions);
        snprintf(v[5], sizeof(v[5]), "%" PRIu64, ret->max_bytes);
        snprintf(v[6], sizeof(v[6]), "%u", p->budget);
        const char *values[] = { p->id, v[0], v[1], v[2], v[3], v[4], v[5], v[6] };
        return pg_query(p->backend->pg,
                        "SELECT versions, log_records, history FROM bs_prune($1, $2::bigint, $3::bigint, $4::bigint, "
                        "$5::bigint, $6::bigint, $7::bigint, $8::integer)",
                        8, values, NULL, NULL, on_rows, p);
}

/* --- phases 2 to 4: under the objects lock --- */

static void on_unlocked(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        int outcome = p->error < 0 ? p->error : r < 0 ? r : p->phase == PRUNE_ROWS ? 0 : 1;
        slice_end(p, outcome);
}

static void finish_locked(ClusterPrune *p) {
        const char *v[] = { p->id };
        int r = pg_query(p->backend->gc, "SELECT bs_objects_uncollect($1)", 1, v, NULL, NULL, on_unlocked, p);
        if (r < 0)
                slice_end(p, r); /* the connection is gone, and the lock with it */
}

static void on_deleted(S3Request *req, int r, void *userdata) {
        ClusterPrune *p = userdata;
        if (r < 0 && p->error == 0)
                p->error = r;
        if (--p->deleting == 0)
                finish_locked(p);
}

/* Remove the slice's objects from the bucket, then let go of the lock. */
static void delete_objects(ClusterPrune *p) {
        char key[S3_KEY_MAX];
        p->deleting = 1; /* held while the requests are made */
        for (size_t i = 0; i < p->n; i++) {
                if (p->kind == OBJECT_CHUNK)
                        cluster_chunk_key(p->id, p->sha[i], key);
                else
                        cluster_object_key(p->id, p->sha[i], key);
                int r = s3_delete(p->backend->s3, key, on_deleted, p, NULL);
                if (r < 0) {
                        p->error = r;
                        break;
                }
                p->deleting++;
        }
        if (--p->deleting == 0)
                finish_locked(p);
}

/* The slice's list as one text parameter: hex SHA-256s, comma-separated. */
static char *objects_list(const ClusterPrune *p) {
        char *list = malloc(CLUSTER_HEX_LIST_SIZE(p->n));
        size_t len = 0;
        if (!list)
                return NULL;
        list[0] = 0;
        for (size_t i = 0; i < p->n; i++)
                cluster_hex_append(list, &len, p->sha[i]);
        return list;
}

static void on_forgotten(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        if (r < 0) {
                p->error = r;
                finish_locked(p);
                return;
        }
        for (size_t i = 0; i < p->n; i++) {
                if (p->kind == OBJECT_CONTENT)
                        p->got.contents++;
                p->got.bytes += p->size[i];
        }
        delete_objects(p);
}

/* Rows first, objects after: a row always has its object (a crash in
 * between leaves an object without a row, for the sweep). */
static void forget_rows(ClusterPrune *p) {
        _cleanup_(freep) char *list = objects_list(p);
        const char *v[] = { p->id, list };
        int r = list ? 0 : -ENOMEM;
        if (r >= 0 && p->kind == OBJECT_CONTENT)
                r = pg_query(p->backend->gc,
                             "SELECT count(bs_object_drop($1, decode(x, 'hex'))) FROM unnest(string_to_array($2, ',')) x",
                             2, v, NULL, NULL, on_forgotten, p);
        else if (r >= 0)
                r = pg_query(p->backend->gc,
                             "DELETE FROM bs_chunks WHERE account = $1 AND refs <= 0 AND sha = ANY("
                             "SELECT decode(x, 'hex') FROM unnest(string_to_array($2, ',')) x)",
                             2, v, NULL, NULL, on_forgotten, p);
        if (r < 0) {
                p->error = r;
                finish_locked(p);
        }
}

/* What nothing names any more: contents, then chunks. */
static void on_unnamed(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        size_t n = r >= 0 ? (size_t) PQntuples(res) : 0;
        if (r >= 0)
                r = objects_reserve(p, n);
        for (size_t i = 0; r >= 0 && i < n; i++) {
                if (cluster_column_bytes(res, (int) i, 0, p->sha[i], BS_SHA_LEN) != BS_SHA_LEN) {
                        r = -EBADMSG;
                        break;
                }
                p->size[i] = (uint64_t) MAX(cluster_column_int(res, (int) i, 1), 0);
        }
        if (r < 0) {
                p->error = r;
                finish_locked(p);
                return;
        }
        p->n = n;
        if (n < p->budget) {
                /* The last of these: on to the next phase. */
                p->phase = p->phase == PRUNE_COLLECT ? PRUNE_CHUNKS : PRUNE_SWEEP;
                p->sweep = OBJECT_CONTENT;
                p->after[0] = 0;
        }
        if (n == 0)
                finish_locked(p);
        else
                forget_rows(p);
}

/* A page of the bucket compared with the rows: the keys without one go. */
static void on_rows_of_page(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        if (r < 0) {
                p->error = r;
                finish_locked(p);
                return;
        }
        for (int row = 0; row < PQntuples(res); row++) {
                uint8_t sha[BS_SHA_LEN];
                if (cluster_column_bytes(res, row, 0, sha, BS_SHA_LEN) != BS_SHA_LEN)
                        continue;
                for (size_t i = 0; i < p->n; i++)
                        if (memcmp(p->sha[i], sha, BS_SHA_LEN) == 0)
                                p->named[i] = true;
        }
        size_t k = 0;
        for (size_t i = 0; i < p->n; i++)
                if (!p->named[i]) {
                        memcpy(p->sha[k], p->sha[i], BS_SHA_LEN);
                        p->size[k] = p->size[i];
                        k++;
                }
        p->n = k;
        for (size_t i = 0; i < k; i++) {
                if (p->kind == OBJECT_CONTENT)
                        p->got.contents++;
                p->got.bytes += p->size[i];
        }
        delete_objects(p);
}

static void sweep_prefix(const ClusterPrune *p, char *prefix) {
        snprintf(prefix, S3_KEY_MAX, "accounts/%s/%s/", p->id, p->sweep == OBJECT_CHUNK ? "k" : "c");
}

/* The sweep of one kind ended: the other, or the round. */
static void sweep_next(ClusterPrune *p) {
        p->after[0] = 0;
        if (p->sweep == OBJECT_CONTENT)
                p->sweep = OBJECT_CHUNK;
        else
                p->phase = PRUNE_ROWS;
}

static void on_page(S3Request *req, int r, void *userdata) {
        ClusterPrune *p = userdata;
        char prefix[S3_KEY_MAX], lo[2 * BS_SHA_LEN + 1] = "", hi[2 * BS_SHA_LEN + 1] = "";
        size_t n = 0;
        const S3Entry *e = r >= 0 ? s3_request_entries(req, &n) : NULL;

        if (r >= 0)
                r = objects_reserve(p, n);
        if (r < 0) {
                p->error = r;
                finish_locked(p);
                return;
        }
        bool last = !s3_request_truncated(req);
        sweep_prefix(p, prefix);
        size_t plen = strlen(prefix);
        p->kind = p->sweep;
        for (size_t i = 0; i < n; i++) {
                const char *hex = e[i].key + plen;
                if (strncmp(e[i].key, prefix, plen) != 0 || strlen(hex) != 2 * BS_SHA_LEN ||
                    bs_unhex(hex, p->sha[p->n], BS_SHA_LEN) < 0)
                        continue; /* not a content's or chunk's object: not ours to judge */
                p->size[p->n++] = e[i].size;
                if (!lo[0])
                        memcpy(lo, hex, sizeof(lo));
                memcpy(hi, hex, sizeof(hi));
        }
        if (n > 0 && strlen(e[n - 1].key) < sizeof(p->after))
                strcpy(p->after, e[n - 1].key);
        else
                last = true;
        if (last)
                sweep_next(p);
        if (p->n == 0) {
                finish_locked(p);
                return;
        }
        const char *v[] = { p->id, lo, hi };
        r = pg_query(p->backend->gc,
                     p->kind == OBJECT_CHUNK
                             ? "SELECT sha FROM bs_chunks WHERE account = $1 AND sha >= decode($2, 'hex') "
                               "AND sha <= decode($3, 'hex')"
                             : "SELECT sha FROM bs_objects WHERE account = $1 AND sha >= decode($2, 'hex') "
                               "AND sha <= decode($3, 'hex')",
                     3, v, NULL, NULL, on_rows_of_page, p);
        if (r < 0) {
                p->error = r;
                finish_locked(p);
        }
}

static void on_locked(Pg *pg, int r, const PGresult *res, void *userdata) {
        ClusterPrune *p = userdata;
        char prefix[S3_KEY_MAX], budget[16];
        if (r >= 0 && PQntuples(res) != 1)
                r = -EIO;
        if (r < 0) {
                slice_end(p, r);
                return;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
                /* A batch is storing objects: the next round collects. */
                p->phase = PRUNE_ROWS;
                slice_end(p, 0);
                return;
        }
        snprintf(budget, sizeof(budget), "%u", p->budget);
        const char *v[] = { p->id, budget };
        switch (p->phase) {
        case PRUNE_COLLECT:
                p->kind = OBJECT_CONTENT;
                r = pg_query(p->backend->gc, "SELECT sha, size FROM bs_unnamed($1, $2::integer)", 2, v, NULL, NULL,
                             on_unnamed, p);
                break;
        case PRUNE_CHUNKS:
                p->kind = OBJECT_CHUNK;
                r = pg_query(p->backend->gc,
                             "SELECT sha, size FROM bs_chunks WHERE account = $1 AND refs <= 0 LIMIT $2::integer", 2,
                             v, NULL, NULL, on_unnamed, p);
                break;
        default:
                sweep_prefix(p, prefix);
                r = s3_list(p->backend->s3, prefix, p->after[0] ? p->after : NULL, SWEEP_PAGE, on_page, p, NULL);
        }
        if (r < 0) {
                p->error = r;
                finish_locked(p);
        }
}

static int start_locked(ClusterPrune *p) {
        const char *v[] = { p->id };
        return pg_query(p->backend->gc, "SELECT bs_objects_collect($1)", 1, v, NULL, NULL, on_locked, p);
}

/* --- the slices --- */

int cluster_prune(ClusterAccount *a, const AccountRetention *ret, time_t now, unsigned budget,
                  AccountPruneStats *stats, const AccountWaker *w) {
        ClusterPrune *p = a->prune;
        int r;

        if (!p) {
                p = calloc(1, sizeof(*p));
                if (!p)
                        return -ENOMEM;
                p->backend = a->backend;
                p->account = a;
                strcpy(p->id, a->id);
                p->next = a->backend->prunes;
                if (p->next)
                        p->next->prev = p;
                a->backend->prunes = p;
                a->prune = p;
        }
        p->waker = w;
        if (p->running)
                return -EINPROGRESS;
        if (p->answered) {
                p->answered = false;
                stats->versions += p->got.versions;
                stats->contents += p->got.contents;
                stats->bytes += p->got.bytes;
                stats->log_records += p->got.log_records;
                p->got = (AccountPruneStats) {};
                return p->result;
        }
        p->budget = budget ? budget : 1;
        r = p->phase == PRUNE_ROWS ? start_rows(p, ret, now) : start_locked(p);
        if (r < 0)
                return r;
        p->running = true;
        return -EINPROGRESS;
}
