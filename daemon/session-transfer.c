/* session-transfer.c - uploads (PUT, DATA, COPY, PUT_END) and streamed answers (PULL, GET, GET_DELTA)
 *
 * An upload is written to a temporary file as its DATA arrives, so a file
 * of any size costs one buffer; COPY takes bytes from a stored content
 * instead of the wire. A PUT refused at its header is answered at once and
 * its DATA, COPY and PUT_END are then dropped. Streamed answers are
 * produced only while the output buffer is below SESSION_OUT_FILL: one
 * slow reader holds a bounded amount of memory and blocks nobody else.
 * GET_DELTA compares the content with the one the agent holds and sends
 * COPY for the runs that are equal, DATA for the rest.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "account-read.h"
#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "session-rows.h"
#include "session-transfer.h"

/* Bytes of the agent's content indexed before other sessions get a turn. */
#define DELTA_INDEX_TURN (4u * 1024 * 1024)

static void content_close(AccountContent **c) {
        *c = account_content_free(*c);
}

/* Drop what a GET_DELTA holds: the agent's content and its index, the delta. */
static void have_close(Session *s) {
        content_close(&s->have);
        s->have_list = bs_blocks_free(s->have_list);
        s->have_map = bs_block_map_free(s->have_map);
        bs_delta_done(&s->delta);
}

static void ahead_drop(Session *s) {
        for (unsigned i = 0; i < s->ahead.count; i++) {
                unsigned k = (s->ahead.head + i) % SESSION_PREFETCH;
                content_close(&s->ahead.slot[k].c);
                free(s->ahead.slot[k].path);
                s->ahead.slot[k].path = NULL;
        }
        s->ahead.head = s->ahead.count = s->ahead.frames = 0;
}

/* The content read ahead for this GET, if any: 1 and ret taken over, else 0. */
static int ahead_take(Session *s, const BsMsg *m, AccountContent **ret) {
        if (s->ahead.count == 0)
                return 0;
        unsigned k = s->ahead.head;
        if (memcmp(s->ahead.slot[k].sha, m->sha, BS_SHA_LEN) != 0 || strcmp(s->ahead.slot[k].path, m->path) != 0) {
                /* Not the GET that was looked at: start over rather than guess. */
                ahead_drop(s);
                return 0;
        }
        *ret = TAKE_PTR(s->ahead.slot[k].c);
        free(s->ahead.slot[k].path);
        s->ahead.slot[k].path = NULL;
        s->ahead.head = (k + 1) % SESSION_PREFETCH;
        s->ahead.count--;
        return *ret != NULL;
}

void session_prefetch(Session *s) {
        static BsMsg m; /* one server thread; kept off the stack like session_run's */
        const uint8_t *p = bs_buf_head(&s->in);
        size_t n = bs_buf_len(&s->in), off = 0, len;
        unsigned i;

        /* Inside a pass the tree may not yet hold what the entries say.
         * Refilled by halves: the reads of a refill reach the disk together. */
        if (!s->account || s->batch || s->ahead.count > SESSION_PREFETCH / 2)
                return;
        for (i = 0; s->ahead.count < SESSION_PREFETCH; i++, off += len) {
                if (bs_frame_peek(p + off, n - off, BS_FRAME_MAX_DEFAULT, &len) <= 0)
                        break;
                if (i < s->ahead.frames)
                        continue;
                s->ahead.frames = i + 1;
                if (p[off + 4] != BS_MSG_GET && p[off + 4] != BS_MSG_GET_DELTA)
                        continue;
                if (bs_msg_decode(p + off, len, &m) < 0)
                        break; /* answered as malformed when its turn comes */
                unsigned k = (s->ahead.head + s->ahead.count) % SESSION_PREFETCH;
                char *path = strdup(m.path);
                if (!path)
                        break;
                s->ahead.slot[k].path = path;
                memcpy(s->ahead.slot[k].sha, m.sha, BS_SHA_LEN);
                s->ahead.slot[k].c = NULL;
                /* One read lock for the refill's lookups, not one each;
                 * begun at the first, as most passes have no GET. */
                account_reads_begin(s->account);
                if ((m.path_len == 0 || bs_path_check(m.path, m.path_len) == 0) &&
                    account_content_open(s->account, m.sha, m.path, &s->waker, &s->ahead.slot[k].c) == 0)
                        account_content_prefetch(s->ahead.slot[k].c, SESSION_PREFETCH_BYTES, s->host->readahead);
                s->ahead.count++;
        }
        account_reads_end(s->account);
        bs_readahead_submit(s->host->readahead);
}

