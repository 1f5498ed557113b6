/* agent-state.c - the agent's local state in SQLite */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent-state.h"
#include "bs-blocks.h"
#include "bs-macro.h"
#include "bs-path.h"

static inline void sqlite3_finalizep(sqlite3_stmt **st) {
        sqlite3_finalize(*st);
}

/* Paths are BLOBs (any bytes); '||' yields TEXT, so cast back to compare. */
#define BELOW(p) "(path > CAST(" p "||'/' AS BLOB) AND path < CAST(" p "||'0' AS BLOB))"

#define CHILDREN_POOL 16

struct AgentState {
        sqlite3 *db;
        sqlite3_stmt *get, *put, *del, *kv_get, *kv_set, *locate, *index_put;
        sqlite3_stmt *seen; /* once per record of a snapshot */
        sqlite3_stmt *same_ino; /* once per file with more than one name */
        /* Unused statements of manifest_children(): a scan asks once per
         * directory, nested as deep as the tree, and preparing one costs
         * more than the query. */
        sqlite3_stmt *children[CHILDREN_POOL];
        size_t n_children;
        /* The first failure since the transaction began: every later
         * statement refuses to run (SQLite may have rolled back already,
         * and a statement on its own would commit alone), and the commit
         * rolls back instead, so the manifest and last_seq move together
         * or not at all. */
        int error;
        uint64_t generation; /* manifest changes, counted */
};

/* The columns iterate() reads, in its order. */
#define COLS "path,kind,size,mode,mtime,ino,sha,version,target"

/* locking_mode=EXCLUSIVE: one agent owns its state directory. It keeps the
 * lock from the first write on, so a second agent started on the same
 * directory fails at once, and no statement pays for taking and dropping
 * file locks (four fcntl calls per lookup otherwise). */
static const char schema[] =
        "PRAGMA locking_mode=EXCLUSIVE;"
        "PRAGMA journal_mode=WAL;"
        "PRAGMA synchronous=NORMAL;"
        "CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB);"
        "CREATE TABLE IF NOT EXISTS manifest("
        " path BLOB PRIMARY KEY, parent BLOB NOT NULL, kind INTEGER, size INTEGER,"
        " mode INTEGER, mtime INTEGER, ino INTEGER, sha BLOB, version INTEGER,"
        " target BLOB, seen INTEGER DEFAULT 0);"
        "CREATE INDEX IF NOT EXISTS manifest_parent ON manifest(parent);"
        "CREATE INDEX IF NOT EXISTS manifest_ino ON manifest(ino);"
        /* Big files by content, to fetch a copy from one already here;
         * small files do not pay for the index. */
        "CREATE INDEX IF NOT EXISTS manifest_big_sha ON manifest(sha) WHERE kind=1 AND size>=1048576;"
        /* Fixed-size block fingerprints of older versions: chunk lists
         * replace them as files travel (each big file goes whole once). */
        "DROP TABLE IF EXISTS blocks;"
        "CREATE TABLE IF NOT EXISTS chunks(sha BLOB PRIMARY KEY, recs BLOB);"
        "CREATE TABLE IF NOT EXISTS chunk_index(sum BLOB, len INTEGER, sha BLOB, off INTEGER,"
        " PRIMARY KEY(sum, len, sha)) WITHOUT ROWID;"
        "CREATE INDEX IF NOT EXISTS chunk_index_sha ON chunk_index(sha);"
        "DELETE FROM chunk_index WHERE sha NOT IN (SELECT sha FROM chunks);"
        "BEGIN IMMEDIATE; COMMIT;"; /* take the lock now */

static int sql_err(int rc) {
        switch (rc) {
        case SQLITE_OK: case SQLITE_ROW: case SQLITE_DONE: return 0;
        case SQLITE_NOMEM: return -ENOMEM;
        case SQLITE_FULL: return -ENOSPC;
        case SQLITE_BUSY: case SQLITE_LOCKED: return -EBUSY;
        case SQLITE_CANTOPEN: return -EACCES;
        default: return -EIO;
        }
}

