/* pg.c - an asynchronous PostgreSQL connection inside the sd-event loop
 *
 * Every request becomes an Item: its statements, each followed or not by a
 * pipeline sync. A query is one statement and a sync. A transaction is
 * BEGIN, its statements, a sync, then COMMIT and a sync: a failing
 * statement aborts the pipeline up to the first sync, which leaves the
 * session in a failed transaction block, and the COMMIT after it (never
 * skipped, being past the sync) then ends that block as a rollback, so the
 * next request finds a clean session without a round trip of its own.
 *
 * Items wait in `waiting` until the connection is up, then are written
 * whole and move to `sent`, whose head is the item the next result
 * belongs to.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>

#include "bs-macro.h"
#include "pg.h"

/* A protocol message carries at most 65535 parameters. */
#define PG_PARAMS_MAX 65535
/* NAMEDATALEN - 1: the server cuts longer channel names, which would then
 * never match the one asked for. */
#define PG_CHANNEL_MAX 63

typedef struct PgStmt {
        const char *sql;
        int nparams;
        const char **values;
        int *lengths;
        int *formats;
        pg_result_fn fn;
        void *userdata;
        bool sync_after;
} PgStmt;

typedef enum ItemKind { ITEM_QUERY, ITEM_TXN, ITEM_LISTEN } ItemKind;
typedef enum Phase { PHASE_RESULT, PHASE_END, PHASE_SYNC } Phase;

typedef struct Listener {
        struct Listener *next;
        pg_notify_fn fn;
        void *userdata;
        char channel[];
} Listener;

typedef struct Item {
        struct Item *next;
        ItemKind kind;
        PgStmt **stmts;
        size_t n, alloc;
        pg_done_fn done;        /* ITEM_TXN */
        void *userdata;
        Listener *listener;     /* ITEM_LISTEN */
        /* Reading: statement cur is in phase. */
        size_t cur;
        Phase phase;
        bool answered;          /* ITEM_QUERY: fn ran */
        bool commit_sent, commit_ok;
        int error;              /* first error seen, kept for done */
        char sqlstate[6];
        char *message;
} Item;

typedef enum PgState { PG_DISCONNECTED, PG_CONNECTING, PG_CONNECTED } PgState;

struct Pg {
        sd_event *event;
        char *conninfo;
        PGconn *conn;
        PgState state;
        sd_event_source *io;
        /* Connecting: the connect timeout. Disconnected: the backoff.
         * Connected: armed to drop a connection found broken while sending,
         * so that no callback runs from within a request. */
        sd_event_source *timer;
        uint64_t backoff_usec;
        Item *sent, *sent_tail;
        Item *waiting, *waiting_tail;
        Listener *listeners;
        pg_state_fn state_fn;
        void *state_userdata;
        char sqlstate[6];
        char message[PG_ERROR_MESSAGE_MAX];
        unsigned busy;          /* handlers on the stack */
        bool freed;             /* pg_free() ran within one of them */
};

struct PgTxn {
        Pg *pg;
        Item *item;
};

/* Copy the first line of untrusted text, at most size - 1 bytes, printable:
 * libpq's further lines are hints ("Is the server running...?"). */
static void copy_line(char *dst, size_t size, const char *src) {
        size_t n = src ? strnlen(src, size - 1) : 0;
        const char *nl = n ? memchr(src, '\n', n) : NULL;
        if (nl)
                n = (size_t) (nl - src);
        memcpy(dst, src ? src : "", n);
        while (n > 0 && isspace((unsigned char) dst[n - 1]))
                n--;
        dst[n] = 0;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) dst[i] < 0x20 || dst[i] == 0x7f)
                        dst[i] = ' ';
}

static void copy_sqlstate(char dst[6], const char *src) {
        dst[0] = 0;
        if (!src || strnlen(src, 6) != 5)
                return;
        for (int i = 0; i < 5; i++)
                if (!isalnum((unsigned char) src[i]))
                        return;
        memcpy(dst, src, 6);
}

static void set_error(Pg *pg, const char *sqlstate, const char *message) {
        copy_sqlstate(pg->sqlstate, sqlstate);
        copy_line(pg->message, sizeof(pg->message), message);
}

