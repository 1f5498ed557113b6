/* agent-local.c - reading the watched tree without following links out of it */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent-conflict.h"
#include "agent-local.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-path.h"

void local_scan_begin(Agent *a) {
        local_scan_end(a);
        a->scanning = true;
}

void local_scan_forget(Agent *a) {
        if (a->scan_fd >= 0)
                close(a->scan_fd);
        a->scan_fd = -1;
}

void local_scan_end(Agent *a) {
        local_scan_forget(a);
        a->scanning = false;
}

/* The parent of path: the scan's kept directory when it is that one. */
int local_open_parent(Agent *a, const char *path, const char **base, bool *kept) {
        size_t n = bs_path_parent_len(path);
        *kept = false;
        if (!a->scanning)
                return bs_open_parent(a->rootfd, path, base);
        if (a->scan_fd >= 0 && n == a->scan_len && memcmp(path, a->scan_dir, n) == 0) {
                *base = bs_path_base(path);
                *kept = true;
                return a->scan_fd;
        }
        int fd = bs_open_parent(a->rootfd, path, base);
        if (fd >= 0 && n <= BS_PATH_MAX) {
                if (a->scan_fd >= 0)
                        close(a->scan_fd);
                a->scan_fd = fd;
                a->scan_len = n;
                memcpy(a->scan_dir, path, n);
                *kept = true;
        }
        return fd;
}

int local_stat(Agent *a, const char *path, LocalEntry *l) {
        const char *base;
        bool kept;

        l->exists = false;
        l->kind = BS_KIND_NONE;
        l->target[0] = 0;
        int fd = local_open_parent(a, path, &base, &kept);
        _cleanup_(closep) int pfd = kept ? -1 : fd;
        if (fd < 0) {
                /* A missing parent, or one that is a link or a file now. */
                if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP || fd == -EXDEV)
                        return 0;
                return fd;
        }
        return local_stat_at(fd, base, l);
}

int local_stat_at(int dirfd, const char *name, LocalEntry *l) {
        l->exists = false;
        l->kind = BS_KIND_NONE;
        l->target[0] = 0;
        if (fstatat(dirfd, name, &l->st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
        l->exists = true;
        if (S_ISREG(l->st.st_mode))
                l->kind = BS_KIND_FILE;
        else if (S_ISDIR(l->st.st_mode))
                l->kind = BS_KIND_DIR;
        else if (S_ISLNK(l->st.st_mode)) {
                l->kind = BS_KIND_SYMLINK;
                ssize_t n = readlinkat(dirfd, name, l->target, BS_PATH_MAX);
                if (n < 0)
                        return -errno;
                l->target[n] = 0;
        }
        return 0;
}

bool local_matches(const LocalEntry *l, const ManifestEntry *m) {
        if (!l->exists || l->kind != m->kind)
                return false;
        switch (l->kind) {
        case BS_KIND_FILE:
                return (uint64_t) l->st.st_size == m->size && bs_stat_mtime_ns(&l->st) == m->mtime_ns &&
                       (uint64_t) l->st.st_ino == m->ino && (l->st.st_mode & 07777) == (m->mode & 07777);
        case BS_KIND_SYMLINK:
                return strcmp(l->target, m->target) == 0;
        case BS_KIND_DIR:
                return (l->st.st_mode & 07777) == (m->mode & 07777);
        }
        return false;
}

int local_hash(Agent *a, const char *path, uint8_t sha[BS_SHA_LEN], LocalEntry *l) {
        struct stat st0;
        _cleanup_(closep) int fd = bs_open_read_beneath(a->rootfd, path);
        if (fd < 0)
                return fd;
        if (fstat(fd, &st0) < 0)
                return -errno;
        int r = bs_sha_fd(fd, sha);
        if (r < 0)
                return r;
        if (fstat(fd, &l->st) < 0)
                return -errno;
        /* Written to while we read: the hash names no version of it. */
        if (l->st.st_size != st0.st_size || bs_stat_mtime_ns(&l->st) != bs_stat_mtime_ns(&st0) ||
            l->st.st_ctim.tv_sec != st0.st_ctim.tv_sec || l->st.st_ctim.tv_nsec != st0.st_ctim.tv_nsec)
                return -EAGAIN;
        l->exists = true;
        l->kind = S_ISREG(l->st.st_mode) ? BS_KIND_FILE : BS_KIND_NONE;
        l->target[0] = 0;
        return 0;
}

void local_to_manifest(const LocalEntry *l, ManifestEntry *m) {
        memset(m, 0, sizeof(*m));
        m->kind = l->kind;
        m->size = l->kind == BS_KIND_FILE ? (uint64_t) l->st.st_size : 0;
        m->mode = l->st.st_mode & 07777;
        m->mtime_ns = bs_stat_mtime_ns(&l->st);
        m->ino = (uint64_t) l->st.st_ino;
        snprintf(m->target, sizeof(m->target), "%s", l->target);
}

int local_conflict_copy(Agent *a, const char *path, char *out, size_t outsz, struct stat *ret) {
        const char *base;
        _cleanup_(closep) int pfd = bs_open_parent(a->rootfd, path, &base);
        if (pfd < 0)
                return pfd;
        time_t now = time(NULL);
        for (unsigned n = 1; n < 100; n++) {
                int r = conflict_name(path, a->device_label, now, n, out, outsz);
                if (r < 0)
                        return r;
                /* renameat2(NOREPLACE): never overwrite an earlier copy. */
                if (renameat2(pfd, base, pfd, bs_path_base(out), RENAME_NOREPLACE) == 0) {
                        if (fstatat(pfd, bs_path_base(out), ret, AT_SYMLINK_NOFOLLOW) < 0)
                                ret->st_mode = 0; /* gone already */
                        return 0;
                }
                if (errno != EEXIST)
                        return -errno;
        }
        return -EEXIST;
}

typedef struct Links {
        Agent *a;
        const char *path;
} Links;

static int mark_link(const char *path, const ManifestEntry *e, void *userdata) {
        Links *k = userdata;
        (void) e;
        if (strcmp(path, k->path) != 0) {
                agent_mark_dirty(k->a, path, false);
                k->a->again = true; /* a plan being made has taken the queue */
        }
        return 0;
}

void local_mark_links(Agent *a, const char *path, uint64_t ino) {
        Links k = { a, path };
        (void) manifest_same_inode(a->state, ino, mark_link, &k);
}

bool local_removed_written(Agent *a, const char *path) {
        _cleanup_(freep) ManifestEntry *m = malloc(sizeof(*m));
        uint64_t ino = 0;
        if (m && manifest_get(a->state, path, m) == 0 && m->kind == BS_KIND_FILE)
                ino = m->ino; /* its removal not sent yet */
        else if (!agent_gone_link(a, path, &ino))
                return false;
        local_mark_links(a, path, ino);
        return true;
}
