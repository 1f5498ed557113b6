/* session.c - one client connection: I/O, the pass, frame dispatch
 *
 * The event handler runs one pass: read what the socket has (reading on,
 * up to SESSION_PASS_READS buffers, while more keeps arriving), handle
 * whole frames in order, commit the account's transaction, then write.
 * Writing only after the commit is what makes every ACK mean "durable".
 * The top of the session's layers: it hands each frame to its handler,
 * and none of them calls back up here.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bs-log.h"
#include "bs-macro.h"
#include "bs-tls.h"
#include "session.h"
#include "session-change.h"
#include "session-hello.h"
#include "session-history.h"
#include "session-transfer.h"

static int on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata);
static int on_timer(sd_event_source *source, uint64_t usec, void *userdata);
static void session_wake(void *userdata);

static void peer_format(Session *s, const struct sockaddr *sa) {
        static const uint8_t v4mapped[12] = { [10] = 0xff, [11] = 0xff };

        if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                memcpy(s->peer_addr, &in6->sin6_addr, 16);
                if (memcmp(s->peer_addr, v4mapped, 12) == 0)
                        inet_ntop(AF_INET, s->peer_addr + 12, s->peer, sizeof(s->peer));
                else
                        inet_ntop(AF_INET6, &in6->sin6_addr, s->peer, sizeof(s->peer));
        } else if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                memcpy(s->peer_addr, v4mapped, 12);
                memcpy(s->peer_addr + 12, &in->sin_addr, 4);
                inet_ntop(AF_INET, &in->sin_addr, s->peer, sizeof(s->peer));
        } else
                snprintf(s->peer, sizeof(s->peer), "local");
}

int session_new(Session **ret, SessionHost *host, int fd, const struct sockaddr *peer, socklen_t peer_len) {
        _cleanup_(session_freep) Session *s = NULL;
        char desc[96];
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->host = host;
        s->fd = fd;
        s->peer_max_frame = BS_FRAME_MIN;
        s->waker = (AccountWaker) { .fn = session_wake, .userdata = s };
        s->state = host->tls ? SESSION_TLS : SESSION_HELLO;
        peer_format(s, peer);
        (void) peer_len;

        /* Linked first, so session_free() on a failure below unlinks it. */
        s->next = host->sessions;
        if (s->next)
                s->next->prev = s;
        host->sessions = s;
        host->n_sessions++;

        r = sd_event_add_io(host->event, &s->io_source, fd, EPOLLIN, on_io, s);
        if (r < 0)
                return r;
        snprintf(desc, sizeof(desc), "session-io-%s", s->peer);
        (void) sd_event_source_set_description(s->io_source, desc);
        s->last_io_usec = s->start_usec = s->log_refill_usec = session_now_usec(s);
        s->log_budget = SESSION_LOG_BURST;
        r = session_rearm_idle_timer(s);
        if (r < 0)
                return r;
        /* A blocked address costs no handshake: it is told in clear text and
         * the agent shows what it was told. */
        uint64_t left;
        if (host->tls && ratelimit_blocked(host->ratelimit, s->peer_addr, s->start_usec, &left)) {
                s->state = SESSION_HELLO;
                (void) session_fail(s, 0, BS_ERR_RATE_LIMITED, "too many failed logins from %s; retry in %llu s",
                                    s->peer, (unsigned long long) (left + USEC_PER_SEC - 1) / USEC_PER_SEC);
                (void) sd_event_source_set_io_events(s->io_source, EPOLLOUT);
        }
        *ret = TAKE_PTR(s);
        return 0;
}

/* When the connection is closed unless something happens; 0: never. */
static uint64_t session_deadline(Session *s) {
        if (s->state == SESSION_TLS) {
                uint64_t idle = s->host->idle_timeout_usec;
                return s->start_usec + (idle ? MIN(idle, SESSION_HANDSHAKE_USEC) : SESSION_HANDSHAKE_USEC);
        }
        if (s->host->idle_timeout_usec == 0)
                return 0;
        return s->last_io_usec + s->host->idle_timeout_usec;
}

