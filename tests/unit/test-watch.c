/* test-watch.c - unit tests for client-agent/agent-watch.[ch]: the events
 * the agent expects from its own pulls, on a real inotify instance */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent-watch.h"

/* What the watcher reported: every dirty path, in order, "+" after a
 * recursive one. */
typedef struct Seen {
        char **paths;
        size_t n;
} Seen;

static void on_dirty(void *userdata, const char *path, bool recursive) {
        Seen *s = userdata;
        s->paths = reallocarray(s->paths, s->n + 1, sizeof(*s->paths));
        cr_assert_not_null(s->paths);
        cr_assert_neq(asprintf(&s->paths[s->n++], "%s%s", path, recursive ? "+" : ""), -1);
}

static void on_path(void *userdata, const char *path) {
        on_dirty(userdata, path, false);
}

static void on_move(void *userdata, const char *from, const char *to, bool is_dir) {
        (void) is_dir;
        on_dirty(userdata, from, false);
        on_dirty(userdata, to, false);
}

static void on_exchange(void *userdata, const char *x, const char *y) {
        on_move(userdata, x, y, false);
}

static void on_rescan(void *userdata, const char *reason) {
        (void) userdata;
        cr_assert_fail("rescan: %s", reason);
}

static void on_root_gone(void *userdata) {
        (void) userdata;
        cr_assert_fail("root gone");
}

static const WatcherOps ops = {
        .dirty = on_dirty,
        .settle = on_path,
        .move = on_move,
        .exchange = on_exchange,
        .removed_written = on_path,
        .rescan = on_rescan,
        .root_gone = on_root_gone,
};

static char top[] = "/tmp/test-watch-XXXXXX";
static char root[64], outside[64];
static Watcher *w;
static Seen seen;

static void setup(void) {
        cr_assert_not_null(mkdtemp(top));
        snprintf(root, sizeof(root), "%s/root", top);
        snprintf(outside, sizeof(outside), "%s/out", top);
        cr_assert_eq(mkdir(root, 0755), 0);
        cr_assert_eq(mkdir(outside, 0755), 0);
        cr_assert_eq(watcher_new(root, &ops, &seen, &w), 0);
        cr_assert_eq(watcher_add_tree(w, ""), 0);
}

static void teardown(void) {
        watcher_free(w);
        for (size_t i = 0; i < seen.n; i++)
                free(seen.paths[i]);
        free(seen.paths);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
        cr_expect_eq(system(cmd), 0);
}

/* A file made outside the tree and renamed in as path, as a pull places
 * what it downloaded. */
static void place(const char *path) {
        char from[128], to[256];
        snprintf(from, sizeof(from), "%s/tmp", outside);
        snprintf(to, sizeof(to), "%s/%s", root, path);
        int fd = open(from, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, "x", 1), 1);
        cr_assert_eq(close(fd), 0);
        cr_assert_eq(rename(from, to), 0, "rename to %s: %m", to);
}

static uint64_t ino_of(const char *path) {
        char p[256];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", root, path);
        cr_assert_eq(lstat(p, &st), 0, "%s: %m", p);
        return st.st_ino;
}

static void make_dir(const char *path) {
        char p[256];
        snprintf(p, sizeof(p), "%s/%s", root, path);
        cr_assert_eq(mkdir(p, 0755), 0);
}

/* The dirty paths reported, joined by spaces. */
static const char *reported(void) {
        static char out[4096];
        cr_assert_eq(watcher_process(w), 0);
        out[0] = 0;
        for (size_t i = 0; i < seen.n; i++) {
                strncat(out, seen.paths[i], sizeof(out) - strlen(out) - 2);
                if (i + 1 < seen.n)
                        strcat(out, " ");
                free(seen.paths[i]);
        }
        seen.n = 0;
        return out;
}

TestSuite(watch, .init = setup, .fini = teardown);

/* A pull's batch: thousands of files placed and directories made between
 * two reads of the queue, among one file and one directory of another
 * program's. Only those two are reported. */
Test(watch, expected_events_not_reported) {
        char p[64];
        for (int d = 0; d < 40; d++) {
                snprintf(p, sizeof(p), "d%02d", d);
                make_dir(p);
                cr_assert_eq(watcher_add_made_dir(w, p), 0);
                cr_assert_eq(watcher_expect(w, p, true, 0), 0);
                for (int i = 0; i < 100; i++) {
                        snprintf(p, sizeof(p), "d%02d/f%03d", d, i);
                        place(p);
                        cr_assert_eq(watcher_expect(w, p, false, ino_of(p)), 0);
                }
        }
        place("d07/theirs");
        make_dir("their-dir");
        cr_expect_str_eq(reported(), "d07/theirs their-dir+");
}

/* Another program renames a file in over the one just placed: the kernel
 * merges the two IN_MOVED_TO into one, which must not pass for the
 * placement alone. */