/* Note a failure (not "no such row") for the commit to see. */
static int note(AgentState *s, int r) {
        if (r < 0 && r != -ENOENT && !s->error)
                s->error = r;
        return r;
}

static int step_done(AgentState *s, sqlite3_stmt *st) {
        if (s->error)
                return s->error;
        return note(s, sql_err(sqlite3_step(st)));
}

/* A prepared statement for one use; a failure is noted like a write's. */
static int prepare(AgentState *s, const char *sql, sqlite3_stmt **st) {
        if (s->error)
                return s->error;
        return note(s, sql_err(sqlite3_prepare_v2(s->db, sql, -1, st, NULL)));
}

AgentState *agent_state_free(AgentState *s) {
        if (!s)
                return NULL;
        sqlite3_finalize(s->get);
        sqlite3_finalize(s->put);
        sqlite3_finalize(s->del);
        sqlite3_finalize(s->kv_get);
        sqlite3_finalize(s->kv_set);
        sqlite3_finalize(s->locate);
        sqlite3_finalize(s->index_put);
        sqlite3_finalize(s->seen);
        sqlite3_finalize(s->same_ino);
        for (size_t i = 0; i < s->n_children; i++)
                sqlite3_finalize(s->children[i]);
        sqlite3_close(s->db);
        free(s);
        return NULL;
}

int agent_state_open(const char *dir, AgentState **ret) {
        _cleanup_(agent_state_freep) AgentState *s = calloc(1, sizeof(*s));
        char path[4200];
        int rc;

        if (!s)
                return -ENOMEM;
        snprintf(path, sizeof(path), "%s/state.db", dir);
        rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK)
                return sql_err(rc);
        rc = sqlite3_exec(s->db, schema, NULL, NULL, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "SELECT kind,size,mode,mtime,ino,sha,version,target FROM manifest WHERE path=?", -1, &s->get, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO manifest(path,parent,kind,size,mode,mtime,ino,sha,version,target,seen) VALUES(?,?,?,?,?,?,?,?,?,?,1)", -1, &s->put, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "DELETE FROM manifest WHERE path=?1 OR " BELOW("?1"), -1, &s->del, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "SELECT value FROM kv WHERE key=?", -1, &s->kv_get, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO kv(key,value) VALUES(?,?)", -1, &s->kv_set, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "SELECT sha, off FROM chunk_index WHERE sum=? AND len=? LIMIT 1", -1,
                                      &s->locate, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "INSERT OR IGNORE INTO chunk_index(sum, len, sha, off) VALUES(?,?,?,?)",
                                      -1, &s->index_put, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "UPDATE manifest SET seen=1 WHERE path=?", -1, &s->seen, NULL);
        rc = rc ?: sqlite3_prepare_v2(s->db, "SELECT " COLS " FROM manifest WHERE ino=? AND kind=1", -1,
                                      &s->same_ino, NULL);
        if (rc != SQLITE_OK)
                return sql_err(rc);
        int r = blocks_trim(s);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

static int kv_get(AgentState *s, const char *key, const void **p, int *n) {
        sqlite3_reset(s->kv_get);
        sqlite3_bind_text(s->kv_get, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s->kv_get);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return note(s, sql_err(rc));
        *p = sqlite3_column_blob(s->kv_get, 0);
        *n = sqlite3_column_bytes(s->kv_get, 0);
        return 0;
}

int agent_state_get(AgentState *s, const char *key, char *out, size_t outsz) {
        const void *p;
        int n, r = kv_get(s, key, &p, &n);
        if (r < 0)
                return r;
        if ((size_t) n >= outsz)
                r = -ENAMETOOLONG;
        else {
                memcpy(out, p, (size_t) n);
                out[n] = 0;
        }
        sqlite3_reset(s->kv_get); /* no read transaction left open */
        return r;
}