/* The session consumed its head frame. */
void session_prefetch_consumed(Session *s) {
        if (s->ahead.frames > 0)
                s->ahead.frames--;
}

static void warm_stop(Session *s) {
        if (!s->warm)
                return;
        s->warm = bs_warm_free(s->warm);
        s->host->n_warm--;
}

/* A snapshot is followed by a GET of each file in its order: read the
 * tree's metadata ahead of them (the lookups are most of a cold GET's
 * wait), unless as many sessions as allowed already do. */
static void warm_start(Session *s) {
        if (s->warm || s->host->n_warm >= SESSION_WARM_MAX)
                return;
        if (account_warm_start(s->account, NULL, NULL, &s->warm) == 0)
                s->host->n_warm++;
        else
                s->warm = NULL; /* the GETs read on their own */
}

void session_transfer_reset(Session *s) {
        warm_stop(s);
        s->upload.u = account_upload_free(s->upload.u);
        s->upload.active = false;
        content_close(&s->upload.src);
        content_close(&s->content);
        have_close(s);
        ahead_drop(s);
        s->cursor = account_cursor_free(s->cursor);
        free(s->rec);
        s->rec = NULL;
        s->query = account_query_free(s->query);
        free(s->row);
        s->row = NULL;
        s->rec_pending = false;
        s->stream = STREAM_NONE;
}

/* Answer an upload's error now and drop the rest of it. */
static int upload_refuse(Session *s, int r, const char *what) {
        char lp[4 * BS_PATH_MAX + 1];
        BsErr code = session_errno_to_code(r);
        const char *id = account_id(s->account);

        session_log_path(s->upload.path, lp);
        errno = -r;
        if (code == BS_ERR_IO || code == BS_ERR_NO_SPACE)
                session_log_event(s, LOG_ERR, BS_MID_REJECTED, s->upload.path, "upload %s %s failed: %s: %m", id, lp, what);
        else
                session_log_event(s, LOG_INFO, code == BS_ERR_CONFLICT ? BS_MID_CONFLICT : BS_MID_REJECTED,
                          s->upload.path, "upload %s %s refused: %s", id, lp, bs_err_name(code));
        s->upload.u = account_upload_free(s->upload.u);
        content_close(&s->upload.src);
        s->upload.discard = true;
        return session_send_error(s, s->upload.req, code, "%s: %s", what, strerror(-r));
}

int session_handle_put(Session *s, const BsMsg *m) {
        int r;

        if (s->upload.active)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "PUT %u while the upload of %u is not finished",
                                    m->req, s->upload.req);
        s->upload.active = true;
        s->upload.discard = false;
        s->upload.req = m->req;
        s->upload.base = m->base;
        s->upload.size = m->size;
        s->upload.mode = m->mode;
        s->upload.mtime_ns = m->mtime_ns;
        s->upload.u = NULL;
        s->upload.copied = 0;
        memcpy(s->upload.path, m->path, m->path_len + 1);

        if (bs_path_check(m->path, m->path_len) < 0)
                return upload_refuse(s, -EINVAL, "bad path");
        r = account_put_check(s->account, m->path, m->base, m->size);
        if (r < 0)
                return upload_refuse(s, r, bs_err_name(session_errno_to_code(r)));
        r = account_upload_begin(s->account, &s->upload.u);
        if (r < 0)
                return upload_refuse(s, r, "cannot create a temporary file");
        return 0;
}

int session_handle_data(Session *s, const BsMsg *m) {
        if (!s->upload.active || m->req != s->upload.req)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "DATA for request %u, which is no upload in progress",
                                    m->req);
        if (s->upload.discard)
                return 0;
        int r = account_upload_write(s->upload.u, m->data, m->data_len, s->upload.size);
        if (r == -EFBIG)
                return upload_refuse(s, r, "more data than announced");
        if (r < 0)
                return upload_refuse(s, r, "cannot write");
        return 0;
}

