/* session-hello.c - HELLO: the protocol version, then registering or joining an account
 *
 * The one handler that takes an account from the cache: a new one for an
 * empty token, else the one the token names, checked against its key.
 * Failed logins count against the peer's address in the rate limit.
 */
#include <errno.h>
#include <string.h>

#include "bs-log.h"
#include "bs-macro.h"
#include "bs-token.h"
#include "session-hello.h"

static int send_welcome(Session *s, const char *token) {
        BsMsg m;
        bs_msg_init(&m, BS_MSG_WELCOME, 0);
        m.version = s->version;
        m.max_frame = BS_FRAME_MAX_DEFAULT;
        m.seq = account_committed_seq(s->account);
        m.path_len = strlen(account_id(s->account));
        memcpy(m.path, account_id(s->account), m.path_len + 1);
        m.path2_len = strlen(token);
        memcpy(m.path2, token, m.path2_len + 1);
        return session_send(s, &m);
}

static int auth_failed(Session *s, const char *id) {
        ratelimit_fail(s->host->ratelimit, s->peer_addr, session_now_usec(s));
        bs_logf(LOG_WARNING, &(BsLogCtx) { .message_id = BS_MID_AUTH_FAILED, .account = id },
                "auth failed for %s from %s", id, s->peer);
        (void) session_send_error(s, 0, BS_ERR_AUTH, "unknown account or wrong key");
        s->state = SESSION_CLOSING;
        return -ECONNABORTED;
}

int session_handle_hello(Session *s, const BsMsg *m) {
        SessionHost *host = s->host;
        uint64_t left;
        BsToken t;
        int r;

        if (m->type != BS_MSG_HELLO)
                return session_fail(s, m->req, BS_ERR_PROTOCOL, "expected HELLO, got %s",
                                    bs_msg_type_name(m->type));
        if (ratelimit_blocked(host->ratelimit, s->peer_addr, session_now_usec(s), &left))
                return session_fail(s, 0, BS_ERR_RATE_LIMITED,
                                    "too many failed logins from %s; retry in %llu s", s->peer,
                                    (unsigned long long) (left + USEC_PER_SEC - 1) / USEC_PER_SEC);
        if (m->min_version > m->version || m->min_version > BS_PROTO_VERSION ||
            m->version < BS_PROTO_MIN_VERSION)
                return session_fail(s, 0, BS_ERR_VERSION,
                                    "no common protocol version: agent speaks %u..%u, server speaks %u..%u",
                                    m->min_version, m->version, BS_PROTO_MIN_VERSION, BS_PROTO_VERSION);
        if (m->max_frame < BS_FRAME_MIN)
                return session_fail(s, 0, BS_ERR_BAD_FRAME, "frame limit %u is below %u",
                                    m->max_frame, BS_FRAME_MIN);
        s->peer_max_frame = MIN(m->max_frame, BS_FRAME_LIMIT);
        s->version = MIN(m->version, (uint16_t) BS_PROTO_VERSION);
        memcpy(s->device, m->device, BS_DEVICE_LEN);
        /* The agent's host name: untrusted, so printable ASCII only. */
        size_t o = 0;
        for (size_t i = 0; i < m->path2_len && o < sizeof(s->device_name) - 1; i++)
                s->device_name[o++] = m->path2[i] > 0x20 && m->path2[i] < 0x7f ? m->path2[i] : '_';
        s->device_name[o] = 0;

        /* Registered or looked up once; handled again while the account is opened. */
        if (m->path_len == 0 && !s->account) {
                r = account_cache_register(host->accounts, &s->account, s->token);
                if (r < 0) {
                        errno = -r;
                        log_error("could not create an account for %s: %m", s->peer);
                        return session_fail(s, 0, session_errno_to_code(r) == BS_ERR_NO_SPACE ? BS_ERR_NO_SPACE : BS_ERR_IO,
                                            "could not create an account");
                }
        } else if (m->path_len > 0) {
                if (bs_token_parse(m->path, m->path_len, &t) < 0)
                        return auth_failed(s, "(malformed)");
                /* Checked before the lookup, so the answer tells nothing about the ID. */
                if (!t.key[0] && host->require_key)
                        return session_fail(s, 0, BS_ERR_AUTH,
                                            "this server needs the full token ID-KEY printed at registration");
                if (!s->account) {
                        r = account_cache_acquire(host->accounts, t.id, &s->account);
                        if (r == -ENOENT)
                                return auth_failed(s, t.id);
                        if (r < 0) {
                                errno = -r;
                                log_error("could not open account %s: %m", t.id);
                                return session_fail(s, 0, BS_ERR_IO, "could not open the account");
                        }
                }
        }
        r = account_wait(s->account, &s->waker);
        if (r == -EINPROGRESS)
                return session_again(s, r);
        if (r < 0) {
                account_forget_waker(s->account, &s->waker);
                account_cache_release(host->accounts, TAKE_PTR(s->account));
                if (r == -ENOENT && m->path_len > 0)
                        return auth_failed(s, t.id);
                errno = -r;
                log_error("could not %s account: %m", m->path_len > 0 ? "open the" : "create an");
                return session_fail(s, 0, session_errno_to_code(r) == BS_ERR_NO_SPACE ? BS_ERR_NO_SPACE : BS_ERR_IO,
                                    m->path_len > 0 ? "could not open the account" : "could not create an account");
        }
        if (m->path_len == 0)
                session_log_event(s, LOG_INFO, BS_MID_REGISTERED, NULL, "registered account %s", account_id(s->account));
        else {
                if (t.key[0] && !account_key_valid(s->account, t.key)) {
                        account_cache_release(host->accounts, TAKE_PTR(s->account));
                        return auth_failed(s, t.id);
                }
                ratelimit_success(host->ratelimit, s->peer_addr);
                session_log_event(s, LOG_INFO, BS_MID_JOINED, NULL,
                          "joined account %s from %s", account_id(s->account), s->peer);
        }
        /* An all-zero device is a reader (the backupsync command), not a computer of the account. */
        static const uint8_t reader[BS_DEVICE_LEN];
        r = memcmp(s->device, reader, BS_DEVICE_LEN) ? account_device_seen(s->account, s->device, m->path2) : 0;
        if (r < 0) {
                errno = -r;
                log_warning("account %s: could not record device: %m", account_id(s->account));
        }
        s->state = SESSION_RUNNING;
        r = send_welcome(s, s->token);
        explicit_bzero(s->token, sizeof(s->token));
        return r;
}
