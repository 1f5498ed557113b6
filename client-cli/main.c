/* main.c - backupsync: the user's command for status, history and restore
 *
 * One subcommand per file (cli-*.c); main() parses the command line and
 * turns the outcome into an exit status from sysexits.h.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "bs-config.h"
#include "bs-macro.h"
#include "bs-parse.h"
#include "bs-path.h"
#include "cli-account.h"
#include "cli-confirm.h"
#include "cli-history.h"
#include "cli-restore.h"
#include "cli-status.h"

static void usage(FILE *f) {
        fprintf(f, "usage: backupsync status [--json] [ACCOUNT]...\n"
                   "       backupsync log [PATH] [--since TIME] [-n N] [--json] [ACCOUNT]\n"
                   "       backupsync versions PATH [--json] [ACCOUNT]\n"
                   "       backupsync deleted [DIR] [--json] [ACCOUNT]\n"
                   "       backupsync ls [PATH] [--at TIME] [--json] [ACCOUNT]\n"
                   "       backupsync restore PATH... [--at TIME | --version N] [--to DIR] [ACCOUNT]\n"
                   "       backupsync confirm-deletes [--instance NAME | --state-dir DIR]\n"
                   "\n"
                   "  status               how each agent of this user stands: in sync, syncing,\n"
                   "                       offline, paused or in error, last sync, pending changes\n"
                   "  log                  the account's changes, newest first\n"
                   "  versions             every kept version of a file, newest first\n"
                   "  deleted              what was deleted under DIR and is still kept\n"
                   "  ls                   the tree as it is, or was at TIME\n"
                   "  restore              bring files or trees back as they were (default: the\n"
                   "                       content before the current one, or before deletion)\n"                   "  confirm-deletes      let go the deletions an agent holds because they were\n"
                   "                       more than its max-delete\n"
                   "\n"
                   "ACCOUNT: --instance NAME (the agent of backupsync-agent@NAME), --state-dir DIR\n"
                   "(an agent run by hand), or --server HOST [--port PORT] --token TOKEN (or\n"
                   "BACKUPSYNC_TOKEN in the environment). Default: this user's only agent; for\n"
                   "status, every [agent:NAME] configured (--config FILE: the system file) and\n"
                   "every agent that has run.\n"
                   "SERVER CHECK: as the agent does (its pinned key, or server-fingerprint and\n"
                   "ca-file of its section); --server-fingerprint SHA256:HEX, --ca-file FILE|system\n"
                   "and --tls no override that. With --server the key must be given.\n"
                   "PATH: relative to the top of the synced directory, or an absolute path in it.\n"
                   "TIME: 2026-11-30T14:05:00Z, '2026-11-30 14:05' (local), @EPOCH, -2h, -3d.\n"
                   "See backupsync(1).\n");
}

typedef struct Options {
        bool json;
        char **state_dirs;
        size_t n_state_dirs;
        const char *instance; /* the last --instance, for its [agent:NAME] section */
        const char *server, *port, *token, *to;
        const char *config; /* the system file */
        time_t since;
        uint32_t limit;
        CliRestoreWhen when;
        CliTrustOptions trust;
        char fp_text[BS_FP_TEXT_MAX];
} Options;

/* An account path from what the user typed: see usage(). "" is the top. */
static int account_path(const CliAccount *acc, const char *arg, char *out) {
        const char *p = arg;
        size_t dl = strlen(acc->dir);
        if (arg[0] == '/' && dl > 0) {
                while (dl > 1 && acc->dir[dl - 1] == '/')
                        dl--;
                if (strncmp(arg, acc->dir, dl) == 0 && (arg[dl] == '/' || arg[dl] == 0))
                        p = arg + dl;
        }
        while (*p == '/')
                p++;
        size_t n = strlen(p);
        while (n > 0 && p[n - 1] == '/')
                n--;
        if (n > BS_PATH_MAX || (n > 0 && bs_path_check(p, n) < 0)) {
                fprintf(stderr, "backupsync: '%s' is not a path in the account%s\n", arg,
                        arg[0] == '/' && acc->dir[0] ? " (nor in the synced directory)" : "");
                return EX_USAGE;
        }
        memcpy(out, p, n);
        out[n] = 0;
        return EX_OK;
}

