/* main.c - backupsyncd: arguments, storage, listening socket, event loop */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "bs-log.h"
#include "bs-macro.h"
#include "server.h"

typedef struct Args {
        uint16_t port;
        const char *storage;
        const char *listen;
        const char *config;
        uint64_t idle_timeout_sec;
        unsigned max_connections;
        bool require_key;
} Args;

static void help(void) {
        printf("Usage: backupsyncd [PORT] [OPTIONS]\n"
               "\n"
               "Backup and sync server: keeps each account's tree, its history and\n"
               "change log, and serves the backupsync agents.\n"
               "\n"
               "  PORT                     TCP port (default 7373; 0 picks a free one)\n"
               "  --storage DIR            storage directory (default $STATE_DIRECTORY,\n"
               "                           else ./backupsync-data)\n"
               "  --listen ADDR            IPv4 or IPv6 address to listen on (default ::,\n"
               "                           which also serves IPv4)\n"
               "  --config FILE            configuration file (not yet read)\n"
               "  --idle-timeout SECONDS   close connections idle this long (default 120,\n"
               "                           0: never)\n"
               "  --max-connections N      connection cap (default 1024)\n"
               "  --require-key yes|no     joining needs the full token ID-KEY (default yes)\n"
               "  -h --help                show this help\n"
               "  --version                show the version\n"
               "\n"
               "With a socket passed by systemd (socket activation), PORT and --listen\n"
               "are ignored.\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *ret) {
        char *end;
        if (!s[0] || s[0] == '-')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_args(int argc, char **argv, Args *a) {
        enum { ARG_STORAGE = 0x100, ARG_LISTEN, ARG_CONFIG, ARG_IDLE, ARG_MAXCONN, ARG_KEY, ARG_VERSION };
        static const struct option options[] = {
                { "storage", required_argument, NULL, ARG_STORAGE },
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "idle-timeout", required_argument, NULL, ARG_IDLE },
                { "max-connections", required_argument, NULL, ARG_MAXCONN },
                { "require-key", required_argument, NULL, ARG_KEY },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        unsigned long long v;
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
                        if (parse_uint(optarg, 365ULL * 24 * 3600, &v) < 0) {
                                fprintf(stderr, "backupsyncd: invalid --idle-timeout: %s\n", optarg);
                                return -EINVAL;
                        }
                        a->idle_timeout_sec = v;
                        break;
                case ARG_MAXCONN:
                        if (parse_uint(optarg, 1000000, &v) < 0 || v == 0) {
                                fprintf(stderr, "backupsyncd: invalid --max-connections: %s\n", optarg);
                                return -EINVAL;
                        }
                        a->max_connections = (unsigned) v;
                        break;
                case ARG_KEY:
                        if (strcmp(optarg, "yes") == 0)
                                a->require_key = true;
                        else if (strcmp(optarg, "no") == 0)
                                a->require_key = false;
                        else {
                                fprintf(stderr, "backupsyncd: --require-key takes yes or no, not %s\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("backupsyncd %s\n", BS_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'backupsyncd --help'.\n");
                        return -EINVAL;
                }

        if (optind < argc) {
                if (parse_uint(argv[optind], 65535, &v) < 0) {
                        fprintf(stderr, "backupsyncd: invalid port: %s\n", argv[optind]);
                        return -EINVAL;
                }
                a->port = (uint16_t) v;
                optind++;
        }
        if (optind < argc) {
                fprintf(stderr, "backupsyncd: unexpected argument: %s\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* mkdir -p with mode 0700 for what we create; existing directories are left alone. */
static int mkdir_p(const char *path) {
        char buf[PATH_MAX];
        if (snprintf(buf, sizeof(buf), "%s", path) >= (int) sizeof(buf))
                return -ENAMETOOLONG;
        for (char *p = buf + 1;; p++) {
                if (*p != '/' && *p != 0)
                        continue;
                char c = *p;
                *p = 0;
                if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                        return -errno;
                *p = c;
                if (c == 0)
                        return 0;
        }
}

int main(int argc, char **argv) {
        _cleanup_(server_freep) Server *server = NULL;
        sd_event *event = NULL;
        Args args = {
                .port = 7373,
                .listen = "::",
                .idle_timeout_sec = 120,
                .max_connections = 1024,
                .require_key = true,
        };
        char storage[PATH_MAX];
        int r, n_fds;

        bs_log_open("backupsyncd");
        r = parse_args(argc, argv, &args);
        if (r <= 0)
                return r < 0 ? EX_USAGE : EXIT_SUCCESS;

        if (!args.storage)
                args.storage = getenv("STATE_DIRECTORY");
        if (!args.storage || !args.storage[0])
                args.storage = "./backupsync-data";
        /* $STATE_DIRECTORY may list several directories; the first is ours. */
        char first[PATH_MAX];
        snprintf(first, sizeof(first), "%s", args.storage);
        first[strcspn(first, ":")] = 0;
        r = mkdir_p(first);
        if (r < 0 || !realpath(first, storage) || access(storage, R_OK | W_OK | X_OK) < 0) {
                if (r < 0)
                        errno = -r;
                log_error("storage directory %s is not usable: %m", first);
                return EX_CANTCREAT;
        }

        /* Each connection needs a socket and, while downloading, a file: the
         * default soft limit of 1024 would be hit before --max-connections. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }

        /* A broken connection must fail its write(), not kill the server. */
        signal(SIGPIPE, SIG_IGN);

        r = sd_event_default(&event);
        if (r >= 0) {
                ServerConfig config = {
                        .storage = storage,
                        .idle_timeout_usec = args.idle_timeout_sec * USEC_PER_SEC,
                        .max_connections = args.max_connections,
                        .require_key = args.require_key,
                };
                r = server_new(&server, event, &config);
        }
        sd_event_unref(event);
        if (r < 0) {
                errno = -r;
                log_error("cannot set up the server: %m");
                return EX_OSERR;
        }

        n_fds = sd_listen_fds(1);
        if (n_fds < 0) {
                errno = -n_fds;
                log_error("cannot take the sockets passed by systemd: %m");
                return EX_UNAVAILABLE;
        }
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
                uint16_t port;
                r = server_listen(server, args.listen, args.port, &port);
                if (r == -EINVAL) {
                        log_error("--listen needs an IPv4 or IPv6 address, not %s", args.listen);
                        return EX_USAGE;
                }
                if (r < 0) {
                        errno = -r;
                        log_error("cannot listen on %s port %u: %m", args.listen, args.port);
                        return EX_UNAVAILABLE;
                }
                log_event(LOG_INFO, BS_MID_STARTED, NULL, NULL, "listening on %s port %u", args.listen, port);
        }

        log_info("storage %s, idle timeout %llu s, at most %u connections, require-key %s", storage,
                 (unsigned long long) args.idle_timeout_sec, args.max_connections,
                 args.require_key ? "yes" : "no");
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
