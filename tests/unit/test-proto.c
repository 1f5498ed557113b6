/* test-proto.c - unit tests for common/bs-proto.[ch]: the wire codec */
#include <criterion/criterion.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-buf.h"
#include "bs-macro.h"
#include "bs-proto.h"

static const uint8_t all_types[] = {
        BS_MSG_HELLO, BS_MSG_WELCOME, BS_MSG_ERROR, BS_MSG_PING, BS_MSG_PONG,
        BS_MSG_NOTIFY, BS_MSG_PULL, BS_MSG_CHANGES, BS_MSG_GET, BS_MSG_FILE,
        BS_MSG_PUT, BS_MSG_DATA, BS_MSG_PUT_END, BS_MSG_MKDIR, BS_MSG_DELETE,
        BS_MSG_MOVE, BS_MSG_SYMLINK, BS_MSG_ACK, BS_MSG_GET_DELTA, BS_MSG_COPY,
        BS_MSG_ATTR, BS_MSG_HISTORY, BS_MSG_HISTORY_ROWS, BS_MSG_PULL_PAGE,
};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))

/* ---- helpers ---------------------------------------------------------- */

static void set_str(char *dst, size_t *len, const char *s, size_t n) {
        memcpy(dst, s, n);
        dst[n] = 0;
        *len = n;
}
#define SET_STR(dst, len, lit) set_str(dst, len, lit, sizeof(lit) - 1)

static void fill(uint8_t *p, size_t n, uint8_t seed) {
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (seed + i * 7);
}

static const uint8_t data_bytes[] = "\x00\x01\x02 some DATA bytes \xff\xfe";
static uint8_t records[4096];
static size_t records_len;

static BsRecord sample_record(int i) {
        BsRecord r;
        memset(&r, 0, sizeof(r));
        r.seq = 1000 + (uint64_t) i;
        r.op = (uint8_t) (BS_OP_PUT + i % 5);
        r.kind = (uint8_t) (BS_KIND_FILE + i % 3);
        fill(r.device, BS_DEVICE_LEN, (uint8_t) (0x10 + i));
        r.size = 0x0102030405060708ull + (uint64_t) i;
        r.mode = 0100644 + (uint32_t) i;
        r.mtime_ns = -123456789 - i;
        fill(r.sha, BS_SHA_LEN, (uint8_t) (0x80 + i));
        SET_STR(r.path, &r.path_len, "dir/file name\n\xff.txt");
        if (r.op == BS_OP_MOVE || r.op == BS_OP_SYMLINK)
                SET_STR(r.path2, &r.path2_len, "other/target");
        return r;
}

/* A message of each type with every field of that type set to something
 * distinctive and every other field left zero. */
