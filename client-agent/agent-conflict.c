/* agent-conflict.c - names for the local copy kept when two computers collide */
#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent-conflict.h"
#include "bs-path.h"
#include "bs-proto.h"

static const char tag[] = ".conflict-";
#define TAG_LEN (sizeof(tag) - 1)

/* True when s[0..n) is exactly ".conflict-LABEL-YYYYMMDD-HHMMSS". */
static bool is_marker(const char *s, size_t n) {
        if (n < TAG_LEN + 1 + 16 || strncmp(s, tag, TAG_LEN) != 0)
                return false;
        const char *e = s + n;
        for (int i = 1; i <= 15; i++) {
                bool want_dash = i == 7 || i == 16;
                if (want_dash ? e[-i] != '-' : !isdigit((unsigned char) e[-i]))
                        return false;
        }
        if (e[-16] != '-')
                return false;
        for (const char *p = s + TAG_LEN; p < e - 16; p++)
                if (!isalnum((unsigned char) *p) && *p != '_' && *p != '-')
                        return false;
        return true;
}

/* Length of s[0..n) without a trailing "-N" copy counter. */
static size_t strip_counter(const char *s, size_t n) {
        size_t k = n;
        while (k > 0 && n - k < 4 && isdigit((unsigned char) s[k - 1]))
                k--;
        /* Only a counter after the full HHMMSS stamp: "-YYYYMMDD-HHMMSS-N". */
        if (k < n && k > 17 && s[k - 1] == '-' && is_marker(s, k - 1))
                return k - 1;
        return n;
}

/* Length of a marker that ends s[0..n), or 0. */
static size_t marker_len(const char *s, size_t n) {
        for (size_t i = n; i-- > 0;)
                if (s[i] == '.' && n - i >= TAG_LEN && strncmp(s + i, tag, TAG_LEN) == 0)
                        return is_marker(s + i, strip_counter(s + i, n - i)) ? n - i : 0;
        return 0;
}

int conflict_name(const char *path, const char *device, time_t when, unsigned n, char *out, size_t outsz) {
        size_t dir_len = bs_path_parent_len(path);
        const char *base = bs_path_base(path);
        size_t blen = strlen(base);
        char stamp[32], suffix[16] = "";
        struct tm tm;

        /* The extension is what follows the last dot, unless the dot leads. */
        const char *dot = strrchr(base, '.');
        size_t stem = dot && dot != base ? (size_t) (dot - base) : blen;
        if (marker_len(base, blen) > 0)
                stem = blen; /* "x.conflict-d-YYYYMMDD-HHMMSS": no extension */
        const char *ext = base + stem;
        /* Remove an earlier marker so copies of copies do not nest. */
        stem -= marker_len(base, stem);

        gmtime_r(&when, &tm);
        strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
        if (n > 1)
                snprintf(suffix, sizeof(suffix), "-%u", n);

        int w;
        if (dir_len)
                w = snprintf(out, outsz, "%.*s/%.*s.conflict-%s-%s%s%s", (int) dir_len, path, (int) stem, base,
                             device, stamp, suffix, ext);
        else
                w = snprintf(out, outsz, "%.*s.conflict-%s-%s%s%s", (int) stem, base, device, stamp, suffix, ext);
        if (w < 0 || (size_t) w >= outsz)
                return -ENAMETOOLONG;
        if (strlen(bs_path_base(out)) > BS_NAME_MAX || (size_t) w > BS_PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

bool conflict_is_copy(const char *path) {
        const char *base = bs_path_base(path);
        size_t blen = strlen(base);
        if (marker_len(base, blen) > 0)
                return true;
        /* Or with the extension after the marker: cut at the last dot. */
        const char *dot = strrchr(base, '.');
        return dot && dot != base && marker_len(base, (size_t) (dot - base)) > 0;
}

void conflict_device_label(const char *in, char *out, size_t outsz) {
        size_t o = 0;
        for (const char *p = in; *p && o + 1 < outsz && o < 32; p++) {
                unsigned char c = (unsigned char) *p;
                if (c == '.')
                        break; /* short host name */
                out[o++] = isalnum(c) || c == '_' || c == '-' ? (char) c : '_';
        }
        if (o == 0 && outsz > 7)
                o = (size_t) snprintf(out, outsz, "device");
        out[o] = 0;
}
