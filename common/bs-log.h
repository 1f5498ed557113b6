/* bs-log.h - one logging interface: journald with fields, or plain stderr
 *
 * Under systemd (stderr connected to the journal, $JOURNAL_STREAM) every
 * line becomes a structured entry with MESSAGE_ID and BACKUPSYNC_* fields;
 * run by hand, the same events are plain lines on stderr.
 */
#pragma once

#include <stdarg.h>
#include <syslog.h>

/* MESSAGE_IDs of the events a person may want to find (see the catalog). */
#define BS_MID_STARTED      "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c01"
#define BS_MID_REGISTERED   "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c02"
#define BS_MID_JOINED       "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c03"
#define BS_MID_UPLOADED     "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c04"
#define BS_MID_DOWNLOADED   "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c05"
#define BS_MID_DELETED      "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c06"
#define BS_MID_MOVED        "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c07"
#define BS_MID_CONFLICT     "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c08"
#define BS_MID_REJECTED     "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c09"
#define BS_MID_CONN_LOST    "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0a"
#define BS_MID_RESCAN       "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0b"
#define BS_MID_WATCH_LIMIT  "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0c"
#define BS_MID_SYNCED       "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0d"
#define BS_MID_AUTH_FAILED  "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0e"
#define BS_MID_CHANGED      "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c0f"
#define BS_MID_UNSEEN       "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c10"
#define BS_MID_TLS_KEY      "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c11"
#define BS_MID_TLS_PINNED   "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c12"
#define BS_MID_TLS_MISMATCH "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c13"
#define BS_MID_DELETES_HELD "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c14"
#define BS_MID_DELETES_LET_GO "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c15"

/* Extra structured fields of one event; any may be NULL. */
typedef struct BsLogCtx {
        const char *message_id;
        const char *account;
        const char *path;
        const char *device;
        const char *fingerprint; /* a server's TLS key, "SHA256:..." */
} BsLogCtx;

/** Pick the journal or stderr for this process; ident prefixes stderr lines. */
void bs_log_open(const char *ident);
/** Drop messages less important than prio (LOG_DEBUG shows everything). */
void bs_log_set_max_level(int prio);
int bs_log_get_max_level(void);
/** Log one event; errno is preserved so "%m" works. */
void bs_logf(int prio, const BsLogCtx *ctx, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void bs_logv(int prio, const BsLogCtx *ctx, const char *fmt, va_list ap);

#define log_debug(...) bs_logf(LOG_DEBUG, NULL, __VA_ARGS__)
#define log_info(...) bs_logf(LOG_INFO, NULL, __VA_ARGS__)
#define log_notice(...) bs_logf(LOG_NOTICE, NULL, __VA_ARGS__)
#define log_warning(...) bs_logf(LOG_WARNING, NULL, __VA_ARGS__)
#define log_error(...) bs_logf(LOG_ERR, NULL, __VA_ARGS__)
/* An event with fields: log_event(LOG_INFO, BS_MID_UPLOADED, acct, path, "..."). */
#define log_event(prio, mid, acct, p, ...) \
        bs_logf(prio, &(BsLogCtx) { .message_id = (mid), .account = (acct), .path = (p) }, __VA_ARGS__)