static BsMsg *sample(uint8_t type) {
        BsMsg *m = malloc(sizeof(*m));
        cr_assert_not_null(m);
        bs_msg_init(m, type, 0);
        uint32_t req = 0x11223344u;
        switch (type) {
        case BS_MSG_HELLO:
                m->min_version = 1;
                m->version = 3;
                m->max_frame = BS_FRAME_MAX_DEFAULT;
                fill(m->device, BS_DEVICE_LEN, 0xa0);
                SET_STR(m->path, &m->path_len, "K7Q2-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
                SET_STR(m->path2, &m->path2_len, "laptop.example.org");
                break;
        case BS_MSG_WELCOME:
                m->version = 1;
                m->max_frame = 2 * 1024 * 1024;
                m->seq = 0xfedcba9876543210ull;
                SET_STR(m->path, &m->path_len, "K7Q2");
                SET_STR(m->path2, &m->path2_len, "K7Q2-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
                break;
        case BS_MSG_ERROR:
                m->req = req;
                m->code = BS_ERR_CONFLICT;
                SET_STR(m->path, &m->path_len, "base version 7 is not current (9)");
                break;
        case BS_MSG_PING:
        case BS_MSG_PONG:
        case BS_MSG_NOTIFY:
                m->seq = 0x8000000000000001ull;
                break;
        case BS_MSG_PULL:
                m->req = req;
                m->seq = 42;
                break;
        case BS_MSG_PULL_PAGE:
                m->req = req;
                m->flags = BS_PULL_CONTINUE;
                m->seq = 0x0102030405060708ull;
                m->count = 16384;
                break;
        case BS_MSG_CHANGES: {
                BsBuf b = { 0 };
                for (int i = 0; i < 5; i++) {
                        BsRecord r = sample_record(i);
                        cr_assert_eq(bs_record_encode(&b, &r), 0);
                }
                cr_assert_leq(bs_buf_len(&b), sizeof(records));
                records_len = bs_buf_len(&b);
                memcpy(records, bs_buf_head(&b), records_len);
                bs_buf_free(&b);
                m->req = req;
                m->seq = 77;
                m->flags = BS_CHANGES_SNAPSHOT | BS_CHANGES_MORE;
                m->count = 5;
                m->data = records;
                m->data_len = records_len;
                break;
        }
        case BS_MSG_HISTORY:
                m->req = req;
                m->flags = BS_HIST_TREE;
                m->seq = 0xfedcba9876543210ull;
                m->time = -1796047500;
                m->count = 100000;
                m->path_len = strlen("photos/2026/x.jpg");
                memcpy(m->path, "photos/2026/x.jpg", m->path_len + 1);
                break;
        case BS_MSG_HISTORY_ROWS: {
                BsBuf b = { 0 };
                for (int i = 0; i < 3; i++) {
                        BsHistRow r = { .until = (uint64_t) i * 7, .time = 1796047500 + i, .until_time = -i,
                                        .name_len = 6, .device_name = "laptop", .rec = sample_record(i) };
                        cr_assert_eq(bs_hist_row_encode(&b, &r), 0);
                }
                cr_assert_leq(bs_buf_len(&b), sizeof(records));
                records_len = bs_buf_len(&b);
                memcpy(records, bs_buf_head(&b), records_len);
                bs_buf_free(&b);
                m->req = req;
                m->seq = 78;
                m->flags = BS_CHANGES_MORE;
                m->count = 3;
                m->data = records;
                m->data_len = records_len;
                break;
        }
        case BS_MSG_GET:
                m->req = req;
                fill(m->sha, BS_SHA_LEN, 0x33);
                SET_STR(m->path, &m->path_len, "a/b c/d");
                break;
        case BS_MSG_FILE:
                m->req = req;
                m->size = 5ull << 32;
                m->mode = 0100755;
                m->mtime_ns = -1;
                m->seq = 99;
                fill(m->sha, BS_SHA_LEN, 0x44);
                break;
        case BS_MSG_PUT:
                m->req = req;
                m->base = 17;
                m->size = 123456789;
                m->mode = 0100600;
                m->mtime_ns = 1700000000123456789LL;
                SET_STR(m->path, &m->path_len, "docs/report \xe2\x80\x93 final.pdf");
                break;
        case BS_MSG_DATA:
                m->req = req;
                m->data = data_bytes;
                m->data_len = sizeof(data_bytes) - 1;
                break;
        case BS_MSG_PUT_END:
                m->req = req;
                m->flags = BS_PUT_ABORT;
                fill(m->sha, BS_SHA_LEN, 0x55);
                break;
        case BS_MSG_MKDIR:
                m->req = req;
                m->base = 0;
                m->mode = 040700;
                m->mtime_ns = 86400LL * 1000000000LL;
                SET_STR(m->path, &m->path_len, "new dir");
                break;
        case BS_MSG_DELETE:
                m->req = req;
                m->base = 0xffffffffffffffffull;
                SET_STR(m->path, &m->path_len, "old");
                break;
        case BS_MSG_MOVE:
                m->req = req;
                m->base = 5;
                m->base2 = 6;
                SET_STR(m->path, &m->path_len, "from/here");
                SET_STR(m->path2, &m->path2_len, "to/there");
                break;
        case BS_MSG_SYMLINK:
                m->req = req;
                m->base = 8;
                m->mtime_ns = 31337;
                SET_STR(m->path, &m->path_len, "link");
                SET_STR(m->path2, &m->path2_len, "../../etc/passwd");
                break;
        case BS_MSG_ACK:
                m->req = req;
                m->seq = 1234567;
                break;
        case BS_MSG_GET_DELTA:
                m->req = req;
                fill(m->sha, BS_SHA_LEN, 0x36);
                fill(m->have, BS_SHA_LEN, 0x63);
                SET_STR(m->path, &m->path_len, "vm/disk image.qcow2");
                break;
        case BS_MSG_COPY:
                m->req = req;
                m->offset = 0x0000000140000000ull;
                m->size = 0x00000000fff00001ull;
                fill(m->sha, BS_SHA_LEN, 0x77);
                break;
        case BS_MSG_ATTR:
                m->req = req;
                m->base = 0x0a0b0c0d0e0f1011ull;
                m->mode = 04751;
                m->mtime_ns = -1;
                fill(m->sha, BS_SHA_LEN, 0x3c);
                SET_STR(m->path, &m->path_len, "only/its mode");
                break;
        default:
                cr_assert_fail("no sample for type %u", type);
        }
        return m;
}

static void assert_msg_eq(const BsMsg *a, const BsMsg *b) {
        const char *t = bs_msg_type_name(a->type);
        cr_assert_eq(a->type, b->type, "%s: type", t);
        cr_assert_eq(a->req, b->req, "%s: req", t);
        cr_assert_eq(a->version, b->version, "%s: version", t);
        cr_assert_eq(a->min_version, b->min_version, "%s: min_version", t);
        cr_assert_eq(a->max_frame, b->max_frame, "%s: max_frame", t);
        cr_assert_eq(a->seq, b->seq, "%s: seq", t);
        cr_assert_eq(a->base, b->base, "%s: base", t);
        cr_assert_eq(a->base2, b->base2, "%s: base2", t);
        cr_assert_eq(a->size, b->size, "%s: size", t);
        cr_assert_eq(a->offset, b->offset, "%s: offset", t);
        cr_assert_eq(a->mode, b->mode, "%s: mode", t);
        cr_assert_eq(a->mtime_ns, b->mtime_ns, "%s: mtime_ns", t);
        cr_assert_eq(a->time, b->time, "%s: time", t);
        cr_assert_eq(a->code, b->code, "%s: code", t);
        cr_assert_eq(a->flags, b->flags, "%s: flags", t);
        cr_assert_eq(a->count, b->count, "%s: count", t);
        cr_assert_eq(memcmp(a->sha, b->sha, BS_SHA_LEN), 0, "%s: sha", t);
        cr_assert_eq(memcmp(a->have, b->have, BS_SHA_LEN), 0, "%s: have", t);
        cr_assert_eq(memcmp(a->device, b->device, BS_DEVICE_LEN), 0, "%s: device", t);
        cr_assert_eq(a->path_len, b->path_len, "%s: path_len", t);
        cr_assert_eq(memcmp(a->path, b->path, a->path_len + 1), 0, "%s: path", t);
        cr_assert_eq(a->path2_len, b->path2_len, "%s: path2_len", t);
        cr_assert_eq(memcmp(a->path2, b->path2, a->path2_len + 1), 0, "%s: path2", t);
        cr_assert_eq(a->data_len, b->data_len, "%s: data_len", t);
        if (a->data_len)
                cr_assert_eq(memcmp(a->data, b->data, a->data_len), 0, "%s: data", t);
}

/* Encode m, check the frame header, return the frame in a fresh buffer. */
static void encode_frame(const BsMsg *m, BsBuf *out) {
        *out = (BsBuf) { 0 };
        cr_assert_eq(bs_msg_encode(out, m), 0, "encode %s", bs_msg_type_name(m->type));
        const uint8_t *f = bs_buf_head(out);
        size_t n = bs_buf_len(out);
        cr_assert_geq(n, BS_FRAME_HDR);
        uint32_t len;
        memcpy(&len, f, 4);
        cr_assert_eq(be32toh(len), n - 4, "length field");
        cr_assert_eq(f[4], m->type, "type byte");
}

/* A copy of frame f cut (or extended) to total length n, header fixed. */
static uint8_t *reframe(const uint8_t *f, size_t flen, size_t n) {
        uint8_t *p = calloc(1, n + 1);
        cr_assert_not_null(p);
        memcpy(p, f, MIN(flen, n));
        uint32_t len = htobe32((uint32_t) (n - 4));
        memcpy(p, &len, 4);
        return p;
}

static int decode_buf(const BsBuf *b, BsMsg *m) {
        return bs_msg_decode(bs_buf_head(b), bs_buf_len(b), m);
}

/* ---- round trips ---------------------------------------------------- */

Test(proto, round_trip_every_type) {
        BsMsg *got = malloc(sizeof(*got));
        cr_assert_not_null(got);
        for (size_t i = 0; i < N_TYPES; i++) {
                BsMsg *m = sample(all_types[i]);
                BsBuf b;
                encode_frame(m, &b);

                size_t flen = 0;
                cr_assert_eq(bs_frame_peek(bs_buf_head(&b), bs_buf_len(&b), BS_FRAME_MAX_DEFAULT, &flen), 1);
                cr_assert_eq(flen, bs_buf_len(&b));

                memset(got, 0xa5, sizeof(*got));
                cr_assert_eq(bs_msg_decode(bs_buf_head(&b), flen, got), 0,
                             "decode %s", bs_msg_type_name(m->type));
                assert_msg_eq(m, got);
                if (m->type == BS_MSG_DATA || m->type == BS_MSG_CHANGES || m->type == BS_MSG_HISTORY_ROWS) {
                        /* Points into the frame, after the fixed fields. */
                        cr_assert_geq((const uint8_t *) got->data, bs_buf_head(&b));
                        cr_assert_eq((const uint8_t *) got->data + got->data_len,
                                     bs_buf_head(&b) + bs_buf_len(&b));
                }
                bs_buf_free(&b);
                free(m);
        }
        free(got);
}

Test(proto, round_trip_empty_strings_and_extremes) {
        BsMsg m, got;
        BsBuf b;

        bs_msg_init(&m, BS_MSG_HELLO, 0);
        m.min_version = 0xffff;
        m.version = 0xffff;
        m.max_frame = 0xffffffffu;
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        assert_msg_eq(&m, &got);
        bs_buf_free(&b);

        bs_msg_init(&m, BS_MSG_PUT, 0xffffffffu);
        m.base = m.size = UINT64_MAX;
        m.mode = 0xffffffffu;
        m.mtime_ns = INT64_MIN;
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        assert_msg_eq(&m, &got);
        bs_buf_free(&b);

        bs_msg_init(&m, BS_MSG_DATA, 1);
        encode_frame(&m, &b);
        cr_assert_eq(bs_buf_len(&b), BS_FRAME_HDR + 4);
        cr_assert_eq(decode_buf(&b, &got), 0);
        cr_assert_eq(got.data_len, 0);
        bs_buf_free(&b);

        bs_msg_init(&m, BS_MSG_CHANGES, 1);
        m.seq = 5;
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        assert_msg_eq(&m, &got);
        bs_buf_free(&b);
}

Test(proto, round_trip_limits_and_odd_bytes) {
        static BsMsg m, got;
        BsBuf b;

        /* Strings at exactly their limit. */
        bs_msg_init(&m, BS_MSG_MOVE, 3);
        memset(m.path, 'a', BS_PATH_MAX);
        m.path[BS_PATH_MAX] = 0;
        m.path_len = BS_PATH_MAX;
        memset(m.path2, 'b', BS_PATH_MAX);
        m.path2[BS_PATH_MAX] = 0;
        m.path2_len = BS_PATH_MAX;
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        assert_msg_eq(&m, &got);
        bs_buf_free(&b);

        bs_msg_init(&m, BS_MSG_HELLO, 0);
        memset(m.path2, 'n', BS_NAME_MAX);
        m.path2[BS_NAME_MAX] = 0;
        m.path2_len = BS_NAME_MAX;
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        assert_msg_eq(&m, &got);
        bs_buf_free(&b);

        /* A NUL on the wire survives, and path_len shows it. */
        bs_msg_init(&m, BS_MSG_PUT, 4);
        set_str(m.path, &m.path_len, "a\0b", 3);
        encode_frame(&m, &b);
        cr_assert_eq(decode_buf(&b, &got), 0);
        cr_assert_eq(got.path_len, 3);
        cr_assert_eq(memcmp(got.path, "a\0b", 4), 0);
        cr_assert_eq(strlen(got.path), 1);
        bs_buf_free(&b);
}

Test(proto, exact_layouts) {
        BsMsg m;
        BsBuf b;

        /* PING: u32 len=9, type 4, u64 nonce. */
        bs_msg_init(&m, BS_MSG_PING, 0);
        m.seq = 0x0102030405060708ull;
        encode_frame(&m, &b);
        static const uint8_t ping[] = { 0, 0, 0, 9, 4, 1, 2, 3, 4, 5, 6, 7, 8 };
        cr_assert_eq(bs_buf_len(&b), sizeof(ping));
        cr_assert_eq(memcmp(bs_buf_head(&b), ping, sizeof(ping)), 0);
        bs_buf_free(&b);

        /* DELETE: u32 req, u64 base, str path. */
        bs_msg_init(&m, BS_MSG_DELETE, 0x0a0b0c0d);
        m.base = 2;
        SET_STR(m.path, &m.path_len, "xy");
        encode_frame(&m, &b);
        static const uint8_t del[] = { 0, 0, 0, 17, 24, 0x0a, 0x0b, 0x0c, 0x0d,
                                       0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 'x', 'y' };
        cr_assert_eq(bs_buf_len(&b), sizeof(del));
        cr_assert_eq(memcmp(bs_buf_head(&b), del, sizeof(del)), 0);
        bs_buf_free(&b);

        /* HELLO: u16 min, u16 max, u32 max_frame, dev, str token, str name. */
        bs_msg_init(&m, BS_MSG_HELLO, 0);
        m.min_version = 1;
        m.version = 2;
        m.max_frame = 0x00100000;
        memset(m.device, 0xee, BS_DEVICE_LEN);
        SET_STR(m.path2, &m.path2_len, "h");
        encode_frame(&m, &b);
        const uint8_t *f = bs_buf_head(&b);
        cr_assert_eq(bs_buf_len(&b), 5 + 2 + 2 + 4 + 16 + 2 + 2 + 1);
        cr_assert_eq(f[4], 1);
        cr_assert_eq(memcmp(f + 5, "\0\1\0\2\0\x10\0\0", 8), 0);
        cr_assert_eq(f[13], 0xee);
        cr_assert_eq(f[28], 0xee);
        cr_assert_eq(memcmp(f + 29, "\0\0\0\1h", 5), 0);
        bs_buf_free(&b);

        /* COPY: u32 req, u64 offset, u64 length, sha content (docs/protocol.md). */
        bs_msg_init(&m, BS_MSG_COPY, 7);
        m.offset = 0x10000;
        m.size = 0x20000;
        memset(m.sha, 0xcc, BS_SHA_LEN);
        encode_frame(&m, &b);
        f = bs_buf_head(&b);
        cr_assert_eq(bs_buf_len(&b), 5 + 4 + 8 + 8 + 32);
        cr_assert_eq(f[4], 27);
        cr_assert_eq(memcmp(f + 5, "\0\0\0\7" "\0\0\0\0\0\1\0\0" "\0\0\0\0\0\2\0\0", 20), 0);
        cr_assert_eq(f[25], 0xcc);
        cr_assert_eq(f[56], 0xcc);
        bs_buf_free(&b);

        /* GET_DELTA: u32 req, sha content, sha have, str path. */
        bs_msg_init(&m, BS_MSG_GET_DELTA, 1);
        memset(m.sha, 0xaa, BS_SHA_LEN);
        memset(m.have, 0xbb, BS_SHA_LEN);
        SET_STR(m.path, &m.path_len, "f");
        encode_frame(&m, &b);
        f = bs_buf_head(&b);
        cr_assert_eq(bs_buf_len(&b), 5 + 4 + 32 + 32 + 2 + 1);
        cr_assert_eq(f[4], 14);
        cr_assert_eq(f[9], 0xaa);
        cr_assert_eq(f[40], 0xaa);
        cr_assert_eq(f[41], 0xbb);
        cr_assert_eq(f[72], 0xbb);
        cr_assert_eq(memcmp(f + 73, "\0\1f", 3), 0);
        bs_buf_free(&b);

        /* ATTR: u32 req, u64 base, u32 mode, i64 mtime_ns, sha content, str path. */
        bs_msg_init(&m, BS_MSG_ATTR, 2);
        m.base = 3;
        m.mode = 0640;
        m.mtime_ns = 0x0102030405060708ll;
        memset(m.sha, 0xdd, BS_SHA_LEN);
        SET_STR(m.path, &m.path_len, "f");
        encode_frame(&m, &b);
        f = bs_buf_head(&b);
        cr_assert_eq(bs_buf_len(&b), 5 + 4 + 8 + 4 + 8 + 32 + 2 + 1);
        cr_assert_eq(f[4], 28);
        cr_assert_eq(memcmp(f + 5, "\0\0\0\2" "\0\0\0\0\0\0\0\3" "\0\0\1\xa0" "\1\2\3\4\5\6\7\x08", 24), 0);
        cr_assert_eq(f[29], 0xdd);
        cr_assert_eq(f[60], 0xdd);
        cr_assert_eq(memcmp(f + 61, "\0\1f", 3), 0);
        bs_buf_free(&b);

        cr_assert_eq(BS_RECORD_MIN, 82, "docs/protocol.md: 82 bytes is the smallest record");
}

Test(proto, pipelined_stream) {
        BsBuf b = { 0 };
        for (size_t i = 0; i < N_TYPES; i++) {
                BsMsg *m = sample(all_types[i]);
                cr_assert_eq(bs_msg_encode(&b, m), 0);
                free(m);
        }
        BsMsg *got = malloc(sizeof(*got));
        for (size_t i = 0; i < N_TYPES; i++) {
                size_t flen = 0;
                cr_assert_eq(bs_frame_peek(bs_buf_head(&b), bs_buf_len(&b), BS_FRAME_MAX_DEFAULT, &flen), 1);
                cr_assert_eq(bs_msg_decode(bs_buf_head(&b), flen, got), 0);
                BsMsg *want = sample(all_types[i]);
                assert_msg_eq(want, got);
                free(want);
                bs_buf_consume(&b, flen);
        }
        cr_assert_eq(bs_buf_len(&b), 0);
        free(got);
        bs_buf_free(&b);
}

/* bs_buf_reserve() compacts the buffer (moves the unconsumed bytes to the
 * front) when it needs room. bs_msg_encode() remembers the frame's offset
 * (out->end) before appending the fields; a compaction in the middle of
 * the message invalidates it, and bs_frame_end() then writes the length at
 * the stale offset. Real send buffers are partly consumed all the time. */
Test(proto, encode_into_partly_consumed_buffer) {
        BsBuf b = { 0 };
        uint8_t junk[4000];
        memset(junk, 'j', sizeof(junk));
        cr_assert_eq(bs_buf_append(&b, junk, sizeof(junk)), 0);
        cr_assert_eq(b.cap, 4096);
        bs_buf_consume(&b, 3990); /* 10 bytes still waiting to be sent */

        BsMsg *m = sample(BS_MSG_PUT);
        memset(m->path, 'p', 300);
        m->path[300] = 0;
        m->path_len = 300;
        cr_assert_eq(bs_msg_encode(&b, m), 0);

        cr_assert_eq(bs_buf_len(&b), 10 + BS_FRAME_HDR + 4 + 8 + 8 + 4 + 8 + 2 + 300);
        cr_assert_eq(memcmp(bs_buf_head(&b), junk, 10), 0, "pending bytes kept");
        const uint8_t *f = bs_buf_head(&b) + 10;
        size_t flen = 0;
        int r = bs_frame_peek(f, bs_buf_len(&b) - 10, BS_FRAME_MAX_DEFAULT, &flen);
        cr_expect_eq(r, 1, "frame header after a compaction is wrong (peek %d)", r);
        if (r == 1) {
                BsMsg *got = malloc(sizeof(*got));
                cr_expect_eq(bs_msg_decode(f, flen, got), 0);
                free(got);
        }
        free(m);
        bs_buf_free(&b);
}

/* ---- framing -------------------------------------------------------- */

Test(proto, peek_short_frames) {
        BsMsg *m = sample(BS_MSG_PUT);
        BsBuf b;
        encode_frame(m, &b);
        size_t n = bs_buf_len(&b);
        for (size_t k = 0; k < n; k++) {
                size_t flen = 12345;
                cr_assert_eq(bs_frame_peek(bs_buf_head(&b), k, BS_FRAME_MAX_DEFAULT, &flen), 0,
                             "%zu of %zu bytes", k, n);
                cr_assert_eq(flen, 12345, "frame_len untouched while waiting");
        }
        /* More bytes than the frame: exactly one frame is delimited. */
        cr_assert_eq(bs_buf_append(&b, "extra", 5), 0);
        size_t flen = 0;
        cr_assert_eq(bs_frame_peek(bs_buf_head(&b), n + 5, BS_FRAME_MAX_DEFAULT, &flen), 1);
        cr_assert_eq(flen, n);
        bs_buf_free(&b);
        free(m);
}

Test(proto, peek_zero_length) {
        static const uint8_t z[] = { 0, 0, 0, 0, 4 };
        size_t flen;
        cr_assert_eq(bs_frame_peek(z, 4, BS_FRAME_MAX_DEFAULT, &flen), -EBADMSG);
        cr_assert_eq(bs_frame_peek(z, 5, BS_FRAME_MAX_DEFAULT, &flen), -EBADMSG);
}

Test(proto, peek_over_max_frame) {
        uint8_t h[8] = { 0 };
        size_t flen;
        uint32_t max = BS_FRAME_MIN;

        uint32_t len = htobe32(max + 1);
        memcpy(h, &len, 4);
        /* Refused from the header alone, before the payload arrives. */
        cr_assert_eq(bs_frame_peek(h, 4, max, &flen), -EMSGSIZE);
        cr_assert_eq(bs_frame_peek(h, sizeof(h), max, &flen), -EMSGSIZE);

        len = htobe32(0xffffffffu);
        memcpy(h, &len, 4);
        cr_assert_eq(bs_frame_peek(h, 4, BS_FRAME_LIMIT, &flen), -EMSGSIZE);

        /* Exactly the maximum is allowed: more bytes are needed. */
        len = htobe32(max);
        memcpy(h, &len, 4);
        cr_assert_eq(bs_frame_peek(h, sizeof(h), max, &flen), 0);

        uint8_t *big = calloc(1, 4 + (size_t) max);
        memcpy(big, &len, 4);
        cr_assert_eq(bs_frame_peek(big, 4 + (size_t) max, max, &flen), 1);
        cr_assert_eq(flen, 4 + (size_t) max);
        free(big);
}

Test(proto, decode_too_short_for_header) {
        static const uint8_t f[] = { 0, 0, 0, 1, BS_MSG_PING };
        BsMsg m;
        for (size_t k = 0; k < BS_FRAME_HDR; k++)
                cr_assert_eq(bs_msg_decode(f, k, &m), -EBADMSG, "len %zu", k);
}

Test(proto, decode_type_only_frames) {
        /* A frame that is just a type byte: no message is empty. */
        BsMsg m;
        for (size_t i = 0; i < N_TYPES; i++) {
                uint8_t f[5] = { 0, 0, 0, 1, all_types[i] };
                cr_assert_eq(bs_msg_decode(f, sizeof(f), &m), -EBADMSG, "%s",
                             bs_msg_type_name(all_types[i]));
        }
}

Test(proto, truncated_at_every_length) {
        BsMsg *got = malloc(sizeof(*got));
        for (size_t i = 0; i < N_TYPES; i++) {
                uint8_t type = all_types[i];
                BsMsg *m = sample(type);
                if (type == BS_MSG_CHANGES || type == BS_MSG_HISTORY_ROWS)
                        m->count = 0, m->data = NULL, m->data_len = 0;
                BsBuf b;
                encode_frame(m, &b);
                size_t n = bs_buf_len(&b);
                /* DATA accepts any length after its req; test up to there. */
                size_t stop = type == BS_MSG_DATA ? BS_FRAME_HDR + 4 : n;
                for (size_t k = BS_FRAME_HDR; k < stop; k++) {
                        uint8_t *f = reframe(bs_buf_head(&b), n, k);
                        /* As the peer sends it: header says k - 4. */
                        cr_assert_eq(bs_msg_decode(f, k, got), -EBADMSG,
                                     "%s cut to %zu of %zu bytes", bs_msg_type_name(type), k, n);
                        /* The original header with fewer bytes given. */
                        cr_assert_eq(bs_msg_decode(bs_buf_head(&b), k, got), -EBADMSG);
                        free(f);
                }
                bs_buf_free(&b);
                free(m);
        }
        free(got);
}

Test(proto, data_is_rest_of_frame) {
        BsMsg *m = sample(BS_MSG_DATA);
        BsBuf b;
        encode_frame(m, &b);
        size_t n = bs_buf_len(&b);
        BsMsg got;
        for (size_t k = BS_FRAME_HDR + 4; k <= n; k++) {
                uint8_t *f = reframe(bs_buf_head(&b), n, k);
                cr_assert_eq(bs_msg_decode(f, k, &got), 0);
                cr_assert_eq(got.req, m->req);
                cr_assert_eq(got.data_len, k - BS_FRAME_HDR - 4);
                cr_assert_eq(memcmp(got.data, m->data, got.data_len), 0);
                free(f);
        }
        bs_buf_free(&b);
        free(m);
}

Test(proto, trailing_bytes) {
        BsMsg *got = malloc(sizeof(*got));
        for (size_t i = 0; i < N_TYPES; i++) {
                uint8_t type = all_types[i];
                /* DATA and CHANGES end with "the rest of the frame". */
                if (type == BS_MSG_DATA || type == BS_MSG_CHANGES || type == BS_MSG_HISTORY_ROWS)
                        continue;
                BsMsg *m = sample(type);
                BsBuf b;
                encode_frame(m, &b);
                size_t n = bs_buf_len(&b);
                for (size_t extra = 1; extra <= 9; extra += 8) {
                        uint8_t *f = reframe(bs_buf_head(&b), n, n + extra);
                        cr_assert_eq(bs_msg_decode(f, n + extra, got), -EBADMSG,
                                     "%s with %zu trailing bytes", bs_msg_type_name(type), extra);
                        free(f);
                }
                bs_buf_free(&b);
                free(m);
        }
        free(got);
}

Test(proto, unknown_types) {
        BsMsg m;
        for (unsigned t = 0; t < 256; t++) {
                bool known = false;
                for (size_t i = 0; i < N_TYPES; i++)
                        known |= all_types[i] == t;
                if (known)
                        continue;
                /* Give it a payload that would be a valid ACK/PULL. */
                uint8_t f[BS_FRAME_HDR + 12] = { 0, 0, 0, 13, (uint8_t) t };
                cr_assert_eq(bs_msg_decode(f, sizeof(f), &m), -EBADMSG, "type %u", t);
                cr_assert_str_eq(bs_msg_type_name((uint8_t) t), "unknown");
        }
        /* The same payload under a known type decodes. */
        uint8_t f[BS_FRAME_HDR + 12] = { 0, 0, 0, 13, BS_MSG_ACK };
        cr_assert_eq(bs_msg_decode(f, sizeof(f), &m), 0);
}

Test(proto, encode_unknown_type) {
        BsBuf b = { 0 };
        cr_assert_eq(bs_buf_append(&b, "keep", 4), 0);
        BsMsg m;
        bs_msg_init(&m, 99, 1);
        cr_assert_eq(bs_msg_encode(&b, &m), -EINVAL);
        cr_assert_eq(bs_buf_len(&b), 4, "nothing appended");
        cr_assert_eq(memcmp(bs_buf_head(&b), "keep", 4), 0);
        bs_buf_free(&b);
}

/* ---- strings over their limit ------------------------------------- */

/* Build a frame by hand, so that limits the encoder might enforce do not
 * stop us from producing hostile input. */
static void put_str_n(BsBuf *b, char c, size_t n) {
        char *s = malloc(n + 1);
        memset(s, c, n);
        cr_assert_eq(bs_buf_put_str(b, s, n), 0);
        free(s);
}

static int decode_path_msg(uint8_t type, size_t plen, size_t p2len) {
        BsBuf b = { 0 };
        size_t off;
        cr_assert_eq(bs_frame_begin(&b, type, &off), 0);
        switch (type) {
        case BS_MSG_HELLO:
                bs_buf_put_u16(&b, 1);
                bs_buf_put_u16(&b, 1);
                bs_buf_put_u32(&b, BS_FRAME_MAX_DEFAULT);
                bs_buf_append(&b, "0123456789abcdef", BS_DEVICE_LEN);
                put_str_n(&b, 't', plen);
                put_str_n(&b, 'n', p2len);
                break;
        case BS_MSG_WELCOME:
                bs_buf_put_u16(&b, 1);
                bs_buf_put_u32(&b, BS_FRAME_MAX_DEFAULT);
                bs_buf_put_u64(&b, 1);
                put_str_n(&b, 'i', plen);
                put_str_n(&b, 't', p2len);
                break;
        case BS_MSG_ERROR:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u16(&b, BS_ERR_IO);
                put_str_n(&b, 'e', plen);
                break;
        case BS_MSG_GET:
                bs_buf_put_u32(&b, 1);
                bs_buf_append(&b, "0123456789abcdef0123456789abcdef", BS_SHA_LEN);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_GET_DELTA:
                bs_buf_put_u32(&b, 1);
                bs_buf_append(&b, "0123456789abcdef0123456789abcdef", BS_SHA_LEN);
                bs_buf_append(&b, "fedcba9876543210fedcba9876543210", BS_SHA_LEN);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_PUT:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 0);
                bs_buf_put_u64(&b, 0);
                bs_buf_put_u32(&b, 0644);
                bs_buf_put_u64(&b, 0);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_MKDIR:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 0);
                bs_buf_put_u32(&b, 0755);
                bs_buf_put_u64(&b, 0);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_ATTR:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 1);
                bs_buf_put_u32(&b, 0644);
                bs_buf_put_u64(&b, 0);
                bs_buf_append(&b, "0123456789abcdef0123456789abcdef", BS_SHA_LEN);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_DELETE:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 0);
                put_str_n(&b, 'p', plen);
                break;
        case BS_MSG_MOVE:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 0);
                bs_buf_put_u64(&b, 0);
                put_str_n(&b, 'p', plen);
                put_str_n(&b, 'q', p2len);
                break;
        case BS_MSG_SYMLINK:
                bs_buf_put_u32(&b, 1);
                bs_buf_put_u64(&b, 0);
                bs_buf_put_u64(&b, 0);
                put_str_n(&b, 'p', plen);
                put_str_n(&b, 'q', p2len);
                break;
        default:
                cr_assert_fail("type %u", type);
        }
        bs_frame_end(&b, off);
        BsMsg *m = malloc(sizeof(*m));
        int r = bs_msg_decode(bs_buf_head(&b), bs_buf_len(&b), m);
        if (r == 0) {
                cr_assert_eq(m->path_len, plen);
                cr_assert_eq(m->path2_len, p2len);
                cr_assert_eq(strlen(m->path), plen, "NUL-terminated");
                cr_assert_eq(strlen(m->path2), p2len, "NUL-terminated");
        }
        free(m);
        bs_buf_free(&b);
        return r;
}

