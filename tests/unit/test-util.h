/* test-util.h - what several unit tests share */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Reproducible, incompressible bytes (xorshift64): no repeats at any size
 * used here, where an LCG's byte would repeat every 16 MiB. */
static inline void test_fill(uint8_t *p, size_t n, uint64_t seed) {
        seed = seed * 0x9e3779b97f4a7c15ULL + 1;
        for (size_t i = 0; i < n; i++) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                p[i] = (uint8_t) (seed >> 32);
        }
}
