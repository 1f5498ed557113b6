/* agent-pull.h - fetch other computers' changes and apply them to the tree */
#pragma once

#include "agent.h"

/**
 * Pull the records after last_seq and apply them; a comparison of the
 * whole tree follows when one asked for it. Returns 0 or a negative errno.
 */
int agent_pull(Agent *a);
