/* cli-account.c - choosing the account and talking to its server
 *
 * The command connects as a reader: an all-zero device id, which the
 * server does not count among the account's computers. Everything it
 * asks is answered from the server; the agent need not run.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "bs-config.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "cli-account.h"

#define CLI_TIMEOUT_MS 30000

static int cmp_str(const void *x, const void *y) {
        return strcmp(*(char *const *) x, *(char *const *) y);
}

void cli_find_agents(const char *base, char ***ret, size_t *ret_n) {
        BsDirent *v = NULL;
        size_t nv = 0, n = 0;
        char **found = NULL;
        int dfd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0 && bs_dir_list(dfd, &v, &nv) == 0)
                for (size_t i = 0; i < nv; i++) {
                        char rel[512], *p, **grown;
                        int k = snprintf(rel, sizeof(rel), "%s/" BS_STATUS_FILE, v[i].name);
                        if (v[i].name[0] == '.' || k < 0 || (size_t) k >= sizeof(rel) ||
                            faccessat(dfd, rel, F_OK, 0) < 0)
                                continue;
                        if (asprintf(&p, "%s/%s", base, v[i].name) < 0)
                                break;
                        if (!(grown = realloc(found, (n + 1) * sizeof(*found)))) {
                                free(p);
                                break;
                        }
                        found = grown;
                        found[n++] = p;
                }
        bs_dir_list_free(v, nv);
        if (dfd >= 0)
                close(dfd);
        if (n)
                qsort(found, n, sizeof(*found), cmp_str);
        *ret = found;
        *ret_n = n;
}

static int from_state_dir(const char *state_dir, CliAccount *acc) {
        BsStatus s;
        int fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int r = fd < 0 ? -errno : bs_status_read(fd, &s);
        if (r == -ENOENT) {
                fprintf(stderr, "backupsync: %s: no agent has run with this state directory\n", state_dir);
                goto out;
        }
        if (r < 0) {
                fprintf(stderr, "backupsync: %s/" BS_STATUS_FILE ": %s\n", state_dir,
                        r == -EBADMSG ? "not a status file" : strerror(-r));
                goto out;
        }
        r = bs_token_file_read(fd, acc->token);
        if (r < 0) {
                fprintf(stderr, "backupsync: %s/" BS_TOKEN_FILE ": %s\n", state_dir,
                        r == -ENOENT ? "no account token yet (the agent has not reached its server)"
                        : r == -EBADMSG ? "not an account token" : strerror(-r));
                goto out;
        }
        memcpy(acc->server, s.server, sizeof(acc->server));
        memcpy(acc->port, s.port, sizeof(acc->port));
        memcpy(acc->dir, s.dir, sizeof(acc->dir));
        /* The agent pinned its server's key there: the same key is checked. */
        if (snprintf(acc->pin_dir, sizeof(acc->pin_dir), "%s", state_dir) >= (int) sizeof(acc->pin_dir))
                acc->pin_dir[0] = 0;
out:
        if (fd >= 0)
                close(fd);
        return r == 0 ? EX_OK : r == -EBADMSG ? EX_DATAERR : EX_NOINPUT;
}