Test(proto, strings_over_limit) {
        const size_t P = BS_PATH_MAX, T = BS_TEXT_MAX, N = BS_NAME_MAX;

        cr_assert_eq(decode_path_msg(BS_MSG_HELLO, T, N), 0);
        cr_assert_eq(decode_path_msg(BS_MSG_HELLO, T + 1, 1), -EBADMSG, "token");
        cr_assert_eq(decode_path_msg(BS_MSG_HELLO, 1, N + 1), -EBADMSG, "device name");
        cr_assert_eq(decode_path_msg(BS_MSG_HELLO, 65535, 1), -EBADMSG);

        cr_assert_eq(decode_path_msg(BS_MSG_WELCOME, T, T), 0);
        cr_assert_eq(decode_path_msg(BS_MSG_WELCOME, T + 1, 0), -EBADMSG);
        cr_assert_eq(decode_path_msg(BS_MSG_WELCOME, 0, T + 1), -EBADMSG);

        cr_assert_eq(decode_path_msg(BS_MSG_ERROR, T, 0), 0);
        cr_assert_eq(decode_path_msg(BS_MSG_ERROR, T + 1, 0), -EBADMSG);

        static const uint8_t one_path[] = { BS_MSG_GET, BS_MSG_GET_DELTA, BS_MSG_PUT, BS_MSG_MKDIR, BS_MSG_DELETE,
                                            BS_MSG_ATTR };
        for (size_t i = 0; i < sizeof(one_path); i++) {
                cr_assert_eq(decode_path_msg(one_path[i], P, 0), 0, "%s", bs_msg_type_name(one_path[i]));
                cr_assert_eq(decode_path_msg(one_path[i], P + 1, 0), -EBADMSG, "%s",
                             bs_msg_type_name(one_path[i]));
                cr_assert_eq(decode_path_msg(one_path[i], 65535, 0), -EBADMSG);
        }
        static const uint8_t two_paths[] = { BS_MSG_MOVE, BS_MSG_SYMLINK };
        for (size_t i = 0; i < sizeof(two_paths); i++) {
                cr_assert_eq(decode_path_msg(two_paths[i], P, P), 0);
                cr_assert_eq(decode_path_msg(two_paths[i], P + 1, 1), -EBADMSG);
                cr_assert_eq(decode_path_msg(two_paths[i], 1, P + 1), -EBADMSG);
        }
}

