/* offline.h - what backupsyncd does to a stopped server's storage: --verify, --prune */
#pragma once

#include "account.h"

/** Check every account below storage (hashing every file) and print each difference. Returns an exit status. */
int offline_verify(const char *storage);

/** Prune every account below storage at once and print what was freed. Returns an exit status. */
int offline_prune(const char *storage, const AccountRetention *ret);
