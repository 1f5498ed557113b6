/* agent-pull.c - fetch other computers' changes and apply them to the tree
 *
 * Records are applied in the server's order. File content is fetched by
 * its SHA-256 with GETs sent ahead of the record being applied (a window
 * of them), written to a temporary file, checked, and renamed into place.
 * Before anything local is replaced, the disk is compared with the
 * manifest: a local change nobody has seen yet is kept as a conflict copy,
 * never overwritten.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"

#define GET_WINDOW 64
#define PULL_TIMEOUT_MS 120000

typedef struct Rec {
        uint64_t seq, size;
        int64_t mtime_ns;
        uint32_t mode;
        uint8_t op, kind;
        uint8_t sha[BS_SHA_LEN];
        char *path, *path2;
        bool want, requested, ready, failed;
        uint32_t req;
        char tmp[64];
} Rec;

typedef struct Pull {
        Rec *recs;
        size_t n, cap;
        uint64_t seq;
        bool snapshot;
        size_t next_get;   /* next record to consider fetching */
        size_t *fifo;      /* records whose GET is unanswered, in order */
        size_t fifo_head, fifo_tail, fifo_cap;
        /* The download being received. */
        int fd;
        Rec *cur;
        uint64_t left;
        BsSha *sha;
} Pull;

static void pull_clear(Agent *a, Pull *p) {
        for (size_t i = 0; i < p->n; i++) {
                if (p->recs[i].tmp[0])
                        unlinkat(a->rootfd, p->recs[i].tmp, 0);
                free(p->recs[i].path);
                free(p->recs[i].path2);
        }
        free(p->recs);
        free(p->fifo);
        if (p->fd >= 0)
                close(p->fd);
        bs_sha_free(p->sha);
}

static int receive_changes(Agent *a, Pull *p, uint64_t since) {
        BsMsg *m = malloc(sizeof(*m));
        BsRecord *rec = malloc(sizeof(*rec));
        int r;
        if (!m || !rec) {
                r = -ENOMEM;
                goto out;
        }
        bs_msg_init(m, BS_MSG_PULL, ++a->next_req);
        m->seq = since;
        uint32_t req = m->req;
        r = conn_send(a->conn, m);
        if (r < 0)
                goto out;
        for (;;) {
                r = conn_recv(a->conn, m, PULL_TIMEOUT_MS);
                if (r < 0)
                        goto out;
                if (m->type == BS_MSG_ERROR) {
                        log_error("server refused to list changes: %s (%s)", bs_err_name(m->code), m->path);
                        r = -EPROTO;
                        goto out;
                }
                if (m->type != BS_MSG_CHANGES || m->req != req) {
                        log_error("unexpected %s from server while pulling", bs_msg_type_name(m->type));
                        r = -EPROTO;
                        goto out;
                }
                p->seq = m->seq;
                p->snapshot = m->flags & BS_CHANGES_SNAPSHOT;
                BsReader rd;
                bs_reader_init(&rd, m->data, m->data_len);
                for (uint32_t i = 0; i < m->count; i++) {
                        if (bs_record_decode(&rd, rec) < 0) {
                                log_error("malformed change record from server");
                                r = -EBADMSG;
                                goto out;
                        }
                        if (bs_path_check(rec->path, rec->path_len) < 0 ||
                            (rec->op == BS_OP_MOVE && bs_path_check(rec->path2, rec->path2_len) < 0)) {
                                log_warning("ignoring change with an invalid path from server");
                                continue;
                        }
                        if (p->n == p->cap) {
                                size_t cap = p->cap ? p->cap * 2 : 256;
                                Rec *v = realloc(p->recs, cap * sizeof(Rec));
                                if (!v) {
                                        r = -ENOMEM;
                                        goto out;
                                }
                                p->recs = v;
                                p->cap = cap;
                        }
                        Rec *x = &p->recs[p->n];
                        *x = (Rec) { .seq = rec->seq, .size = rec->size, .mtime_ns = rec->mtime_ns,
                                     .mode = rec->mode, .op = rec->op, .kind = rec->kind };
                        memcpy(x->sha, rec->sha, BS_SHA_LEN);
                        x->path = strdup(rec->path);
                        x->path2 = strdup(rec->path2);
                        if (!x->path || !x->path2) {
                                free(x->path);
                                free(x->path2);
                                r = -ENOMEM;
                                goto out;
                        }
                        p->n++;
                }
                if (!(m->flags & BS_CHANGES_MORE))
                        break;
        }
        r = 0;
out:
        free(m);
        free(rec);
        return r;
}

