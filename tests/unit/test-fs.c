/* test-fs.c - unit tests for common/bs-fs.[ch], on real temporary directories */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-path.h"
#include "bs-readahead.h"

static char base_dir[PATH_MAX - 64]; /* the test's scratch directory */
static char root[PATH_MAX];     /* base_dir/root, the "tree" */
static char outside[PATH_MAX];  /* base_dir/outside, must never be touched */
static int rootfd = -1;

static void rm_rf(const char *path) {
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", path);
        if (system(cmd) != 0)
                fprintf(stderr, "cleanup of %s failed\n", path);
}

static void write_file(int dfd, const char *name, const char *text) {
        int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0, "create %s: %s", name, strerror(errno));
        cr_assert_eq(bs_write_all(fd, text, strlen(text)), 0);
        close(fd);
}

static bool exists_at(int dfd, const char *name) {
        struct stat st;
        return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static void setup(void) {
        const char *tmp = getenv("TMPDIR");
        snprintf(base_dir, sizeof(base_dir), "%s/bs-test-fs-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        cr_assert_not_null(mkdtemp(base_dir));
        snprintf(root, sizeof(root), "%s/root", base_dir);
        snprintf(outside, sizeof(outside), "%s/outside", base_dir);
        cr_assert_eq(mkdir(root, 0755), 0);
        cr_assert_eq(mkdir(outside, 0755), 0);
        int ofd = open(outside, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(ofd, 0);
        write_file(ofd, "secret", "outside data\n");
        close(ofd);

        rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(rootfd, 0);
        cr_assert_eq(mkdirat(rootfd, "dir", 0755), 0);
        cr_assert_eq(mkdirat(rootfd, "dir/sub", 0755), 0);
        write_file(rootfd, "file", "top\n");
        write_file(rootfd, "dir/inner", "inner\n");
        write_file(rootfd, "dir/sub/deep", "deep\n");
        /* A link to a directory outside the tree and a link to a file. */
        cr_assert_eq(symlinkat(outside, rootfd, "escape"), 0);
        cr_assert_eq(symlinkat("file", rootfd, "filelink"), 0);
        cr_assert_eq(symlinkat("dir", rootfd, "dirlink"), 0);
}

static void teardown(void) {
        if (rootfd >= 0)
                close(rootfd);
        rootfd = -1;
        rm_rf(base_dir);
}

TestSuite(fs, .init = setup, .fini = teardown);

Test(fs, open_beneath_plain) {
        int fd = bs_open_beneath(rootfd, "dir/inner", O_RDONLY, 0);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        char buf[16] = { 0 };
        cr_assert_eq(read(fd, buf, sizeof(buf) - 1), 6);
        cr_assert_str_eq(buf, "inner\n");
        cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "fd is close-on-exec");
        close(fd);

        fd = bs_open_beneath(rootfd, "dir/sub", O_RDONLY | O_DIRECTORY, 0);
        cr_assert_geq(fd, 0);
        close(fd);

        fd = bs_open_beneath(rootfd, "missing", O_RDONLY, 0);
        cr_assert_eq(fd, -ENOENT);
}

/* Reading leaves the access time: a relatime mount would move it, as the
 * file's is older than its mtime. */
Test(fs, open_read_leaves_atime) {
        struct timespec t[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1600000000 } };
        cr_assert_eq(utimensat(rootfd, "dir/inner", t, 0), 0, "%s", strerror(errno));
        int fd = bs_open_read_beneath(rootfd, "dir/inner");
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        cr_assert(fcntl(fd, F_GETFL) & O_NOATIME, "opened with O_NOATIME");
        char buf[16];
        cr_assert_eq(read(fd, buf, sizeof(buf)), 6);
        close(fd);
        struct stat st;
        cr_assert_eq(fstatat(rootfd, "dir/inner", &st, 0), 0);
        cr_assert_eq(st.st_atim.tv_sec, 1000000000, "atime moved to %lld", (long long) st.st_atim.tv_sec);
        cr_assert_eq(bs_open_read_beneath(rootfd, "missing"), -ENOENT);
        cr_assert_eq(bs_open_read_beneath(rootfd, "../outside"), -EXDEV);
}

/* A file of another owner, without CAP_FOWNER: O_NOATIME is refused, the
 * file is read anyway. As root the check runs in a child that is nobody. */
Test(fs, open_read_other_owner) {
        bool as_root = geteuid() == 0;
        pid_t pid = as_root ? fork() : 0;
        cr_assert_geq(pid, 0);
        if (pid == 0) {
                if (as_root && (setgid(65534) < 0 || setuid(65534) < 0))
                        _exit(2);
                int etc = open("/etc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                int fd = etc < 0 ? -1 : bs_open_read_beneath(etc, "passwd");
                char c;
                bool ok = fd >= 0 && !(fcntl(fd, F_GETFL) & O_NOATIME) && read(fd, &c, 1) == 1;
                if (as_root)
                        _exit(ok ? 0 : 1);
                if (fd >= 0)
                        close(fd);
                if (etc >= 0)
                        close(etc);
                cr_assert(ok, "/etc/passwd read without O_NOATIME: fd %d", fd);
                return;
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %d", status);
}

Test(fs, open_beneath_create_uses_mode) {
        int fd = bs_open_beneath(rootfd, "dir/new", O_WRONLY | O_CREAT | O_EXCL, 0600);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0600);
        close(fd);
        cr_assert(exists_at(rootfd, "dir/new"));
}

Test(fs, open_beneath_refuses_dotdot) {
        cr_assert_eq(bs_open_beneath(rootfd, "..", O_RDONLY | O_DIRECTORY, 0), -EXDEV);
        cr_assert_eq(bs_open_beneath(rootfd, "../outside/secret", O_RDONLY, 0), -EXDEV);
        cr_assert_eq(bs_open_beneath(rootfd, "dir/../../outside/secret", O_RDONLY, 0), -EXDEV);
        /* With a fresh file created this way, nothing appears outside. */
        int fd = bs_open_beneath(rootfd, "../outside/created", O_WRONLY | O_CREAT, 0644);
        cr_assert_lt(fd, 0);
        int ofd = open(outside, O_RDONLY | O_DIRECTORY);
        cr_assert_not(exists_at(ofd, "created"));
        close(ofd);
}

Test(fs, open_beneath_refuses_absolute) {
        char abs[PATH_MAX + 16];
        snprintf(abs, sizeof(abs), "%s/file", root);
        cr_assert_eq(bs_open_beneath(rootfd, abs, O_RDONLY, 0), -EXDEV);
        cr_assert_eq(bs_open_beneath(rootfd, "/etc/passwd", O_RDONLY, 0), -EXDEV);
}

Test(fs, open_beneath_refuses_symlink_component) {
        int fd = bs_open_beneath(rootfd, "escape/secret", O_RDONLY, 0);
        cr_assert_eq(fd, -ELOOP, "got %d", fd);
        fd = bs_open_beneath(rootfd, "dirlink/inner", O_RDONLY, 0);
        cr_assert_eq(fd, -ELOOP, "a link inside the tree is refused too (got %d)", fd);
        fd = bs_open_beneath(rootfd, "escape/new", O_WRONLY | O_CREAT, 0644);
        cr_assert_lt(fd, 0);
        int ofd = open(outside, O_RDONLY | O_DIRECTORY);
        cr_assert_not(exists_at(ofd, "new"));
        close(ofd);
}

Test(fs, open_beneath_refuses_symlink_last) {
        cr_assert_eq(bs_open_beneath(rootfd, "filelink", O_RDONLY, 0), -ELOOP);
        cr_assert_eq(bs_open_beneath(rootfd, "escape", O_RDONLY | O_DIRECTORY, 0), -ELOOP);
        /* Writing through a link would change the target: refused. */
        cr_assert_lt(bs_open_beneath(rootfd, "filelink", O_WRONLY | O_TRUNC, 0), 0);
        int fd = bs_open_beneath(rootfd, "file", O_RDONLY, 0);
        cr_assert_geq(fd, 0);
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_assert_eq(st.st_size, 4, "target untouched");
        close(fd);
}

/* open(2) ignores the mode without O_CREAT/O_TMPFILE; so should this
 * wrapper. O_TMPFILE contains the O_DIRECTORY bit, so testing
 * flags & (O_CREAT | O_TMPFILE) passes a mode for every O_DIRECTORY open,
 * which openat2() refuses with EINVAL. See bs-fs.c, bs_open_beneath(). */
Test(fs, open_beneath_directory_with_mode) {
        int fd = bs_open_beneath(rootfd, "dir", O_RDONLY | O_DIRECTORY, 0755);
        cr_expect_geq(fd, 0, "O_DIRECTORY open with a mode failed: %s", strerror(-fd));
        if (fd >= 0)
                close(fd);
}

Test(fs, open_parent) {
        const char *base = NULL;
        int fd = bs_open_parent(rootfd, "dir/sub/deep", &base);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        cr_assert_str_eq(base, "deep");
        cr_assert(exists_at(fd, base));
        struct stat a, b;
        cr_assert_eq(fstat(fd, &a), 0);
        cr_assert_eq(fstatat(rootfd, "dir/sub", &b, 0), 0);
        cr_assert_eq(a.st_ino, b.st_ino, "fd is dir/sub");
        close(fd);

        /* A top-level name: the parent is the root itself. */
        fd = bs_open_parent(rootfd, "file", &base);
        cr_assert_geq(fd, 0);
        cr_assert_str_eq(base, "file");
        cr_assert_eq(fstat(fd, &a), 0);
        cr_assert_eq(fstat(rootfd, &b), 0);
        cr_assert_eq(a.st_ino, b.st_ino);
        close(fd);

        /* The last component need not exist. */
        fd = bs_open_parent(rootfd, "dir/not-yet", &base);
        cr_assert_geq(fd, 0);
        cr_assert_str_eq(base, "not-yet");
        close(fd);

        /* But every parent must, and none may be a link. */
        cr_assert_eq(bs_open_parent(rootfd, "nodir/x", &base), -ENOENT);
        cr_assert_eq(bs_open_parent(rootfd, "escape/secret", &base), -ELOOP);
        cr_assert_eq(bs_open_parent(rootfd, "dirlink/inner", &base), -ELOOP);
        cr_assert_eq(bs_open_parent(rootfd, "file/x", &base), -ENOTDIR);
}

Test(fs, mkdir_parents) {
        cr_assert_eq(bs_mkdir_parents(rootfd, "a/b/c/file.txt", 0755), 0);
        struct stat st;
        cr_assert_eq(fstatat(rootfd, "a/b/c", &st, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert(S_ISDIR(st.st_mode));
        cr_assert_not(exists_at(rootfd, "a/b/c/file.txt"), "last component is not created");

        /* Existing parents are fine; again is fine. */
        cr_assert_eq(bs_mkdir_parents(rootfd, "a/b/c/file.txt", 0755), 0);
        cr_assert_eq(bs_mkdir_parents(rootfd, "dir/sub/new/x", 0755), 0);
        cr_assert_eq(fstatat(rootfd, "dir/sub/new", &st, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert(S_ISDIR(st.st_mode));

        /* Top-level: nothing to do. */
        cr_assert_eq(bs_mkdir_parents(rootfd, "toplevel", 0755), 0);
        cr_assert_not(exists_at(rootfd, "toplevel"));

        /* Never through a link: nothing is created outside. */
        cr_assert_lt(bs_mkdir_parents(rootfd, "escape/evil/x", 0755), 0);
        int ofd = open(outside, O_RDONLY | O_DIRECTORY);
        cr_assert_not(exists_at(ofd, "evil"));
        close(ofd);

        /* A file in the way. */
        cr_assert_lt(bs_mkdir_parents(rootfd, "file/x/y", 0755), 0);
}

Test(fs, tmpfile_at) {
        char name[64];
        int fd = bs_tmpfile_at(rootfd, name, sizeof(name), 0600);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        cr_assert_eq(strncmp(name, ".backupsync-tmp.", 16), 0, "name \"%s\"", name);
        cr_assert(bs_path_is_temp(name));
        cr_assert_gt(strlen(name), 16, "random part present");
        struct stat a, b;
        cr_assert_eq(fstat(fd, &a), 0);
        cr_assert_eq(fstatat(rootfd, name, &b, AT_SYMLINK_NOFOLLOW), 0, "name refers to the file");
        cr_assert_eq(a.st_ino, b.st_ino);
        cr_assert(S_ISREG(a.st_mode));
        cr_assert_eq(a.st_size, 0);
        cr_assert_eq(a.st_mode & 0077, 0);

        char name2[64];
        int fd2 = bs_tmpfile_at(rootfd, name2, sizeof(name2), 0600);
        cr_assert_geq(fd2, 0);
        cr_assert_str_neq(name, name2);
        close(fd);
        close(fd2);
}

#define NAMES_PER_THREAD 50000

static void *make_names(void *arg) {
        char (*names)[40] = arg;
        for (int i = 0; i < NAMES_PER_THREAD; i++)
                bs_temp_name(names[i], sizeof(names[i]));
        return NULL;
}

static int cmp_name(const void *a, const void *b) {
        return strcmp(a, b);
}

Test(fs, temp_names_unique_across_threads) {
        /* The server's event loop and its writer thread name files at once. */
        char (*names)[40] = calloc(2 * NAMES_PER_THREAD, sizeof(*names));
        cr_assert_not_null(names);
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, make_names, names + NAMES_PER_THREAD), 0);
        make_names(names);
        cr_assert_eq(pthread_join(t, NULL), 0);
        for (int i = 0; i < 2 * NAMES_PER_THREAD; i++) {
                cr_assert(bs_path_is_temp(names[i]), "\"%s\"", names[i]);
                cr_assert_eq(strlen(names[i]), 32, "\"%s\"", names[i]);
                cr_assert_eq(strspn(names[i] + 16, "0123456789abcdef"), 16, "\"%s\"", names[i]);
        }
        qsort(names, 2 * NAMES_PER_THREAD, sizeof(*names), cmp_name);
        for (int i = 1; i < 2 * NAMES_PER_THREAD; i++)
                cr_assert_str_neq(names[i - 1], names[i], "a name given twice");
        free(names);
}

/* A file of n copies of c, on disk and out of the page cache: its fd. */
static int cold_file(const char *name, char *data, size_t n, char c) {
        memset(data, c, n);
        int fd = openat(rootfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_write_all(fd, data, n), 0);
        cr_assert_eq(fsync(fd), 0);
        cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        return fd;
}

Test(fs, cache_probe) {
        /* A cold file is told cold, and the probe does not make it look
         * cached; once read, it is cached. */
        char data[8192];
        int fd = cold_file("probed", data, sizeof(data), 'x');
        cr_assert_eq(bs_cache_probe(fd), 0, "a file just dropped from the page cache is cold");
        cr_assert_eq(bs_cache_probe(fd), 0, "the probe alone made the file look cached");
        cr_assert_eq(bs_pread_full(fd, data, sizeof(data), 0), (ssize_t) sizeof(data));
        cr_assert_eq(bs_cache_probe(fd), 1, "a file just read is cached");
        close(fd);
}

Test(fs, cache_probe_then_read_ahead) {
        /* A file the probe found cold is read ahead as far as asked, as
         * the agent and the server do (bs_readahead() without a ring). */
        static char data[256 * 1024];
        int fd = cold_file("ahead", data, sizeof(data), 'y');
        cr_assert_eq(bs_cache_probe(fd), 0);
        bs_readahead(NULL, fd, sizeof(data));
        unsigned char vec[sizeof(data) / 4096];
        size_t resident = 0;
        void *m = mmap(NULL, sizeof(data), PROT_READ, MAP_SHARED, fd, 0);
        cr_assert_neq(m, MAP_FAILED);
        for (int i = 0; i < 500 && resident < sizeof(vec); i++) {
                cr_assert_eq(mincore(m, sizeof(data), vec), 0);
                resident = 0;
                for (size_t k = 0; k < sizeof(vec); k++)
                        resident += vec[k] & 1;
                if (resident < sizeof(vec))
                        usleep(10000);
        }
        cr_assert_eq(resident, sizeof(vec), "%zu of %zu pages read ahead", resident, sizeof(vec));
        munmap(m, sizeof(data));
        close(fd);
}

Test(fs, mode_kept) {
        /* Read from the process, as a thread beside others must. */
        umask(022);
        cr_assert(bs_mode_kept(0644));
        cr_assert(bs_mode_kept(0600));
        cr_assert(bs_mode_kept(0));
        cr_assert(!bs_mode_kept(0664), "the umask clears the group's write bit");
        cr_assert(!bs_mode_kept(04755), "creation never sets the set-user-ID bit");
        cr_assert(!bs_mode_kept(01777));
        /* And what it says holds for a file made that way. */
        char name[64];
        int fd = bs_tmpfile_at(rootfd, name, sizeof(name), 0755);
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0755);
        close(fd);
}

Test(fs, tmpfile_at_small_buffer) {
        /* The header promises 32 bytes are enough for the name. */
        char name[32];
        int fd = bs_tmpfile_at(rootfd, name, sizeof(name), 0600);
        cr_assert_geq(fd, 0);
        cr_assert(bs_path_is_temp(name));
        struct stat a, b;
        cr_assert_eq(fstat(fd, &a), 0);
        cr_assert_eq(fstatat(rootfd, name, &b, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq(a.st_ino, b.st_ino);
        close(fd);
}

Test(fs, rm_rf_nested_tree) {
        cr_assert_eq(bs_mkdir_parents(rootfd, "dir/sub/a/b/c/d", 0755), 0);
        write_file(rootfd, "dir/sub/a/b/c/f1", "1");
        write_file(rootfd, "dir/sub/a/f2", "2");
        cr_assert_eq(symlinkat("../../..", rootfd, "dir/sub/a/up"), 0);
        cr_assert_eq(bs_rm_rf_at(rootfd, "dir"), 0);
        cr_assert_not(exists_at(rootfd, "dir"));
        /* Siblings survive. */
        cr_assert(exists_at(rootfd, "file"));
}

Test(fs, rm_rf_does_not_follow_links) {
        /* A tree holding a link to a directory outside. */
        cr_assert_eq(mkdirat(rootfd, "victim", 0755), 0);
        char target[PATH_MAX + 16];
        snprintf(target, sizeof(target), "%s", outside);
        cr_assert_eq(symlinkat(target, rootfd, "victim/link"), 0);
        write_file(rootfd, "victim/own", "x");
        cr_assert_eq(bs_rm_rf_at(rootfd, "victim"), 0);
        cr_assert_not(exists_at(rootfd, "victim"));

        /* The link itself as the argument. */
        cr_assert_eq(bs_rm_rf_at(rootfd, "escape"), 0);
        cr_assert_not(exists_at(rootfd, "escape"));

        int ofd = open(outside, O_RDONLY | O_DIRECTORY);
        cr_assert_geq(ofd, 0, "outside dir survives");
        cr_assert(exists_at(ofd, "secret"), "outside contents survive");
        close(ofd);
}

Test(fs, rm_rf_single_and_missing) {
        cr_assert_eq(bs_rm_rf_at(rootfd, "file"), 0);
        cr_assert_not(exists_at(rootfd, "file"));
        cr_assert_eq(bs_rm_rf_at(rootfd, "file"), 0, "missing is not an error");
        cr_assert_eq(bs_rm_rf_at(rootfd, "filelink"), 0);
        cr_assert_not(exists_at(rootfd, "filelink"));
}

Test(fs, write_all_and_pread_full) {
        int fd = bs_open_beneath(rootfd, "data", O_RDWR | O_CREAT | O_EXCL, 0644);
        cr_assert_geq(fd, 0);
        char big[200000];
        for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (char) (i % 251);
        cr_assert_eq(bs_write_all(fd, big, sizeof(big)), 0);
        char back[1000];
        cr_assert_eq(bs_pread_full(fd, back, sizeof(back), 150000), (ssize_t) sizeof(back));
        cr_assert_eq(memcmp(back, big + 150000, sizeof(back)), 0);
        /* Short at the end of the file. */
        cr_assert_eq(bs_pread_full(fd, back, sizeof(back), (off_t) sizeof(big) - 10), 10);
        cr_assert_eq(bs_pread_full(fd, back, sizeof(back), (off_t) sizeof(big)), 0);
        cr_assert_eq(bs_fsync_dir(rootfd), 0);
        close(fd);
        cr_assert_eq(bs_write_all(-1, "x", 1), -EBADF);
}

Test(fs, set_mtime) {
        const int64_t t = 1600000000LL * 1000000000LL + 123456789LL;
        int fd = bs_open_beneath(rootfd, "file", O_RDONLY, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_set_mtime_fd(fd, t), 0);
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_assert_eq(bs_stat_mtime_ns(&st), t);
        close(fd);

        /* On a link: the link changes, the target does not. */
        const int64_t t2 = 1500000000LL * 1000000000LL + 5;
        cr_assert_eq(bs_set_mtime_at(rootfd, "filelink", t2), 0);
        cr_assert_eq(fstatat(rootfd, "filelink", &st, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq(bs_stat_mtime_ns(&st), t2);
        cr_assert_eq(fstatat(rootfd, "file", &st, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq(bs_stat_mtime_ns(&st), t);

        /* Before 1970. */
        const int64_t t3 = -1500000000LL;
        cr_assert_eq(bs_set_mtime_at(rootfd, "file", t3), 0);
        cr_assert_eq(fstatat(rootfd, "file", &st, 0), 0);
        cr_assert_eq(bs_stat_mtime_ns(&st), t3);
}

Test(fs, write_sparse_keeps_holes_and_size) {
        char path[] = "/tmp/bs-test-sparse-XXXXXX";
        int fd = mkstemp(path);
        cr_assert(fd >= 0);
        static uint8_t zeros[256 * 1024], data[4096];
        memset(data, 'x', sizeof(data));
        for (int i = 0; i < 8; i++)
                cr_assert_eq(bs_write_sparse(fd, zeros, sizeof(zeros)), 0);
        cr_assert_eq(bs_write_sparse(fd, data, sizeof(data)), 0);
        cr_assert_eq(bs_write_sparse(fd, zeros, sizeof(zeros)), 0);
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_expect_eq(st.st_size, 9 * sizeof(zeros) + sizeof(data));
        cr_expect_lt(st.st_blocks * 512, 1024 * 1024, "zeros became holes");
        uint8_t back[4096];
        cr_assert_eq(pread(fd, back, sizeof(back), 8 * sizeof(zeros)), (ssize_t) sizeof(back));
        cr_expect_eq(memcmp(back, data, sizeof(back)), 0);
        cr_assert_eq(pread(fd, back, sizeof(back), 0), (ssize_t) sizeof(back));
        cr_expect_eq(back[0], 0);
        close(fd);
        unlink(path);
}

/* The fallback used where openat2() is filtered must refuse the same. */
Test(fs, open_walk_same_rules) {
        int fd = bs_open_walk(rootfd, "dir/sub/deep", O_RDONLY, 0);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        close(fd);
        fd = bs_open_walk(rootfd, ".", O_RDONLY | O_DIRECTORY, 0);
        cr_assert_geq(fd, 0);
        close(fd);
        cr_expect_eq(bs_open_walk(rootfd, "missing/x", O_RDONLY, 0), -ENOENT);
        cr_expect_eq(bs_open_walk(rootfd, "..", O_RDONLY | O_DIRECTORY, 0), -EXDEV);
        cr_expect_eq(bs_open_walk(rootfd, "dir/../../outside/secret", O_RDONLY, 0), -EXDEV);
        cr_expect_eq(bs_open_walk(rootfd, "/etc/passwd", O_RDONLY, 0), -EXDEV);
        cr_expect_eq(bs_open_walk(rootfd, "dir//inner", O_RDONLY, 0), -EXDEV);
        cr_expect_eq(bs_open_walk(rootfd, "escape/secret", O_RDONLY, 0), -ELOOP);
        cr_expect_eq(bs_open_walk(rootfd, "dirlink/inner", O_RDONLY, 0), -ELOOP);
        cr_expect_eq(bs_open_walk(rootfd, "filelink", O_RDONLY, 0), -ELOOP);
        cr_expect_lt(bs_open_walk(rootfd, "escape/new", O_WRONLY | O_CREAT, 0644), 0);
        int ofd = open(outside, O_RDONLY | O_DIRECTORY);
        cr_expect_not(exists_at(ofd, "new"));
        close(ofd);
        fd = bs_open_walk(rootfd, "dir/made", O_WRONLY | O_CREAT | O_EXCL, 0600);
        cr_assert_geq(fd, 0, "%s", strerror(-fd));
        struct stat st;
        cr_assert_eq(fstat(fd, &st), 0);
        cr_expect_eq(st.st_mode & 0777, 0600);
        close(fd);
}

/* bs_dir_list: every entry but . and .., with its type, position untouched. */
Test(fs, dir_list) {
        BsDirent *v;
        size_t n;
        cr_assert_eq(mkdirat(rootfd, "listed", 0755), 0);
        int d = openat(rootfd, "listed", O_RDONLY | O_DIRECTORY);
        cr_assert_geq(d, 0);
        cr_assert_eq(bs_dir_list(d, &v, &n), 0);
        cr_assert_eq(n, 0, "an empty directory");
        bs_dir_list_free(v, n);
        write_file(d, "f", "x");
        cr_assert_eq(mkdirat(d, "sub", 0755), 0);
        cr_assert_eq(symlinkat("f", d, "l"), 0);
        for (int round = 0; round < 2; round++) { /* twice: the fd's position is not used up */
                cr_assert_eq(bs_dir_list(d, &v, &n), 0);
                cr_assert_eq(n, 3);
                int seen = 0;
                for (size_t i = 0; i < n; i++) {
                        if (strcmp(v[i].name, "f") == 0) {
                                seen |= 1;
                                cr_expect(v[i].type == DT_REG || v[i].type == DT_UNKNOWN);
                        }
                        else if (strcmp(v[i].name, "sub") == 0) {
                                seen |= 2;
                                cr_expect(v[i].type == DT_DIR || v[i].type == DT_UNKNOWN);
                        }
                        else if (strcmp(v[i].name, "l") == 0) {
                                seen |= 4;
                                cr_expect(v[i].type == DT_LNK || v[i].type == DT_UNKNOWN);
                        }
                }
                cr_assert_eq(seen, 7);
                bs_dir_list_free(v, n);
        }
        close(d);
        cr_assert_eq(bs_dir_list(-1, &v, &n), -EBADF);
}

/* bs_dir_list_fd: the fd itself, across many getdents64() buffers; its
 * position moves, so a second listing from there is empty. */
Test(fs, dir_list_fd) {
        enum { N = 3000 }; /* about 200 KiB of entries: several 32 KiB reads */
        BsDirent *v;
        size_t n;
        cr_assert_eq(mkdirat(rootfd, "many", 0755), 0);
        int d = openat(rootfd, "many", O_RDONLY | O_DIRECTORY);
        cr_assert_geq(d, 0);
        char name[80];
        for (int i = 0; i < N; i++) {
                snprintf(name, sizeof(name), "a-rather-long-name-to-fill-the-buffer-sooner-%05d", i);
                write_file(d, name, "");
        }
        int fd = openat(d, ".", O_RDONLY | O_DIRECTORY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_dir_list_fd(fd, &v, &n), 0);
        cr_assert_eq(n, N);
        static bool seen[N];
        for (size_t i = 0; i < n; i++) {
                int k = atoi(v[i].name + strlen("a-rather-long-name-to-fill-the-buffer-sooner-"));
                cr_assert(k >= 0 && k < N && !seen[k], "\"%s\"", v[i].name);
                seen[k] = true;
                struct stat st;
                cr_assert_eq(fstatat(d, v[i].name, &st, AT_SYMLINK_NOFOLLOW), 0);
                cr_expect_eq(v[i].ino, (uint64_t) st.st_ino, "%s", v[i].name);
        }
        bs_dir_list_free(v, n);
        cr_assert_eq(bs_dir_list_fd(fd, &v, &n), 0);
        cr_expect_eq(n, 0, "read to its end already");
        bs_dir_list_free(v, n);
        cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
        cr_assert_eq(bs_dir_list_fd(fd, &v, &n), 0);
        cr_expect_eq(n, N, "from the start again");
        bs_dir_list_free(v, n);
        close(fd);
        close(d);
        cr_assert_eq(bs_dir_list_fd(-1, &v, &n), -EBADF);
}

Test(fs, fd_budget) {
        /* An eighth of the soft fd limit, within the caller's bounds. */
        struct rlimit rl;
        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        rl.rlim_cur = rl.rlim_max < 800 ? rl.rlim_max : 800;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        size_t eighth = (size_t) rl.rlim_cur / 8;
        cr_assert_eq(bs_fd_budget(1, 1000), eighth);
        cr_assert_eq(bs_fd_budget(eighth + 1, 1000), eighth + 1);
        cr_assert_eq(bs_fd_budget(1, eighth - 1), eighth - 1);
}

/* The size of this process's descriptor table (FDSize in /proc/self/status). */
static long fd_table_size(void) {
        char line[128];
        long n = -1;
        FILE *f = fopen("/proc/self/status", "re");
        cr_assert_not_null(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "FDSize: %ld", &n) == 1)
                        break;
        fclose(f);
        return n;
}

/* The soft limit rises to the hard one and the table holds what was asked,
 * or the limit when that is lower; nothing is left open. */
Test(fs, fd_prepare) {
        struct rlimit rl;
        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        cr_assert_geq(rl.rlim_max, 1024, "the test needs a hard limit of 1024");
        rl.rlim_cur = 256;
        rl.rlim_max = 1024;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        int probe = open("/", O_PATH | O_CLOEXEC);
        cr_assert_geq(probe, 0);
        close(probe);
        cr_assert_lt(fd_table_size(), 1000, "small to begin with");

        cr_assert_eq(bs_fd_prepare(900), 1024);
        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        cr_expect_eq(rl.rlim_cur, 1024);
        cr_expect_geq(fd_table_size(), 900);
        int fd = open("/", O_PATH | O_CLOEXEC);
        cr_expect_eq(fd, probe, "the descriptors it used are closed again");
        close(fd);

        cr_assert_eq(bs_fd_prepare(5000), 1024, "no more than the limit");
        cr_expect_geq(fd_table_size(), 1024);
        cr_expect_lt(fd_table_size(), 5000);
}

typedef struct Meminfo {
        char text[160];
        int r;
        uint64_t bytes;
} Meminfo;

ParameterizedTestParameters(fs, meminfo_dirty) {
        static Meminfo cases[] = {
                { "MemTotal: 100 kB\nDirty:  2408376 kB\nWriteback:  12 kB\nWritebackTmp: 9 kB\n", 0,
                  (2408376ull + 12) * 1024 },
                { "Dirty: 1 kB\nWritebackTmp: 5 kB\nWriteback: 2 kB\n", 0, 3 * 1024 },
                { "SwapDirty: 7 kB\nDirty: 0 kB\nWriteback: 0 kB\n", 0, 0 },
                { "Writeback: 2 kB\nDirty: 1 kB", 0, 3 * 1024 }, /* no final newline */
                { "Dirty: 1 kB\nWritebackTmp: 5 kB\n", -EBADMSG, 0 },
                { "SwapDirty: 7 kB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "x Dirty: 1 kB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "Dirty: -1 kB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "Dirty: 1 MB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "Dirty:\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "Dirty: 99999999999999999999 kB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "Dirty: 9007199254740992 kB\nWriteback: 0 kB\n", -EBADMSG, 0 },
                { "", -EBADMSG, 0 },
        };
        return cr_make_param_array(Meminfo, cases, sizeof(cases) / sizeof(cases[0]));
}

/* Only the exact keys at a line's start count, and a number the sum of
 * the two could overflow is refused. */
ParameterizedTest(Meminfo *m, fs, meminfo_dirty) {
        uint64_t got = 12345;
        int r = bs_meminfo_dirty(m->text, &got);
        cr_assert_eq(r, m->r, "%s: %d, want %d", m->text, r, m->r);
        if (r == 0)
                cr_assert_eq(got, m->bytes, "%s: %llu, want %llu", m->text, (unsigned long long) got,
                             (unsigned long long) m->bytes);
        else
                cr_assert_eq(got, 12345, "%s: written on failure", m->text);
}

/* This machine's own figures parse, and a syncfs() with no data of ours
 * is cheap when they say so. */
Test(fs, meminfo_dirty_here) {
        char buf[8192];
        uint64_t dirty;
        cr_assert_gt(bs_read_small("/proc/meminfo", buf, sizeof(buf)), 0);
        cr_assert_eq(bs_meminfo_dirty(buf, &dirty), 0, "%s", buf);
        cr_assert_eq(bs_syncfs_cheap(UINT64_MAX), true);
        cr_assert_eq(bs_syncfs_cheap(dirty + BS_FOREIGN_DIRTY_MAX * 1024), true);
}

/* A string of at most size - 1 bytes; an empty or missing file is an error. */
Test(fs, read_small) {
        char path[PATH_MAX], buf[8];
        snprintf(path, sizeof(path), "%s/small", base_dir);
        cr_assert_eq(bs_read_small(path, buf, sizeof(buf)), -ENOENT);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert(fd >= 0);
        close(fd);
        cr_assert_eq(bs_read_small(path, buf, sizeof(buf)), -ENODATA);
        fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
        cr_assert_eq(write(fd, "1234567890", 10), 10);
        close(fd);
        cr_assert_eq(bs_read_small(path, buf, sizeof(buf)), 7);
        cr_assert_str_eq(buf, "1234567");
        cr_assert_eq(bs_read_small(path, buf, 0), -EINVAL);
}