/* The header promises -E2BIG "when a field is over its limit", and a peer
 * refuses such a frame; yet bs_msg_encode() checks only the u16 string
 * limit (65535), so it emits frames the other side must reject, and with
 * path_len > BS_PATH_MAX + 1 it reads past the end of m->path. */
Test(proto, encode_refuses_strings_over_limit) {
        static BsMsg m;
        BsBuf b = { 0 };

        bs_msg_init(&m, BS_MSG_PUT, 1);
        memset(m.path, 'p', sizeof(m.path));
        m.path_len = BS_PATH_MAX + 1; /* stays inside the struct */
        cr_expect_eq(bs_msg_encode(&b, &m), -E2BIG, "PUT path of %u bytes", BS_PATH_MAX + 1);
        cr_expect_eq(bs_buf_len(&b), 0);
        bs_buf_free(&b);

        bs_msg_init(&m, BS_MSG_HELLO, 0);
        memset(m.path2, 'n', BS_NAME_MAX + 1);
        m.path2[BS_NAME_MAX + 1] = 0;
        m.path2_len = BS_NAME_MAX + 1;
        cr_expect_eq(bs_msg_encode(&b, &m), -E2BIG, "HELLO device name of %u bytes", BS_NAME_MAX + 1);
        cr_expect_eq(bs_buf_len(&b), 0);
        bs_buf_free(&b);
}

