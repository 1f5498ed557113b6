/* cli-history.h - `backupsync log`, `versions` and `deleted` */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cli-account.h"

/** The account's changes under path ("" for all) since since (0: all), newest first, at most n (0: all). */
int cli_log(const CliAccount *acc, const char *path, time_t since, uint32_t n, bool json);
/** Every kept state of the file at path, newest first. */
int cli_versions(const CliAccount *acc, const char *path, bool json);
/** Entries deleted under path and not there now, newest deletion first. */
int cli_deleted(const CliAccount *acc, const char *path, bool json);
/** The entries at path and below as they were at at (0: now), in path order. */
int cli_ls(const CliAccount *acc, const char *path, time_t at, bool json);
/** A kind's name: "file", "directory", "symlink". */
const char *cli_kind_name(uint8_t kind);
