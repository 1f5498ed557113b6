/* test-pg.c - daemon/pg.[ch] against a real PostgreSQL: pipelining, transactions, NOTIFY, restarts
 *
 * Needs BS_TEST_PG_DSN (a superuser conninfo) and, for the restarts,
 * BS_TEST_ENGINES with the engines module (tests/cluster/engines.py), as
 * `tests/cluster/engines.py run -- meson test --suite cluster` gives them.
 * Each test makes its own tables, named after the test and its pid.
 * Figures go to stderr as "pg: ...".
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bs-macro.h"
#include "pg.h"

static sd_event *ev;
static PGconn *admin;   /* blocking, for setting up and checking */
static bool engine_down;

static const char *dsn(void) {
        const char *d = getenv("BS_TEST_PG_DSN");
        cr_assert(d && *d, "BS_TEST_PG_DSN is not set: the cluster suite needs a real PostgreSQL; "
                  "run it under `tests/cluster/engines.py run -- meson test --suite cluster`");
        return d;
}

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void admin_connect(void) {
        if (admin && PQstatus(admin) == CONNECTION_OK)
                return;
        PQfinish(admin);
        admin = PQconnectdb(dsn());
        cr_assert_eq(PQstatus(admin), CONNECTION_OK, "admin connection: %s", PQerrorMessage(admin));
        PQclear(PQexec(admin, "SET client_min_messages = error"));
}

static void sql(const char *fmt, ...) {
        char *q;
        va_list ap;
        va_start(ap, fmt);
        cr_assert_geq(vasprintf(&q, fmt, ap), 0);
        va_end(ap);
        admin_connect();
        PGresult *r = PQexec(admin, q);
        cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", q, PQresultErrorMessage(r));
        PQclear(r);
        free(q);
}

/* The single value a query returns, as long. */
static long sql_long(const char *fmt, ...) {
        char *q;
        va_list ap;
        va_start(ap, fmt);
        cr_assert_geq(vasprintf(&q, fmt, ap), 0);
        va_end(ap);
        admin_connect();
        PGresult *r = PQexec(admin, q);
        cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", q, PQresultErrorMessage(r));
        long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        free(q);
        return v;
}

/* Run the loop until *flag, failing after seconds. */
static void run_until(const bool *flag, double seconds, const char *what) {
        uint64_t end = now_us() + (uint64_t) (seconds * 1e6);
        while (!*flag) {
                cr_assert_lt(now_us(), end, "timed out waiting for %s", what);
                cr_assert_geq(sd_event_run(ev, 50000), 0);
        }
}

static void run_for(double seconds) {
        uint64_t end = now_us() + (uint64_t) (seconds * 1e6);
        while (now_us() < end)
                cr_assert_geq(sd_event_run(ev, end - now_us()), 0);
}

static void run_count(const unsigned *n, unsigned want, const char *what) {
        uint64_t end = now_us() + 10000000;
        while (*n < want) {
                cr_assert_lt(now_us(), end, "timed out waiting for %s", what);
                cr_assert_geq(sd_event_run(ev, 50000), 0);
        }
}

static void wait_connected(Pg *pg) {
        uint64_t end = now_us() + 10000000;
        while (!pg_is_connected(pg)) {
                cr_assert_lt(now_us(), end, "timed out connecting: %s", pg_error_message(pg));
                cr_assert_geq(sd_event_run(ev, 50000), 0);
        }
}

static Pg *connect_pg(void) {
        Pg *pg;
        cr_assert_eq(pg_new(&pg, ev, dsn()), 0);
        wait_connected(pg);
        return pg;
}

/* Through the engines module, so that its pids and logs stay right. */
static void engines(const char *method) {
        char cmd[1024];
        const char *dir = getenv("BS_TEST_CLUSTER_DIR");
        cr_assert(getenv("BS_TEST_ENGINES"), "BS_TEST_ENGINES is not set: restarting PostgreSQL needs the "
                  "engines of `tests/cluster/engines.py run -- meson test --suite cluster`");
        cr_assert(dir, "BS_TEST_CLUSTER_DIR (where engines.py is) is not set: run through meson test");
        snprintf(cmd, sizeof(cmd), "python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import engines; "
                 "engines.Engines.from_env().%s()' '%s'", method, dir);
        if (strcmp(method, "start_postgres") != 0)
                engine_down = true;
        cr_assert_eq(system(cmd), 0, "engines.%s() failed", method);
        PQfinish(admin);        /* gone with the server */
        admin = NULL;
        if (strcmp(method, "kill_postgres") != 0 && strcmp(method, "stop_postgres") != 0)
                engine_down = false;
}

