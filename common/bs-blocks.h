/* bs-blocks.h - per-block fingerprints of a file's content, for delta uploads
 *
 * A file is cut into blocks of one size (64 KiB, doubled for big files so
 * that a file never has more than BS_BLOCKS_MAX of them) and each block
 * gets a 128-bit XXH3 fingerprint. An agent keeps the fingerprints of the
 * content it last agreed on with the server and sends only the blocks
 * whose fingerprint changed. A fingerprint only picks what to send: the
 * server checks the whole result against its SHA-256, so a collision
 * costs a retry, never a wrong file.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define BS_BLOCK_MIN (64u * 1024)
#define BS_BLOCKS_MAX 16384u
#define BS_BLOCK_SUM_LEN 16u
/* Smaller files are sent whole: fingerprints would cost more than they save. */
#define BS_DELTA_MIN (1024u * 1024)

typedef struct BsBlocks BsBlocks;

/** The block size for a file of size bytes. */
uint32_t bs_block_size(uint64_t size);
/** The number of blocks of a file of size bytes cut into blocks of block bytes. */
uint64_t bs_block_count(uint64_t size, uint32_t block);
/** Fingerprint of one whole block held in memory. */
void bs_block_sum(const void *p, size_t n, uint8_t out[BS_BLOCK_SUM_LEN]);

/** Start fingerprinting a file of (expected) size bytes; -ENOMEM on failure. */
int bs_blocks_new(BsBlocks **ret, uint64_t size);
BsBlocks *bs_blocks_free(BsBlocks *b);
static inline void bs_blocks_freep(BsBlocks **b) { if (*b) bs_blocks_free(*b); }
/** Feed the next n bytes of the file, in any pieces. -EFBIG past BS_BLOCKS_MAX blocks. */
int bs_blocks_update(BsBlocks *b, const void *p, size_t n);
/** Add the fingerprint of the next whole block, computed elsewhere (bs_block_sum()). */
int bs_blocks_add(BsBlocks *b, const uint8_t sum[BS_BLOCK_SUM_LEN]);
/** Close the last, partial block. Then the sums are complete. */
int bs_blocks_final(BsBlocks *b);
uint32_t bs_blocks_block(const BsBlocks *b);
/** The fingerprints so far: count * BS_BLOCK_SUM_LEN bytes. */
const uint8_t *bs_blocks_sums(const BsBlocks *b, size_t *count);
