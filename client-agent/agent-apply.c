/* agent-apply.c - applying the server's change records to the local tree */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent-apply.h"
#include "bs-fs.h"
#include "bs-hash.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"

/* Record that path holds version x, as l describes it. l must describe
 * what this agent wrote (or hashed), not a stat taken afterwards: the user
 * may already have written over it, and that edit must stay a change. */
static void record(Agent *a, const char *path, const Rec *x, const LocalEntry *l, const char *target) {
        ManifestEntry *e = malloc(sizeof(*e));
        if (!e)
                return;
        local_to_manifest(l, e);
        memcpy(e->sha, x->sha, BS_SHA_LEN);
        e->version = x->seq;
        if (target)
                snprintf(e->target, sizeof(e->target), "%s", target);
        manifest_put(a->state, path, e);
        free(e);
}

/* Record that path holds version x's content, as l describes the file on
 * disk, but with the mode and mtime of x: a disk that differs in them
 * holds a local change, which the next push sends. */
static void record_meta(Agent *a, const char *path, const Rec *x, const LocalEntry *l) {
        LocalEntry *k = malloc(sizeof(*k));
        if (!k)
                return;
        *k = *l;
        k->st.st_mode = (k->st.st_mode & ~07777u) | (x->mode & 07777);
        k->st.st_mtim = bs_timespec_ns(x->mtime_ns);
        record(a, path, x, k, NULL);
        free(k);
}

/* Directories carry no content, so their stat now is as good as any; the
 * mode recorded is the server's (see record_meta()). */
static void record_dir(Agent *a, const char *path, const Rec *x) {
        LocalEntry *l = malloc(sizeof(*l));
        if (l && local_stat(a, path, l) == 0 && l->exists && l->kind == BS_KIND_DIR)
                record_meta(a, path, x, l);
        free(l);
}

static void chmod_dir(Agent *a, const char *path, uint32_t mode) {
        const char *base;
        _cleanup_(closep) int pfd = bs_open_parent(a->rootfd, path, &base);
        if (pfd < 0 || fchmodat(pfd, base, mode, AT_SYMLINK_NOFOLLOW) < 0)
                log_warning("cannot set the mode of directory %s to %04o: %s", path, mode,
                            strerror(pfd < 0 ? -pfd : errno));
}

/* A directory mode that would keep us out of it (no write or search for
 * its owner, and we are not root): set at the end of a pull. */
static bool mode_locks_out(uint32_t mode) {
        return (mode & 0300) != 0300 && geteuid() != 0;
}

/* Give a directory the mode a record names. One its owner cannot write
 * into waits for the end of the pull (apply_late_modes()), as with tar
 * and rsync, unless we are root. */
static void set_dir_mode(Agent *a, const char *path, uint32_t mode) {
        mode &= 07777;
        if (mode_locks_out(mode)) {
                if (a->n_late_modes == a->cap_late_modes) {
                        size_t cap = a->cap_late_modes ? a->cap_late_modes * 2 : 16;
                        LateMode *v = reallocarray(a->late_modes, cap, sizeof(*v));
                        if (!v)
                                return;
                        a->late_modes = v;
                        a->cap_late_modes = cap;
                }
                char *d = strdup(path);
                if (d)
                        a->late_modes[a->n_late_modes++] = (LateMode) { d, mode };
                return;
        }
        chmod_dir(a, path, mode);
}

void apply_late_modes(Agent *a) {
        ManifestEntry *m = malloc(sizeof(*m));
        /* Deepest first: a parent closed before its child would lock us out. */
        for (size_t i = a->n_late_modes; i-- > 0;) {
                LateMode *lm = &a->late_modes[i];
                /* Only while the manifest still wants that mode there. */
                if (m && manifest_get(a->state, lm->path, m) == 0 && m->kind == BS_KIND_DIR &&
                    (m->mode & 07777) == lm->mode)
                        chmod_dir(a, lm->path, lm->mode);
                free(lm->path);
        }
        free(a->late_modes);
        a->late_modes = NULL;
        a->n_late_modes = a->cap_late_modes = 0;
        free(m);
}

