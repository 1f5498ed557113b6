/* cluster-chunks.c - big contents on the cluster as content-defined chunks
 *
 * A content of CLUSTER_CHUNKED_MIN bytes or more is cut as the wire cuts
 * it (common/bs-chunk.h) and each chunk is one object, kept once per
 * account: an edit stores the chunks it changed, a kept version costs
 * what differs from the others. Its recipe (bs_objects.recipe) lists the
 * chunks in order, CLUSTER_RECIPE_ENTRY bytes each: the length (4 bytes,
 * big-endian) and the SHA-256.
 *
 * The cut is FastCDC as on the wire, with sizes 16 times larger
 * (CLUSTER_CHUNK_*): a store's cost is per object, and 64 KiB chunks made
 * a first backup of big files four times as many objects as files.
 *
 * An upload is cut while it arrives: what was written to the spool file
 * is mapped (from the page cache, no copy) and cut once a chunk's maximum
 * is there, so no pass over a big file blocks the loop at the end.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bs-hash.h"
#include "bs-macro.h"
#include "cluster-internal.h"

void cluster_recipe_done(ClusterRecipe *r) {
        free(r->off);
        free(r->sha);
        *r = (ClusterRecipe) {};
}

/* Room for one more chunk; off[] keeps one more entry, the end. */
static int recipe_grow(ClusterRecipe *r) {
        if (r->n < r->cap)
                return 0;
        size_t cap = r->cap ? r->cap * 2 : 64;
        uint64_t *off = reallocarray(r->off, cap + 1, sizeof(*off));
        if (!off)
                return -ENOMEM;
        r->off = off;
        uint8_t(*sha)[BS_SHA_LEN] = reallocarray(r->sha, cap, sizeof(*sha));
        if (!sha)
                return -ENOMEM;
        r->sha = sha;
        if (r->cap == 0)
                r->off[0] = 0;
        r->cap = cap;
        return 0;
}

int cluster_recipe_add(ClusterRecipe *r, uint32_t len, const uint8_t sha[BS_SHA_LEN]) {
        if (len == 0 || len > CLUSTER_CHUNK_MAX)
                return -EINVAL;
        int k = recipe_grow(r);
        if (k < 0)
                return k;
        memcpy(r->sha[r->n], sha, BS_SHA_LEN);
        r->off[r->n + 1] = r->off[r->n] + len;
        r->n++;
        return 0;
}

int cluster_recipe_encode(const ClusterRecipe *r, uint8_t **ret, size_t *ret_len) {
        uint8_t *p = malloc(r->n ? r->n * CLUSTER_RECIPE_ENTRY : 1);
        if (!p)
                return -ENOMEM;
        for (size_t i = 0; i < r->n; i++) {
                uint32_t be = htobe32((uint32_t) (r->off[i + 1] - r->off[i]));
                memcpy(p + i * CLUSTER_RECIPE_ENTRY, &be, 4);
                memcpy(p + i * CLUSTER_RECIPE_ENTRY + 4, r->sha[i], BS_SHA_LEN);
        }
        *ret = p;
        *ret_len = r->n * CLUSTER_RECIPE_ENTRY;
        return 0;
}

int cluster_recipe_decode(const uint8_t *p, size_t n, uint64_t size, ClusterRecipe *ret) {
        ClusterRecipe r = {};
        if (n == 0 || n % CLUSTER_RECIPE_ENTRY != 0)
                return -EBADMSG;
        for (size_t i = 0; i < n; i += CLUSTER_RECIPE_ENTRY) {
                uint32_t be;
                memcpy(&be, p + i, 4);
                int k = cluster_recipe_add(&r, be32toh(be), p + i + 4);
                if (k < 0) {
                        cluster_recipe_done(&r);
                        return k == -EINVAL ? -EBADMSG : k;
                }
        }
        if (r.off[r.n] != size) {
                cluster_recipe_done(&r);
                return -EBADMSG;
        }
        *ret = r;
        return 0;
}

size_t cluster_recipe_find(const ClusterRecipe *r, uint64_t off) {
        size_t lo = 0, hi = r->n;
        /* The last chunk that begins at or before off. */
        while (hi - lo > 1) {
                size_t mid = lo + (hi - lo) / 2;
                if (r->off[mid] <= off)
                        lo = mid;
                else
                        hi = mid;
        }
        return lo;
}

void cluster_cutter_done(ClusterCutter *c) {
        cluster_recipe_done(&c->recipe);
        *c = (ClusterCutter) {};
}

/* Cut the chunk that begins at c->done, of the avail bytes there. */
static int cut_one(ClusterCutter *c, int fd, size_t avail) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);
        uint64_t start = c->done - c->done % page;
        size_t skip = (size_t) (c->done - start);
        void *m = mmap(NULL, skip + avail, PROT_READ, MAP_SHARED, fd, (off_t) start);
        if (m == MAP_FAILED)
                return -errno;
        const uint8_t *p = (const uint8_t *) m + skip;
        size_t n = bs_chunk_next(&c->chunker, p, avail);
        uint8_t sha[BS_SHA_LEN];
        int r = bs_sha_buf(p, n, sha);
        r = r ?: cluster_recipe_add(&c->recipe, (uint32_t) n, sha);
        munmap(m, skip + avail);
        if (r >= 0)
                c->done += n;
        return r;
}

int cluster_cutter_feed(ClusterCutter *c, int fd, uint64_t written, bool final) {
        if (!c->cutting) {
                if (written < CLUSTER_CHUNKED_MIN)
                        return 0; /* a small content stays one object */
                int r = bs_chunker_init(&c->chunker, CLUSTER_CHUNK_MIN, CLUSTER_CHUNK_AVG, CLUSTER_CHUNK_MAX);
                if (r < 0)
                        return r;
                c->cutting = true;
        }
        /* The cut never looks past a chunk's maximum: cut while that much is there. */
        while (written > c->done && (final || written - c->done >= CLUSTER_CHUNK_MAX)) {
                int r = cut_one(c, fd, (size_t) MIN(written - c->done, (uint64_t) CLUSTER_CHUNK_MAX));
                if (r < 0)
                        return r;
        }
        return 0;
}
