/* agent-watch.h - recursive inotify watcher of one directory tree
 *
 * Turns kernel events into what the sync engine understands: a path that
 * may differ from the manifest ("dirty"), a file still being written
 * ("settle": look once it has been quiet for a while), a move within the
 * tree, and "rescan everything" (queue overflow). Paths are relative to
 * the root ("" is the root itself).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Watcher Watcher;

typedef struct WatcherOps {
        void (*dirty)(void *userdata, const char *path, bool recursive);
        void (*settle)(void *userdata, const char *path);
        void (*move)(void *userdata, const char *from, const char *to, bool is_dir);
        /* renameat2(RENAME_EXCHANGE): x and y swapped. */
        void (*exchange)(void *userdata, const char *x, const char *y);
        /* Written after its name was removed: the file lives on, open, and
         * perhaps under another name (a hard link) no event will report. */
        void (*removed_written)(void *userdata, const char *path);
        void (*rescan)(void *userdata, const char *reason);
        void (*root_gone)(void *userdata);
        /* Whether the directory at path is not synced here: it gets no
         * watch, nor anything below it. May be NULL. */
        bool (*ignored)(void *userdata, const char *path);
} WatcherOps;

/** Create a watcher for root (an absolute path); no watch is added yet. */
int watcher_new(const char *root, const WatcherOps *ops, void *userdata, Watcher **ret);
Watcher *watcher_free(Watcher *w);
static inline void watcher_freep(Watcher **w) { if (*w) watcher_free(*w); }

/** The inotify fd, to poll for input. */
int watcher_fd(Watcher *w);

/**
 * Watch dir (relative; "" = root) and every directory below it.
 * Returns 0, -ENOSPC when the kernel watch limit was reached (the
 * unwatched directories are remembered, see watcher_unwatched()), or
 * another negative errno for the root itself.
 */
int watcher_add_tree(Watcher *w, const char *dir);
/**
 * Watch dir alone, as a scan that lists it next does (a change made after
 * the watch is reported, one made before it is in the listing). Returns
 * 0 (also when dir is gone), -ENOSPC (remembered as for watcher_add_tree()),
 * or another negative errno for the root itself.
 */
int watcher_add_dir(Watcher *w, const char *dir);
/**
 * Watch dir, which the caller has just made, and look whether something
 * was put in it before the watch: 0 when it is empty, 1 when it is not
 * (or could not be listed), -ENOSPC (remembered as for watcher_add_tree()).
 */
int watcher_add_made_dir(Watcher *w, const char *dir);
/**
 * The next IN_CREATE of the directory (is_dir) or IN_MOVED_TO of path
 * from outside the tree, placed with inode ino (a file's is checked), is
 * the caller's own doing: a pull placing what it fetched. It is not
 * reported, unless the file at path is another inode by then. Forgotten
 * at the end of the next watcher_process(), which has by then read the
 * events of everything done before it.
 */
int watcher_expect(Watcher *w, const char *path, bool is_dir, uint64_t ino);
/**
 * The same for the caller's own rename of from to to within the tree (a
 * conflict copy): its watches follow, nothing is reported. Another
 * program's rename to to is still reported, even where a pull placed a
 * file at to and expects that.
 */
int watcher_expect_move(Watcher *w, const char *from, const char *to, bool is_dir, uint64_t ino);

/** Stop watching the directories the ignored callback now names, and what is below them. */
void watcher_drop_ignored(Watcher *w);

/** Read and dispatch what the kernel has queued. */
int watcher_process(Watcher *w);

/**
 * Report what waits for a later event: a move whose other half never came
 * (moved out of the tree), and the last move, held back in case its
 * reverse follows (renameat2(RENAME_EXCHANGE) reports two moves).
 */
void watcher_flush(Watcher *w);
/** True when watcher_flush() has something to report. */
bool watcher_holding(const Watcher *w);

/**
 * True when the last event seen for path removed it (IN_DELETE, a rename
 * away, a move out of the tree; among the last few hundred): a name gone
 * without one was removed unseen, or went with its directory.
 */
bool watcher_saw_removed(const Watcher *w, const char *path);

/** Drop every watch (the tree is gone or is being rewatched). */
void watcher_reset(Watcher *w);

/** Number of directories watched. */
size_t watcher_count(const Watcher *w);

/** Directories that could not be watched (limit reached); they are rescanned by polling. */
size_t watcher_unwatched(const Watcher *w, const char *const **list);
