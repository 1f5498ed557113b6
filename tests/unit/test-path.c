/* test-path.c - unit tests for common/bs-path.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "bs-path.h"
#include "bs-proto.h"

static int check(const char *s) {
        return bs_path_check(s, strlen(s));
}

Test(path_check, accept_table) {
        static const char *const ok[] = {
                "a",
                "a/b",
                "a/b/c.txt",
                "...",
                ".hidden",
                "a/.hidden/b",
                "..a",
                "a..",
                "a/.../b",
                "name with spaces",
                "dir with space/file name",
                "line\nbreak",
                "tab\there",
                "\xff\xfe invalid utf-8",
                "caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac",
                "back\\slash",
                "-dash",
                "a/b/c/d/e/f/g/h",
        };
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
                cr_expect_eq(check(ok[i]), 0, "should accept \"%s\"", ok[i]);
}

Test(path_check, reject_table) {
        static const char *const bad[] = {
                "",
                "/",
                "/abs",
                "/a/b",
                "a//b",
                "a/",
                "a/b/",
                "./a",
                ".",
                "a/.",
                "a/..",
                "..",
                "../a",
                "a/../b",
                "a/./b",
                "//",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_eq(check(bad[i]), -EINVAL, "should reject \"%s\"", bad[i]);
}

Test(path_check, nul_inside) {
        static const char p[] = "a\0b";
        cr_assert_eq(bs_path_check(p, 3), -EINVAL);
        cr_assert_eq(bs_path_check(p, 1), 0);
        static const char q[] = "dir/\0";
        cr_assert_eq(bs_path_check(q, 5), -EINVAL);
        static const char r[] = "ab\0";
        cr_assert_eq(bs_path_check(r, 3), -EINVAL, "trailing NUL counted in len");
}

Test(path_check, explicit_len_is_used) {
        /* Only the first len bytes count, whatever follows. */
        cr_assert_eq(bs_path_check("a/b/../c", 3), 0);
        cr_assert_eq(bs_path_check("a/b", 2), -EINVAL);
        cr_assert_eq(bs_path_check("abc", 0), -EINVAL);
}

Test(path_check, component_length) {
        char buf[600];
        memset(buf, 'x', 255);
        buf[255] = 0;
        cr_assert_eq(check(buf), 0, "255-byte component");
        memset(buf, 'x', 256);
        buf[256] = 0;
        cr_assert_eq(check(buf), -EINVAL, "256-byte component");

        /* Same as the middle or last component of a longer path. */
        strcpy(buf, "dir/");
        memset(buf + 4, 'y', 255);
        buf[4 + 255] = 0;
        cr_assert_eq(check(buf), 0);
        strcat(buf, "/z");
        cr_assert_eq(check(buf), 0);
        strcpy(buf, "dir/");
        memset(buf + 4, 'y', 256);
        strcpy(buf + 4 + 256, "/z");
        cr_assert_eq(check(buf), -EINVAL);
}

/* A path of exactly n bytes made of 200-byte components. */
static void make_long(char *buf, size_t n) {
        for (size_t i = 0; i < n; i++)
                buf[i] = (i % 201 == 200) ? '/' : 'p';
        buf[n] = 0;
        if (buf[n - 1] == '/')
                buf[n - 1] = 'p';
}

Test(path_check, whole_length) {
        static char buf[BS_PATH_MAX + 16];
        make_long(buf, 4096);
        cr_assert_eq(strlen(buf), 4096);
        cr_assert_eq(bs_path_check(buf, 4096), 0, "4096-byte path");
        make_long(buf, 4097);
        cr_assert_eq(bs_path_check(buf, 4097), -EINVAL, "4097-byte path");
}

Test(path_under, cases) {
        cr_assert(bs_path_under("a", "a"));
        cr_assert(bs_path_under("a/b", "a"));
        cr_assert(bs_path_under("a/b/c", "a/b"));
        cr_assert_not(bs_path_under("ab", "a"));
        cr_assert_not(bs_path_under("ab/c", "a"));
        cr_assert_not(bs_path_under("a", "a/b"));
        cr_assert_not(bs_path_under("b/a", "a"));
        cr_assert_not(bs_path_under("a.txt", "a"));
}

Test(path_rebase, cases) {
        char out[BS_PATH_MAX + 1];

        cr_assert_eq(bs_path_rebase("a/b/c", "a", "x", out, sizeof(out)), 0);
        cr_assert_str_eq(out, "x/b/c");
        cr_assert_eq(bs_path_rebase("a/b/c", "a/b", "z/y", out, sizeof(out)), 0);
        cr_assert_str_eq(out, "z/y/c");
        cr_assert_eq(bs_path_rebase("a", "a", "new", out, sizeof(out)), 0);
        cr_assert_str_eq(out, "new");
        /* Only a whole component matches. */
        cr_assert_eq(bs_path_rebase("ab/c", "a", "x", out, sizeof(out)), -EINVAL);
        cr_assert_eq(bs_path_rebase("b/a", "a", "x", out, sizeof(out)), -EINVAL);
}

Test(path_rebase, too_long) {
        static char to[BS_PATH_MAX + 1];
        char out[BS_PATH_MAX + 1];

        /* Result over the output buffer. */
        cr_assert_eq(bs_path_rebase("a/bcdef", "a", "xyz", out, 8), -ENAMETOOLONG);
        cr_assert_eq(bs_path_rebase("a/bcd", "a", "xyz", out, 8), 0);
        cr_assert_str_eq(out, "xyz/bcd");

        /* Result over the protocol limit, even with a big buffer. */
        make_long(to, 4094);
        cr_assert_eq(bs_path_rebase("a/bc", "a", to, out, sizeof(out)), -ENAMETOOLONG);
        cr_assert_eq(bs_path_rebase("a/b", "a", to, out, sizeof(out)), 0);
        cr_assert_eq(strlen(out), 4096);

        char big[BS_PATH_MAX + 64];
        cr_assert_eq(bs_path_rebase("a/bcd", "a", to, big, sizeof(big)), -ENAMETOOLONG);
}

Test(path_parent, cases) {
        cr_assert_eq(bs_path_parent_len("a"), 0);
        cr_assert_eq(bs_path_parent_len("a/b"), 1);
        cr_assert_eq(bs_path_parent_len("dir/sub/file"), 7);
        cr_assert_str_eq(bs_path_base("a"), "a");
        cr_assert_str_eq(bs_path_base("a/b"), "b");
        cr_assert_str_eq(bs_path_base("dir/sub/file.txt"), "file.txt");
        const char *p = "x/y/z";
        cr_assert_eq(bs_path_base(p), p + 4, "base points into the path");
}

Test(path_temp, cases) {
        cr_assert(bs_path_is_temp(".backupsync-tmp."));
        cr_assert(bs_path_is_temp(".backupsync-tmp.0123abcd"));
        cr_assert_not(bs_path_is_temp(".backupsync-tmp"));
        cr_assert_not(bs_path_is_temp("backupsync-tmp.1"));
        cr_assert_not(bs_path_is_temp("x.backupsync-tmp.1"));
        cr_assert_not(bs_path_is_temp(""));
        cr_assert_not(bs_path_is_temp(".hidden"));
        cr_assert_str_eq(BS_TEMP_PREFIX, ".backupsync-tmp.");
}
