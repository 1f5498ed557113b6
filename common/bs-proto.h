/* bs-proto.h - backupsync wire protocol: frames, messages, change records
 *
 * Frame: u32 length (bytes after this field), u8 type, payload.
 * All integers big-endian; strings are u16 length + bytes (no NUL).
 * See docs/protocol.md for every message layout.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bs-buf.h"

#define BS_PROTO_VERSION 5u
#define BS_PROTO_MIN_VERSION 1u
/* The first version with COPY and GET_DELTA (delta transfer). */
#define BS_PROTO_DELTA_VERSION 2u
/* The first version with ATTR (a file's mode and mtime without its content). */
#define BS_PROTO_ATTR_VERSION 3u
/* The first version with HISTORY (the log, versions, deleted entries, the tree as of a moment). */
#define BS_PROTO_HISTORY_VERSION 4u
/* The first version with PULL_PAGE (a snapshot answered in pages). */
#define BS_PROTO_PAGE_VERSION 5u
#define BS_FRAME_HDR 5u
#define BS_FRAME_MAX_DEFAULT (1024u * 1024u)
#define BS_FRAME_MIN (64u * 1024u)
#define BS_FRAME_LIMIT (16u * 1024u * 1024u)
#define BS_CHUNK (256u * 1024u)
#define BS_COPY_MAX (16u * 1024u * 1024u) /* bytes one COPY in an upload may name */
#define BS_PATH_MAX 4096u
#define BS_NAME_MAX 255u
#define BS_SHA_LEN 32u
#define BS_DEVICE_LEN 16u
#define BS_TEXT_MAX 4096u
#define BS_RECORD_MIN (8 + 1 + 1 + BS_DEVICE_LEN + 8 + 4 + 8 + BS_SHA_LEN + 2 + 2)
#define BS_HIST_ROW_MIN (8 + 8 + 8 + 2 + BS_RECORD_MIN)

typedef enum BsMsgType {
        BS_MSG_HELLO = 1,
        BS_MSG_WELCOME = 2,
        BS_MSG_ERROR = 3,
        BS_MSG_PING = 4,
        BS_MSG_PONG = 5,
        BS_MSG_NOTIFY = 6,
        BS_MSG_PULL = 10,
        BS_MSG_CHANGES = 11,
        BS_MSG_GET = 12,
        BS_MSG_FILE = 13,
        BS_MSG_GET_DELTA = 14,
        BS_MSG_HISTORY = 15,
        BS_MSG_HISTORY_ROWS = 16,
        BS_MSG_PULL_PAGE = 17,
        BS_MSG_PUT = 20,
        BS_MSG_DATA = 21,
        BS_MSG_PUT_END = 22,
        BS_MSG_MKDIR = 23,
        BS_MSG_DELETE = 24,
        BS_MSG_MOVE = 25,
        BS_MSG_SYMLINK = 26,
        BS_MSG_COPY = 27,
        BS_MSG_ATTR = 28,
        BS_MSG_ACK = 30,
} BsMsgType;

typedef enum BsErr {
        BS_ERR_BAD_FRAME = 1,
        BS_ERR_VERSION = 2,
        BS_ERR_AUTH = 3,
        BS_ERR_BAD_PATH = 4,
        BS_ERR_CONFLICT = 5,
        BS_ERR_NOT_FOUND = 6,
        BS_ERR_TOO_LARGE = 7,
        BS_ERR_NO_SPACE = 8,
        BS_ERR_IO = 9,
        BS_ERR_BUSY = 10,
        BS_ERR_PROTOCOL = 11,
        BS_ERR_CHECKSUM = 12,
        BS_ERR_ABORTED = 13,
        BS_ERR_RATE_LIMITED = 14,
        BS_ERR_TIMEOUT = 15,
} BsErr;

/* Change operations and entry kinds, as stored in the change log. */
typedef enum BsOp {
        BS_OP_PUT = 1,
        BS_OP_MKDIR = 2,
        BS_OP_DELETE = 3,
        BS_OP_MOVE = 4,
        BS_OP_SYMLINK = 5,
} BsOp;

typedef enum BsKind {
        BS_KIND_NONE = 0,
        BS_KIND_FILE = 1,
        BS_KIND_DIR = 2,
        BS_KIND_SYMLINK = 3,
} BsKind;

/* What a HISTORY request asks for (its flags byte). */
typedef enum BsHistWhat {
        BS_HIST_LOG = 1,      /* change-log records, newest first */
        BS_HIST_VERSIONS = 2, /* every kept state of one path, newest first */
        BS_HIST_DELETED = 3,  /* paths deleted and not there now, newest deletion first */
        BS_HIST_TREE = 4,     /* the entries as of a sequence, in path order */
} BsHistWhat;

