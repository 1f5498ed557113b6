/* bs-token.h - account IDs and the ID-KEY tokens that prove membership */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BS_ID_LEN 4
#define BS_KEY_BYTES 20 /* 160 bits */
#define BS_KEY_LEN 32   /* base32 characters */
#define BS_TOKEN_MAX (BS_ID_LEN + 1 + BS_KEY_LEN)

typedef struct BsToken {
        char id[BS_ID_LEN + 1];
        char key[BS_KEY_LEN + 1]; /* empty when only the ID was given */
} BsToken;

/** A fresh random account ID of 4 characters from [A-Z0-9]. */
void bs_id_generate(char out[BS_ID_LEN + 1]);
/** True when s is a well-formed account ID. */
bool bs_id_valid(const char *s, size_t n);
/** A fresh random key, base32 (RFC 4648 alphabet, no padding). */
int bs_key_generate(char out[BS_KEY_LEN + 1]);
/**
 * Parse "ID" or "ID-KEY" (case-insensitive; spaces around are ignored).
 * Returns 0 or -EINVAL.
 */
int bs_token_parse(const char *s, size_t n, BsToken *t);
/** Format a token into out (BS_TOKEN_MAX + 1 bytes). */
void bs_token_format(const BsToken *t, char *out);
/** Hex SHA-256 of a key, as stored by the server (65 bytes). */
int bs_key_hash(const char *key, char out[65]);
/** Constant-time comparison of two NUL-terminated hex hashes. */
bool bs_key_hash_equal(const char *a, const char *b);