static void setup(void) {
        cr_assert_geq(sd_event_new(&ev), 0);
        admin_connect();
}

static void teardown(void) {
        if (engine_down)
                engines("start_postgres");
        PQfinish(admin);
        admin = NULL;
        ev = sd_event_unref(ev);
}

TestSuite(pg, .init = setup, .fini = teardown);

typedef struct Res {
        bool done;
        int r, calls;
        char sqlstate[6];
        char message[PG_ERROR_MESSAGE_MAX];
        char value[256];
        int ntuples;
        uint64_t at;
} Res;

static void on_res(Pg *pg, int r, const PGresult *res, void *userdata) {
        Res *x = userdata;
        x->done = true;
        x->calls++;
        x->r = r;
        x->at = now_us();
        snprintf(x->sqlstate, sizeof(x->sqlstate), "%s", pg_error_sqlstate(pg));
        snprintf(x->message, sizeof(x->message), "%s", r < 0 ? pg_error_message(pg) : "");
        if (r == 0 && res && PQntuples(res) > 0 && PQnfields(res) > 0)
                snprintf(x->value, sizeof(x->value), "%s", PQgetvalue(res, 0, 0));
        x->ntuples = r == 0 && res ? PQntuples(res) : -1;
}

static void on_done(Pg *pg, int r, void *userdata) {
        on_res(pg, r, NULL, userdata);
}

static void on_tick(sd_event_source *s, unsigned *ticks) {
        uint64_t t;
        (*ticks)++;
        cr_assert_geq(sd_event_now(ev, CLOCK_MONOTONIC, &t), 0);
        sd_event_source_set_time(s, t + 10000);
}

static int tick_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        on_tick(s, userdata);
        return 0;
}

/* A 10 ms ticker: it counts only while the loop is free. */
static sd_event_source *ticker(unsigned *ticks) {
        sd_event_source *s;
        *ticks = 0;
        cr_assert_geq(sd_event_add_time_relative(ev, &s, CLOCK_MONOTONIC, 10000, 1000, tick_cb, ticks), 0);
        cr_assert_geq(sd_event_source_set_enabled(s, SD_EVENT_ON), 0);
        return s;
}

/* Issued before the connection is up: it waits for it. Text, binary and NULL parameters. */
Test(pg, connect_and_params) {
        Pg *pg;
        Res x = {};
        static const uint8_t blob[] = { 0x00, 0xff, 0x10, 0x27 };
        const char *values[] = { "abc'\"\\", (const char *) blob, NULL };
        const int lengths[] = { 0, sizeof(blob), 0 };
        const int formats[] = { 0, 1, 0 };

        cr_assert_eq(pg_new(&pg, ev, dsn()), 0);
        cr_assert_eq(pg_query(pg, "SELECT $1::text || '|' || encode($2::bytea, 'hex') || '|' || ($3::int IS NULL)",
                              3, values, lengths, formats, on_res, &x), 0);
        run_until(&x.done, 10, "the first query");
        cr_assert_eq(x.r, 0, "%s", x.message);
        cr_assert_str_eq(x.value, "abc'\"\\|00ff1027|true");

        /* Round trip: one query at a time. */
        uint64_t t0 = now_us();
        for (int i = 0; i < 200; i++) {
                char n[16];
                const char *v[] = { n };
                snprintf(n, sizeof(n), "%d", i);
                x = (Res) {};
                cr_assert_eq(pg_query(pg, "SELECT $1::int + 1", 1, v, NULL, NULL, on_res, &x), 0);
                run_until(&x.done, 5, "a query");
                cr_assert_eq(x.r, 0);
                cr_assert_eq(atoi(x.value), i + 1);
        }
        fprintf(stderr, "pg: round trip of one query: %.0f us\n", (now_us() - t0) / 200.0);
        pg_free(pg);
}

typedef struct Seq {
        int next, bad;
        uint64_t last;
} Seq;

