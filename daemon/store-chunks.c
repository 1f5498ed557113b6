/* store-chunks.c - big kept contents as recipes of chunks; listing either form
 *
 * A kept content of STORE_PACK_MIN bytes or more is cut into
 * content-defined chunks (the same cut as the wire's), each kept once per
 * account under its SHA-256 in the chunk store, and the content becomes a
 * recipe, content/<2 hex>/<64 hex>.chunks:
 *
 *   "bsrecip1"  u64 size  u32 count  count x (u32 length, 32-byte SHA-256)
 *
 * (little-endian). Ten versions of a 1 GiB file that differ by a few MiB
 * then take about 1 GiB, not 10. Packing runs after the version was
 * acknowledged, from the pruning slices, and never leaves the content
 * unreachable: the chunks are made durable, then the recipe, and only
 * then is the plain file removed; a crash in between leaves the plain file
 * (used first) and chunks no recipe names, which the sweep removes.
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

#define RECIPE_MAGIC "bsrecip1"
#define RECIPE_HDR (8 + 8 + 4)
#define RECIPE_ENTRY (4 + BS_SHA_LEN)
#define RECIPE_MAX_COUNT (4u * 1024 * 1024)
#define PACK_BUF (2 * BS_CHUNK_MAX)

static void put_le(uint8_t *p, uint64_t v, int n) {
        for (int i = 0; i < n; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
        uint64_t v = 0;
        for (int i = n - 1; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}

/*
 * Read and check the recipe of sha: its size, *count entries in *entries
 * (malloc'ed). -ENOENT when there is none, -EBADMSG when it is malformed:
 * every length in 1..BS_CHUNK_MAX, their sum the size, the file exactly
 * as long as its count says.
 */
static int recipe_read(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t *size, uint8_t **entries, size_t *count) {
        char n[STORE_RECIPE_NAME_LEN + 1];
        uint8_t hdr[RECIPE_HDR];
        struct stat st;
        store_recipe_name(sha, n);
        _cleanup_(closep) int fd = openat(s->fd, n, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size < RECIPE_HDR ||
            (uint64_t) st.st_size > RECIPE_HDR + (uint64_t) RECIPE_MAX_COUNT * RECIPE_ENTRY ||
            bs_pread_full(fd, hdr, RECIPE_HDR, 0) != RECIPE_HDR || memcmp(hdr, RECIPE_MAGIC, 8) != 0)
                return -EBADMSG;
        uint64_t total = get_le(hdr + 8, 8), c = get_le(hdr + 16, 4), sum = 0;
        if ((uint64_t) st.st_size != RECIPE_HDR + c * RECIPE_ENTRY)
                return -EBADMSG;
        uint8_t *e = malloc(c * RECIPE_ENTRY + 1);
        if (!e)
                return -ENOMEM;
        if (bs_pread_full(fd, e, c * RECIPE_ENTRY, RECIPE_HDR) != (ssize_t) (c * RECIPE_ENTRY)) {
                free(e);
                return -EBADMSG;
        }
        for (uint64_t i = 0; i < c; i++) {
                uint64_t len = get_le(e + i * RECIPE_ENTRY, 4);
                if (len == 0 || len > BS_CHUNK_MAX) {
                        free(e);
                        return -EBADMSG;
                }
                sum += len;
        }
        if (sum != total) {
                free(e);
                return -EBADMSG;
        }
        *size = total;
        *entries = e;
        *count = (size_t) c;
        return 0;
}

