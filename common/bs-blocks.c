/* bs-blocks.c - content-defined chunk fingerprints (XXH3-128, libxxhash)
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
#include "bs-chunk.h"
#include "bs-macro.h"

struct BsBlocks {
        BsChunker chunker;
        size_t n, cap;
        uint8_t *recs;
        uint8_t *buf; /* bytes fed but not yet cut: buf[start, end) */
        size_t start, end;
};

typedef struct MapEntry {
        uint8_t sum[BS_BLOCK_SUM_LEN];
        uint32_t len;
        uint64_t off;
} MapEntry;

struct BsBlockMap {
        size_t n;
        MapEntry *e; /* sorted by sum, then len */
};

#define BUF_SIZE (2 * BS_CHUNK_MAX)

void bs_block_sum(const void *p, size_t n, uint8_t out[BS_BLOCK_SUM_LEN]) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(p, n));
        memcpy(out, c.digest, BS_BLOCK_SUM_LEN);
}

int bs_blocks_new(BsBlocks **ret) {
        BsBlocks *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        bs_chunker_init_default(&b->chunker);
        *ret = b;
        return 0;
}

BsBlocks *bs_blocks_free(BsBlocks *b) {
        if (b) {
                free(b->recs);
                free(b->buf);
                free(b);
        }
        return NULL;
}

int bs_blocks_add(BsBlocks *b, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN]) {
        if (b->n >= BS_BLOCKS_MAX)
                return -EFBIG;
        if (b->n == b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 64;
                uint8_t *v = realloc(b->recs, cap * BS_BLOCK_REC_LEN);
                if (!v)
                        return -ENOMEM;
                b->recs = v;
                b->cap = cap;
        }
        uint8_t *r = b->recs + b->n++ * BS_BLOCK_REC_LEN;
        for (int i = 0; i < 4; i++)
                r[i] = (uint8_t) (len >> (8 * i));
        memcpy(r + 4, sum, BS_BLOCK_SUM_LEN);
        return 0;
}

/* Cut chunks from the held bytes while at least min_avail remain. */
static int cut(BsBlocks *b, size_t min_avail) {
        while (b->end - b->start > 0 && b->end - b->start >= min_avail) {
                uint8_t sum[BS_BLOCK_SUM_LEN];
                size_t len = bs_chunk_next(&b->chunker, b->buf + b->start, b->end - b->start);
                bs_block_sum(b->buf + b->start, len, sum);
                int r = bs_blocks_add(b, (uint32_t) len, sum);
                if (r < 0)
                        return r;
                b->start += len;
        }
        return 0;
}

int bs_blocks_update(BsBlocks *b, const void *p, size_t n) {
        const uint8_t *q = p;
        if (!b->buf && !(b->buf = malloc(BUF_SIZE)))
                return -ENOMEM;
        while (n > 0) {
                if (b->end == BUF_SIZE) {
                        /* Less than a chunk's maximum is held: keep it at the front. */
                        memmove(b->buf, b->buf + b->start, b->end - b->start);
                        b->end -= b->start;
                        b->start = 0;
                }
                size_t take = MIN(n, BUF_SIZE - b->end);
                memcpy(b->buf + b->end, q, take);
                b->end += take;
                q += take;
                n -= take;
                /* The cut never depends on bytes past the maximum. */
                int r = cut(b, BS_CHUNK_MAX);
                if (r < 0)
                        return r;
        }
        return 0;
}

int bs_blocks_final(BsBlocks *b) {
        int r = cut(b, 1);
        b->start = b->end = 0;
        return r;
}

const uint8_t *bs_blocks_recs(const BsBlocks *b, size_t *count) {
        *count = b->n;
        return b->recs;
}

uint32_t bs_block_rec_len(const uint8_t *rec) {
        return (uint32_t) rec[0] | (uint32_t) rec[1] << 8 | (uint32_t) rec[2] << 16 | (uint32_t) rec[3] << 24;
}

static int entry_cmp(const void *x, const void *y) {
        const MapEntry *a = x, *b = y;
        int c = memcmp(a->sum, b->sum, BS_BLOCK_SUM_LEN);
        if (c)
                return c;
        if (a->len != b->len)
                return a->len < b->len ? -1 : 1;
        /* The first of equal chunks: any would do, but the same every time. */
        return a->off < b->off ? -1 : a->off > b->off;
}

int bs_block_map_new(BsBlockMap **ret, const uint8_t *recs, size_t count) {
        BsBlockMap *m;
        uint64_t off = 0;
        if (count > BS_BLOCKS_MAX)
                return -EINVAL;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        if (count > 0 && !(m->e = calloc(count, sizeof(*m->e)))) {
                free(m);
                return -ENOMEM;
        }
        for (size_t i = 0; i < count; i++) {
                const uint8_t *r = recs + i * BS_BLOCK_REC_LEN;
                uint32_t len = bs_block_rec_len(r);
                if (len == 0 || len > BS_CHUNK_MAX) {
                        bs_block_map_free(m);
                        return -EINVAL;
                }
                memcpy(m->e[i].sum, r + 4, BS_BLOCK_SUM_LEN);
                m->e[i].len = len;
                m->e[i].off = off;
                off += len; /* at most 4 Mi * 256 KiB: no overflow */
        }
        m->n = count;
        if (count > 0)
                qsort(m->e, m->n, sizeof(*m->e), entry_cmp);
        *ret = m;
        return 0;
}

BsBlockMap *bs_block_map_free(BsBlockMap *m) {
        if (m) {
                free(m->e);
                free(m);
        }
        return NULL;
}

int bs_block_map_find(const BsBlockMap *m, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN], uint64_t *off) {
        size_t lo = 0, hi = m->n;
        MapEntry key = { .len = len, .off = 0 };
        memcpy(key.sum, sum, BS_BLOCK_SUM_LEN);
        /* The first entry not below key (offset 0 sorts first). */
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (entry_cmp(&m->e[mid], &key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < m->n && m->e[lo].len == len && memcmp(m->e[lo].sum, sum, BS_BLOCK_SUM_LEN) == 0) {
                *off = m->e[lo].off;
                return 0;
        }
        return -ENOENT;
}
