/* bs-tls.c - TLS 1.3 contexts, fingerprints and non-blocking I/O */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bs-macro.h"
#include "bs-hash.h"
#include "bs-tls.h"

/* AES-128-GCM first: with AES-NI the cheapest of the three, and as strong
 * as this use needs; ChaCha20 for machines without AES instructions. */
#define BS_TLS_SUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"
/* Ciphertext read from the socket at a time. */
#define BS_TLS_READ_BUFFER (64u * 1024)
/* Plaintext handed to one SSL_write: many full 16 KiB records per call. */
#define BS_TLS_WRITE_MAX (1u << 20)
/* The most plaintext one record carries. */
#define BS_TLS_RECORD (16u * 1024)
/* Ciphertext gathered before it goes to the socket in one write. */
#define BS_TLS_WIRE_MAX (256u * 1024)

void bs_fp_format(const uint8_t fp[BS_FP_LEN], char out[BS_FP_TEXT_MAX]) {
        memcpy(out, "SHA256:", 7);
        bs_hex(fp, BS_FP_LEN, out + 7);
}

int bs_fp_parse(const char *s, uint8_t fp[BS_FP_LEN]) {
        if (strncasecmp(s, "SHA256:", 7) == 0)
                s += 7;
        char low[2 * BS_FP_LEN + 1];
        size_t n = strlen(s);
        if (n != 2 * BS_FP_LEN)
                return -EINVAL;
        for (size_t i = 0; i <= n; i++)
                low[i] = (char) tolower((unsigned char) s[i]);
        return bs_unhex(low, fp, BS_FP_LEN);
}

int bs_fp_of_cert(X509 *cert, uint8_t fp[BS_FP_LEN]) {
        unsigned char *der = NULL;
        unsigned int len = 0;

        int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
        if (n <= 0)
                return -EINVAL;
        int ok = EVP_Digest(der, (size_t) n, fp, &len, EVP_sha256(), NULL);
        OPENSSL_free(der);
        return ok && len == BS_FP_LEN ? 0 : -EINVAL;
}

int bs_fp_of_peer(SSL *ssl, uint8_t fp[BS_FP_LEN]) {
        X509 *cert = SSL_get1_peer_certificate(ssl);
        if (!cert)
                return -ENOKEY;
        int r = bs_fp_of_cert(cert, fp);
        X509_free(cert);
        return r;
}

static SSL_CTX *ctx_new(const SSL_METHOD *method) {
        SSL_CTX *ctx = SSL_CTX_new(method);
        if (!ctx)
                return NULL;
        if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
            !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) || !SSL_CTX_set_ciphersuites(ctx, BS_TLS_SUITES)) {
                SSL_CTX_free(ctx);
                return NULL;
        }
        /* Our output buffer moves when it grows, and a write may take part
         * of it; kernel TLS where the kernel offers it, silently not
         * otherwise. */
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                      SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
        /* Read what the socket has, not a record header and then its body:
         * two system calls per 16 KiB otherwise. What is read ahead is
         * seen by SSL_has_pending(), which the event loops look at. */
        SSL_CTX_set_read_ahead(ctx, 1);
        SSL_CTX_set_default_read_buffer_len(ctx, BS_TLS_READ_BUFFER);
        /* Frames carry their length: a close without close_notify cuts
         * nothing that could be taken for whole, so it is a plain EOF. */
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        return ctx;
}

int bs_tls_client_ctx_new(const char *ca_file, SSL_CTX **ret) {
        SSL_CTX *ctx = ctx_new(TLS_client_method());
        if (!ctx)
                return -ENOMEM;
        if (ca_file) {
                int ok = ca_file[0] ? SSL_CTX_load_verify_file(ctx, ca_file) : SSL_CTX_set_default_verify_paths(ctx);
                if (!ok) {
                        SSL_CTX_free(ctx);
                        return -ENOENT;
                }
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        } else
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        *ret = ctx;
        return 0;
}

int bs_tls_server_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **ret) {
        SSL_CTX *ctx = ctx_new(TLS_server_method());
        if (!ctx)
                return -ENOMEM;
        /* No session tickets: agents hold one long connection, and a ticket
         * costs a write and a key per handshake for nothing. */
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
                SSL_CTX_free(ctx);
                return -EBADMSG;
        }
        *ret = ctx;
        return 0;
}

/*
 * The write side of a connection without kernel TLS. OpenSSL writes each
 * 16 KiB record to its BIO at once: with a socket BIO that is a system
 * call and a TCP segment per record, which on loopback cost more than the
 * encryption. This BIO gathers records and sends them in large writes.
 * What it holds is sent by BIO_flush() (after each handshake flight) and
 * by bs_tls_send(); bs_tls_unsent() tells a caller to wait for EPOLLOUT.
 */
