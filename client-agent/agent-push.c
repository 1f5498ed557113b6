/* agent-push.c - turn local changes into pipelined requests and apply the answers
 *
 * The plan (agent-plan.c) is sent without waiting for answers (a window of
 * requests, file data streamed as the socket drains), and
 * the manifest is updated only by the server's ACK, so a lost connection
 * leaves the change queued for the next round.
 *
 * A big file is sent as a delta: it is cut into content-defined chunks
 * (bs-blocks.h) and each chunk found in the chunk list of its last agreed
 * content, or of any content the state keeps a list of, becomes a COPY
 * from that content on the server; only the others travel. The server
 * checks the SHA-256 of the result as for any upload; if it refuses, the
 * file is sent whole.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent-brake.h"
#include "agent-plan.h"
#include "agent-push.h"
#include "agent-session.h"
#include "agent-warm.h"
#include "bs-delta.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"

#define PUSH_WINDOW 4096
/* Ops planned at once (see Plan.slice): the first slice is small, so the
 * first request leaves after a few directories were looked at; each next
 * one is planned once every op before it was sent, while their answers are
 * on their way. The plan holds at most a window and a slice (a few MiB). */
#define PLAN_SLICE_FIRST 512
#define PLAN_SLICE 4096
/* Files opened and their reading started ahead of the upload: the disk gets
 * many requests at once (merged, in parallel) instead of one small file at
 * a time, which on a cold cache is most of a first backup's time. */
#define PREFETCH_FILES 256
#define PREFETCH_BYTES (32u * 1024 * 1024)
/* Of those, small files are read whole into memory, up to this much at
 * once (see prefetch()). */
#define PREFETCH_BUF_BYTES (4u * 1024 * 1024)
/* Requests and data encoded before they are handed to the socket, which
 * buffers megabytes itself. At 4 MiB a first backup's first request left
 * only after some 900 small files were read, while the server waited;
 * the agent also held 6 MiB more at its peak. */
#define PUSH_OUT_HIGH (1u * 1024 * 1024)
#define ANSWER_TIMEOUT_MS 60000 /* of silence: then the connection is dropped and retried */
/* Contents one delta may copy from: each switch costs the server a commit. */
#define DELTA_BASES_MAX 4
/* An inode's times lag the clock by up to a tick (see being_written()). */
#define PUSH_EVENTS_SLACK_USEC 20000

/* An upload in progress: file data goes out as the socket drains. */
typedef struct Upload {
        int fd;
        BsReadBuf *rb; /* the file read ahead whole, or NULL: read from fd */
        PushOp *op;
        uint64_t off, size; /* read so far, announced */
        struct stat st0;
        bool cold; /* read into the page cache by us: dropped from it when done */
        BsSha *sha;
        BsBlocks *blocks; /* the chunk list of what is read (a big file sent whole) */
        /* A delta, and the chunk index of its base. */
        bool delta;
        BsDelta d;
        BsBlockMap *base;
        uint8_t base_sha[BS_SHA_LEN];
        Agent *agent;
} Upload;

/* Close a file read for an upload; one we read cold leaves the page cache
 * too, so the next file reuses its pages instead of fresh ones. */
static void close_read(int fd, bool cold) {
        if (fd < 0)
                return;
        if (cold)
                (void) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
}

static void upload_free(Agent *a, Upload *up) {
        /* Before the fd: a read not yet submitted names it by number. */
        up->rb = bs_readbuf_free(a->ra, up->rb);
        close_read(up->fd, up->cold);
        up->fd = -1;
        up->sha = bs_sha_free(up->sha);
        up->blocks = bs_blocks_free(up->blocks);
        up->base = bs_block_map_free(up->base);
        if (up->delta)
                bs_delta_done(&up->d);
        up->delta = false;
}

/*
 * Send a big file as a delta: its chunks are looked up in the chunk list
 * of the content the path had (the base), then in every list the state
 * keeps, so a copy, a file deleted and made again or one moved in from
 * outside travels as COPY frames too. Without a base or any match it all
 * goes as DATA, its chunk list made on the way for the next delta.
 */
static void delta_begin(Agent *a, PushOp *op, Upload *up) {
        ManifestEntry *old;
        uint8_t *recs;
        size_t n;
        if (up->size < BS_DELTA_MIN)
                return;
        if (a->conn->version < BS_PROTO_DELTA_VERSION) {
                (void) bs_blocks_new(&up->blocks); /* without: no delta next time */
                return;
        }
        op->delta_bases = calloc(DELTA_BASES_MAX, BS_SHA_LEN);
        if (!op->delta_bases || bs_delta_init(&up->d, up->size, true) < 0) {
                free(op->delta_bases);
                op->delta_bases = NULL;
                return;
        }
        op->n_bases = 0;
        up->delta = true;
        up->agent = a;
        old = malloc(sizeof(*old));
        if (old && op->base != 0 && manifest_get(a->state, op->path, old) == 0 && old->kind == BS_KIND_FILE &&
            old->version == op->base && blocks_get(a->state, old->sha, &recs, &n) == 0) {
                if (bs_block_map_new(&up->base, recs, n) == 0)
                        memcpy(up->base_sha, old->sha, BS_SHA_LEN);
                free(recs);
        }
        free(old);
}

/* Where the server holds a chunk: in the base or another kept content,
 * among the few this upload may copy from. */
