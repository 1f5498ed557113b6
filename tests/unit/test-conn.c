/* test-conn.c - unit tests for common/bs-conn.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bs-conn.h"

static int peer = -1;

/* A connection over one end of a socket pair; the test holds the other. */
static BsConn *conn_new(void) {
        int sv[2];
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
        BsConn *c = calloc(1, sizeof(*c));
        cr_assert_not_null(c);
        c->fd = sv[0];
        peer = sv[1];
        return c;
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

static void teardown(void) {
        if (peer >= 0)
                close(peer);
        peer = -1;
}

TestSuite(conn, .fini = teardown);

/* What was queued leaves at once, and the call returns with it: the
 * caller may have more to send, which an answer it would otherwise wait
 * for may need (an upload the server must receive whole before it
 * answers). */
Test(conn, io_returns_once_the_queue_is_written) {
        BsConn *c = conn_new();
        static uint8_t data[32 * 1024];
        memset(data, 'x', sizeof(data));
        cr_assert_eq(bs_buf_append(&c->out, data, sizeof(data)), 0);
        double t0 = now_s();
        int r = bs_conn_io(c, 3000);
        double dt = now_s() - t0;
        cr_assert_eq(r, 0, "bs_conn_io: %d", r);
        cr_assert_lt(dt, 1.0, "waited %.2f s for an answer with everything sent", dt);
        cr_assert_eq(bs_buf_len(&c->out), 0);
        uint8_t got[sizeof(data)];
        cr_assert_eq(read(peer, got, sizeof(got)), (ssize_t) sizeof(got));
        cr_assert_eq(memcmp(got, data, sizeof(data)), 0);
        bs_conn_free(c);
}

/* With nothing queued it waits for the peer, up to the timeout. */
Test(conn, io_waits_for_input) {
        BsConn *c = conn_new();
        double t0 = now_s();
        cr_assert_eq(bs_conn_io(c, 200), -ETIMEDOUT);
        cr_assert_geq(now_s() - t0, 0.15);
        cr_assert_eq(write(peer, "abc", 3), 3);
        cr_assert_eq(bs_conn_io(c, 3000), 0);
        cr_assert_eq(bs_buf_len(&c->in), 3);
        cr_assert_eq(memcmp(bs_buf_head(&c->in), "abc", 3), 0);
        bs_conn_free(c);
}

/* A queue bigger than the socket takes: the call returns once it can
 * write again, having written part, and the rest follows as the peer
 * reads. */
Test(conn, io_writes_a_long_queue_in_parts) {
        BsConn *c = conn_new();
        size_t len = 8u * 1024 * 1024;
        uint8_t *data = malloc(len);
        cr_assert_not_null(data);
        for (size_t i = 0; i < len; i++)
                data[i] = (uint8_t) (i * 13);
        cr_assert_eq(bs_buf_append(&c->out, data, len), 0);
        uint8_t *got = malloc(len);
        cr_assert_not_null(got);
        size_t have = 0;
        for (int i = 0; have < len && i < 100000; i++) {
                int r = bs_conn_io(c, 0);
                cr_assert(r == 0 || r == -ETIMEDOUT, "bs_conn_io: %d", r);
                ssize_t n = read(peer, got + have, len - have);
                if (n > 0)
                        have += (size_t) n;
        }
        cr_assert_eq(have, len);
        cr_assert_eq(bs_buf_len(&c->out), 0);
        cr_assert_eq(memcmp(got, data, len), 0);
        free(got);
        free(data);
        bs_conn_free(c);
}
