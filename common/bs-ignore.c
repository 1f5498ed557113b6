/* bs-ignore.c - gitignore-style patterns, matched segment by segment
 *
 * A pattern and a path are both cut at "/": "**" as a whole segment
 * stands for any number of path segments, every other pattern segment
 * for exactly one, matched by a glob in which "*" never crosses "/".
 * Both levels use the same greedy match that backtracks only to the
 * last star, so a hostile pattern costs at most length x length steps,
 * never an exponential search.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bs-ignore.h"
#include "bs-macro.h"

enum {
        PAT_NEGATE = 1,
        PAT_DIR_ONLY = 2,
        PAT_ANCHORED = 4,
};

/* Weakest first: a later source overrides an earlier one. */
enum {
        SRC_DEFAULT,
        SRC_FILE,
        SRC_LOCAL,
};

typedef struct Pattern {
        unsigned source, depth, flags;
        size_t order;
        char *dir; /* the ignore file's directory, "" at the top */
        size_t dir_len;
        char *pat;
        size_t plen;
        /* Bytes every match begins and ends with (a pattern without "/"):
         * most names fail these before any glob is walked. */
        size_t head, tail;
} Pattern;

struct BsIgnore {
        Pattern *p; /* weakest first */
        size_t n, cap, next_order;
};

static const char *const default_patterns[] = {
        "*~",             /* backups of emacs, gedit, nano and many more */
        ".#*",            /* emacs lock files */
        "\\#*#",          /* emacs auto-saves */
        ".*.sw[a-p]",     /* vim swap files */
        "4913",           /* vim's test of whether a directory is writable */
        ".~lock.*#",      /* LibreOffice locks */
        "~$*",            /* Microsoft Office owner files */
        ".~*",            /* Microsoft Office and WPS temporary files */
        "*.part",         /* downloads in progress (Firefox, KDE) */
        "*.crdownload",   /* Chrome downloads in progress */
        "*.partial",      /* downloads in progress (Edge, others) */
        ".DS_Store",      /* macOS folder settings */
        "._*",            /* macOS resource forks on foreign file systems */
        "Thumbs.db",      /* Windows thumbnail caches */
        "ehthumbs.db",
        "desktop.ini",    /* Windows folder settings */
        ".Trash-*/",      /* the freedesktop trash of a mounted volume */
        ".nfs*",          /* NFS silly-renamed files */
};

int bs_ignore_new(BsIgnore **ret) {
        BsIgnore *ig = calloc(1, sizeof(*ig));
        if (!ig)
                return -ENOMEM;
        *ret = ig;
        return 0;
}

static void pattern_free(Pattern *p) {
        free(p->dir);
        free(p->pat);
}

BsIgnore *bs_ignore_free(BsIgnore *ig) {
        if (ig) {
                for (size_t i = 0; i < ig->n; i++)
                        pattern_free(&ig->p[i]);
                free(ig->p);
                free(ig);
        }
        return NULL;
}

static int pattern_cmp(const void *x, const void *y) {
        const Pattern *a = x, *b = y;
        if (a->source != b->source)
                return a->source < b->source ? -1 : 1;
        if (a->depth != b->depth)
                return a->depth < b->depth ? -1 : 1;
        return a->order < b->order ? -1 : a->order > b->order;
}

/*
 * One line of an ignore file: 1 with the pattern in *pat (malloc'ed),
 * 0 when the line holds none (blank, a comment, "/" alone).
 */
static int parse_line(const char *line, size_t len, char **pat, size_t *plen, unsigned *flags) {
        *flags = 0;
        if (len > 0 && line[len - 1] == '\r')
                len--;
        if (len == 0 || line[0] == '#')
                return 0;
        /* Trailing spaces go, unless a backslash keeps one. */
        while (len > 0 && line[len - 1] == ' ' && !(len >= 2 && line[len - 2] == '\\'))
                len--;
        if (len > 0 && line[0] == '!') {
                *flags |= PAT_NEGATE;
                line++;
                len--;
        } else if (len >= 2 && line[0] == '\\' && (line[1] == '!' || line[1] == '#')) {
                line++;
                len--;
        }
        if (len > 0 && line[len - 1] == '/') {
                *flags |= PAT_DIR_ONLY;
                len--;
        }
        if (memchr(line, '/', len))
                *flags |= PAT_ANCHORED;
        if (len > 0 && line[0] == '/') {
                line++;
                len--;
        }
        if (len == 0)
                return 0;
        *pat = malloc(len + 1);
        if (!*pat)
                return -ENOMEM;
        memcpy(*pat, line, len);
        (*pat)[len] = 0;
        *plen = len;
        return 1;
}

