/* cluster-chunks.c - big contents on the cluster as content-defined chunks
 *
 * A content of CLUSTER_CHUNKED_MIN bytes or more is cut as the wire cuts
 * it (common/bs-chunk.h) and each chunk is one object, kept once per
 * account: an edit stores the chunks it changed, a kept version costs
 * what differs from the others. Its recipe (bs_objects.recipe) lists the
 * chunks in order, CLUSTER_RECIPE_ENTRY bytes each: the length (4 bytes,
 * big-endian) and the SHA-256.
 *
 * An upload is cut while it arrives: what was written to the spool file
 * is read back (from the page cache) and cut once at least a chunk's
 * maximum is there, so no pass over a big file blocks the loop at the end.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-hash.h"
#include "bs-macro.h"
#include "cluster-internal.h"

void cluster_chunk_key(const char *id, const uint8_t sha[BS_SHA_LEN], char *key) {
        char hex[2 * BS_SHA_LEN + 1];
        bs_hex(sha, BS_SHA_LEN, hex);
        snprintf(key, S3_KEY_MAX, "accounts/%s/k/%s", id, hex);
}

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
        if (len == 0 || len > BS_CHUNK_MAX)
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
        free(c->buf);
        cluster_recipe_done(&c->recipe);
        *c = (ClusterCutter) {};
}

/* Cut what the buffer holds: all of it at the end, else while a whole
 * chunk's maximum is there (the cut never looks further). */
static int cut(ClusterCutter *c, bool final) {
        size_t pos = 0;
        while (c->len - pos > 0 && (final || c->len - pos >= BS_CHUNK_MAX)) {
                size_t n = bs_chunk_next(&c->chunker, c->buf + pos, c->len - pos);
                uint8_t sha[BS_SHA_LEN];
                int r = bs_sha_buf(c->buf + pos, n, sha);
                r = r ?: cluster_recipe_add(&c->recipe, (uint32_t) n, sha);
                if (r < 0)
                        return r;
                pos += n;
        }
        memmove(c->buf, c->buf + pos, c->len - pos);
        c->len -= pos;
        return 0;
}

int cluster_cutter_feed(ClusterCutter *c, int fd, uint64_t written, bool final) {
        if (!c->buf) {
                if (written < CLUSTER_CHUNKED_MIN)
                        return 0; /* a small content stays one object */
                c->buf = malloc(2 * BS_CHUNK_MAX);
                if (!c->buf)
                        return -ENOMEM;
                bs_chunker_init_default(&c->chunker);
        }
        /* c->read: the bytes of the file read into the buffer so far. */
        while (c->read < written) {
                size_t room = 2 * BS_CHUNK_MAX - c->len;
                size_t want = (size_t) MIN((uint64_t) room, written - c->read);
                ssize_t k = pread(fd, c->buf + c->len, want, (off_t) c->read);
                if (k < 0)
                        return -errno;
                if (k == 0)
                        return -EIO; /* shorter than written: cannot be */
                c->len += (size_t) k;
                c->read += (uint64_t) k;
                int r = cut(c, false);
                if (r < 0)
                        return r;
        }
        return final ? cut(c, true) : 0;
}
