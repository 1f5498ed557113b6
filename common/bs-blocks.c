/* bs-blocks.c - per-block XXH3-128 fingerprints (libxxhash)
 *
 * XXH3 rather than SHA-256: the fingerprints are computed over every byte
 * of a big file on top of its SHA-256, and XXH3 costs a small fraction of
 * it; they need no strength against an attacker (see bs-blocks.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bs-blocks.h"

struct BsBlocks {
        uint32_t block;
        uint32_t fill; /* bytes of the current block fed so far */
        size_t n, cap;
        uint8_t *sums;
        XXH3_state_t *st;
};

uint32_t bs_block_size(uint64_t size) {
        uint32_t block = BS_BLOCK_MIN;
        while (bs_block_count(size, block) > BS_BLOCKS_MAX && block < (1u << 30))
                block *= 2;
        return block;
}

uint64_t bs_block_count(uint64_t size, uint32_t block) {
        return block ? size / block + (size % block != 0) : 0;
}

void bs_block_sum(const void *p, size_t n, uint8_t out[BS_BLOCK_SUM_LEN]) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(p, n));
        memcpy(out, c.digest, BS_BLOCK_SUM_LEN);
}

int bs_blocks_new(BsBlocks **ret, uint64_t size) {
        BsBlocks *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->block = bs_block_size(size);
        b->st = XXH3_createState();
        if (!b->st || XXH3_128bits_reset(b->st) != XXH_OK) {
                bs_blocks_free(b);
                return -ENOMEM;
        }
        *ret = b;
        return 0;
}

BsBlocks *bs_blocks_free(BsBlocks *b) {
        if (b) {
                XXH3_freeState(b->st);
                free(b->sums);
                free(b);
        }
        return NULL;
}

int bs_blocks_add(BsBlocks *b, const uint8_t sum[BS_BLOCK_SUM_LEN]) {
        if (b->n >= BS_BLOCKS_MAX)
                return -EFBIG;
        if (b->n == b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 64;
                uint8_t *v = realloc(b->sums, cap * BS_BLOCK_SUM_LEN);
                if (!v)
                        return -ENOMEM;
                b->sums = v;
                b->cap = cap;
        }
        memcpy(b->sums + b->n++ * BS_BLOCK_SUM_LEN, sum, BS_BLOCK_SUM_LEN);
        return 0;
}

/* Close the block being fed and start the next. */
static int end_block(BsBlocks *b) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(b->st));
        b->fill = 0;
        if (XXH3_128bits_reset(b->st) != XXH_OK)
                return -ENOMEM;
        return bs_blocks_add(b, c.digest);
}

int bs_blocks_update(BsBlocks *b, const void *p, size_t n) {
        const uint8_t *q = p;
        while (n > 0) {
                size_t take = b->block - b->fill;
                if (take > n)
                        take = n;
                if (XXH3_128bits_update(b->st, q, take) != XXH_OK)
                        return -EIO;
                b->fill += (uint32_t) take;
                q += take;
                n -= take;
                if (b->fill == b->block) {
                        int r = end_block(b);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

int bs_blocks_final(BsBlocks *b) {
        return b->fill > 0 ? end_block(b) : 0;
}

uint32_t bs_blocks_block(const BsBlocks *b) {
        return b->block;
}

const uint8_t *bs_blocks_sums(const BsBlocks *b, size_t *count) {
        *count = b->n;
        return b->sums;
}
