/* bs-log.c - one logging interface: journald with fields, or plain stderr */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <systemd/sd-journal.h>

#include "bs-log.h"

static const char *log_ident = "backupsync";
static bool log_to_journal;
static int log_max = LOG_INFO;

/* stderr is the journal when its device:inode is the one systemd names. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void bs_log_open(const char *ident) {
        log_ident = ident;
        log_to_journal = stderr_is_journal();
        const char *lvl = getenv("BACKUPSYNC_LOG_LEVEL");
        if (lvl && strcmp(lvl, "debug") == 0)
                log_max = LOG_DEBUG;
}

void bs_log_set_max_level(int prio) {
        log_max = prio;
}

int bs_log_get_max_level(void) {
        return log_max;
}

void bs_logv(int prio, const BsLogCtx *ctx, const char *fmt, va_list ap) {
        int saved = errno;
        char msg[2048];

        if (prio > log_max)
                return;
        errno = saved;
        vsnprintf(msg, sizeof(msg), fmt, ap);

        if (log_to_journal) {
                char f[9][4200];
                struct iovec iov[9];
                int n = 0;
                snprintf(f[n++], sizeof(f[0]), "MESSAGE=%s", msg);
                snprintf(f[n++], sizeof(f[0]), "PRIORITY=%i", prio);
                snprintf(f[n++], sizeof(f[0]), "SYSLOG_IDENTIFIER=%s", log_ident);
                if (ctx && ctx->message_id)
                        snprintf(f[n++], sizeof(f[0]), "MESSAGE_ID=%s", ctx->message_id);
                if (ctx && ctx->account)
                        snprintf(f[n++], sizeof(f[0]), "BACKUPSYNC_ACCOUNT=%s", ctx->account);
                if (ctx && ctx->path)
                        snprintf(f[n++], sizeof(f[0]), "BACKUPSYNC_PATH=%s", ctx->path);
                if (ctx && ctx->device)
                        snprintf(f[n++], sizeof(f[0]), "BACKUPSYNC_DEVICE=%s", ctx->device);
                if (ctx && ctx->fingerprint)
                        snprintf(f[n++], sizeof(f[0]), "BACKUPSYNC_FINGERPRINT=%s", ctx->fingerprint);
                for (int i = 0; i < n; i++)
                        iov[i] = (struct iovec) { .iov_base = f[i], .iov_len = strlen(f[i]) };
                sd_journal_sendv(iov, n);
        } else {
                fprintf(stderr, "%s: %s\n", log_ident, msg);
        }
        errno = saved;
}

void bs_logf(int prio, const BsLogCtx *ctx, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bs_logv(prio, ctx, fmt, ap);
        va_end(ap);
}
