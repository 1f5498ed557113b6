/* test-writer.c - unit tests for common/bs-writer.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-macro.h"
#include "bs-writer.h"
#include "test-util.h"

static char dir[] = "/tmp/bs-test-writer-XXXXXX";
static int dfd = -1;

static void setup(void) {
        dfd = test_dir_new(dir);
        cr_assert_geq(dfd, 0);
}

static void teardown(void) {
        cr_assert_eq(test_dir_remove(dir, dfd), 0);
        strcpy(dir, "/tmp/bs-test-writer-XXXXXX");
}

static BsWrite *job_new(size_t len, unsigned seed, bool keep_fd) {
        BsWrite *j = calloc(1, sizeof(*j));
        cr_assert_not_null(j);
        j->buf = malloc(len ? len : 1);
        cr_assert_not_null(j->buf);
        for (size_t i = 0; i < len; i++)
                j->buf[i] = (uint8_t) (seed * 31 + i * 7);
        j->len = len;
        j->mode = 0640;
        j->mtime_ns = 1500000000123456789LL + seed;
        j->keep_fd = keep_fd;
        return j;
}

/* The file the job made holds its bytes, mode and mtime. */
static void check_file(const BsWrite *j, size_t len, unsigned seed) {
        struct stat st;
        cr_assert_eq(j->error, 0, "error %d", j->error);
        cr_assert_eq(strncmp(j->name, ".backupsync-tmp.", 16), 0, "name \"%s\"", j->name);
        cr_assert_eq(fstatat(dfd, j->name, &st, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq((size_t) st.st_size, len);
        cr_assert_eq(st.st_mode & 07777, 0640);
        cr_assert_eq(st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, 1500000000123456789LL + seed);
        int fd = openat(dfd, j->name, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        uint8_t *got = malloc(len + 1);
        cr_assert_eq(read(fd, got, len + 1), (ssize_t) len);
        for (size_t i = 0; i < len; i++)
                cr_assert_eq(got[i], (uint8_t) (seed * 31 + i * 7), "byte %zu of file %u", i, seed);
        free(got);
        close(fd);
}

TestSuite(writer, .init = setup, .fini = teardown);

/* A descriptor kept read-only is another open of the same file, which
 * its writes are through: the same inode, the bytes in it, no write
 * access left. */
Test(writer, keep_read_only) {
        BsWrite *j = job_new(5000, 3, true);
        struct stat a, b;
        j->keep_read_only = true;
        bs_write_now(dfd, j);
        check_file(j, 5000, 3);
        cr_assert_geq(j->fd, 0);
        cr_expect_eq(fcntl(j->fd, F_GETFL) & O_ACCMODE, O_RDONLY);
        cr_assert_eq(fstat(j->fd, &a), 0);
        cr_assert_eq(fstatat(dfd, j->name, &b, AT_SYMLINK_NOFOLLOW), 0);
        cr_expect_eq(a.st_ino, b.st_ino);
        cr_expect_eq(fdatasync(j->fd), 0);
        close(j->fd);
        free(j);
}

/* Many files of every size handed over (more bytes than the queue holds:
 * submit waits), all written, in any order, with their attributes; the
 * first few keep their fd when asked. */
Test(writer, many_files) {
        static const size_t sizes[] = { 0, 1, 4095, 4096, 4097, 65536, 300000 };
        enum { N = 200 };
        BsWriter *w;
        BsWrite *jobs[N];
        cr_assert_eq(bs_writer_new(dfd, 8u * 1024 * 1024, &w), 0);
        for (unsigned i = 0; i < N; i++) {
                jobs[i] = job_new(sizes[i % 7], i, i < 16);
                bs_writer_submit(w, jobs[i]);
        }
        bs_writer_wait(w);
        for (unsigned i = 0; i < N; i++) {
                check_file(jobs[i], sizes[i % 7], i);
                cr_assert_null(jobs[i]->buf, "the buffer is freed once written");
                if (i < 16) {
                        cr_assert_geq(jobs[i]->fd, 0);
                        cr_assert_eq(fdatasync(jobs[i]->fd), 0);
                        close(jobs[i]->fd);
                } else
                        cr_assert_eq(jobs[i]->fd, -1);
                free(jobs[i]);
        }
        w = bs_writer_free(w);
        cr_assert_null(w);
}

/* A file that cannot be made (no such directory) fails alone: its error,
 * no name left behind; writing in the caller's thread gives the same. */
Test(writer, errors) {
        BsWriter *w;
        int bad = open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(bad, 0);
        cr_assert_eq(bs_writer_new(bad, 8u * 1024 * 1024, &w), 0);
        BsWrite *j = job_new(10, 1, true);
        bs_writer_submit(w, j);
        bs_writer_wait(w);
        cr_assert_lt(j->error, 0);
        cr_assert_eq(j->name[0], 0);
        cr_assert_eq(j->fd, -1);
        free(j);
        bs_writer_free(w);
        close(bad);

        j = job_new(5000, 2, false);
        bs_write_now(dfd, j);
        check_file(j, 5000, 2);
        cr_assert_eq(j->fd, -1);
        free(j);
}

/* Freed with files still queued: they are written first. */
Test(writer, free_waits) {
        BsWriter *w;
        BsWrite *jobs[50];
        cr_assert_eq(bs_writer_new(dfd, 8u * 1024 * 1024, &w), 0);
        for (unsigned i = 0; i < 50; i++) {
                jobs[i] = job_new(20000, i, false);
                bs_writer_submit(w, jobs[i]);
        }
        bs_writer_free(w);
        for (unsigned i = 0; i < 50; i++) {
                check_file(jobs[i], 20000, i);
                free(jobs[i]);
        }
}

/* A sync job among writes: its descriptor synced and closed, done on its
 * own (waited for alone, before the writes after it); a descriptor that
 * cannot be synced (a pipe) is its error, not another job's. */
Test(writer, sync_jobs) {
        BsWriter *w;
        BsWrite sync = { .kind = BS_WRITE_SYNC }, bad = { .kind = BS_WRITE_SYNC };
        BsWrite *before = job_new(3000, 1, false), *after = job_new(3000, 2, false);
        int fd = openat(dfd, "big", O_RDWR | O_CREAT | O_CLOEXEC, 0600), p[2];
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, "data", 4), 4);
        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        sync.sync_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        bad.sync_fd = p[0];
        cr_assert_geq(sync.sync_fd, 0);
        cr_assert_eq(bs_writer_new(dfd, 8u * 1024 * 1024, &w), 0);
        bs_writer_submit(w, before);
        bs_writer_submit(w, &sync);
        bs_writer_submit(w, &bad);
        bs_writer_submit(w, after);
        bs_writer_wait_job(w, &sync);
        cr_assert(bs_writer_done(w, &sync));
        cr_assert(bs_writer_done(w, before), "jobs are done in order");
        cr_assert_eq(sync.error, 0);
        cr_assert_eq(sync.sync_fd, -1);
        bs_writer_wait(w);
        cr_assert(bs_writer_done(w, &bad) && bs_writer_done(w, after));
        cr_assert_eq(bad.error, -EINVAL, "fdatasync() of a pipe: %d", bad.error);
        cr_assert_eq(bad.sync_fd, -1);
        cr_assert_eq(fcntl(p[0], F_GETFD), -1, "the writer closed the synced descriptor");
        check_file(before, 3000, 1);
        check_file(after, 3000, 2);
        bs_writer_free(w);
        close(p[1]);
        close(fd);
        free(before);
        free(after);
}

/* Hash jobs, one file in steps among writes: they run in order, so the
 * steps add up to the hash of the whole; the descriptor stays open (the
 * caller's); a step past the end of the file is that job's -ENODATA. */
Test(writer, hash_jobs) {
        BsWriter *w;
        const size_t n = 1000003;
        uint8_t *p = malloc(n), want[BS_SHA_LEN], got[BS_SHA_LEN];
        BsWrite steps[3], *before = job_new(3000, 1, false), past = { .kind = BS_WRITE_HASH };
        BsSha *s = NULL, *s2 = NULL;
        cr_assert_not_null(p);
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (i * 13 + (i >> 9));
        int fd = openat(dfd, "big", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, p, n), (ssize_t) n);
        cr_assert_eq(bs_sha_buf(p, n, want), 0);
        cr_assert_eq(bs_sha_new(&s), 0);
        cr_assert_eq(bs_sha_new(&s2), 0);
        cr_assert_eq(bs_writer_new(dfd, 8u * 1024 * 1024, &w), 0);
        bs_writer_submit(w, before);
        uint64_t off = 0, len[3] = { 1, 600000, n - 600001 };
        for (int i = 0; i < 3; i++) {
                steps[i] = (BsWrite) { .kind = BS_WRITE_HASH, .read_fd = fd, .hash = s, .hash_off = off,
                                       .hash_len = len[i] };
                bs_writer_submit(w, &steps[i]);
                off += len[i];
        }
        past = (BsWrite) { .kind = BS_WRITE_HASH, .read_fd = fd, .hash = s2, .hash_off = n - 1, .hash_len = 2 };
        bs_writer_submit(w, &past);
        bs_writer_wait_job(w, &steps[2]);
        cr_assert(bs_writer_done(w, before) && bs_writer_done(w, &steps[0]), "jobs are done in order");
        for (int i = 0; i < 3; i++)
                cr_assert_eq(steps[i].error, 0, "step %d: %d", i, steps[i].error);
        cr_assert_eq(bs_sha_final(s, got), 0);
        cr_assert_eq(memcmp(want, got, BS_SHA_LEN), 0, "the steps hashed other bytes");
        bs_writer_wait(w);
        cr_assert_eq(past.error, -ENODATA, "a step past the end: %d", past.error);
        cr_assert_eq(fcntl(fd, F_GETFD), FD_CLOEXEC, "the writer closed the hashed descriptor");
        check_file(before, 3000, 1);
        bs_writer_free(w);
        bs_sha_free(s);
        bs_sha_free(s2);
        close(fd);
        free(before);
        free(p);
}