int agent_state_get_blob(AgentState *s, const char *key, void *out, size_t n) {
        const void *p;
        int len, r = kv_get(s, key, &p, &len);
        if (r < 0)
                return r;
        if ((size_t) len != n)
                r = -EINVAL;
        else
                memcpy(out, p, n);
        sqlite3_reset(s->kv_get);
        return r;
}

int agent_state_set_blob(AgentState *s, const char *key, const void *p, size_t n) {
        sqlite3_reset(s->kv_set);
        sqlite3_bind_text(s->kv_set, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_blob(s->kv_set, 2, p, (int) n, SQLITE_STATIC);
        return step_done(s, s->kv_set);
}

int agent_state_set(AgentState *s, const char *key, const char *value) {
        return agent_state_set_blob(s, key, value, strlen(value));
}

uint64_t agent_state_get_u64(AgentState *s, const char *key) {
        char buf[32];
        if (agent_state_get(s, key, buf, sizeof(buf)) < 0)
                return 0;
        return strtoull(buf, NULL, 10);
}

int agent_state_set_u64(AgentState *s, const char *key, uint64_t v) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long) v);
        return agent_state_set(s, key, buf);
}

int agent_state_begin(AgentState *s) {
        if (!sqlite3_get_autocommit(s->db))
                return s->error;
        s->error = 0;
        return note(s, sql_err(sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL)));
}

int agent_state_commit(AgentState *s) {
        int r = s->error;
        if (!sqlite3_get_autocommit(s->db)) {
                if (r == 0)
                        r = sql_err(sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL));
                /* A failed COMMIT may leave the transaction open. */
                if (r < 0 && !sqlite3_get_autocommit(s->db))
                        (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        }
        s->error = 0;
        return r;
}

int agent_state_flush(AgentState *s) {
        /* synchronous=NORMAL syncs at checkpoints only: make one now. */
        return sql_err(sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_FULL, NULL, NULL));
}

int agent_state_error(const AgentState *s) {
        return s->error;
}

static void read_entry(sqlite3_stmt *st, int c, ManifestEntry *e) {
        memset(e, 0, offsetof(ManifestEntry, target));
        e->kind = (uint8_t) sqlite3_column_int(st, c + 0);
        e->size = (uint64_t) sqlite3_column_int64(st, c + 1);
        e->mode = (uint32_t) sqlite3_column_int(st, c + 2);
        e->mtime_ns = sqlite3_column_int64(st, c + 3);
        e->ino = (uint64_t) sqlite3_column_int64(st, c + 4);
        if (sqlite3_column_bytes(st, c + 5) == BS_SHA_LEN)
                memcpy(e->sha, sqlite3_column_blob(st, c + 5), BS_SHA_LEN);
        e->version = (uint64_t) sqlite3_column_int64(st, c + 6);
        int n = sqlite3_column_bytes(st, c + 7);
        if (n > (int) BS_PATH_MAX)
                n = 0;
        if (n > 0)
                memcpy(e->target, sqlite3_column_blob(st, c + 7), (size_t) n);
        e->target[n] = 0;
}

int manifest_get(AgentState *s, const char *path, ManifestEntry *e) {
        sqlite3_reset(s->get);
        sqlite3_bind_blob(s->get, 1, path, (int) strlen(path), SQLITE_STATIC);
        int rc = sqlite3_step(s->get);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return note(s, sql_err(rc));
        read_entry(s->get, 0, e);
        sqlite3_reset(s->get);
        return 0;
}

/*
 * Step st (its ?1 bound to a SHA-256 already) to its first row and copy
 * that row's first column, a blob of 1 to max bytes, into a malloc'ed
 * *out. -ENOENT without a row or with a blob out of bounds.
 */
static int first_blob(AgentState *s, sqlite3_stmt *st, size_t max, uint8_t **out, size_t *n) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return -ENOENT;
        if (rc != SQLITE_ROW)
                return note(s, sql_err(rc));
        int len = sqlite3_column_bytes(st, 0);
        if (len <= 0 || (size_t) len > max)
                return -ENOENT;
        *out = malloc((size_t) len + 1);
        if (!*out)
                return -ENOMEM;
        memcpy(*out, sqlite3_column_blob(st, 0), (size_t) len);
        (*out)[len] = 0;
        *n = (size_t) len;
        return 0;
}

