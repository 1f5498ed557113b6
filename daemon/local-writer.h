/* local-writer.h - a thread that writes small uploads into tmp/
 *
 * Creating and writing a small file costs the kernel more than the
 * event loop's own work on it (TLS, SHA-256, SQLite). An account hands
 * the files of a burst to its writer and goes on reading the next ones;
 * local_flush_pending() waits for them before the batch's sync. A big
 * upload still arriving has its written part synced here, piece by
 * piece, so the sync at its commit finds little left to do. The writer
 * only creates, writes, syncs and closes files under the fd it was
 * given, and never logs.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct LocalWriter LocalWriter;

typedef enum LocalJob {
        LOCAL_JOB_WRITE, /* create a file in tmp/ with buf */
        LOCAL_JOB_SYNC,  /* fdatasync() and close sync_fd */
} LocalJob;

/* One file to write (or sync): its content, the mode and mtime it gets,
 * and what came of it. */
typedef struct LocalWrite {
        LocalJob kind;
        int sync_fd;  /* LOCAL_JOB_SYNC: owned, closed once synced */
        uint8_t *buf; /* owned; freed once written */
        size_t len;
        mode_t mode;
        int64_t mtime_ns;
        bool keep_fd; /* leave it open in fd, for an fdatasync() and to drop it from the cache */
        /* Set by the writer, read after local_writer_wait(): */
        char name[64]; /* the temporary file, "" if none is left */
        int fd;        /* open when keep_fd and no error, else -1 */
        int error;     /* 0 or a negative errno */
        bool done;     /* under the writer's lock: see local_writer_done() */
        struct LocalWrite *next;
} LocalWrite;

/** Start a writer for files in dir_fd (not owned). */
int local_writer_new(int dir_fd, LocalWriter **ret);
/** Wait for the files handed over, then stop the thread. */
LocalWriter *local_writer_free(LocalWriter *w);
/**
 * Hand w a file to write (ownership of job stays with the caller, who
 * must not touch it before local_writer_wait()). Blocks while more than
 * a bounded number of bytes wait to be written.
 */
void local_writer_submit(LocalWriter *w, LocalWrite *job);
/** Wait until every file handed over is written (or failed). */
void local_writer_wait(LocalWriter *w);
/** Whether job, handed over, is done: its results may be read. */
bool local_writer_done(LocalWriter *w, const LocalWrite *job);
/** Wait until job, handed over, is done. */
void local_writer_wait_job(LocalWriter *w, const LocalWrite *job);
/**
 * Drop n files whose data is on disk from the page cache and close them,
 * in the writer's thread (w NULL: here); fds (malloc()ed) is taken over.
 */
void local_writer_drop(LocalWriter *w, int *fds, size_t n);
/** Write job at once in the calling thread (no writer, or none could start). */
void local_write_now(int dir_fd, LocalWrite *job);
