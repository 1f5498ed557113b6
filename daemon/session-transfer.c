/* session-transfer.c - uploads (PUT, DATA, PUT_END) and streamed answers (PULL, GET)
 *
 * An upload is written to a temporary file as its DATA arrives, so a file
 * of any size costs one buffer. A PUT refused at its header is answered at
 * once and its DATA and PUT_END are then dropped. Streamed answers are
 * produced only while the output buffer is below SESSION_OUT_FILL: one
 * slow reader holds a bounded amount of memory and blocks nobody else.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "server.h"
#include "session.h"

void session_transfer_reset(Session *s) {
        if (s->upload.active && s->account)
                account_upload_discard(s->account, &s->upload.u);
        s->upload.active = false;
        if (s->content.fd >= 0)
                close(s->content.fd);
        s->content.fd = -1;
        s->cursor = account_cursor_free(s->cursor);
        free(s->rec);
        s->rec = NULL;
        s->rec_pending = false;
        s->stream = STREAM_NONE;
}

/* Answer an upload's error now and drop the rest of it. */
static int upload_refuse(Session *s, int r, const char *what) {
        char lp[4 * BS_PATH_MAX + 1];
        BsErr code = session_errno_to_code(r);
        const char *id = account_id(s->account);

        session_log_path(s->upload.path, lp);
        errno = -r;
        if (code == BS_ERR_IO || code == BS_ERR_NO_SPACE)
                session_log_event(s, LOG_ERR, BS_MID_REJECTED, s->upload.path, "upload %s %s failed: %s: %m", id, lp, what);
        else
                session_log_event(s, LOG_INFO, code == BS_ERR_CONFLICT ? BS_MID_CONFLICT : BS_MID_REJECTED,
                          s->upload.path, "upload %s %s refused: %s", id, lp, bs_err_name(code));
        account_upload_discard(s->account, &s->upload.u);
        s->upload.discard = true;
        return session_send_error(s, s->upload.req, code, "%s: %s", what, strerror(-r));
}

int session_handle_put(Session *s, const BsMsg *m) {
        int r;

        if (s->upload.active)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "PUT %u while the upload of %u is not finished",
                                    m->req, s->upload.req);
        s->upload.active = true;
        s->upload.discard = false;
        s->upload.req = m->req;
        s->upload.base = m->base;
        s->upload.size = m->size;
        s->upload.mode = m->mode;
        s->upload.mtime_ns = m->mtime_ns;
        s->upload.u = ACCOUNT_UPLOAD_NULL;
        memcpy(s->upload.path, m->path, m->path_len + 1);

        if (bs_path_check(m->path, m->path_len) < 0)
                return upload_refuse(s, -EINVAL, "bad path");
        r = account_put_check(s->account, m->path, m->base, m->size);
        if (r < 0)
                return upload_refuse(s, r, bs_err_name(session_errno_to_code(r)));
        r = account_upload_begin(s->account, &s->upload.u);
        if (r < 0)
                return upload_refuse(s, r, "cannot create a temporary file");
        return 0;
}

int session_handle_data(Session *s, const BsMsg *m) {
        if (!s->upload.active || m->req != s->upload.req)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "DATA for request %u, which is no upload in progress",
                                    m->req);
        if (s->upload.discard)
                return 0;
        int r = account_upload_write(&s->upload.u, m->data, m->data_len, s->upload.size);
        if (r == -EFBIG)
                return upload_refuse(s, r, "more data than announced");
        if (r < 0)
                return upload_refuse(s, r, "cannot write");
        return 0;
}

int session_handle_put_end(Session *s, const BsMsg *m) {
        char lp[4 * BS_PATH_MAX + 1];
        const char *id = account_id(s->account);
        uint64_t version = 0;
        BsMsg ack;
        int r;

        if (!s->upload.active || m->req != s->upload.req)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "PUT_END for request %u, which is no upload in progress",
                                    m->req);
        if (s->upload.discard) {
                s->upload.active = false;
                return 0;
        }
        if (m->flags & BS_PUT_ABORT) {
                account_upload_discard(s->account, &s->upload.u);
                s->upload.active = false;
                return session_send_error(s, m->req, BS_ERR_ABORTED, "upload aborted by the agent");
        }

        session_change_begin(s);
        r = account_put(s->account, &s->upload.u, s->device, s->upload.path, s->upload.base, s->upload.size,
                        s->upload.mode, s->upload.mtime_ns, m->sha, &version);
        s->upload.active = false;
        if (r < 0)
                return upload_refuse(s, r, bs_err_name(session_errno_to_code(r)));
        if (r == 0)
                session_log_event(s, LOG_INFO, BS_MID_UPLOADED, s->upload.path, "uploaded %s %s (%llu bytes)", id,
                          session_log_path(s->upload.path, lp), (unsigned long long) s->upload.size);
        bs_msg_init(&ack, BS_MSG_ACK, m->req);
        ack.seq = version;
        return session_send(s, &ack);
}