/* Errors that mean the session is gone, whatever statement they came with. */
static bool sqlstate_is_connection(const char *s) {
        return strncmp(s, "08", 2) == 0 || strncmp(s, "57P0", 4) == 0;
}

static int sqlstate_to_errno(const char *s) {
        if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
                return -EAGAIN;
        if (strcmp(s, "23505") == 0)
                return -EEXIST;
        return -EIO;
}

const char *pg_error_sqlstate(Pg *pg) {
        return pg->sqlstate;
}

const char *pg_error_message(Pg *pg) {
        return pg->message;
}

bool pg_is_connected(Pg *pg) {
        return pg->state == PG_CONNECTED;
}

void pg_on_state(Pg *pg, pg_state_fn fn, void *userdata) {
        pg->state_fn = fn;
        pg->state_userdata = userdata;
}

/* One allocation holds the statement, its arrays and every byte it refers to. */
static int stmt_new(const char *sql, int nparams, const char *const *values, const int *lengths,
                    const int *formats, pg_result_fn fn, void *userdata, PgStmt **ret) {
        if (!sql || nparams < 0 || nparams > PG_PARAMS_MAX || (nparams > 0 && !values))
                return -EINVAL;
        size_t sql_len = strlen(sql) + 1;
        size_t size = sizeof(PgStmt) + (size_t) nparams * (sizeof(char *) + 2 * sizeof(int));
        if (size > SIZE_MAX - sql_len)
                return -ENOMEM;
        size += sql_len;
        for (int i = 0; i < nparams; i++) {
                size_t len;
                if (!values[i])
                        continue;
                if (formats && formats[i]) {
                        if (!lengths || lengths[i] < 0)
                                return -EINVAL;
                        len = (size_t) lengths[i];
                } else
                        len = strlen(values[i]) + 1;
                if (size > SIZE_MAX - len)
                        return -ENOMEM;
                size += len;
        }
        PgStmt *s = malloc(size);
        if (!s)
                return -ENOMEM;
        char *p = (char *) (s + 1);
        s->values = (const char **) p;
        p += (size_t) nparams * sizeof(char *);
        s->lengths = (int *) p;
        p += (size_t) nparams * sizeof(int);
        s->formats = (int *) p;
        p += (size_t) nparams * sizeof(int);
        memcpy(p, sql, sql_len);
        s->sql = p;
        p += sql_len;
        for (int i = 0; i < nparams; i++) {
                bool bin = formats && formats[i];
                size_t len;
                s->formats[i] = bin;
                s->lengths[i] = 0;
                if (!values[i]) {
                        s->values[i] = NULL;
                        continue;
                }
                len = bin ? (size_t) lengths[i] : strlen(values[i]) + 1;
                if (bin)
                        s->lengths[i] = lengths[i];
                memcpy(p, values[i], len);
                s->values[i] = p;
                p += len;
        }
        s->nparams = nparams;
        s->fn = fn;
        s->userdata = userdata;
        s->sync_after = false;
        *ret = s;
        return 0;
}

static Item *item_free(Item *it) {
        if (!it)
                return NULL;
        for (size_t i = 0; i < it->n; i++)
                free(it->stmts[i]);
        free(it->stmts);
        free(it->message);
        free(it);
        return NULL;
}
DEFINE_FREEP(Item, item_free)

static Item *item_new(ItemKind kind) {
        Item *it = calloc(1, sizeof(*it));
        if (it)
                it->kind = kind;
        return it;
}

static int item_add(Item *it, const char *sql, int nparams, const char *const *values, const int *lengths,
                    const int *formats, pg_result_fn fn, void *userdata) {
        PgStmt *s;
        if (it->n == it->alloc) {
                size_t alloc = it->alloc ? it->alloc * 2 : 4;
                PgStmt **a = reallocarray(it->stmts, alloc, sizeof(*a));
                if (!a)
                        return -ENOMEM;
                it->stmts = a;
                it->alloc = alloc;
        }
        int r = stmt_new(sql, nparams, values, lengths, formats, fn, userdata, &s);
        if (r < 0)
                return r;
        it->stmts[it->n++] = s;
        return 0;
}

static void queue_append(Item **head, Item **tail, Item *it) {
        it->next = NULL;
        if (*tail)
                (*tail)->next = it;
        else
                *head = it;
        *tail = it;
}

