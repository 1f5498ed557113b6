/* agent-brake.h - the brake on mass deletions (max-delete) */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "agent-plan.h"
#include "agent.h"

/**
 * When deletions wait for a burst to end: the CLOCK_MONOTONIC time at
 * which a round must look at them again (brake_review() first); 0: none.
 */
uint64_t brake_due(const Agent *a);
/** Queue the held deletions to be planned again with this round's changes. */
void brake_review(Agent *a);
/** True when deletions are held and `backupsync confirm-deletes` left its answer. */
bool brake_confirm_waiting(Agent *a);
/**
 * Decide on the plan's deletions: within max-delete, or confirmed, they
 * stay (0); else they leave the plan and are held (1). -errno on errors.
 */
int brake_apply(Agent *a, Plan *p);
