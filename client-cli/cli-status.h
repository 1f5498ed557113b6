/* cli-status.h - `backupsync status`: how each agent of this user stands */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "bs-status.h"

/**
 * Print the status of the agents whose state directories are given (n > 0),
 * else of every [agent:NAME] configured in system_file or the user's file
 * and every agent under the user's state directory. Returns an exit
 * status (sysexits.h).
 */
int cli_status(char *const *state_dirs, size_t n, const char *system_file, bool json);

/** Is the agent that wrote s still running? Its pid alive and named so. */
bool cli_agent_running(const BsStatus *s);

/** Read STATE_DIR/status (bs_status_read()); -errno also when the directory cannot be opened. */
int cli_status_read(const char *state_dir, BsStatus *s);
