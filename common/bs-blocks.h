/* bs-blocks.h - a file's content-defined chunks and their fingerprints, for deltas
 *
 * A file is cut where its content says (bs-chunk.h, 16/64/256 KiB) and
 * each chunk gets a 128-bit XXH3 fingerprint. Both sides of a delta cut
 * alike, so a chunk that moved (bytes inserted or deleted before it)
 * still matches. A fingerprint only picks what to send: the receiver
 * checks the whole result against its SHA-256, so a collision costs a
 * retry, never a wrong file.
 *
 * A list is kept as records of BS_BLOCK_REC_LEN bytes: the chunk's
 * length (u32, little-endian) and its fingerprint. Offsets are the sums
 * of the lengths before.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define BS_BLOCK_SUM_LEN 16u
#define BS_BLOCK_REC_LEN (4u + BS_BLOCK_SUM_LEN)
/* 4 Mi chunks: 256 GiB at the average size, 80 MiB of records. A bigger
 * file is sent whole. */
#define BS_BLOCKS_MAX (4u * 1024 * 1024)
/* Smaller files are sent whole: fingerprints would cost more than they save. */
#define BS_DELTA_MIN (1024u * 1024)

typedef struct BsBlocks BsBlocks;
typedef struct BsBlockMap BsBlockMap;

/** Fingerprint of one whole chunk held in memory. */
void bs_block_sum(const void *p, size_t n, uint8_t out[BS_BLOCK_SUM_LEN]);

/** An empty list; -ENOMEM on failure. */
int bs_blocks_new(BsBlocks **ret);
BsBlocks *bs_blocks_free(BsBlocks *b);
static inline void bs_blocks_freep(BsBlocks **b) { if (*b) bs_blocks_free(*b); }
/**
 * Feed the next n bytes of the file, in any pieces: the list cuts them
 * itself (holding at most BS_CHUNK_MAX bytes back). -EFBIG past
 * BS_BLOCKS_MAX chunks. Not to be mixed with bs_blocks_add().
 */
int bs_blocks_update(BsBlocks *b, const void *p, size_t n);
/** Add the next chunk, cut and fingerprinted by the caller. */
int bs_blocks_add(BsBlocks *b, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN]);
/** Cut what bs_blocks_update() held back. Then the list is complete. */
int bs_blocks_final(BsBlocks *b);
/** The records so far: count * BS_BLOCK_REC_LEN bytes. */
const uint8_t *bs_blocks_recs(const BsBlocks *b, size_t *count);

/** The length in a record. */
uint32_t bs_block_rec_len(const uint8_t *rec);

/**
 * An index of a list's chunks by fingerprint (count records, copied).
 * -EINVAL for a record of length 0 or more than BS_CHUNK_MAX, or lengths
 * summing past UINT64_MAX: lists come from storage and the network.
 */
int bs_block_map_new(BsBlockMap **ret, const uint8_t *recs, size_t count);
BsBlockMap *bs_block_map_free(BsBlockMap *m);
static inline void bs_block_map_freep(BsBlockMap **m) { if (*m) bs_block_map_free(*m); }
/** Where a chunk of len bytes and this fingerprint starts in the list's file; -ENOENT: nowhere. */
int bs_block_map_find(const BsBlockMap *m, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN], uint64_t *off);
