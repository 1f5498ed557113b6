/* bs-fs.h - file-system helpers that never leave a tree or follow a link */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/**
 * openat2() below dirfd with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS: no "..", no absolute path, no symlink anywhere
 * in the path. Returns an fd or a negative errno.
 */
int bs_open_beneath(int dirfd, const char *path, int flags, mode_t mode);

/**
 * bs_open_beneath() of a file to read only, leaving its access time as it
 * was (O_NOATIME) where the kernel allows that: the caller owns the file
 * or has CAP_FOWNER. Other files are opened as usual.
 */
int bs_open_read_beneath(int dirfd, const char *path);

/**
 * The same without openat2(), one component at a time with O_NOFOLLOW;
 * bs_open_beneath() falls back to it where a seccomp filter refuses
 * openat2() (systemd's RestrictSUIDSGID=).
 */
int bs_open_walk(int dirfd, const char *path, int flags, mode_t mode);

/**
 * Open the parent directory of a tree path beneath rootfd (O_DIRECTORY),
 * so the last component can be changed with the *at() calls. *base is set
 * to the last component inside path. Returns an fd or a negative errno.
 */
int bs_open_parent(int rootfd, const char *path, const char **base);

/** Create every missing directory of path (not the last component). */
int bs_mkdir_parents(int rootfd, const char *path, mode_t mode);
/**
 * Replace dir_fd/name with n bytes of p, mode 0600, whole or not at all:
 * written to name.tmp, synced, renamed over name (the directory is not
 * synced). dir_fd may be AT_FDCWD.
 */
int bs_write_file_atomic(int dir_fd, const char *name, const void *p, size_t n);
/** mkdir -p of an absolute or relative path; existing directories are left as they are. */
int bs_mkdir_p(const char *path, mode_t mode);

/** write() all of n bytes; -errno on failure. */
int bs_write_all(int fd, const void *p, size_t n);
/**
 * Append n bytes at the file offset of fd, which must be written from the
 * start in order; a block of zeros becomes a hole, so sparse files stay
 * sparse. -errno on failure.
 */
int bs_write_sparse(int fd, const void *p, size_t n);
/** pread() exactly n bytes unless the file ends; returns bytes read or -errno. */
ssize_t bs_pread_full(int fd, void *p, size_t n, off_t off);

/*
 * Whether the start of fd is in the page cache: 1 when it is, 0 when it
 * is not, negative errno when the kernel cannot tell. Exact with
 * cachestat(2) (Linux 6.5); before, a one-byte RWF_NOWAIT read, which
 * takes a cold page read at once for a cached one, and starts reading a
 * cold file's first pages. A backup reads what it found cold (ahead with
 * bs_readahead()) and drops it again, so that copying a tree does not push
 * out what the machine was using.
 */
int bs_cache_probe(int fd);
/**
 * How many files a bulk writer or reader may keep open: an eighth of the
 * fd limit, within [min, max].
 */
size_t bs_fd_budget(size_t min, size_t max);
/**
 * Raise the soft limit on open files to the hard one, and grow the
 * descriptor table to hold want descriptors (at most the limit) now. For
 * main(), before any thread starts: the kernel grows a table shared by
 * threads only after an RCU grace period, each time it doubles (some 10
 * ms each on a virtual machine), while a process alone grows it for free.
 * Returns the limit now in force.
 */
size_t bs_fd_prepare(size_t want);


/* Written data of a big file is handed to the disk in steps of this size. */
#define BS_WRITEBACK_STEP (8u * 1024 * 1024)
/**
 * Start writeback of what was written to fd since *started, once that is
 * BS_WRITEBACK_STEP or more, so the disk works while the file is still
 * being written and the final sync has little left to do. Never fails:
 * it only brings work forward.
 */
void bs_writeback_step(int fd, uint64_t *started, uint64_t written);
/** fsync() a directory opened beneath dirfd ("." for dirfd itself). */
int bs_fsync_dir(int dirfd);

/**
 * Sync one file's data (fdatasync()) through fd, or when fd < 0 through
 * name in dirfd opened for it (a writeback error not yet reported is
 * still reported to a new fd). start: only start its writeback, whose
 * failure is left to the sync. Returns 0 or -errno.
 */
