/* account-apply.c - applying PUT, MKDIR, SYMLINK, DELETE and MOVE to an account
 *
 * Each change: check the path and its base version, change tree/ through
 * directory fds only, keep what it replaces or deletes in the history and
 * its contents in the store, then record entries, the log record and the
 * new sequence inside a savepoint of the group-commit transaction.
 *
 * An upload is not renamed into the tree at once: it waits in tmp/
 * (account->pending) so that a batch is made durable together before any
 * of it gets a name in the tree (local_flush_pending()). Other changes
 * place the waiting uploads first, so the tree is always what the log
 * says; the directories they change (and the store's) are synced once per
 * transaction, before its COMMIT, by local_commit().
 *
 * Modes on disk always grant the server read and write (and search for
 * directories), so a client's read-only directory cannot lock the server
 * out of its own tree; the client's mode is kept in the entry.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local-internal.h"
#include "bs-clock.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-path.h"

#define FILE_DISK_MODE(m) (((m) & 0777) | 0600)
#define DIR_DISK_MODE(m) (((m) & 0777) | 0700)

/* Look up path; a missing entry is kind NONE with version 0, as the protocol counts it. */
static int lookup(LocalAccount *a, const char *path, AccountEntry *e) {
        int r = local_entry_get(a, path, e);
        if (r == -ENOENT) {
                *e = (AccountEntry) { .kind = BS_KIND_NONE };
                return 0;
        }
        return r;
}

static int check_path(const char *path) {
        return bs_path_check(path, strlen(path));
}

/* Open the parent directory in the tree and make sure it is a known directory. */
static int open_parent(LocalAccount *a, const char *path, const char **base) {
        size_t n = bs_path_parent_len(path);
        if (n > 0 && a->parent_fd >= 0 && n == a->parent_len && memcmp(path, a->parent_path, n) == 0) {
                int fd = fcntl(a->parent_fd, F_DUPFD_CLOEXEC, 3);
                *base = path + n + 1;
                return fd < 0 ? -errno : fd;
        }
        int fd = bs_open_parent(a->tree_fd, path, base);
        if (fd == -ENOTDIR)
                return -ENOENT;
        if (fd < 0)
                return fd;

        if (n > 0) {
                char parent[BS_PATH_MAX + 1];
                AccountEntry e;
                memcpy(parent, path, n);
                parent[n] = 0;
                int r = local_entry_get(a, parent, &e);
                if (r >= 0 && e.kind != BS_KIND_DIR)
                        r = -ENOENT;
                if (r < 0) {
                        close(fd);
                        return r;
                }
                local_forget_parent(a);
                a->parent_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (a->parent_fd >= 0) {
                        memcpy(a->parent_path, path, n);
                        a->parent_len = n;
                }
        }
        return fd;
}

/* Whether path's parent is a known directory of the tree, when no fd of it
 * is needed: the parent of the files before answers without a system call
 * (a burst comes directory by directory). */
static int check_parent(LocalAccount *a, const char *path) {
        size_t n = bs_path_parent_len(path);
        if (n == 0 || (a->parent_fd >= 0 && n == a->parent_len && memcmp(path, a->parent_path, n) == 0))
                return 0;
        const char *base;
        int fd = open_parent(a, path, &base);
        if (fd < 0)
                return fd;
        close(fd);
        return 0;
}

/* What every change starts with: a valid path, its parent open (a known
 * directory) and its entry. Returns the parent's fd or -errno. */
static int open_entry(LocalAccount *a, const char *path, const char **name, AccountEntry *e) {
        int r = check_path(path);
        if (r < 0)
                return r;
        int pfd = open_parent(a, path, name);
        if (pfd < 0)
                return pfd;
        r = lookup(a, path, e);
        if (r < 0) {
                close(pfd);
                return r;
        }
        return pfd;
}