static bool delta_find(void *userdata, const uint8_t *p, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN],
                       uint8_t sha[BS_SHA_LEN], uint64_t *off) {
        Upload *up = userdata;
        PushOp *op = up->op;
        (void) p;
        if (up->base && bs_block_map_find(up->base, len, sum, off) == 0)
                memcpy(sha, up->base_sha, BS_SHA_LEN);
        else if (blocks_locate(up->agent->state, len, sum, sha, off) < 0)
                return false;
        for (size_t i = 0; i < op->n_bases; i++)
                if (memcmp(op->delta_bases + i * BS_SHA_LEN, sha, BS_SHA_LEN) == 0)
                        return true;
        if (op->n_bases == DELTA_BASES_MAX)
                return false;
        memcpy(op->delta_bases + op->n_bases++ * BS_SHA_LEN, sha, BS_SHA_LEN);
        return true;
}

/*
 * A file whose content is what the manifest records, and only its mode or
 * mtime changed: true when its size, inode and mtime are unchanged (the
 * test every change is found by), or, for a small file, when its SHA-256
 * says so. Then ATTR sends the metadata alone.
 */
static bool same_content(Agent *a, const PushOp *op, int fd, const struct stat *st, uint8_t sha[BS_SHA_LEN]) {
        ManifestEntry *m;
        bool same = false;
        if (op->base == 0 || a->conn->version < BS_PROTO_ATTR_VERSION)
                return false;
        m = malloc(sizeof(*m));
        if (!m || manifest_get(a->state, op->path, m) < 0 || m->kind != BS_KIND_FILE || m->version != op->base ||
            m->size != (uint64_t) st->st_size)
                goto out;
        if (m->ino == (uint64_t) st->st_ino && m->mtime_ns == bs_stat_mtime_ns(st)) {
                memcpy(sha, m->sha, BS_SHA_LEN);
                same = true;
        } else if (m->size < BS_DELTA_MIN) {
                /* A big file goes as a delta, which copies what is unchanged. */
                struct stat st1;
                uint8_t got[BS_SHA_LEN];
                same = bs_sha_fd(fd, got) == 0 && fstat(fd, &st1) == 0 && st1.st_size == st->st_size &&
                       bs_stat_mtime_ns(&st1) == bs_stat_mtime_ns(st) && st1.st_ctim.tv_sec == st->st_ctim.tv_sec &&
                       st1.st_ctim.tv_nsec == st->st_ctim.tv_nsec && memcmp(got, m->sha, BS_SHA_LEN) == 0;
                if (same)
                        memcpy(sha, got, BS_SHA_LEN);
        }
out:
        free(m);
        return same;
}

/* Is another program still writing the file (created or written, not
 * closed)? Then it is sent once it settles (see agent_settle()), not half
 * written as found now: a first scan lists files that programs are
 * writing. If the file changed after the events were last read, its
 * IN_CREATE or IN_MODIFY may wait in the queue: read them first. --once
 * does not wait. */
static bool being_written(Agent *a, const char *path, const struct stat *st) {
        if (a->cfg.once || !a->watcher)
                return false;
        int64_t changed = (int64_t) st->st_ctim.tv_sec * 1000000 + st->st_ctim.tv_nsec / 1000;
        if (changed + PUSH_EVENTS_SLACK_USEC >= a->events_read_usec) {
                a->events_read_usec = (int64_t) realtime_usec();
                watcher_process(a->watcher);
        }
        return agent_settling(a, path);
}

static int start_op(Agent *a, PushOp *op, Upload *up) {
        BsMsg *m = malloc(sizeof(*m)); /* bs_msg_init() sets what is sent */
        int r = 0;
        if (!m)
                return -ENOMEM;
        op->req = ++a->next_req;
        bs_msg_init(m, op->type, op->req);
        m->base = op->base;
        m->path_len = strlen(op->path);
        memcpy(m->path, op->path, m->path_len + 1);
        switch (op->type) {
        case BS_MSG_PUT: {
                int fd = op->fd;
                BsReadBuf *rb = TAKE_PTR(op->rb);
                op->fd = -1;
                if (fd < 0) {
                        /* Not opened ahead: looked at here. */
                        fd = bs_open_read_beneath(a->rootfd, op->path);
                        op->cold = fd >= 0 && bs_cache_probe(fd) == 0;
                }
                /* Read ahead: as it was before the read. */
                struct stat st;
                if (rb)
                        st = rb->st;
                if (fd < 0 || (!rb && fstat(fd, &st) < 0) || !S_ISREG(st.st_mode)) {
                        bs_readbuf_free(a->ra, rb);
                        if (fd >= 0)
                                close(fd);
                        /* Gone or replaced since planned: look again next round. */
                        agent_mark_dirty(a, op->path, false);
                        op->skipped = true;
                        goto out;
                }
                if (being_written(a, op->path, &st)) {
                        /* The settle timer marks it dirty again. */
                        bs_readbuf_free(a->ra, rb);
                        close_read(fd, op->cold);
                        op->skipped = true;
                        goto out;
                }
                m->size = (uint64_t) st.st_size;
                m->mode = st.st_mode & 07777;
                m->mtime_ns = bs_stat_mtime_ns(&st);
                op->e->size = m->size;
                op->e->mode = m->mode;
                op->e->mtime_ns = m->mtime_ns;
                op->e->ino = (uint64_t) st.st_ino;
                if (same_content(a, op, fd, &st, op->e->sha)) {
                        bs_readbuf_free(a->ra, rb);
                        close_read(fd, op->cold);
                        op->type = m->type = BS_MSG_ATTR;
                        memcpy(m->sha, op->e->sha, BS_SHA_LEN);
                        break;
                }
                *up = (Upload) { .fd = fd, .rb = rb, .op = op, .size = m->size, .st0 = st, .cold = op->cold };
                r = bs_sha_new(&up->sha);
                if (r < 0) {
                        upload_free(a, up);
                        goto out;
                }
                delta_begin(a, op, up);
                break;
        }
        case BS_MSG_MKDIR:
                m->mode = op->e ? op->e->mode : 0755;
                m->mtime_ns = op->e ? op->e->mtime_ns : 0;
                break;
        case BS_MSG_SYMLINK:
                m->mtime_ns = op->e->mtime_ns;
                m->path2_len = strlen(op->path2);
                memcpy(m->path2, op->path2, m->path2_len + 1);
                break;
        case BS_MSG_MOVE:
                m->base2 = op->base2;
                m->path2_len = strlen(op->path2);
                memcpy(m->path2, op->path2, m->path2_len + 1);
                break;
        }
        r = bs_conn_send(a->conn, m);
out:
        free(m);
        return r;
}

