/* server.c - the manager: listening socket, sessions, account cache, limits */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "bs-log.h"
#include "bs-macro.h"
#include "server.h"
#include "session.h"

#define ACCEPT_BATCH 64

static int on_signal(sd_event_source *source, const struct signalfd_siginfo *si, void *userdata) {
        Server *s = userdata;
        log_info("received %s, exiting", strsignal((int) si->ssi_signo));
        (void) sd_notify(0, "STOPPING=1");
        return sd_event_exit(s->event, 0);
}

static int on_sighup(sd_event_source *source, const struct signalfd_siginfo *si, void *userdata) {
        Server *s = userdata;
        struct timespec ts;

        /* MONOTONIC_USEC lets Type=notify-reload match this to its SIGHUP. */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
                          (unsigned long long) ts.tv_sec * USEC_PER_SEC + (unsigned long long) ts.tv_nsec / 1000);
        log_info("received SIGHUP, reloading the configuration");
        if (s->reload)
                (void) s->reload(s, s->reload_userdata);
        (void) sd_notify(0, "READY=1");
        /* A fresh STATUS=: systemd clears the old one on RELOADING=1 in some versions. */
        s->status_accounts = s->status_sessions = UINT32_MAX;
        server_update_status(s);
        return 0;
}

static void on_advanced(void *userdata, const char *id, uint64_t seq);
static void on_counts_changed(void *userdata);
static void on_session_advanced(void *userdata, Account *a, Session *except);
static void on_session_gone(void *userdata);

int server_new(Server **ret, sd_event *event, const ServerConfig *config, Backend *backend) {
        _cleanup_(server_freep) Server *s = NULL;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->listen_fd = -1;
        s->status_accounts = s->status_sessions = UINT32_MAX;
        s->event = sd_event_ref(event);
        s->host = (SessionHost) {
                .event = s->event,
                .userdata = s,
                .advanced = on_session_advanced,
                .gone = on_session_gone,
        };
        server_apply(s, config);
        s->storage = strdup(config->storage);
        if (!s->storage)
                return -ENOMEM;
        r = account_cache_new(&s->host.accounts, backend, on_counts_changed, s);
        if (r < 0)
                return r;
        r = ratelimit_new(&s->host.ratelimit);
        if (r < 0)
                return r;
        r = bs_readahead_new(&s->host.readahead);
        if (r < 0) {
                /* io_uring refused (a seccomp filter, an old kernel): slower
                 * on a cold cache, nothing more. */
                errno = -r;
                log_debug("reading ahead file by file: io_uring: %m");
        }
        r = sd_event_add_signal(event, &s->sigterm_source, SIGTERM | SD_EVENT_SIGNAL_PROCMASK, on_signal, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->sigterm_source, "server-sigterm");
        r = sd_event_add_signal(event, &s->sigint_source, SIGINT | SD_EVENT_SIGNAL_PROCMASK, on_signal, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->sigint_source, "server-sigint");
        r = sd_event_add_signal(event, &s->sighup_source, SIGHUP | SD_EVENT_SIGNAL_PROCMASK, on_sighup, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->sighup_source, "server-sighup");
        /* Sends WATCHDOG=1 from the loop when WatchdogSec= is set: a hung
         * loop stops the pings and systemd restarts the service. */
        r = sd_event_set_watchdog(event, true);
        if (r < 0)
                return r;
        s->backend = backend;
        backend_set_watch(backend, on_advanced, s);
        *ret = TAKE_PTR(s);
        return 0;
}

Server *server_free(Server *s) {
        if (!s)
                return NULL;
        /* Pruning's account and work list (server-prune.c); its sources below. */
        if (s->prune_account)
                account_cache_release(s->host.accounts, TAKE_PTR(s->prune_account));
        account_list_free(s->prune_ids, s->n_prune_ids);
        sd_event_source_disable_unref(s->prune_timer_source);
        sd_event_source_disable_unref(s->prune_slice_source);
        while (s->host.sessions)
                session_free(s->host.sessions);
        account_cache_free(s->host.accounts);
        sd_event_source_disable_unref(s->listen_source);
        sd_event_source_disable_unref(s->sigterm_source);
        sd_event_source_disable_unref(s->sigint_source);
        sd_event_source_disable_unref(s->sighup_source);
        if (s->listen_fd >= 0)
                close(s->listen_fd);
        ratelimit_free(s->host.ratelimit);
        bs_readahead_free(s->host.readahead);
        backend_free(s->backend);
        free(s->storage);
        SSL_CTX_free(s->host.tls);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

/* Over the cap: say BUSY without allocating anything for the connection. */
static void refuse_busy(int fd) {
        BsBuf b = {};
        BsMsg m;
        static const char text[] = "connection cap reached; retry later";

        bs_msg_init(&m, BS_MSG_ERROR, 0);
        m.code = BS_ERR_BUSY;
        memcpy(m.path, text, sizeof(text));
        m.path_len = sizeof(text) - 1;
        if (bs_msg_encode(&b, &m) >= 0)
                (void) send(fd, bs_buf_head(&b), bs_buf_len(&b), MSG_DONTWAIT | MSG_NOSIGNAL);
        bs_buf_free(&b);
}

static int on_accept(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        Server *s = userdata;

        for (unsigned i = 0; i < ACCEPT_BATCH; i++) {
                struct sockaddr_storage sa;
                socklen_t len = sizeof(sa);
                int one = 1;
                Session *session;

                int cfd = accept4(fd, (struct sockaddr *) &sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno == EMFILE || errno == ENFILE) {
                                /* Level-triggered: without a pause this would spin. */
                                log_warning("accept failed, pausing until a connection ends: %m");
                                s->accept_paused = true;
                                (void) sd_event_source_set_enabled(source, SD_EVENT_OFF);
                        } else if (errno != EAGAIN)
                                log_warning("accept failed: %m");
                        break;
                }
                (void) setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                if (s->host.n_sessions >= s->max_connections) {
                        log_warning("connection cap of %u reached, refusing a connection", s->max_connections);
                        refuse_busy(cfd);
                        close(cfd);
                        continue;
                }
                int r = session_new(&session, &s->host, cfd, (struct sockaddr *) &sa, len);
                if (r < 0) {
                        errno = -r;
                        log_error("cannot set up a connection: %m");
                        close(cfd);
                        continue;
                }
                log_debug("connection from %s", session->peer);
                server_update_status(s);
        }
        return 0;
}

