/* agent-loop.h - backupsync-agent's event loop */
#pragma once

#include "agent.h"

/**
 * Open the state, watch the tree, connect and sync until told to stop
 * (SIGTERM, SIGINT), or with --once until in sync. Returns why it
 * stopped: AGENT_STOP_NONE when done as asked.
 */
AgentStop agent_run(Agent *a);
