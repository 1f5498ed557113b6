/* agent-warm.c - read a tree's metadata ahead of its full scan
 *
 * A scan of a cold tree waits on the disk for every directory block and
 * inode table it touches, one read at a time, between its own work. A
 * thread that walks the same tree in the same order keeps those reads
 * ahead of it, so the scan finds them cached. The walk lists every
 * directory the scan will enter and stats one file per run of close
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

#include "agent-warm.h"
#include "bs-fs.h"
#include "bs-proto.h"

/* Inodes this close to the last one statted are taken as read with it:
 * an ext4 inode table block of 4 KiB holds 16 inodes of 256 bytes. */
#define WARM_INO_SPAN 16
/* Deeper directories are left to the scan: the walk's stack stays small. */
#define WARM_DEPTH_MAX 64
#define WARM_STACK (256u * 1024)

struct Warmer {
        pthread_t thread;
        int rootfd;
        IgnoreSet *ignore; /* the walk's own: an IgnoreSet is not shared */
        atomic_bool stop;
        WarmVisit visit;   /* tests only */
        void *userdata;
        char path[BS_PATH_MAX + 1];
};

static int by_name(const void *x, const void *y) {
        return strcmp(((const BsDirent *) x)->name, ((const BsDirent *) y)->name);
}

/* Walk the directory open at fd, whose path is w->path, len bytes long. */
static void walk(Warmer *w, int fd, size_t len, unsigned depth) {
        BsDirent *v = NULL;
        size_t n = 0;
        if (atomic_load(&w->stop) || bs_dir_list_fd(fd, &v, &n) < 0)
                return;
        if (w->visit)
                w->visit(w->userdata, w->path);
        /* The scan's order, so the walk stays ahead of it. */
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
                if (!ignore_set_path(w->ignore, w->rootfd, w->path, true)) {
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
        Warmer *w = userdata;
        int fd = openat(w->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                walk(w, fd, 0, 0);
                close(fd);
        }
        return NULL;
}

int warmer_start(int rootfd, const IgnoreSet *ignore, WarmVisit visit, void *userdata, Warmer **ret) {
        pthread_attr_t attr;
        Warmer *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->visit = visit;
        w->userdata = userdata;
        int r = ignore_set_fresh(ignore, &w->ignore);
        if (r >= 0) {
                w->rootfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
                r = w->rootfd < 0 ? -errno : 0;
        }
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
                ignore_set_free(w->ignore);
                free(w);
                return r;
        }
        *ret = w;
        return 0;
}

Warmer *warmer_free(Warmer *w) {
        if (!w)
                return NULL;
        atomic_store(&w->stop, true);
        pthread_join(w->thread, NULL);
        close(w->rootfd);
        ignore_set_free(w->ignore);
        free(w);
        return NULL;
}
