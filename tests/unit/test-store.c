/* test-store.c - unit tests for daemon/store.[ch]: content by SHA-256 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-hash.h"
#include "store.h"
#include "test-util.h"

static char dir[] = "/tmp/bs-test-store-XXXXXX";
static int dfd = -1;
static Store *st;

static void setup(void) {
        cr_assert_not_null(mkdtemp(dir));
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(dfd, 0);
        cr_assert_eq(store_open(dfd, &st), 0);
}

static void teardown(void) {
        char cmd[128];
        store_free(st);
        close(dfd);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
        strcpy(dir, "/tmp/bs-test-store-XXXXXX");
}

static void make(const char *name, const char *content, uint8_t sha[BS_SHA_LEN]) {
        int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, content, strlen(content)), (ssize_t) strlen(content));
        close(fd);
        cr_assert_eq(bs_sha_buf(content, strlen(content), sha), 0);
}

TestSuite(store, .init = setup, .fini = teardown);

Test(store, put_link_move_get_remove) {
        uint8_t a[BS_SHA_LEN], b[BS_SHA_LEN];
        char buf[32] = "";
        uint64_t freed = 1;
        make("a", "content a\n", a);
        make("b", "content b\n", b);
        cr_assert(!store_has(st, a));
        cr_assert_eq(store_put(st, a, dfd, "a", STORE_LINK), 0);
        cr_assert_eq(faccessat(dfd, "a", F_OK, 0), 0, "a link leaves the file");
        cr_assert_eq(store_put(st, a, dfd, "a", STORE_LINK), 1, "the same content is kept once");
        cr_assert_eq(store_put(st, b, dfd, "b", STORE_MOVE), 0);
        cr_assert_eq(faccessat(dfd, "b", F_OK, 0), -1, "a move takes the file");
        cr_assert_eq(store_put(st, b, dfd, "b", STORE_MOVE), -ENOENT);
        cr_assert_eq(store_sync(st), 0);
        cr_assert(store_has(st, a) && store_has(st, b));
        int fd = store_get(st, b, 10);
        cr_assert_geq(fd, 0);
        cr_assert_eq(read(fd, buf, sizeof(buf)), 10);
        cr_assert_str_eq(buf, "content b\n");
        close(fd);
        cr_assert_eq(store_get(st, b, 11), -ENOENT, "a size that does not match is not that content");
        cr_assert_eq(store_remove(st, b, &freed), 0);
        cr_assert_gt(freed, 0, "b had no other link");
        cr_assert_eq(store_remove(st, a, &freed), 0);
        cr_assert_eq(freed, 0, "a is still linked as dir/a");
        cr_assert_eq(store_remove(st, a, &freed), -ENOENT);
        cr_assert(!store_has(st, a));
        cr_assert_eq(store_get(st, a, 10), -ENOENT);
        cr_assert_eq(store_sync(st), 0);
}

/* Many fan-out directories at once are synced with one syncfs(). */
Test(store, many_contents) {
        for (int i = 0; i < 300; i++) {
                char name[32], content[32];
                uint8_t sha[BS_SHA_LEN];
                snprintf(name, sizeof(name), "f%d", i);
                snprintf(content, sizeof(content), "content %d\n", i);
                make(name, content, sha);
                cr_assert_eq(store_put(st, sha, dfd, name, STORE_MOVE), 0);
        }
        cr_assert_eq(store_sync(st), 0);
        for (int i = 0; i < 300; i++) {
                char content[32];
                uint8_t sha[BS_SHA_LEN];
                snprintf(content, sizeof(content), "content %d\n", i);
                cr_assert_eq(bs_sha_buf(content, strlen(content), sha), 0);
                cr_assert(store_has(st, sha), "%s", content);
        }
}

/* ---- the chunk store: big kept contents as recipes of chunks ---- */

#define MiB (1024u * 1024)

