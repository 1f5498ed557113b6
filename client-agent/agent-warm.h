/* agent-warm.h - read a tree's metadata ahead of its full scan */
#pragma once

#include "agent-ignore.h"

typedef struct Warmer Warmer;

/* Told the path of each directory the walk lists ("" for the top), on the walk's thread. */
typedef void (*WarmVisit)(void *userdata, const char *path);

/**
 * Start a thread that walks the tree at rootfd (duplicated, so the
 * caller's may close), entering no directory ignore ignores, and lists
 * its directories and stats some files so that a scan right behind it
 * finds them in the cache. visit, if not NULL, is told each directory.
 * -errno when no thread could start: the scan just reads on its own.
 */
int warmer_start(int rootfd, const IgnoreSet *ignore, WarmVisit visit, void *userdata, Warmer **ret);
/** Stop the walk where it is, wait for its thread, free w; NULL. */
Warmer *warmer_free(Warmer *w);
static inline void warmer_freep(Warmer **w) { if (*w) warmer_free(*w); }
