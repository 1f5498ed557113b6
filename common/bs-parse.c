/* bs-parse.c - parsing of the values people type: durations, ports, booleans */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bs-parse.h"

int bs_parse_duration(const char *s, uint64_t *usec) {
        static const struct {
                const char *unit;
                uint64_t usec;
        } units[] = {
                { "", 1000000ULL },   { "s", 1000000ULL },          { "ms", 1000ULL },
                { "m", 60000000ULL }, { "min", 60000000ULL },       { "h", 3600000000ULL },
                { "d", 86400000000ULL },
        };
        char *end;

        if (!s || !isdigit((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno != 0)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
                if (strcmp(end, units[i].unit) == 0) {
                        if (v > UINT64_MAX / units[i].usec)
                                return -EINVAL;
                        *usec = v * units[i].usec;
                        return 0;
                }
        return -EINVAL;
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