static int queue_data(Agent *a, uint32_t req, const uint8_t *p, size_t n) {
        BsBuf *out = &a->conn->out;
        while (n > 0) {
                size_t k = MIN(n, (size_t) BS_CHUNK), off;
                int r = bs_frame_begin(out, BS_MSG_DATA, &off);
                r = r ?: bs_buf_put_u32(out, req);
                r = r ?: bs_buf_append(out, p, k);
                if (r < 0)
                        return r;
                bs_frame_end(out, off);
                a->bytes_uploaded += k;
                p += k;
                n -= k;
        }
        return 0;
}

/* The next piece of a delta: a COPY of what the server holds, or a chunk
 * of DATA. 0 to go on, 1 when the file came out short, 2 to let the
 * socket be serviced after a COPY (cheap to send, but the server's work). */
static int delta_step(Agent *a, Upload *up) {
        BsDeltaPiece piece;
        int r = bs_delta_next(&up->d, delta_find, up, &piece);
        if (r < 0)
                return r;
        if (r == 0) {
                size_t want;
                uint8_t *p = bs_delta_space(&up->d, &want);
                if (want == 0)
                        return 0; /* complete */
                ssize_t n = bs_pread_full(up->fd, p, want, (off_t) up->off);
                if (n <= 0)
                        return 1;
                bs_sha_update(up->sha, p, (size_t) n);
                bs_delta_fed(&up->d, (size_t) n);
                up->off += (uint64_t) n;
                return (size_t) n < want ? 1 : 0;
        }
        if (piece.kind == BS_DELTA_DATA) {
                r = queue_data(a, up->op->req, piece.data, (size_t) piece.len);
                up->op->sent += piece.len;
                return r;
        }
        BsMsg *m = malloc(sizeof(*m));
        if (!m)
                return -ENOMEM;
        bs_msg_init(m, BS_MSG_COPY, up->op->req);
        m->offset = piece.off;
        m->size = piece.len;
        memcpy(m->sha, piece.sha, BS_SHA_LEN);
        r = bs_conn_send(a->conn, m);
        free(m);
        return r < 0 ? r : 2;
}

/* The next bytes of a file read ahead whole: what its read got, as a
 * pread() would (fewer, then none, when it was shorter than announced).
 * Read as usual where the kernel could not read it uncached. */
static ssize_t take_read(Agent *a, Upload *up, uint8_t *dst, size_t want) {
        int r = bs_readahead_wait(a->ra, up->rb);
        if (r == -EOPNOTSUPP || r == -EINVAL || r == -ECANCELED) {
                /* Nothing was read: looked at, read and dropped as any file
                 * not read ahead. */
                up->rb = bs_readbuf_free(a->ra, up->rb);
                up->cold = bs_cache_probe(up->fd) == 0;
                return bs_pread_full(up->fd, dst, want, (off_t) up->off);
        }
        if (r < 0)
                return r;
        if (up->off >= (uint64_t) r)
                return 0;
        size_t n = (size_t) MIN((uint64_t) want, (uint64_t) r - up->off);
        memcpy(dst, up->rb->data + up->off, n);
        return (ssize_t) n;
}

/* Queue the next piece of an upload; 1 when it is complete, 2 after a
 * long run of unchanged blocks (see delta_step()). */
static int upload_step(Agent *a, Upload *up) {
        BsBuf *out = &a->conn->out;
        size_t off;
        if (up->delta && !bs_delta_complete(&up->d)) {
                int r = delta_step(a, up);
                if (r == 0 || r == 2 || r < 0)
                        return r;
        } else if (up->off < up->size) {
                size_t want = (size_t) MIN((uint64_t) BS_CHUNK, up->size - up->off);
                int r = bs_frame_begin(out, BS_MSG_DATA, &off);
                r = r ?: bs_buf_put_u32(out, up->op->req);
                r = r ?: bs_buf_reserve(out, want);
                if (r < 0)
                        return r;
                ssize_t n = up->rb ? take_read(a, up, out->data + out->end, want)
                                   : bs_pread_full(up->fd, out->data + out->end, want, (off_t) up->off);
                if (n > 0) {
                        bs_sha_update(up->sha, out->data + out->end, (size_t) n);
                        if (up->blocks && bs_blocks_update(up->blocks, out->data + out->end, (size_t) n) < 0)
                                up->blocks = bs_blocks_free(up->blocks);
                        out->end += (size_t) n;
                        up->off += (uint64_t) n;
                        bs_frame_end(out, off);
                        a->bytes_uploaded += (uint64_t) n;
                        return 0;
                }
                /* Shrunk or unreadable: drop the empty frame and abort. */
                bs_frame_cancel(out, off);
        }
        BsMsg *m = malloc(sizeof(*m)); /* as in start_op() */
        if (!m)
                return -ENOMEM;
        bs_msg_init(m, BS_MSG_PUT_END, up->op->req);
        struct stat st1;
        bool changed = up->off != up->size || fstat(up->fd, &st1) < 0 || st1.st_size != up->st0.st_size ||
                       bs_stat_mtime_ns(&st1) != bs_stat_mtime_ns(&up->st0) ||
                       st1.st_ctim.tv_sec != up->st0.st_ctim.tv_sec || st1.st_ctim.tv_nsec != up->st0.st_ctim.tv_nsec;
        int r = 0;
        if (changed)
                m->flags = BS_PUT_ABORT; /* read again once it settles */
        else {
                bs_sha_final(up->sha, up->op->e->sha);
                if (up->delta)
                        up->blocks = bs_delta_steal_list(&up->d);
                if (up->blocks && bs_blocks_final(up->blocks) == 0)
                        up->op->blocks = TAKE_PTR(up->blocks); /* kept on ACK */
        }
        memcpy(m->sha, up->op->e->sha, BS_SHA_LEN);
        r = r ?: bs_conn_send(a->conn, m);
        free(m);
        upload_free(a, up);
        return r < 0 ? r : 1;
}

