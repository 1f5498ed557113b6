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

#include <openssl/err.h>
#include <openssl/x509.h>

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
        if (c->ssl) {
                if (SSL_is_init_finished(c->ssl))
                        (void) SSL_shutdown(c->ssl); /* close_notify, best effort */
                SSL_free(c->ssl);
        }
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
        ssize_t n = c->ssl ? bs_tls_send(c->ssl, &c->out) : bs_buf_send(&c->out, c->fd);
        if (n < 0)
                return (int) n;
        c->bytes_out += (uint64_t) n;
        return 0;
}

static int fill(BsConn *c) {
        if (c->eof)
                return -ECONNRESET;
        ssize_t n = c->ssl ? bs_tls_recv(c->ssl, &c->in, 256 * 1024, 8u * 1024 * 1024, &c->eof)
                           : bs_buf_recv(&c->in, c->fd, 256 * 1024, 8u * 1024 * 1024, &c->eof);
        if (n < 0)
                return (int) n;
        c->bytes_in += (uint64_t) n;
        /* Frames read before a close (an ERROR saying why) are still
         * decoded; the next read fails. */
        return c->eof && n == 0 ? -ECONNRESET : 0;
}

int bs_conn_io(BsConn *c, int timeout_ms) {
        bool queued = bs_buf_len(&c->out) > 0 || bs_tls_unsent(c->ssl);
        int r = bs_conn_flush(c);
        if (r < 0)
                return r;
        /* All of it written: back to the caller, who may have more to
         * send. Waiting for input instead would wait for an answer that
         * needs more of it: the rest of an upload, say. */
        bool unsent = bs_buf_len(&c->out) > 0 || (c->ssl && SSL_want_write(c->ssl)) || bs_tls_unsent(c->ssl);
        if (queued && !unsent)
                return 0;
        struct pollfd p = { .fd = c->fd, .events = POLLIN | (unsent ? POLLOUT : 0) };
        int n;
        /* Bytes TLS holds decrypted are not the socket's to signal. */
        if (c->ssl && SSL_has_pending(c->ssl)) {
                n = 1;
                p.revents = POLLIN;
        } else
                do
                        n = poll(&p, 1, timeout_ms);
                while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        if (n == 0)
                return -ETIMEDOUT;
        if (p.revents & (POLLIN | POLLHUP | POLLERR) || c->ssl) {
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

static int64_t mono_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bs_conn_recv(BsConn *c, BsMsg *m, int timeout_ms) {
        int64_t deadline = mono_ms() + timeout_ms;
        for (;;) {
                int r = bs_conn_next(c, m);
                if (r != 0)
                        return r;
                int64_t left = deadline - mono_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                r = bs_conn_io(c, (int) left);
                if (r < 0 && r != -ETIMEDOUT)
                        return r;
        }
}

/* The first bytes the server sent during the handshake: a server that
 * does not speak TLS answers with a clear-text ERROR frame. */
typedef struct Recorded {
        uint8_t data[BS_FRAME_HDR + 8 + BS_TEXT_MAX];
        size_t len;
} Recorded;

static long record(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret, size_t *processed) {
        (void) len;
        (void) argi;
        (void) argl;
        if (oper == (BIO_CB_READ | BIO_CB_RETURN) && ret > 0 && processed) {
                Recorded *rec = (Recorded *) BIO_get_callback_arg(b);
                size_t n = MIN(*processed, sizeof(rec->data) - rec->len);
                memcpy(rec->data + rec->len, argp, n);
                rec->len += n;
        }
        return ret;
}

/* TLS stops reading at the first record header that makes no sense; the
 * rest of a clear-text frame is still on the socket. */
static void record_rest(int fd, Recorded *rec) {
        size_t len;
        for (int i = 0; i < 10 && rec->len < sizeof(rec->data) && rec->data[0] == 0; i++) {
                if (bs_frame_peek(rec->data, rec->len, BS_FRAME_MAX_DEFAULT, &len) != 0)
                        return;
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, 100) <= 0)
                        return;
                ssize_t n = recv(fd, rec->data + rec->len, sizeof(rec->data) - rec->len, MSG_DONTWAIT);
                if (n <= 0)
                        return;
                rec->len += (size_t) n;
        }
}

