/* cluster-migrate.c - backupsyncd --migrate: a single-machine storage's accounts into the cluster
 *
 * Account by account: first every content its tree and its history name
 * is stored as an object (one already there with its size is kept), then
 * all its metadata (the account with its key, sequence and log floor,
 * entries, log, history, devices, objects) goes in one transaction. An
 * account is in the cluster whole or not at all, so a run cut short is
 * run again: accounts already there are passed over, objects already
 * stored are not sent again. Agents then go on with their tokens and
 * their sequences: nothing is uploaded again.
 *
 * The one place that knows both backends: it reads the embedded one's
 * files and database directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "cluster-internal.h"
#include "local-internal.h"

/* An answer the migration waits for, running the loop meanwhile. */
typedef struct Wait {
        bool done;
        int r;
        uint64_t size;
        int64_t count[3];
        char key_hash[65];
        bool found;
} Wait;

static int wait_for(sd_event *event, Wait *w) {
        while (!w->done) {
                int r = sd_event_run(event, UINT64_MAX);
                if (r < 0)
                        return r;
        }
        return w->r;
}

static void on_s3(S3Request *req, int r, void *userdata) {
        Wait *w = userdata;
        w->r = r;
        w->size = r >= 0 ? s3_request_size(req) : 0;
        w->done = true;
}

static void on_txn(Pg *pg, int r, void *userdata) {
        Wait *w = userdata;
        w->r = r;
        w->done = true;
}

static void on_account(Pg *pg, int r, const PGresult *res, void *userdata) {
        Wait *w = userdata;
        w->r = r;
        w->found = r >= 0 && PQntuples(res) == 1;
        if (w->found)
                snprintf(w->key_hash, sizeof(w->key_hash), "%s", PQgetvalue(res, 0, 0));
        w->done = true;
}

static void on_counts(Pg *pg, int r, const PGresult *res, void *userdata) {
        Wait *w = userdata;
        w->r = r;
        if (r >= 0 && PQntuples(res) == 1)
                for (int i = 0; i < 3; i++)
                        w->count[i] = cluster_column_int(res, 0, i);
        w->done = true;
}

/* One content, from the embedded store to an object: 0, or -errno. */
static int store_content(ClusterBackend *b, sd_event *event, LocalAccount *la, const uint8_t sha[BS_SHA_LEN],
                         uint64_t size, const char *path) {
        char key[S3_KEY_MAX];
        Wait w = {};

        cluster_object_key(la->id, sha, key);
        int r = s3_head(b->s3, key, on_s3, &w, NULL);
        r = r ?: wait_for(event, &w);
        if (r >= 0 && w.size == size)
                return 0; /* stored by an earlier run */
        if (r < 0 && r != -ENOENT)
                return r;

        LocalContent *c;
        r = local_content_open(la, sha, path, &c);
        if (r < 0)
                return r;
        _cleanup_(closep) int fd = openat(b->spool_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0) {
                local_content_free(c);
                return -errno;
        }
        static uint8_t buf[1024 * 1024];
        for (uint64_t off = 0; r >= 0 && off < size; off += sizeof(buf)) {
                size_t n = (size_t) MIN((uint64_t) sizeof(buf), size - off);
                r = local_content_read(c, off, buf, n);
                if (r >= 0 && pwrite(fd, buf, n, (off_t) off) != (ssize_t) n)
                        r = -EIO;
        }
        local_content_free(c);
        uint8_t got[BS_SHA_LEN];
        if (r >= 0 && (lseek(fd, 0, SEEK_SET) < 0 || bs_sha_fd(fd, got) < 0 || memcmp(got, sha, BS_SHA_LEN) != 0))
                r = -EBADMSG; /* the source is damaged: nothing of it is sent */
        if (r < 0)
                return r;
        w = (Wait) {};
        r = s3_put_fd(b->s3, key, fd, 0, size, on_s3, &w, NULL);
        return r ?: wait_for(event, &w);
}

/* The columns of a SQLite row as parameters $2.. (types: i integer, b bytes, t text). Text is
 * printable ASCII here: a device's name came from the network and PostgreSQL wants UTF-8. */
static int row_params(sqlite3_stmt *st, const char *types, char (*num)[32], char (*txt)[128], const char **v,
                      int *len, int *fmt) {
        int n = (int) strlen(types);
        for (int i = 0; i < n; i++) {
                int col = sqlite3_column_type(st, i);
                v[i + 1] = NULL;
                len[i + 1] = 0;
                fmt[i + 1] = 0;
                if (col == SQLITE_NULL)
                        continue;
                if (types[i] == 'i') {
                        snprintf(num[i], sizeof(num[i]), "%" PRId64, (int64_t) sqlite3_column_int64(st, i));
                        v[i + 1] = num[i];
                } else if (types[i] == 'b') {
                        v[i + 1] = sqlite3_column_blob(st, i);
                        len[i + 1] = sqlite3_column_bytes(st, i);
                        fmt[i + 1] = 1;
                        if (!v[i + 1])
                                v[i + 1] = ""; /* an empty blob, not NULL */
                } else {
                        const unsigned char *s = sqlite3_column_text(st, i);
                        size_t k = 0;
                        for (; s && s[k] && k < sizeof(txt[i]) - 1; k++)
                                txt[i][k] = s[k] >= 0x20 && s[k] < 0x7f ? (char) s[k] : '_';
                        txt[i][k] = 0;
                        v[i + 1] = txt[i];
                }
        }
        return n + 1;
}