/* The server refused an upload before its end (disk full at the DATA it
 * could not write): it drops the rest, so stop reading the file and end
 * the upload now. PUT_END is still owed, or the server would take our next
 * PUT for a protocol error; it answers nothing more for this request. */
static int upload_cancel(Agent *a, Upload *up) {
        BsMsg *m = malloc(sizeof(*m)); /* as in start_op() */
        int r = -ENOMEM;
        if (m) {
                bs_msg_init(m, BS_MSG_PUT_END, up->op->req);
                m->flags = BS_PUT_ABORT;
                r = bs_conn_send(a->conn, m);
                free(m);
        }
        upload_free(a, up);
        return r;
}

/* On ACK of a big file: its chunk list is kept, and that of the content
 * it replaced too, among the newest old ones (agent-state.h). */
static void keep_blocks(Agent *a, PushOp *op) {
        size_t n;
        const uint8_t *recs = bs_blocks_recs(op->blocks, &n);
        blocks_keep(a->state, op->e->sha, recs, n);
        op->blocks = bs_blocks_free(op->blocks);
}

/* Was path refused (CONFLICT, NOT_FOUND) already, with nothing pulled since? Either
 * way it is remembered, with the sequence it was refused at. */
static bool refused_before(Agent *a, const char *path) {
        size_t kept = 0;
        bool again = false;
        for (size_t i = 0; i < a->n_refused; i++) {
                DirtyPath *d = &a->refused[i];
                /* .recursive is unused here; stale entries (a pull moved
                 * last_seq since) are dropped. */
                if (strcmp(d->path, path) == 0 && a->refused_seq == a->last_seq)
                        again = true;
                if (a->refused_seq == a->last_seq)
                        a->refused[kept++] = *d;
                else
                        free(d->path);
        }
        a->n_refused = kept;
        a->refused_seq = a->last_seq;
        if (!again)
                (void) agent_mark_refused(a, path);
        return again;
}

