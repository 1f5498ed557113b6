/* session-change.c - ATTR, MKDIR, SYMLINK, DELETE and MOVE
 *
 * Each is one frame and one change of the pass's batch, answered ACK or
 * ERROR at once, or at commit when the account decides it then
 * (session_defer()).
 */
#include <errno.h>
#include <string.h>

#include "bs-path.h"
#include "session-change.h"

int session_handle_change(Session *s, const BsMsg *m) {
        uint64_t version = 0;
        int r;

        if (bs_path_check(m->path, m->path_len) < 0)
                return session_send_error(s, m->req, BS_ERR_BAD_PATH, "bad path");
        if ((m->type == BS_MSG_MOVE && bs_path_check(m->path2, m->path2_len) < 0) ||
            (m->type == BS_MSG_SYMLINK && (m->path2_len == 0 || strlen(m->path2) != m->path2_len)))
                return session_send_error(s, m->req, BS_ERR_BAD_PATH,
                                          m->type == BS_MSG_MOVE ? "bad target path" : "bad link target");

        if (m->type == BS_MSG_ATTR && s->version < BS_PROTO_ATTR_VERSION)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "ATTR needs protocol version %u (this session: %u)",
                                    BS_PROTO_ATTR_VERSION, s->version);
        r = session_batch(s);
        if (r < 0)
                return r;
        switch (m->type) {
        case BS_MSG_ATTR:
                r = account_attr(s->batch, s->device, m->path, m->base, m->mode, m->mtime_ns, m->sha, &version);
                break;
        case BS_MSG_MKDIR:
                r = account_mkdir(s->batch, s->device, m->path, m->base, m->mode, m->mtime_ns, &version);
                break;
        case BS_MSG_SYMLINK:
                r = account_symlink(s->batch, s->device, m->path, m->base, m->path2, m->mtime_ns, &version);
                break;
        case BS_MSG_DELETE:
                r = account_delete(s->batch, s->device, m->path, m->base, &version);
                break;
        default:
                r = account_move(s->batch, s->device, m->path, m->base, m->path2, m->base2, &version);
                break;
        }
        s->batch_changes++;
        SessionHole h = {
                .req = m->req,
                .type = m->type,
                .mode = m->mode,
                .path = (char *) m->path,
                .path2 = m->type == BS_MSG_MOVE ? (char *) m->path2 : NULL,
        };
        if (r == -EINPROGRESS)
                return session_defer(s, &h);
        return session_change_answer(s, &h, r, version);
}
