/* bs-status.c - an agent's live status file */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-fs.h"

#include "bs-macro.h"
#include "bs-status.h"

static const char *const state_names[_BS_SYNC_MAX] = {
        [BS_SYNC_UNKNOWN] = "unknown",  [BS_SYNC_IN_SYNC] = "in sync", [BS_SYNC_SYNCING] = "syncing",
        [BS_SYNC_OFFLINE] = "offline",  [BS_SYNC_PAUSED] = "paused",   [BS_SYNC_ERROR] = "error",
        [BS_SYNC_STOPPED] = "stopped",  [BS_SYNC_HOLDING] = "holding deletions",
};

const char *bs_sync_state_to_string(BsSyncState s) {
        return s >= 0 && s < _BS_SYNC_MAX ? state_names[s] : NULL;
}

/* A value on one line: newlines and control bytes become '?'. */
static void put_text(FILE *f, const char *key, const char *v) {
        fprintf(f, "%s=", key);
        for (const unsigned char *p = (const unsigned char *) v; *p; p++)
                fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
        fputc('\n', f);
}

/* The file's text, in a memory stream: written whole or not at all. */
static char *format(const BsStatus *s, size_t *len) {
        char *buf = NULL;
        FILE *f = open_memstream(&buf, len);
        if (!f)
                return NULL;
        fprintf(f, "PID=%ld\nSTATE=%d\n", (long) s->pid, (int) s->state);
        put_text(f, "DIR", s->dir);
        put_text(f, "SERVER", s->server);
        put_text(f, "PORT", s->port);
        put_text(f, "ACCOUNT", s->account);
        put_text(f, "REASON", s->reason);
        put_text(f, "PROGRESS", s->progress_what);
        fprintf(f,
                "UPDATED_USEC=%" PRIu64 "\nLAST_SYNC_USEC=%" PRIu64 "\nOFFLINE_SINCE_USEC=%" PRIu64 "\n"
                "PENDING=%" PRIu64 "\nWATCHED=%" PRIu64 "\nUPLOADED=%" PRIu64 "\nDOWNLOADED=%" PRIu64
                "\nCONFLICTS=%" PRIu64 "\nCONFLICTS_PRESENT=%" PRIu64 "\nPROGRESS_DONE=%" PRIu64
                "\nPROGRESS_TOTAL=%" PRIu64 "\nPROGRESS_BYTES=%" PRIu64 "\nHELD_DELETES=%" PRIu64 "\n",
                s->updated_usec, s->last_sync_usec, s->offline_since_usec, s->pending, s->watched, s->uploaded,
                s->downloaded, s->conflicts, s->conflicts_present, s->progress_done, s->progress_total,
                s->progress_bytes, s->held_deletes);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

int bs_status_write(int dir_fd, const BsStatus *s) {
        static const char tmp[] = BS_STATUS_FILE ".tmp";
        size_t len;
        _cleanup_(freep) char *text = format(s, &len);
        if (!text)
                return -ENOMEM;
        int fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        int r = fd < 0 ? -errno : bs_write_all(fd, text, len);
        if (fd >= 0 && close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && renameat(dir_fd, tmp, dir_fd, BS_STATUS_FILE) < 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(dir_fd, tmp, 0);
        if (r == -ENOSPC || r == -EDQUOT) {
                /* A full file system is when the status matters most: write
                 * over the old file, whose block is already there (a reader
                 * may see it torn for a moment and read it again). */
                fd = openat(dir_fd, BS_STATUS_FILE, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
                if (fd < 0)
                        return r;
                r = pwrite(fd, text, len, 0) == (ssize_t) len && ftruncate(fd, (off_t) len) == 0 ? 0 : -errno;
                close(fd);
        }
        return r;
}

static int parse_u64(const char *v, uint64_t *out) {
        char *end;
        if (*v < '0' || *v > '9')
                return -EBADMSG;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || *end)
                return -EBADMSG;
        *out = x;
        return 0;
}

/* Copy a text value, refusing one that does not fit. */
static int take_text(char *dst, size_t size, const char *v) {
        size_t n = strlen(v);
        if (n >= size)
                return -EBADMSG;
        memcpy(dst, v, n + 1);
        return 0;
}

static int parse_line(BsStatus *s, char *line) {
        char *eq = strchr(line, '=');
        uint64_t x;
        if (!eq)
                return -EBADMSG;
        *eq = 0;
        const char *k = line, *v = eq + 1;
        if (strcmp(k, "PID") == 0) {
                if (parse_u64(v, &x) < 0 || x == 0 || x > INT32_MAX)
                        return -EBADMSG;
                s->pid = (pid_t) x;
        } else if (strcmp(k, "STATE") == 0) {
                if (parse_u64(v, &x) < 0 || x >= _BS_SYNC_MAX)
                        return -EBADMSG;
                s->state = (BsSyncState) x;
        } else if (strcmp(k, "DIR") == 0)
                return take_text(s->dir, sizeof(s->dir), v);
        else if (strcmp(k, "SERVER") == 0)
                return take_text(s->server, sizeof(s->server), v);
        else if (strcmp(k, "PORT") == 0)
                return take_text(s->port, sizeof(s->port), v);
        else if (strcmp(k, "ACCOUNT") == 0)
                return take_text(s->account, sizeof(s->account), v);
        else if (strcmp(k, "REASON") == 0)
                return take_text(s->reason, sizeof(s->reason), v);
        else if (strcmp(k, "PROGRESS") == 0)
                return take_text(s->progress_what, sizeof(s->progress_what), v);
        else {
                static const struct {
                        const char *key;
                        size_t off;
                } nums[] = {
                        { "UPDATED_USEC", offsetof(BsStatus, updated_usec) },
                        { "LAST_SYNC_USEC", offsetof(BsStatus, last_sync_usec) },
                        { "OFFLINE_SINCE_USEC", offsetof(BsStatus, offline_since_usec) },
                        { "PENDING", offsetof(BsStatus, pending) },
                        { "WATCHED", offsetof(BsStatus, watched) },
                        { "UPLOADED", offsetof(BsStatus, uploaded) },
                        { "DOWNLOADED", offsetof(BsStatus, downloaded) },
                        { "CONFLICTS", offsetof(BsStatus, conflicts) },
                        { "CONFLICTS_PRESENT", offsetof(BsStatus, conflicts_present) },
                        { "PROGRESS_DONE", offsetof(BsStatus, progress_done) },
                        { "PROGRESS_TOTAL", offsetof(BsStatus, progress_total) },
                        { "PROGRESS_BYTES", offsetof(BsStatus, progress_bytes) },
                        { "HELD_DELETES", offsetof(BsStatus, held_deletes) },
                };
                for (size_t i = 0; i < ELEMENTSOF(nums); i++)
                        if (strcmp(k, nums[i].key) == 0) {
                                if (parse_u64(v, &x) < 0)
                                        return -EBADMSG;
                                memcpy((char *) s + nums[i].off, &x, sizeof(x));
                                return 0;
                        }
        }
        return 0; /* unknown keys: a newer agent's */
}

int bs_status_read(int dir_fd, BsStatus *s) {
        int fd = openat(dir_fd, BS_STATUS_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return -errno;
        FILE *f = fdopen(fd, "r");
        if (!f) {
                int r = -errno;
                close(fd);
                return r;
        }
        char line[BS_STATUS_TEXT_MAX + 64];
        int r = 0;
        *s = (BsStatus) {};
        while (r == 0 && fgets(line, sizeof(line), f)) {
                size_t n = strlen(line);
                if (n == 0 || line[n - 1] != '\n') {
                        r = -EBADMSG; /* longer than any line we write, or cut short */
                        break;
                }
                line[n - 1] = 0;
                r = parse_line(s, line);
        }
        if (r == 0 && ferror(f))
                r = -EIO;
        if (r == 0 && s->pid == 0)
                r = -EBADMSG;
        fclose(f);
        return r;
}

int bs_line_file_write(int dir_fd, const char *name, const char *line) {
        char have[256], text[258];
        if (bs_line_file_read(dir_fd, name, have, sizeof(have)) == 0 && strcmp(have, line) == 0)
                return 0;
        int n = snprintf(text, sizeof(text), "%s\n", line);
        if (n < 0 || n >= (int) sizeof(text))
                return -E2BIG;
        return bs_write_file_atomic(dir_fd, name, text, (size_t) n);
}

int bs_line_file_read(int dir_fd, const char *name, char *buf, size_t size) {
        int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return -errno;
        ssize_t n = bs_pread_full(fd, buf, size, 0);
        close(fd);
        if (n < 0)
                return (int) n;
        if ((size_t) n == size)
                return -EBADMSG; /* longer than any line we write */
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
                n--;
        buf[n] = 0;
        return memchr(buf, '\n', (size_t) n) || memchr(buf, 0, (size_t) n) ? -EBADMSG : 0;
}

int bs_token_file_write(int dir_fd, const char *token) {
        return bs_line_file_write(dir_fd, BS_TOKEN_FILE, token);
}

int bs_token_file_read(int dir_fd, char *token) {
        char buf[BS_TOKEN_MAX + 2];
        BsToken t;
        int r = bs_line_file_read(dir_fd, BS_TOKEN_FILE, buf, sizeof(buf));
        if (r < 0)
                return r;
        if (bs_token_parse(buf, strlen(buf), &t) < 0)
                return -EBADMSG;
        bs_token_format(&t, token);
        return 0;
}
