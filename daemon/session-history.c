/* session-history.c - HISTORY: the log, a file's versions, deleted entries, a past tree
 *
 * Answered like PULL: rows are read from a snapshot as the output drains,
 * in HISTORY_ROWS frames of at most half the peer's frame size, so a
 * 100,000-entry tree costs the server no more memory than one frame.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "account-read.h"
#include "bs-log.h"
#include "bs-path.h"
#include "session.h"

int session_start_history(Session *s, const BsMsg *m) {
        int r;

        if (s->version < BS_PROTO_HISTORY_VERSION)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "HISTORY needs protocol version %u, this session speaks %u",
                                    BS_PROTO_HISTORY_VERSION, s->version);
        if (m->flags < BS_HIST_LOG || m->flags > BS_HIST_TREE)
                return session_send_error(s, m->req, BS_ERR_PROTOCOL, "unknown HISTORY kind %u", m->flags);
        if (m->path_len > 0 && bs_path_check(m->path, m->path_len) < 0)
                return session_send_error(s, m->req, BS_ERR_BAD_PATH, "bad path");
        if (m->flags == BS_HIST_VERSIONS && m->path_len == 0)
                return session_send_error(s, m->req, BS_ERR_BAD_PATH, "VERSIONS needs a path");
        /* The query reads committed state only: commit this pass's changes first. */
        r = session_end_pass(s);
        if (r < 0)
                return r;
        if (!s->row) {
                s->row = malloc(sizeof(*s->row));
                if (!s->row)
                        return -ENOMEM;
        }
        r = account_query_new(s->account, (BsHistWhat) m->flags, m->path, m->seq, m->time, m->count, &s->query);
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot read the history: %m", account_id(s->account));
                return session_send_error(s, m->req, BS_ERR_IO, "cannot read the history");
        }
        s->stream = STREAM_HISTORY;
        s->stream_req = m->req;
        s->rec_pending = false;
        return 0;
}

int session_history_fill(Session *s) {
        size_t budget = s->peer_max_frame / 2, off, flags_at, count_at;
        uint32_t count = 0, be;
        bool done = false;
        int r;

        r = bs_buf_reserve(&s->out, budget + BS_HIST_ROW_MIN + BS_NAME_MAX + 2 * BS_PATH_MAX + 64);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, BS_MSG_HISTORY_ROWS, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        bs_buf_put_u64(&s->out, account_query_seq(s->query));
        flags_at = s->out.end;
        bs_buf_put_u8(&s->out, 0);
        count_at = s->out.end;
        bs_buf_put_u32(&s->out, 0);

        for (;;) {
                if (!s->rec_pending) {
                        r = account_query_next(s->query, s->row);
                        if (r < 0) {
                                bs_frame_cancel(&s->out, off);
                                s->stream = STREAM_NONE;
                                s->query = account_query_free(s->query);
                                errno = -r;
                                log_error("account %s: reading the history failed: %m", account_id(s->account));
                                return session_send_error(s, s->stream_req, BS_ERR_IO, "reading the history failed");
                        }
                        if (r == 0) {
                                done = true;
                                break;
                        }
                        s->rec_pending = true;
                }
                size_t need = BS_HIST_ROW_MIN + s->row->name_len + s->row->rec.path_len + s->row->rec.path2_len;
                if (count > 0 && s->out.end - s->out.start - off + need > budget)
                        break;
                r = bs_hist_row_encode(&s->out, s->row);
                if (r < 0)
                        return r;
                s->rec_pending = false;
                count++;
        }
        s->out.data[flags_at] = done ? 0 : BS_CHANGES_MORE;
        be = htobe32(count);
        memcpy(s->out.data + count_at, &be, 4);
        bs_frame_end(&s->out, off);
        if (done) {
                s->query = account_query_free(s->query);
                s->stream = STREAM_NONE;
        }
        return 0;
}
