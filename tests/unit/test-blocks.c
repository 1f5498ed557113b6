/* test-blocks.c - unit tests for common/bs-blocks.[ch]: chunk lists and their index */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-blocks.h"
#include "bs-chunk.h"

static uint8_t *pattern(size_t n, uint32_t seed) {
        uint8_t *p = malloc(n + 1);
        cr_assert_not_null(p);
        for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                p[i] = (uint8_t) (seed >> 16);
        }
        return p;
}

static BsBlocks *list_in_pieces(const uint8_t *p, size_t n, size_t piece) {
        BsBlocks *b;
        cr_assert_eq(bs_blocks_new(&b), 0);
        for (size_t off = 0; off < n; off += piece)
                cr_assert_eq(bs_blocks_update(b, p + off, piece < n - off ? piece : n - off), 0);
        cr_assert_eq(bs_blocks_final(b), 0);
        return b;
}

/* How many chunks of after the index of before does not find. */
static size_t unmatched(const BsBlocks *before, const BsBlocks *after) {
        size_t c1, c2, missing = 0;
        const uint8_t *r1 = bs_blocks_recs(before, &c1), *r2 = bs_blocks_recs(after, &c2);
        BsBlockMap *m;
        uint64_t off;
        cr_assert_eq(bs_block_map_new(&m, r1, c1), 0);
        for (size_t i = 0; i < c2; i++) {
                const uint8_t *r = r2 + i * BS_BLOCK_REC_LEN;
                missing += bs_block_map_find(m, bs_block_rec_len(r), r + 4, &off) < 0;
        }
        bs_block_map_free(m);
        return missing;
}

Test(blocks, pieces_of_any_size_give_the_same_list) {
        size_t n = 3 * 1024 * 1024 + 12345, count, count2;
        uint8_t *p = pattern(n, 1);
        BsBlocks *whole = list_in_pieces(p, n, n);
        const uint8_t *s = bs_blocks_recs(whole, &count);
        cr_assert_gt(count, 3 * 1024 * 1024 / BS_CHUNK_MAX);
        static const size_t pieces[] = { 7, 4096, 65535, BS_CHUNK_MAX, BS_CHUNK_MAX + 1, 1000000 };
        for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
                BsBlocks *b = list_in_pieces(p, n, pieces[i]);
                const uint8_t *t = bs_blocks_recs(b, &count2);
                cr_assert_eq(count2, count, "pieces of %zu", pieces[i]);
                cr_assert_eq(memcmp(s, t, count * BS_BLOCK_REC_LEN), 0, "pieces of %zu", pieces[i]);
                bs_blocks_free(b);
        }
        /* The records are the chunker's cuts over the whole file, each
         * with the fingerprint of its bytes, covering every byte. */
        BsChunker c;
        bs_chunker_init_default(&c);
        size_t off = 0;
        for (size_t i = 0; i < count; i++) {
                const uint8_t *r = s + i * BS_BLOCK_REC_LEN;
                uint8_t sum[BS_BLOCK_SUM_LEN];
                size_t len = bs_chunk_next(&c, p + off, n - off);
                cr_assert_eq(bs_block_rec_len(r), len, "chunk %zu", i);
                bs_block_sum(p + off, len, sum);
                cr_assert_eq(memcmp(sum, r + 4, BS_BLOCK_SUM_LEN), 0, "chunk %zu", i);
                off += len;
        }
        cr_assert_eq(off, n);
        bs_blocks_free(whole);
        free(p);
}

/* An edit costs the chunks around it, wherever it moves the bytes after it. */
static const struct Edit {
        const char *name;
        size_t at, del, ins;
} edits[] = {
        { "100 bytes inserted at the start", 0, 0, 100 },
        { "100 bytes inserted in the middle", 2 * 1024 * 1024, 0, 100 },
        { "1 byte inserted at the start", 0, 0, 1 },
        { "100 bytes deleted at the start", 0, 100, 0 },
        { "100 bytes deleted in the middle", 2 * 1024 * 1024, 100, 0 },
        { "4 KiB overwritten in the middle", 2 * 1024 * 1024, 4096, 4096 },
        { "64 KiB appended", 4 * 1024 * 1024, 0, 65536 },
};