int store_get_chunked(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t size) {
        _cleanup_(bs_sha_freep) BsSha *h = NULL;
        uint8_t *e = NULL, *buf = NULL, got[BS_SHA_LEN];
        uint64_t total;
        size_t count;
        int r = recipe_read(s, sha, &total, &e, &count);
        if (r < 0)
                return r == -EBADMSG ? -EIO : r;
        if (total != size) {
                free(e);
                return -ENOENT;
        }
        /* Rebuilt whole into an unnamed file: readers get an fd like any other. */
        int fd = openat(s->fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
                r = -errno;
        r = r ?: bs_sha_new(&h);
        if (r == 0 && !(buf = malloc(BS_CHUNK_MAX)))
                r = -ENOMEM;
        for (size_t i = 0; r == 0 && i < count; i++) {
                const uint8_t *x = e + i * RECIPE_ENTRY;
                size_t len = (size_t) get_le(x, 4);
                r = chunk_get(s->chunks, x + 4, buf, len);
                r = r ?: bs_sha_update(h, buf, len);
                r = r ?: bs_write_sparse(fd, buf, len);
        }
        r = r ?: bs_sha_final(h, got);
        if (r == 0 && memcmp(got, sha, BS_SHA_LEN) != 0)
                r = -EBADMSG;
        if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
                r = -errno;
        free(buf);
        free(e);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                /* A chunk missing or damaged: the content is lost, not absent. */
                return r == -ENOENT || r == -EBADMSG ? -EIO : r;
        }
        return fd;
}

/* Cut, hash and stage the chunks held; all of them at the end of the file. */
static int pack_cut(Store *s) {
        StorePack *p = &s->pack;
        while (p->end > p->start && (p->end - p->start >= BS_CHUNK_MAX || p->off == p->size)) {
                const uint8_t *q = p->buf + p->start;
                size_t len = bs_chunk_next(&p->chunker, q, p->end - p->start);
                uint8_t sha[BS_SHA_LEN];
                int r = bs_sha_buf(q, len, sha);
                if (r < 0)
                        return r;
                r = chunk_put(s->chunks, sha, q, len);
                if (r < 0)
                        return r;
                if (p->n == p->cap) {
                        size_t cap = p->cap ? 2 * p->cap : 1024;
                        if (cap > RECIPE_MAX_COUNT)
                                return -EFBIG;
                        uint8_t *v = realloc(p->recipe, cap * RECIPE_ENTRY);
                        if (!v)
                                return -ENOMEM;
                        p->recipe = v;
                        p->cap = cap;
                }
                put_le(p->recipe + p->n * RECIPE_ENTRY, len, 4);
                memcpy(p->recipe + p->n++ * RECIPE_ENTRY + 4, sha, BS_SHA_LEN);
                p->start += len;
        }
        return 0;
}

