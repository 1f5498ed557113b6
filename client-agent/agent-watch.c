/* agent-watch.c - recursive inotify watcher of one directory tree */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "agent-watch.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-proto.h"

/* Not IN_EXCL_UNLINK: a file with another name (a hard link) is still
 * written through a descriptor opened on a removed name, and its events
 * name only that (see agent_gone_link()). */
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ATTRIB | IN_MODIFY | \
                    IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW | IN_ONLYDIR)

/* How many removed file names are remembered (see removed_written). */
#define WATCH_REMOVED 256

struct Watcher {
        int fd;
        char *root;
        const WatcherOps *ops;
        void *userdata;
        char **paths; /* indexed by watch descriptor; NULL = free */
        uint64_t *inos; /* the inode each watches, 0 if unknown */
        size_t n_paths;
        size_t count;
        char **unwatched;
        size_t n_unwatched;
        /* The first half of a move, waiting for its IN_MOVED_TO. */
        uint32_t pending_cookie;
        bool pending_dir;
        char *pending_from;
        /* The last whole move, held until the next event: its reverse
         * right after it, both names still there, is renameat2(RENAME_EXCHANGE). */
        char *held_from, *held_to;
        bool held_dir;
        /* File names whose IN_DELETE or IN_MOVED_FROM came last: a write
         * event for one removed is a write through a removed name. */
        char *removed[WATCH_REMOVED];
        size_t next_removed, n_removed;
        /* Events the agent caused itself (watcher_expect()): a 64-bit hash
         * of the path, its low bit set for a directory, in an open-addressed
         * table (a batch of a join places thousands between two reads of
         * the queue). n_expect are live, n_filled also counts used ones;
         * expect_ino: the inode a file was placed with. */
        uint64_t *expect, *expect_ino;
        size_t n_expect, n_filled, cap_expect;
};

static void expect_clear(Watcher *w);

int watcher_new(const char *root, const WatcherOps *ops, void *userdata, Watcher **ret) {
        Watcher *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        w->root = strdup(root);
        if (w->fd < 0 || !w->root) {
                int r = w->fd < 0 ? -errno : -ENOMEM;
                watcher_free(w);
                return r;
        }
        w->ops = ops;
        w->userdata = userdata;
        *ret = w;
        return 0;
}

static void clear_unwatched(Watcher *w) {
        for (size_t i = 0; i < w->n_unwatched; i++)
                free(w->unwatched[i]);
        free(w->unwatched);
        w->unwatched = NULL;
        w->n_unwatched = 0;
}

void watcher_reset(Watcher *w) {
        for (size_t i = 0; i < w->n_paths; i++)
                if (w->paths[i]) {
                        if (w->fd >= 0)
                                inotify_rm_watch(w->fd, (int) i);
                        free(w->paths[i]);
                        w->paths[i] = NULL;
                }
        w->count = 0;
        clear_unwatched(w);
        free(w->pending_from);
        w->pending_from = NULL;
        free(w->held_from);
        free(w->held_to);
        w->held_from = w->held_to = NULL;
        expect_clear(w);
}

Watcher *watcher_free(Watcher *w) {
        if (!w)
                return NULL;
        /* Closing the descriptor drops every watch at once: one system
         * call, not one per directory (100,000 of them for a million files). */
        if (w->fd >= 0)
                close(w->fd);
        w->fd = -1;
        watcher_reset(w);
        for (size_t i = 0; i < WATCH_REMOVED; i++)
                free(w->removed[i]);
        free(w->expect);
        free(w->expect_ino);
        free(w->paths);
        free(w->inos);
        free(w->root);
        free(w);
        return NULL;
}

int watcher_fd(Watcher *w) {
        return w->fd;
}

size_t watcher_count(const Watcher *w) {
        return w->count;
}

size_t watcher_unwatched(const Watcher *w, const char *const **list) {
        *list = (const char *const *) w->unwatched;
        return w->n_unwatched;
}

