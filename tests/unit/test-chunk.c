/* test-chunk.c - content-defined chunking: known cuts, sizes, stability under edits */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-chunk.h"
#include "bs-hash.h"

/* xorshift64*: test data anyone can regenerate. */
static void fill(uint8_t *p, size_t n, uint64_t seed) {
        uint64_t x = seed;
        for (size_t i = 0; i < n; i++) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                p[i] = (uint8_t) ((x * 0x2545F4914F6CDD1DULL) >> 56);
        }
}

/* Cut p into chunks; returns how many, their ends in ends[]. */
static size_t cut(const BsChunker *c, const uint8_t *p, size_t n, size_t *ends, size_t cap) {
        size_t k = 0, off = 0;
        while (off < n) {
                size_t len = bs_chunk_next(c, p + off, n - off);
                cr_assert_gt(len, 0);
                off += len;
                cr_assert_lt(k, cap);
                ends[k++] = off;
        }
        return k;
}

/*
 * The cut points of 1 MiB of seed-1 data with the protocol's sizes. Both
 * sides of a connection must cut alike, and so must every later version:
 * a change here is a protocol change.
 */
Test(chunk, known_vector) {
        static const size_t want[] = { 69258, 112756, 179934, 270392, 354101, 426988, 529630,
                                       599957, 678273, 770642, 856717, 971958, 1001348, 1048576 };
        size_t n = 1u << 20, ends[64];
        uint8_t *p = malloc(n);
        BsChunker c;

        cr_assert_not_null(p);
        fill(p, n, 1);
        bs_chunker_init_default(&c);
        size_t k = cut(&c, p, n, ends, 64);
        cr_assert_eq(k, sizeof(want) / sizeof(want[0]), "%zu chunks", k);
        for (size_t i = 0; i < k; i++)
                cr_assert_eq(ends[i], want[i], "cut %zu at %zu, want %zu", i, ends[i], want[i]);
        free(p);
}

Test(chunk, sizes_respected) {
        size_t n = 32u << 20, ends[4096];
        uint8_t *p = malloc(n);
        BsChunker c;

        cr_assert_not_null(p);
        fill(p, n, 7);
        bs_chunker_init_default(&c);
        size_t k = cut(&c, p, n, ends, 4096);
        for (size_t i = 0; i + 1 < k; i++) {
                size_t len = ends[i] - (i ? ends[i - 1] : 0);
                cr_assert(len >= BS_CHUNK_MIN && len <= BS_CHUNK_MAX, "chunk %zu: %zu bytes", i, len);
        }
        double mean = (double) n / (double) k;
        cr_assert(mean > BS_CHUNK_AVG * 0.75 && mean < BS_CHUNK_AVG * 1.25, "mean chunk %.0f bytes", mean);

        /* No content to cut at (all zeros): max-size chunks. */
        memset(p, 0, 4u << 20);
        k = cut(&c, p, 4u << 20, ends, 4096);
        cr_assert_eq(k, (4u << 20) / BS_CHUNK_MAX);
        /* Less than min: one chunk of it all. */
        cr_assert_eq(bs_chunk_next(&c, p, BS_CHUNK_MIN), BS_CHUNK_MIN);
        cr_assert_eq(bs_chunk_next(&c, p, 1), 1);
        free(p);
}

/* A cut never looks past max: handing over only max bytes cuts alike. */
Test(chunk, cut_within_max) {
        size_t n = 8u << 20;
        uint8_t *p = malloc(n);
        BsChunker c;

        cr_assert_not_null(p);
        fill(p, n, 3);
        bs_chunker_init_default(&c);
        for (size_t off = 0; off + BS_CHUNK_MAX < n;) {
                size_t a = bs_chunk_next(&c, p + off, n - off), b = bs_chunk_next(&c, p + off, BS_CHUNK_MAX);
                cr_assert_eq(a, b, "at %zu", off);
                off += a;
        }
        free(p);
}

typedef struct Edit {
        char what[32];
        size_t at, del, ins;
} Edit;

ParameterizedTestParameters(chunk, edits_move_few_cuts) {
        static Edit edits[] = {
                { "insert 100 at 0", 0, 0, 100 },
                { "insert 100 in the middle", 8u << 20, 0, 100 },
                { "insert 1 near the end", (16u << 20) - 5000, 0, 1 },
                { "delete 100 at 0", 0, 100, 0 },
                { "delete 70000 in the middle", 5u << 20, 70000, 0 },
                { "overwrite 1 MiB", 3u << 20, 1u << 20, 1u << 20 },
                { "append 1000", 16u << 20, 0, 1000 },
        };
        return cr_make_param_array(Edit, edits, sizeof(edits) / sizeof(edits[0]));
}

/* Every chunk of the edited data is one of the original's, except those
 * the edit touches: at most the edited bytes plus two chunks either side. */
ParameterizedTest(Edit *e, chunk, edits_move_few_cuts) {
        size_t n = 16u << 20, ends_a[1024], ends_b[1024];
        uint8_t *a = malloc(n), *b = malloc(n + e->ins);
        uint8_t (*sha_a)[BS_SHA_LEN] = malloc(1024 * BS_SHA_LEN);
        BsChunker c;

        cr_assert(a && b && sha_a);
        fill(a, n, 11);
        memcpy(b, a, e->at);
        fill(b + e->at, e->ins, 99);
        memcpy(b + e->at + e->ins, a + e->at + e->del, n - e->at - e->del);
        size_t m = n - e->del + e->ins;
        bs_chunker_init_default(&c);
        size_t ka = cut(&c, a, n, ends_a, 1024), kb = cut(&c, b, m, ends_b, 1024);
        for (size_t i = 0; i < ka; i++) {
                size_t s = i ? ends_a[i - 1] : 0;
                cr_assert_eq(bs_sha_buf(a + s, ends_a[i] - s, sha_a[i]), 0);
        }
        size_t new_bytes = 0;
        for (size_t i = 0; i < kb; i++) {
                size_t s = i ? ends_b[i - 1] : 0;
                uint8_t sha[BS_SHA_LEN];
                bool known = false;
                cr_assert_eq(bs_sha_buf(b + s, ends_b[i] - s, sha), 0);
                for (size_t j = 0; j < ka && !known; j++)
                        known = memcmp(sha, sha_a[j], BS_SHA_LEN) == 0;
                if (!known)
                        new_bytes += ends_b[i] - s;
        }
        cr_assert_leq(new_bytes, e->ins + 4 * BS_CHUNK_MAX, "%s: %zu bytes in new chunks", e->what, new_bytes);
        cr_assert_gt(new_bytes, 0, "%s: the edit must show", e->what);
        free(a);
        free(b);
        free(sha_a);
}

Test(chunk, bad_sizes) {
        BsChunker c;
        cr_assert_eq(bs_chunker_init(&c, 1024, 3000, 8192), -EINVAL, "avg not a power of two");
        cr_assert_eq(bs_chunker_init(&c, 4096, 2048, 8192), -EINVAL, "min above avg");
        cr_assert_eq(bs_chunker_init(&c, 1024, 8192, 4096), -EINVAL, "max below avg");
        cr_assert_eq(bs_chunker_init(&c, 16, 1024, 4096), -EINVAL, "min too small");
        cr_assert_eq(bs_chunker_init(&c, 1024, 8192, 65536), 0);
}
