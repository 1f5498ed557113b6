/* bs-clock.h - the wall clock the history is written with
 *
 * Retention works in hours, days and weeks; its tests cannot sleep that
 * long. BACKUPSYNC_TEST_CLOCK names a file holding a number of seconds
 * added to the real time, read at every call, so a test moves the
 * server's clock forward while it runs. Unset (always, outside tests),
 * this is time(NULL).
 */
#pragma once

#include <time.h>

/** Seconds since the epoch, as the history records them. */
time_t bs_now(void);