/* ---- CHANGES and records ------------------------------------------ */

Test(proto, changes_records_round_trip) {
        BsMsg *m = sample(BS_MSG_CHANGES);
        BsBuf b;
        encode_frame(m, &b);
        BsMsg *got = malloc(sizeof(*got));
        cr_assert_eq(decode_buf(&b, got), 0);
        cr_assert_eq(got->count, 5);
        cr_assert_eq(got->flags, BS_CHANGES_SNAPSHOT | BS_CHANGES_MORE);

        BsReader rd;
        bs_reader_init(&rd, got->data, got->data_len);
        static BsRecord r;
        for (uint32_t i = 0; i < got->count; i++) {
                BsRecord want = sample_record((int) i);
                memset(&r, 0x5a, sizeof(r));
                cr_assert_eq(bs_record_decode(&rd, &r), 0, "record %u", i);
                cr_assert_eq(r.seq, want.seq);
                cr_assert_eq(r.op, want.op);
                cr_assert_eq(r.kind, want.kind);
                cr_assert_eq(memcmp(r.device, want.device, BS_DEVICE_LEN), 0);
                cr_assert_eq(r.size, want.size);
                cr_assert_eq(r.mode, want.mode);
                cr_assert_eq(r.mtime_ns, want.mtime_ns);
                cr_assert_eq(memcmp(r.sha, want.sha, BS_SHA_LEN), 0);
                cr_assert_eq(r.path_len, want.path_len);
                cr_assert_str_eq(r.path, want.path);
                cr_assert_eq(r.path2_len, want.path2_len);
                cr_assert_str_eq(r.path2, want.path2);
        }
        cr_assert_eq(rd.left, 0);
        cr_assert_not(rd.bad);
        free(got);
        free(m);
        bs_buf_free(&b);
}

