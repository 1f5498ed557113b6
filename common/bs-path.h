/* bs-path.h - the path rules every side applies to a relative tree path */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/**
 * Check a tree path against the protocol rules: relative, '/'-separated,
 * no empty, "." or ".." component, no NUL, components <= 255 bytes, whole
 * path <= 4096 bytes. len is the length on the wire.
 * Returns 0 or -EINVAL.
 */
int bs_path_check(const char *p, size_t len);

/** True when p equals dir or lies below it (dir + "/..."). */
bool bs_path_under(const char *p, const char *dir);

/** Length of the parent part of p (0 for a top-level name). */
size_t bs_path_parent_len(const char *p);

/** The last component of p. */
const char *bs_path_base(const char *p);

/**
 * Replace the prefix from (a whole component) of p by to, into out of
 * size outsz. Returns 0, or -ENAMETOOLONG.
 */
int bs_path_rebase(const char *p, const char *from, const char *to, char *out, size_t outsz);

/** True for the names the programs use for their own temporary files. */
bool bs_path_is_temp(const char *name);

#define BS_TEMP_PREFIX ".backupsync-tmp."
