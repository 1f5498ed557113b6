/* session-history.c - HISTORY: the log, a file's versions, deleted entries, a past tree
 *
 * Answered like PULL: rows are read from a snapshot as the output drains,
 * in HISTORY_ROWS frames of at most half the peer's frame size, so a
 * 100,000-entry tree costs the server no more memory than one frame.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "account-history.h"
#include "account-read.h"
#include "bs-log.h"
#include "bs-path.h"
#include "session-history.h"
#include "session-rows.h"

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
        if (r != 0)
                return r;
        if (!s->row) {
                s->row = malloc(sizeof(*s->row));
                if (!s->row)
                        return -ENOMEM;
        }
        r = account_query_new(s->account, (BsHistWhat) m->flags, m->path, m->seq, m->time, m->count, &s->waker, &s->query);
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot read the history: %m", account_id(s->account));
                return session_send_error(s, m->req, BS_ERR_IO, "cannot read the history");
        }
        s->stream = STREAM_HISTORY;
        s->stream_req = m->req;
        s->rec_pending = false;
        s->page_rows = 0;
        s->page_end = false;
        return 0;
}

static int history_next(Session *s) {
        return account_query_next(s->query, s->row);
}

static size_t history_size(Session *s) {
        return BS_HIST_ROW_MIN + s->row->name_len + s->row->rec.path_len + s->row->rec.path2_len;
}

static int history_encode(Session *s) {
        return bs_hist_row_encode(&s->out, s->row);
}

static void history_done(Session *s) {
        s->query = account_query_free(s->query);
}

static void history_header(Session *s, uint64_t *seq, uint8_t *flags) {
        *seq = account_query_seq(s->query);
        *flags = 0;
}

int session_history_fill(Session *s) {
        return session_fill_rows(s, &(SessionRows) {
                .type = BS_MSG_HISTORY_ROWS,
                .header = history_header,
                .row_max = BS_HIST_ROW_MIN + BS_NAME_MAX + 2 * BS_PATH_MAX,
                .what = "history",
                .next = history_next,
                .size = history_size,
                .encode = history_encode,
                .done = history_done,
        });
}
