/* test-writer.c - unit tests for common/bs-writer.[ch] */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-hash.h"
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

/* Asked for, the file's stat as written comes with the job, mode and
 * mtime already set, whether its fd is kept (reopened) or closed: what
 * a lookup of its name would give. */
Test(writer, stat_as_written) {
        for (unsigned keep = 0; keep < 2; keep++) {
                BsWrite *j = job_new(7000, 5 + keep, keep);
                struct stat st;
                j->keep_read_only = keep;
                j->want_stat = true;
                j->mode = 0604; /* not what the umask leaves: set by fchmod() */
                bs_write_now(dfd, j);
                cr_assert_eq(j->error, 0);
                cr_assert_eq(fstatat(dfd, j->name, &st, AT_SYMLINK_NOFOLLOW), 0);
                cr_expect_eq(j->st.st_ino, st.st_ino);
                cr_expect_eq(j->st.st_size, 7000);
                cr_expect_eq(j->st.st_mode, st.st_mode);
                cr_expect_eq(j->st.st_mode & 07777, 0604);
                cr_expect_eq(j->st.st_mtim.tv_sec, st.st_mtim.tv_sec);
                cr_expect_eq(j->st.st_mtim.tv_nsec, st.st_mtim.tv_nsec);
                cr_expect_eq(j->st.st_mtim.tv_sec * 1000000000LL + j->st.st_mtim.tv_nsec, 1500000000123456789LL + 5 + keep);
                if (j->fd >= 0)
                        close(j->fd);
                free(j);
        }
}

/* A content checked before it is written: the right SHA-256 writes it,
 * a wrong one writes nothing and says -EBADMSG; in the thread as here. */
Test(writer, checks_content) {
        BsWriter *w;
        cr_assert_eq(bs_writer_new(dfd, 1u << 20, &w), 0);
        BsWrite *j[4];
        for (unsigned i = 0; i < 4; i++) {
                j[i] = job_new(5000 + i, 40 + i, false);
                j[i]->check_sha = true;
                cr_assert_eq(bs_sha_buf(j[i]->buf, j[i]->len, j[i]->sha), 0);
                if (i % 2)
                        j[i]->sha[7] ^= 1;
                if (i < 2)
                        bs_writer_submit(w, j[i]);
                else
                        bs_write_now(dfd, j[i]);
        }
        bs_writer_wait(w);
        bs_writer_free(w);
        for (unsigned i = 0; i < 4; i++) {
                if (i % 2) {
                        cr_assert_eq(j[i]->error, -EBADMSG, "job %u: %d", i, j[i]->error);
                        cr_assert_str_empty(j[i]->name);
                        cr_assert_eq(j[i]->fd, -1);
                } else
                        check_file(j[i], 5000 + i, 40 + i);
                cr_assert_null(j[i]->buf);
                free(j[i]);
        }
        size_t n = 0;
        DIR *d = fdopendir(dup(dfd));
        cr_assert_not_null(d);
        for (struct dirent *e; (e = readdir(d));)
                n += e->d_name[0] != '.' || strncmp(e->d_name, ".backupsync-tmp.", 16) == 0;
        closedir(d);
        cr_assert_eq(n, 2, "files written: %zu, not the two whose content was right", n);
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
