/* main.c - backupsyncd: arguments, storage, listening socket, event loop */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <sysexits.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "account.h"
#include "bs-clock.h"
#include "bs-config.h"
#include "bs-token.h"
#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-parse.h"
#include "cluster.h"
#include "local.h"
#include "offline.h"
#include "server.h"
#include "server-tls.h"

#define DEFAULT_CONFIG BS_SYSCONFDIR "/backupsync.ini"
/* Descriptors the table holds from the start: a commit keeps up to 4,096
 * uploads open (local-internal.h), besides the connections' sockets. */
#define SERVER_FDS_WANT 8192

/* The command line; what it sets wins over the configuration file. */
typedef struct Args {
        const char *config; /* NULL: DEFAULT_CONFIG, which may be missing */
        const char *storage;
        const char *listen;
        uint16_t port;
        uint64_t idle_timeout_usec;
        unsigned max_connections;
        bool require_key;
        bool port_set, idle_timeout_set, max_connections_set, require_key_set;
        bool verify;
        bool no_hash;    /* --verify compares sizes, not contents */
        bool migrate;
        bool prune;
        bool fingerprint;
} Args;

/* What main() and the SIGHUP handler share. */
typedef struct Context {
        Args args;
        BsServerConfig cfg;  /* in effect: defaults < file < command line */
        bool socket_activated; /* port and listen come from systemd */
        bool storage_from_config;
} Context;

static void help(void) {
        printf("Usage: backupsyncd [PORT] [OPTIONS]\n"
               "\n"
               "Backup and sync server: keeps each account's tree, its history and\n"
               "change log, and serves the backupsync agents.\n"
               "\n"
               "  PORT                     TCP port (default 7373; 0 picks a free one)\n"
               "  --config FILE            configuration file, [server] section\n"
               "                           (default " DEFAULT_CONFIG ")\n"
               "  --storage DIR            storage directory (default $STATE_DIRECTORY,\n"
               "                           else storage= from the config, else\n"
               "                           ./backupsync-data)\n"
               "  --listen ADDR            IPv4 or IPv6 address to listen on (default ::,\n"
               "                           which also serves IPv4)\n"
               "  --idle-timeout TIME      close connections idle this long (default 120s,\n"
               "                           0: never; units ms, s, m, h, d)\n"
               "  --max-connections N      connection cap (default 1024)\n"
               "  --require-key yes|no     joining needs the full token ID-KEY (default yes)\n"
               "  --verify                 check that every account's tree agrees with its\n"
               "                           metadata (hashing every file), print each\n"
               "                           difference and exit: 0 all agree, 1 not; on the\n"
               "                           cluster: every content named is in the store\n"
               "  --no-hash                with --verify: compare sizes (and mtimes), not\n"
               "                           contents\n"
               "  --migrate                copy the accounts of the storage directory (its\n"
               "                           server stopped) into the cluster backend of the\n"
               "                           configuration (metadata, content), then exit\n"
               "  --prune                  prune every account once as the retention settings\n"
               "                           say (keep-versions, keep-all, ...), report what\n"
               "                           was freed and exit; the server must be stopped\n"
               "  --fingerprint            print the fingerprint of the server's TLS key\n"
               "                           (SHA256:...) for agents to check, and exit\n"
               "  -h --help                show this help\n"
               "  --version                show the version\n"
               "\n"
               "Options override the configuration file. SIGHUP re-reads the file and\n"
               "applies idle-timeout, max-connections, require-key, the retention\n"
               "settings and tls, tls-cert and tls-key. With a socket\n"
               "passed by systemd (socket activation), PORT and --listen are ignored.\n");
}

