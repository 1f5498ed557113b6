/* test-buf.c - unit tests for common/bs-buf.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bs-buf.h"
#include "bs-macro.h"

Test(buf, append_and_consume) {
        BsBuf b = { 0 };

        cr_assert_eq(bs_buf_len(&b), 0);
        cr_assert_eq(bs_buf_append(&b, "hello", 5), 0);
        cr_assert_eq(bs_buf_len(&b), 5);
        cr_assert_eq(memcmp(bs_buf_head(&b), "hello", 5), 0);

        cr_assert_eq(bs_buf_append(&b, " world", 6), 0);
        cr_assert_eq(bs_buf_len(&b), 11);
        cr_assert_eq(memcmp(bs_buf_head(&b), "hello world", 11), 0);

        bs_buf_consume(&b, 6);
        cr_assert_eq(bs_buf_len(&b), 5);
        cr_assert_eq(memcmp(bs_buf_head(&b), "world", 5), 0);

        /* Consuming more than is there empties the buffer and rewinds it. */
        bs_buf_consume(&b, 100);
        cr_assert_eq(bs_buf_len(&b), 0);
        cr_assert_eq(b.start, 0);
        cr_assert_eq(b.end, 0);

        bs_buf_free(&b);
        cr_assert_null(b.data);
        cr_assert_eq(b.cap, 0);
}

Test(buf, append_zero_bytes) {
        BsBuf b = { 0 };
        cr_assert_eq(bs_buf_append(&b, NULL, 0), 0);
        cr_assert_eq(bs_buf_len(&b), 0);
        bs_buf_free(&b);
}

Test(buf, consume_exact_rewinds) {
        BsBuf b = { 0 };
        cr_assert_eq(bs_buf_append(&b, "abc", 3), 0);
        bs_buf_consume(&b, 3);
        cr_assert_eq(bs_buf_len(&b), 0);
        cr_assert_eq(b.start, 0);
        bs_buf_free(&b);
}

Test(buf, compact_keeps_unconsumed_bytes) {
        BsBuf b = { 0 };
        uint8_t chunk[1000];

        for (size_t i = 0; i < sizeof(chunk); i++)
                chunk[i] = (uint8_t) i;
        for (int i = 0; i < 4; i++)
                cr_assert_eq(bs_buf_append(&b, chunk, sizeof(chunk)), 0);
        size_t cap = b.cap;
        cr_assert_geq(cap, 4000);
        bs_buf_consume(&b, 3500);
        cr_assert_eq(b.start, 3500);

        /* Needs more room than is left at the end: the front is reclaimed
         * first, so the capacity does not grow. */
        size_t need = cap - b.end + 1;
        cr_assert_eq(bs_buf_reserve(&b, need), 0);
        cr_assert_eq(b.start, 0);
        cr_assert_eq(b.cap, cap);
        cr_assert_eq(bs_buf_len(&b), 500);
        /* The 500 bytes left are chunk[500..999] of the fourth chunk. */
        cr_assert_eq(memcmp(bs_buf_head(&b), chunk + 500, 500), 0);
        bs_buf_free(&b);
}

Test(buf, grow_large) {
        BsBuf b = { 0 };
        size_t n = 3 * 1024 * 1024 + 7;
        uint8_t *src = malloc(n);
        cr_assert_not_null(src);
        for (size_t i = 0; i < n; i++)
                src[i] = (uint8_t) (i * 31 + 7);

        /* Append in odd pieces so the buffer grows many times. */
        size_t off = 0, step = 1;
        while (off < n) {
                size_t k = MIN(step, n - off);
                cr_assert_eq(bs_buf_append(&b, src + off, k), 0);
                off += k;
                step = step * 3 + 1;
        }
        cr_assert_eq(bs_buf_len(&b), n);
        cr_assert_geq(b.cap, n);
        cr_assert_eq(memcmp(bs_buf_head(&b), src, n), 0);
        free(src);
        bs_buf_free(&b);
}