/* The chunks are durable: write the recipe, then drop the plain file. */
static int pack_finish(Store *s) {
        StorePack *p = &s->pack;
        char n[STORE_RECIPE_NAME_LEN + 1], fan[3];
        int r = chunk_store_commit(s->chunks);
        if (r < 0)
                return r;
        size_t len = RECIPE_HDR + p->n * RECIPE_ENTRY;
        uint8_t *out = malloc(len);
        if (!out)
                return -ENOMEM;
        memcpy(out, RECIPE_MAGIC, 8);
        put_le(out + 8, p->size, 8);
        put_le(out + 16, p->n, 4);
        memcpy(out + RECIPE_HDR, p->recipe, p->n * RECIPE_ENTRY);
        store_recipe_name(p->sha, n);
        memcpy(fan, n, 2);
        fan[2] = 0;
        _cleanup_(closep) int dfd = openat(s->fd, fan, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        r = dfd < 0 ? -errno : bs_write_file_atomic(dfd, n + 3, out, len);
        free(out);
        /* The recipe's name durable before the plain file goes. */
        return r ?: bs_fsync_dir(dfd);
}

int store_pack_step(Store *s, const uint8_t sha[BS_SHA_LEN], uint64_t budget) {
        StorePack *p = &s->pack;
        char n[STORE_RECIPE_NAME_LEN + 1];
        struct stat st;
        int r;

        if (p->active && memcmp(p->sha, sha, BS_SHA_LEN) != 0)
                store_pack_abort(s);
        if (!p->active) {
                store_content_name(sha, n);
                int fd = openat(s->fd, n, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
                if (fd < 0)
                        return errno == ENOENT ? 0 : -errno;
                /* Small, or also a file of the tree (linked): nothing to gain. */
                if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size < STORE_PACK_MIN ||
                    st.st_nlink > 1) {
                        close(fd);
                        return 0;
                }
                store_recipe_name(sha, n);
                if (faccessat(s->fd, n, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
                        /* Packed before a crash took the plain file's removal. */
                        close(fd);
                        store_content_name(sha, n);
                        if (unlinkat(s->fd, n, 0) < 0 && errno != ENOENT)
                                return -errno;
                        store_mark_dirty(s, sha[0]);
                        return 0;
                }
                *p = (StorePack) { .active = true, .fd = fd, .size = (uint64_t) st.st_size };
                memcpy(p->sha, sha, BS_SHA_LEN);
                bs_chunker_init_default(&p->chunker);
                if (!(p->buf = malloc(PACK_BUF))) {
                        store_pack_abort(s);
                        return -ENOMEM;
                }
        }
        for (uint64_t done = 0; p->off < p->size && done < budget;) {
                if (p->start > 0 && p->end - p->start < BS_CHUNK_MAX) {
                        memmove(p->buf, p->buf + p->start, p->end - p->start);
                        p->end -= p->start;
                        p->start = 0;
                }
                size_t want = (size_t) MIN((uint64_t) (PACK_BUF - p->end), p->size - p->off);
                ssize_t got = bs_pread_full(p->fd, p->buf + p->end, want, (off_t) p->off);
                if (got != (ssize_t) want) {
                        store_pack_abort(s);
                        return got < 0 ? (int) got : -EIO;
                }
                p->end += want;
                p->off += want;
                done += want;
                r = pack_cut(s);
                if (r < 0) {
                        store_pack_abort(s);
                        return r;
                }
        }
        if (p->off < p->size)
                return 1;
        r = pack_cut(s);
        r = r ?: pack_finish(s);
        if (r == 0) {
                store_content_name(sha, n);
                if (unlinkat(s->fd, n, 0) < 0 && errno != ENOENT)
                        r = -errno;
                store_mark_dirty(s, sha[0]);
        }
        if (r < 0)
                store_pack_abort(s);
        else
                store_pack_reset(s);
        return r;
}

static int ref_cmp(const void *a, const void *b) {
        return memcmp(a, b, BS_SHA_LEN);
}

typedef struct Kept {
        uint8_t sha[BS_SHA_LEN];
        unsigned forms;
} Kept;

static int kept_cmp(const void *x, const void *y) {
        return memcmp(((const Kept *) x)->sha, ((const Kept *) y)->sha, BS_SHA_LEN);
}

/* The content a name in a fan-out directory is for, and in which form; 0 if none. */
static unsigned parse_name(const char *name, uint8_t sha[BS_SHA_LEN]) {
        char hex[2 * BS_SHA_LEN + 1];
        size_t n = strlen(name);
        unsigned form = n == 2 * BS_SHA_LEN ? STORE_PLAIN
                        : n == 2 * BS_SHA_LEN + strlen(STORE_RECIPE_SUFFIX) &&
                                          strcmp(name + 2 * BS_SHA_LEN, STORE_RECIPE_SUFFIX) == 0
                                  ? STORE_RECIPE
                                  : 0;
        if (!form)
                return 0;
        memcpy(hex, name, 2 * BS_SHA_LEN);
        hex[2 * BS_SHA_LEN] = 0;
        return bs_unhex(hex, sha, BS_SHA_LEN) == 0 ? form : 0;
}

int store_each(Store *s, unsigned fan, store_each_fn fn, void *userdata) {
        char dir[3];
        BsDirent *v = NULL;
        size_t n = 0, m = 0;
        bs_hex((const uint8_t[]) { (uint8_t) fan }, 1, dir);
        _cleanup_(closep) int dfd = openat(s->fd, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return errno == ENOENT ? 0 : -errno;
        int r = bs_dir_list(dfd, &v, &n);
        if (r < 0)
                return r;
        Kept *k = calloc(n + 1, sizeof(*k));
        if (!k) {
                bs_dir_list_free(v, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                unsigned form = parse_name(v[i].name, k[m].sha);
                if (form && k[m].sha[0] == fan)
                        k[m++].forms = form;
        }
        bs_dir_list_free(v, n);
        qsort(k, m, sizeof(*k), kept_cmp);
        for (size_t i = 0; r == 0 && i < m; i++) {
                unsigned forms = k[i].forms;
                while (i + 1 < m && kept_cmp(&k[i], &k[i + 1]) == 0)
                        forms |= k[++i].forms;
                r = fn(userdata, k[i].sha, forms);
        }
        free(k);
        return r;
}

typedef int (*recipe_fn)(Store *s, const uint8_t sha[BS_SHA_LEN], void *userdata);

typedef struct EachRecipe {
        Store *s;
        recipe_fn fn;
        void *userdata;
} EachRecipe;

static int if_recipe(void *userdata, const uint8_t sha[BS_SHA_LEN], unsigned forms) {
        EachRecipe *e = userdata;
        return forms & STORE_RECIPE ? e->fn(e->s, sha, e->userdata) : 0;
}

/* Call fn for every content kept as a recipe. */
static int each_recipe(Store *s, recipe_fn fn, void *userdata) {
        EachRecipe e = { .s = s, .fn = fn, .userdata = userdata };
        for (unsigned fan = 0; fan < 256; fan++) {
                int r = store_each(s, fan, if_recipe, &e);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Add the chunks a recipe names to the sweep's list. */
static int collect_refs(Store *s, const uint8_t sha[BS_SHA_LEN], void *userdata) {
        size_t *cap = userdata, count;
        uint64_t size;
        uint8_t *e;
        int k = recipe_read(s, sha, &size, &e, &count);
        if (k == -EBADMSG || k == -ENOENT)
                return 0; /* names nothing it can be trusted for; --verify says so */
        if (k < 0)
                return k;
        if (s->n_gc_refs + count > *cap) {
                size_t c2 = MAX(2 * *cap, s->n_gc_refs + count + 1024);
                uint8_t *nv = realloc(s->gc_refs, c2 * BS_SHA_LEN);
                if (!nv) {
                        free(e);
                        return -ENOMEM;
                }
                s->gc_refs = nv;
                *cap = c2;
        }
        for (size_t j = 0; j < count; j++)
                memcpy(s->gc_refs + s->n_gc_refs++ * BS_SHA_LEN, e + j * RECIPE_ENTRY + 4, BS_SHA_LEN);
        free(e);
        return 0;
}

int store_gc_begin(Store *s) {
        size_t cap = 0;
        store_gc_end(s);
        if (!s->gc_needed)
                return 0;
        s->gc_running = true;
        s->gc_needed = false; /* what a later removal leaves waits for the next sweep */
        int r = each_recipe(s, collect_refs, &cap);
        if (r < 0) {
                store_gc_end(s);
                s->gc_needed = true;
                return r;
        }
        if (s->n_gc_refs > 0)
                qsort(s->gc_refs, s->n_gc_refs, BS_SHA_LEN, ref_cmp);
        return 0;
}
typedef struct GcFan {
        Store *s;
        uint64_t freed, count;
} GcFan;

static int gc_one(void *userdata, const uint8_t sha[BS_SHA_LEN], uint64_t size, uint64_t disk) {
        GcFan *g = userdata;
        uint64_t freed = 0;
        (void) size;
        (void) disk;
        if (g->s->n_gc_refs > 0 && bsearch(sha, g->s->gc_refs, g->s->n_gc_refs, BS_SHA_LEN, ref_cmp))
                return 0;
        int r = chunk_remove(g->s->chunks, sha, &freed);
        if (r < 0 && r != -ENOENT)
                return r;
        g->freed += freed;
        g->count += r == 0;
        return 0;
}

int store_gc_fan(Store *s, unsigned fan, uint64_t *freed, uint64_t *count) {
        GcFan g = { .s = s };
        if (!s->gc_running)
                return 0;
        int r = chunk_list(s->chunks, fan, gc_one, &g);
        if (r < 0)
                s->gc_needed = true;
        *freed += g.freed;
        *count += g.count;
        return r;
}

void store_gc_end(Store *s) {
        s->gc_running = false;
        free(s->gc_refs);
        s->gc_refs = NULL;
        s->n_gc_refs = 0;
}

static int usage_one(void *userdata, const uint8_t sha[BS_SHA_LEN], uint64_t size, uint64_t disk) {
        (void) sha;
        (void) size;
        *(uint64_t *) userdata += disk;
        return 0;
}

uint64_t store_chunks_usage(Store *s) {
        uint64_t b = 0;
        for (unsigned fan = 0; fan < 256; fan++)
                (void) chunk_list(s->chunks, fan, usage_one, &b);
        return b;
}

/* Check one recipe: the number of problems reported, or -errno. */
static int check_one(Store *s, const uint8_t sha[BS_SHA_LEN], bool hash_all, store_check_fn report, void *userdata) {
        uint8_t *e = NULL, *buf = NULL, got[BS_SHA_LEN];
        uint64_t size;
        size_t count;
        char hex[2 * BS_SHA_LEN + 1], what[256];
        int r = recipe_read(s, sha, &size, &e, &count), problems = 0;
        if (r == -ENOENT)
                return 0;
        if (r == -EBADMSG) {
                report(userdata, sha, "its recipe in the chunk store is malformed");
                return 1;
        }
        if (r < 0)
                return r;
        _cleanup_(bs_sha_freep) BsSha *whole = NULL;
        if (hash_all && (bs_sha_new(&whole) < 0 || !(buf = malloc(BS_CHUNK_MAX)))) {
                free(e);
                return -ENOMEM;
        }
        for (size_t i = 0; i < count; i++) {
                const uint8_t *x = e + i * RECIPE_ENTRY;
                size_t len = (size_t) get_le(x, 4);
                bs_hex(x + 4, BS_SHA_LEN, hex);
                if (!hash_all) {
                        if (chunk_has(s->chunks, x + 4, len))
                                continue;
                        snprintf(what, sizeof(what), "chunk %s (%zu bytes) is missing or of another size", hex, len);
                } else {
                        int k = chunk_get(s->chunks, x + 4, buf, len);
                        if (k == 0 && bs_sha_buf(buf, len, got) == 0 && memcmp(got, x + 4, BS_SHA_LEN) == 0) {
                                bs_sha_update(whole, buf, len);
                                continue;
                        }
                        snprintf(what, sizeof(what), "chunk %s (%zu bytes) is %s", hex, len,
                                 k == -ENOENT ? "missing" : k < 0 ? "of another size" : "damaged");
                }
                report(userdata, sha, what);
                problems++;
        }
        if (hash_all && problems == 0 && (bs_sha_final(whole, got) < 0 || memcmp(got, sha, BS_SHA_LEN) != 0)) {
                report(userdata, sha, "its chunks do not make up its SHA-256");
                problems++;
        }
        free(buf);
        free(e);
        return problems;
}

typedef struct Check {
        bool hash_all;
        store_check_fn report;
        void *userdata;
        int problems;
} Check;

static int check_recipe(Store *s, const uint8_t sha[BS_SHA_LEN], void *userdata) {
        Check *c = userdata;
        int r = check_one(s, sha, c->hash_all, c->report, c->userdata);
        if (r > 0)
                c->problems += r;
        return r < 0 ? r : 0;
}

int store_check(Store *s, bool hash_all, store_check_fn report, void *userdata) {
        Check c = { .hash_all = hash_all, .report = report, .userdata = userdata };
        int r = each_recipe(s, check_recipe, &c);
        return r < 0 ? r : c.problems;
}
