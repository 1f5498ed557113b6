/* bs-readahead.h - start reading many small files at once
 *
 * A cold small file read on its own is one request handed to the disk
 * alone; on a virtual machine each hand-over is an exit to the host,
 * which costs more than the read. The reads of a batch submitted through
 * io_uring reach the block layer together, which merges them and tells
 * the device once. What is read is thrown away: the point is the page
 * cache, which the caller then reads as usual.
 */
#pragma once

#include <stdint.h>

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
