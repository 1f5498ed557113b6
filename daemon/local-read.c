/* account-read.c - reading an account: PULL cursors and content for GET
 *
 * A PULL answer may be larger than any buffer we want to hold, so it is
 * read lazily as the connection drains. The cursor uses its own database
 * connection inside one read transaction: in WAL mode that pins a
 * consistent snapshot while the account's main connection keeps
 * committing changes of other sessions.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local-internal.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-readahead.h"

struct LocalContent {
        AccountContent base;
        int fd;
        bool cold; /* read into the page cache for this GET: dropped when done */
};

struct LocalCursor {
        AccountCursor base;
        sqlite3 *db;
        sqlite3_stmt *stmt;
        uint64_t seq;
        bool snapshot;
};

LocalCursor *local_cursor_free(LocalCursor *c) {
        if (!c)
                return NULL;
        sqlite3_finalize(c->stmt);
        local_reader_close(c->db);
        free(c);
        return NULL;
}

int local_cursor_new(LocalAccount *a, uint64_t since, LocalCursor **ret) {
        _cleanup_(local_cursor_freep) LocalCursor *c = NULL;
        sqlite3_stmt *st = NULL;
        int r, rc;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->base.ops = &local_ops;
        r = local_reader_open(a, &c->db, &c->seq);
        if (r < 0)
                return r;
        /* From before the pruned part of the log: the whole tree instead. */
        rc = sqlite3_prepare_v2(c->db, "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'log_floor'), 0)",
                                -1, &st, NULL);
        uint64_t floor = 0;
        if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
                floor = (uint64_t) sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;
        c->snapshot = since == 0 || since < floor;
        if (c->snapshot)
                rc = sqlite3_prepare_v2(c->db,
                                        "SELECT path, kind, size, mode, mtime_ns, sha, target, version, device "
                                        "FROM entries ORDER BY path",
                                        -1, &c->stmt, NULL);
        else
                rc = sqlite3_prepare_v2(c->db,
                                        "SELECT seq, device, op, kind, path, path2, size, mode, mtime_ns, sha "
                                        "FROM log WHERE seq > ?1 ORDER BY seq",
                                        -1, &c->stmt, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc) ?: -EIO;
        if (!c->snapshot)
                sqlite3_bind_int64(c->stmt, 1, (sqlite3_int64) since);
        *ret = TAKE_PTR(c);
        return 0;
}

uint64_t local_cursor_seq(const LocalCursor *c) {
        return c->seq;
}

bool local_cursor_is_snapshot(const LocalCursor *c) {
        return c->snapshot;
}

int local_cursor_next(LocalCursor *c, BsRecord *rec) {
        sqlite3_stmt *st = c->stmt;
        int rc = sqlite3_step(st);
        int r;

        if (rc == SQLITE_DONE)
                return 0;
        if (rc != SQLITE_ROW)
                return local_sqlite_errno(rc) ?: -EIO;

        memset(rec, 0, offsetof(BsRecord, path));
        if (c->snapshot) {
                rec->kind = (uint8_t) sqlite3_column_int(st, 1);
                rec->op = rec->kind == BS_KIND_DIR       ? BS_OP_MKDIR
                          : rec->kind == BS_KIND_SYMLINK ? BS_OP_SYMLINK
                                                         : BS_OP_PUT;
                rec->size = (uint64_t) sqlite3_column_int64(st, 2);
                rec->mode = (uint32_t) sqlite3_column_int64(st, 3);
                rec->mtime_ns = sqlite3_column_int64(st, 4);
                local_column_fixed(st, 5, rec->sha, BS_SHA_LEN);
                rec->seq = (uint64_t) sqlite3_column_int64(st, 7);
                local_column_fixed(st, 8, rec->device, BS_DEVICE_LEN);
                r = local_column_path(st, 0, rec->path, &rec->path_len);
                r = r ?: local_column_path(st, 6, rec->path2, &rec->path2_len);
        } else {
                rec->seq = (uint64_t) sqlite3_column_int64(st, 0);
                local_column_fixed(st, 1, rec->device, BS_DEVICE_LEN);
                rec->op = (uint8_t) sqlite3_column_int(st, 2);
                rec->kind = (uint8_t) sqlite3_column_int(st, 3);
                rec->size = (uint64_t) sqlite3_column_int64(st, 6);
                rec->mode = (uint32_t) sqlite3_column_int64(st, 7);
                rec->mtime_ns = sqlite3_column_int64(st, 8);
                local_column_fixed(st, 9, rec->sha, BS_SHA_LEN);
                r = local_column_path(st, 4, rec->path, &rec->path_len);
                r = r ?: local_column_path(st, 5, rec->path2, &rec->path2_len);
        }
        return r < 0 ? r : 1;
}

