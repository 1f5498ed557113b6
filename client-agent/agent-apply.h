/* agent-apply.h - applying the server's change records to the local tree
 *
 * Before anything local is replaced, the disk is compared with the
 * manifest: a local change nobody has seen yet is kept as a conflict copy,
 * never overwritten.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "agent-local.h"

/* One change record, with its content once fetched (agent-pull.c). */
typedef struct Rec {
        uint64_t seq, size;
        int64_t mtime_ns;
        uint32_t mode;
        uint8_t op, kind;
        uint8_t sha[BS_SHA_LEN];
        char *path, *path2;
        bool want, requested, ready, failed;
        /* Set before anything is fetched (agent-pull.c): a later record of
         * this pull replaces the path, so this one needs no content; an
         * earlier record of this pull changes the path (or a directory
         * above it), so the manifest cannot tell what the disk will hold. */
        bool superseded, touched;
        uint32_t req;
        char tmp[64];
        int fd; /* the downloaded temporary file until its batch is synced, or -1 */
        struct BsWrite *write; /* a small download handed to the pull's writer, until its batch */
        int src_fd; /* GET_DELTA: the local file COPY reads from, or -1 */
        uint64_t copied; /* bytes of the download taken from the local version */
        /* The download as the writer left it (BsWrite.want_stat), so that
         * placing it needs no lookup by name; disk_ino 0: not known. */
        uint64_t disk_ino, disk_size;
        int64_t disk_mtime_ns;
        uint32_t disk_mode;
} Rec;

typedef struct PathList {
        char **v;
        size_t n, cap;
} PathList;

/** manifest_iter_t that appends each path to a PathList. */
int apply_collect_path(const char *path, const ManifestEntry *e, void *userdata);
/**
 * Does the record change what the manifest says the server holds at its
 * path? A change record does when it is newer; a snapshot's record (the
 * server's entry as it is now) whenever its version differs: entries keep
 * their versions when a directory above them moves, so a move this
 * computer missed leaves a manifest version newer than the server's.
 */
bool apply_is_news(const ManifestEntry *m, const Rec *x, bool snapshot);
/** Apply one record in server order; snapshot marks the path as seen. */
void apply_record(Agent *a, Rec *x, bool snapshot);
/** Set the directory modes that had to wait for the end of a pull. */
void apply_late_modes(Agent *a);
/**
 * Delete path and what is below it where unchanged here and not newer
 * than seq (UINT64_MAX: whatever its version); what changed here is kept
 * and queued to be sent again. True when anything was removed from disk.
 */
bool apply_delete_tree(Agent *a, const char *path, uint64_t seq);
