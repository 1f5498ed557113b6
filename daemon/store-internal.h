/* store-internal.h - the content store's state, shared by store.c, store-chunks.c and store-front.c */
#pragma once

#include <string.h>

#include "bs-chunk.h"
#include "bs-hash.h"
#include "chunk-store.h"
#include "store.h"

#define STORE_NAME_LEN (2 + 1 + 2 * BS_SHA_LEN) /* "ab/abcd..." */
#define STORE_RECIPE_NAME_LEN (STORE_NAME_LEN + 7) /* "ab/abcd....chunks" */

/* A content being cut into the chunk store, a budget at a time. */
typedef struct StorePack {
        bool active;
        uint8_t sha[BS_SHA_LEN];
        int fd;
        uint64_t off, size;
        BsChunker chunker;
        uint8_t *buf; /* read but not yet cut: buf[start, end) */
        size_t start, end;
        uint8_t *recipe; /* the entries so far */
        size_t n, cap;
} StorePack;

struct Store {
        int fd;              /* content/ */
        uint8_t dirty[32];   /* fan-out directories with new names, a bit each */
        unsigned n_dirty;
        bool top_dirty;      /* a fan-out directory was created */
        ChunkStore *chunks;
        StorePack pack;
        uint8_t *gc_refs;    /* store_gc_begin(): every chunk a recipe names, sorted */
        size_t n_gc_refs;
        /* Chunks may be left that no recipe names: a recipe was removed,
         * a pack dropped, or a crash (so: since the store was opened). */
        bool gc_needed, gc_running;
};

/** "ab/abcd...": the fan-out directory is the first byte. */
static inline void store_content_name(const uint8_t sha[BS_SHA_LEN], char out[STORE_NAME_LEN + 1]) {
        bs_hex(sha, 1, out);
        out[2] = '/';
        bs_hex(sha, BS_SHA_LEN, out + 3);
}

/** "ab/abcd....chunks": where content sha's recipe is. */
static inline void store_recipe_name(const uint8_t sha[BS_SHA_LEN], char out[STORE_RECIPE_NAME_LEN + 1]) {
        store_content_name(sha, out);
        memcpy(out + STORE_NAME_LEN, STORE_RECIPE_SUFFIX, sizeof(STORE_RECIPE_SUFFIX));
}

/** A fan-out directory got or lost a name: store_sync() syncs it. */
static inline void store_mark_dirty(Store *s, uint8_t fan) {
        if (!(s->dirty[fan / 8] & (1u << (fan % 8)))) {
                s->dirty[fan / 8] |= (uint8_t) (1u << (fan % 8));
                s->n_dirty++;
        }
}

/** Let go of a pack that ended, or was dropped: its file, buffers and recipe. */
void store_pack_reset(Store *s);
/** Drop a pack in progress. */
void store_pack_abort(Store *s);

/* store-chunks.c's, for store-front.c. */

/** Rebuild a content kept as a recipe into an unnamed file: its fd, -ENOENT, -EIO (chunks lost). */
int store_get_chunked(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t size);
/** The disk space of the chunk store. */
uint64_t store_chunks_usage(Store *s);