static void handle_answer(Agent *a, PushOp *op, const BsMsg *m) {
        char parent[BS_PATH_MAX + 1];
        if (m->type == BS_MSG_ACK) {
                /* The very next change of the account is ours, and the
                 * manifest records it below: the next pull need not list it
                 * again. A gap means another computer's change: pull it. */
                if (m->seq == a->last_seq + 1)
                        a->last_seq = m->seq;
                switch (op->type) {
                case BS_MSG_PUT:
                case BS_MSG_MKDIR:
                case BS_MSG_SYMLINK:
                        op->e->version = m->seq;
                        if (op->blocks)
                                keep_blocks(a, op);
                        manifest_put(a->state, op->path, op->e);
                        if (op->type == BS_MSG_PUT) {
                                a->n_uploaded++;
                                if (op->n_bases > 0)
                                        log_event(AGENT_FILE_LOG(a), BS_MID_UPLOADED, a->account, op->path,
                                                  "uploaded %s (%llu bytes, %llu sent, the rest unchanged)", op->path,
                                                  (unsigned long long) op->e->size, (unsigned long long) op->sent);
                                else
                                        log_event(AGENT_FILE_LOG(a), BS_MID_UPLOADED, a->account, op->path,
                                                  "uploaded %s (%llu bytes)", op->path, (unsigned long long) op->e->size);
                        } else
                                log_event(LOG_DEBUG, BS_MID_UPLOADED, a->account, op->path, "sent %s", op->path);
                        break;
                case BS_MSG_ATTR:
                        op->e->version = m->seq;
                        manifest_put(a->state, op->path, op->e);
                        log_event(AGENT_FILE_LOG(a), BS_MID_UPLOADED, a->account, op->path,
                                  "sent the mode %04o and time of %s (content unchanged)", op->e->mode, op->path);
                        break;
                case BS_MSG_DELETE:
                        manifest_delete_tree(a->state, op->path);
                        log_event(AGENT_FILE_LOG(a), BS_MID_DELETED, a->account, op->path, "deleted %s", op->path);
                        /* Already gone on the server though we had a version of
                         * it: deleted there too, or moved away with a directory
                         * above it, and then it lives on under a name no record
                         * we pull will give it here. The next pull compares the
                         * whole tree (a move there wins over a deletion here). */
                        if (m->seq == 0 && op->base != 0)
                                a->need_snapshot = true;
                        break;
                case BS_MSG_MOVE: {
                        ManifestEntry *e = malloc(sizeof(*e));
                        manifest_move_tree(a->state, op->path, op->path2);
                        if (e && manifest_get(a->state, op->path2, e) == 0) {
                                e->version = m->seq;
                                manifest_put(a->state, op->path2, e);
                        }
                        free(e);
                        log_event(LOG_INFO, BS_MID_MOVED, a->account, op->path2, "moved %s -> %s", op->path,
                                  op->path2);
                        break;
                }
                }
                return;
        }
        if (m->type != BS_MSG_ERROR)
                return;
        if (op->n_bases > 0 && (m->code == BS_ERR_CHECKSUM || m->code == BS_ERR_NOT_FOUND)) {
                /* A content copied from is not what its chunk list says, or gone. */
                log_warning("%s: the server refused the chunks copied from what it holds (%s: %s); sending the "
                            "whole file", op->path, bs_err_name(m->code), m->path);
                for (size_t i = 0; i < op->n_bases; i++)
                        blocks_delete(a->state, op->delta_bases + i * BS_SHA_LEN);
                agent_mark_dirty(a, op->path, false);
                a->again = true;
                return;
        }
        switch (m->code) {
        case BS_ERR_ABORTED:
                /* Changed while read: being written, look again once it settles. */
                log_event(LOG_INFO, BS_MID_REJECTED, a->account, op->path,
                          "%s changed while it was read (ABORTED); sending it once it settles", op->path);
                agent_settle(a, op->path);
                break;
        case BS_ERR_CONFLICT:
        case BS_ERR_NOT_FOUND:
                if (refused_before(a, op->path)) {
                        /* Refused again with nothing new pulled since: the
                         * manifest and the server disagree on it (a record
                         * missed or misapplied: a bug). Pulling the changes
                         * cannot help; comparing the whole tree with the
                         * server can, and the change waits until then like
                         * one the server could not store. */
                        log_event(LOG_WARNING, BS_MID_REJECTED, a->account, op->path,
                                  "%s: refused again although nothing changed on the server since; comparing "
                                  "the whole tree with the server, retrying later", op->path);
                        a->need_snapshot = true;
                        agent_mark_failed(a, op->path, op->type == BS_MSG_MKDIR);
                        if (op->path2)
                                agent_mark_failed(a, op->path2, true);
                        break;
                }
                /* Pull again: the next round keeps both versions (CONFLICT),
                 * or sends the missing parent (NOT_FOUND). */
                log_event(LOG_INFO, BS_MID_REJECTED, a->account, op->path, "%s: %s, syncing again", op->path,
                          bs_err_name(m->code));
                if (m->code == BS_ERR_NOT_FOUND) {
                        size_t n = bs_path_parent_len(op->path2 ? op->path2 : op->path);
                        memcpy(parent, op->path2 ? op->path2 : op->path, n);
                        parent[n] = 0;
                        agent_mark_dirty(a, parent, true);
                }
                /* A refused move or deletion of a directory: what left it
                 * may be in the manifest still (a deletion stands for all
                 * below it), and the pull may make it again. */
                agent_mark_dirty(a, op->path,
                                 op->type == BS_MSG_MKDIR || op->type == BS_MSG_MOVE || op->type == BS_MSG_DELETE ||
                                         m->code == BS_ERR_NOT_FOUND);
                if (op->path2)
                        agent_mark_dirty(a, op->path2, true);
                a->again = true;
                break;
        case BS_ERR_NO_SPACE:
        case BS_ERR_IO:
        case BS_ERR_BUSY:
                /* The server's trouble, not ours: keep the change queued, but
                 * retry it later (agent.c backs off) rather than at once. */
                if (m->code == BS_ERR_NO_SPACE)
                        log_event(LOG_ERR, BS_MID_REJECTED, a->account, op->path,
                                  "the server's disk is full: %s was not stored (NO_SPACE: %s); it stays queued "
                                  "and will be retried", op->path, m->path);
                else
                        log_event(LOG_ERR, BS_MID_REJECTED, a->account, op->path,
                                  "server could not store %s: %s (%s); it stays queued and will be retried", op->path,
                                  bs_err_name(m->code), m->path);
                agent_mark_failed(a, op->path, op->type == BS_MSG_MKDIR);
                if (op->path2 && op->type == BS_MSG_MOVE)
                        agent_mark_failed(a, op->path2, true);
                break;
        default:
                log_event(LOG_WARNING, BS_MID_REJECTED, a->account, op->path, "server refused %s: %s (%s)", op->path,
                          bs_err_name(m->code), m->path);
        }
}

/* Open the uploads after next and start reading them, within
 * PREFETCH_FILES and PREFETCH_BYTES of what is being sent. The window is
 * refilled by halves, so the reads of a refill reach the disk together.
 * An fd opened early names what the path held then, as one opened at its
 * turn would have: the usual checks at the end of the upload still apply.
 * A small file, while the window holds less than PREFETCH_BUF_BYTES, is
 * read whole into memory and uncached: no look at the page cache, second
 * read or drop from it, three of the nine system calls each file of a
 * first backup cost the agent. */
static void prefetch(Agent *a, Plan *p, size_t next, size_t *pf, uint64_t *pf_bytes) {
        if (*pf < next)
                *pf = next;
        if (*pf - next > PREFETCH_FILES / 2 || *pf_bytes > PREFETCH_BYTES / 2)
                return;
        while (*pf < p->n && *pf - next < PREFETCH_FILES && *pf_bytes < PREFETCH_BYTES) {
                PushOp *op = &p->ops[(*pf)++];
                if (op->type != BS_MSG_PUT || op->fd >= 0 || !op->e || op->e->size == 0)
                        continue;
                op->fd = bs_open_read_beneath(a->rootfd, op->path);
                if (op->fd < 0) {
                        op->fd = -1; /* start_op() tries again and decides */
                        continue;
                }
                if (*pf_bytes + op->e->size <= PREFETCH_BUF_BYTES &&
                    bs_readahead_file(a->ra, op->fd, PREFETCH_BUF_BYTES - *pf_bytes, &op->rb) == 0) {
                        op->cold = false;
                        op->prefetched = (uint64_t) op->rb->st.st_size;
                        *pf_bytes += op->prefetched;
                        continue;
                }
                /* A file in the page cache needs no reading ahead. */
                op->cold = bs_cache_probe(op->fd) == 0;
                if (!op->cold)
                        continue;
                uint64_t len = MIN(op->e->size, (uint64_t) PREFETCH_BYTES - *pf_bytes);
                bs_readahead(a->ra, op->fd, len);
                *pf_bytes += len;
                op->prefetched = len;
        }
        bs_readahead_submit(a->ra);
}