int session_handle_copy(Session *s, const BsMsg *m) {
        int r;

        if (s->version < BS_PROTO_DELTA_VERSION)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "COPY needs protocol version %u, this session speaks %u",
                                    BS_PROTO_DELTA_VERSION, s->version);
        if (!s->upload.active || m->req != s->upload.req)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "COPY for request %u, which is no upload in progress",
                                    m->req);
        if (s->upload.discard)
                return 0;
        if (m->size > BS_COPY_MAX)
                return upload_refuse(s, -EFBIG, "COPY of more than 16 MiB");
        if (!s->upload.src || memcmp(s->upload.src_sha, m->sha, BS_SHA_LEN) != 0) {
                content_close(&s->upload.src);
                /* The account must hold this pass's uploads before one is read. */
                r = session_end_pass(s);
                if (r != 0)
                        return r;
                r = account_content_open(s->account, m->sha, s->upload.path, &s->waker, &s->upload.src);
                if (r < 0)
                        return upload_refuse(s, r, "no stored content to copy from");
                memcpy(s->upload.src_sha, m->sha, BS_SHA_LEN);
                s->upload.copy_done = 0;
        }
        r = account_content_wait(s->upload.src);
        if (r == -EINPROGRESS)
                return session_again(s, r);
        if (r < 0)
                return upload_refuse(s, r, "no stored content to copy from");
        uint64_t size = account_content_info(s->upload.src)->size;
        if (m->offset > size || m->size > size - m->offset)
                return upload_refuse(s, -EBADMSG, "COPY beyond the end of the stored content");
        /* Piece by piece: a read that has to wait resumes here, the frame handled again. */
        while (s->upload.copy_done < m->size) {
                static uint8_t buf[BS_CHUNK]; /* one server thread */
                size_t n = (size_t) MIN((uint64_t) sizeof(buf), m->size - s->upload.copy_done);
                r = account_content_read(s->upload.src, m->offset + s->upload.copy_done, buf, n);
                if (r == -EINPROGRESS)
                        return session_again(s, r);
                if (r == -EBADMSG)
                        return upload_refuse(s, r, "COPY beyond the end of the stored content");
                if (r < 0)
                        return upload_refuse(s, r, "cannot copy");
                r = account_upload_write(s->upload.u, buf, n, s->upload.size);
                if (r == -EFBIG)
                        return upload_refuse(s, r, "more data than announced");
                if (r < 0)
                        return upload_refuse(s, r, "cannot copy");
                s->upload.copy_done += n;
        }
        s->upload.copy_done = 0;
        s->upload.copied += m->size;
        s->copied_this_turn += m->size;
        return 0;
}

int session_handle_put_end(Session *s, const BsMsg *m) {
        uint64_t version = 0;
        int r;

        if (!s->upload.active || m->req != s->upload.req)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "PUT_END for request %u, which is no upload in progress",
                                    m->req);
        content_close(&s->upload.src);
        if (s->upload.discard) {
                s->upload.active = false;
                return 0;
        }
        if (m->flags & BS_PUT_ABORT) {
                s->upload.u = account_upload_free(s->upload.u);
                s->upload.active = false;
                return session_send_error(s, m->req, BS_ERR_ABORTED, "upload aborted by the agent");
        }

        r = session_batch(s);
        if (r < 0) {
                s->upload.active = false;
                return r;
        }
        r = account_put(s->batch, TAKE_PTR(s->upload.u), s->device, s->upload.path, s->upload.base, s->upload.size,
                        s->upload.mode, s->upload.mtime_ns, m->sha, &version);
        s->upload.active = false;
        s->batch_changes++;
        SessionHole h = {
                .req = m->req,
                .type = BS_MSG_PUT,
                .mode = s->upload.mode,
                .size = s->upload.size,
                .copied = s->upload.copied,
                .path = s->upload.path,
        };
        if (r == -EINPROGRESS)
                return session_defer(s, &h);
        return session_change_answer(s, &h, r, version);
}

