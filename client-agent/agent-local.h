/* agent-local.h - reading the watched tree without following links out of it */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "agent.h"

typedef struct LocalEntry {
        bool exists;
        uint8_t kind; /* BsKind, or BS_KIND_NONE for a special file */
        struct stat st;
        char target[BS_PATH_MAX + 1];
} LocalEntry;

/** lstat() of a tree path beneath the root, never through a link; l->exists false when absent. */
int local_stat(Agent *a, const char *path, LocalEntry *l);
/** local_stat() of name in the directory open at dirfd. */
int local_stat_at(int dirfd, const char *name, LocalEntry *l);
/**
 * Between these, local_stat() keeps the last parent directory open: for
 * making a plan, where nothing is changed on disk by the agent and a
 * directory replaced meanwhile is seen again through inotify.
 */
void local_scan_begin(Agent *a);
void local_scan_end(Agent *a);
/** Close the kept directory: one that was removed or moved may not be used again. */
void local_scan_forget(Agent *a);
/**
 * An fd of path's parent and its base name; while scanning the fd is
 * the kept one (*kept: do not close it), else the caller's to close.
 */
int local_open_parent(Agent *a, const char *path, const char **base, bool *kept);
/** True when the disk entry is what the manifest last recorded. */
bool local_matches(const LocalEntry *l, const ManifestEntry *m);
/**
 * SHA-256 of a file in the tree, and in l the stat of the very content
 * hashed; -EAGAIN when the file changed while it was read.
 */
int local_hash(Agent *a, const char *path, uint8_t sha[BS_SHA_LEN], LocalEntry *l);
/**
 * Move a local entry aside as a conflict copy; out gets the new path, ret
 * the lstat() of what is there now (st_mode 0: gone already).
 */
int local_conflict_copy(Agent *a, const char *path, char *out, size_t outsz, struct stat *ret);
/**
 * A file with several names (hard links) changed through path: inotify
 * reports only the name used, but the bytes or mode changed under every
 * name. Queue its other names the manifest knows (same inode ino).
 */
void local_mark_links(Agent *a, const char *path, uint64_t ino);
/**
 * A file was written through path after that name was removed: queue the
 * other names of its inode. False when its inode is not known (the name
 * came and went unseen), and only a look at the whole tree can find them.
 */
bool local_removed_written(Agent *a, const char *path);
/** Fill a manifest entry from what is on disk. */
void local_to_manifest(const LocalEntry *l, ManifestEntry *m);