Test(proto, record_every_op_and_kind) {
        for (uint8_t op = BS_OP_PUT; op <= BS_OP_SYMLINK; op++) {
                for (uint8_t kind = BS_KIND_FILE; kind <= BS_KIND_SYMLINK; kind++) {
                        BsRecord rec = sample_record(0), back;
                        rec.op = op;
                        rec.kind = kind;
                        BsBuf b = { 0 };
                        cr_assert_eq(bs_record_encode(&b, &rec), 0);
                        BsReader rd;
                        bs_reader_init(&rd, bs_buf_head(&b), bs_buf_len(&b));
                        cr_assert_eq(bs_record_decode(&rd, &back), 0, "op %u kind %u", op, kind);
                        cr_assert_eq(back.op, op);
                        cr_assert_eq(back.kind, kind);
                        bs_buf_free(&b);
                }
        }
}

static int decode_record_with(uint8_t op, uint8_t kind) {
        BsRecord rec = sample_record(0);
        static BsRecord back;
        rec.op = op;
        rec.kind = kind;
        BsBuf b = { 0 };
        cr_assert_eq(bs_record_encode(&b, &rec), 0);
        BsReader rd;
        bs_reader_init(&rd, bs_buf_head(&b), bs_buf_len(&b));
        int r = bs_record_decode(&rd, &back);
        bs_buf_free(&b);
        return r;
}

