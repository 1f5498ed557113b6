/* test-manifest.c - unit tests for the agent's manifest (agent-state) and its diff rule */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent-state.h"
#include "agent-local.h"
#include "bs-blocks.h"

static char dir[] = "/tmp/bs-test-manifest-XXXXXX";
static AgentState *st;

static void setup(void) {
        cr_assert_not_null(mkdtemp(dir));
        cr_assert_eq(agent_state_open(dir, &st), 0);
}

static void teardown(void) {
        char cmd[128];
        agent_state_free(st);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        cr_assert_eq(system(cmd), 0);
        strcpy(dir, "/tmp/bs-test-manifest-XXXXXX");
}

static void put(const char *path, uint8_t kind, uint64_t version) {
        ManifestEntry e = { .kind = kind, .size = strlen(path), .mode = 0644, .mtime_ns = 42, .ino = 7,
                            .version = version };
        memset(e.sha, version & 0xff, sizeof(e.sha));
        cr_assert_eq(manifest_put(st, path, &e), 0, "put %s", path);
}

static bool has(const char *path) {
        ManifestEntry e;
        return manifest_get(st, path, &e) == 0;
}

static int collect(const char *path, const ManifestEntry *e, void *ud) {
        char *out = ud;
        (void) e;
        strcat(out, path);
        strcat(out, ";");
        return 0;
}

TestSuite(manifest, .init = setup, .fini = teardown);

Test(manifest, put_get_round_trip) {
        ManifestEntry e = { .kind = BS_KIND_SYMLINK, .size = 0, .mode = 0777, .mtime_ns = -5, .ino = 99, .version = 12 };
        strcpy(e.target, "../target with space");
        memset(e.sha, 0xab, sizeof(e.sha));
        cr_assert_eq(manifest_put(st, "dir/link\nname\xff", &e), 0);
        ManifestEntry g;
        cr_assert_eq(manifest_get(st, "dir/link\nname\xff", &g), 0);
        cr_expect_eq(g.kind, BS_KIND_SYMLINK);
        cr_expect_eq(g.mode, 0777);
        cr_expect_eq(g.mtime_ns, -5);
        cr_expect_eq(g.ino, 99);
        cr_expect_eq(g.version, 12);
        cr_expect_str_eq(g.target, "../target with space");
        cr_expect_eq(memcmp(g.sha, e.sha, sizeof(e.sha)), 0);
        cr_expect_eq(manifest_get(st, "dir/link", &g), -ENOENT);
        cr_expect_eq(manifest_count(st), 1);
}

Test(manifest, delete_tree_spares_look_alike_siblings) {
        put("a", BS_KIND_DIR, 1);
        put("a/x", BS_KIND_FILE, 2);
        put("a/y/z", BS_KIND_FILE, 3);
        put("a b", BS_KIND_FILE, 4);
        put("ab", BS_KIND_FILE, 5);
        put("a-", BS_KIND_FILE, 6);
        cr_assert_eq(manifest_delete_tree(st, "a"), 0);
        cr_expect(!has("a") && !has("a/x") && !has("a/y/z"));
        cr_expect(has("a b") && has("ab") && has("a-"));
        cr_expect_eq(manifest_count(st), 3);
}

Test(manifest, count_files_below_a_path) {
        put("a", BS_KIND_DIR, 1);
        put("a/x", BS_KIND_FILE, 2);
        put("a/y", BS_KIND_DIR, 3);
        put("a/y/z", BS_KIND_FILE, 4);
        put("a/l", BS_KIND_SYMLINK, 5);
        put("ab", BS_KIND_FILE, 6);
        put("a-", BS_KIND_FILE, 7);
        cr_expect_eq(manifest_count_files(st, "a"), 3, "files and links below a, not directories");
        cr_expect_eq(manifest_count_files(st, "a/y"), 1);
        cr_expect_eq(manifest_count_files(st, "ab"), 1, "a file counts itself");
        cr_expect_eq(manifest_count_files(st, "a/y/z"), 1);
        cr_expect_eq(manifest_count_files(st, "none"), 0);
        cr_expect_eq(manifest_count_files(st, ""), 5, "the whole tree");
}

