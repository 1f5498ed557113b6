/* bs-parse.h - parsing of the values people type: durations, ports, booleans */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/**
 * Parse a duration: a number with an optional unit, "5", "5s", "250ms",
 * "2m", "1h", "30d" (a bare number is seconds). Returns 0 or -EINVAL.
 */
int bs_parse_duration(const char *s, uint64_t *usec);

/**
 * Parse a size in bytes: a number with an optional binary unit, "4096",
 * "512K", "64M", "10G", "2T" (also "10GiB"). Returns 0 or -EINVAL.
 */
int bs_parse_size(const char *s, uint64_t *bytes);

/** Parse a TCP port 0..65535. Returns 0 or -EINVAL. */
int bs_parse_port(const char *s, uint16_t *port);

/** Parse yes/no/true/false/on/off/1/0. Returns 0 or -EINVAL. */
int bs_parse_bool(const char *s, bool *b);

/* When an agent holds deletions back: a round that would delete more than
 * files files and more than percent % of the files synced. */
typedef struct BsDeleteLimit {
        bool off;
        uint64_t files;
        unsigned percent; /* 0..100 */
} BsDeleteLimit;

#define BS_DELETE_LIMIT_DEFAULT ((BsDeleteLimit) { .files = 100, .percent = 50 })

/**
 * Parse max-delete: "no", a count of files "100", a share of the tree
 * "50%", or both "100 50%" (both must be passed). Returns 0 or -EINVAL.
 */
int bs_parse_delete_limit(const char *s, BsDeleteLimit *ret);

/** Would deleting n of total files pass the limit (be held)? */
bool bs_delete_limit_exceeded(const BsDeleteLimit *l, uint64_t n, uint64_t total);

/**
 * Parse a moment as people type it: ISO 8601 ("2026-11-30T14:05:00Z",
 * "2026-11-30 14:05", "2026-11-30T14:05+01:00"; without a zone it is local
 * time; the seconds and the time of day may be left out), "@EPOCH", or
 * relative to now ("-2h", "-3d", "-90s"). Returns 0 with seconds since the
 * epoch in *ret, or -EINVAL.
 */
int bs_parse_time(const char *s, time_t now, time_t *ret);
