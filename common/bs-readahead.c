/* bs-readahead.c - start reading many small files at once, with io_uring
 *
 * liburing rather than the raw system calls: the ring's memory layout
 * and its barriers are easy to get subtly wrong by hand.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdlib.h>

#include "bs-macro.h"
#include "bs-readahead.h"

#define RING_ENTRIES 256

struct BsReadahead {
        struct io_uring ring;
        bool dead;         /* the ring failed once: file by file from then on */
        unsigned queued;   /* in the submission queue */
        unsigned inflight; /* submitted, completion not yet seen */
};

/* Where every read lands, never looked at: the kernel may write it from
 * several reads at once. Static, so a read still under way when its ring
 * is freed never writes into freed memory. */
static uint8_t sink[BS_READAHEAD_MAX];

int bs_readahead_new(BsReadahead **ret) {
        BsReadahead *ra = calloc(1, sizeof(*ra));
        if (!ra)
                return -ENOMEM;
        /* Completions are taken when the thread next enters the kernel, not
         * by interrupting it: nobody waits for them. Every queued read is
         * submitted, even after one that fails (see bs_readahead_submit()). */
        int r = io_uring_queue_init(RING_ENTRIES, &ra->ring, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL);
        if (r < 0) {
                free(ra);
                return r;
        }
        *ret = ra;
        return 0;
}

BsReadahead *bs_readahead_free(BsReadahead *ra) {
        if (!ra)
                return NULL;
        if (!ra->dead)
                io_uring_queue_exit(&ra->ring);
        free(ra);
        return NULL;
}

/* Forget the reads that finished: their outcome does not matter. */
static void reap(BsReadahead *ra) {
        unsigned n = io_uring_cq_ready(&ra->ring);
        io_uring_cq_advance(&ra->ring, n);
        ra->inflight -= MIN(n, ra->inflight);
}

void bs_readahead(BsReadahead *ra, int fd, uint64_t len) {
        if (len == 0)
                return;
        if (ra && !ra->dead && len <= BS_READAHEAD_MAX) {
                reap(ra);
                /* No more in flight than the completion queue holds. */
                struct io_uring_sqe *sqe = ra->queued + ra->inflight < *ra->ring.cq.kring_entries
                                                   ? io_uring_get_sqe(&ra->ring)
                                                   : NULL;
                if (sqe) {
                        io_uring_prep_read(sqe, fd, sink, (unsigned) len, 0);
                        ra->queued++;
                        return;
                }
        }
        (void) posix_fadvise(fd, 0, (off_t) len, POSIX_FADV_WILLNEED);
}

void bs_readahead_submit(BsReadahead *ra) {
        if (!ra || ra->dead || ra->queued == 0)
                return;
        int r = io_uring_submit(&ra->ring);
        if (r < 0 || (unsigned) r < ra->queued) {
                /* A read left in the ring would be submitted with the next
                 * batch, when its fd may name another file, or a socket:
                 * the ring goes, and with it what it holds. */
                io_uring_queue_exit(&ra->ring);
                ra->dead = true;
                return;
        }
        ra->inflight += (unsigned) r;
        ra->queued = 0;
        reap(ra);
}
