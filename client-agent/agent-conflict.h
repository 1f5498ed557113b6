/* agent-conflict.h - names for the local copy kept when two computers collide */
#pragma once

#include <stdbool.h>

#include <stddef.h>
#include <time.h>

/**
 * Name of the conflict copy of path: "NAME.conflict-DEVICE-YYYYMMDD-HHMMSS.EXT"
 * (UTC), in the same directory. A name that is already a conflict copy is
 * not nested: its earlier marker is replaced. n > 1 appends "-n" to tell
 * apart copies made in the same second. Returns 0 or -ENAMETOOLONG.
 */
int conflict_name(const char *path, const char *device, time_t when, unsigned n, char *out, size_t outsz);

/** Reduce a host name to what may stand in a conflict name ([A-Za-z0-9_-], <= 32). */
void conflict_device_label(const char *in, char *out, size_t outsz);

/** Whether path is named like a conflict copy conflict_name() makes. */
bool conflict_is_copy(const char *path);
