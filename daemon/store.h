/* store.h - an account's content store: file contents kept by SHA-256
 *
 * The version store: what replaced and deleted files held, each content
 * once however many versions, paths or accounts' copies name it. Narrow
 * on purpose (put, get, has, remove by hash), so another implementation
 * (an object store) can take its place without touching the code that
 * decides what to keep. This one keeps plain files in
 * STORAGE/<ID>/content/<2 hex>/<64 hex> on the tree's file system, so
 * putting a file from the tree is a link or a rename; the pruning slices
 * later cut big ones into the chunk store (chunk-store.h), where each
 * chunk is kept once, and keep a recipe in their place.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "bs-proto.h"

typedef struct Store Store;

typedef enum StorePut {
        STORE_LINK, /* the file stays where it is (it is about to be replaced) */
        STORE_MOVE, /* the file leaves its place */
} StorePut;

/** Open (and create) the store in the account directory dir_fd. */
int store_open(int dir_fd, Store **ret);
/** Close the store; returns NULL. */
Store *store_free(Store *s);
static inline void store_freep(Store **s) { if (*s) store_free(*s); }

/**
 * Keep the file name in dfd as the content sha (which the caller vouches
 * for). Returns 0 when stored, 1 when the store had it already (a MOVE
 * still removes name), -ENOENT when there is no such file, or -errno.
 */
int store_put(Store *s, const uint8_t sha[BS_SHA_LEN], int dfd, const char *name, StorePut how);

/** Open content sha for reading: the fd, or -ENOENT when it is not kept with that size. */
int store_get(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t size);

/** Whether content sha is kept. */
bool store_has(Store *s, const uint8_t sha[BS_SHA_LEN]);

/** Forget content sha: 0, or -ENOENT when it was not kept, or -errno. The space it frees is *freed. */
int store_remove(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t *freed);

/** The disk space the kept contents take (not counting those the tree also links) and their number. */
int store_usage(Store *s, uint64_t *bytes, uint64_t *count);

/** Make every put since the last call durable (their directories synced). */
int store_sync(Store *s);

/* A content kept as a recipe of chunks: content/<2 hex>/<64 hex> and this. */
#define STORE_RECIPE_SUFFIX ".chunks"

/* How a content is kept (both while it is being cut into chunks). */
#define STORE_PLAIN 0x1
#define STORE_RECIPE 0x2

/** fn's answer: < 0 an error, 0 go on, > 0 stop (store_each() returns it). */
typedef int (*store_each_fn)(void *userdata, const uint8_t sha[BS_SHA_LEN], unsigned forms);
/**
 * Call fn once for each content kept whose hash starts with byte fan, in
 * hash order, with the forms it is kept in. 0, fn's answer, or -errno.
 */
int store_each(Store *s, unsigned fan, store_each_fn fn, void *userdata);

/* Kept contents from this size on are cut into the chunk store. */
#define STORE_PACK_MIN (1024u * 1024)

/**
 * Cut kept content sha into the chunk store, reading at most budget bytes
 * a call: 1 when there is more to do, 0 when done (or nothing to do: a
 * small content, one the tree links, one gone), -errno. The content stays
 * readable throughout and after a crash at any point.
 */
int store_pack_step(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t budget);

/**
 * The sweep of chunks no recipe names: begin collects what every recipe
 * names, each fan call removes the others whose hash starts with byte
 * fan (adding the space freed and their number), end lets go.
 */
int store_gc_begin(Store *s);
int store_gc_fan(Store *s, unsigned fan, uint64_t *freed, uint64_t *count);
void store_gc_end(Store *s);

typedef void (*store_check_fn)(void *userdata, const uint8_t sha[BS_SHA_LEN], const char *problem);
/**
 * Check every content kept as a recipe: each chunk there with its size,
 * and with hash_all each chunk's SHA-256 and the whole content's. The
 * number of problems reported, or -errno.
 */
int store_check(Store *s, bool hash_all, store_check_fn report, void *userdata);