/* What the answers so far recorded becomes durable, as between two plans:
 * the state of a million files is not one transaction. */
static int push_checkpoint(Agent *a, uint64_t *last_seq0) {
        if (a->last_seq != *last_seq0)
                agent_state_set_u64(a->state, "last_seq", a->last_seq);
        int r = agent_state_commit(a->state);
        if (r < 0)
                return r;
        *last_seq0 = a->last_seq;
        return agent_state_begin(a->state);
}

/* Every op of the plan sent and more directories waiting: the next slice
 * is planned now, while the answers come. */
static bool refill_due(const Agent *a, const Plan *p, size_t next, const Upload *up) {
        return next >= p->n && up->fd < 0 && p->n_later > 0 && !a->paused;
}

/* Send every op, a window at a time, and apply the answers in order. */
static int push_plan(Agent *a, Plan *p) {
        Upload up = { .fd = -1 };
        size_t next = 0, head = 0, pf = 0, done = 0;
        uint64_t pf_bytes = 0;
        uint64_t last_seq0 = a->last_seq;
        BsMsg *m = malloc(sizeof(*m));
        int r = 0, failed = 0;
        if (!m)
                return -ENOMEM;

        uint64_t n0 = a->n_uploaded, b0 = a->bytes_uploaded;
        log_debug("sending %zu changes", p->n);
        a->quiet_files = p->n > AGENT_FILE_LOG_MAX;
        r = agent_state_begin(a->state);
        if (r < 0) {
                head = 0;
                goto out;
        }
        for (;;) {
                if (refill_due(a, p, next, &up)) {
                        r = push_checkpoint(a, &last_seq0);
                        if (r < 0) {
                                failed = r;
                                goto out;
                        }
                        plan_drop_done(p, head);
                        done += head;
                        next -= head;
                        pf = pf > head ? pf - head : 0;
                        head = 0;
                        r = plan_more(a, p, PLAN_SLICE);
                        if (r < 0)
                                goto out;
                        log_debug("sending %zu changes (%zu still answered before them)", p->n - next, next);
                        a->quiet_files |= done + p->n > AGENT_FILE_LOG_MAX;
                }
                if (head >= p->n)
                        break;
                while (bs_buf_len(&a->conn->out) < PUSH_OUT_HIGH) {
                        if (up.fd >= 0) {
                                r = upload_step(a, &up);
                                if (r < 0)
                                        goto out;
                                if (r == 2)
                                        break;
                                continue;
                        }
                        if (next >= p->n || next - head >= PUSH_WINDOW)
                                break;
                        prefetch(a, p, next + 1, &pf, &pf_bytes);
                        pf_bytes -= p->ops[next].prefetched;
                        r = start_op(a, &p->ops[next++], &up);
                        if (r < 0)
                                goto out;
                }
                while (head < next && p->ops[head].skipped)
                        head++;
                if (head >= p->n || refill_due(a, p, next, &up))
                        continue;
                agent_progress(a, "uploading", done + head, done + p->n, a->bytes_uploaded);
                if (head == next)
                        continue;
                /* Block only when there is nothing more to send: data still
                 * to produce must not wait behind answers that cannot come. */
                r = bs_conn_flush(a->conn);
                if (r < 0)
                        goto out;
                bool more = up.fd >= 0 || (next < p->n && next - head < PUSH_WINDOW);
                bool wait = !more || bs_buf_len(&a->conn->out) >= PUSH_OUT_HIGH;
                r = wait ? agent_io(a, ANSWER_TIMEOUT_MS) : bs_conn_io(a->conn, 0);
                if (r == -ETIMEDOUT && !wait)
                        r = 0;
                if (r == -ETIMEDOUT)
                        log_warning("no answer from the server for %d s: %zu of %zu changes answered, %zu sent, "
                                    "%zu bytes not yet sent%s%s", ANSWER_TIMEOUT_MS / 1000, head, p->n, next,
                                    bs_buf_len(&a->conn->out), up.fd >= 0 ? ", uploading " : "",
                                    up.fd >= 0 ? up.op->path : "");
                if (r < 0)
                        goto out;
                while ((r = bs_conn_next(a->conn, m)) > 0) {
                        while (head < next && p->ops[head].skipped)
                                head++;
                        if (head >= next || (m->type != BS_MSG_ACK && m->type != BS_MSG_ERROR) ||
                            m->req != p->ops[head].req) {
                                if (m->type == BS_MSG_ERROR && m->req == 0) {
                                        log_error("server closed the session: %s (%s)", bs_err_name(m->code), m->path);
                                        r = -ECONNRESET;
                                } else {
                                        log_error("unexpected %s from server during push", bs_msg_type_name(m->type));
                                        r = -EPROTO;
                                }
                                goto out;
                        }
                        handle_answer(a, &p->ops[head], m);
                        if (up.fd >= 0 && up.op == &p->ops[head] && (r = upload_cancel(a, &up)) < 0)
                                goto out;
                        head++;
                }
                if (r < 0)
                        goto out;
        }
        r = 0;
out:
        upload_free(a, &up);
        /* Files opened and read ahead of an op never started. */
        for (size_t i = 0; i < p->n; i++)
                p->ops[i].rb = bs_readbuf_free(a->ra, p->ops[i].rb);
        if (a->last_seq != last_seq0)
                agent_state_set_u64(a->state, "last_seq", a->last_seq);
        if (a->quiet_files && a->n_uploaded > n0)
                log_event(LOG_INFO, BS_MID_UPLOADED, a->account, NULL, "uploaded %llu files (%.1f MiB), %zu of %zu changes answered",
                          (unsigned long long) (a->n_uploaded - n0), (double) (a->bytes_uploaded - b0) / (1024.0 * 1024.0),
                          done + head, done + p->n);
        a->quiet_files = false;
        /* What the ACKs recorded is rolled back when a write failed: then
         * every op is sent again (the server acknowledges what it has). */
        int k = agent_state_commit(a->state);
        if (failed < 0)
                k = failed;
        if (k < 0) {
                a->last_seq = last_seq0;
                head = 0;
                r = agent_state_failed(a, k);
        } else
                agent_state_ok(a);
        /* Ops never answered stay dirty for the next round. */
        for (size_t i = head; i < p->n; i++) {
                agent_mark_dirty(a, p->ops[i].path, p->ops[i].type == BS_MSG_MKDIR);
                if (p->ops[i].path2 && p->ops[i].type == BS_MSG_MOVE)
                        agent_mark_dirty(a, p->ops[i].path2, true);
        }
        free(m);
        return r;
}

