/* agent-session.c - the agent's session with the server: HELLO/WELCOME, I/O, hang-up
 *
 * Registration and joining happen here (the token is saved before it is
 * printed). A refusal that retrying cannot mend (token refused, no common
 * protocol version, a token that cannot be saved) sets a->stop; the loop
 * ends on it and main() picks the exit status.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "agent-session.h"
#include "agent.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-tls.h"

#define CONNECT_TIMEOUT_MS 10000
#define WELCOME_TIMEOUT_MS 30000

void agent_disconnect(Agent *a, const char *why) {
        if (!a->conn)
                return;
        if (why)
                log_event(LOG_WARNING, BS_MID_CONN_LOST, a->account[0] ? a->account : NULL, NULL,
                          "connection to %s port %s lost: %s", agent_server(a), a->cfg.port, why);
        a->conn = bs_conn_free(a->conn);
}

/* Is the token the one the state keeps (a restart, not a join)? */
static bool token_saved(Agent *a) {
        char buf[BS_TOKEN_MAX + 1];
        return agent_state_get(a->state, "token", buf, sizeof(buf)) == 0 && strcmp(buf, a->token) == 0;
}

/* Connect to host, and check the server's key before anything is sent. */
static int open_one(Agent *a, const char *host, BsConn **ret) {
        BsTrust t = { .tls = a->cfg.tls, .ca_file = a->cfg.ca_file, .pin_dir_fd = -1 };
        char have[BS_FP_TEXT_MAX], want[BS_FP_TEXT_MAX];
        BsConnReport rep;

        if (a->cfg.server_fingerprint) {
                t.have_fp = true;
                (void) bs_fp_parse(a->cfg.server_fingerprint, t.fp); /* checked when read */
        }
        if (!t.ca_file) {
                int fd = agent_state_dir_fd(a);
                if (fd < 0) {
                        log_error("cannot open %s to keep the server's key: %s", a->cfg.state_dir, strerror(-fd));
                        a->stop = AGENT_STOP_STATE;
                        return fd;
                }
                t.pin_dir_fd = fd;
        }
        int r = bs_conn_open(host, a->cfg.port, CONNECT_TIMEOUT_MS, &t, ret, &rep);
        bs_fp_format(rep.presented, have);
        bs_fp_format(rep.expected, want);
        if (r == -EPERM && t.have_fp) {
                bs_logf(LOG_ERR, &(BsLogCtx) { .message_id = BS_MID_TLS_MISMATCH, .fingerprint = have },
                        "the server at %s port %s presented the key %s, but %s was expected (given by "
                        "server-fingerprint); nothing was sent. If the server's key was changed on purpose (ask "
                        "its administrator: backupsyncd --fingerprint), give server-fingerprint = %s and start "
                        "the agent again",
                        host, a->cfg.port, have, want, have);
                a->stop = AGENT_STOP_IDENTITY;
                return r;
        }
        if (r == -EPERM) {
                bs_logf(LOG_ERR, &(BsLogCtx) { .message_id = BS_MID_TLS_MISMATCH, .fingerprint = have },
                        "the server at %s port %s presented the key %s, but %s was expected (pinned in %s/%s at "
                        "the first contact); nothing was sent. If the server's key was changed on purpose (ask "
                        "its administrator: backupsyncd --fingerprint), delete %s/%s or set server-fingerprint "
                        "= %s, and start the agent again",
                        host, a->cfg.port, have, want, a->cfg.state_dir, BS_PIN_FILE, a->cfg.state_dir,
                        BS_PIN_FILE, have);
                a->stop = AGENT_STOP_IDENTITY;
                return r;
        }
        if (r == -EPROTO) {
                if (t.ca_file && strncmp(rep.reason, "certificate verify failed", 25) == 0) {
                        log_error("the server at %s port %s is not who it claims: %s; nothing was sent",
                                  host, a->cfg.port, rep.reason);
                        a->stop = AGENT_STOP_IDENTITY;
                } else if (rep.server_said)
                        /* In clear text before any handshake: a server without
                         * TLS, or one that is full or has blocked us. */
                        log_warning("the server at %s port %s %s: %s (%s)", host, a->cfg.port,
                                    rep.code == BS_ERR_PROTOCOL ? "refused TLS" : "refused the connection",
                                    bs_err_name(rep.code), rep.text);
                else
                        log_warning("TLS with %s port %s failed: %s", host, a->cfg.port, rep.reason);
                return r;
        }
        if (r == -ETIMEDOUT && rep.reason[0])
                log_warning("%s port %s: %s", host, a->cfg.port, rep.reason);
        if (r == -EBADMSG) {
                /* A pin we cannot read checks nothing: a person must look. */
                log_error("%s/%s is damaged; delete it to pin the server's key again at the next contact",
                          a->cfg.state_dir, BS_PIN_FILE);
                a->stop = AGENT_STOP_IDENTITY;
        }
        if (r < 0)
                return r;
        if (rep.outcome == BS_TRUST_NEW_PIN)
                bs_logf(LOG_NOTICE, &(BsLogCtx) { .message_id = BS_MID_TLS_PINNED, .fingerprint = have },
                        "first contact with %s port %s: its key %s is now pinned in %s/%s; compare it with what "
                        "the server's administrator sees (backupsyncd --fingerprint)",
                        host, a->cfg.port, have, a->cfg.state_dir, BS_PIN_FILE);
        return 0;
}

/* The servers in turn, from the one that answered last, while they cannot
 * be reached: a node that is down hands its agents to the next one. */