int manifest_find_content(AgentState *s, const uint8_t sha[BS_SHA_LEN], char *path, size_t pathsz) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        uint8_t *p;
        size_t n;
        /* The condition repeats the partial index's, which SQLite needs to use it. */
        int r = prepare(s, "SELECT path FROM manifest WHERE sha=? AND kind=1 AND size>=1048576 LIMIT 1", &st);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        r = first_blob(s, st, pathsz - 1, &p, &n);
        if (r < 0)
                return r;
        memcpy(path, p, n + 1);
        free(p);
        return 0;
}

int manifest_put(AgentState *s, const char *path, const ManifestEntry *e) {
        s->generation++;
        sqlite3_stmt *st = s->put;
        sqlite3_reset(st);
        sqlite3_bind_blob(st, 1, path, (int) strlen(path), SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, path, (int) bs_path_parent_len(path), SQLITE_STATIC);
        sqlite3_bind_int(st, 3, e->kind);
        sqlite3_bind_int64(st, 4, (sqlite3_int64) e->size);
        sqlite3_bind_int(st, 5, (int) e->mode);
        sqlite3_bind_int64(st, 6, e->mtime_ns);
        sqlite3_bind_int64(st, 7, (sqlite3_int64) e->ino);
        sqlite3_bind_blob(st, 8, e->sha, BS_SHA_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(st, 9, (sqlite3_int64) e->version);
        sqlite3_bind_blob(st, 10, e->target, (int) strlen(e->target), SQLITE_STATIC);
        return step_done(s, st);
}

int manifest_delete_tree(AgentState *s, const char *path) {
        s->generation++;
        sqlite3_reset(s->del);
        sqlite3_bind_blob(s->del, 1, path, (int) strlen(path), SQLITE_STATIC);
        return step_done(s, s->del);
}

int manifest_delete(AgentState *s, const char *path) {
        s->generation++;
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int r = prepare(s, "DELETE FROM manifest WHERE path=?", &st);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, path, (int) strlen(path), SQLITE_STATIC);
        return step_done(s, st);
}

int manifest_move_tree(AgentState *s, const char *from, const char *to) {
        s->generation++;
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int fl = (int) strlen(from);
        /* Rewrite the prefix of every path at or below from; parent too. */
        int r = prepare(s,
                "UPDATE manifest SET path = CAST(?2 || substr(path, ?3 + 1) AS BLOB),"
                " parent = CASE WHEN path = ?1 THEN ?4 ELSE CAST(?2 || substr(parent, ?3 + 1) AS BLOB) END"
                " WHERE path = ?1 OR " BELOW("?1"), &st);
        if (r < 0)
                return r;
        /* Whatever sat at the target before is replaced. */
        r = manifest_delete_tree(s, to);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, from, fl, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, to, (int) strlen(to), SQLITE_STATIC);
        sqlite3_bind_int(st, 3, fl);
        sqlite3_bind_blob(st, 4, to, (int) bs_path_parent_len(to), SQLITE_STATIC);
        return step_done(s, st);
}

int blocks_get(AgentState *s, const uint8_t sha[BS_SHA_LEN], uint8_t **recs, size_t *count) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        size_t n;
        int r = prepare(s, "SELECT recs FROM chunks WHERE sha=?", &st);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        r = first_blob(s, st, (size_t) BS_BLOCKS_MAX * BS_BLOCK_REC_LEN, recs, &n);
        if (r < 0)
                return r;
        if (n % BS_BLOCK_REC_LEN != 0) {
                free(*recs);
                *recs = NULL;
                return -ENOENT;
        }
        *count = n / BS_BLOCK_REC_LEN;
        return 0;
}

