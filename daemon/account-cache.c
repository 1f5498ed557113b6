/* account-cache.c - the accounts open, each shared by all who use it */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "account-cache.h"
#include "bs-log.h"

/* An open account and how many use it. */
typedef struct CachedAccount CachedAccount;
struct CachedAccount {
        CachedAccount *next;
        Account *account;
        unsigned n_users;
};

struct AccountCache {
        Backend *backend; /* the caller's */
        CachedAccount *accounts;
        unsigned n_accounts;
        account_cache_changed_fn changed;
        void *userdata;
};

int account_cache_new(AccountCache **ret, Backend *backend, account_cache_changed_fn changed, void *userdata) {
        AccountCache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->backend = backend;
        c->changed = changed;
        c->userdata = userdata;
        *ret = c;
        return 0;
}

AccountCache *account_cache_free(AccountCache *c) {
        if (!c)
                return NULL;
        while (c->accounts) {
                CachedAccount *a = c->accounts;
                c->accounts = a->next;
                account_free(a->account);
                free(a);
        }
        free(c);
        return NULL;
}

static CachedAccount *lookup(AccountCache *c, const char *id) {
        for (CachedAccount *ca = c->accounts; ca; ca = ca->next)
                if (strcmp(account_id(ca->account), id) == 0)
                        return ca;
        return NULL;
}

static int cache_add(AccountCache *c, Account *a) {
        CachedAccount *ca = calloc(1, sizeof(*ca));
        if (!ca)
                return -ENOMEM;
        ca->account = a;
        ca->n_users = 1;
        ca->next = c->accounts;
        c->accounts = ca;
        c->n_accounts++;
        c->changed(c->userdata);
        return 0;
}

int account_cache_register(AccountCache *c, Account **ret, char *token) {
        Account *a;
        int r = backend_account_create(c->backend, &a, token);
        if (r < 0 && r != -EINPROGRESS)
                return r;
        r = cache_add(c, a);
        if (r < 0) {
                account_free(a);
                return r;
        }
        *ret = a;
        return 0;
}

static void log_recovered(void *userdata, const char *path, const char *problem) {
        log_event(LOG_WARNING, BS_MID_RESCAN, (const char *) userdata, path, "account %s: %s: %s",
                  (const char *) userdata, path, problem);
}

int account_cache_acquire(AccountCache *c, const char *id, Account **ret) {
        CachedAccount *ca = lookup(c, id);
        Account *a;
        int r;

        if (ca) {
                ca->n_users++;
                *ret = ca->account;
                return 0;
        }
        r = backend_account_open(c->backend, id, &a);
        if (r < 0 && r != -EINPROGRESS)
                return r;
        if (r == 0 && account_needs_recovery(a)) {
                /* Killed last time: make the metadata agree with the tree
                 * before anyone is served from it. */
                r = account_verify(a, true, false, log_recovered, (void *) account_id(a));
                if (r < 0) {
                        account_free(a);
                        return r;
                }
                log_event(LOG_NOTICE, BS_MID_RESCAN, account_id(a), NULL,
                          "account %s was not closed cleanly; checked its tree, %d difference%s recorded", account_id(a),
                          r, r == 1 ? "" : "s");
        }
        r = cache_add(c, a);
        if (r < 0) {
                account_free(a);
                return r;
        }
        *ret = a;
        return 0;
}

void account_cache_release(AccountCache *c, Account *a) {
        for (CachedAccount **p = &c->accounts; *p; p = &(*p)->next) {
                CachedAccount *ca = *p;
                if (ca->account != a)
                        continue;
                if (--ca->n_users > 0)
                        return;
                *p = ca->next;
                account_free(ca->account);
                free(ca);
                c->n_accounts--;
                c->changed(c->userdata);
                return;
        }
}

Account *account_cache_find(AccountCache *c, const char *id) {
        CachedAccount *ca = lookup(c, id);
        return ca ? ca->account : NULL;
}

unsigned account_cache_count(AccountCache *c) {
        return c->n_accounts;
}