/* A record whose content the file already holds: give it the record's
 * mode and mtime (a metadata-only change made elsewhere), then record it. */
static void set_file_meta(Agent *a, const Rec *x, const LocalEntry *l) {
        _cleanup_(closep) int pfd = -1;
        const char *base;
        LocalEntry *now = malloc(sizeof(*now));
        int r = 0;
        if (!now)
                return;
        if ((l->st.st_mode & 07777) == (x->mode & 07777) && bs_stat_mtime_ns(&l->st) == x->mtime_ns) {
                record(a, x->path, x, l, NULL);
                goto out;
        }
        pfd = bs_open_parent(a->rootfd, x->path, &base);
        if (pfd < 0)
                r = pfd;
        else if ((l->st.st_mode & 07777) != (x->mode & 07777) &&
                 fchmodat(pfd, base, x->mode & 07777, AT_SYMLINK_NOFOLLOW) < 0)
                r = -errno;
        else
                r = bs_set_mtime_at(pfd, base, x->mtime_ns);
        if (r == 0)
                r = local_stat(a, x->path, now);
        if (r == 0 && (!now->exists || now->kind != BS_KIND_FILE || now->st.st_ino != l->st.st_ino ||
                       now->st.st_size != l->st.st_size))
                r = -ESTALE; /* replaced meanwhile: a local change, compared next round */
        if (r < 0) {
                log_warning("cannot give %s the mode and time it has on the server: %s", x->path, strerror(-r));
                record_meta(a, x->path, x, l);
                goto out;
        }
        record(a, x->path, x, now, NULL);
        /* Its other names (hard links here) changed too: compared next round. */
        if (now->st.st_nlink > 1)
                local_mark_links(a, x->path, (uint64_t) now->st.st_ino);
        log_event(AGENT_FILE_LOG(a), BS_MID_DOWNLOADED, a->account, x->path,
                  "updated %s (mode %04o, time changed on another computer)", x->path, x->mode & 07777);
out:
        free(now);
}

/* Set path aside as a conflict copy. The watcher is told: the rename's
 * events are ours, not a user's move, which would carry the changes queued
 * at path along to the copy; what the rename changes is queued by the
 * caller now, and a change queued at path later must stay there. */
static int set_aside(Agent *a, const char *path, char *copy, size_t n) {
        struct stat st;
        int r = local_conflict_copy(a, path, copy, n, &st);
        if (r == 0 && st.st_mode != 0)
                (void) watcher_expect_move(a->watcher, path, copy, S_ISDIR(st.st_mode), (uint64_t) st.st_ino);
        return r;
}

/* Set a local entry aside when it holds something the server has not seen. */
static int keep_local(Agent *a, const char *path, const LocalEntry *l, const ManifestEntry *m, bool have) {
        char copy[BS_PATH_MAX + 1];
        if (!l->exists || (have && local_matches(l, m)))
                return 0;
        int r = set_aside(a, path, copy, sizeof(copy));
        if (r < 0) {
                log_error("cannot keep local %s as a conflict copy: %s", path, strerror(-r));
                return r;
        }
        a->n_conflicts++;
        log_event(LOG_WARNING, BS_MID_CONFLICT, a->account, path,
                  "conflict on %s: changed here and on another computer; local version kept as %s", path, copy);
        agent_mark_dirty(a, copy, true);
        return 1;
}

/* A file or link from elsewhere takes the name of a directory here: what
 * in it was in sync goes, and a directory still holding local changes is
 * kept whole as a conflict copy, so that the name is free (or the record
 * could never be applied, and the directory never sent). */
static int make_room(Agent *a, const char *path, LocalEntry *l) {
        char copy[BS_PATH_MAX + 1];
        if (!l->exists || l->kind != BS_KIND_DIR)
                return 0;
        apply_delete_tree(a, path, UINT64_MAX);
        int r = local_stat(a, path, l);
        if (r < 0 || !l->exists)
                return r;
        r = set_aside(a, path, copy, sizeof(copy));
        if (r < 0) {
                log_error("cannot keep local directory %s as a conflict copy: %s", path, strerror(-r));
                return r;
        }
        a->n_conflicts++;
        log_event(LOG_WARNING, BS_MID_CONFLICT, a->account, path,
                  "conflict on %s: a directory here with local changes, not a directory on another computer; "
                  "local directory kept as %s", path, copy);
        agent_mark_dirty(a, copy, true);
        return local_stat(a, path, l);
}

