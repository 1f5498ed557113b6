/* bs-conn.h - a client's connection to the server (the agent's, the backupsync command's)
 *
 * Blocking from the caller's point of view, but both directions are
 * serviced by one poll() so pipelined requests never dead-lock against
 * answers the server is sending back.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "bs-buf.h"
#include "bs-proto.h"
#include "bs-trust.h"

typedef struct BsConn {
        int fd;
        SSL *ssl;            /* NULL: clear text */
        BsBuf in, out;
        uint32_t peer_max_frame;
        uint16_t version;    /* protocol version the server chose */
        uint64_t notify_seq; /* highest NOTIFY seen */
        uint64_t bytes_in, bytes_out;
        bool eof;
} BsConn;

/** Connect to host:port (name, IPv4 or IPv6) within timeout_ms, in clear text. */
int bs_conn_connect(const char *host, const char *port, int timeout_ms, BsConn **ret);

/* What bs_conn_open() found, for the caller to report. */
typedef struct BsConnReport {
        BsTrustOutcome outcome;
        uint8_t presented[BS_FP_LEN]; /* the server's key */
        uint8_t expected[BS_FP_LEN];  /* what it was compared with */
        char reason[256];             /* why the handshake failed */
        bool server_said;             /* the server answered in clear text, with: */
        uint16_t code;
        char text[BS_TEXT_MAX + 1];
} BsConnReport;

/**
 * Connect; with t->tls also do the TLS handshake and check the server's
 * key as t says, all within timeout_ms. Returns 0, or -EPERM when the key
 * is not the one expected or cannot be checked (rep->outcome says which),
 * -EPROTO when the handshake failed (rep->reason, or rep->server_said
 * when the server answered in clear text), -ETIMEDOUT, or the errno of
 * connecting or of keeping the pin.
 */
int bs_conn_open(const char *host, const char *port, int timeout_ms, const BsTrust *t, BsConn **ret,
                 BsConnReport *rep);
BsConn *bs_conn_free(BsConn *c);
static inline void bs_conn_freep(BsConn **c) { if (*c) bs_conn_free(*c); }

/** Queue one message. */
int bs_conn_send(BsConn *c, const BsMsg *m);

/**
 * Wait up to timeout_ms for the socket, read what arrived and write what
 * is queued. Returns 0 (at once when what was queued is all written: the
 * caller may have more to send), -ETIMEDOUT when nothing happened,
 * -ECONNRESET when the server closed the connection, or another negative
 * errno.
 */
int bs_conn_io(BsConn *c, int timeout_ms);

/** Write what is queued without waiting. */
int bs_conn_flush(BsConn *c);

/**
 * Decode the next whole frame received. NOTIFY frames are absorbed into
 * notify_seq. Returns 1 with *m filled, 0 when no whole frame is there,
 * -EBADMSG/-EMSGSIZE for a malformed frame.
 */
int bs_conn_next(BsConn *c, BsMsg *m);

/** Wait for the next frame (NOTIFY absorbed) for up to timeout_ms. */
int bs_conn_recv(BsConn *c, BsMsg *m, int timeout_ms);
