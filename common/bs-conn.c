/* bs-conn.c - a client's connection to the server */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bs-conn.h"
#include "bs-macro.h"

static int connect_one(const struct addrinfo *ai, int timeout_ms) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
                return -errno;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
                int r = -errno;
                close(fd);
                return r;
        }
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int n;
        do
                n = poll(&p, 1, timeout_ms);
        while (n < 0 && errno == EINTR);
        int err = 0;
        socklen_t len = sizeof(err);
        if (n == 0)
                err = ETIMEDOUT;
        else if (n < 0)
                err = errno;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        if (err) {
                close(fd);
                return -err;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return fd;
}

int bs_conn_connect(const char *host, const char *port, int timeout_ms, BsConn **ret) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG }, *res = NULL;
        int r = getaddrinfo(host, port, &hints, &res);
        if (r != 0)
                return r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
        int fd = -ECONNREFUSED;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                fd = connect_one(ai, timeout_ms);
                if (fd >= 0)
                        break;
        }
        freeaddrinfo(res);
        if (fd < 0)
                return fd;
        BsConn *c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return -ENOMEM;
        }
        c->fd = fd;
        c->peer_max_frame = BS_FRAME_MAX_DEFAULT;
        c->version = BS_PROTO_MIN_VERSION;
        *ret = c;
        return 0;
}

BsConn *bs_conn_free(BsConn *c) {
        if (!c)
                return NULL;
        if (c->fd >= 0)
                close(c->fd);
        bs_buf_free(&c->in);
        bs_buf_free(&c->out);
        free(c);
        return NULL;
}

int bs_conn_send(BsConn *c, const BsMsg *m) {
        return bs_msg_encode(&c->out, m);
}

int bs_conn_flush(BsConn *c) {
        ssize_t n = bs_buf_send(&c->out, c->fd);
        if (n < 0)
                return (int) n;
        c->bytes_out += (uint64_t) n;
        return 0;
}

static int fill(BsConn *c) {
        if (c->eof)
                return -ECONNRESET;
        ssize_t n = bs_buf_recv(&c->in, c->fd, 256 * 1024, 8u * 1024 * 1024, &c->eof);
        if (n < 0)
                return (int) n;
        c->bytes_in += (uint64_t) n;
        /* Frames read before a close (an ERROR saying why) are still
         * decoded; the next read fails. */
        return c->eof && n == 0 ? -ECONNRESET : 0;
}

int bs_conn_io(BsConn *c, int timeout_ms) {
        int r = bs_conn_flush(c);
        if (r < 0)
                return r;
        struct pollfd p = { .fd = c->fd, .events = POLLIN | (bs_buf_len(&c->out) ? POLLOUT : 0) };
        int n;
        do
                n = poll(&p, 1, timeout_ms);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        if (n == 0)
                return -ETIMEDOUT;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
                r = fill(c);
                if (r < 0 || c->eof)
                        return r;
        }
        return bs_conn_flush(c);
}

int bs_conn_next(BsConn *c, BsMsg *m) {
        for (;;) {
                size_t len;
                int r = bs_frame_peek(bs_buf_head(&c->in), bs_buf_len(&c->in), BS_FRAME_MAX_DEFAULT, &len);
                if (r <= 0)
                        return r;
                r = bs_msg_decode(bs_buf_head(&c->in), len, m);
                /* DATA points into the buffer: consume lazily so it stays valid
                 * until the next call. */
                bs_buf_consume(&c->in, len);
                if (r < 0)
                        return r;
                if (m->type == BS_MSG_NOTIFY) {
                        if (m->seq > c->notify_seq)
                                c->notify_seq = m->seq;
                        continue;
                }
                return 1;
        }
}

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bs_conn_recv(BsConn *c, BsMsg *m, int timeout_ms) {
        int64_t deadline = now_ms() + timeout_ms;
        for (;;) {
                int r = bs_conn_next(c, m);
                if (r != 0)
                        return r;
                int64_t left = deadline - now_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                r = bs_conn_io(c, (int) left);
                if (r < 0 && r != -ETIMEDOUT)
                        return r;
        }
}