Test(manifest, move_tree_rewrites_paths_and_parents) {
        put("old", BS_KIND_DIR, 1);
        put("old/f", BS_KIND_FILE, 2);
        put("old/sub", BS_KIND_DIR, 3);
        put("old/sub/g", BS_KIND_FILE, 4);
        put("old2", BS_KIND_FILE, 5);
        put("new", BS_KIND_FILE, 6); /* replaced by the move */
        put("dst", BS_KIND_DIR, 7);
        cr_assert_eq(manifest_move_tree(st, "old", "dst/new"), 0);
        cr_assert_eq(manifest_move_tree(st, "new", "dst/new2"), 0);
        ManifestEntry e;
        cr_assert_eq(manifest_get(st, "dst/new/sub/g", &e), 0);
        cr_expect_eq(e.version, 4, "versions below a move are kept");
        cr_expect(!has("old") && !has("old/f") && has("old2"));
        char out[512] = "";
        cr_assert_eq(manifest_children(st, "dst/new", collect, out), 0);
        cr_expect_str_eq(out, "dst/new/f;dst/new/sub;");
        out[0] = 0;
        cr_assert_eq(manifest_children(st, "dst", collect, out), 0);
        cr_expect_str_eq(out, "dst/new;dst/new2;");
        out[0] = 0;
        cr_assert_eq(manifest_children(st, "", collect, out), 0);
        cr_expect_str_eq(out, "dst;old2;");
}

Test(manifest, move_onto_existing_replaces_it) {
        put("a", BS_KIND_FILE, 1);
        put("b", BS_KIND_DIR, 2);
        put("b/inner", BS_KIND_FILE, 3);
        cr_assert_eq(manifest_move_tree(st, "a", "b"), 0);
        ManifestEntry e;
        cr_assert_eq(manifest_get(st, "b", &e), 0);
        cr_expect_eq(e.kind, BS_KIND_FILE);
        cr_expect(!has("b/inner") && !has("a"));
}

Test(manifest, below_lists_deepest_first) {
        put("d", BS_KIND_DIR, 1);
        put("d/e", BS_KIND_DIR, 2);
        put("d/e/f", BS_KIND_FILE, 3);
        put("d/g", BS_KIND_FILE, 4);
        put("d2", BS_KIND_FILE, 5);
        char out[512] = "";
        cr_assert_eq(manifest_below(st, "d", collect, out), 0);
        cr_expect_str_eq(out, "d/e/f;d/e;d/g;");
}

Test(manifest, seen_marks_find_what_a_snapshot_lacks) {
        put("keep", BS_KIND_FILE, 1);
        put("gone", BS_KIND_FILE, 2);
        put("gone2", BS_KIND_DIR, 3);
        cr_assert_eq(manifest_clear_seen(st), 0);
        cr_assert_eq(manifest_mark_seen(st, "keep"), 0);
        char out[512] = "";
        cr_assert_eq(manifest_unseen(st, collect, out), 0);
        cr_expect(strstr(out, "gone;") && strstr(out, "gone2;") && !strstr(out, "keep"));
}

Test(manifest, key_values) {
        char buf[64];
        uint8_t dev[16], got[16];
        cr_expect_eq(agent_state_get(st, "token", buf, sizeof(buf)), -ENOENT);
        cr_assert_eq(agent_state_set(st, "token", "ABCD-XYZ"), 0);
        cr_assert_eq(agent_state_get(st, "token", buf, sizeof(buf)), 0);
        cr_expect_str_eq(buf, "ABCD-XYZ");
        cr_expect_eq(agent_state_get(st, "token", buf, 4), -ENAMETOOLONG);
        cr_expect_eq(agent_state_get_u64(st, "last_seq"), 0);
        cr_assert_eq(agent_state_set_u64(st, "last_seq", 1234567890123ULL), 0);
        cr_expect_eq(agent_state_get_u64(st, "last_seq"), 1234567890123ULL);
        memset(dev, 0x5a, sizeof(dev));
        cr_assert_eq(agent_state_set_blob(st, "device", dev, sizeof(dev)), 0);
        cr_assert_eq(agent_state_get_blob(st, "device", got, sizeof(got)), 0);
        cr_expect_eq(memcmp(dev, got, sizeof(dev)), 0);
        cr_expect_eq(agent_state_get_blob(st, "device", got, 8), -EINVAL);
}