static int add_listen_source(Server *s) {
        int r = sd_event_add_io(s->event, &s->listen_source, s->listen_fd, EPOLLIN, on_accept, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->listen_source, "server-listen");
        return 0;
}

int server_listen(Server *s, const char *addr, uint16_t port, uint16_t *ret_port) {
        struct sockaddr_storage ss = {};
        socklen_t len;
        int one = 1, zero = 0;

        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
        struct sockaddr_in *in = (struct sockaddr_in *) &ss;
        if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(port);
                len = sizeof(*in6);
        } else if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
                in->sin_family = AF_INET;
                in->sin_port = htons(port);
                len = sizeof(*in);
        } else
                return -EINVAL;

        _cleanup_(closep) int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* "::" serves IPv4 too, whatever the system default says. */
        if (ss.ss_family == AF_INET6)
                (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, SOMAXCONN) < 0)
                return -errno;
        len = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return -errno;
        *ret_port = ntohs(ss.ss_family == AF_INET6 ? in6->sin6_port : in->sin_port);
        s->listen_fd = TAKE_FD(fd);
        return add_listen_source(s);
}

int server_adopt_listen_fd(Server *s, int fd) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        s->listen_fd = fd;
        return add_listen_source(s);
}

/* Tell every session of a but except that its sequence advanced. */
static void server_notify(Server *s, Account *a, Session *except) {
        for (Session *session = s->host.sessions; session; session = session->next)
                if (session != except && session->account == a)
                        session_notify(session, account_committed_seq(a));
}

/* Another node committed a change of an account: its sessions here pull. */
static void on_advanced(void *userdata, const char *id, uint64_t seq) {
        Server *s = userdata;
        Account *a = account_cache_find(s->host.accounts, id);
        if (a)
                server_notify(s, a, NULL);
}

/* A session here committed: the account's other sessions pull. */
static void on_session_advanced(void *userdata, Account *a, Session *except) {
        server_notify(userdata, a, except);
}

static void on_counts_changed(void *userdata) {
        server_update_status(userdata);
}

/* A session was unlinked: resume accepting if that was paused for want of fds. */
static void on_session_gone(void *userdata) {
        Server *s = userdata;
        if (s->accept_paused && s->listen_source) {
                s->accept_paused = false;
                (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_ON);
        }
        server_update_status(s);
}

void server_update_status(Server *s) {
        unsigned n_accounts = account_cache_count(s->host.accounts);
        if (n_accounts == s->status_accounts && s->host.n_sessions == s->status_sessions)
                return;
        s->status_accounts = n_accounts;
        s->status_sessions = s->host.n_sessions;
        /* The fingerprint is what an administrator reads out to users: keep it in view. */
        (void) sd_notifyf(0, "STATUS=%u accounts open, %u connections; %s%s", n_accounts, s->host.n_sessions,
                          s->host.tls ? "TLS key " : "TLS off (tls = no)", s->tls_fp);
}

void server_set_tls(Server *s, SSL_CTX *ctx, const uint8_t fp[BS_FP_LEN]) {
        SSL_CTX_free(s->host.tls);
        s->host.tls = ctx;
        s->tls_fp[0] = 0;
        if (ctx)
                bs_fp_format(fp, s->tls_fp);
        s->status_accounts = UINT32_MAX; /* publish it */
        server_update_status(s);
}

void server_set_reload(Server *s, ServerReloadFn fn, void *userdata) {
        s->reload = fn;
        s->reload_userdata = userdata;
}

void server_apply(Server *s, const ServerConfig *config) {
        bool idle_changed = s->host.idle_timeout_usec != config->idle_timeout_usec;

        s->host.idle_timeout_usec = config->idle_timeout_usec;
        s->max_connections = config->max_connections;
        s->host.require_key = config->require_key;
        s->retention = config->retention;
        s->prune_interval_usec = config->prune_interval_usec ?: 600 * USEC_PER_SEC;
        /* Open connections get the new deadline too. Over a lowered cap,
         * existing connections stay; new ones wait until there is room. */
        if (idle_changed)
                for (Session *session = s->host.sessions; session; session = session->next)
                        (void) session_rearm_idle_timer(session);
}
