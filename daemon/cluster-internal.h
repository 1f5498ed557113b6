/* cluster-internal.h - what the cluster backend's files share
 *
 * Not part of the storage interface: only cluster-*.c include this.
 */
#pragma once

#include "account-backend.h"
#include "bs-chunk.h"
#include "cluster.h"
#include "pg.h"
#include "s3.h"

/* Whom an object tells when something it was asked for is there. */
typedef struct ClusterWaiters {
        const AccountWaker **w;
        size_t n, cap;
} ClusterWaiters;

typedef struct ClusterAccount ClusterAccount;
typedef struct ClusterPrune ClusterPrune;

typedef struct ClusterBackend {
        Backend base;
        sd_event *event;
        Pg *pg;          /* queries and transactions */
        Pg *listen;      /* LISTEN backupsync */
        Pg *gc;          /* the collector's exclusive objects locks (cluster-prune.c) */
        S3 *s3;
        int spool_fd;
        int setup;       /* > 0 while the schema and the bucket are being set up, then 0 or -errno */
        int setup_error;
        ClusterWaiters setup_waiters;
        ClusterAccount *accounts; /* open, for NOTIFY */
        ClusterPrune *prunes;     /* slices running or kept for their account */
        /* backend_account_list(): one listing at a time. */
        int listing;              /* 1 while asked, 2 answered */
        int list_error;
        char **list_ids;
        size_t n_list_ids;
        const AccountWaker *list_waker;
        backend_watch_fn watch;
        void *watch_userdata;
} ClusterBackend;

struct ClusterAccount {
        Account base;
        ClusterBackend *backend;
        ClusterAccount *prev, *next;
        char id[BS_ID_LEN + 1];
        char key_hash[65];
        char *token;      /* where a new account's token goes, until it is created */
        unsigned create_tries;
        int state;        /* 1 while opening or creating, then 0 or -errno */
        bool freed;       /* let go while opening: the answer frees it */
        uint64_t seq;     /* the last committed sequence this node knows of */
        int64_t history_bytes; /* as the last pruning round found, -1: not known */
        ClusterPrune *prune;
        ClusterWaiters waiters;
};

extern const AccountOps cluster_account_ops;

/** Remember w (once) to be told later. */
int cluster_waiters_add(ClusterWaiters *ws, const AccountWaker *w);
void cluster_waiters_remove(ClusterWaiters *ws, const AccountWaker *w);
/** Tell every waiter, and forget them. */
void cluster_waiters_wake(ClusterWaiters *ws);
void cluster_waiters_done(ClusterWaiters *ws);

/** A new account object, opening (id given) or being created (token given). */
int cluster_account_new(ClusterBackend *b, const char *id, char *token, ClusterAccount **ret);
/** Unlink a from its backend and free it, or leave that to the answer it waits for. */
void cluster_account_drop(ClusterAccount *a);
/** A sequence committed by any node: keep the newest. True when it is newer. */
bool cluster_account_advance(ClusterAccount *a, uint64_t seq);

/**
 * One slice of pruning a (account_prune()): -EINPROGRESS while it runs
 * (w is told), then its outcome.
 */
int cluster_prune(ClusterAccount *a, const AccountRetention *ret, time_t now, unsigned budget,
                  AccountPruneStats *stats, const AccountWaker *w);
/** The account goes away: a running slice ends on its own. */
void cluster_prune_detach(ClusterPrune *p);
/** Free what slices are left, with their backend. */
void cluster_prune_free_all(ClusterBackend *b);

/* Contents of this size or more are kept as chunks (cluster-chunks.c),
 * cut larger than on the wire: each chunk is an object, and an object
 * store's cost is per object (see docs/backend.md). */
#define CLUSTER_CHUNKED_MIN (1024u * 1024)
#define CLUSTER_CHUNK_MIN (256u * 1024)
#define CLUSTER_CHUNK_AVG (1024u * 1024)
#define CLUSTER_CHUNK_MAX (4u * 1024 * 1024)
#define CLUSTER_RECIPE_ENTRY (4 + BS_SHA_LEN)

/* A content's chunks in order: chunk i is [off[i], off[i + 1]). */
typedef struct ClusterRecipe {
        size_t n, cap;
        uint64_t *off; /* n + 1 entries */
        uint8_t (*sha)[BS_SHA_LEN];
} ClusterRecipe;

void cluster_recipe_done(ClusterRecipe *r);
/** Append a chunk of len bytes (1 to CLUSTER_CHUNK_MAX). */
int cluster_recipe_add(ClusterRecipe *r, uint32_t len, const uint8_t sha[BS_SHA_LEN]);
/** The recipe as bs_objects.recipe keeps it: *ret (malloc'd), *ret_len bytes. */
int cluster_recipe_encode(const ClusterRecipe *r, uint8_t **ret, size_t *ret_len);
/** Read a recipe from the database: -EBADMSG unless well formed and adding up to size. */
int cluster_recipe_decode(const uint8_t *p, size_t n, uint64_t size, ClusterRecipe *ret);
/** The chunk that holds byte off (off < the content's size). */
size_t cluster_recipe_find(const ClusterRecipe *r, uint64_t off);

/* Cutting an upload into chunks as it is written to its spool file. */
typedef struct ClusterCutter {
        BsChunker chunker;
        bool cutting; /* false until the upload reaches CLUSTER_CHUNKED_MIN */
        uint64_t done; /* the bytes cut so far */
        ClusterRecipe recipe;
} ClusterCutter;

/**
 * Cut what fd holds up to written bytes (with final, all of it): nothing
 * while under CLUSTER_CHUNKED_MIN. Then c->cutting is set and c->recipe,
 * once final, lists every chunk.
 */
int cluster_cutter_feed(ClusterCutter *c, int fd, uint64_t written, bool final);
void cluster_cutter_done(ClusterCutter *c);

/** The object key of a chunk of account id (S3_KEY_MAX bytes). */
void cluster_chunk_key(const char *id, const uint8_t sha[BS_SHA_LEN], char *key);

/* A list of SHA-256s as one text parameter ("hex,hex,..."), for
 * "sha = ANY(SELECT decode(x, 'hex') FROM unnest(string_to_array($n, ',')) x)":
 * the size of n of them with the NUL, and appending one at *len. */
#define CLUSTER_HEX_LIST_SIZE(n) ((n) * (2 * BS_SHA_LEN + 1) + 1)
void cluster_hex_append(char *list, size_t *len, const uint8_t sha[BS_SHA_LEN]);

/** Decode a bytea column (text format, hex) into out: its length, or -EBADMSG when longer than max. */
ssize_t cluster_column_bytes(const PGresult *res, int row, int col, void *out, size_t max);
/** An integer column; 0 when NULL. */
int64_t cluster_column_int(const PGresult *res, int row, int col);
