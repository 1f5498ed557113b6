/* agent-conn.h - the agent's one connection to the server
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

typedef struct Conn {
        int fd;
        BsBuf in, out;
        uint32_t peer_max_frame;
        uint16_t version;    /* protocol version the server chose */
        uint64_t notify_seq; /* highest NOTIFY seen */
        uint64_t bytes_in, bytes_out;
        bool eof;
} Conn;

/** Connect to host:port (name, IPv4 or IPv6) within timeout_ms. */
int conn_connect(const char *host, const char *port, int timeout_ms, Conn **ret);
Conn *conn_free(Conn *c);
static inline void conn_freep(Conn **c) { if (*c) conn_free(*c); }

/** Queue one message. */
int conn_send(Conn *c, const BsMsg *m);

/**
 * Wait up to timeout_ms for the socket, read what arrived and write what
 * is queued. Returns 0, -ETIMEDOUT when nothing happened, -ECONNRESET when
 * the server closed the connection, or another negative errno.
 */
int conn_io(Conn *c, int timeout_ms);

/** Write what is queued without waiting. */
int conn_flush(Conn *c);

/**
 * Decode the next whole frame received. NOTIFY frames are absorbed into
 * notify_seq. Returns 1 with *m filled, 0 when no whole frame is there,
 * -EBADMSG/-EMSGSIZE for a malformed frame.
 */
int conn_next(Conn *c, BsMsg *m);

/** Wait for the next frame (NOTIFY absorbed) for up to timeout_ms. */
int conn_recv(Conn *c, BsMsg *m, int timeout_ms);
