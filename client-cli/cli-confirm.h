/* cli-confirm.h - `backupsync confirm-deletes`: let held deletions go */
#pragma once

#include <stddef.h>

/**
 * Let go the deletions held by the agents of the given state directories
 * (n > 0), else by the one agent of this user that holds some. Waits for
 * the agent's answer. Returns an exit status (sysexits.h).
 */
int cli_confirm_deletes(char *const *state_dirs, size_t n);
