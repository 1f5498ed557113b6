/* bs-hash.c - SHA-256 over OpenSSL's libcrypto */
#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <unistd.h>

#include "bs-hash.h"

struct BsSha {
        EVP_MD_CTX *ctx;
};

int bs_sha_new(BsSha **ret) {
        BsSha *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->ctx = EVP_MD_CTX_new();
        if (!s->ctx || bs_sha_reset(s) < 0) {
                bs_sha_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

BsSha *bs_sha_free(BsSha *s) {
        if (s) {
                EVP_MD_CTX_free(s->ctx);
                free(s);
        }
        return NULL;
}

int bs_sha_reset(BsSha *s) {
        return EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

int bs_sha_update(BsSha *s, const void *p, size_t n) {
        return EVP_DigestUpdate(s->ctx, p, n) == 1 ? 0 : -EIO;
}

int bs_sha_final(BsSha *s, uint8_t out[BS_SHA_LEN]) {
        unsigned n = 0;
        return EVP_DigestFinal_ex(s->ctx, out, &n) == 1 && n == BS_SHA_LEN ? 0 : -EIO;
}

int bs_sha_buf(const void *p, size_t n, uint8_t out[BS_SHA_LEN]) {
        unsigned len = 0;
        return EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

int bs_sha_fd(int fd, uint8_t out[BS_SHA_LEN]) {
        BsSha *s = NULL;
        static __thread uint8_t buf[128 * 1024];
        int r = bs_sha_new(&s);
        if (r < 0)
                return r;
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (n == 0) {
                        r = bs_sha_final(s, out);
                        break;
                }
                bs_sha_update(s, buf, (size_t) n);
        }
        bs_sha_free(s);
        return r;
}

void bs_hex(const uint8_t *p, size_t n, char *out) {
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hex[p[i] >> 4];
                out[2 * i + 1] = hex[p[i] & 15];
        }
        out[2 * n] = 0;
}

static int hexval(char c) {
        return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int bs_unhex(const char *s, uint8_t *out, size_t n) {
        for (size_t i = 0; i < n; i++) {
                int hi = hexval(s[2 * i]), lo = hi < 0 ? -1 : hexval(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                out[i] = (uint8_t) (hi << 4 | lo);
        }
        return s[2 * n] ? -EINVAL : 0;
}
