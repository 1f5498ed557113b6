/* main.c - backupsync-agent: back up a directory and keep it in sync */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include "agent-loop.h"
#include "agent.h"
#include "bs-config.h"
#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-parse.h"
#include "bs-tls.h"

#define DEFAULT_CONFIG BS_SYSCONFDIR "/backupsync.ini"
/* Descriptors the table holds from the start: a download batch keeps up
 * to 4,096 files open until its sync (agent-pull.c), besides the rest. */
#define AGENT_FDS_WANT 8192

static void help(void) {
        printf("Usage: backupsync-agent [OPTIONS] SERVER PORT DIR [ID]\n"
               "       backupsync-agent [OPTIONS] --instance NAME\n"
               "\n"
               "Back up DIR to the backupsync server at SERVER:PORT and keep it in sync\n"
               "with the account's other computers. Without ID a new account is created\n"
               "and its token printed as 'ID: <TOKEN>'; with ID (the token printed by the\n"
               "first computer) DIR is created if needed and the account's files downloaded.\n"
               "\n"
               "With --instance, SERVER, PORT, DIR and ID come from the [agent:NAME]\n"
               "section of the configuration: the system file, then the user's\n"
               "$XDG_CONFIG_HOME/backupsync.ini (else ~/.config/backupsync.ini), whose\n"
               "keys override it. SIGHUP re-reads it and applies poll-interval,\n"
               "verify-interval and device-name.\n"
               "\n"
               "Options:\n"
               "  --instance NAME        read [agent:NAME] from the configuration\n"
               "  --config FILE          system configuration file\n"
               "                         (default " DEFAULT_CONFIG ")\n"
               "  --state-dir DIR        where the agent keeps its state (default\n"
               "                         $XDG_STATE_HOME/backupsync/<DIR path>; with\n"
               "                         --instance $STATE_DIRECTORY, else\n"
               "                         $XDG_STATE_HOME/backupsync/NAME)\n"
               "  --poll-interval TIME   how often to ask for other computers' changes\n"
               "                         (default 5s; units ms, s, m, h, d)\n"
               "  --verify-interval TIME how often to compare the whole tree with what was\n"
               "                         synced, for changes no event reported (default 1h;\n"
               "                         0: never)\n"
               "  --device-name NAME     name used in conflict copies (default: host name)\n"
               "  --server-fingerprint SHA256:HEX\n"
               "                         the server's key, as backupsyncd --fingerprint\n"
               "                         prints it (default: pinned at first contact)\n"
               "  --ca-file FILE|system  verify the server's certificate with these CAs and\n"
               "                         its name, instead of pinning its key\n"
               "  --tls yes|no           no: clear text, for a server with tls = no\n"
               "  --ignore PATTERN       do not sync what PATTERN names on this computer\n"
               "                         (repeatable; see docs/ignore.md)\n"
               "  --default-ignores yes|no\n"
               "                         the shipped ignores of editors' and OS litter\n"
               "                         (default yes)\n"
               "  --max-delete LIMIT     hold a round's deletions past LIMIT until\n"
               "                         backupsync confirm-deletes: files, a share of the\n"
               "                         tree, both, or no (default '100 50%%')\n"
               "  --once                 sync once and exit: 0 when in sync\n"
               "  -h, --help             show this help\n"
               "  --version              show the version\n"
               "\n"
               "See backupsync-agent(1).\n");
}

