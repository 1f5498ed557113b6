/* bs-warm.h - read a tree's metadata ahead of a walk through it */
#pragma once

#include <stdbool.h>

typedef struct BsWarm BsWarm;

/* Called on the walk's thread, with paths relative to the top ("" for it). */
typedef struct BsWarmOps {
        /* Whether to enter the directory path; NULL: every one. */
        bool (*enter)(void *userdata, const char *path);
        /* The directory path was listed; NULL: nothing is told. */
        void (*listed)(void *userdata, const char *path);
} BsWarmOps;

/**
 * Start a thread that walks the tree at rootfd (duplicated: the caller's
 * may close) directory by directory in the order of their names, lists
 * each and stats some of its files, so that a walk right behind in the
 * same order finds them in the cache. Symbolic links are not followed.
 * ops (copied) and userdata may be NULL. -errno when no thread could
 * start: the caller's walk then just reads on its own.
 */
int bs_warm_start(int rootfd, const BsWarmOps *ops, void *userdata, BsWarm **ret);
/** Whether the walk has reached its end (its thread is done). */
bool bs_warm_done(BsWarm *w);
/** Stop the walk where it is, wait for its thread, free w; NULL. */
BsWarm *bs_warm_free(BsWarm *w);
static inline void bs_warm_freep(BsWarm **w) { if (*w) bs_warm_free(*w); }
