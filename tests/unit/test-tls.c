/* test-tls.c - fingerprints: text form, of a real key, pinned at first contact and checked after */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-trust.h"
#include "server-tls.h"
#include "test-util.h"

static const char hex64[] = "0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb";

/* Held in the array itself: Criterion copies parameters into each test's process. */
typedef struct FpCase {
        char text[96];
        bool ok;
} FpCase;

ParameterizedTestParameters(fp, parse) {
        static FpCase cases[] = {
                { "SHA256:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb", true },
                { "sha256:0ED8DADBB51C7B4A6E124636BA2D3E185EBDF698025EB62D2491AE26EA700FBB", true },
                { "0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb", true },
                { "SHA256:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fb", false },   /* 63 */
                { "SHA256:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb0", false }, /* 65 */
                { "SHA256:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbg", false },  /* not hex */
                { "SHA1:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb", false },
                { "SHA256: 0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb", false },
                { "", false },
                { "SHA256:", false },
        };
        return cr_make_param_array(FpCase, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(FpCase *c, fp, parse) {
        uint8_t fp[BS_FP_LEN];
        char text[BS_FP_TEXT_MAX];
        int r = bs_fp_parse(c->text, fp);
        cr_assert_eq(r == 0, c->ok, "%s: %d", c->text, r);
        if (c->ok) {
                bs_fp_format(fp, text);
                cr_assert_str_eq(text + 7, hex64, "one text form, lower case");
                cr_assert_eq(strncmp(text, "SHA256:", 7), 0);
        }
}

static char dir[] = "/tmp/bs-test-tls-XXXXXX";
static int dfd = -1;

static void setup(void) {
        dfd = test_dir_new(dir);
        cr_assert_geq(dfd, 0);
}

static void teardown(void) {
        cr_assert_eq(test_dir_remove(dir, dfd), 0);
}

TestSuite(tls, .init = setup, .fini = teardown);

/* The key's fingerprint is the SHA-256 of its SubjectPublicKeyInfo, as
 * `openssl pkey -pubin -outform DER | sha256sum` computes it. */
Test(tls, own_key_created_once) {
        char path[PATH_MAX], text[BS_FP_TEXT_MAX], cmd[PATH_MAX + 200], out[128] = "";
        uint8_t fp[BS_FP_LEN], fp2[BS_FP_LEN];
        struct stat st;
        SSL_CTX *ctx;

        cr_assert_eq(server_tls_own(dir, path), 1, "created");
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600, "the key is the server's alone");
        cr_assert_eq(server_tls_load(path, path, &ctx, fp), 0);
        SSL_CTX_free(ctx);
        cr_assert_eq(server_tls_own(dir, path), 0, "kept, not replaced");
        cr_assert_eq(server_tls_load(path, path, &ctx, fp2), 0);
        SSL_CTX_free(ctx);
        cr_assert_eq(memcmp(fp, fp2, BS_FP_LEN), 0);

        snprintf(cmd, sizeof(cmd),
                 "openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum", path);
        FILE *f = popen(cmd, "r");
        cr_assert_not_null(f);
        cr_assert_not_null(fgets(out, sizeof(out), f));
        cr_assert_eq(pclose(f), 0);
        bs_fp_format(fp, text);
        cr_assert_eq(strncmp(text + 7, out, 64), 0, "%s vs %s", text, out);

        /* Ed25519, as server-tls.c says. */
        f = fopen(path, "r");
        cr_assert_not_null(f);
        EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        cr_assert_not_null(key);
        cr_assert_eq(EVP_PKEY_get_id(key), EVP_PKEY_ED25519);
        EVP_PKEY_free(key);
}

Test(tls, mismatched_cert_and_key_refused) {
        char a[PATH_MAX], b[PATH_MAX], sub[PATH_MAX];
        uint8_t fp[BS_FP_LEN];
        SSL_CTX *ctx;

        snprintf(sub, sizeof(sub), "%s/other", dir);
        cr_assert_eq(mkdir(sub, 0700), 0);
        cr_assert_eq(server_tls_own(dir, a), 1);
        cr_assert_eq(server_tls_own(sub, b), 1);
        cr_assert_eq(server_tls_load(a, b, &ctx, fp), -EBADMSG, "a certificate with another key's key file");
        snprintf(sub, sizeof(sub), "%s/missing.pem", dir);
        cr_assert_eq(server_tls_load(sub, sub, &ctx, fp), -EBADMSG);
}

Test(tls, pin_at_first_contact_then_checked) {
        uint8_t k1[BS_FP_LEN], k2[BS_FP_LEN], expected[BS_FP_LEN], got[BS_FP_LEN];
        BsTrustOutcome o;
        BsTrust t = { .tls = true, .pin_dir_fd = dfd };

        memset(k1, 0x11, sizeof(k1));
        memset(k2, 0x22, sizeof(k2));
        cr_assert_eq(bs_pin_read(dfd, got), -ENOENT);
        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_NEW_PIN);
        cr_assert_eq(bs_pin_read(dfd, got), 0);
        cr_assert_eq(memcmp(got, k1, BS_FP_LEN), 0);

        struct stat st;
        cr_assert_eq(fstatat(dfd, BS_PIN_FILE, &st, 0), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);

        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_PINNED);
        cr_assert_eq(bs_trust_check(&t, k2, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_MISMATCH, "a changed key is refused, not pinned again");
        cr_assert_eq(memcmp(expected, k1, BS_FP_LEN), 0, "the pinned key is reported");
        cr_assert_eq(bs_pin_read(dfd, got), 0);
        cr_assert_eq(memcmp(got, k1, BS_FP_LEN), 0, "the pin is unchanged");
}