/* A file hashed ahead as it grows, in a writer's thread and without one
 * (NULL: here): the same digest as the whole, whatever steps were taken
 * on the way; a file shorter than said is the error of its last step. */
Test(writer, hash_ahead) {
        const size_t n = 700001;
        uint8_t *p = malloc(n), want[BS_SHA_LEN], got[BS_SHA_LEN];
        cr_assert_not_null(p);
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t) (i * 7 + (i >> 11));
        int fd = openat(dfd, "grow", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_sha_buf(p, n, want), 0);
        for (int threaded = 0; threaded < 2; threaded++) {
                BsWriter *w = NULL;
                BsHashAhead h = { 0 };
                BsSha *s = NULL;
                cr_assert_eq(ftruncate(fd, 0), 0);
                cr_assert_eq(bs_sha_new(&s), 0);
                if (threaded)
                        cr_assert_eq(bs_writer_new(dfd, 0, &w), 0);
                for (size_t off = 0; off < n;) {
                        size_t k = MIN((size_t) 65536 + off % 1000, n - off);
                        cr_assert_eq(pwrite(fd, p + off, k, (off_t) off), (ssize_t) k);
                        off += k;
                        bs_hash_ahead(w, &h, fd, s, off, 200000, false);
                        cr_assert_leq(h.hashed, off);
                }
                bs_hash_ahead(w, &h, fd, s, n, 200000, true);
                cr_assert(!h.busy, "the last step was not waited for");
                cr_assert_eq(h.hashed, n);
                cr_assert_eq(h.error, 0, "error %d", h.error);
                cr_assert_eq(bs_sha_final(s, got), 0);
                cr_assert_eq(memcmp(want, got, BS_SHA_LEN), 0, "threaded %d: another digest", threaded);

                /* Said to be longer than it is. */
                cr_assert_eq(bs_sha_reset(s), 0);
                h = (BsHashAhead) { 0 };
                bs_hash_ahead(w, &h, fd, s, n + 1, 200000, true);
                cr_assert_eq(h.error, -ENODATA, "threaded %d: %d", threaded, h.error);
                bs_hash_ahead_wait(w, &h);
                bs_writer_free(w);
                bs_sha_free(s);
        }
        close(fd);
        free(p);
}

