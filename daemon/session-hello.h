/* session-hello.h - HELLO: registering or joining an account (session-hello.c) */
#pragma once

#include "session-core.h"

/**
 * Answer HELLO (or the wrong frame first) with WELCOME or a closing
 * ERROR: 0, SESSION_AGAIN while the account opens, or -errno.
 */
int session_handle_hello(Session *s, const BsMsg *m);