/* The diff rule: an entry is unchanged while kind, size, mtime, inode and
 * mode match (files), the target matches (links), or it is a directory. */
Test(manifest, local_matches_rule) {
        LocalEntry l = { .exists = true, .kind = BS_KIND_FILE };
        l.st.st_size = 10;
        l.st.st_mtim.tv_sec = 1;
        l.st.st_mtim.tv_nsec = 5;
        l.st.st_ino = 77;
        l.st.st_mode = 0100644;
        ManifestEntry m = { .kind = BS_KIND_FILE, .size = 10, .mtime_ns = 1000000005, .ino = 77, .mode = 0644 };
        cr_expect(local_matches(&l, &m));
        m.size = 11;
        cr_expect(!local_matches(&l, &m), "size differs");
        m.size = 10;
        m.mtime_ns++;
        cr_expect(!local_matches(&l, &m), "mtime differs");
        m.mtime_ns--;
        m.ino = 78;
        cr_expect(!local_matches(&l, &m), "inode differs (replaced by rename)");
        m.ino = 77;
        m.mode = 0755;
        cr_expect(!local_matches(&l, &m), "mode differs");
        m.mode = 0644;
        l.exists = false;
        cr_expect(!local_matches(&l, &m), "gone");
        l.exists = true;
        l.kind = BS_KIND_DIR;
        cr_expect(!local_matches(&l, &m), "kind differs");
        m.kind = BS_KIND_DIR;
        cr_expect(local_matches(&l, &m), "directories match by kind");
        l.kind = m.kind = BS_KIND_SYMLINK;
        strcpy(l.target, "a");
        strcpy(m.target, "b");
        cr_expect(!local_matches(&l, &m), "link target differs");
        strcpy(m.target, "a");
        cr_expect(local_matches(&l, &m));
}

Test(manifest, second_open_of_the_same_state_is_refused) {
        AgentState *other = NULL;
        cr_assert_eq(agent_state_open(dir, &other), -EBUSY, "a second agent could open the state");
        cr_assert_null(other);
        put("still-works", BS_KIND_FILE, 1);
        cr_assert(has("still-works"));
}

/* Records of chunks of 1000, 2000, 3000 bytes, fingerprints 1.., 2.., 3... */
static void make_recs(uint8_t recs[3 * BS_BLOCK_REC_LEN]) {
        memset(recs, 0, 3 * BS_BLOCK_REC_LEN);
        for (int i = 0; i < 3; i++) {
                uint8_t *r = recs + i * BS_BLOCK_REC_LEN;
                uint32_t len = 1000u * (uint32_t) (i + 1);
                r[0] = (uint8_t) len;
                r[1] = (uint8_t) (len >> 8);
                memset(r + 4, i + 1, BS_BLOCK_SUM_LEN);
        }
}

