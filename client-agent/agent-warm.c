/* agent-warm.c - the tree's metadata read ahead of a full scan
 *
 * The walk enters no directory the scan would not: a tree's ignored
 * caches and build output can be far bigger than what syncs. It decides
 * with a set of its own, because a set reads ignore files as it goes and
 * is not shared between threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent-warm.h"

struct Warmer {
        BsWarm *walk;
        IgnoreSet *ignore;
        int rootfd;
        void (*listed)(void *userdata, const char *path);
        void *userdata;
};

static bool enter(void *userdata, const char *path) {
        Warmer *w = userdata;
        return !ignore_set_path(w->ignore, w->rootfd, path, true);
}

static void listed(void *userdata, const char *path) {
        Warmer *w = userdata;
        if (w->listed)
                w->listed(w->userdata, path);
}

int warmer_start(int rootfd, const IgnoreSet *ignore, void (*fn)(void *userdata, const char *path), void *userdata,
                 Warmer **ret) {
        static const BsWarmOps ops = { .enter = enter, .listed = listed };
        Warmer *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (Warmer) { .listed = fn, .userdata = userdata };
        /* Its own: the agent may open the tree again while the walk goes on. */
        w->rootfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 3);
        int r = w->rootfd < 0 ? -errno : ignore_set_fresh(ignore, &w->ignore);
        r = r ?: bs_warm_start(w->rootfd, &ops, w, &w->walk);
        if (r < 0) {
                if (w->rootfd >= 0)
                        close(w->rootfd);
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
        bs_warm_free(w->walk);
        close(w->rootfd);
        ignore_set_free(w->ignore);
        free(w);
        return NULL;
}
