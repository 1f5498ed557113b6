/* ratelimit.h - slowing down repeated failed logins per peer address
 *
 * After RATELIMIT_FREE failures from one address within RATELIMIT_WINDOW,
 * every further failure blocks the address for a delay that starts at 1 s
 * and doubles up to 60 s. The table is bounded: when it is full the entry
 * that was idle longest is reused, so a flood of addresses costs no memory.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define RATELIMIT_FREE 5u
#define RATELIMIT_WINDOW_USEC (10ull * 60 * 1000000)
#define RATELIMIT_DELAY_MIN_USEC (1ull * 1000000)
#define RATELIMIT_DELAY_MAX_USEC (60ull * 1000000)
#define RATELIMIT_SLOTS 4096u

typedef struct RateLimit RateLimit;

int ratelimit_new(RateLimit **ret);
RateLimit *ratelimit_free(RateLimit *rl);
static inline void ratelimit_freep(RateLimit **rl) { if (*rl) ratelimit_free(*rl); }

/** True when addr (16 bytes, IPv4 as v4-mapped IPv6) must wait; *left_usec says how long. */
bool ratelimit_blocked(RateLimit *rl, const uint8_t addr[16], uint64_t now_usec, uint64_t *left_usec);
/** Count a failed login of addr. */
void ratelimit_fail(RateLimit *rl, const uint8_t addr[16], uint64_t now_usec);
/** Forget addr after a successful login. */
void ratelimit_success(RateLimit *rl, const uint8_t addr[16]);
