/* bs-readahead.h - start reading many small files at once
 *
 * A cold small file read on its own is one request handed to the disk
 * alone; on a virtual machine each hand-over is an exit to the host,
 * which costs more than the read. The reads of a batch submitted through
 * io_uring reach the block layer together, which merges them and tells
 * the device once. What bs_readahead() reads is thrown away: the point is
 * the page cache, which the caller then reads as usual. What
 * bs_readahead_file() reads is kept for the caller, and leaves no trace in
 * the page cache.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* Files up to this size are read in a batch; bigger ones are read ahead
 * with posix_fadvise(), whose request is big enough on its own. */
#define BS_READAHEAD_MAX (256u * 1024)

typedef struct BsReadahead BsReadahead;

/**
 * A batch reader; -errno where io_uring is not to be had (an old kernel,
 * a seccomp filter), and bs_readahead() then reads file by file.
 */
int bs_readahead_new(BsReadahead **ret);
/** Free ra; reads still under way finish on their own. */
BsReadahead *bs_readahead_free(BsReadahead *ra);
/**
 * Start reading the first len bytes of fd into the page cache: queued for
 * bs_readahead_submit() when small enough and ra (which may be NULL) has
 * room, else asked for at once. fd must stay open until the submit.
 */
void bs_readahead(BsReadahead *ra, int fd, uint64_t len);
/** Hand the queued reads to the kernel together; forget those finished. */
void bs_readahead_submit(BsReadahead *ra);

/* A small file read whole into memory ahead of its use (see
 * bs_readahead_file()): the data, and the file's stat from before the
 * read, against which a stat after its use tells whether it changed. */
typedef struct BsReadBuf {
        struct stat st;
        int result;   /* bytes read, or -errno; once pending is false */
        bool pending; /* the kernel may still write data */
        uint8_t data[];
} BsReadBuf;

/**
 * Read the regular file fd, if it is at most max bytes, into a new buffer
 * (*ret) with the batch, uncached: pages the read brings into the page
 * cache leave it when done, pages already there stay (RWF_DONTCACHE), so
 * the caller needs neither to look first nor to drop them after, nor to
 * read the file again. fd must stay open until bs_readahead_wait() says
 * the read is done. On failure nothing is queued and the caller reads as
 * usual: -EOPNOTSUPP (no ring, or uncached reads refused before), -EINVAL
 * (not a regular file), -EFBIG (bigger than max or BS_READAHEAD_MAX),
 * -ENOSPC (the ring is full until the next submit), -ENOMEM, or fstat()'s.
 */
int bs_readahead_file(BsReadahead *ra, int fd, uint64_t max, BsReadBuf **ret);
/**
 * Wait for b's read: the bytes read, or -errno. -EOPNOTSUPP (or -EINVAL):
 * this kernel or file system cannot read uncached; nothing was read, later
 * calls of bs_readahead_file() say so at once, and the caller reads the
 * file itself.
 */
int bs_readahead_wait(BsReadahead *ra, BsReadBuf *b);
/** Free b once its read is done (waited for here); returns NULL. */
BsReadBuf *bs_readbuf_free(BsReadahead *ra, BsReadBuf *b);
