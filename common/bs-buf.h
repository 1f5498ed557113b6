/* bs-buf.h - growable byte buffer and bounds-checked reader */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A FIFO byte buffer: data is appended at the end and consumed at the front. */
typedef struct BsBuf {
        uint8_t *data;
        size_t start;
        size_t end;
        size_t cap;
} BsBuf;

void bs_buf_free(BsBuf *b);
/** Bytes waiting to be consumed. */
static inline size_t bs_buf_len(const BsBuf *b) { return b->end - b->start; }
static inline uint8_t *bs_buf_head(const BsBuf *b) { return b->data + b->start; }
/** Ensure room for n more bytes; returns -ENOMEM on failure. */
int bs_buf_reserve(BsBuf *b, size_t n);
int bs_buf_append(BsBuf *b, const void *p, size_t n);
void bs_buf_consume(BsBuf *b, size_t n);
/**
 * Send what is buffered to a non-blocking socket until it would block.
 * Returns the bytes sent (0 when none could be), or -errno.
 */
ssize_t bs_buf_send(BsBuf *b, int fd);
/** Like bs_buf_send(), all but the last `last` bytes with MSG_MORE: the kernel may hold them for what follows. */
ssize_t bs_buf_send_more(BsBuf *b, int fd, size_t last);
/**
 * Read from a non-blocking fd into b, chunk bytes at a time, until it
 * would block, the peer closed (*eof set true), or b holds max bytes.
 * Returns the bytes read (0 when none were), or -errno.
 */
ssize_t bs_buf_recv(BsBuf *b, int fd, size_t chunk, size_t max, bool *eof);
/** Append with bs_buf_put_*: these set b->oom instead of failing each call. */
int bs_buf_put_u8(BsBuf *b, uint8_t v);
int bs_buf_put_u16(BsBuf *b, uint16_t v);
int bs_buf_put_u32(BsBuf *b, uint32_t v);
int bs_buf_put_u64(BsBuf *b, uint64_t v);
/** Length-prefixed (u16) string; -E2BIG when longer than 65535. */
int bs_buf_put_str(BsBuf *b, const char *s, size_t n);

/* Reader over a fixed byte range; every get checks what remains. */
typedef struct BsReader {
        const uint8_t *p;
        size_t left;
        bool bad;
} BsReader;

static inline void bs_reader_init(BsReader *r, const void *p, size_t n) {
        r->p = p;
        r->left = n;
        r->bad = false;
}
uint8_t bs_get_u8(BsReader *r);
uint16_t bs_get_u16(BsReader *r);
uint32_t bs_get_u32(BsReader *r);
uint64_t bs_get_u64(BsReader *r);
/** Copy exactly n bytes into out. */
void bs_get_bytes(BsReader *r, void *out, size_t n);
/** A u16-prefixed string, pointing into the frame (not NUL-terminated). */
const char *bs_get_str(BsReader *r, size_t *len);
