/* bs-hash.h - SHA-256 over OpenSSL's libcrypto */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "bs-proto.h"

typedef struct BsSha BsSha;

/** Start a SHA-256 computation; -ENOMEM on failure. */
int bs_sha_new(BsSha **ret);
BsSha *bs_sha_free(BsSha *s);
/** Restart s for a new message. */
int bs_sha_reset(BsSha *s);
int bs_sha_update(BsSha *s, const void *p, size_t n);
int bs_sha_final(BsSha *s, uint8_t out[BS_SHA_LEN]);
/** Hash a whole buffer at once. */
int bs_sha_buf(const void *p, size_t n, uint8_t out[BS_SHA_LEN]);
/** Hash the rest of an open file from its current offset. */
int bs_sha_fd(int fd, uint8_t out[BS_SHA_LEN]);
/** Lower-case hex of n bytes into out (2n+1 bytes). */
void bs_hex(const uint8_t *p, size_t n, char *out);
/** Read exactly 2n lower-case hex digits (and nothing more) into n bytes; -EINVAL otherwise. */
int bs_unhex(const char *s, uint8_t *out, size_t n);
static inline void bs_sha_freep(BsSha **s) { if (*s) bs_sha_free(*s); }
