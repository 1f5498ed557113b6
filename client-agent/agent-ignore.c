/* agent-ignore.c - the agent's ignore set over bs-ignore (work in progress) */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent-ignore.h"
#include "bs-fs.h"
#include "bs-macro.h"
#include "bs-path.h"
#include "bs-proto.h"

/* Ignore files bigger than this are read only this far. */
#define IGNORE_FILE_MAX (256u * 1024)

/* The cache-directory convention (bford.info/cachedir): a directory
 * holding a CACHEDIR.TAG that starts with this is a cache. */
#define CACHEDIR_TAG "CACHEDIR.TAG"
#define CACHEDIR_SIGNATURE "Signature: 8a477f597d28d172789f06886806bc55"

typedef struct DirRead {
        char *dir;
        bool cache; /* tagged as a cache directory */
} DirRead;

struct IgnoreSet {
        BsIgnore *ig;
        bool caches;  /* cache directories are ignored (with the defaults) */
        char **patterns; /* this computer's, kept for ignore_set_fresh() */
        size_t n_patterns;
        DirRead *read; /* directories whose ignore file was read (or found absent), sorted */
        size_t n_read, cap_read;
        /* The last directory found not ignored: neither it nor anything
         * above it is, and their files are read. A scan asks about each
         * entry of the directory it is in, and then only the entry's own
         * name needs a look. Forgotten when any ignore file changes. */
        char ok_dir[BS_PATH_MAX + 1];
        size_t ok_len;
        bool ok;
};