static void on_seq(Pg *pg, int r, const PGresult *res, void *userdata) {
        Seq *s = userdata;
        if (r != 0 || atoi(PQgetvalue(res, 0, 0)) != s->next)
                s->bad++;
        s->next++;
        s->last = now_us();
}

/* 1000 queries written at once come back in order. */
Test(pg, pipelined_in_order) {
        _cleanup_(pg_freep) Pg *pg = connect_pg();
        Seq s = {};
        uint64_t t0 = now_us();
        for (int i = 0; i < 1000; i++) {
                char n[16];
                const char *v[] = { n };
                snprintf(n, sizeof(n), "%d", i);
                cr_assert_eq(pg_query(pg, "SELECT $1::int", 1, v, NULL, NULL, on_seq, &s), 0);
        }
        uint64_t end = now_us() + 20000000;
        while (s.next < 1000) {
                cr_assert_lt(now_us(), end, "%d of 1000 answered", s.next);
                cr_assert_geq(sd_event_run(ev, 50000), 0);
        }
        cr_assert_eq(s.bad, 0, "results out of order or failed");
        fprintf(stderr, "pg: 1000 pipelined queries: %.1f ms\n", (s.last - t0) / 1000.0);
}

static void on_count(Pg *pg, int r, const PGresult *res, void *userdata) {
        on_res(pg, r, res, userdata);
}

Test(pg, txn_commit) {
        _cleanup_(pg_freep) Pg *pg = connect_pg();
        char t[64];
        PgTxn *txn;
        Res count = {}, done = {};
        snprintf(t, sizeof(t), "commit_%d", getpid());
        sql("CREATE TABLE %s (k int PRIMARY KEY, v bytea)", t);

        char q[128];
        snprintf(q, sizeof(q), "INSERT INTO %s VALUES ($1, $2)", t);
        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        for (int i = 0; i < 100; i++) {
                char k[16];
                uint8_t v[3] = { 0, (uint8_t) i, 0xff };
                const char *values[] = { k, (const char *) v };
                const int lengths[] = { 0, sizeof(v) }, formats[] = { 0, 1 };
                snprintf(k, sizeof(k), "%d", i);
                cr_assert_eq(pg_txn_query(txn, q, 2, values, lengths, formats, NULL, NULL), 0);
        }
        snprintf(q, sizeof(q), "SELECT count(*) FROM %s WHERE get_byte(v, 2) = 255", t);
        cr_assert_eq(pg_txn_query(txn, q, 0, NULL, NULL, NULL, on_count, &count), 0);
        uint64_t t0 = now_us();
        cr_assert_eq(pg_txn_commit(txn, on_done, &done), 0);
        run_until(&done.done, 10, "the commit");
        cr_assert_eq(done.r, 0, "%s", done.message);
        cr_assert(count.done && count.at <= done.at, "a statement's result comes before done");
        cr_assert_str_eq(count.value, "100");
        cr_assert_eq(sql_long("SELECT count(*) FROM %s", t), 100);
        fprintf(stderr, "pg: transaction of 102 statements: %.1f ms\n", (now_us() - t0) / 1000.0);
        sql("DROP TABLE %s", t);
}

/* A failing statement rolls back the whole transaction; the transactions and
 * queries written right behind it (before its failure was known) are not hurt. */
