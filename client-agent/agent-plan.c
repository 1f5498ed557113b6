/* agent-plan.c - from local changes to a list of requests */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent-plan.h"
#include "agent-watch.h"
#include "bs-fs.h"
#include "bs-log.h"
#include "bs-macro.h"
#include "bs-path.h"

static void op_done(PushOp *op) {
        free(op->path);
        free(op->path2);
        free(op->e);
        bs_blocks_free(op->blocks);
        free(op->delta_bases);
        if (op->fd >= 0)
                close(op->fd);
}

void plan_clear(Plan *p) {
        for (size_t i = 0; i < p->n; i++)
                op_done(&p->ops[i]);
        free(p->ops);
        for (size_t i = 0; i < p->n_dirs; i++)
                free(p->dirs[i]);
        free(p->dirs);
        for (size_t i = 0; i < p->n_later; i++)
                free(p->later[i]);
        free(p->later);
        *p = (Plan) {};
}

void plan_filter(Plan *p, bool (*keep)(const PushOp *op, void *userdata), void *userdata) {
        size_t k = 0;
        for (size_t i = 0; i < p->n; i++) {
                if (keep(&p->ops[i], userdata))
                        p->ops[k++] = p->ops[i];
                else
                        op_done(&p->ops[i]);
        }
        p->n = k;
}

/* A directory this plan makes, for plan_made_dir(); without memory, its
 * children's parent is looked up again (and made again) at worst. */
static void plan_note_dir(Plan *p, const char *path) {
        if (p->n_dirs >= 1u << 20)
                return;
        if (p->n_dirs == p->cap_dirs) {
                size_t cap = p->cap_dirs ? p->cap_dirs * 2 : 64;
                char **d = realloc(p->dirs, cap * sizeof(char *));
                if (!d)
                        return;
                p->dirs = d;
                p->cap_dirs = cap;
        }
        if ((p->dirs[p->n_dirs] = strdup(path)))
                p->n_dirs++;
}

/* Keep path (owned: taken over, else copied) for plan_more(); without
 * memory it waits in the agent's dirty list instead. */
static void plan_defer(Agent *a, Plan *p, const char *path, char *owned) {
        if (!owned)
                owned = strdup(path);
        if (owned && p->n_later == p->cap_later) {
                size_t cap = p->cap_later ? p->cap_later * 2 : 16;
                char **v = realloc(p->later, cap * sizeof(char *));
                if (v) {
                        p->later = v;
                        p->cap_later = cap;
                }
        }
        if (!owned || p->n_later == p->cap_later) {
                agent_mark_dirty(a, path, true);
                p->deferred = true;
                free(owned);
                return;
        }
        p->later[p->n_later++] = owned;
}

void plan_drop_done(Plan *p, size_t k) {
        for (size_t i = 0; i < k; i++)
                op_done(&p->ops[i]);
        memmove(p->ops, p->ops + k, (p->n - k) * sizeof(*p->ops));
        p->n -= k;
        /* A directory whose MKDIR was answered is in the manifest now (or
         * was refused): only those still on their way are made here. */
        for (size_t i = 0; i < p->n_dirs; i++)
                free(p->dirs[i]);
        p->n_dirs = 0;
        for (size_t i = 0; i < p->n; i++)
                if (p->ops[i].type == BS_MSG_MKDIR)
                        plan_note_dir(p, p->ops[i].path);
}

void plan_requeue_later(Agent *a, Plan *p) {
        for (size_t i = 0; i < p->n_later; i++) {
                agent_mark_dirty(a, p->later[i], true);
                free(p->later[i]);
        }
        if (p->n_later > 0)
                p->deferred = true;
        p->n_later = 0;
}

PushOp *plan_add(Plan *p, uint8_t type, const char *path, const char *path2, uint64_t base,
                        const LocalEntry *l) {
        if (p->n == p->cap) {
                size_t cap = p->cap ? p->cap * 2 : 64;
                PushOp *o = realloc(p->ops, cap * sizeof(*o));
                if (!o)
                        return NULL;
                p->ops = o;
                p->cap = cap;
        }
        PushOp *op = &p->ops[p->n];
        *op = (PushOp) { .type = type, .base = base, .fd = -1 };
        op->path = strdup(path);
        op->path2 = path2 ? strdup(path2) : NULL;
        if (l) {
                /* Only as much of target as the link text needs: a plan of
                 * 100,000 files must not cost 4 KiB each. Nothing copies
                 * op->e as a whole struct. */
                ManifestEntry full;
                local_to_manifest(l, &full);
                size_t sz = offsetof(ManifestEntry, target) + strlen(full.target) + 1;
                op->e = malloc(sz);
                if (op->e)
                        memcpy(op->e, &full, sz);
        }
        if (!op->path || (path2 && !op->path2) || (l && !op->e)) {
                free(op->path);
                free(op->path2);
                free(op->e);
                return NULL;
        }
        p->n++;
        if (type == BS_MSG_MKDIR)
                plan_note_dir(p, path);
        return op;
}

