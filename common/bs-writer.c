/* bs-writer.c - a thread that writes small files and syncs big ones
 *
 * One queue under one mutex: the event loop appends, the thread takes
 * from the head, many files at a time, so the two threads meet (and
 * may wait for each other's lock, a system call each) once per batch
 * rather than once per file. Bytes waiting are bounded, so a disk slower
 * than the network slows the loop down instead of growing the queue.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-writer.h"

/* Files queued before the thread is woken: waking it for each one costs
 * both threads a context switch per file, more than a small file's write.
 * Whatever is queued is written at the latest when someone waits. */
#define WRITER_WAKE_JOBS 16
/* Files the thread takes from the queue at once, at most. */
#define WRITER_TAKE_JOBS 64
/* The thread's stack: it calls only a few system calls deep. */
#define WRITER_STACK (256u * 1024)

struct BsWriter {
        int dir_fd;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t wake; /* work or stop */
        pthread_cond_t done; /* a job finished */
        BsWrite *head, *tail;
        size_t busy;   /* handed over, not finished */
        size_t queued; /* of those, not yet taken by the thread */
        size_t bytes;  /* of those handed over, bytes */
        size_t max_bytes; /* then bs_writer_submit() waits */
        bool stop;
        /* Files to drop from the page cache and close (bs_writer_drop()),
         * taken whole by the thread between two jobs. */
        int *drop;
        size_t n_drop;
};

static void drop_files(int *fds, size_t n) {
        for (size_t i = 0; i < n; i++) {
                (void) posix_fadvise(fds[i], 0, 0, POSIX_FADV_DONTNEED);
                close(fds[i]);
        }
        free(fds);
}

/* Whether job's content is what the caller was told it is. */
static int check_content(const BsWrite *job) {
        uint8_t got[BS_SHA_LEN];
        if (!job->check_sha)
                return 0;
        int r = bs_sha_buf(job->buf, job->len, got);
        if (r < 0)
                return r;
        return memcmp(got, job->sha, BS_SHA_LEN) == 0 ? 0 : -EBADMSG;
}

void bs_write_now(int dir_fd, BsWrite *job) {
        job->fd = -1;
        job->name[0] = 0;
        int r = check_content(job);
        if (r < 0) {
                job->error = r;
                free(job->buf);
                job->buf = NULL;
                return;
        }
        /* Made with its mode where the umask allows: a system call less. */
        int fd = bs_tmpfile_at(dir_fd, job->name, sizeof(job->name), job->mode & 0777);
        r = fd;
        bool made = fd >= 0;
        if (made) {
                r = bs_write_sparse(fd, job->buf, job->len);
                if (r >= 0 && !bs_mode_kept(job->mode) && fchmod(fd, job->mode) < 0)
                        r = -errno;
                r = r ?: bs_set_mtime_fd(fd, job->mtime_ns);
                /* On the descriptor, in this thread: the caller's lookup of
                 * the name in a directory of thousands would cost more. */
                if (r >= 0 && job->want_stat && fstat(fd, &job->st) < 0)
                        r = -errno;
                if (r >= 0 && job->keep_fd && job->keep_read_only)
                        r = fd = bs_reopen_read_only(dir_fd, job->name, fd);
        }
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                if (made)
                        (void) unlinkat(dir_fd, job->name, 0);
                job->name[0] = 0;
        } else if (job->keep_fd)
                job->fd = fd;
        else
                close(fd);
        job->error = r < 0 ? r : 0;
        free(job->buf);
        job->buf = NULL;
}

/* The error is the job's: the descriptor is a duplicate of the upload's,
 * so the kernel reports a failed writeback to this sync only. */
static void sync_now(BsWrite *job) {
        int r = job->kind == BS_WRITE_SYNCFS ? syncfs(job->sync_fd) : fdatasync(job->sync_fd);
        job->error = r < 0 ? -errno : 0;
        close(job->sync_fd);
        job->sync_fd = -1;
}