static unsigned depth_of(const char *dir) {
        unsigned d = *dir ? 1 : 0;
        for (const char *c = dir; *c; c++)
                d += *c == '/';
        return d;
}

/* The literal text before the first special character, and after the
 * last "*" when nothing special follows it and no bracket comes before
 * it (a "*" inside "[...]" is one character). */
static void literal_ends(Pattern *p) {
        p->head = p->tail = 0;
        if (memchr(p->pat, '/', p->plen))
                return;
        while (p->head < p->plen && !strchr("*?[\\", p->pat[p->head]))
                p->head++;
        const char *star = memrchr(p->pat, '*', p->plen);
        if (!star || memchr(p->pat, '[', (size_t) (star - p->pat)))
                return;
        size_t at = (size_t) (star + 1 - p->pat);
        for (size_t i = at; i < p->plen; i++)
                if (strchr("?[\\", p->pat[i]))
                        return;
        p->tail = p->plen - at;
}

static int add_line(BsIgnore *ig, unsigned source, const char *dir, const char *line, size_t len) {
        Pattern p = { .source = source, .depth = depth_of(dir), .order = ig->next_order++ };
        int r = parse_line(line, len, &p.pat, &p.plen, &p.flags);
        if (r <= 0)
                return r;
        literal_ends(&p);
        p.dir_len = strlen(dir);
        p.dir = strdup(dir);
        if (!p.dir) {
                pattern_free(&p);
                return -ENOMEM;
        }
        if (ig->n == ig->cap) {
                size_t cap = ig->cap ? 2 * ig->cap : 32;
                Pattern *v = realloc(ig->p, cap * sizeof(*v));
                if (!v) {
                        pattern_free(&p);
                        return -ENOMEM;
                }
                ig->p = v;
                ig->cap = cap;
        }
        ig->p[ig->n++] = p;
        return 1;
}

static void sort(BsIgnore *ig) {
        if (ig->n > 1)
                qsort(ig->p, ig->n, sizeof(*ig->p), pattern_cmp);
}

int bs_ignore_add_defaults(BsIgnore *ig) {
        for (size_t i = 0; i < ELEMENTSOF(default_patterns); i++) {
                int r = add_line(ig, SRC_DEFAULT, "", default_patterns[i], strlen(default_patterns[i]));
                if (r < 0)
                        return r;
        }
        sort(ig);
        return 0;
}

void bs_ignore_drop_file(BsIgnore *ig, const char *dir) {
        size_t kept = 0;
        for (size_t i = 0; i < ig->n; i++) {
                if (ig->p[i].source == SRC_FILE && strcmp(ig->p[i].dir, dir) == 0)
                        pattern_free(&ig->p[i]);
                else
                        ig->p[kept++] = ig->p[i];
        }
        ig->n = kept;
}

int bs_ignore_set_file(BsIgnore *ig, const char *dir, const char *text, size_t n) {
        int count = 0;
        bs_ignore_drop_file(ig, dir);
        for (size_t i = 0; i < n;) {
                const char *nl = memchr(text + i, '\n', n - i);
                size_t len = nl ? (size_t) (nl - (text + i)) : n - i;
                int r = add_line(ig, SRC_FILE, dir, text + i, len);
                if (r < 0)
                        return r;
                count += r;
                i += len + 1;
        }
        sort(ig);
        return count;
}

int bs_ignore_add_local(BsIgnore *ig, const char *line) {
        int r = add_line(ig, SRC_LOCAL, "", line, strlen(line));
        if (r > 0)
                sort(ig);
        return r;
}

/* ---- the glob ---- */

/* The length of the character at s (n > 0 bytes left): a valid UTF-8
 * sequence whole, anything else one byte. */
static size_t char_len(const unsigned char *s, size_t n) {
        size_t len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 1;
        if (len == 1 || len > n)
                return 1;
        for (size_t i = 1; i < len; i++)
                if ((s[i] & 0xc0) != 0x80)
                        return 1;
        return len;
}

/* A character's value: its code point, or above all of them for a byte
 * that is not UTF-8, so that the two never compare equal. */
static uint32_t char_val(const unsigned char *s, size_t len) {
        if (len == 1)
                return s[0] < 0x80 ? s[0] : 0x110000u + s[0];
        uint32_t v = s[0] & (0x7f >> len);
        for (size_t i = 1; i < len; i++)
                v = v << 6 | (s[i] & 0x3f);
        return v;
}