int session_rearm_idle_timer(Session *s) {
        SessionHost *host = s->host;
        char desc[96];
        int r;

        uint64_t deadline = session_deadline(s);
        if (deadline == 0)
                return s->timer_source ? sd_event_source_set_enabled(s->timer_source, SD_EVENT_OFF) : 0;
        if (s->timer_source) {
                r = sd_event_source_set_time(s->timer_source, deadline);
                return r < 0 ? r : sd_event_source_set_enabled(s->timer_source, SD_EVENT_ONESHOT);
        }
        r = sd_event_add_time(host->event, &s->timer_source, CLOCK_MONOTONIC, deadline, USEC_PER_SEC, on_timer, s);
        if (r < 0)
                return r;
        snprintf(desc, sizeof(desc), "session-timer-%s", s->peer);
        (void) sd_event_source_set_description(s->timer_source, desc);
        return 0;
}

Session *session_free(Session *s) {
        if (!s)
                return NULL;
        SessionHost *host = s->host;

        session_transfer_reset(s);
        if (s->ssl) {
                /* close_notify, best effort: the socket is non-blocking. */
                if (SSL_is_init_finished(s->ssl))
                        (void) SSL_shutdown(s->ssl);
                SSL_free(s->ssl);
        }
        if (s->account) {
                /* Changes of an interrupted pass are still answered in its
                 * buffer: keep them (a commit under way goes on without us). */
                if (s->batch && !s->committing)
                        (void) session_end_pass(s);
                s->batch = account_batch_free(s->batch);
                account_forget_waker(s->account, &s->waker);
                account_cache_release(host->accounts, s->account);
        }
        session_holes_clear(s);
        free(s->holes);
        sd_event_source_disable_unref(s->io_source);
        sd_event_source_disable_unref(s->timer_source);
        sd_event_source_disable_unref(s->wake_source);
        if (s->fd >= 0)
                close(s->fd);
        bs_buf_free(&s->in);
        bs_buf_free(&s->out);

        if (s->prev)
                s->prev->next = s->next;
        else if (host->sessions == s)
                host->sessions = s->next;
        if (s->next)
                s->next->prev = s->prev;
        host->n_sessions--;
        host->gone(host->userdata);
        free(s);
        return NULL;
}

void session_notify(Session *s, uint64_t seq) {
        BsMsg m;
        if (s->state != SESSION_RUNNING)
                return;
        /* A slow reader gets one NOTIFY with the newest seq once it drains. */
        if (bs_buf_len(&s->out) >= SESSION_OUT_HIGH) {
                s->notify_pending = seq;
                return;
        }
        bs_msg_init(&m, BS_MSG_NOTIFY, 0);
        m.seq = seq;
        (void) session_send(s, &m);
        (void) sd_event_source_set_io_events(s->io_source, EPOLLIN | EPOLLOUT);
}

static int handle_request(Session *s, const BsMsg *m) {
        BsMsg pong;

        switch (m->type) {
        case BS_MSG_PING:
                bs_msg_init(&pong, BS_MSG_PONG, 0);
                pong.seq = m->seq;
                return session_send(s, &pong);
        case BS_MSG_PONG:
                return 0;
        case BS_MSG_PULL:
        case BS_MSG_PULL_PAGE:
                return session_start_pull(s, m);
        case BS_MSG_HISTORY:
                return session_start_history(s, m);
        case BS_MSG_GET:
        case BS_MSG_GET_DELTA:
                return session_start_get(s, m);
        case BS_MSG_PUT:
                return session_handle_put(s, m);
        case BS_MSG_DATA:
                return session_handle_data(s, m);
        case BS_MSG_COPY:
                return session_handle_copy(s, m);
        case BS_MSG_PUT_END:
                return session_handle_put_end(s, m);
        case BS_MSG_ATTR:
        case BS_MSG_MKDIR:
        case BS_MSG_SYMLINK:
        case BS_MSG_DELETE:
        case BS_MSG_MOVE:
                return session_handle_change(s, m);
        default:
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "unexpected %s", bs_msg_type_name(m->type));
        }
}

/* Produce stream frames until the output is full or the stream ends. */
static int stream_fill(Session *s) {
        int r = 0;
        while (r == 0 && s->stream != STREAM_NONE && s->state != SESSION_CLOSING &&
               bs_buf_len(&s->out) < SESSION_OUT_FILL) {
                r = s->stream == STREAM_HISTORY ? session_history_fill(s) : session_transfer_fill(s);
        }
        if (r > 0)
                r = 0;
        if (r < 0 && s->state != SESSION_CLOSING)
                r = session_fail(s, s->stream_req, BS_ERR_IO, "out of memory");
        return r;
}