Test(buf, reserve_overflow_fails) {
        BsBuf b = { 0 };
        cr_assert_eq(bs_buf_reserve(&b, SIZE_MAX), -ENOMEM);
        cr_assert_eq(bs_buf_reserve(&b, SIZE_MAX / 2 + 1), -ENOMEM);
        bs_buf_free(&b);
}

Test(buf, put_integers_big_endian) {
        BsBuf b = { 0 };
        static const uint8_t want[] = {
                0xab,
                0x12, 0x34,
                0xde, 0xad, 0xbe, 0xef,
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
        };
        cr_assert_eq(bs_buf_put_u8(&b, 0xab), 0);
        cr_assert_eq(bs_buf_put_u16(&b, 0x1234), 0);
        cr_assert_eq(bs_buf_put_u32(&b, 0xdeadbeefu), 0);
        cr_assert_eq(bs_buf_put_u64(&b, 0x0123456789abcdefull), 0);
        cr_assert_eq(bs_buf_len(&b), sizeof(want));
        cr_assert_eq(memcmp(bs_buf_head(&b), want, sizeof(want)), 0);
        bs_buf_free(&b);
}

Test(buf, put_str) {
        BsBuf b = { 0 };
        cr_assert_eq(bs_buf_put_str(&b, "abc", 3), 0);
        cr_assert_eq(bs_buf_len(&b), 5);
        cr_assert_eq(memcmp(bs_buf_head(&b), "\0\003abc", 5), 0);

        cr_assert_eq(bs_buf_put_str(&b, "", 0), 0);
        cr_assert_eq(bs_buf_len(&b), 7);

        char *big = calloc(1, 65536);
        cr_assert_not_null(big);
        cr_assert_eq(bs_buf_put_str(&b, big, 65535), 0);
        cr_assert_eq(bs_buf_len(&b), 7 + 2 + 65535);
        size_t before = bs_buf_len(&b);
        cr_assert_eq(bs_buf_put_str(&b, big, 65536), -E2BIG);
        cr_assert_eq(bs_buf_len(&b), before, "a refused string must not be appended");
        free(big);
        bs_buf_free(&b);
}

Test(reader, round_trip) {
        BsBuf b = { 0 };
        bs_buf_put_u8(&b, 7);
        bs_buf_put_u16(&b, 0xbeef);
        bs_buf_put_u32(&b, 0xcafebabeu);
        bs_buf_put_u64(&b, 0xfedcba9876543210ull);
        bs_buf_put_str(&b, "path", 4);
        bs_buf_append(&b, "XYZ", 3);

        BsReader r;
        bs_reader_init(&r, bs_buf_head(&b), bs_buf_len(&b));
        cr_assert_eq(bs_get_u8(&r), 7);
        cr_assert_eq(bs_get_u16(&r), 0xbeef);
        cr_assert_eq(bs_get_u32(&r), 0xcafebabeu);
        cr_assert_eq(bs_get_u64(&r), 0xfedcba9876543210ull);
        size_t n = 99;
        const char *s = bs_get_str(&r, &n);
        cr_assert_eq(n, 4);
        cr_assert_eq(memcmp(s, "path", 4), 0);
        char xyz[3];
        bs_get_bytes(&r, xyz, 3);
        cr_assert_eq(memcmp(xyz, "XYZ", 3), 0);
        cr_assert_eq(r.left, 0);
        cr_assert_not(r.bad);
        bs_buf_free(&b);
}

static const uint8_t ones[16] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};

/* Every getter past the end sets bad, returns 0 and consumes nothing. */
Test(reader, get_u8_past_end) {
        BsReader r;
        bs_reader_init(&r, ones, 0);
        cr_assert_eq(bs_get_u8(&r), 0);
        cr_assert(r.bad);
}

