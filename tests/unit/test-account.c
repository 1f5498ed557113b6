/* test-account.c - unit tests for the server's storage: the group commit of uploads */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local-internal.h"
#include "account-history.h"
#include "account-read.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"

static char storage[] = "/tmp/bs-test-account-XXXXXX";
static LocalAccount *acc;
static char token[BS_TOKEN_MAX + 1];
static const uint8_t device[BS_DEVICE_LEN] = { 1 };

static void setup(void) {
        cr_assert_not_null(mkdtemp(storage));
        cr_assert_eq(local_create(storage, &acc, token), 0);
}

static void teardown(void) {
        char cmd[128];
        local_free(acc);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", storage);
        cr_assert_eq(system(cmd), 0);
        strcpy(storage, "/tmp/bs-test-account-XXXXXX");
}

static void path_of(char *buf, size_t n, const char *sub, const char *rel) {
        snprintf(buf, n, "%s/%s/%s/%s", storage, local_id(acc), sub, rel);
}

/* Upload content as path on base; returns what local_put() returns. */
static int put(const char *path, uint64_t base, const char *content, uint64_t *version) {
        LocalUpload *u;
        uint8_t sha[BS_SHA_LEN];
        size_t n = strlen(content);
        cr_assert_eq(bs_sha_buf(content, n, sha), 0);
        cr_assert_eq(local_put_check(acc, path, base, n), 0, "put check %s", path);
        cr_assert_eq(local_upload_begin(acc, &u), 0);
        cr_assert_eq(local_upload_write(u, content, n, n), 0);
        return local_put(acc, u, device, path, base, n, 0644, 1000000000, sha, version);
}

static char *tree_content(const char *rel) {
        static char buf[256];
        char p[4200];
        path_of(p, sizeof(p), "tree", rel);
        FILE *f = fopen(p, "re");
        if (!f)
                return NULL;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        return buf;
}

/* Files (not directories) anywhere below path. */
static int count_files_in(const char *path) {
        char p[4200];
        int n = 0;
        DIR *d = opendir(path);
        cr_assert_not_null(d, "opendir %s", path);
        for (struct dirent *de; (de = readdir(d));) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                        continue;
                snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
                struct stat st;
                cr_assert_eq(lstat(p, &st), 0, "lstat %s", p);
                n += S_ISDIR(st.st_mode) ? count_files_in(p) : 1;
        }
        closedir(d);
        return n;
}

/* Files below tmp/, tree/, content/ or versions/. */
static int count_entries(const char *sub) {
        char p[4200];
        path_of(p, sizeof(p), sub, "");
        return count_files_in(p);
}

TestSuite(account, .init = setup, .fini = teardown);

/* Below 16 uploads (synced file by file) and from 16 on (syncfs). */
ParameterizedTestParameters(account, batch_appears_only_at_commit) {
        static int sizes[] = { 1, 3, 15, 16, 40 };
        return cr_make_param_array(int, sizes, sizeof(sizes) / sizeof(sizes[0]));
}