/* Keep n bytes of p as a content (moved into the store); its SHA-256 in sha. */
static void keep(const char *name, const uint8_t *p, size_t n, uint8_t sha[BS_SHA_LEN]) {
        int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, p, n), (ssize_t) n);
        close(fd);
        cr_assert_eq(bs_sha_buf(p, n, sha), 0);
        cr_assert_eq(store_put(st, sha, dfd, name, STORE_MOVE), 0);
        cr_assert_eq(store_sync(st), 0);
}

static void pack(const uint8_t sha[BS_SHA_LEN]) {
        int r, steps = 0;
        while ((r = store_pack_step(st, sha, 1 * MiB)) == 1)
                steps++;
        cr_assert_eq(r, 0, "pack: %s", strerror(-r));
}

/* What store_get() gives for sha equals p. */
static void assert_content(const uint8_t sha[BS_SHA_LEN], const uint8_t *p, size_t n) {
        uint8_t *got = malloc(n + 1);
        cr_assert_not_null(got);
        int fd = store_get(st, sha, n);
        cr_assert_geq(fd, 0, "store_get: %s", strerror(-fd));
        cr_assert_eq(pread(fd, got, n + 1, 0), (ssize_t) n);
        cr_assert_eq(memcmp(got, p, n), 0);
        close(fd);
        free(got);
}

static uint64_t count_files(const char *sub) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "find %s/%s -type f | wc -l", dir, sub);
        FILE *f = popen(cmd, "r");
        unsigned long long n = 0;
        cr_assert_not_null(f);
        cr_assert_eq(fscanf(f, "%llu", &n), 1);
        pclose(f);
        return n;
}

static void full_gc(uint64_t *freed) {
        uint64_t count = 0;
        cr_assert_eq(store_gc_begin(st), 0);
        for (unsigned fan = 0; fan < 256; fan++)
                cr_assert_eq(store_gc_fan(st, fan, freed, &count), 0);
        store_gc_end(st);
}

static void no_problem(void *userdata, const uint8_t sha[BS_SHA_LEN], const char *problem) {
        (void) sha;
        cr_assert_fail("%s: unexpected problem: %s", (const char *) userdata, problem);
}

static int problems;
static void count_problem(void *userdata, const uint8_t sha[BS_SHA_LEN], const char *problem) {
        (void) userdata;
        (void) sha;
        (void) problem;
        problems++;
}

Test(store, versions_share_their_chunks) {
        size_t n = 8 * MiB;
        uint8_t *v1 = malloc(n), *v2 = malloc(n + 100), a[BS_SHA_LEN], b[BS_SHA_LEN];
        uint64_t before, after, freed = 0;
        cr_assert(v1 && v2);
        test_fill(v1, n, 1);
        /* v2: 100 bytes inserted in the middle, 64 KiB overwritten near the end */
        memcpy(v2, v1, n / 2);
        test_fill(v2 + n / 2, 100, 2);
        memcpy(v2 + n / 2 + 100, v1 + n / 2, n / 2);
        test_fill(v2 + n - 2 * 65536, 65536, 3);
        keep("v1", v1, n, a);
        keep("v2", v2, n + 100, b);
        cr_assert_eq(store_usage(st, &before, NULL), 0);
        pack(a);
        pack(b);
        cr_assert(store_has(st, a) && store_has(st, b));
        assert_content(a, v1, n);
        assert_content(b, v2, n + 100);
        cr_assert_eq(store_usage(st, &after, NULL), 0);
        /* Two versions of 8 MiB that differ in two places: one copy and a few chunks. */
        cr_assert_lt(after, n + 2 * 512 * 1024, "two packed versions take %llu bytes", (unsigned long long) after);
        cr_assert_gt(before, 2 * (uint64_t) n - 1);
        cr_assert_eq(count_files("content"), 2, "the plain files gave way to two recipes");
        cr_assert_eq(store_check(st, true, no_problem, "packed"), 0);
        /* Removing one version frees only its own chunks, with the sweep. */
        cr_assert_eq(store_remove(st, a, &freed), 0);
        full_gc(&freed);
        cr_assert_lt(freed, 2 * 512 * 1024, "v1's own chunks only: %llu bytes", (unsigned long long) freed);
        assert_content(b, v2, n + 100);
        cr_assert(!store_has(st, a));
        cr_assert_eq(store_remove(st, b, &freed), 0);
        full_gc(&freed);
        cr_assert_eq(count_files("chunks"), 0, "nothing names any chunk now");
        free(v1);
        free(v2);
}

