/* agent-pull.c - fetch other computers' changes and apply them to the tree
 *
 * Records are applied in the server's order (agent-apply.c). File content
 * is fetched by its SHA-256 with GETs sent ahead of the record being
 * applied (a window of them), written to a temporary file and checked.
 * A small file is received into memory and handed to a writer thread
 * (bs-writer.h) that checks and creates it while the next ones arrive.
 * Downloaded files are placed in batches: writeback starts as each one
 * completes (and every 8 MiB of a big one), the batch is synced (a few
 * files one by one, a burst with one syncfs()), then its records are
 * applied in order, so a crash never leaves a short file under a real
 * name (a rescan would take it for a local edit), and a burst costs one
 * sync per batch, not one per file. A burst's syncfs() runs in a thread
 * of its own once the writer has written the batch's files, while the
 * writer goes on with the next batch's; the batch is placed when the
 * next one closes, and the server's answers are read between its
 * renames: in a join the server then never waits for the agent's disk.
 *
 * A big file the agent holds an older version of is asked for with
 * GET_DELTA: the server sends COPY for the ranges that version already
 * has, which are read from the local file, and DATA for the rest. The
 * result is checked against its SHA-256 like any download.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent-apply.h"
#include "agent-pull.h"
#include "agent-session.h"
#include "bs-blocks.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-writer.h"

#define GET_WINDOW 512
#define APPLY_BATCH_FILES 4096
#define APPLY_EVENTS_EVERY 256
#define APPLY_BULK_MIN 16
#define APPLY_BATCH_BYTES (64u * 1024 * 1024)
#define PULL_TIMEOUT_MS 60000 /* of silence: then the connection is dropped and retried */
/* Downloads up to this size are received into memory and written by the
 * pull's writer thread, at most this many bytes of them at once (the
 * agent's memory is budgeted; the writer needs only to stay busy). */
#define PULL_BUFFER_MAX (64u * 1024)
#define PULL_WRITER_QUEUE (2u * 1024 * 1024)
/* Records per page of an answer (protocol 5): about 400 bytes each in memory. */
#define PULL_PAGE_ROWS 16384

typedef struct Pull {
        Rec *recs;
        size_t n, cap;
        size_t total; /* records of the pages before */
        uint64_t seq;
        bool snapshot;
        bool paged; /* the answer stopped at the end of a page: more to ask for */
        size_t next_get;   /* next record to consider fetching */
        size_t *fifo;      /* records whose GET is unanswered, in order */
        size_t fifo_head, fifo_tail, fifo_cap;
        /* The download being received: into fd, or (small) into buf. */
        int fd;
        uint8_t *buf;
        Rec *cur;
        uint64_t left;
        uint64_t writeback; /* bytes of it whose writeback was started */
        BsSha *sha;
        BsBlocks *blocks; /* fingerprints of a big download, kept for a later delta upload */
        uint8_t *copy_buf;
        /* Records before applied are applied; the batch waits for one sync. */
        size_t applied;
        size_t batch_files;
        uint64_t batch_bytes;
        size_t keep_fds; /* downloads kept open at once, at most (see keep_budget()) */
        size_t n_kept;   /* downloads kept open (or to be, by the writer) until placed */
        BsWriter *writer; /* made with the downloads directory; NULL: written here */
        /* A burst's batch (the records before sync_end) waits for the
         * syncfs() the syncer runs once its files are written, while the
         * writer goes on with the next batch's (see close_batch()). */
        BsWriter *syncer; /* NULL: the writer syncs, behind its files */
        BsWrite *sync_job;
        size_t sync_end;
        /* The first download the writer failed to write: the pull applies
         * the records before it and stops, as a write of its own would. */
        int write_error;
        size_t write_error_at;
        bool refetch; /* a download failed: a comparison fetches it again */
} Pull;

/* Downloads of a burst are kept open until the batch's syncfs(), then
 * dropped from the page cache: a join writes every file once, and new
 * pages cost more than the ones just freed. An eighth of the fd limit,
 * a batch at most, counted over every download not yet placed: the GETs
 * sent ahead finish long before their batch is. */
static size_t keep_budget(void) {
        return bs_fd_budget(APPLY_BULK_MIN, APPLY_BATCH_FILES);
}

#define DOWNLOADS_DIR BS_TEMP_PREFIX "downloads"

