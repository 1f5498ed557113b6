/* session-core.h - a client connection's state and what every frame handler shares
 *
 * A session reads frames into its input buffer, handles them in order and
 * queues answers in its output buffer, which is written as the socket
 * drains. Changes of one pass over the received frames share one commit,
 * and the answers only reach the socket after it. Long answers (PULL,
 * GET) are streamed: produced as the output drains, while the session
 * reads no further requests, so answers stay in request order.
 *
 * The layers, each calling only those below: session.c (the socket, the
 * pass, the dispatch of frames) above the handlers (session-hello.c,
 * session-change.c, session-transfer.c, session-history.c), above
 * session-rows.c and this core (session-core.c: queuing answers and
 * errors, the pass's batch and its commit).
 */
#pragma once

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "account.h"
#include "account-history.h"
#include "account-read.h"
#include "bs-buf.h"
#include "bs-delta.h"
#include "bs-log.h"
#include "bs-proto.h"
#include "session-host.h"

typedef struct Session Session;

/* A frame handler's answer besides 0 and -errno: the account answered
 * -EINPROGRESS, so the frame stays unhandled (not consumed) and the
 * session handles nothing more until the account wakes it. */
#define SESSION_AGAIN 1

/* A change the account answers at commit (-EINPROGRESS): where in the
 * output its answer goes, and what it needs to be written and logged. */
typedef struct SessionHole {
        size_t at;         /* output length when the change was made */
        unsigned index;    /* its number in the batch */
        uint32_t req;
        uint8_t type;      /* BS_MSG_PUT for an upload */
        uint32_t mode;
        uint64_t size, copied;
        char *path, *path2;
} SessionHole;

typedef enum SessionState {
        SESSION_TLS,     /* before and during the TLS handshake */
        SESSION_HELLO,   /* waiting for HELLO */
        SESSION_RUNNING, /* serving requests */
        SESSION_CLOSING, /* flushing a final ERROR, then closed */
} SessionState;

typedef enum SessionStream {
        STREAM_NONE,
        STREAM_PULL,
        STREAM_GET,
        STREAM_HISTORY,
} SessionStream;

/* GETs read ahead: enough to keep the disk's queue busy, few enough
 * that a slow reader pins little. */
#define SESSION_PREFETCH 16
#define SESSION_PREFETCH_BYTES (256u * 1024)

struct Session {
        SessionHost *host;  /* the manager's, borrowed */
        Session *prev, *next;
        int fd;
        SSL *ssl;           /* NULL: clear text, or the handshake not begun */
        uint64_t start_usec;
        sd_event_source *io_source;
        sd_event_source *timer_source;
        char peer[64];      /* address for logs */
        uint8_t peer_addr[16]; /* IPv6 or v4-mapped, for the rate limit */
        SessionState state;
        uint16_t version;   /* protocol version chosen at HELLO */
        bool read_eof;
        uint64_t last_io_usec;
        BsBuf in, out;

        Account *account;
        uint8_t device[BS_DEVICE_LEN];
        char device_name[BS_NAME_MAX + 1]; /* from HELLO, printable, for logs */
        uint32_t peer_max_frame;
        uint64_t notify_pending; /* NOTIFY held back while the output is full */
        uint64_t copied_this_turn; /* by COPY frames, against SESSION_COPY_BUDGET */
        AccountBatch *batch;     /* this pass's changes, answered but not yet committed */
        size_t txn_mark;         /* output length when the batch began */
        unsigned batch_changes;  /* changes made in the batch: the next one's number */
        SessionHole *holes;      /* changes of the batch answered at commit, in order */
        size_t n_holes, cap_holes;
        bool committing;         /* the batch's commit is under way: its answers are held */
        /* Changes logged one by one: a budget of lines (see session_change_prio);
         * the others are counted and logged together once committed. */
        unsigned log_budget;
        uint64_t log_refill_usec;
        struct {
                uint64_t files, bytes, deleted, others;
        } quiet;
        uint64_t seq_before_commit; /* the account's sequence when it began */
        bool waiting;            /* an answer is -EINPROGRESS: nothing is handled until woken */
        AccountWaker waker;      /* what the account calls to wake this session */
        sd_event_source *wake_source;
        char token[BS_TOKEN_MAX + 1]; /* a new account's, from registration to WELCOME */

        struct {
                bool active;
                bool discard; /* already answered: drop its DATA and PUT_END */
                uint32_t req;
                uint64_t base, size;
                uint32_t mode;
                int64_t mtime_ns;
                char path[BS_PATH_MAX + 1];
                AccountUpload *u;
                /* COPY: the stored content bytes are copied from, opened at the first COPY */
                AccountContent *src;
                uint8_t src_sha[BS_SHA_LEN];
                uint64_t copied;
                uint64_t copy_done; /* of the COPY in hand, when it had to wait */
        } upload;