Test(pg, txn_rollback) {
        _cleanup_(pg_freep) Pg *pg = connect_pg();
        char t[64], ins[128], cnt[128];
        PgTxn *txn;
        Res first = {}, third = {}, done = {}, next = {}, after = {}, q = {};
        snprintf(t, sizeof(t), "rollback_%d", getpid());
        sql("CREATE TABLE %s (k int PRIMARY KEY)", t);
        snprintf(ins, sizeof(ins), "INSERT INTO %s VALUES ($1)", t);
        snprintf(cnt, sizeof(cnt), "SELECT count(*) FROM %s", t);
        const char *one[] = { "1" }, *three[] = { "3" }, *seven[] = { "7" };

        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, one, NULL, NULL, on_res, &first), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, one, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, three, NULL, NULL, on_res, &third), 0);
        cr_assert_eq(pg_txn_commit(txn, on_done, &done), 0);
        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, seven, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_commit(txn, on_done, &next), 0);
        cr_assert_eq(pg_query(pg, cnt, 0, NULL, NULL, NULL, on_res, &q), 0);
        run_until(&q.done, 10, "the query behind");

        cr_assert_eq(done.r, -EEXIST, "%d %s", done.r, done.message);
        cr_assert_str_eq(done.sqlstate, "23505");
        cr_assert(strstr(done.message, "duplicate key"), "%s", done.message);
        cr_assert(first.done && first.r == 0, "the first insert had succeeded");
        cr_assert(!third.done, "nothing after the failure runs");
        cr_assert_eq(next.r, 0, "the next transaction: %s", next.message);
        cr_assert_eq(q.r, 0, "%s", q.message);
        cr_assert_str_eq(q.value, "1", "only the next transaction's row");

        /* Once more, now that the failure is known. */
        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, one, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_commit(txn, on_done, &after), 0);
        run_until(&after.done, 10, "a transaction after");
        cr_assert_eq(after.r, 0, "%s", after.message);
        cr_assert_eq(sql_long("%s", cnt), 2);

        /* Aborted before commit: nothing is sent. */
        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, ins, 1, three, NULL, NULL, NULL, NULL), 0);
        pg_txn_abort(txn);
        sql("DROP TABLE %s", t);
}

typedef struct ErrCase {
        char sql[160];
        int r;
        char sqlstate[6];
} ErrCase;

ParameterizedTestParameters(pg, errors) {
        static ErrCase cases[] = {
                { "INSERT INTO T VALUES (1)", -EEXIST, "23505" },
                { "DO $$BEGIN RAISE EXCEPTION 'retry me' USING ERRCODE = '40001'; END$$", -EAGAIN, "40001" },
                { "DO $$BEGIN RAISE EXCEPTION 'retry me' USING ERRCODE = '40P01'; END$$", -EAGAIN, "40P01" },
                { "SELECT 1/0", -EIO, "22012" },
                { "SELEKT 1", -EIO, "42601" },
                { "SELECT * FROM no_such_table_here", -EIO, "42P01" },
                { "INSERT INTO T VALUES (NULL)", -EIO, "23502" },
        };
        return cr_make_param_array(ErrCase, cases, ELEMENTSOF(cases));
}

/* T in a case's sql stands for the test's table, holding k = 1. Each error
 * comes the same through a query and a transaction. */
ParameterizedTest(ErrCase *c, pg, errors) {
        _cleanup_(pg_freep) Pg *pg = connect_pg();
        char t[64], q[256] = "";
        PgTxn *txn;
        Res x = {}, d = {}, after = {};
        snprintf(t, sizeof(t), "errors_%d", getpid());
        sql("CREATE TABLE %s (k int PRIMARY KEY)", t);
        sql("INSERT INTO %s VALUES (1)", t);
        const char *T = strstr(c->sql, " T ");
        if (T)
                snprintf(q, sizeof(q), "%.*s %s%s", (int) (T - c->sql), c->sql, t, T + 2);
        else
                snprintf(q, sizeof(q), "%s", c->sql);

        cr_assert_eq(pg_query(pg, q, 0, NULL, NULL, NULL, on_res, &x), 0);
        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, q, 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_commit(txn, on_done, &d), 0);
        cr_assert_eq(pg_query(pg, "SELECT 42", 0, NULL, NULL, NULL, on_res, &after), 0);
        run_until(&after.done, 10, "the queries");
        cr_assert_eq(x.r, c->r, "%s: %d (%s)", q, x.r, x.message);
        cr_assert_str_eq(x.sqlstate, c->sqlstate);
        cr_assert_neq(x.message[0], 0);
        cr_assert_eq(x.calls, 1);
        cr_assert_eq(d.r, c->r, "in a transaction: %d (%s)", d.r, d.message);
        cr_assert_str_eq(d.sqlstate, c->sqlstate);
        cr_assert_eq(after.r, 0);
        cr_assert_str_eq(after.value, "42");
        sql("DROP TABLE %s", t);
}

typedef struct LockCase {
        char isolation[40];
        int r;              /* of the second transaction */
        char seen[8];       /* the value it locked */
} LockCase;

