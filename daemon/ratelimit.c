/* ratelimit.c - slowing down repeated failed logins per peer address */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"

typedef struct Slot {
        uint8_t addr[16];
        bool used;
        unsigned failures;     /* within the window that began at first_usec */
        uint64_t first_usec;
        uint64_t last_usec;
        uint64_t delay_usec;   /* of the current block; doubles per failure */
        uint64_t blocked_until;
} Slot;

struct RateLimit {
        Slot slots[RATELIMIT_SLOTS];
};

int ratelimit_new(RateLimit **ret) {
        RateLimit *rl = calloc(1, sizeof(*rl));
        if (!rl)
                return -ENOMEM;
        *ret = rl;
        return 0;
}

RateLimit *ratelimit_free(RateLimit *rl) {
        free(rl);
        return NULL;
}

/* Linear search: 4096 slots of 16-byte keys is a few microseconds per login. */
static Slot *find(RateLimit *rl, const uint8_t addr[16]) {
        for (unsigned i = 0; i < RATELIMIT_SLOTS; i++)
                if (rl->slots[i].used && memcmp(rl->slots[i].addr, addr, 16) == 0)
                        return &rl->slots[i];
        return NULL;
}

bool ratelimit_blocked(RateLimit *rl, const uint8_t addr[16], uint64_t now_usec, uint64_t *left_usec) {
        Slot *s = find(rl, addr);
        if (!s || now_usec >= s->blocked_until)
                return false;
        if (left_usec)
                *left_usec = s->blocked_until - now_usec;
        return true;
}

void ratelimit_fail(RateLimit *rl, const uint8_t addr[16], uint64_t now_usec) {
        Slot *s = find(rl, addr);
        if (!s) {
                Slot *oldest = &rl->slots[0];
                for (unsigned i = 0; i < RATELIMIT_SLOTS; i++) {
                        if (!rl->slots[i].used) {
                                oldest = &rl->slots[i];
                                break;
                        }
                        if (rl->slots[i].last_usec < oldest->last_usec)
                                oldest = &rl->slots[i];
                }
                s = oldest;
                *s = (Slot) { .used = true, .first_usec = now_usec };
                memcpy(s->addr, addr, 16);
        }
        if (now_usec - s->first_usec > RATELIMIT_WINDOW_USEC && now_usec >= s->blocked_until) {
                s->failures = 0;
                s->first_usec = now_usec;
                s->delay_usec = 0;
        }
        s->failures++;
        s->last_usec = now_usec;
        if (s->failures < RATELIMIT_FREE)
                return;
        s->delay_usec = s->delay_usec ? s->delay_usec * 2 : RATELIMIT_DELAY_MIN_USEC;
        if (s->delay_usec > RATELIMIT_DELAY_MAX_USEC)
                s->delay_usec = RATELIMIT_DELAY_MAX_USEC;
        s->blocked_until = now_usec + s->delay_usec;
}

void ratelimit_success(RateLimit *rl, const uint8_t addr[16]) {
        Slot *s = find(rl, addr);
        if (s)
                *s = (Slot) {};
}