/* Rename tmp (in the directory tmpfd) to path. fresh: path was not there
 * when looked at, and must still not be (-EEXIST), or what was made here
 * since would be lost. */
/* The parent of path (see local_open_parent()), made first when missing.
 * It usually exists (a pull makes directories first): made only when it
 * does not, not at every file of a join. */
static int open_parent_made(Agent *a, const char *path, const char **base, bool *kept) {
        int pfd = local_open_parent(a, path, base, kept);
        if (pfd != -ENOENT)
                return pfd;
        int r = bs_mkdir_parents(a->rootfd, path, 0755);
        return r < 0 ? r : local_open_parent(a, path, base, kept);
}

static int place(Agent *a, int tmpfd, const char *tmp, const char *path, bool fresh) {
        const char *base;
        bool kept;
        int pfd = open_parent_made(a, path, &base, &kept);
        if (pfd < 0)
                return pfd;
        int r = renameat2(tmpfd, tmp, pfd, base, fresh ? RENAME_NOREPLACE : 0) < 0 ? -errno : 0;
        if (r == -EINVAL && fresh) /* a file system without RENAME_NOREPLACE */
                r = renameat(tmpfd, tmp, pfd, base) < 0 ? -errno : 0;
        if (!kept)
                close(pfd);
        return r;
}

/* The local entry a download will be once placed, as its writer saw it. */
static void downloaded_entry(const Rec *x, LocalEntry *l) {
        l->exists = true;
        l->kind = BS_KIND_FILE;
        l->target[0] = 0;
        memset(&l->st, 0, sizeof(l->st));
        l->st.st_ino = (ino_t) x->disk_ino;
        l->st.st_size = (off_t) x->disk_size;
        l->st.st_mode = (mode_t) x->disk_mode;
        l->st.st_mtim = bs_timespec_ns(x->disk_mtime_ns);
        l->st.st_nlink = 1;
}

static int apply_put(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        bool meta_only = false; /* changed here in mode or mtime only */
        if (l->exists && !(have && local_matches(l, m))) {
                uint8_t sha[BS_SHA_LEN];
                if (l->kind == BS_KIND_FILE && local_hash(a, x->path, sha, l) == 0) {
                        if (memcmp(sha, x->sha, BS_SHA_LEN) == 0) {
                                /* Already the same content; a mode or time of its own is sent. */
                                record_meta(a, x->path, x, l);
                                return 0;
                        }
                        meta_only = have && m->kind == BS_KIND_FILE && memcmp(sha, m->sha, BS_SHA_LEN) == 0;
                }
                struct stat hashed = l->st;
                if (local_stat(a, x->path, l) < 0)
                        return 0;
                /* Only while it is still the file that was hashed. */
                meta_only = meta_only && l->kind == BS_KIND_FILE && l->st.st_ino == hashed.st_ino &&
                            l->st.st_size == hashed.st_size && bs_stat_mtime_ns(&l->st) == bs_stat_mtime_ns(&hashed);
        }
        if (!x->ready) {
                if (x->want)
                        return 0; /* fetch failed; a snapshot will retry */
                /* Not fetched: the disk must hold that content already. */
                if (have && m->kind == BS_KIND_FILE && memcmp(m->sha, x->sha, BS_SHA_LEN) == 0 && local_matches(l, m))
                        set_file_meta(a, x, l);
                else {
                        log_warning("%s: change %llu was not fetched but is not here; comparing the whole tree",
                                    x->path, (unsigned long long) x->seq);
                        a->need_snapshot = true;
                }
                return 0;
        }
        /* New content from elsewhere beats a mode or time changed here:
         * no conflict copy of unchanged bytes. */
        if (meta_only)
                log_info("%s: its mode or time changed here, its content on another computer; taking that version",
                         x->path);
        else if (keep_local(a, x->path, l, m, have) < 0)
                return 0;
        if (make_room(a, x->path, l) < 0)
                return 0;
        /* The rename keeps inode, size, mode and mtime: stat before it
         * (the writer's, when it wrote the file). */
        bool fresh = !l->exists;
        int r = 0;
        if (x->disk_ino)
                downloaded_entry(x, l);
        else
                r = local_stat_at(a->downloads_fd, x->tmp, l);
        r = r < 0 ? r : place(a, a->downloads_fd, x->tmp, x->path, fresh);
        /* Made here since it was looked at: decided again, as a file that
         * exists (so never a third time). */
        if (r == -EEXIST && local_stat(a, x->path, l) == 0 && l->exists)
                return apply_put(a, x, l, m, have);
        if (r < 0) {
                log_error("cannot write %s: %s", x->path, strerror(-r));
                /* Its record is behind last_seq now: only a comparison
                 * brings it again (a directory moved here while we
                 * pulled is in the way until that move is sent). */
                a->need_snapshot = true;
                return 0;
        }
        x->tmp[0] = 0;
        /* Its IN_MOVED_TO says nothing new: a join would compare every
         * file it brought once more. */
        (void) watcher_expect(a->watcher, x->path, false, (uint64_t) l->st.st_ino);
        record(a, x->path, x, l, NULL);
        a->n_downloaded++;
        if (x->copied > 0)
                log_event(AGENT_FILE_LOG(a), BS_MID_DOWNLOADED, a->account, x->path,
                          "downloaded %s (%llu bytes, %llu received, the rest unchanged)", x->path,
                          (unsigned long long) x->size, (unsigned long long) (x->size - x->copied));
        else
                log_event(AGENT_FILE_LOG(a), BS_MID_DOWNLOADED, a->account, x->path, "downloaded %s (%llu bytes)",
                          x->path, (unsigned long long) x->size);
        return 0;
}