Test(blocks, an_edit_changes_only_the_chunks_around_it) {
        size_t n = 4 * 1024 * 1024;
        uint8_t *p = pattern(n, 2), *ins = pattern(65536, 3);
        BsBlocks *before = list_in_pieces(p, n, 65536);
        for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
                const struct Edit *e = &edits[i];
                size_t m = n - e->del + e->ins;
                uint8_t *q = malloc(m);
                cr_assert_not_null(q);
                memcpy(q, p, e->at);
                memcpy(q + e->at, ins, e->ins);
                memcpy(q + e->at + e->ins, p + e->at + e->del, n - e->at - e->del);
                BsBlocks *after = list_in_pieces(q, m, 65536);
                size_t miss = unmatched(before, after), count;
                bs_blocks_recs(after, &count);
                /* The chunk holding the edit, and the one after when the
                 * edit moved a cut point; appended bytes also cut the last
                 * chunk, which ended at the end of the file, not where its
                 * content said, and may make one of their own. */
                cr_assert_leq(miss, e->at >= n ? 3 : 2, "%s: %zu of %zu chunks new", e->name, miss, count);
                cr_assert_geq(miss, 1, "%s: the edited chunk is new", e->name);
                bs_blocks_free(after);
                free(q);
        }
        bs_blocks_free(before);
        free(ins);
        free(p);
}

Test(blocks, the_map_finds_each_chunk_where_it_is) {
        size_t n = 2 * 1024 * 1024, count;
        uint8_t *p = pattern(n, 4);
        /* The same megabyte twice: the first of equal chunks is found. */
        memcpy(p + n / 2, p, n / 2);
        BsBlocks *b = list_in_pieces(p, n, n);
        const uint8_t *r = bs_blocks_recs(b, &count);
        BsBlockMap *m;
        uint64_t off = 0, got;
        cr_assert_eq(bs_block_map_new(&m, r, count), 0);
        for (size_t i = 0; i < count; i++) {
                const uint8_t *x = r + i * BS_BLOCK_REC_LEN;
                uint32_t len = bs_block_rec_len(x);
                cr_assert_eq(bs_block_map_find(m, len, x + 4, &got), 0);
                cr_assert_leq(got, off);
                cr_assert_eq(memcmp(p + got, p + off, len), 0, "chunk %zu found at %llu", i, (unsigned long long) got);
                cr_assert_eq(bs_block_map_find(m, len + 1, x + 4, &got), -ENOENT, "the length is part of the key");
                off += len;
        }
        uint8_t zero[BS_BLOCK_SUM_LEN] = { 0 };
        cr_assert_eq(bs_block_map_find(m, 65536, zero, &got), -ENOENT);
        bs_block_map_free(m);
        bs_blocks_free(b);
        free(p);
}

Test(blocks, lists_from_storage_are_checked) {
        uint8_t rec[2 * BS_BLOCK_REC_LEN] = { 0 };
        BsBlockMap *m = NULL;
        uint64_t off;
        cr_assert_eq(bs_block_map_new(&m, rec, 0), 0, "an empty list");
        cr_assert_eq(bs_block_map_find(m, 1, rec + 4, &off), -ENOENT);
        bs_block_map_free(m);
        cr_assert_eq(bs_block_map_new(&m, rec, 1), -EINVAL, "a chunk of no bytes");
        rec[0] = 0x01;
        rec[2] = 0x04; /* 256 KiB + 1 */
        cr_assert_eq(bs_block_map_new(&m, rec, 1), -EINVAL, "a chunk over the maximum");
        rec[0] = 0;
        cr_assert_eq(bs_block_map_new(&m, rec, 1), 0, "exactly the maximum");
        cr_assert_eq(bs_block_map_find(m, BS_CHUNK_MAX, rec + 4, &off), 0);
        cr_assert_eq(off, 0);
        bs_block_map_free(m);
        cr_assert_eq(bs_block_map_new(&m, rec, (size_t) BS_BLOCKS_MAX + 1), -EINVAL, "more than BS_BLOCKS_MAX");
}

Test(blocks, empty_and_capped) {
        BsBlocks *b;
        size_t count;
        uint8_t sum[BS_BLOCK_SUM_LEN] = { 0 };
        cr_assert_eq(bs_blocks_new(&b), 0);
        cr_assert_eq(bs_blocks_final(b), 0);
        bs_blocks_recs(b, &count);
        cr_assert_eq(count, 0, "an empty file has no chunks");
        for (size_t i = 0; i < BS_BLOCKS_MAX; i++)
                cr_assert_eq(bs_blocks_add(b, 1, sum), 0);
        cr_assert_eq(bs_blocks_add(b, 1, sum), -EFBIG, "never more than BS_BLOCKS_MAX");
        bs_blocks_recs(b, &count);
        cr_assert_eq(count, BS_BLOCKS_MAX);
        cr_assert_null(bs_blocks_free(b));
}

Test(blocks, a_small_file_is_one_chunk) {
        uint8_t *p = pattern(1000, 5);
        BsBlocks *b = list_in_pieces(p, 1000, 1);
        size_t count;
        const uint8_t *r = bs_blocks_recs(b, &count);
        cr_assert_eq(count, 1);
        cr_assert_eq(bs_block_rec_len(r), 1000);
        bs_blocks_free(b);
        free(p);
}