static Item *queue_pop(Item **head, Item **tail) {
        Item *it = *head;
        if (it) {
                *head = it->next;
                if (!*head)
                        *tail = NULL;
                it->next = NULL;
        }
        return it;
}

static void queue_free(Item **head, Item **tail) {
        while (*head)
                item_free(queue_pop(head, tail));
}

static uint64_t now_usec(Pg *pg) {
        uint64_t t = 0;
        if (sd_event_now(pg->event, CLOCK_MONOTONIC, &t) < 0) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                t = (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
        }
        return t;
}

static void timer_arm(Pg *pg, uint64_t delay_usec) {
        (void) sd_event_source_set_time(pg->timer, now_usec(pg) + delay_usec);
        (void) sd_event_source_set_enabled(pg->timer, SD_EVENT_ONESHOT);
}

static void timer_disarm(Pg *pg) {
        (void) sd_event_source_set_enabled(pg->timer, SD_EVENT_OFF);
}

/* A handler may run pg_free() through a callback: the struct outlives it. */
static void enter(Pg *pg) {
        pg->busy++;
}

static void leave(Pg *pg) {
        if (--pg->busy == 0 && pg->freed)
                free(pg);
}

static void close_conn(Pg *pg) {
        pg->io = sd_event_source_disable_unref(pg->io);
        if (pg->conn)
                PQfinish(pg->conn);
        pg->conn = NULL;
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* libpq may replace the socket while connecting (another address, SSL
 * refused), reusing the number or not: a new source each time is simplest. */
static int watch(Pg *pg, uint32_t events) {
        pg->io = sd_event_source_disable_unref(pg->io);
        int fd = PQsocket(pg->conn);
        if (fd < 0)
                return -EBADF;
        return sd_event_add_io(pg->event, &pg->io, fd, events, on_io, pg);
}

/* Drop the connection (or the attempt) and fail every request: the ones
 * sent by what is known of them, the waiting ones as never sent. The
 * reason is libpq's unless the caller has set it (set). */
static void drop(Pg *pg, bool set) {
        char sqlstate[6], message[PG_ERROR_MESSAGE_MAX];
        bool was_connected = pg->state == PG_CONNECTED;

        if (!set && pg->conn && PQerrorMessage(pg->conn)[0])
                set_error(pg, NULL, PQerrorMessage(pg->conn));
        else if (!set)
                set_error(pg, NULL, "connection lost");
        memcpy(sqlstate, pg->sqlstate, sizeof(sqlstate));
        memcpy(message, pg->message, sizeof(message));
        close_conn(pg);
        pg->state = PG_DISCONNECTED;
        timer_arm(pg, pg->backoff_usec);
        pg->backoff_usec = MIN(pg->backoff_usec * 2, PG_BACKOFF_MAX_USEC);

        Item *sent = pg->sent, *sent_tail = pg->sent_tail;
        Item *waiting = pg->waiting, *waiting_tail = pg->waiting_tail;
        pg->sent = pg->sent_tail = pg->waiting = pg->waiting_tail = NULL;

        if (was_connected && pg->state_fn) {
                pg->state_fn(pg, false, pg->state_userdata);
                if (pg->freed)
                        goto out;
        }
        for (int w = 0; w < 2; w++) {
                Item **head = w ? &waiting : &sent, **tail = w ? &waiting_tail : &sent_tail;
                while (*head) {
                        _cleanup_(item_freep) Item *it = queue_pop(head, tail);
                        int r = w ? -ENOTCONN : -ECONNRESET;
                        set_error(pg, sqlstate, message);
                        if (it->kind == ITEM_QUERY && !it->answered) {
                                if (it->stmts[0]->fn)
                                        it->stmts[0]->fn(pg, r, NULL, it->stmts[0]->userdata);
                        } else if (it->kind == ITEM_TXN) {
                                if (it->error < 0) {
                                        /* A statement failed: COMMIT could only roll back. */
                                        r = it->error;
                                        set_error(pg, it->sqlstate, it->message);
                                } else if (it->commit_ok)
                                        r = 0;
                                else if (it->commit_sent)
                                        r = -EINPROGRESS;
                                it->done(pg, r, it->userdata);
                        }
                        if (pg->freed)
                                goto out;
                }
        }
out:
        queue_free(&sent, &sent_tail);
        queue_free(&waiting, &waiting_tail);
}

/* Called where no callback may run (within a request): the timer drops
 * the connection from the loop. */
static void drop_soon(Pg *pg) {
        if (pg->state == PG_CONNECTED)
                timer_arm(pg, 0);
}

static void flush(Pg *pg) {
        int r = PQflush(pg->conn);
        if (r < 0) {
                drop_soon(pg);
                return;
        }
        (void) sd_event_source_set_io_events(pg->io, EPOLLIN | (r > 0 ? EPOLLOUT : 0));
}

static bool send_stmt(Pg *pg, const PgStmt *s) {
        if (!PQsendQueryParams(pg->conn, s->sql, s->nparams, NULL, s->values, s->lengths, s->formats, 0))
                return false;
        return !s->sync_after || PQpipelineSync(pg->conn);
}

/* Write every waiting item; libpq buffers what the socket does not take. */
static void pump(Pg *pg) {
        if (pg->state != PG_CONNECTED || !pg->waiting)
                return;
        while (pg->waiting) {
                Item *it = queue_pop(&pg->waiting, &pg->waiting_tail);
                queue_append(&pg->sent, &pg->sent_tail, it);
                for (size_t i = 0; i < it->n; i++) {
                        if (!send_stmt(pg, it->stmts[i])) {
                                set_error(pg, NULL, PQerrorMessage(pg->conn));
                                drop_soon(pg);
                                return;
                        }
                        if (it->kind == ITEM_TXN && i == it->n - 1)
                                it->commit_sent = true;
                }
        }
        flush(pg);
}

static void item_error(Pg *pg, Item *it, int r, const PGresult *res) {
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        set_error(pg, PQresultErrorField(res, PG_DIAG_SQLSTATE), msg ? msg : PQresultErrorMessage(res));
        if (it->error < 0)
                return;
        it->error = r;
        memcpy(it->sqlstate, pg->sqlstate, sizeof(it->sqlstate));
        free(it->message);
        it->message = strdup(pg->message);
}

/* The result of statement it->cur. False when the connection is to be dropped. */
static bool on_result(Pg *pg, Item *it, const PGresult *res) {
        PgStmt *s = it->stmts[it->cur];
        ExecStatusType st = PQresultStatus(res);
        bool last = it->cur == it->n - 1;

        switch (st) {
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
        case PGRES_EMPTY_QUERY:
                if (it->kind == ITEM_QUERY) {
                        it->answered = true;
                        if (s->fn)
                                s->fn(pg, 0, res, s->userdata);
                } else if (it->kind == ITEM_TXN && last) {
                        /* A COMMIT that ends a failed block answers ROLLBACK. */
                        if (strcmp(PQcmdStatus((PGresult *) res), "COMMIT") == 0)
                                it->commit_ok = it->error == 0;
                        else if (it->error == 0) {
                                set_error(pg, NULL, "transaction rolled back");
                                it->error = -EIO;
                                it->message = strdup(pg->message);
                        }
                } else if (it->kind == ITEM_TXN && it->cur > 0 && it->error == 0 && s->fn)
                        s->fn(pg, 0, res, s->userdata);
                return true;
        case PGRES_PIPELINE_ABORTED:
                if (it->error == 0) {
                        set_error(pg, NULL, "pipeline aborted");
                        it->error = -EIO;
                        it->message = strdup(pg->message);
                }
                if (it->kind == ITEM_QUERY && !it->answered) {
                        it->answered = true;
                        if (s->fn)
                                s->fn(pg, -EIO, res, s->userdata);
                }
                return true;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
                /* The session would wait for data we never send. */
                set_error(pg, NULL, "COPY is not supported");
                return false;
        default: {
                const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                if (PQstatus(pg->conn) == CONNECTION_BAD || !state || sqlstate_is_connection(state)) {
                        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                        set_error(pg, state, msg ? msg : PQresultErrorMessage(res));
                        return false;
                }
                int r = sqlstate_to_errno(state);
                item_error(pg, it, r, res);
                if (it->kind == ITEM_QUERY && !it->answered) {
                        it->answered = true;
                        if (s->fn)
                                s->fn(pg, r, res, s->userdata);
                }
                return true;
        }
        }
}

/* The last sync of it came: it is done. */
static void on_item_done(Pg *pg, Item *it) {
        if (it->kind == ITEM_TXN) {
                int r = it->error < 0 ? it->error : it->commit_ok ? 0 : -EIO;
                if (r < 0)
                        set_error(pg, it->sqlstate, it->message ? it->message : "transaction failed");
                it->done(pg, r, it->userdata);
        } else if (it->kind == ITEM_LISTEN) {
                if (it->error < 0) {
                        /* Without the LISTEN nothing would ever come: try anew. */
                        drop_soon(pg);
                        return;
                }
                PgNotify n = { .channel = it->listener->channel, .payload = "", .resync = true };
                it->listener->fn(pg, &n, it->listener->userdata);
        }
}

/* Take every result libpq has complete, in order. False: drop the connection. */
static bool read_results(Pg *pg) {
        while (pg->sent && !PQisBusy(pg->conn)) {
                Item *it = pg->sent;
                PGresult *res = PQgetResult(pg->conn);
                bool ok = true;

                switch (it->phase) {
                case PHASE_RESULT:
                        if (!res)
                                return true;
                        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
                                PQclear(res);
                                set_error(pg, NULL, "out of step with the server's results");
                                return false;
                        }
                        ok = on_result(pg, it, res);
                        if (!pg->freed)
                                it->phase = PHASE_END;
                        break;
                case PHASE_END:
                        if (res) {
                                /* More than one result: keep only an error. */
                                if (PQresultStatus(res) == PGRES_FATAL_ERROR)
                                        ok = on_result(pg, it, res);
                                break;
                        }
                        if (it->stmts[it->cur]->sync_after)
                                it->phase = PHASE_SYNC;
                        else {
                                it->cur++;
                                it->phase = PHASE_RESULT;
                        }
                        break;
                case PHASE_SYNC:
                        if (!res)
                                return true;
                        if (PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
                                PQclear(res);
                                set_error(pg, NULL, "out of step with the server's results");
                                return false;
                        }
                        it->cur++;
                        it->phase = PHASE_RESULT;
                        if (it->cur == it->n) {
                                _cleanup_(item_freep) Item *done = queue_pop(&pg->sent, &pg->sent_tail);
                                on_item_done(pg, done);
                        }
                        break;
                }
                PQclear(res);
                if (pg->freed)
                        return true;
                if (!ok)
                        return false;
        }
        return true;
}

