/* test-readahead.c - unit tests for common/bs-readahead.[ch], on real cold files */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-readahead.h"
#include "test-util.h"

static char dir[PATH_MAX];
static int dirfd_ = -1;

static void setup(void) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/bs-test-readahead-XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
        dirfd_ = test_dir_new(dir);
        cr_assert_geq(dirfd_, 0);
}

static void teardown(void) {
        cr_assert_eq(test_dir_remove(dir, dirfd_), 0);
}

TestSuite(readahead, .init = setup, .fini = teardown);

/* A file of n bytes on disk and out of the page cache, open for reading. */
static int cold_file(const char *name, size_t n) {
        uint8_t *data = malloc(n);
        cr_assert_not_null(data);
        test_fill(data, n, n);
        int fd = openat(dirfd_, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_write_all(fd, data, n), 0);
        free(data);
        cr_assert_eq(fsync(fd), 0);
        cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        return fd;
}

/* Pages of the first n bytes of fd in the page cache. */
static size_t resident(int fd, size_t n) {
        size_t pages = (n + 4095) / 4096, k = 0;
        unsigned char *vec = calloc(pages, 1);
        void *m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
        cr_assert_neq(m, MAP_FAILED);
        cr_assert_eq(mincore(m, n, vec), 0);
        for (size_t i = 0; i < pages; i++)
                k += vec[i] & 1;
        munmap(m, n);
        free(vec);
        return k;
}

/* Wait up to 5 s for every page of the first n bytes of each fd. */
static bool all_resident(const int *fds, const size_t *sizes, size_t n) {
        for (int tries = 0; tries < 500; tries++) {
                size_t missing = 0;
                for (size_t i = 0; i < n; i++)
                        missing += (sizes[i] + 4095) / 4096 - resident(fds[i], sizes[i]);
                if (missing == 0)
                        return true;
                usleep(10000);
        }
        return false;
}

#define N_FILES 8
static const size_t sizes[N_FILES] = { 1, 1000, 4096, 5000, 8192, 65536, 100000, BS_READAHEAD_MAX };

Test(readahead, batch_waits_for_submit) {
        /* Queued reads start together at the submit, not one by one: that
         * is what puts them in one hand-over to the disk. */
        BsReadahead *ra = NULL;
        int r = bs_readahead_new(&ra);
        cr_assert_eq(r, 0, "io_uring: %s", strerror(-r));
        int fds[N_FILES];
        for (size_t i = 0; i < N_FILES; i++) {
                char name[32];
                snprintf(name, sizeof(name), "f%zu", i);
                fds[i] = cold_file(name, sizes[i]);
                cr_assert_eq(resident(fds[i], sizes[i]), 0, "%s is not cold", name);
        }
        for (size_t i = 0; i < N_FILES; i++)
                bs_readahead(ra, fds[i], sizes[i]);
        usleep(200000);
        for (size_t i = 0; i < N_FILES; i++)
                cr_assert_eq(resident(fds[i], sizes[i]), 0, "file %zu read before the submit", i);
        bs_readahead_submit(ra);
        cr_assert(all_resident(fds, sizes, N_FILES), "not every queued file was read");
        for (size_t i = 0; i < N_FILES; i++)
                close(fds[i]);
        bs_readahead_free(ra);
}

