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
