/* test-s3.c - the S3 client against a real store (Ceph RGW from tests/cluster/engines.py)
 *
 * Needs BS_TEST_S3_* from `tests/cluster/engines.py run -- ...` (or its
 * `start`); without them every test fails, saying so. Each test has its
 * own bucket. The RGW restart test stops and starts the shared RGW, so
 * the tests of this file run one at a time (meson: is_parallel false,
 * criterion -j1).
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bs-macro.h"
#include "s3.h"
#include "test-util.h"

extern char **environ;

static sd_event *event;
static char bucket[64];

static const char *env_need(const char *name) {
        const char *v = getenv(name);
        if (!v || !*v)
                cr_assert_fail("%s is not set: the cluster suite needs a real S3 store; run it under "
                               "`tests/cluster/engines.py run -- meson test -C build --suite cluster`", name);
        return v;
}

static uint64_t mono_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static S3Config config(void) {
        return (S3Config) {
                .endpoint = env_need("BS_TEST_S3_ENDPOINT"),
                .region = env_need("BS_TEST_S3_REGION"),
                .access_key = env_need("BS_TEST_S3_ACCESS_KEY"),
                .secret_key = env_need("BS_TEST_S3_SECRET_KEY"),
                .bucket = bucket,
                .retry_usec = S3_RETRY_USEC_DEFAULT,
        };
}

/* What a callback saw, kept past the request's life. */
typedef struct Result {
        bool done;
        int calls;
        int r;
        uint8_t *data;
        size_t len;
        uint64_t size;
        S3Entry *entries;
        size_t n;
        bool truncated;
        unsigned attempts;
        char error[600];
} Result;

static void result_clear(Result *res) {
        free(res->data);
        for (size_t i = 0; i < res->n; i++)
                free(res->entries[i].key);
        free(res->entries);
        *res = (Result) {};
}

static void on_done(S3Request *req, int r, void *userdata) {
        Result *res = userdata;
        const S3Entry *e;

        res->done = true;
        res->calls++;
        res->r = r;
        res->data = s3_request_take_data(req, &res->len);
        res->size = s3_request_size(req);
        res->truncated = s3_request_truncated(req);
        res->attempts = s3_request_attempts(req);
        snprintf(res->error, sizeof(res->error), "%s", s3_request_error(req));
        e = s3_request_entries(req, &res->n);
        if (res->n) {
                res->entries = calloc(res->n, sizeof(S3Entry));
                cr_assert_not_null(res->entries);
                for (size_t i = 0; i < res->n; i++) {
                        res->entries[i].key = strdup(e[i].key);
                        res->entries[i].size = e[i].size;
                }
        }
}

static void run_until(bool *done) {
        while (!*done)
                cr_assert_geq(sd_event_run(event, UINT64_MAX), 0);
}

static void run_for(uint64_t usec) {
        uint64_t end = mono_usec() + usec;
        for (uint64_t now; (now = mono_usec()) < end;)
                cr_assert_geq(sd_event_run(event, end - now), 0);
}

/* Each call waits for its answer: most tests are about results, not concurrency. */
#define WAIT(res, call) do { result_clear(&(res)); cr_assert_eq((call), 0); run_until(&(res).done); } while (0)

static S3 *client_with(S3Config c) {
        S3 *s = NULL;
        cr_assert_eq(s3_new(&s, event, &c), 0);
        return s;
}

static S3 *client(void) {
        return client_with(config());
}

