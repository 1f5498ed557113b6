/* fuzz-frame.c - libFuzzer target for the wire codec (common/bs-proto.c)
 *
 * The input is a receive buffer: bs_frame_peek() splits it into frames,
 * each is decoded with bs_msg_decode(), and every message that decodes
 * must encode back to exactly the same bytes (the layout has one
 * encoding) and decode again to the same message. The records of a
 * CHANGES message are decoded with bs_record_decode() and must
 * round-trip the same way. Any disagreement aborts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bs-buf.h"
#include "bs-path.h"
#include "bs-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        abort();                                                        \
                }                                                                       \
        } while (0)

/* Large (two 4 KiB paths each): static, not on the stack. */
static BsMsg msg, msg2;
static BsRecord rec, rec2;

static bool same_bytes(const void *a, size_t alen, const void *b, size_t blen) {
        return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static void check_same_msg(const BsMsg *a, const BsMsg *b) {
        CHECK(a->type == b->type);
        CHECK(a->req == b->req);
        CHECK(a->version == b->version);
        CHECK(a->min_version == b->min_version);
        CHECK(a->max_frame == b->max_frame);
        CHECK(a->seq == b->seq);
        CHECK(a->base == b->base);
        CHECK(a->base2 == b->base2);
        CHECK(a->size == b->size);
        CHECK(a->offset == b->offset);
        CHECK(a->mode == b->mode);
        CHECK(a->mtime_ns == b->mtime_ns);
        CHECK(a->code == b->code);
        CHECK(a->flags == b->flags);
        CHECK(a->count == b->count);
        CHECK(memcmp(a->sha, b->sha, BS_SHA_LEN) == 0);
        CHECK(memcmp(a->have, b->have, BS_SHA_LEN) == 0);
        CHECK(memcmp(a->device, b->device, BS_DEVICE_LEN) == 0);
        CHECK(same_bytes(a->path, a->path_len, b->path, b->path_len));
        CHECK(same_bytes(a->path2, a->path2_len, b->path2, b->path2_len));
        CHECK(a->path[a->path_len] == 0 && b->path[b->path_len] == 0);
        CHECK(a->path2[a->path2_len] == 0 && b->path2[b->path2_len] == 0);
        CHECK(same_bytes(a->data, a->data_len, b->data, b->data_len));
}

static void check_same_record(const BsRecord *a, const BsRecord *b) {
        CHECK(a->seq == b->seq);
        CHECK(a->op == b->op);
        CHECK(a->kind == b->kind);
        CHECK(memcmp(a->device, b->device, BS_DEVICE_LEN) == 0);
        CHECK(a->size == b->size);
        CHECK(a->mode == b->mode);
        CHECK(a->mtime_ns == b->mtime_ns);
        CHECK(memcmp(a->sha, b->sha, BS_SHA_LEN) == 0);
        CHECK(same_bytes(a->path, a->path_len, b->path, b->path_len));
        CHECK(same_bytes(a->path2, a->path2_len, b->path2, b->path2_len));
}

/* Every record of a CHANGES payload, up to the first malformed one. */
static void records(const BsMsg *m) {
        BsReader rd;
        BsBuf out = {};

        bs_reader_init(&rd, m->data, m->data_len);
        for (uint32_t i = 0; i < m->count; i++) {
                const uint8_t *start = rd.p;
                if (bs_record_decode(&rd, &rec) < 0)
                        break;
                size_t used = (size_t) (rd.p - start);
                CHECK(used >= BS_RECORD_MIN && used <= m->data_len);
                CHECK(rec.path[rec.path_len] == 0 && rec.path2[rec.path2_len] == 0);
                (void) bs_path_check(rec.path, rec.path_len);
                (void) bs_path_check(rec.path2, rec.path2_len);

                out.start = out.end = 0;
                CHECK(bs_record_encode(&out, &rec) == 0);
                CHECK(same_bytes(bs_buf_head(&out), bs_buf_len(&out), start, used));
                BsReader rd2;
                bs_reader_init(&rd2, bs_buf_head(&out), bs_buf_len(&out));
                CHECK(bs_record_decode(&rd2, &rec2) == 0);
                CHECK(rd2.left == 0);
                check_same_record(&rec, &rec2);
        }
        bs_buf_free(&out);
}

static void one_frame(const uint8_t *frame, size_t len) {
        BsBuf out = {};

        if (bs_msg_decode(frame, len, &msg) < 0)
                return;
        CHECK(msg.type == frame[4]);
        CHECK(strcmp(bs_msg_type_name(msg.type), "unknown") != 0);
        (void) bs_err_name(msg.code);
        (void) bs_path_check(msg.path, msg.path_len);
        (void) bs_path_check(msg.path2, msg.path2_len);

        /* One encoding per message: re-encoding gives the same frame. */
        CHECK(bs_msg_encode(&out, &msg) == 0);
        CHECK(same_bytes(bs_buf_head(&out), bs_buf_len(&out), frame, len));

        size_t flen = 0;
        CHECK(bs_frame_peek(bs_buf_head(&out), bs_buf_len(&out), BS_FRAME_LIMIT, &flen) == 1);
        CHECK(flen == bs_buf_len(&out));
        CHECK(bs_msg_decode(bs_buf_head(&out), flen, &msg2) == 0);
        check_same_msg(&msg, &msg2);

        if (msg.type == BS_MSG_CHANGES)
                records(&msg);
        bs_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        size_t off = 0;

        while (off < size) {
                size_t flen = 0;
                int r = bs_frame_peek(data + off, size - off, BS_FRAME_LIMIT, &flen);
                /* The smallest limit a peer may announce gives the same answer
                 * or -EMSGSIZE, never a different frame. */
                size_t flen_small = 0;
                int rs = bs_frame_peek(data + off, size - off, BS_FRAME_MIN, &flen_small);
                CHECK(rs == r || rs == -EMSGSIZE);
                if (rs == 1)
                        CHECK(flen_small == flen);
                if (r <= 0) {
                        CHECK(r == 0 || r == -EBADMSG || r == -EMSGSIZE);
                        break;
                }
                CHECK(flen >= BS_FRAME_HDR && flen <= size - off);
                /* An exact-size copy, so that ASan sees any read past the frame. */
                uint8_t *frame = malloc(flen);
                CHECK(frame);
                memcpy(frame, data + off, flen);
                one_frame(frame, flen);
                free(frame);
                off += flen;
        }
        /* Decoding a buffer that is not a whole frame must fail cleanly. */
        if (size > 0 && size < BS_FRAME_HDR) {
                uint8_t *copy = malloc(size);
                CHECK(copy);
                memcpy(copy, data, size);
                CHECK(bs_msg_decode(copy, size, &msg) == -EBADMSG);
                free(copy);
        }
        return 0;
}
