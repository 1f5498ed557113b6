/* bs-delta.c - chunk a file and name what the receiver already holds */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-delta.h"
#include "bs-macro.h"
#include "bs-proto.h"

/* Read ahead of the chunk being cut: at least a chunk's maximum, since
 * the cut may look that far. */
#define DELTA_BUF (2 * BS_CHUNK_MAX)

int bs_delta_init(BsDelta *d, uint64_t size, bool keep_list) {
        *d = BS_DELTA_NULL;
        bs_chunker_init_default(&d->chunker);
        d->size = size;
        d->buf = malloc(DELTA_BUF);
        if (!d->buf || (keep_list && bs_blocks_new(&d->blocks) < 0)) {
                free(d->buf);
                d->buf = NULL;
                return -ENOMEM;
        }
        return 0;
}

void bs_delta_done(BsDelta *d) {
        free(d->buf);
        bs_blocks_free(d->blocks);
        *d = BS_DELTA_NULL;
}

uint8_t *bs_delta_space(BsDelta *d, size_t *n) {
        /* Once less than a chunk's maximum is held, move it to the front
         * and read behind it; the data of a held chunk stays in place. */
        if (!d->held && d->start > 0 && d->end - d->start < BS_CHUNK_MAX) {
                memmove(d->buf, d->buf + d->start, d->end - d->start);
                d->end -= d->start;
                d->start = 0;
        }
        *n = (size_t) MIN((uint64_t) (DELTA_BUF - d->end), d->size - d->fed);
        return d->buf + d->end;
}

void bs_delta_fed(BsDelta *d, size_t n) {
        d->end += n;
        d->fed += n;
}

static void give_run(BsDelta *d, BsDeltaPiece *out) {
        *out = (BsDeltaPiece) { .kind = BS_DELTA_COPY, .len = d->run_len, .off = d->run_off };
        memcpy(out->sha, d->run_sha, BS_SHA_LEN);
        d->run_len = 0;
}

static void give_held(BsDelta *d, BsDeltaPiece *out) {
        /* The held chunk is the one cut last: just before start. */
        *out = (BsDeltaPiece) { .kind = BS_DELTA_DATA, .len = d->held_len, .data = d->buf + d->start - d->held_len };
        d->held = false;
}

int bs_delta_next(BsDelta *d, bs_delta_find_t find, void *userdata, BsDeltaPiece *out) {
        if (d->held) {
                give_held(d, out);
                return 1;
        }
        /* The cut never depends on bytes past a chunk's maximum: cut while
         * that much is held, and the rest at the end of the file. */
        while (d->end > d->start && (d->end - d->start >= BS_CHUNK_MAX || d->fed == d->size)) {
                const uint8_t *p = d->buf + d->start;
                size_t len = bs_chunk_next(&d->chunker, p, d->end - d->start);
                uint8_t sum[BS_BLOCK_SUM_LEN], sha[BS_SHA_LEN];
                uint64_t off;
                bs_block_sum(p, len, sum);
                if (d->blocks && bs_blocks_add(d->blocks, (uint32_t) len, sum) < 0)
                        d->blocks = bs_blocks_free(d->blocks);
                d->start += len;
                if (find(userdata, p, (uint32_t) len, sum, sha, &off)) {
                        bool more = d->run_len > 0 && memcmp(sha, d->run_sha, BS_SHA_LEN) == 0 &&
                                    d->run_off + d->run_len == off && d->run_len + len <= BS_COPY_MAX;
                        if (more) {
                                d->run_len += len;
                                continue;
                        }
                        int r = 0;
                        if (d->run_len > 0) {
                                give_run(d, out);
                                r = 1;
                        }
                        memcpy(d->run_sha, sha, BS_SHA_LEN);
                        d->run_off = off;
                        d->run_len = len;
                        if (r)
                                return r;
                        continue;
                }
                d->held = true;
                d->held_len = len;
                if (d->run_len > 0)
                        give_run(d, out);
                else
                        give_held(d, out);
                return 1;
        }
        if (d->fed == d->size && d->end == d->start && d->run_len > 0) {
                give_run(d, out);
                return 1;
        }
        return 0;
}

bool bs_delta_complete(const BsDelta *d) {
        return d->fed == d->size && d->end == d->start && d->run_len == 0 && !d->held;
}

BsBlocks *bs_delta_steal_list(BsDelta *d) {
        if (d->blocks && bs_blocks_final(d->blocks) < 0)
                d->blocks = bs_blocks_free(d->blocks);
        return TAKE_PTR(d->blocks);
}