static void read_notifies(Pg *pg) {
        PGnotify *m;
        while (!pg->freed && pg->conn && (m = PQnotifies(pg->conn))) {
                PgNotify n = { .channel = m->relname, .payload = m->extra ? m->extra : "", .pid = m->be_pid };
                for (Listener *l = pg->listeners; l; l = l->next)
                        if (strcmp(l->channel, m->relname) == 0) {
                                l->fn(pg, &n, l->userdata);
                                if (pg->freed)
                                        break;
                        }
                PQfreemem(m);
        }
}

static int listen_item(Pg *pg, Listener *l, Item **ret) {
        _cleanup_(item_freep) Item *it = item_new(ITEM_LISTEN);
        _cleanup_(freep) char *sql = NULL;
        if (!it)
                return -ENOMEM;
        char *id = PQescapeIdentifier(pg->conn, l->channel, strlen(l->channel));
        if (!id)
                return -ENOMEM;
        int r = asprintf(&sql, "LISTEN %s", id);
        PQfreemem(id);
        if (r < 0)
                return -ENOMEM;
        r = item_add(it, sql, 0, NULL, NULL, NULL, NULL, NULL);
        if (r < 0)
                return r;
        it->stmts[0]->sync_after = true;
        it->listener = l;
        *ret = TAKE_PTR(it);
        return 0;
}

