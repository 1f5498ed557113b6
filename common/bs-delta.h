/* bs-delta.h - a file as the other side can rebuild it: COPY what it holds, DATA the rest
 *
 * The sender reads its file into the delta, which cuts it into
 * content-defined chunks (bs-blocks.h) and asks, chunk by chunk, where
 * the receiver already holds those bytes. Chunks found one after another
 * in the same content come out as one COPY (at most BS_COPY_MAX bytes),
 * the others as DATA of one chunk each. Both ends of a transfer use it:
 * the agent uploading, the server answering GET_DELTA.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bs-blocks.h"
#include "bs-chunk.h"
#include "bs-hash.h"

/**
 * Where the receiver holds the len bytes at p (fingerprint sum): true
 * with the content's SHA-256 and the offset in it, false to send them.
 */
typedef bool (*bs_delta_find_t)(void *userdata, const uint8_t *p, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN],
                                uint8_t sha[BS_SHA_LEN], uint64_t *off);

typedef enum BsDeltaKind {
        BS_DELTA_COPY,
        BS_DELTA_DATA,
} BsDeltaKind;

typedef struct BsDeltaPiece {
        BsDeltaKind kind;
        uint64_t len;
        const uint8_t *data;     /* DATA: valid until the next call of next() or space() */
        uint8_t sha[BS_SHA_LEN]; /* COPY: the content and where in it */
        uint64_t off;
} BsDeltaPiece;

typedef struct BsDelta {
        BsChunker chunker;
        BsBlocks *blocks; /* the list of what was cut, when asked for */
        uint8_t *buf;     /* read but not yet cut: buf[start, end) */
        size_t start, end;
        uint64_t fed, size;
        /* The run of found chunks not yet given out, and a DATA chunk
         * waiting behind it. */
        uint8_t run_sha[BS_SHA_LEN];
        uint64_t run_off, run_len;
        size_t held_len;
        bool held;
} BsDelta;

#define BS_DELTA_NULL ((BsDelta) { .buf = NULL })

/** Set up for a file of size bytes; keep_list: also build its chunk list. -ENOMEM. */
int bs_delta_init(BsDelta *d, uint64_t size, bool keep_list);
void bs_delta_done(BsDelta *d);
/** Where to read the next bytes of the file: up to *n of them (0 when none are wanted now). */
uint8_t *bs_delta_space(BsDelta *d, size_t *n);
/** n bytes were read into the space. */
void bs_delta_fed(BsDelta *d, size_t n);
/**
 * The next piece to send: 1 with *out set, 0 when the delta needs more
 * bytes (or is complete: bs_delta_complete()), -ENOMEM.
 */
int bs_delta_next(BsDelta *d, bs_delta_find_t find, void *userdata, BsDeltaPiece *out);
/** Every byte of the file was read and given out. */
bool bs_delta_complete(const BsDelta *d);
/** The chunk list, taken over by the caller (NULL if none was kept or it overflowed). */
BsBlocks *bs_delta_steal_list(BsDelta *d);
