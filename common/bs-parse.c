/* bs-parse.c - parsing of the values people type: durations, ports, booleans */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "bs-parse.h"

/* A unit a number may carry, and what one of it is worth. */
typedef struct Unit {
        const char *unit;
        uint64_t factor;
} Unit;

/* A decimal number followed by exactly one of units; overflow is -EINVAL. */
static int parse_with_unit(const char *s, const Unit *units, size_t n, uint64_t *ret) {
        char *end;

        if (!s || !isdigit((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno != 0)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (strcmp(end, units[i].unit) == 0) {
                        if (v > UINT64_MAX / units[i].factor)
                                return -EINVAL;
                        *ret = v * units[i].factor;
                        return 0;
                }
        return -EINVAL;
}

int bs_parse_duration(const char *s, uint64_t *usec) {
        static const Unit units[] = {
                { "", 1000000ULL },   { "s", 1000000ULL },          { "ms", 1000ULL },
                { "m", 60000000ULL }, { "min", 60000000ULL },       { "h", 3600000000ULL },
                { "d", 86400000000ULL }, { "w", 604800000000ULL },
        };
        return parse_with_unit(s, units, sizeof(units) / sizeof(units[0]), usec);
}

int bs_parse_size(const char *s, uint64_t *bytes) {
        static const Unit units[] = {
                { "", 1 },             { "B", 1 },             { "K", 1ULL << 10 }, { "KiB", 1ULL << 10 },
                { "M", 1ULL << 20 },   { "MiB", 1ULL << 20 },  { "G", 1ULL << 30 }, { "GiB", 1ULL << 30 },
                { "T", 1ULL << 40 },   { "TiB", 1ULL << 40 },
        };
        return parse_with_unit(s, units, sizeof(units) / sizeof(units[0]), bytes);
}

int bs_parse_port(const char *s, uint16_t *port) {
        char *end;
        if (!s || !isdigit((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno != 0 || *end || v > 65535)
                return -EINVAL;
        *port = (uint16_t) v;
        return 0;
}

int bs_parse_bool(const char *s, bool *b) {
        static const char *const yes[] = { "yes", "true", "on", "1" }, *const no[] = { "no", "false", "off", "0" };
        for (size_t i = 0; i < 4; i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *b = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *b = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* One word of max-delete: a count, or a share with '%'. */
static int delete_limit_word(const char *w, size_t n, BsDeleteLimit *l, bool *count, bool *share) {
        char buf[24];
        if (n == 0 || n >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, w, n);
        buf[n] = 0;
        bool pct = buf[n - 1] == '%';
        if (pct)
                buf[--n] = 0;
        if (n == 0 || n > 19 || strspn(buf, "0123456789") != n)
                return -EINVAL;
        unsigned long long v = strtoull(buf, NULL, 10);
        if (pct) {
                if (*share || v > 100)
                        return -EINVAL;
                l->percent = (unsigned) v;
                *share = true;
        } else {
                if (*count)
                        return -EINVAL;
                l->files = v;
                *count = true;
        }
        return 0;
}

int bs_parse_delete_limit(const char *s, BsDeleteLimit *ret) {
        BsDeleteLimit l = {};
        bool count = false, share = false, b;
        if (bs_parse_bool(s, &b) == 0 && !b && strcmp(s, "0") != 0) {
                *ret = (BsDeleteLimit) { .off = true };
                return 0;
        }
        for (const char *p = s;;) {
                p += strspn(p, " \t");
                if (!*p)
                        break;
                size_t n = strcspn(p, " \t");
                if (delete_limit_word(p, n, &l, &count, &share) < 0)
                        return -EINVAL;
                p += n;
        }
        if (!count && !share)
                return -EINVAL;
        *ret = l;
        return 0;
}

bool bs_delete_limit_exceeded(const BsDeleteLimit *l, uint64_t n, uint64_t total) {
        if (l->off || n <= l->files)
                return false;
        /* n > total * percent / 100, without the division's rounding. */
        return (unsigned __int128) n * 100 > (unsigned __int128) total * l->percent;
}

/* Read exactly n digits as a number; NULL when they are not there. */
static const char *digits(const char *p, int n, int *v) {
        *v = 0;
        for (int i = 0; i < n; i++, p++) {
                if (!isdigit((unsigned char) *p))
                        return NULL;
                *v = *v * 10 + (*p - '0');
        }
        return p;
}

int bs_parse_time(const char *s, time_t now, time_t *ret) {
        struct tm tm = { .tm_isdst = -1 };
        int y, mo, d, h = 0, mi = 0, sec = 0, zh, zm;
        const char *p;

        if (!s || !*s)
                return -EINVAL;
        if (*s == '@' || *s == '-') {
                char *end;
                if (*s == '-') {
                        uint64_t usec;
                        if (bs_parse_duration(s + 1, &usec) < 0 || usec / 1000000 > (uint64_t) now)
                                return -EINVAL;
                        *ret = now - (time_t) (usec / 1000000);
                        return 0;
                }
                if (!isdigit((unsigned char) s[1]))
                        return -EINVAL;
                errno = 0;
                long long v = strtoll(s + 1, &end, 10);
                if (errno || *end)
                        return -EINVAL;
                *ret = (time_t) v;
                return 0;
        }
        if (!(p = digits(s, 4, &y)) || *p++ != '-' || !(p = digits(p, 2, &mo)) || *p++ != '-' ||
            !(p = digits(p, 2, &d)))
                return -EINVAL;
        if (*p == 'T' || *p == ' ') {
                p++;
                if (!(p = digits(p, 2, &h)) || *p++ != ':' || !(p = digits(p, 2, &mi)))
                        return -EINVAL;
                if (*p == ':' && !(p = digits(p + 1, 2, &sec)))
                        return -EINVAL;
        }
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
                return -EINVAL;
        tm.tm_year = y - 1900;
        tm.tm_mon = mo - 1;
        tm.tm_mday = d;
        tm.tm_hour = h;
        tm.tm_min = mi;
        tm.tm_sec = sec;
        if (*p == 0) {
                time_t t = mktime(&tm);
                if (t == (time_t) -1 || tm.tm_mday != d)
                        return -EINVAL;
                *ret = t;
                return 0;
        }
        long off = 0;
        if (*p == 'Z')
                p++;
        else if (*p == '+' || *p == '-') {
                int sign = *p++ == '-' ? -1 : 1;
                if (!(p = digits(p, 2, &zh)))
                        return -EINVAL;
                if (*p == ':')
                        p++;
                if (!(p = digits(p, 2, &zm)) || zh > 23 || zm > 59)
                        return -EINVAL;
                off = sign * (zh * 3600L + zm * 60L);
        }
        if (*p)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t == (time_t) -1 || tm.tm_mday != d)
                return -EINVAL;
        *ret = t - off;
        return 0;
}
