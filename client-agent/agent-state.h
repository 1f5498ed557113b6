/* agent-state.h - the agent's local state: token, device, last sequence, manifest
 *
 * Kept in SQLite (WAL) in the state directory. The manifest is the last
 * state both this computer and the server agreed on: comparing it with the
 * disk tells what changed locally, comparing it with the server's records
 * tells what changed remotely.
 *
 * Writes belong to a transaction (agent_state_begin/commit). The first
 * statement of one that fails (a full or read-only file system, an I/O
 * error) is remembered: later statements refuse to run and return it,
 * and the commit rolls everything back and returns it, so the manifest
 * and last_seq never move apart and nothing half-recorded is kept.
 * Callers therefore need to check only the commit; they may stop early
 * on any other result.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "bs-proto.h"
#include "bs-blocks.h"

typedef struct AgentState AgentState;

typedef struct ManifestEntry {
        uint8_t kind; /* BsKind */
        uint64_t size;
        uint32_t mode;
        int64_t mtime_ns;
        uint64_t ino;
        uint8_t sha[BS_SHA_LEN];
        uint64_t version;
        char target[BS_PATH_MAX + 1]; /* symlink text */
} ManifestEntry;

/** Open (creating) state.db in dir and lock it: -EBUSY when another agent has it. */
int agent_state_open(const char *dir, AgentState **ret);
AgentState *agent_state_free(AgentState *s);
static inline void agent_state_freep(AgentState **s) { if (*s) agent_state_free(*s); }

/** Small key/value settings; get returns -ENOENT when unset. */
int agent_state_get(AgentState *s, const char *key, char *out, size_t outsz);
int agent_state_set(AgentState *s, const char *key, const char *value);
int agent_state_get_blob(AgentState *s, const char *key, void *out, size_t n);
int agent_state_set_blob(AgentState *s, const char *key, const void *p, size_t n);
uint64_t agent_state_get_u64(AgentState *s, const char *key);
int agent_state_set_u64(AgentState *s, const char *key, uint64_t v);

/** Open a transaction (0, or the error of the one still open). */
int agent_state_begin(AgentState *s);
/** Commit, or roll back when any statement since begin failed; returns that failure. */
int agent_state_commit(AgentState *s);
/**
 * Make what is committed durable now (commits are, with WAL and
 * synchronous=NORMAL, only at the next checkpoint): for what cannot be
 * learnt again, the token and the device id.
 */
int agent_state_flush(AgentState *s);
/** The failure the open transaction has met, or 0. */
int agent_state_error(const AgentState *s);

/** Manifest entry of path; -ENOENT when absent. */
int manifest_get(AgentState *s, const char *path, ManifestEntry *e);
/** A file of 1 MiB or more the manifest records with content sha (into path). -ENOENT: none. */
int manifest_find_content(AgentState *s, const uint8_t sha[BS_SHA_LEN], char *path, size_t pathsz);
int manifest_put(AgentState *s, const char *path, const ManifestEntry *e);
/** Remove the entry of path alone. */
int manifest_delete(AgentState *s, const char *path);
/** Remove path and everything below it. */
int manifest_delete_tree(AgentState *s, const char *path);
/** Rename path and everything below it to a new prefix. */
int manifest_move_tree(AgentState *s, const char *from, const char *to);
int64_t manifest_count(AgentState *s);
/** Files and symlinks (not directories) at path and below it; "" for the whole tree. */
int64_t manifest_count_files(AgentState *s, const char *path);

typedef int (*manifest_iter_t)(const char *path, const ManifestEntry *e, void *userdata);
/** Call fn for each direct child of dir ("" = root), in path order. */
int manifest_children(AgentState *s, const char *dir, manifest_iter_t fn, void *userdata);
/** Call fn for dir's entries below it (not dir itself), deepest first. */
int manifest_below(AgentState *s, const char *dir, manifest_iter_t fn, void *userdata);
/**
 * Chunk lists (bs-blocks.h) of big contents, by SHA-256: what a delta
 * compares against. get returns -ENOENT when none is kept, else 0 with a
 * malloc'ed array of *count records the caller frees. put also indexes
 * each chunk, so that locate finds a chunk in any kept content.
 */
int blocks_get(AgentState *s, const uint8_t sha[BS_SHA_LEN], uint8_t **recs, size_t *count);
int blocks_put(AgentState *s, const uint8_t sha[BS_SHA_LEN], const uint8_t *recs, size_t count);
int blocks_delete(AgentState *s, const uint8_t sha[BS_SHA_LEN]);
/** A kept content holding a chunk of len bytes with fingerprint sum, and where. -ENOENT: none. */
int blocks_locate(AgentState *s, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN], uint8_t sha[BS_SHA_LEN],
                  uint64_t *off);
/*
 * Lists of contents the manifest no longer names (replaced, deleted) are
 * kept for the newest BLOCKS_KEEP_OLD of them: such a content is likely
 * still on the server, as a version, and comes back as a restore, a file
 * made again or a copy from elsewhere.
 */
#define BLOCKS_KEEP_OLD 64
/** Keep the chunk list of content sha, now the newest, and trim the old ones. */
int blocks_keep(AgentState *s, const uint8_t sha[BS_SHA_LEN], const uint8_t *recs, size_t count);
/** Drop the lists of old contents beyond the newest BLOCKS_KEEP_OLD. */
int blocks_trim(AgentState *s);
/** Call fn for each file the manifest records with inode ino (its hard links). */
int manifest_same_inode(AgentState *s, uint64_t ino, manifest_iter_t fn, void *userdata);
/** A number that changes whenever the manifest does. */
uint64_t manifest_generation(const AgentState *s);
/** The files whose names hold ".conflict-": what may be conflict copies. */
int manifest_conflict_candidates(AgentState *s, manifest_iter_t fn, void *userdata);
/** Snapshot reconciliation: clear the seen marks, set one, list the unseen. */
int manifest_clear_seen(AgentState *s);
int manifest_mark_seen(AgentState *s, const char *path);
int manifest_unseen(AgentState *s, manifest_iter_t fn, void *userdata);
