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