Test(watch, replaced_at_once) {
        place("f");
        cr_assert_eq(watcher_expect(w, "f", false, ino_of("f")), 0);
        place("f");
        cr_expect_str_eq(reported(), "f");
}

/* What was expected and did not come is forgotten once the queue was
 * read: a later event for that name is another program's. */
Test(watch, forgotten_after_reading) {
        cr_assert_eq(watcher_expect(w, "g", false, 1), 0);
        cr_assert_eq(watcher_expect(w, "e", true, 0), 0);
        cr_expect_str_eq(reported(), "");
        place("g");
        make_dir("e");
        cr_expect_str_eq(reported(), "g e+");
}

/* A directory expected is not a file of that name, nor the reverse. */
Test(watch, kind_matters) {
        cr_assert_eq(watcher_expect(w, "h", true, 0), 0);
        cr_assert_eq(watcher_expect(w, "k", false, 1), 0);
        place("h");
        make_dir("k");
        cr_expect_str_eq(reported(), "h k+");
}

/* A directory the agent made, found holding something by the time it is
 * watched: something another program put there, to be compared. */
Test(watch, made_dir_already_used) {
        make_dir("empty");
        cr_expect_eq(watcher_add_made_dir(w, "empty"), 0);
        make_dir("used");
        place("used/x");
        cr_expect_eq(watcher_add_made_dir(w, "used"), 1);
        cr_expect_eq(watcher_add_made_dir(w, "gone"), 1);
        /* Watched: a file made in it now is an event. */
        place("empty/y");
        cr_expect_str_eq(reported(), "empty+ used+ empty/y");
}

static void rename_in_root(const char *from, const char *to) {
        char f[256], t[256];
        snprintf(f, sizeof(f), "%s/%s", root, from);
        snprintf(t, sizeof(t), "%s/%s", root, to);
        cr_assert_eq(rename(f, t), 0, "rename %s: %m", f);
}

/* A directory moved away and made again at its old name by a pull before
 * the move is read: into a directory not yet watched (a removal for
 * inotify), or into a watched one (a move held a moment). The one made
 * again keeps its watch, the moved one follows its name, and the old name
 * is reported with what was below it. */
Test(watch, made_again_after_move) {
        make_dir("p");
        make_dir("r");
        make_dir("s");
        cr_expect_str_eq(reported(), "p+ r+ s+");

        make_dir("q");
        rename_in_root("p", "q/p");
        rename_in_root("s", "r/s");
        make_dir("p");
        make_dir("s");
        cr_assert_eq(watcher_add_made_dir(w, "p"), 0);
        cr_assert_eq(watcher_expect(w, "p", true, 0), 0);
        cr_assert_eq(watcher_add_made_dir(w, "s"), 0);
        cr_assert_eq(watcher_expect(w, "s", true, 0), 0);
        cr_assert_eq(watcher_process(w), 0);
        watcher_flush(w);
        cr_expect_str_eq(reported(), "q+ p+ s r/s");

        place("p/x");
        place("s/x");
        place("q/p/y");
        place("r/s/y");
        cr_expect_str_eq(reported(), "p/x s/x q/p/y r/s/y");
}

/* A rename the agent made itself (to a conflict copy) and said it expects
 * is not reported, but the watches below still follow it. */
Test(watch, own_rename_followed_not_reported) {
        make_dir("d");
        make_dir("d/sub");
        place("f");
        cr_expect_str_eq(reported(), "d+ f");

        rename_in_root("d", "d.copy");
        cr_assert_eq(watcher_expect_move(w, "d", "d.copy", true, 0), 0);
        rename_in_root("f", "f.copy");
        cr_assert_eq(watcher_expect_move(w, "f", "f.copy", false, ino_of("f.copy")), 0);
        cr_assert_eq(watcher_process(w), 0);
        watcher_flush(w);
        cr_expect_str_eq(reported(), "");

        place("d.copy/sub/x");
        cr_expect_str_eq(reported(), "d.copy/sub/x");
}

/* Another program renamed x over y, and before its events were read the
 * agent set y aside (its own rename) and a pull placed a new y: the
 * placement expected at y is not taken for the other program's rename,
 * which is reported as a move (x is gone), and the placement is not. */
Test(watch, rename_to_placed_name_reported) {
        place("x");
        place("y");
        cr_expect_str_eq(reported(), "x y");

        rename_in_root("x", "y");
        rename_in_root("y", "y.copy");
        cr_assert_eq(watcher_expect_move(w, "y", "y.copy", false, ino_of("y.copy")), 0);
        place("y");
        cr_assert_eq(watcher_expect(w, "y", false, ino_of("y")), 0);
        cr_assert_eq(watcher_process(w), 0);
        watcher_flush(w);
        cr_expect_str_eq(reported(), "x y");
}
