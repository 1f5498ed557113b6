/* agent-plan.h - from local changes to a list of requests
 *
 * A dirty path is compared with the manifest (the last agreed state) and
 * becomes PUT, MKDIR, SYMLINK, DELETE or MOVE naming the version it was
 * based on. The plan is sent by agent-push.c.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "agent-local.h"
#include "bs-blocks.h"
#include "bs-readahead.h"

typedef struct PushOp {
        uint8_t type;
        bool skipped;
        uint32_t req;
        char *path, *path2;
        uint64_t base, base2;
        int fd; /* PUT opened ahead of its turn, its reading already started, or -1 */
        uint64_t prefetched; /* bytes asked to be read ahead */
        bool cold;           /* not in the page cache when opened ahead: dropped once read */
        BsReadBuf *rb;       /* a small file read ahead whole (freed by the push, not the plan) */
        ManifestEntry *e; /* allocated short: target holds only the link text */
        /* PUT of a big file: the chunk list of what was sent, kept on ACK
         * for the next delta; and the SHA-256s of the contents chunks
         * were copied from (n_bases of them). */
        BsBlocks *blocks;
        uint8_t *delta_bases;
        size_t n_bases;
        uint64_t sent; /* of a delta: the bytes that went as DATA */
} PushOp;

typedef struct Plan {
        PushOp *ops;
        size_t n, cap;
        char **dirs; /* directories made by this plan, sorted on demand */
        size_t n_dirs, cap_dirs;
        /* Once this many ops are planned (0: no limit), new directories
         * still to visit are queued as dirty instead, for the next plan:
         * a first backup of a million files is sent in slices, and the
         * agent's memory does not grow with it. Directories the manifest
         * knows are never deferred: every deletion a rescan finds is in
         * one plan, so the brake on mass deletions sees them all at once. */
        size_t slice;
        bool deferred; /* some dirty paths were: they wait in the agent's list */
        /* New directories a slice left for later, in the order met:
         * plan_more() plans them while the requests before them are still
         * in flight, so a first backup never waits for a slice's answers
         * before it looks at the next directories. */
        char **later;
        size_t n_later, cap_later;
} Plan;

void plan_clear(Plan *p);
/** Keep the ops keep() says true of, in order; the others are freed. */
void plan_filter(Plan *p, bool (*keep)(const PushOp *op, void *userdata), void *userdata);
/** Append an op; l (may be NULL) gives what the manifest records on ACK. */
PushOp *plan_add(Plan *p, uint8_t type, const char *path, const char *path2, uint64_t base, const LocalEntry *l);
/**
 * Add what path (and, when recursive or new, everything below it) needs.
 * Returns 1 when the whole subtree below path was covered, 0, or -errno.
 */
int plan_reconcile(Agent *a, Plan *p, const char *path, bool recursive);
/** Free the first k ops (answered) and move the rest to the front. */
void plan_drop_done(Plan *p, size_t k);
/**
 * Plan up to slice more ops (a directory is never split) from the
 * directories left for later. One whose parent is neither recorded nor
 * being made goes to the agent's dirty list. Returns 0 or -errno.
 */
int plan_more(Agent *a, Plan *p, size_t slice);
/** Hand what is still left for later to the agent's dirty list. */
void plan_requeue_later(Agent *a, Plan *p);
/** Does the manifest record path (agreed with the server)? */
bool plan_known(Agent *a, const char *path);
/** qsort() order in which a directory's descendants directly follow it. */
int plan_path_cmp(const void *x, const void *y);