int session_start_pull(Session *s, const BsMsg *m) {
        /* The cursor reads committed state only: commit this pass's changes first. */
        int r = session_end_pass(s);
        if (r < 0)
                return r;
        if (!s->rec) {
                s->rec = malloc(sizeof(*s->rec));
                if (!s->rec)
                        return -ENOMEM;
        }
        r = account_cursor_new(s->account, m->seq, &s->cursor);
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot read the change log: %m", account_id(s->account));
                return session_send_error(s, m->req, BS_ERR_IO, "cannot read the change log");
        }
        s->stream = STREAM_PULL;
        s->stream_req = m->req;
        s->rec_pending = false;
        return 0;
}

int session_start_get(Session *s, const BsMsg *m) {
        BsMsg f;
        int r;

        if (m->path_len > 0 && bs_path_check(m->path, m->path_len) < 0)
                return session_send_error(s, m->req, BS_ERR_BAD_PATH, "bad path");
        r = session_end_pass(s);
        if (r < 0)
                return r;
        r = account_content_open(s->account, m->sha, m->path, &s->content);
        if (r == -ENOENT)
                return session_send_error(s, m->req, BS_ERR_NOT_FOUND, "no such content");
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot open content: %m", account_id(s->account));
                return session_send_error(s, m->req, session_errno_to_code(r), "cannot open content");
        }
        bs_msg_init(&f, BS_MSG_FILE, m->req);
        f.size = s->content.size;
        f.mode = s->content.mode;
        f.mtime_ns = s->content.mtime_ns;
        f.seq = s->content.version;
        memcpy(f.sha, m->sha, BS_SHA_LEN);
        r = session_send(s, &f);
        if (r < 0)
                return r;
        s->stream = STREAM_GET;
        s->stream_req = m->req;
        s->content_off = 0;
        return 0;
}

static int fill_get(Session *s) {
        uint64_t left = s->content.size - s->content_off;
        size_t chunk = MIN((size_t) BS_CHUNK, (size_t) s->peer_max_frame - 64);
        size_t n = (size_t) MIN((uint64_t) chunk, left), off;
        int r;

        if (left == 0) {
                close(s->content.fd);
                s->content.fd = -1;
                s->stream = STREAM_NONE;
                return 0;
        }
        /* Room for the whole frame first: nothing may move between begin and end. */
        r = bs_buf_reserve(&s->out, BS_FRAME_HDR + 4 + n);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, BS_MSG_DATA, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        ssize_t got = bs_pread_full(s->content.fd, s->out.data + s->out.end, n, (off_t) s->content_off);
        if (got != (ssize_t) n) {
                bs_frame_cancel(&s->out, off);
                errno = got < 0 ? (int) -got : EIO;
                log_error("account %s: reading content failed: %m", account_id(s->account));
                return session_fail(s, s->stream_req, BS_ERR_IO, "reading content failed");
        }
        s->out.end += n;
        bs_frame_end(&s->out, off);
        s->content_off += n;
        return 0;
}

static int fill_pull(Session *s) {
        size_t budget = s->peer_max_frame / 2, off, flags_at, count_at;
        uint32_t count = 0, be;
        bool done = false;
        int r;

        r = bs_buf_reserve(&s->out, budget + BS_RECORD_MIN + 2 * BS_PATH_MAX + 64);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, BS_MSG_CHANGES, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        bs_buf_put_u64(&s->out, account_cursor_seq(s->cursor));
        flags_at = s->out.end;
        bs_buf_put_u8(&s->out, 0);
        count_at = s->out.end;
        bs_buf_put_u32(&s->out, 0);

        for (;;) {
                if (!s->rec_pending) {
                        r = account_cursor_next(s->cursor, s->rec);
                        if (r < 0) {
                                bs_frame_cancel(&s->out, off);
                                s->stream = STREAM_NONE;
                                s->cursor = account_cursor_free(s->cursor);
                                errno = -r;
                                log_error("account %s: reading the change log failed: %m", account_id(s->account));
                                return session_send_error(s, s->stream_req, BS_ERR_IO, "reading the change log failed");
                        }
                        if (r == 0) {
                                done = true;
                                break;
                        }
                        s->rec_pending = true;
                }
                size_t need = BS_RECORD_MIN + s->rec->path_len + s->rec->path2_len;
                if (count > 0 && s->out.end - s->out.start - off + need > budget)
                        break;
                r = bs_record_encode(&s->out, s->rec);
                if (r < 0)
                        return r;
                s->rec_pending = false;
                count++;
        }
        s->out.data[flags_at] = (uint8_t) ((account_cursor_is_snapshot(s->cursor) ? BS_CHANGES_SNAPSHOT : 0) |
                                           (done ? 0 : BS_CHANGES_MORE));
        be = htobe32(count);
        memcpy(s->out.data + count_at, &be, 4);
        bs_frame_end(&s->out, off);
        if (done) {
                s->cursor = account_cursor_free(s->cursor);
                s->stream = STREAM_NONE;
        }
        return 0;
}

int session_stream_fill(Session *s) {
        int r = 0;
        while (r >= 0 && s->stream != STREAM_NONE && s->state != SESSION_CLOSING &&
               bs_buf_len(&s->out) < SESSION_OUT_FILL)
                r = s->stream == STREAM_GET ? fill_get(s) : fill_pull(s);
        if (r < 0 && s->state != SESSION_CLOSING)
                r = session_fail(s, s->stream_req, BS_ERR_IO, "out of memory");
        return r;
}