typedef struct Wire {
        int fd;
        BsBuf buf;
} Wire;

/* 1 when all is sent, 0 when the socket is full, or a negative errno. */
static int wire_push(Wire *w) {
        ssize_t n = bs_buf_send(&w->buf, w->fd);
        if (n < 0)
                return (int) n;
        if (bs_buf_len(&w->buf) > 0)
                return 0;
        /* An idle connection holds no buffer (SSL_MODE_RELEASE_BUFFERS). */
        bs_buf_free(&w->buf);
        return 1;
}

static int wire_write(BIO *b, const char *p, size_t n, size_t *done) {
        Wire *w = BIO_get_data(b);
        BIO_clear_retry_flags(b);
        if (bs_buf_len(&w->buf) >= BS_TLS_WIRE_MAX) {
                int r = wire_push(w);
                if (r < 0) {
                        errno = -r;
                        return 0;
                }
                if (bs_buf_len(&w->buf) >= BS_TLS_WIRE_MAX) {
                        /* OpenSSL offers the same record again later. */
                        BIO_set_retry_write(b);
                        return 0;
                }
        }
        /* Room for a whole gathering at once: grown by doubling, the
         * buffer would be copied about as often as it is filled. */
        int r = bs_buf_reserve(&w->buf, bs_buf_len(&w->buf) ? n : BS_TLS_WIRE_MAX + n);
        if (r < 0) {
                errno = -r;
                return 0;
        }
        memcpy(w->buf.data + w->buf.end, p, n);
        w->buf.end += n;
        *done = n;
        return 1;
}

static long wire_ctrl(BIO *b, int cmd, long num, void *ptr) {
        Wire *w = BIO_get_data(b);
        (void) num;
        (void) ptr;
        switch (cmd) {
        case BIO_CTRL_FLUSH: {
                BIO_clear_retry_flags(b);
                int r = wire_push(w);
                if (r == 0)
                        BIO_set_retry_write(b);
                if (r < 0)
                        errno = -r;
                return r > 0;
        }
        case BIO_CTRL_WPENDING:
                return (long) bs_buf_len(&w->buf);
        case BIO_CTRL_DUP:
                return 1;
        default:
                return 0;
        }
}

static int wire_create(BIO *b) {
        Wire *w = calloc(1, sizeof(*w));
        if (!w)
                return 0;
        w->fd = -1;
        BIO_set_data(b, w);
        BIO_set_init(b, 1);
        return 1;
}

static int wire_destroy(BIO *b) {
        Wire *w = BIO_get_data(b);
        if (w) {
                bs_buf_free(&w->buf);
                free(w);
        }
        BIO_set_data(b, NULL);
        return 1;
}

static BIO_METHOD *wire_method;
static pthread_once_t wire_once = PTHREAD_ONCE_INIT;

/* Without the method (no memory) records go out one write each. */
static void wire_method_init(void) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "backupsync wire");
        if (m && BIO_meth_set_write_ex(m, wire_write) && BIO_meth_set_ctrl(m, wire_ctrl) &&
            BIO_meth_set_create(m, wire_create) && BIO_meth_set_destroy(m, wire_destroy))
                wire_method = m;
        else
                BIO_meth_free(m);
}

/* The handshake runs on the socket BIO, so that OpenSSL can hand the
 * application keys to the kernel where it has the tls module. */
static int attach(SSL *ssl, int fd) {
        return SSL_set_fd(ssl, fd) ? 0 : -ENOMEM;
}

static bool kernel_sends(SSL *ssl) {
#ifdef OPENSSL_NO_KTLS
        (void) ssl;
        return false;
#else
        return BIO_get_ktls_send(SSL_get_wbio(ssl));
#endif
}

/* Once the handshake is done: where the kernel did not take the keys,
 * records are gathered from now on. Failing that, they go out one write
 * each, which is slower, not wrong. */
static void gather_writes(SSL *ssl) {
        if (kernel_sends(ssl))
                return;
        (void) pthread_once(&wire_once, wire_method_init);
        if (!wire_method || BIO_method_type(SSL_get_wbio(ssl)) != BIO_TYPE_SOCKET)
                return;
        BIO *w = BIO_new(wire_method);
        if (!w)
                return;
        ((Wire *) BIO_get_data(w))->fd = SSL_get_wfd(ssl);
        SSL_set0_wbio(ssl, w);
}

