/* cli-restore.c - `backupsync restore`: files and trees as they were
 *
 * First the entries to bring back are listed by the server (the tree as
 * of a sequence, or one version of a file); directories are kept in
 * memory, everything else waits in an unnamed file in $TMPDIR (default
 * /var/tmp), so a tree of a million files costs its directories, not
 * every entry. Then directories are made, and the rest is read back
 * RESTORE_BATCH entries at a time: symlinks placed, files fetched by
 * SHA-256 with up to PIPELINE_MAX requests in flight, so a big tree
 * costs no round trip per file. Every file is written to a temporary name beside its place,
 * checked against its SHA-256, given its mode and mtime, and only then
 * renamed into place: nothing half-written is ever visible. Directory
 * modes and mtimes come last, deepest first, so a read-only directory
 * can still be filled. Like cp, tar and rsync, a restore leaves writing
 * back to the kernel: what the server keeps is the durable copy, and a
 * restore cut short by a crash is simply run again. Paths from the server are checked and every file
 * is opened beneath the target, never through a symlink.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "cli-history.h"
#include "cli-restore.h"

#define PIPELINE_MAX 4096
#define PIPELINE_BYTES (64u * 1024 * 1024)
#define RESTORE_BATCH 16384

typedef struct Item {
        char *path;
        char *target; /* symlinks */
        uint8_t kind;
        uint32_t mode;
        int64_t mtime_ns;
        uint64_t size;
        uint64_t version;
        uint8_t sha[BS_SHA_LEN];
} Item;

/* An entry as it waits in the spill file, followed by its path and target. */
typedef struct SpillHead {
        uint8_t kind;
        uint32_t mode;
        int64_t mtime_ns;
        uint64_t size, version;
        uint8_t sha[BS_SHA_LEN];
        uint16_t path_len, target_len;
} SpillHead;

typedef struct Restore {
        Item *items; /* directories, all of them; then one batch of the rest */
        size_t n, cap;
        FILE *spill; /* the rest, in the order listed */
        uint64_t listed; /* entries listed, of every kind */
        const char *want_path; /* the path asked for, for messages */
        uint64_t version;      /* --version: the row to take */
        bool found;
        uint8_t found_kind;
        BsHistRow first, second; /* versions: the newest two rows */
        size_t n_rows;
        /* progress */
        uint64_t files_total, files_done, bytes_done;
        unsigned failed;
        bool tty;
        /* The parent directory of the last file: a tree's files come
         * directory by directory. */
        int parent_fd;
        size_t parent_len;
        char parent[BS_PATH_MAX + 1];
} Restore;

static int push_item(Restore *r, const Item *it) {
        if (r->n == r->cap) {
                size_t cap = r->cap ? 2 * r->cap : 256;
                Item *v = reallocarray(r->items, cap, sizeof(*v));
                if (!v)
                        return -ENOMEM;
                r->items = v;
                r->cap = cap;
        }
        r->items[r->n++] = *it;
        return 0;
}

