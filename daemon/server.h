/* server.h - the manager: listening socket, sessions, account cache, limits
 *
 * One Server per process. It accepts connections into Sessions, keeps each
 * Account open while any session uses it (account-cache.h: so all sessions
 * of an account share one database handle and one tree fd, and the
 * single-threaded loop orders their changes), enforces the connection cap
 * and the failed-login rate limit, and keeps systemd informed through
 * sd_notify(). It sits above the sessions: what they need of it is lent
 * to them, and what it must hear of them comes back, through a
 * SessionHost (session-host.h).
 */
#pragma once

#include <stdbool.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "account.h"
#include "account-cache.h"
#include "bs-readahead.h"
#include "bs-tls.h"
#include "ratelimit.h"
#include "session-host.h"

typedef struct Server Server;

typedef struct ServerConfig {
        const char *storage;        /* absolute path of the storage directory (the TLS key); fixed for the process */
        uint64_t idle_timeout_usec; /* 0: never */
        unsigned max_connections;
        bool require_key;
        AccountRetention retention;
        uint64_t prune_interval_usec;
} ServerConfig;

/* Re-reads the configuration on SIGHUP and applies it with server_apply().
 * Returns 0, or a negative errno after logging why the old one was kept. */
typedef int (*ServerReloadFn)(Server *s, void *userdata);

struct Server {
        sd_event *event;
        Backend *backend;
        char *storage;
        unsigned max_connections;

        int listen_fd;
        sd_event_source *listen_source;
        bool accept_paused; /* out of fds: resumed when a session ends */
        sd_event_source *sigterm_source;
        sd_event_source *sigint_source;
        sd_event_source *sighup_source;
        ServerReloadFn reload;
        void *reload_userdata;
        unsigned status_accounts, status_sessions; /* last STATUS= sent */
        char tls_fp[80];   /* "SHA256:..." of host.tls, for STATUS=; "" without */

        /* What the sessions share: the account cache, the rate limit, the
         * read-ahead ring, TLS, their limits and their list. All of it is
         * the server's (freed by server_free()); the sessions borrow it. */
        SessionHost host;

        /* Pruning (server-prune.c): the accounts of this round, the one in hand. */
        AccountRetention retention;
        uint64_t prune_interval_usec;
        sd_event_source *prune_timer_source;
        sd_event_source *prune_slice_source;
        char **prune_ids;
        size_t n_prune_ids, i_prune;
        Account *prune_account;
        bool prune_listing;       /* the round's first slice lists the accounts */
        AccountWaker prune_waker; /* a later answer turns the slice source on again */
        AccountPruneStats prune_stats;
};

/**
 * Create the manager on event (referenced), serving the accounts of
 * backend (taken over when this succeeds), with signal handlers for a
 * clean exit and for SIGHUP, and the watchdog enabled on event.
 */
int server_new(Server **ret, sd_event *event, const ServerConfig *config, Backend *backend);
Server *server_free(Server *s);
static inline void server_freep(Server **s) { if (*s) server_free(*s); }

/**
 * Bind and listen on addr (an IPv4 or IPv6 literal; "::" is dual stack)
 * and port (0: any free port). *ret_port receives the bound port.
 */
int server_listen(Server *s, const char *addr, uint16_t port, uint16_t *ret_port);
/** Use a listening socket passed by systemd. */
int server_adopt_listen_fd(Server *s, int fd);

/** Publish STATUS= to the service manager when the counts changed. */
void server_update_status(Server *s);

/** Call fn on SIGHUP, between RELOADING=1 and READY=1. */
void server_set_reload(Server *s, ServerReloadFn fn, void *userdata);
/** Prune every account soon after start and every prune-interval, in idle-priority slices (server-prune.c). */
int server_prune_start(Server *s);

/**
 * Serve new connections with TLS from ctx (taken over), known by fp, or in
 * clear text with ctx NULL. Connections already open keep what they have.
 */
void server_set_tls(Server *s, SSL_CTX *ctx, const uint8_t fp[BS_FP_LEN]);

/** Take the limits of config that can change while running (not storage). */
void server_apply(Server *s, const ServerConfig *config);
