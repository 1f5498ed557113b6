/* session-transfer.h - uploads and the streamed answers to PULL and GET (session-transfer.c) */
#pragma once

#include "session-core.h"

/* Frame handlers: 0, SESSION_AGAIN, or -errno. */
int session_handle_put(Session *s, const BsMsg *m);
int session_handle_data(Session *s, const BsMsg *m);
int session_handle_copy(Session *s, const BsMsg *m);
int session_handle_put_end(Session *s, const BsMsg *m);
int session_start_pull(Session *s, const BsMsg *m);
int session_start_get(Session *s, const BsMsg *m);

/** One frame or chunk of a PULL or GET answer; 1 when others should run first. */
int session_transfer_fill(Session *s);
/** Open and read ahead the contents of the GETs queued behind the current one. */
void session_prefetch(Session *s);
/** Note that the frame at the head of the input was consumed. */
void session_prefetch_consumed(Session *s);
/** Drop any upload and stream in progress. */
void session_transfer_reset(Session *s);