static int parse_time_opt(const char *opt, const char *arg, time_t *ret) {
        if (bs_parse_time(arg, time(NULL), ret) < 0) {
                fprintf(stderr, "backupsync: %s: '%s' is not a time (2026-11-30T14:05:00Z, '2026-11-30 14:05', "
                                "@EPOCH, -2h, -3d)\n", opt, arg);
                return EX_USAGE;
        }
        return EX_OK;
}

static int parse_count(const char *opt, const char *arg, uint64_t max, uint64_t *ret) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 10);
        if (errno || *end || arg[0] < '0' || arg[0] > '9' || v == 0 || v > max) {
                fprintf(stderr, "backupsync: %s: '%s' is not a number from 1 to %" PRIu64 "\n", opt, arg, max);
                return EX_USAGE;
        }
        *ret = v;
        return EX_OK;
}

/* The subcommands that talk to the server. */
static int run_remote(const char *cmd, char **args, size_t n_args, const Options *o) {
        static char paths_buf[64][BS_PATH_MAX + 1];
        char *paths[64];
        CliAccount acc;
        int r;

        if (o->n_state_dirs > 1) {
                fprintf(stderr, "backupsync: %s reads one account; give one --instance or --state-dir\n", cmd);
                return EX_USAGE;
        }
        if (!strcmp(cmd, "log") || !strcmp(cmd, "deleted") || !strcmp(cmd, "ls")) {
                if (n_args > 1) {
                        fprintf(stderr, "backupsync: %s takes at most one path\n", cmd);
                        return EX_USAGE;
                }
        } else if (!strcmp(cmd, "versions")) {
                if (n_args != 1) {
                        fprintf(stderr, "backupsync: versions takes one path\n");
                        return EX_USAGE;
                }
        } else if (n_args == 0 || n_args > ELEMENTSOF(paths)) {
                fprintf(stderr, "backupsync: restore takes 1 to %zu paths\n", ELEMENTSOF(paths));
                return EX_USAGE;
        }
        if (o->when.at && o->when.version) {
                fprintf(stderr, "backupsync: --at and --version exclude each other\n");
                return EX_USAGE;
        }
        r = cli_account_resolve(o->n_state_dirs ? o->state_dirs[0] : NULL, o->server, o->port, o->token, &acc);
        /* An instance whose agent has not reached its server yet: its section says where and who. */
        if (r == EX_NOINPUT && o->instance) {
                fprintf(stderr, "backupsync: reading [agent:%s] from the configuration instead\n", o->instance);
                r = cli_account_from_config(o->config ?: BS_SYSCONFDIR "/backupsync.ini", o->instance, &acc);
        }
        if (r != EX_OK)
                return r;
        cli_account_trust(&acc, o->config ?: BS_SYSCONFDIR "/backupsync.ini", o->instance, &o->trust);
        for (size_t i = 0; i < n_args; i++) {
                r = account_path(&acc, args[i], paths_buf[i]);
                if (r != EX_OK)
                        return r;
                paths[i] = paths_buf[i];
        }
        if (!strcmp(cmd, "log"))
                return cli_log(&acc, n_args ? paths[0] : "", o->since, o->limit, o->json);
        if (!strcmp(cmd, "versions")) {
                if (!paths[0][0]) {
                        fprintf(stderr, "backupsync: versions needs the path of a file\n");
                        return EX_USAGE;
                }
                return cli_versions(&acc, paths[0], o->json);
        }
        if (!strcmp(cmd, "deleted"))
                return cli_deleted(&acc, n_args ? paths[0] : "", o->json);
        if (!strcmp(cmd, "ls"))
                return cli_ls(&acc, n_args ? paths[0] : "", o->when.at, o->json);
        return cli_restore(&acc, paths, n_args, &o->when, o->to);
}