static int apply_mkdir(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        const char *base;
        if (!(l->exists && l->kind == BS_KIND_DIR)) {
                if (keep_local(a, x->path, l, m, have) < 0)
                        return 0;
                if (l->exists && have && local_matches(l, m))
                        unlinkat(a->rootfd, x->path, 0); /* an unchanged file or link */
                /* Made with its mode where the umask keeps it and we may
                 * write into it; else 0700, and the mode set after (exact,
                 * whatever the umask). In a join, a directory costs a few
                 * system calls instead of fifteen. */
                uint32_t mode = x->mode & 07777;
                bool exact = bs_mode_kept(mode) && !mode_locks_out(mode);
                bool kept;
                int pfd = open_parent_made(a, x->path, &base, &kept);
                int r = pfd < 0 ? pfd : mkdirat(pfd, base, exact ? mode : 0700) < 0 ? -errno : 0;
                if (pfd >= 0 && !kept)
                        close(pfd);
                if (r < 0 && r != -EEXIST) {
                        log_error("cannot create directory %s: %s", x->path, strerror(-r));
                        a->need_snapshot = true; /* as in apply_put() */
                        return 0;
                }
                /* Watched at once, so that what the pull puts in it is
                 * expected and anything else is an event, rather than
                 * listed whole once its IN_CREATE is read. Something in
                 * it already was made by another program meanwhile. */
                if (r == 0) {
                        if (watcher_add_made_dir(a->watcher, x->path) != 0)
                                agent_mark_dirty(a, x->path, true);
                        (void) watcher_expect(a->watcher, x->path, true, 0);
                }
                if (!exact || r == -EEXIST)
                        set_dir_mode(a, x->path, x->mode);
        } else if (!have || (l->st.st_mode & 07777) == (m->mode & 07777)) {
                /* Unchanged here (or never recorded): the server's mode. A
                 * mode changed here stays and is sent by the next push. */
                if ((l->st.st_mode & 07777) != (x->mode & 07777))
                        set_dir_mode(a, x->path, x->mode);
        }
        record_dir(a, x->path, x);
        return 0;
}