static void explain_failure(SSL *ssl, int r, const Recorded *rec, BsConnReport *rep) {
        BsMsg *m = malloc(sizeof(*m));
        size_t len;

        if (m && bs_frame_peek(rec->data, rec->len, BS_FRAME_MAX_DEFAULT, &len) == 1 &&
            bs_msg_decode(rec->data, len, m) == 0 && m->type == BS_MSG_ERROR) {
                rep->server_said = true;
                rep->code = m->code;
                snprintf(rep->text, sizeof(rep->text), "%.*s", (int) m->path_len, m->path);
                snprintf(rep->reason, sizeof(rep->reason), "the server answered in clear text: %.200s", rep->text);
        } else if (SSL_get_verify_result(ssl) != X509_V_OK)
                snprintf(rep->reason, sizeof(rep->reason), "certificate verify failed: %s",
                         X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        else if (r == -ECONNRESET)
                snprintf(rep->reason, sizeof(rep->reason),
                         "the server closed the connection during the TLS handshake");
        else if (rec->len > 0 && rec->data[0] != BS_TLS_HANDSHAKE_BYTE)
                snprintf(rep->reason, sizeof(rep->reason),
                         "the server does not speak TLS (a server with tls = no?)");
        else
                bs_tls_error(rep->reason, sizeof(rep->reason));
        ERR_clear_error();
        free(m);
}

static int start_tls(BsConn *c, const char *host, int timeout_ms, const BsTrust *t, BsConnReport *rep) {
        SSL_CTX *ctx;
        Recorded rec = {};
        int64_t deadline = mono_ms() + timeout_ms;

        int r = bs_tls_client_ctx_new(t->ca_file, &ctx);
        if (r < 0) {
                snprintf(rep->reason, sizeof(rep->reason), "cannot read the CA certificates in %s",
                         t->ca_file && t->ca_file[0] ? t->ca_file : "the system store");
                ERR_clear_error();
                return -EPROTO;
        }
        r = bs_tls_client_new(ctx, c->fd, host, &c->ssl);
        SSL_CTX_free(ctx); /* the connection holds its own reference */
        if (r < 0)
                return r;
        BIO *rbio = SSL_get_rbio(c->ssl);
        BIO_set_callback_arg(rbio, (char *) &rec);
        BIO_set_callback_ex(rbio, record);
        for (;;) {
                r = bs_tls_handshake(c->ssl);
                if (r != 0)
                        break;
                int64_t left = deadline - mono_ms();
                if (left <= 0) {
                        r = -ETIMEDOUT;
                        break;
                }
                struct pollfd p = { .fd = c->fd, .events = SSL_want_write(c->ssl) ? POLLOUT : POLLIN };
                if (poll(&p, 1, (int) left) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
        }
        BIO_set_callback_ex(rbio, NULL);
        BIO_set_callback_arg(rbio, NULL);
        if (r == -ETIMEDOUT) {
                snprintf(rep->reason, sizeof(rep->reason), "no TLS handshake within %d ms", timeout_ms);
                return r;
        }
        if (r < 0) {
                if (rec.len > 0)
                        record_rest(c->fd, &rec);
                explain_failure(c->ssl, r, &rec, rep);
                return -EPROTO;
        }
        r = bs_fp_of_peer(c->ssl, rep->presented);
        r = r ?: bs_trust_check(t, rep->presented, rep->expected, &rep->outcome);
        if (r < 0)
                return r;
        return rep->outcome == BS_TRUST_MISMATCH || rep->outcome == BS_TRUST_UNKNOWN ? -EPERM : 0;
}

int bs_conn_open(const char *host, const char *port, int timeout_ms, const BsTrust *t, BsConn **ret,
                 BsConnReport *rep) {
        _cleanup_(bs_conn_freep) BsConn *c = NULL;

        memset(rep, 0, sizeof(*rep));
        int r = bs_conn_connect(host, port, timeout_ms, &c);
        if (r < 0)
                return r;
        if (t->tls) {
                r = start_tls(c, host, timeout_ms, t, rep);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(c);
        return 0;
}
