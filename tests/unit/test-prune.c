/* test-prune.c - unit tests for daemon/account-prune.c: retention with a test clock
 *
 * Changes are made at chosen moments by moving the clock the history is
 * written with (BACKUPSYNC_TEST_CLOCK, see bs-clock.h), and pruning is
 * asked for as of a chosen "now": days of history in a second.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "local-internal.h"
#include "account-history.h"
#include "account-read.h"
#include "bs-clock.h"
#include "bs-hash.h"

static char storage[] = "/tmp/bs-test-prune-XXXXXX";
static char clock_file[64];
static LocalAccount *acc;
static char token[BS_TOKEN_MAX + 1];
static const uint8_t device[BS_DEVICE_LEN] = { 2 };
static time_t t0;

static void set_clock(time_t offset) {
        FILE *f = fopen(clock_file, "we");
        cr_assert_not_null(f);
        fprintf(f, "%lld\n", (long long) offset);
        fclose(f);
}

static void setup(void) {
        cr_assert_not_null(mkdtemp(storage));
        snprintf(clock_file, sizeof(clock_file), "%s/clock", storage);
        set_clock(0);
        setenv("BACKUPSYNC_TEST_CLOCK", clock_file, 1);
        t0 = time(NULL);
        cr_assert_eq(local_create(storage, &acc, token), 0);
}

static void teardown(void) {
        char cmd[128];
        local_free(acc);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", storage);
        cr_assert_eq(system(cmd), 0);
        strcpy(storage, "/tmp/bs-test-prune-XXXXXX");
}

TestSuite(prune, .init = setup, .fini = teardown);

/* Write path with content made from i, 1000 bytes, on its current version. */
static void edit(const char *path, int i) {
        char content[1000];
        uint8_t sha[BS_SHA_LEN];
        LocalUpload *u;
        AccountEntry e;
        uint64_t v, base = local_entry_get(acc, path, &e) == 0 ? e.version : 0;
        memset(content, 'a' + i % 26, sizeof(content));
        snprintf(content, sizeof(content), "edit %d", i);
        cr_assert_eq(bs_sha_buf(content, sizeof(content), sha), 0);
        cr_assert_eq(local_upload_begin(acc, &u), 0);
        cr_assert_eq(local_upload_write(u, content, sizeof(content), sizeof(content)), 0);
        cr_assert_eq(local_put(acc, u, device, path, base, sizeof(content), 0644, 0, sha, &v), 0);
        cr_assert_eq(local_commit(acc), 0);
}

static int64_t count(const char *sql) {
        sqlite3_stmt *st;
        cr_assert_eq(sqlite3_prepare_v2(acc->db, sql, -1, &st, NULL), SQLITE_OK, "%s", sql);
        cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
        int64_t n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return n;
}

static void prune_all(const AccountRetention *ret, time_t now, AccountPruneStats *stats) {
        int r, slices = 0;
        while ((r = local_prune(acc, ret, now, 50, stats)) == 1)
                cr_assert_lt(++slices, 100000);
        cr_assert_eq(r, 0);
}

/* Whether the tree as of seq has path. */
static bool tree_has(uint64_t seq, const char *path) {
        LocalQuery *q;
        static BsHistRow row;
        bool found = false;
        cr_assert_eq(local_query_new(acc, BS_HIST_TREE, "", seq, 0, 0, &q), 0);
        while (local_query_next(q, &row) == 1)
                found |= strcmp(row.rec.path, path) == 0;
        local_query_free(q);
        return found;
}

static const AccountRetention defaults = {
        .keep_versions = 365 * 86400, .keep_all = 3600, .keep_hourly = 86400, .keep_daily = 30 * 86400,
};

/* An edit every 30 minutes for 10 days: all of the last hour, one an hour
 * for a day, one a day before; every moment still shows the file. */
Test(prune, thinning_by_age) {
        const int n = 10 * 48;
        for (int i = 0; i < n; i++) {
                set_clock((time_t) i * 1800);
                edit("f", i);
        }
        time_t now = t0 + (time_t) (n - 1) * 1800 + 60;
        int64_t rows = count("SELECT COUNT(*) FROM versions");
        cr_assert_eq(rows, n - 1);
        AccountPruneStats stats = {};
        prune_all(&defaults, now, &stats);
        int64_t kept = count("SELECT COUNT(*) FROM versions");
        cr_assert_eq(stats.versions, (uint64_t) (rows - kept));
        cr_assert_eq(stats.contents, stats.versions, "each dropped version's content left the store");
        cr_assert_geq(stats.bytes, stats.contents * 1000);
        /* 2 younger than an hour, ~23 hourly, ~9 daily. */
        cr_assert(kept >= 30 && kept <= 38, "kept %lld", (long long) kept);
        char sql[512];
        snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM versions WHERE %lld - until_time < 3600", (long long) now);
        cr_assert_eq(count(sql), 2, "every version of the last hour is kept");
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM (SELECT until_time / 3600 AS b, COUNT(*) AS c FROM versions WHERE "
                 "%lld - until_time BETWEEN 3600 AND 86399 GROUP BY b HAVING c > 1)", (long long) now);
        cr_assert_eq(count(sql), 0, "two versions in one hour of the last day");
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM (SELECT until_time / 86400 AS b, COUNT(*) AS c FROM versions WHERE "
                 "%lld - until_time >= 86400 GROUP BY b HAVING c > 1)", (long long) now);
        cr_assert_eq(count(sql), 0, "two versions in one day before that");
        /* Contents: one per kept version (each edit differs), plus the current one in the tree. */
        AccountPruneStats again = {};
        prune_all(&defaults, now, &again);
        cr_assert_eq(again.versions, 0, "a second round finds nothing: the thinning is stable");
        for (uint64_t seq = 1; seq <= (uint64_t) n; seq += 7)
                cr_assert(tree_has(seq, "f"), "the tree as of %llu lost the file", (unsigned long long) seq);
        /* The kept versions' contents are all reachable. */
        sqlite3_stmt *st;
        cr_assert_eq(sqlite3_prepare_v2(acc->db, "SELECT sha FROM versions", -1, &st, NULL), SQLITE_OK);
        while (sqlite3_step(st) == SQLITE_ROW) {
                LocalContent *c;
                cr_assert_eq(local_content_open(acc, sqlite3_column_blob(st, 0), "", &c), 0);
                local_content_free(c);
        }
        sqlite3_finalize(st);
}

