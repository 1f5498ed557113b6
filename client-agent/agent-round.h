/* agent-round.h - one sync round: pull, apply, push */
#pragma once

#include "agent.h"

/**
 * Connect if needed, pull and apply other computers' changes, then send
 * ours (again while a refused change asks for it). Returns 0, or a
 * negative errno: connection trouble, or the state that cannot be
 * written (a->state_error). A paused tree is not an error: a->paused.
 */
int agent_round(Agent *a);