/* Would applying this record need its content from the server? */
static bool wants_content(Agent *a, Rec *x) {
        ManifestEntry *m = malloc(sizeof(*m));
        LocalEntry *l = malloc(sizeof(*l));
        bool want = true;
        if (!m || !l)
                goto out;
        if (manifest_get(a->state, x->path, m) == 0) {
                if (m->version >= x->seq)
                        want = false;
                else if (m->kind == BS_KIND_FILE && memcmp(m->sha, x->sha, BS_SHA_LEN) == 0 &&
                         local_stat(a, x->path, l) == 0 && local_matches(l, m))
                        want = false;
        }
out:
        free(m);
        free(l);
        return want;
}

static int send_gets(Agent *a, Pull *p) {
        while (p->next_get < p->n && p->fifo_tail - p->fifo_head < GET_WINDOW) {
                Rec *x = &p->recs[p->next_get];
                if (x->op == BS_OP_PUT && !x->requested && (x->want = wants_content(a, x))) {
                        BsMsg *m = malloc(sizeof(*m));
                        if (!m)
                                return -ENOMEM;
                        bs_msg_init(m, BS_MSG_GET, ++a->next_req);
                        memcpy(m->sha, x->sha, BS_SHA_LEN);
                        m->path_len = strlen(x->path);
                        memcpy(m->path, x->path, m->path_len + 1);
                        x->req = m->req;
                        x->requested = true;
                        int r = conn_send(a->conn, m);
                        free(m);
                        if (r < 0)
                                return r;
                        if (p->fifo_tail == p->fifo_cap) {
                                size_t cap = p->fifo_cap ? p->fifo_cap * 2 : 128;
                                size_t *f = realloc(p->fifo, cap * sizeof(size_t));
                                if (!f)
                                        return -ENOMEM;
                                p->fifo = f;
                                p->fifo_cap = cap;
                        }
                        p->fifo[p->fifo_tail++] = p->next_get;
                }
                p->next_get++;
        }
        return 0;
}

static int finish_download(Agent *a, Pull *p) {
        Rec *x = p->cur;
        uint8_t sha[BS_SHA_LEN];
        int r = bs_sha_final(p->sha, sha);
        p->sha = bs_sha_free(p->sha);
        if (r == 0 && memcmp(sha, x->sha, BS_SHA_LEN) != 0)
                r = -EBADMSG;
        if (r == 0 && fchmod(p->fd, x->mode & 07777) < 0)
                r = -errno;
        if (r == 0)
                r = bs_set_mtime_fd(p->fd, x->mtime_ns);
        /* Durable before it replaces anything: a crash must not leave a
         * short file that a rescan would take for a local edit. */
        if (r == 0 && fsync(p->fd) < 0)
                r = -errno;
        close(p->fd);
        p->fd = -1;
        p->cur = NULL;
        if (r < 0) {
                log_error("download of %s failed: %s", x->path, strerror(-r));
                unlinkat(a->rootfd, x->tmp, 0);
                x->tmp[0] = 0;
                x->failed = true;
                return 0;
        }
        x->ready = true;
        a->bytes_downloaded += x->size;
        return 0;
}

/* Handle the frames that answer our GETs. */
static int handle_frame(Agent *a, Pull *p, const BsMsg *m) {
        if (m->type == BS_MSG_DATA && p->cur && m->req == p->cur->req) {
                if (m->data_len > p->left)
                        return -EBADMSG;
                int r = bs_write_sparse(p->fd, m->data, m->data_len);
                if (r < 0) {
                        log_error("cannot write %s: %s", p->cur->path, strerror(-r));
                        return r;
                }
                bs_sha_update(p->sha, m->data, m->data_len);
                p->left -= m->data_len;
                return p->left == 0 ? finish_download(a, p) : 0;
        }
        if (p->cur || p->fifo_head == p->fifo_tail)
                return -EPROTO;
        Rec *x = &p->recs[p->fifo[p->fifo_head]];
        if (m->req != x->req)
                return -EPROTO;
        p->fifo_head++;
        if (m->type == BS_MSG_ERROR) {
                log_warning("server has no content for %s: %s", x->path, bs_err_name(m->code));
                x->failed = true;
                a->need_snapshot = true;
                return 0;
        }
        if (m->type != BS_MSG_FILE || m->size != x->size)
                return -EPROTO;
        int fd = bs_tmpfile_at(a->rootfd, x->tmp, sizeof(x->tmp), 0600);
        if (fd < 0) {
                log_error("cannot create a temporary file in %s: %s", a->cfg.dir, strerror(-fd));
                return fd;
        }
        int r = bs_sha_new(&p->sha);
        if (r < 0) {
                close(fd);
                return r;
        }
        p->fd = fd;
        p->cur = x;
        p->left = m->size;
        return p->left == 0 ? finish_download(a, p) : 0;
}

