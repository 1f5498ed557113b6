/* session-history.h - HISTORY and its streamed answer (session-history.c) */
#pragma once

#include "session-core.h"

/** Begin answering HISTORY: 0, SESSION_AGAIN, or -errno. */
int session_start_history(Session *s, const BsMsg *m);
/** One HISTORY_ROWS frame. */
int session_history_fill(Session *s);