/* Link every file below the directory at path (open as dfd) into the store. */
static int store_below(LocalAccount *a, int dfd, const char *path) {
        AccountRange range;
        sqlite3_stmt *st;
        int r = local_stmt(a, STMT_ENTRY_LIST_BELOW, &st), pfd = -1;
        char parent[BS_PATH_MAX + 1] = "";
        size_t parent_len = SIZE_MAX;

        if (r < 0)
                return r;
        local_range(&range, path);
        sqlite3_bind_blob(st, 1, range.lo, (int) range.len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, range.hi, (int) range.len, SQLITE_STATIC);
        for (;;) {
                char p[BS_PATH_MAX + 1];
                uint8_t sha[BS_SHA_LEN];
                const char *base;
                int rc = sqlite3_step(st);
                if (rc != SQLITE_ROW) {
                        r = rc == SQLITE_DONE ? 0 : local_sqlite_errno(rc) ?: -EIO;
                        break;
                }
                if (sqlite3_column_int(st, 1) != BS_KIND_FILE || sqlite3_column_bytes(st, 5) != BS_SHA_LEN)
                        continue;
                memcpy(sha, sqlite3_column_blob(st, 5), BS_SHA_LEN);
                r = local_column_path(st, 0, p, NULL);
                if (r < 0)
                        break;
                const char *rel = p + range.len;
                size_t n = bs_path_parent_len(rel);
                /* Rows come in path order: a directory's files one after another. */
                if (n != parent_len || memcmp(rel, parent, n) != 0) {
                        if (pfd >= 0)
                                close(pfd);
                        pfd = bs_open_parent(dfd, rel, &base);
                        if (pfd < 0) {
                                r = pfd == -ENOENT ? 0 : pfd;
                                parent_len = SIZE_MAX;
                                if (r < 0)
                                        break;
                                continue;
                        }
                        memcpy(parent, rel, n);
                        parent_len = n;
                }
                base = bs_path_base(rel);
                r = store_put(a->store, sha, pfd, base, STORE_LINK);
                if (r == -ENOENT)
                        r = 0; /* not on disk: nothing to keep */
                if (r < 0)
                        break;
        }
        sqlite3_reset(st);
        if (pfd >= 0)
                close(pfd);
        return r;
}

/*
 * The entry at path (name in parent_fd) and everything below it end at
 * seq: their states go into the history and the files' contents into the
 * store. With STORE_LINK (only for a file about to be replaced by rename)
 * the name stays; else the entry leaves the tree. A directory's files are
 * linked into the store before it goes, so a crash at any point leaves
 * every content either in the tree or in the store.
 */