int session_start_pull(Session *s, const BsMsg *m) {
        bool paged = m->type == BS_MSG_PULL_PAGE;
        int r;

        if (paged && s->version < BS_PROTO_PAGE_VERSION)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "PULL_PAGE needs protocol version %u, this session speaks %u",
                                    BS_PROTO_PAGE_VERSION, s->version);
        /* The cursor reads committed state only: commit this pass's changes first. */
        r = session_end_pass(s);
        if (r != 0)
                return r;
        if (!s->rec) {
                s->rec = malloc(sizeof(*s->rec));
                if (!s->rec)
                        return -ENOMEM;
        }
        if (paged && (m->flags & BS_PULL_CONTINUE)) {
                /* The next page, from the cursor (and its snapshot) the last one left. */
                if (!s->cursor)
                        return session_send_error(s, m->req, BS_ERR_PROTOCOL, "no paged answer to continue");
        } else {
                s->cursor = account_cursor_free(s->cursor);
                r = account_cursor_new(s->account, m->seq, &s->waker, &s->cursor);
                if (r < 0) {
                        errno = -r;
                        log_error("account %s: cannot read the change log: %m", account_id(s->account));
                        return session_send_error(s, m->req, BS_ERR_IO, "cannot read the change log");
                }
                /* A walk at its end is let go: another session may need the slot. */
                if (s->warm && bs_warm_done(s->warm))
                        warm_stop(s);
                if (account_cursor_is_snapshot(s->cursor))
                        warm_start(s);
        }
        s->stream = STREAM_PULL;
        s->stream_req = m->req;
        s->rec_pending = false;
        s->page_rows = paged ? m->count : 0;
        s->page_sent = 0;
        s->page_end = false;
        return 0;
}

int session_start_get(Session *s, const BsMsg *m) {
        int r;

        if (m->type == BS_MSG_GET_DELTA && s->version < BS_PROTO_DELTA_VERSION)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "GET_DELTA needs protocol version %u, this session speaks %u",
                                    BS_PROTO_DELTA_VERSION, s->version);
        if (m->path_len > 0 && bs_path_check(m->path, m->path_len) < 0)
                return session_send_error(s, m->req, BS_ERR_BAD_PATH, "bad path");
        r = session_end_pass(s);
        if (r != 0)
                return r;
        r = ahead_take(s, m, &s->content);
        if (r == 0) {
                r = account_content_open(s->account, m->sha, m->path, &s->waker, &s->content);
                /* Not opened ahead: started as those are, so it leaves the
                 * page cache as they do when it was not there before. */
                if (r == 0)
                        account_content_prefetch(s->content, SESSION_PREFETCH_BYTES, NULL);
        }
        if (r > 0)
                r = 0;
        if (r == -ENOENT)
                return session_send_error(s, m->req, BS_ERR_NOT_FOUND, "no such content");
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot open content: %m", account_id(s->account));
                return session_send_error(s, m->req, session_errno_to_code(r), "cannot open content");
        }
        /* Without the agent's content (no longer kept) the answer is all DATA. */
        have_close(s);
        s->have_off = 0;
        if (m->type == BS_MSG_GET_DELTA && account_content_open(s->account, m->have, m->path, &s->waker, &s->have) < 0)
                s->have = NULL;
        memcpy(s->have_sha, m->have, BS_SHA_LEN);
        s->have_same = memcmp(m->have, m->sha, BS_SHA_LEN) == 0;
        memcpy(s->get_sha, m->sha, BS_SHA_LEN);
        s->stream = STREAM_GET;
        s->stream_req = m->req;
        s->content_off = 0;
        s->file_sent = false;
        return 0;
}

/* FILE, once the content is found (and the agent's, for GET_DELTA, or not): 0 (sent, or
 * the stream ended with an error), SESSION_AGAIN, or -errno. */
static int send_file(Session *s) {
        BsMsg f;
        int r = account_content_wait(s->content);
        if (r == -EINPROGRESS)
                return session_again(s, r);
        if (r < 0) {
                content_close(&s->content);
                have_close(s);
                s->stream = STREAM_NONE;
                if (r == -ENOENT)
                        return session_send_error(s, s->stream_req, BS_ERR_NOT_FOUND, "no such content");
                errno = -r;
                log_error("account %s: cannot open content: %m", account_id(s->account));
                return session_send_error(s, s->stream_req, session_errno_to_code(r), "cannot open content");
        }
        if (s->have) {
                r = account_content_wait(s->have);
                if (r == -EINPROGRESS)
                        return session_again(s, r);
                if (r < 0)
                        have_close(s); /* no longer kept: the answer is all DATA */
        }
        bs_msg_init(&f, BS_MSG_FILE, s->stream_req);
        const AccountContentInfo *info = account_content_info(s->content);
        f.size = info->size;
        f.mode = info->mode;
        f.mtime_ns = info->mtime_ns;
        f.seq = info->version;
        memcpy(f.sha, s->get_sha, BS_SHA_LEN);
        r = session_send(s, &f);
        if (r < 0)
                return r;
        s->file_sent = true;
        return 0;
}