Test(store, small_and_linked_contents_stay_plain) {
        uint8_t small[1000], *big = malloc(2 * MiB), s1[BS_SHA_LEN], s2[BS_SHA_LEN];
        cr_assert_not_null(big);
        test_fill(small, sizeof(small), 4);
        test_fill(big, 2 * MiB, 5);
        keep("small", small, sizeof(small), s1);
        /* Linked, not moved: the tree still has it, packing would free nothing. */
        int fd = openat(dfd, "big", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_eq(write(fd, big, 2 * MiB), (ssize_t) (2 * MiB));
        close(fd);
        cr_assert_eq(bs_sha_buf(big, 2 * MiB, s2), 0);
        cr_assert_eq(store_put(st, s2, dfd, "big", STORE_LINK), 0);
        cr_assert_eq(store_pack_step(st, s1, MiB), 0);
        cr_assert_eq(store_pack_step(st, s2, MiB), 0);
        cr_assert_eq(count_files("chunks"), 0);
        unlinkat(dfd, "big", 0);
        pack(s2);
        cr_assert_gt(count_files("chunks"), 8, "once the tree let go of it, it is cut");
        assert_content(s2, big, 2 * MiB);
        free(big);
}

Test(store, an_interrupted_pack_loses_nothing) {
        size_t n = 6 * MiB;
        uint8_t *p = malloc(n), sha[BS_SHA_LEN];
        uint64_t freed = 0;
        cr_assert_not_null(p);
        test_fill(p, n, 6);
        keep("big", p, n, sha);
        /* Half cut, then the server stops: the plain file is still the content. */
        cr_assert_eq(store_pack_step(st, sha, 3 * MiB), 1);
        store_free(st);
        cr_assert_eq(store_open(dfd, &st), 0);
        assert_content(sha, p, n);
        cr_assert_eq(count_files("content"), 1);
        /* A crash after the chunks were committed: chunks no recipe names
         * yet, which the sweep removes; then a pack from the start. */
        pack(sha);
        char name[2 * BS_SHA_LEN + 16], path[512];
        bs_hex(sha, BS_SHA_LEN, name);
        snprintf(path, sizeof(path), "content/%.2s/%s" STORE_RECIPE_SUFFIX, name, name);
        cr_assert_eq(unlinkat(dfd, path, 0), 0, "as if the recipe was never written");
        cr_assert(!store_has(st, sha));
        full_gc(&freed);
        cr_assert_eq(count_files("chunks"), 0, "the orphaned chunks are swept");
        free(p);
}

Test(store, check_finds_missing_and_damaged_chunks) {
        size_t n = 3 * MiB;
        uint8_t *p = malloc(n), sha[BS_SHA_LEN];
        cr_assert_not_null(p);
        test_fill(p, n, 7);
        keep("big", p, n, sha);
        pack(sha);
        cr_assert_eq(store_check(st, true, no_problem, "fresh"), 0);
        /* Damage one chunk (same size), remove another. */
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "cd %s/chunks && f=$(find . -type f | sort | head -1) && "
                 "printf X | dd of=$f bs=1 seek=100 conv=notrunc status=none && "
                 "rm $(find . -type f | sort | tail -1)", dir);
        cr_assert_eq(system(cmd), 0);
        problems = 0;
        cr_assert_eq(store_check(st, false, count_problem, NULL), 1, "without hashing: the missing chunk");
        cr_assert_eq(problems, 1);
        problems = 0;
        cr_assert_eq(store_check(st, true, count_problem, NULL), 2, "with hashing: the damaged one too");
        cr_assert_eq(store_get(st, sha, n), -EIO, "a content with chunks lost is an error, not absent");
        free(p);
}