int cli_account_resolve(const char *state_dir, const char *server, const char *port, const char *token,
                        CliAccount *ret) {
        CliAccount acc = { .tls = true };
        BsToken t;

        if (server) {
                if (!token)
                        token = getenv("BACKUPSYNC_TOKEN");
                if (!token || bs_token_parse(token, strlen(token), &t) < 0) {
                        fprintf(stderr, "backupsync: --server needs the account token: --token ID-KEY or "
                                        "BACKUPSYNC_TOKEN in the environment%s\n",
                                token ? " (this one is not a token)" : "");
                        return EX_USAGE;
                }
                if (strlen(server) >= sizeof(acc.server)) {
                        fprintf(stderr, "backupsync: --server: name too long\n");
                        return EX_USAGE;
                }
                bs_token_format(&t, acc.token);
                strcpy(acc.server, server);
                /* Nowhere to pin: the key must be given (or a CA vouch for it). */
                snprintf(acc.port, sizeof(acc.port), "%s", port ? port : "7373");
                *ret = acc;
                return EX_OK;
        }
        if (state_dir) {
                int r = from_state_dir(state_dir, &acc);
                if (r == EX_OK)
                        *ret = acc;
                return r;
        }
        _cleanup_(freep) char *base = bs_state_base();
        char **found = NULL;
        size_t n = 0;
        int r = EX_USAGE;
        if (!base) {
                fprintf(stderr, "backupsync: neither XDG_STATE_HOME nor HOME is set; use --state-dir\n");
                return EX_USAGE;
        }
        cli_find_agents(base, &found, &n);
        if (n == 1)
                r = from_state_dir(found[0], &acc);
        else if (n == 0)
                fprintf(stderr, "backupsync: no agent has run for this user (nothing in %s); "
                                "name the account with --server HOST --token TOKEN\n", base);
        else
                fprintf(stderr, "backupsync: this user has %zu agents; choose one with --instance NAME "
                                "or --state-dir DIR (backupsync status lists them)\n", n);
        for (size_t i = 0; i < n; i++)
                free(found[i]);
        free(found);
        if (r == EX_OK)
                *ret = acc;
        return r;
}

int cli_account_from_config(const char *system_file, const char *instance, CliAccount *ret) {
        _cleanup_(freep) char *user = NULL;
        BsAgentConfig cfg;
        BsConfigError err;
        char msg[PATH_MAX + 1024];
        CliAccount acc = { .tls = true };

        (void) bs_config_user_file(&user);
        bs_agent_config_init(&cfg);
        int r = bs_config_load_agent(system_file, false, user, instance, &cfg, &err);
        if (r < 0) {
                bs_config_error_format(&err, msg, sizeof(msg));
                fprintf(stderr, "backupsync: %s\n", msg);
                bs_agent_config_done(&cfg);
                return r == -ESRCH ? EX_NOINPUT : EX_CONFIG;
        }
        if (!cfg.id) {
                fprintf(stderr, "backupsync: [agent:%s] has no id (the account token) and its agent has not "
                                "registered the account yet\n", instance);
                bs_agent_config_done(&cfg);
                return EX_NOINPUT;
        }
        snprintf(acc.server, sizeof(acc.server), "%s", cfg.server);
        snprintf(acc.port, sizeof(acc.port), "%u", (unsigned) cfg.port);
        snprintf(acc.token, sizeof(acc.token), "%s", cfg.id);
        snprintf(acc.dir, sizeof(acc.dir), "%s", cfg.path ? cfg.path : "");
        bs_agent_config_done(&cfg);
        /* The agent of this instance will keep its state there: the key
         * seen now is pinned for both. */
        _cleanup_(freep) char *state = bs_state_dir_for_instance(instance);
        if (state && bs_mkdir_p(state, 0700) == 0)
                snprintf(acc.pin_dir, sizeof(acc.pin_dir), "%s", state);
        *ret = acc;
        return EX_OK;
}

void cli_account_trust(CliAccount *acc, const char *system_file, const char *instance, const CliTrustOptions *o) {
        if (instance) {
                _cleanup_(freep) char *user = NULL;
                BsAgentConfig cfg;
                BsConfigError err;
                (void) bs_config_user_file(&user);
                bs_agent_config_init(&cfg);
                /* A broken or missing section was reported while choosing the account. */
                if (bs_config_load_agent(system_file, false, user, instance, &cfg, &err) == 0) {
                        acc->tls = cfg.tls;
                        if (cfg.server_fingerprint)
                                acc->have_fp = bs_fp_parse(cfg.server_fingerprint, acc->fp) == 0;
                        if (cfg.ca_file) {
                                acc->ca = true;
                                snprintf(acc->ca_file, sizeof(acc->ca_file), "%s", cfg.ca_file);
                        }
                }
                bs_agent_config_done(&cfg);
        }
        if (o->tls >= 0)
                acc->tls = o->tls;
        if (o->fingerprint)
                acc->have_fp = bs_fp_parse(o->fingerprint, acc->fp) == 0;
        if (o->ca_file) {
                acc->ca = true;
                snprintf(acc->ca_file, sizeof(acc->ca_file), "%s", o->ca_file);
        }
}

