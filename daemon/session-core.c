/* session-core.c - queuing answers and errors; the pass's batch and its commit
 *
 * What every frame handler of a session shares, below them all: it
 * calls no handler and not the dispatcher (session.c), and tells the
 * manager of a commit only through the session's host. Answers of
 * changes the account decides at commit are left as holes in the output
 * and filled in order once the commit succeeded, so every ACK still
 * means "durable".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bs-log.h"
#include "bs-macro.h"
#include "session-core.h"

uint64_t session_now_usec(Session *s) {
        uint64_t t = 0;
        (void) sd_event_now(s->host->event, CLOCK_MONOTONIC, &t);
        return t;
}

void session_holes_clear(Session *s) {
        for (size_t i = 0; i < s->n_holes; i++) {
                free(s->holes[i].path);
                free(s->holes[i].path2);
        }
        s->n_holes = 0;
}

/*
 * bs_buf_reserve() compacts the buffer when it lacks room, which moves
 * the offset bs_frame_begin() returned. Reserving the whole frame first
 * means nothing moves while it is encoded.
 */
int session_send(Session *s, const BsMsg *m) {
        int r = bs_buf_reserve(&s->out, BS_FRAME_HDR + 128 + m->path_len + m->path2_len + m->data_len);
        return r ?: bs_msg_encode(&s->out, m);
}

static int send_errorv(Session *s, uint32_t req, BsErr code, const char *fmt, va_list ap) {
        BsMsg m;
        bs_msg_init(&m, BS_MSG_ERROR, req);
        m.code = code;
        int n = vsnprintf(m.path, BS_TEXT_MAX + 1, fmt, ap);
        m.path_len = n < 0 ? 0 : MIN((size_t) n, (size_t) BS_TEXT_MAX);
        return session_send(s, &m);
}

int session_send_error(Session *s, uint32_t req, BsErr code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = send_errorv(s, req, code, fmt, ap);
        va_end(ap);
        return r;
}