/* A syncfs() job after writes (as a pull closes a batch): done once the
 * writes before it are, its descriptor closed; a bad descriptor is its
 * own error. */
Test(writer, syncfs_jobs) {
        BsWriter *w;
        BsWrite sync = { .kind = BS_WRITE_SYNCFS }, bad = { .kind = BS_WRITE_SYNCFS };
        BsWrite *jobs[20];
        cr_assert_eq(bs_writer_new(dfd, 8u * 1024 * 1024, &w), 0);
        for (unsigned i = 0; i < 20; i++) {
                jobs[i] = job_new(5000, i, false);
                bs_writer_submit(w, jobs[i]);
        }
        sync.sync_fd = fcntl(dfd, F_DUPFD_CLOEXEC, 3);
        cr_assert_geq(sync.sync_fd, 0);
        int fd = sync.sync_fd;
        bs_writer_submit(w, &sync);
        bad.sync_fd = fcntl(dfd, F_DUPFD_CLOEXEC, 3);
        cr_assert_geq(bad.sync_fd, 0);
        close(bad.sync_fd); /* a number no longer open */
        bs_writer_submit(w, &bad);
        bs_writer_wait_job(w, &sync);
        for (unsigned i = 0; i < 20; i++)
                cr_assert(bs_writer_done(w, jobs[i]), "file %u is written before the sync after it", i);
        cr_assert_eq(sync.error, 0);
        cr_assert_eq(sync.sync_fd, -1);
        bs_writer_wait(w);
        cr_assert_eq(bad.error, -EBADF, "syncfs() of a closed descriptor: %d", bad.error);
        cr_assert_eq(fcntl(fd, F_GETFD), -1, "the writer closed the synced descriptor");
        for (unsigned i = 0; i < 20; i++) {
                check_file(jobs[i], 5000, i);
                free(jobs[i]);
        }
        bs_writer_free(w);
}

/* A queue smaller than one file: each submit waits for the one before,
 * and a file bigger than the bound still goes (alone). */
Test(writer, small_queue) {
        BsWriter *w;
        BsWrite *jobs[40];
        cr_assert_eq(bs_writer_new(dfd, 1, &w), 0);
        for (unsigned i = 0; i < 40; i++) {
                jobs[i] = job_new(i % 2 ? 70000 : 10, i, false);
                bs_writer_submit(w, jobs[i]);
        }
        bs_writer_wait(w);
        for (unsigned i = 0; i < 40; i++) {
                check_file(jobs[i], i % 2 ? 70000 : 10, i);
                free(jobs[i]);
        }
        bs_writer_free(w);
}
