/* account-verify.c - compare an account's tree with its metadata, and recover
 *
 * A change reaches tree/ (rename, directory fsync) before its
 * metadata is committed, and several changes share one commit. A server killed in
 * between leaves a tree that is ahead of meta.db. Such changes were never
 * acknowledged, so their agents send them again; what matters is that the
 * tree and the metadata agree before anyone is served. Recovery takes the
 * tree as the truth: each difference becomes a change-log record of its
 * own (device all zeros: "the server"), so every agent converges on it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "local-internal.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-path.h"

typedef struct Verify {
        LocalAccount *a;
        bool repair;
        bool hash_all;
        account_verify_fn report;
        void *userdata;
        unsigned n;
} Verify;

static const uint8_t server_device[BS_DEVICE_LEN];

static void note(Verify *v, const char *path, const char *what) {
        v->n++;
        if (v->report)
                v->report(v->userdata, path, what);
}

static int seen_add(LocalAccount *a, const char *path) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(a->db, "INSERT OR IGNORE INTO temp.seen(path) VALUES (?1)", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc);
        local_bind_path(st, 1, path);
        return local_step_done(st);
}

/*
 * Record one difference as a change of the server's own: the entry found
 * on disk (op PUT, MKDIR or SYMLINK), or a deletion (op DELETE). With
 * replace, whatever the metadata had at path and below goes first.
 */
static int record_found(Verify *v, BsOp op, const char *path, const AccountEntry *found, bool replace) {
        LocalAccount *a = v->a;
        int r = local_change_begin(a);
        if (r < 0)
                return r;
        uint64_t seq = a->seq + 1;
        AccountEntry e = *found;
        e.version = seq;
        /* Whatever disk holds now, what the metadata had stays in the history. */
        r = local_history_close(a, path, replace, seq);
        if (replace)
                r = r ?: local_entries_remove(a, path);
        if (op != BS_OP_DELETE)
                r = r ?: local_entry_set(a, path, &e);
        r = r ?: local_log_add(a, seq, server_device, op, &e, path, op == BS_OP_SYMLINK ? e.target : NULL);
        r = r ?: local_set_seq(a, seq);
        return local_change_end(a, r);
}

static int hash_at(int dfd, const char *name, uint8_t sha[BS_SHA_LEN]) {
        _cleanup_(closep) int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        return bs_sha_fd(fd, sha);
}

/* Compare one tree entry with its metadata. */
static int check_one(Verify *v, int dfd, const char *name, const char *path, const struct stat *st) {
        AccountEntry e, disk = {};
        char buf[BS_PATH_MAX + 64];
        int r = local_entry_get(v->a, path, &e);
        bool known = r == 0;
        if (r < 0 && r != -ENOENT)
                return r;

        if (S_ISREG(st->st_mode))
                disk.kind = BS_KIND_FILE;
        else if (S_ISDIR(st->st_mode))
                disk.kind = BS_KIND_DIR;
        else if (S_ISLNK(st->st_mode))
                disk.kind = BS_KIND_SYMLINK;
        else {
                note(v, path, "special file in the tree (left alone)");
                return 0;
        }
        disk.size = disk.kind == BS_KIND_FILE ? (uint64_t) st->st_size : 0;
        disk.mode = st->st_mode & 07777;
        disk.mtime_ns = bs_stat_mtime_ns(st);
        if (disk.kind == BS_KIND_SYMLINK) {
                ssize_t n = readlinkat(dfd, name, disk.target, BS_PATH_MAX);
                if (n < 0)
                        return -errno;
                disk.target[n] = 0;
                disk.target_len = (size_t) n;
        }

        const char *what = NULL;
        bool hashed = false;
        if (!known)
                what = "in the tree but not in the metadata";
        else if (e.kind != disk.kind)
                what = "of another kind in the tree than in the metadata";
        else if (disk.kind == BS_KIND_SYMLINK && strcmp(e.target, disk.target) != 0)
                what = "link target differs from the metadata";
        else if (disk.kind == BS_KIND_FILE) {
                bool stat_differs = e.size != disk.size || e.mtime_ns != disk.mtime_ns;
                if (stat_differs || v->hash_all) {
                        r = hash_at(dfd, name, disk.sha);
                        if (r < 0)
                                return r;
                        hashed = true;
                        if (memcmp(disk.sha, e.sha, BS_SHA_LEN) != 0)
                                what = "content differs from the metadata";
                        else if (stat_differs)
                                what = "size or mtime differs from the metadata";
                }
        }
        if (!what)
                return 0;
        /* A file found where the metadata has none, or something else:
         * its record must carry its content's hash, which agents check. */
        if (disk.kind == BS_KIND_FILE && !hashed) {
                r = hash_at(dfd, name, disk.sha);
                if (r < 0)
                        return r;
        }
        snprintf(buf, sizeof(buf), "%s%s", what, v->repair ? "; recorded as found" : "");
        note(v, path, buf);
        BsOp op = disk.kind == BS_KIND_DIR ? BS_OP_MKDIR : disk.kind == BS_KIND_SYMLINK ? BS_OP_SYMLINK : BS_OP_PUT;
        return v->repair ? record_found(v, op, path, &disk, known) : 0;
}