static int apply_symlink(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m, bool have) {
        char tmp[64];
        if (l->exists && l->kind == BS_KIND_SYMLINK && strcmp(l->target, x->path2) == 0) {
                record(a, x->path, x, l, x->path2);
                return 0;
        }
        if (keep_local(a, x->path, l, m, have) < 0 || make_room(a, x->path, l) < 0)
                return 0;
        for (int i = 0;; i++) {
                bs_temp_name(tmp, sizeof(tmp));
                if (symlinkat(x->path2, a->rootfd, tmp) == 0)
                        break;
                if (errno != EEXIST || i > 10) {
                        log_error("cannot create link %s: %m", x->path);
                        return 0;
                }
        }
        bool fresh = !l->exists;
        int r = local_stat(a, tmp, l);
        r = r < 0 ? r : place(a, a->rootfd, tmp, x->path, fresh);
        if (r < 0) {
                unlinkat(a->rootfd, tmp, 0);
                log_error("cannot create link %s: %s", x->path, strerror(-r));
                a->need_snapshot = true; /* as in apply_put() */
                return 0;
        }
        record(a, x->path, x, l, x->path2);
        return 0;
}


int apply_collect_path(const char *path, const ManifestEntry *e, void *userdata) {
        PathList *pl = userdata;
        (void) e;
        if (pl->n == pl->cap) {
                size_t cap = pl->cap ? pl->cap * 2 : 64;
                char **v = realloc(pl->v, cap * sizeof(char *));
                if (!v)
                        return -ENOMEM;
                pl->v = v;
                pl->cap = cap;
        }
        if ((pl->v[pl->n] = strdup(path)))
                pl->n++;
        return 0;
}

/* Remove one entry the manifest lists, unless it changed here (kept, and
 * sent again as new) or is newer than the deletion (left alone). Its
 * manifest entry goes unless it is newer. Returns true when something on
 * disk was removed. */
static bool delete_one_if_unchanged(Agent *a, const char *path, uint64_t seq, bool *kept) {
        LocalEntry *l = malloc(sizeof(*l));
        ManifestEntry *m = malloc(sizeof(*m));
        const char *base;
        bool removed = false;
        if (!l || !m || manifest_get(a->state, path, m) < 0 || m->version > seq)
                goto out;
        if (local_stat(a, path, l) == 0 && l->exists) {
                int pfd = bs_open_parent(a->rootfd, path, &base);
                if (pfd >= 0) {
                        if (local_matches(l, m) && l->kind != BS_KIND_DIR)
                                removed = unlinkat(pfd, base, 0) == 0;
                        else if (l->kind == BS_KIND_DIR) {
                                removed = unlinkat(pfd, base, AT_REMOVEDIR) == 0;
                                *kept |= !removed;
                        } else
                                *kept = true;
                        close(pfd);
                }
        }
        manifest_delete(a->state, path);
out:
        free(l);
        free(m);
        return removed;
}

bool apply_delete_tree(Agent *a, const char *path, uint64_t seq) {
        PathList pl = {};
        bool kept = false, removed = false;
        manifest_below(a->state, path, apply_collect_path, &pl);
        for (size_t i = 0; i < pl.n; i++) {
                removed |= delete_one_if_unchanged(a, pl.v[i], seq, &kept);
                free(pl.v[i]);
        }
        free(pl.v);
        removed |= delete_one_if_unchanged(a, path, seq, &kept);
        local_scan_forget(a); /* a directory kept open may be gone */
        /* What changed here and was never sent survives and is sent now. */
        if (kept) {
                log_event(LOG_WARNING, BS_MID_CONFLICT, a->account, path,
                          "%s was deleted on another computer but holds local changes; keeping them", path);
                agent_mark_dirty(a, path, true);
        }
        return removed;
}

static void apply_delete(Agent *a, Rec *x, ManifestEntry *m, bool have) {
        if (have && m->version > x->seq)
                return; /* made again since, and that is here */
        /* Also when path itself is no longer in the manifest (our own
         * deletion of it is recorded): what is below it and older than
         * this deletion goes too. */
        bool removed = apply_delete_tree(a, x->path, x->seq);
        /* A directory an older record of this pull made again (to hold a
         * file this deletion removed) goes when nothing is left in it. */
        if (!have) {
                const char *base;
                int pfd = bs_open_parent(a->rootfd, x->path, &base);
                if (pfd >= 0) {
                        removed |= unlinkat(pfd, base, AT_REMOVEDIR) == 0;
                        close(pfd);
                }
        }
        if (removed || have)
                log_event(AGENT_FILE_LOG(a), BS_MID_DELETED, a->account, x->path,
                          "removed %s (deleted on another computer)", x->path);
}

