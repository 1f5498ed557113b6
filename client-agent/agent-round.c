/* agent-round.c - one sync round: pull what others changed, then push ours
 *
 * Called by the loop (agent-loop.c) and by --once; it never touches the
 * event loop itself: the loop looks at the queue afterwards.
 */
#include <errno.h>
#include <time.h>

#include "agent-pull.h"
#include "agent-push.h"
#include "agent-round.h"
#include "agent-session.h"
#include "agent.h"
#include "bs-log.h"

int agent_round(Agent *a) {
        int r = agent_connect(a);
        if (r < 0)
                return r;
        log_debug("round: at sequence %llu (server said %llu), %zu paths and %zu moves queued%s",
                  (unsigned long long) a->last_seq, (unsigned long long) a->conn->notify_seq, a->n_dirty,
                  a->n_moves, a->rescan_all ? ", full rescan" : "");
        /* Moves first: they carry no content, and records pulled next may
         * name places they renamed (another computer deleted d/f while we
         * moved d to e), which the pull follows once the move is recorded. */
        if (a->n_moves > 0 && !a->paused)
                r = agent_push_moves(a);
        if (r >= 0)
                r = agent_push_if_empty(a);
        for (int i = 0; r >= 0 && i < 8; i++) {
                a->again = false;
                /* Pull first: what others did is applied (or kept as a
                 * conflict) before anything of ours goes out. */
                r = agent_pull(a);
                if (r < 0)
                        break;
                r = agent_push(a);
                /* A NOTIFY read while waiting for our answers wakes no
                 * one later: its change is pulled now. */
                if (r < 0 || !(a->again || (a->conn && a->conn->notify_seq > a->last_seq)))
                        break;
        }
        if (r >= 0)
                a->last_sync_usec = realtime_usec();
        agent_update_status(a);
        return r;
}