static int keep_version(LocalAccount *a, int parent_fd, const char *name, const char *path,
                        const AccountEntry *e, uint64_t seq, StorePut how) {
        char del[64];
        int r = local_history_close(a, path, e->kind == BS_KIND_DIR, seq);
        if (r < 0)
                return r;
        switch (e->kind) {
        case BS_KIND_FILE:
                r = store_put(a->store, e->sha, parent_fd, name, how);
                return r == -ENOENT ? 0 : r < 0 ? r : 0;
        case BS_KIND_SYMLINK:
                return unlinkat(parent_fd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
        case BS_KIND_DIR: {
                _cleanup_(closep) int dfd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (dfd < 0)
                        return errno == ENOENT ? 0 : -errno;
                r = store_below(a, dfd, path);
                if (r < 0)
                        return r;
                /* Out of the tree in one step; what is left goes with tmp/. */
                snprintf(del, sizeof(del), BS_TEMP_PREFIX "del-%llu", (unsigned long long) seq);
                (void) bs_rm_rf_at(a->tmp_fd, del);
                if (renameat(parent_fd, name, a->tmp_fd, del) < 0)
                        return -errno;
                return bs_rm_rf_at(a->tmp_fd, del);
        }
        default:
                return 0;
        }
}

/* Record an applied change: entry (unless removed), log record, sequence. */
static int record(LocalAccount *a, uint64_t seq, const uint8_t *device, BsOp op, const char *path,
                  const char *path2, const AccountEntry *e) {
        int r = 0;
        if (op != BS_OP_DELETE && op != BS_OP_MOVE)
                r = local_entry_set(a, path, e);
        r = r ?: local_log_add(a, seq, device, op, e, path, path2);
        return r ?: local_set_seq(a, seq);
}

int local_put_check(LocalAccount *a, const char *path, uint64_t base, uint64_t size) {
        AccountEntry e;

        int r = check_path(path);
        r = r ?: check_parent(a, path);
        r = r ?: lookup(a, path, &e);
        if (r < 0)
                return r;
        if (e.kind != BS_KIND_NONE && e.kind != BS_KIND_FILE)
                return -ESTALE;
        if (base == e.version)
                return 0;
        /* A repeated upload whose ACK was lost: identical content is already done. */
        if (e.kind == BS_KIND_FILE && e.size == size)
                return 1;
        return -ESTALE;
}

static int reserve_pending(LocalAccount *a) {
        if (a->n_pending < a->cap_pending)
                return 0;
        size_t cap = a->cap_pending ? a->cap_pending * 2 : 64;
        AccountPending *p = reallocarray(a->pending, cap, sizeof(*p));
        if (!p)
                return -ENOMEM;
        a->pending = p;
        a->cap_pending = cap;
        return 0;
}

/* A temporary file in tmp/, named so that local_open() removes it if we
 * die; or, up to LOCAL_BUFFER_MAX bytes, the content in memory, which the
 * account's writer puts in such a file once the upload is recorded. */
struct LocalUpload {
        AccountUpload base;
        LocalAccount *account;
        int fd; /* -1 while buffered */
        char name[64];
        uint8_t *buf;
        size_t buf_cap;
        BsSha *sha;
        uint64_t written;
        uint64_t writeback; /* written bytes whose writeback was started */
        BsWrite *sync;   /* the last sync handed to the writer, or NULL */
        uint64_t synced;    /* written bytes when it was handed over */
        int sync_error;     /* the first a finished sync reported */
};

int local_upload_begin(LocalAccount *a, LocalUpload **ret) {
        _cleanup_(local_upload_freep) LocalUpload *u = NULL;

        u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->base.ops = &local_ops;
        u->account = a;
        u->fd = -1;
        int r = bs_sha_new(&u->sha);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(u);
        return 0;
}

/* Bigger than a buffer: into a temporary file from now on. */
static int upload_spill(LocalUpload *u) {
        u->fd = bs_tmpfile_at(u->account->tmp_fd, u->name, sizeof(u->name), 0600);
        if (u->fd < 0)
                return u->fd;
        int r = bs_write_sparse(u->fd, u->buf, u->written);
        free(u->buf);
        u->buf = NULL;
        u->buf_cap = 0;
        return r;
}

static int upload_buffer(LocalUpload *u, const void *p, size_t n) {
        if (n == 0)
                return 0;
        if (u->written + n > u->buf_cap) {
                size_t cap = MAX(u->written + n, MIN(2 * u->buf_cap, (size_t) LOCAL_BUFFER_MAX));
                uint8_t *b = realloc(u->buf, cap);
                if (!b)
                        return -ENOMEM;
                u->buf = b;
                u->buf_cap = cap;
        }
        memcpy(u->buf + u->written, p, n);
        return 0;
}

/* Whether u's last sync is finished, its error taken (or there is none). */
static bool upload_sync_idle(LocalUpload *u) {
        BsWriter *w = u->account->writer;
        if (!u->sync)
                return true;
        if (w && !bs_writer_done(w, u->sync))
                return false;
        if (u->sync->error < 0 && u->sync_error == 0)
                u->sync_error = u->sync->error;
        return true;
}

/* A big upload's written part is synced in the writer's thread, a step at
 * a time, while the rest arrives. A virtual disk's flush costs about as
 * much as the data written since the previous one (50 ms per 64 MiB on
 * ours), and the sync at commit stops the event loop: it should find
 * only the last step left. Never fails: the sync at commit still decides. */
static void upload_sync_step(LocalUpload *u) {
        LocalAccount *a = u->account;
        if (u->written - u->synced < LOCAL_SYNC_STEP || !upload_sync_idle(u))
                return;
        if (!a->writer && bs_writer_new(a->tmp_fd, LOCAL_WRITER_QUEUE, &a->writer) < 0)
                return;
        int fd = fcntl(u->fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return;
        /* Only a job handed over exists: there is never one to wait for in vain. */
        if (!u->sync && !(u->sync = malloc(sizeof(*u->sync)))) {
                close(fd);
                return;
        }
        *u->sync = (BsWrite) { .kind = BS_WRITE_SYNC, .sync_fd = fd };
        bs_writer_submit(a->writer, u->sync);
        u->synced = u->written;
}

/* Wait for u's last sync: the first error any of them had. */
static int upload_sync_wait(LocalUpload *u) {
        if (u->sync && u->account->writer)
                bs_writer_wait_job(u->account->writer, u->sync);
        (void) upload_sync_idle(u);
        return u->sync_error;
}

int local_upload_write(LocalUpload *u, const void *p, size_t n, uint64_t limit) {
        int r = 0;
        if (n > limit || u->written > limit - n)
                return -EFBIG;
        if (u->fd < 0 && u->written + n > LOCAL_BUFFER_MAX)
                r = upload_spill(u);
        if (r < 0)
                return r;
        r = u->fd < 0 ? upload_buffer(u, p, n) : bs_write_sparse(u->fd, p, n);
        r = r ?: bs_sha_update(u->sha, p, n);
        if (r >= 0) {
                u->written += n;
                if (u->fd >= 0) {
                        bs_writeback_step(u->fd, &u->writeback, u->written);
                        upload_sync_step(u);
                }
        }
        return r;
}

LocalUpload *local_upload_free(LocalUpload *u) {
        if (!u)
                return NULL;
        (void) upload_sync_wait(u);
        free(u->sync);
        if (u->fd >= 0) {
                close(u->fd);
                (void) unlinkat(u->account->tmp_fd, u->name, 0);
        }
        free(u->buf);
        bs_sha_free(u->sha);
        free(u);
        return NULL;
}

/* Hand a buffered upload to the account's writer (started at the first),
 * or, if no thread can start, write it here. */
static int upload_hand_over(LocalAccount *a, LocalUpload *u, AccountPending *p, uint32_t mode, int64_t mtime_ns) {
        BsWrite *job = calloc(1, sizeof(*job));
        if (!job)
                return -ENOMEM;
        *job = (BsWrite) {
                .buf = TAKE_PTR(u->buf),
                .len = u->written,
                .mode = FILE_DISK_MODE(mode),
                .mtime_ns = mtime_ns,
                .keep_fd = a->n_pending < a->keep_fds,
        };
        u->buf_cap = 0;
        if (!a->writer && bs_writer_new(a->tmp_fd, LOCAL_WRITER_QUEUE, &a->writer) < 0)
                bs_write_now(a->tmp_fd, job);
        else
                bs_writer_submit(a->writer, job);
        p->write = job;
        p->tmp[0] = 0;
        p->fd = -1;
        return 0;
}

int local_put(LocalAccount *a, LocalUpload *u, const uint8_t device[BS_DEVICE_LEN],
                const char *path, uint64_t base, uint64_t size, uint32_t mode,
                int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        _cleanup_(closep) int pfd = -1;
        _cleanup_(freep) char *dup = NULL;
        uint8_t got[BS_SHA_LEN];
        const char *name;
        AccountEntry e;
        int r;

        r = bs_sha_final(u->sha, got);
        if (r < 0)
                goto out;
        if (u->written != size || memcmp(got, sha, BS_SHA_LEN) != 0) {
                r = -EBADMSG;
                goto out;
        }
        /* A sync that failed on the way is this upload's failure: the
         * kernel will not report it to the sync at commit again. */
        r = upload_sync_wait(u);
        if (r < 0)
                goto out;
        r = check_path(path);
        r = r ?: check_parent(a, path);
        if (r < 0)
                goto out;
        /* Checked again: another connection may have changed path during the upload. */
        r = lookup(a, path, &e);
        if (r < 0)
                goto out;
        if (e.kind != BS_KIND_NONE && e.kind != BS_KIND_FILE) {
                r = -ESTALE;
                goto out;
        }
        /* Already what was asked (a repeated upload whose ACK was lost,
         * or the same save again): done. The same content with another
         * mode or mtime on an old base is another computer's change,
         * not a repeat: CONFLICT, or that computer would record a state
         * the server does not have. */
        if (e.kind == BS_KIND_FILE && memcmp(e.sha, sha, BS_SHA_LEN) == 0 &&
            (e.mode & 07777) == (mode & 07777) && e.mtime_ns == mtime_ns) {
                *ret_version = e.version;
                r = 1;
                goto out;
        }
        if (base != e.version) {
                r = -ESTALE;
                goto out;
        }

        uint64_t seq = a->seq + 1;
        AccountEntry n = {
                .kind = BS_KIND_FILE,
                .size = size,
                .mode = mode & 07777,
                .mtime_ns = mtime_ns,
                .version = seq,
        };
        memcpy(n.sha, sha, BS_SHA_LEN);
        memcpy(n.device, device, BS_DEVICE_LEN);

        /* A buffered upload gets them from the writer. */
        if (u->fd >= 0 && fchmod(u->fd, FILE_DISK_MODE(mode)) < 0) {
                r = -errno;
                goto out;
        }
        r = u->fd >= 0 ? bs_set_mtime_fd(u->fd, mtime_ns) : 0;
        if (r < 0)
                goto out;
        /* The batch must not hold two files for one path, and stays bounded.
         * A file written in this transaction may be waiting: its version is
         * newer than the last commit (no need to search the batch). */
        bool maybe_waiting = e.kind == BS_KIND_FILE && e.version > a->committed_seq;
        if (maybe_waiting || a->n_pending >= ACCOUNT_PENDING_MAX) {
                r = local_flush_pending(a);
                if (r < 0)
                        goto out;
        }
        r = reserve_pending(a);
        if (r < 0)
                goto out;
        dup = strdup(path);
        if (!dup) {
                r = -ENOMEM;
                goto out;
        }
        /* A new path is only recorded: nothing left to refuse it. */
        r = e.kind == BS_KIND_NONE ? local_change_begin_checked(a) : local_change_begin(a);
        if (r < 0)
                goto out;
        /* The same content saved again costs no history space: the tree
         * keeps it. Only a version kept needs the parent open. */
        if (e.kind == BS_KIND_FILE && memcmp(e.sha, sha, BS_SHA_LEN) != 0) {
                pfd = open_parent(a, path, &name);
                r = pfd < 0 ? pfd : keep_version(a, pfd, name, path, &e, seq, STORE_LINK);
        } else if (e.kind == BS_KIND_FILE)
                r = local_history_close(a, path, false, seq);
        r = r ?: record(a, seq, device, BS_OP_PUT, path, NULL, &n);
        r = local_change_end(a, r);
        if (r >= 0) {
                /* Renamed into the tree by local_flush_pending(), after one sync. */
                AccountPending *p = &a->pending[a->n_pending];
                p->path = TAKE_PTR(dup);
                p->write = NULL;
                if (u->fd < 0)
                        r = upload_hand_over(a, u, p, mode, mtime_ns);
                else {
                        memcpy(p->tmp, u->name, sizeof(p->tmp));
                        /* A big file starts going to disk now, so the flush waits
                         * less; for small ones this costs more than it saves. */
                        if (size >= ACCOUNT_WRITEBACK_MIN)
                                (void) sync_file_range(u->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
                        /* Kept for the sync of a small batch, or to drop from the cache. */
                        if (a->n_pending < a->keep_fds)
                                p->fd = TAKE_FD(u->fd);
                        else {
                                p->fd = -1;
                                close(TAKE_FD(u->fd));
                        }
                }
                if (r < 0) {
                        /* Recorded in the transaction, but with no file: it must not commit. */
                        free(p->path);
                        if (!a->txn_error)
                                a->txn_error = r;
                        goto out;
                }
                a->n_pending++;
                a->pending_bytes += size;
                *ret_version = seq;
        }
out:
        local_upload_free(u);
        return r;
}

int local_attr(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path, uint64_t base,
                 uint32_t mode, int64_t mtime_ns, const uint8_t sha[BS_SHA_LEN], uint64_t *ret_version) {
        _cleanup_(closep) int pfd = -1, fd = -1;
        const char *name;
        AccountEntry e;
        int r;

        pfd = open_entry(a, path, &name, &e);
        if (pfd < 0)
                return pfd;
        if (e.kind != BS_KIND_FILE || memcmp(e.sha, sha, BS_SHA_LEN) != 0)
                return e.kind == BS_KIND_NONE ? -ENOENT : -ESTALE;
        if ((e.mode & 07777) == (mode & 07777) && e.mtime_ns == mtime_ns) {
                *ret_version = e.version;
                return 1;
        }
        if (base != e.version)
                return -ESTALE;
        /* Its file may still wait in tmp/: place it first. */
        if (e.version > a->committed_seq) {
                r = local_flush_pending(a);
                if (r < 0)
                        return r;
        }

        uint64_t seq = a->seq + 1;
        AccountEntry n = e;
        n.mode = mode & 07777;
        n.mtime_ns = mtime_ns;
        n.version = seq;
        memcpy(n.device, device, BS_DEVICE_LEN);
        r = local_change_begin(a);
        if (r < 0)
                return r;
        fd = openat(pfd, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                r = -errno;
        if (r >= 0 && fchmod(fd, FILE_DISK_MODE(mode)) < 0)
                r = -errno;
        r = r ?: bs_set_mtime_fd(fd, mtime_ns);
        /* The mtime is compared by recovery: durable before the commit. */
        r = r ?: local_defer_sync(a, fd);
        r = r ?: local_history_close(a, path, false, seq);
        r = r ?: record(a, seq, device, BS_OP_PUT, path, NULL, &n);
        r = local_change_end(a, r);
        if (r >= 0)
                *ret_version = seq;
        return r;
}

int local_mkdir(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                  uint64_t base, uint32_t mode, int64_t mtime_ns, uint64_t *ret_version) {
        _cleanup_(closep) int pfd = -1;
        const char *name;
        AccountEntry e;
        struct stat st;
        int r;

        pfd = open_entry(a, path, &name, &e);
        if (pfd < 0)
                return pfd;
        if (e.kind == BS_KIND_DIR && (e.mode & 07777) == (mode & 07777)) {
                *ret_version = e.version;
                return 1;
        }
        if (e.kind == BS_KIND_DIR) {
                /* A new mode for a directory: the last one sent wins, whatever
                 * its base, as a directory holds no content to lose. */
                uint64_t seq = a->seq + 1;
                AccountEntry n = e;
                n.mode = mode & 07777;
                n.version = seq;
                memcpy(n.device, device, BS_DEVICE_LEN);
                r = local_change_begin(a);
                if (r < 0)
                        return r;
                if (fchmodat(pfd, name, DIR_DISK_MODE(mode), 0) < 0)
                        r = -errno;
                r = r ?: local_history_close(a, path, false, seq);
                r = r ?: record(a, seq, device, BS_OP_MKDIR, path, NULL, &n);
                r = local_change_end(a, r);
                if (r >= 0)
                        *ret_version = seq;
                return r;
        }
        if (e.kind != BS_KIND_NONE || base != 0)
                return -ESTALE;

        uint64_t seq = a->seq + 1;
        AccountEntry n = { .kind = BS_KIND_DIR, .mode = mode & 07777, .mtime_ns = mtime_ns, .version = seq };
        memcpy(n.device, device, BS_DEVICE_LEN);

        /* A waiting upload's path holds a file entry, refused above: the
         * new name never collides with the batch. What fails on the disk
         * below fails before any record is written. */
        r = local_change_begin_checked(a);
        if (r < 0)
                return r;
        /* A directory left by a change that was not committed is reused. */
        if (mkdirat(pfd, name, 0700) < 0 &&
            (errno != EEXIST || fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)))
                r = -errno;
        if (r >= 0 && fchmodat(pfd, name, DIR_DISK_MODE(mode), 0) < 0)
                r = -errno;
        r = r ?: bs_set_mtime_at(pfd, name, mtime_ns);
        r = r ?: local_defer_sync(a, pfd);
        r = r ?: record(a, seq, device, BS_OP_MKDIR, path, NULL, &n);
        r = local_change_end(a, r);
        if (r >= 0)
                *ret_version = seq;
        return r;
}

int local_symlink(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                    uint64_t base, const char *target, int64_t mtime_ns, uint64_t *ret_version) {
        _cleanup_(closep) int pfd = -1;
        char tmp[64];
        const char *name;
        AccountEntry e;
        int r;

        r = check_path(path);
        if (r < 0)
                return r;
        size_t tlen = strlen(target);
        if (tlen == 0 || tlen > BS_PATH_MAX)
                return -EINVAL;
        pfd = open_parent(a, path, &name);
        if (pfd < 0)
                return pfd;
        r = lookup(a, path, &e);
        if (r < 0)
                return r;
        if (e.kind == BS_KIND_SYMLINK && e.target_len == tlen && memcmp(e.target, target, tlen) == 0) {
                *ret_version = e.version;
                return 1;
        }
        if ((e.kind != BS_KIND_NONE && e.kind != BS_KIND_SYMLINK) || base != e.version)
                return -ESTALE;

        uint64_t seq = a->seq + 1;
        AccountEntry n = { .kind = BS_KIND_SYMLINK, .size = tlen, .mode = 0777, .mtime_ns = mtime_ns,
                           .version = seq, .target_len = tlen };
        memcpy(n.target, target, tlen + 1);
        memcpy(n.device, device, BS_DEVICE_LEN);

        /* A waiting upload's path holds a file entry, refused above. */
        r = local_change_begin(a);
        if (r < 0)
                return r;
        /* Made in tmp/ and renamed over: the path never lacks an entry mid-way. */
        bs_temp_name(tmp, sizeof(tmp));
        if (symlinkat(target, a->tmp_fd, tmp) < 0)
                r = -errno;
        r = r ?: bs_set_mtime_at(a->tmp_fd, tmp, mtime_ns);
        if (r >= 0 && renameat(a->tmp_fd, tmp, pfd, name) < 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(a->tmp_fd, tmp, 0);
        r = r ?: local_defer_sync(a, pfd);
        r = r ?: local_history_close(a, path, false, seq);
        r = r ?: record(a, seq, device, BS_OP_SYMLINK, path, target, &n);
        r = local_change_end(a, r);
        if (r >= 0)
                *ret_version = seq;
        return r;
}

int local_delete(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *path,
                   uint64_t base, uint64_t *ret_version) {
        _cleanup_(closep) int pfd = -1;
        const char *name;
        AccountEntry e;
        int r;

        r = check_path(path);
        if (r < 0)
                return r;
        r = lookup(a, path, &e);
        if (r < 0)
                return r;
        if (e.kind == BS_KIND_NONE) {
                *ret_version = 0;
                return 1;
        }
        if (base != e.version)
                return -ESTALE;
        pfd = open_parent(a, path, &name);
        if (pfd < 0)
                return pfd;

        uint64_t seq = a->seq + 1;
        AccountEntry n = e;
        memcpy(n.device, device, BS_DEVICE_LEN);

        /* It may remove or move a directory the cache names. */
        local_forget_parent(a);
        /* The tree must hold every upload before it changes otherwise. */
        r = local_flush_pending(a);
        r = r ?: local_change_begin(a);
        if (r < 0)
                return r;
        r = keep_version(a, pfd, name, path, &e, seq, STORE_MOVE);
        r = r ?: local_defer_sync(a, pfd);
        r = r ?: local_entries_remove(a, path);
        r = r ?: record(a, seq, device, BS_OP_DELETE, path, NULL, &n);
        r = local_change_end(a, r);
        if (r >= 0)
                *ret_version = seq;
        return r;
}

/* Rewrite the entries below from to lie below to; they keep their versions
 * (an agent's base) but their state at the new path begins at seq. */
static int rebase_below(LocalAccount *a, const char *from, const char *to, uint64_t seq) {
        time_t now = local_change_time(a, seq);
        AccountRange range;
        sqlite3_stmt *st;
        char **paths = NULL;
        size_t n = 0, cap = 0;
        int r;

        r = local_stmt(a, STMT_ENTRY_LIST_BELOW, &st);
        if (r < 0)
                return r;
        local_range(&range, from);
        sqlite3_bind_blob(st, 1, range.lo, (int) range.len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, range.hi, (int) range.len, SQLITE_STATIC);
        /* Collected first: rows must not change under a running listing. */
        for (;;) {
                char p[BS_PATH_MAX + 1];
                int rc = sqlite3_step(st);
                if (rc == SQLITE_DONE)
                        break;
                if (rc != SQLITE_ROW) {
                        r = local_sqlite_errno(rc) ?: -EIO;
                        break;
                }
                r = local_column_path(st, 0, p, NULL);
                if (r < 0)
                        break;
                if (n == cap) {
                        cap = cap ? cap * 2 : 64;
                        char **np = reallocarray(paths, cap, sizeof(*paths));
                        if (!np) {
                                r = -ENOMEM;
                                break;
                        }
                        paths = np;
                }
                paths[n] = strdup(p);
                if (!paths[n]) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        sqlite3_reset(st);

        for (size_t i = 0; r >= 0 && i < n; i++) {
                char np[BS_PATH_MAX + 1];
                r = bs_path_rebase(paths[i], from, to, np, sizeof(np));
                if (r < 0)
                        break;
                r = local_stmt(a, STMT_ENTRY_RENAME, &st);
                if (r < 0)
                        break;
                local_bind_path(st, 1, paths[i]);
                local_bind_path(st, 2, np);
                sqlite3_bind_int64(st, 3, (sqlite3_int64) seq);
                sqlite3_bind_int64(st, 4, (sqlite3_int64) now);
                r = local_step_done(st);
        }
        for (size_t i = 0; i < n; i++)
                free(paths[i]);
        free(paths);
        return r;
}

int local_move(LocalAccount *a, const uint8_t device[BS_DEVICE_LEN], const char *from,
                 uint64_t base_from, const char *to, uint64_t base_to, uint64_t *ret_version) {
        _cleanup_(closep) int from_pfd = -1, to_pfd = -1;
        const char *from_name, *to_name;
        AccountEntry e, t;
        int r;

        r = check_path(from);
        r = r ?: check_path(to);
        if (r < 0)
                return r;
        /* Into itself, onto itself, or over its own parent. */
        if (bs_path_under(to, from) || bs_path_under(from, to))
                return -EINVAL;
        r = lookup(a, from, &e);
        r = r ?: lookup(a, to, &t);
        if (r < 0)
                return r;
        if (e.kind == BS_KIND_NONE || e.version != base_from || t.version != base_to)
                return -ESTALE;
        from_pfd = open_parent(a, from, &from_name);
        if (from_pfd < 0)
                return from_pfd;
        to_pfd = open_parent(a, to, &to_name);
        if (to_pfd < 0)
                return to_pfd;
        /* The rewritten paths below must still fit the path rules. */
        if (e.kind == BS_KIND_DIR && strlen(to) > strlen(from)) {
                AccountRange range;
                sqlite3_stmt *st;
                r = local_stmt(a, STMT_ENTRY_LIST_BELOW, &st);
                if (r < 0)
                        return r;
                local_range(&range, from);
                sqlite3_bind_blob(st, 1, range.lo, (int) range.len, SQLITE_STATIC);
                sqlite3_bind_blob(st, 2, range.hi, (int) range.len, SQLITE_STATIC);
                while (r >= 0 && sqlite3_step(st) == SQLITE_ROW)
                        if ((size_t) sqlite3_column_bytes(st, 0) + strlen(to) - strlen(from) > BS_PATH_MAX)
                                r = -EINVAL;
                sqlite3_reset(st);
                if (r < 0)
                        return r;
        }

        uint64_t seq = a->seq + 1;
        AccountEntry n = e;
        n.version = seq;
        memcpy(n.device, device, BS_DEVICE_LEN);

        /* It may remove or move a directory the cache names. */
        local_forget_parent(a);
        /* The tree must hold every upload before it changes otherwise. */
        r = local_flush_pending(a);
        r = r ?: local_change_begin(a);
        if (r < 0)
                return r;
        if (t.kind != BS_KIND_NONE) {
                r = keep_version(a, to_pfd, to_name, to, &t, seq, STORE_MOVE);
                r = r ?: local_entries_remove(a, to);
        }
        if (r >= 0 && renameat(from_pfd, from_name, to_pfd, to_name) < 0)
                r = -errno;
        r = r ?: local_defer_sync(a, to_pfd);
        r = r ?: local_defer_sync(a, from_pfd);
        r = r ?: local_history_close(a, from, true, seq);
        r = r ?: rebase_below(a, from, to, seq);
        r = r ?: local_entries_remove(a, from);
        r = r ?: local_entry_set(a, to, &n);
        r = r ?: record(a, seq, device, BS_OP_MOVE, from, to, &n);
        r = local_change_end(a, r);
        if (r >= 0)
                *ret_version = seq;
        return r;
}