/* LISTENs go first: the owner's resync must not miss what its queries do. */
static void connected(Pg *pg) {
        Item *head = NULL, *tail = NULL;

        if (PQsetnonblocking(pg->conn, 1) != 0 || !PQenterPipelineMode(pg->conn) || watch(pg, EPOLLIN) < 0) {
                drop(pg, false);
                return;
        }
        for (Listener *l = pg->listeners; l; l = l->next) {
                Item *it;
                if (listen_item(pg, l, &it) < 0) {
                        queue_free(&head, &tail);
                        set_error(pg, NULL, "out of memory");
                        drop(pg, true);
                        return;
                }
                queue_append(&head, &tail, it);
        }
        if (tail) {
                tail->next = pg->waiting;
                if (!pg->waiting)
                        pg->waiting_tail = tail;
                pg->waiting = head;
        }
        pg->state = PG_CONNECTED;
        pg->backoff_usec = PG_BACKOFF_MIN_USEC;
        timer_disarm(pg);
        pg->sqlstate[0] = pg->message[0] = 0;
        if (pg->state_fn) {
                pg->state_fn(pg, true, pg->state_userdata);
                if (pg->freed || pg->state != PG_CONNECTED)
                        return;
        }
        pump(pg);
}

static void connect_poll(Pg *pg) {
        switch (PQconnectPoll(pg->conn)) {
        case PGRES_POLLING_READING:
                if (watch(pg, EPOLLIN) < 0)
                        drop(pg, false);
                return;
        case PGRES_POLLING_WRITING:
                if (watch(pg, EPOLLOUT) < 0)
                        drop(pg, false);
                return;
        case PGRES_POLLING_OK:
                connected(pg);
                return;
        default:
                drop(pg, false);
                return;
        }
}