/* Entries below a directory another computer moved that are newer than
 * the move: sent from here after the server had moved the directory, to
 * the old name, which the server keeps them at. */
typedef struct Newer {
        PathList files;
        uint64_t seq;
        bool dirs;
} Newer;

static int collect_newer(const char *path, const ManifestEntry *e, void *userdata) {
        Newer *nw = userdata;
        if (e->version <= nw->seq)
                return 0;
        if (e->kind == BS_KIND_DIR) {
                nw->dirs = true;
                return 0;
        }
        return apply_collect_path(path, e, &nw->files);
}

/* Rename from to to, both relative to the tree; a source that is another
 * name of the destination's file (hard links, where rename() does nothing
 * and succeeds) is unlinked instead. */
static int rename_in_tree(Agent *a, const char *from, const char *to, bool same_file) {
        const char *bf, *bt;
        int pf = bs_open_parent(a->rootfd, from, &bf);
        int pt = pf < 0 ? -1 : bs_open_parent(a->rootfd, to, &bt);
        int r = pf < 0 ? pf : pt < 0 ? pt : 0;
        if (r == 0 && (same_file ? unlinkat(pf, bf, 0) : renameat(pf, bf, pt, bt)) < 0)
                r = -errno;
        if (pf >= 0)
                close(pf);
        if (pt >= 0)
                close(pt);
        return r;
}

/* After the directory moved here: put what is newer than the move back at
 * the old name (with its manifest entry), where the server has it. A
 * directory newer than the move, or a file that cannot be put back, is
 * left to a comparison of the whole tree. */
static void keep_newer_at_old_name(Agent *a, const Rec *x, Newer *nw) {
        char from[BS_PATH_MAX + 1];
        size_t fl = strlen(x->path), tl = strlen(x->path2);
        a->need_snapshot |= nw->dirs;
        for (size_t i = 0; i < nw->files.n; i++) {
                const char *p = nw->files.v[i];
                size_t rest = strlen(p) - fl;
                int r = -ENAMETOOLONG;
                if (tl + rest <= BS_PATH_MAX) {
                        memcpy(from, x->path2, tl);
                        memcpy(from + tl, p + fl, rest + 1);
                        r = bs_mkdir_parents(a->rootfd, p, 0755);
                }
                r = r < 0 ? r : rename_in_tree(a, from, p, false);
                if (r == 0)
                        manifest_move_tree(a->state, from, p);
                else
                        a->need_snapshot = true;
                free(nw->files.v[i]);
        }
        free(nw->files.v);
}

