/* bs-proto.c - encoder and decoder for the backupsync wire protocol */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "bs-proto.h"

const char *bs_msg_type_name(uint8_t type) {
        switch (type) {
        case BS_MSG_HELLO: return "HELLO";
        case BS_MSG_WELCOME: return "WELCOME";
        case BS_MSG_ERROR: return "ERROR";
        case BS_MSG_PING: return "PING";
        case BS_MSG_PONG: return "PONG";
        case BS_MSG_NOTIFY: return "NOTIFY";
        case BS_MSG_PULL: return "PULL";
        case BS_MSG_CHANGES: return "CHANGES";
        case BS_MSG_GET: return "GET";
        case BS_MSG_FILE: return "FILE";
        case BS_MSG_GET_DELTA: return "GET_DELTA";
        case BS_MSG_HISTORY: return "HISTORY";
        case BS_MSG_HISTORY_ROWS: return "HISTORY_ROWS";
        case BS_MSG_PULL_PAGE: return "PULL_PAGE";
        case BS_MSG_PUT: return "PUT";
        case BS_MSG_DATA: return "DATA";
        case BS_MSG_PUT_END: return "PUT_END";
        case BS_MSG_MKDIR: return "MKDIR";
        case BS_MSG_DELETE: return "DELETE";
        case BS_MSG_MOVE: return "MOVE";
        case BS_MSG_SYMLINK: return "SYMLINK";
        case BS_MSG_COPY: return "COPY";
        case BS_MSG_ATTR: return "ATTR";
        case BS_MSG_ACK: return "ACK";
        }
        return "unknown";
}

const char *bs_err_name(uint16_t code) {
        static const char *const names[] = {
                [BS_ERR_BAD_FRAME] = "BAD_FRAME",
                [BS_ERR_VERSION] = "VERSION",
                [BS_ERR_AUTH] = "AUTH",
                [BS_ERR_BAD_PATH] = "BAD_PATH",
                [BS_ERR_CONFLICT] = "CONFLICT",
                [BS_ERR_NOT_FOUND] = "NOT_FOUND",
                [BS_ERR_TOO_LARGE] = "TOO_LARGE",
                [BS_ERR_NO_SPACE] = "NO_SPACE",
                [BS_ERR_IO] = "IO",
                [BS_ERR_BUSY] = "BUSY",
                [BS_ERR_PROTOCOL] = "PROTOCOL",
                [BS_ERR_CHECKSUM] = "CHECKSUM",
                [BS_ERR_ABORTED] = "ABORTED",
                [BS_ERR_RATE_LIMITED] = "RATE_LIMITED",
                [BS_ERR_TIMEOUT] = "TIMEOUT",
        };
        if (code < sizeof(names) / sizeof(names[0]) && names[code])
                return names[code];
        return "UNKNOWN";
}

int bs_frame_peek(const uint8_t *p, size_t n, uint32_t max_frame, size_t *frame_len) {
        uint32_t len;

        if (n < 4)
                return 0;
        memcpy(&len, p, 4);
        len = be32toh(len);
        if (len == 0)
                return -EBADMSG;
        if (len > max_frame)
                return -EMSGSIZE;
        if (n < 4 + (size_t) len)
                return 0;
        *frame_len = 4 + (size_t) len;
        return 1;
}

void bs_msg_init(BsMsg *m, uint8_t type, uint32_t req) {
        memset(m, 0, offsetof(BsMsg, path));
        m->path[0] = m->path2[0] = 0;
        m->data = NULL;
        m->data_len = 0;
        m->type = type;
        m->req = req;
}

/* Copy a wire string into a NUL-terminated field of at most max bytes. */
static void get_field(BsReader *r, char *dst, size_t *dst_len, size_t max) {
        size_t n;
        const char *s = bs_get_str(r, &n);
        if (n > max) {
                r->bad = true;
                n = 0;
        }
        memcpy(dst, s, n);
        dst[n] = 0;
        *dst_len = n;
}

