/* account-history.c - reading an account's past: log, versions, deleted, tree as of
 *
 * Every state an entry left is a row of versions (see account.c), so the
 * tree as of sequence S is the entries that began at or before S and are
 * still there, plus the history rows that began at or before S and ended
 * after it: one indexed pass over two tables, no replay of the log. Like
 * a PULL cursor, a query reads one snapshot over its own connection.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "local-internal.h"
#include "bs-macro.h"
#include "bs-path.h"

struct LocalQuery {
        AccountQuery base;
        sqlite3 *db;
        sqlite3_stmt *stmt;
        uint64_t seq;
        AccountRange range;
};

/* Every query yields these columns, in this order. */
#define COLUMNS "path, version, kind, size, mode, mtime_ns, sha, path2, device, until, time, until_time, name, op"
#define OP_OF_KIND "CASE kind WHEN 2 THEN 2 WHEN 3 THEN 5 ELSE 1 END"
/* ?1 the path, [?2, ?3) the paths below it; an empty path is everything. */
#define UNDER(col) "(?1 = CAST('' AS BLOB) OR " col " = ?1 OR (" col " >= ?2 AND " col " < ?3))"
#define STATE_COLUMNS "path, version, kind, size, mode, mtime_ns, sha, target, device, COALESCE(since, version) AS since"
/* When a state began and ended: kept with it, else (rows from before they
 * were) from the log. */
#define LOG_TIME(seq) "(SELECT time FROM log WHERE seq = " seq ")"

static const char *const query_sql[] = {
        [BS_HIST_LOG] =
                "SELECT l.path, l.seq AS version, l.kind, l.size, l.mode, l.mtime_ns, l.sha, l.path2 AS path2,"
                " l.device, 0 AS until, l.time, 0 AS until_time, d.name, l.op "
                "FROM log l LEFT JOIN devices d ON d.id = l.device "
                "WHERE (" UNDER("l.path") " OR (l.op = 4 AND " UNDER("l.path2") "))"
                " AND l.time >= ?4 AND l.seq <= ?5 ORDER BY l.seq DESC LIMIT ?6",
        [BS_HIST_VERSIONS] =
                "SELECT h.path, h.version, h.kind, h.size, h.mode, h.mtime_ns, h.sha, h.target AS path2, h.device,"
                " h.until, COALESCE(h.t0, " LOG_TIME("h.since") ") AS time,"
                " COALESCE(h.t1, " LOG_TIME("h.until") ") AS until_time,"
                " (SELECT name FROM devices WHERE id = h.device) AS name, " OP_OF_KIND " AS op FROM ("
                "  SELECT " STATE_COLUMNS ", 0 AS until, time AS t0, 0 AS t1 FROM entries WHERE path = ?1"
                "  UNION ALL"
                "  SELECT " STATE_COLUMNS ", replaced_seq AS until, since_time AS t0, until_time AS t1"
                "  FROM versions WHERE path = ?1) h "
                "WHERE h.since <= ?5 "
                "ORDER BY h.until = 0 DESC, h.until DESC, h.since DESC LIMIT ?6",
        /* The last deletion of each path not there now; by whom it was deleted. */
        [BS_HIST_DELETED] =
                "SELECT v.path, v.version, v.kind, v.size, v.mode, v.mtime_ns, v.sha, v.target AS path2, v.device,"
                " MAX(v.replaced_seq) AS until,"
                " COALESCE(v.since_time, " LOG_TIME("COALESCE(v.since, v.version)") ") AS time,"
                " COALESCE(v.until_time, l.time) AS until_time,"
                " (SELECT name FROM devices WHERE id = l.device) AS name, 3 AS op "
                "FROM versions v JOIN log l ON l.seq = v.replaced_seq "
                "WHERE l.op = 3 AND " UNDER("v.path") " AND COALESCE(v.until_time, l.time) >= ?4 AND v.replaced_seq <= ?5"
                " AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = v.path) "
                "GROUP BY v.path ORDER BY until DESC, v.path LIMIT ?6",
        [BS_HIST_TREE] =
                "SELECT path, version, kind, size, mode, mtime_ns, sha, target AS path2, device, until,"
                " 0 AS time, 0 AS until_time, NULL AS name, " OP_OF_KIND " AS op FROM ("
                "  SELECT " STATE_COLUMNS ", 0 AS until FROM entries WHERE " UNDER("path")
                "  UNION ALL"
                "  SELECT " STATE_COLUMNS ", replaced_seq AS until FROM versions"
                "   WHERE replaced_seq > ?5 AND " UNDER("path") ") "
                "WHERE since <= ?5 ORDER BY path LIMIT ?6",
};