static int parse_args(int argc, char **argv, Args *a) {
        enum { ARG_STORAGE = 0x100, ARG_LISTEN, ARG_CONFIG, ARG_IDLE, ARG_MAXCONN, ARG_KEY, ARG_VERSION, ARG_VERIFY,
               ARG_PRUNE, ARG_FINGERPRINT, ARG_NO_HASH, ARG_MIGRATE };
        static const struct option options[] = {
                { "storage", required_argument, NULL, ARG_STORAGE },
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "idle-timeout", required_argument, NULL, ARG_IDLE },
                { "max-connections", required_argument, NULL, ARG_MAXCONN },
                { "require-key", required_argument, NULL, ARG_KEY },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "verify", no_argument, NULL, ARG_VERIFY },
                { "no-hash", no_argument, NULL, ARG_NO_HASH },
                { "migrate", no_argument, NULL, ARG_MIGRATE },
                { "prune", no_argument, NULL, ARG_PRUNE },
                { "fingerprint", no_argument, NULL, ARG_FINGERPRINT },
                {},
        };
        unsigned long long v;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case ARG_STORAGE:
                        a->storage = optarg;
                        break;
                case ARG_LISTEN:
                        a->listen = optarg;
                        break;
                case ARG_CONFIG:
                        a->config = optarg;
                        break;
                case ARG_IDLE:
                        if (bs_parse_duration(optarg, &a->idle_timeout_usec) < 0) {
                                fprintf(stderr, "backupsyncd: --idle-timeout: '%s' is not a duration (e.g. 120, 2m)\n",
                                        optarg);
                                return -EINVAL;
                        }
                        a->idle_timeout_set = true;
                        break;
                case ARG_MAXCONN:
                        errno = 0;
                        v = optarg[0] >= '0' && optarg[0] <= '9' ? strtoull(optarg, &end, 10) : 0;
                        if (errno || v == 0 || *end || v > BS_CONFIG_MAX_CONNECTIONS) {
                                fprintf(stderr, "backupsyncd: invalid --max-connections: %s\n", optarg);
                                return -EINVAL;
                        }
                        a->max_connections = (unsigned) v;
                        a->max_connections_set = true;
                        break;
                case ARG_KEY:
                        if (bs_parse_bool(optarg, &a->require_key) < 0) {
                                fprintf(stderr, "backupsyncd: --require-key takes yes or no, not %s\n", optarg);
                                return -EINVAL;
                        }
                        a->require_key_set = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("backupsyncd %s\n", BS_VERSION);
                        return 0;
                case ARG_VERIFY:
                        a->verify = true;
                        break;
                case ARG_NO_HASH:
                        a->no_hash = true;
                        break;
                case ARG_MIGRATE:
                        a->migrate = true;
                        break;
                case ARG_PRUNE:
                        a->prune = true;
                        break;
                case ARG_FINGERPRINT:
                        a->fingerprint = true;
                        break;
                default:
                        fprintf(stderr, "Try 'backupsyncd --help'.\n");
                        return -EINVAL;
                }

        if (optind < argc) {
                /* 0 is allowed here (any free port), unlike in the file. */
                if (bs_parse_port(argv[optind], &a->port) < 0) {
                        fprintf(stderr, "backupsyncd: invalid port: %s\n", argv[optind]);
                        return -EINVAL;
                }
                a->port_set = true;
                optind++;
        }
        if (optind < argc) {
                fprintf(stderr, "backupsyncd: unexpected argument: %s\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* Built-in defaults, then the file, then the command line. */
static int load_config(const Args *a, BsServerConfig *cfg, BsConfigError *err) {
        bs_server_config_init(cfg);
        int r = bs_config_load_server(a->config ?: DEFAULT_CONFIG, a->config != NULL, cfg, err);
        if (r < 0)
                return r;
        if (a->port_set)
                cfg->port = a->port;
        if (a->listen) {
                free(cfg->listen);
                cfg->listen = strdup(a->listen);
                if (!cfg->listen)
                        return -ENOMEM;
        }
        if (a->idle_timeout_set)
                cfg->idle_timeout_usec = a->idle_timeout_usec;
        if (a->max_connections_set)
                cfg->max_connections = a->max_connections;
        if (a->require_key_set)
                cfg->require_key = a->require_key;
        return 0;
}

static bool streq_null(const char *a, const char *b) {
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void log_limits(const char *what, const BsServerConfig *cfg) {
        log_info("%s: idle timeout %llu ms, at most %u connections, require-key %s; versions kept %llu s "
                 "(all for %llu s, hourly for %llu s, daily for %llu s, then weekly), history cap %llu bytes",
                 what, (unsigned long long) (cfg->idle_timeout_usec / 1000), cfg->max_connections,
                 cfg->require_key ? "yes" : "no", (unsigned long long) (cfg->keep_versions_usec / USEC_PER_SEC),
                 (unsigned long long) (cfg->keep_all_usec / USEC_PER_SEC),
                 (unsigned long long) (cfg->keep_hourly_usec / USEC_PER_SEC),
                 (unsigned long long) (cfg->keep_daily_usec / USEC_PER_SEC),
                 (unsigned long long) cfg->history_max_bytes);
}

static AccountRetention retention_of(const BsServerConfig *cfg) {
        return (AccountRetention) {
                .keep_versions = cfg->keep_versions_usec / USEC_PER_SEC,
                .keep_all = cfg->keep_all_usec / USEC_PER_SEC,
                .keep_hourly = cfg->keep_hourly_usec / USEC_PER_SEC,
                .keep_daily = cfg->keep_daily_usec / USEC_PER_SEC,
                .max_bytes = cfg->history_max_bytes,
        };
}

/*
 * The TLS context cfg asks for: the administrator's certificate, else the
 * server's own key below storage (created at the first start when create).
 * *ret is NULL with tls = no. Logs why on failure.
 */
static int tls_load(const BsServerConfig *cfg, const char *storage, bool create, SSL_CTX **ret,
                    uint8_t fp[BS_FP_LEN]) {
        char own[PATH_MAX], e[160];
        const char *cert = cfg->tls_cert, *key = cfg->tls_key;

        *ret = NULL;
        if (!cfg->tls)
                return 0;
        if (!cert) {
                int r = create ? server_tls_own(storage, own) : 0;
                if (r < 0) {
                        errno = -r;
                        log_error("cannot create the server's TLS key in %s: %m", storage);
                        return r;
                }
                if (!create && snprintf(own, sizeof(own), "%s/" SERVER_TLS_OWN, storage) >= (int) sizeof(own))
                        return -ENAMETOOLONG;
                if (!create && access(own, F_OK) < 0) {
                        log_error("%s does not exist yet: the server creates its key when it first starts "
                                  "(systemctl start backupsyncd)", own);
                        return -ENOENT;
                }
                if (r > 0)
                        log_info("created the server's TLS key and certificate in %s", own);
                cert = key = own;
        }
        int r = server_tls_load(cert, key, ret, fp);
        if (r < 0)
                log_error("cannot use TLS certificate %s with key %s: %s", cert, key, bs_tls_error(e, sizeof(e)));
        return r;
}

static void log_tls(const char *what, SSL_CTX *ctx, const uint8_t fp[BS_FP_LEN], const BsServerConfig *cfg) {
        char text[BS_FP_TEXT_MAX];
        if (!ctx) {
                log_warning("%s: TLS is off (tls = no): tokens and files travel in clear text", what);
                return;
        }
        bs_fp_format(fp, text);
        bs_logf(LOG_INFO, &(BsLogCtx) { .message_id = BS_MID_TLS_KEY, .fingerprint = text },
                "%s: TLS 1.3, %s, key fingerprint %s", what,
                cfg->tls_cert ? cfg->tls_cert : "the server's own key", text);
}

/* SIGHUP: a broken file keeps the configuration in effect. */
static int reload(Server *server, void *userdata) {
        Context *ctx = userdata;
        const char *file = ctx->args.config ?: DEFAULT_CONFIG;
        BsServerConfig cfg;
        BsConfigError err;
        char msg[PATH_MAX + 1024];

        int r = load_config(&ctx->args, &cfg, &err);
        if (r < 0) {
                if (r == -ENOMEM)
                        log_error("cannot reload the configuration: out of memory; keeping the old one");
                else {
                        bs_config_error_format(&err, msg, sizeof(msg));
                        log_error("%s; keeping the old configuration", msg);
                }
                bs_server_config_done(&cfg);
                return r;
        }
        if (!ctx->socket_activated && (cfg.port != ctx->cfg.port || !streq_null(cfg.listen, ctx->cfg.listen)))
                log_warning("%s: the listening address or port changed; that needs a restart", file);
        if (ctx->storage_from_config && !streq_null(cfg.storage, ctx->cfg.storage))
                log_warning("%s: storage changed; that needs a restart", file);
        /* Certificates are read again every time: an ACME client renews the
         * files in place and sends SIGHUP. */
        SSL_CTX *tls;
        uint8_t fp[BS_FP_LEN];
        r = tls_load(&cfg, server->storage, true, &tls, fp);
        if (r < 0) {
                log_error("%s: keeping the configuration in effect", file);
                bs_server_config_done(&cfg);
                return r;
        }
        server_set_tls(server, tls, fp);
        log_tls("configuration reloaded", tls, fp, &cfg);
        server_apply(server, &(ServerConfig) {
                .idle_timeout_usec = cfg.idle_timeout_usec,
                .max_connections = cfg.max_connections,
                .require_key = cfg.require_key,
                .retention = retention_of(&cfg),
                .prune_interval_usec = cfg.prune_interval_usec,
        });
        /* Keep what the restart-only keys were at startup, so a second
         * reload still compares against what is really in use. */
        free(cfg.listen);
        free(cfg.storage);
        cfg.listen = TAKE_PTR(ctx->cfg.listen);
        cfg.storage = TAKE_PTR(ctx->cfg.storage);
        cfg.port = ctx->cfg.port;
        bs_server_config_done(&ctx->cfg);
        ctx->cfg = cfg;
        log_limits("configuration reloaded", &ctx->cfg);
        return 0;
}

/* How long the cluster backend may take to reach its engines at start. */
#define CLUSTER_SETUP_USEC (60ULL * USEC_PER_SEC)

/*
 * The S3 access key and secret, one per line, from s3-credentials or
 * systemd's credential "s3" (LoadCredential=): never from the
 * configuration file, which every user may read.
 */
static int read_s3_credentials(const BsServerConfig *cfg, char *key, size_t key_size, char *secret,
                               size_t secret_size) {
        char path[PATH_MAX], buf[1024];
        const char *creds = getenv("CREDENTIALS_DIRECTORY");

        if (cfg->s3_credentials)
                snprintf(path, sizeof(path), "%s", cfg->s3_credentials);
        else if (creds && creds[0])
                snprintf(path, sizeof(path), "%s/s3", creds);
        else {
                log_error("content = s3://%s needs its credentials: s3-credentials = FILE, or the credential "
                          "\"s3\" (LoadCredential=s3:FILE)", cfg->content_bucket);
                return -ENOENT;
        }
        FILE *f = fopen(path, "re");
        if (!f) {
                log_error("cannot read the S3 credentials %s: %m", path);
                return -errno;
        }
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *nl = strchr(buf, '\n');
        if (nl)
                *nl++ = 0;
        size_t sl = nl ? strcspn(nl, "\r\n") : 0;
        if (!nl || !buf[0] || sl == 0 || strlen(buf) >= key_size || sl >= secret_size) {
                log_error("%s: expected the access key on the first line and the secret on the second", path);
                explicit_bzero(buf, sizeof(buf));
                return -EINVAL;
        }
        snprintf(key, key_size, "%s", buf);
        snprintf(secret, secret_size, "%.*s", (int) sl, nl);
        explicit_bzero(buf, sizeof(buf));
        return 0;
}

/* The cluster backend, its schema and bucket in place: 0, or -errno after logging why not. */
static int cluster_open(const BsServerConfig *cfg, const char *storage, sd_event *event, Backend **ret) {
        char key[1024], secret[1024], spool[PATH_MAX];
        Backend *b;
        uint64_t start, now;
        int r;

        r = read_s3_credentials(cfg, key, sizeof(key), secret, sizeof(secret));
        if (r < 0)
                return r;
        if (snprintf(spool, sizeof(spool), "%s/spool", storage) >= (int) sizeof(spool))
                return -ENAMETOOLONG;
        if (mkdir(spool, 0700) < 0 && errno != EEXIST) {
                r = -errno;
                log_error("cannot create the spool directory %s: %m", spool);
                return r;
        }
        r = cluster_backend_new(event, &(ClusterConfig) {
                .metadata = cfg->metadata,
                .content = {
                        .endpoint = cfg->s3_endpoint,
                        .region = cfg->s3_region,
                        .bucket = cfg->content_bucket,
                        .access_key = key,
                        .secret_key = secret,
                        .virtual_host = cfg->s3_virtual_host,
                        .ca_file = cfg->s3_ca_file,
                        .retry_usec = S3_RETRY_USEC_DEFAULT,
                },
                .spool = spool,
        }, &b);
        explicit_bzero(secret, sizeof(secret));
        if (r < 0) {
                errno = -r;
                log_error("cannot set up the cluster backend: %m");
                return r;
        }
        /* Nothing is served before the engines answer: run the loop for them. */
        (void) sd_event_now(event, CLOCK_MONOTONIC, &start);
        while ((r = cluster_backend_wait(b, NULL)) == -EINPROGRESS) {
                (void) sd_event_now(event, CLOCK_MONOTONIC, &now);
                if (now - start > CLUSTER_SETUP_USEC) {
                        r = -ETIMEDOUT;
                        break;
                }
                int k = sd_event_run(event, USEC_PER_SEC);
                if (k < 0) {
                        r = k;
                        break;
                }
        }
        if (r < 0) {
                errno = -r;
                log_error("cluster backend: cannot reach the metadata database (%s) and the bucket %s at %s, or "
                          "set them up: %m", cfg->metadata, cfg->content_bucket, cfg->s3_endpoint);
                backend_free(b);
                return r;
        }
        log_info("cluster backend: metadata in PostgreSQL, content in s3://%s at %s", cfg->content_bucket,
                 cfg->s3_endpoint);
        *ret = b;
        return 0;
}

static void print_cluster_problem(void *userdata, const char *account, const char *path, const char *problem) {
        printf("%s: %s: %s\n", account, path, problem);
}

static void print_migrated(void *userdata, const char *account, const char *what) {
        printf("%s: %s\n", account, what);
        fflush(stdout);
}

/* What --verify and --migrate do with the cluster, on a loop of their own. */
typedef enum ClusterTask { CLUSTER_VERIFY, CLUSTER_VERIFY_SIZES, CLUSTER_MIGRATE } ClusterTask;

/* A loop of its own and the cluster on it, for a task run once: 0, or
 * -errno after logging (then *ret_event is NULL). */
static int cluster_open_once(const BsServerConfig *cfg, const char *storage, sd_event **ret_event, Backend **ret) {
        int r = sd_event_new(ret_event);
        if (r < 0) {
                errno = -r;
                log_error("cannot set up an event loop: %m");
                return r;
        }
        r = cluster_open(cfg, storage, *ret_event, ret);
        if (r < 0)
                *ret_event = sd_event_unref(*ret_event);
        return r;
}

/* Run task on the cluster: the number of problems (accounts not moved), or -errno after logging. */
static int cluster_task(const BsServerConfig *cfg, const char *storage, ClusterTask task, unsigned *ret_n) {
        Backend *b = NULL;
        sd_event *event = NULL;
        int r = cluster_open_once(cfg, storage, &event, &b);
        if (r >= 0 && task == CLUSTER_MIGRATE)
                r = cluster_migrate(b, event, storage, print_migrated, NULL, ret_n);
        else if (r >= 0)
                r = cluster_verify(b, event, task == CLUSTER_VERIFY, print_cluster_problem, NULL, ret_n);
        b = backend_free(b);
        sd_event_unref(event);
        if (r < 0) {
                errno = -r;
                log_error("cannot %s: %m", task == CLUSTER_MIGRATE ? "move the storage into the cluster"
                                                                  : "verify the cluster");
        }
        return r;
}

/* --verify on the cluster: what the metadata names, in the store. Returns an exit status. */
static int cluster_verify_main(const BsServerConfig *cfg, const char *storage, bool hash) {
        unsigned checked = 0;
        int r = cluster_task(cfg, storage, hash ? CLUSTER_VERIFY : CLUSTER_VERIFY_SIZES, &checked);
        if (r < 0)
                return r == -ETIMEDOUT || r == -ECONNREFUSED ? EX_UNAVAILABLE : EX_SOFTWARE;
        printf("%u content%s checked%s, %d problem%s\n", checked, checked == 1 ? "" : "s",
               hash ? " (hashed)" : "", r, r == 1 ? "" : "s");
        return r > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* --migrate: the storage directory's accounts into the cluster. Returns an exit status. */
static int cluster_migrate_main(const BsServerConfig *cfg, const char *storage) {
        unsigned moved = 0;
        int r = cluster_task(cfg, storage, CLUSTER_MIGRATE, &moved);
        if (r < 0)
                return EX_SOFTWARE;
        printf("%u account%s moved into the cluster, %d could not be\n", moved, moved == 1 ? "" : "s", r);
        return r > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* --prune on the cluster: beside running nodes, which prune too (the
 * database's locks keep them apart). Returns an exit status. */
static int cluster_prune_main(const BsServerConfig *cfg, const char *storage) {
        Backend *b = NULL;
        AccountRetention ret = retention_of(cfg);
        sd_event *event = NULL;
        if (cluster_open_once(cfg, storage, &event, &b) < 0)
                return EX_UNAVAILABLE;
        int r = offline_prune(b, event, &ret);
        b = backend_free(b);
        sd_event_unref(event);
        return r;
}

/* One backupsyncd per storage directory: the lock lives as long as the process. */
static int lock_storage(const char *storage) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/.lock", storage) >= (int) sizeof(path))
                return -ENAMETOOLONG;
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

static void context_done(Context *ctx) {
        bs_server_config_done(&ctx->cfg);
}

int main(int argc, char **argv) {
        /* Declared before the server, so it outlives the server's SIGHUP handler. */
        _cleanup_(context_done) Context ctx = {};
        _cleanup_(server_freep) Server *server = NULL;
        _cleanup_(backend_freep) Backend *backend = NULL;
        sd_event *event = NULL;
        BsConfigError err;
        char storage[PATH_MAX], first[PATH_MAX], msg[PATH_MAX + 1024];
        const char *dir;
        int r, n_fds;

        /* Before SQLite starts: without its allocation counters, every
         * allocation of a statement no longer takes a global mutex (about
         * a hundred per file recorded). */
        (void) sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        bs_log_open("backupsyncd");
        r = parse_args(argc, argv, &ctx.args);
        if (r <= 0)
                return r < 0 ? EX_USAGE : EXIT_SUCCESS;
        r = load_config(&ctx.args, &ctx.cfg, &err);
        if (r == -ENOMEM) {
                log_error("out of memory");
                return EX_OSERR;
        }
        if (r < 0) {
                bs_config_error_format(&err, msg, sizeof(msg));
                log_error("%s", msg);
                return EX_CONFIG;
        }

        /* --storage, then systemd's StateDirectory=, then the file. */
        const char *state_dir = getenv("STATE_DIRECTORY");
        if (ctx.args.storage)
                dir = ctx.args.storage;
        else if (state_dir && state_dir[0]) {
                /* $STATE_DIRECTORY may list several directories; the first is ours. */
                snprintf(first, sizeof(first), "%s", state_dir);
                first[strcspn(first, ":")] = 0;
                dir = first;
        } else if (ctx.cfg.storage) {
                dir = ctx.cfg.storage;
                ctx.storage_from_config = true;
        } else
                dir = "./backupsync-data";
        /* Only read: the storage is the running server's, not ours to create. */
        if (ctx.args.fingerprint) {
                SSL_CTX *tls;
                uint8_t fp[BS_FP_LEN];
                char text[BS_FP_TEXT_MAX];
                if (!ctx.cfg.tls) {
                        log_error("TLS is off (tls = no): the server has no fingerprint");
                        return EX_CONFIG;
                }
                if (tls_load(&ctx.cfg, dir, false, &tls, fp) < 0)
                        return EX_CONFIG;
                SSL_CTX_free(tls);
                bs_fp_format(fp, text);
                printf("%s\n", text);
                return EXIT_SUCCESS;
        }

        r = bs_mkdir_p(dir, 0700);
        if (r < 0 || !realpath(dir, storage) || access(storage, R_OK | W_OK | X_OK) < 0) {
                if (r < 0)
                        errno = -r;
                log_error("storage directory %s is not usable: %m", dir);
                return EX_CANTCREAT;
        }

        if (ctx.cfg.metadata && ctx.args.prune)
                return cluster_prune_main(&ctx.cfg, storage);
        if (ctx.cfg.metadata && ctx.args.verify)
                return cluster_verify_main(&ctx.cfg, storage, !ctx.args.no_hash);
        if (!ctx.cfg.metadata) {
                r = local_backend_new(storage, &backend);
                if (r < 0) {
                        errno = -r;
                        log_error("cannot open storage %s: %m", storage);
                        return EX_OSERR;
                }
        }
        if (ctx.args.verify)
                return offline_verify(backend, !ctx.args.no_hash);
        int lock_fd = lock_storage(storage);
        if (lock_fd == -EWOULDBLOCK) {
                log_error("storage %s is in use by another backupsyncd%s", storage,
                          ctx.args.prune ? "; stop it first (a running server prunes by itself every 10 minutes)"
                                         : "");
                return EX_TEMPFAIL;
        }
        if (lock_fd < 0) {
                errno = -lock_fd;
                log_error("cannot lock storage %s: %m", storage);
                return EX_CANTCREAT;
        }
        if (ctx.args.migrate) {
                if (!ctx.cfg.metadata) {
                        log_error("--migrate moves accounts into the cluster backend: give metadata and content in "
                                  "[server] of the configuration");
                        close(lock_fd);
                        return EX_CONFIG;
                }
                r = cluster_migrate_main(&ctx.cfg, storage);
                close(lock_fd);
                return r;
        }
        if (ctx.args.prune) {
                AccountRetention ret = retention_of(&ctx.cfg);
                r = offline_prune(backend, NULL, &ret);
                close(lock_fd);
                return r;
        }

        /* Each connection needs a socket and, while downloading, a file: the
         * default soft limit of 1024 would be hit before --max-connections. */
        (void) bs_fd_prepare(SERVER_FDS_WANT);

        /* A broken connection must fail its write(), not kill the server. */
        signal(SIGPIPE, SIG_IGN);

        r = sd_event_default(&event);
        if (r >= 0 && ctx.cfg.metadata) {
                r = cluster_open(&ctx.cfg, storage, event, &backend);
                if (r < 0) {
                        sd_event_unref(event);
                        return EX_UNAVAILABLE;
                }
        }
        if (r >= 0) {
                ServerConfig config = {
                        .storage = storage,
                        .idle_timeout_usec = ctx.cfg.idle_timeout_usec,
                        .max_connections = ctx.cfg.max_connections,
                        .require_key = ctx.cfg.require_key,
                        .retention = retention_of(&ctx.cfg),
                        .prune_interval_usec = ctx.cfg.prune_interval_usec,
                };
                r = server_new(&server, event, &config, backend);
                if (r >= 0) {
                        backend = NULL; /* the server's now */
                        r = server_prune_start(server);
                }
        }
        sd_event_unref(event);
        if (r < 0) {
                errno = -r;
                log_error("cannot set up the server: %m");
                return EX_OSERR;
        }
        SSL_CTX *tls;
        uint8_t fp[BS_FP_LEN];
        if (tls_load(&ctx.cfg, storage, true, &tls, fp) < 0)
                return EX_CONFIG;
        server_set_tls(server, tls, fp);
        server_set_reload(server, reload, &ctx);

        n_fds = sd_listen_fds(1);
        if (n_fds < 0) {
                errno = -n_fds;
                log_error("cannot take the sockets passed by systemd: %m");
                return EX_UNAVAILABLE;
        }
        ctx.socket_activated = n_fds > 0;
        if (n_fds > 0) {
                int fd = SD_LISTEN_FDS_START;
                if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
                        log_error("the socket passed by systemd is not a listening stream socket");
                        return EX_UNAVAILABLE;
                }
                r = server_adopt_listen_fd(server, fd);
                if (r < 0) {
                        errno = -r;
                        log_error("cannot use the socket passed by systemd: %m");
                        return EX_UNAVAILABLE;
                }
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                char addr[INET6_ADDRSTRLEN] = "?";
                uint16_t port = 0;
                if (getsockname(fd, (struct sockaddr *) &ss, &len) >= 0) {
                        if (ss.ss_family == AF_INET6) {
                                inet_ntop(AF_INET6, &((struct sockaddr_in6 *) &ss)->sin6_addr, addr, sizeof(addr));
                                port = ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
                        } else if (ss.ss_family == AF_INET) {
                                inet_ntop(AF_INET, &((struct sockaddr_in *) &ss)->sin_addr, addr, sizeof(addr));
                                port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
                        }
                }
                log_event(LOG_INFO, BS_MID_STARTED, NULL, NULL, "listening on %s port %u (socket from systemd)",
                          addr, port);
        } else {
                const char *listen_addr = ctx.cfg.listen ?: "::";
                uint16_t port;
                r = server_listen(server, listen_addr, ctx.cfg.port, &port);
                if (r == -EINVAL) {
                        log_error("--listen needs an IPv4 or IPv6 address, not %s", listen_addr);
                        return EX_USAGE;
                }
                if (r < 0) {
                        errno = -r;
                        log_error("cannot listen on %s port %u: %m", listen_addr, ctx.cfg.port);
                        return EX_UNAVAILABLE;
                }
                log_event(LOG_INFO, BS_MID_STARTED, NULL, NULL, "listening on %s port %u", listen_addr, port);
        }

        log_info("storage %s, configuration %s", storage, ctx.args.config ?: DEFAULT_CONFIG);
        log_limits("limits", &ctx.cfg);
        log_tls("identity", server->host.tls, fp, &ctx.cfg);
        (void) sd_notify(0, "READY=1");
        server_update_status(server);
        r = sd_event_loop(server->event);
        (void) sd_notify(0, "STOPPING=1");
        if (r < 0) {
                errno = -r;
                log_error("event loop failed: %m");
                return EX_SOFTWARE;
        }
        log_info("stopped");
        return EXIT_SUCCESS;
}
