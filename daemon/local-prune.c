/* account-prune.c - retention: thinning the history, freeing contents, trimming the log
 *
 * One call is one bounded slice, its own short transaction, so the
 * server can run pruning between sessions' passes and never hold the
 * account for long. Phases, each resumed by the next call until done:
 *
 *  1. history rows the retention no longer keeps: every state younger
 *     than keep-all, then the newest per hour until keep-hourly, per day
 *     until keep-daily, per week until keep-versions (age counts from
 *     when the state ended). A dropped state's time is given to the kept
 *     one before it (its replaced_seq moves up), so the tree as of any
 *     moment still shows the path, with the nearest older content kept.
 *  2. over history-max-size: the oldest states past keep-all, until under.
 *  3. contents no row names any more leave the store, after the commit
 *     (a crash leaves an unnamed content, found by the sweep in 5).
 *  4. the log before keep-versions, as a prefix: log_floor records where
 *     it begins, and a PULL from before it is answered by a snapshot.
 *  5. a sweep of one fan-out directory of the store per call, for
 *     contents no row names.
 *  6. kept contents of 1 MiB or more are cut into the chunk store, one
 *     budget of bytes per call (store-chunks.c).
 *  7. a sweep of the chunk store, one fan-out directory per call, for
 *     chunks no recipe names (after a recipe was removed, or a crash).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local-internal.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"

typedef struct Dropped {
        int64_t id;
        uint64_t since, until;
        uint8_t sha[BS_SHA_LEN];
        bool has_sha;
        uint64_t size;
        char *stored; /* legacy versions/ name, or NULL */
        char path[BS_PATH_MAX + 1];
} Dropped;

static const char thin_sql[] =
        "SELECT id, path, COALESCE(since, version), replaced_seq, sha, stored, size FROM ("
        " SELECT id, path, since, version, replaced_seq, sha, stored, size, age,"
        "  ROW_NUMBER() OVER (PARTITION BY path, tier, bucket ORDER BY replaced_seq DESC) AS rank, tier"
        " FROM (SELECT *, ?1 - t AS age,"
        "   CASE WHEN ?1 - t < ?2 THEN 0 WHEN ?1 - t < ?3 THEN 1 WHEN ?1 - t < ?4 THEN 2 ELSE 3 END AS tier,"
        "   CASE WHEN ?1 - t < ?2 THEN id WHEN ?1 - t < ?3 THEN t / 3600 WHEN ?1 - t < ?4 THEN t / 86400"
        "        ELSE t / 604800 END AS bucket"
        "  FROM (SELECT *, COALESCE(until_time, (SELECT time FROM log WHERE seq = replaced_seq), 0) AS t"
        "        FROM versions)))"
        "WHERE (?5 > 0 AND age >= ?5) OR (tier > 0 AND rank > 1) "
        "ORDER BY replaced_seq DESC LIMIT ?6";

/* Past keep-all, oldest first: what the space cap takes. */
static const char oldest_sql[] =
        "SELECT id, path, COALESCE(since, version), replaced_seq, sha, stored, size FROM versions "
        "WHERE COALESCE(until_time, (SELECT time FROM log WHERE seq = replaced_seq), 0) < ?1 - ?2 "
        "ORDER BY replaced_seq LIMIT ?3";

/* The space the kept contents take, counted once each. */
static const char history_bytes_sql[] =
        "SELECT COALESCE(SUM(size), 0) FROM (SELECT sha, MAX(size) AS size FROM versions"
        " WHERE kind = 1 AND sha IS NOT NULL AND sha NOT IN (SELECT sha FROM entries WHERE sha IS NOT NULL)"
        " GROUP BY sha)";

static int exec(LocalAccount *a, const char *sql) {
        return local_sqlite_errno(sqlite3_exec(a->db, sql, NULL, NULL, NULL));
}