static bool class_has(const char *name, size_t n, uint32_t c) {
        static const struct {
                const char *name;
                int (*fn)(int);
        } classes[] = {
                { "alnum", isalnum }, { "alpha", isalpha }, { "blank", isblank }, { "cntrl", iscntrl },
                { "digit", isdigit }, { "graph", isgraph }, { "lower", islower }, { "print", isprint },
                { "punct", ispunct }, { "space", isspace }, { "upper", isupper }, { "xdigit", isxdigit },
        };
        for (size_t i = 0; i < ELEMENTSOF(classes); i++)
                if (strlen(classes[i].name) == n && memcmp(classes[i].name, name, n) == 0)
                        return c < 0x80 && classes[i].fn((int) c);
        return false;
}

/*
 * The bracket expression at p (just after "["): whether it holds c, and
 * in *end where it closes. false with *end = NULL when it does not
 * close: then "[" is a literal.
 */
static bool bracket(const unsigned char *p, const unsigned char *pe, uint32_t c, const unsigned char **end) {
        bool neg = false, hit = false;
        *end = NULL;
        if (p < pe && (*p == '!' || *p == '^')) {
                neg = true;
                p++;
        }
        for (bool first = true; p < pe; first = false) {
                if (*p == ']' && !first) {
                        *end = p + 1;
                        return hit != neg;
                }
                if (*p == '[' && p + 1 < pe && p[1] == ':') {
                        const unsigned char *q = p + 2;
                        while (q + 1 < pe && !(q[0] == ':' && q[1] == ']'))
                                q++;
                        if (q + 1 < pe) {
                                hit |= class_has((const char *) p + 2, (size_t) (q - (p + 2)), c);
                                p = q + 2;
                                continue;
                        }
                }
                if (*p == '\\' && p + 1 < pe)
                        p++;
                size_t l = char_len(p, (size_t) (pe - p));
                uint32_t lo = char_val(p, l), hi = lo;
                p += l;
                if (p + 1 < pe && *p == '-' && p[1] != ']') {
                        p++;
                        if (*p == '\\' && p + 1 < pe)
                                p++;
                        l = char_len(p, (size_t) (pe - p));
                        hi = char_val(p, l);
                        p += l;
                }
                hit |= lo <= c && c <= hi;
        }
        return false;
}

/* One token of a segment glob against the character at s: its length in
 * the pattern, or 0 when it does not match. p is not at "*". */
static size_t token_match(const unsigned char *p, const unsigned char *pe, const unsigned char *s, size_t sl) {
        uint32_t c = char_val(s, sl);
        if (*p == '?')
                return 1;
        if (*p == '[') {
                const unsigned char *end;
                bool in = bracket(p + 1, pe, c, &end);
                if (end)
                        return in ? (size_t) (end - p) : 0;
                return c == '[' ? 1 : 0;
        }
        if (*p == '\\' && p + 1 < pe) {
                size_t el = char_len(p + 1, (size_t) (pe - p - 1));
                return el == sl && memcmp(p + 1, s, sl) == 0 ? 1 + el : 0;
        }
        size_t pl = char_len(p, (size_t) (pe - p));
        return pl == sl && memcmp(p, s, sl) == 0 ? pl : 0;
}

/* A glob without "/" against one segment: "*" any run, "?" and "[...]" one character. */
static bool segment_match(const unsigned char *p, const unsigned char *pe, const unsigned char *s,
                          const unsigned char *se) {
        const unsigned char *star_p = NULL, *star_s = NULL;
        while (s < se) {
                if (p < pe && *p == '*') {
                        while (p < pe && *p == '*')
                                p++;
                        star_p = p;
                        star_s = s;
                        continue;
                }
                size_t sl = char_len(s, (size_t) (se - s)), k;
                if (p < pe && (k = token_match(p, pe, s, sl)) > 0) {
                        p += k;
                        s += sl;
                        continue;
                }
                if (!star_p)
                        return false;
                /* Back to the last star, which takes one character more. */
                star_s += char_len(star_s, (size_t) (se - star_s));
                p = star_p;
                s = star_s;
        }
        while (p < pe && *p == '*')
                p++;
        return p == pe;
}

typedef struct Seg {
        const unsigned char *b, *e;
} Seg;

static bool is_starstar(Seg x) {
        return x.e - x.b == 2 && x.b[0] == '*' && x.b[1] == '*';
}

