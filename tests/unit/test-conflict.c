/* test-conflict.c - unit tests for client-agent/agent-conflict.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "agent-conflict.h"

/* 2026-09-21 14:13:20 UTC */
#define WHEN ((time_t) 1790000000)

static const char *name(const char *path, unsigned n) {
        static char out[8192];
        cr_assert_eq(conflict_name(path, "laptop", WHEN, n, out, sizeof(out)), 0, "conflict_name(%s)", path);
        return out;
}

Test(conflict, extension_kept_last) {
        cr_expect_str_eq(name("report.txt", 1), "report.conflict-laptop-20260921-141320.txt");
        cr_expect_str_eq(name("a/b/report.txt", 1), "a/b/report.conflict-laptop-20260921-141320.txt");
        cr_expect_str_eq(name("dir/a.tar.gz", 1), "dir/a.tar.conflict-laptop-20260921-141320.gz");
}

Test(conflict, no_extension_and_dotfiles) {
        cr_expect_str_eq(name("notes", 1), "notes.conflict-laptop-20260921-141320");
        cr_expect_str_eq(name(".bashrc", 1), ".bashrc.conflict-laptop-20260921-141320");
        cr_expect_str_eq(name("d.d/noext", 1), "d.d/noext.conflict-laptop-20260921-141320");
}

Test(conflict, counter_for_same_second) {
        cr_expect_str_eq(name("notes", 2), "notes.conflict-laptop-20260921-141320-2");
        cr_expect_str_eq(name("x.txt", 3), "x.conflict-laptop-20260921-141320-3.txt");
}

Test(conflict, copies_of_copies_do_not_nest) {
        cr_expect_str_eq(name("x.conflict-desk-20260101-101010.txt", 1), "x.conflict-laptop-20260921-141320.txt");
        cr_expect_str_eq(name("x.conflict-desk-20260101-101010", 1), "x.conflict-laptop-20260921-141320");
        cr_expect_str_eq(name("d/x.conflict-desk-20260101-101010-2.txt", 1), "d/x.conflict-laptop-20260921-141320.txt");
}

Test(conflict, look_alikes_are_not_markers) {
        /* Not a full marker: kept as part of the name. */
        cr_expect_str_eq(name("a.conflict-.txt", 1), "a.conflict-.conflict-laptop-20260921-141320.txt");
        cr_expect_str_eq(name("a.conflict-x-2026-10.txt", 1), "a.conflict-x-2026-10.conflict-laptop-20260921-141320.txt");
}

Test(conflict, too_long) {
        char path[300], out[8192];
        memset(path, 'a', 250);
        strcpy(path + 250, ".txt");
        cr_expect_eq(conflict_name(path, "laptop", WHEN, 1, out, sizeof(out)), -ENAMETOOLONG);
        cr_expect_eq(conflict_name("x", "laptop", WHEN, 1, out, 10), -ENAMETOOLONG);
}

Test(conflict, device_label) {
        char out[64];
        conflict_device_label("laptop.example.org", out, sizeof(out));
        cr_expect_str_eq(out, "laptop");
        conflict_device_label("my pc/é", out, sizeof(out));
        cr_expect_str_eq(out, "my_pc___");
        conflict_device_label("", out, sizeof(out));
        cr_expect_str_eq(out, "device");
        conflict_device_label("abcdefghijklmnopqrstuvwxyz0123456789", out, sizeof(out));
        cr_expect_eq(strlen(out), 32);
}

Test(conflict, copies_recognized) {
        static const char *const yes[] = {
                "report.conflict-laptop-20260921-141320.txt", "d/report.conflict-laptop-20260921-141320.txt",
                "Makefile.conflict-desk-20260921-141320", "a.tar.conflict-x-20260921-141320.gz",
                "report.conflict-laptop-20260921-141320-2.txt",
        };
        static const char *const no[] = {
                "report.txt", "notes.conflict.txt", "a.conflict-laptop-2026092-141320.txt",
                "a.conflict-lap top-20260921-141320.txt", ".conflict-x", "d.conflict-x-20260921-141320/file",
        };
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
                cr_expect(conflict_is_copy(yes[i]), "%s is a conflict copy", yes[i]);
        for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
                cr_expect(!conflict_is_copy(no[i]), "%s is not a conflict copy", no[i]);
        /* What conflict_name() makes is recognized. */
        char out[256];
        cr_assert_eq(conflict_name("dir/photo.jpeg", "cam", 1790000000, 3, out, sizeof(out)), 0);
        cr_expect(conflict_is_copy(out), "%s", out);
}
