/* test-parse.c - unit tests for common/bs-parse.[ch] */
#include <criterion/criterion.h>
#include <errno.h>

#include "bs-parse.h"

Test(parse, durations) {
        static const struct {
                const char *s;
                uint64_t usec;
        } ok[] = {
                { "5", 5000000ULL },       { "5s", 5000000ULL },          { "250ms", 250000ULL },
                { "2m", 120000000ULL },    { "2min", 120000000ULL },      { "1h", 3600000000ULL },
                { "30d", 2592000000000ULL }, { "0", 0 },
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                uint64_t v = 1;
                cr_expect_eq(bs_parse_duration(ok[i].s, &v), 0, "%s", ok[i].s);
                cr_expect_eq(v, ok[i].usec, "%s", ok[i].s);
        }
        static const char *const bad[] = { "", "s", "-5", "5 s", "5x", "1.5s", " 5", "5sec", "99999999999999999999",
                                           "99999999999999d" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint64_t v;
                cr_expect_eq(bs_parse_duration(bad[i], &v), -EINVAL, "'%s' should be refused", bad[i]);
        }
        uint64_t v;
        cr_expect_eq(bs_parse_duration(NULL, &v), -EINVAL);
}

Test(parse, ports) {
        uint16_t p;
        cr_expect_eq(bs_parse_port("7373", &p), 0);
        cr_expect_eq(p, 7373);
        cr_expect_eq(bs_parse_port("0", &p), 0);
        cr_expect_eq(bs_parse_port("65535", &p), 0);
        cr_expect_eq(p, 65535);
        cr_expect_eq(bs_parse_port("65536", &p), -EINVAL);
        cr_expect_eq(bs_parse_port("-1", &p), -EINVAL);
        cr_expect_eq(bs_parse_port("80x", &p), -EINVAL);
        cr_expect_eq(bs_parse_port("", &p), -EINVAL);
}

Test(parse, booleans) {
        bool b = false;
        cr_expect_eq(bs_parse_bool("yes", &b), 0);
        cr_expect(b);
        cr_expect_eq(bs_parse_bool("OFF", &b), 0);
        cr_expect(!b);
        cr_expect_eq(bs_parse_bool("1", &b), 0);
        cr_expect(b);
        cr_expect_eq(bs_parse_bool("false", &b), 0);
        cr_expect(!b);
        cr_expect_eq(bs_parse_bool("maybe", &b), -EINVAL);
        cr_expect_eq(bs_parse_bool("", &b), -EINVAL);
}

