/* chunk-store.h - an account's chunks by SHA-256, each kept once
 *
 * Where kept versions of big files live once cut into content-defined
 * chunks (store.c decides which): a chunk is a file
 * STORAGE/<ID>/chunks/<2 hex>/<64 hex> holding exactly its bytes. Narrow
 * on purpose (put, get, has, remove, list by hash) so that an object
 * store can implement it. Chunks are not counted: what no recipe names
 * is removed by the sweep that follows pruning (store_gc_*()).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bs-proto.h"

typedef struct ChunkStore ChunkStore;

/** Open (and create) the chunk store in the account directory dir_fd. */
int chunk_store_open(int dir_fd, ChunkStore **ret);
/** Close the store, dropping puts not committed; NULL. */
ChunkStore *chunk_store_free(ChunkStore *c);
static inline void chunk_store_freep(ChunkStore **c) { if (*c) chunk_store_free(*c); }

/**
 * Stage chunk sha, n bytes at p, unless the store has it: 0 when staged,
 * 1 when kept or staged already. A staged chunk is neither visible nor
 * durable before chunk_store_commit().
 */
int chunk_put(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], const void *p, size_t n);
/** Make every staged chunk durable and visible: sync, rename, sync. */
int chunk_store_commit(ChunkStore *c);
/** Drop every staged chunk. */
void chunk_store_abort(ChunkStore *c);

/** Read chunk sha into buf: exactly n bytes, or -ENOENT (none), -EBADMSG (another size). */
int chunk_get(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], void *buf, size_t n);
/** Whether chunk sha is kept (with size bytes, when size is not UINT64_MAX). */
bool chunk_has(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], uint64_t size);
/** Forget chunk sha: 0, -ENOENT, or -errno; *freed the disk space it took. */
int chunk_remove(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], uint64_t *freed);

typedef int (*chunk_list_fn)(void *userdata, const uint8_t sha[BS_SHA_LEN], uint64_t size, uint64_t disk);
/**
 * Call fn for each chunk whose hash starts with byte fan, with its size
 * and the disk space it takes; also removes what an interrupted put left.
 */
int chunk_list(ChunkStore *c, unsigned fan, chunk_list_fn fn, void *userdata);