Test(proto, record_bad_op_kind) {
        static const uint8_t bad_ops[] = { 0, 6, 7, 100, 255 };
        static const uint8_t bad_kinds[] = { 0, 4, 5, 255 };
        for (size_t i = 0; i < sizeof(bad_ops); i++)
                cr_assert_eq(decode_record_with(bad_ops[i], BS_KIND_FILE), -EBADMSG, "op %u", bad_ops[i]);
        for (size_t i = 0; i < sizeof(bad_kinds); i++)
                cr_assert_eq(decode_record_with(BS_OP_PUT, bad_kinds[i]), -EBADMSG, "kind %u", bad_kinds[i]);
        cr_assert_eq(decode_record_with(BS_OP_DELETE, BS_KIND_DIR), 0);
}

Test(proto, record_truncated_at_every_length) {
        BsRecord rec = sample_record(3); /* a MOVE: both strings set */
        static BsRecord back;
        BsBuf b = { 0 };
        cr_assert_eq(bs_record_encode(&b, &rec), 0);
        size_t n = bs_buf_len(&b);
        cr_assert_eq(n, BS_RECORD_MIN + rec.path_len + rec.path2_len);
        for (size_t k = 0; k < n; k++) {
                BsReader rd;
                bs_reader_init(&rd, bs_buf_head(&b), k);
                cr_assert_eq(bs_record_decode(&rd, &back), -EBADMSG, "%zu of %zu bytes", k, n);
        }
        bs_buf_free(&b);
}

static int decode_record_paths(size_t plen, size_t p2len) {
        BsBuf b = { 0 };
        static BsRecord back;
        bs_buf_put_u64(&b, 1);
        bs_buf_put_u8(&b, BS_OP_MOVE);
        bs_buf_put_u8(&b, BS_KIND_FILE);
        bs_buf_append(&b, "0123456789abcdef", BS_DEVICE_LEN);
        bs_buf_put_u64(&b, 0);
        bs_buf_put_u32(&b, 0644);
        bs_buf_put_u64(&b, 0);
        bs_buf_append(&b, "0123456789abcdef0123456789abcdef", BS_SHA_LEN);
        put_str_n(&b, 'p', plen);
        put_str_n(&b, 'q', p2len);
        BsReader rd;
        bs_reader_init(&rd, bs_buf_head(&b), bs_buf_len(&b));
        int r = bs_record_decode(&rd, &back);
        if (r == 0) {
                cr_assert_eq(back.path_len, plen);
                cr_assert_eq(back.path2_len, p2len);
                cr_assert_eq(rd.left, 0);
        }
        bs_buf_free(&b);
        return r;
}

Test(proto, record_strings_over_limit) {
        cr_assert_eq(decode_record_paths(BS_PATH_MAX, BS_PATH_MAX), 0);
        cr_assert_eq(decode_record_paths(BS_PATH_MAX + 1, 1), -EBADMSG);
        cr_assert_eq(decode_record_paths(1, BS_PATH_MAX + 1), -EBADMSG);
        cr_assert_eq(decode_record_paths(65535, 0), -EBADMSG);
}

static int decode_changes(uint32_t count, size_t payload) {
        BsBuf b = { 0 };
        size_t off;
        cr_assert_eq(bs_frame_begin(&b, BS_MSG_CHANGES, &off), 0);
        bs_buf_put_u32(&b, 1);
        bs_buf_put_u64(&b, 2);
        bs_buf_put_u8(&b, 0);
        bs_buf_put_u32(&b, count);
        uint8_t *z = calloc(1, payload + 1);
        bs_buf_append(&b, z, payload);
        free(z);
        bs_frame_end(&b, off);
        BsMsg *m = malloc(sizeof(*m));
        int r = bs_msg_decode(bs_buf_head(&b), bs_buf_len(&b), m);
        if (r == 0) {
                cr_assert_eq(m->count, count);
                cr_assert_eq(m->data_len, payload);
        }
        free(m);
        bs_buf_free(&b);
        return r;
}

