/* session.h - one client connection: the socket, the passes over its frames, their dispatch
 *
 * What the manager (server.c) calls: it accepts a connection into a
 * Session and may ask it to follow a new idle timeout or send NOTIFY.
 * The session tells the manager of its events through the SessionHost it
 * was given (session-host.h), never by calling it.
 */
#pragma once

#include <sys/socket.h>

#include "session-core.h"
#include "session-host.h"

/**
 * Take over an accepted, non-blocking socket, linked into host's list.
 * host is borrowed: the manager keeps it for as long as any session lives.
 */
int session_new(Session **ret, SessionHost *host, int fd, const struct sockaddr *peer, socklen_t peer_len);
/** Close the connection and release its account. Returns NULL. */
Session *session_free(Session *s);
static inline void session_freep(Session **s) { if (*s) session_free(*s); }

/** Follow the server's current idle timeout (after a reload): arm, move or stop the timer. */
int session_rearm_idle_timer(Session *s);
/** Queue NOTIFY seq (called for the other sessions of an account). */
void session_notify(Session *s, uint64_t seq);
