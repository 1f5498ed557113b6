/* server-prune.c - the manager's pruning: every account, in slices, in the background
 *
 * Soon after start and every prune-interval the manager goes through the
 * accounts in storage. Each slice is one account_prune() call, run from
 * an idle-priority defer source: it only runs when no connection has
 * anything to do, and is short (SERVER_PRUNE_SLICE rows), so syncing
 * never waits for it. An account in the middle of a transaction is
 * tried again on the next turn. A backend that answers later (the
 * cluster's list, opening and slices) wakes the slice source again; it
 * stays off meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-clock.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-token.h"
#include "server.h"

#define SERVER_PRUNE_FIRST_USEC (5ULL * USEC_PER_SEC)
#define SERVER_PRUNE_SLICE 200u

static void prune_ids_free(Server *s) {
        s->prune_ids = account_list_free(s->prune_ids, s->n_prune_ids);
        s->n_prune_ids = s->i_prune = 0;
}

static void account_done(Server *s) {
        const AccountPruneStats *st = &s->prune_stats;
        if (st->versions || st->contents || st->log_records)
                log_info("account %s: pruned %llu versions, %llu contents (%llu KiB), %llu log records",
                         account_id(s->prune_account), (unsigned long long) st->versions,
                         (unsigned long long) st->contents, (unsigned long long) (st->bytes / 1024),
                         (unsigned long long) st->log_records);
        account_cache_release(s->host.accounts, TAKE_PTR(s->prune_account));
        s->prune_stats = (AccountPruneStats) {};
}

static void on_prune_wake(void *userdata) {
        Server *s = userdata;
        (void) sd_event_source_set_enabled(s->prune_slice_source, SD_EVENT_ON);
}

/* Off until the backend's answer is there. */
static int prune_wait(Server *s) {
        return sd_event_source_set_enabled(s->prune_slice_source, SD_EVENT_OFF);
}

static int on_prune_slice(sd_event_source *source, void *userdata) {
        Server *s = userdata;
        int r;

        if (s->prune_listing) {
                r = backend_account_list(s->backend, &s->prune_waker, &s->prune_ids, &s->n_prune_ids);
                if (r == -EINPROGRESS)
                        return prune_wait(s);
                s->prune_listing = false;
                if (r < 0) {
                        errno = -r;
                        log_warning("cannot list the accounts to prune: %m");
                        prune_ids_free(s);
                        return prune_wait(s);
                }
        }
        if (!s->prune_account) {
                if (s->i_prune >= s->n_prune_ids) {
                        prune_ids_free(s);
                        (void) sd_event_source_set_enabled(s->prune_slice_source, SD_EVENT_OFF);
                        return 0;
                }
                const char *id = s->prune_ids[s->i_prune++];
                r = account_cache_acquire(s->host.accounts, id, &s->prune_account);
                if (r < 0) {
                        if (r != -ENOENT) {
                                errno = -r;
                                log_warning("account %s: cannot open it to prune: %m", id);
                        }
                        return 0;
                }
        }
        r = account_wait(s->prune_account, &s->prune_waker);
        if (r == -EINPROGRESS)
                return prune_wait(s);
        r = r ?: account_prune(s->prune_account, &s->retention, bs_now(), SERVER_PRUNE_SLICE, &s->prune_stats,
                               &s->prune_waker);
        if (r == -EINPROGRESS)
                return prune_wait(s);
        if (r == 1 || r == -EBUSY)
                return 0;
        if (r < 0) {
                errno = -r;
                log_warning("account %s: pruning failed: %m", account_id(s->prune_account));
        }
        account_done(s);
        return 0;
}

static int on_prune_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;
        (void) sd_event_source_set_time_relative(source, s->prune_interval_usec);
        (void) sd_event_source_set_enabled(source, SD_EVENT_ONESHOT);
        if (s->prune_listing || s->n_prune_ids || s->prune_account)
                return 0; /* the last round is still going */
        s->prune_listing = true;
        return sd_event_source_set_enabled(s->prune_slice_source, SD_EVENT_ON);
}

int server_prune_start(Server *s) {
        s->prune_waker = (AccountWaker) { .fn = on_prune_wake, .userdata = s };
        int r = sd_event_add_time_relative(s->event, &s->prune_timer_source, CLOCK_MONOTONIC,
                                           MIN(SERVER_PRUNE_FIRST_USEC, s->prune_interval_usec),
                                           USEC_PER_SEC, on_prune_timer, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->prune_timer_source, "server-prune-timer");
        r = sd_event_add_defer(s->event, &s->prune_slice_source, on_prune_slice, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(s->prune_slice_source, "server-prune-slice");
        r = sd_event_source_set_priority(s->prune_slice_source, SD_EVENT_PRIORITY_IDLE);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(s->prune_slice_source, SD_EVENT_OFF);
}