static void apply_move(Agent *a, Rec *x, LocalEntry *l, ManifestEntry *m) {
        LocalEntry *lt = malloc(sizeof(*lt));
        ManifestEntry *mt = malloc(sizeof(*mt));
        if (!lt || !mt)
                goto out;
        bool have_to = manifest_get(a->state, x->path2, mt) == 0;
        if (have_to && mt->version >= x->seq) {
                /* Already here: our own move, or a later change of the
                 * destination. A source the manifest still holds from
                 * before the move is gone from the server all the same;
                 * uploads based on it would be refused for ever. */
                if (manifest_get(a->state, x->path, m) == 0 && m->version < x->seq)
                        a->need_snapshot = true;
                goto out;
        }
        if (manifest_get(a->state, x->path, m) < 0 || local_stat(a, x->path, l) < 0 ||
            local_stat(a, x->path2, lt) < 0)
                goto resync;
        /* What is here was sent after the server moved what was there
         * before it (this computer replaced it meanwhile): it stays, and
         * what moved is fetched by the comparison. */
        if (m->version > x->seq)
                goto resync;
        bool from_ok = m->kind == BS_KIND_DIR ? l->exists && l->kind == BS_KIND_DIR : local_matches(l, m);
        bool to_ok = !lt->exists || (have_to && lt->kind != BS_KIND_DIR && local_matches(lt, mt));
        if (!from_ok || !to_ok)
                goto resync;
        if (bs_mkdir_parents(a->rootfd, x->path2, 0755) < 0)
                goto resync;
        bool same = lt->exists && l->kind != BS_KIND_DIR && lt->st.st_ino == l->st.st_ino &&
                    lt->st.st_dev == l->st.st_dev;
        if (rename_in_tree(a, x->path, x->path2, same) < 0)
                goto resync;
        Newer nw = { .seq = x->seq };
        if (m->kind == BS_KIND_DIR)
                manifest_below(a->state, x->path, collect_newer, &nw);
        manifest_move_tree(a->state, x->path, x->path2);
        keep_newer_at_old_name(a, x, &nw);
        if (manifest_get(a->state, x->path2, m) == 0) {
                /* A file older than the one that moved (a record of it
                 * missed here) keeps its older version, or it would pass
                 * for the server's: the comparison fetches the content. */
                if (x->kind == BS_KIND_FILE && m->kind == BS_KIND_FILE && memcmp(m->sha, x->sha, BS_SHA_LEN) != 0)
                        a->need_snapshot = true;
                else {
                        m->version = x->seq;
                        manifest_put(a->state, x->path2, m);
                }
        }
        log_event(LOG_INFO, BS_MID_MOVED, a->account, x->path2, "moved %s -> %s (on another computer)", x->path,
                  x->path2);
        goto out;
resync:
        /* Local state differs from what the move assumes: compare everything. */
        a->need_snapshot = true;
out:
        free(lt);
        free(mt);
}

bool apply_is_news(const ManifestEntry *m, const Rec *x, bool snapshot) {
        return snapshot ? m->version != x->seq : m->version < x->seq;
}

void apply_record(Agent *a, Rec *x, bool snapshot) {
        LocalEntry *l = malloc(sizeof(*l));
        ManifestEntry *m = malloc(sizeof(*m));
        if (!l || !m)
                goto out;
        if (snapshot)
                manifest_mark_seen(a->state, x->path);
        if (x->superseded)
                goto out; /* a later record of this pull replaces it */
        bool have = manifest_get(a->state, x->path, m) == 0;
        /* Selective sync: what this computer ignores is neither made,
         * changed nor removed here. A move across the line is a deletion
         * of what leaves the synced part, or a new entry, which a
         * snapshot brings. */
        bool is_dir = x->op == BS_OP_MKDIR || (have && m->kind == BS_KIND_DIR);
        bool ign = ignore_set_path(a->ignore, a->rootfd, x->path, is_dir);
        if (x->op == BS_OP_MOVE) {
                bool ign_to = ignore_set_path(a->ignore, a->rootfd, x->path2, have && m->kind == BS_KIND_DIR);
                if (ign && ign_to)
                        goto out;
                if (ign) {
                        a->need_snapshot = true;
                        goto out;
                }
                if (ign_to) {
                        if (have)
                                (void) apply_delete_tree(a, x->path, x->seq);
                        goto out;
                }
        } else if (ign)
                goto out;
        if (x->op == BS_OP_MOVE) {
                apply_move(a, x, l, m);
                local_scan_forget(a); /* the directory kept open may have moved */
                goto out;
        }
        if (x->op == BS_OP_DELETE) {
                apply_delete(a, x, m, have);
                goto out;
        }
        if (have && !apply_is_news(m, x, snapshot))
                goto out;
        /* A file new to this computer (a join) is not looked for: the
         * rename that places it refuses to replace what is there. */
        if (x->op == BS_OP_PUT && !have && x->ready) {
                l->exists = false;
                l->kind = BS_KIND_NONE;
                l->target[0] = 0;
        } else if (local_stat(a, x->path, l) < 0)
                goto out;
        switch (x->op) {
        case BS_OP_PUT:
                apply_put(a, x, l, m, have);
                break;
        case BS_OP_MKDIR:
                apply_mkdir(a, x, l, m, have);
                break;
        case BS_OP_SYMLINK:
                apply_symlink(a, x, l, m, have);
                break;
        }
out:
        free(l);
        free(m);
}