/* Open a stored file and make sure it is what the metadata promises. */
static int open_checked(int dir_fd, const char *path, uint64_t size) {
        struct stat st;
        int fd = bs_open_read_beneath(dir_fd, path);
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size != size) {
                close(fd);
                return -ENOENT;
        }
        return fd;
}

static int content_new(int fd, const AccountContentInfo *info, LocalContent **ret) {
        LocalContent *c = malloc(sizeof(*c));
        if (!c) {
                close(fd);
                return -ENOMEM;
        }
        *c = (LocalContent) { .base = { .ops = &local_ops, .info = *info }, .fd = fd };
        *ret = c;
        return 0;
}

/* Try the rows of a sha lookup (path/stored, size, mode, mtime, version) in turn. */
static int open_from_rows(LocalAccount *a, unsigned id, int dir_fd, const uint8_t sha[BS_SHA_LEN],
                          LocalContent **ret) {
        sqlite3_stmt *st;
        int r = local_stmt(a, id, &st);
        if (r < 0)
                return r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        r = -ENOENT;
        while (sqlite3_step(st) == SQLITE_ROW) {
                char p[BS_PATH_MAX + 1];
                uint64_t size = (uint64_t) sqlite3_column_int64(st, 1);
                /* versions.stored is TEXT, entries.path a BLOB: both are bytes here. */
                const void *s = sqlite3_column_blob(st, 0);
                size_t n = (size_t) sqlite3_column_bytes(st, 0);
                if (n > BS_PATH_MAX)
                        continue;
                if (n > 0)
                        memcpy(p, s, n);
                p[n] = 0;
                /* A version without a stored name is in the store. */
                int fd = n == 0 && id == STMT_VERSION_BY_SHA ? store_get(a->store, sha, size)
                         : n == 0                            ? -ENOENT
                                                             : open_checked(dir_fd, p, size);
                if (fd < 0)
                        continue;
                r = content_new(fd, &(AccountContentInfo) {
                                        .size = size,
                                        .mode = (uint32_t) sqlite3_column_int64(st, 2),
                                        .mtime_ns = sqlite3_column_int64(st, 3),
                                        .version = (uint64_t) sqlite3_column_int64(st, 4),
                                }, ret);
                break;
        }
        sqlite3_reset(st);
        return r;
}

int local_content_open(LocalAccount *a, const uint8_t sha[BS_SHA_LEN], const char *path,
                         LocalContent **ret) {
        AccountEntry e;
        int r;

        if (path && path[0] && local_entry_get(a, path, &e) >= 0 && e.kind == BS_KIND_FILE &&
            memcmp(e.sha, sha, BS_SHA_LEN) == 0) {
                int fd = open_checked(a->tree_fd, path, e.size);
                if (fd >= 0)
                        return content_new(fd, &(AccountContentInfo) { .size = e.size, .mode = e.mode,
                                                                       .mtime_ns = e.mtime_ns, .version = e.version },
                                           ret);
        }
        (void) local_sha_index(a);
        r = open_from_rows(a, STMT_ENTRY_BY_SHA, a->tree_fd, sha, ret);
        if (r != -ENOENT)
                return r;
        return open_from_rows(a, STMT_VERSION_BY_SHA, a->versions_fd, sha, ret);
}

LocalContent *local_content_free(LocalContent *c) {
        if (!c)
                return NULL;
        /* A join or restore reads many files once: new pages for each cost
         * more than reusing those of the files before. */
        if (c->cold)
                (void) posix_fadvise(c->fd, 0, 0, POSIX_FADV_DONTNEED);
        close(c->fd);
        free(c);
        return NULL;
}

const AccountContentInfo *local_content_info(const LocalContent *c) {
        return &c->base.info;
}

int local_content_read(LocalContent *c, uint64_t off, void *buf, size_t n) {
        if (off > c->base.info.size || n > c->base.info.size - off)
                return -EBADMSG;
        ssize_t got = bs_pread_full(c->fd, buf, n, (off_t) off);
        if (got < 0)
                return (int) got;
        return (size_t) got == n ? 0 : -EBADMSG;
}

void local_content_prefetch(LocalContent *c, uint64_t len, BsReadahead *ra) {
        /* What is cached is read as it is. Advice only: a failure costs
         * speed, never correctness. */
        c->cold = bs_cache_probe(c->fd) == 0;
        if (c->cold)
                bs_readahead(ra, c->fd, MIN(len, c->base.info.size));
}