/* Cut [b, e) at "/" into up to max segments; 0 when there are more. */
static size_t cut(const unsigned char *b, const unsigned char *e, Seg *v, size_t max) {
        size_t n = 0;
        for (;;) {
                const unsigned char *slash = memchr(b, '/', (size_t) (e - b));
                if (n == max)
                        return 0;
                v[n++] = (Seg) { b, slash ? slash : e };
                if (!slash)
                        return n;
                b = slash + 1;
        }
}

static size_t count_segments(const char *s, size_t n) {
        size_t k = 1;
        for (size_t i = 0; i < n; i++)
                k += s[i] == '/';
        return k;
}

bool bs_glob_match(const char *pat, size_t plen, const char *str, size_t slen) {
        const unsigned char *p = (const unsigned char *) pat, *q = (const unsigned char *) str;
        /* Most patterns and names have no "/": one segment, no list. */
        if (!memchr(pat, '/', plen) && !memchr(str, '/', slen) && !(plen == 2 && pat[0] == '*' && pat[1] == '*'))
                return segment_match(p, p + plen, q, q + slen);
        /* A path has at most 2049 segments (4096 bytes): so has a pattern
         * worth matching; short ones stay on the stack. */
        enum { MAX_SEGS = 2050, STACK_SEGS = 32 };
        Seg stack[2 * STACK_SEGS], *ps = stack, *ss;
        size_t max = STACK_SEGS;
        bool ok = false;
        if (count_segments(pat, plen) > STACK_SEGS || count_segments(str, slen) > STACK_SEGS) {
                if (!(ps = malloc(2 * MAX_SEGS * sizeof(Seg))))
                        return false;
                max = MAX_SEGS;
        }
        ss = ps + max;
        size_t np = cut(p, p + plen, ps, max);
        size_t ns = cut(q, q + slen, ss, max);
        if (np == 0 || ns == 0)
                goto out;
        /* The same greedy match one level up: "**" takes any number of
         * segments, a trailing one at least one (what is inside, not the
         * directory itself). */
        size_t i = 0, j = 0, star_i = SIZE_MAX, star_j = 0;
        while (j < ns) {
                if (i < np && is_starstar(ps[i])) {
                        star_i = ++i;
                        star_j = j;
                        if (i == np) {
                                ok = true; /* trailing: the rest, at least one segment (j < ns) */
                                goto out;
                        }
                        continue;
                }
                if (i < np && segment_match(ps[i].b, ps[i].e, ss[j].b, ss[j].e)) {
                        i++;
                        j++;
                        continue;
                }
                if (star_i == SIZE_MAX)
                        goto out;
                i = star_i;
                j = ++star_j;
        }
        while (i < np && is_starstar(ps[i]) && i + 1 < np)
                i++;
        ok = i == np;
out:
        if (ps != stack)
                free(ps);
        return ok;
}

/* ---- deciding ---- */

static bool pattern_matches(const Pattern *p, const char *path, size_t len, bool is_dir) {
        const char *r = path;
        size_t rlen = len;
        if (p->dir_len > 0) {
                if (len <= p->dir_len || memcmp(path, p->dir, p->dir_len) != 0 || path[p->dir_len] != '/')
                        return false;
                r += p->dir_len + 1;
                rlen -= p->dir_len + 1;
        }
        if ((p->flags & PAT_DIR_ONLY) && !is_dir)
                return false;
        if (!(p->flags & PAT_ANCHORED)) {
                const char *slash = memrchr(r, '/', rlen);
                if (slash) {
                        rlen -= (size_t) (slash + 1 - r);
                        r = slash + 1;
                }
        }
        if (rlen < p->head + p->tail || memcmp(r, p->pat, p->head) != 0 ||
            memcmp(r + rlen - p->tail, p->pat + p->plen - p->tail, p->tail) != 0)
                return false;
        return bs_glob_match(p->pat, p->plen, r, rlen);
}

static bool match_len(const BsIgnore *ig, const char *path, size_t len, bool is_dir) {
        /* Strongest first: the first pattern that matches decides. */
        for (size_t i = ig->n; i-- > 0;)
                if (pattern_matches(&ig->p[i], path, len, is_dir))
                        return !(ig->p[i].flags & PAT_NEGATE);
        return false;
}

bool bs_ignore_match(const BsIgnore *ig, const char *path, bool is_dir) {
        return ig && match_len(ig, path, strlen(path), is_dir);
}

bool bs_ignore_path(const BsIgnore *ig, const char *path, bool is_dir) {
        if (!ig)
                return false;
        size_t len = strlen(path);
        for (const char *s = strchr(path, '/'); s; s = strchr(s + 1, '/'))
                if (match_len(ig, path, (size_t) (s - path), true))
                        return true;
        return match_len(ig, path, len, is_dir);
}
