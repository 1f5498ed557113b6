/* test-ignore.c - unit tests for common/bs-ignore.[ch]: which paths do not sync */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-ignore.h"

/* A pattern (or several lines) of the top ignore file, a path, whether it is a directory, the answer. */
static const struct Case {
        const char *lines;
        const char *path;
        bool dir, ignored;
} cases[] = {
        /* a name without "/" matches at any depth */
        { "*.o", "main.o", false, true },
        { "*.o", "src/lib/main.o", false, true },
        { "*.o", "main.c", false, false },
        { "build", "build", true, true },
        { "build", "a/b/build", false, true },
        /* "*" and "?" never cross "/" */
        { "a*c", "abbbc", false, true },
        { "a/*.c", "a/b/c.c", false, false },
        { "a/*.c", "a/c.c", false, true },
        { "a?c", "a/c", false, false },
        { "a?c", "abc", false, true },
        /* a "/" at the start or in the middle anchors to the file's directory */
        { "/TODO", "TODO", false, true },
        { "/TODO", "sub/TODO", false, false },
        { "doc/frotz", "doc/frotz", true, true },
        { "doc/frotz", "a/doc/frotz", true, false },
        /* a trailing "/" is for directories only */
        { "logs/", "logs", true, true },
        { "logs/", "logs", false, false },
        { "logs/", "x/logs", true, true },
        /* "**" */
        { "**/foo", "foo", false, true },
        { "**/foo", "a/b/foo", false, true },
        { "**/foo/bar", "x/foo/bar", false, true },
        { "abc/**", "abc/x", false, true },
        { "abc/**", "abc/x/y/z", false, true },
        { "abc/**", "abc", true, false },
        { "a/**/b", "a/b", false, true },
        { "a/**/b", "a/x/b", false, true },
        { "a/**/b", "a/x/y/b", false, true },
        { "a/**/b", "a/x/y/c", false, false },
        { "a**b", "axxb", false, true },
        { "a**b", "ax/xb", false, false },
        /* brackets, classes, escapes */
        { "[abc].txt", "b.txt", false, true },
        { "[!abc].txt", "b.txt", false, false },
        { "[^abc].txt", "d.txt", false, true },
        { "[a-c]x", "cx", false, true },
        { "[a-c]x", "dx", false, false },
        { "[[:digit:]]*", "9lives", false, true },
        { "[[:digit:]]*", "lives", false, false },
        { "[]]", "]", false, true },
        { "\\*", "*", false, true },
        { "\\*", "x", false, false },
        { "\\#notes", "#notes", false, true },
        { "\\!important", "!important", false, true },
        { "trailing\\ ", "trailing ", false, true },
        { "trailing   ", "trailing", false, true },
        { "[unclosed", "[unclosed", false, true },
        /* comments and blank lines hold no pattern */
        { "# *.c", "a.c", false, false },
        { "\n\n", "a", false, false },
        /* the last pattern that matches decides; "!" re-includes */
        { "*.log\n!keep.log", "keep.log", false, false },
        { "*.log\n!keep.log", "other.log", false, true },
        { "!keep.log\n*.log", "keep.log", false, true },
        /* Unicode: "?" and brackets take a whole UTF-8 character */
        { "caf?", "caf\xc3\xa9", false, true },
        { "caf[\xc3\xa9\xc3\xa8]", "caf\xc3\xa8", false, true },
        { "\xe6\x97\xa5\xe8\xa8\x98/", "\xe6\x97\xa5\xe8\xa8\x98", true, true },
        { "*.t\xc3\xa9st", "x.t\xc3\xa9st", false, true },
        /* bytes that are not UTF-8: one byte each, never equal to a character */
        { "a?b", "a\xff" "b", false, true },
        { "a?b", "a\xc3\xa9\xff" "b", false, false },
        { "a[\xff]b", "a\xff" "b", false, true },
        { "\xff*", "\xff\xfe.bin", false, true },
        { "*", "\x80", false, true },
        /* what every match begins and ends with, and what only looks so */
        { "a*a", "a", false, false },
        { "a*a", "aa", false, true },
        { "*.part", ".part", false, true },
        { "*.part", "x.par", false, false },
        { "\\#*#", "#", false, false },
        { "\\#*#", "#a#", false, true },
        { "[*]x", "*x", false, true },
        { "[*]x", "]x", false, false },
        { "*\\*ab", "x*ab", false, true },
        { "*\\*ab", "xab", false, false },
        { "4913", "4913", false, true },
        { "4913", "49130", false, false },
        { ".~lock.*#", ".~lock.doc#", false, true },
        { ".~lock.*#", ".~lock.doc", false, false },
        /* Windows line ends */
        { "*.tmp\r\nkeep\r\n", "x.tmp", false, true },
};

