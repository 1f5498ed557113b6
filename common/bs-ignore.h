/* bs-ignore.h - which paths do not sync: gitignore-style patterns
 *
 * Patterns come from three sources, weakest first: the defaults shipped
 * with backupsync (editor and office temporary files, OS litter), the
 * .backupsyncignore files of the tree (a deeper file overrides a
 * shallower one), and this computer's own patterns (ignore = in
 * [agent:NAME], --ignore), which nothing overrides. Among them the last
 * pattern that matches decides, as in git: "!" re-includes. The syntax
 * is documented precisely in docs/ignore.md.
 *
 * Matching is on bytes, with one exception: "?" and a bracket expression
 * match one whole UTF-8 character where the name holds valid UTF-8, and
 * one byte where it does not.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The name of the ignore files, in any directory of the tree. */
#define BS_IGNORE_FILE ".backupsyncignore"

typedef struct BsIgnore BsIgnore;

/** An empty set: nothing is ignored. -ENOMEM. */
int bs_ignore_new(BsIgnore **ret);
BsIgnore *bs_ignore_free(BsIgnore *ig);
static inline void bs_ignore_freep(BsIgnore **ig) { if (*ig) bs_ignore_free(*ig); }

/** Add the shipped default patterns (docs/ignore.md lists them). */
int bs_ignore_add_defaults(BsIgnore *ig);

/**
 * Add the patterns of the ignore file of directory dir ("" for the top
 * of the tree), n bytes of text, in place of any it had: the number of
 * patterns, or -ENOMEM. A line that holds no pattern is skipped.
 */
int bs_ignore_set_file(BsIgnore *ig, const char *dir, const char *text, size_t n);
/** Forget the patterns of the ignore file of dir (it was removed). */
void bs_ignore_drop_file(BsIgnore *ig, const char *dir);

/** Add one of this computer's patterns, as a line of an ignore file at the top. 1, 0 (no pattern), -ENOMEM. */
int bs_ignore_add_local(BsIgnore *ig, const char *line);

/**
 * Whether path (relative, "/"-separated), a directory when is_dir, is
 * ignored by the patterns themselves. A walk that does not enter ignored
 * directories needs no more; bs_ignore_path() also looks at the parents.
 */
bool bs_ignore_match(const BsIgnore *ig, const char *path, bool is_dir);

/** Whether path is ignored, or a directory above it is: then nothing below can be re-included. */
bool bs_ignore_path(const BsIgnore *ig, const char *path, bool is_dir);

/** A glob (without the ignore-file syntax) against a whole string, "/" as the separator. */
bool bs_glob_match(const char *pat, size_t plen, const char *s, size_t slen);