int main(int argc, char **argv) {
        enum { ARG_CONFIG = 0xff, ARG_JSON = 0x100, ARG_INSTANCE, ARG_STATE_DIR, ARG_SERVER, ARG_PORT, ARG_TOKEN, ARG_SINCE,
               ARG_AT, ARG_VERSION_N, ARG_TO, ARG_HELP, ARG_FINGERPRINT, ARG_CA_FILE, ARG_TLS };
        static const struct option options[] = {
                { "json", no_argument, NULL, ARG_JSON },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "instance", required_argument, NULL, ARG_INSTANCE },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "server", required_argument, NULL, ARG_SERVER },
                { "port", required_argument, NULL, ARG_PORT },
                { "token", required_argument, NULL, ARG_TOKEN },
                { "server-fingerprint", required_argument, NULL, ARG_FINGERPRINT },
                { "ca-file", required_argument, NULL, ARG_CA_FILE },
                { "tls", required_argument, NULL, ARG_TLS },
                { "since", required_argument, NULL, ARG_SINCE },
                { "at", required_argument, NULL, ARG_AT },
                { "version", required_argument, NULL, ARG_VERSION_N },
                { "to", required_argument, NULL, ARG_TO },
                { "help", no_argument, NULL, ARG_HELP },
                {},
        };
        Options o = { .trust.tls = -1 };
        uint64_t v;
        uint16_t port;
        int c, ret = EX_OK;

        /* Alone, --version is the program's; with a number, restore's. */
        if (argc == 2 && strcmp(argv[1], "--version") == 0) {
                puts("backupsync " BS_VERSION);
                return EX_OK;
        }
        /* A server gone away must fail TLS's write(), not kill the command. */
        signal(SIGPIPE, SIG_IGN);
        o.state_dirs = calloc((size_t) argc, sizeof(*o.state_dirs));
        if (!o.state_dirs)
                return EX_OSERR;
        while ((c = getopt_long(argc, argv, "n:", options, NULL)) >= 0) {
                switch (c) {
                case ARG_JSON:
                        o.json = true;
                        break;
                case ARG_CONFIG:
                        o.config = optarg;
                        break;
                case ARG_INSTANCE:
                        if (!bs_config_instance_valid(optarg)) {
                                fprintf(stderr, "backupsync: --instance: '%s' is not an instance name "
                                                "(A-Z, a-z, 0-9, '_', '.', '@', '-')\n", optarg);
                                ret = EX_USAGE;
                                goto out;
                        }
                        o.instance = optarg;
                        if (!(o.state_dirs[o.n_state_dirs++] = bs_state_dir_for_instance(optarg))) {
                                fprintf(stderr, "backupsync: neither XDG_STATE_HOME nor HOME is set; use --state-dir\n");
                                ret = EX_USAGE;
                                goto out;
                        }
                        break;
                case ARG_STATE_DIR:
                        o.instance = NULL;
                        if (!(o.state_dirs[o.n_state_dirs++] = strdup(optarg))) {
                                ret = EX_OSERR;
                                goto out;
                        }
                        break;
                case ARG_SERVER:
                        o.server = optarg;
                        break;
                case ARG_PORT:
                        if (bs_parse_port(optarg, &port) < 0 || port == 0) {
                                fprintf(stderr, "backupsync: --port: '%s' is not a port (1-65535)\n", optarg);
                                ret = EX_USAGE;
                                goto out;
                        }
                        o.port = optarg;
                        break;
                case ARG_TOKEN:
                        o.token = optarg;
                        break;
                case ARG_TO:
                        o.to = optarg;
                        break;
                case ARG_FINGERPRINT: {
                        uint8_t fp[BS_FP_LEN];
                        if (bs_fp_parse(optarg, fp) < 0) {
                                fprintf(stderr, "backupsync: --server-fingerprint: '%s' is not a fingerprint "
                                                "(SHA256: and 64 hex digits)\n", optarg);
                                ret = EX_USAGE;
                                goto out;
                        }
                        bs_fp_format(fp, o.fp_text);
                        o.trust.fingerprint = o.fp_text;
                        break;
                }
                case ARG_CA_FILE:
                        o.trust.ca_file = strcmp(optarg, "system") == 0 ? "" : optarg;
                        break;
                case ARG_TLS: {
                        bool b;
                        if (bs_parse_bool(optarg, &b) < 0) {
                                fprintf(stderr, "backupsync: --tls takes yes or no, not %s\n", optarg);
                                ret = EX_USAGE;
                                goto out;
                        }
                        o.trust.tls = b;
                        break;
                }
                case ARG_SINCE:
                        ret = parse_time_opt("--since", optarg, &o.since);
                        break;
                case ARG_AT:
                        ret = parse_time_opt("--at", optarg, &o.when.at);
                        break;
                case 'n':
                        ret = parse_count("-n", optarg, UINT32_MAX, &v);
                        o.limit = (uint32_t) v;
                        break;
                case ARG_VERSION_N:
                        ret = parse_count("--version", optarg, INT64_MAX, &o.when.version);
                        break;
                case ARG_HELP:
                        usage(stdout);
                        goto out;
                default:
                        ret = EX_USAGE;
                        goto out;
                }
                if (ret != EX_OK)
                        goto out;
        }
        if ((o.port || o.token) && !o.server) {
                fprintf(stderr, "backupsync: --port and --token go with --server\n");
                ret = EX_USAGE;
                goto out;
        }
        if (optind >= argc) {
                usage(stderr);
                ret = EX_USAGE;
                goto out;
        }
        const char *cmd = argv[optind];
        char **args = argv + optind + 1;
        size_t n_args = (size_t) (argc - optind - 1);
        if (strcmp(cmd, "status") == 0) {
                if (n_args) {
                        fprintf(stderr, "backupsync: status takes no arguments but options; try --help\n");
                        ret = EX_USAGE;
                } else if (o.server) {
                        fprintf(stderr, "backupsync: status reads the agents of this computer, not --server\n");
                        ret = EX_USAGE;
                } else
                        ret = cli_status(o.state_dirs, o.n_state_dirs, o.config ?: BS_SYSCONFDIR "/backupsync.ini",
                                         o.json);
        } else if (strcmp(cmd, "confirm-deletes") == 0) {
                if (n_args || o.server) {
                        fprintf(stderr, "backupsync: confirm-deletes takes --instance NAME or --state-dir DIR, "
                                        "nothing else\n");
                        ret = EX_USAGE;
                } else
                        ret = cli_confirm_deletes(o.state_dirs, o.n_state_dirs);
        } else if (!strcmp(cmd, "log") || !strcmp(cmd, "versions") || !strcmp(cmd, "deleted") ||
                   !strcmp(cmd, "restore") || !strcmp(cmd, "ls")) {
                if (o.when.at && strcmp(cmd, "restore") != 0 && strcmp(cmd, "ls") != 0) {
                        fprintf(stderr, "backupsync: --at goes with restore and ls\n");
                        ret = EX_USAGE;
                } else if ((o.when.version || o.to) && strcmp(cmd, "restore") != 0) {
                        fprintf(stderr, "backupsync: --version N and --to go with restore\n");
                        ret = EX_USAGE;
                } else if (o.since && strcmp(cmd, "log") != 0) {
                        fprintf(stderr, "backupsync: --since goes with log\n");
                        ret = EX_USAGE;
                } else
                        ret = run_remote(cmd, args, n_args, &o);
        } else {
                fprintf(stderr, "backupsync: unknown command '%s'; try --help\n", cmd);
                ret = EX_USAGE;
        }
out:
        for (size_t i = 0; i < o.n_state_dirs; i++)
                free(o.state_dirs[i]);
        free(o.state_dirs);
        return ret;
}