int bs_sync_at(int dirfd, const char *name, int fd, bool start);

/**
 * Read a small file (of /proc, a test's setting) into buf as a string:
 * at most size - 1 bytes, then a NUL. Returns the length, or -errno
 * (-ENODATA if it is empty).
 */
ssize_t bs_read_small(const char *path, char *buf, size_t size);

/* Other programs' dirty data a syncfs() may write along with ours, at most. */
#define BS_FOREIGN_DIRTY_MAX (64ull * 1024 * 1024)
/**
 * The bytes of file data dirty or under writeback in text, /proc/meminfo's
 * format (its Dirty: and Writeback: lines). -EBADMSG if either is missing.
 */
int bs_meminfo_dirty(const char *text, uint64_t *ret);
/**
 * Whether a syncfs() now would write little besides own_bytes of the
 * caller's data: the machine's dirty data exceeds them by at most
 * BS_FOREIGN_DIRTY_MAX. syncfs() waits for every program's data on the
 * file system, so with another program's gigabytes waiting for a slow
 * disk, a sync of each file is many times faster. True when /proc/meminfo
 * cannot be read: syncfs() is then the better guess.
 */
bool bs_syncfs_cheap(uint64_t own_bytes);

/**
 * A temporary name: ".backupsync-tmp." plus 16 hex digits, never the same
 * twice in a process and not guessable from outside it (at least 33 bytes).
 */
void bs_temp_name(char *name, size_t namesz);

/**
 * Create a new temporary file ".backupsync-tmp." plus 16 hex digits in dirfd.
 * name receives its name (at least 33 bytes). Returns the fd or -errno.
 */
int bs_tmpfile_at(int dirfd, char *name, size_t namesz, mode_t mode);
/**
 * Close fd, just written through, and open name in dirfd (the same file)
 * for reading: a descriptor kept to sync the file and drop its pages
 * later, when the file has its real name in a watched directory, whose
 * close is then no IN_CLOSE_WRITE. A failed writeback is still reported
 * to it: the data is still dirty when it is opened. Returns the new fd or
 * -errno (fd closed either way).
 */
int bs_reopen_read_only(int dirfd, const char *name, int fd);
/**
 * Whether a file created with mode & 0777 gets mode itself, which then
 * needs no fchmod(): no set-id or sticky bit, nothing the umask clears.
 */
bool bs_mode_kept(mode_t mode);

/* A directory entry as bs_dir_list() returns it. */
typedef struct BsDirent {
        char *name;
        unsigned char type; /* d_type: DT_DIR, DT_REG, ... or DT_UNKNOWN */
        uint64_t ino;       /* d_ino */
} BsDirent;

/**
 * The entries of the directory open at dirfd, but "." and "..", in
 * readdir() order; dirfd stays open and its position untouched. *ret is
 * freed with bs_dir_list_free(). Returns 0 or -errno.
 */
int bs_dir_list(int dirfd, BsDirent **ret, size_t *ret_n);
/**
 * As bs_dir_list(), for a descriptor opened for this listing alone: fd
 * itself is read from its position (the start, when just opened) to its
 * end, two system calls fewer than a listing of a copy.
 */
int bs_dir_list_fd(int fd, BsDirent **ret, size_t *ret_n);
/** Free what bs_dir_list() returned; NULL. */
BsDirent *bs_dir_list_free(BsDirent *v, size_t n);

/** Remove name in dirfd and, for a directory, all it holds. Links are not followed. */
int bs_rm_rf_at(int dirfd, const char *name);

/** st_mtim as nanoseconds. */
static inline int64_t bs_stat_mtime_ns(const struct stat *st) {
        return (int64_t) st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}
/** Nanoseconds since the epoch as a timespec (tv_nsec never negative). */
static inline struct timespec bs_timespec_ns(int64_t ns) {
        struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
        if (ts.tv_nsec < 0) {
                ts.tv_nsec += 1000000000LL;
                ts.tv_sec -= 1;
        }
        return ts;
}
/** Set mtime (nanoseconds) on an fd; atime is left alone. */
int bs_set_mtime_fd(int fd, int64_t mtime_ns);
/** Set mtime on name in dirfd without following a link. */
int bs_set_mtime_at(int dirfd, const char *name, int64_t mtime_ns);
