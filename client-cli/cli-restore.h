/* cli-restore.h - `backupsync restore` */
#pragma once

#include <stdint.h>
#include <time.h>

#include "cli-account.h"

typedef struct CliRestoreWhen {
        time_t at;        /* --at, or 0 */
        uint64_t version; /* --version, or 0 */
} CliRestoreWhen;

/**
 * Bring back each of paths (account paths; "" is the whole account) as it
 * was at when, under to (NULL: into the synced directory, as a new
 * change). Returns an exit status.
 */
int cli_restore(const CliAccount *acc, char *const *paths, size_t n, const CliRestoreWhen *when, const char *to);
