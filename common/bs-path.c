/* bs-path.c - the path rules every side applies to a relative tree path */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "bs-path.h"
#include "bs-proto.h"

int bs_path_check(const char *p, size_t len) {
        if (len == 0 || len > BS_PATH_MAX)
                return -EINVAL;
        if (memchr(p, 0, len))
                return -EINVAL;
        size_t i = 0;
        while (i <= len) {
                const char *s = p + i;
                const char *e = memchr(s, '/', len - i);
                size_t n = e ? (size_t) (e - s) : len - i;
                if (n == 0 || n > BS_NAME_MAX)
                        return -EINVAL;
                if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
                        return -EINVAL;
                i += n + 1;
        }
        return 0;
}

bool bs_path_under(const char *p, const char *dir) {
        size_t n = strlen(dir);
        return strncmp(p, dir, n) == 0 && (p[n] == 0 || p[n] == '/');
}

size_t bs_path_parent_len(const char *p) {
        const char *s = strrchr(p, '/');
        return s ? (size_t) (s - p) : 0;
}

const char *bs_path_base(const char *p) {
        const char *s = strrchr(p, '/');
        return s ? s + 1 : p;
}

int bs_path_rebase(const char *p, const char *from, const char *to, char *out, size_t outsz) {
        size_t n = strlen(from);
        if (!bs_path_under(p, from))
                return -EINVAL;
        int w = snprintf(out, outsz, "%s%s", to, p + n);
        if (w < 0 || (size_t) w >= outsz || (size_t) w > BS_PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

bool bs_path_is_temp(const char *name) {
        return strncmp(name, BS_TEMP_PREFIX, strlen(BS_TEMP_PREFIX)) == 0;
}