static int one_int(LocalAccount *a, const char *sql, int64_t arg, int64_t *ret) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(a->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        if (sqlite3_bind_parameter_count(st) > 0)
                sqlite3_bind_int64(st, 1, arg);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;
        *ret = sqlite3_column_int64(st, 0);
        return 0;
}

static void dropped_free(Dropped *d, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(d[i].stored);
        free(d);
}

/* Read the rows a selection names (columns as thin_sql) into *ret. */
static int collect(sqlite3_stmt *st, Dropped **ret, size_t *ret_n, unsigned budget) {
        Dropped *d = calloc(budget ? budget : 1, sizeof(*d));
        size_t n = 0;
        int rc, r = 0;
        if (!d)
                return -ENOMEM;
        while (n < budget && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                Dropped *x = &d[n];
                x->id = sqlite3_column_int64(st, 0);
                r = local_column_path(st, 1, x->path, NULL);
                if (r < 0)
                        break;
                x->since = (uint64_t) sqlite3_column_int64(st, 2);
                x->until = (uint64_t) sqlite3_column_int64(st, 3);
                x->size = (uint64_t) sqlite3_column_int64(st, 6);
                x->has_sha = sqlite3_column_bytes(st, 4) == BS_SHA_LEN;
                if (x->has_sha)
                        memcpy(x->sha, sqlite3_column_blob(st, 4), BS_SHA_LEN);
                if (sqlite3_column_bytes(st, 5) > 0) {
                        x->stored = strndup((const char *) sqlite3_column_blob(st, 5),
                                            (size_t) sqlite3_column_bytes(st, 5));
                        if (!x->stored) {
                                r = -ENOMEM;
                                break;
                        }
                }
                n++;
        }
        if (r < 0) {
                dropped_free(d, n);
                return r;
        }
        *ret = d;
        *ret_n = n;
        return 0;
}

/* Remove the rows in one transaction. A dropped state's time goes to
 * the state before it at that path (its end moves up to the dropped one's),
 * or, for the first state, to the one after it (its beginning moves
 * back), so the tree as of any moment keeps the path. */
static int drop_rows(LocalAccount *a, const Dropped *d, size_t n) {
        static const char *const sql[] = {
                "SELECT COALESCE(since, version), replaced_seq FROM versions WHERE id = ?1",
                "DELETE FROM versions WHERE id = ?1",
                "UPDATE versions SET replaced_seq = ?1 WHERE path = ?2 AND replaced_seq = ?3",
                "UPDATE versions SET since = ?1 WHERE path = ?2 AND COALESCE(since, version) = ?3",
                "UPDATE entries SET since = ?1 WHERE path = ?2 AND COALESCE(since, version) = ?3",
        };
        sqlite3_stmt *st[ELEMENTSOF(sql)] = {};
        int r = exec(a, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(sql); i++)
                r = local_sqlite_errno(sqlite3_prepare_v2(a->db, sql[i], -1, &st[i], NULL));
        /* Newest first; each row as it is now, after the changes made for the ones before. */
        for (size_t i = 0; r >= 0 && i < n; i++) {
                sqlite3_reset(st[0]);
                sqlite3_bind_int64(st[0], 1, d[i].id);
                if (sqlite3_step(st[0]) != SQLITE_ROW)
                        continue;
                sqlite3_int64 since = sqlite3_column_int64(st[0], 0), until = sqlite3_column_int64(st[0], 1);
                sqlite3_reset(st[0]);
                sqlite3_reset(st[1]);
                sqlite3_bind_int64(st[1], 1, d[i].id);
                r = local_step_done(st[1]);
                sqlite3_reset(st[2]);
                sqlite3_bind_int64(st[2], 1, until);
                local_bind_path(st[2], 2, d[i].path);
                sqlite3_bind_int64(st[2], 3, since);
                r = r ?: local_step_done(st[2]);
                if (r < 0 || sqlite3_changes(a->db) > 0)
                        continue;
                for (size_t k = 3; r >= 0 && k <= 4; k++) {
                        sqlite3_reset(st[k]);
                        sqlite3_bind_int64(st[k], 1, since);
                        local_bind_path(st[k], 2, d[i].path);
                        sqlite3_bind_int64(st[k], 3, until);
                        r = local_step_done(st[k]);
                }
        }
        for (size_t i = 0; i < ELEMENTSOF(sql); i++)
                sqlite3_finalize(st[i]);
        r = r ?: exec(a, "COMMIT");
        if (r < 0)
                (void) exec(a, "ROLLBACK");
        return r;
}