Test(reader, get_u16_past_end) {
        BsReader r;
        bs_reader_init(&r, ones, 1);
        cr_assert_eq(bs_get_u16(&r), 0);
        cr_assert(r.bad);
        cr_assert_eq(r.left, 1);
}

Test(reader, get_u32_past_end) {
        for (size_t n = 0; n < 4; n++) {
                BsReader r;
                bs_reader_init(&r, ones, n);
                cr_assert_eq(bs_get_u32(&r), 0, "n=%zu", n);
                cr_assert(r.bad, "n=%zu", n);
                cr_assert_eq(r.left, n);
        }
}

Test(reader, get_u64_past_end) {
        for (size_t n = 0; n < 8; n++) {
                BsReader r;
                bs_reader_init(&r, ones, n);
                cr_assert_eq(bs_get_u64(&r), 0, "n=%zu", n);
                cr_assert(r.bad, "n=%zu", n);
                cr_assert_eq(r.left, n);
        }
}

Test(reader, get_bytes_past_end_zeroes) {
        uint8_t out[16];
        memset(out, 0x55, sizeof(out));
        BsReader r;
        bs_reader_init(&r, ones, 15);
        bs_get_bytes(&r, out, 16);
        cr_assert(r.bad);
        for (size_t i = 0; i < sizeof(out); i++)
                cr_assert_eq(out[i], 0, "byte %zu not cleared", i);
}

Test(reader, get_str_past_end) {
        /* Length prefix says 5, only 4 bytes follow. */
        static const uint8_t s[] = { 0x00, 0x05, 'a', 'b', 'c', 'd' };
        BsReader r;
        bs_reader_init(&r, s, sizeof(s));
        size_t n = 42;
        const char *p = bs_get_str(&r, &n);
        cr_assert(r.bad);
        cr_assert_eq(n, 0);
        cr_assert_not_null(p);
        cr_assert_eq(p[0], 0);

        /* Only one byte of the prefix. */
        bs_reader_init(&r, s, 1);
        n = 42;
        bs_get_str(&r, &n);
        cr_assert(r.bad);
        cr_assert_eq(n, 0);
}

Test(reader, bad_is_sticky) {
        static const uint8_t s[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
        BsReader r;
        bs_reader_init(&r, s, sizeof(s));
        cr_assert_eq(bs_get_u64(&r), 0x0102030405060708ull);
        cr_assert_eq(bs_get_u8(&r), 0);
        cr_assert(r.bad);

        /* Once bad, later reads fail even when bytes would remain. */
        bs_reader_init(&r, s, sizeof(s));
        cr_assert_eq(bs_get_u16(&r), 0x0102);
        r.bad = true;
        cr_assert_eq(bs_get_u8(&r), 0);
        cr_assert_eq(bs_get_u16(&r), 0);
        cr_assert_eq(r.left, 6);
}

/* bs_buf_recv: reads until it would block, stops at max, reports the close. */
Test(buf, recv_until_block_max_and_eof) {
        int sv[2];
        BsBuf b = {};
        bool eof = false;
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        cr_assert_eq(bs_buf_recv(&b, sv[0], 16, 1024, &eof), 0, "nothing to read: 0");
        cr_assert(!eof);
        cr_assert_eq(write(sv[1], "0123456789abcdefXYZ", 19), 19);
        cr_assert_eq(bs_buf_recv(&b, sv[0], 8, 16, &eof), 16, "stops at max");
        cr_assert_eq(memcmp(bs_buf_head(&b), "0123456789abcdef", 16), 0);
        bs_buf_consume(&b, 16);
        close(sv[1]);
        cr_assert_eq(bs_buf_recv(&b, sv[0], 8, 16, &eof), 3, "the rest, then the close");
        cr_assert(eof);
        cr_assert_eq(memcmp(bs_buf_head(&b), "XYZ", 3), 0);
        cr_assert_eq(bs_buf_recv(&b, -1, 8, 16, &eof), -EBADF);
        close(sv[0]);
        bs_buf_free(&b);
}