/* Connect and check the server's key: nothing secret is sent before. */
static int open_checked(const CliAccount *acc, BsConn **ret) {
        char have[BS_FP_TEXT_MAX], want[BS_FP_TEXT_MAX];
        BsTrust t = { .tls = acc->tls, .have_fp = acc->have_fp, .ca_file = acc->ca ? acc->ca_file : NULL,
                      .pin_dir_fd = -1 };
        BsConnReport rep;

        memcpy(t.fp, acc->fp, BS_FP_LEN);
        if (acc->pin_dir[0])
                t.pin_dir_fd = open(acc->pin_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int r = bs_conn_open(acc->server, acc->port, 10000, &t, ret, &rep);
        if (t.pin_dir_fd >= 0)
                close(t.pin_dir_fd);
        bs_fp_format(rep.presented, have);
        bs_fp_format(rep.expected, want);
        if (r == -EPERM && rep.outcome == BS_TRUST_UNKNOWN) {
                fprintf(stderr, "backupsync: the server at %s port %s presented the key %s; nothing was sent. "
                                "Check it with the server's administrator (backupsyncd --fingerprint) and pass "
                                "--server-fingerprint %s (or --ca-file for a certificate from a CA)\n",
                        acc->server, acc->port, have, have);
                return EX_NOPERM;
        }
        if (r == -EPERM) {
                fprintf(stderr, "backupsync: the server at %s port %s presented the key %s, but %s was expected "
                                "(%s); nothing was sent. If the server's key was changed on purpose, pass "
                                "--server-fingerprint %s%s%s%s\n",
                        acc->server, acc->port, have, want,
                        acc->have_fp ? "given by server-fingerprint" : "pinned by the agent", have,
                        acc->have_fp ? "" : ", or delete ", acc->have_fp ? "" : acc->pin_dir,
                        acc->have_fp ? "" : "/" BS_PIN_FILE);
                return EX_NOPERM;
        }
        if (r == -EPROTO) {
                fprintf(stderr, "backupsync: TLS with %s port %s failed: %s\n", acc->server, acc->port, rep.reason);
                return acc->ca && strncmp(rep.reason, "certificate verify failed", 25) == 0 ? EX_NOPERM
                       : rep.server_said ? cli_exit_for_error(rep.code)
                                         : EX_UNAVAILABLE;
        }
        if (r == -EBADMSG) {
                fprintf(stderr, "backupsync: %s/" BS_PIN_FILE " is damaged\n", acc->pin_dir);
                return EX_DATAERR;
        }
        if (r < 0) {
                fprintf(stderr, "backupsync: cannot reach %s port %s: %s\n", acc->server, acc->port,
                        rep.reason[0] ? rep.reason : strerror(-r));
                return EX_UNAVAILABLE;
        }
        if (rep.outcome == BS_TRUST_NEW_PIN)
                fprintf(stderr, "backupsync: first contact with %s port %s: its key %s is now pinned in %s/"
                                BS_PIN_FILE "\n", acc->server, acc->port, have, acc->pin_dir);
        return EX_OK;
}

int cli_exit_for_error(uint16_t code) {
        switch (code) {
        case BS_ERR_AUTH:
                return EX_NOPERM;
        case BS_ERR_NOT_FOUND:
        case BS_ERR_BAD_PATH:
                return EX_DATAERR;
        case BS_ERR_BUSY:
        case BS_ERR_RATE_LIMITED:
        case BS_ERR_TIMEOUT:
        case BS_ERR_NO_SPACE:
                return EX_TEMPFAIL;
        case BS_ERR_IO:
                return EX_IOERR;
        default:
                return EX_PROTOCOL;
        }
}

int cli_connect(const CliAccount *acc, BsConn **ret) {
        _cleanup_(bs_conn_freep) BsConn *c = NULL;
        static BsMsg m;
        int r = open_checked(acc, &c);
        if (r != EX_OK)
                return r;
        bs_msg_init(&m, BS_MSG_HELLO, 0);
        m.min_version = BS_PROTO_HISTORY_VERSION;
        m.version = BS_PROTO_VERSION;
        m.max_frame = BS_FRAME_MAX_DEFAULT;
        m.path_len = strlen(acc->token);
        memcpy(m.path, acc->token, m.path_len + 1);
        m.path2_len = strlen("backupsync");
        memcpy(m.path2, "backupsync", m.path2_len + 1);
        r = bs_conn_send(c, &m);
        if (r >= 0)
                r = bs_conn_recv(c, &m, CLI_TIMEOUT_MS);
        if (r < 0) {
                fprintf(stderr, "backupsync: %s port %s: %s\n", acc->server, acc->port, strerror(-r));
                return EX_UNAVAILABLE;
        }
        if (m.type == BS_MSG_ERROR) {
                fprintf(stderr, "backupsync: the server refused: %s (%s)%s\n", m.path, bs_err_name(m.code),
                        m.code == BS_ERR_VERSION ? "; the server is older than this command" : "");
                return cli_exit_for_error(m.code);
        }
        if (m.type != BS_MSG_WELCOME || m.version < BS_PROTO_HISTORY_VERSION) {
                fprintf(stderr, "backupsync: the server answered %s, not WELCOME\n", bs_msg_type_name(m.type));
                return EX_PROTOCOL;
        }
        c->peer_max_frame = m.max_frame;
        c->version = m.version;
        *ret = TAKE_PTR(c);
        return EX_OK;
}

int cli_history(BsConn *c, BsHistWhat what, const char *path, uint64_t seq, int64_t time, uint32_t limit,
                cli_row_fn fn, void *userdata, uint64_t *ret_seq) {
        static BsMsg m;
        static BsHistRow row;
        int r;

        bs_msg_init(&m, BS_MSG_HISTORY, 1);
        m.flags = (uint8_t) what;
        m.seq = seq;
        m.time = time;
        m.count = limit;
        m.path_len = strlen(path);
        if (m.path_len > BS_PATH_MAX) {
                fprintf(stderr, "backupsync: path too long\n");
                return EX_USAGE;
        }
        memcpy(m.path, path, m.path_len + 1);
        r = bs_conn_send(c, &m);
        for (;;) {
                if (r >= 0)
                        r = bs_conn_recv(c, &m, CLI_TIMEOUT_MS);
                if (r < 0) {
                        fprintf(stderr, "backupsync: connection to the server: %s\n", strerror(-r));
                        return EX_UNAVAILABLE;
                }
                if (m.type == BS_MSG_ERROR) {
                        fprintf(stderr, "backupsync: the server refused: %s (%s)\n", m.path, bs_err_name(m.code));
                        return cli_exit_for_error(m.code);
                }
                if (m.type != BS_MSG_HISTORY_ROWS || m.req != 1) {
                        fprintf(stderr, "backupsync: the server answered %s\n", bs_msg_type_name(m.type));
                        return EX_PROTOCOL;
                }
                if (ret_seq)
                        *ret_seq = m.seq;
                BsReader rd;
                bs_reader_init(&rd, m.data, m.data_len);
                for (uint32_t i = 0; i < m.count; i++) {
                        if (bs_hist_row_decode(&rd, &row) < 0) {
                                fprintf(stderr, "backupsync: the server sent a malformed row\n");
                                return EX_PROTOCOL;
                        }
                        int k = fn(userdata, &row);
                        if (k != EX_OK)
                                return k;
                }
                if (!(m.flags & BS_CHANGES_MORE))
                        return EX_OK;
        }
}
