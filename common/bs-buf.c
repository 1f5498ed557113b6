/* bs-buf.c - growable byte buffer and bounds-checked reader */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bs-buf.h"
#include "bs-macro.h"

void bs_buf_free(BsBuf *b) {
        free(b->data);
        *b = (BsBuf) {};
}

int bs_buf_reserve(BsBuf *b, size_t n) {
        if (b->cap - b->end >= n)
                return 0;
        /* Compact first: a drained front is the common case. */
        if (b->start > 0) {
                memmove(b->data, b->data + b->start, b->end - b->start);
                b->end -= b->start;
                b->start = 0;
                if (b->cap - b->end >= n)
                        return 0;
        }
        if (n > SIZE_MAX / 2 - b->end)
                return -ENOMEM;
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->end < n)
                cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
                return -ENOMEM;
        b->data = d;
        b->cap = cap;
        return 0;
}

int bs_buf_append(BsBuf *b, const void *p, size_t n) {
        int r = bs_buf_reserve(b, n);
        if (r < 0)
                return r;
        if (n)
                memcpy(b->data + b->end, p, n);
        b->end += n;
        return 0;
}

void bs_buf_consume(BsBuf *b, size_t n) {
        if (n >= bs_buf_len(b)) {
                b->start = b->end = 0;
                return;
        }
        b->start += n;
}

ssize_t bs_buf_send_more(BsBuf *b, int fd, size_t last) {
        size_t sent = 0;
        while (bs_buf_len(b) > 0) {
                size_t len = bs_buf_len(b);
                /* MSG_NOSIGNAL: a closed peer is an EPIPE to handle, not a signal. */
                int flags = MSG_NOSIGNAL;
                if (len > last) {
                        len -= last;
                        flags |= MSG_MORE;
                }
                ssize_t n = send(fd, bs_buf_head(b), len, flags);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                sent += (size_t) n;
                bs_buf_consume(b, (size_t) n);
        }
        return (ssize_t) sent;
}

ssize_t bs_buf_send(BsBuf *b, int fd) {
        return bs_buf_send_more(b, fd, SIZE_MAX);
}

ssize_t bs_buf_recv(BsBuf *b, int fd, size_t chunk, size_t max, bool *eof) {
        size_t got = 0;
        while (bs_buf_len(b) < max) {
                int r = bs_buf_reserve(b, chunk);
                if (r < 0)
                        return r;
                ssize_t n = read(fd, b->data + b->end, MIN(chunk, b->cap - b->end));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                if (n == 0) {
                        *eof = true;
                        break;
                }
                b->end += (size_t) n;
                got += (size_t) n;
        }
        return (ssize_t) got;
}

int bs_buf_put_u8(BsBuf *b, uint8_t v) {
        return bs_buf_append(b, &v, 1);
}

int bs_buf_put_u16(BsBuf *b, uint16_t v) {
        v = htobe16(v);
        return bs_buf_append(b, &v, 2);
}

int bs_buf_put_u32(BsBuf *b, uint32_t v) {
        v = htobe32(v);
        return bs_buf_append(b, &v, 4);
}

int bs_buf_put_u64(BsBuf *b, uint64_t v) {
        v = htobe64(v);
        return bs_buf_append(b, &v, 8);
}

int bs_buf_put_str(BsBuf *b, const char *s, size_t n) {
        if (n > UINT16_MAX)
                return -E2BIG;
        int r = bs_buf_put_u16(b, (uint16_t) n);
        if (r < 0)
                return r;
        return bs_buf_append(b, s, n);
}

static const uint8_t *take(BsReader *r, size_t n) {
        if (r->bad || r->left < n) {
                r->bad = true;
                return NULL;
        }
        const uint8_t *p = r->p;
        r->p += n;
        r->left -= n;
        return p;
}

uint8_t bs_get_u8(BsReader *r) {
        const uint8_t *p = take(r, 1);
        return p ? p[0] : 0;
}

uint16_t bs_get_u16(BsReader *r) {
        uint16_t v;
        const uint8_t *p = take(r, 2);
        if (!p)
                return 0;
        memcpy(&v, p, 2);
        return be16toh(v);
}

uint32_t bs_get_u32(BsReader *r) {
        uint32_t v;
        const uint8_t *p = take(r, 4);
        if (!p)
                return 0;
        memcpy(&v, p, 4);
        return be32toh(v);
}

uint64_t bs_get_u64(BsReader *r) {
        uint64_t v;
        const uint8_t *p = take(r, 8);
        if (!p)
                return 0;
        memcpy(&v, p, 8);
        return be64toh(v);
}

void bs_get_bytes(BsReader *r, void *out, size_t n) {
        const uint8_t *p = take(r, n);
        if (p)
                memcpy(out, p, n);
        else
                memset(out, 0, n);
}

const char *bs_get_str(BsReader *r, size_t *len) {
        size_t n = bs_get_u16(r);
        const uint8_t *p = take(r, n);
        *len = p ? n : 0;
        return p ? (const char *) p : "";
}