ParameterizedTest(int *n, account, batch_appears_only_at_commit) {
        char name[32], content[32];
        uint64_t v;
        for (int i = 0; i < *n; i++) {
                snprintf(name, sizeof(name), "f%d", i);
                snprintf(content, sizeof(content), "content %d\n", i);
                cr_assert_eq(put(name, 0, content, &v), 0);
                cr_assert_eq(v, (uint64_t) i + 1);
        }
        /* Recorded but neither durable nor visible yet. */
        cr_assert_eq(count_entries("tree"), 0, "an upload is in the tree before the commit");
        /* Small ones may still be on their way there (bs-writer.c). */
        cr_assert_leq(count_entries("tmp"), *n);
        cr_assert_eq(local_committed_seq(acc), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(local_committed_seq(acc), (uint64_t) *n);
        cr_assert_eq(count_entries("tree"), *n);
        cr_assert_eq(count_entries("tmp"), 0);
        for (int i = 0; i < *n; i++) {
                snprintf(name, sizeof(name), "f%d", i);
                snprintf(content, sizeof(content), "content %d\n", i);
                cr_assert_str_eq(tree_content(name), content);
        }
}

Test(account, same_path_twice_in_one_batch_keeps_the_last) {
        uint64_t v1, v2;
        cr_assert_eq(put("f", 0, "first\n", &v1), 0);
        cr_assert_eq(put("f", v1, "second\n", &v2), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_str_eq(tree_content("f"), "second\n");
        cr_assert_eq(count_entries("content"), 1, "the first content was not kept as a version");
}

Test(account, other_changes_see_the_waiting_uploads) {
        uint64_t v, vm;
        cr_assert_eq(put("a", 0, "moved\n", &v), 0);
        cr_assert_eq(put("b", 0, "deleted\n", &v), 0);
        /* Both act on the tree: the uploads must be placed first. */
        cr_assert_eq(local_move(acc, device, "a", 1, "c", 0, &vm), 0);
        cr_assert_eq(local_delete(acc, device, "b", 2, &vm), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_null(tree_content("a"));
        cr_assert_null(tree_content("b"));
        cr_assert_str_eq(tree_content("c"), "moved\n");
        cr_assert_eq(count_entries("tmp"), 0);
}

Test(account, closing_without_commit_leaves_nothing) {
        uint64_t v;
        cr_assert_eq(put("x", 0, "never committed\n", &v), 0);
        cr_assert_eq(put("y", 0, "never committed\n", &v), 0);
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, strtok(token, "-"), &acc), 0);
        cr_assert_eq(local_committed_seq(acc), 0);
        cr_assert_eq(count_entries("tree"), 0);
        cr_assert_eq(count_entries("tmp"), 0);
}

/* A new entry's records are written without a savepoint: when the second
 * fails (here the log's sequence is already taken), the first must not
 * commit alone, nor the batch's other changes. */
ParameterizedTestParameters(account, half_recorded_change_fails_its_batch) {
        static int kinds[] = { 0, 1 }; /* a new file, a new directory */
        return cr_make_param_array(int, kinds, sizeof(kinds) / sizeof(kinds[0]));
}

ParameterizedTest(int *kind, account, half_recorded_change_fails_its_batch) {
        AccountEntry e;
        uint64_t v;
        char sql[128];
        cr_assert_eq(put("a", 0, "first of the batch\n", &v), 0);
        snprintf(sql, sizeof(sql), "INSERT INTO log(seq) VALUES (%llu)", (unsigned long long) acc->seq + 1);
        cr_assert_eq(sqlite3_exec(acc->db, sql, NULL, NULL, NULL), SQLITE_OK);
        int r = *kind ? local_mkdir(acc, device, "b", 0, 0755, 0, &v) : put("b", 0, "half recorded\n", &v);
        cr_assert_lt(r, 0);
        cr_assert_lt(local_commit(acc), 0, "a batch with a half-recorded change committed");
        cr_assert_eq(local_committed_seq(acc), 0);
        cr_assert_eq(local_entry_get(acc, "a", &e), -ENOENT);
        cr_assert_eq(local_entry_get(acc, "b", &e), -ENOENT, "the entry of a change whose log record failed was kept");
        cr_assert_null(tree_content("a"), "a batch that did not commit put a file in the tree");
        cr_assert_eq(count_entries("tmp"), 0);
        /* Sent again, the batch commits whole. */
        cr_assert_eq(put("a", 0, "first of the batch\n", &v), 0);
        r = *kind ? local_mkdir(acc, device, "b", 0, 0755, 0, &v) : put("b", 0, "half recorded\n", &v);
        cr_assert_eq(r, 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(local_committed_seq(acc), 2);
        cr_assert_str_eq(tree_content("a"), "first of the batch\n");
        cr_assert_eq(local_entry_get(acc, "b", &e), 0);
        cr_assert_eq(e.kind, *kind ? BS_KIND_DIR : BS_KIND_FILE);
}

Test(account, crash_leftovers_in_tmp_removed_at_open) {
        char p[4200];
        char name[64];
        /* An upload cut off by a crash: its temporary file stays behind. */
        path_of(p, sizeof(p), "tmp", "");
        int dfd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(dfd, 0);
        int fd = bs_tmpfile_at(dfd, name, sizeof(name), 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, "partial", 7), 7);
        close(fd);
        close(dfd);
        path_of(p, sizeof(p), "tmp", "stray");
        FILE *f = fopen(p, "we");
        cr_assert_not_null(f);
        fclose(f);
        cr_assert_eq(count_entries("tmp"), 2);
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, strtok(token, "-"), &acc), 0);
        cr_assert_eq(count_entries("tmp"), 0);
        /* and uploads still work after the cleanup */
        uint64_t v;
        cr_assert_eq(put("g", 0, "after\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_str_eq(tree_content("g"), "after\n");
}

/* Many directory changes in one transaction sync each directory once, at commit. */
Test(account, directory_syncs_deferred_to_commit) {
        char name[32];
        uint64_t v;
        for (int i = 0; i < 100; i++) {
                snprintf(name, sizeof(name), "d%03d", i);
                cr_assert_eq(local_mkdir(acc, device, name, 0, 0755, 0, &v), 0);
        }
        cr_assert_eq(local_mkdir(acc, device, "d000/sub", 0, 0755, 0, &v), 0);
        cr_assert_eq(acc->n_dir_sync, 2, "the root and d000 wait for one sync each");
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(acc->n_dir_sync, 0);
        cr_assert_eq(local_committed_seq(acc), 101);
}

/* Uploads reuse the last parent directory; a delete or move must not leave
 * them writing into a directory that no longer has that name. */
Test(account, cached_parent_follows_delete_and_move) {
        uint64_t vd, vf, vx, v;
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 0, &vd), 0);
        cr_assert_eq(put("d/f", 0, "one\n", &vf), 0);
        cr_assert_eq(local_delete(acc, device, "d", vd, &vx), 0);
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 0, &vd), 0);
        cr_assert_eq(put("d/g", 0, "two\n", &v), 0);
        cr_assert_eq(local_move(acc, device, "d", vd, "e", 0, &vx), 0);
        cr_assert_eq(local_put_check(acc, "d/h", 0, 6), -ENOENT, "upload into a moved directory's old name");
        cr_assert_eq(put("e/h", 0, "three\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_null(tree_content("d/f"));
        cr_assert_null(tree_content("d/g"));
        cr_assert_str_eq(tree_content("e/g"), "two\n");
        cr_assert_str_eq(tree_content("e/h"), "three\n");
}

/* The sequence is stored at commit: reopening finds the last committed one. */
Test(account, sequence_survives_reopen) {
        uint64_t v;
        cr_assert_eq(put("a", 0, "1\n", &v), 0);
        cr_assert_eq(put("b", 0, "2\n", &v), 0);
        cr_assert_eq(put("c", 0, "3\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(put("d", 0, "not committed\n", &v), 0);
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, strtok(token, "-"), &acc), 0);
        cr_assert_eq(local_committed_seq(acc), 3);
        cr_assert_eq(put("e", 0, "4\n", &v), 0);
        cr_assert_eq(v, 4);
        cr_assert_eq(local_commit(acc), 0);
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, token, &acc), 0);
        cr_assert_eq(local_committed_seq(acc), 4);
}