static void *writer_main(void *userdata) {
        BsWriter *w = userdata;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->head && !w->drop && !w->stop)
                        pthread_cond_wait(&w->wake, &w->lock);
                if (w->drop) {
                        int *fds = w->drop;
                        size_t n = w->n_drop;
                        w->drop = NULL;
                        w->n_drop = 0;
                        pthread_mutex_unlock(&w->lock);
                        drop_files(fds, n);
                        pthread_mutex_lock(&w->lock);
                        continue;
                }
                if (!w->head)
                        break;
                BsWrite *first = w->head, *last = first;
                size_t n = 1, len = first->len;
                while (n < WRITER_TAKE_JOBS && last->next) {
                        last = last->next;
                        n++;
                        len += last->len;
                }
                w->head = last->next;
                if (!w->head)
                        w->tail = NULL;
                w->queued -= n;
                pthread_mutex_unlock(&w->lock);
                /* The jobs stay the caller's: none is touched after the
                 * count below says it is done. */
                for (BsWrite *job = first, *next;; job = next) {
                        next = job->next;
                        if (job->kind != BS_WRITE_FILE)
                                sync_now(job);
                        else
                                bs_write_now(w->dir_fd, job);
                        if (job == last)
                                break;
                }
                pthread_mutex_lock(&w->lock);
                for (BsWrite *job = first;; job = job->next) {
                        job->done = true;
                        if (job == last)
                                break;
                }
                w->busy -= n;
                w->bytes -= len;
                pthread_cond_broadcast(&w->done);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

int bs_writer_new(int dir_fd, size_t queue_bytes, BsWriter **ret) {
        BsWriter *w = calloc(1, sizeof(*w));
        pthread_attr_t attr;
        int r;

        if (!w)
                return -ENOMEM;
        w->dir_fd = dir_fd;
        w->max_bytes = queue_bytes;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        pthread_cond_init(&w->done, NULL);
        r = pthread_attr_init(&attr);
        if (r == 0) {
                (void) pthread_attr_setstacksize(&attr, WRITER_STACK);
                r = pthread_create(&w->thread, &attr, writer_main, w);
                pthread_attr_destroy(&attr);
        }
        if (r != 0) {
                pthread_cond_destroy(&w->done);
                pthread_cond_destroy(&w->wake);
                pthread_mutex_destroy(&w->lock);
                free(w);
                return -r;
        }
        *ret = w;
        return 0;
}

BsWriter *bs_writer_free(BsWriter *w) {
        if (!w)
                return NULL;
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        pthread_cond_destroy(&w->done);
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
}

void bs_writer_submit(BsWriter *w, BsWrite *job) {
        job->next = NULL;
        job->fd = -1;
        job->error = 0;
        job->done = false;
        job->name[0] = 0;
        pthread_mutex_lock(&w->lock);
        while (w->busy > 0 && w->bytes + job->len > w->max_bytes) {
                pthread_cond_signal(&w->wake);
                pthread_cond_wait(&w->done, &w->lock);
        }
        if (w->tail)
                w->tail->next = job;
        else
                w->head = job;
        w->tail = job;
        w->busy++;
        w->queued++;
        w->bytes += job->len;
        /* A sync is waited for soon: it starts now. */
        if (w->queued >= WRITER_WAKE_JOBS || job->kind != BS_WRITE_FILE)
                pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
}

void bs_writer_drop(BsWriter *w, int *fds, size_t n) {
        if (!w) {
                drop_files(fds, n);
                return;
        }
        pthread_mutex_lock(&w->lock);
        if (w->drop) {
                /* The last batch's are still there: those first, here. */
                drop_files(w->drop, w->n_drop);
        }
        w->drop = fds;
        w->n_drop = n;
        /* Now, not with the next burst's files: the pages are wanted again. */
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
}

void bs_writer_wait(BsWriter *w) {
        pthread_mutex_lock(&w->lock);
        if (w->queued > 0)
                pthread_cond_signal(&w->wake);
        while (w->busy > 0)
                pthread_cond_wait(&w->done, &w->lock);
        pthread_mutex_unlock(&w->lock);
}

bool bs_writer_done(BsWriter *w, const BsWrite *job) {
        pthread_mutex_lock(&w->lock);
        bool done = job->done;
        pthread_mutex_unlock(&w->lock);
        return done;
}

void bs_writer_wait_job(BsWriter *w, const BsWrite *job) {
        pthread_mutex_lock(&w->lock);
        if (!job->done)
                pthread_cond_signal(&w->wake);
        while (!job->done)
                pthread_cond_wait(&w->done, &w->lock);
        pthread_mutex_unlock(&w->lock);
}