static int walk(Verify *v, int dfd, const char *dir, int depth) {
        _cleanup_(closep) int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (!d)
                return -errno;
        fd = -1;
        int r = 0;
        struct dirent *de;
        while (r >= 0 && (de = readdir(d))) {
                char path[BS_PATH_MAX + 2];
                struct stat st;
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                int n = dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, de->d_name)
                               : snprintf(path, sizeof(path), "%s", de->d_name);
                if (n < 0 || (size_t) n > BS_PATH_MAX || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        note(v, de->d_name, "name not usable");
                        continue;
                }
                r = seen_add(v->a, path);
                r = r ?: check_one(v, dirfd(d), de->d_name, path, &st);
                if (r >= 0 && S_ISDIR(st.st_mode) && depth < 2048) {
                        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (sub < 0)
                                r = -errno;
                        else {
                                r = walk(v, sub, path, depth + 1);
                                close(sub);
                        }
                }
        }
        closedir(d);
        return r;
}

/* Entries the metadata has and the tree lost, parents before children. */
static int check_missing(Verify *v) {
        _cleanup_(sqlite3_finalizep) sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(v->a->db,
                "SELECT path FROM entries WHERE path NOT IN (SELECT path FROM temp.seen) ORDER BY path", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return local_sqlite_errno(rc);
        char last[BS_PATH_MAX + 1] = "";
        bool have_last = false;
        char (*paths)[BS_PATH_MAX + 1] = NULL;
        size_t n = 0;
        int r = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                char p[BS_PATH_MAX + 1];
                r = local_column_path(st, 0, p, NULL);
                if (r < 0)
                        break;
                /* Below a missing directory: covered by its deletion. */
                if (have_last && bs_path_under(p, last))
                        continue;
                void *np = realloc(paths, (n + 1) * sizeof(*paths));
                if (!np) {
                        r = -ENOMEM;
                        break;
                }
                paths = np;
                strcpy(paths[n++], p);
                strcpy(last, p);
                have_last = true;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = local_sqlite_errno(rc) ?: -EIO;
        for (size_t i = 0; r >= 0 && i < n; i++) {
                AccountEntry e;
                note(v, paths[i], v->repair ? "in the metadata but not in the tree; recorded as deleted"
                                            : "in the metadata but not in the tree");
                if (v->repair && local_entry_get(v->a, paths[i], &e) == 0)
                        r = record_found(v, BS_OP_DELETE, paths[i], &e, true);
        }
        free(paths);
        return r;
}

/*
 * A rescued file whose content an entry names: that content was
 * acknowledged, and the unfinished change was replacing or deleting it,
 * which the repair below may now record as found. A versions row keeps
 * it reachable (GET by content, history). stored is below versions/.
 */
static int rescue_row(LocalAccount *a, const char *stored) {
        uint8_t sha[BS_SHA_LEN];
        char path[BS_PATH_MAX + 1];
        sqlite3_stmt *st;
        int r = hash_at(a->versions_fd, stored, sha);
        if (r >= 0)
                (void) local_sha_index(a);
        r = r ?: local_stmt(a, STMT_ENTRY_BY_SHA, &st);
        if (r < 0)
                return r == -EISDIR ? 0 : r;
        sqlite3_bind_blob(st, 1, sha, BS_SHA_LEN, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
                sqlite3_reset(st);
                return rc == SQLITE_DONE ? 0 : (local_sqlite_errno(rc) ?: -EIO);
        }
        AccountEntry e = {
                .kind = BS_KIND_FILE,
                .size = (uint64_t) sqlite3_column_int64(st, 1),
                .mode = (uint32_t) sqlite3_column_int64(st, 2),
                .mtime_ns = sqlite3_column_int64(st, 3),
                .version = (uint64_t) sqlite3_column_int64(st, 4),
        };
        memcpy(e.sha, sha, BS_SHA_LEN);
        r = local_column_path(st, 0, path, NULL);
        sqlite3_reset(st);
        if (r < 0)
                return r;
        r = local_change_begin(a);
        r = r ?: local_version_add(a, path, &e, stored, a->committed_seq + 1);
        return local_change_end(a, r);
}

/* The files below a rescued directory, each as rescue_row(). */
static int rescue_rows(LocalAccount *a, const char *stored, int depth) {
        struct stat st;
        if (fstatat(a->versions_fd, stored, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        if (S_ISREG(st.st_mode))
                return rescue_row(a, stored);
        if (!S_ISDIR(st.st_mode) || depth > 256)
                return 0;
        _cleanup_(closep) int fd = openat(a->versions_fd, stored, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        BsDirent *v = NULL;
        size_t n = 0;
        if (fd < 0)
                return -errno;
        int r = bs_dir_list(fd, &v, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; r >= 0 && i < n; i++) {
                char sub[BS_PATH_MAX + 64];
                int k = snprintf(sub, sizeof(sub), "%s/%s", stored, v[i].name);
                if (k > 0 && (size_t) k < sizeof(sub))
                        r = rescue_rows(a, sub, depth + 1);
        }
        bs_dir_list_free(v, n);
        return r;
}

/* Kept content named after a sequence number that was never committed
 * would be overwritten by the next change of that number: keep it aside,
 * and reachable when it is content an entry names. */
static int rescue_versions(Verify *v) {
        LocalAccount *a = v->a;
        _cleanup_(closep) int fd = openat(a->versions_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        DIR *d = fdopendir(fd);
        if (!d)
                return -errno;
        fd = -1;
        struct dirent *de;
        int r = 0;
        while ((de = readdir(d))) {
                char *end;
                unsigned long long n = strtoull(de->d_name, &end, 10);
                if (*end || end == de->d_name || n <= a->committed_seq)
                        continue;
                note(v, de->d_name, v->repair ? "kept version of an unfinished change; moved to versions/recovered-*"
                                              : "kept version of an unfinished change");
                if (!v->repair)
                        continue;
                char to[64];
                snprintf(to, sizeof(to), "recovered-%llu-%lld", n, (long long) time(NULL));
                if (renameat(a->versions_fd, de->d_name, a->versions_fd, to) < 0) {
                        if (r == 0)
                                r = -errno;
                } else if (r == 0)
                        r = rescue_rows(a, to, 0);
        }
        closedir(d);
        return r ?: bs_fsync_dir(a->versions_fd);
}

/* A problem of the chunk store, named after the content it breaks. */
static void content_problem(void *userdata, const uint8_t sha[BS_SHA_LEN], const char *problem) {
        Verify *v = userdata;
        char name[sizeof("content/") + 2 * BS_SHA_LEN];
        memcpy(name, "content/", 8);
        bs_hex(sha, BS_SHA_LEN, name + 8);
        note(v, name, problem);
}

int local_verify(LocalAccount *a, bool repair, bool hash_all, account_verify_fn report, void *userdata) {
        local_forget_parent(a); /* a repair may replace directories */
        Verify v = { .a = a, .repair = repair, .hash_all = hash_all, .report = report, .userdata = userdata };
        int r;

        if (a->in_txn)
                return -EBUSY;
        r = local_sqlite_errno(sqlite3_exec(a->db,
                "CREATE TEMP TABLE IF NOT EXISTS seen(path BLOB PRIMARY KEY); DELETE FROM temp.seen;", NULL, NULL, NULL));
        r = r ?: rescue_versions(&v);
        r = r ?: walk(&v, a->tree_fd, "", 0);
        r = r ?: check_missing(&v);
        /* Kept versions in the chunk store: each chunk there (and intact
         * with hash_all). Not in a recovery, which is about the tree. */
        if (r >= 0 && !repair) {
                int k = store_check(a->store, hash_all, content_problem, &v);
                r = k < 0 ? k : 0;
        }
        if (r >= 0 && repair && a->in_txn)
                r = local_commit(a);
        if (r >= 0 && repair)
                a->unclean = false;
        (void) sqlite3_exec(a->db, "DROP TABLE IF EXISTS temp.seen;", NULL, NULL, NULL);
        return r < 0 ? r : (int) v.n;
}