Test(proto, changes_count_must_fit) {
        cr_assert_eq(decode_changes(0, 0), 0);
        cr_assert_eq(decode_changes(1, BS_RECORD_MIN), 0);
        cr_assert_eq(decode_changes(1, BS_RECORD_MIN - 1), -EBADMSG);
        cr_assert_eq(decode_changes(1, 0), -EBADMSG);
        cr_assert_eq(decode_changes(10, 10 * BS_RECORD_MIN), 0);
        cr_assert_eq(decode_changes(10, 10 * BS_RECORD_MIN - 1), -EBADMSG);
        cr_assert_eq(decode_changes(0xffffffffu, 1000), -EBADMSG);
        /* count * 82 = 2^32 + 4: a 32-bit product would wrap to 4 and pass. */
        cr_assert_eq(decode_changes(52377650u, 100), -EBADMSG);
        cr_assert_eq(decode_changes(0x80000000u, 0), -EBADMSG);
}

Test(proto, changes_truncated_records_detected) {
        BsMsg *m = sample(BS_MSG_CHANGES);
        BsBuf b;
        encode_frame(m, &b);
        size_t n = bs_buf_len(&b);
        BsMsg *got = malloc(sizeof(*got));
        static BsRecord r;
        for (size_t k = BS_FRAME_HDR; k < n; k++) {
                uint8_t *f = reframe(bs_buf_head(&b), n, k);
                int ok = bs_msg_decode(f, k, got) == 0;
                if (ok) {
                        /* The frame looked plausible; the records cannot all decode. */
                        BsReader rd;
                        bs_reader_init(&rd, got->data, got->data_len);
                        for (uint32_t i = 0; i < got->count && ok; i++)
                                ok = bs_record_decode(&rd, &r) == 0;
                }
                cr_assert_not(ok, "CHANGES cut to %zu of %zu bytes decoded", k, n);
                free(f);
        }
        free(got);
        free(m);
        bs_buf_free(&b);
}

/* ---- names ------------------------------------------------------- */

Test(proto, names) {
        static const char *const names[] = {
                "HELLO", "WELCOME", "ERROR", "PING", "PONG", "NOTIFY", "PULL", "CHANGES", "GET",
                "FILE", "PUT", "DATA", "PUT_END", "MKDIR", "DELETE", "MOVE", "SYMLINK", "ACK",
                "GET_DELTA", "COPY", "ATTR", "HISTORY", "HISTORY_ROWS", "PULL_PAGE",
        };
        for (size_t i = 0; i < N_TYPES; i++)
                cr_assert_str_eq(bs_msg_type_name(all_types[i]), names[i]);

        cr_assert_str_eq(bs_err_name(BS_ERR_BAD_FRAME), "BAD_FRAME");
        cr_assert_str_eq(bs_err_name(BS_ERR_CONFLICT), "CONFLICT");
        cr_assert_str_eq(bs_err_name(BS_ERR_TIMEOUT), "TIMEOUT");
        for (uint16_t c = BS_ERR_BAD_FRAME; c <= BS_ERR_TIMEOUT; c++)
                cr_assert_str_neq(bs_err_name(c), "UNKNOWN", "code %u", c);
        cr_assert_str_eq(bs_err_name(0), "UNKNOWN");
        cr_assert_str_eq(bs_err_name(16), "UNKNOWN");
        cr_assert_str_eq(bs_err_name(0xffff), "UNKNOWN");
}

Test(proto, msg_init) {
        BsMsg *m = malloc(sizeof(*m));
        memset(m, 0xff, sizeof(*m));
        bs_msg_init(m, BS_MSG_PUT, 7);
        cr_assert_eq(m->type, BS_MSG_PUT);
        cr_assert_eq(m->req, 7);
        cr_assert_eq(m->seq, 0);
        cr_assert_eq(m->base, 0);
        cr_assert_eq(m->size, 0);
        cr_assert_eq(m->flags, 0);
        cr_assert_eq(m->count, 0);
        cr_assert_eq(m->path_len, 0);
        cr_assert_eq(m->path2_len, 0);
        cr_assert_eq(m->path[0], 0);
        cr_assert_eq(m->path2[0], 0);
        cr_assert_null(m->data);
        cr_assert_eq(m->data_len, 0);
        for (size_t i = 0; i < BS_SHA_LEN; i++)
                cr_assert_eq(m->sha[i], 0);
        free(m);
}

Test(proto, hist_row_round_trip_and_truncation) {
        BsHistRow r = { .until = 9, .time = 1796047500, .until_time = 1796047600, .rec = sample_record(3) };
        static BsHistRow back;
        r.name_len = BS_NAME_MAX;
        memset(r.device_name, 'n', BS_NAME_MAX);
        r.device_name[BS_NAME_MAX] = 0;
        BsBuf b = { 0 };
        cr_assert_eq(bs_hist_row_encode(&b, &r), 0);
        size_t n = bs_buf_len(&b);
        cr_assert_geq(n, BS_HIST_ROW_MIN);
        BsReader rd;
        bs_reader_init(&rd, bs_buf_head(&b), n);
        cr_assert_eq(bs_hist_row_decode(&rd, &back), 0);
        cr_assert_eq(rd.left, 0);
        cr_assert_eq(back.until, 9);
        cr_assert_eq(back.time, 1796047500);
        cr_assert_eq(back.until_time, 1796047600);
        cr_assert_eq(back.name_len, BS_NAME_MAX);
        cr_assert_eq(memcmp(back.device_name, r.device_name, BS_NAME_MAX + 1), 0);
        cr_assert_eq(back.rec.seq, r.rec.seq);
        cr_assert_eq(back.rec.path_len, r.rec.path_len);
        cr_assert_eq(memcmp(back.rec.path, r.rec.path, r.rec.path_len + 1), 0);
        /* Every shorter prefix is refused. */
        for (size_t k = 0; k < n; k++) {
                bs_reader_init(&rd, bs_buf_head(&b), k);
                cr_assert_eq(bs_hist_row_decode(&rd, &back), -EBADMSG, "prefix of %zu bytes", k);
        }
        /* A device name over its limit is not sent. */
        r.name_len = BS_NAME_MAX + 1;
        cr_assert_eq(bs_hist_row_encode(&b, &r), -E2BIG);
        cr_assert_eq(bs_buf_len(&b), n, "nothing appended");
        bs_buf_free(&b);
}
