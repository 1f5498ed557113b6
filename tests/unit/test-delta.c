/* test-delta.c - unit tests for common/bs-delta.[ch]: a file as COPY and DATA pieces */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-delta.h"
#include "bs-proto.h"
#include "test-util.h"

#define MiB (1024u * 1024)

static uint8_t *pattern(size_t n, uint64_t seed) {
        uint8_t *p = malloc(n + 1);
        cr_assert_not_null(p);
        test_fill(p, n, seed);
        return p;
}

/* The receiver: one content it holds, indexed by its chunk list. */
typedef struct Holder {
        const uint8_t *base;
        size_t n;
        BsBlockMap *map;
        uint8_t sha[BS_SHA_LEN];
        size_t asked;
} Holder;

static bool holder_find(void *userdata, const uint8_t *p, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN],
                        uint8_t sha[BS_SHA_LEN], uint64_t *off) {
        Holder *h = userdata;
        h->asked++;
        if (!h->map || bs_block_map_find(h->map, len, sum, off) < 0 || memcmp(h->base + *off, p, len) != 0)
                return false;
        memcpy(sha, h->sha, BS_SHA_LEN);
        return true;
}

static void holder_init(Holder *h, const uint8_t *base, size_t n) {
        BsBlocks *b;
        size_t count;
        *h = (Holder) { .base = base, .n = n };
        memset(h->sha, 0xab, BS_SHA_LEN);
        cr_assert_eq(bs_blocks_new(&b), 0);
        cr_assert_eq(bs_blocks_update(b, base, n), 0);
        cr_assert_eq(bs_blocks_final(b), 0);
        const uint8_t *recs = bs_blocks_recs(b, &count);
        cr_assert_eq(bs_block_map_new(&h->map, recs, count), 0);
        bs_blocks_free(b);
}

typedef struct Result {
        uint8_t *out;
        size_t len, data, copies, datas;
} Result;

/* Send file (n bytes) read in pieces of piece bytes; rebuild it from the pieces. */
static Result send_file(Holder *h, const uint8_t *file, size_t n, size_t piece) {
        BsDelta d;
        BsDeltaPiece x;
        Result res = { .out = malloc(n + 1) };
        cr_assert_not_null(res.out);
        cr_assert_eq(bs_delta_init(&d, n, true), 0);
        size_t fed = 0;
        for (;;) {
                int r = bs_delta_next(&d, holder_find, h, &x);
                cr_assert_geq(r, 0);
                if (r == 0) {
                        size_t want;
                        uint8_t *p = bs_delta_space(&d, &want);
                        if (want == 0)
                                break;
                        want = want < piece ? want : piece;
                        memcpy(p, file + fed, want);
                        bs_delta_fed(&d, want);
                        fed += want;
                        continue;
                }
                cr_assert_leq(res.len + x.len, n, "pieces past the end of the file");
                if (x.kind == BS_DELTA_COPY) {
                        cr_assert_eq(memcmp(x.sha, h->sha, BS_SHA_LEN), 0);
                        cr_assert_leq(x.off + x.len, h->n);
                        cr_assert_leq(x.len, BS_COPY_MAX);
                        memcpy(res.out + res.len, h->base + x.off, x.len);
                        res.copies++;
                } else {
                        cr_assert_leq(x.len, BS_CHUNK_MAX, "DATA is one chunk");
                        memcpy(res.out + res.len, x.data, x.len);
                        res.data += x.len;
                        res.datas++;
                }
                res.len += x.len;
        }
        cr_assert(bs_delta_complete(&d));
        BsBlocks *list = bs_delta_steal_list(&d);
        cr_assert_not_null(list, "the chunk list was kept");
        size_t count, total = 0;
        const uint8_t *recs = bs_blocks_recs(list, &count);
        for (size_t i = 0; i < count; i++)
                total += bs_block_rec_len(recs + i * BS_BLOCK_REC_LEN);
        cr_assert_eq(total, n, "the list covers the file");
        bs_blocks_free(list);
        bs_delta_done(&d);
        cr_assert_eq(res.len, n);
        cr_assert_eq(memcmp(res.out, file, n), 0, "the pieces rebuild the file");
        return res;
}

static const struct Case {
        const char *name;
        size_t at, del, ins;
        size_t max_data, max_copies;
} cases[] = {
        { "unchanged", 0, 0, 0, 0, 1 },
        { "100 bytes inserted at the start", 0, 0, 100, 2 * BS_CHUNK_MAX, 2 },
        { "100 bytes inserted in the middle", 3 * MiB, 0, 100, 2 * BS_CHUNK_MAX, 3 },
        { "1000 bytes deleted in the middle", 3 * MiB, 1000, 0, 2 * BS_CHUNK_MAX, 3 },
        { "1 MiB overwritten in the middle", 2 * MiB, MiB, MiB, MiB + 2 * BS_CHUNK_MAX, 3 },
};

Test(delta, edits_rebuild_from_copies_and_a_few_chunks) {
        size_t n = 6 * MiB;
        uint8_t *base = pattern(n, 7), *ins = pattern(MiB, 8);
        Holder h;
        holder_init(&h, base, n);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const struct Case *c = &cases[i];
                size_t m = n - c->del + c->ins;
                uint8_t *file = malloc(m);
                cr_assert_not_null(file);
                memcpy(file, base, c->at);
                memcpy(file + c->at, ins, c->ins);
                memcpy(file + c->at + c->ins, base + c->at + c->del, n - c->at - c->del);
                static const size_t pieces[] = { 4096, 100000, BS_CHUNK, 8 * MiB };
                for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k++) {
                        Result r = send_file(&h, file, m, pieces[k]);
                        cr_assert_leq(r.data, c->max_data, "%s: %zu bytes of DATA", c->name, r.data);
                        /* Found chunks one after another merge into one COPY. */
                        cr_assert_leq(r.copies, c->max_copies, "%s: %zu COPY pieces", c->name, r.copies);
                        free(r.out);
                }
                free(file);
        }
        bs_block_map_free(h.map);
        free(ins);
        free(base);
}

Test(delta, a_copy_is_one_copy_per_16_mib) {
        size_t n = 40 * MiB;
        uint8_t *base = pattern(n, 9);
        Holder h;
        holder_init(&h, base, n);
        Result r = send_file(&h, base, n, BS_CHUNK);
        cr_assert_eq(r.data, 0);
        cr_assert_eq(r.copies, 3, "40 MiB: COPY pieces of at most 16 MiB, got %zu", r.copies);
        free(r.out);
        bs_block_map_free(h.map);
        free(base);
}

Test(delta, nothing_held_is_all_data) {
        size_t n = 3 * MiB + 17;
        uint8_t *file = pattern(n, 10);
        Holder h = { 0 };
        Result r = send_file(&h, file, n, 65536);
        cr_assert_eq(r.data, n);
        cr_assert_eq(r.copies, 0);
        cr_assert_eq(h.asked, r.datas, "each chunk looked up once");
        free(r.out);
        free(file);
}

Test(delta, an_empty_file_is_complete_at_once) {
        BsDelta d;
        BsDeltaPiece x;
        Holder h = { 0 };
        size_t want;
        cr_assert_eq(bs_delta_init(&d, 0, false), 0);
        cr_assert_eq(bs_delta_next(&d, holder_find, &h, &x), 0);
        bs_delta_space(&d, &want);
        cr_assert_eq(want, 0);
        cr_assert(bs_delta_complete(&d));
        cr_assert_null(bs_delta_steal_list(&d), "no list asked for");
        bs_delta_done(&d);
}
