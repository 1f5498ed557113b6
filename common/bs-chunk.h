/* bs-chunk.h - content-defined chunking (FastCDC)
 *
 * Cuts a byte stream where its content says, not at fixed offsets, so an
 * insertion or deletion moves only the cut points near it and every other
 * chunk keeps its bytes (and its SHA-256). The method is FastCDC (Xia et
 * al., USENIX ATC 2016; IEEE TPDS 2020): a gear hash rolled over the
 * bytes, a stricter mask before the average size and a looser one after
 * it (normalized chunking, level 2), two bytes per step. The gear table
 * and the masks are part of the protocol: both sides must cut a file
 * identically, so they never change.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Sizes: see docs/sync-model.md for the measurement behind them. */
#define BS_CHUNK_MIN (16u * 1024)
#define BS_CHUNK_AVG (64u * 1024)
#define BS_CHUNK_MAX (256u * 1024)

typedef struct BsChunker {
        uint32_t min, avg, max;
        uint64_t mask_s, mask_l;       /* before / after the average size */
        uint64_t mask_s_ls, mask_l_ls; /* the same, shifted for the two-byte step */
} BsChunker;

/**
 * Set up a chunker for sizes min <= avg <= max (avg a power of two, at
 * least 256; min >= 64). -EINVAL otherwise. bs_chunker_init_default()
 * takes the protocol's sizes.
 */
int bs_chunker_init(BsChunker *c, uint32_t min, uint32_t avg, uint32_t max);
void bs_chunker_init_default(BsChunker *c);

/**
 * The length of the chunk that starts at p, of the n bytes available
 * there: where the content says, or n when n <= min (the end of the
 * data), or max. Call with all remaining bytes, or at least max of them
 * until the end: the cut never depends on bytes after max.
 */
size_t bs_chunk_next(const BsChunker *c, const uint8_t *p, size_t n);