ParameterizedTestParameters(pg, for_update) {
        static LockCase cases[] = {
                { "READ COMMITTED", 0, "1" },
                { "REPEATABLE READ", -EAGAIN, "" },
        };
        return cr_make_param_array(LockCase, cases, ELEMENTSOF(cases));
}

/* Two Pg handles on one row: the second transaction waits for the first's
 * lock while the loop goes on (the ticker), then sees its update (so it ran
 * after it) or, in REPEATABLE READ, fails to serialize (-EAGAIN). */
ParameterizedTest(LockCase *c, pg, for_update) {
        _cleanup_(pg_freep) Pg *a = connect_pg();
        _cleanup_(pg_freep) Pg *b = connect_pg();
        char t[64], sel[128], upd[128], iso[80];
        PgTxn *ta, *tb;
        Res da = {}, db = {}, seen = {};
        unsigned ticks;
        snprintf(t, sizeof(t), "lock_%d", getpid());
        sql("CREATE TABLE %s (k int PRIMARY KEY, v int)", t);
        sql("INSERT INTO %s VALUES (1, 0)", t);
        snprintf(sel, sizeof(sel), "SELECT v FROM %s WHERE k = 1 FOR UPDATE", t);
        snprintf(upd, sizeof(upd), "UPDATE %s SET v = v + 1 WHERE k = 1", t);
        snprintf(iso, sizeof(iso), "SET TRANSACTION ISOLATION LEVEL %s", c->isolation);

        cr_assert_eq(pg_txn_begin(a, &ta), 0);
        cr_assert_eq(pg_txn_query(ta, sel, 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_query(ta, "SELECT pg_sleep(0.6)", 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_query(ta, upd, 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_commit(ta, on_done, &da), 0);
        _cleanup_(sd_event_source_unrefp) sd_event_source *tk = ticker(&ticks);
        run_for(0.15);  /* a holds the lock */

        uint64_t t0 = now_us();
        cr_assert_eq(pg_txn_begin(b, &tb), 0);
        cr_assert_eq(pg_txn_query(tb, iso, 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_query(tb, "SELECT 1", 0, NULL, NULL, NULL, NULL, NULL), 0);  /* takes the snapshot */
        cr_assert_eq(pg_txn_query(tb, sel, 0, NULL, NULL, NULL, on_res, &seen), 0);
        cr_assert_eq(pg_txn_query(tb, upd, 0, NULL, NULL, NULL, NULL, NULL), 0);
        cr_assert_eq(pg_txn_commit(tb, on_done, &db), 0);
        unsigned ticks0 = ticks;
        run_until(&db.done, 10, "the second transaction");
        run_until(&da.done, 10, "the first transaction");  /* two sockets: either may be read first */
        cr_assert_eq(da.r, 0, "the first committed: %s", da.message);
        cr_assert_geq(db.at - t0, 300000, "the second waited for the lock");
        cr_assert_geq(ticks - ticks0, 20, "the loop ran meanwhile: %u ticks", ticks - ticks0);
        cr_assert_eq(db.r, c->r, "%d %s %s", db.r, db.sqlstate, db.message);
        cr_assert_str_eq(seen.value, c->seen);
        cr_assert_eq(sql_long("SELECT v FROM %s", t), c->r == 0 ? 2 : 1);
        fprintf(stderr, "pg: %s: second transaction waited %.0f ms, %u ticks of 10 ms meanwhile\n",
                c->isolation, (db.at - t0) / 1000.0, ticks - ticks0);
        sql("DROP TABLE %s", t);
}

typedef struct Listen {
        unsigned resyncs, got;
        char channel[64];
        char payload[8000];
        int pid;
        uint64_t at;
} Listen;

static void on_notify(Pg *pg, const PgNotify *n, void *userdata) {
        Listen *l = userdata;
        cr_assert_str_eq(n->channel, l->channel);
        if (n->resync) {
                l->resyncs++;
                return;
        }
        l->got++;
        l->pid = n->pid;
        l->at = now_us();
        cr_assert_lt(strlen(n->payload), sizeof(l->payload));
        memcpy(l->payload, n->payload, strlen(n->payload) + 1);
}

static void notify(Pg *pg, const char *channel, const char *payload, Res *x) {
        const char *v[] = { channel, payload };
        *x = (Res) {};
        cr_assert_eq(pg_query(pg, "SELECT pg_notify($1, $2)", 2, v, NULL, NULL, on_res, x), 0);
}

/* A channel name that needs quoting; the largest payload the server takes. */
Test(pg, listen_notify) {
        _cleanup_(pg_freep) Pg *l = connect_pg();
        _cleanup_(pg_freep) Pg *n = connect_pg();
        static Listen got;
        Res x = {}, pid = {};
        static char big[8000];
        snprintf(got.channel, sizeof(got.channel), "Bs \"chan\" %d", getpid());
        cr_assert_eq(pg_listen(l, got.channel, on_notify, &got), 0);
        cr_assert_eq(pg_listen(l, "", on_notify, &got), -EINVAL);
        cr_assert_eq(pg_listen(l, "a_name_longer_than_sixty_three_bytes_which_the_server_would_cut_", on_notify, &got),
                     -EINVAL);
        run_count(&got.resyncs, 1, "the LISTEN");

        cr_assert_eq(pg_query(n, "SELECT pg_backend_pid()", 0, NULL, NULL, NULL, on_res, &pid), 0);
        run_until(&pid.done, 5, "the pid");
        uint64_t sum = 0, max = 0;
        for (unsigned i = 0; i < 100; i++) {
                char p[32];
                snprintf(p, sizeof(p), "payload %u", i);
                uint64_t t0 = now_us();
                notify(n, got.channel, p, &x);
                run_count(&got.got, i + 1, "a notification");
                cr_assert_str_eq(got.payload, p);
                cr_assert_eq(got.pid, atoi(pid.value), "the sender's pid");
                sum += got.at - t0;
                max = MAX(max, got.at - t0);
        }
        fprintf(stderr, "pg: NOTIFY to delivery: %.0f us on average, %.0f us at most\n", sum / 100.0, (double) max);

        memset(big, 'x', sizeof(big) - 1);
        memcpy(big, "'\"\\\n", 4);
        notify(n, got.channel, big, &x);
        run_count(&got.got, 101, "the largest notification");
        cr_assert_str_eq(got.payload, big);
        cr_assert_eq(got.resyncs, 1);
}

typedef struct Watch {
        unsigned ups, downs;
        int refused;        /* pg_query() while down */
        uint64_t up_at, down_at;
} Watch;

static void on_state(Pg *pg, bool connected, void *userdata) {
        Watch *w = userdata;
        if (connected) {
                w->ups++;
                w->up_at = now_us();
                return;
        }
        w->downs++;
        w->down_at = now_us();
        w->refused = pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, NULL, NULL);
}

typedef struct RestartCase {
        char how[16];       /* "kill": immediate stop, a pause, start; else fast restart */
        char sqlstate[6];   /* of the query cut off, "" when libpq saw only the socket close */
} RestartCase;

ParameterizedTestParameters(pg, restart) {
        static RestartCase cases[] = {
                { "kill", "" },
                { "restart", "57P01" },
        };
        return cr_make_param_array(RestartCase, cases, ELEMENTSOF(cases));
}

/* The server goes away under connected handles: the pending query fails,
 * both reconnect by themselves, the LISTEN is issued again and says resync,
 * and everything works as before. */
ParameterizedTest(RestartCase *c, pg, restart) {
        _cleanup_(pg_freep) Pg *q = connect_pg();
        _cleanup_(pg_freep) Pg *l = connect_pg();
        static Listen got;
        Watch wq = {}, wl = {};
        Res slow = {}, x = {};
        unsigned ticks;
        snprintf(got.channel, sizeof(got.channel), "restart_%d", getpid());
        pg_on_state(q, on_state, &wq);
        pg_on_state(l, on_state, &wl);
        cr_assert_eq(pg_listen(l, got.channel, on_notify, &got), 0);
        run_count(&got.resyncs, 1, "the LISTEN");
        cr_assert_eq(pg_query(q, "SELECT pg_sleep(30)", 0, NULL, NULL, NULL, on_res, &slow), 0);
        run_for(0.2);

        uint64_t t0 = now_us(), t_start;
        if (strcmp(c->how, "kill") == 0) {
                engines("kill_postgres");
                run_until(&slow.done, 5, "the pending query to fail");
                cr_assert_eq(wq.downs, 1);
                cr_assert_eq(wq.refused, -ENOTCONN, "a query while down fails at once");
                _cleanup_(sd_event_source_unrefp) sd_event_source *tk = ticker(&ticks);
                run_for(1.0);   /* attempts fail, with backoff */
                cr_assert_geq(ticks, 50, "the loop runs while reconnecting: %u ticks", ticks);
                cr_assert(!pg_is_connected(q));
                engines("start_postgres");
        } else
                engines("restart_postgres");
        t_start = now_us();
        run_until(&slow.done, 5, "the pending query to fail");
        cr_assert_eq(slow.r, -ECONNRESET, "%d %s", slow.r, slow.message);
        cr_assert_str_eq(slow.sqlstate, c->sqlstate, "%s", slow.message);
        cr_assert_neq(slow.message[0], 0);
        uint64_t end = now_us() + 15000000;
        while (wq.ups < 1 || wl.ups < 1 || got.resyncs < 2) {
                cr_assert_lt(now_us(), end, "timed out reconnecting");
                cr_assert_geq(sd_event_run(ev, 50000), 0);
        }
        cr_assert_eq(wq.downs, 1);
        cr_assert_eq(wl.downs, 1);
        fprintf(stderr, "pg: %s: down noticed after %.0f ms, connected %.0f ms after the server was back\n",
                c->how, (wq.down_at - t0) / 1000.0, (MAX(wq.up_at, wl.up_at) - t_start) / 1000.0);

        notify(q, got.channel, "after", &x);
        run_count(&got.got, 1, "a notification after the restart");
        cr_assert_str_eq(got.payload, "after");
        cr_assert_eq(x.r, 0);
        cr_assert_eq(got.resyncs, 2);
}

/* The server dies while COMMIT runs (a deferred trigger makes it slow): the
 * outcome is unknown, which is -EINPROGRESS; the query behind it was cut off. */
Test(pg, commit_in_flight) {
        _cleanup_(pg_freep) Pg *pg = connect_pg();
        char t[64], q[128];
        PgTxn *txn;
        Res ins = {}, done = {}, behind = {};
        snprintf(t, sizeof(t), "inflight_%d", getpid());
        sql("CREATE TABLE %s (k int PRIMARY KEY)", t);
        sql("CREATE FUNCTION %s_slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_sleep(5); RETURN NULL; END$$", t);
        sql("CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION %s_slow()", t, t);
        snprintf(q, sizeof(q), "INSERT INTO %s VALUES (1)", t);

        cr_assert_eq(pg_txn_begin(pg, &txn), 0);
        cr_assert_eq(pg_txn_query(txn, q, 0, NULL, NULL, NULL, on_res, &ins), 0);
        cr_assert_eq(pg_txn_commit(txn, on_done, &done), 0);
        cr_assert_eq(pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, on_res, &behind), 0);
        run_until(&ins.done, 5, "the insert");
        cr_assert_eq(ins.r, 0);
        run_for(0.3);
        cr_assert(!done.done, "COMMIT is running");
        engines("kill_postgres");
        run_until(&done.done, 5, "the outcome");
        cr_assert_eq(done.r, -EINPROGRESS, "%d %s", done.r, done.message);
        cr_assert(behind.done);
        cr_assert_eq(behind.r, -ECONNRESET);
        engines("start_postgres");
        wait_connected(pg);
        /* What the caller must do: look. Killed mid-COMMIT, nothing was committed. */
        cr_assert_eq(sql_long("SELECT count(*) FROM %s", t), 0);
        sql("DROP TABLE %s", t);
        sql("DROP FUNCTION %s_slow()", t);
}

typedef struct RefuseCase {
        bool listening;     /* a socket that accepts and never answers */
        char message[32];
        double min_s, max_s;
} RefuseCase;

ParameterizedTestParameters(pg, unreachable) {
        static RefuseCase cases[] = {
                { false, "refused", 0, 1 },
                { true, "timed out connecting", 4.5, 7 },
        };
        return cr_make_param_array(RefuseCase, cases, ELEMENTSOF(cases));
}

/* A closed port fails at once, a silent one at the connect timeout; the
 * query made meanwhile gets -ENOTCONN, then queries fail fast until the
 * next attempt; the loop is free all along. */
ParameterizedTest(RefuseCase *c, pg, unreachable) {
        _cleanup_(closep) int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        char conninfo[128];
        Res x = {};
        unsigned ticks;
        cr_assert_geq(fd, 0);
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        if (c->listening)
                cr_assert_eq(listen(fd, 4), 0);
        else
                fd = (close(fd), -1);
        snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%u user=nobody dbname=none",
                 ntohs(sa.sin_port));

        _cleanup_(sd_event_source_unrefp) sd_event_source *tk = ticker(&ticks);
        _cleanup_(pg_freep) Pg *pg = NULL;
        uint64_t t0 = now_us();
        cr_assert_eq(pg_new(&pg, ev, conninfo), 0);
        cr_assert_eq(pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, on_res, &x), 0);
        run_until(&x.done, 10, "the query to fail");
        double took = (now_us() - t0) / 1e6;
        cr_assert_eq(x.r, -ENOTCONN, "%d %s", x.r, x.message);
        cr_assert(strstr(x.message, c->message), "%s", x.message);
        cr_assert(took >= c->min_s && took <= c->max_s, "failed after %.2f s", took);
        cr_assert_geq(ticks, (unsigned) (took * 100 * 0.5), "the loop ran: %u ticks in %.2f s", ticks, took);
        cr_assert_eq(pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, on_res, &x), -ENOTCONN);
        fprintf(stderr, "pg: unreachable (%s): the query failed after %.0f ms, %u ticks meanwhile\n",
                c->message, took * 1000, ticks);
}

