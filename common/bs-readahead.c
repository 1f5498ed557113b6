/* bs-readahead.c - start reading many small files at once, with io_uring
 *
 * liburing rather than the raw system calls: the ring's memory layout
 * and its barriers are easy to get subtly wrong by hand. A read into the
 * sink is nobody's; a read into a BsReadBuf names it in its user_data,
 * and its buffer is not freed while the kernel may still write to it.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "bs-macro.h"
#include "bs-readahead.h"

#define RING_ENTRIES 256

/* Linux 6.14; older kernels refuse the read with EOPNOTSUPP. */
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080
#endif

struct BsReadahead {
        struct io_uring ring;
        bool dead;         /* the ring failed once: file by file from then on */
        bool no_uncached;  /* RWF_DONTCACHE refused once: not asked again */
        unsigned queued;   /* in the submission queue */
        unsigned inflight; /* submitted, completion not yet seen */
        /* The buffers among the queued reads, and each one's place in the
         * queue: those a failed submit left behind are told so. */
        BsReadBuf *bufs[RING_ENTRIES];
        unsigned buf_at[RING_ENTRIES];
        unsigned n_bufs;
};

/* Where every read lands, never looked at: the kernel may write it from
 * several reads at once. Static, so a read still under way when its ring
 * is freed never writes into freed memory. */
static uint8_t sink[BS_READAHEAD_MAX];

/* Take the reads that finished: a buffer's outcome is its own, the
 * sink's does not matter. */
static void reap(BsReadahead *ra) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ra->ring, head, cqe) {
                BsReadBuf *b = io_uring_cqe_get_data(cqe);
                if (b) {
                        b->result = cqe->res;
                        b->pending = false;
                        if (cqe->res == -EOPNOTSUPP || cqe->res == -EINVAL)
                                ra->no_uncached = true;
                }
                n++;
        }
        io_uring_cq_advance(&ra->ring, n);
        ra->inflight -= MIN(n, ra->inflight);
}

/* The next entry of the submission queue, while the completion queue
 * would hold every read in flight; else NULL. */
static struct io_uring_sqe *next_sqe(BsReadahead *ra) {
        reap(ra);
        return ra->queued + ra->inflight < *ra->ring.cq.kring_entries ? io_uring_get_sqe(&ra->ring) : NULL;
}

/* Wait until the kernel has finished every read it was given. */
static void drain(BsReadahead *ra) {
        while (ra->inflight > 0) {
                struct io_uring_cqe *cqe;
                int r = io_uring_wait_cqe(&ra->ring, &cqe);
                if (r < 0 && r != -EINTR && r != -EAGAIN)
                        break;
                reap(ra);
        }
}

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
        if (!ra->dead) {
                drain(ra);
                io_uring_queue_exit(&ra->ring);
        }
        free(ra);
        return NULL;
}

void bs_readahead(BsReadahead *ra, int fd, uint64_t len) {
        if (len == 0)
                return;
        if (ra && !ra->dead && len <= BS_READAHEAD_MAX) {
                struct io_uring_sqe *sqe = next_sqe(ra);
                if (sqe) {
                        io_uring_prep_read(sqe, fd, sink, (unsigned) len, 0);
                        io_uring_sqe_set_data(sqe, NULL);
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
        unsigned done = r < 0 ? 0 : MIN((unsigned) r, ra->queued);
        ra->inflight += done;
        if (done < ra->queued) {
                /* A read left in the ring would be submitted with the next
                 * batch, when its fd may name another file, or a socket:
                 * the ring goes, and with it what it holds, once the reads
                 * it took are done (they write into buffers). */
                for (unsigned i = 0; i < ra->n_bufs; i++)
                        if (ra->buf_at[i] >= done) {
                                ra->bufs[i]->result = -ECANCELED;
                                ra->bufs[i]->pending = false;
                        }
                drain(ra);
                io_uring_queue_exit(&ra->ring);
                ra->dead = true;
                ra->n_bufs = 0;
                return;
        }
        ra->queued = 0;
        ra->n_bufs = 0;
        reap(ra);
}

int bs_readahead_file(BsReadahead *ra, int fd, uint64_t max, BsReadBuf **ret) {
        struct stat st;
        if (!ra || ra->dead || ra->no_uncached)
                return -EOPNOTSUPP;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (st.st_size < 0 || (uint64_t) st.st_size > MIN(max, (uint64_t) BS_READAHEAD_MAX))
                return -EFBIG;
        BsReadBuf *b = malloc(sizeof(*b) + (size_t) st.st_size);
        if (!b)
                return -ENOMEM;
        struct io_uring_sqe *sqe = next_sqe(ra);
        if (!sqe) {
                free(b);
                return -ENOSPC;
        }
        *b = (BsReadBuf) { .st = st, .pending = true };
        io_uring_prep_read(sqe, fd, b->data, (unsigned) st.st_size, 0);
        sqe->rw_flags = RWF_DONTCACHE;
        io_uring_sqe_set_data(sqe, b);
        ra->bufs[ra->n_bufs] = b;
        ra->buf_at[ra->n_bufs++] = ra->queued++;
        *ret = b;
        return 0;
}

int bs_readahead_wait(BsReadahead *ra, BsReadBuf *b) {
        if (b->pending && !ra->dead && ra->queued > 0)
                bs_readahead_submit(ra);
        while (b->pending) {
                if (ra->dead)
                        return -EIO; /* lost with the ring: the buffer stays */
                struct io_uring_cqe *cqe;
                int r = io_uring_wait_cqe(&ra->ring, &cqe);
                if (r < 0 && r != -EINTR && r != -EAGAIN)
                        return r; /* still pending: the buffer stays */
                reap(ra);
        }
        return b->result;
}

BsReadBuf *bs_readbuf_free(BsReadahead *ra, BsReadBuf *b) {
        if (b && b->pending)
                (void) bs_readahead_wait(ra, b);
        /* A read the ring cannot account for any more may still write
         * into it: leaked rather than freed under the kernel. */
        if (b && !b->pending)
                free(b);
        return NULL;
}
