/* chunk-store.c - chunks as plain files: chunks/<2 hex>/<64 hex>
 *
 * A put writes .<64 hex>.tmp beside its final name without a sync; the
 * commit syncs the file system once, renames every staged chunk and syncs
 * again, so packing a 1 GiB version costs two syncs, not 16,000. A crash
 * before the rename leaves .tmp files, which chunk_list() removes; after
 * it, complete chunks no recipe names yet, which the sweep removes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "chunk-store.h"

#define NAME_LEN (2 + 1 + 2 * BS_SHA_LEN)         /* "ab/abcd..." */
#define TMP_LEN (2 + 1 + 1 + 2 * BS_SHA_LEN + 4) /* "ab/.abcd....tmp" */

struct ChunkStore {
        int fd; /* chunks/ */
        uint8_t *staged; /* BS_SHA_LEN each */
        size_t n_staged, cap_staged;
        uint64_t staged_bytes;
};

int chunk_store_open(int dir_fd, ChunkStore **ret) {
        ChunkStore *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        if (mkdirat(dir_fd, "chunks", 0700) < 0 && errno != EEXIST) {
                free(c);
                return -errno;
        }
        c->fd = openat(dir_fd, "chunks", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (c->fd < 0) {
                int r = -errno;
                free(c);
                return r;
        }
        *ret = c;
        return 0;
}

ChunkStore *chunk_store_free(ChunkStore *c) {
        if (!c)
                return NULL;
        chunk_store_abort(c);
        free(c->staged);
        if (c->fd >= 0)
                close(c->fd);
        free(c);
        return NULL;
}

static void chunk_name(const uint8_t sha[BS_SHA_LEN], char out[NAME_LEN + 1]) {
        bs_hex(sha, 1, out);
        out[2] = '/';
        bs_hex(sha, BS_SHA_LEN, out + 3);
}

static void tmp_name(const uint8_t sha[BS_SHA_LEN], char out[TMP_LEN + 1]) {
        bs_hex(sha, 1, out);
        out[2] = '/';
        out[3] = '.';
        bs_hex(sha, BS_SHA_LEN, out + 4);
        memcpy(out + 4 + 2 * BS_SHA_LEN, ".tmp", 5);
}

bool chunk_has(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], uint64_t size) {
        char n[NAME_LEN + 1];
        struct stat st;
        chunk_name(sha, n);
        return fstatat(c->fd, n, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
               (size == UINT64_MAX || (uint64_t) st.st_size == size);
}

int chunk_put(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], const void *p, size_t n) {
        char t[TMP_LEN + 1], fan[3];
        if (chunk_has(c, sha, n))
                return 1;
        tmp_name(sha, t);
        memcpy(fan, t, 2);
        fan[2] = 0;
        if (mkdirat(c->fd, fan, 0700) < 0 && errno != EEXIST)
                return -errno;
        /* O_EXCL: a chunk staged already (twice in one file) is not
         * written again; one an interrupted put left is. */
        int fd = openat(c->fd, t, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno == EEXIST) {
                for (size_t i = 0; i < c->n_staged; i++)
                        if (memcmp(c->staged + i * BS_SHA_LEN, sha, BS_SHA_LEN) == 0)
                                return 1;
                if (unlinkat(c->fd, t, 0) < 0)
                        return -errno;
                fd = openat(c->fd, t, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        }
        if (fd < 0)
                return -errno;
        int r = bs_write_all(fd, p, n);
        close(fd);
        if (r == 0 && c->n_staged == c->cap_staged) {
                size_t cap = c->cap_staged ? 2 * c->cap_staged : 256;
                uint8_t *v = realloc(c->staged, cap * BS_SHA_LEN);
                if (!v)
                        r = -ENOMEM;
                else {
                        c->staged = v;
                        c->cap_staged = cap;
                }
        }
        if (r < 0) {
                (void) unlinkat(c->fd, t, 0);
                return r;
        }
        memcpy(c->staged + c->n_staged++ * BS_SHA_LEN, sha, BS_SHA_LEN);
        c->staged_bytes += n;
        return 0;
}

/* Each staged chunk synced on its own (see chunk_store_commit()). */
static int sync_staged(ChunkStore *c) {
        for (size_t i = 0; i < c->n_staged; i++) {
                char t[TMP_LEN + 1];
                tmp_name(c->staged + i * BS_SHA_LEN, t);
                int r = bs_sync_at(c->fd, t, -1, false);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The fan-out directories the staged chunks were named in, each once,
 * then chunks/ for the fan-out directories made for them. */
static int sync_fans(ChunkStore *c) {
        uint8_t done[256 / 8] = {};
        for (size_t i = 0; i < c->n_staged; i++) {
                uint8_t fan = c->staged[i * BS_SHA_LEN];
                char name[3];
                if (done[fan / 8] & (1u << (fan % 8)))
                        continue;
                done[fan / 8] |= (uint8_t) (1u << (fan % 8));
                bs_hex(&fan, 1, name);
                _cleanup_(closep) int fd = openat(c->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                int r = fd < 0 ? -errno : bs_fsync_dir(fd);
                if (r < 0)
                        return r;
        }
        return bs_fsync_dir(c->fd);
}

int chunk_store_commit(ChunkStore *c) {
        if (c->n_staged == 0)
                return 0;
        /* Every staged byte on disk before any chunk gets its name: one
         * syncfs() before the renames and one after, unless other programs
         * have much more data waiting for the disk (see bs_syncfs_cheap()):
         * then each chunk and directory is synced on its own. */
        bool bulk = bs_syncfs_cheap(c->staged_bytes);
        int r = bulk ? (syncfs(c->fd) < 0 ? -errno : 0) : sync_staged(c);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_staged; i++) {
                char t[TMP_LEN + 1], n[NAME_LEN + 1];
                tmp_name(c->staged + i * BS_SHA_LEN, t);
                chunk_name(c->staged + i * BS_SHA_LEN, n);
                if (renameat(c->fd, t, c->fd, n) < 0)
                        return -errno;
        }
        /* The names, and the fan-out directories made for them. */
        r = bulk ? (syncfs(c->fd) < 0 ? -errno : 0) : sync_fans(c);
        c->n_staged = 0;
        c->staged_bytes = 0;
        return r;
}

void chunk_store_abort(ChunkStore *c) {
        for (size_t i = 0; i < c->n_staged; i++) {
                char t[TMP_LEN + 1];
                tmp_name(c->staged + i * BS_SHA_LEN, t);
                (void) unlinkat(c->fd, t, 0);
        }
        c->n_staged = 0;
        c->staged_bytes = 0;
}

int chunk_get(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], void *buf, size_t n) {
        char name[NAME_LEN + 1];
        struct stat st;
        chunk_name(sha, name);
        _cleanup_(closep) int fd = openat(c->fd, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != n)
                return -EBADMSG;
        ssize_t got = bs_pread_full(fd, buf, n, 0);
        if (got < 0)
                return (int) got;
        return (size_t) got == n ? 0 : -EBADMSG;
}

int chunk_remove(ChunkStore *c, const uint8_t sha[BS_SHA_LEN], uint64_t *freed) {
        char n[NAME_LEN + 1];
        struct stat st;
        chunk_name(sha, n);
        if (fstatat(c->fd, n, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        if (unlinkat(c->fd, n, 0) < 0)
                return -errno;
        if (freed)
                *freed = (uint64_t) st.st_blocks * 512;
        return 0;
}

int chunk_list(ChunkStore *c, unsigned fan, chunk_list_fn fn, void *userdata) {
        char dir[3];
        BsDirent *v = NULL;
        size_t n = 0;
        bs_hex((const uint8_t[]) { (uint8_t) fan }, 1, dir);
        _cleanup_(closep) int dfd = openat(c->fd, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return errno == ENOENT ? 0 : -errno;
        int r = bs_dir_list(dfd, &v, &n);
        for (size_t i = 0; r >= 0 && i < n; i++) {
                uint8_t sha[BS_SHA_LEN];
                struct stat st;
                const char *name = v[i].name;
                if (name[0] == '.') {
                        /* Staged by a put that was never committed (in
                         * this process, chunk_list() runs between packs). */
                        if (c->n_staged == 0)
                                (void) unlinkat(dfd, name, 0);
                        continue;
                }
                if (bs_unhex(name, sha, BS_SHA_LEN) < 0 || sha[0] != fan ||
                    fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                r = fn(userdata, sha, (uint64_t) st.st_size, (uint64_t) st.st_blocks * 512);
        }
        bs_dir_list_free(v, n);
        return r;
}