int session_fail(Session *s, uint32_t req, BsErr code, const char *fmt, ...) {
        char text[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        bs_logf(LOG_WARNING,
                &(BsLogCtx) { .message_id = BS_MID_REJECTED,
                              .account = s->account ? account_id(s->account) : NULL },
                "connection from %s: %s: %s", s->peer, bs_err_name(code), text);
        (void) session_send_error(s, req, code, "%s", text);
        s->state = SESSION_CLOSING;
        return -ECONNABORTED;
}

BsErr session_errno_to_code(int r) {
        switch (r) {
        case -ESTALE:
        case -EEXIST:
        case -EISDIR:
        case -ENOTEMPTY:
                return BS_ERR_CONFLICT;
        case -ENOENT:
        case -ENOTDIR:
                return BS_ERR_NOT_FOUND;
        case -EINVAL:
        case -ELOOP:
        case -EXDEV:
        case -ENAMETOOLONG:
                return BS_ERR_BAD_PATH;
        case -EBADMSG:
                return BS_ERR_CHECKSUM;
        case -EFBIG:
                return BS_ERR_TOO_LARGE;
        case -ENOSPC:
        case -EDQUOT:
                return BS_ERR_NO_SPACE;
        default:
                return BS_ERR_IO;
        }
}

const char *session_log_path(const char *p, char *buf) {
        char *o = buf;
        for (; *p; p++) {
                unsigned char c = (unsigned char) *p;
                if (c < 0x20 || c == 0x7f)
                        o += sprintf(o, "\\x%02x", c);
                else
                        *o++ = (char) c;
        }
        *o = 0;
        return buf;
}

int session_batch(Session *s) {
        if (s->batch)
                return 0;
        s->txn_mark = bs_buf_len(&s->out);
        s->batch_changes = 0;
        return account_batch_new(s->account, &s->batch);
}

int session_again(Session *s, int r) {
        if (r != -EINPROGRESS)
                return r;
        s->waiting = true;
        return SESSION_AGAIN;
}

int session_defer(Session *s, const SessionHole *h) {
        if (s->n_holes == s->cap_holes) {
                size_t cap = s->cap_holes ? s->cap_holes * 2 : 16;
                SessionHole *n = reallocarray(s->holes, cap, sizeof(*n));
                if (!n)
                        return -ENOMEM;
                s->holes = n;
                s->cap_holes = cap;
        }
        SessionHole *d = &s->holes[s->n_holes];
        *d = *h;
        d->at = bs_buf_len(&s->out);
        d->index = s->batch_changes - 1;
        d->path = strdup(h->path);
        d->path2 = h->path2 ? strdup(h->path2) : NULL;
        if (!d->path || (h->path2 && !d->path2)) {
                free(d->path);
                free(d->path2);
                return -ENOMEM;
        }
        s->n_holes++;
        return 0;
}

/* The level of a change's line: LOG_INFO while the budget lasts, else
 * LOG_DEBUG, and the change is counted for session_log_quiet(). */
static int session_change_prio(Session *s, const SessionHole *h) {
        uint64_t now = session_now_usec(s);
        if (now > s->log_refill_usec) {
                uint64_t n = (now - s->log_refill_usec) / SESSION_LOG_REFILL_USEC;
                s->log_budget = (unsigned) MIN((uint64_t) SESSION_LOG_BURST, s->log_budget + n);
                s->log_refill_usec += n * SESSION_LOG_REFILL_USEC;
                if (s->log_budget == SESSION_LOG_BURST)
                        s->log_refill_usec = now;
        }
        if (s->log_budget > 0) {
                s->log_budget--;
                return LOG_INFO;
        }
        if (h->type == BS_MSG_PUT) {
                s->quiet.files++;
                s->quiet.bytes += h->size;
        } else if (h->type == BS_MSG_DELETE)
                s->quiet.deleted++;
        else
                s->quiet.others++;
        return LOG_DEBUG;
}

/* The changes logged at debug level since the last commit, in one line. */
static void session_log_quiet(Session *s) {
        if (s->quiet.files + s->quiet.deleted + s->quiet.others == 0)
                return;
        session_log_event(s, LOG_INFO, BS_MID_UPLOADED, NULL,
                          "uploaded %s %llu more files (%.1f MiB), deleted %llu, %llu other changes (each at debug level)",
                          account_id(s->account), (unsigned long long) s->quiet.files,
                          (double) s->quiet.bytes / (1024.0 * 1024.0), (unsigned long long) s->quiet.deleted,
                          (unsigned long long) s->quiet.others);
        memset(&s->quiet, 0, sizeof(s->quiet));
}

static int send_ack(Session *s, uint32_t req, uint64_t version) {
        BsMsg m;
        bs_msg_init(&m, BS_MSG_ACK, req);
        m.seq = version;
        return session_send(s, &m);
}

int session_change_answer(Session *s, const SessionHole *h, int r, uint64_t version) {
        char lp[4 * BS_PATH_MAX + 1], lp2[4 * BS_PATH_MAX + 1];
        const char *id = account_id(s->account);
        const char *what = h->type == BS_MSG_PUT ? "upload" : bs_msg_type_name(h->type);

        session_log_path(h->path, lp);
        if (r < 0) {
                BsErr code = session_errno_to_code(r);
                errno = -r;
                if (code == BS_ERR_IO || code == BS_ERR_NO_SPACE)
                        session_log_event(s, LOG_ERR, BS_MID_REJECTED, h->path, "%s %s %s failed: %m", what, id, lp);
                else
                        session_log_event(s, LOG_INFO, code == BS_ERR_CONFLICT ? BS_MID_CONFLICT : BS_MID_REJECTED,
                                          h->path, "%s %s %s refused: %s", what, id, lp, bs_err_name(code));
                return session_send_error(s, h->req, code, "%s: %s", bs_err_name(code), strerror(-r));
        }
        int prio = r == 0 ? session_change_prio(s, h) : LOG_INFO;
        if (r == 0)
                switch (h->type) {
                case BS_MSG_PUT:
                        if (h->copied > 0)
                                session_log_event(s, prio, BS_MID_UPLOADED, h->path,
                                                  "uploaded %s %s (%llu bytes, %llu sent, the rest copied from the "
                                                  "stored version)", id, lp, (unsigned long long) h->size,
                                                  (unsigned long long) (h->size - h->copied));
                        else
                                session_log_event(s, prio, BS_MID_UPLOADED, h->path, "uploaded %s %s (%llu bytes)",
                                                  id, lp, (unsigned long long) h->size);
                        break;
                case BS_MSG_ATTR:
                        session_log_event(s, prio, BS_MID_CHANGED, h->path, "mode %04o and time of %s %s",
                                          h->mode & 07777, id, lp);
                        break;
                case BS_MSG_MKDIR:
                        session_log_event(s, prio, BS_MID_CHANGED, h->path, "mkdir %s %s", id, lp);
                        break;
                case BS_MSG_SYMLINK:
                        session_log_event(s, prio, BS_MID_CHANGED, h->path, "symlink %s %s", id, lp);
                        break;
                case BS_MSG_DELETE:
                        session_log_event(s, prio, BS_MID_DELETED, h->path, "deleted %s %s", id, lp);
                        break;
                default:
                        session_log_event(s, prio, BS_MID_MOVED, h->path, "moved %s %s -> %s", id, lp,
                                          session_log_path(h->path2, lp2));
                        break;
                }
        return send_ack(s, h->req, version);
}

/*
 * The commit succeeded: write the answers of the changes it decided where
 * they belong among the pass's other answers. Those after the first hole
 * are set aside and put back piece by piece.
 */
static int fill_holes(Session *s) {
        _cleanup_(freep) uint8_t *tail = NULL;
        size_t base = s->holes[0].at, len = bs_buf_len(&s->out) - base;
        int r = 0;

        if (len > 0) {
                tail = malloc(len);
                if (!tail)
                        return -ENOMEM;
                memcpy(tail, bs_buf_head(&s->out) + base, len);
        }
        s->out.end = s->out.start + base;
        for (size_t i = 0; i < s->n_holes && r >= 0; i++) {
                SessionHole *h = &s->holes[i];
                uint64_t version = 0;
                int answer = account_batch_answer(s->batch, h->index, &version);
                r = session_change_answer(s, h, answer, version);
                size_t end = i + 1 < s->n_holes ? s->holes[i + 1].at : base + len;
                if (r >= 0 && end > h->at)
                        r = bs_buf_append(&s->out, tail + (h->at - base), end - h->at);
        }
        return r;
}

int session_end_pass(Session *s) {
        if (!s->batch)
                return 0;
        /* Taken when the commit starts: one that finishes later has
         * advanced the account by the time it is asked again. */
        if (!s->committing)
                s->seq_before_commit = account_committed_seq(s->account);
        int r = account_batch_commit(s->batch, &s->waker);
        if (r == -EINPROGRESS) {
                s->committing = true;
                return session_again(s, r);
        }
        s->committing = false;
        if (r >= 0 && s->n_holes > 0)
                r = fill_holes(s);
        session_holes_clear(s);
        s->batch = account_batch_free(s->batch);
        if (r < 0) {
                /* Those answers promised durability we do not have: take them back. */
                s->out.end = s->out.start + MIN(s->txn_mark, bs_buf_len(&s->out));
                errno = -r;
                log_error("account %s: commit failed: %m", account_id(s->account));
                return session_fail(s, 0, BS_ERR_IO, "could not commit changes");
        }
        session_log_quiet(s);
        if (account_committed_seq(s->account) > s->seq_before_commit)
                s->host->advanced(s->host->userdata, s->account, s);
        return 0;
}
