/* fuzz-path.c - libFuzzer target for the path rules (common/bs-path.c)
 *
 * bs_path_check() is compared with a plain reference implementation of
 * docs/protocol.md's rules: relative, '/'-separated, no empty, "." or ".."
 * component, no NUL byte, components <= 255 bytes, whole path <= 4096
 * bytes. Any disagreement aborts. Each input is checked as it is and
 * repeated up to a length near the 4096-byte limit, so that the limits
 * are reached without huge inputs.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bs-path.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool reference(const char *p, size_t len) {
        if (len == 0 || len > 4096)
                return false;
        size_t start = 0;
        for (size_t i = 0; i <= len; i++) {
                if (i < len && p[i] == 0)
                        return false;
                if (i == len || p[i] == '/') {
                        size_t n = i - start;
                        const char *c = p + start;
                        if (n == 0 || n > 255)
                                return false;
                        if (n == 1 && c[0] == '.')
                                return false;
                        if (n == 2 && c[0] == '.' && c[1] == '.')
                                return false;
                        start = i + 1;
                }
        }
        return true;
}

static void check_one(const char *p, size_t len) {
        /* An exact-size heap copy, so that ASan sees any read past len. */
        char *copy = malloc(len ? len : 1);
        if (!copy)
                abort();
        if (len)
                memcpy(copy, p, len);
        bool got = bs_path_check(copy, len) == 0;
        bool want = reference(copy, len);
        if (got != want) {
                fprintf(stderr, "bs_path_check disagrees with the reference for a %zu-byte path: %s, want %s\n",
                        len, got ? "accepted" : "refused", want ? "accepted" : "refused");
                abort();
        }
        if (got) {
                /* The helpers for valid paths must stay inside the path. */
                char *s = malloc(len + 1);
                if (!s)
                        abort();
                memcpy(s, copy, len);
                s[len] = 0;
                size_t parent = bs_path_parent_len(s);
                const char *base = bs_path_base(s);
                if (parent >= len || base < s || base > s + len || !bs_path_under(s, s))
                        abort();
                if (parent > 0 && (s[parent] != '/' || base != s + parent + 1))
                        abort();
                free(s);
        }
        free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        check_one((const char *) data, size);

        /* The input repeated to 4090..4101 bytes (first byte picks the length). */
        if (size > 0) {
                size_t len = 4090 + data[0] % 12;
                char *big = malloc(len);
                if (!big)
                        abort();
                for (size_t i = 0; i < len; i++)
                        big[i] = (char) data[i % size];
                check_one(big, len);
                free(big);
        }
        return 0;
}