/* An unnamed file for the list, on disk where the system keeps such files. */
static FILE *spill_open(void) {
        const char *dir = getenv("TMPDIR");
        int fd = open(dir && dir[0] ? dir : "/var/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
                return tmpfile();
        FILE *f = fdopen(fd, "w+");
        if (!f)
                close(fd);
        return f;
}

static int spill_put(Restore *r, const BsRecord *rec) {
        SpillHead h = { .kind = rec->kind, .mode = rec->mode & 07777, .mtime_ns = rec->mtime_ns, .size = rec->size,
                        .version = rec->seq, .path_len = (uint16_t) rec->path_len,
                        .target_len = rec->kind == BS_KIND_SYMLINK ? (uint16_t) rec->path2_len : 0 };
        memcpy(h.sha, rec->sha, BS_SHA_LEN);
        if (!r->spill && !(r->spill = spill_open()))
                return -errno;
        if (fwrite(&h, sizeof(h), 1, r->spill) != 1 || fwrite(rec->path, 1, h.path_len, r->spill) != h.path_len ||
            fwrite(rec->path2, 1, h.target_len, r->spill) != h.target_len)
                return -EIO;
        return 0;
}

/* The next spilled entry into *it: 1, 0 at the end, or -errno. */
static int spill_get(Restore *r, Item *it) {
        SpillHead h;
        if (fread(&h, sizeof(h), 1, r->spill) != 1)
                return ferror(r->spill) ? -EIO : 0;
        if (h.path_len > BS_PATH_MAX || h.target_len > BS_PATH_MAX)
                return -EBADMSG;
        *it = (Item) { .kind = h.kind, .mode = h.mode, .mtime_ns = h.mtime_ns, .size = h.size, .version = h.version };
        memcpy(it->sha, h.sha, BS_SHA_LEN);
        it->path = malloc(h.path_len + 1u);
        it->target = h.kind == BS_KIND_SYMLINK ? malloc(h.target_len + 1u) : NULL;
        if (!it->path || (h.kind == BS_KIND_SYMLINK && !it->target)) {
                free(it->path);
                free(it->target);
                return -ENOMEM;
        }
        if (fread(it->path, 1, h.path_len, r->spill) != h.path_len ||
            (it->target && fread(it->target, 1, h.target_len, r->spill) != h.target_len)) {
                free(it->path);
                free(it->target);
                return -EIO;
        }
        it->path[h.path_len] = 0;
        if (it->target)
                it->target[h.target_len] = 0;
        return 1;
}

static int add_item(Restore *r, const BsRecord *rec) {
        if (bs_path_check(rec->path, rec->path_len) < 0 ||
            (rec->kind == BS_KIND_SYMLINK && (rec->path2_len == 0 || memchr(rec->path2, 0, rec->path2_len)))) {
                fprintf(stderr, "backupsync: the server sent a bad path; stopping\n");
                return EX_PROTOCOL;
        }
        r->listed++;
        if (rec->kind == BS_KIND_FILE)
                r->files_total++;
        if (rec->kind != BS_KIND_DIR) {
                int k = spill_put(r, rec);
                if (k < 0) {
                        fprintf(stderr, "backupsync: cannot keep the list of entries in a temporary file: %s\n",
                                strerror(-k));
                        return EX_CANTCREAT;
                }
                return EX_OK;
        }
        Item it = { .kind = rec->kind, .mode = rec->mode & 07777, .mtime_ns = rec->mtime_ns, .version = rec->seq };
        if (!(it.path = strdup(rec->path)) || push_item(r, &it) < 0) {
                free(it.path);
                return EX_OSERR;
        }
        return EX_OK;
}

static int on_tree_row(void *userdata, const BsHistRow *row) {
        return add_item(userdata, &row->rec);
}

static int on_version_row(void *userdata, const BsHistRow *row) {
        Restore *r = userdata;
        if (r->n_rows == 0)
                r->first = *row;
        else if (r->n_rows == 1)
                r->second = *row;
        r->n_rows++;
        if (r->version && row->rec.seq == r->version && !r->found) {
                r->found = true;
                r->found_kind = row->rec.kind;
                return add_item(r, &row->rec);
        }
        return EX_OK;
}

/* The run of deletions that ended with a directory's own: rm -rf arrives
 * as the files' deletions, then the directory's. */
typedef struct DeleteRun {
        uint64_t first;
        bool ended;
} DeleteRun;

static int on_log_row(void *userdata, const BsHistRow *row) {
        DeleteRun *d = userdata;
        if (d->ended || row->rec.op != BS_OP_DELETE)
                d->ended = true;
        else
                d->first = row->rec.seq;
        return EX_OK;
}

/* The entries of path as when says, into r->items. */
static int collect(BsConn *c, Restore *r, const char *path, const CliRestoreWhen *when) {
        const char *show = path[0] ? path : "/";
        uint64_t before = r->listed;
        int k;

        if (when->at) {
                uint64_t seq = 0;
                k = cli_history(c, BS_HIST_TREE, path, 0, (int64_t) when->at, 0, on_tree_row, r, &seq);
                if (k == EX_OK && r->listed == before) {
                        fprintf(stderr, "backupsync: %s: nothing was there at that time\n", show);
                        return EX_DATAERR;
                }
                return k;
        }
        if (!path[0]) {
                fprintf(stderr, "backupsync: restoring the whole account needs --at TIME\n");
                return EX_USAGE;
        }
        r->n_rows = 0;
        r->found = false;
        r->version = when->version;
        k = cli_history(c, BS_HIST_VERSIONS, path, 0, 0, 0, on_version_row, r, NULL);
        if (k != EX_OK)
                return k;
        if (r->n_rows == 0) {
                fprintf(stderr, "backupsync: %s: nothing is kept under this path\n", show);
                return EX_DATAERR;
        }
        if (when->version) {
                if (!r->found) {
                        fprintf(stderr, "backupsync: %s: there is no version %" PRIu64 " (backupsync versions %s "
                                        "lists them)\n", show, when->version, show);
                        return EX_DATAERR;
                }
                /* A directory's version: the tree below it as it was then
                 * (directories are kept in memory, the last one is it). */
                if (r->found_kind == BS_KIND_DIR) {
                        r->n--;
                        free(r->items[r->n].path);
                        return cli_history(c, BS_HIST_TREE, path, when->version, 0, 0, on_tree_row, r, NULL);
                }
                return EX_OK;
        }
        if (r->first.until == 0) {
                /* There now: the content before the current one. */
                if (r->first.rec.kind == BS_KIND_DIR) {
                        fprintf(stderr, "backupsync: %s is a directory that exists; say which moment with --at TIME\n",
                                show);
                        return EX_USAGE;
                }
                if (r->n_rows < 2) {
                        fprintf(stderr, "backupsync: %s has no earlier version\n", show);
                        return EX_DATAERR;
                }
                return r->second.rec.kind == BS_KIND_DIR
                               ? cli_history(c, BS_HIST_TREE, path, r->second.until - 1, 0, 0, on_tree_row, r, NULL)
                               : add_item(r, &r->second.rec);
        }
        /* Deleted or moved away: as it was just before, and for a directory
         * before the deletions of its contents that led to its own. */
        DeleteRun d = { .first = r->first.until };
        if (r->first.rec.kind == BS_KIND_DIR) {
                k = cli_history(c, BS_HIST_LOG, path, r->first.until, 0, 0, on_log_row, &d, NULL);
                if (k != EX_OK)
                        return k;
        }
        return cli_history(c, BS_HIST_TREE, path, d.first - 1, 0, 0, on_tree_row, r, NULL);
}

static void progress(Restore *r, bool done) {
        if (!r->tty)
                return;
        fprintf(stderr, "\rrestored %" PRIu64 " of %" PRIu64 " files, %.1f MiB%s", r->files_done, r->files_total,
                (double) r->bytes_done / (1024.0 * 1024.0), done ? "\n" : "");
}

static void report(Restore *r, const char *path, const char *what, int err) {
        if (r->tty)
                fputc('\n', stderr);
        fprintf(stderr, "backupsync: %s: %s%s%s\n", path, what, err ? ": " : "", err ? strerror(-err) : "");
        r->failed++;
}

static int make_dir(int root, const Item *it) {
        const char *base;
        int r = bs_mkdir_parents(root, it->path, 0700);
        if (r < 0)
                return r;
        _cleanup_(closep) int pfd = bs_open_parent(root, it->path, &base);
        if (pfd < 0)
                return pfd;
        struct stat st;
        if (mkdirat(pfd, base, 0700) < 0) {
                if (errno != EEXIST)
                        return -errno;
                if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR;
                /* Writable by us while it is filled; its own mode comes last. */
                if (fchmodat(pfd, base, (st.st_mode & 07777) | 0700, 0) < 0)
                        return -errno;
        }
        return 0;
}

static int make_symlink(int root, const Item *it) {
        char tmp[64];
        const char *base;
        int r = bs_mkdir_parents(root, it->path, 0755);
        if (r < 0)
                return r;
        _cleanup_(closep) int pfd = bs_open_parent(root, it->path, &base);
        if (pfd < 0)
                return pfd;
        bs_temp_name(tmp, sizeof(tmp));
        if (symlinkat(it->target, pfd, tmp) < 0)
                return -errno;
        r = bs_set_mtime_at(pfd, tmp, it->mtime_ns);
        if (r >= 0 && renameat(pfd, tmp, pfd, base) < 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(pfd, tmp, 0);
        return r;
}

/* The parent directory of path beneath root (made when missing), borrowed
 * from the cache: valid until the next call. */
static int parent_of(Restore *r, int root, const char *path, const char **base) {
        size_t n = bs_path_parent_len(path);
        *base = bs_path_base(path);
        if (r->parent_fd >= 0 && n == r->parent_len && memcmp(path, r->parent, n) == 0)
                return r->parent_fd;
        if (r->parent_fd >= 0)
                close(r->parent_fd);
        r->parent_fd = -1;
        int fd = bs_open_parent(root, path, base);
        if (fd == -ENOENT) {
                int k = bs_mkdir_parents(root, path, 0755);
                if (k < 0)
                        return k;
                fd = bs_open_parent(root, path, base);
        }
        if (fd < 0)
                return fd;
        memcpy(r->parent, path, n);
        r->parent_len = n;
        return r->parent_fd = fd;
}

/* A file being received: its temporary file and running hash. */
typedef struct Incoming {
        const Item *it;
        int pfd, fd;
        char tmp[64];
        const char *base;
        BsSha *sha;
        uint64_t left;
        int error;
} Incoming;

static void incoming_drop(Incoming *in) {
        if (in->fd >= 0)
                close(in->fd);
        if (in->tmp[0])
                (void) unlinkat(in->pfd, in->tmp, 0);
        bs_sha_free(in->sha);
        *in = (Incoming) { .pfd = -1, .fd = -1 };
}

static int incoming_start(Incoming *in, Restore *r, int root, const Item *it) {
        *in = (Incoming) { .it = it, .pfd = -1, .fd = -1, .left = it->size };
        in->pfd = parent_of(r, root, it->path, &in->base);
        if (in->pfd < 0)
                return in->pfd;
        /* Unnamed until complete and checked (O_TMPFILE), where the file
         * system can; else a temporary name beside its place. */
        in->tmp[0] = 0;
        in->fd = openat(in->pfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, in->it->mode | 0600);
        if (in->fd < 0)
                in->fd = bs_tmpfile_at(in->pfd, in->tmp, sizeof(in->tmp), 0600);
        if (in->fd < 0)
                return in->fd;
        return bs_sha_new(&in->sha);
}

static int incoming_finish(Incoming *in) {
        uint8_t got[BS_SHA_LEN];
        int r = bs_sha_final(in->sha, got);
        if (r < 0)
                return r;
        if (memcmp(got, in->it->sha, BS_SHA_LEN) != 0)
                return -EBADMSG;
        /* A file opened with a mode the umask leaves whole needs no fchmod(). */
        mode_t opened = in->tmp[0] ? 0600 : in->it->mode | 0600;
        if (!(opened == in->it->mode && bs_mode_kept(opened)) && fchmod(in->fd, in->it->mode) < 0)
                return -errno;
        r = bs_set_mtime_fd(in->fd, in->it->mtime_ns);
        if (r < 0)
                return r;
        if (!in->tmp[0]) {
                /* Linked in under its name at once, unless something is there:
                 * then under a temporary one, renamed over it. */
                char proc[64];
                snprintf(proc, sizeof(proc), "/proc/self/fd/%d", in->fd);
                if (linkat(AT_FDCWD, proc, in->pfd, in->base, AT_SYMLINK_FOLLOW) == 0)
                        goto linked;
                if (errno != EEXIST)
                        return -errno;
                for (int i = 0;; i++) {
                        bs_temp_name(in->tmp, sizeof(in->tmp));
                        if (linkat(AT_FDCWD, proc, in->pfd, in->tmp, AT_SYMLINK_FOLLOW) == 0)
                                break;
                        if (errno != EEXIST || i > 100) {
                                in->tmp[0] = 0;
                                return -errno;
                        }
                }
        }
        if (renameat(in->pfd, in->tmp, in->pfd, in->base) < 0)
                return -errno;
linked:
        in->tmp[0] = 0;
        return 0;
}

static const Item *sort_items;

static int cmp_version(const void *x, const void *y) {
        const Item *a = &sort_items[*(const size_t *) x], *b = &sort_items[*(const size_t *) y];
        return a->version < b->version ? -1 : a->version > b->version;
}

/* Fetch the files of r->items from from on, with requests pipelined. They
 * are asked for in the order they were written (their versions): files
 * written together lie together on the server's disk, so its reads follow
 * one another. */
static int fetch_files(BsConn *c, Restore *r, int root, size_t from) {
        static BsMsg m;
        size_t pos = 0, n_files = 0, inflight_bytes = 0, n_inflight = 0, head = 0;
        size_t *order = calloc(PIPELINE_MAX, sizeof(*order)); /* ring of item indexes in request order */
        size_t *files = calloc(r->n ? r->n : 1, sizeof(*files));
        Incoming in = { .pfd = -1, .fd = -1 };
        bool receiving = false;
        int ret = EX_OK, k;

        if (!order || !files) {
                free(order);
                free(files);
                return EX_OSERR;
        }
        for (size_t i = from; i < r->n; i++)
                if (r->items[i].kind == BS_KIND_FILE)
                        files[n_files++] = i;
        sort_items = r->items;
        qsort(files, n_files, sizeof(*files), cmp_version);
        for (;;) {
                /* Keep the pipe full. */
                while (pos < n_files && n_inflight < PIPELINE_MAX &&
                       (n_inflight == 0 || inflight_bytes < PIPELINE_BYTES)) {
                        size_t next = files[pos++];
                        const Item *it = &r->items[next];
                        bs_msg_init(&m, BS_MSG_GET, (uint32_t) next + 1);
                        memcpy(m.sha, it->sha, BS_SHA_LEN);
                        m.path_len = strlen(it->path);
                        memcpy(m.path, it->path, m.path_len + 1);
                        if (bs_conn_send(c, &m) < 0) {
                                ret = EX_OSERR;
                                goto out;
                        }
                        order[(head + n_inflight) % PIPELINE_MAX] = next;
                        n_inflight++;
                        inflight_bytes += it->size;
                }
                if (n_inflight == 0)
                        break;
                k = bs_conn_recv(c, &m, 60000);
                if (k < 0) {
                        fprintf(stderr, "%sbackupsync: connection to the server: %s\n", r->tty ? "\n" : "",
                                strerror(-k));
                        ret = EX_UNAVAILABLE;
                        goto out;
                }
                size_t idx = order[head];
                const Item *it = &r->items[idx];
                if (m.req != (uint32_t) idx + 1) {
                        fprintf(stderr, "backupsync: the server answered out of order\n");
                        ret = EX_PROTOCOL;
                        goto out;
                }
                bool done = false;
                if (m.type == BS_MSG_ERROR) {
                        report(r, it->path, m.path, 0);
                        done = true;
                } else if (m.type == BS_MSG_FILE && !receiving) {
                        if (m.size != it->size) {
                                fprintf(stderr, "backupsync: %s: the server sent %" PRIu64 " bytes, not %" PRIu64 "\n",
                                        it->path, m.size, it->size);
                                ret = EX_PROTOCOL;
                                goto out;
                        }
                        receiving = true;
                        in.error = incoming_start(&in, r, root, it);
                        done = in.left == 0;
                } else if (m.type == BS_MSG_DATA && receiving && m.data_len <= in.left) {
                        if (in.error == 0)
                                in.error = bs_sha_update(in.sha, m.data, m.data_len);
                        if (in.error == 0)
                                in.error = bs_write_all(in.fd, m.data, m.data_len);
                        in.left -= m.data_len;
                        r->bytes_done += m.data_len;
                        done = in.left == 0;
                } else {
                        fprintf(stderr, "backupsync: the server answered %s\n", bs_msg_type_name(m.type));
                        ret = EX_PROTOCOL;
                        goto out;
                }
                if (!done)
                        continue;
                if (receiving) {
                        if (in.error == 0)
                                in.error = incoming_finish(&in);
                        if (in.error == -EBADMSG)
                                report(r, it->path, "the content does not match its SHA-256; not restored", 0);
                        else if (in.error < 0)
                                report(r, it->path, "cannot write", in.error);
                        else
                                r->files_done++;
                        incoming_drop(&in);
                        receiving = false;
                }
                head = (head + 1) % PIPELINE_MAX;
                n_inflight--;
                inflight_bytes -= it->size;
                progress(r, false);
        }
out:
        incoming_drop(&in);
        free(order);
        free(files);
        return ret;
}

static void drop_items(Restore *r, size_t from) {
        for (size_t i = from; i < r->n; i++) {
                free(r->items[i].path);
                free(r->items[i].target);
        }
        r->n = from;
}

/* Links and files, RESTORE_BATCH at a time from the spill file, after the
 * directories the list holds. */
static int restore_spilled(BsConn *c, Restore *r, int root) {
        size_t dirs = r->n;
        int ret = EX_OK, k = 1;

        if (fflush(r->spill) != 0 || fseek(r->spill, 0, SEEK_SET) != 0) {
                fprintf(stderr, "backupsync: cannot read back the list of entries: %m\n");
                return EX_IOERR;
        }
        while (ret == EX_OK && k > 0) {
                Item it;
                while (r->n - dirs < RESTORE_BATCH && (k = spill_get(r, &it)) > 0)
                        if (push_item(r, &it) < 0) {
                                free(it.path);
                                free(it.target);
                                k = -ENOMEM;
                        }
                if (k < 0) {
                        fprintf(stderr, "backupsync: cannot read back the list of entries: %s\n", strerror(-k));
                        ret = EX_IOERR;
                        break;
                }
                for (size_t i = dirs; i < r->n; i++)
                        if (r->items[i].kind == BS_KIND_SYMLINK) {
                                int e = make_symlink(root, &r->items[i]);
                                if (e < 0)
                                        report(r, r->items[i].path, "cannot create", e);
                        }
                ret = fetch_files(c, r, root, dirs);
                drop_items(r, dirs);
        }
        return ret;
}

/* Directory modes and mtimes, deepest first (reverse path order). */
static void finish_dirs(Restore *r, int root) {
        for (size_t i = r->n; i-- > 0;) {
                const Item *it = &r->items[i];
                const char *base;
                if (it->kind != BS_KIND_DIR)
                        continue;
                _cleanup_(closep) int pfd = bs_open_parent(root, it->path, &base);
                int k = pfd < 0 ? pfd : bs_set_mtime_at(pfd, base, it->mtime_ns);
                if (k >= 0 && fchmodat(pfd, base, it->mode, 0) < 0)
                        k = -errno;
                if (k < 0)
                        report(r, it->path, "cannot set the directory's mode and time", k);
        }
}

int cli_restore(const CliAccount *acc, char *const *paths, size_t n, const CliRestoreWhen *when, const char *to) {
        _cleanup_(bs_conn_freep) BsConn *c = NULL;
        _cleanup_(closep) int root = -1;
        Restore r = { .tty = isatty(STDERR_FILENO), .parent_fd = -1 };
        int ret;

        if (!to && !acc->dir[0]) {
                fprintf(stderr, "backupsync: with only the server and token, say where to restore with --to DIR\n");
                return EX_USAGE;
        }
        if (to && mkdir(to, 0700) < 0 && errno != EEXIST) {
                fprintf(stderr, "backupsync: --to %s: %m\n", to);
                return EX_CANTCREAT;
        }
        root = open(to ? to : acc->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root < 0) {
                fprintf(stderr, "backupsync: %s: %m\n", to ? to : acc->dir);
                return to ? EX_CANTCREAT : EX_NOINPUT;
        }
        ret = cli_connect(acc, &c);
        for (size_t i = 0; ret == EX_OK && i < n; i++)
                ret = collect(c, &r, paths[i], when);
        /* Directories first: path order puts a parent before its children. */
        for (size_t i = 0; ret == EX_OK && i < r.n; i++) {
                int k = make_dir(root, &r.items[i]);
                if (k < 0)
                        report(&r, r.items[i].path, "cannot create", k);
        }
        if (ret == EX_OK && r.spill)
                ret = restore_spilled(c, &r, root);
        if (ret == EX_OK) {
                finish_dirs(&r, root);
                progress(&r, true);
                if (r.failed) {
                        fprintf(stderr, "backupsync: %u entries could not be restored\n", r.failed);
                        ret = EX_IOERR;
                }
        }
        if (r.parent_fd >= 0)
                close(r.parent_fd);
        drop_items(&r, 0);
        free(r.items);
        if (r.spill)
                fclose(r.spill);
        return ret;
}