/* Stream, then handle whole frames. Never writes to the socket. */
static void session_run(Session *s) {
        static BsMsg m; /* 8 KiB of paths: kept off the stack; one pass runs at a time */
        size_t len;
        int r;

        while (s->state != SESSION_CLOSING && !s->waiting) {
                if (s->notify_pending && bs_buf_len(&s->out) < SESSION_OUT_HIGH) {
                        session_notify(s, s->notify_pending);
                        s->notify_pending = 0;
                }
                if (s->stream != STREAM_NONE) {
                        if (stream_fill(s) < 0 || s->stream != STREAM_NONE || s->waiting)
                                break;
                }
                if (bs_buf_len(&s->out) >= SESSION_OUT_HIGH || s->copied_this_turn >= SESSION_COPY_BUDGET)
                        break;
                /* A frame's first byte is 0 (frames are under 16 MiB); a TLS
                 * record's is 0x16: say what is wrong rather than "malformed". */
                if (s->state == SESSION_HELLO && !s->ssl && bs_buf_len(&s->in) > 0 &&
                    bs_buf_head(&s->in)[0] == BS_TLS_HANDSHAKE_BYTE) {
                        (void) session_fail(s, 0, BS_ERR_PROTOCOL,
                                            "this server runs without TLS (tls = no); the agent must have tls = no too");
                        break;
                }
                r = bs_frame_peek(bs_buf_head(&s->in), bs_buf_len(&s->in), BS_FRAME_MAX_DEFAULT, &len);
                if (r == 0)
                        break;
                if (r == -EMSGSIZE) {
                        (void) session_fail(s, 0, BS_ERR_BAD_FRAME, "frame over the limit of %u bytes",
                                            BS_FRAME_MAX_DEFAULT);
                        break;
                }
                if (r < 0 || bs_msg_decode(bs_buf_head(&s->in), len, &m) < 0) {
                        (void) session_fail(s, 0, BS_ERR_BAD_FRAME, "malformed frame");
                        break;
                }
                if (m.type != BS_MSG_DATA)
                        log_debug("connection from %s: %s request %u", s->peer, bs_msg_type_name(m.type), m.req);
                r = s->state == SESSION_HELLO ? session_handle_hello(s, &m) : handle_request(s, &m);
                if (r == SESSION_AGAIN)
                        break; /* the same frame again once woken */
                bs_buf_consume(&s->in, len);
                session_prefetch_consumed(s);
                if ((m.type == BS_MSG_GET || m.type == BS_MSG_GET_DELTA) && s->state != SESSION_CLOSING)
                        session_prefetch(s);
                /* Progress is a whole frame: a byte now and then must not
                 * keep a connection (and its slot) alive forever. */
                s->last_io_usec = session_now_usec(s);
                if (r < 0 && s->state != SESSION_CLOSING)
                        (void) session_fail(s, m.req, BS_ERR_IO, "out of memory");
        }
}

static int session_read(Session *s) {
        ssize_t n = s->ssl ? bs_tls_recv(s->ssl, &s->in, 64 * 1024, SESSION_IN_MAX, &s->read_eof)
                           : bs_buf_recv(&s->in, s->fd, 64 * 1024, SESSION_IN_MAX, &s->read_eof);
        return n < 0 ? (int) n : 0;
}

static int session_flush(Session *s) {
        ssize_t n = s->ssl && SSL_is_init_finished(s->ssl) ? bs_tls_send(s->ssl, &s->out) : bs_buf_send(&s->out, s->fd);
        if (n > 0)
                s->last_io_usec = session_now_usec(s);
        return n < 0 ? (int) n : 0;
}

/*
 * Before HELLO: tell a clear-text client from a TLS one by its first byte,
 * then drive the handshake. Returns 0 (s->state says whether it is done)
 * or a negative errno when the connection is to be dropped.
 */