/* libpq would print the server's notices and warnings on stderr. */
static void ignore_notice(void *arg, const PGresult *res) {
}

/* Our keepalive settings come first so that conninfo may override them.
 * tcp_user_timeout bounds how long sent data may go unacknowledged, which
 * keepalives do not cover. */
static void connect_start(Pg *pg) {
        static const char *const keywords[] = {
                "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                "tcp_user_timeout", "fallback_application_name", "dbname", NULL,
        };
        const char *const values[] = {
                "1", "10", "5", "3", "25000", "backupsyncd", pg->conninfo, NULL,
        };

        pg->sqlstate[0] = pg->message[0] = 0;
        pg->conn = PQconnectStartParams(keywords, values, 1);
        if (!pg->conn) {
                set_error(pg, NULL, "out of memory");
                drop(pg, true);
                return;
        }
        if (PQstatus(pg->conn) == CONNECTION_BAD || watch(pg, EPOLLOUT) < 0) {
                drop(pg, false);
                return;
        }
        (void) PQsetNoticeReceiver(pg->conn, ignore_notice, NULL);
        pg->state = PG_CONNECTING;
        timer_arm(pg, PG_CONNECT_TIMEOUT_USEC);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Pg *pg = userdata;
        bool set = false;

        enter(pg);
        if (pg->state == PG_CONNECTING) {
                connect_poll(pg);
                goto out;
        }
        if (pg->state != PG_CONNECTED)
                goto out;
        if ((revents & EPOLLOUT) && PQflush(pg->conn) < 0)
                goto lost;
        if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                        if (!PQconsumeInput(pg->conn))
                        goto lost;
                if (!read_results(pg)) {
                        set = true;
                        goto lost;
                }
                if (pg->freed)
                        goto out;
                read_notifies(pg);
                if (pg->freed || pg->state != PG_CONNECTED)
                        goto out;
        }
        if (PQstatus(pg->conn) == CONNECTION_BAD)
                goto lost;
        flush(pg);
        goto out;
lost:
        if (!pg->freed && pg->state == PG_CONNECTED)
                drop(pg, set);
out:
        leave(pg);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Pg *pg = userdata;

        enter(pg);
        switch (pg->state) {
        case PG_DISCONNECTED:
                connect_start(pg);
                break;
        case PG_CONNECTING:
                set_error(pg, NULL, "timed out connecting");
                drop(pg, true);
                break;
        case PG_CONNECTED:
                drop(pg, false);
                break;
        }
        leave(pg);
        return 0;
}

int pg_new(Pg **ret, sd_event *event, const char *conninfo) {
        _cleanup_(pg_freep) Pg *pg = NULL;
        char *err = NULL;

        PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
        if (!opts) {
                PQfreemem(err);
                return -EINVAL;
        }
        PQconninfoFree(opts);
        pg = calloc(1, sizeof(*pg));
        if (!pg)
                return -ENOMEM;
        pg->event = sd_event_ref(event);
        pg->backoff_usec = PG_BACKOFF_MIN_USEC;
        pg->conninfo = strdup(conninfo);
        if (!pg->conninfo)
                return -ENOMEM;
        int r = sd_event_add_time(event, &pg->timer, CLOCK_MONOTONIC, 0, 1000, on_timer, pg);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(pg->timer, "pg-timer");
        timer_disarm(pg);
        connect_start(pg);
        *ret = TAKE_PTR(pg);
        return 0;
}

