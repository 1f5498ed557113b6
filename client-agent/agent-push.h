/* agent-push.h - send the queued local changes */
#pragma once

#include "agent.h"

/**
 * Turn the queued paths and moves into requests, send them pipelined and
 * record each ACK. A tree found empty or gone pauses instead (a->paused)
 * and returns 0. Returns 0 or a negative errno.
 */
int agent_push(Agent *a);
/** Send the queued moves alone (MOVE, or plain changes when no longer true). */
int agent_push_moves(Agent *a);