int ignore_set_new(bool defaults, char *const *patterns, size_t n, IgnoreSet **ret) {
        IgnoreSet *s = calloc(1, sizeof(*s));
        int r = s ? bs_ignore_new(&s->ig) : -ENOMEM;
        if (r == 0 && defaults) {
                r = bs_ignore_add_defaults(s->ig);
                s->caches = true;
        }
        if (r == 0 && n > 0 && !(s->patterns = calloc(n, sizeof(char *))))
                r = -ENOMEM;
        for (size_t i = 0; r >= 0 && i < n; i++) {
                r = bs_ignore_add_local(s->ig, patterns[i]);
                if (r >= 0 && !(s->patterns[s->n_patterns++] = strdup(patterns[i])))
                        r = -ENOMEM;
        }
        if (r < 0) {
                ignore_set_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

int ignore_set_fresh(const IgnoreSet *s, IgnoreSet **ret) {
        return ignore_set_new(s->caches, s->patterns, s->n_patterns, ret);
}

IgnoreSet *ignore_set_free(IgnoreSet *s) {
        if (s) {
                bs_ignore_free(s->ig);
                for (size_t i = 0; i < s->n_patterns; i++)
                        free(s->patterns[i]);
                free(s->patterns);
                for (size_t i = 0; i < s->n_read; i++)
                        free(s->read[i].dir);
                free(s->read);
                free(s);
        }
        return NULL;
}

/* Where dir is in the sorted list, or would go: every path decision
 * looks up each directory above it, so this must not scan the list. */
static size_t read_pos(const IgnoreSet *s, const char *dir, bool *found) {
        size_t lo = 0, hi = s->n_read;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(s->read[mid].dir, dir);
                if (c == 0) {
                        *found = true;
                        return mid;
                }
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *found = false;
        return lo;
}

static DirRead *find_read(const IgnoreSet *s, const char *dir) {
        bool found;
        size_t i = read_pos(s, dir, &found);
        return found ? &s->read[i] : NULL;
}

/* Whether dir holds a CACHEDIR.TAG with the convention's signature. */
static bool is_cache_dir(int rootfd, const char *dir) {
        char path[BS_PATH_MAX + sizeof(CACHEDIR_TAG) + 2], buf[sizeof(CACHEDIR_SIGNATURE) - 1];
        int w = snprintf(path, sizeof(path), "%s/%s", dir, CACHEDIR_TAG);
        if (!dir[0] || w < 0 || (size_t) w >= sizeof(path))
                return false;
        int fd = bs_open_read_beneath(rootfd, path);
        if (fd < 0)
                return false;
        ssize_t n = bs_pread_full(fd, buf, sizeof(buf), 0);
        close(fd);
        return n == (ssize_t) sizeof(buf) && memcmp(buf, CACHEDIR_SIGNATURE, sizeof(buf)) == 0;
}

/* Read dir's ignore file into the set (none: no patterns). */
static int read_file(IgnoreSet *s, int rootfd, const char *dir) {
        char path[BS_PATH_MAX + sizeof(BS_IGNORE_FILE) + 2];
        int w = dir[0] ? snprintf(path, sizeof(path), "%s/%s", dir, BS_IGNORE_FILE)
                       : snprintf(path, sizeof(path), "%s", BS_IGNORE_FILE);
        if (w < 0 || (size_t) w >= sizeof(path))
                return -ENAMETOOLONG;
        if (s->n_read == s->cap_read) {
                size_t cap = s->cap_read ? 2 * s->cap_read : 16;
                DirRead *v = realloc(s->read, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                s->read = v;
                s->cap_read = cap;
        }
        char *d = strdup(dir);
        if (!d)
                return -ENOMEM;
        bool found;
        size_t at = read_pos(s, dir, &found);
        memmove(s->read + at + 1, s->read + at, (s->n_read - at) * sizeof(*s->read));
        s->read[at] = (DirRead) { .dir = d, .cache = s->caches && is_cache_dir(rootfd, dir) };
        s->n_read++;
        int fd = bs_open_read_beneath(rootfd, path);
        if (fd < 0) {
                bs_ignore_drop_file(s->ig, dir);
                return 0;
        }
        char *buf = malloc(IGNORE_FILE_MAX);
        ssize_t n = buf ? bs_pread_full(fd, buf, IGNORE_FILE_MAX, 0) : -ENOMEM;
        close(fd);
        int r = n < 0 ? (int) n : bs_ignore_set_file(s->ig, dir, buf, (size_t) n);
        free(buf);
        return r < 0 ? r : 0;
}

/* Read dir's ignore file (and cache tag) once: whether dir is a cache. */
static bool visit(IgnoreSet *s, int rootfd, const char *dir) {
        DirRead *d = find_read(s, dir);
        if (!d && read_file(s, rootfd, dir) == 0)
                d = find_read(s, dir);
        return d && d->cache;
}

/* Whether the directory above path, and all above it, are known not ignored. */
static bool parent_ok(const IgnoreSet *s, const char *path) {
        size_t n = bs_path_parent_len(path);
        return s->ok && n <= s->ok_len && memcmp(path, s->ok_dir, n) == 0 &&
               (n == 0 || n == s->ok_len || s->ok_dir[n] == '/');
}

static bool remember(IgnoreSet *s, const char *path, size_t len, bool is_dir, bool ignored) {
        if (!ignored && is_dir) {
                memcpy(s->ok_dir, path, len + 1);
                s->ok_len = len;
                s->ok = true;
        }
        return ignored;
}

bool ignore_set_path(IgnoreSet *s, int rootfd, const char *path, bool is_dir) {
        char dir[BS_PATH_MAX + 1];
        size_t len = strlen(path);
        if (!s || len > BS_PATH_MAX)
                return false;
        if (parent_ok(s, path)) {
                if (is_dir && visit(s, rootfd, path))
                        return true;
                return remember(s, path, len, is_dir, bs_ignore_match(s->ig, path, is_dir));
        }
        /* Every directory above path, top first, and path itself when it
         * is one: their ignore files, and whether one is a cache. */
        for (size_t i = 0; i <= len; i++) {
                bool end = i == len;
                if (!end && path[i] != '/')
                        continue;
                if (end && !is_dir)
                        break;
                memcpy(dir, path, i);
                dir[i] = 0;
                if (visit(s, rootfd, dir))
                        return true;
        }
        (void) visit(s, rootfd, "");
        return remember(s, path, len, is_dir, bs_ignore_path(s->ig, path, is_dir));
}

int ignore_set_reload(IgnoreSet *s, int rootfd, const char *dir) {
        bool found;
        s->ok = false;
        size_t at = read_pos(s, dir, &found);
        if (found) {
                free(s->read[at].dir);
                memmove(s->read + at, s->read + at + 1, (s->n_read - at - 1) * sizeof(*s->read));
                s->n_read--;
        }
        int r = read_file(s, rootfd, dir);
        return r < 0 ? r : 1;
}

bool ignore_is_file(const char *path, char *dir) {
        const char *base = bs_path_base(path);
        if (strcmp(base, BS_IGNORE_FILE) != 0)
                return false;
        size_t n = bs_path_parent_len(path);
        memcpy(dir, path, n);
        dir[n] = 0;
        return true;
}