/* The directory downloads are written in (see Agent.downloads_fd). */
static int downloads_open(Agent *a) {
        if (a->downloads_fd >= 0)
                return a->downloads_fd;
        if (mkdirat(a->rootfd, DOWNLOADS_DIR, 0700) < 0 && errno != EEXIST)
                return -errno;
        int fd = openat(a->rootfd, DOWNLOADS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        return a->downloads_fd = fd;
}

/* At a pull's end nothing is left in it: gone, as temporary files were. */
static void downloads_close(Agent *a) {
        if (a->downloads_fd < 0)
                return;
        close(a->downloads_fd);
        a->downloads_fd = -1;
        (void) unlinkat(a->rootfd, DOWNLOADS_DIR, AT_REMOVEDIR);
}

/* A download that failed or was not what the server said it is: its
 * record is passed, and the pull ends with a comparison of the whole
 * tree, which fetches it again. */
static void download_failed(Pull *p, Rec *x, int r) {
        log_error("download of %s failed: %s; fetching it again", x->path, strerror(-r));
        x->ready = false;
        x->failed = true;
        p->refetch = true;
}

/* Take what the writer made of the downloads before end handed to it:
 * each one's temporary file (and fd), or the first error. */
static void collect_writes(Pull *p, size_t end) {
        for (size_t i = p->applied; i < end; i++) {
                Rec *x = &p->recs[i];
                BsWrite *w = x->write;
                if (!w)
                        continue;
                if (p->writer)
                        bs_writer_wait_job(p->writer, w);
                memcpy(x->tmp, w->name, sizeof(x->tmp));
                x->fd = w->fd;
                if (w->error == 0) {
                        x->disk_ino = (uint64_t) w->st.st_ino;
                        x->disk_size = (uint64_t) w->st.st_size;
                        x->disk_mtime_ns = bs_stat_mtime_ns(&w->st);
                        x->disk_mode = (uint32_t) w->st.st_mode;
                }
                if (w->keep_fd && w->fd < 0)
                        p->n_kept--; /* counted when handed over */
                if (w->error == -EBADMSG)
                        download_failed(p, x, w->error); /* checked by the writer: not written */
                else if (w->error < 0) {
                        x->ready = false;
                        if (!p->write_error) {
                                log_error("cannot write %s: %s", x->path, strerror(-w->error));
                                p->write_error = w->error;
                                p->write_error_at = i;
                        }
                }
                free(w);
                x->write = NULL;
        }
}

/* Free a record; a download it still holds goes. */
static void rec_clear(Agent *a, Rec *x) {
        if (x->tmp[0])
                unlinkat(a->downloads_fd, x->tmp, 0);
        if (x->fd >= 0)
                close(x->fd);
        if (x->src_fd >= 0)
                close(x->src_fd);
        free(x->path);
        free(x->path2);
}

/* Drop the records in hand (of an answer not used, or at the end). */
static void pull_drop_records(Agent *a, Pull *p) {
        if (p->writer)
                bs_writer_wait(p->writer);
        if (p->syncer)
                bs_writer_wait(p->syncer);
        free(p->sync_job);
        p->sync_job = NULL;
        collect_writes(p, p->n);
        for (size_t i = 0; i < p->n; i++)
                rec_clear(a, &p->recs[i]);
        p->total += p->n;
        p->n = 0;
        p->next_get = 0;
        p->fifo_head = p->fifo_tail = 0;
        p->applied = 0;
        p->batch_files = 0;
        p->batch_bytes = 0;
        p->n_kept = 0;
}

static void pull_clear(Agent *a, Pull *p) {
        pull_drop_records(a, p);
        p->writer = bs_writer_free(p->writer);
        p->syncer = bs_writer_free(p->syncer);
        free(p->recs);
        free(p->fifo);
        free(p->buf);
        if (p->fd >= 0)
                close(p->fd);
        bs_sha_free(p->sha);
        bs_blocks_free(p->blocks);
        free(p->copy_buf);
}

/*
 * Ask for the changes since a sequence (or, with more, the next page of
 * the answer before) and read them. A server speaking protocol 5 answers
 * in pages of PULL_PAGE_ROWS records, so no answer needs more memory.
 */
static int receive_changes(Agent *a, Pull *p, uint64_t since, bool more) {
        BsMsg *m = malloc(sizeof(*m));
        BsRecord *rec = malloc(sizeof(*rec));
        bool paging = a->conn->version >= BS_PROTO_PAGE_VERSION;
        uint64_t seq0 = p->seq;
        int r;
        if (!m || !rec) {
                r = -ENOMEM;
                goto out;
        }
        bs_msg_init(m, paging ? BS_MSG_PULL_PAGE : BS_MSG_PULL, ++a->next_req);
        m->seq = since;
        if (paging) {
                m->count = PULL_PAGE_ROWS;
                m->flags = more ? BS_PULL_CONTINUE : 0;
        }
        uint32_t req = m->req;
        p->paged = false;
        log_debug("asking for changes since %llu%s (request %u)", (unsigned long long) since,
                  more ? ", next page" : "", req);
        r = bs_conn_send(a->conn, m);
        if (r < 0)
                goto out;
        for (;;) {
                r = bs_conn_recv(a->conn, m, PULL_TIMEOUT_MS);
                if (r == -ETIMEDOUT)
                        log_warning("no list of changes from the server after %d s (request %u, %zu records so far)",
                                    PULL_TIMEOUT_MS / 1000, req, p->n);
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
                /* Every page is of one answer: the same sequence, the same kind. */
                if (more && (m->seq != seq0 || !(m->flags & BS_CHANGES_SNAPSHOT) != !p->snapshot)) {
                        log_error("the next page of changes is of another answer");
                        r = -EPROTO;
                        goto out;
                }
                p->seq = m->seq;
                p->snapshot = m->flags & BS_CHANGES_SNAPSHOT;
                p->paged = m->flags & BS_CHANGES_PAGE;
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
                                     .mode = rec->mode, .op = rec->op, .kind = rec->kind, .fd = -1,
                                     .src_fd = -1 };
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

typedef struct Key {
        const char *path;
        size_t i;
} Key;

static int key_cmp(const void *x, const void *y) {
        const Key *k = x, *l = y;
        int c = strcmp(k->path, l->path);
        return c ? c : (k->i > l->i) - (k->i < l->i);
}

/* First key for path in a sorted array, or NULL. */
static const Key *key_first(const Key *v, size_t n, const char *path) {
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(v[mid].path, path) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo < n && strcmp(v[lo].path, path) == 0 ? &v[lo] : NULL;
}

/*
 * Decide, before anything is fetched, which PUT records need no content:
 * the manifest describes the disk before this pull, so it can only say
 * "already here" for a path no earlier record of the pull changes. A
 * record replaced later in the pull (same path, no MOVE in between) is
 * superseded and neither fetched nor applied.
 */
static int mark_order(Pull *p) {
        size_t n_keys = 0, n_anc = 0;
        int r = 0;
        if (p->snapshot || p->n < 2)
                return 0; /* a snapshot names each path once */
        Key *keys = calloc(2 * p->n, sizeof(Key));
        Key *anc = calloc(2 * p->n, sizeof(Key));
        size_t *moves = calloc(p->n + 1, sizeof(size_t)); /* MOVE records before i */
        if (!keys || !anc || !moves) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < p->n; i++) {
                Rec *x = &p->recs[i];
                bool move = x->op == BS_OP_MOVE;
                moves[i + 1] = moves[i] + move;
                keys[n_keys++] = (Key) { x->path, i };
                if (move)
                        keys[n_keys++] = (Key) { x->path2, i };
                if (move || x->op == BS_OP_DELETE) {
                        anc[n_anc++] = (Key) { x->path, i };
                        if (move)
                                anc[n_anc++] = (Key) { x->path2, i };
                }
        }
        qsort(keys, n_keys, sizeof(Key), key_cmp);
        qsort(anc, n_anc, sizeof(Key), key_cmp);
        for (size_t k = 0; k < n_keys; k++) {
                Rec *x = &p->recs[keys[k].i];
                if (x->op != BS_OP_PUT || keys[k].path != x->path)
                        continue;
                if (k > 0 && strcmp(keys[k - 1].path, x->path) == 0)
                        x->touched = true;
                if (k + 1 < n_keys && strcmp(keys[k + 1].path, x->path) == 0) {
                        size_t j = keys[k + 1].i;
                        const Rec *y = &p->recs[j];
                        if (y->op != BS_OP_MOVE && moves[j] == moves[keys[k].i])
                                x->superseded = true;
                }
                /* A directory above it deleted or moved earlier in the pull
                 * (touched), or deleted later with no move between
                 * (superseded: the deletion takes it too). */
                char up[BS_PATH_MAX + 1];
                size_t i = keys[k].i;
                snprintf(up, sizeof(up), "%s", x->path);
                for (size_t len = bs_path_parent_len(up); len > 0; len = bs_path_parent_len(up)) {
                        up[len] = 0;
                        for (const Key *f = key_first(anc, n_anc, up); f && f < anc + n_anc && strcmp(f->path, up) == 0;
                             f++) {
                                if (f->i < i)
                                        x->touched = true;
                                else if (p->recs[f->i].op == BS_OP_DELETE && moves[f->i] == moves[i])
                                        x->superseded = true;
                        }
                }
        }
out:
        free(keys);
        free(anc);
        free(moves);
        return r;
}

/* Rename *path when it is at or below from. */
static int follow_move(char **path, const char *from, const char *to) {
        char buf[BS_PATH_MAX + 1];
        if (!bs_path_under(*path, from))
                return 0;
        if (bs_path_rebase(*path, from, to, buf, sizeof(buf)) < 0)
                return 0; /* too long there: left as it is, compared later */
        char *p = strdup(buf);
        if (!p)
                return -ENOMEM;
        free(*path);
        *path = p;
        return 0;
}

/*
 * A MOVE of ours that the manifest already records (acknowledged before
 * this pull) came after some records of the pull: those name the places
 * as they were before it (another computer deleted d/f, then we moved d
 * to e). Rename them through it, or they would miss what they change.
 * What they changed at or below its destination, the move replaced on
 * the server: applied now, they would change what moved there instead.
 */
static int follow_own_moves(Agent *a, Pull *p) {
        ManifestEntry *m = malloc(sizeof(*m));
        int r = 0;
        if (!m)
                return -ENOMEM;
        for (size_t j = 0; j < p->n && r >= 0; j++) {
                Rec *mv = &p->recs[j];
                if (mv->op != BS_OP_MOVE || manifest_get(a->state, mv->path2, m) < 0 || m->version < mv->seq)
                        continue;
                for (size_t i = 0; i < j && r >= 0; i++) {
                        Rec *x = &p->recs[i];
                        if (bs_path_under(x->path, mv->path2) ||
                            (x->op == BS_OP_MOVE && bs_path_under(x->path2, mv->path2))) {
                                /* Out of it (it lives on) or into it (its
                                 * source is gone): the comparison says. */
                                if (x->op == BS_OP_MOVE)
                                        a->need_snapshot = true;
                                x->superseded = true;
                                continue;
                        }
                        r = follow_move(&x->path, mv->path, mv->path2);
                        if (r >= 0 && x->op == BS_OP_MOVE)
                                r = follow_move(&x->path2, mv->path, mv->path2);
                }
        }
        free(m);
        return r;
}

/* Would applying this record need its content from the server? */
static bool wants_content(Agent *a, Rec *x, bool snapshot) {
        ManifestEntry *m = malloc(sizeof(*m));
        LocalEntry *l = malloc(sizeof(*l));
        bool want = true;
        if (!m || !l)
                goto out;
        if (x->superseded || ignore_set_path(a->ignore, a->rootfd, x->path, false))
                want = false;
        else if (x->touched)
                want = true;
        else if (manifest_get(a->state, x->path, m) == 0) {
                if (!apply_is_news(m, x, snapshot))
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

/*
 * For GET_DELTA: an fd of a local file that still holds the version the
 * manifest records, which have receives; -1 to fetch the whole file. The
 * file at the path, or else one elsewhere with the very content asked for
 * (a copy made on another computer), which the server answers with COPY
 * alone.
 */
static int delta_source(Agent *a, const Rec *x, uint8_t have[BS_SHA_LEN]) {
        ManifestEntry *m = malloc(sizeof(*m));
        LocalEntry *l = malloc(sizeof(*l));
        char *path = malloc(BS_PATH_MAX + 1);
        struct stat st;
        int fd = -1;
        if (!m || !l || !path)
                goto out;
        size_t n = strlen(x->path);
        if (n > BS_PATH_MAX)
                goto out;
        memcpy(path, x->path, n + 1);
        if (manifest_get(a->state, path, m) < 0 || m->kind != BS_KIND_FILE || m->size < BS_DELTA_MIN ||
            memcmp(m->sha, x->sha, BS_SHA_LEN) == 0) {
                if (manifest_find_content(a->state, x->sha, path, BS_PATH_MAX + 1) < 0 ||
                    manifest_get(a->state, path, m) < 0)
                        goto out;
        }
        if (local_stat(a, path, l) < 0 || !local_matches(l, m))
                goto out;
        fd = bs_open_read_beneath(a->rootfd, path);
        /* The very file that was compared, not one renamed over it since. */
        if (fd >= 0 && (fstat(fd, &st) < 0 || st.st_ino != l->st.st_ino || st.st_dev != l->st.st_dev)) {
                close(fd);
                fd = -1;
        }
        if (fd >= 0)
                memcpy(have, m->sha, BS_SHA_LEN);
out:
        free(m);
        free(l);
        free(path);
        return fd < 0 ? -1 : fd;
}

static int send_gets(Agent *a, Pull *p) {
        while (p->next_get < p->n && p->fifo_tail - p->fifo_head < GET_WINDOW) {
                Rec *x = &p->recs[p->next_get];
                if (x->op == BS_OP_PUT && !x->requested && (x->want = wants_content(a, x, p->snapshot))) {
                        BsMsg *m = malloc(sizeof(*m));
                        if (!m)
                                return -ENOMEM;
                        bs_msg_init(m, BS_MSG_GET, ++a->next_req);
                        if (x->size >= BS_DELTA_MIN && !a->no_delta && a->conn->version >= BS_PROTO_DELTA_VERSION &&
                            (x->src_fd = delta_source(a, x, m->have)) >= 0)
                                m->type = BS_MSG_GET_DELTA;
                        memcpy(m->sha, x->sha, BS_SHA_LEN);
                        m->path_len = strlen(x->path);
                        memcpy(m->path, x->path, m->path_len + 1);
                        x->req = m->req;
                        x->requested = true;
                        int r = bs_conn_send(a->conn, m);
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

/* Hand a small download to the writer (or write it here), which checks it. */
static int hand_over(Agent *a, Pull *p, Rec *x) {
        BsWrite *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        /* Its SHA-256 is checked by the writer, off this thread. */
        *w = (BsWrite) { .kind = BS_WRITE_FILE, .buf = TAKE_PTR(p->buf), .len = x->size,
                         .mode = x->mode & 07777, .mtime_ns = x->mtime_ns,
                         .keep_fd = p->n_kept < p->keep_fds, .keep_read_only = true, .want_stat = true,
                         .check_sha = true };
        memcpy(w->sha, x->sha, BS_SHA_LEN);
        p->n_kept += w->keep_fd;
        x->write = w;
        if (p->writer)
                bs_writer_submit(p->writer, w);
        else
                bs_write_now(a->downloads_fd, w);
        return 0;
}

static int finish_download(Agent *a, Pull *p) {
        Rec *x = p->cur;
        uint8_t sha[BS_SHA_LEN];
        int r = 0;
        if (!p->buf) { /* else checked by the writer (see hand_over()) */
                r = bs_sha_final(p->sha, sha);
                if (r == 0 && memcmp(sha, x->sha, BS_SHA_LEN) != 0)
                        r = -EBADMSG;
        }
        p->sha = bs_sha_free(p->sha);
        if (x->src_fd >= 0) {
                close(x->src_fd);
                x->src_fd = -1;
                /* The local file changed under us, or the server's copy of
                 * it differs: the next pass fetches whole files. */
                if (r == -EBADMSG) {
                        a->no_delta = true;
                        a->need_snapshot = true;
                }
        }
        /* The chunk list of a big download, for deltas and copies of it. */
        if (r == 0 && p->blocks && bs_blocks_final(p->blocks) == 0) {
                size_t n;
                const uint8_t *recs = bs_blocks_recs(p->blocks, &n);
                blocks_keep(a->state, x->sha, recs, n);
        }
        p->blocks = bs_blocks_free(p->blocks);
        p->cur = NULL;
        if (p->buf) {
                if (r == 0)
                        r = hand_over(a, p, x); /* takes buf */
                free(p->buf);
                p->buf = NULL;
                if (r < 0)
                        goto failed;
                x->ready = true;
                return 0;
        }
        if (r == 0 && !bs_mode_kept(x->mode & 07777) && fchmod(p->fd, x->mode & 07777) < 0)
                r = -errno;
        if (r == 0)
                r = bs_set_mtime_fd(p->fd, x->mtime_ns);
        /* Made durable by apply_batch(), before it replaces anything. */
        if (r == 0) {
                if (x->size >= 1024 * 1024) /* small files: costs more than it saves */
                        (void) sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
                /* Past the budget, the batch's syncfs() needs no fd. */
                if (p->n_kept < p->keep_fds) {
                        r = bs_reopen_read_only(a->downloads_fd, x->tmp, TAKE_FD(p->fd));
                        x->fd = r < 0 ? -1 : r;
                        p->n_kept += x->fd >= 0;
                        r = MIN(r, 0);
                } else {
                        close(p->fd);
                        p->fd = -1;
                }
        } else {
                close(p->fd);
                p->fd = -1;
        }
        if (r < 0) {
                unlinkat(a->downloads_fd, x->tmp, 0);
                x->tmp[0] = 0;
                goto failed;
        }
        x->ready = true;
        return 0;
failed:
        download_failed(p, x, r);
        return 0;
}

/* Write the next bytes of the download being received. */
static int take_bytes(Agent *a, Pull *p, const uint8_t *data, size_t n) {
        if (p->buf) {
                /* handle_frame() checked n against what is left. */
                memcpy(p->buf + (p->cur->size - p->left), data, n);
                p->left -= n;
                return 0;
        }
        int r = bs_write_sparse(p->fd, data, n);
        if (r < 0) {
                log_error("cannot write %s: %s", p->cur->path, strerror(-r));
                return r;
        }
        bs_sha_update(p->sha, data, n);
        if (p->blocks && bs_blocks_update(p->blocks, data, n) < 0)
                p->blocks = bs_blocks_free(p->blocks);
        p->left -= n;
        bs_writeback_step(p->fd, &p->writeback, p->cur->size - p->left);
        return 0;
}

/* COPY: the next len bytes are those at off of the local version. A local
 * file that is shorter now yields zeros, which the SHA-256 check refuses. */
static int copy_local(Agent *a, Pull *p, uint64_t off, uint64_t len) {
        if (!p->copy_buf && !(p->copy_buf = malloc(BS_CHUNK)))
                return -ENOMEM;
        while (len > 0) {
                size_t n = (size_t) MIN((uint64_t) BS_CHUNK, len);
                ssize_t got = bs_pread_full(p->cur->src_fd, p->copy_buf, n, (off_t) off);
                size_t have = got > 0 ? (size_t) got : 0;
                if (have < n)
                        memset(p->copy_buf + have, 0, n - have);
                int r = take_bytes(a, p, p->copy_buf, n);
                if (r < 0)
                        return r;
                off += n;
                len -= n;
        }
        return 0;
}

/* Handle the frames that answer our GETs. */
static int handle_frame(Agent *a, Pull *p, const BsMsg *m) {
        if (m->type == BS_MSG_DATA && p->cur && m->req == p->cur->req) {
                if (m->data_len > p->left)
                        return -EBADMSG;
                int r = take_bytes(a, p, m->data, m->data_len);
                if (r < 0)
                        return r;
                a->bytes_downloaded += m->data_len;
                return p->left == 0 ? finish_download(a, p) : 0;
        }
        if (m->type == BS_MSG_COPY && p->cur && m->req == p->cur->req) {
                if (p->cur->src_fd < 0 || m->size > p->left)
                        return -EPROTO;
                int r = copy_local(a, p, m->offset, m->size);
                if (r < 0)
                        return r;
                p->cur->copied += m->size;
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
        int fd = downloads_open(a);
        if (fd >= 0 && !p->writer)
                (void) bs_writer_new(fd, PULL_WRITER_QUEUE, &p->writer); /* without: written here */
        if (fd >= 0 && m->size <= PULL_BUFFER_MAX) {
                p->buf = malloc(m->size ?: 1);
                fd = p->buf ? -1 : -ENOMEM;
        } else if (fd >= 0) {
                /* Made with its mode where the umask allows: a system call less. */
                fd = bs_tmpfile_at(fd, x->tmp, sizeof(x->tmp), x->mode & 0777);
                x->disk_ino = 0; /* written here: looked at when placed */
        }
        if (fd < 0 && !p->buf) {
                log_error("cannot create a temporary file in %s: %s", a->cfg.dir, strerror(-fd));
                return fd;
        }
        int r = p->buf ? 0 : bs_sha_new(&p->sha);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                free(p->buf);
                p->buf = NULL;
                return r;
        }
        if (m->size >= BS_DELTA_MIN)
                (void) bs_blocks_new(&p->blocks); /* without: no delta upload of it later */
        p->fd = fd;
        p->cur = x;
        p->left = m->size;
        p->writeback = 0;
        return p->left == 0 ? finish_download(a, p) : 0;
}

static int pump(Agent *a, Pull *p) {
        BsMsg *m = malloc(sizeof(*m));
        int r;
        if (!m)
                return -ENOMEM;
        agent_progress(a, "downloading", p->total + p->fifo_head, p->total + p->n, a->bytes_downloaded);
        r = agent_io(a, PULL_TIMEOUT_MS);
        if (r == -ETIMEDOUT)
                log_warning("no data from the server for %d s while downloading (%zu of %zu answers, %s)",
                            PULL_TIMEOUT_MS / 1000, p->fifo_head, p->fifo_tail, p->cur ? p->cur->path : "between files");
        while (r >= 0 && (r = bs_conn_next(a->conn, m)) > 0)
                r = handle_frame(a, p, m);
        free(m);
        return r;
}


/* Between the records a batch places: read what the server has sent
 * meanwhile and keep the window of GETs full, so it never waits for the
 * agent's renames. */
static int pump_nowait(Agent *a, Pull *p) {
        BsMsg *m = malloc(sizeof(*m));
        if (!m)
                return -ENOMEM;
        int r = send_gets(a, p);
        if (r >= 0 && (r = bs_conn_io(a->conn, 0)) == -ETIMEDOUT)
                r = 0;
        while (r >= 0 && (r = bs_conn_next(a->conn, m)) > 0)
                r = handle_frame(a, p, m);
        free(m);
        return r;
}

/*
 * Place the records before end, in order, their contents durable: bulk
 * when a syncfs() covered them, else each one is synced here (every
 * one's writeback started first, so the disk has them all at once).
 * burst: the batch was big, its pages are dropped. A failed read of the
 * connection meanwhile is kept for the caller (*io_error).
 */
static void place_batch(Agent *a, Pull *p, size_t end, bool bulk, bool burst, int *io_error) {
        int *drop = burst ? calloc(end - p->applied + 1, sizeof(int)) : NULL;
        size_t n_drop = 0;
        for (size_t i = p->applied; !bulk && end - p->applied > 1 && i < end; i++)
                if (p->recs[i].ready)
                        (void) bs_sync_at(a->downloads_fd, p->recs[i].tmp, p->recs[i].fd, true);
        for (size_t i = p->applied; i < end; i++) {
                Rec *x = &p->recs[i];
                if (!x->ready)
                        continue;
                /* Past the fds kept open (see keep_budget()), opened again. */
                int r = bulk ? 0 : bs_sync_at(a->downloads_fd, x->tmp, x->fd, false);
                if (r < 0) {
                        log_error("cannot flush the download of %s to disk: %s; fetching it again later", x->path,
                                  strerror(-r));
                        unlinkat(a->downloads_fd, x->tmp, 0);
                        x->tmp[0] = 0;
                        x->ready = false;
                        a->need_snapshot = true;
                }
                /* A few files stay cached: the user may be about to open
                 * them. A burst's are dropped by the writer's thread. */
                if (x->fd >= 0 && drop)
                        drop[n_drop++] = x->fd;
                else if (x->fd >= 0) {
                        if (burst)
                                (void) posix_fadvise(x->fd, 0, 0, POSIX_FADV_DONTNEED);
                        close(x->fd);
                }
                if (x->fd >= 0)
                        p->n_kept--;
                x->fd = -1;
        }
        if (n_drop > 0)
                bs_writer_drop(p->writer, drop, n_drop);
        else
                free(drop);
        /* Files placed one after another in a directory share its fd. */
        local_scan_begin(a);
        for (size_t i = p->applied; i < end; i++) {
                apply_record(a, &p->recs[i], p->snapshot);
                if ((i - p->applied) % APPLY_EVENTS_EVERY == APPLY_EVENTS_EVERY - 1 && *io_error >= 0)
                        *io_error = pump_nowait(a, p);
        }
        local_scan_end(a);
        if (end > p->applied)
                log_debug("placed records %zu to %zu of the answer", p->total + p->applied + 1, p->total + end);
        p->applied = end;
        /* Each placed file queued a few inotify events: read them now, or a
         * long burst overflows the kernel's queue and forces a full rescan. */
        watcher_process(a->watcher);
}

/* Where a batch ending at end really ends: before the first download the
 * writer failed to write, if that is in it. */
static size_t batch_end(Pull *p, size_t end) {
        collect_writes(p, end);
        return p->write_error && p->write_error_at < end ? MAX(p->write_error_at, p->applied) : end;
}

/* Place the batch whose syncfs() the writer was given, once it is done. */
static void finish_pending(Agent *a, Pull *p, int *io_error) {
        if (!p->sync_job)
                return;
        bs_writer_wait_job(p->syncer ?: p->writer, p->sync_job);
        bool bulk = p->sync_job->error == 0;
        free(p->sync_job);
        p->sync_job = NULL;
        place_batch(a, p, batch_end(p, p->sync_end), bulk, true, io_error);
}

/*
 * The records before end are a batch, every download of it complete.
 * A burst's syncfs() goes to the writer, behind the batch's files, and
 * the batch is placed when the next one closes, so the disk's flush and
 * the renames overlap the next downloads. A few files, or no writer: at
 * once, each synced on its own. Returns a failed read of the connection,
 * or the first download the writer failed to write.
 */
static int close_batch(Agent *a, Pull *p, size_t end) {
        bool burst = p->batch_files >= APPLY_BULK_MIN;
        /* A syncfs() would also wait for other programs' data: with much
         * of it waiting for the disk, the batch is synced file by file. */
        bool cheap = bs_syncfs_cheap(p->batch_bytes);
        int io_error = 0;
        p->batch_files = 0;
        p->batch_bytes = 0;
        BsWrite *job = burst && cheap && p->writer ? calloc(1, sizeof(*job)) : NULL;
        if (job) {
                job->kind = BS_WRITE_SYNCFS;
                job->sync_fd = fcntl(a->rootfd, F_DUPFD_CLOEXEC, 3);
                if (job->sync_fd < 0) {
                        free(job);
                        job = NULL;
                }
        }
        /* Its own thread, once the batch's files are written: the writer
         * goes on with the next ones meanwhile instead of stopping the
         * downloads for as long as the disk takes to flush. */
        if (job && !p->syncer)
                (void) bs_writer_new(a->downloads_fd, 0, &p->syncer);
        if (job && p->syncer) {
                collect_writes(p, end);
                bs_writer_submit(p->syncer, job);
        } else if (job)
                bs_writer_submit(p->writer, job);
        /* The batch before, whose sync came before this one's. */
        finish_pending(a, p, &io_error);
        if (job) {
                p->sync_job = job;
                p->sync_end = end;
        } else {
                /* A few files are synced one by one, which never waits for
                 * other programs' dirty data; a burst with one syncfs().
                 * Files that finished while an earlier batch was big kept
                 * no fd: syncfs too. */
                end = batch_end(p, end);
                bool missing = false;
                for (size_t i = p->applied; i < end; i++)
                        missing |= p->recs[i].ready && p->recs[i].fd < 0;
                bool bulk = (burst || missing) && cheap && syncfs(a->rootfd) == 0;
                place_batch(a, p, end, bulk, burst, &io_error);
        }
        return io_error < 0 ? io_error : p->write_error;
}

typedef struct Unseen {
        Agent *a;
        PathList list;
} Unseen;

static int unseen_deleted(const char *path, const ManifestEntry *e, void *userdata) {
        Unseen *u = userdata;
        /* Not on the server but ignored here: this computer's copy stays. */
        if (ignore_set_path(u->a->ignore, u->a->rootfd, path, e->kind == BS_KIND_DIR))
                return 0;
        return apply_collect_path(path, e, &u->list);
}

/* Close the batch before end and place it and the one before: every
 * record before end is then applied (or failed). */
static int flush_batches(Agent *a, Pull *p, size_t end) {
        int r = close_batch(a, p, end), k = 0;
        finish_pending(a, p, &k);
        return r < 0 ? r : k < 0 ? k : p->write_error;
}

/*
 * Every record in hand is fetched: drop the placed ones and append the
 * next page of the answer behind the batches still open or waiting for
 * their sync. Those are placed while the next page's files arrive, as
 * within a page; waiting for them first left the server idle at every
 * page's end. Indices into the records go down by the number dropped,
 * which *i (the first record not yet looked at) follows.
 */
static int next_page(Agent *a, Pull *p, uint64_t since, size_t *i) {
        size_t k = p->applied;
        /* Every GET of the page is answered: no download is under way. */
        if (p->cur || p->fifo_head != p->fifo_tail)
                return -EINVAL;
        for (size_t j = 0; j < k; j++)
                rec_clear(a, &p->recs[j]);
        memmove(p->recs, p->recs + k, (p->n - k) * sizeof(Rec));
        p->n -= k;
        p->total += k;
        p->next_get -= k;
        p->fifo_head = p->fifo_tail = 0;
        p->applied = 0;
        if (p->sync_job)
                p->sync_end -= k;
        if (p->write_error)
                p->write_error_at = MAX(p->write_error_at, k) - k;
        *i -= k;
        return receive_changes(a, p, since, true);
}

/* Fetch and apply the records of the answer, page by page, in order; what
 * is complete is kept on failure. A snapshot names each path once, so a
 * page needs nothing of the one before; the seen marks of all pages are
 * in the database. */
static int apply_records(Agent *a, Pull *p, uint64_t since) {
        int r = 0;
        for (size_t i = 0;; i++) {
                if (i == p->n && p->paged) {
                        r = next_page(a, p, since, &i);
                        if (r < 0) {
                                (void) flush_batches(a, p, i);
                                return r;
                        }
                }
                if (i == p->n)
                        break;
                Rec *x = &p->recs[i];
                /* Keep a window of GETs ahead; room frees as answers arrive. */
                while (r >= 0 && p->next_get <= i) {
                        r = send_gets(a, p);
                        if (r >= 0 && p->next_get <= i)
                                r = pump(a, p);
                }
                if (r >= 0)
                        r = send_gets(a, p);
                while (x->requested && !x->ready && !x->failed && r >= 0)
                        r = pump(a, p);
                if (r < 0) {
                        (void) flush_batches(a, p, i);
                        return r;
                }
                if (x->ready) {
                        p->batch_files++;
                        p->batch_bytes += x->size;
                        /* Downloads queue no events (see downloads_open()),
                         * but other programs may write meanwhile: read their
                         * events as they come, or a long batch could
                         * overflow the kernel's queue and cost a rescan. */
                        if (p->batch_files % APPLY_EVENTS_EVERY == 0)
                                watcher_process(a->watcher);
                }
                if (p->batch_files >= APPLY_BATCH_FILES || p->batch_bytes >= APPLY_BATCH_BYTES) {
                        r = close_batch(a, p, i + 1);
                        if (r < 0) {
                                (void) flush_batches(a, p, i + 1);
                                return r;
                        }
                }
        }
        return flush_batches(a, p, p->n);
}

static int pull_once(Agent *a, uint64_t since) {
        Pull p = { .fd = -1, .keep_fds = keep_budget() };
        uint64_t seq0 = a->last_seq;
        int r = receive_changes(a, &p, since, false);
        /* A log longer than a page is not applied page by page: its records
         * depend on later ones (a move of ours renames earlier records, see
         * follow_own_moves()). The whole tree, whose records do not, comes
         * instead. */
        if (r >= 0 && p.paged && !p.snapshot) {
                log_debug("more than %d changes since %llu: comparing the whole tree instead", PULL_PAGE_ROWS,
                          (unsigned long long) since);
                pull_drop_records(a, &p);
                p.total = 0;
                r = receive_changes(a, &p, 0, false);
        }
        if (r >= 0 && !p.snapshot)
                r = follow_own_moves(a, &p);
        if (r >= 0)
                r = mark_order(&p);
        if (r < 0)
                goto out;
        uint64_t n0 = a->n_downloaded;
        a->quiet_files = p.n > AGENT_FILE_LOG_MAX || p.paged;
        r = agent_state_begin(a->state);
        if (r < 0) {
                r = agent_state_failed(a, r);
                goto out;
        }
        if (p.snapshot)
                manifest_clear_seen(a->state);
        r = apply_records(a, &p, since);
        if (r >= 0 && p.snapshot) {
                /* Entries the server no longer has were deleted elsewhere. */
                Unseen u = { .a = a };
                PathList pl = {};
                manifest_unseen(a->state, unseen_deleted, &u);
                pl = u.list;
                for (size_t i = 0; i < pl.n; i++) {
                        if (manifest_get(a->state, pl.v[i], &(ManifestEntry) {}) == 0)
                                apply_delete_tree(a, pl.v[i], UINT64_MAX);
                        free(pl.v[i]);
                }
                free(pl.v);
        }
        apply_late_modes(a);
        if (r >= 0 && p.seq != a->last_seq) {
                a->last_seq = p.seq;
                agent_state_set_u64(a->state, "last_seq", p.seq);
        }
        /* Rolled back when any write failed: the records come again. */
        int k = agent_state_commit(a->state);
        if (k < 0) {
                a->last_seq = seq0;
                r = agent_state_failed(a, k);
        } else
                agent_state_ok(a);
        if (a->quiet_files && a->n_downloaded > n0)
                log_event(LOG_INFO, BS_MID_DOWNLOADED, a->account, NULL, "downloaded %llu files from other computers (%zu changes)",
                          (unsigned long long) (a->n_downloaded - n0), p.total + p.n);
        a->quiet_files = false;
out:
        pull_clear(a, &p);
        if (p.refetch)
                a->need_snapshot = true;
        downloads_close(a);
        return r;
}

int agent_pull(Agent *a) {
        a->no_delta = false;
        int r = pull_once(a, a->last_seq);
        for (int i = 0; r >= 0 && a->need_snapshot && i < 3; i++) {
                a->need_snapshot = false;
                log_event(LOG_INFO, BS_MID_RESCAN, a->account, NULL, "comparing the whole tree with the server");
                r = pull_once(a, 0);
                /* Not done (the server failed it, the connection broke): the
                 * records it was to make up for are behind last_seq now, so
                 * only a comparison finds them; the next round tries again. */
                if (r < 0)
                        a->need_snapshot = true;
        }
        return r;
}