int bs_msg_decode(const uint8_t *frame, size_t len, BsMsg *m) {
        BsReader r;

        if (len < BS_FRAME_HDR)
                return -EBADMSG;
        bs_msg_init(m, frame[4], 0);
        bs_reader_init(&r, frame + BS_FRAME_HDR, len - BS_FRAME_HDR);

        switch (m->type) {
        case BS_MSG_HELLO:
                m->min_version = bs_get_u16(&r);
                m->version = bs_get_u16(&r);
                m->max_frame = bs_get_u32(&r);
                bs_get_bytes(&r, m->device, BS_DEVICE_LEN);
                get_field(&r, m->path, &m->path_len, BS_TEXT_MAX);   /* token */
                get_field(&r, m->path2, &m->path2_len, BS_NAME_MAX); /* device name */
                break;
        case BS_MSG_WELCOME:
                m->version = bs_get_u16(&r);
                m->max_frame = bs_get_u32(&r);
                m->seq = bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_TEXT_MAX);  /* account id */
                get_field(&r, m->path2, &m->path2_len, BS_TEXT_MAX); /* token, on registration */
                break;
        case BS_MSG_ERROR:
                m->req = bs_get_u32(&r);
                m->code = bs_get_u16(&r);
                get_field(&r, m->path, &m->path_len, BS_TEXT_MAX);
                break;
        case BS_MSG_PING:
        case BS_MSG_PONG:
        case BS_MSG_NOTIFY:
                m->seq = bs_get_u64(&r);
                break;
        case BS_MSG_PULL:
                m->req = bs_get_u32(&r);
                m->seq = bs_get_u64(&r);
                break;
        case BS_MSG_PULL_PAGE:
                m->req = bs_get_u32(&r);
                m->flags = bs_get_u8(&r);
                m->seq = bs_get_u64(&r);
                m->count = bs_get_u32(&r);
                break;
        case BS_MSG_HISTORY:
                m->req = bs_get_u32(&r);
                m->flags = bs_get_u8(&r);
                m->seq = bs_get_u64(&r);
                m->time = (int64_t) bs_get_u64(&r);
                m->count = bs_get_u32(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_CHANGES:
        case BS_MSG_HISTORY_ROWS:
                m->req = bs_get_u32(&r);
                m->seq = bs_get_u64(&r);
                m->flags = bs_get_u8(&r);
                m->count = bs_get_u32(&r);
                if (r.bad || (uint64_t) m->count * (m->type == BS_MSG_CHANGES ? BS_RECORD_MIN : BS_HIST_ROW_MIN) > r.left)
                        return -EBADMSG;
                m->data = r.p;
                m->data_len = r.left;
                r.left = 0;
                break;
        case BS_MSG_GET:
                m->req = bs_get_u32(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_GET_DELTA:
                m->req = bs_get_u32(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                bs_get_bytes(&r, m->have, BS_SHA_LEN);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_COPY:
                m->req = bs_get_u32(&r);
                m->offset = bs_get_u64(&r);
                m->size = bs_get_u64(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_FILE:
                m->req = bs_get_u32(&r);
                m->size = bs_get_u64(&r);
                m->mode = bs_get_u32(&r);
                m->mtime_ns = (int64_t) bs_get_u64(&r);
                m->seq = bs_get_u64(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_DATA:
                m->req = bs_get_u32(&r);
                if (r.bad)
                        return -EBADMSG;
                m->data = r.p;
                m->data_len = r.left;
                r.left = 0;
                break;
        case BS_MSG_PUT:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                m->size = bs_get_u64(&r);
                m->mode = bs_get_u32(&r);
                m->mtime_ns = (int64_t) bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_PUT_END:
                m->req = bs_get_u32(&r);
                m->flags = bs_get_u8(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_MKDIR:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                m->mode = bs_get_u32(&r);
                m->mtime_ns = (int64_t) bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_DELETE:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_ATTR:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                m->mode = bs_get_u32(&r);
                m->mtime_ns = (int64_t) bs_get_u64(&r);
                bs_get_bytes(&r, m->sha, BS_SHA_LEN);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                break;
        case BS_MSG_MOVE:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                m->base2 = bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                get_field(&r, m->path2, &m->path2_len, BS_PATH_MAX);
                break;
        case BS_MSG_SYMLINK:
                m->req = bs_get_u32(&r);
                m->base = bs_get_u64(&r);
                m->mtime_ns = (int64_t) bs_get_u64(&r);
                get_field(&r, m->path, &m->path_len, BS_PATH_MAX);
                get_field(&r, m->path2, &m->path2_len, BS_PATH_MAX);
                break;
        case BS_MSG_ACK:
                m->req = bs_get_u32(&r);
                m->seq = bs_get_u64(&r);
                break;
        default:
                return -EBADMSG;
        }
        /* Exact length: short payloads and trailing bytes are both errors. */
        if (r.bad || r.left != 0)
                return -EBADMSG;
        return 0;
}

int bs_frame_begin(BsBuf *out, uint8_t type, size_t *off) {
        int r = bs_buf_reserve(out, BS_FRAME_HDR);
        if (r < 0)
                return r;
        /* Relative to the unread data: a later reserve may move the bytes. */
        *off = out->end - out->start;
        bs_buf_put_u32(out, 0);
        return bs_buf_put_u8(out, type);
}

void bs_frame_end(BsBuf *out, size_t off) {
        uint32_t len = htobe32((uint32_t) (out->end - out->start - off - 4));
        memcpy(out->data + out->start + off, &len, 4);
}

void bs_frame_cancel(BsBuf *out, size_t off) {
        out->end = out->start + off;
}

/* The limits the decoder enforces, so we never send what the peer refuses. */
static int limits_ok(const BsMsg *m) {
        size_t max1 = BS_PATH_MAX, max2 = BS_PATH_MAX;
        switch (m->type) {
        case BS_MSG_HELLO:
                max1 = BS_TEXT_MAX;
                max2 = BS_NAME_MAX;
                break;
        case BS_MSG_WELCOME:
        case BS_MSG_ERROR:
                max1 = max2 = BS_TEXT_MAX;
                break;
        }
        return m->path_len > max1 || m->path2_len > max2 ? -E2BIG : 0;
}

int bs_msg_encode(BsBuf *out, const BsMsg *m) {
        size_t off;
        int r;

        r = limits_ok(m);
        if (r < 0)
                return r;
        r = bs_frame_begin(out, m->type, &off);
        if (r < 0)
                return r;

        switch (m->type) {
        case BS_MSG_HELLO:
                r = bs_buf_put_u16(out, m->min_version);
                r = r ?: bs_buf_put_u16(out, m->version);
                r = r ?: bs_buf_put_u32(out, m->max_frame);
                r = r ?: bs_buf_append(out, m->device, BS_DEVICE_LEN);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                r = r ?: bs_buf_put_str(out, m->path2, m->path2_len);
                break;
        case BS_MSG_WELCOME:
                r = bs_buf_put_u16(out, m->version);
                r = r ?: bs_buf_put_u32(out, m->max_frame);
                r = r ?: bs_buf_put_u64(out, m->seq);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                r = r ?: bs_buf_put_str(out, m->path2, m->path2_len);
                break;
        case BS_MSG_ERROR:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u16(out, m->code);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_PING:
        case BS_MSG_PONG:
        case BS_MSG_NOTIFY:
                r = bs_buf_put_u64(out, m->seq);
                break;
        case BS_MSG_PULL:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->seq);
                break;
        case BS_MSG_PULL_PAGE:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u8(out, m->flags);
                r = r ?: bs_buf_put_u64(out, m->seq);
                r = r ?: bs_buf_put_u32(out, m->count);
                break;
        case BS_MSG_HISTORY:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u8(out, m->flags);
                r = r ?: bs_buf_put_u64(out, m->seq);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->time);
                r = r ?: bs_buf_put_u32(out, m->count);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_CHANGES:
        case BS_MSG_HISTORY_ROWS:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->seq);
                r = r ?: bs_buf_put_u8(out, m->flags);
                r = r ?: bs_buf_put_u32(out, m->count);
                r = r ?: bs_buf_append(out, m->data, m->data_len);
                break;
        case BS_MSG_GET:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_GET_DELTA:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                r = r ?: bs_buf_append(out, m->have, BS_SHA_LEN);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_COPY:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->offset);
                r = r ?: bs_buf_put_u64(out, m->size);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_FILE:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->size);
                r = r ?: bs_buf_put_u32(out, m->mode);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->mtime_ns);
                r = r ?: bs_buf_put_u64(out, m->seq);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_DATA:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_append(out, m->data, m->data_len);
                break;
        case BS_MSG_PUT:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_u64(out, m->size);
                r = r ?: bs_buf_put_u32(out, m->mode);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->mtime_ns);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_PUT_END:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u8(out, m->flags);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                break;
        case BS_MSG_MKDIR:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_u32(out, m->mode);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->mtime_ns);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_DELETE:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_ATTR:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_u32(out, m->mode);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->mtime_ns);
                r = r ?: bs_buf_append(out, m->sha, BS_SHA_LEN);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                break;
        case BS_MSG_MOVE:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_u64(out, m->base2);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                r = r ?: bs_buf_put_str(out, m->path2, m->path2_len);
                break;
        case BS_MSG_SYMLINK:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->base);
                r = r ?: bs_buf_put_u64(out, (uint64_t) m->mtime_ns);
                r = r ?: bs_buf_put_str(out, m->path, m->path_len);
                r = r ?: bs_buf_put_str(out, m->path2, m->path2_len);
                break;
        case BS_MSG_ACK:
                r = bs_buf_put_u32(out, m->req);
                r = r ?: bs_buf_put_u64(out, m->seq);
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0) {
                bs_frame_cancel(out, off);
                return r;
        }
        bs_frame_end(out, off);
        return 0;
}