static int open_checked(Agent *a, BsConn **ret) {
        int r = -EHOSTUNREACH;
        for (size_t k = 0; k < a->n_servers; k++) {
                size_t i = (a->server_i + k) % a->n_servers;
                r = open_one(a, a->servers[i], ret);
                if (r >= 0) {
                        if (i != a->server_i)
                                log_info("%s port %s answers; %s did not", a->servers[i], a->cfg.port,
                                         a->servers[a->server_i]);
                        a->server_i = i;
                        return r;
                }
                if (a->stop || (r != -ECONNREFUSED && r != -ETIMEDOUT && r != -EHOSTUNREACH && r != -ENETUNREACH &&
                                r != -ECONNRESET && r != -EADDRNOTAVAIL))
                        return r;
        }
        return r;
}

int agent_connect(Agent *a) {
        _cleanup_(bs_conn_freep) BsConn *c = NULL;
        BsMsg *m = NULL;
        char host[256];
        int r;

        if (a->conn)
                return 0;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        a->last_connect_usec = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
        c = NULL;
        r = open_checked(a, &c);
        if (r < 0)
                return r;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        bs_msg_init(m, BS_MSG_HELLO, 0);
        m->min_version = BS_PROTO_MIN_VERSION;
        m->version = BS_PROTO_VERSION;
        m->max_frame = BS_FRAME_MAX_DEFAULT;
        memcpy(m->device, a->device, BS_DEVICE_LEN);
        m->path_len = strlen(a->token);
        memcpy(m->path, a->token, m->path_len + 1);
        /* The name the server shows in the history: --device-name or
         * device-name=, else the host name. */
        if (a->cfg.device_name)
                snprintf(host, sizeof(host), "%s", a->cfg.device_name);
        else if (gethostname(host, sizeof(host)) < 0)
                snprintf(host, sizeof(host), "unknown");
        host[sizeof(host) - 1] = 0;
        m->path2_len = strlen(host);
        memcpy(m->path2, host, m->path2_len + 1);
        r = bs_conn_send(c, m);
        r = r ?: bs_conn_recv(c, m, WELCOME_TIMEOUT_MS);
        if (r < 0)
                goto out;
        if (r == 0) {
                r = -ETIMEDOUT;
                goto out;
        }
        if (m->type == BS_MSG_ERROR) {
                switch (m->code) {
                case BS_ERR_AUTH:
                        log_event(LOG_ERR, BS_MID_AUTH_FAILED, a->token[0] ? NULL : NULL, NULL,
                                  "server refused the account token: %s", m->path);
                        a->stop = AGENT_STOP_AUTH;
                        r = -EACCES;
                        break;
                case BS_ERR_VERSION:
                        log_error("protocol version mismatch: %s", m->path);
                        a->stop = AGENT_STOP_VERSION;
                        r = -EPROTONOSUPPORT;
                        break;
                default:
                        log_warning("server refused the connection: %s (%s)", bs_err_name(m->code), m->path);
                        r = -ECONNREFUSED;
                }
                goto out;
        }
        if (m->type != BS_MSG_WELCOME) {
                log_error("server answered HELLO with %s", bs_msg_type_name(m->type));
                r = -EPROTO;
                goto out;
        }
        if (!bs_id_valid(m->path, m->path_len)) {
                log_error("server sent a malformed account id");
                r = -EPROTO;
                goto out;
        }
        c->peer_max_frame = m->max_frame;
        c->version = m->version;
        if (!a->token[0]) {
                /* Registered: keep the token before anything else happens. */
                BsToken t;
                if (bs_token_parse(m->path2, m->path2_len, &t) < 0 || strcmp(t.id, m->path) != 0) {
                        log_error("server sent a malformed token");
                        r = -EPROTO;
                        goto out;
                }
                bs_token_format(&t, a->token);
                r = agent_state_set(a->state, "token", a->token);
                r = r ?: agent_state_flush(a->state); /* printed next: it must survive a power loss */
                if (r < 0) {
                        log_error("cannot save the account token in %s: %s", a->cfg.state_dir, strerror(-r));
                        a->stop = AGENT_STOP_STATE;
                        goto out;
                }
                printf("ID: %s\n", a->token);
                fflush(stdout);
                log_event(LOG_NOTICE, BS_MID_REGISTERED, m->path, NULL,
                          "registered new account %s; use the token %s to add another computer", m->path, a->token);
        } else if (!a->account[0] && !token_saved(a)) {
                r = agent_state_set(a->state, "token", a->token);
                r = r ?: agent_state_flush(a->state);
                if (r < 0) {
                        log_error("cannot save the account token in %s: %s", a->cfg.state_dir, strerror(-r));
                        a->stop = AGENT_STOP_STATE;
                        goto out;
                }
                log_event(LOG_NOTICE, BS_MID_JOINED, m->path, NULL, "joined account %s", m->path);
        }
        memcpy(a->account, m->path, BS_ID_LEN + 1);
        agent_token_file(a);
        log_info("connected to %s port %s, account %s at sequence %llu", agent_server(a), a->cfg.port, a->account,
                 (unsigned long long) m->seq);
        a->conn = TAKE_PTR(c);
        r = 0;
out:
        free(m);
        return r;
}

int agent_io(Agent *a, int timeout_ms) {
        /* In slices, so a slow answer (the server fsyncing a huge file)
         * does not starve the watchdog. */
        for (int waited = 0;;) {
                int slice = MIN(timeout_ms - waited, 5000);
                int r = bs_conn_io(a->conn, slice);
                if (r != -ETIMEDOUT)
                        return r;
                waited += slice;
                if (waited >= timeout_ms)
                        return r;
                sd_notify(false, "WATCHDOG=1");
        }
}
