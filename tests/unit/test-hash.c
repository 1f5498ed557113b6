/* test-hash.c - unit tests for common/bs-hash.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-hash.h"
#include "bs-macro.h"

#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/* FIPS 180-2 two-block vector. */
#define MSG_448 "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define SHA_448 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"

static void hex(const uint8_t sha[BS_SHA_LEN], char out[2 * BS_SHA_LEN + 1]) {
        bs_hex(sha, BS_SHA_LEN, out);
}

Test(hash, known_vectors_buf) {
        uint8_t sha[BS_SHA_LEN];
        char h[65];

        cr_assert_eq(bs_sha_buf("", 0, sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_EMPTY);

        cr_assert_eq(bs_sha_buf("abc", 3, sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_ABC);

        cr_assert_eq(bs_sha_buf(MSG_448, strlen(MSG_448), sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_448);
}

Test(hash, known_vectors_incremental) {
        BsSha *s = NULL;
        uint8_t sha[BS_SHA_LEN];
        char h[65];

        cr_assert_eq(bs_sha_new(&s), 0);
        cr_assert_not_null(s);
        cr_assert_eq(bs_sha_final(s, sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_EMPTY);

        cr_assert_eq(bs_sha_reset(s), 0);
        cr_assert_eq(bs_sha_update(s, "a", 1), 0);
        cr_assert_eq(bs_sha_update(s, "", 0), 0);
        cr_assert_eq(bs_sha_update(s, "bc", 2), 0);
        cr_assert_eq(bs_sha_final(s, sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_ABC);

        /* Reset really restarts: the same input gives the same digest. */
        cr_assert_eq(bs_sha_reset(s), 0);
        cr_assert_eq(bs_sha_update(s, "abc", 3), 0);
        cr_assert_eq(bs_sha_final(s, sha), 0);
        hex(sha, h);
        cr_assert_str_eq(h, SHA_ABC);

        cr_assert_null(bs_sha_free(s));
        cr_assert_null(bs_sha_free(NULL));
}

static uint8_t *make_mib(size_t n) {
        uint8_t *p = malloc(n);
        cr_assert_not_null(p);
        uint32_t x = 0x12345678u;
        for (size_t i = 0; i < n; i++) {
                x = x * 1103515245u + 12345u;
                p[i] = (uint8_t) (x >> 16);
        }
        return p;
}

Test(hash, mib_buffer_vs_odd_chunks) {
        const size_t n = 1024 * 1024;
        uint8_t *p = make_mib(n);
        uint8_t whole[BS_SHA_LEN], inc[BS_SHA_LEN];
        static const size_t chunks[] = { 1, 3, 7, 63, 64, 65, 127, 1000, 4093, 65537 };

        cr_assert_eq(bs_sha_buf(p, n, whole), 0);
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
                _cleanup_(bs_sha_freep) BsSha *s = NULL;
                cr_assert_eq(bs_sha_new(&s), 0);
                size_t off = 0, k = chunks[c];
                while (off < n) {
                        size_t m = n - off < k ? n - off : k;
                        cr_assert_eq(bs_sha_update(s, p + off, m), 0);
                        off += m;
                        k = k % 2 ? k + 2 : k + 1; /* vary the size */
                }
                cr_assert_eq(bs_sha_final(s, inc), 0);
                cr_assert_eq(memcmp(whole, inc, BS_SHA_LEN), 0, "chunk start %zu", chunks[c]);
        }

        /* A one-bit change changes the digest. */
        p[n / 2] ^= 1;
        cr_assert_eq(bs_sha_buf(p, n, inc), 0);
        cr_assert_neq(memcmp(whole, inc, BS_SHA_LEN), 0);
        free(p);
}

Test(hash, sha_fd) {
        const size_t n = 1024 * 1024 + 333; /* more than one read buffer */
        uint8_t *p = make_mib(n);
        uint8_t want[BS_SHA_LEN], got[BS_SHA_LEN];
        char path[] = "/tmp/bs-test-hash-XXXXXX";
        int fd = mkstemp(path);
        cr_assert_geq(fd, 0);
        unlink(path);
        cr_assert_eq(write(fd, p, n), (ssize_t) n);

        /* From offset 0: the whole file. */
        cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
        cr_assert_eq(bs_sha_buf(p, n, want), 0);
        cr_assert_eq(bs_sha_fd(fd, got), 0);
        cr_assert_eq(memcmp(want, got, BS_SHA_LEN), 0);

        /* From the current offset: the rest only. */
        cr_assert_eq(lseek(fd, 1000, SEEK_SET), 1000);
        cr_assert_eq(bs_sha_buf(p + 1000, n - 1000, want), 0);
        cr_assert_eq(bs_sha_fd(fd, got), 0);
        cr_assert_eq(memcmp(want, got, BS_SHA_LEN), 0);

        /* At the end: the empty message. */
        char h[65];
        cr_assert_eq(bs_sha_fd(fd, got), 0);
        hex(got, h);
        cr_assert_str_eq(h, SHA_EMPTY);

        close(fd);
        free(p);
}

Test(hash, sha_fd_bad_fd) {
        uint8_t got[BS_SHA_LEN];
        cr_assert_eq(bs_sha_fd(-1, got), -EBADF);
        /* A directory cannot be read(). */
        int fd = open("/", O_RDONLY | O_DIRECTORY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_sha_fd(fd, got), -EISDIR);
        close(fd);
}

Test(hash, hex) {
        static const uint8_t b[] = { 0x00, 0x01, 0x7f, 0x80, 0xab, 0xff, 0x10 };
        char out[2 * sizeof(b) + 1];
        memset(out, '#', sizeof(out));
        bs_hex(b, sizeof(b), out);
        cr_assert_str_eq(out, "00017f80abff10");

        char empty[1] = { '#' };
        bs_hex(b, 0, empty);
        cr_assert_eq(empty[0], 0);
}
