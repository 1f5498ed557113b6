/* session-change.h - the changes that are one frame each (session-change.c) */
#pragma once

#include "session-core.h"

/** ATTR, MKDIR, SYMLINK, DELETE or MOVE, answered now or at commit: 0 or -errno. */
int session_handle_change(Session *s, const BsMsg *m);
