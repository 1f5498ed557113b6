/* agent-push.h - send the queued local changes */
#pragma once

#include "agent.h"

/**
 * Turn the queued paths and moves into requests, send them pipelined and
 * record each ACK. A tree found empty or gone pauses instead (a->paused)
 * and returns 0. Returns 0 or a negative errno.
 */
int agent_push(Agent *a);
/**
 * The first comparison, when it is due and both the tree and what was
 * synced from it are empty (a join): done before the pull, it lists one
 * directory, and what the pull then places is known to be its own. After
 * the pull it would list and compare everything the pull brought.
 */
int agent_push_if_empty(Agent *a);
/** Send the queued moves alone (MOVE, or plain changes when no longer true). */
int agent_push_moves(Agent *a);