bool bs_tls_unsent(SSL *ssl) {
        return ssl && BIO_wpending(SSL_get_wbio(ssl)) > 0;
}

int bs_tls_server_new(SSL_CTX *ctx, int fd, SSL **ret) {
        SSL *ssl = SSL_new(ctx);
        if (!ssl)
                return -ENOMEM;
        int r = attach(ssl, fd);
        if (r < 0) {
                SSL_free(ssl);
                return r;
        }
        SSL_set_accept_state(ssl);
        *ret = ssl;
        return 0;
}

int bs_tls_client_new(SSL_CTX *ctx, int fd, const char *host, SSL **ret) {
        SSL *ssl = SSL_new(ctx);
        if (!ssl)
                return -ENOMEM;
        unsigned char addr[16];
        bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
        int ok = attach(ssl, fd) == 0;
        /* SNI is for names only; a CA-verifying context checks the name or address. */
        if (ok && !is_ip)
                ok = SSL_set_tlsext_host_name(ssl, host);
        if (ok && SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER)
                ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) : SSL_set1_host(ssl, host);
        if (!ok) {
                SSL_free(ssl);
                return -EINVAL;
        }
        SSL_set_connect_state(ssl);
        *ret = ssl;
        return 0;
}

/* What a failed call means: 0 to wait for the socket, or a negative errno. */
static int failure(SSL *ssl, int ret) {
        int e = SSL_get_error(ssl, ret);
        switch (e) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
                return 0;
        case SSL_ERROR_ZERO_RETURN:
                return -ECONNRESET;
        case SSL_ERROR_SYSCALL:
                if (ERR_peek_error() == 0)
                        return errno == 0 || errno == EPIPE ? -ECONNRESET : -errno;
                return -EPROTO;
        default:
                if (ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                        ERR_clear_error();
                        return -ECONNRESET;
                }
                return -EPROTO;
        }
}

int bs_tls_handshake(SSL *ssl) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(ssl);
        if (r != 1)
                return failure(ssl, r);
        gather_writes(ssl);
        return 1;
}

ssize_t bs_tls_recv(SSL *ssl, BsBuf *b, size_t chunk, size_t max, bool *eof) {
        size_t got = 0;
        while (bs_buf_len(b) < max) {
                int r = bs_buf_reserve(b, chunk);
                if (r < 0)
                        return r;
                size_t n;
                ERR_clear_error();
                errno = 0;
                int ok = SSL_read_ex(ssl, b->data + b->end, MIN(chunk, b->cap - b->end), &n);
                if (!ok) {
                        r = failure(ssl, 0);
                        if (r == 0)
                                break;
                        if (r == -EINTR)
                                continue;
                        if (r == -ECONNRESET) {
                                /* Frames carry their own length: a close without
                                 * close_notify truncates nothing we would accept. */
                                *eof = true;
                                break;
                        }
                        return r;
                }
                b->end += n;
                got += n;
        }
        return (ssize_t) got;
}

ssize_t bs_tls_send(SSL *ssl, BsBuf *b) {
        size_t sent = 0;
        /* With kernel TLS the kernel seals the records. OpenSSL would hand
         * it one per call; the plaintext goes in large sends instead, all
         * but the last record's worth with MSG_MORE, so that records and
         * TCP segments leave full. */
        if (kernel_sends(ssl)) {
                ssize_t n = bs_buf_send_more(b, SSL_get_wfd(ssl), BS_TLS_RECORD);
                return n == -EPIPE ? -ECONNRESET : n;
        }
        while (bs_buf_len(b) > 0) {
                size_t n;
                ERR_clear_error();
                errno = 0;
                if (!SSL_write_ex(ssl, bs_buf_head(b), MIN(bs_buf_len(b), (size_t) BS_TLS_WRITE_MAX), &n)) {
                        int r = failure(ssl, 0);
                        if (r == 0)
                                break;
                        if (r == -EINTR)
                                continue;
                        return r;
                }
                bs_buf_consume(b, n);
                sent += n;
        }
        /* The last records gathered. */
        BIO *w = SSL_get_wbio(ssl);
        if (BIO_wpending(w) > 0) {
                errno = 0;
                if (BIO_flush(w) <= 0 && !BIO_should_retry(w))
                        return errno ? -errno : -EIO;
        }
        return (ssize_t) sent;
}

const char *bs_tls_error(char *buf, size_t size) {
        /* The first error is the cause; what follows it is where it surfaced. */
        unsigned long e = ERR_get_error();
        const char *reason = e ? ERR_reason_error_string(e) : NULL;
        snprintf(buf, size, "%s", reason ?: "TLS failure");
        ERR_clear_error();
        return buf;
}
