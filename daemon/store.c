/* store.c - content by SHA-256 as plain files: content/<2 hex>/<64 hex>
 *
 * Puts are renames and links within one file system, so they cost no
 * copy and are atomic: a content file is complete or absent. Their
 * directory entries are made durable by store_sync(), which the account
 * calls before it commits the rows that name them. The store's lowest
 * layer, with its state's life: it reads no recipe. A big content may
 * later be cut into the chunk store and kept as a recipe beside
 * (store-chunks.c); store-front.c gets, finds and removes a content in
 * either form.
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
#include "store-internal.h"

/* From this many fan-out directories to sync, one syncfs() instead. */
#define STORE_BULK_MIN 16

int store_open(int dir_fd, Store **ret) {
        Store *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if (mkdirat(dir_fd, "content", 0700) < 0 && errno != EEXIST) {
                free(s);
                return -errno;
        }
        s->fd = openat(dir_fd, "content", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (s->fd < 0) {
                int r = -errno;
                free(s);
                return r;
        }
        s->pack.fd = -1;
        s->gc_needed = true;
        int r = chunk_store_open(dir_fd, &s->chunks);
        if (r < 0) {
                store_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        store_pack_abort(s);
        chunk_store_free(s->chunks);
        free(s->gc_refs);
        if (s->fd >= 0)
                close(s->fd);
        free(s);
        return NULL;
}

void store_pack_reset(Store *s) {
        StorePack *p = &s->pack;
        if (p->fd >= 0)
                close(p->fd);
        free(p->buf);
        free(p->recipe);
        *p = (StorePack) { .fd = -1 };
}

void store_pack_abort(Store *s) {
        StorePack *p = &s->pack;
        if (p->active)
                s->gc_needed = true; /* chunks it shared may be committed already */
        if (s->chunks)
                chunk_store_abort(s->chunks);
        store_pack_reset(s);
}

/* STORE_MOVE onto a content the store has already. Often that is the
 * very file: an earlier STORE_LINK whose transaction a crash undid left
 * a second name for it here, and rename() between two names of one file
 * does nothing, which would leave the name in the tree. Then that name
 * is removed; another copy is replaced. */
static int move_onto(Store *s, int dfd, const char *name, const char *n) {
        struct stat from, to;
        if (fstatat(dfd, name, &from, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        if (fstatat(s->fd, n, &to, AT_SYMLINK_NOFOLLOW) == 0 && from.st_dev == to.st_dev &&
            from.st_ino == to.st_ino)
                return unlinkat(dfd, name, 0) < 0 ? -errno : 0;
        return renameat(dfd, name, s->fd, n) < 0 ? -errno : 0;
}

int store_put(Store *s, const uint8_t sha[BS_SHA_LEN], int dfd, const char *name, StorePut how) {
        char n[STORE_NAME_LEN + 1], fan[3];
        store_content_name(sha, n);
        memcpy(fan, n, 2);
        fan[2] = 0;
        for (int attempt = 0;; attempt++) {
                int r = how == STORE_LINK ? linkat(dfd, name, s->fd, n, 0)
                                          : renameat2(dfd, name, s->fd, n, RENAME_NOREPLACE);
                if (r < 0 && how == STORE_MOVE && (errno == EEXIST || errno == EINVAL))
                        r = move_onto(s, dfd, name, n) < 0 ? -1 : 0;
                if (r == 0) {
                        store_mark_dirty(s, sha[0]);
                        return 0;
                }
                if (errno == EEXIST && how == STORE_LINK)
                        return 1;
                if (errno != ENOENT || attempt > 0)
                        return -errno;
                /* The source or the fan-out directory is missing: which? */
                if (faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                        return -ENOENT;
                if (mkdirat(s->fd, fan, 0700) < 0 && errno != EEXIST)
                        return -errno;
                s->top_dirty = true;
        }
}

int store_sync(Store *s) {
        int r = 0;
        if (s->n_dirty >= STORE_BULK_MIN && bs_syncfs_cheap(0))
                r = syncfs(s->fd) < 0 ? -errno : 0;
        else
                for (unsigned fan = 0; r >= 0 && fan < 256; fan++) {
                        char name[3];
                        if (!(s->dirty[fan / 8] & (1u << (fan % 8))))
                                continue;
                        bs_hex((const uint8_t[]) { (uint8_t) fan }, 1, name);
                        _cleanup_(closep) int fd = openat(s->fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        r = fd < 0 ? -errno : bs_fsync_dir(fd);
                }
        if (r >= 0 && s->top_dirty)
                r = bs_fsync_dir(s->fd);
        if (r >= 0) {
                memset(s->dirty, 0, sizeof(s->dirty));
                s->n_dirty = 0;
                s->top_dirty = false;
        }
        return r;
}
