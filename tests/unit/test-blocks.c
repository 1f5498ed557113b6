/* test-blocks.c - unit tests for common/bs-blocks.[ch]: per-block fingerprints */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-blocks.h"

static uint8_t *pattern(size_t n, uint32_t seed) {
        uint8_t *p = malloc(n);
        cr_assert_not_null(p);
        for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                p[i] = (uint8_t) (seed >> 16);
        }
        return p;
}

static BsBlocks *sums_in_pieces(const uint8_t *p, size_t n, size_t piece) {
        BsBlocks *b;
        cr_assert_eq(bs_blocks_new(&b, n), 0);
        for (size_t off = 0; off < n; off += piece)
                cr_assert_eq(bs_blocks_update(b, p + off, piece < n - off ? piece : n - off), 0);
        cr_assert_eq(bs_blocks_final(b), 0);
        return b;
}

Test(blocks, block_size_keeps_the_count_bounded) {
        cr_assert_eq(bs_block_size(0), BS_BLOCK_MIN);
        cr_assert_eq(bs_block_size(1), BS_BLOCK_MIN);
        cr_assert_eq(bs_block_size((uint64_t) BS_BLOCK_MIN * BS_BLOCKS_MAX), BS_BLOCK_MIN, "1 GiB: 16384 blocks of 64 KiB");
        cr_assert_eq(bs_block_size((uint64_t) BS_BLOCK_MIN * BS_BLOCKS_MAX + 1), 2 * BS_BLOCK_MIN);
        cr_assert_eq(bs_block_size(100ull << 30), 8u << 20, "100 GiB: 8 MiB blocks");
        for (uint64_t size = 1; size < (1ull << 44); size = size * 3 + 7)
                cr_assert_leq(bs_block_count(size, bs_block_size(size)), BS_BLOCKS_MAX, "size %llu",
                              (unsigned long long) size);
        cr_assert_eq(bs_block_count(0, BS_BLOCK_MIN), 0);
        cr_assert_eq(bs_block_count(1, BS_BLOCK_MIN), 1);
        cr_assert_eq(bs_block_count(BS_BLOCK_MIN, BS_BLOCK_MIN), 1);
        cr_assert_eq(bs_block_count(BS_BLOCK_MIN + 1, BS_BLOCK_MIN), 2);
}

Test(blocks, pieces_of_any_size_give_the_same_sums) {
        size_t n = 5 * BS_BLOCK_MIN + 12345, count, count2;
        uint8_t *p = pattern(n, 1);
        BsBlocks *whole = sums_in_pieces(p, n, n);
        const uint8_t *s = bs_blocks_sums(whole, &count);
        cr_assert_eq(count, 6, "five whole blocks and a partial one");
        cr_assert_eq(bs_blocks_block(whole), BS_BLOCK_MIN);
        static const size_t pieces[] = { 1, 7, 4096, BS_BLOCK_MIN - 1, BS_BLOCK_MIN, BS_BLOCK_MIN + 1, 3 * BS_BLOCK_MIN };
        for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
                if (pieces[i] == 1 && n > 100000) {
                        /* Byte by byte is slow but must agree too: check a shorter file. */
                        size_t m = BS_BLOCK_MIN + 10, c1, c2;
                        BsBlocks *x = sums_in_pieces(p, m, m), *y = sums_in_pieces(p, m, 1);
                        const uint8_t *sx = bs_blocks_sums(x, &c1), *sy = bs_blocks_sums(y, &c2);
                        cr_assert_eq(c1, 2);
                        cr_assert_eq(c2, 2);
                        cr_assert_eq(memcmp(sx, sy, 2 * BS_BLOCK_SUM_LEN), 0);
                        bs_blocks_free(x);
                        bs_blocks_free(y);
                        continue;
                }
                BsBlocks *b = sums_in_pieces(p, n, pieces[i]);
                const uint8_t *t = bs_blocks_sums(b, &count2);
                cr_assert_eq(count2, count, "pieces of %zu", pieces[i]);
                cr_assert_eq(memcmp(s, t, count * BS_BLOCK_SUM_LEN), 0, "pieces of %zu", pieces[i]);
                bs_blocks_free(b);
        }
        /* A block summed on its own is the same as one fed in pieces. */
        uint8_t one[BS_BLOCK_SUM_LEN];
        bs_block_sum(p + 2 * BS_BLOCK_MIN, BS_BLOCK_MIN, one);
        cr_assert_eq(memcmp(one, s + 2 * BS_BLOCK_SUM_LEN, BS_BLOCK_SUM_LEN), 0);
        bs_block_sum(p + 5 * BS_BLOCK_MIN, 12345, one);
        cr_assert_eq(memcmp(one, s + 5 * BS_BLOCK_SUM_LEN, BS_BLOCK_SUM_LEN), 0, "the last, partial block");
        bs_blocks_free(whole);
        free(p);
}

Test(blocks, an_edit_changes_only_its_blocks) {
        size_t n = 8 * BS_BLOCK_MIN, c1, c2;
        uint8_t *p = pattern(n, 2);
        BsBlocks *before = sums_in_pieces(p, n, 65536);
        p[3 * BS_BLOCK_MIN + 17] ^= 1;
        BsBlocks *after = sums_in_pieces(p, n, 65536);
        const uint8_t *a = bs_blocks_sums(before, &c1), *b = bs_blocks_sums(after, &c2);
        cr_assert_eq(c1, 8);
        cr_assert_eq(c2, 8);
        for (size_t i = 0; i < 8; i++) {
                bool same = memcmp(a + i * BS_BLOCK_SUM_LEN, b + i * BS_BLOCK_SUM_LEN, BS_BLOCK_SUM_LEN) == 0;
                cr_assert_eq(same, i != 3, "block %zu", i);
        }
        bs_blocks_free(before);
        bs_blocks_free(after);
        free(p);
}

Test(blocks, empty_and_capped) {
        BsBlocks *b;
        size_t count;
        uint8_t sum[BS_BLOCK_SUM_LEN] = { 0 };
        cr_assert_eq(bs_blocks_new(&b, 0), 0);
        cr_assert_eq(bs_blocks_final(b), 0);
        bs_blocks_sums(b, &count);
        cr_assert_eq(count, 0, "an empty file has no blocks");
        for (size_t i = 0; i < BS_BLOCKS_MAX; i++)
                cr_assert_eq(bs_blocks_add(b, sum), 0);
        cr_assert_eq(bs_blocks_add(b, sum), -EFBIG, "never more than BS_BLOCKS_MAX");
        bs_blocks_sums(b, &count);
        cr_assert_eq(count, BS_BLOCKS_MAX);
        cr_assert_null(bs_blocks_free(b));
}