Test(tls, given_fingerprint_wins) {
        uint8_t k1[BS_FP_LEN], k2[BS_FP_LEN], expected[BS_FP_LEN], got[BS_FP_LEN];
        BsTrustOutcome o;
        BsTrust t = { .tls = true, .have_fp = true, .pin_dir_fd = dfd };

        memset(k1, 0x11, sizeof(k1));
        memset(k2, 0x22, sizeof(k2));
        memcpy(t.fp, k2, BS_FP_LEN);
        cr_assert_eq(bs_pin_write(dfd, k1), 0);
        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_MISMATCH, "the given fingerprint, not the pin, decides");
        cr_assert_eq(memcmp(expected, k2, BS_FP_LEN), 0);
        cr_assert_eq(bs_pin_read(dfd, got), 0);
        cr_assert_eq(memcmp(got, k1, BS_FP_LEN), 0, "a refused key is not pinned");
        cr_assert_eq(bs_trust_check(&t, k2, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_GIVEN);
        cr_assert_eq(bs_pin_read(dfd, got), 0);
        cr_assert_eq(memcmp(got, k2, BS_FP_LEN), 0, "the given key is kept as the pin, for the command");
}

Test(tls, nowhere_to_pin_is_unknown) {
        uint8_t k1[BS_FP_LEN], expected[BS_FP_LEN];
        BsTrustOutcome o;
        BsTrust t = { .tls = true, .pin_dir_fd = -1 };

        memset(k1, 0x11, sizeof(k1));
        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_UNKNOWN);
        t.ca_file = "";
        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), 0);
        cr_assert_eq(o, BS_TRUST_CA, "a CA-verified handshake needs no pin");
}

Test(tls, damaged_pin_refused) {
        uint8_t k1[BS_FP_LEN], expected[BS_FP_LEN];
        BsTrustOutcome o;
        BsTrust t = { .tls = true, .pin_dir_fd = dfd };

        memset(k1, 0x11, sizeof(k1));
        int fd = openat(dfd, BS_PIN_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, "SHA256:12\n", 10), 10);
        close(fd);
        cr_assert_eq(bs_trust_check(&t, k1, expected, &o), -EBADMSG, "never silently re-pinned");
}
