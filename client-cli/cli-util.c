/* cli-util.c - JSON and time output for the backupsync subcommands */
#include <stdio.h>

#include "cli-util.h"

void cli_json_string(const char *v) {
        putchar('"');
        for (const unsigned char *p = (const unsigned char *) v; *p; p++) {
                if (*p == '"' || *p == '\\')
                        printf("\\%c", *p);
                else if (*p < 0x20 || *p == 0x7f)
                        printf("\\u%04x", *p);
                else
                        putchar(*p);
        }
        putchar('"');
}

void cli_format_time(time_t t, char *buf, size_t size) {
        struct tm tm;
        if (!t || !localtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm))
                snprintf(buf, size, "never");
}

void cli_format_iso(time_t t, char *buf, size_t size) {
        struct tm tm;
        if (!t || !gmtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm))
                buf[0] = 0;
}

void cli_json_time(const char *key, time_t t) {
        char iso[32];
        cli_format_iso(t, iso, sizeof(iso));
        printf(", \"%s\": ", key);
        if (iso[0])
                cli_json_string(iso);
        else
                fputs("null", stdout);
}