Test(manifest, chunk_lists_by_content) {
        uint8_t sha[BS_SHA_LEN], other[BS_SHA_LEN], recs[3 * BS_BLOCK_REC_LEN], *got = NULL, where[BS_SHA_LEN];
        uint8_t sum[BS_BLOCK_SUM_LEN];
        size_t count = 0;
        uint64_t off;
        memset(sha, 0x11, sizeof(sha));
        memset(other, 0x22, sizeof(other));
        make_recs(recs);
        cr_assert_eq(blocks_get(st, sha, &got, &count), -ENOENT);
        cr_assert_eq(blocks_put(st, sha, recs, 3), 0);
        cr_assert_eq(blocks_get(st, sha, &got, &count), 0);
        cr_assert_eq(count, 3);
        cr_assert_eq(memcmp(got, recs, sizeof(recs)), 0);
        free(got);
        cr_assert_eq(blocks_get(st, other, &got, &count), -ENOENT);
        /* Each chunk is found by length and fingerprint, with its offset. */
        memset(sum, 3, sizeof(sum));
        cr_assert_eq(blocks_locate(st, 3000, sum, where, &off), 0);
        cr_assert_eq(memcmp(where, sha, BS_SHA_LEN), 0);
        cr_assert_eq(off, 3000);
        cr_assert_eq(blocks_locate(st, 2999, sum, where, &off), -ENOENT, "another length");
        memset(sum, 4, sizeof(sum));
        cr_assert_eq(blocks_locate(st, 3000, sum, where, &off), -ENOENT, "another fingerprint");
        /* A second content with the same chunks keeps them findable when
         * the first goes. */
        cr_assert_eq(blocks_put(st, other, recs, 3), 0);
        cr_assert_eq(blocks_delete(st, sha), 0);
        cr_assert_eq(blocks_get(st, sha, &got, &count), -ENOENT);
        memset(sum, 2, sizeof(sum));
        cr_assert_eq(blocks_locate(st, 2000, sum, where, &off), 0);
        cr_assert_eq(memcmp(where, other, BS_SHA_LEN), 0);
        cr_assert_eq(off, 1000);
        cr_assert_eq(blocks_delete(st, other), 0);
        cr_assert_eq(blocks_locate(st, 2000, sum, where, &off), -ENOENT, "nothing holds it any more");
}

Test(manifest, old_chunk_lists_are_kept_for_the_newest_only) {
        uint8_t recs[3 * BS_BLOCK_REC_LEN], *got = NULL, sha[BS_SHA_LEN], where[BS_SHA_LEN], sum[BS_BLOCK_SUM_LEN];
        size_t count;
        uint64_t off;
        /* A big file of the manifest: its list stays whatever else comes. */
        ManifestEntry e = { .kind = BS_KIND_FILE, .size = 5u << 20, .mode = 0644, .version = 9 };
        memset(e.sha, 9, sizeof(e.sha));
        cr_assert_eq(manifest_put(st, "big", &e), 0);
        make_recs(recs);
        cr_assert_eq(blocks_keep(st, e.sha, recs, 1), 0);
        /* BLOCKS_KEEP_OLD + 2 contents no file holds any more, oldest first. */
        for (int i = 0; i < BLOCKS_KEEP_OLD + 2; i++) {
                memset(sha, 0, sizeof(sha));
                sha[0] = 0xa0;
                sha[1] = (uint8_t) i;
                cr_assert_eq(blocks_keep(st, sha, recs, 3), 0);
        }
        for (int reopen = 0; reopen < 2; reopen++) {
                for (int i = 0; i < BLOCKS_KEEP_OLD + 2; i++) {
                        sha[1] = (uint8_t) i;
                        int r = blocks_get(st, sha, &got, &count);
                        cr_assert_eq(r, i < 2 ? -ENOENT : 0, "old content %d (reopened: %d)", i, reopen);
                        if (r == 0)
                                free(got);
                }
                cr_assert_eq(blocks_get(st, e.sha, &got, &count), 0, "the manifest's big file keeps its list");
                free(got);
                agent_state_free(st);
                cr_assert_eq(agent_state_open(dir, &st), 0);
        }
        /* The index follows: the newest old contents' chunks are found. */
        memset(sum, 3, sizeof(sum));
        cr_assert_eq(blocks_locate(st, 3000, sum, where, &off), 0);
        cr_assert_eq(where[0], 0xa0);
        cr_assert_geq(where[1], 2);
}
