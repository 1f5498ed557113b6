/* test-util.h - what several unit tests share */
#pragma once

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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

/* A fresh directory from a mkdtemp() template (rewritten in place),
 * opened: its fd, or -1. */
static inline int test_dir_new(char *tmpl) {
        if (!mkdtemp(tmpl))
                return -1;
        return open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Close and remove a directory from test_dir_new(), with what is in it:
 * 0, or -1. */
static inline int test_dir_remove(const char *path, int fd) {
        char cmd[4200];
        close(fd);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
        return system(cmd) == 0 ? 0 : -1;
}