static int fill_get(Session *s) {
        uint64_t left = account_content_info(s->content)->size - s->content_off;
        size_t chunk = MIN((size_t) BS_CHUNK, (size_t) s->peer_max_frame - 64);
        size_t n = (size_t) MIN((uint64_t) chunk, left), off;
        int r;

        if (left == 0) {
                content_close(&s->content);
                s->stream = STREAM_NONE;
                return 0;
        }
        /* Room for the whole frame first: nothing may move between begin and end. */
        r = bs_buf_reserve(&s->out, BS_FRAME_HDR + 4 + n);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, BS_MSG_DATA, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        r = account_content_read(s->content, s->content_off, s->out.data + s->out.end, n);
        if (r == -EINPROGRESS) {
                bs_frame_cancel(&s->out, off);
                return session_again(s, r);
        }
        if (r < 0) {
                bs_frame_cancel(&s->out, off);
                errno = -r;
                log_error("account %s: reading content failed: %m", account_id(s->account));
                return session_fail(s, s->stream_req, BS_ERR_IO, "reading content failed");
        }
        s->out.end += n;
        bs_frame_end(&s->out, off);
        s->content_off += n;
        return 0;
}

static int queue_data(Session *s, const uint8_t *p, size_t n) {
        size_t off;
        int r = bs_buf_reserve(&s->out, BS_FRAME_HDR + 4 + n);
        if (r < 0)
                return r;
        bs_frame_begin(&s->out, BS_MSG_DATA, &off);
        bs_buf_put_u32(&s->out, s->stream_req);
        bs_buf_append(&s->out, p, n);
        bs_frame_end(&s->out, off);
        return 0;
}

/* Where the agent holds a chunk: found in its content's index, and the
 * bytes there the same (the index only says where to look). */
static bool have_find(void *userdata, const uint8_t *p, uint32_t len, const uint8_t sum[BS_BLOCK_SUM_LEN],
                      uint8_t sha[BS_SHA_LEN], uint64_t *off) {
        static uint8_t hb[BS_CHUNK_MAX]; /* one server thread */
        Session *s = userdata;
        if (bs_block_map_find(s->have_map, len, sum, off) < 0 ||
            account_content_read(s->have, *off, hb, len) != 0 || memcmp(hb, p, len) != 0)
                return false;
        memcpy(sha, s->have_sha, BS_SHA_LEN);
        return true;
}

/* Cut the next bytes of the agent's content; 1 when it is time to let
 * others run. The content unreadable, the answer is all DATA. */
static int index_have(Session *s) {
        static uint8_t buf[BS_CHUNK];
        uint64_t turn = 0;
        int r = 0;
        if (!s->have_list && bs_blocks_new(&s->have_list) < 0)
                return -ENOMEM;
        uint64_t size = account_content_info(s->have)->size;
        while (s->have_off < size && turn < DELTA_INDEX_TURN) {
                size_t n = (size_t) MIN((uint64_t) sizeof(buf), size - s->have_off);
                r = account_content_read(s->have, s->have_off, buf, n);
                if (r == -EINPROGRESS)
                        return session_again(s, r);
                if (r < 0 ||
                    bs_blocks_update(s->have_list, buf, n) < 0) {
                        have_close(s);
                        return 0;
                }
                s->have_off += n;
                turn += n;
        }
        if (s->have_off < size)
                return 1;
        size_t count;
        r = bs_blocks_final(s->have_list);
        if (r == 0) {
                const uint8_t *recs = bs_blocks_recs(s->have_list, &count);
                r = bs_block_map_new(&s->have_map, recs, count);
        }
        if (r < 0) {
                have_close(s);
                return 0;
        }
        s->have_list = bs_blocks_free(s->have_list);
        r = bs_delta_init(&s->delta, account_content_info(s->content)->size, false);
        if (r < 0)
                have_close(s);
        return r < 0 ? r : 0;
}

