/* session-rows.c - answers streamed as rows: PULL's changes, HISTORY's rows
 *
 * Rows go out in CHANGES-like frames of at most half the peer's frame
 * size, read from their source only as the output drains; a source that
 * must wait leaves the frame built so far to go as it is. Below the
 * handlers that use it (session-transfer.c, session-history.c), so that
 * neither calls into the other.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "bs-log.h"
#include "session-rows.h"

/* The stream's source failed: say so, end it. */
static int rows_failed(Session *s, const SessionRows *rows, int r) {
        s->stream = STREAM_NONE;
        rows->done(s);
        errno = -r;
        log_error("account %s: reading the %s failed: %m", account_id(s->account), rows->what);
        return session_send_error(s, s->stream_req, BS_ERR_IO, "reading the %s failed", rows->what);
}

/* The next row, or 0 at the end of the answer or of its page (page_end). */
static int rows_next(Session *s, const SessionRows *rows) {
        if (s->page_rows > 0 && s->page_sent == s->page_rows) {
                s->page_end = true;
                return 0;
        }
        return rows->next(s);
}

int session_fill_rows(Session *s, const SessionRows *rows) {
        size_t budget = s->peer_max_frame / 2, off, flags_at, count_at;
        uint32_t count = 0, be;
        bool done = false;
        uint64_t seq;
        uint8_t flags;
        int r;

        /* A row first: what the frame says of the answer (its seq) is known
         * once the source answered, and a frame is never left half-built
         * while the source makes us wait. */
        if (!s->rec_pending) {
                r = rows_next(s, rows);
                if (r == -EINPROGRESS)
                        return session_again(s, r);
                if (r < 0)
                        return rows_failed(s, rows, r);
                s->rec_pending = r > 0;
                done = r == 0;
        }
        rows->header(s, &seq, &flags);
        r = bs_buf_reserve(&s->out, budget + rows->row_max + 64);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, rows->type, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        bs_buf_put_u64(&s->out, seq);
        flags_at = s->out.end;
        bs_buf_put_u8(&s->out, 0);
        count_at = s->out.end;
        bs_buf_put_u32(&s->out, 0);

        bool wait = false;
        while (!done) {
                if (!s->rec_pending) {
                        r = rows_next(s, rows);
                        if (r == -EINPROGRESS) {
                                wait = true; /* this frame goes as it is, with more to come */
                                break;
                        }
                        if (r < 0) {
                                bs_frame_cancel(&s->out, off);
                                return rows_failed(s, rows, r);
                        }
                        if (r == 0) {
                                done = true;
                                break;
                        }
                        s->rec_pending = true;
                }
                if (count > 0 && s->out.end - s->out.start - off + rows->size(s) > budget)
                        break;
                r = rows->encode(s);
                if (r < 0)
                        return r;
                s->rec_pending = false;
                s->page_sent++;
                count++;
        }
        s->out.data[flags_at] = (uint8_t) (flags | (done ? 0 : BS_CHANGES_MORE) | (s->page_end ? BS_CHANGES_PAGE : 0));
        be = htobe32(count);
        memcpy(s->out.data + count_at, &be, 4);
        bs_frame_end(&s->out, off);
        if (done) {
                /* A page ends: the source stays for PULL_PAGE with CONTINUE. */
                if (!s->page_end)
                        rows->done(s);
                s->stream = STREAM_NONE;
        }
        return wait ? session_again(s, -EINPROGRESS) : 0;
}