Test(store, malformed_recipes_are_refused) {
        static const struct { const char *name; const char *bytes; size_t len; } bad[] = {
                { "empty", "", 0 },
                { "bad magic", "XXXXXXXX\0\0\0\0\0\0\0\0\0\0\0\0", 20 },
                { "count past the end", "bsrecip1\x05\0\0\0\0\0\0\0\x01\0\0\0", 20 },
                { "size that is not the sum", "bsrecip1\x05\0\0\0\0\0\0\0\0\0\0\0", 20 },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint8_t sha[BS_SHA_LEN];
                char hex[2 * BS_SHA_LEN + 1], path[512];
                memset(sha, (int) (0x10 + i), sizeof(sha));
                bs_hex(sha, BS_SHA_LEN, hex);
                snprintf(path, sizeof(path), "%s/content/%.2s", dir, hex);
                mkdir(path, 0700);
                snprintf(path, sizeof(path), "%s/content/%.2s/%s" STORE_RECIPE_SUFFIX, dir, hex, hex);
                FILE *f = fopen(path, "w");
                cr_assert_not_null(f);
                cr_assert_eq(fwrite(bad[i].bytes, 1, bad[i].len, f), bad[i].len);
                fclose(f);
                cr_assert_lt(store_get(st, sha, 5), 0, "%s", bad[i].name);
                problems = 0;
                store_check(st, false, count_problem, NULL);
                cr_assert_geq(problems, 1, "%s: reported", bad[i].name);
                unlink(path);
        }
}

/* A crash after a STORE_LINK, its transaction undone, leaves the content
 * as a second name of the tree's file: moving that file into the store
 * later still takes it out of the tree (rename() alone would not). */
Test(store, move_onto_own_link_leaves_no_name) {
        uint8_t sha[BS_SHA_LEN];
        struct stat sb;
        make("a", "kept twice\n", sha);
        cr_assert_eq(store_put(st, sha, dfd, "a", STORE_LINK), 0);
        cr_assert_eq(store_put(st, sha, dfd, "a", STORE_MOVE), 0);
        cr_assert_eq(fstatat(dfd, "a", &sb, AT_SYMLINK_NOFOLLOW), -1);
        cr_assert_eq(errno, ENOENT);
        int fd = store_get(st, sha, strlen("kept twice\n"));
        cr_assert_geq(fd, 0);
        cr_assert_eq(fstat(fd, &sb), 0);
        cr_assert_eq(sb.st_nlink, 1);
        close(fd);
}

/* Another copy of the same content is replaced by the one moved. */
Test(store, move_onto_other_copy) {
        uint8_t sha[BS_SHA_LEN];
        struct stat a, b, sb;
        make("a", "same\n", sha);
        make("b", "same\n", sha);
        cr_assert_eq(fstatat(dfd, "b", &b, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq(store_put(st, sha, dfd, "a", STORE_LINK), 0);
        cr_assert_eq(store_put(st, sha, dfd, "b", STORE_MOVE), 0);
        cr_assert_eq(fstatat(dfd, "b", &sb, AT_SYMLINK_NOFOLLOW), -1);
        cr_assert_eq(fstatat(dfd, "a", &a, AT_SYMLINK_NOFOLLOW), 0);
        cr_assert_eq(a.st_nlink, 1);
        int fd = store_get(st, sha, strlen("same\n"));
        cr_assert_geq(fd, 0);
        cr_assert_eq(fstat(fd, &sb), 0);
        cr_assert_eq(sb.st_ino, b.st_ino);
        close(fd);
}