#define BS_CHANGES_SNAPSHOT 0x01u /* records are the whole current tree */
#define BS_CHANGES_MORE 0x02u     /* another CHANGES frame follows */
#define BS_CHANGES_PAGE 0x04u     /* a page ends here: PULL_PAGE with CONTINUE for the next */
#define BS_PULL_CONTINUE 0x01u    /* PULL_PAGE: the next page of the answer before */
#define BS_PUT_ABORT 0x01u        /* PUT_END: discard the upload */

/* A decoded message. Only the fields of its type are meaningful.
 * path/path2 are NUL-terminated copies; path_len/path2_len give the
 * length on the wire so an embedded NUL can be detected. */
typedef struct BsMsg {
        uint8_t type;
        uint32_t req;
        uint16_t version;     /* HELLO: highest spoken; WELCOME: chosen */
        uint16_t min_version; /* HELLO: lowest spoken */
        uint32_t max_frame;
        uint64_t seq;
        uint64_t base;
        uint64_t base2;
        uint64_t size;
        uint64_t offset;      /* COPY: where the bytes start in the named content */
        int64_t time;         /* HISTORY: seconds since the epoch, 0 for none */
        uint32_t mode;
        int64_t mtime_ns;
        uint16_t code;
        uint8_t flags;
        uint32_t count;
        uint8_t sha[BS_SHA_LEN];
        uint8_t have[BS_SHA_LEN]; /* GET_DELTA: the content the agent holds */
        uint8_t device[BS_DEVICE_LEN];
        size_t path_len, path2_len;
        char path[BS_PATH_MAX + 1];
        char path2[BS_PATH_MAX + 1];
        const uint8_t *data; /* DATA bytes or CHANGES records; points into the frame */
        size_t data_len;
} BsMsg;

typedef struct BsRecord {
        uint64_t seq;
        uint8_t op;
        uint8_t kind;
        uint8_t device[BS_DEVICE_LEN];
        uint64_t size;
        uint32_t mode;
        int64_t mtime_ns;
        uint8_t sha[BS_SHA_LEN];
        size_t path_len, path2_len;
        char path[BS_PATH_MAX + 1];
        char path2[BS_PATH_MAX + 1]; /* MOVE target or symlink target */
} BsRecord;

/*
 * One row of a HISTORY answer: an entry's state (rec: rec.seq is its
 * version) with when it began (time) and ended (until, until_time; 0
 * while it is current), and the name of the device that made it, or, for
 * BS_HIST_DELETED, that deleted it.
 */
typedef struct BsHistRow {
        uint64_t until;
        int64_t time, until_time;
        size_t name_len;
        char device_name[BS_NAME_MAX + 1];
        BsRecord rec;
} BsHistRow;

/** Name of a message type for logs; "unknown" for anything else. */
const char *bs_msg_type_name(uint8_t type);
/** Name of an error code for logs and messages. */
const char *bs_err_name(uint16_t code);

/**
 * Look at the bytes at the head of a receive buffer.
 * Returns 0 when more bytes are needed, 1 when a whole frame is there
 * (*frame_len = header + payload), -EMSGSIZE when the announced length is
 * over max_frame, -EBADMSG when it is zero.
 */
int bs_frame_peek(const uint8_t *p, size_t n, uint32_t max_frame, size_t *frame_len);

/**
 * Decode one whole frame (as delimited by bs_frame_peek) into m.
 * Returns 0, or -EBADMSG for an unknown type, a short or over-long
 * payload, a string over its limit or a count the payload cannot hold.
 */
int bs_msg_decode(const uint8_t *frame, size_t len, BsMsg *m);

/** Append m as one frame to out. -E2BIG when a field is over its limit. */
int bs_msg_encode(BsBuf *out, const BsMsg *m);

/** Append one change record (for a CHANGES payload) to out. */
int bs_record_encode(BsBuf *out, const BsRecord *rec);

/** Decode the next record of a CHANGES payload; -EBADMSG when malformed. */
int bs_record_decode(BsReader *rd, BsRecord *rec);

/** Append one HISTORY_ROWS row to out. */
int bs_hist_row_encode(BsBuf *out, const BsHistRow *row);

/** Decode the next row of a HISTORY_ROWS payload; -EBADMSG when malformed. */
int bs_hist_row_decode(BsReader *rd, BsHistRow *row);

/** Fill a message header: zero everything, set type and request id. */
void bs_msg_init(BsMsg *m, uint8_t type, uint32_t req);

/** Start a frame of the given type in out; returns its offset for bs_frame_end(). */
int bs_frame_begin(BsBuf *out, uint8_t type, size_t *off);
/** Patch the length of the frame begun at off. */
void bs_frame_end(BsBuf *out, size_t off);
/** Drop the frame begun at off (and anything appended after it). */
void bs_frame_cancel(BsBuf *out, size_t off);
