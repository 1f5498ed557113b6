/* offline.h - what backupsyncd does to a stopped server's storage: --verify, --prune */
#pragma once

#include <systemd/sd-event.h>

#include "account.h"

/** Check every account of b (hashing every file, with hash) and print each difference. Returns an exit status. */
int offline_verify(Backend *b, bool hash);

/**
 * Prune every account of b at once and print what was freed; a backend
 * that answers later is waited for on event. Returns an exit status.
 */
int offline_prune(Backend *b, sd_event *event, const AccountRetention *ret);
