/* bs-fs.c - file-system helpers that never leave a tree or follow a link */
#include <stdlib.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-proto.h"

/* openat2() refused by a seccomp filter (systemd's RestrictSUIDSGID=, which
 * DynamicUser= implies, cannot look into struct open_how and answers
 * ENOSYS): walk the path one component at a time, never following a link. */
int bs_open_walk(int dirfd, const char *path, int flags, mode_t mode) {
        char buf[BS_PATH_MAX + 1];
        int fd = -1, cur = dirfd;

        if (strcmp(path, ".") == 0) {
                fd = openat(dirfd, ".", flags | O_CLOEXEC);
                return fd < 0 ? -errno : fd;
        }
        if (path[0] == '/' || strlen(path) > BS_PATH_MAX)
                return -EXDEV;
        strcpy(buf, path);
        char *s = buf;
        for (;;) {
                char *slash = strchr(s, '/');
                if (slash)
                        *slash = 0;
                if (s[0] == 0 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
                        fd = -EXDEV;
                        break;
                }
                int next = slash ? openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                                 : openat(cur, s, flags | O_NOFOLLOW | O_CLOEXEC, mode);
                fd = next < 0 ? -errno : next;
                struct stat st;
                /* As openat2() says: a link where a directory should be is ELOOP. */
                if (fd == -ENOTDIR && slash && fstatat(cur, s, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                        fd = -ELOOP;
                if (cur != dirfd)
                        close(cur);
                cur = dirfd;
                if (fd < 0 || !slash)
                        break;
                cur = fd;
                s = slash + 1;
        }
        return fd;
}

int bs_open_beneath(int dirfd, const char *path, int flags, mode_t mode) {
        static bool no_openat2;
        struct open_how how = {
                .flags = (uint64_t) (flags | O_CLOEXEC),
                /* O_TMPFILE includes O_DIRECTORY: test it whole. */
                .mode = ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? mode : 0,
                .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        int fd;
        if (no_openat2)
                return bs_open_walk(dirfd, path, flags, (mode_t) how.mode);
        do
                fd = (int) syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
        while (fd < 0 && errno == EINTR);
        if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
                no_openat2 = errno == ENOSYS;
                return bs_open_walk(dirfd, path, flags, (mode_t) how.mode);
        }
        return fd < 0 ? -errno : fd;
}

/* A backup that moves access times forward tells mail readers their
 * mailboxes were read and atime-based cleanups that files are in use. */
int bs_open_read_beneath(int dirfd, const char *path) {
        int fd = bs_open_beneath(dirfd, path, O_RDONLY | O_NOCTTY | O_NOATIME, 0);
        return fd == -EPERM ? bs_open_beneath(dirfd, path, O_RDONLY | O_NOCTTY, 0) : fd;
}

int bs_open_parent(int rootfd, const char *path, const char **base) {
        char parent[BS_PATH_MAX + 1];
        size_t n = bs_path_parent_len(path);

        *base = bs_path_base(path);
        if (n == 0)
                return bs_open_beneath(rootfd, ".", O_RDONLY | O_DIRECTORY, 0);
        if (n > BS_PATH_MAX)
                return -ENAMETOOLONG;
        memcpy(parent, path, n);
        parent[n] = 0;
        return bs_open_beneath(rootfd, parent, O_RDONLY | O_DIRECTORY, 0);
}

int bs_mkdir_parents(int rootfd, const char *path, mode_t mode) {
        char buf[BS_PATH_MAX + 1];
        size_t n = bs_path_parent_len(path);

        if (n == 0)
                return 0;
        if (n > BS_PATH_MAX)
                return -ENAMETOOLONG;
        memcpy(buf, path, n);
        buf[n] = 0;
        for (char *s = buf;; s++) {
                if (*s != '/' && *s != 0)
                        continue;
                char c = *s;
                *s = 0;
                const char *base;
                _cleanup_(closep) int pfd = bs_open_parent(rootfd, buf, &base);
                if (pfd < 0)
                        return pfd;
                if (mkdirat(pfd, base, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = c;
                if (c == 0)
                        break;
        }
        return 0;
}

int bs_write_all(int fd, const void *p, size_t n) {
        const uint8_t *b = p;
        while (n > 0) {
                ssize_t w = write(fd, b, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                b += w;
                n -= (size_t) w;
        }
        return 0;
}

int bs_write_sparse(int fd, const void *p, size_t n) {
        const uint8_t *b = p;
        if (n < 4096 || b[0] != 0 || memcmp(b, b + 1, n - 1) != 0)
                return bs_write_all(fd, p, n);
        off_t end = lseek(fd, (off_t) n, SEEK_CUR);
        if (end < 0)
                return -errno;
        /* Extend now, so a file that ends in a hole has its full size. */
        return ftruncate(fd, end) < 0 ? -errno : 0;
}

void bs_writeback_step(int fd, uint64_t *started, uint64_t written) {
        if (written < *started || written - *started < BS_WRITEBACK_STEP)
                return;
        (void) sync_file_range(fd, (off_t) *started, (off_t) (written - *started), SYNC_FILE_RANGE_WRITE);
        *started = written;
}

ssize_t bs_pread_full(int fd, void *p, size_t n, off_t off) {
        size_t got = 0;
        while (got < n) {
                ssize_t r = pread(fd, (uint8_t *) p + got, n - got, off + (off_t) got);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        break;
                got += (size_t) r;
        }
        return (ssize_t) got;
}

/* cachestat(2), Linux 6.5: the same number on every architecture; its
 * structures, which older headers lack. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct bs_cachestat_range {
        uint64_t off, len;
};
struct bs_cachestat {
        uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

int bs_cache_probe(int fd) {
        static _Atomic bool no_cachestat;

        /* cachestat() only looks. A read with RWF_NOWAIT starts reading a
         * cold page, and when that finishes at once (a fast disk, a page
         * the host has) the read succeeds: a cold file taken for cached. */
        if (!atomic_load_explicit(&no_cachestat, memory_order_relaxed)) {
                struct bs_cachestat_range range = { .off = 0, .len = 1 };
                struct bs_cachestat cs;
                if (syscall(__NR_cachestat, fd, &range, &cs, 0) == 0) {
                        return cs.nr_cache > 0;
                }
                if (errno != ENOSYS)
                        return -errno;
                atomic_store_explicit(&no_cachestat, true, memory_order_relaxed);
        }
        uint8_t b;
        struct iovec v = { .iov_base = &b, .iov_len = 1 };
        if (preadv2(fd, &v, 1, 0, RWF_NOWAIT) >= 0)
                return 1;
        return errno == EAGAIN ? 0 : -errno;
}

size_t bs_fd_budget(size_t min, size_t max) {
        struct rlimit rl;
        rlim_t keep = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur / 8 : 0;
        return (size_t) MIN(MAX(keep, (rlim_t) min), (rlim_t) max);
}

size_t bs_fd_prepare(size_t want) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return 0;
        if (rl.rlim_cur < rl.rlim_max) {
                rlim_t cur = rl.rlim_cur;
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        rl.rlim_cur = cur;
        }
        /* The lowest free descriptor from want - 1 on is want - 1 itself
         * (nothing is open that high yet): the table grows to hold it. */
        want = (size_t) MIN((rlim_t) want, rl.rlim_cur);
        if (want > 0 && want <= INT_MAX) {
                int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (fd >= 0) {
                        int high = fcntl(fd, F_DUPFD_CLOEXEC, (int) want - 1);
                        if (high >= 0)
                                close(high);
                        close(fd);
                }
        }
        return (size_t) rl.rlim_cur;
}

int bs_fsync_dir(int dirfd) {
        return fsync(dirfd) < 0 ? -errno : 0;
}

/* One "Key: <n> kB" line of /proc/meminfo, in bytes. */
static int meminfo_field(const char *text, const char *key, uint64_t *ret) {
        size_t n = strlen(key);
        for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
                if (strncmp(l, key, n) != 0)
                        continue;
                const char *p = l + n + strspn(l + n, " ");
                char *end;
                errno = 0;
                unsigned long long v = strtoull(p, &end, 10);
                if (*p < '0' || *p > '9' || errno != 0 || strncmp(end, " kB", 3) != 0 || v > UINT64_MAX / 2048)
                        return -EBADMSG;
                *ret = (uint64_t) v * 1024;
                return 0;
        }
        return -EBADMSG;
}

int bs_meminfo_dirty(const char *text, uint64_t *ret) {
        uint64_t dirty, wb;
        int r = meminfo_field(text, "Dirty:", &dirty);
        r = r ?: meminfo_field(text, "Writeback:", &wb);
        if (r < 0)
                return r;
        *ret = dirty + wb;
        return 0;
}

int bs_sync_at(int dirfd, const char *name, int fd, bool start) {
        _cleanup_(closep) int opened = -1;
        if (fd < 0 && (fd = opened = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0)
                return -errno;
        if (start) {
                (void) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
                return 0;
        }
        return fdatasync(fd) < 0 ? -errno : 0;
}

ssize_t bs_read_small(const char *path, char *buf, size_t size) {
        if (size == 0)
                return -EINVAL;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, size - 1);
        int r = n < 0 ? -errno : n == 0 ? -ENODATA : 0;
        close(fd);
        if (r < 0)
                return r;
        buf[n] = 0;
        return n;
}

bool bs_syncfs_cheap(uint64_t own_bytes) {
        char buf[8192];
        uint64_t dirty;
        if (bs_read_small("/proc/meminfo", buf, sizeof(buf)) < 0 || bs_meminfo_dirty(buf, &dirty) < 0)
                return true;
        return dirty <= own_bytes || dirty - own_bytes <= BS_FOREIGN_DIRTY_MAX;
}

BsDirent *bs_dir_list_free(BsDirent *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i].name);
        free(v);
        return NULL;
}

