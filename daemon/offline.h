/* offline.h - what backupsyncd does to a stopped server's storage: --verify, --prune */
#pragma once

#include "account.h"

/** Check every account of b (hashing every file, with hash) and print each difference. Returns an exit status. */
int offline_verify(Backend *b, bool hash);

/** Prune every account of b at once and print what was freed. Returns an exit status. */
int offline_prune(Backend *b, const AccountRetention *ret);