int blocks_locate(AgentState *s, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN], uint8_t sha[BS_SHA_LEN],
                  uint64_t *off) {
        sqlite3_stmt *st = s->locate;
        int r = -ENOENT;
        if (s->error)
                return s->error;
        sqlite3_reset(st);
        sqlite3_bind_blob(st, 1, sum, BS_BLOCK_SUM_LEN, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, len);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == BS_SHA_LEN && sqlite3_column_int64(st, 1) >= 0) {
                memcpy(sha, sqlite3_column_blob(st, 0), BS_SHA_LEN);
                *off = (uint64_t) sqlite3_column_int64(st, 1);
                r = 0;
        } else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                r = note(s, sql_err(rc));
        sqlite3_reset(st);
        return r;
}

int blocks_put(AgentState *s, const uint8_t sha[BS_SHA_LEN], const uint8_t *recs, size_t count) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        uint64_t off = 0;
        int r = prepare(s, "INSERT OR REPLACE INTO chunks(sha, recs) VALUES(?,?)", &st);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, recs, (int) (count * BS_BLOCK_REC_LEN), SQLITE_STATIC);
        r = step_done(s, st);
        for (size_t i = 0; r >= 0 && i < count; i++) {
                const uint8_t *rec = recs + i * BS_BLOCK_REC_LEN;
                uint32_t len = bs_block_rec_len(rec);
                sqlite3_reset(s->index_put);
                sqlite3_bind_blob(s->index_put, 1, rec + 4, BS_BLOCK_SUM_LEN, SQLITE_STATIC);
                sqlite3_bind_int64(s->index_put, 2, len);
                sqlite3_bind_blob(s->index_put, 3, sha, BS_SHA_LEN, SQLITE_STATIC);
                sqlite3_bind_int64(s->index_put, 4, (sqlite3_int64) off);
                r = step_done(s, s->index_put);
                off += len;
        }
        sqlite3_reset(s->index_put);
        return r;
}

int blocks_delete(AgentState *s, const uint8_t sha[BS_SHA_LEN]) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL, *st2 = NULL;
        int r = prepare(s, "DELETE FROM chunks WHERE sha=?", &st);
        r = r ?: prepare(s, "DELETE FROM chunk_index WHERE sha=?", &st2);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        sqlite3_bind_blob(st2, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        r = step_done(s, st);
        return r ?: step_done(s, st2);
}

/* Contents no big file of the manifest holds, beyond the newest
 * BLOCKS_KEEP_OLD: their chunk lists and index rows go. */
#define OLD_LISTS "SELECT sha FROM chunks WHERE sha NOT IN (SELECT sha FROM manifest WHERE kind=1 AND " \
                  "size>=1048576) ORDER BY rowid DESC LIMIT -1 OFFSET " STRINGIFY(BLOCKS_KEEP_OLD)

int blocks_trim(AgentState *s) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL, *st2 = NULL;
        int r = prepare(s, "DELETE FROM chunk_index WHERE sha IN (" OLD_LISTS ")", &st);
        r = r ?: prepare(s, "DELETE FROM chunks WHERE sha IN (" OLD_LISTS ")", &st2);
        r = r ?: step_done(s, st);
        return r ?: step_done(s, st2);
}

int blocks_keep(AgentState *s, const uint8_t sha[BS_SHA_LEN], const uint8_t *recs, size_t count) {
        int r = blocks_put(s, sha, recs, count);
        return r ?: blocks_trim(s);
}

int64_t manifest_count(AgentState *s) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM manifest", -1, &st, NULL) != SQLITE_OK)
                return -EIO;
        if (sqlite3_step(st) != SQLITE_ROW)
                return -EIO;
        return sqlite3_column_int64(st, 0);
}

static int iterate(AgentState *s, sqlite3_stmt *st, manifest_iter_t fn, void *userdata) {
        ManifestEntry e;
        char path[BS_PATH_MAX + 1];
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                int n = sqlite3_column_bytes(st, 0);
                if (n <= 0 || n > (int) BS_PATH_MAX)
                        continue;
                memcpy(path, sqlite3_column_blob(st, 0), (size_t) n);
                path[n] = 0;
                read_entry(st, 1, &e);
                int r = fn(path, &e, userdata);
                if (r != 0)
                        return r;
        }
        return note(s, sql_err(rc));
}

