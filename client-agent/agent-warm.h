/* agent-warm.h - the tree's metadata read ahead of a full scan */
#pragma once

#include "agent-ignore.h"
#include "bs-warm.h"

typedef struct Warmer Warmer;

/**
 * Start reading the tree at rootfd ahead of a scan (bs-warm.h), entering
 * no directory ignore ignores (rootfd is duplicated).
 * listed, if not NULL, is told each directory listed, on the walk's
 * thread. -errno when none could start: the scan just reads on its own.
 */
int warmer_start(int rootfd, const IgnoreSet *ignore, void (*listed)(void *userdata, const char *path),
                 void *userdata, Warmer **ret);
/** Stop the walk where it is and free w; NULL. */
Warmer *warmer_free(Warmer *w);
static inline void warmer_freep(Warmer **w) { if (*w) warmer_free(*w); }
