/* cli-util.h - what the backupsync subcommands share: JSON and time output */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/** Print v as a JSON string (control bytes escaped; other bytes as they are). */
void cli_json_string(const char *v);
/** Local "YYYY-MM-DD HH:MM:SS" of t (seconds), or "never" for 0. */
void cli_format_time(time_t t, char *buf, size_t size);
/** UTC "YYYY-MM-DDTHH:MM:SSZ" of t (seconds), or "" for 0. */
void cli_format_iso(time_t t, char *buf, size_t size);
/** Print ", \"key\": " and t as an ISO 8601 string, or null for 0. */
void cli_json_time(const char *key, time_t t);