static int set(BsIgnore *ig, const char *dir, const char *text) {
        return bs_ignore_set_file(ig, dir, text, strlen(text));
}

Test(ignore, the_pattern_table) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const struct Case *c = &cases[i];
                BsIgnore *ig;
                cr_assert_eq(bs_ignore_new(&ig), 0);
                cr_assert_geq(bs_ignore_set_file(ig, "", c->lines, strlen(c->lines)), 0);
                cr_assert_eq(bs_ignore_path(ig, c->path, c->dir), c->ignored, "%zu: pattern(s) \"%s\" on \"%s\"%s: want %s",
                             i, c->lines, c->path, c->dir ? " (a directory)" : "", c->ignored ? "ignored" : "synced");
                bs_ignore_free(ig);
        }
}

Test(ignore, files_in_subdirectories) {
        BsIgnore *ig;
        cr_assert_eq(bs_ignore_new(&ig), 0);
        cr_assert_eq(set(ig, "", "*.tmp\n/top-only\n"), 2);
        cr_assert_eq(set(ig, "src", "/gen\n!keep.tmp\n"), 2);
        cr_assert_eq(set(ig, "src/deep", "*.c\n"), 1);
        /* the top file reaches everywhere, a subdirectory's only below it */
        cr_assert(bs_ignore_path(ig, "a/x.tmp", false));
        cr_assert(bs_ignore_path(ig, "top-only", false));
        cr_assert(!bs_ignore_path(ig, "src/top-only", false), "anchored to the top file's directory");
        cr_assert(bs_ignore_path(ig, "src/gen", true), "anchored to src/");
        cr_assert(!bs_ignore_path(ig, "gen", true));
        cr_assert(!bs_ignore_path(ig, "src/x/gen", true));
        /* a deeper file overrides a shallower one */
        cr_assert(!bs_ignore_path(ig, "src/keep.tmp", false));
        cr_assert(!bs_ignore_path(ig, "src/a/keep.tmp", false));
        cr_assert(bs_ignore_path(ig, "keep.tmp", false), "src's negation is for src only");
        cr_assert(bs_ignore_path(ig, "src/deep/main.c", false));
        cr_assert(!bs_ignore_path(ig, "src/main.c", false));
        /* replacing and dropping a file */
        cr_assert_eq(set(ig, "src/deep", "*.h\n"), 1);
        cr_assert(!bs_ignore_path(ig, "src/deep/main.c", false));
        cr_assert(bs_ignore_path(ig, "src/deep/main.h", false));
        bs_ignore_drop_file(ig, "src");
        cr_assert(bs_ignore_path(ig, "src/keep.tmp", false), "no negation any more");
        cr_assert(!bs_ignore_path(ig, "src/gen", true));
        bs_ignore_free(ig);
}