Pg *pg_free(Pg *pg) {
        if (!pg || pg->freed)
                return NULL;
        close_conn(pg);
        pg->timer = sd_event_source_disable_unref(pg->timer);
        queue_free(&pg->sent, &pg->sent_tail);
        queue_free(&pg->waiting, &pg->waiting_tail);
        while (pg->listeners) {
                Listener *l = pg->listeners;
                pg->listeners = l->next;
                free(l);
        }
        free(pg->conninfo);
        pg->event = sd_event_unref(pg->event);
        pg->freed = true;
        if (pg->busy == 0)
                free(pg);
        return NULL;
}

static int submit(Pg *pg, Item *it) {
        if (pg->state == PG_DISCONNECTED) {
                set_error(pg, NULL, "not connected");
                return -ENOTCONN;
        }
        queue_append(&pg->waiting, &pg->waiting_tail, it);
        pump(pg);
        return 0;
}

int pg_query(Pg *pg, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, pg_result_fn fn, void *userdata) {
        _cleanup_(item_freep) Item *it = item_new(ITEM_QUERY);
        if (!it)
                return -ENOMEM;
        int r = item_add(it, sql, nparams, values, lengths, formats, fn, userdata);
        if (r < 0)
                return r;
        it->stmts[0]->sync_after = true;
        r = submit(pg, it);
        if (r < 0)
                return r;
        TAKE_PTR(it);
        return 0;
}

int pg_txn_begin(Pg *pg, PgTxn **ret) {
        _cleanup_(freep) PgTxn *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->pg = pg;
        t->item = item_new(ITEM_TXN);
        if (!t->item)
                return -ENOMEM;
        int r = item_add(t->item, "BEGIN", 0, NULL, NULL, NULL, NULL, NULL);
        if (r < 0) {
                item_free(t->item);
                return r;
        }
        *ret = TAKE_PTR(t);
        return 0;
}

int pg_txn_query(PgTxn *t, const char *sql, int nparams, const char *const *values,
                 const int *lengths, const int *formats, pg_result_fn fn, void *userdata) {
        return item_add(t->item, sql, nparams, values, lengths, formats, fn, userdata);
}

PgTxn *pg_txn_abort(PgTxn *t) {
        if (t) {
                item_free(t->item);
                free(t);
        }
        return NULL;
}

int pg_txn_commit(PgTxn *t, pg_done_fn done, void *userdata) {
        _cleanup_(pg_txn_abortp) PgTxn *txn = t;
        Item *it = txn->item;

        if (!done)
                return -EINVAL;
        it->stmts[it->n - 1]->sync_after = true;
        int r = item_add(it, "COMMIT", 0, NULL, NULL, NULL, NULL, NULL);
        if (r < 0)
                return r;
        it->stmts[it->n - 1]->sync_after = true;
        it->done = done;
        it->userdata = userdata;
        r = submit(txn->pg, it);
        if (r < 0)
                return r;
        txn->item = NULL;
        return 0;
}

int pg_listen(Pg *pg, const char *channel, pg_notify_fn fn, void *userdata) {
        size_t n = channel ? strnlen(channel, PG_CHANNEL_MAX + 1) : 0;
        if (n == 0 || n > PG_CHANNEL_MAX || !fn)
                return -EINVAL;
        Listener *l = malloc(sizeof(*l) + n + 1);
        if (!l)
                return -ENOMEM;
        memcpy(l->channel, channel, n);
        l->channel[n] = 0;
        l->fn = fn;
        l->userdata = userdata;
        if (pg->state == PG_CONNECTED) {
                Item *it;
                int r = listen_item(pg, l, &it);
                if (r < 0) {
                        free(l);
                        return r;
                }
                queue_append(&pg->waiting, &pg->waiting_tail, it);
        }
        /* Otherwise the next connection issues it. */
        l->next = pg->listeners;
        pg->listeners = l;
        pump(pg);
        return 0;
}