static bool plan_made_dir(const Plan *p, const char *dir) {
        for (size_t i = p->n_dirs; i-- > 0;)
                if (strcmp(p->dirs[i], dir) == 0)
                        return true;
        return false;
}


bool plan_known(Agent *a, const char *path) {
        ManifestEntry *m = malloc(sizeof(*m));
        bool have = m && manifest_get(a->state, path, m) == 0;
        free(m);
        return have;
}

static int reconcile_entry(Agent *a, Plan *p, const char *path, bool recursive, LocalEntry *l, ManifestEntry *m,
                           bool have);

/* A directory's disk listing (sorted by name) walked beside its manifest
 * rows (sorted by path, so by name too): one query per directory instead
 * of one per entry, and no stat for what is gone. */
typedef struct Visit {
        Agent *a;
        Plan *p;
        const char *dir;
        int fd;
        BsDirent *names;
        size_t n, next;
        LocalEntry *l;
        ManifestEntry *m;
        char **gone;
        size_t n_gone, cap_gone;
        int r;
} Visit;

static int name_cmp(const void *x, const void *y) {
        return strcmp(((const BsDirent *) x)->name, ((const BsDirent *) y)->name);
}

/* Reconcile the listing's entry i, with what the manifest has for it (e). */
static void visit_listed(Visit *v, size_t i, const ManifestEntry *e) {
        char child[BS_PATH_MAX + 2];
        const char *name = v->names[i].name;
        if (bs_path_is_temp(name))
                return;
        /* An ignored child is skipped by reconcile_entry(), which knows
         * whether it is a directory. */
        int w = v->dir[0] ? snprintf(child, sizeof(child), "%s/%s", v->dir, name)
                          : snprintf(child, sizeof(child), "%s", name);
        if (w <= 0 || (size_t) w > BS_PATH_MAX || bs_path_check(child, (size_t) w) < 0) {
                log_warning("skipping %s/%s: path too long for the protocol", v->dir, name);
                return;
        }
        if (!e && v->p->slice && v->p->n >= v->p->slice && v->names[i].type == DT_DIR) {
                plan_defer(v->a, v->p, child, NULL);
                return;
        }
        int k = local_stat_at(v->fd, name, v->l);
        if (k == 0) {
                if (e)
                        memcpy(v->m, e, sizeof(*v->m));
                k = reconcile_entry(v->a, v->p, child, true, v->l, v->m, e != NULL);
        }
        if (k < 0 && v->r == 0)
                v->r = k;
}

static int visit_row(const char *path, const ManifestEntry *e, void *userdata) {
        Visit *v = userdata;
        const char *name = bs_path_base(path);
        int c = 1;
        while (v->next < v->n && (c = strcmp(v->names[v->next].name, name)) < 0)
                visit_listed(v, v->next++, NULL);
        if (c == 0) {
                visit_listed(v, v->next++, e);
                return 0;
        }
        /* Gone from disk: deleted once the listing is done. */
        if (ignore_set_path(v->a->ignore, v->a->rootfd, path, e->kind == BS_KIND_DIR))
                return 0; /* absent because ignored here: that deletes nothing elsewhere */
        if (v->n_gone == v->cap_gone) {
                size_t cap = v->cap_gone ? v->cap_gone * 2 : 16;
                char **g = realloc(v->gone, cap * sizeof(char *));
                if (!g)
                        return -ENOMEM;
                v->gone = g;
                v->cap_gone = cap;
        }
        if ((v->gone[v->n_gone] = strdup(path)))
                v->n_gone++;
        return 0;
}