Test(ignore, nothing_below_an_ignored_directory_comes_back) {
        BsIgnore *ig;
        cr_assert_eq(bs_ignore_new(&ig), 0);
        cr_assert_eq(set(ig, "", "node_modules/\n!node_modules/keep.js\n"), 2);
        /* as in git: a parent directory excluded, a file in it cannot be re-included */
        cr_assert(bs_ignore_path(ig, "node_modules/keep.js", false));
        cr_assert(!bs_ignore_match(ig, "node_modules/keep.js", false), "the pattern alone would re-include it");
        cr_assert(bs_ignore_path(ig, "a/node_modules/x/y.js", false));
        /* but a directory's content re-included below a pattern for its files is */
        cr_assert_eq(set(ig, "", "cache/*\n!cache/keep\n"), 2);
        cr_assert(!bs_ignore_path(ig, "cache/keep", false));
        cr_assert(bs_ignore_path(ig, "cache/other", false));
        cr_assert(!bs_ignore_path(ig, "cache", true));
        bs_ignore_free(ig);
}

Test(ignore, local_patterns_win_and_defaults_lose) {
        BsIgnore *ig;
        cr_assert_eq(bs_ignore_new(&ig), 0);
        cr_assert_eq(bs_ignore_add_defaults(ig), 0);
        static const char *const litter[] = {
                "notes.txt~", ".notes.txt.swp", ".notes.txt.swo", ".~lock.report.odt#", "~$report.docx",
                "video.mp4.part", "setup.exe.crdownload", ".DS_Store", "photos/Thumbs.db", "4913", ".#notes.txt",
                "#notes.txt#",
        };
        for (size_t i = 0; i < sizeof(litter) / sizeof(litter[0]); i++)
                cr_assert(bs_ignore_path(ig, litter[i], false), "default ignores: %s", litter[i]);
        cr_assert(!bs_ignore_path(ig, "notes.txt", false));
        cr_assert(!bs_ignore_path(ig, ".swp", false));
        cr_assert(!bs_ignore_path(ig, "report.docx", false));
        /* an ignore file may re-include what the defaults leave out */
        cr_assert_eq(set(ig, "", "!*.part\nvideos/\n"), 2);
        cr_assert(!bs_ignore_path(ig, "video.mp4.part", false));
        /* this computer's patterns win over every file */
        cr_assert_eq(bs_ignore_add_local(ig, "*.iso"), 1);
        cr_assert_eq(bs_ignore_add_local(ig, "!videos/"), 1);
        cr_assert_eq(bs_ignore_add_local(ig, "# nothing"), 0);
        cr_assert_eq(set(ig, "sub", "!*.iso\n"), 1);
        cr_assert(bs_ignore_path(ig, "sub/disk.iso", false));
        cr_assert(!bs_ignore_path(ig, "videos", true));
        bs_ignore_free(ig);
        cr_assert_null(bs_ignore_free(NULL));
        cr_assert(!bs_ignore_path(NULL, "x", false), "no set: nothing ignored");
}

/* Patterns that would take exponential time with a naive matcher: bounded here. */
Test(ignore, hostile_patterns_stay_fast, .timeout = 5) {
        char pat[600], path[4097];
        size_t n = 0;
        for (int i = 0; i < 100; i++) {
                pat[n++] = 'a';
                pat[n++] = '*';
        }
        pat[n++] = 'b';
        pat[n] = 0;
        memset(path, 'a', 4000);
        path[4000] = 0;
        cr_assert(!bs_glob_match(pat, n, path, 4000));
        n = 0;
        for (int i = 0; i < 100; i++) {
                memcpy(pat + n, "**/", 3);
                n += 3;
        }
        pat[n++] = 'b';
        pat[n] = 0;
        for (int i = 0; i < 1999; i++) {
                path[2 * i] = 'a';
                path[2 * i + 1] = '/';
        }
        path[3998] = 'c';
        path[3999] = 0;
        cr_assert(!bs_glob_match(pat, n, path, 3999));
        path[3998] = 'b';
        cr_assert(bs_glob_match(pat, n, path, 3999), "1999 segments, the last b");
}