static int set_path(Watcher *w, int wd, const char *path) {
        if ((size_t) wd >= w->n_paths) {
                size_t n = MAX((size_t) wd + 1, w->n_paths * 2);
                char **p = realloc(w->paths, n * sizeof(char *));
                if (!p)
                        return -ENOMEM;
                memset(p + w->n_paths, 0, (n - w->n_paths) * sizeof(char *));
                w->paths = p;
                uint64_t *ino = realloc(w->inos, n * sizeof(uint64_t));
                if (!ino)
                        return -ENOMEM;
                memset(ino + w->n_paths, 0, (n - w->n_paths) * sizeof(uint64_t));
                w->inos = ino;
                w->n_paths = n;
        }
        if (w->paths[wd] && strcmp(w->paths[wd], path) == 0)
                return 0; /* watched already: what it remembers stays */
        char *d = strdup(path);
        if (!d)
                return -ENOMEM;
        if (w->paths[wd])
                free(w->paths[wd]);
        else
                w->count++;
        w->paths[wd] = d;
        w->inos[wd] = 0;
        return 0;
}

static void abs_path(const Watcher *w, const char *rel, char *out, size_t outsz) {
        if (rel[0])
                snprintf(out, outsz, "%s/%s", w->root, rel);
        else
                snprintf(out, outsz, "%s", w->root);
}

static void remember_unwatched(Watcher *w, const char *dir) {
        for (size_t i = 0; i < w->n_unwatched; i++)
                if (strcmp(w->unwatched[i], dir) == 0)
                        return;
        char **p = realloc(w->unwatched, (w->n_unwatched + 1) * sizeof(char *));
        if (!p)
                return;
        w->unwatched = p;
        if ((p[w->n_unwatched] = strdup(dir)))
                w->n_unwatched++;
}

/* Watch dir itself: 0, -ENOSPC (remembered), 1 when it is gone or no
 * directory any more, another -errno for the root. *ret_wd: the watch,
 * or -1. */
static int add_one(Watcher *w, const char *dir, const char *abs, int *ret_wd) {
        *ret_wd = -1;
        int wd = inotify_add_watch(w->fd, abs, WATCH_MASK);
        if (wd < 0) {
                if (errno == ENOSPC) {
                        remember_unwatched(w, dir);
                        return -ENOSPC;
                }
                return dir[0] == 0 ? -errno : 1;
        }
        int r = set_path(w, wd, dir);
        if (r >= 0)
                *ret_wd = wd;
        return r;
}

/* The inode watch wd names, from the directory opened after it was added
 * (or from its parent's listing: ino), for still_there(). */
static void set_ino(Watcher *w, int wd, int fd, uint64_t ino) {
        struct stat st;
        if (wd < 0)
                return;
        if (ino == 0 && fd >= 0 && fstat(fd, &st) == 0)
                ino = (uint64_t) st.st_ino;
        w->inos[wd] = ino;
}

/* Whether path (relative to the root) names inode ino now. */
static bool names_inode(const Watcher *w, const char *path, uint64_t ino) {
        char abs[PATH_MAX + BS_PATH_MAX + 2];
        struct stat st;
        abs_path(w, path, abs, sizeof(abs));
        return lstat(abs, &st) == 0 && (uint64_t) st.st_ino == ino;
}

/* Whether the watch wd still names what is at its path: a directory made
 * there since the one it watched moved away (a pull may make it again
 * before this computer's own move is read) keeps its own watch. The one
 * that moved still exists, so no other file can have its inode. */
static bool still_there(const Watcher *w, size_t wd) {
        return w->inos[wd] != 0 && names_inode(w, w->paths[wd], w->inos[wd]);
}

int watcher_add_dir(Watcher *w, const char *dir) {
        char abs[PATH_MAX + BS_PATH_MAX + 2];
        int wd;
        abs_path(w, dir, abs, sizeof(abs));
        int r = add_one(w, dir, abs, &wd);
        return r == 1 ? 0 : r;
}

