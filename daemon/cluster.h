/* cluster.h - the cluster backend: metadata in PostgreSQL, content in an S3-compatible store
 *
 * Any number of backupsyncd nodes share one PostgreSQL database (the
 * schema of cluster-schema.sql, set up by the first node that starts) and
 * one bucket. Every account's changes are applied in its one total order
 * (the row lock of its row in bs_accounts), a batch in one transaction;
 * contents are objects named by their SHA-256, stored before the
 * transaction that names them commits. Uploads wait in a node-local spool
 * directory until their batch commits. Nodes tell each other of new
 * changes with NOTIFY (see docs/backend.md).
 */
#pragma once

#include <systemd/sd-event.h>

#include "account.h"
#include "s3.h"

typedef struct ClusterConfig {
        const char *metadata; /* libpq connection string */
        S3Config content;     /* the bucket and how to reach it */
        const char *spool;    /* a directory on this node for uploads in progress */
} ClusterConfig;

/**
 * The cluster backend on event: connects and sets up the schema in the
 * background (see cluster_backend_wait()). The configuration is copied.
 */
int cluster_backend_new(sd_event *event, const ClusterConfig *c, Backend **ret);

/**
 * 0 once the database answers and its schema is in place, -EINPROGRESS
 * while not yet (w is told), or why it cannot be set up.
 */
int cluster_backend_wait(Backend *b, const AccountWaker *w);

typedef void (*cluster_verify_fn)(void *userdata, const char *account, const char *path, const char *problem);

/**
 * Check that every content the metadata names is an object in the store,
 * recorded as stored, of its size and, with hash, its SHA-256; report
 * each problem (with one path that names it). Runs event until done: for
 * backupsyncd --verify, not a serving server. *ret_checked counts the
 * contents. Returns the number of problems, or a negative errno.
 */
int cluster_verify(Backend *b, sd_event *event, bool hash, cluster_verify_fn report, void *userdata,
                   unsigned *ret_checked);

typedef void (*cluster_migrate_fn)(void *userdata, const char *account, const char *what);

/**
 * Copy every account of the single-machine storage (its server stopped)
 * into the cluster: contents, then all metadata in one transaction per
 * account, then counted on both sides; an account already there (same
 * key) is passed over, one whose ID another account holds is refused.
 * Runs event until done; say tells what became of each account.
 * *ret_moved counts the accounts moved. Returns the number that could
 * not be, or a negative errno.
 */
int cluster_migrate(Backend *b, sd_event *event, const char *storage, cluster_migrate_fn say, void *userdata,
                    unsigned *ret_moved);

/** The object key of a content of account id (S3_KEY_MAX bytes). */
void cluster_object_key(const char *id, const uint8_t sha[BS_SHA_LEN], char *key);