/* A move is sent as a MOVE only while the disk still says so: the old name
 * no longer holds what the manifest recorded, and the new name holds that
 * same entry (same inode for a file or link, a directory for a directory). */
static bool move_still_true(Agent *a, const MovePath *mv, const ManifestEntry *m) {
        LocalEntry *l = malloc(sizeof(*l));
        bool ok = false;
        if (!l)
                return false;
        if (local_stat(a, mv->from, l) < 0 || (l->exists && local_matches(l, m)))
                goto out;
        if (local_stat(a, mv->to, l) < 0 || !l->exists || l->kind != m->kind)
                goto out;
        ok = m->kind == BS_KIND_DIR || (uint64_t) l->st.st_ino == m->ino;
out:
        free(l);
        return ok;
}

int agent_push_moves(Agent *a) {
        MovePath *moves = a->moves;
        size_t n = a->n_moves;
        int r = 0;
        a->moves = NULL;
        a->n_moves = a->cap_moves = 0;

        for (size_t i = 0; i < n; i++) {
                MovePath *mv = &moves[i];
                ManifestEntry *m = malloc(sizeof(*m));
                Plan p = {};
                if (!m) {
                        r = -ENOMEM;
                        break;
                }
                if (r < 0 || manifest_get(a->state, mv->from, m) < 0) {
                        /* Not known to the server (or no connection): plain changes. */
                        agent_mark_dirty(a, mv->from, mv->is_dir);
                        agent_mark_dirty(a, mv->to, mv->is_dir);
                        free(m);
                        continue;
                }
                /* Into or out of an ignored name (vim's file~ backup): a
                 * deletion or a new file for the server, never a move. */
                if (!move_still_true(a, mv, m) || ignore_set_path(a->ignore, a->rootfd, mv->from, mv->is_dir) ||
                    ignore_set_path(a->ignore, a->rootfd, mv->to, mv->is_dir)) {
                        /* Our own rename (a conflict copy) or undone since: compare
                         * instead. Below a directory a pull made again at the old
                         * name, what left it is still in the manifest. */
                        agent_mark_dirty(a, mv->from, mv->is_dir);
                        agent_mark_dirty(a, mv->to, mv->is_dir);
                        free(m);
                        continue;
                }
                uint64_t base = m->version, base_to = 0;
                if (manifest_get(a->state, mv->to, m) == 0)
                        base_to = m->version;
                PushOp *op = plan_add(&p, BS_MSG_MOVE, mv->from, mv->to, base, NULL);
                if (op) {
                        op->base2 = base_to;
                        r = push_plan(a, &p);
                }
                /* Content may have changed along with the name; below a
                 * directory, what a record pulled just before the move
                 * removed from the manifest but not from the moved tree
                 * (it was no longer at the old name) is found again. */
                agent_mark_dirty(a, mv->to, mv->is_dir);
                plan_clear(&p);
                free(m);
        }
        for (size_t i = 0; i < n; i++) {
                free(moves[i].from);
                free(moves[i].to);
        }
        free(moves);
        return r;
}

/* Whether an event read since the dirty list had from entries names path. */
static bool named_by_event(const Agent *a, size_t from, const char *path) {
        if (agent_settling(a, path))
                return true;
        for (size_t i = from; i < a->n_dirty; i++) {
                const DirtyPath *d = &a->dirty[i];
                if (strcmp(d->path, path) == 0 || (d->recursive && (!d->path[0] || bs_path_under(path, d->path))))
                        return true;
        }
        return false;
}

/* After the verification pass made its plan: every change in it is one no
 * event reported. Each is logged (the first 100), since each is a bug to
 * find or a file system that does not report everything. But a change
 * made while the pass listed the tree has its event still in the queue:
 * read it first, and such a change is sent all the same, not counted. */
