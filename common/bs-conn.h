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

typedef struct BsConn {
        int fd;
        BsBuf in, out;
        uint32_t peer_max_frame;
        uint16_t version;    /* protocol version the server chose */
        uint64_t notify_seq; /* highest NOTIFY seen */
        uint64_t bytes_in, bytes_out;
        bool eof;
} BsConn;

/** Connect to host:port (name, IPv4 or IPv6) within timeout_ms. */
int bs_conn_connect(const char *host, const char *port, int timeout_ms, BsConn **ret);
BsConn *bs_conn_free(BsConn *c);
static inline void bs_conn_freep(BsConn **c) { if (*c) bs_conn_free(*c); }

/** Queue one message. */
int bs_conn_send(BsConn *c, const BsMsg *m);

/**
 * Wait up to timeout_ms for the socket, read what arrived and write what
 * is queued. Returns 0, -ETIMEDOUT when nothing happened, -ECONNRESET when
 * the server closed the connection, or another negative errno.
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
