/* agent-ignore.h - what this computer does not sync (work in progress)
 *
 * The agent's ignore set: the shipped defaults (unless default-ignores =
 * no), this computer's ignore = patterns, and every .backupsyncignore of
 * the tree, read the first time a path below its directory is decided
 * and again when it changes.
 */
#pragma once

#include <stdbool.h>

#include "bs-ignore.h"

typedef struct IgnoreSet IgnoreSet;

/** A set of the defaults (when defaults) and the n patterns. -ENOMEM. */
int ignore_set_new(bool defaults, char *const *patterns, size_t n, IgnoreSet **ret);
/**
 * A new set of the same defaults and patterns as s, with no ignore file
 * read yet: for another thread, which must not share s. -ENOMEM.
 */
int ignore_set_fresh(const IgnoreSet *s, IgnoreSet **ret);
IgnoreSet *ignore_set_free(IgnoreSet *s);
static inline void ignore_set_freep(IgnoreSet **s) { if (*s) ignore_set_free(*s); }

/**
 * Whether path (a directory when is_dir) does not sync here: it, or a
 * directory above it, is ignored. rootfd is the synced directory, from
 * which ignore files not yet read are read.
 */
bool ignore_set_path(IgnoreSet *s, int rootfd, const char *path, bool is_dir);

/** The ignore file of dir changed or went: read it again now. 1, or -errno. */
int ignore_set_reload(IgnoreSet *s, int rootfd, const char *dir);

/** Whether path is an ignore file; its directory into dir (BS_PATH_MAX + 1 bytes). */
bool ignore_is_file(const char *path, char *dir);
