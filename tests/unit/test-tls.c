/* test-tls.c - fingerprints: text form, of a real key, pinned at first contact and checked after;
 * records gathered into large writes */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-tls.h"
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

/* A connected pair of non-blocking TCP sockets on loopback. */
static void tcp_pair(int *a, int *b) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(l, 0);
        cr_assert_eq(bind(l, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(listen(l, 1), 0);
        cr_assert_eq(getsockname(l, (struct sockaddr *) &sa, &len), 0);
        *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(connect(*a, (struct sockaddr *) &sa, sizeof(sa)), 0);
        *b = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        cr_assert_geq(*b, 0);
        close(l);
        cr_assert_eq(fcntl(*a, F_SETFL, O_NONBLOCK), 0);
        int one = 1;
        cr_assert_eq(setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
}

/* Both ends of a TLS connection over a TCP pair, handshake done. */
static void tls_pair(SSL **client, SSL **server, int *cfd, int *sfd) {
        char path[PATH_MAX];
        uint8_t fp[BS_FP_LEN];
        SSL_CTX *sctx, *cctx;

        cr_assert_geq(server_tls_own(dir, path), 0);
        cr_assert_eq(server_tls_load(path, path, &sctx, fp), 0);
        cr_assert_eq(bs_tls_client_ctx_new(NULL, &cctx), 0);
        tcp_pair(cfd, sfd);
        cr_assert_eq(bs_tls_client_new(cctx, *cfd, "127.0.0.1", client), 0);
        cr_assert_eq(bs_tls_server_new(sctx, *sfd, server), 0);
        SSL_CTX_free(cctx); /* held by each SSL */
        SSL_CTX_free(sctx);
        int c = 0, s = 0;
        for (int i = 0; i < 1000 && (c != 1 || s != 1); i++) {
                if (c != 1)
                        c = bs_tls_handshake(*client);
                if (s != 1)
                        s = bs_tls_handshake(*server);
                cr_assert_geq(c, 0);
                cr_assert_geq(s, 0);
        }
        cr_assert(c == 1 && s == 1, "handshake done");
}

/* After the handshake records go to the kernel, where it has the tls
 * module and took the keys, or to the gathering BIO: never a write per
 * record. A guest with the module (tests/kernel) sets BS_TEST_KTLS=1 to
 * demand the kernel. */
Test(tls, writes_go_to_the_kernel_or_are_gathered) {
        SSL *ssl[2];
        int fd[2];
        const char *want = getenv("BS_TEST_KTLS");
        bool want_kernel = want && strcmp(want, "1") == 0;

        tls_pair(&ssl[0], &ssl[1], &fd[0], &fd[1]);
        for (int i = 0; i < 2; i++) {
                BIO *w = SSL_get_wbio(ssl[i]);
                bool kernel = BIO_get_ktls_send(w);
                if (want_kernel)
                        cr_assert(kernel, "%s: the kernel has the keys", i ? "server" : "client");
                else
                        cr_assert(kernel || BIO_method_type(w) != BIO_TYPE_SOCKET,
                                  "%s: records gathered", i ? "server" : "client");
                SSL_free(ssl[i]);
                close(fd[i]);
        }
}

typedef struct Drain {
        int fd;
        size_t want, got;
} Drain;

/* Reads the ciphertext as fast as it comes, so that each write the
 * sender makes leaves as a segment of its own. */
static void *drain(void *arg) {
        Drain *d = arg;
        static uint8_t buf[1 << 20];
        while (d->got < d->want) {
                struct pollfd p = { .fd = d->fd, .events = POLLIN };
                if (poll(&p, 1, 10000) != 1)
                        break;
                ssize_t k = read(d->fd, buf, sizeof(buf));
                if (k <= 0 && !(k < 0 && errno == EAGAIN))
                        break;
                if (k > 0)
                        d->got += (size_t) k;
        }
        return NULL;
}

/* Without the gathering each 16 KiB record was a write, and a TCP
 * segment, of its own: some 64 for a MiB. In large writes a MiB leaves
 * in a few large segments. */
Test(tls, records_leave_in_large_writes) {
        SSL *client, *server;
        int cfd, sfd;
        const size_t n = 1024 * 1024;
        BsBuf out = { 0 };
        Drain d = { .want = n };

        tls_pair(&client, &server, &cfd, &sfd);
        struct tcp_info ti0, ti1;
        socklen_t len = sizeof(ti0);
        cr_assert_eq(getsockopt(cfd, IPPROTO_TCP, TCP_INFO, &ti0, &len), 0);

        cr_assert_eq(bs_buf_reserve(&out, n), 0);
        test_fill(out.data, n, 7);
        out.end = n;
        d.fd = sfd;
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, drain, &d), 0);
        while (bs_buf_len(&out) > 0 || bs_tls_unsent(client)) {
                cr_assert_geq(bs_tls_send(client, &out), 0);
                struct pollfd p = { .fd = cfd, .events = POLLOUT };
                if (bs_buf_len(&out) > 0 || bs_tls_unsent(client))
                        cr_assert_eq(poll(&p, 1, 10000), 1);
        }
        cr_assert_eq(pthread_join(t, NULL), 0);
        cr_assert_geq(d.got, n, "all of it sent, with the records' overhead");

        len = sizeof(ti1);
        cr_assert_eq(getsockopt(cfd, IPPROTO_TCP, TCP_INFO, &ti1, &len), 0);
        uint32_t segs = ti1.tcpi_data_segs_out - ti0.tcpi_data_segs_out;
        cr_assert_lt(segs, 40, "1 MiB in %u segments", segs);

        bs_buf_free(&out);
        SSL_free(client);
        SSL_free(server);
        close(cfd);
        close(sfd);
}

/* A peer that reads nothing: the send stops at a full socket with
 * records still held, and they all arrive once it reads. */
Test(tls, held_records_wait_for_the_socket) {
        SSL *client, *server;
        int cfd, sfd;
        const size_t n = 8 * 1024 * 1024;
        BsBuf out = { 0 }, got = { 0 };
        bool eof = false;

        tls_pair(&client, &server, &cfd, &sfd);
        cr_assert_eq(bs_buf_reserve(&out, n), 0);
        test_fill(out.data, n, 9);
        out.end = n;
        uint8_t *want = malloc(n);
        cr_assert_not_null(want);
        memcpy(want, out.data, n);

        cr_assert_geq(bs_tls_send(client, &out), 0);
        cr_assert(bs_buf_len(&out) > 0 || bs_tls_unsent(client) || SSL_want_write(client),
                  "8 MiB do not fit a socket nobody reads");
        for (int i = 0; i < 100000 && bs_buf_len(&got) < n; i++) {
                cr_assert_geq(bs_tls_recv(server, &got, 64 * 1024, n, &eof), 0);
                cr_assert_not(eof);
                cr_assert_geq(bs_tls_send(client, &out), 0);
        }
        cr_assert_eq(bs_buf_len(&out), 0);
        cr_assert_not(bs_tls_unsent(client));
        cr_assert_eq(bs_buf_len(&got), n);
        cr_assert_eq(memcmp(bs_buf_head(&got), want, n), 0);

        free(want);
        bs_buf_free(&out);
        bs_buf_free(&got);
        SSL_free(client);
        SSL_free(server);
        close(cfd);
        close(sfd);
}
