/* bs-writer.h - a thread that writes small files into a directory
 *
 * Creating and writing a small file costs the kernel more than an event
 * loop's own work on it (TLS, SHA-256, SQLite). The server's account
 * hands the uploads of a burst to its writer, the agent the downloads of
 * a pull, and each goes on reading the next ones, then waits for them
 * before its batch's sync. A big upload still arriving has its written
 * part synced here, piece by piece, so the sync at its commit finds
 * little left to do. The writer only checks, creates, writes, syncs and
 * closes files under the fd it was given, and never logs.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "bs-proto.h"

typedef struct BsWriter BsWriter;

typedef enum BsWriteKind {
        BS_WRITE_FILE, /* create a file in the directory with buf */
        BS_WRITE_SYNC,  /* fdatasync() and close sync_fd */
        BS_WRITE_SYNCFS, /* syncfs() of sync_fd's file system, then close it */
} BsWriteKind;

/* One file to write (or sync): its content, the mode and mtime it gets,
 * and what came of it. */
typedef struct BsWrite {
        BsWriteKind kind;
        int sync_fd;  /* BS_WRITE_SYNC, BS_WRITE_SYNCFS: owned, closed once synced */
        uint8_t *buf; /* owned; freed once written */
        size_t len;
        mode_t mode;
        int64_t mtime_ns;
        bool keep_fd; /* leave it open in fd, for an fdatasync() and to drop it from the cache */
        bool keep_read_only; /* and then read-only (see bs_reopen_read_only()) */
        bool want_stat; /* fill st: the caller records the file without looking it up by name */
        /* check_sha: buf's SHA-256 must be sha, or nothing is written
         * (error -EBADMSG); the hash then costs this thread, not the caller's. */
        bool check_sha;
        uint8_t sha[BS_SHA_LEN];
        /* Set by the writer, read after bs_writer_wait(): */
        char name[64]; /* the temporary file, "" if none is left */
        int fd;        /* open when keep_fd and no error, else -1 */
        struct stat st; /* want_stat: the file as written, mode and mtime set */
        int error;     /* 0 or a negative errno */
        bool done;     /* under the writer's lock: see bs_writer_done() */
        struct BsWrite *next;
} BsWrite;

/**
 * Start a writer for files in dir_fd (not owned), which holds at most
 * queue_bytes of files handed over and not yet written (then
 * bs_writer_submit() waits).
 */
int bs_writer_new(int dir_fd, size_t queue_bytes, BsWriter **ret);
/** Wait for the files handed over, then stop the thread. */
BsWriter *bs_writer_free(BsWriter *w);
/**
 * Hand w a file to write (ownership of job stays with the caller, who
 * must not touch it before bs_writer_wait()). Blocks while more than
 * a bounded number of bytes wait to be written.
 */
void bs_writer_submit(BsWriter *w, BsWrite *job);
/** Wait until every file handed over is written (or failed). */
void bs_writer_wait(BsWriter *w);
/** Whether job, handed over, is done: its results may be read. */
bool bs_writer_done(BsWriter *w, const BsWrite *job);
/** Wait until job, handed over, is done. */
void bs_writer_wait_job(BsWriter *w, const BsWrite *job);
/**
 * Drop n files whose data is on disk from the page cache and close them,
 * in the writer's thread (w NULL: here); fds (malloc()ed) is taken over.
 */
void bs_writer_drop(BsWriter *w, int *fds, size_t n);
/** Write job at once in the calling thread (no writer, or none could start). */
void bs_write_now(int dir_fd, BsWrite *job);