static int session_tls_step(Session *s) {
        char e[160];
        int r;

        if (!s->ssl) {
                uint8_t b;
                ssize_t n = recv(s->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
                if (n < 0)
                        return errno == EAGAIN || errno == EINTR ? 0 : -errno;
                if (n == 0)
                        return -ECONNRESET;
                if (b != BS_TLS_HANDSHAKE_BYTE) {
                        /* Said in clear text, which that agent understands. What
                         * it sent (a token, likely) is dropped unparsed: left
                         * unread, it would turn our close into a reset that
                         * loses the answer. */
                        uint8_t junk[4096];
                        while (recv(s->fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
                                ;
                        s->state = SESSION_HELLO;
                        (void) session_fail(s, 0, BS_ERR_PROTOCOL,
                                            "this server requires TLS; an agent with tls = no cannot use it");
                        return 0;
                }
                r = bs_tls_server_new(s->host->tls, s->fd, &s->ssl);
                if (r < 0)
                        return r;
        }
        r = bs_tls_handshake(s->ssl);
        if (r == 0)
                return 0;
        if (r < 0) {
                if (r == -EPROTO)
                        bs_logf(LOG_INFO, &(BsLogCtx) { .message_id = BS_MID_REJECTED },
                                "connection from %s: TLS handshake failed: %s", s->peer, bs_tls_error(e, sizeof(e)));
                return r;
        }
        s->state = SESSION_HELLO;
        s->last_io_usec = session_now_usec(s);
        (void) session_rearm_idle_timer(s);
        return 0;
}

/* Decide what to wait for; true when the session is finished and must be freed. */
static bool session_update(Session *s) {
        uint32_t events = 0;
        size_t len;

        if (s->state == SESSION_CLOSING && bs_buf_len(&s->out) == 0 && !bs_tls_unsent(s->ssl))
                return true;
        if (s->state == SESSION_TLS) {
                (void) sd_event_source_set_io_events(s->io_source,
                                                     s->ssl && SSL_want_write(s->ssl) ? EPOLLOUT : EPOLLIN);
                return false;
        }
        /* Waiting for the account: read on (up to the buffer's limit), nothing else. */
        if (s->waiting) {
                bool room = s->state != SESSION_CLOSING && !s->read_eof && bs_buf_len(&s->in) < SESSION_IN_MAX;
                (void) sd_event_source_set_io_events(s->io_source, room ? EPOLLIN : 0);
                return false;
        }
        /* Work left in our buffers (or held decrypted inside TLS, which the
         * socket no longer signals): level-triggered EPOLLOUT brings us back
         * as soon as the socket takes more, even when the peer sends nothing
         * further. Not after the end of input: TLS reports the end only once
         * every whole record is read, so what it still holds is part of a
         * record that will never complete, and waiting for it would spin. */
        bool tls_held = s->ssl && !s->read_eof && SSL_has_pending(s->ssl) && bs_buf_len(&s->in) < SESSION_IN_MAX;
        bool pending = s->state != SESSION_CLOSING &&
                       (s->stream != STREAM_NONE || tls_held ||
                        bs_frame_peek(bs_buf_head(&s->in), bs_buf_len(&s->in), BS_FRAME_MAX_DEFAULT, &len) != 0);
        if (s->read_eof && !pending && bs_buf_len(&s->out) == 0 && !bs_tls_unsent(s->ssl))
                return true;
        if (s->state != SESSION_CLOSING && !s->read_eof && bs_buf_len(&s->in) < SESSION_IN_MAX &&
            bs_buf_len(&s->out) < SESSION_OUT_HIGH)
                events |= EPOLLIN;
        if (bs_buf_len(&s->out) > 0 || pending || (s->ssl && SSL_want_write(s->ssl)) || bs_tls_unsent(s->ssl))
                events |= EPOLLOUT;
        (void) sd_event_source_set_io_events(s->io_source, events);
        return false;
}

/* Read, handle and write what the socket and the account allow now. */
static void session_process(Session *s, uint32_t revents) {
        int r = 0;

        /* With TLS a read may also be owed to bytes held inside it. Not
         * otherwise: a read reserves the input buffer, which an idle
         * connection should not hold. */
        if (((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) || (s->ssl && SSL_has_pending(s->ssl))) &&
            s->state != SESSION_CLOSING && !s->read_eof)
                r = session_read(s);
        /* While a batch is open the output holds its answers: nothing goes
         * out before its commit. */
        if (r >= 0 && (revents & EPOLLOUT) && !s->batch)
                r = session_flush(s);
        /* Woken by the commit: its outcome, and the answers it decided. */
        if (r >= 0 && s->committing && !s->waiting)
                (void) session_end_pass(s);
        if (r >= 0 && !s->waiting) {
                /* While the agent keeps sending, read on before committing: a
                 * burst of small files shares one commit (two syncs) per few
                 * MiB instead of one per input buffer. The budget keeps one
                 * busy session from holding the others up for long. */
                s->copied_this_turn = 0;
                for (int i = 1;; i++) {
                        session_run(s);
                        if (i >= SESSION_PASS_READS || s->state == SESSION_CLOSING || s->read_eof || s->waiting ||
                            s->copied_this_turn >= SESSION_COPY_BUDGET ||
                            s->stream != STREAM_NONE || bs_buf_len(&s->out) >= SESSION_OUT_HIGH)
                                break;
                        size_t before = bs_buf_len(&s->in);
                        r = session_read(s);
                        if (r < 0 || bs_buf_len(&s->in) == before)
                                break;
                }
                if (!s->waiting)
                        (void) session_end_pass(s);
        }
        if (!s->batch) {
                r = r ?: session_flush(s);
                /* An idle connection holds no buffers (a thousand would hold
                 * 64 MiB and more); the next bytes allocate them again. */
                if (bs_buf_len(&s->in) == 0)
                        bs_buf_free(&s->in);
                if (bs_buf_len(&s->out) == 0)
                        bs_buf_free(&s->out);
        }
        if (r < 0) {
                if (r != -ECONNRESET && r != -EPIPE) {
                        errno = -r;
                        log_warning("connection from %s: %m", s->peer);
                }
                bs_logf(LOG_INFO, &(BsLogCtx) { .message_id = BS_MID_CONN_LOST,
                                                .account = s->account ? account_id(s->account) : NULL },
                        "connection from %s lost", s->peer);
                session_free(s);
                return;
        }
        if (session_update(s)) {
                log_debug("connection from %s closed", s->peer);
                session_free(s);
        }
}

static int on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        Session *s = userdata;

        if (s->state == SESSION_TLS) {
                int r = session_tls_step(s);
                if (r < 0) {
                        session_free(s);
                        return 0;
                }
                if (s->state == SESSION_TLS) {
                        (void) session_update(s);
                        return 0;
                }
                /* Done. HELLO, if it came with the last handshake bytes, is
                 * held inside TLS or still in the socket: see below. */
        }
        session_process(s, revents);
        return 0;
}

static int on_wake(sd_event_source *source, void *userdata) {
        session_process(userdata, 0);
        return 0;
}

/* The account has an answer this session waits for: handle on, soon. */
static void session_wake(void *userdata) {
        Session *s = userdata;

        s->waiting = false;
        if (s->wake_source) {
                (void) sd_event_source_set_enabled(s->wake_source, SD_EVENT_ONESHOT);
                return;
        }
        if (sd_event_add_defer(s->host->event, &s->wake_source, on_wake, s) < 0) {
                /* Cannot happen but for memory: the idle timer ends the session. */
                s->wake_source = NULL;
                return;
        }
        (void) sd_event_source_set_description(s->wake_source, "session-wake");
        (void) sd_event_source_set_enabled(s->wake_source, SD_EVENT_ONESHOT);
}

static int on_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Session *s = userdata;
        uint64_t deadline = session_deadline(s);

        if (deadline == 0) /* switched off by a reload */
                return 0;
        if (usec < deadline) {
                (void) sd_event_source_set_time(source, deadline);
                (void) sd_event_source_set_enabled(source, SD_EVENT_ONESHOT);
                return 0;
        }
        if (s->state == SESSION_TLS) {
                log_event(LOG_INFO, BS_MID_CONN_LOST, NULL, NULL, "connection from %s: no TLS handshake in time",
                          s->peer);
                session_free(s);
                return 0;
        }
        log_event(LOG_INFO, BS_MID_CONN_LOST, s->account ? account_id(s->account) : NULL, NULL,
                  "connection from %s timed out", s->peer);
        if (s->state != SESSION_CLOSING)
                (void) session_send_error(s, 0, BS_ERR_TIMEOUT, "idle for %llu s",
                                          (unsigned long long) (s->host->idle_timeout_usec / USEC_PER_SEC));
        (void) session_flush(s);
        session_free(s);
        return 0;
}