/* Fill cfg from [agent:NAME]; options given on the command line win. */
static int load_instance(AgentConfig *cfg, BsAgentConfig *ini) {
        BsConfigError err;
        char *user = NULL, msg[PATH_MAX + 1024];

        int r = bs_config_user_file(&user);
        if (r < 0 && r != -ENOENT) {
                log_error("out of memory");
                return EX_SOFTWARE;
        }
        cfg->user_config_file = user; /* kept for SIGHUP */
        bs_agent_config_init(ini);
        r = bs_config_load_agent(cfg->config_file, cfg->config_must_exist, user, cfg->instance, ini, &err);
        if (r == -ENOMEM) {
                log_error("out of memory");
                return EX_SOFTWARE;
        }
        if (r < 0) {
                bs_config_error_format(&err, msg, sizeof(msg));
                log_error("%s", msg);
                return EX_CONFIG;
        }
        cfg->server = ini->server;
        if (asprintf(&cfg->port, "%u", ini->port) < 0 || !(cfg->dir = strdup(ini->path))) {
                log_error("out of memory");
                return EX_SOFTWARE;
        }
        cfg->id = ini->id;
        cfg->ignore = ini->ignore;
        cfg->n_ignore = ini->n_ignore;
        cfg->no_default_ignores = !ini->default_ignores;
        if (!cfg->max_delete_pinned)
                cfg->max_delete = ini->max_delete;
        if (!cfg->poll_pinned)
                cfg->poll_usec = ini->poll_usec;
        if (!cfg->verify_pinned)
                cfg->verify_usec = ini->verify_usec;
        if (!cfg->device_name_pinned)
                cfg->device_name = ini->device_name;
        if (!cfg->tls_pinned)
                cfg->tls = ini->tls;
        if (!cfg->server_fingerprint)
                cfg->server_fingerprint = ini->server_fingerprint;
        if (!cfg->ca_file)
                cfg->ca_file = ini->ca_file;
        return 0;
}

/* The exit status for why the agent stopped (sysexits.h, so systemctl
 * status names the cause; backupsync-agent(1) lists them). */
static int exit_status(AgentStop stop) {
        switch (stop) {
        case AGENT_STOP_NONE: return 0;
        case AGENT_STOP_USAGE: return EX_USAGE;
        case AGENT_STOP_TREE_GONE: return EX_DATAERR;
        case AGENT_STOP_NO_DIR: return EX_NOINPUT;
        case AGENT_STOP_UNREACHABLE: return EX_UNAVAILABLE;
        case AGENT_STOP_SOFTWARE: return EX_SOFTWARE;
        case AGENT_STOP_STATE: return EX_CANTCREAT;
        case AGENT_STOP_IN_USE: return EX_TEMPFAIL;
        case AGENT_STOP_NOT_IN_SYNC: return EX_TEMPFAIL;
        case AGENT_STOP_VERSION: return EX_PROTOCOL;
        case AGENT_STOP_AUTH: return EX_NOPERM;
        case AGENT_STOP_IDENTITY: return EX_NOPERM;
        }
        return EX_SOFTWARE;
}