/* Every row of select (on the account's database) as an insert into the transaction. */
static int copy_rows(PgTxn *t, LocalAccount *la, const char *select, const char *insert, const char *types,
                     int64_t *ret_n) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        char num[16][32], txt[16][128];
        const char *v[17];
        int len[17], fmt[17];
        int64_t n = 0;

        if (strlen(types) > 16)
                return -EINVAL;
        int rc = sqlite3_prepare_v2(la->db, select, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        v[0] = la->id;
        len[0] = fmt[0] = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                int k = row_params(st, types, num, txt, v, len, fmt);
                int r = pg_txn_query(t, insert, k, v, len, fmt, NULL, NULL);
                if (r < 0)
                        return r;
                n++;
        }
        if (rc != SQLITE_DONE)
                return local_sqlite_errno(rc) ?: -EIO;
        if (ret_n)
                *ret_n = n;
        return 0;
}

static int64_t local_count(LocalAccount *la, const char *sql) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(la->db, sql, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
                return -1;
        return sqlite3_column_int64(st, 0);
}

/* When a state began or ended, kept with it, else from the log. */
#define TIME_OF(seq) "COALESCE((SELECT l.time FROM log l WHERE l.seq = " seq "), 0)"

static int migrate_account(ClusterBackend *b, sd_event *event, const char *storage, const char *id,
                           cluster_migrate_fn say, void *userdata) {
        _cleanup_(local_freep) LocalAccount *la = NULL;
        char text[BS_PATH_MAX + 512];
        Wait w = {};
        int r = local_open(storage, id, &la);
        if (r == -ENOENT)
                return 1; /* not a complete account: nothing to move */
        if (r < 0)
                return r;

        const char *v[] = { id };
        r = pg_query(b->pg, "SELECT key_hash FROM bs_accounts WHERE id = $1", 1, v, NULL, NULL, on_account, &w);
        r = r ?: wait_for(event, &w);
        if (r < 0)
                return r;
        if (w.found) {
                if (!bs_key_hash_equal(w.key_hash, la->key_hash)) {
                        say(userdata, id, "another account with this ID is in the cluster already: not moved");
                        return -EEXIST;
                }
                say(userdata, id, "in the cluster already");
                return 1;
        }

        /* The contents first: every one its tree and its history name. */
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(la->db,
                                    "SELECT sha, MAX(size), MIN(path) FROM ("
                                    " SELECT sha, size, path FROM entries WHERE kind = 1 AND length(sha) = 32"
                                    " UNION ALL SELECT sha, size, path FROM versions WHERE kind = 1 AND length(sha) = 32)"
                                    " GROUP BY sha",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        uint64_t contents = 0, bytes = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                uint8_t sha[BS_SHA_LEN];
                char path[BS_PATH_MAX + 1];
                uint64_t size = (uint64_t) sqlite3_column_int64(st, 1);
                memcpy(sha, sqlite3_column_blob(st, 0), BS_SHA_LEN);
                r = local_column_path(st, 2, path, NULL);
                r = r ?: store_content(b, event, la, sha, size, path);
                if (r < 0) {
                        char hex[2 * BS_SHA_LEN + 1];
                        bs_hex(sha, BS_SHA_LEN, hex);
                        snprintf(text, sizeof(text), "content %s (%s, %" PRIu64 " bytes) cannot be stored: %s; "
                                 "the account is not moved", hex, path, size, strerror(-r));
                        say(userdata, id, text);
                        return r;
                }
                contents++;
                bytes += size;
        }
        if (rc != SQLITE_DONE)
                return local_sqlite_errno(rc) ?: -EIO;

        /* Then all its metadata, in one transaction. */
        PgTxn *t;
        int64_t n_entries = 0, n_log = 0, n_versions = 0;
        r = pg_txn_begin(b->pg, &t);
        if (r < 0)
                return r;
        r = copy_rows(t, la,
                      "SELECT (SELECT value FROM meta WHERE key = 'key_hash'), committed,"
                      " COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'log_floor'), 0),"
                      " COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'created'), 0)"
                      " FROM (SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'seq'), 0)"
                      " AS committed)",
                      "INSERT INTO bs_accounts (id, key_hash, seq, log_floor, created) "
                      "VALUES ($1, $2, $3::bigint, $4::bigint, $5::bigint)",
                      "tiii", NULL);
        r = r ?: copy_rows(t, la,
                           "SELECT path, kind, size, mode, mtime_ns, sha, target, version, device,"
                           " COALESCE(since, version), COALESCE(time, " TIME_OF("COALESCE(since, version)") ") "
                           "FROM entries",
                           "INSERT INTO bs_entries (account, path, kind, size, mode, mtime_ns, sha, target, version,"
                           " device, since, time) VALUES ($1, $2::bytea, $3::smallint, $4::bigint, $5::integer,"
                           " $6::bigint, $7::bytea, $8::bytea, $9::bigint, $10::bytea, $11::bigint, $12::bigint)",
                           "biiiibbibii", &n_entries);
        r = r ?: copy_rows(t, la,
                           "SELECT seq, device, op, kind, path, path2, size, mode, mtime_ns, sha, time FROM log",
                           "INSERT INTO bs_log (account, seq, device, op, kind, path, path2, size, mode, mtime_ns,"
                           " sha, time) VALUES ($1, $2::bigint, $3::bytea, $4::smallint, $5::smallint, $6::bytea,"
                           " $7::bytea, $8::bigint, $9::integer, $10::bigint, $11::bytea, $12::bigint)",
                           "ibiibbiiibi", &n_log);
        r = r ?: copy_rows(t, la,
                           "SELECT path, version, kind, sha, size, mode, mtime_ns, target, device,"
                           " COALESCE(since, version), COALESCE(since_time, " TIME_OF("COALESCE(since, version)") "),"
                           " replaced_seq, COALESCE(until_time, " TIME_OF("replaced_seq") ") FROM versions",
                           "INSERT INTO bs_versions (account, path, version, kind, sha, size, mode, mtime_ns, target,"
                           " device, since, since_time, replaced_seq, until_time) VALUES ($1, $2::bytea, $3::bigint,"
                           " $4::smallint, $5::bytea, $6::bigint, $7::integer, $8::bigint, $9::bytea, $10::bytea,"
                           " $11::bigint, $12::bigint, $13::bigint, $14::bigint)",
                           "biibiiibbiiii", &n_versions);
        r = r ?: copy_rows(t, la, "SELECT id, name, first_seen, last_seen FROM devices",
                           "INSERT INTO bs_devices (account, id, name, first_seen, last_seen) "
                           "VALUES ($1, $2::bytea, $3, $4::bigint, $5::bigint)",
                           "btii", NULL);
        r = r ?: copy_rows(t, la,
                           "SELECT sha, MAX(size), CAST(strftime('%s', 'now') AS INTEGER) FROM ("
                           " SELECT sha, size FROM entries WHERE kind = 1 AND length(sha) = 32"
                           " UNION ALL SELECT sha, size FROM versions WHERE kind = 1 AND length(sha) = 32) GROUP BY sha",
                           "INSERT INTO bs_objects (account, sha, size, stored) "
                           "VALUES ($1, $2::bytea, $3::bigint, $4::bigint)",
                           "bii", NULL);
        if (r < 0) {
                pg_txn_abort(t);
                return r;
        }
        w = (Wait) {};
        r = pg_txn_commit(t, on_txn, &w);
        r = r ?: wait_for(event, &w);
        if (r < 0) {
                snprintf(text, sizeof(text), "its metadata could not be stored: %s (%s); not moved", strerror(-r),
                         pg_error_message(b->pg));
                say(userdata, id, text);
                return r;
        }

        /* What was copied, counted on both sides. */
        w = (Wait) {};
        r = pg_query(b->pg,
                     "SELECT (SELECT count(*) FROM bs_entries WHERE account = $1),"
                     " (SELECT count(*) FROM bs_log WHERE account = $1),"
                     " (SELECT count(*) FROM bs_versions WHERE account = $1)",
                     1, v, NULL, NULL, on_counts, &w);
        r = r ?: wait_for(event, &w);
        if (r < 0)
                return r;
        if (w.count[0] != n_entries || w.count[1] != n_log || w.count[2] != n_versions ||
            n_entries != local_count(la, "SELECT count(*) FROM entries") ||
            n_log != local_count(la, "SELECT count(*) FROM log") ||
            n_versions != local_count(la, "SELECT count(*) FROM versions")) {
                say(userdata, id, "the cluster does not hold what was copied: check it with --verify");
                return -EBADMSG;
        }
        snprintf(text, sizeof(text),
                 "moved: sequence %" PRIu64 ", %" PRId64 " entries, %" PRId64 " log records, %" PRId64
                 " kept versions, %" PRIu64 " contents (%" PRIu64 " bytes)",
                 la->committed_seq, n_entries, n_log, n_versions, contents, bytes);
        say(userdata, id, text);
        return 0;
}

int cluster_migrate(Backend *base, sd_event *event, const char *storage, cluster_migrate_fn say, void *userdata,
                    unsigned *ret_moved) {
        ClusterBackend *b = (ClusterBackend *) base;
        char **ids = NULL;
        size_t n = 0;
        unsigned failed = 0, moved = 0;

        int r = local_list(storage, &ids, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = migrate_account(b, event, storage, ids[i], say, userdata);
                if (r == 0)
                        moved++;
                else if (r < 0) {
                        failed++;
                        if (r != -EEXIST && r != -EBADMSG && r != -ENOENT)
                                say(userdata, ids[i], strerror(-r));
                }
        }
        account_list_free(ids, n);
        if (ret_moved)
                *ret_moved = moved;
        return (int) failed;
}