/* Whether any row still names content sha (or a legacy stored name). */
static int referenced(LocalAccount *a, const uint8_t *sha, const char *stored) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        if (sha)
                (void) local_sha_index(a);
        const char *sql = sha ? "SELECT EXISTS(SELECT 1 FROM versions WHERE sha = ?1)"
                                " OR EXISTS(SELECT 1 FROM entries WHERE sha = ?1)"
                              : "SELECT EXISTS(SELECT 1 FROM versions WHERE stored = ?1)";
        int rc = sqlite3_prepare_v2(a->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        if (sha)
                sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        else
                sqlite3_bind_text(st, 1, stored, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;
        return sqlite3_column_int(st, 0);
}

/* After the commit: the contents of dropped rows that nothing names now. */
static int free_contents(LocalAccount *a, const Dropped *d, size_t n, AccountPruneStats *stats) {
        for (size_t i = 0; i < n; i++) {
                uint64_t freed = 0;
                int k;
                if (d[i].has_sha) {
                        k = referenced(a, d[i].sha, NULL);
                        if (k < 0)
                                return k;
                        if (k == 0 && store_remove(a->store, d[i].sha, &freed) == 0) {
                                stats->contents++;
                                stats->bytes += freed;
                        }
                }
                if (d[i].stored) {
                        k = referenced(a, NULL, d[i].stored);
                        if (k < 0)
                                return k;
                        struct stat st;
                        if (k == 0 && fstatat(a->versions_fd, d[i].stored, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                            bs_rm_rf_at(a->versions_fd, d[i].stored) == 0) {
                                stats->contents++;
                                stats->bytes += st.st_nlink <= 1 ? (uint64_t) st.st_blocks * 512 : 0;
                        }
                }
        }
        return store_sync(a->store);
}

/* Phases 1 and 2: 1 when rows were dropped (there may be more), 0, or -errno. */
static int prune_rows(LocalAccount *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        Dropped *d = NULL;
        size_t n = 0;
        int rc = sqlite3_prepare_v2(a->db, thin_sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        sqlite3_bind_int64(st, 1, (sqlite3_int64) now);
        sqlite3_bind_int64(st, 2, (sqlite3_int64) ret->keep_all);
        sqlite3_bind_int64(st, 3, (sqlite3_int64) ret->keep_hourly);
        sqlite3_bind_int64(st, 4, (sqlite3_int64) ret->keep_daily);
        sqlite3_bind_int64(st, 5, (sqlite3_int64) ret->keep_versions);
        sqlite3_bind_int64(st, 6, (sqlite3_int64) budget);
        int r = collect(st, &d, &n, budget);
        sqlite3_finalize(TAKE_PTR(st));
        if (r >= 0 && n == 0 && ret->max_bytes) {
                int64_t bytes;
                r = one_int(a, history_bytes_sql, 0, &bytes);
                if (r >= 0 && (uint64_t) bytes > ret->max_bytes) {
                        dropped_free(d, n);
                        d = NULL;
                        rc = sqlite3_prepare_v2(a->db, oldest_sql, -1, &st, NULL);
                        r = local_sqlite_errno(rc);
                        if (r >= 0) {
                                sqlite3_bind_int64(st, 1, (sqlite3_int64) now);
                                sqlite3_bind_int64(st, 2, (sqlite3_int64) ret->keep_all);
                                sqlite3_bind_int64(st, 3, (sqlite3_int64) budget);
                                r = collect(st, &d, &n, budget);
                        }
                        /* Only as many as the excess: the cap is checked again next time. */
                        uint64_t excess = (uint64_t) bytes - ret->max_bytes, sum = 0;
                        size_t take = 0;
                        while (r >= 0 && take < n && sum < excess)
                                sum += d[take++].size;
                        for (size_t i = take; r >= 0 && i < n; i++)
                                free(d[i].stored);
                        if (r >= 0)
                                n = take;
                        /* Oldest first was for choosing; dropping goes newest first. */
                        for (size_t i = 0; r >= 0 && i < n / 2; i++) {
                                Dropped t = d[i];
                                d[i] = d[n - 1 - i];
                                d[n - 1 - i] = t;
                        }
                }
        }
        if (r < 0 || n == 0) {
                dropped_free(d, n);
                return r;
        }
        r = drop_rows(a, d, n);
        if (r >= 0) {
                stats->versions += n;
                r = free_contents(a, d, n, stats);
        }
        dropped_free(d, n);
        return r < 0 ? r : 1;
}

/* Phase 4: 1 when records were removed, 0 when the log is as short as it may be. */
static int prune_log(LocalAccount *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats) {
        int64_t target, floor = 0;
        char buf[32];
        if (!ret->keep_versions)
                return 0;
        int r = one_int(a, "SELECT COALESCE(MAX(seq), 0) FROM log WHERE time < ?1", (int64_t) now - (int64_t) ret->keep_versions,
                        &target);
        r = r ?: one_int(a, "SELECT COALESCE(MIN(seq), 1) - 1 FROM log", 0, &floor);
        if (r < 0)
                return r;
        /* Never the last record: the sequence must stay readable from the log. */
        if ((uint64_t) target >= a->committed_seq)
                target = (int64_t) a->committed_seq - 1;
        if (target <= floor)
                return 0;
        int64_t upto = MIN(target, floor + (int64_t) budget);
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        r = exec(a, "BEGIN IMMEDIATE");
        if (r < 0)
                return r;
        int rc = sqlite3_prepare_v2(a->db, "DELETE FROM log WHERE seq <= ?1", -1, &st, NULL);
        r = local_sqlite_errno(rc);
        if (r >= 0) {
                sqlite3_bind_int64(st, 1, upto);
                r = local_step_done(st);
        }
        snprintf(buf, sizeof(buf), "%lld", (long long) upto);
        if (r >= 0) {
                sqlite3_finalize(TAKE_PTR(st));
                rc = sqlite3_prepare_v2(a->db, "INSERT OR REPLACE INTO meta(key, value) VALUES ('log_floor', ?1)", -1,
                                        &st, NULL);
                r = local_sqlite_errno(rc);
                if (r >= 0) {
                        sqlite3_bind_text(st, 1, buf, -1, SQLITE_STATIC);
                        r = local_step_done(st);
                }
        }
        r = r ?: exec(a, "COMMIT");
        if (r < 0) {
                (void) exec(a, "ROLLBACK");
                return r;
        }
        stats->log_records += (uint64_t) (upto - floor);
        return 1;
}

typedef struct Sweep {
        LocalAccount *a;
        AccountPruneStats *stats;
} Sweep;

static int sweep_content(void *userdata, const uint8_t sha[BS_SHA_LEN], unsigned forms) {
        Sweep *w = userdata;
        uint64_t freed = 0;
        (void) forms;
        int k = referenced(w->a, sha, NULL);
        if (k < 0)
                return k;
        if (k == 0 && store_remove(w->a->store, sha, &freed) == 0) {
                w->stats->contents++;
                w->stats->bytes += freed;
        }
        return 0;
}

/* Phase 5: the contents of one fan-out directory that no row names. */
static int sweep_one(LocalAccount *a, unsigned fan, AccountPruneStats *stats) {
        int r = store_each(a->store, fan, sweep_content, &(Sweep) { .a = a, .stats = stats });
        return r < 0 ? r : store_sync(a->store);
}

/* The first plain content after a->pack_last (or the first at all). */
static int next_to_pack(void *userdata, const uint8_t sha[BS_SHA_LEN], unsigned forms) {
        LocalAccount *a = userdata;
        if (!(forms & STORE_PLAIN) || (a->pack_started && memcmp(sha, a->pack_last, BS_SHA_LEN) <= 0))
                return 0;
        memcpy(a->pack_last, sha, BS_SHA_LEN);
        return 1;
}

/*
 * Phase 6: the next step of cutting one fan-out directory's big contents
 * into the chunk store, after a->pack_last in hash order. 1 while more
 * remains in this directory, 0 when it is done.
 */
static int pack_one(LocalAccount *a, unsigned fan) {
        int r;
        if (!a->pack_more) {
                r = store_each(a->store, fan, next_to_pack, a);
                if (r <= 0) {
                        a->pack_started = false;
                        return r;
                }
                a->pack_started = true;
        }
        r = store_pack_step(a->store, a->pack_last, ACCOUNT_PACK_BUDGET);
        a->pack_more = r == 1;
        return r < 0 ? r : 1;
}

int local_prune(LocalAccount *a, const AccountRetention *ret, time_t now, unsigned budget, AccountPruneStats *stats) {
        int r;
        if (a->in_txn)
                return -EBUSY;
        if (budget == 0)
                budget = 1;
        if (a->prune_phase == 0) {
                r = prune_rows(a, ret, now, budget, stats);
                if (r != 0)
                        return r;
                a->prune_phase = 1;
        }
        if (a->prune_phase == 1) {
                r = prune_log(a, ret, now, budget, stats);
                if (r != 0)
                        return r;
                a->prune_phase = 2;
                a->prune_fan = 0;
        }
        if (a->prune_phase == 2) {
                /* The sweep: one fan-out directory per call. */
                r = sweep_one(a, a->prune_fan, stats);
                if (r < 0)
                        return r;
                if (++a->prune_fan < 256)
                        return 1;
                a->prune_phase = 3;
                a->prune_fan = 0;
                a->pack_started = a->pack_more = false;
        }
        if (a->prune_phase == 3) {
                r = pack_one(a, a->prune_fan);
                if (r < 0) {
                        /* Left as it was, readable; tried again next round. */
                        a->pack_more = false;
                        errno = -r;
                        return r;
                }
                if (r == 1 || ++a->prune_fan < 256)
                        return 1;
                a->prune_phase = 4;
                a->prune_fan = 0;
                r = store_gc_begin(a->store);
                if (r < 0) {
                        a->prune_phase = 0;
                        return r;
                }
        }
        /* The chunk sweep: one fan-out directory per call. */
        uint64_t count = 0;
        r = store_gc_fan(a->store, a->prune_fan, &stats->bytes, &count);
        if (r < 0 || ++a->prune_fan >= 256) {
                store_gc_end(a->store);
                a->prune_phase = 0;
                return r < 0 ? r : 0;
        }
        return 1;
}

/* Disk space below fd (a file or a directory of files), not shared with the tree. */
static uint64_t du_at(int dfd, const char *name, int depth) {
        struct stat st;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return 0;
        if (S_ISREG(st.st_mode))
                return st.st_nlink <= 1 ? (uint64_t) st.st_blocks * 512 : 0;
        if (!S_ISDIR(st.st_mode) || depth > 64)
                return 0;
        _cleanup_(closep) int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        BsDirent *v = NULL;
        size_t n = 0;
        uint64_t sum = 0;
        if (fd < 0 || bs_dir_list(fd, &v, &n) < 0)
                return 0;
        for (size_t i = 0; i < n; i++)
                sum += du_at(fd, v[i].name, depth + 1);
        bs_dir_list_free(v, n);
        return sum;
}

int local_history_usage(LocalAccount *a, uint64_t *bytes) {
        uint64_t b = 0;
        int r = store_usage(a->store, &b, NULL);
        if (r < 0)
                return r;
        *bytes = b + du_at(a->versions_fd, ".", 0);
        return 0;
}
