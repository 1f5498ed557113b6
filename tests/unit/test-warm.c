/* test-warm.c - unit tests for common/bs-warm.[ch] and the agent's use of
 * it (client-agent/agent-warm.[ch]): which directories a walk ahead lists,
 * in what order, on a real tree */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent-warm.h"
#include "bs-path.h"
#include "test-util.h"

static char dir[] = "/tmp/test-warm-XXXXXX";
static int rootfd = -1;

/* The directories listed, in order, joined by "|". */
static char seen[4096];

static void on_visit(void *userdata, const char *path) {
        (void) userdata;
        size_t n = strlen(seen);
        cr_assert_lt(n + strlen(path) + 2, sizeof(seen));
        snprintf(seen + n, sizeof(seen) - n, "%s|", path);
}

static void make(const char *path, const char *text) {
        size_t n = strlen(path);
        if (path[n - 1] == '/') {
                char d[256];
                snprintf(d, sizeof(d), "%.*s", (int) n - 1, path);
                cr_assert_eq(mkdirat(rootfd, d, 0755), 0, "mkdir %s: %m", d);
                return;
        }
        int fd = openat(rootfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0, "%s: %m", path);
        cr_assert_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
}

static void setup(void) {
        rootfd = test_dir_new(dir);
        cr_assert_geq(rootfd, 0);
        seen[0] = 0;
}

static void teardown(void) {
        cr_assert_eq(test_dir_remove(dir, rootfd), 0);
}

TestSuite(warm, .init = setup, .fini = teardown);

static bool enter_unless_skip(void *userdata, const char *path) {
        (void) userdata;
        return strcmp(bs_path_base(path), "skip") != 0;
}

/* Run a bare walk to its end, which it reaches on its own. */
static void bare_walk(const BsWarmOps *ops) {
        BsWarm *w = NULL;
        cr_assert_eq(bs_warm_start(rootfd, ops, NULL, &w), 0);
        for (int i = 0; i < 500 && !bs_warm_done(w); i++)
                usleep(10000);
        cr_assert(bs_warm_done(w));
        bs_warm_free(w);
}

Test(warm, a_bare_walk_lists_every_directory_by_name) {
        static const char *const tree[] = {
                "b/", "b/y/", "b/y/f", "b/x/", "b/x/skip/", "b/x/skip/in/", "a.b/", "a/", "a/f", "f", "skip/",
        };
        for (size_t i = 0; i < sizeof(tree) / sizeof(*tree); i++)
                make(tree[i], "x");
        bare_walk(&(BsWarmOps) { .listed = on_visit });
        cr_assert_str_eq(seen, "|a|a.b|b|b/x|b/x/skip|b/x/skip/in|b/y|skip|");
}

Test(warm, enter_decides_which_directories_are_walked) {
        static const char *const tree[] = { "b/", "b/skip/", "b/skip/in/", "b/y/", "skip/", "skip/in/" };
        for (size_t i = 0; i < sizeof(tree) / sizeof(*tree); i++)
                make(tree[i], NULL);
        bare_walk(&(BsWarmOps) { .enter = enter_unless_skip, .listed = on_visit });
        cr_assert_str_eq(seen, "|b|b/y|");
}

/* Run the agent's walk to its end: with no scan to stop it, it stops on its own. */
static void walk(bool defaults, char *const *patterns, size_t n) {
        IgnoreSet *ig = NULL;
        Warmer *w = NULL;
        cr_assert_eq(ignore_set_new(defaults, patterns, n, &ig), 0);
        cr_assert_eq(warmer_start(rootfd, ig, on_visit, NULL, &w), 0);
        /* The walk has its own copy of the patterns: this set may go. */
        ignore_set_free(ig);
        for (int i = 0; i < 500 && !strstr(seen, "zz|"); i++)
                usleep(10000);
        warmer_free(w);
}

Test(warm, lists_every_directory_in_the_scans_order) {
        static const char *const tree[] = {
                "b/", "b/y/", "b/y/f", "b/x/", "b/x/deep/", "b/x/deep/f", "a/", "a/f", "a/g", "f", "zz/",
        };
        for (size_t i = 0; i < sizeof(tree) / sizeof(*tree); i++)
                make(tree[i], "x");
        walk(true, NULL, 0);
        cr_assert_str_eq(seen, "|a|b|b/x|b/x/deep|b/y|zz|");
}

Test(warm, enters_no_ignored_directory) {
        static const char *const tree[] = {
                "keep/", "keep/build/", "keep/build/f", "keep/src/", "local/", "local/sub/",
                "cache/", "cache/sub/", "notcache/", "notcache/sub/", "zz/",
        };
        for (size_t i = 0; i < sizeof(tree) / sizeof(*tree); i++)
                make(tree[i], "x");
        /* An ignore file of the tree, a pattern of this computer's, and a
         * tagged cache directory; a tag without the signature is no cache. */
        make("keep/.backupsyncignore", "build/\n");
        make("cache/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n");
        make("notcache/CACHEDIR.TAG", "no signature\n");
        char *local[] = { "local/" };
        walk(true, local, 1);
        cr_assert_str_eq(seen, "|keep|keep/src|notcache|notcache/sub|zz|");
}

Test(warm, without_defaults_a_cache_is_walked) {
        make("cache/", NULL);
        make("cache/sub/", NULL);
        make("zz/", NULL);
        make("cache/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n");
        walk(false, NULL, 0);
        cr_assert_str_eq(seen, "|cache|cache/sub|zz|");
}

Test(warm, follows_no_symbolic_link) {
        make("real/", NULL);
        make("real/sub/", NULL);
        make("zz/", NULL);
        cr_assert_eq(symlinkat("real", rootfd, "link"), 0);
        cr_assert_eq(symlinkat("/", rootfd, "root"), 0);
        walk(true, NULL, 0);
        cr_assert_str_eq(seen, "|real|real/sub|zz|");
}