/* getdents64() itself: readdir() would cost an fstat() and two fcntl()
 * per directory. */
int bs_dir_list_fd(int fd, BsDirent **ret, size_t *ret_n) {
        char buf[32 * 1024] __attribute__((aligned(__alignof__(struct dirent64))));
        BsDirent *v = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        for (;;) {
                ssize_t k = getdents64(fd, buf, sizeof(buf));
                if (k <= 0) {
                        r = k < 0 ? -errno : 0;
                        break;
                }
                for (size_t off = 0; r == 0 && off < (size_t) k;) {
                        const struct dirent64 *de = (const struct dirent64 *) (buf + off);
                        off += de->d_reclen;
                        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                                continue;
                        if (n == cap) {
                                size_t c = cap ? cap * 2 : 32;
                                BsDirent *nv = reallocarray(v, c, sizeof(*nv));
                                if (!nv) {
                                        r = -ENOMEM;
                                        break;
                                }
                                v = nv;
                                cap = c;
                        }
                        if (!(v[n].name = strdup(de->d_name))) {
                                r = -ENOMEM;
                                break;
                        }
                        v[n].type = de->d_type;
                        v[n++].ino = (uint64_t) de->d_ino;
                }
                if (r < 0)
                        break;
        }
        if (r < 0) {
                bs_dir_list_free(v, n);
                return r;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

int bs_dir_list(int dirfd, BsDirent **ret, size_t *ret_n) {
        /* A new open file description: a dup would share the position. */
        int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = bs_dir_list_fd(fd, ret, ret_n);
        close(fd);
        return r;
}

static uint64_t temp_key;
static pthread_once_t temp_once = PTHREAD_ONCE_INIT;

static void temp_key_init(void) {
        arc4random_buf(&temp_key, sizeof(temp_key));
}

void bs_temp_name(char *name, size_t namesz) {
        /* A random start and a counter, mixed by a bijection: unique in the
         * process, unguessable before, and no system call per name (a
         * random number from libbsd costs a getpid() each). */
        static _Atomic uint64_t next;
        pthread_once(&temp_once, temp_key_init);
        uint64_t x = temp_key + atomic_fetch_add(&next, 1);
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        x ^= x >> 31;
        snprintf(name, namesz, BS_TEMP_PREFIX "%016llx", (unsigned long long) x);
}

int bs_tmpfile_at(int dirfd, char *name, size_t namesz, mode_t mode) {
        for (int i = 0; i < 100; i++) {
                bs_temp_name(name, namesz);
                int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
                if (fd >= 0)
                        return fd;
                if (errno != EEXIST)
                        return -errno;
        }
        return -EEXIST;
}

int bs_reopen_read_only(int dirfd, const char *name, int fd) {
        /* Closed first: the count of open files does not grow. */
        close(fd);
        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        return fd < 0 ? -errno : fd;
}

/* The umask, from /proc: umask() itself cannot be read without being
 * set, which another thread's file creation could catch. Unknown: as if
 * it cleared every bit (then every caller sets the mode itself). */
static mode_t read_umask(void) {
        static _Atomic int cached = -1;
        int m = atomic_load_explicit(&cached, memory_order_relaxed);
        if (m >= 0)
                return (mode_t) m;
        m = 0777;
        FILE *f = fopen("/proc/self/status", "re");
        if (f) {
                char line[128];
                unsigned v;
                while (fgets(line, sizeof(line), f))
                        if (sscanf(line, "Umask: %o", &v) == 1) {
                                m = (int) (v & 0777);
                                break;
                        }
                fclose(f);
        }
        atomic_store_explicit(&cached, m, memory_order_relaxed);
        return (mode_t) m;
}

bool bs_mode_kept(mode_t mode) {
        return (mode & 07000) == 0 && (mode & read_umask()) == 0;
}

int bs_rm_rf_at(int dfd, const char *name) {
        struct stat st;

        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISDIR(st.st_mode))
                return unlinkat(dfd, name, 0) < 0 && errno != ENOENT ? -errno : 0;

        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        BsDirent *v;
        size_t n;
        int r = bs_dir_list(fd, &v, &n);
        if (r == 0) {
                for (size_t i = 0; i < n; i++) {
                        int k = bs_rm_rf_at(fd, v[i].name);
                        if (k < 0 && r == 0)
                                r = k;
                }
                bs_dir_list_free(v, n);
        }
        close(fd);
        if (unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

int bs_set_mtime_fd(int fd, int64_t mtime_ns) {
        struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, bs_timespec_ns(mtime_ns) };
        return futimens(fd, ts) < 0 ? -errno : 0;
}

int bs_set_mtime_at(int dirfd, const char *name, int64_t mtime_ns) {
        struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, bs_timespec_ns(mtime_ns) };
        return utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

int bs_mkdir_p(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        if (snprintf(buf, sizeof(buf), "%s", path) >= (int) sizeof(buf))
                return -ENAMETOOLONG;
        for (char *p = buf + 1;; p++) {
                if (*p != '/' && *p != 0)
                        continue;
                char c = *p;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = c;
                if (c == 0)
                        return 0;
        }
}

int bs_write_file_atomic(int dir_fd, const char *name, const void *p, size_t n) {
        char tmp[PATH_MAX];
        if (snprintf(tmp, sizeof(tmp), "%s.tmp", name) >= (int) sizeof(tmp))
                return -ENAMETOOLONG;
        int fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        /* An old tmp of another mode is reused by O_TRUNC: set it again. */
        int r = fchmod(fd, 0600) < 0 ? -errno : 0;
        r = r ?: bs_write_all(fd, p, n);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        close(fd);
        if (r == 0 && renameat(dir_fd, tmp, dir_fd, name) < 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(dir_fd, tmp, 0);
        return r;
}
