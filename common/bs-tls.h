/* bs-tls.h - TLS 1.3 between agent and server (OpenSSL 3)
 *
 * A server is known by the SHA-256 of its public key (the certificate's
 * SubjectPublicKeyInfo), written "SHA256:" and 64 hex digits: it stays
 * the same when a certificate is renewed over the same key, as an SSH
 * host key does. TLS 1.3 proves that the peer holds that key, so an
 * agent that checks the fingerprint after the handshake needs no CA.
 */
#pragma once

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bs-buf.h"

#define BS_FP_LEN 32
#define BS_FP_TEXT_MAX (7 + 2 * BS_FP_LEN + 1)
/* The first byte of a TLS record carrying a handshake (ClientHello). */
#define BS_TLS_HANDSHAKE_BYTE 0x16

/** "SHA256:" and 64 lowercase hex digits. */
void bs_fp_format(const uint8_t fp[BS_FP_LEN], char out[BS_FP_TEXT_MAX]);
/** Parse "SHA256:HEX" or bare HEX (64 digits, either case). -EINVAL otherwise. */
int bs_fp_parse(const char *s, uint8_t fp[BS_FP_LEN]);
/** The fingerprint of a certificate's public key. */
int bs_fp_of_cert(X509 *cert, uint8_t fp[BS_FP_LEN]);
/** The fingerprint of the certificate the peer of ssl presented; -ENOKEY without one. */
int bs_fp_of_peer(SSL *ssl, uint8_t fp[BS_FP_LEN]);

/**
 * A client context: TLS 1.3 only. With ca_file NULL the peer is not
 * verified during the handshake (the caller compares fingerprints); with
 * a path, or "" for the system store, the certificate chain must verify
 * and bs_tls_client_new() also checks the host name.
 */
int bs_tls_client_ctx_new(const char *ca_file, SSL_CTX **ret);
/** A server context from a PEM certificate chain and key (the same file may hold both). */
int bs_tls_server_ctx_new(const char *cert_file, const char *key_file, SSL_CTX **ret);
/** A server connection on fd, to be driven by bs_tls_handshake(). */
int bs_tls_server_new(SSL_CTX *ctx, int fd, SSL **ret);
/** A client connection on fd to host (sent as SNI and checked by a CA-verifying ctx). */
int bs_tls_client_new(SSL_CTX *ctx, int fd, const char *host, SSL **ret);

/**
 * Drive a handshake on a non-blocking socket. Returns 1 when done, 0 when
 * it waits for the socket (SSL_want_write() says which way), -ECONNRESET
 * when the peer closed, -EPROTO when the handshake failed (the reason is
 * on OpenSSL's error queue for bs_tls_error()).
 */
int bs_tls_handshake(SSL *ssl);
/** Like bs_buf_recv(), through ssl. */
ssize_t bs_tls_recv(SSL *ssl, BsBuf *b, size_t chunk, size_t max, bool *eof);
/**
 * Like bs_buf_send(), through ssl. Records may stay gathered after the
 * plaintext is taken: bs_tls_unsent() says so, and the caller waits for
 * the socket to take more as it would for its own buffer.
 */
ssize_t bs_tls_send(SSL *ssl, BsBuf *b);
/** Ciphertext not yet on the socket (a NULL ssl has none). */
bool bs_tls_unsent(SSL *ssl);
/** Take OpenSSL's queued errors as one line (for a caller to log); clears the queue. */
const char *bs_tls_error(char *buf, size_t size);