/* Visit disk children, then delete what the manifest has and the disk lost. */
static int reconcile_children(Agent *a, Plan *p, const char *dir, bool fresh) {
        _cleanup_(closep) int fd = dir[0] ? bs_open_beneath(a->rootfd, dir, O_RDONLY | O_DIRECTORY, 0)
                                          : openat(a->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        Visit v = { .a = a, .p = p, .dir = dir, .fd = fd };
        /* Watched before it is listed: a change is in the listing or in an
         * event. Also after the first scan: a directory's own event may
         * have been read when it was gone from the name it had (made, then
         * moved or its parent moved, before the events were read), which
         * left it unwatched; one watched already costs a system call. */
        int k = watcher_add_dir(a->watcher, dir);
        if (k < 0 && k != -ENOSPC)
                return k;
        int r = bs_dir_list_fd(fd, &v.names, &v.n);
        if (r < 0)
                return r;
        v.l = malloc(sizeof(*v.l));
        v.m = malloc(sizeof(*v.m));
        if (!v.l || !v.m) {
                r = -ENOMEM;
                goto out;
        }
        if (v.n > 1) /* an empty directory's list is NULL */
                qsort(v.names, v.n, sizeof(*v.names), name_cmp);
        /* A new directory has no rows: nothing to ask, nothing gone. */
        if (!fresh)
                r = manifest_children(a->state, dir, visit_row, &v);
        while (r >= 0 && v.next < v.n)
                visit_listed(&v, v.next++, NULL);
        for (size_t i = 0; i < v.n_gone; i++) {
                if (r >= 0 && manifest_get(a->state, v.gone[i], v.m) == 0 &&
                    !plan_add(p, BS_MSG_DELETE, v.gone[i], NULL, v.m->version, NULL))
                        r = -ENOMEM;
                free(v.gone[i]);
        }
out:
        free(v.gone);
        free(v.l);
        free(v.m);
        bs_dir_list_free(v.names, v.n);
        return r < 0 ? r : v.r;
}

/* Make sure the parent of a new entry exists on the server first. */
static bool parent_known(Agent *a, Plan *p, const char *path, ManifestEntry *scratch) {
        size_t n = bs_path_parent_len(path);
        if (n == 0)
                return true;
        char parent[BS_PATH_MAX + 1];
        memcpy(parent, path, n);
        parent[n] = 0;
        if (manifest_get(a->state, parent, scratch) == 0 && scratch->kind == BS_KIND_DIR)
                return true;
        return plan_made_dir(p, parent);
}

int plan_reconcile(Agent *a, Plan *p, const char *path, bool recursive) {
        _cleanup_(freep) LocalEntry *l = malloc(sizeof(*l));
        _cleanup_(freep) ManifestEntry *m = malloc(sizeof(*m));
        if (!l || !m)
                return -ENOMEM;
        if (path[0] == 0) {
                int k = reconcile_children(a, p, "", false);
                return k < 0 ? k : 1;
        }

        int r = local_stat(a, path, l);
        if (r < 0)
                return r;
        return reconcile_entry(a, p, path, recursive, l, m, manifest_get(a->state, path, m) == 0);
}

int plan_more(Agent *a, Plan *p, size_t slice) {
        char **take = p->later;
        size_t n = p->n_later, i;
        _cleanup_(freep) ManifestEntry *m = malloc(sizeof(*m));
        if (!m)
                return -ENOMEM;
        p->later = NULL;
        p->n_later = p->cap_later = 0;
        p->slice = p->n + slice;
        for (i = 0; i < n && p->n < p->slice; i++) {
                /* A parent refused or gone is looked at after the answers,
                 * never planned twice while its first plan is in flight. */
                if (!parent_known(a, p, take[i], m)) {
                        agent_mark_dirty(a, take[i], true);
                        p->deferred = true;
                } else {
                        int r = plan_reconcile(a, p, take[i], true);
                        if (r < 0)
                                log_warning("could not look at %s: %s", take[i], strerror(-r));
                }
                free(take[i]);
        }
        /* What this slice had no room for goes after what it deferred:
         * one subtree is finished before the next begins. */
        for (; i < n; i++)
                plan_defer(a, p, take[i], take[i]);
        free(take);
        return 0;
}

/* plan_reconcile() of path, once l says what the disk holds and m (when
 * have) what the manifest records; both are scratch afterwards. */
static int reconcile_entry(Agent *a, Plan *p, const char *path, bool recursive, LocalEntry *l, ManifestEntry *m,
                           bool have) {
        int r;
        /* Ignored here: neither uploaded nor, absent, deleted elsewhere. */
        if (ignore_set_path(a->ignore, a->rootfd, path,
                            l->exists ? l->kind == BS_KIND_DIR : have && m->kind == BS_KIND_DIR))
                return 0;

        if (!l->exists || l->kind == BS_KIND_NONE) {
                if (l->exists)
                        log_info("skipping %s: not a regular file, directory or symlink", path);
                if (!have) {
                        /* Written through a removed name of a linked file?
                         * If the name went unseen (made and removed while
                         * events waited, or before its directory was
                         * watched), its inode is unknown: only a look at
                         * the whole tree finds its other names. */
                        if (!l->exists && !local_removed_written(a, path) &&
                            !watcher_saw_removed(a->watcher, path))
                                a->verify_wanted = true;
                        return 0;
                }
                if (m->kind == BS_KIND_FILE && m->ino) {
                        /* It may live on under another name (link, then
                         * unlink: git, mail programs), perhaps not yet in
                         * the manifest, and be written through this one. */
                        local_mark_links(a, path, m->ino);
                        agent_remember_gone_link(a, path, m->ino);
                }
                /* Delete the topmost vanished ancestor once, not each child. */
                char top[BS_PATH_MAX + 1];
                snprintf(top, sizeof(top), "%s", path);
                uint64_t base = m->version;
                for (;;) {
                        size_t k = bs_path_parent_len(top);
                        if (k == 0)
                                break;
                        char up[BS_PATH_MAX + 1];
                        memcpy(up, top, k);
                        up[k] = 0;
                        if (local_stat(a, up, l) < 0 || l->exists || manifest_get(a->state, up, m) < 0)
                                break;
                        memcpy(top, up, k + 1);
                        base = m->version;
                }
                if (p->n && p->ops[p->n - 1].type == BS_MSG_DELETE && bs_path_under(top, p->ops[p->n - 1].path))
                        return 1;
                return plan_add(p, BS_MSG_DELETE, top, NULL, base, NULL) ? 1 : -ENOMEM;
        }

        if (have && m->kind != l->kind) {
                if (!plan_add(p, BS_MSG_DELETE, path, NULL, m->version, NULL))
                        return -ENOMEM;
                have = false;
        }
        if (!have && !parent_known(a, p, path, m)) {
                /* The parent is new too: send it, with all it holds. */
                char parent[BS_PATH_MAX + 1];
                size_t k = bs_path_parent_len(path);
                memcpy(parent, path, k);
                parent[k] = 0;
                return plan_reconcile(a, p, parent, true);
        }

        switch (l->kind) {
        case BS_KIND_FILE:
                if (have && local_matches(l, m))
                        return 0;
                if (l->st.st_nlink > 1)
                        local_mark_links(a, path, (uint64_t) l->st.st_ino);
                /* Replaced (a save): the file it was may live on under
                 * another name, changed through this one before. */
                if (have && m->kind == BS_KIND_FILE && m->ino && m->ino != (uint64_t) l->st.st_ino)
                        local_mark_links(a, path, m->ino);
                return plan_add(p, BS_MSG_PUT, path, NULL, have ? m->version : 0, l) ? 0 : -ENOMEM;
        case BS_KIND_SYMLINK:
                if (have && local_matches(l, m))
                        return 0;
                return plan_add(p, BS_MSG_SYMLINK, path, l->target, have ? m->version : 0, l) ? 0 : -ENOMEM;
        case BS_KIND_DIR:
                if (!have) {
                        if (!plan_add(p, BS_MSG_MKDIR, path, NULL, 0, l))
                                return -ENOMEM;
                        return reconcile_children(a, p, path, true) < 0 ? -EIO : 1;
                }
                /* A mode changed here: MKDIR of the existing directory sets it. */
                if (!local_matches(l, m) && !plan_add(p, BS_MSG_MKDIR, path, NULL, m->version, l))
                        return -ENOMEM;
                if (recursive) {
                        r = reconcile_children(a, p, path, false);
                        return r < 0 ? r : 1;
                }
                return 0;
        }
        return 0;
}

int plan_path_cmp(const void *x, const void *y) {
        const unsigned char *s = (const unsigned char *) ((const DirtyPath *) x)->path;
        const unsigned char *t = (const unsigned char *) ((const DirtyPath *) y)->path;
        for (;; s++, t++) {
                unsigned cs = *s == '/' ? 1 : *s, ct = *t == '/' ? 1 : *t;
                if (cs != ct || cs == 0)
                        return (int) cs - (int) ct;
        }
}
