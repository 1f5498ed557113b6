/* bs-warm.c - read a tree's metadata ahead of a walk through it
 *
 * A walk through a cold tree (the agent's full scan, the server's answer
 * to a computer joining) waits on the disk for every directory block and
 * inode table it touches, one read at a time, between its own work. A
 * thread that walks the same tree in the same order keeps those reads
 * ahead of it, so the walk behind finds them cached. It lists every
 * directory the walk behind will enter and stats one file per run of close
 * inode numbers: a stat reads the block holding its inode, and with it
 * the inodes of neighbouring numbers, which are usually the files made
 * together with it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-proto.h"
#include "bs-warm.h"

/* Inodes this close to the last one statted are taken as read with it:
 * an ext4 inode table block of 4 KiB holds 16 inodes of 256 bytes. */
#define WARM_INO_SPAN 16
/* Deeper directories are left to the walk behind: the stack stays small. */
#define WARM_DEPTH_MAX 64
#define WARM_STACK (256u * 1024)

struct BsWarm {
        pthread_t thread;
        int rootfd;
        BsWarmOps ops;
        void *userdata;
        atomic_bool stop;
        atomic_bool done;
        char path[BS_PATH_MAX + 1];
};

static int by_name(const void *x, const void *y) {
        return strcmp(((const BsDirent *) x)->name, ((const BsDirent *) y)->name);
}

/* Walk the directory open at fd, whose path is w->path, len bytes long. */
static void walk(BsWarm *w, int fd, size_t len, unsigned depth) {
        BsDirent *v = NULL;
        size_t n = 0;
        if (atomic_load(&w->stop) || bs_dir_list_fd(fd, &v, &n) < 0)
                return;
        if (w->ops.listed)
                w->ops.listed(w->userdata, w->path);
        /* The order of the walk behind, so this one stays ahead of it. */
        if (n > 1)
                qsort(v, n, sizeof(*v), by_name);
        uint64_t last = 0;
        for (size_t i = 0; i < n; i++) {
                struct stat st;
                bool near = last != 0 && v[i].ino <= last + WARM_INO_SPAN && v[i].ino + WARM_INO_SPAN >= last;
                if (v[i].type == DT_DIR || (near && v[i].type != DT_UNKNOWN))
                        continue;
                if (fstatat(fd, v[i].name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
                        v[i].type = DT_DIR; /* a file system without d_type */
                last = v[i].ino;
        }
        for (size_t i = 0; i < n && depth < WARM_DEPTH_MAX && !atomic_load(&w->stop); i++) {
                size_t k = strlen(v[i].name);
                if (v[i].type != DT_DIR || len + 1 + k > BS_PATH_MAX)
                        continue;
                size_t at = len > 0 ? len + 1 : 0;
                if (len > 0)
                        w->path[len] = '/';
                memcpy(w->path + at, v[i].name, k + 1);
                if (!w->ops.enter || w->ops.enter(w->userdata, w->path)) {
                        int c = openat(fd, v[i].name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (c >= 0) {
                                walk(w, c, at + k, depth + 1);
                                close(c);
                        }
                }
                w->path[len] = 0;
        }
        bs_dir_list_free(v, n);
}

static void *warm_main(void *userdata) {
        BsWarm *w = userdata;
        int fd = openat(w->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                walk(w, fd, 0, 0);
                close(fd);
        }
        atomic_store(&w->done, true);
        return NULL;
}

int bs_warm_start(int rootfd, const BsWarmOps *ops, void *userdata, BsWarm **ret) {
        pthread_attr_t attr;
        BsWarm *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        if (ops)
                w->ops = *ops;
        w->userdata = userdata;
        w->rootfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
        int r = w->rootfd < 0 ? -errno : 0;
        if (r >= 0) {
                r = -pthread_attr_init(&attr);
                if (r >= 0) {
                        (void) pthread_attr_setstacksize(&attr, WARM_STACK);
                        r = -pthread_create(&w->thread, &attr, warm_main, w);
                        pthread_attr_destroy(&attr);
                }
                if (r < 0)
                        close(w->rootfd);
        }
        if (r < 0) {
                free(w);
                return r;
        }
        *ret = w;
        return 0;
}

bool bs_warm_done(BsWarm *w) {
        return atomic_load(&w->done);
}

BsWarm *bs_warm_free(BsWarm *w) {
        if (!w)
                return NULL;
        atomic_store(&w->stop, true);
        pthread_join(w->thread, NULL);
        close(w->rootfd);
        free(w);
        return NULL;
}
