/* bs-tls.c - TLS 1.3 contexts, fingerprints and non-blocking I/O */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

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

int bs_tls_client_new(SSL_CTX *ctx, int fd, const char *host, SSL **ret) {
        SSL *ssl = SSL_new(ctx);
        if (!ssl)
                return -ENOMEM;
        unsigned char addr[16];
        bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
        int ok = SSL_set_fd(ssl, fd);
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
        return r == 1 ? 1 : failure(ssl, r);
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