/* COPY through the interface: an upload built from stored content read by
 * offset and new bytes; reads outside the content, however spelled. */
Test(account, upload_copy_from_stored_content) {
        const char *old = "0123456789abcdefghij", *want = "0123456789ABCDEFghij";
        uint8_t old_sha[BS_SHA_LEN], sha[BS_SHA_LEN];
        uint64_t v1, v2;
        Account *ia = local_account(acc);
        AccountContent *src;
        AccountUpload *u;
        char buf[20];

        cr_assert_eq(put("f", 0, old, &v1), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(bs_sha_buf(old, strlen(old), old_sha), 0);
        cr_assert_eq(bs_sha_buf(want, strlen(want), sha), 0);
        cr_assert_eq(account_content_open(ia, old_sha, "f", NULL, &src), 0);
        cr_assert_eq(account_content_wait(src), 0);
        cr_assert_eq(account_content_info(src)->size, 20);

        cr_assert_eq(local_put_check(acc, "f", v1, 20), 0);
        cr_assert_eq(account_upload_begin(ia, &u), 0);
        cr_assert_eq(account_content_read(src, 0, buf, 10), 0);
        cr_assert_eq(account_upload_write(u, buf, 10, 20), 0);
        cr_assert_eq(account_upload_write(u, "ABCDEF", 6, 20), 0);
        cr_assert_eq(account_content_read(src, 16, buf, 4), 0);
        cr_assert_eq(account_upload_write(u, buf, 4, 20), 0);
        cr_assert_eq(account_upload_write(u, "x", 1, 20), -EFBIG, "past the announced size");
        AccountBatch *b;
        cr_assert_eq(account_batch_new(ia, &b), 0);
        cr_assert_eq(account_put(b, u, device, "f", v1, 20, 0644, 1000000000, sha, &v2), 0);
        cr_assert_eq(account_batch_commit(b, NULL), 0);
        account_batch_free(b);
        cr_assert_str_eq(tree_content("f"), want);

        cr_assert_eq(account_content_read(src, 15, buf, 6), -EBADMSG);
        cr_assert_eq(account_content_read(src, 21, buf, 0), -EBADMSG);
        cr_assert_eq(account_content_read(src, UINT64_MAX - 2, buf, 4), -EBADMSG);
        cr_assert_eq(account_content_read(src, 20, buf, 0), 0, "an empty range at the end is fine");
        account_content_free(src);
}

/* A crash in the middle of an overwrite: the tree holds the new content,
 * versions/<uncommitted seq> the acknowledged old one. The repair records
 * the tree as found and keeps the old content reachable by its SHA-256. */
Test(account, repair_keeps_content_of_an_unfinished_change) {
        char tree_f[4200], kept[4200];
        uint8_t old_sha[BS_SHA_LEN];
        uint64_t v;
        cr_assert_eq(put("f", 0, "old\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(bs_sha_buf("old\n", 4, old_sha), 0);
        path_of(tree_f, sizeof(tree_f), "tree", "f");
        char name[32];
        snprintf(name, sizeof(name), "%llu", (unsigned long long) (v + 1));
        path_of(kept, sizeof(kept), "versions", name);
        cr_assert_eq(link(tree_f, kept), 0, "the old content kept as keep_version() does");
        cr_assert_eq(unlink(tree_f), 0);
        FILE *f = fopen(tree_f, "we");
        cr_assert_not_null(f);
        fputs("new content\n", f);
        fclose(f);
        cr_assert_gt(local_verify(acc, true, false, NULL, NULL), 0, "differences were found and recorded");
        LocalContent *c;
        char got[8];
        cr_assert_eq(local_content_open(acc, old_sha, "f", &c), 0, "the acknowledged content is reachable");
        cr_assert_eq(local_content_info(c)->size, 4);
        cr_assert_eq(local_content_read(c, 0, got, 4), 0);
        cr_assert_eq(memcmp(got, "old\n", 4), 0);
        cr_assert_eq(local_content_read(c, 1, got, 4), -EBADMSG, "a read past the end");
        local_content_free(c);
        cr_assert_str_eq(tree_content("f"), "new content\n");
}

/* A crash between a directory's removal and the file that replaced it
 * reaching the metadata: the repair records the file with the hash of its
 * content (agents check it), not an empty one. */
Test(account, repair_records_the_hash_of_a_file_that_replaced_a_directory) {
        char tree_d[4200];
        uint8_t sha[BS_SHA_LEN];
        uint64_t v;
        AccountEntry e;
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 0, &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        path_of(tree_d, sizeof(tree_d), "tree", "d");
        cr_assert_eq(rmdir(tree_d), 0);
        FILE *f = fopen(tree_d, "we");
        cr_assert_not_null(f);
        fputs("a file now\n", f);
        fclose(f);
        cr_assert_gt(local_verify(acc, true, false, NULL, NULL), 0, "the difference was found and recorded");
        cr_assert_eq(local_entry_get(acc, "d", &e), 0);
        cr_assert_eq(e.kind, BS_KIND_FILE);
        cr_assert_eq(bs_sha_buf("a file now\n", 11, sha), 0);
        cr_assert_arr_eq(e.sha, sha, BS_SHA_LEN, "the record carries the content's hash");
}

/* Re-saving a file unchanged, and many copies of one content, cost one
 * content in the store. */
Test(account, identical_content_is_stored_once) {
        uint64_t vf, vg, vh, v;
        cr_assert_eq(put("f", 0, "same bytes\n", &vf), 0);
        cr_assert_eq(put("g", 0, "same bytes\n", &vg), 0);
        cr_assert_eq(put("h", 0, "same bytes\n", &vh), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(put("f", vf, "new f\n", &v), 0);
        cr_assert_eq(put("g", vg, "new g\n", &v), 0);
        cr_assert_eq(local_delete(acc, device, "h", vh, &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(count_entries("content"), 1, "three copies of one content are kept once");
        /* The same content with another mtime: a new version, no new content. */
        AccountEntry e;
        cr_assert_eq(local_entry_get(acc, "f", &e), 0);
        LocalUpload *u;
        cr_assert_eq(local_upload_begin(acc, &u), 0);
        cr_assert_eq(local_upload_write(u, "new f\n", 6, 6), 0);
        cr_assert_eq(local_put(acc, u, device, "f", e.version, 6, 0644, 2000000000, e.sha, &v), 0);
        cr_assert_gt(v, e.version);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(count_entries("content"), 1, "saving unchanged content grew the store");
        uint8_t sha[BS_SHA_LEN];
        LocalContent *c;
        cr_assert_eq(bs_sha_buf("same bytes\n", 11, sha), 0);
        cr_assert_eq(local_content_open(acc, sha, "h", &c), 0, "the deleted copies' content is reachable");
        cr_assert_eq(local_content_info(c)->size, 11);
        local_content_free(c);
}

/* A deleted tree: out of the tree and tmp/, its contents in the store. */
Test(account, deleted_tree_contents_reachable) {
        uint64_t vd, v;
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 0, &vd), 0);
        cr_assert_eq(local_mkdir(acc, device, "d/e", 0, 0700, 0, &v), 0);
        cr_assert_eq(put("d/a", 0, "file a\n", &v), 0);
        cr_assert_eq(put("d/e/b", 0, "file b\n", &v), 0);
        cr_assert_eq(local_symlink(acc, device, "d/l", 0, "a", 0, &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(local_delete(acc, device, "d", vd, &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(count_entries("tree"), 0);
        cr_assert_eq(count_entries("tmp"), 0);
        cr_assert_eq(count_entries("content"), 2);
        const char *contents[] = { "file a\n", "file b\n" };
        for (size_t i = 0; i < 2; i++) {
                uint8_t sha[BS_SHA_LEN];
                LocalContent *c;
                char got[7];
                cr_assert_eq(bs_sha_buf(contents[i], 7, sha), 0);
                cr_assert_eq(local_content_open(acc, sha, "", &c), 0, "%s", contents[i]);
                cr_assert_eq(local_content_read(c, 0, got, 7), 0);
                cr_assert_eq(memcmp(got, contents[i], 7), 0);
                local_content_free(c);
        }
}

/* The tree as of a sequence, as a string "path kind sha0;..." in path order. */
static void tree_as_of(uint64_t seq, char *out, size_t n) {
        LocalQuery *q;
        static BsHistRow row;
        size_t o = 0;
        out[0] = 0;
        cr_assert_eq(local_query_new(acc, BS_HIST_TREE, "", seq, 0, 0, &q), 0);
        while (local_query_next(q, &row) == 1) {
                int k = snprintf(out + o, n - o, "%s %u %02x%s;", row.rec.path, row.rec.kind, row.rec.sha[0],
                                 row.rec.kind == BS_KIND_SYMLINK ? row.rec.path2 : "");
                cr_assert(k > 0 && (size_t) k < n - o);
                o += (size_t) k;
        }
        local_query_free(q);
}

/* After every kind of change, the tree as of each earlier sequence is
 * what it was then: moves of directories, replacements, deletions. */
Test(account, tree_as_of_every_sequence) {
        static char want[16][2048], got[2048];
        uint64_t seqs[16], v, vd, vx, vl;
        size_t n = 0;
#define STEP(expr)                                                                 \
        do {                                                                       \
                cr_assert_geq((expr), 0, #expr);                                   \
                cr_assert_eq(local_commit(acc), 0);                              \
                seqs[n] = local_committed_seq(acc);                              \
                tree_as_of(0, want[n], sizeof(want[n]));                           \
                n++;                                                               \
        } while (0)
        STEP(local_mkdir(acc, device, "d", 0, 0755, 0, &vd));
        STEP(put("d/x", 0, "one\n", &vx));
        STEP(put("d/x", vx, "two\n", &vx));
        STEP(local_symlink(acc, device, "d/l", 0, "x", 0, &vl));
        STEP(local_symlink(acc, device, "d/l", vl, "y", 0, &vl));
        STEP(local_move(acc, device, "d", vd, "e", 0, &vd));
        STEP(local_mkdir(acc, device, "e", vd, 0700, 0, &vd));
        STEP(put("f", 0, "three\n", &v));
        STEP(local_move(acc, device, "f", v, "e/x", vx, &v));
        STEP(local_delete(acc, device, "e", vd, &v));
#undef STEP
        for (size_t i = 0; i < n; i++) {
                tree_as_of(seqs[i], got, sizeof(got));
                cr_assert_str_eq(got, want[i], "as of sequence %llu", (unsigned long long) seqs[i]);
        }
        tree_as_of(seqs[n - 1], got, sizeof(got));
        cr_assert_str_eq(got, "", "everything was deleted at the end");
        tree_as_of(seqs[5], got, sizeof(got));
        cr_assert(strstr(got, "e/x 1") && strstr(got, "e/l 3") && !strstr(got, "d/"), "after the move: %s", got);
}

/* Upload content with mode and mtime as path on base. */
static int put_meta(const char *path, uint64_t base, const char *content, uint32_t mode, int64_t mtime,
                    uint64_t *version) {
        LocalUpload *u;
        uint8_t sha[BS_SHA_LEN];
        size_t n = strlen(content);
        cr_assert_eq(bs_sha_buf(content, n, sha), 0);
        cr_assert_eq(local_upload_begin(acc, &u), 0);
        cr_assert_eq(local_upload_write(u, content, n, n), 0);
        return local_put(acc, u, device, path, base, n, mode, mtime, sha, version);
}

/* The same content on a stale base is a repeat only when mode and mtime
 * are the same too; else it is another computer's change. */
Test(account, same_content_on_an_old_base) {
        uint64_t v1, v2, v;
        cr_assert_eq(put_meta("b.txt", 0, "bytes\n", 0644, 1000, &v1), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(put_meta("b.txt", v1, "bytes\n", 0755, 2000, &v2), 0, "a metadata change on the current base");
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_gt(v2, v1);
        /* A retry of that change, its ACK lost: the agent's base is still v1. */
        cr_assert_eq(put_meta("b.txt", v1, "bytes\n", 0755, 2000, &v), 1);
        cr_assert_eq(v, v2, "acknowledged with the current version");
        /* Another computer, also on v1, with its own mode: refused. */
        cr_assert_eq(put_meta("b.txt", v1, "bytes\n", 0644, 3000, &v), -ESTALE);
        cr_assert_eq(put_meta("b.txt", 0, "bytes\n", 0600, 1000, &v), -ESTALE, "made again elsewhere");
        AccountEntry e;
        cr_assert_eq(local_entry_get(acc, "b.txt", &e), 0);
        cr_assert_eq(e.mode & 07777, 0755);
        cr_assert_eq(e.mtime_ns, 2000);
        cr_assert_eq(e.version, v2);
}

/* Big uploads are synced every LOCAL_SYNC_STEP bytes in the writer's
 * thread while they arrive: the content lands whole at commit; one
 * dropped with a sync under way, or refused for its hash, leaves nothing
 * in tmp/. */
Test(account, big_uploads_synced_on_the_way) {
        const size_t size = 2 * LOCAL_SYNC_STEP + 12345, piece = 256 * 1024;
        uint8_t *data = malloc(size), sha[BS_SHA_LEN], got[BS_SHA_LEN];
        LocalUpload *u;
        uint64_t v;
        char p[4200];
        cr_assert_not_null(data);
        for (size_t i = 0; i < size; i++)
                data[i] = (uint8_t) (i * 2654435761u >> 13);
        cr_assert_eq(bs_sha_buf(data, size, sha), 0);

        for (int round = 0; round < 3; round++) {
                const char *name = round == 0 ? "big" : round == 1 ? "dropped" : "refused";
                cr_assert_eq(local_put_check(acc, name, 0, size), 0);
                cr_assert_eq(local_upload_begin(acc, &u), 0);
                size_t end = round == 1 ? LOCAL_SYNC_STEP + piece : size;
                for (size_t off = 0; off < end; off += piece)
                        cr_assert_eq(local_upload_write(u, data + off, MIN(piece, end - off), size), 0);
                if (round == 1) {
                        local_upload_free(u);
                        continue;
                }
                uint8_t *want = round == 0 ? sha : (uint8_t[BS_SHA_LEN]) { 1 };
                cr_assert_eq(local_put(acc, u, device, name, 0, size, 0600, 1000000000, want, &v),
                             round == 0 ? 0 : -EBADMSG);
        }
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(count_entries("tmp"), 0, "a dropped or refused upload left its file");
        path_of(p, sizeof(p), "tree", "big");
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(bs_sha_fd(fd, got), 0);
        cr_assert_eq(memcmp(got, sha, BS_SHA_LEN), 0, "the committed content differs");
        close(fd);
        path_of(p, sizeof(p), "tree", "dropped");
        cr_assert_eq(access(p, F_OK), -1);
        path_of(p, sizeof(p), "tree", "refused");
        cr_assert_eq(access(p, F_OK), -1);
        free(data);
}

static void on_listed(void *userdata, const char *path) {
        char *seen = userdata;
        size_t n = strlen(seen);
        cr_assert_lt(n + strlen(path) + 2, 256);
        snprintf(seen + n, 256 - n, "%s|", path);
}

/* What a joining computer GETs next is read ahead: the account's own
 * tree, directory by directory, and nothing else of its storage. */
Test(account, read_ahead_walks_the_tree) {
        uint64_t v;
        char seen[256] = "";
        BsWarm *w = NULL;
        cr_assert_eq(local_change_begin(acc), 0);
        cr_assert_eq(local_mkdir(acc, device, "b", 0, 0755, 0, &v), 0);
        cr_assert_eq(local_change_end(acc, 0), 0);
        cr_assert_eq(local_change_begin(acc), 0);
        cr_assert_eq(local_mkdir(acc, device, "b/in", 0, 0755, 0, &v), 0);
        cr_assert_eq(local_change_end(acc, 0), 0);
        cr_assert_eq(local_change_begin(acc), 0);
        cr_assert_eq(put("a", 0, "x", &v), 0);
        cr_assert_eq(local_change_end(acc, 0), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert_eq(account_warm_start(&acc->base, &(BsWarmOps) { .listed = on_listed }, seen, &w), 0);
        for (int i = 0; i < 500 && !bs_warm_done(w); i++)
                usleep(10000);
        cr_assert(bs_warm_done(w));
        bs_warm_free(w);
        cr_assert_str_eq(seen, "|b|b/in|");
}

/* Whether content sha is found for path now: 0 or -ENOENT. */
static int content_found(const char *path, const char *content) {
        uint8_t sha[BS_SHA_LEN];
        LocalContent *c;
        cr_assert_eq(bs_sha_buf(content, strlen(content), sha), 0);
        int r = local_content_open(acc, sha, path, &c);
        if (r == 0)
                local_content_free(c);
        return r;
}

/* The lookups of a read run share one snapshot: an entry removed by
 * another connection meanwhile is still found until the run ends, then
 * not. A change begun inside a run (the caller's mistake) ends the run
 * and still commits. */
Test(account, reads_share_one_snapshot) {
        sqlite3 *other;
        uint64_t v;
        cr_assert_eq(put("a", 0, "one", &v), 0);
        cr_assert_eq(put("b", 0, "two", &v), 0);
        cr_assert_eq(local_commit(acc), 0);

        local_reads_begin(acc);
        cr_assert_eq(content_found("a", "one"), 0);
        cr_assert_eq(sqlite3_open_v2(acc->db_path, &other, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        sqlite3_busy_timeout(other, 5000);
        cr_assert_eq(sqlite3_exec(other, "DELETE FROM entries WHERE CAST(path AS TEXT) IN ('a', 'b')", NULL, NULL, NULL),
                     SQLITE_OK, "%s", sqlite3_errmsg(other));
        cr_expect_eq(content_found("a", "one"), 0, "the run's snapshot still has it");
        cr_expect_eq(content_found("b", "two"), 0);
        local_reads_end(acc);
        cr_expect_eq(content_found("a", "one"), -ENOENT, "after the run, the change is seen");
        sqlite3_close(other);

        local_reads_begin(acc);
        cr_assert_eq(content_found("b", "two"), -ENOENT);
        cr_assert_eq(put("c", 0, "three", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        local_reads_end(acc);
        cr_expect_eq(content_found("c", "three"), 0);
        cr_expect_str_eq(tree_content("c"), "three");
}

static bool sha_indexed(void) {
        sqlite3_stmt *st;
        cr_assert_eq(sqlite3_prepare_v2(acc->db, "SELECT 1 FROM sqlite_master WHERE name = 'entries_sha'", -1, &st,
                                        NULL), SQLITE_OK);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        cr_assert(rc == SQLITE_ROW || rc == SQLITE_DONE);
        return rc == SQLITE_ROW;
}

/* n new files d/<tag><i> holding "bulk <i>" in one batch, committed. */
static void put_bulk(char tag, int n) {
        char name[32], content[32];
        uint64_t v;
        for (int i = 0; i < n; i++) {
                snprintf(name, sizeof(name), "d/%c%d", tag, i);
                snprintf(content, sizeof(content), "bulk %d\n", i);
                cr_assert_eq(put(name, 0, content, &v), 0);
        }
        cr_assert_eq(local_commit(acc), 0);
}

/* A bulk of new files is recorded without the index by content, whose
 * keys would come in random order; what it drops is made again before a
 * lookup by content, which finds the same as with it. */
Test(account, bulk_goes_without_the_index_by_content) {
        uint64_t v;
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 1000000000, &v), 0);
        put_bulk('f', LOCAL_SHA_BULK_MIN + 8);
        cr_assert_not(sha_indexed(), "dropped for the bulk");
        cr_assert_eq(content_found("elsewhere", "bulk 4100\n"), 0, "found by content alone");
        cr_assert(sha_indexed(), "made again for the lookup");
        cr_assert_eq(content_found("elsewhere", "not there\n"), -ENOENT);
}

/* After a bulk, a commit of a few records makes the index again, also
 * after a start of the server, which does not wait for it. A smaller bulk
 * keeps it. */
Test(account, index_by_content_back_after_the_bulk) {
        uint64_t v;
        cr_assert_eq(local_mkdir(acc, device, "d", 0, 0755, 1000000000, &v), 0);
        put_bulk('a', LOCAL_SHA_BULK_MIN - 8);
        cr_assert(sha_indexed(), "fewer than LOCAL_SHA_BULK_MIN files keep it");
        put_bulk('b', LOCAL_SHA_BULK_MIN + 8);
        cr_assert_not(sha_indexed());
        cr_assert_eq(put("quiet", 0, "one more\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert(sha_indexed(), "made again after a quiet commit");

        put_bulk('c', 3 * LOCAL_SHA_BULK_MIN);
        cr_assert_not(sha_indexed());
        char id[BS_ID_LEN + 1];
        strcpy(id, local_id(acc));
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, id, &acc), 0);
        cr_assert_not(sha_indexed(), "an open waits for no sorted pass");
        cr_assert_eq(put("quiet2", 0, "and one more\n", &v), 0);
        cr_assert_eq(local_commit(acc), 0);
        cr_assert(sha_indexed(), "made again after a quiet commit following the start");
        cr_assert_eq(content_found("elsewhere", "bulk 3\n"), 0);
}

/* Whether the account's database has an index of that name. */
static bool has_index(const char *name) {
        sqlite3_stmt *st;
        cr_assert_eq(sqlite3_prepare_v2(acc->db, "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1", -1,
                                        &st, NULL), SQLITE_OK);
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        cr_assert(rc == SQLITE_ROW || rc == SQLITE_DONE);
        return rc == SQLITE_ROW;
}

/* An account made before schema 3 loses the log's index by path when
 * opened, and the log of a path still lists its changes, newest first. */
Test(account, log_index_by_path_dropped) {
        uint64_t v, vx;
        char id[BS_ID_LEN + 1];
        cr_assert_not(has_index("log_path"), "a new account has none");
        cr_assert(has_index("log_time"));
        cr_assert_eq(put("x", 0, "one\n", &vx), 0);
        cr_assert_eq(put("y", 0, "other\n", &v), 0);
        cr_assert_eq(put("x", vx, "two\n", &vx), 0);
        cr_assert_eq(local_commit(acc), 0);
        /* As schema 2 left it. */
        cr_assert_eq(sqlite3_exec(acc->db, "CREATE INDEX log_path ON log(path); PRAGMA user_version = 2", NULL, NULL,
                                  NULL), SQLITE_OK);
        strcpy(id, local_id(acc));
        acc = local_free(acc);
        cr_assert_eq(local_open(storage, id, &acc), 0);
        cr_assert_not(has_index("log_path"), "dropped at open");

        LocalQuery *q;
        static BsHistRow row;
        uint64_t got[4];
        size_t n = 0;
        cr_assert_eq(local_query_new(acc, BS_HIST_LOG, "x", local_committed_seq(acc), 0, 10, &q), 0);
        while (n < 4 && local_query_next(q, &row) == 1) {
                cr_assert_str_eq(row.rec.path, "x");
                got[n++] = row.rec.seq;
        }
        local_query_free(q);
        cr_assert_eq(n, 2, "both changes of x, not y's");
        cr_assert_eq(got[0], vx, "newest first");
        cr_assert_lt(got[1], got[0]);
}
