/* test-cluster-chunks.c - the cluster's recipes and the cutter of uploads */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-chunk.h"
#include "bs-hash.h"
#include "cluster-internal.h"
#include "test-util.h"


Test(cluster_chunks, recipe_round_trip_and_find) {
        ClusterRecipe r = {}, back = {};
        uint8_t sha[BS_SHA_LEN], *enc;
        size_t len;
        for (unsigned i = 0; i < 100; i++) {
                memset(sha, (int) i, sizeof(sha));
                cr_assert_eq(cluster_recipe_add(&r, 1000 + i, sha), 0);
        }
        cr_assert_eq(cluster_recipe_add(&r, 0, sha), -EINVAL);
        cr_assert_eq(cluster_recipe_add(&r, CLUSTER_CHUNK_MAX + 1, sha), -EINVAL);
        cr_assert_eq(cluster_recipe_encode(&r, &enc, &len), 0);
        cr_assert_eq(len, 100 * CLUSTER_RECIPE_ENTRY);
        cr_assert_eq(cluster_recipe_decode(enc, len, r.off[100], &back), 0);
        cr_assert_eq(back.n, 100);
        cr_assert_eq(memcmp(back.off, r.off, 101 * sizeof(uint64_t)), 0);
        cr_assert_eq(memcmp(back.sha, r.sha, 100 * BS_SHA_LEN), 0);
        /* Every byte maps to the chunk that holds it. */
        for (unsigned i = 0; i < 100; i++) {
                cr_assert_eq(cluster_recipe_find(&back, back.off[i]), i);
                cr_assert_eq(cluster_recipe_find(&back, back.off[i + 1] - 1), i);
        }
        free(enc);
        cluster_recipe_done(&back);
        cluster_recipe_done(&r);
}

/* Recipes from the database are untrusted: only exact ones are taken. */
Test(cluster_chunks, recipe_decode_refuses) {
        ClusterRecipe r = {};
        uint8_t e[2 * CLUSTER_RECIPE_ENTRY] = {};
        e[2] = 0x10; /* 4096 bytes */
        e[CLUSTER_RECIPE_ENTRY + 2] = 0x10;
        cr_assert_eq(cluster_recipe_decode(e, sizeof(e), 8192, &r), 0);
        cluster_recipe_done(&r);
        cr_assert_eq(cluster_recipe_decode(e, sizeof(e), 8191, &r), -EBADMSG);     /* size differs */
        cr_assert_eq(cluster_recipe_decode(e, sizeof(e) - 1, 8192, &r), -EBADMSG); /* cut entry */
        cr_assert_eq(cluster_recipe_decode(e, 0, 0, &r), -EBADMSG);                /* empty */
        e[CLUSTER_RECIPE_ENTRY + 1] = 0x40;                                        /* 4 MiB + 4 KiB chunk */
        cr_assert_eq(cluster_recipe_decode(e, sizeof(e), 4096 + 0x401000, &r), -EBADMSG);
        memset(e, 0, sizeof(e));
        cr_assert_eq(cluster_recipe_decode(e, sizeof(e), 0, &r), -EBADMSG);        /* zero-length chunks */
}

/* An upload fed in pieces of these sizes is cut as the whole is cut at once. */
ParameterizedTestParameters(cluster_chunks, cutter_matches_one_cut) {
        static size_t pieces[] = { 1021, 4093, 65536, 300000, 1 << 20, 5 << 20 };
        return cr_make_param_array(size_t, pieces, sizeof(pieces) / sizeof(pieces[0]));
}

ParameterizedTest(size_t *piece, cluster_chunks, cutter_matches_one_cut) {
        const size_t n = 13 * 1024 * 1024 + 12345;
        uint8_t *data = malloc(n);
        cr_assert_not_null(data);
        test_fill(data, n, 7);
        char tmpl[] = "/tmp/bs-cutter-XXXXXX";
        int fd = mkstemp(tmpl);
        cr_assert_geq(fd, 0);
        unlink(tmpl);

        ClusterCutter c = {};
        size_t written = 0;
        while (written < n) {
                size_t k = n - written < *piece ? n - written : *piece;
                cr_assert_eq(pwrite(fd, data + written, k, (off_t) written), (ssize_t) k);
                written += k;
                cr_assert_eq(cluster_cutter_feed(&c, fd, written, false), 0);
                /* Nothing is held before the threshold. */
                cr_assert_eq(c.cutting, written >= CLUSTER_CHUNKED_MIN);
        }
        cr_assert_eq(cluster_cutter_feed(&c, fd, written, true), 0);

        BsChunker ch;
        cr_assert_eq(bs_chunker_init(&ch, CLUSTER_CHUNK_MIN, CLUSTER_CHUNK_AVG, CLUSTER_CHUNK_MAX), 0);
        size_t off = 0, i = 0;
        while (off < n) {
                size_t len = bs_chunk_next(&ch, data + off, n - off);
                uint8_t sha[BS_SHA_LEN];
                cr_assert_eq(bs_sha_buf(data + off, len, sha), 0);
                cr_assert_lt(i, c.recipe.n);
                cr_assert_eq(c.recipe.off[i], off, "chunk %zu", i);
                cr_assert_eq(memcmp(c.recipe.sha[i], sha, BS_SHA_LEN), 0, "chunk %zu", i);
                off += len;
                i++;
        }
        cr_assert_eq(i, c.recipe.n);
        cr_assert_eq(c.recipe.off[i], n);
        cluster_cutter_done(&c);
        close(fd);
        free(data);
}

Test(cluster_chunks, small_upload_is_not_cut) {
        char tmpl[] = "/tmp/bs-cutter-XXXXXX";
        int fd = mkstemp(tmpl);
        cr_assert_geq(fd, 0);
        unlink(tmpl);
        cr_assert_eq(pwrite(fd, "hello", 5, 0), 5);
        ClusterCutter c = {};
        cr_assert_eq(cluster_cutter_feed(&c, fd, 5, true), 0);
        cr_assert(!c.cutting);
        cr_assert_eq(c.recipe.n, 0);
        cluster_cutter_done(&c);
        close(fd);
}