static int pump(Agent *a, Pull *p) {
        BsMsg *m = malloc(sizeof(*m));
        int r;
        if (!m)
                return -ENOMEM;
        r = conn_io(a->conn, PULL_TIMEOUT_MS);
        while (r >= 0 && (r = conn_next(a->conn, m)) > 0)
                r = handle_frame(a, p, m);
        free(m);
        return r;
}

static void manifest_from_disk(Agent *a, const char *path, const Rec *x, const char *target) {
        LocalEntry *l = malloc(sizeof(*l));
        ManifestEntry *e = malloc(sizeof(*e));
        if (l && e && local_stat(a, path, l) == 0 && l->exists) {
                local_to_manifest(l, e);
                memcpy(e->sha, x->sha, BS_SHA_LEN);
                e->version = x->seq;
                if (target)
                        snprintf(e->target, sizeof(e->target), "%s", target);
                manifest_put(a->state, path, e);
        }
        free(l);
        free(e);
}

/* Set a local entry aside when it holds something the server has not seen. */
static int keep_local(Agent *a, const char *path, const LocalEntry *l, const ManifestEntry *m, bool have) {
        char copy[BS_PATH_MAX + 1];
        if (!l->exists || (have && local_matches(l, m)))
                return 0;
        int r = local_conflict_copy(a, path, copy, sizeof(copy));
        if (r < 0) {
                log_error("cannot keep local %s as a conflict copy: %s", path, strerror(-r));
                return r;
        }
        a->n_conflicts++;
        log_event(LOG_WARNING, BS_MID_CONFLICT, a->account, path,
                  "conflict on %s: changed here and on another computer; local version kept as %s", path, copy);
        agent_mark_dirty(a, copy, true);
        return 1;
}

static int place(Agent *a, const char *tmp, const char *path) {
        const char *base;
        int r = bs_mkdir_parents(a->rootfd, path, 0755);
        if (r < 0)
                return r;
        _cleanup_(closep) int pfd = bs_open_parent(a->rootfd, path, &base);
        if (pfd < 0)
                return pfd;
        if (renameat(a->rootfd, tmp, pfd, base) < 0)
                return -errno;
        return 0;
}

static void delete_tree_if_unchanged(Agent *a, const char *path);

static int apply_put(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        if (l->exists && !(have && local_matches(l, m))) {
                uint8_t sha[BS_SHA_LEN];
                if (l->kind == BS_KIND_FILE && local_hash(a, x->path, sha) == 0 && memcmp(sha, x->sha, BS_SHA_LEN) == 0) {
                        manifest_from_disk(a, x->path, x, NULL); /* already the same content */
                        return 0;
                }
        }
        if (!x->ready) {
                if (x->want)
                        return 0; /* fetch failed; a snapshot will retry */
                /* Content unchanged: only the version moves. */
                if (have) {
                        m->version = x->seq;
                        manifest_put(a->state, x->path, m);
                }
                return 0;
        }
        if (keep_local(a, x->path, l, m, have) < 0)
                return 0;
        if (l->exists && have && local_matches(l, m) && l->kind == BS_KIND_DIR)
                delete_tree_if_unchanged(a, x->path);
        int r = place(a, x->tmp, x->path);
        if (r < 0) {
                log_error("cannot write %s: %s", x->path, strerror(-r));
                return 0;
        }
        x->tmp[0] = 0;
        manifest_from_disk(a, x->path, x, NULL);
        a->n_downloaded++;
        log_event(LOG_INFO, BS_MID_DOWNLOADED, a->account, x->path, "downloaded %s (%llu bytes)", x->path,
                  (unsigned long long) x->size);
        return 0;
}

static int apply_mkdir(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        const char *base;
        if (!(l->exists && l->kind == BS_KIND_DIR)) {
                if (keep_local(a, x->path, l, m, have) < 0)
                        return 0;
                if (l->exists && have && local_matches(l, m))
                        unlinkat(a->rootfd, x->path, 0); /* an unchanged file or link */
                int r = bs_mkdir_parents(a->rootfd, x->path, 0755);
                _cleanup_(closep) int pfd = r < 0 ? r : bs_open_parent(a->rootfd, x->path, &base);
                if (pfd < 0 || (mkdirat(pfd, base, (x->mode & 07777) | 0700) < 0 && errno != EEXIST)) {
                        log_error("cannot create directory %s: %m", x->path);
                        return 0;
                }
        }
        manifest_from_disk(a, x->path, x, NULL);
        return 0;
}

