/* cluster-verify.c - backupsyncd --verify on the cluster: every content the metadata names, in the store
 *
 * Each content a current entry or a kept version names must be an object
 * in the bucket, recorded in bs_objects, with its size and (unless told
 * not to) its SHA-256. Objects are looked at a few at a time; a
 * content is fetched to the spool directory to be hashed. A chunked
 * content's recipe must add up to its size, and each chunk be an object
 * of its length (hashed: with its SHA-256, and together the content's).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "cluster-internal.h"

/* Objects looked at at once. */
#define VERIFY_PARALLEL 16u

typedef struct Verify Verify;

typedef struct Check {
        Verify *v;
        int row;
        int fd; /* the object fetched, to be hashed */
        ClusterRecipe recipe; /* a chunked content's, gone through in order */
        size_t next;
        BsSha *sha;
} Check;

struct Verify {
        ClusterBackend *b;
        bool hash;
        cluster_verify_fn report;
        void *userdata;
        PGresult *rows;
        int next;
        unsigned running;
        unsigned problems;
        int error;
        bool listed;
};

static void problem(Verify *v, int row, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void problem(Verify *v, int row, const char *fmt, ...) {
        char text[256], path[BS_PATH_MAX + 1] = "";
        va_list ap;
        ssize_t n = cluster_column_bytes(v->rows, row, 4, path, BS_PATH_MAX);
        path[n > 0 ? n : 0] = 0;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        v->problems++;
        v->report(v->userdata, PQgetvalue(v->rows, row, 0), path, text);
}

static void start_more(Verify *v);

static void check_done(Check *c) {
        Verify *v = c->v;
        if (c->fd >= 0)
                close(c->fd);
        cluster_recipe_done(&c->recipe);
        bs_sha_free(c->sha);
        free(c);
        v->running--;
        start_more(v);
}

static void on_fetched(S3Request *req, int r, void *userdata) {
        Check *c = userdata;
        Verify *v = c->v;
        uint8_t want[BS_SHA_LEN], got[BS_SHA_LEN];
        char hex[2 * BS_SHA_LEN + 1];

        if (r < 0)
                problem(v, c->row, "cannot read its object to hash it: %s", strerror(-r));
        else if (cluster_column_bytes(v->rows, c->row, 1, want, BS_SHA_LEN) != BS_SHA_LEN ||
                 bs_sha_fd(c->fd, got) < 0 || memcmp(want, got, BS_SHA_LEN) != 0) {
                bs_hex(got, BS_SHA_LEN, hex);
                problem(v, c->row, "its object's content has SHA-256 %s: damaged in the store", hex);
        }
        check_done(c);
}

static void on_head(S3Request *req, int r, void *userdata) {
        Check *c = userdata;
        Verify *v = c->v;
        uint64_t want = (uint64_t) cluster_column_int(v->rows, c->row, 2);

        if (r == -ENOENT)
                problem(v, c->row, "its content (%llu bytes) is missing in the store", (unsigned long long) want);
        else if (r < 0) {
                if (v->error == 0)
                        v->error = r;
        } else if (s3_request_size(req) != want)
                problem(v, c->row, "the store holds %llu bytes of its content, %llu expected",
                        (unsigned long long) s3_request_size(req), (unsigned long long) want);
        else if (v->hash) {
                char key[S3_KEY_MAX];
                uint8_t sha[BS_SHA_LEN];
                (void) cluster_column_bytes(v->rows, c->row, 1, sha, BS_SHA_LEN);
                cluster_object_key(PQgetvalue(v->rows, c->row, 0), sha, key);
                c->fd = openat(v->b->spool_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
                if (c->fd >= 0 && s3_get_fd(v->b->s3, key, c->fd, on_fetched, c, NULL) >= 0)
                        return;
                if (v->error == 0)
                        v->error = c->fd < 0 ? -errno : -ENOMEM;
        }
        check_done(c);
}

static void chunk_next(Check *c);

static void on_chunk(S3Request *req, int r, void *userdata) {
        Check *c = userdata;
        Verify *v = c->v;
        size_t i = c->next++;
        uint64_t want = c->recipe.off[i + 1] - c->recipe.off[i];
        char hex[2 * BS_SHA_LEN + 1];

        bs_hex(c->recipe.sha[i], BS_SHA_LEN, hex);
        if (r == -ENOENT) {
                problem(v, c->row, "its chunk %zu (%s, %llu bytes) is missing in the store", i, hex,
                        (unsigned long long) want);
                check_done(c);
                return;
        }
        if (r < 0) {
                if (v->error == 0)
                        v->error = r;
                check_done(c);
                return;
        }
        if (!v->hash) {
                if (s3_request_size(req) != want) {
                        problem(v, c->row, "the store holds %llu bytes of its chunk %zu (%s), %llu expected",
                                (unsigned long long) s3_request_size(req), i, hex, (unsigned long long) want);
                        check_done(c);
                        return;
                }
        } else {
                size_t n;
                const void *data = s3_request_data(req, &n);
                uint8_t got[BS_SHA_LEN];
                if (n != want || bs_sha_buf(data, n, got) < 0 || memcmp(got, c->recipe.sha[i], BS_SHA_LEN) != 0) {
                        problem(v, c->row, "its chunk %zu (%s) is damaged in the store", i, hex);
                        check_done(c);
                        return;
                }
                (void) bs_sha_update(c->sha, data, n);
        }
        chunk_next(c);
}

/* The next chunk of a chunked content, one at a time; at the end, the whole. */
static void chunk_next(Check *c) {
        Verify *v = c->v;
        char key[S3_KEY_MAX];
        if (c->next == c->recipe.n) {
                uint8_t want[BS_SHA_LEN], got[BS_SHA_LEN];
                if (v->hash && (cluster_column_bytes(v->rows, c->row, 1, want, BS_SHA_LEN) != BS_SHA_LEN ||
                                bs_sha_final(c->sha, got) < 0 || memcmp(want, got, BS_SHA_LEN) != 0))
                        problem(v, c->row, "its chunks do not make up its content");
                check_done(c);
                return;
        }
        size_t i = c->next;
        uint64_t len = c->recipe.off[i + 1] - c->recipe.off[i];
        cluster_chunk_key(PQgetvalue(v->rows, c->row, 0), c->recipe.sha[i], key);
        int r = v->hash ? s3_get(v->b->s3, key, 0, len, on_chunk, c, NULL) : s3_head(v->b->s3, key, on_chunk, c, NULL);
        if (r < 0) {
                if (v->error == 0)
                        v->error = r;
                check_done(c);
        }
}

/* A chunked content: its recipe read, then its chunks. */
static int check_chunked(Check *c) {
        Verify *v = c->v;
        size_t n;
        unsigned char *p = PQunescapeBytea((const unsigned char *) PQgetvalue(v->rows, c->row, 5), &n);
        int r = p ? cluster_recipe_decode(p, n, (uint64_t) cluster_column_int(v->rows, c->row, 2), &c->recipe)
                  : -ENOMEM;
        PQfreemem(p);
        if (r == -EBADMSG) {
                problem(v, c->row, "its recipe does not add up to its size");
                return 0;
        }
        r = r ?: bs_sha_new(&c->sha);
        if (r < 0)
                return r;
        chunk_next(c);
        return 1;
}

static void start_more(Verify *v) {
        while (v->rows && v->error == 0 && v->running < VERIFY_PARALLEL && v->next < PQntuples(v->rows)) {
                int row = v->next++;
                uint8_t sha[BS_SHA_LEN];
                char key[S3_KEY_MAX];
                if (cluster_column_bytes(v->rows, row, 1, sha, BS_SHA_LEN) != BS_SHA_LEN) {
                        problem(v, row, "its content's SHA-256 is malformed in the metadata");
                        continue;
                }
                if (PQgetisnull(v->rows, row, 3))
                        problem(v, row, "its content is not recorded as stored (bs_objects)");
                Check *c = calloc(1, sizeof(*c));
                if (!c) {
                        v->error = -ENOMEM;
                        break;
                }
                *c = (Check) { .v = v, .row = row, .fd = -1 };
                int r;
                if (!PQgetisnull(v->rows, row, 5)) {
                        v->running++;
                        r = check_chunked(c);
                        if (r == 0)
                                check_done(c);
                        else if (r < 0) {
                                v->error = r;
                                check_done(c);
                        }
                        continue;
                }
                cluster_object_key(PQgetvalue(v->rows, row, 0), sha, key);
                r = s3_head(v->b->s3, key, on_head, c, NULL);
                if (r < 0) {
                        free(c);
                        v->error = r;
                        break;
                }
                v->running++;
        }
}

static void on_listed(Pg *pg, int r, const PGresult *res, void *userdata) {
        Verify *v = userdata;
        v->listed = true;
        if (r < 0) {
                v->error = r;
                return;
        }
        v->rows = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
        if (!v->rows)
                v->error = -ENOMEM;
        start_more(v);
}

int cluster_verify(Backend *base, sd_event *event, bool hash, cluster_verify_fn report, void *userdata,
                   unsigned *ret_checked) {
        Verify v = { .b = (ClusterBackend *) base, .hash = hash, .report = report, .userdata = userdata };
        /* Each content once per account, with one of the paths that name it. */
        int r = pg_query(v.b->pg,
                         "SELECT n.account, n.sha, n.size, o.size, n.path, o.recipe FROM ("
                         " SELECT DISTINCT ON (account, sha) account, sha, size, path FROM ("
                         "  SELECT account, sha, size, path FROM bs_entries WHERE kind = 1"
                         "  UNION ALL SELECT account, sha, size, path FROM bs_versions WHERE kind = 1) x"
                         " ORDER BY account, sha) n "
                         "LEFT JOIN bs_objects o ON o.account = n.account AND o.sha = n.sha "
                         "ORDER BY n.account, n.sha",
                         0, NULL, NULL, NULL, on_listed, &v);
        if (r < 0)
                return r;
        while (!v.listed || v.running > 0) {
                r = sd_event_run(event, UINT64_MAX);
                if (r < 0) {
                        v.error = r;
                        break;
                }
        }
        if (ret_checked)
                *ret_checked = v.rows ? (unsigned) PQntuples(v.rows) : 0;
        PQclear(v.rows);
        return v.error < 0 ? v.error : (int) v.problems;
}