int watcher_add_made_dir(Watcher *w, const char *dir) {
        char abs[PATH_MAX + BS_PATH_MAX + 2];
        BsDirent *v;
        size_t n;

        int wd;
        abs_path(w, dir, abs, sizeof(abs));
        int r = add_one(w, dir, abs, &wd);
        if (r != 0)
                return r == 1 ? 1 : r;
        _cleanup_(closep) int fd = open(abs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        set_ino(w, wd, fd, 0);
        if (fd < 0 || bs_dir_list_fd(fd, &v, &n) < 0)
                return 1;
        bs_dir_list_free(v, n);
        return n > 0;
}

/* Slots of the table of expected events: never a key. */
#define EXPECT_EMPTY 0u
#define EXPECT_USED 1u

static uint64_t expect_key(const char *path, bool is_dir) {
        uint64_t k = (XXH3_64bits(path, strlen(path)) & ~(uint64_t) 1) | is_dir;
        return k > EXPECT_USED ? k : k + 2;
}

/* A rename within the tree: its key names both ends, so that another
 * program's rename to a name where a pull placed a file is never taken
 * for the agent's own. */
static uint64_t expect_move_key(const char *from, const char *to, bool is_dir) {
        uint64_t k = (XXH3_64bits_withSeed(to, strlen(to), XXH3_64bits(from, strlen(from))) & ~(uint64_t) 1) | is_dir;
        return k > EXPECT_USED ? k : k + 2;
}

static void expect_put(uint64_t *t, uint64_t *ino, size_t cap, uint64_t k, uint64_t i_no) {
        size_t i = k & (cap - 1);
        while (t[i] != EXPECT_EMPTY)
                i = (i + 1) & (cap - 1);
        t[i] = k;
        ino[i] = i_no;
}

/* Keep the table at most half full, counting used slots, which go here. */
static int expect_grow(Watcher *w) {
        size_t cap = w->cap_expect;
        if (2 * (w->n_filled + 1) <= cap)
                return 0;
        while (2 * (w->n_expect + 1) > cap / 2)
                cap = cap ? 2 * cap : 256;
        uint64_t *t = calloc(cap, sizeof(*t)), *ino = calloc(cap, sizeof(*ino));
        if (!t || !ino) {
                free(t);
                free(ino);
                return -ENOMEM;
        }
        for (size_t i = 0; i < w->cap_expect; i++)
                if (w->expect[i] > EXPECT_USED)
                        expect_put(t, ino, cap, w->expect[i], w->expect_ino[i]);
        free(w->expect);
        free(w->expect_ino);
        w->expect = t;
        w->expect_ino = ino;
        w->cap_expect = cap;
        w->n_filled = w->n_expect;
        return 0;
}

static int expect_add(Watcher *w, uint64_t k, uint64_t ino) {
        if (expect_grow(w) < 0)
                return -ENOMEM; /* the event is then reported: a comparison too many */
        expect_put(w->expect, w->expect_ino, w->cap_expect, k, ino);
        w->n_expect++;
        w->n_filled++;
        return 0;
}

int watcher_expect(Watcher *w, const char *path, bool is_dir, uint64_t ino) {
        return expect_add(w, expect_key(path, is_dir), ino);
}

int watcher_expect_move(Watcher *w, const char *from, const char *to, bool is_dir, uint64_t ino) {
        return expect_add(w, expect_move_key(from, to, is_dir), ino);
}

/*
 * Whether the event for path is one the agent expected; it is then used
 * up. The kernel merges an event into the one queued just before when
 * they are alike, and a rename's cookie does not count: another program
 * renaming a file in over a placed one at once leaves one IN_MOVED_TO.
 * So a file must still be the inode that was placed.
 */
static bool expected_key(Watcher *w, uint64_t k, const char *path, bool is_dir) {
        if (w->n_expect == 0)
                return false;
        for (size_t i = k & (w->cap_expect - 1); w->expect[i] != EXPECT_EMPTY; i = (i + 1) & (w->cap_expect - 1))
                if (w->expect[i] == k) {
                        w->expect[i] = EXPECT_USED;
                        w->n_expect--;
                        if (is_dir)
                                return true;
                        return names_inode(w, path, w->expect_ino[i]);
                }
        return false;
}

static bool expected(Watcher *w, const char *path, bool is_dir) {
        return expected_key(w, expect_key(path, is_dir), path, is_dir);
}

/* Whether the rename of from to path is the agent's own (see expected()). */
static bool expected_move(Watcher *w, const char *from, const char *path, bool is_dir) {
        return expected_key(w, expect_move_key(from, path, is_dir), path, is_dir);
}

/* Forget every expected event (see watcher_process()). */
static void expect_clear(Watcher *w) {
        if (w->n_filled == 0)
                return;
        memset(w->expect, 0, w->cap_expect * sizeof(*w->expect));
        w->n_expect = w->n_filled = 0;
}

/* Add one watch, then list the directory: a subdirectory made between the
 * two is still found by the listing. */
static int add_tree(Watcher *w, const char *dir, int depth, uint64_t ino) {
        char abs[PATH_MAX + BS_PATH_MAX + 2];
        int wd;

        abs_path(w, dir, abs, sizeof(abs));
        int r = add_one(w, dir, abs, &wd);
        if (r == 1)
                return 0; /* vanished or not a directory any more */
        if (r < 0 && r != -ENOSPC)
                return r;
        if (depth > 512)
                return r;

        _cleanup_(closep) int fd = open(abs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        BsDirent *v;
        size_t nv;
        set_ino(w, wd, fd, ino);
        if (fd < 0 || bs_dir_list_fd(fd, &v, &nv) < 0)
                return r;
        for (size_t i = 0; i < nv; i++) {
                const char *name = v[i].name;
                if (bs_path_is_temp(name))
                        continue;
                bool isdir = v[i].type == DT_DIR;
                if (v[i].type == DT_UNKNOWN) {
                        struct stat st;
                        isdir = fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
                }
                if (!isdir)
                        continue;
                char sub[BS_PATH_MAX + 1];
                int n = dir[0] ? snprintf(sub, sizeof(sub), "%s/%s", dir, name) : snprintf(sub, sizeof(sub), "%s", name);
                if (n < 0 || (size_t) n >= sizeof(sub))
                        continue;
                if (w->ops->ignored && w->ops->ignored(w->userdata, sub))
                        continue;
                int k = add_tree(w, sub, depth + 1, v[i].ino);
                if (k < 0 && r == 0)
                        r = k;
        }
        bs_dir_list_free(v, nv);
        return r;
}

int watcher_add_tree(Watcher *w, const char *dir) {
        return add_tree(w, dir, 0, 0);
}

/* Forget (and stop) every watch at or below dir. moved: only those whose
 * path no longer names their directory. */
static void drop_below(Watcher *w, const char *dir, bool moved) {
        for (size_t i = 0; i < w->n_paths; i++)
                if (w->paths[i] && bs_path_under(w->paths[i], dir) && !(moved && still_there(w, i))) {
                        inotify_rm_watch(w->fd, (int) i);
                        free(w->paths[i]);
                        w->paths[i] = NULL;
                        w->count--;
                }
}

void watcher_drop_ignored(Watcher *w) {
        if (!w->ops->ignored)
                return;
        for (size_t i = 0; i < w->n_paths; i++)
                if (w->paths[i] && w->paths[i][0] && w->ops->ignored(w->userdata, w->paths[i])) {
                        char *dir = w->paths[i];
                        w->paths[i] = NULL; /* drop_below() must not free what it compares with */
                        inotify_rm_watch(w->fd, (int) i);
                        w->count--;
                        drop_below(w, dir, false);
                        free(dir);
                }
        size_t kept = 0;
        for (size_t i = 0; i < w->n_unwatched; i++) {
                if (w->ops->ignored(w->userdata, w->unwatched[i]))
                        free(w->unwatched[i]);
                else
                        w->unwatched[kept++] = w->unwatched[i];
        }
        w->n_unwatched = kept;
}

/* A directory moved within the tree keeps its watches; rename them.
 * moved: only those whose path no longer names their directory. */
static void rename_below(Watcher *w, const char *from, const char *to, bool moved) {
        char buf[BS_PATH_MAX + 1];
        for (size_t i = 0; i < w->n_paths; i++)
                if (w->paths[i] && bs_path_under(w->paths[i], from) && !(moved && still_there(w, i)) &&
                    bs_path_rebase(w->paths[i], from, to, buf, sizeof(buf)) == 0) {
                        char *d = strdup(buf);
                        if (d) {
                                free(w->paths[i]);
                                w->paths[i] = d;
                        }
                }
}

static void remember_removed(Watcher *w, const char *path) {
        char *p = strdup(path);
        if (!p)
                return; /* a hint only: the verification pass is the net */
        if (w->removed[w->next_removed])
                free(w->removed[w->next_removed]);
        else
                w->n_removed++;
        w->removed[w->next_removed] = p;
        w->next_removed = (w->next_removed + 1) % WATCH_REMOVED;
}

/* Index of path among the removed names, or -1. */
static int find_removed(const Watcher *w, const char *path) {
        for (size_t i = 0; i < WATCH_REMOVED && w->n_removed > 0; i++)
                if (w->removed[i] && strcmp(w->removed[i], path) == 0)
                        return (int) i;
        return -1;
}

bool watcher_saw_removed(const Watcher *w, const char *path) {
        return find_removed(w, path) >= 0;
}

/* The name exists again (created, moved in): its events are its own. */
static void forget_removed(Watcher *w, const char *path) {
        int i = find_removed(w, path);
        if (i >= 0) {
                free(w->removed[i]);
                w->removed[i] = NULL;
                w->n_removed--;
        }
}

/* A move whose other half never came: moved out of the tree. */
static void flush_pending(Watcher *w) {
        if (!w->pending_from)
                return;
        char *from = TAKE_PTR(w->pending_from);
        if (w->pending_dir)
                drop_below(w, from, true);
        else
                remember_removed(w, from); /* moved out of the tree: seen going */
        /* A directory: what it held is in the manifest still, and a pull
         * may have made it again since. */
        w->ops->dirty(w->userdata, from, w->pending_dir);
        free(from);
}

static void deliver_held(Watcher *w) {
        if (!w->held_from)
                return;
        char *from = TAKE_PTR(w->held_from), *to = TAKE_PTR(w->held_to);
        if (w->held_dir)
                rename_below(w, from, to, true);
        else
                remember_removed(w, from); /* renamed: seen going */
        w->ops->move(w->userdata, from, to, w->held_dir);
        free(from);
        free(to);
}

/* from was moved to to: held, unless it undoes the held move while both
 * names exist, which is an exchange: both swap at once. */
static void moved(Watcher *w, char *from, const char *to, bool isdir) {
        char abs[PATH_MAX + BS_PATH_MAX + 2];
        struct stat st;
        if (w->held_from && strcmp(w->held_from, to) == 0 && strcmp(w->held_to, from) == 0) {
                abs_path(w, from, abs, sizeof(abs));
                if (lstat(abs, &st) == 0) {
                        /* Watches: swap the two prefixes through a name no path has. */
                        static const char tmp[] = "\001exchange";
                        if (w->held_dir)
                                rename_below(w, to, tmp, false);
                        if (isdir)
                                rename_below(w, from, to, false);
                        if (w->held_dir)
                                rename_below(w, tmp, from, false);
                        forget_removed(w, to);
                        forget_removed(w, from);
                        w->ops->exchange(w->userdata, to, from);
                        free(w->held_from);
                        free(w->held_to);
                        w->held_from = w->held_to = NULL;
                        free(from);
                        return;
                }
        }
        deliver_held(w);
        w->held_to = strdup(to);
        if (!w->held_to) {
                w->ops->rescan(w->userdata, "out of memory");
                free(from);
                return;
        }
        w->held_from = from;
        w->held_dir = isdir;
}

/* from was renamed to to by the agent itself (a conflict copy), which
 * queued what that changes when it did it: only the watches follow. */
static void own_move(Watcher *w, char *from, const char *to, bool isdir) {
        deliver_held(w);
        if (isdir)
                rename_below(w, from, to, true);
        free(from);
}

bool watcher_holding(const Watcher *w) {
        return w->pending_from || w->held_from;
}

void watcher_flush(Watcher *w) {
        flush_pending(w);
        deliver_held(w);
}

/* The events of a file made with O_TMPFILE keep naming it "#<inode>",
 * also once linkat() gave it a name: true, with the inode, for such a name. */
static bool anon_name(const char *name, uint64_t *ino) {
        char *end;
        if (name[0] != '#' || name[1] < '0' || name[1] > '9')
                return false;
        errno = 0;
        unsigned long long v = strtoull(name + 1, &end, 10);
        if (errno != 0 || *end != 0)
                return false;
        *ino = v;
        return true;
}

/* A write or attribute change of an O_TMPFILE file: the names it has in
 * dir now, found by its inode, are what changed (a name it got in another
 * directory is left to the verification pass). */
static void handle_anon(Watcher *w, const char *dir, uint64_t ino, uint32_t mask) {
        char abs[PATH_MAX + BS_PATH_MAX + 2], path[BS_PATH_MAX + 1];
        BsDirent *v;
        size_t n;
        abs_path(w, dir, abs, sizeof(abs));
        _cleanup_(closep) int fd = open(abs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || bs_dir_list_fd(fd, &v, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++) {
                if (v[i].ino != ino || bs_path_is_temp(v[i].name))
                        continue;
                int k = dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, v[i].name)
                               : snprintf(path, sizeof(path), "%s", v[i].name);
                if (k < 0 || (size_t) k >= sizeof(path))
                        continue;
                if (mask & IN_MODIFY)
                        w->ops->settle(w->userdata, path);
                else
                        w->ops->dirty(w->userdata, path, false);
        }
        bs_dir_list_free(v, n);
}

/* Would this event keep the held move waiting: the first half of its
 * reverse (an exchange), the second half of that, or the moved
 * directory's own IN_MOVE_SELF, which comes between them? */
static bool keeps_held(Watcher *w, const struct inotify_event *ev) {
        char path[BS_PATH_MAX + 1];
        if (ev->mask & IN_MOVE_SELF)
                return true; /* the moved directory's own watch: says nothing new */
        if (ev->mask & IN_MOVED_TO)
                return w->pending_from && w->pending_cookie == ev->cookie;
        if (!(ev->mask & IN_MOVED_FROM) || ev->wd < 0 || (size_t) ev->wd >= w->n_paths || !w->paths[ev->wd] ||
            ev->len == 0)
                return false;
        const char *dir = w->paths[ev->wd];
        int n = dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, ev->name)
                       : snprintf(path, sizeof(path), "%s", ev->name);
        return n > 0 && (size_t) n < sizeof(path) && strcmp(path, w->held_to) == 0;
}

static void handle(Watcher *w, const struct inotify_event *ev) {
        char path[BS_PATH_MAX + 1];

        if (ev->mask & IN_Q_OVERFLOW) {
                w->ops->rescan(w->userdata, "inotify event queue overflowed");
                return;
        }
        /* Anything else sees the held move done first (its watches renamed). */
        if (w->held_from && !keeps_held(w, ev))
                deliver_held(w);
        if (ev->wd < 0 || (size_t) ev->wd >= w->n_paths || !w->paths[ev->wd])
                return;
        const char *dir = w->paths[ev->wd];

        if (ev->mask & IN_IGNORED) {
                bool root = dir[0] == 0;
                free(w->paths[ev->wd]);
                w->paths[ev->wd] = NULL;
                w->count--;
                if (root)
                        w->ops->root_gone(w->userdata);
                return;
        }
        if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) {
                if (dir[0] == 0)
                        w->ops->root_gone(w->userdata);
                return;
        }
        if (ev->len == 0 || ev->name[0] == 0)
                return;
        if (bs_path_is_temp(ev->name))
                return;
        uint64_t ino;
        if (anon_name(ev->name, &ino)) {
                if (ev->mask & (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB))
                        handle_anon(w, dir, ino, ev->mask);
                return;
        }
        int n = dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, ev->name)
                       : snprintf(path, sizeof(path), "%s", ev->name);
        if (n < 0 || (size_t) n >= sizeof(path))
                return;
        bool isdir = ev->mask & IN_ISDIR;

        if (ev->mask & IN_MOVED_FROM) {
                flush_pending(w);
                w->pending_from = strdup(path);
                w->pending_cookie = ev->cookie;
                w->pending_dir = isdir;
                return;
        }
        if (ev->mask & (IN_CREATE | IN_MOVED_TO))
                forget_removed(w, path);
        if (ev->mask & IN_MOVED_TO) {
                if (w->pending_from && w->pending_cookie == ev->cookie) {
                        if (expected_move(w, w->pending_from, path, isdir))
                                own_move(w, TAKE_PTR(w->pending_from), path, isdir);
                        else
                                moved(w, TAKE_PTR(w->pending_from), path, isdir);
                        return;
                }
                watcher_flush(w);
                if (!isdir && expected(w, path, false))
                        return; /* placed by a pull, recorded as it was placed */
                /* Moved in from outside the tree: a creation. */
                if (isdir)
                        add_tree(w, path, 0, 0);
                w->ops->dirty(w->userdata, path, isdir);
                return;
        }
        watcher_flush(w);
        if (ev->mask & IN_CREATE) {
                if (isdir && expected(w, path, true))
                        return; /* made by a pull, which watched it at once */
                if (isdir) {
                        add_tree(w, path, 0, 0);
                        w->ops->dirty(w->userdata, path, true);
                        return;
                }
                /* A new regular file is usually being written: it is sent
                 * when closed after writing (IN_CLOSE_WRITE), or once it has
                 * settled, for one made whole by link() (no close follows;
                 * its other name may be gone before we could look). Links
                 * and hard links still named twice are whole now. */
                struct stat st;
                char abs[PATH_MAX + BS_PATH_MAX + 2];
                abs_path(w, path, abs, sizeof(abs));
                if (lstat(abs, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink < 2) {
                        w->ops->settle(w->userdata, path);
                        return;
                }
                w->ops->dirty(w->userdata, path, false);
                return;
        }
        if ((ev->mask & (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB)) && find_removed(w, path) >= 0) {
                struct stat st;
                char abs[PATH_MAX + BS_PATH_MAX + 2];
                abs_path(w, path, abs, sizeof(abs));
                if (lstat(abs, &st) < 0) {
                        w->ops->removed_written(w->userdata, path);
                        return;
                }
                forget_removed(w, path); /* there again without an event we could tell */
        }
        if ((ev->mask & IN_DELETE) && !isdir)
                remember_removed(w, path);
        /* Written and still open (a log, a database): sent once settled. */
        if (ev->mask & IN_MODIFY) {
                w->ops->settle(w->userdata, path);
                return;
        }
        if (ev->mask & (IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE))
                w->ops->dirty(w->userdata, path, false);
}

int watcher_process(Watcher *w) {
        char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
        for (;;) {
                ssize_t n = read(w->fd, buf, sizeof(buf));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        /* The kernel queues an event as the change is made:
                         * what was expected and did not come never will. */
                        expect_clear(w);
                        return errno == EAGAIN ? 0 : -errno;
                }
                for (char *p = buf; p < buf + n;) {
                        const struct inotify_event *ev = (const struct inotify_event *) p;
                        handle(w, ev);
                        p += sizeof(*ev) + ev->len;
                }
        }
}