int main(int argc, char **argv) {
        enum { ARG_STATE_DIR = 0x100, ARG_POLL, ARG_VERIFY, ARG_ONCE, ARG_VERSION, ARG_DEVICE, ARG_INSTANCE,
               ARG_CONFIG, ARG_FINGERPRINT, ARG_CA_FILE, ARG_TLS, ARG_IGNORE, ARG_DEFAULT_IGNORES,
               ARG_MAX_DELETE };
        static const struct option options[] = {
                { "instance", required_argument, NULL, ARG_INSTANCE },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "poll-interval", required_argument, NULL, ARG_POLL },
                { "verify-interval", required_argument, NULL, ARG_VERIFY },
                { "device-name", required_argument, NULL, ARG_DEVICE },
                { "once", no_argument, NULL, ARG_ONCE },
                { "server-fingerprint", required_argument, NULL, ARG_FINGERPRINT },
                { "ca-file", required_argument, NULL, ARG_CA_FILE },
                { "tls", required_argument, NULL, ARG_TLS },
                { "ignore", required_argument, NULL, ARG_IGNORE },
                { "default-ignores", required_argument, NULL, ARG_DEFAULT_IGNORES },
                { "max-delete", required_argument, NULL, ARG_MAX_DELETE },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        AgentConfig cfg = { .poll_usec = BS_CONFIG_DEFAULT_POLL_USEC, .verify_usec = BS_CONFIG_DEFAULT_VERIFY_USEC,
                            .coalesce_usec = 20000ULL, .tls = true, .max_delete = BS_DELETE_LIMIT_DEFAULT };
        uint8_t fp[BS_FP_LEN];
        char fp_text[BS_FP_TEXT_MAX];
        /* Owns the strings cfg points to under --instance, until exit. */
        _cleanup_(bs_agent_config_done) BsAgentConfig ini;
        /* What main() allocated for cfg (the rest points into argv or ini). */
        _cleanup_(freep) char *owned_dir = NULL, *owned_port = NULL, *owned_state_dir = NULL, *owned_user_file = NULL;
        Agent *a = NULL;
        /* --ignore PATTERN, repeatable: they replace the configuration's. */
        _cleanup_(freep) char **opt_ignore = NULL;
        size_t n_opt_ignore = 0;
        int opt_defaults = -1; /* --default-ignores: -1 not given */
        int c, r;

        bs_agent_config_init(&ini);
        /* Before SQLite starts: without its allocation counters, every
         * allocation of a statement no longer takes a global mutex (about
         * a hundred per file recorded). */
        (void) sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        bs_log_open("backupsync-agent");
        /* TLS writes with write(), not send(MSG_NOSIGNAL): a server gone
         * away must fail the write, not kill the agent. */
        signal(SIGPIPE, SIG_IGN);
        /* A download burst keeps its files open until their sync (no
         * select() here, so the hard limit is safe to use). */
        (void) bs_fd_prepare(AGENT_FDS_WANT);
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("backupsync-agent %s (protocol %u)\n", BS_VERSION, BS_PROTO_VERSION);
                        return 0;
                case ARG_INSTANCE:
                        if (!bs_config_instance_valid(optarg)) {
                                log_error("--instance: '%s' is not an instance name (A-Z, a-z, 0-9, '_', '.', '@', '-')",
                                          optarg);
                                return EX_USAGE;
                        }
                        cfg.instance = optarg;
                        break;
                case ARG_CONFIG:
                        cfg.config_file = optarg;
                        cfg.config_must_exist = true;
                        break;
                case ARG_STATE_DIR:
                        cfg.state_dir = optarg;
                        break;
                case ARG_POLL:
                        if (bs_parse_duration(optarg, &cfg.poll_usec) < 0 || cfg.poll_usec < BS_CONFIG_MIN_POLL_USEC) {
                                log_error("--poll-interval: '%s' is not a duration of at least 100ms (e.g. 5, 5s, 2m)", optarg);
                                return EX_USAGE;
                        }
                        cfg.poll_pinned = true;
                        break;
                case ARG_VERIFY:
                        if (bs_parse_duration(optarg, &cfg.verify_usec) < 0) {
                                log_error("--verify-interval: '%s' is not a duration (e.g. 1h, 10m; 0 for none)", optarg);
                                return EX_USAGE;
                        }
                        cfg.verify_pinned = true;
                        break;
                case ARG_DEVICE:
                        cfg.device_name = optarg;
                        cfg.device_name_pinned = true;
                        break;
                case ARG_ONCE:
                        cfg.once = true;
                        break;
                case ARG_FINGERPRINT:
                        if (bs_fp_parse(optarg, fp) < 0) {
                                log_error("--server-fingerprint: '%s' is not a fingerprint (SHA256: and 64 hex "
                                          "digits, as backupsyncd --fingerprint prints it)", optarg);
                                return EX_USAGE;
                        }
                        bs_fp_format(fp, fp_text);
                        cfg.server_fingerprint = fp_text;
                        break;
                case ARG_CA_FILE:
                        cfg.ca_file = strcmp(optarg, "system") == 0 ? "" : optarg;
                        break;
                case ARG_TLS:
                        if (bs_parse_bool(optarg, &cfg.tls) < 0) {
                                log_error("--tls takes yes or no, not %s", optarg);
                                return EX_USAGE;
                        }
                        cfg.tls_pinned = true;
                        break;
                case ARG_MAX_DELETE:
                        if (bs_parse_delete_limit(optarg, &cfg.max_delete) < 0) {
                                log_error("--max-delete takes a number of files, a share of the tree (50%%), "
                                          "both ('100 50%%') or no, not %s", optarg);
                                return EX_USAGE;
                        }
                        cfg.max_delete_pinned = true;
                        break;
                case ARG_DEFAULT_IGNORES: {
                        bool on;
                        if (bs_parse_bool(optarg, &on) < 0) {
                                log_error("--default-ignores takes yes or no, not %s", optarg);
                                return EX_USAGE;
                        }
                        opt_defaults = on ? 1 : 0;
                        break;
                }
                case ARG_IGNORE: {
                        char **v = realloc(opt_ignore, (n_opt_ignore + 1) * sizeof(*v));
                        if (!v) {
                                log_error("out of memory");
                                return EX_SOFTWARE;
                        }
                        opt_ignore = v;
                        opt_ignore[n_opt_ignore++] = optarg;
                        break;
                }
                default:
                        fprintf(stderr, "Try 'backupsync-agent --help'.\n");
                        return EX_USAGE;
                }
        int n = argc - optind;
        if (cfg.instance) {
                if (n > 0) {
                        log_error("--instance takes SERVER, PORT, DIR and ID from the configuration; "
                                  "unexpected argument '%s'", argv[optind]);
                        return EX_USAGE;
                }
                if (!cfg.config_file)
                        cfg.config_file = DEFAULT_CONFIG;
                r = load_instance(&cfg, &ini);
                owned_dir = cfg.dir;
                owned_port = cfg.port;
                owned_user_file = (char *) cfg.user_config_file;
                if (r)
                        return r;
        } else {
                if (cfg.config_file) {
                        log_error("--config needs --instance NAME to say which [agent:NAME] section to read");
                        return EX_USAGE;
                }
                if (n < 3 || n > 4) {
                        log_error("expected SERVER PORT DIR [ID] or --instance NAME; try --help");
                        return EX_USAGE;
                }
                uint16_t port;
                cfg.server = argv[optind];
                cfg.port = argv[optind + 1];
                if (bs_parse_port(cfg.port, &port) < 0 || port == 0) {
                        log_error("'%s' is not a TCP port (1-65535)", cfg.port);
                        return EX_USAGE;
                }
                const char *dir = argv[optind + 2];
                if (dir[0] == '/')
                        cfg.dir = strdup(dir);
                else {
                        char cwd[PATH_MAX];
                        if (!getcwd(cwd, sizeof(cwd)) || asprintf(&cfg.dir, "%s/%s", cwd, dir) < 0)
                                cfg.dir = NULL;
                }
                owned_dir = cfg.dir;
                if (!cfg.dir) {
                        log_error("cannot resolve %s", dir);
                        return EX_USAGE;
                }
                if (n == 4)
                        cfg.id = argv[optind + 3];
        }
        /* Found out now, not as a failing handshake retried forever. */
        if (cfg.ca_file && cfg.ca_file[0] && access(cfg.ca_file, R_OK) < 0) {
                log_error("ca-file %s: %m", cfg.ca_file);
                return cfg.instance ? EX_CONFIG : EX_USAGE;
        }
        for (size_t k = strlen(cfg.dir); k > 1 && cfg.dir[k - 1] == '/'; k--)
                cfg.dir[k - 1] = 0;
        if (!cfg.state_dir) {
                cfg.state_dir = owned_state_dir =
                        cfg.instance ? bs_state_dir_for_instance(cfg.instance) : bs_state_dir_for_dir(cfg.dir);
                if (!cfg.state_dir) {
                        log_error("no state directory: set HOME or XDG_STATE_HOME, or pass --state-dir");
                        return EX_USAGE;
                }
                (void) bs_mkdir_p(cfg.state_dir, 0700);
        }

        if (n_opt_ignore > 0) {
                cfg.ignore = opt_ignore;
                cfg.n_ignore = n_opt_ignore;
                cfg.ignore_pinned = true;
        }
        if (opt_defaults >= 0) {
                cfg.no_default_ignores = !opt_defaults;
                cfg.ignore_pinned = true;
        }
        if (agent_new(&cfg, &a) < 0) {
                log_error("out of memory");
                return EX_SOFTWARE;
        }
        AgentStop stop = agent_run(a);
        agent_status_stopped(a);
        agent_free(a);
        return exit_status(stop);
}
