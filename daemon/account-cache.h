/* account-cache.h - the accounts open, each shared by all who use it
 *
 * All sessions of an account share one Account (one database handle and
 * one tree fd), so the single-threaded loop orders their changes. The
 * cache keeps each open while anyone holds a use: the sessions and the
 * manager's pruning. It sits below both, so a session can take and
 * return its account without calling into the manager.
 */
#pragma once

#include "account.h"

typedef struct AccountCache AccountCache;

/* The number of accounts open changed (the manager publishes it). */
typedef void (*account_cache_changed_fn)(void *userdata);

/**
 * Create an empty cache opening accounts of backend, which stays the
 * caller's and must outlive the cache. changed is called after each
 * opening and closing of an account, not by account_cache_free().
 */
int account_cache_new(AccountCache **ret, Backend *backend, account_cache_changed_fn changed, void *userdata);
/** Close every account still open, whoever holds it. Returns NULL. */
AccountCache *account_cache_free(AccountCache *c);

/**
 * Register a new account; token receives "ID-KEY" once account_wait()
 * answers 0. The caller holds one use.
 */
int account_cache_register(AccountCache *c, Account **ret, char *token);
/**
 * Open or share an account by ID (see account_wait() for whether it is
 * open yet); -ENOENT for an unknown one, then or from account_wait().
 */
int account_cache_acquire(AccountCache *c, const char *id, Account **ret);
/** Drop one use; the account is closed with its last user. */
void account_cache_release(AccountCache *c, Account *a);

/** The open account with this ID, without taking a use; NULL when it is not open here. */
Account *account_cache_find(AccountCache *c, const char *id);
/** How many accounts are open. */
unsigned account_cache_count(AccountCache *c);