int bs_record_encode(BsBuf *out, const BsRecord *rec) {
        size_t saved = out->end - out->start;
        int r;

        if (rec->path_len > BS_PATH_MAX || rec->path2_len > BS_PATH_MAX)
                return -E2BIG;
        r = bs_buf_put_u64(out, rec->seq);
        r = r ?: bs_buf_put_u8(out, rec->op);
        r = r ?: bs_buf_put_u8(out, rec->kind);
        r = r ?: bs_buf_append(out, rec->device, BS_DEVICE_LEN);
        r = r ?: bs_buf_put_u64(out, rec->size);
        r = r ?: bs_buf_put_u32(out, rec->mode);
        r = r ?: bs_buf_put_u64(out, (uint64_t) rec->mtime_ns);
        r = r ?: bs_buf_append(out, rec->sha, BS_SHA_LEN);
        r = r ?: bs_buf_put_str(out, rec->path, rec->path_len);
        r = r ?: bs_buf_put_str(out, rec->path2, rec->path2_len);
        if (r < 0)
                out->end = out->start + saved;
        return r;
}

int bs_record_decode(BsReader *rd, BsRecord *rec) {
        rec->seq = bs_get_u64(rd);
        rec->op = bs_get_u8(rd);
        rec->kind = bs_get_u8(rd);
        bs_get_bytes(rd, rec->device, BS_DEVICE_LEN);
        rec->size = bs_get_u64(rd);
        rec->mode = bs_get_u32(rd);
        rec->mtime_ns = (int64_t) bs_get_u64(rd);
        bs_get_bytes(rd, rec->sha, BS_SHA_LEN);
        get_field(rd, rec->path, &rec->path_len, BS_PATH_MAX);
        get_field(rd, rec->path2, &rec->path2_len, BS_PATH_MAX);
        if (rd->bad || rec->op < BS_OP_PUT || rec->op > BS_OP_SYMLINK ||
            rec->kind < BS_KIND_FILE || rec->kind > BS_KIND_SYMLINK)
                return -EBADMSG;
        return 0;
}

int bs_hist_row_encode(BsBuf *out, const BsHistRow *row) {
        size_t saved = out->end - out->start;
        int r;

        if (row->name_len > BS_NAME_MAX)
                return -E2BIG;
        r = bs_buf_put_u64(out, row->until);
        r = r ?: bs_buf_put_u64(out, (uint64_t) row->time);
        r = r ?: bs_buf_put_u64(out, (uint64_t) row->until_time);
        r = r ?: bs_buf_put_str(out, row->device_name, row->name_len);
        r = r ?: bs_record_encode(out, &row->rec);
        if (r < 0)
                out->end = out->start + saved;
        return r;
}

int bs_hist_row_decode(BsReader *rd, BsHistRow *row) {
        row->until = bs_get_u64(rd);
        row->time = (int64_t) bs_get_u64(rd);
        row->until_time = (int64_t) bs_get_u64(rd);
        get_field(rd, row->device_name, &row->name_len, BS_NAME_MAX);
        if (rd->bad)
                return -EBADMSG;
        return bs_record_decode(rd, &row->rec);
}
