/* session-rows.h - answers streamed as rows: PULL's changes, HISTORY's rows */
#pragma once

#include "session-core.h"

/*
 * A stream of rows in CHANGES-like frames (u32 req, u64 seq, u8 flags,
 * u32 count, rows), each at most half the peer's frame size: where the
 * rows come from and how they are written.
 */
typedef struct SessionRows {
        uint8_t type;
        /* The frames' seq and flags (besides BS_CHANGES_MORE): known once a row was read. */
        void (*header)(Session *s, uint64_t *seq, uint8_t *flags);
        size_t row_max;               /* the largest row on the wire */
        const char *what;             /* for the error */
        int (*next)(Session *s);      /* read the next row: 1, 0 at the end, -EINPROGRESS, or -errno */
        size_t (*size)(Session *s);   /* wire size of the row read */
        int (*encode)(Session *s);    /* append it to s->out */
        void (*done)(Session *s);     /* free the source */
} SessionRows;

/** One frame of a row stream; the stream ends (done) after the last. */
int session_fill_rows(Session *s, const SessionRows *rows);
