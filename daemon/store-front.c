/* store-front.c - a content in either form: get, has, remove, usage
 *
 * A content is kept as a plain file (store.c) or, once big contents were
 * cut into the chunk store, as a recipe (store-chunks.c); for a while
 * both. Reading, asking for and removing a content, and counting the
 * space kept, take either form, so they sit here, above both; the chunk
 * code never calls up into them.
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

int store_get(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t size) {
        char n[STORE_NAME_LEN + 1];
        struct stat st;
        store_content_name(sha, n);
        int fd = openat(s->fd, n, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? store_get_chunked(s, sha, size) : -errno;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size != size) {
                close(fd);
                return -ENOENT;
        }
        return fd;
}

bool store_has(Store *s, const uint8_t sha[BS_SHA_LEN]) {
        char n[STORE_RECIPE_NAME_LEN + 1];
        store_content_name(sha, n);
        if (faccessat(s->fd, n, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                return true;
        store_recipe_name(sha, n);
        return faccessat(s->fd, n, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Remove content/name if there: 1 and the space it frees, 0 when absent, -errno. */
static int remove_name(Store *s, const char *name, uint64_t *freed) {
        struct stat st;
        if (fstatat(s->fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (unlinkat(s->fd, name, 0) < 0)
                return errno == ENOENT ? 0 : -errno;
        /* A content still linked elsewhere (the tree) frees nothing. */
        *freed += st.st_nlink <= 1 ? (uint64_t) st.st_blocks * 512 : 0;
        return 1;
}

int store_remove(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t *freed) {
        char n[STORE_RECIPE_NAME_LEN + 1];
        uint64_t f = 0;
        if (s->pack.active && memcmp(s->pack.sha, sha, BS_SHA_LEN) == 0)
                store_pack_abort(s);
        store_content_name(sha, n);
        int r1 = remove_name(s, n, &f);
        if (r1 < 0)
                return r1;
        /* The recipe's chunks go with the sweep (store_gc_*()). */
        store_recipe_name(sha, n);
        int r2 = remove_name(s, n, &f);
        if (r2 < 0)
                return r2;
        if (r1 == 0 && r2 == 0)
                return -ENOENT;
        if (r2 > 0)
                s->gc_needed = true;
        store_mark_dirty(s, sha[0]);
        if (freed)
                *freed = f;
        return 0;
}

int store_usage(Store *s, uint64_t *bytes, uint64_t *count) {
        uint64_t b = 0, n = 0;
        for (unsigned fan = 0; fan < 256; fan++) {
                char name[3];
                BsDirent *v = NULL;
                size_t nv = 0;
                bs_hex((const uint8_t[]) { (uint8_t) fan }, 1, name);
                _cleanup_(closep) int fd = openat(s->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) {
                        if (errno == ENOENT)
                                continue;
                        return -errno;
                }
                int r = bs_dir_list(fd, &v, &nv);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < nv; i++) {
                        struct stat st;
                        if (fstatat(fd, v[i].name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                                continue;
                        /* A content is a plain file or a recipe; a content
                         * in both forms (packing) counts once. */
                        size_t len = strlen(v[i].name);
                        char plain[2 * BS_SHA_LEN + 1];
                        if (len == 2 * BS_SHA_LEN)
                                n++;
                        else if (len == 2 * BS_SHA_LEN + strlen(STORE_RECIPE_SUFFIX) &&
                                 strcmp(v[i].name + 2 * BS_SHA_LEN, STORE_RECIPE_SUFFIX) == 0) {
                                memcpy(plain, v[i].name, 2 * BS_SHA_LEN);
                                plain[2 * BS_SHA_LEN] = 0;
                                n += faccessat(fd, plain, F_OK, AT_SYMLINK_NOFOLLOW) < 0;
                        }
                        if (st.st_nlink <= 1)
                                b += (uint64_t) st.st_blocks * 512;
                }
                bs_dir_list_free(v, nv);
        }
        *bytes = b + store_chunks_usage(s);
        if (count)
                *count = n;
        return 0;
}
