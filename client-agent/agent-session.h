/* agent-session.h - the agent's session with the server */
#pragma once

#include "agent.h"

/**
 * Connect, say HELLO and read WELCOME (registering or joining when
 * needed); nothing when connected. Returns 0 or a negative errno; a
 * refusal retrying cannot mend also sets a->stop.
 */
int agent_connect(Agent *a);
/** Drop the connection, logging why (why may be NULL: no log line). */
void agent_disconnect(Agent *a, const char *why);
/** bs_conn_io() for up to timeout_ms, feeding the watchdog meanwhile. */
int agent_io(Agent *a, int timeout_ms);
