/* server-tls.h - the server's TLS identity: its own key, or the administrator's certificate */
#pragma once

#include <limits.h>
#include <openssl/ssl.h>

#include "bs-tls.h"

/* The server's own key and self-signed certificate, in one file below the storage. */
#define SERVER_TLS_OWN "tls.pem"

/**
 * Make sure storage holds the server's own key and certificate, creating
 * them (Ed25519, mode 0600, written whole or not at all) when missing.
 * path receives the file's path. Returns 0 when it was there, 1 when it
 * was created, or a negative errno.
 */
int server_tls_own(const char *storage, char path[PATH_MAX]);

/**
 * A server context from cert_file and key_file, and the fingerprint of
 * the certificate's key. -EBADMSG when they cannot be used together (the
 * reason is on OpenSSL's error queue).
 */
int server_tls_load(const char *cert_file, const char *key_file, SSL_CTX **ret, uint8_t fp[BS_FP_LEN]);