static void report_unseen(Agent *a, const Plan *p, double ms) {
        static const char *const what[] = {
                [BS_MSG_PUT] = "changed", [BS_MSG_MKDIR] = "made or given a new mode",
                [BS_MSG_SYMLINK] = "linked", [BS_MSG_DELETE] = "removed",
        };
        size_t unseen = 0, during = 0, from = a->n_dirty;
        if (a->watcher)
                (void) watcher_process(a->watcher);
        for (size_t i = 0; i < p->n; i++) {
                const PushOp *op = &p->ops[i];
                if (named_by_event(a, from, op->path)) {
                        log_debug("verification pass: %s changed while the pass ran; its event came since", op->path);
                        during++;
                        continue;
                }
                if (unseen++ >= 100)
                        continue;
                const char *w = op->type < ELEMENTSOF(what) && what[op->type] ? what[op->type] : "changed";
                log_event(LOG_WARNING, BS_MID_UNSEEN, a->account, op->path,
                          "verification pass: %s was %s but no file-system event said so; sending it now", op->path, w);
        }
        log_info("verification pass: %lld entries compared in %.1f ms, %zu changes no event reported, %zu made "
                 "meanwhile", (long long) manifest_count(a->state), ms, unseen, during);
}

/* Nothing in the tree but our temporary files (true also when it is gone). */
static bool tree_empty(Agent *a) {
        struct stat st;
        BsDirent *v;
        size_t n;
        if (fstat(a->rootfd, &st) < 0 || st.st_nlink == 0 || bs_dir_list(a->rootfd, &v, &n) < 0)
                return true;
        bool empty = true;
        for (size_t i = 0; i < n && empty; i++)
                empty = bs_path_is_temp(v[i].name);
        bs_dir_list_free(v, n);
        return empty;
}

/* Emptied or gone while files synced from it are remembered: refused,
 * rather than turned into mass deletions. */
static bool tree_suddenly_empty(Agent *a) {
        return manifest_count(a->state) > 0 && tree_empty(a);
}

static int push_dirty(Agent *a, bool *more);

int agent_push_if_empty(Agent *a) {
        if (!a->rescan_all || a->paused || manifest_count(a->state) != 0 || !tree_empty(a))
                return 0;
        return agent_push(a);
}

int agent_push(Agent *a) {
        _cleanup_(warmer_freep) Warmer *warm = NULL;
        int r;

        if (a->rescan_all) {
                if (tree_suddenly_empty(a)) {
                        if (!a->paused)
                                log_error("%s is empty or gone but %lld files were synced from it; refusing to "
                                          "delete them everywhere. Restore the directory (or remount it); to start "
                                          "over, remove the state directory %s",
                                          a->cfg.dir, (long long) manifest_count(a->state), a->cfg.state_dir);
                        a->paused = true;
                        return 0;
                }
                a->paused = false;
                a->rescan_all = false;
                agent_mark_dirty(a, "", true);
                /* Without it the scan still reads all; only slower when cold. */
                (void) warmer_start(a->rootfd, a->ignore, NULL, NULL, &warm);
        }
        if (a->paused)
                return 0; /* a state, not an error: the loop and --once look at it */

        r = agent_push_moves(a);
        if (r < 0)
                return r;
        bool more;
        do
                r = push_dirty(a, &more);
        while (r >= 0 && more && !a->paused);
        /* Every directory was listed, so every one is watched. */
        if (r >= 0 && !more && !a->paused)
                a->watch_in_scan = false;
        return r;
}

/* Plan and send what is dirty, at most a slice of it; *more when the rest
 * of the tree waits in the dirty list for the next slice. */
static int push_dirty(Agent *a, bool *more) {
        int r;

        *more = false;
        /* Held deletions are decided again with whatever else this round
         * brings, and at once when the user let them go. */
        if (a->n_held > 0 && (a->n_dirty > 0 || brake_confirm_waiting(a)))
                brake_review(a);
        DirtyPath *dirty = a->dirty;
        size_t n = a->n_dirty;
        a->dirty = NULL;
        a->n_dirty = a->cap_dirty = 0;
        if (n == 0)
                return 0;

        qsort(dirty, n, sizeof(*dirty), plan_path_cmp);
        Plan p = { .slice = PLAN_SLICE_FIRST };
        const char *skip = NULL;
        bool verifying = a->verifying && n == 1 && dirty[0].path[0] == 0;
        a->verifying = false;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        local_scan_begin(a);
        for (size_t i = 0; i < n; i++) {
                /* Merge duplicates; a recursive visit covers what is below it. */
                if (i + 1 < n && strcmp(dirty[i].path, dirty[i + 1].path) == 0) {
                        dirty[i + 1].recursive |= dirty[i].recursive;
                        continue;
                }
                if (skip && (skip[0] == 0 || bs_path_under(dirty[i].path, skip)))
                        continue;
                if (p.n >= p.slice && !plan_known(a, dirty[i].path)) {
                        agent_mark_dirty(a, dirty[i].path, dirty[i].recursive);
                        p.deferred = true;
                        continue;
                }
                r = plan_reconcile(a, &p, dirty[i].path, dirty[i].recursive);
                if (r > 0)
                        skip = dirty[i].path;
                else if (r < 0)
                        log_warning("could not look at %s: %s", dirty[i].path, strerror(-r));
        }
        local_scan_end(a);
        r = brake_apply(a, &p);
        if (r < 0) {
                /* Deletions that cannot be counted are not sent; nothing is lost. */
                log_warning("cannot count the files this round deletes: %s; sending nothing, looking again",
                            strerror(-r));
                plan_clear(&p);
                a->rescan_all = true;
        }
        if (verifying) {
                clock_gettime(CLOCK_MONOTONIC, &t1);
                report_unseen(a, &p, (double) (t1.tv_sec - t0.tv_sec) * 1e3 + (double) (t1.tv_nsec - t0.tv_nsec) / 1e6);
        }
        r = p.n || p.n_later ? push_plan(a, &p) : 0;
        plan_requeue_later(a, &p);
        *more = p.deferred;
        plan_clear(&p);
        for (size_t i = 0; i < n; i++)
                free(dirty[i].path);
        free(dirty);
        return r;
}