Test(pg, bad_arguments) {
        Pg *pg;
        cr_assert_eq(pg_new(&pg, ev, "host=127.0.0.1 nonsense=1"), -EINVAL);
        cr_assert_eq(pg_new(&pg, ev, dsn()), 0);
        const char *v[] = { "x" };
        cr_assert_eq(pg_query(pg, "SELECT $1", 1, v, NULL, (const int[]) { 1 }, NULL, NULL), -EINVAL,
                     "binary without a length");
        cr_assert_eq(pg_query(pg, "SELECT 1", -1, NULL, NULL, NULL, NULL, NULL), -EINVAL);
        cr_assert_eq(pg_query(pg, "SELECT 1", 1, NULL, NULL, NULL, NULL, NULL), -EINVAL);
        Res x = {};
        cr_assert_eq(pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, on_res, &x), 0);
        pg_free(pg);   /* pending: not called */
        run_for(0.2);
        cr_assert(!x.done);
}

static void free_in_callback(Pg *pg, int r, const PGresult *res, void *userdata) {
        Res *x = userdata;
        on_res(pg, r, res, userdata);
        if (x->calls == 1)
                pg_free(pg);
}

/* The owner may free the Pg from a callback; the rest is dropped silently. */
Test(pg, free_in_callback) {
        Pg *pg = connect_pg();
        Res x = {}, y = {};
        cr_assert_eq(pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, free_in_callback, &x), 0);
        cr_assert_eq(pg_query(pg, "SELECT 2", 0, NULL, NULL, NULL, on_res, &y), 0);
        run_until(&x.done, 5, "the first query");
        run_for(0.2);
        cr_assert_eq(x.calls, 1);
        cr_assert(!y.done);
}

static void free_on_notify(Pg *pg, const PgNotify *n, void *userdata) {
        on_notify(pg, n, userdata);
        if (!n->resync)
                pg_free(pg);
}

/* Also from a notification, with a second listener on the channel. */
Test(pg, free_in_notify) {
        Pg *l = connect_pg();
        _cleanup_(pg_freep) Pg *n = connect_pg();
        static Listen got, other;
        Res x;
        snprintf(got.channel, sizeof(got.channel), "free_%d", getpid());
        memcpy(other.channel, got.channel, sizeof(got.channel));
        cr_assert_eq(pg_listen(l, got.channel, on_notify, &other), 0);
        cr_assert_eq(pg_listen(l, got.channel, free_on_notify, &got), 0);
        run_count(&other.resyncs, 1, "the LISTEN");
        run_count(&got.resyncs, 1, "the LISTEN");
        notify(n, got.channel, "bye", &x);
        run_count(&got.got, 1, "the notification");
        run_for(0.1);
        cr_assert_eq(other.got, 0, "the listener added first is called last, after the free");
}
