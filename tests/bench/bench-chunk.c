/* bench-chunk.c - the chunker's throughput on one core, and what chunk sizes cost
 *
 *   bench-chunk [MiB]
 *
 * Prints lines of KEY=VALUE for bench.py: the chunker alone over MiB of
 * random data in memory (best of 5 passes), SHA-256 of the chunks, and
 * for each size set (min/avg/max) on a 64 MiB file the bytes in chunks
 * that an edit makes new, and the chunk list a file of that size needs
 * (40 bytes a chunk: SHA-256 and length).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bs-chunk.h"
#include "bs-hash.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
        uint64_t x = seed;
        for (size_t i = 0; i < n; i++) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                p[i] = (uint8_t) ((x * 0x2545F4914F6CDD1DULL) >> 56);
        }
}

typedef struct Chunks {
        size_t n;
        uint8_t (*sha)[BS_SHA_LEN];
        size_t *len;
} Chunks;

static int cmp_sha(const void *x, const void *y) {
        return memcmp(x, y, BS_SHA_LEN);
}

static Chunks chunk_all(const BsChunker *c, const uint8_t *p, size_t n) {
        Chunks r = { .sha = malloc((n / c->min + 2) * BS_SHA_LEN), .len = malloc((n / c->min + 2) * sizeof(size_t)) };
        if (!r.sha || !r.len)
                exit(71);
        for (size_t off = 0; off < n;) {
                size_t len = bs_chunk_next(c, p + off, n - off);
                bs_sha_buf(p + off, len, r.sha[r.n]);
                r.len[r.n++] = len;
                off += len;
        }
        return r;
}

/* Bytes of b's chunks that a does not have. */
static size_t new_bytes(const Chunks *a, const Chunks *b) {
        uint8_t (*sorted)[BS_SHA_LEN] = malloc(a->n * BS_SHA_LEN);
        size_t sum = 0;
        memcpy(sorted, a->sha, a->n * BS_SHA_LEN);
        qsort(sorted, a->n, BS_SHA_LEN, cmp_sha);
        for (size_t i = 0; i < b->n; i++)
                if (!bsearch(b->sha[i], sorted, a->n, BS_SHA_LEN, cmp_sha))
                        sum += b->len[i];
        free(sorted);
        return sum;
}

int main(int argc, char **argv) {
        size_t mib = argc > 1 ? (size_t) atoi(argv[1]) : 256, n = mib << 20;
        uint8_t *p = malloc(n + (1u << 20));
        BsChunker c;
        double best = 1e9;
        size_t chunks = 0;

        if (!p || mib == 0)
                return 64;
        fill(p, n, 1);
        bs_chunker_init_default(&c);
        for (int pass = 0; pass < 5; pass++) {
                double t0 = now();
                chunks = 0;
                for (size_t off = 0; off < n; chunks++)
                        off += bs_chunk_next(&c, p + off, n - off);
                double dt = now() - t0;
                if (dt < best)
                        best = dt;
        }
        printf("chunker_bytes=%zu\nchunker_seconds=%.6f\nchunker_chunks=%zu\n", n, best, chunks);
        double t0 = now();
        for (size_t off = 0; off < n;) {
                uint8_t sha[BS_SHA_LEN];
                size_t len = bs_chunk_next(&c, p + off, n - off);
                bs_sha_buf(p + off, len, sha);
                off += len;
        }
        printf("chunk_and_sha_seconds=%.6f\n", now() - t0);

        /* Size sets: min = avg / 4, max = avg * 4, as the protocol's. */
        size_t fsize = 64u << 20;
        uint8_t *b = malloc(fsize + 200);
        if (!b)
                return 71;
        for (unsigned avg = 8192; avg <= 262144; avg *= 2) {
                BsChunker k;
                if (bs_chunker_init(&k, avg / 4, avg, avg * 4) < 0)
                        return 70;
                Chunks base = chunk_all(&k, p, fsize);
                static const struct {
                        const char *name;
                        size_t at, del, ins;
                } edits[] = {
                        { "insert100_start", 0, 0, 100 },
                        { "insert100_middle", 32u << 20, 0, 100 },
                        { "overwrite1m_middle", 32u << 20, 1u << 20, 1u << 20 },
                };
                printf("sizes_%u_chunks=%zu\nsizes_%u_list_bytes=%zu\n", avg, base.n, avg, base.n * 40);
                for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
                        memcpy(b, p, edits[e].at);
                        fill(b + edits[e].at, edits[e].ins, 99);
                        memcpy(b + edits[e].at + edits[e].ins, p + edits[e].at + edits[e].del,
                               fsize - edits[e].at - edits[e].del);
                        Chunks ed = chunk_all(&k, b, fsize - edits[e].del + edits[e].ins);
                        printf("sizes_%u_%s=%zu\n", avg, edits[e].name, new_bytes(&base, &ed));
                        free(ed.sha);
                        free(ed.len);
                }
                free(base.sha);
                free(base.len);
        }
        free(b);
        free(p);
        return 0;
}