static int apply_symlink(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        char tmp[64];
        if (l->exists && l->kind == BS_KIND_SYMLINK && strcmp(l->target, x->path2) == 0) {
                manifest_from_disk(a, x->path, x, x->path2);
                return 0;
        }
        if (keep_local(a, x->path, l, m, have) < 0)
                return 0;
        for (int i = 0;; i++) {
                snprintf(tmp, sizeof(tmp), BS_TEMP_PREFIX "l%08x", arc4random());
                if (symlinkat(x->path2, a->rootfd, tmp) == 0)
                        break;
                if (errno != EEXIST || i > 10) {
                        log_error("cannot create link %s: %m", x->path);
                        return 0;
                }
        }
        int r = place(a, tmp, x->path);
        if (r < 0) {
                unlinkat(a->rootfd, tmp, 0);
                log_error("cannot create link %s: %s", x->path, strerror(-r));
                return 0;
        }
        manifest_from_disk(a, x->path, x, x->path2);
        return 0;
}

typedef struct PathList {
        char **v;
        size_t n, cap;
} PathList;

static int collect_path(const char *path, const ManifestEntry *e, void *userdata) {
        PathList *pl = userdata;
        (void) e;
        if (pl->n == pl->cap) {
                size_t cap = pl->cap ? pl->cap * 2 : 64;
                char **v = realloc(pl->v, cap * sizeof(char *));
                if (!v)
                        return -ENOMEM;
                pl->v = v;
                pl->cap = cap;
        }
        if ((pl->v[pl->n] = strdup(path)))
                pl->n++;
        return 0;
}

/* Remove what the manifest lists, deepest first, unless it changed here. */
static void delete_one_if_unchanged(Agent *a, const char *path, bool *kept) {
        LocalEntry *l = malloc(sizeof(*l));
        ManifestEntry *m = malloc(sizeof(*m));
        const char *base;
        if (l && m && manifest_get(a->state, path, m) == 0 && local_stat(a, path, l) == 0 && l->exists) {
                int pfd = bs_open_parent(a->rootfd, path, &base);
                if (pfd >= 0) {
                        if (local_matches(l, m) && l->kind != BS_KIND_DIR)
                                unlinkat(pfd, base, 0);
                        else if (l->kind == BS_KIND_DIR) {
                                if (unlinkat(pfd, base, AT_REMOVEDIR) < 0)
                                        *kept = true;
                        } else
                                *kept = true;
                        close(pfd);
                }
        }
        free(l);
        free(m);
}

static void delete_tree_if_unchanged(Agent *a, const char *path) {
        PathList pl = {};
        bool kept = false;
        manifest_below(a->state, path, collect_path, &pl);
        for (size_t i = 0; i < pl.n; i++) {
                delete_one_if_unchanged(a, pl.v[i], &kept);
                free(pl.v[i]);
        }
        free(pl.v);
        delete_one_if_unchanged(a, path, &kept);
        manifest_delete_tree(a->state, path);
        /* What changed here and was never sent survives and is sent now. */
        if (kept) {
                log_event(LOG_WARNING, BS_MID_CONFLICT, a->account, path,
                          "%s was deleted on another computer but holds local changes; keeping them", path);
                agent_mark_dirty(a, path, true);
        }
}

static void apply_delete(Agent *a, Rec *x, ManifestEntry *m, bool have) {
        if (!have || m->version > x->seq)
                return;
        delete_tree_if_unchanged(a, x->path);
        log_event(LOG_INFO, BS_MID_DELETED, a->account, x->path, "removed %s (deleted on another computer)", x->path);
}