int64_t manifest_count_files(AgentState *s, const char *path) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = path[0] ? prepare(s, "SELECT count(*) FROM manifest WHERE kind<>2 AND (path=CAST(?1 AS BLOB) OR "
                                      BELOW("?1") ")", &st)
                         : prepare(s, "SELECT count(*) FROM manifest WHERE kind<>2", &st);
        if (rc < 0)
                return rc;
        if (path[0])
                sqlite3_bind_blob(st, 1, path, (int) strlen(path), SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW)
                return -EIO;
        return sqlite3_column_int64(st, 0);
}

int manifest_children(AgentState *s, const char *dir, manifest_iter_t fn, void *userdata) {
        sqlite3_stmt *st = NULL;
        int rc;
        if (s->error)
                return s->error;
        if (s->n_children > 0)
                st = s->children[--s->n_children];
        else if ((rc = prepare(s, "SELECT " COLS " FROM manifest WHERE parent=? ORDER BY path", &st)) < 0)
                return rc;
        sqlite3_bind_blob(st, 1, dir, (int) strlen(dir), SQLITE_STATIC);
        rc = iterate(s, st, fn, userdata);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (s->n_children < CHILDREN_POOL)
                s->children[s->n_children++] = st;
        else
                sqlite3_finalize(st);
        return rc;
}

int manifest_below(AgentState *s, const char *dir, manifest_iter_t fn, void *userdata) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc;
        if (dir[0] == 0)
                rc = prepare(s, "SELECT " COLS " FROM manifest ORDER BY length(path) DESC", &st);
        else
                rc = prepare(s, "SELECT " COLS " FROM manifest WHERE " BELOW("?1") " ORDER BY length(path) DESC", &st);
        if (rc < 0)
                return rc;
        if (dir[0])
                sqlite3_bind_blob(st, 1, dir, (int) strlen(dir), SQLITE_STATIC);
        return iterate(s, st, fn, userdata);
}

uint64_t manifest_generation(const AgentState *s) {
        return s->generation;
}

int manifest_conflict_candidates(AgentState *s, manifest_iter_t fn, void *userdata) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = prepare(s, "SELECT " COLS " FROM manifest WHERE kind=1 AND CAST(path AS TEXT) GLOB '*.conflict-*'", &st);
        if (rc < 0)
                return rc;
        return iterate(s, st, fn, userdata);
}

int manifest_same_inode(AgentState *s, uint64_t ino, manifest_iter_t fn, void *userdata) {
        /* Kept prepared: a tree of hard links (cp -al, rsnapshot) asks for
         * each of its files, and parsing the query cost more than running it. */
        sqlite3_stmt *st = s->same_ino;
        if (s->error)
                return s->error;
        sqlite3_bind_int64(st, 1, (sqlite3_int64) ino);
        int r = iterate(s, st, fn, userdata);
        sqlite3_reset(st);
        return r;
}

int manifest_clear_seen(AgentState *s) {
        if (s->error)
                return s->error;
        return note(s, sql_err(sqlite3_exec(s->db, "UPDATE manifest SET seen=0", NULL, NULL, NULL)));
}

int manifest_mark_seen(AgentState *s, const char *path) {
        if (s->error)
                return s->error;
        sqlite3_bind_blob(s->seen, 1, path, (int) strlen(path), SQLITE_STATIC);
        int r = step_done(s, s->seen);
        sqlite3_reset(s->seen);
        return r;
}

int manifest_unseen(AgentState *s, manifest_iter_t fn, void *userdata) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = prepare(s, "SELECT " COLS " FROM manifest WHERE seen=0 ORDER BY length(path) DESC", &st);
        if (rc < 0)
                return rc;
        return iterate(s, st, fn, userdata);
}
