/* s3.h - an asynchronous S3 client driven by the server's sd-event loop
 *
 * Where the cluster backend keeps its content: any S3-compatible store
 * (AWS S3, Ceph RGW, MinIO, Garage). Requests run on libcurl's multi
 * interface, so nothing here ever blocks the loop on the network; their
 * connections are kept alive and shared. Failures that a restarting or
 * overloaded store causes (refused or reset connections, timeouts, HTTP
 * 429/500/502/503/504, SlowDown, RequestTimeout) are retried inside the
 * client with exponential backoff for up to retry_usec, so that callers
 * see a store restart only as latency.
 *
 * Requests are signed with AWS SigV4. Every request object belongs to the
 * client: it is freed right after its done callback returns, so the
 * s3_request_*() accessors may only be used inside that callback.
 *
 * Errors come back as negative errno, never logged here:
 *   -ENOENT     no such key (404, NoSuchKey) or bucket (NoSuchBucket)
 *   -EACCES     refused: 403 AccessDenied, InvalidAccessKeyId, a wrong
 *               secret (SignatureDoesNotMatch), RequestTimeTooSkewed
 *   -EPERM      the endpoint's TLS certificate is not trusted
 *   -ERANGE     a ranged get starting at or past the end (416)
 *   -ENOSPC     the store is full (507, InsufficientStorage)
 *   -EDQUOT     the account's quota is used up (QuotaExceeded)
 *   -EFBIG      the object is larger than the store accepts (EntityTooLarge)
 *   -EEXIST     create_bucket: the name is taken by another owner
 *   -EBADMSG    the answer is not what was asked (longer body, wrong range,
 *               malformed XML or header, a listing out of order), or the
 *               store found the body corrupted (XAmzContentSHA256Mismatch)
 *   -ETIMEDOUT  retryable failures went on for longer than retry_usec
 *   -EINVAL, -EIO, -ENOMEM, -errno of pread/pwrite on the caller's fd
 * s3_request_error() gives the store's code and message (or curl's
 * diagnostic) for the caller's log line.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#define S3_KEY_MAX 1024u                        /* bytes, as in S3 */
#define S3_LIST_MAX 1000u                       /* keys per ListObjectsV2 page */
#define S3_MAX_CONNECTIONS_DEFAULT 64u
#define S3_RETRY_USEC_DEFAULT (60ull * 1000000)
/* The most s3_get() collects in memory when asked for "to the end": a
 * hostile or broken store must not make the daemon allocate without bound. */
#define S3_GET_MEMORY_MAX (256ull * 1024 * 1024)

typedef struct S3 S3;
typedef struct S3Request S3Request;

typedef struct S3Config {
        const char *endpoint;      /* http://host:port or https://host[:port] */
        const char *region;        /* NULL: us-east-1 */
        const char *bucket;
        const char *access_key;
        const char *secret_key;
        bool virtual_host;         /* bucket.host/key instead of host/bucket/key */
        const char *ca_file;       /* NULL: the system's CA certificates */
        unsigned max_connections;  /* 0: S3_MAX_CONNECTIONS_DEFAULT */
        uint64_t retry_usec;       /* give up retrying after this long; 0: one attempt */
} S3Config;

typedef struct S3Entry {
        char *key;
        uint64_t size;
} S3Entry;

/** Called once per request unless it was cancelled; r is 0 or negative errno. */
typedef void (*s3_done_fn)(S3Request *req, int r, void *userdata);

/** A client for one bucket on event's loop; the configuration's strings are copied. */
int s3_new(S3 **ret, sd_event *event, const S3Config *c);
/** How many connections the client opened so far: few, when they are reused. */
uint64_t s3_connects(S3 *s);
/** Cancel every pending request without calling back and free the client; NULL.
 * From inside a done callback the client goes once that callback returns. */
S3 *s3_free(S3 *s);
static inline void s3_freep(S3 **s) { if (*s) s3_free(*s); }

/**
 * Store len bytes at data as key. data must stay valid until done is
 * called. The payload's SHA-256 is sent and signed, so the store refuses
 * a body corrupted on the way.
 */
int s3_put(S3 *s, const char *key, const void *data, size_t len,
           s3_done_fn done, void *userdata, S3Request **ret);
/**
 * Store len bytes of fd from offset off as key, read with pread() while
 * sending. Sent as UNSIGNED-PAYLOAD: hashing first would read the file
 * twice and block the loop for it; use TLS where the path is not trusted.
 */
int s3_put_fd(S3 *s, const char *key, int fd, uint64_t off, uint64_t len,
              s3_done_fn done, void *userdata, S3Request **ret);
/**
 * Read len bytes of key from offset off (len UINT64_MAX: to the end, at
 * most S3_GET_MEMORY_MAX) into memory, see s3_request_data(). A shorter
 * body means the object ended; an offset at or past the end is -ERANGE.
 */
int s3_get(S3 *s, const char *key, uint64_t off, uint64_t len,
           s3_done_fn done, void *userdata, S3Request **ret);
/**
 * Write the whole object key into fd with pwrite(), starting at fd's
 * offset at the time of the call (a retry rewrites the same bytes; fd
 * must be seekable; bytes past the object's end are left as they were).
 * s3_request_size() gives the object's size.
 */
int s3_get_fd(S3 *s, const char *key, int fd,
              s3_done_fn done, void *userdata, S3Request **ret);
/** Whether key exists; s3_request_size() gives its size. */
int s3_head(S3 *s, const char *key, s3_done_fn done, void *userdata, S3Request **ret);
/** Remove key; a missing key is success, as in S3. */
int s3_delete(S3 *s, const char *key, s3_done_fn done, void *userdata, S3Request **ret);
/**
 * One page (at most max_keys, 0: S3_LIST_MAX) of the keys starting with
 * prefix (NULL: all) that sort after start_after (NULL: from the first),
 * in order; see s3_request_entries() and s3_request_truncated(). The next
 * page starts after the last key of this one.
 */
int s3_list(S3 *s, const char *prefix, const char *start_after, unsigned max_keys,
            s3_done_fn done, void *userdata, S3Request **ret);
/** Create the configured bucket; one that we own already is success. */
int s3_create_bucket(S3 *s, s3_done_fn done, void *userdata, S3Request **ret);

/** Abandon req: its done callback will not be called. A no-op inside its own callback. */
void s3_request_cancel(S3Request *req);
/** The body s3_get() collected, valid until the callback returns. */
const void *s3_request_data(S3Request *req, size_t *len);
/** Take the body s3_get() collected: the caller frees it. */
void *s3_request_take_data(S3Request *req, size_t *len);
/** The object's size (s3_head(), s3_get(), s3_get_fd()), UINT64_MAX when unknown. */
uint64_t s3_request_size(S3Request *req);
/** The entries s3_list() found, valid until the callback returns. */
const S3Entry *s3_request_entries(S3Request *req, size_t *n);
/** Whether s3_list() has more keys after this page. */
bool s3_request_truncated(S3Request *req);
/** The last failure as text (S3 code and message, or the transport's), "" when none. */
const char *s3_request_error(S3Request *req);
/** How many attempts the request took (1 when not retried). */
unsigned s3_request_attempts(S3Request *req);