static void setup(void) {
        uint64_t rnd;
        Result res = {};
        S3 *s;

        cr_assert_eq(getrandom(&rnd, sizeof(rnd), 0), (ssize_t) sizeof(rnd));
        snprintf(bucket, sizeof(bucket), "bs-test-s3-%016" PRIx64, rnd);
        cr_assert_eq(sd_event_new(&event), 0);
        s = client();
        WAIT(res, s3_create_bucket(s, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "create bucket %s: %d %s", bucket, res.r, res.error);
        /* Creating it again is fine: it is ours. */
        WAIT(res, s3_create_bucket(s, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "create again: %d %s", res.r, res.error);
        result_clear(&res);
        s3_free(s);
}

static void teardown(void) {
        event = sd_event_unref(event);
}

TestSuite(s3, .init = setup, .fini = teardown, .timeout = 240);

typedef struct BadConfig {
        char endpoint[48];
        char bucket[80];
} BadConfig;

ParameterizedTestParameters(s3_config, refused) {
        static BadConfig cases[] = {
                { "ftp://127.0.0.1:1", "abc" },
                { "127.0.0.1:1", "abc" },
                { "http://", "abc" },
                { "http://127.0.0.1:1/path", "abc" },
                { "http://user@127.0.0.1:1", "abc" },
                { "http://127.0.0.1:1?x=1", "abc" },
                { "http://127.0.0.1:1", "ab" },
                { "http://127.0.0.1:1", "Upper" },
                { "http://127.0.0.1:1", "a/b" },
                { "http://127.0.0.1:1", "a?b" },
                { "http://127.0.0.1:1", "0123456789012345678901234567890123456789012345678901234567890123" },
        };
        return cr_make_param_array(BadConfig, cases, sizeof(cases) / sizeof(cases[0]));
}

/* No store needed: what would be spliced into signed URLs is checked first. */
ParameterizedTest(BadConfig *c, s3_config, refused) {
        sd_event *e = NULL;
        S3 *s = NULL;
        S3Config cfg = { .endpoint = c->endpoint, .bucket = c->bucket, .access_key = "a", .secret_key = "b" };

        cr_assert_eq(sd_event_new(&e), 0);
        cr_assert_eq(s3_new(&s, e, &cfg), -EINVAL, "%s %s", c->endpoint, c->bucket);
        cr_assert_null(s);
        cfg.endpoint = "http://127.0.0.1:1/";
        cfg.bucket = "abc";
        cr_assert_eq(s3_new(&s, e, &cfg), 0, "a trailing slash is fine");
        s3_free(s);
        sd_event_unref(e);
}

ParameterizedTestParameters(s3, put_get) {
        static size_t sizes[] = { 0, 1, 4096, 1024 * 1024 + 3, 5 * 1024 * 1024 };
        return cr_make_param_array(size_t, sizes, sizeof(sizes) / sizeof(sizes[0]));
}

ParameterizedTest(size_t *size, s3, put_get) {
        _cleanup_(s3_freep) S3 *s = client();
        uint8_t *data = malloc(*size + 1);
        Result res = {};

        cr_assert_not_null(data);
        test_fill(data, *size, *size);
        WAIT(res, s3_put(s, "obj", data, *size, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "put %zu: %d %s", *size, res.r, res.error);
        WAIT(res, s3_head(s, "obj", on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        cr_assert_eq(res.size, *size);
        WAIT(res, s3_get(s, "obj", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "get: %d %s", res.r, res.error);
        cr_assert_eq(res.len, *size);
        cr_assert_eq(res.size, *size);
        cr_assert(*size == 0 || memcmp(res.data, data, *size) == 0);
        /* Asked for exactly its size, with a range. */
        WAIT(res, s3_get(s, "obj", 0, *size ? *size : 1, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "ranged get of everything: %d %s", res.r, res.error);
        cr_assert_eq(res.len, *size);
        cr_assert(*size == 0 || memcmp(res.data, data, *size) == 0);
        result_clear(&res);
        free(data);
}

typedef struct RangeCase {
        uint64_t off, len;
        int r;
        size_t got;
} RangeCase;

ParameterizedTestParameters(s3, ranged_get) {
        static RangeCase cases[] = {
                { 0, 100, 0, 100 },
                { 1, 1, 0, 1 },
                { 9990, 100, 0, 10 },          /* ends early: the object is shorter */
                { 9999, UINT64_MAX, 0, 1 },
                { 5000, UINT64_MAX, 0, 5000 },
                { 0, 20000, 0, 10000 },
                { 10000, 1, -ERANGE, 0 },      /* at the end */
                { 20000, UINT64_MAX, -ERANGE, 0 },
        };
        return cr_make_param_array(RangeCase, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(RangeCase *c, s3, ranged_get) {
        _cleanup_(s3_freep) S3 *s = client();
        static uint8_t data[10000];
        Result res = {};

        test_fill(data, sizeof(data), 7);
        WAIT(res, s3_put(s, "dir/ten-thousand", data, sizeof(data), on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        WAIT(res, s3_get(s, "dir/ten-thousand", c->off, c->len, on_done, &res, NULL));
        cr_assert_eq(res.r, c->r, "%" PRIu64 "+%" PRIu64 ": %d %s", c->off, c->len, res.r, res.error);
        if (c->r == 0) {
                cr_assert_eq(res.len, c->got);
                cr_assert_eq(memcmp(res.data, data + c->off, c->got), 0);
                cr_assert_eq(res.size, sizeof(data), "the object's size comes with a range");
        } else
                cr_assert_eq(res.len, 0);
        result_clear(&res);
}

Test(s3, bad_arguments) {
        _cleanup_(s3_freep) S3 *s = client();
        char long_key[S3_KEY_MAX + 2];

        memset(long_key, 'k', sizeof(long_key) - 1);
        long_key[sizeof(long_key) - 1] = 0;
        cr_assert_eq(s3_put(s, "", "x", 1, on_done, NULL, NULL), -EINVAL);
        cr_assert_eq(s3_put(s, long_key, "x", 1, on_done, NULL, NULL), -EINVAL);
        cr_assert_eq(s3_get(s, "k", 0, 0, on_done, NULL, NULL), -EINVAL);
        cr_assert_eq(s3_list(s, NULL, NULL, S3_LIST_MAX + 1, on_done, NULL, NULL), -EINVAL);
        long_key[S3_KEY_MAX] = 0;
        cr_assert_eq(s3_head(s, long_key, on_done, NULL, NULL), 0, "1024 bytes is still a key");
}

Test(s3, missing_key) {
        _cleanup_(s3_freep) S3 *s = client();
        _cleanup_(closep) int fd = memfd_create("get", MFD_CLOEXEC);
        Result res = {};

        WAIT(res, s3_get(s, "nothing", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, -ENOENT, "%d %s", res.r, res.error);
        cr_assert(strstr(res.error, "NoSuchKey"), "%s", res.error);
        cr_assert_eq(res.len, 0, "the error document is not the body");
        cr_assert_eq(res.attempts, 1);
        WAIT(res, s3_get(s, "nothing", 10, 10, on_done, &res, NULL));
        cr_assert_eq(res.r, -ENOENT);
        WAIT(res, s3_head(s, "nothing", on_done, &res, NULL));
        cr_assert_eq(res.r, -ENOENT);
        cr_assert_geq(fd, 0);
        WAIT(res, s3_get_fd(s, "nothing", fd, on_done, &res, NULL));
        cr_assert_eq(res.r, -ENOENT);
        cr_assert_eq(lseek(fd, 0, SEEK_END), 0, "nothing written to the file");
        result_clear(&res);
}

Test(s3, delete) {
        _cleanup_(s3_freep) S3 *s = client();
        Result res = {};

        WAIT(res, s3_put(s, "a/b", "hello", 5, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        WAIT(res, s3_delete(s, "a/b", on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        WAIT(res, s3_head(s, "a/b", on_done, &res, NULL));
        cr_assert_eq(res.r, -ENOENT);
        WAIT(res, s3_delete(s, "a/b", on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "deleting a missing key: %d %s", res.r, res.error);
        WAIT(res, s3_delete(s, "never-there", on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        result_clear(&res);
}

/* Puts keys[0..n) concurrently, each holding its own index. */
static void put_many(S3 *s, char (*keys)[64], size_t n) {
        Result *res = calloc(n, sizeof(Result));
        size_t done = 0;

        cr_assert_not_null(res);
        for (size_t i = 0; i < n; i++)
                cr_assert_eq(s3_put(s, keys[i], keys[i], strlen(keys[i]), on_done, &res[i], NULL), 0);
        while (done < n) {
                cr_assert_geq(sd_event_run(event, UINT64_MAX), 0);
                for (done = 0; done < n && res[done].done; done++)
                        ;
        }
        for (size_t i = 0; i < n; i++) {
                cr_assert_eq(res[i].r, 0, "%s: %d %s", keys[i], res[i].r, res[i].error);
                result_clear(&res[i]);
        }
        free(res);
}

Test(s3, list_pages) {
        _cleanup_(s3_freep) S3 *s = client();
        static char keys[310][64];
        Result res = {};
        char after[S3_KEY_MAX + 1] = "";
        size_t seen = 0, pages = 0;

        for (size_t i = 0; i < 300; i++)
                snprintf(keys[i], sizeof(keys[i]), "p/%03zu", i);
        for (size_t i = 300; i < 310; i++)
                snprintf(keys[i], sizeof(keys[i]), "q/%03zu", i);
        put_many(s, keys, 310);

        /* 300 keys under p/, 100 at a time, each page starting after the last. */
        do {
                WAIT(res, s3_list(s, "p/", after[0] ? after : NULL, 100, on_done, &res, NULL));
                cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
                cr_assert_leq(res.n, 100);
                for (size_t i = 0; i < res.n; i++, seen++) {
                        cr_assert_str_eq(res.entries[i].key, keys[seen]);
                        cr_assert_eq(res.entries[i].size, strlen(keys[seen]));
                }
                if (res.n)
                        snprintf(after, sizeof(after), "%s", res.entries[res.n - 1].key);
                pages++;
                cr_assert_leq(pages, 4);
        } while (res.truncated);
        cr_assert_eq(seen, 300);
        cr_assert_geq(pages, 3);

        /* start_after in the middle, no prefix: the rest, q/ included. */
        WAIT(res, s3_list(s, NULL, "p/289", 0, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        cr_assert_eq(res.n, 20);
        cr_assert_not(res.truncated);
        cr_assert_str_eq(res.entries[0].key, "p/290");
        cr_assert_str_eq(res.entries[19].key, "q/309");

        WAIT(res, s3_list(s, "nothing/", NULL, 10, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        cr_assert_eq(res.n, 0);
        cr_assert_not(res.truncated);
        result_clear(&res);
}

/* Keys with what URLs, XML and SigV4 escape each their own way. */
Test(s3, odd_keys) {
        _cleanup_(s3_freep) S3 *s = client();
        static char keys[][64] = {
                "odd/a b+c", "odd/amp&lt;<x>\"'", "odd/percent%41%", "odd/star*(1)=,;:@$!",
                "odd/tilde~_-.", "odd/\xc3\xbc\xe2\x82\xac", "odd/dot/../x", "odd//double", "odd/q?x=1#f",
        };
        size_t n = ELEMENTSOF(keys);
        Result res = {};

        put_many(s, keys, n);
        for (size_t i = 0; i < n; i++) {
                WAIT(res, s3_get(s, keys[i], 0, UINT64_MAX, on_done, &res, NULL));
                cr_assert_eq(res.r, 0, "%s: %d %s", keys[i], res.r, res.error);
                cr_assert_eq(res.len, strlen(keys[i]));
                cr_assert_eq(memcmp(res.data, keys[i], res.len), 0);
        }
        WAIT(res, s3_list(s, "odd/", NULL, 0, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        cr_assert_eq(res.n, n);
        for (size_t i = 0; i < n; i++) {
                bool found = false;
                for (size_t j = 0; j < n; j++)
                        found |= strcmp(res.entries[i].key, keys[j]) == 0;
                cr_assert(found, "listed %s", res.entries[i].key);
                cr_assert_eq(res.entries[i].size, strlen(res.entries[i].key));
        }
        result_clear(&res);
}

Test(s3, wrong_secret) {
        S3Config c = config();
        c.secret_key = "not-the-secret";
        _cleanup_(s3_freep) S3 *s = client_with(c);
        Result res = {};
        uint64_t t0 = mono_usec();

        WAIT(res, s3_put(s, "k", "x", 1, on_done, &res, NULL));
        cr_assert_eq(res.r, -EACCES, "%d %s", res.r, res.error);
        cr_assert(strstr(res.error, "SignatureDoesNotMatch"), "%s", res.error);
        WAIT(res, s3_get(s, "k", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, -EACCES, "%d %s", res.r, res.error);
        cr_assert_eq(res.attempts, 1, "not retried");
        WAIT(res, s3_list(s, NULL, NULL, 0, on_done, &res, NULL));
        cr_assert_eq(res.r, -EACCES, "%d %s", res.r, res.error);
        cr_assert_lt(mono_usec() - t0, 2000000, "answered at once, no retries");
        result_clear(&res);
}

Test(s3, concurrent_200) {
        enum { N = 200, SIZE = 4096 };
        _cleanup_(s3_freep) S3 *s = client();
        static uint8_t data[N][SIZE];
        static Result res[N];
        char key[32];
        uint64_t t0, t_put, t_get;
        size_t done;

        for (size_t i = 0; i < N; i++)
                test_fill(data[i], SIZE, i);
        t0 = mono_usec();
        for (size_t i = 0; i < N; i++) {
                snprintf(key, sizeof(key), "c/%zu", i);
                cr_assert_eq(s3_put(s, key, data[i], SIZE, on_done, &res[i], NULL), 0);
        }
        do {
                cr_assert_geq(sd_event_run(event, UINT64_MAX), 0);
                for (done = 0; done < N && res[done].done; done++)
                        ;
        } while (done < N);
        t_put = mono_usec() - t0;
        for (size_t i = 0; i < N; i++) {
                cr_assert_eq(res[i].r, 0, "put %zu: %d %s", i, res[i].r, res[i].error);
                result_clear(&res[i]);
        }
        t0 = mono_usec();
        for (size_t i = 0; i < N; i++) {
                snprintf(key, sizeof(key), "c/%zu", i);
                cr_assert_eq(s3_get(s, key, 0, UINT64_MAX, on_done, &res[i], NULL), 0);
        }
        do {
                cr_assert_geq(sd_event_run(event, UINT64_MAX), 0);
                for (done = 0; done < N && res[done].done; done++)
                        ;
        } while (done < N);
        t_get = mono_usec() - t0;
        for (size_t i = 0; i < N; i++) {
                cr_assert_eq(res[i].r, 0, "get %zu: %d %s", i, res[i].r, res[i].error);
                cr_assert_eq(res[i].len, SIZE);
                cr_assert_eq(memcmp(res[i].data, data[i], SIZE), 0);
                result_clear(&res[i]);
        }
        /* Kept alive and shared: about one connection per slot, not per request. */
        cr_assert_leq(s3_connects(s), 2 * S3_MAX_CONNECTIONS_DEFAULT, "%" PRIu64 " connections", s3_connects(s));
        fprintf(stderr, "# %d concurrent 4 KiB PUTs: %.1f ms, GETs: %.1f ms (%" PRIu64 " connections opened)\n",
                N, t_put / 1000.0, t_get / 1000.0, s3_connects(s));
}

Test(s3, big_object_fd) {
        const size_t size = 64u * 1024 * 1024;
        _cleanup_(s3_freep) S3 *s = client();
        _cleanup_(closep) int in = memfd_create("in", MFD_CLOEXEC);
        _cleanup_(closep) int out = memfd_create("out", MFD_CLOEXEC);
        uint8_t *a = malloc(size), *b = malloc(size);
        Result res = {};
        uint64_t t0, t_put, t_get;

        cr_assert(in >= 0 && out >= 0 && a && b);
        test_fill(a, size, 64);
        cr_assert_eq(pwrite(in, "head", 4, 0), 4);
        cr_assert_eq(pwrite(in, a, size, 4), (ssize_t) size);
        t0 = mono_usec();
        WAIT(res, s3_put_fd(s, "big", in, 4, size, on_done, &res, NULL));
        t_put = mono_usec() - t0;
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        /* Written after what the file held at its offset. */
        cr_assert_eq(write(out, "xy", 2), 2);
        t0 = mono_usec();
        WAIT(res, s3_get_fd(s, "big", out, on_done, &res, NULL));
        t_get = mono_usec() - t0;
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        cr_assert_eq(res.size, size);
        cr_assert_eq(res.len, 0, "nothing in memory");
        cr_assert_eq(lseek(out, 0, SEEK_END), (off_t) (size + 2));
        cr_assert_eq(pread(out, b, size, 2), (ssize_t) size);
        cr_assert_eq(memcmp(a, b, size), 0);
        /* A part of it into memory, bounded by what was asked. */
        WAIT(res, s3_get(s, "big", size - 1000, 4096, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        cr_assert_eq(res.len, 1000);
        cr_assert_eq(memcmp(res.data, a + size - 1000, 1000), 0);
        fprintf(stderr, "# 64 MiB put_fd: %.0f ms (%.0f MiB/s), get_fd: %.0f ms (%.0f MiB/s)\n",
                t_put / 1000.0, 64e6 / t_put, t_get / 1000.0, 64e6 / t_get);
        WAIT(res, s3_delete(s, "big", on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        result_clear(&res);
        free(a);
        free(b);
}

/* A port nothing listens on: refused at once, every time. */
static char *closed_endpoint(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char *e;

        cr_assert_geq(fd, 0);
        cr_assert_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        close(fd);
        cr_assert_gt(asprintf(&e, "http://127.0.0.1:%u", ntohs(sa.sin_port)), 0);
        return e;
}

static void on_cancelled(S3Request *req, int r, void *userdata) {
        cr_assert_fail("callback after cancel: %d", r);
}

static void on_done_cancel_other(S3Request *req, int r, void *userdata) {
        S3Request **other = userdata;
        s3_request_cancel(req);   /* a no-op inside its own callback */
        s3_request_cancel(*other);
        *other = NULL;
}

static bool client_freed;

static void on_done_free_client(S3Request *req, int r, void *userdata) {
        S3 **s = userdata;
        cr_assert_eq(r, 0);
        *s = s3_free(*s);
        client_freed = true;
}

static void on_done_before_free(S3Request *req, int r, void *userdata) {
        cr_assert_not(client_freed, "callback after the client was freed: %d", r);
}

/* Freed from a callback (a shutdown): the others are cancelled, none calls back. */
Test(s3, free_from_callback) {
        static uint8_t data[65536];
        S3 *s = client();

        cr_assert_eq(s3_put(s, "first", "1", 1, on_done_free_client, &s, NULL), 0);
        for (size_t i = 0; i < 30; i++)
                cr_assert_eq(s3_put(s, "many", data, sizeof(data), on_done_before_free, NULL, NULL), 0);
        cr_assert_eq(s3_head(s, "nothing", on_done_before_free, NULL, NULL), 0);
        while (s)
                cr_assert_geq(sd_event_run(event, UINT64_MAX), 0);
        run_for(300000);
}

Test(s3, cancel) {
        _cleanup_(s3_freep) S3 *s = client();
        _cleanup_(s3_freep) S3 *dead = NULL;
        _cleanup_(freep) char *endpoint = NULL;
        static uint8_t data[65536];
        S3Request *reqs[40], *victim = NULL;
        S3Config c = config();
        Result res = {};

        /* Queued ones (beyond the 16 connections) and running ones. */
        for (size_t i = 0; i < ELEMENTSOF(reqs); i++) {
                char key[16];
                snprintf(key, sizeof(key), "x/%zu", i);
                cr_assert_eq(s3_put(s, key, data, sizeof(data), on_cancelled, NULL, &reqs[i]), 0);
        }
        run_for(2000);   /* a turn or so: some are on the wire */
        for (size_t i = 0; i < ELEMENTSOF(reqs); i++)
                s3_request_cancel(reqs[i]);

        /* Cancelled from another request's callback while it waits to retry. */
        endpoint = closed_endpoint();
        c.endpoint = endpoint;
        dead = client_with(c);
        cr_assert_eq(s3_get(dead, "k", 0, UINT64_MAX, on_cancelled, NULL, &victim), 0);
        cr_assert_eq(s3_head(s, "nothing", on_done_cancel_other, &victim, NULL), 0);
        run_for(1000000);
        cr_assert_null(victim);

        /* The client still works, and then is freed with requests pending. */
        WAIT(res, s3_put(s, "after", "y", 1, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        for (size_t i = 0; i < 20; i++)
                cr_assert_eq(s3_put(s, "pending", data, sizeof(data), on_cancelled, NULL, NULL), 0);
        cr_assert_eq(s3_get(dead, "k", 0, UINT64_MAX, on_cancelled, NULL, NULL), 0);
        run_for(1000);
        result_clear(&res);
}

Test(s3, closed_port_gives_up) {
        _cleanup_(freep) char *endpoint = closed_endpoint();
        S3Config c = config();
        S3Request *req;
        Result res = {};
        uint64_t t0, t;
        S3 *s;

        c.endpoint = endpoint;
        c.retry_usec = 1000000;
        s = client_with(c);
        t0 = mono_usec();
        WAIT(res, s3_put(s, "k", "x", 1, on_done, &res, NULL));
        t = mono_usec() - t0;
        cr_assert_eq(res.r, -ETIMEDOUT, "%d %s", res.r, res.error);
        cr_assert(t >= 900000 && t < 3000000, "gave up after %.2f s", t / 1e6);
        cr_assert(res.attempts >= 4 && res.attempts < 40, "%u attempts", res.attempts);
        cr_assert(strstr(res.error, "connect"), "the last failure is told: %s", res.error);

        /* Cancelled while waiting to retry. */
        cr_assert_eq(s3_get(s, "k", 0, UINT64_MAX, on_cancelled, NULL, &req), 0);
        run_for(200000);
        s3_request_cancel(req);
        run_for(100000);
        s3_free(s);

        /* No retries: the transport's error at once. */
        c.retry_usec = 0;
        s = client_with(c);
        t0 = mono_usec();
        WAIT(res, s3_head(s, "k", on_done, &res, NULL));
        cr_assert_eq(res.r, -ECONNREFUSED, "%d %s", res.r, res.error);
        cr_assert_eq(res.attempts, 1);
        cr_assert_lt(mono_usec() - t0, 500000);
        s3_free(s);
        result_clear(&res);
}

static pid_t tls_server = -1;

static void tls_teardown(void) {
        if (tls_server > 0) {
                kill(tls_server, SIGTERM);
                (void) waitpid(tls_server, NULL, 0);
        }
        teardown();
}

/* TLS to the endpoint: Python's http.server behind ssl serves files over
 * HTTPS, which is all the transport needs (RGW here speaks plain HTTP). */
Test(s3, tls_verifies_the_endpoint, .fini = tls_teardown) {
        static const char server[] =
                "import http.server, ssl, sys\n"
                "h = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)\n"
                "c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
                "c.load_cert_chain('cert.pem', 'key.pem')\n"
                "h.socket = c.wrap_socket(h.socket, server_side=True)\n"
                "h.serve_forever()\n";
        char dir[] = "/tmp/bs-test-s3-tls-XXXXXX", cmd[PATH_MAX * 2], cert[PATH_MAX], port[16];
        _cleanup_(freep) char *free_endpoint = closed_endpoint(), *endpoint = NULL;
        char *argv[] = { "python3", "-c", (char *) server, port, NULL };
        posix_spawn_file_actions_t fa;
        S3Config c = config();
        Result res = {};
        S3 *s;

        cr_assert_not_null(mkdtemp(dir));
        snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
        snprintf(cmd, sizeof(cmd),
                 "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
                 "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout key.pem -out cert.pem 2>/dev/null && "
                 "mkdir %s && printf 'over tls' > %s/obj", dir, bucket, bucket);
        cr_assert_eq(system(cmd), 0);
        snprintf(port, sizeof(port), "%s", strrchr(free_endpoint, ':') + 1);
        cr_assert_gt(asprintf(&endpoint, "https://127.0.0.1:%s", port), 0);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addchdir_np(&fa, dir);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        cr_assert_eq(posix_spawnp(&tls_server, "python3", &fa, NULL, argv, environ), 0);
        posix_spawn_file_actions_destroy(&fa);

        c.endpoint = endpoint;
        c.retry_usec = 5000000;   /* refused until the server listens */
        s = client_with(c);
        WAIT(res, s3_get(s, "obj", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, -EPERM, "an unknown certificate: %d %s", res.r, res.error);
        s3_free(s);
        c.ca_file = cert;
        s = client_with(c);
        WAIT(res, s3_get(s, "obj", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        cr_assert_eq(res.len, 8);
        cr_assert_eq(memcmp(res.data, "over tls", 8), 0);
        s3_free(s);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
        result_clear(&res);
}

static const char *engines_py(void) {
        static char path[PATH_MAX];
        const char *p = getenv("BS_TEST_ENGINES_PY");
        if (p && *p)
                return p;
        snprintf(path, sizeof(path), "%s/tests/cluster/engines.py", env_need("BS_SOURCE_DIR"));
        return path;
}

/* The engines module's own stop_rgw()/start_rgw(), after delay seconds. */
static pid_t rgw_control(const char *what, unsigned delay) {
        char script[PATH_MAX + 512];
        char *argv[] = { "/bin/sh", "-c", script, NULL };
        const char *path = engines_py();
        pid_t pid;

        env_need("BS_TEST_ENGINES");
        cr_assert_eq(access(path, R_OK), 0, "%s: %m (set BS_TEST_ENGINES_PY)", path);
        snprintf(script, sizeof(script),
                 "sleep %u && exec python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); "
                 "from engines import Engines; Engines.from_env().%s()' \"$(dirname '%s')\"",
                 delay, what, path);
        cr_assert_eq(posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ), 0);
        return pid;
}

static void child_wait(pid_t pid) {
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "engines.py failed: %d", status);
}

/* A store restart is invisible to callers: only slower. */
Test(s3, rgw_restart_is_retried) {
        _cleanup_(s3_freep) S3 *s = client();
        static uint8_t data[100000];
        Result res = {}, res2 = {};
        uint64_t t0;
        pid_t pid;

        test_fill(data, sizeof(data), 3);
        WAIT(res, s3_put(s, "before", "b", 1, on_done, &res, NULL));   /* a kept-alive connection */
        cr_assert_eq(res.r, 0);
        child_wait(rgw_control("stop_rgw", 0));
        pid = rgw_control("start_rgw", 2);
        t0 = mono_usec();
        result_clear(&res);
        cr_assert_eq(s3_put(s, "during", data, sizeof(data), on_done, &res, NULL), 0);
        cr_assert_eq(s3_get(s, "before", 0, UINT64_MAX, on_done, &res2, NULL), 0);
        run_until(&res.done);
        run_until(&res2.done);
        child_wait(pid);
        cr_assert_eq(res.r, 0, "%d %s", res.r, res.error);
        cr_assert_eq(res2.r, 0, "%d %s", res2.r, res2.error);
        cr_assert_gt(res.attempts, 1);
        cr_assert_eq(res2.len, 1);
        fprintf(stderr, "# put across an RGW restart: %.2f s, %u attempts\n", (mono_usec() - t0) / 1e6, res.attempts);
        WAIT(res, s3_get(s, "during", 0, UINT64_MAX, on_done, &res, NULL));
        cr_assert_eq(res.r, 0);
        cr_assert_eq(res.len, sizeof(data));
        cr_assert_eq(memcmp(res.data, data, sizeof(data)), 0);
        result_clear(&res);
        result_clear(&res2);
}