/* keep-versions: older states go, and the log before it; a PULL from
 * before the pruned log gets a snapshot. */
Test(prune, keep_versions_and_log) {
        for (int i = 0; i < 20; i++) {
                set_clock((time_t) i * 86400);
                edit(i % 2 ? "a" : "b", i);
        }
        time_t now = t0 + 19 * 86400 + 60;
        AccountRetention ret = defaults;
        ret.keep_versions = 5 * 86400;
        AccountPruneStats stats = {};
        prune_all(&ret, now, &stats);
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM versions WHERE %lld - until_time >= %d", (long long) now,
                 5 * 86400);
        cr_assert_eq(count(sql), 0, "a version older than keep-versions is kept");
        cr_assert_gt(count("SELECT COUNT(*) FROM versions"), 0);
        cr_assert_gt(stats.log_records, 0);
        snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM log WHERE %lld - time >= %d", (long long) now, 5 * 86400);
        cr_assert_eq(count(sql), 0, "log records older than keep-versions are kept");
        cr_assert_eq(count("SELECT MAX(seq) FROM log"), 20, "the newest record stays");
        LocalCursor *c;
        cr_assert_eq(local_cursor_new(acc, 1, &c), 0);
        cr_assert(local_cursor_is_snapshot(c), "a PULL from before the pruned log is not a snapshot");
        local_cursor_free(c);
        cr_assert_eq(local_cursor_new(acc, 19, &c), 0);
        cr_assert(!local_cursor_is_snapshot(c));
        local_cursor_free(c);
}

/* history-max-size: the oldest versions go until the rest fits. */
Test(prune, space_cap) {
        for (int i = 0; i < 30; i++) {
                set_clock((time_t) i * 7200);
                edit("f", i);
        }
        time_t now = t0 + 30 * 7200;
        AccountRetention ret = { .keep_all = 1000000000 }; /* thinning keeps everything */
        AccountPruneStats stats = {};
        prune_all(&ret, now, &stats);
        cr_assert_eq(stats.versions, 0);
        ret = (AccountRetention) { .keep_all = 3600, .keep_hourly = 1000000000, .max_bytes = 10 * 1000 };
        prune_all(&ret, now, &stats);
        cr_assert_leq(count("SELECT COUNT(*) FROM versions"), 10);
        cr_assert_geq(count("SELECT COUNT(*) FROM versions"), 9, "more than needed was removed");
        cr_assert_eq(count("SELECT MIN(replaced_seq) FROM versions") > 15, 1, "not the oldest first");
}

/* A content no row names (a crash between the commit and the removal) is
 * found by the sweep; one that an entry or a version names is not. */
Test(prune, sweep_finds_unnamed_contents) {
        char path[4200];
        uint8_t sha[BS_SHA_LEN];
        edit("f", 1);
        edit("f", 2);
        cr_assert_eq(bs_sha_buf("stray", 5, sha), 0);
        snprintf(path, sizeof(path), "%s/%s/stray", storage, local_id(acc));
        FILE *f = fopen(path, "we");
        cr_assert_not_null(f);
        fputs("stray", f);
        fclose(f);
        int dfd = open(storage, O_RDONLY | O_DIRECTORY);
        char rel[64];
        snprintf(rel, sizeof(rel), "%s", local_id(acc));
        int afd = openat(dfd, rel, O_RDONLY | O_DIRECTORY);
        cr_assert_eq(store_put(acc->store, sha, afd, "stray", STORE_MOVE), 0);
        close(afd);
        close(dfd);
        cr_assert(store_has(acc->store, sha));
        AccountPruneStats stats = {};
        prune_all(&defaults, time(NULL), &stats);
        cr_assert(!store_has(acc->store, sha), "the unnamed content is still there");
        cr_assert_eq(stats.contents, 1);
        cr_assert_eq(count("SELECT COUNT(*) FROM versions"), 1);
        LocalContent *c;
        uint8_t first[BS_SHA_LEN];
        char content[1000];
        memset(content, 'a' + 1, sizeof(content));
        snprintf(content, sizeof(content), "edit %d", 1);
        cr_assert_eq(bs_sha_buf(content, sizeof(content), first), 0);
        cr_assert_eq(local_content_open(acc, first, "", &c), 0, "the kept version's content was swept");
        local_content_free(c);
}