static void apply_move(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m) {
        LocalEntry *lt = malloc(sizeof(*lt));
        ManifestEntry *mt = malloc(sizeof(*mt));
        const char *bf, *bt;
        if (!lt || !mt)
                goto out;
        bool have_to = manifest_get(a->state, x->path2, mt) == 0;
        if (have_to && mt->version >= x->seq)
                goto out; /* already here (our own move) */
        if (manifest_get(a->state, x->path, m) < 0 || local_stat(a, x->path, l) < 0 ||
            local_stat(a, x->path2, lt) < 0)
                goto resync;
        bool from_ok = m->kind == BS_KIND_DIR ? l->exists && l->kind == BS_KIND_DIR : local_matches(l, m);
        bool to_ok = !lt->exists || (have_to && lt->kind != BS_KIND_DIR && local_matches(lt, mt));
        if (!from_ok || !to_ok)
                goto resync;
        if (bs_mkdir_parents(a->rootfd, x->path2, 0755) < 0)
                goto resync;
        int pf = bs_open_parent(a->rootfd, x->path, &bf);
        int pt = bs_open_parent(a->rootfd, x->path2, &bt);
        int r = pf >= 0 && pt >= 0 ? renameat(pf, bf, pt, bt) : -1;
        if (pf >= 0)
                close(pf);
        if (pt >= 0)
                close(pt);
        if (r < 0)
                goto resync;
        manifest_move_tree(a->state, x->path, x->path2);
        if (manifest_get(a->state, x->path2, m) == 0) {
                m->version = x->seq;
                manifest_put(a->state, x->path2, m);
        }
        log_event(LOG_INFO, BS_MID_MOVED, a->account, x->path2, "moved %s -> %s (on another computer)", x->path,
                  x->path2);
        goto out;
resync:
        /* Local state differs from what the move assumes: compare everything. */
        a->need_snapshot = true;
out:
        free(lt);
        free(mt);
}

static void apply_record(Agent *a, Pull *p, Rec *x) {
        LocalEntry *l = malloc(sizeof(*l));
        ManifestEntry *m = malloc(sizeof(*m));
        if (!l || !m)
                goto out;
        if (p->snapshot)
                manifest_mark_seen(a->state, x->path);
        bool have = manifest_get(a->state, x->path, m) == 0;
        if (x->op == BS_OP_MOVE) {
                apply_move(a, x, l, m);
                goto out;
        }
        if (x->op == BS_OP_DELETE) {
                apply_delete(a, x, m, have);
                goto out;
        }
        if (have && m->version >= x->seq)
                goto out;
        if (local_stat(a, x->path, l) < 0)
                goto out;
        switch (x->op) {
        case BS_OP_PUT:
                apply_put(a, x, l, m, have);
                break;
        case BS_OP_MKDIR:
                apply_mkdir(a, x, l, m, have);
                break;
        case BS_OP_SYMLINK:
                apply_symlink(a, x, l, m, have);
                break;
        }
out:
        free(l);
        free(m);
}

static int unseen_deleted(const char *path, const ManifestEntry *e, void *userdata) {
        return collect_path(path, e, userdata);
}

static int pull_once(Agent *a, uint64_t since) {
        Pull p = { .fd = -1 };
        int r = receive_changes(a, &p, since);
        if (r < 0)
                goto out;
        agent_state_begin(a->state);
        if (p.snapshot)
                manifest_clear_seen(a->state);
        for (size_t i = 0; i < p.n; i++) {
                Rec *x = &p.recs[i];
                /* Keep a window of GETs ahead; room frees as answers arrive. */
                while (r >= 0 && p.next_get <= i) {
                        r = send_gets(a, &p);
                        if (r >= 0 && p.next_get <= i)
                                r = pump(a, &p);
                }
                if (r >= 0)
                        r = send_gets(a, &p);
                while (x->requested && !x->ready && !x->failed && r >= 0)
                        r = pump(a, &p);
                if (r < 0)
                        break;
                apply_record(a, &p, x);
        }
        if (r >= 0 && p.snapshot) {
                /* Entries the server no longer has were deleted elsewhere. */
                PathList pl = {};
                manifest_unseen(a->state, unseen_deleted, &pl);
                for (size_t i = 0; i < pl.n; i++) {
                        if (manifest_get(a->state, pl.v[i], &(ManifestEntry) {}) == 0)
                                delete_tree_if_unchanged(a, pl.v[i]);
                        free(pl.v[i]);
                }
                free(pl.v);
        }
        if (r >= 0) {
                a->last_seq = p.seq;
                agent_state_set_u64(a->state, "last_seq", p.seq);
        }
        agent_state_commit(a->state);
out:
        pull_clear(a, &p);
        return r;
}

int agent_pull(Agent *a) {
        int r = pull_once(a, a->last_seq);
        for (int i = 0; r >= 0 && a->need_snapshot && i < 3; i++) {
                a->need_snapshot = false;
                log_event(LOG_INFO, BS_MID_RESCAN, a->account, NULL, "comparing the whole tree with the server");
                r = pull_once(a, 0);
        }
        return r;
}
