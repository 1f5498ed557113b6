/* offline.c - backupsyncd --verify and --prune: every account of a stopped server
 *
 * Both walk the backend's accounts one by one and report on standard
 * output; the server's lock on the storage keeps them from running
 * beside a live server (--verify only reads, so it does not ask). A
 * backend that answers later (the cluster's, which may prune beside its
 * running nodes) has the event loop run until it does.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "bs-clock.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-token.h"
#include "offline.h"

/* fn(account, id, userdata) for each account of the backend: 0, or an exit status to note. */
typedef int (*account_fn)(Account *a, const char *id, void *userdata);

/* A backend's answer to wait for, on event (NULL for one that answers at once). */
typedef struct Later {
        sd_event *event;
        bool told;
        AccountWaker waker;
} Later;

static void on_told(void *userdata) {
        ((Later *) userdata)->told = true;
}

static void later_init(Later *l, sd_event *event) {
        *l = (Later) { .event = event, .waker = { .fn = on_told, .userdata = l } };
}

/* After -EINPROGRESS: run the loop until the waker was told. */
static int later_wait(Later *l) {
        if (!l->event)
                return -EINVAL;
        while (!l->told) {
                int r = sd_event_run(l->event, UINT64_MAX);
                if (r < 0)
                        return r;
        }
        l->told = false;
        return 0;
}

/* Open each account in turn; *ret_n counts them. Returns the first exit status fn or opening gave. */
static int for_each_account(Backend *b, sd_event *event, account_fn fn, void *userdata, unsigned *ret_n) {
        char **ids = NULL;
        size_t n = 0;
        int ret = EXIT_SUCCESS;
        Later later;

        later_init(&later, event);
        *ret_n = 0;
        int r;
        while ((r = backend_account_list(b, &later.waker, &ids, &n)) == -EINPROGRESS && (r = later_wait(&later)) >= 0)
                ;
        if (r < 0) {
                errno = -r;
                log_error("cannot list the accounts: %m");
                return EX_NOINPUT;
        }
        for (size_t i = 0; i < n; i++) {
                Account *a = NULL;
                r = backend_account_open(b, ids[i], &a);
                if (r == -EINPROGRESS)
                        while ((r = account_wait(a, &later.waker)) == -EINPROGRESS && (r = later_wait(&later)) >= 0)
                                ;
                if (r < 0 && a)
                        a = account_free(a);
                if (r == -ENOENT)
                        continue;
                (*ret_n)++;
                if (r < 0) {
                        errno = -r;
                        log_error("account %s: cannot open it: %m", ids[i]);
                        ret = EX_SOFTWARE;
                        continue;
                }
                int k = fn(a, ids[i], userdata);
                if (k != EXIT_SUCCESS && (ret == EXIT_SUCCESS || k == EX_SOFTWARE))
                        ret = k;
                account_free(a);
        }
        account_list_free(ids, n);
        return ret;
}

static void print_problem(void *userdata, const char *path, const char *problem) {
        printf("%s: %s: %s\n", (const char *) userdata, path, problem);
}

typedef struct Verify {
        bool hash;
        unsigned bad;
} Verify;

static int verify_one(Account *a, const char *id, void *userdata) {
        Verify *v = userdata;
        int r = account_verify(a, false, v->hash, print_problem, (void *) id);
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot verify: %m", id);
                return EX_SOFTWARE;
        }
        if (r > 0) {
                v->bad++;
                return EXIT_FAILURE;
        }
        return EXIT_SUCCESS;
}

int offline_verify(Backend *b, bool hash) {
        Verify v = { .hash = hash };
        unsigned accounts;
        int ret = for_each_account(b, NULL, verify_one, &v, &accounts);
        if (ret != EX_NOINPUT)
                printf("%u account%s checked, %u with differences\n", accounts, accounts == 1 ? "" : "s", v.bad);
        return ret;
}

typedef struct Prune {
        sd_event *event;
        const AccountRetention *ret;
        AccountPruneStats total;
        uint64_t before, after;
        bool before_unknown;
} Prune;

static void format_bytes(uint64_t n, char *buf, size_t size) {
        if (n >= 1024ULL * 1024 * 1024)
                snprintf(buf, size, "%.2f GiB", (double) n / (1024.0 * 1024 * 1024));
        else
                snprintf(buf, size, "%.1f MiB", (double) n / (1024.0 * 1024));
}

static int prune_one(Account *a, const char *id, void *userdata) {
        Prune *p = userdata;
        AccountPruneStats st = {};
        uint64_t before = 0, after = 0;
        char b1[32] = "unknown", b2[32];
        Later later;
        int r = 0;

        later_init(&later, p->event);
        if (account_needs_recovery(a))
                r = account_verify(a, true, false, print_problem, (void *) id);
        /* A backend that learns the figure while pruning knows only the one after. */
        if (r >= 0 && (r = account_history_usage(a, &before)) == -ENODATA) {
                p->before_unknown = true;
                r = 0;
        } else if (r >= 0)
                format_bytes(before, b1, sizeof(b1));
        do
                while ((r = r < 0 ? r : account_prune(a, p->ret, bs_now(), 1000, &st, &later.waker)) == -EINPROGRESS)
                        r = later_wait(&later);
        while (r == 1);
        r = r < 0 ? r : account_history_usage(a, &after);
        if (r < 0) {
                errno = -r;
                log_error("account %s: cannot prune: %m", id);
                return EX_SOFTWARE;
        }
        format_bytes(after, b2, sizeof(b2));
        printf("%s: %llu versions, %llu contents, %llu log records pruned; history %s before, %s after\n", id,
               (unsigned long long) st.versions, (unsigned long long) st.contents, (unsigned long long) st.log_records,
               b1, b2);
        p->total.versions += st.versions;
        p->total.contents += st.contents;
        p->total.bytes += st.bytes;
        p->total.log_records += st.log_records;
        p->before += before;
        p->after += after;
        return EXIT_SUCCESS;
}

int offline_prune(Backend *b, sd_event *event, const AccountRetention *ret) {
        Prune p = { .event = event, .ret = ret };
        unsigned accounts;
        char b1[32], b2[32], b3[32];
        int r = for_each_account(b, event, prune_one, &p, &accounts);
        if (r == EX_NOINPUT)
                return r;
        format_bytes(p.total.bytes, b1, sizeof(b1));
        if (p.before_unknown)
                strcpy(b2, "unknown");
        else
                format_bytes(p.before, b2, sizeof(b2));
        format_bytes(p.after, b3, sizeof(b3));
        printf("%u account%s pruned: %llu versions, %llu contents (%s freed), %llu log records; history %s before, "
               "%s after\n",
               accounts, accounts == 1 ? "" : "s", (unsigned long long) p.total.versions,
               (unsigned long long) p.total.contents, b1, (unsigned long long) p.total.log_records, b2, b3);
        return r;
}
