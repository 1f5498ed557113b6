/* session-host.h - what the manager lends its sessions, and how they tell it of events
 *
 * The manager (server.c) sits above the sessions and may call into them;
 * they never call into it. What a session needs of it is here: shared
 * state the manager sets (its limits change on a reload, and a session
 * reads the current ones), and callbacks for what the manager must hear.
 * The manager owns all of it and outlives every session; a session only
 * links itself into the list, counts itself and its tree warming.
 */
#pragma once

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "account.h"
#include "account-cache.h"
#include "bs-readahead.h"
#include "ratelimit.h"

#ifndef USEC_PER_SEC
#define USEC_PER_SEC 1000000ULL
#endif

/* Trees read ahead at once, at most: each is a thread and a disk's
 * worth of small reads, so a crowd of joining computers takes turns. */
#define SESSION_WARM_MAX 2

typedef struct Session Session;

typedef struct SessionHost {
        sd_event *event;            /* the manager's loop */
        AccountCache *accounts;     /* where a session takes and returns its account */
        RateLimit *ratelimit;       /* failed logins by address */
        BsReadahead *readahead;     /* GETs' files read ahead together; NULL: one by one */
        SSL_CTX *tls;               /* for new connections; NULL: clear text (tls = no) */
        uint64_t idle_timeout_usec; /* 0: never */
        bool require_key;

        Session *sessions;          /* linked by session_new(), unlinked by session_free() */
        unsigned n_sessions;
        unsigned n_warm;            /* sessions reading a tree's metadata ahead, at most SESSION_WARM_MAX */

        /* The manager's side, each called with userdata. */
        void *userdata;
        /* A commit of except advanced a's sequence: tell a's other sessions. */
        void (*advanced)(void *userdata, Account *a, Session *except);
        /* A session left the list (n_sessions no longer counts it): a slot is free. */
        void (*gone)(void *userdata);
} SessionHost;
