/* bs-token.c - account IDs and the ID-KEY tokens that prove membership */
#include <stdlib.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "bs-hash.h"
#include "bs-token.h"

static const char id_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

void bs_id_generate(char out[BS_ID_LEN + 1]) {
        for (int i = 0; i < BS_ID_LEN; i++)
                out[i] = id_chars[arc4random_uniform(sizeof(id_chars) - 1)];
        out[BS_ID_LEN] = 0;
}

bool bs_id_valid(const char *s, size_t n) {
        if (n != BS_ID_LEN)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
                        return false;
        return true;
}

int bs_key_generate(char out[BS_KEY_LEN + 1]) {
        uint8_t raw[BS_KEY_BYTES];
        if (RAND_bytes(raw, sizeof(raw)) != 1)
                return -EIO;
        /* 20 bytes are exactly 32 base32 digits of 5 bits. */
        unsigned bits = 0, acc = 0, o = 0;
        for (size_t i = 0; i < sizeof(raw); i++) {
                acc = (acc << 8) | raw[i];
                bits += 8;
                while (bits >= 5) {
                        out[o++] = b32[(acc >> (bits - 5)) & 31];
                        bits -= 5;
                }
        }
        out[o] = 0;
        OPENSSL_cleanse(raw, sizeof(raw));
        return 0;
}

int bs_token_parse(const char *s, size_t n, BsToken *t) {
        char buf[BS_TOKEN_MAX + 1];

        while (n > 0 && isspace((unsigned char) s[0]))
                s++, n--;
        while (n > 0 && isspace((unsigned char) s[n - 1]))
                n--;
        if (n != BS_ID_LEN && n != BS_TOKEN_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                buf[i] = (char) toupper((unsigned char) s[i]);
        buf[n] = 0;
        if (!bs_id_valid(buf, BS_ID_LEN))
                return -EINVAL;
        memset(t, 0, sizeof(*t));
        memcpy(t->id, buf, BS_ID_LEN);
        if (n == BS_ID_LEN)
                return 0;
        if (buf[BS_ID_LEN] != '-')
                return -EINVAL;
        for (size_t i = BS_ID_LEN + 1; i < n; i++)
                if (!strchr(b32, buf[i]) || buf[i] == 0)
                        return -EINVAL;
        memcpy(t->key, buf + BS_ID_LEN + 1, BS_KEY_LEN);
        return 0;
}

void bs_token_format(const BsToken *t, char *out) {
        if (t->key[0])
                snprintf(out, BS_TOKEN_MAX + 1, "%s-%s", t->id, t->key);
        else
                snprintf(out, BS_TOKEN_MAX + 1, "%s", t->id);
}

int bs_key_hash(const char *key, char out[65]) {
        uint8_t sha[BS_SHA_LEN];
        int r = bs_sha_buf(key, strlen(key), sha);
        if (r < 0)
                return r;
        bs_hex(sha, BS_SHA_LEN, out);
        return 0;
}

bool bs_key_hash_equal(const char *a, const char *b) {
        size_t n = strlen(a);
        return n == strlen(b) && CRYPTO_memcmp(a, b, n) == 0;
}