Test(readahead, closed_after_submit) {
        /* The fds may go once submitted, even with the ring freed at once. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        int fds[N_FILES];
        for (size_t i = 0; i < N_FILES; i++) {
                char name[32];
                snprintf(name, sizeof(name), "c%zu", i);
                fds[i] = cold_file(name, sizes[i]);
                bs_readahead(ra, fds[i], sizes[i]);
        }
        bs_readahead_submit(ra);
        for (size_t i = 0; i < N_FILES; i++)
                close(fds[i]);
        bs_readahead_free(ra);
        for (size_t i = 0; i < N_FILES; i++) {
                char name[32];
                snprintf(name, sizeof(name), "c%zu", i);
                fds[i] = openat(dirfd_, name, O_RDONLY | O_CLOEXEC);
                cr_assert_geq(fds[i], 0);
        }
        cr_assert(all_resident(fds, sizes, N_FILES));
        for (size_t i = 0; i < N_FILES; i++)
                close(fds[i]);
}

/* When reading cannot wait for a submit: no ring, a file too big for one. */
ParameterizedTestParameters(readahead, at_once) {
        static size_t cases[] = { 0, 1, 2 };
        return cr_make_param_array(size_t, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(size_t *c, readahead, at_once) {
        BsReadahead *ra = NULL;
        size_t n = *c == 2 ? 4 * BS_READAHEAD_MAX : 8192;
        if (*c > 0)
                cr_assert_eq(bs_readahead_new(&ra), 0);
        if (*c == 1) {
                /* More than the ring holds: the rest are read at once. */
                int fds[600];
                size_t lens[600];
                for (size_t i = 0; i < 600; i++) {
                        char name[32];
                        snprintf(name, sizeof(name), "m%zu", i);
                        fds[i] = cold_file(name, n);
                        lens[i] = n;
                        bs_readahead(ra, fds[i], n);
                }
                bs_readahead_submit(ra);
                cr_assert(all_resident(fds, lens, 600));
                for (size_t i = 0; i < 600; i++)
                        close(fds[i]);
        } else {
                int fd = cold_file("one", n);
                bs_readahead(ra, fd, n);
                cr_assert(all_resident(&fd, &n, 1), "a read that could not wait did not start");
                close(fd);
        }
        bs_readahead_free(ra);
}

/* Whether this kernel reads uncached: a read of b came back EOPNOTSUPP,
 * and then the next file is refused at once, as documented. */
static bool uncached_refused(BsReadahead *ra, int r, int fd) {
        if (r != -EOPNOTSUPP && r != -EINVAL)
                return false;
        BsReadBuf *b = NULL;
        cr_assert_eq(bs_readahead_file(ra, fd, BS_READAHEAD_MAX, &b), -EOPNOTSUPP,
                     "after one refusal the next file is read by the caller");
        cr_log_warn("this kernel has no RWF_DONTCACHE: the callers read as before");
        return true;
}

Test(readahead, file_read_whole_uncached) {
        /* Cold files come back whole, with the stat from before the read,
         * and leave nothing in the page cache. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        int fds[N_FILES];
        BsReadBuf *b[N_FILES];
        for (size_t i = 0; i < N_FILES; i++) {
                char name[32];
                snprintf(name, sizeof(name), "w%zu", i);
                fds[i] = cold_file(name, sizes[i]);
                cr_assert_eq(bs_readahead_file(ra, fds[i], BS_READAHEAD_MAX, &b[i]), 0, "file %zu", i);
                cr_assert(b[i]->pending);
                cr_assert_eq((size_t) b[i]->st.st_size, sizes[i]);
        }
        bs_readahead_submit(ra);
        uint8_t *want = malloc(BS_READAHEAD_MAX);
        cr_assert_not_null(want);
        for (size_t i = N_FILES; i-- > 0;) {
                int r = bs_readahead_wait(ra, b[i]);
                if (uncached_refused(ra, r, fds[i]))
                        break;
                cr_assert_eq(r, (int) sizes[i], "file %zu: %d", i, r);
                test_fill(want, sizes[i], sizes[i]);
                cr_assert_eq(memcmp(b[i]->data, want, sizes[i]), 0, "file %zu read wrong", i);
                cr_assert_eq(resident(fds[i], sizes[i]), 0, "file %zu left in the page cache", i);
        }
        for (size_t i = 0; i < N_FILES; i++) {
                b[i] = bs_readbuf_free(ra, b[i]);
                close(fds[i]);
        }
        free(want);
        bs_readahead_free(ra);
}

Test(readahead, file_cached_stays) {
        /* A file the page cache held before is read and left there. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        size_t n = 20000;
        int fd = cold_file("hot", n);
        uint8_t *buf = malloc(n);
        cr_assert_not_null(buf);
        cr_assert_eq(pread(fd, buf, n, 0), (ssize_t) n);
        cr_assert_eq(resident(fd, n), (n + 4095) / 4096);
        BsReadBuf *b = NULL;
        cr_assert_eq(bs_readahead_file(ra, fd, BS_READAHEAD_MAX, &b), 0);
        int r = bs_readahead_wait(ra, b);
        if (!uncached_refused(ra, r, fd)) {
                cr_assert_eq(r, (int) n);
                cr_assert_eq(memcmp(b->data, buf, n), 0);
                cr_assert_eq(resident(fd, n), (n + 4095) / 4096, "a cached file was dropped");
        }
        bs_readbuf_free(ra, b);
        free(buf);
        close(fd);
        bs_readahead_free(ra);
}

/* What the caller must read itself: nothing is queued. */
ParameterizedTestParameters(readahead, file_refused) {
        static int cases[] = { 0, 1, 2, 3, 4 };
        return cr_make_param_array(int, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(int *c, readahead, file_refused) {
        BsReadahead *ra = NULL;
        if (*c != 0)
                cr_assert_eq(bs_readahead_new(&ra), 0);
        int fd, p[2] = { -1, -1 }, want;
        switch (*c) {
        case 0: /* no ring */
                fd = cold_file("f", 100);
                want = -EOPNOTSUPP;
                break;
        case 1: /* bigger than the caller's limit */
                fd = cold_file("f", 5000);
                want = -EFBIG;
                break;
        case 2: /* bigger than a read ahead ever is */
                fd = cold_file("f", BS_READAHEAD_MAX + 1);
                want = -EFBIG;
                break;
        case 3: /* a directory */
                fd = dup(dirfd_);
                want = -EINVAL;
                break;
        default: /* a pipe: never read ahead, whatever it would say */
                cr_assert_eq(pipe(p), 0);
                fd = p[0];
                want = -EINVAL;
                break;
        }
        BsReadBuf *b = NULL;
        cr_assert_eq(bs_readahead_file(ra, fd, *c == 1 ? 4999 : BS_READAHEAD_MAX, &b), want);
        cr_assert_null(b);
        close(fd);
        if (p[1] >= 0)
                close(p[1]);
        bs_readahead_free(ra);
}

Test(readahead, file_ring_full) {
        /* Past what the ring takes before a submit: refused, not lost; the
         * ones taken all arrive. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        enum { N = 300 };
        int fds[N];
        BsReadBuf *b[N] = {};
        size_t taken = 0;
        for (size_t i = 0; i < N; i++) {
                char name[32];
                snprintf(name, sizeof(name), "r%zu", i);
                fds[i] = cold_file(name, 3000 + i);
                int r = bs_readahead_file(ra, fds[i], BS_READAHEAD_MAX, &b[i]);
                cr_assert(r == 0 || r == -ENOSPC, "file %zu: %d", i, r);
                cr_assert(r == 0 || taken > 0, "the first file was refused");
                taken += r == 0;
                cr_assert(r == 0 || b[i] == NULL);
        }
        cr_assert_lt(taken, (size_t) N, "the ring never filled");
        uint8_t want[4096];
        for (size_t i = 0; i < taken; i++) {
                int r = bs_readahead_wait(ra, b[i]);
                if (uncached_refused(ra, r, fds[i]))
                        break;
                cr_assert_eq(r, (int) (3000 + i));
                test_fill(want, 3000 + i, 3000 + i);
                cr_assert_eq(memcmp(b[i]->data, want, 3000 + i), 0, "file %zu", i);
        }
        for (size_t i = 0; i < N; i++) {
                b[i] = bs_readbuf_free(ra, b[i]);
                close(fds[i]);
        }
        bs_readahead_free(ra);
}

Test(readahead, file_freed_in_flight) {
        /* Buffers freed while their reads are under way: the free waits,
         * so memory handed out afterwards is never written into. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        enum { N = 64, SIZE = 65536 };
        int fds[N];
        BsReadBuf *b[N];
        for (size_t i = 0; i < N; i++) {
                char name[32];
                snprintf(name, sizeof(name), "u%zu", i);
                fds[i] = cold_file(name, SIZE);
        }
        for (size_t i = 0; i < N; i++)
                cr_assert_eq(bs_readahead_file(ra, fds[i], BS_READAHEAD_MAX, &b[i]), 0);
        bs_readahead_submit(ra);
        for (size_t i = 0; i < N; i++) {
                cr_assert_null(bs_readbuf_free(ra, b[i]));
                close(fds[i]);
        }
        uint8_t *reuse[N];
        for (size_t i = 0; i < N; i++) {
                reuse[i] = malloc(sizeof(BsReadBuf) + SIZE);
                cr_assert_not_null(reuse[i]);
                memset(reuse[i], 0xa5, sizeof(BsReadBuf) + SIZE);
        }
        usleep(100000);
        for (size_t i = 0; i < N; i++) {
                for (size_t k = 0; k < sizeof(BsReadBuf) + SIZE; k++)
                        cr_assert_eq(reuse[i][k], 0xa5, "memory %zu written after its free", i);
                free(reuse[i]);
        }
        bs_readahead_free(ra);
}

Test(readahead, file_uncached_refused) {
        /* tmpfs has no uncached reads: the read is refused, nothing is in
         * the buffer, and the next file is refused at once, even on a
         * file system that would have them. */
        BsReadahead *ra = NULL;
        cr_assert_eq(bs_readahead_new(&ra), 0);
        char shm[] = "/dev/shm/bs-test-readahead-XXXXXX";
        int sfd = mkstemp(shm);
        cr_assert_geq(sfd, 0);
        cr_assert_eq(write(sfd, "in memory\n", 10), 10);
        BsReadBuf *b = NULL;
        cr_assert_eq(bs_readahead_file(ra, sfd, BS_READAHEAD_MAX, &b), 0);
        int r = bs_readahead_wait(ra, b);
        cr_assert(r == -EOPNOTSUPP || r == -EINVAL, "an uncached read of tmpfs: %d", r);
        b = bs_readbuf_free(ra, b);
        int fd = cold_file("disk", 4096);
        cr_assert_eq(bs_readahead_file(ra, fd, BS_READAHEAD_MAX, &b), -EOPNOTSUPP);
        cr_assert_null(b);
        close(fd);
        close(sfd);
        unlink(shm);
        bs_readahead_free(ra);
}