/* The agent holds the very content (a copy elsewhere in its tree): COPY it all. */
static int copy_all(Session *s) {
        BsMsg c;
        uint64_t left = account_content_info(s->content)->size - s->content_off;
        if (left == 0) {
                content_close(&s->content);
                have_close(s);
                s->stream = STREAM_NONE;
                return 0;
        }
        bs_msg_init(&c, BS_MSG_COPY, s->stream_req);
        c.offset = s->content_off;
        c.size = MIN(left, (uint64_t) BS_COPY_MAX);
        memcpy(c.sha, s->have_sha, BS_SHA_LEN);
        s->content_off += c.size;
        int r = session_send(s, &c);
        return r < 0 ? r : 1;
}

/*
 * One step of a GET_DELTA answer: COPY for the runs of chunks the agent
 * holds, DATA for the others. 1 when it is time to let others run.
 */
static int fill_get_delta(Session *s) {
        size_t chunk = MIN((size_t) BS_CHUNK, (size_t) s->peer_max_frame - 64);
        BsDeltaPiece piece;
        BsMsg c;
        int r;

        if (s->have_same)
                return copy_all(s);
        if (!s->have_map)
                return index_have(s);
        r = bs_delta_next(&s->delta, have_find, s, &piece);
        if (r < 0)
                return r;
        if (r == 0) {
                size_t want;
                uint8_t *p = bs_delta_space(&s->delta, &want);
                if (want == 0) {
                        content_close(&s->content);
                        have_close(s);
                        s->stream = STREAM_NONE;
                        return 0;
                }
                want = MIN(want, (size_t) BS_CHUNK);
                r = account_content_read(s->content, s->delta.fed, p, want);
                if (r == -EINPROGRESS)
                        return session_again(s, r);
                if (r < 0) {
                        errno = -r;
                        log_error("account %s: reading content failed: %m", account_id(s->account));
                        return session_fail(s, s->stream_req, BS_ERR_IO, "reading content failed");
                }
                bs_delta_fed(&s->delta, want);
                return 0;
        }
        if (piece.kind == BS_DELTA_DATA) {
                for (uint64_t i = 0; i < piece.len; i += chunk) {
                        r = queue_data(s, piece.data + i, (size_t) MIN((uint64_t) chunk, piece.len - i));
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        bs_msg_init(&c, BS_MSG_COPY, s->stream_req);
        c.offset = piece.off;
        c.size = piece.len;
        memcpy(c.sha, piece.sha, BS_SHA_LEN);
        r = session_send(s, &c);
        /* Cheap to send, but the agent's disk work: let others run. */
        return r < 0 ? r : 1;
}

static int pull_next(Session *s) {
        return account_cursor_next(s->cursor, s->rec);
}

static size_t pull_size(Session *s) {
        return BS_RECORD_MIN + s->rec->path_len + s->rec->path2_len;
}

static int pull_encode(Session *s) {
        return bs_record_encode(&s->out, s->rec);
}

static void pull_done(Session *s) {
        s->cursor = account_cursor_free(s->cursor);
}

static void pull_header(Session *s, uint64_t *seq, uint8_t *flags) {
        *seq = account_cursor_seq(s->cursor);
        *flags = account_cursor_is_snapshot(s->cursor) ? BS_CHANGES_SNAPSHOT : 0;
}

static int fill_pull(Session *s) {
        return session_fill_rows(s, &(SessionRows) {
                .type = BS_MSG_CHANGES,
                .header = pull_header,
                .row_max = BS_RECORD_MIN + 2 * BS_PATH_MAX,
                .what = "change log",
                .next = pull_next,
                .size = pull_size,
                .encode = pull_encode,
                .done = pull_done,
        });
}

int session_transfer_fill(Session *s) {
        if (s->stream == STREAM_PULL)
                return fill_pull(s);
        if (!s->file_sent) {
                int r = send_file(s);
                if (r != 0 || !s->file_sent)
                        return r;
        }
        return s->have ? fill_get_delta(s) : fill_get(s);
}
