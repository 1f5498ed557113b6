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