Test(parse, times) {
        const time_t now = 1796135400; /* 2026-12-01T14:30:00Z */
        static const struct {
                const char *s;
                time_t t;
        } ok[] = {
                { "2026-11-30T14:05:00Z", 1796047500 },  { "2026-11-30T14:05Z", 1796047500 },
                { "2026-11-30 14:05:07Z", 1796047507 },  { "2026-11-30T15:05:00+01:00", 1796047500 },
                { "2026-11-30T13:05:00-0100", 1796047500 }, { "@1796047500", 1796047500 },
                { "-2h", 1796128200 },                   { "-3d", 1795876200 },
                { "-90s", 1796135310 },                  { "-1w", 1795530600 },
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                time_t t = 0;
                cr_expect_eq(bs_parse_time(ok[i].s, now, &t), 0, "%s", ok[i].s);
                cr_expect_eq(t, ok[i].t, "%s: %lld", ok[i].s, (long long) t);
        }
        /* Local time: the same wall clock as mktime() reads it. */
        setenv("TZ", "Europe/Berlin", 1);
        tzset();
        time_t t = 0;
        cr_expect_eq(bs_parse_time("2026-11-30 15:05", now, &t), 0);
        cr_expect_eq(t, 1796047500, "local time: %lld", (long long) t);
        cr_expect_eq(bs_parse_time("2026-11-30", now, &t), 0);
        cr_expect_eq(t, 1796047500 - 15 * 3600 - 5 * 60, "midnight local time: %lld", (long long) t);
        static const char *const bad[] = { "", "yesterday", "2026-13-01", "2026-02-30", "2026-11-30T25:00",
                                           "2026-11-30T14", "2026-11-30T14:05:00Q", "26-11-30", "@", "@12x",
                                           "-", "-2y", "2026-11-30T14:05:00+1", "-99999999d" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_eq(bs_parse_time(bad[i], now, &t), -EINVAL, "'%s' should be refused", bad[i]);
}

Test(parse, sizes) {
        static const struct {
                const char *s;
                uint64_t v;
        } ok[] = {
                { "0", 0 }, { "4096", 4096 }, { "512K", 512 << 10 }, { "64M", 64ULL << 20 },
                { "10G", 10ULL << 30 }, { "10GiB", 10ULL << 30 }, { "2T", 2ULL << 40 }, { "7B", 7 },
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                uint64_t v = 1;
                cr_expect_eq(bs_parse_size(ok[i].s, &v), 0, "%s", ok[i].s);
                cr_expect_eq(v, ok[i].v, "%s", ok[i].s);
        }
        static const char *const bad[] = { "", "G", "-1", "1.5G", "10 G", "10g", "10GB", "99999999999999999999",
                                           "16777216T" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint64_t v;
                cr_expect_eq(bs_parse_size(bad[i], &v), -EINVAL, "'%s' should be refused", bad[i]);
        }
}

Test(parse, delete_limits) {
        static const struct {
                const char *s;
                bool off;
                uint64_t files;
                unsigned percent;
        } ok[] = {
                { "100 50%", false, 100, 50 }, { "50% 100", false, 100, 50 }, { "100", false, 100, 0 },
                { "25%", false, 0, 25 },       { "0", false, 0, 0 },          { "no", true, 0, 0 },
                { "off", true, 0, 0 },         { " 7\t100% ", false, 7, 100 },
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                BsDeleteLimit l = { .files = 99, .percent = 99 };
                cr_expect_eq(bs_parse_delete_limit(ok[i].s, &l), 0, "%s", ok[i].s);
                cr_expect_eq(l.off, ok[i].off, "%s", ok[i].s);
                cr_expect_eq(l.files, ok[i].files, "%s", ok[i].s);
                cr_expect_eq(l.percent, ok[i].percent, "%s", ok[i].s);
        }
        static const char *const bad[] = { "", " ", "yes", "101%", "%", "-1", "1 2", "5% 6%", "1e3", "10 %",
                                           "99999999999999999999", "50%%", "1,50%" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                BsDeleteLimit l;
                cr_expect_eq(bs_parse_delete_limit(bad[i], &l), -EINVAL, "'%s' should be refused", bad[i]);
        }
}

Test(parse, delete_limit_decisions) {
        static const struct {
                BsDeleteLimit l;
                uint64_t n, total;
                bool held;
        } t[] = {
                /* The default: more than 100 files and more than half the tree. */
                { BS_DELETE_LIMIT_DEFAULT, 100, 100, false }, { BS_DELETE_LIMIT_DEFAULT, 101, 101, true },
                { BS_DELETE_LIMIT_DEFAULT, 101, 202, false }, { BS_DELETE_LIMIT_DEFAULT, 101, 201, true },
                { BS_DELETE_LIMIT_DEFAULT, 5000, 10000, false }, { BS_DELETE_LIMIT_DEFAULT, 5001, 10000, true },
                { BS_DELETE_LIMIT_DEFAULT, 99, 99, false },
                { { .files = 10 }, 11, 1000000, true },       { { .files = 10 }, 10, 10, false },
                { { .percent = 10 }, 2, 10, true },           { { .percent = 10 }, 1, 10, false },
                { { .off = true }, 1000000, 1000000, false }, { { .percent = 100 }, 10, 10, false },
                { { .files = UINT64_MAX - 1, .percent = 0 }, UINT64_MAX, UINT64_MAX, true },
        };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
                cr_expect_eq(bs_delete_limit_exceeded(&t[i].l, t[i].n, t[i].total), t[i].held, "case %zu", i);
}
