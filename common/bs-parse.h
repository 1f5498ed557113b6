/* bs-parse.h - parsing of the values people type: durations, ports, booleans */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/**
 * Parse a duration: a number with an optional unit, "5", "5s", "250ms",
 * "2m", "1h", "30d" (a bare number is seconds). Returns 0 or -EINVAL.
 */
int bs_parse_duration(const char *s, uint64_t *usec);

/** Parse a TCP port 0..65535. Returns 0 or -EINVAL. */
int bs_parse_port(const char *s, uint16_t *port);

/** Parse yes/no/true/false/on/off/1/0. Returns 0 or -EINVAL. */
int bs_parse_bool(const char *s, bool *b);