        SessionStream stream;
        uint32_t stream_req;
        AccountCursor *cursor; /* kept between the pages of a PULL_PAGE answer */
        BsRecord *rec; /* read from the cursor but not yet sent */
        uint32_t page_rows, page_sent; /* PULL_PAGE: rows per page (0: one page), sent of this one */
        bool page_end;
        AccountQuery *query;
        BsHistRow *row; /* read from the query but not yet sent */
        bool rec_pending; /* rec or row */
        AccountContent *content;
        uint64_t content_off;
        bool file_sent;     /* GET: FILE went out (once the content was found) */
        uint8_t get_sha[BS_SHA_LEN];
        /* GET_DELTA: the content the agent holds, cut into chunks and
         * indexed first (have_off bytes so far), then the delta of the
         * content against it. */
        AccountContent *have;
        uint8_t have_sha[BS_SHA_LEN];
        bool have_same; /* the content asked for itself: all COPY */
        uint64_t have_off;
        BsBlocks *have_list;
        BsBlockMap *have_map;
        BsDelta delta;
        /* GETs queued behind the one being answered, opened and read ahead
         * so that the disk works on several at once (see session_prefetch). */
        struct {
                unsigned frames; /* input frames from the head already looked at */
                unsigned head, count;
                struct {
                        uint8_t sha[BS_SHA_LEN];
                        char *path;
                        AccountContent *c; /* NULL: open it when its turn comes */
                } slot[SESSION_PREFETCH];
        } ahead;
        BsWarm *warm; /* the account's tree read ahead of a snapshot's GETs */
};

/* An event of this session's account and device, for the journal. */
#define session_log_event(s, prio, mid, p, ...)                                                         \
        bs_logf(prio,                                                                                   \
                &(BsLogCtx) { .message_id = (mid),                                                     \
                              .account = (s)->account ? account_id((s)->account) : NULL,               \
                              .path = (p),                                                             \
                              .device = (s)->device_name[0] ? (s)->device_name : NULL },               \
                __VA_ARGS__)

/* Changes a session logs one by one: SESSION_LOG_BURST at once, then one
 * per SESSION_LOG_REFILL_USEC; the rest in one line per commit. journald
 * keeps at most 10,000 messages of a service in 30 s by default, and a
 * line per file of a big backup would push out the ones that matter. */
#define SESSION_LOG_BURST 100
#define SESSION_LOG_REFILL_USEC (100ULL * 1000)

/* Output levels: stop taking requests above HIGH, stream until FILL. */
#define SESSION_OUT_HIGH (4u * 1024 * 1024)
#define SESSION_OUT_FILL (1u * 1024 * 1024)
#define SESSION_IN_MAX (BS_FRAME_MAX_DEFAULT + 64u * 1024)
/* A handshake must be done this long after the connection was accepted
 * (or within idle-timeout, when shorter): a client that stops half-way
 * holds a connection slot no longer. */
#define SESSION_HANDSHAKE_USEC (10ULL * 1000000)
/* Input buffers read and handled per commit while more keeps arriving. */
#define SESSION_PASS_READS 8
/* Bytes a session's COPY frames may copy before the others get their turn:
 * a 57-byte frame can ask for 16 MiB of disk work. */
#define SESSION_COPY_BUDGET (64u * 1024 * 1024)

/** The loop's time, for deadlines and log budgets. */
uint64_t session_now_usec(Session *s);
/** Forget the places kept for answers of a batch. */
void session_holes_clear(Session *s);
/** Queue a message, with room reserved up front (see session-core.c). */
int session_send(Session *s, const BsMsg *m);
/** Queue ERROR for req; the session stays open. */
int session_send_error(Session *s, uint32_t req, BsErr code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/** Log, queue ERROR and close the session once the output is flushed. Returns -ECONNABORTED. */
int session_fail(Session *s, uint32_t req, BsErr code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/** The protocol error code for a negative errno from the account layer. */
BsErr session_errno_to_code(int r);
/** The pass's batch, begun at its first change (noting where its answers start). */
int session_batch(Session *s);
/** r, or SESSION_AGAIN (waiting until woken) when r is -EINPROGRESS. */
int session_again(Session *s, int r);
/** Note the batch's last change, answered -EINPROGRESS: its answer is made at commit (h is copied). */
int session_defer(Session *s, const SessionHole *h);
/** Answer a change and log it (r as the account answered). */
int session_change_answer(Session *s, const SessionHole *h, int r, uint64_t version);
/** Commit the pass's changes, then notify the other sessions: 0, SESSION_AGAIN, or -errno. */
int session_end_pass(Session *s);
/** A path for a log line: control bytes escaped. buf: 4 * BS_PATH_MAX + 1 bytes. */
const char *session_log_path(const char *p, char *buf);
