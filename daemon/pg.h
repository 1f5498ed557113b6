/* pg.h - an asynchronous PostgreSQL connection inside the sd-event loop
 *
 * The cluster backend keeps its metadata in PostgreSQL, shared by every
 * node. The loop is single-threaded, so a Pg never blocks: it drives
 * libpq's non-blocking API from the socket, in pipeline mode, so that a
 * whole transaction (BEGIN, its statements, COMMIT) goes out in one write
 * and its results come back in order, one round trip in all.
 *
 * Requests are answered in the order they were made. A request is refused
 * at once (its callback never runs) with -ENOTCONN while the Pg waits out a
 * backoff after losing its connection; made while a connection is being
 * set up, it waits for it (at most PG_CONNECT_TIMEOUT_USEC). A lost
 * connection fails every pending request and is set up again in the
 * background, PG_BACKOFF_MIN_USEC doubling to PG_BACKOFF_MAX_USEC between
 * attempts; pg_on_state() tells the owner when it is back.
 *
 * Error codes given to callbacks:
 *   -ECONNRESET   the connection broke before the request was answered
 *                 (a pg_query() may or may not have run: use a
 *                 transaction when that matters); so do errors of
 *                 classes 08 and 57P0 (the server ending the session)
 *   -ENOTCONN     the request was never sent: no connection could be set up
 *   -EINPROGRESS  the connection broke while a transaction's COMMIT was
 *                 sent and unanswered: it may have committed or not; the
 *                 caller must look before retrying (a transaction already
 *                 known to have failed gets its own error instead)
 *   -EAGAIN       serialization failure (40001) or deadlock (40P01): the
 *                 transaction was rolled back, run it again
 *   -EEXIST       unique violation (23505)
 *   -EIO          any other error reported by the server
 * pg_error_sqlstate() and pg_error_message() say more, for the log line.
 * Functions return -EINVAL, -ENOMEM or -ENOTCONN when they refuse.
 *
 * A dead peer is noticed within about 25 s: TCP keepalives (10 s idle,
 * then 3 probes 5 s apart) and tcp_user_timeout for unacknowledged data.
 *
 * Statements must not control transactions (BEGIN, COMMIT...: use PgTxn)
 * nor COPY (that drops the connection).
 * Callbacks may make new requests and may pg_free() the Pg.
 */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#define PG_CONNECT_TIMEOUT_USEC (5ull * 1000000)
#define PG_BACKOFF_MIN_USEC (100ull * 1000)
#define PG_BACKOFF_MAX_USEC (5ull * 1000000)
/* Bounds of what is kept of a server's error message (longer is cut). */
#define PG_ERROR_MESSAGE_MAX 512u

typedef struct Pg Pg;
typedef struct PgTxn PgTxn;

/**
 * A statement's outcome: r = 0 with its result, or r < 0 (res is the error
 * result, or NULL when there is none). res is borrowed for the call.
 */
typedef void (*pg_result_fn)(Pg *pg, int r, const PGresult *res, void *userdata);
/** A transaction's outcome: 0 only when COMMIT succeeded. */
typedef void (*pg_done_fn)(Pg *pg, int r, void *userdata);
/** The connection came up (connected) or went down (!connected). */
typedef void (*pg_state_fn)(Pg *pg, bool connected, void *userdata);

typedef struct PgNotify {
        const char *channel;
        const char *payload;    /* NUL-terminated, untrusted */
        int pid;                /* of the notifying backend */
        /* No notification is carried: LISTEN took effect (first time, or
         * again after a reconnect); what was notified before may be lost,
         * so read the state anew. */
        bool resync;
} PgNotify;
typedef void (*pg_notify_fn)(Pg *pg, const PgNotify *n, void *userdata);

/**
 * Start connecting to conninfo (a libpq connection string or URI) in the
 * background; -EINVAL when it does not parse. TCP keepalives are on unless
 * conninfo says otherwise. libpq resolves a host name with a blocking
 * lookup: give an address (host=IP or hostaddr=).
 */
int pg_new(Pg **ret, sd_event *event, const char *conninfo);
/** Close the connection; pending callbacks are not called. Commit or abort
 * every PgTxn first. NULL. */
Pg *pg_free(Pg *pg);
static inline void pg_freep(Pg **pg) { if (*pg) pg_free(*pg); }

/** Whether the connection is up now. */
bool pg_is_connected(Pg *pg);
/** Be told each time the connection comes up or goes down. */
void pg_on_state(Pg *pg, pg_state_fn fn, void *userdata);

/**
 * The SQLSTATE (five characters, or "" when the server gave none, e.g. the
 * connection broke) and message of the error being reported: valid within
 * the callback that got it.
 */
const char *pg_error_sqlstate(Pg *pg);
const char *pg_error_message(Pg *pg);

/**
 * Run one statement (outside any transaction of ours; no transaction
 * control in sql). values[i] is text when formats[i] is 0 (or formats is
 * NULL), else lengths[i] binary bytes; NULL values[i] is SQL NULL. Results
 * come as text. Everything is copied. fn may be NULL.
 */
int pg_query(Pg *pg, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, pg_result_fn fn, void *userdata);

/** Start building a transaction; nothing is sent before pg_txn_commit(). */
int pg_txn_begin(Pg *pg, PgTxn **ret);
/**
 * Add a statement (parameters as for pg_query()). fn, which may be NULL,
 * runs only when the statement succeeded, before the transaction's done
 * callback; what it saw counts only if done then gets 0. A first statement
 * SET TRANSACTION ISOLATION LEVEL ... sets the isolation.
 */
int pg_txn_query(PgTxn *t, const char *sql, int nparams, const char *const *values,
                 const int *lengths, const int *formats, pg_result_fn fn, void *userdata);
/**
 * Send BEGIN, the statements and COMMIT at once; done gets the outcome.
 * Takes t in every case; on an error return done is not called.
 */
int pg_txn_commit(PgTxn *t, pg_done_fn done, void *userdata);
/** Drop a transaction that was not committed. NULL. */
PgTxn *pg_txn_abort(PgTxn *t);
static inline void pg_txn_abortp(PgTxn **t) { if (*t) pg_txn_abort(*t); }

/**
 * LISTEN on channel (1 to 63 bytes, any; quoted here) for as long as the Pg lives,
 * again after each reconnect. fn gets every notification on channel, and a
 * resync each time the LISTEN takes effect.
 */
int pg_listen(Pg *pg, const char *channel, pg_notify_fn fn, void *userdata);