LocalQuery *local_query_free(LocalQuery *q) {
        if (!q)
                return NULL;
        sqlite3_finalize(q->stmt);
        local_reader_close(q->db);
        free(q);
        return NULL;
}

/* One integer from a statement with one bound integer, or 0 for NULL. */
static int query_int(sqlite3 *db, const char *sql, int64_t arg, uint64_t *ret) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        sqlite3_bind_int64(st, 1, arg);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;
        *ret = (uint64_t) sqlite3_column_int64(st, 0);
        return 0;
}

int local_query_new(LocalAccount *a, BsHistWhat what, const char *path, uint64_t seq, int64_t time,
                      uint32_t limit, LocalQuery **ret) {
        _cleanup_(local_query_freep) LocalQuery *q = NULL;
        uint64_t now;
        int r, rc;

        if (what < BS_HIST_LOG || what > BS_HIST_TREE)
                return -EINVAL;
        if (path[0] && (r = bs_path_check(path, strlen(path))) < 0)
                return r;
        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->base.ops = &local_ops;
        r = local_reader_open(a, &q->db, &now);
        if (r < 0)
                return r;
        /* The tree as of a time is as of the last change made by then;
         * elsewhere a time is a lower bound and seq an upper one. */
        q->seq = seq && seq < now ? seq : now;
        if (what == BS_HIST_TREE && seq == 0 && time != 0) {
                r = query_int(q->db, "SELECT COALESCE(MAX(seq), 0) FROM log WHERE time <= ?1", time, &q->seq);
                if (r < 0)
                        return r;
                time = 0;
        }
        rc = sqlite3_prepare_v2(q->db, query_sql[what], -1, &q->stmt, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        local_range(&q->range, path);
        local_bind_path(q->stmt, 1, path);
        sqlite3_bind_blob(q->stmt, 2, q->range.lo, (int) q->range.len, SQLITE_STATIC);
        sqlite3_bind_blob(q->stmt, 3, q->range.hi, (int) q->range.len, SQLITE_STATIC);
        sqlite3_bind_int64(q->stmt, 4, time);
        sqlite3_bind_int64(q->stmt, 5, (sqlite3_int64) q->seq);
        sqlite3_bind_int64(q->stmt, 6, limit ? (sqlite3_int64) limit : -1);
        *ret = TAKE_PTR(q);
        return 0;
}

uint64_t local_query_seq(const LocalQuery *q) {
        return q->seq;
}

int local_query_next(LocalQuery *q, BsHistRow *row) {
        sqlite3_stmt *st = q->stmt;
        int rc = sqlite3_step(st);
        int r;

        if (rc == SQLITE_DONE)
                return 0;
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;
        memset(&row->rec, 0, offsetof(BsRecord, path));
        row->rec.seq = (uint64_t) sqlite3_column_int64(st, 1);
        row->rec.kind = (uint8_t) sqlite3_column_int(st, 2);
        row->rec.size = (uint64_t) sqlite3_column_int64(st, 3);
        row->rec.mode = (uint32_t) sqlite3_column_int64(st, 4);
        row->rec.mtime_ns = sqlite3_column_int64(st, 5);
        local_column_fixed(st, 6, row->rec.sha, BS_SHA_LEN);
        local_column_fixed(st, 8, row->rec.device, BS_DEVICE_LEN);
        row->until = (uint64_t) sqlite3_column_int64(st, 9);
        row->time = sqlite3_column_int64(st, 10);
        row->until_time = sqlite3_column_int64(st, 11);
        row->rec.op = (uint8_t) sqlite3_column_int(st, 13);
        const unsigned char *name = sqlite3_column_text(st, 12);
        row->name_len = name ? MIN((size_t) sqlite3_column_bytes(st, 12), (size_t) BS_NAME_MAX) : 0;
        memcpy(row->device_name, name ? (const char *) name : "", row->name_len);
        row->device_name[row->name_len] = 0;
        r = local_column_path(st, 0, row->rec.path, &row->rec.path_len);
        r = r ?: local_column_path(st, 7, row->rec.path2, &row->rec.path2_len);
        return r < 0 ? r : 1;
}
