/* s3.c - an asynchronous S3 client driven by the server's sd-event loop
 *
 * libcurl's multi interface does the HTTP: it tells us which sockets to
 * watch (on_curl_socket) and when to wake it (on_curl_timer); we feed
 * sd-event's answers back through curl_multi_socket_action() and collect
 * finished transfers with curl_multi_info_read(). The client keeps its own
 * queue in front of the multi so that a transfer's timeouts only start
 * once it has a connection to run on.
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bs-macro.h"
#include "s3.h"

#define BACKOFF_MIN_USEC (50ull * 1000)
#define BACKOFF_MAX_USEC (5ull * 1000000)
#define CONNECT_TIMEOUT_MS 5000L
/* A transfer moving less than LOW_SPEED_LIMIT bytes/s for LOW_SPEED_TIME s
 * is stalled: curl aborts it and the retry gets a fresh connection. */
#define LOW_SPEED_LIMIT 1024L
#define LOW_SPEED_TIME 20L
/* Error documents are a few hundred bytes; more is not read. */
#define ERROR_BODY_MAX (16u * 1024)
/* A page of 1000 keys of 1024 bytes, each byte %-escaped, and their sizes,
 * dates and ETags fits well below this. */
#define LIST_BODY_MAX (8u * 1024 * 1024)
#define SHA256_HEX_LEN 64
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef enum Op {
        OP_PUT,
        OP_PUT_FD,
        OP_GET,
        OP_GET_FD,
        OP_HEAD,
        OP_DELETE,
        OP_LIST,
        OP_CREATE_BUCKET,
} Op;

typedef enum State {
        STATE_QUEUED,    /* waiting for a slot in the multi */
        STATE_ACTIVE,    /* in the multi */
        STATE_BACKOFF,   /* waiting before a retry */
        STATE_DONE,      /* its callback runs */
} State;

typedef struct S3Socket S3Socket;
struct S3Socket {
        S3 *s3;
        curl_socket_t fd;
        sd_event_source *source;
        S3Socket *prev, *next;
};

struct S3Request {
        S3 *s3;
        S3Request *prev, *next;          /* in s3->requests */
        S3Request *queue_next;           /* in s3's queue while STATE_QUEUED */
        Op op;
        State state;
        CURL *easy;
        struct curl_slist *headers;
        char *url;
        s3_done_fn done;
        void *userdata;

        /* upload */
        const uint8_t *data;
        int fd;
        uint64_t fd_off;
        uint64_t up_len;
        uint64_t up_pos;
        char *body;                      /* our own upload body (create bucket) */

        /* download */
        uint64_t want_off;
        uint64_t want_len;               /* UINT64_MAX: to the end */
        uint64_t got;                    /* body bytes taken this attempt */
        uint8_t *buf;
        size_t buf_size;
        char *err_body;
        size_t err_len;
        bool err_mode;                   /* this attempt's body is an error document */
        bool mode_known;
        bool err_overflow;               /* the error document was cut short */
        int abort_r;                     /* why a callback stopped the transfer */
        int start_r;                     /* why it could not be started: reported from the loop */

        uint64_t size;
        S3Entry *entries;
        size_t n_entries;
        bool truncated;
        char *prefix;
        char *start_after;
        unsigned max_keys;

        unsigned attempts;
        uint64_t first_failure_usec;
        uint64_t backoff_usec;
        sd_event_source *retry_source;
        char error[512];
        char curl_error[CURL_ERROR_SIZE];
};

struct S3 {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        char *endpoint;                  /* scheme://host[:port], no slash */
        char *base;                      /* endpoint/bucket or scheme://bucket.host[:port] */
        char *bucket;
        char *region;
        char *access_key;
        char *secret_key;
        char *ca_file;
        char *sigv4;
        unsigned max_connections;
        uint64_t retry_usec;
        unsigned n_active;
        uint64_t connects;               /* connections opened, for s3_connects() */
        bool curl_global;                /* curl_global_init() to balance */
        unsigned in_callback;            /* a done callback runs */
        bool free_requested;             /* s3_free() from it: free once it returns */
        S3Request *requests;
        S3Request *queue_head, *queue_tail;
        S3Socket *sockets;
};

static void request_free(S3Request *req);
static void s3_free_now(S3 *s);
static void s3_process(S3 *s);
static void s3_start_queued(S3 *s);

static uint64_t now_usec(S3 *s) {
        uint64_t t = 0;
        (void) sd_event_now(s->event, CLOCK_MONOTONIC, &t);
        return t;
}

static char *strdup_or_null(const char *p, bool *oom) {
        char *c;
        if (!p)
                return NULL;
        c = strdup(p);
        if (!c)
                *oom = true;
        return c;
}

/* ---- curl glue -------------------------------------------------------- */

static int on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        S3 *s = userdata;
        int action = 0, running;

        if (revents & EPOLLIN)
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                action |= CURL_CSELECT_ERR;
        (void) curl_multi_socket_action(s->multi, fd, action, &running);
        s3_process(s);
        return 0;
}

static void socket_free(S3Socket *k) {
        if (!k)
                return;
        if (k->prev)
                k->prev->next = k->next;
        else
                k->s3->sockets = k->next;
        if (k->next)
                k->next->prev = k->prev;
        sd_event_source_disable_unref(k->source);
        free(k);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        S3 *s = userp;
        S3Socket *k = socketp;
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                (void) curl_multi_assign(s->multi, fd, NULL);
                socket_free(k);
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
        if (k) {
                r = sd_event_source_set_io_events(k->source, events);
                if (r < 0)
                        return -1;
                return sd_event_source_set_enabled(k->source, SD_EVENT_ON) < 0 ? -1 : 0;
        }
        k = calloc(1, sizeof(*k));
        if (!k)
                return -1;
        k->s3 = s;
        k->fd = fd;
        r = sd_event_add_io(s->event, &k->source, fd, events, on_io, s);
        if (r < 0) {
                free(k);
                return -1;
        }
        (void) sd_event_source_set_description(k->source, "s3-socket");
        k->next = s->sockets;
        if (k->next)
                k->next->prev = k;
        s->sockets = k;
        if (curl_multi_assign(s->multi, fd, k) != CURLM_OK) {
                socket_free(k);
                return -1;
        }
        return 0;
}

static int on_timer(sd_event_source *source, uint64_t usec, void *userdata) {
        S3 *s = userdata;
        int running;

        (void) curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        s3_process(s);
        return 0;
}

/* curl asks to be woken once after timeout_ms (-1: never); it must not be
 * called back from here, so the timer source does it on the next turn. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
        S3 *s = userp;

        if (timeout_ms < 0)
                return sd_event_source_set_enabled(s->timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        if (sd_event_source_set_time_relative(s->timer, (uint64_t) timeout_ms * 1000) < 0)
                return -1;
        return sd_event_source_set_enabled(s->timer, SD_EVENT_ONESHOT) < 0 ? -1 : 0;
}

/* ---- client ----------------------------------------------------------- */

static bool bucket_valid(const char *b) {
        size_t n = strlen(b);
        if (n < 3 || n > 63)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '-' || b[i] == '.'))
                        return false;
        return true;
}

/* scheme://host[:port][/]: anything else (a path, user info, a query)
 * would end up in the signed request in ways we do not control. */
static int endpoint_parse(const char *e, char **ret, size_t *host_at) {
        size_t skip, n;
        char *c;

        if (strncmp(e, "http://", 7) == 0)
                skip = 7;
        else if (strncmp(e, "https://", 8) == 0)
                skip = 8;
        else
                return -EINVAL;
        n = strlen(e);
        if (n > skip && e[n - 1] == '/')
                n--;
        if (n == skip)
                return -EINVAL;
        for (size_t i = skip; i < n; i++)
                if (strchr("/?#@ \t\r\n", e[i]) || (unsigned char) e[i] < 0x20)
                        return -EINVAL;
        c = strndup(e, n);
        if (!c)
                return -ENOMEM;
        *ret = c;
        *host_at = skip;
        return 0;
}

int s3_new(S3 **ret, sd_event *event, const S3Config *c) {
        _cleanup_(s3_freep) S3 *s = NULL;
        size_t host_at;
        bool oom = false;
        int r;

        if (!ret || !event || !c || !c->endpoint || !c->bucket || !c->access_key || !c->secret_key)
                return -EINVAL;
        if (!bucket_valid(c->bucket))
                return -EINVAL;
        if (c->region && (!*c->region || strpbrk(c->region, ": \t\r\n/")))
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        s->curl_global = true;
        s->event = sd_event_ref(event);
        r = endpoint_parse(c->endpoint, &s->endpoint, &host_at);
        if (r < 0)
                return r;
        s->bucket = strdup_or_null(c->bucket, &oom);
        s->region = strdup_or_null(c->region ? c->region : "us-east-1", &oom);
        s->access_key = strdup_or_null(c->access_key, &oom);
        s->secret_key = strdup_or_null(c->secret_key, &oom);
        s->ca_file = strdup_or_null(c->ca_file, &oom);
        if (oom)
                return -ENOMEM;
        if (c->virtual_host
            ? asprintf(&s->base, "%.*s%s.%s", (int) host_at, s->endpoint, s->bucket, s->endpoint + host_at) < 0
            : asprintf(&s->base, "%s/%s", s->endpoint, s->bucket) < 0) {
                s->base = NULL;
                return -ENOMEM;
        }
        if (asprintf(&s->sigv4, "aws:amz:%s:s3", s->region) < 0) {
                s->sigv4 = NULL;
                return -ENOMEM;
        }
        s->max_connections = c->max_connections ? c->max_connections : S3_MAX_CONNECTIONS_DEFAULT;
        s->retry_usec = c->retry_usec;

        /* Accuracy 1 us: sd-event's default of 250 ms would delay curl's timeouts. */
        r = sd_event_add_time(event, &s->timer, CLOCK_MONOTONIC, 0, 1, on_timer, s);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(s->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->timer, "s3-timer");

        s->multi = curl_multi_init();
        if (!s->multi)
                return -ENOMEM;
        if (curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
            curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s) != CURLM_OK ||
            curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
            curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s) != CURLM_OK ||
            curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) s->max_connections) != CURLM_OK ||
            /* Idle connections are kept for the next requests, as many as may run. */
            curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, (long) s->max_connections) != CURLM_OK)
                return -EIO;

        *ret = TAKE_PTR(s);
        return 0;
}

static void s3_free_now(S3 *s) {
        while (s->requests)
                s3_request_cancel(s->requests);
        if (s->multi)
                curl_multi_cleanup(s->multi);
        /* curl normally says CURL_POLL_REMOVE for each; whatever it did not is dropped here. */
        while (s->sockets)
                socket_free(s->sockets);
        sd_event_source_disable_unref(s->timer);
        sd_event_unref(s->event);
        free(s->endpoint);
        free(s->base);
        free(s->bucket);
        free(s->region);
        free(s->access_key);
        if (s->secret_key) {
                explicit_bzero(s->secret_key, strlen(s->secret_key));
                free(s->secret_key);
        }
        free(s->ca_file);
        free(s->sigv4);
        if (s->curl_global)
                curl_global_cleanup();
        free(s);
}

S3 *s3_free(S3 *s) {
        if (!s)
                return NULL;
        if (s->in_callback > 0) {
                /* From a done callback: the request calling back is freed
                 * when it returns, and the client with it. */
                s->free_requested = true;
                for (S3Request *req = s->requests, *next; req; req = next) {
                        next = req->next;
                        if (req->state != STATE_DONE)
                                s3_request_cancel(req);
                }
                return NULL;
        }
        s3_free_now(s);
        return NULL;
}

/* ---- helpers ---------------------------------------------------------- */

/* SigV4's URI encoding: everything but A-Z a-z 0-9 - . _ ~ as %XX in upper
 * case (and '/' kept in paths). curl 7.88 signs the URL as given, so this
 * must be exactly what the store computes. */
static int uri_encode(const char *p, size_t n, bool keep_slash, char **ret) {
        static const char hex[] = "0123456789ABCDEF";
        char *out, *o;

        if (n > SIZE_MAX / 3 - 1)
                return -ENOMEM;
        out = o = malloc(n * 3 + 1);
        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) p[i];
                if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/'))
                        *o++ = (char) c;
                else {
                        *o++ = '%';
                        *o++ = hex[c >> 4];
                        *o++ = hex[c & 15];
                }
        }
        *o = 0;
        *ret = out;
        return 0;
}

static bool key_valid(const char *key) {
        size_t n;
        if (!key)
                return false;
        n = strnlen(key, S3_KEY_MAX + 1);
        return n >= 1 && n <= S3_KEY_MAX;
}

static void sha256_hex(const void *p, size_t n, char out[SHA256_HEX_LEN + 1]) {
        static const char hex[] = "0123456789abcdef";
        unsigned char md[32];
        unsigned len = 0;

        if (EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) != 1 || len != 32) {
                /* Cannot happen short of a broken libcrypto; a wrong hash
                 * makes the store refuse the request, which is safe. */
                memset(md, 0, sizeof(md));
        }
        for (unsigned i = 0; i < 32; i++) {
                out[2 * i] = hex[md[i] >> 4];
                out[2 * i + 1] = hex[md[i] & 15];
        }
        out[SHA256_HEX_LEN] = 0;
}

static void set_error(S3Request *req, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        (void) vsnprintf(req->error, sizeof(req->error), fmt, ap);
        va_end(ap);
}

/* Printable ASCII only: the text ends up in the caller's log. */
static void copy_printable(char *dst, size_t size, const char *src, size_t n) {
        size_t o = 0;
        for (size_t i = 0; i < n && o + 1 < size; i++) {
                unsigned char c = (unsigned char) src[i];
                dst[o++] = c >= 0x20 && c < 0x7f ? (char) c : '?';
        }
        dst[o] = 0;
}

/* The content of the first <tag>...</tag> within [p, end): S3's answers
 * have no attributes, CDATA or nesting of a tag in itself on the
 * elements read here, and '<' inside text is always escaped. */
static bool xml_find(const char *p, const char *end, const char *tag,
                     const char **content, size_t *len, const char **after) {
        char open[32], close[33];
        size_t tl = strlen(tag);
        const char *a, *b;

        if (tl + 3 > sizeof(open) || p >= end)
                return false;
        snprintf(open, sizeof(open), "<%s>", tag);
        snprintf(close, sizeof(close), "</%s>", tag);
        a = memmem(p, (size_t) (end - p), open, tl + 2);
        if (!a)
                return false;
        a += tl + 2;
        b = memmem(a, (size_t) (end - a), close, tl + 3);
        if (!b)
                return false;
        *content = a;
        *len = (size_t) (b - a);
        if (after)
                *after = b + tl + 3;
        return true;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* XML text with its five entities and numeric references (ASCII only: a
 * key is bytes, and the listing asks for %-encoding of anything else),
 * then %XX-decoded because the listing is asked with encoding-type=url.
 * The result is never longer than the input, so out needs n + 1 bytes. */
static int key_decode(const char *p, size_t n, char *out, size_t *ret_len) {
        char *tmp = malloc(n + 1);
        size_t t = 0, o = 0;

        if (!tmp)
                return -ENOMEM;
        for (size_t i = 0; i < n;) {
                if (p[i] != '&') {
                        if (p[i] == '<') {
                                free(tmp);
                                return -EBADMSG;
                        }
                        tmp[t++] = p[i++];
                        continue;
                }
                static const struct { const char *name; char c; } ent[] = {
                        { "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' }, { "&apos;", '\'' },
                };
                bool found = false;
                for (size_t e = 0; e < ELEMENTSOF(ent); e++) {
                        size_t el = strlen(ent[e].name);
                        if (n - i >= el && memcmp(p + i, ent[e].name, el) == 0) {
                                tmp[t++] = ent[e].c;
                                i += el;
                                found = true;
                                break;
                        }
                }
                if (found)
                        continue;
                /* &#NN; or &#xNN; */
                size_t j = i + 1;
                unsigned v = 0, digits = 0;
                bool hexa = false;
                if (j < n && p[j] == '#')
                        j++;
                else
                        goto bad;
                if (j < n && (p[j] == 'x' || p[j] == 'X')) {
                        hexa = true;
                        j++;
                }
                for (; j < n && p[j] != ';' && digits < 6; j++, digits++) {
                        int d = hexval(p[j]);
                        if (d < 0 || (!hexa && d > 9))
                                goto bad;
                        v = v * (hexa ? 16 : 10) + (unsigned) d;
                }
                if (j >= n || p[j] != ';' || digits == 0 || v == 0 || v > 0x7f)
                        goto bad;
                tmp[t++] = (char) v;
                i = j + 1;
        }
        for (size_t i = 0; i < t;) {
                if (tmp[i] == '%') {
                        int h, l;
                        if (t - i < 3 || (h = hexval(tmp[i + 1])) < 0 || (l = hexval(tmp[i + 2])) < 0)
                                goto bad;
                        out[o++] = (char) (h << 4 | l);
                        i += 3;
                } else if (tmp[i] == '+') {
                        /* Some stores encode spaces in the form style. */
                        out[o++] = ' ';
                        i++;
                } else
                        out[o++] = tmp[i++];
        }
        out[o] = 0;
        free(tmp);
        if (o == 0 || o > S3_KEY_MAX || memchr(out, 0, o))
                return -EBADMSG;
        *ret_len = o;
        return 0;
bad:
        free(tmp);
        return -EBADMSG;
}

/* Decimal digits only, no sign, no spaces, no overflow. */
static int parse_u64(const char *p, size_t n, uint64_t *ret) {
        uint64_t v = 0;
        if (n == 0 || n > 20)
                return -EBADMSG;
        for (size_t i = 0; i < n; i++) {
                if (p[i] < '0' || p[i] > '9')
                        return -EBADMSG;
                unsigned d = (unsigned) (p[i] - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -EBADMSG;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* ---- requests --------------------------------------------------------- */

static size_t on_read(char *buffer, size_t size, size_t nitems, void *userdata) {
        S3Request *req = userdata;
        uint64_t left = req->up_len - req->up_pos;
        size_t n = size * nitems;

        if (n > left)
                n = (size_t) left;
        if (n == 0)
                return 0;
        if (req->op == OP_PUT_FD) {
                ssize_t k;
                do
                        k = pread(req->fd, buffer, n, (off_t) (req->fd_off + req->up_pos));
                while (k < 0 && errno == EINTR);
                if (k < 0) {
                        req->abort_r = -errno;
                        return CURL_READFUNC_ABORT;
                }
                if (k == 0) {
                        /* The file shrank under us: what was promised cannot be sent. */
                        req->abort_r = -ENODATA;
                        return CURL_READFUNC_ABORT;
                }
                n = (size_t) k;
        } else
                memcpy(buffer, (req->body ? (const uint8_t *) req->body : req->data) + req->up_pos, n);
        req->up_pos += n;
        return n;
}

/* Lets curl rewind an upload it has to send again on a new connection. */
static int on_seek(void *userdata, curl_off_t offset, int origin) {
        S3Request *req = userdata;
        if (origin != SEEK_SET || offset < 0 || (uint64_t) offset > req->up_len)
                return CURL_SEEKFUNC_CANTSEEK;
        req->up_pos = (uint64_t) offset;
        return CURL_SEEKFUNC_OK;
}

static bool body_is_error(S3Request *req) {
        long code = 0;
        if (!req->mode_known) {
                (void) curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
                req->err_mode = code < 200 || code >= 300;
                req->mode_known = true;
        }
        return req->err_mode;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
        S3Request *req = userdata;
        size_t n = size * nmemb;

        if (body_is_error(req)) {
                /* Keep the start of an error document; a longer one is not
                 * one, and ends the transfer rather than being read on. */
                size_t take = MIN(n, (size_t) ERROR_BODY_MAX - req->err_len);
                if (!req->err_body) {
                        req->err_body = malloc(ERROR_BODY_MAX);
                        if (!req->err_body) {
                                req->abort_r = -ENOMEM;
                                return 0;
                        }
                }
                memcpy(req->err_body + req->err_len, ptr, take);
                req->err_len += take;
                if (take < n) {
                        req->err_overflow = true;
                        return 0;
                }
                return n;
        }

        uint64_t limit;
        switch (req->op) {
        case OP_GET:
        case OP_GET_FD: {
                curl_off_t cl = -1;
                limit = req->op == OP_GET_FD ? UINT64_MAX :
                        req->want_len == UINT64_MAX ? S3_GET_MEMORY_MAX : req->want_len;
                /* S3 always says how long an object's body is; without it
                 * nothing would bound what a broken store sends. */
                if (req->got == 0 &&
                    (curl_easy_getinfo(req->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK || cl < 0)) {
                        req->abort_r = -EBADMSG;
                        set_error(req, "an object's body without Content-Length");
                        return 0;
                }
                if (req->got == 0 && (uint64_t) cl > limit) {
                        req->abort_r = -EBADMSG;
                        set_error(req, "the answer is longer than asked (%" PRIu64 " bytes)", (uint64_t) cl);
                        return 0;
                }
                if (req->op == OP_GET && req->got == 0 && (uint64_t) cl > req->buf_size) {
                        uint8_t *b = realloc(req->buf, (size_t) cl);
                        if (!b) {
                                req->abort_r = -ENOMEM;
                                return 0;
                        }
                        req->buf = b;
                        req->buf_size = (size_t) cl;
                }
                break;
        }
        case OP_LIST:
                limit = LIST_BODY_MAX;
                break;
        default:
                /* PUT, DELETE and bucket creation answer with nothing we
                 * need: counted only to bound it. */
                if (n > ERROR_BODY_MAX - req->got) {
                        req->abort_r = -EBADMSG;
                        set_error(req, "an unexpected body of more than %u bytes", ERROR_BODY_MAX);
                        return 0;
                }
                req->got += n;
                return n;
        }
        if (n > limit - req->got) {
                req->abort_r = -EBADMSG;
                set_error(req, "the answer is longer than asked (more than %" PRIu64 " bytes)", limit);
                return 0;
        }
        if (req->op == OP_GET_FD) {
                size_t done = 0;
                while (done < n) {
                        ssize_t k = pwrite(req->fd, ptr + done, n - done, (off_t) (req->fd_off + req->got + done));
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0) {
                                req->abort_r = k < 0 ? -errno : -EIO;
                                return 0;
                        }
                        done += (size_t) k;
                }
                req->got += n;
                return n;
        }
        if (req->got + n > req->buf_size) {
                /* Grow geometrically but never past what may arrive. */
                uint64_t want = MAX(req->got + n, MIN((uint64_t) req->buf_size * 2, limit));
                if (want < 65536)
                        want = MIN(limit, 65536);
                if (want < req->got + n)
                        want = req->got + n;
                uint8_t *b = realloc(req->buf, (size_t) want);
                if (!b) {
                        req->abort_r = -ENOMEM;
                        return 0;
                }
                req->buf = b;
                req->buf_size = (size_t) want;
        }
        memcpy(req->buf + req->got, ptr, n);
        req->got += n;
        return n;
}

static void request_unlink(S3Request *req) {
        S3 *s = req->s3;
        if (req->prev)
                req->prev->next = req->next;
        else if (s->requests == req)
                s->requests = req->next;
        if (req->next)
                req->next->prev = req->prev;
        req->prev = req->next = NULL;
}

static void queue_remove(S3Request *req) {
        S3 *s = req->s3;
        S3Request *p = NULL;
        for (S3Request *q = s->queue_head; q; p = q, q = q->queue_next)
                if (q == req) {
                        if (p)
                                p->queue_next = q->queue_next;
                        else
                                s->queue_head = q->queue_next;
                        if (s->queue_tail == q)
                                s->queue_tail = p;
                        break;
                }
        req->queue_next = NULL;
}

static void request_free(S3Request *req) {
        if (!req)
                return;
        request_unlink(req);
        if (req->easy)
                curl_easy_cleanup(req->easy);
        curl_slist_free_all(req->headers);
        sd_event_source_disable_unref(req->retry_source);
        free(req->url);
        free(req->body);
        free(req->buf);
        free(req->err_body);
        for (size_t i = 0; i < req->n_entries; i++)
                free(req->entries[i].key);
        free(req->entries);
        free(req->prefix);
        free(req->start_after);
        free(req);
}

static void request_enqueue(S3Request *req) {
        S3 *s = req->s3;
        req->state = STATE_QUEUED;
        req->queue_next = NULL;
        if (s->queue_tail)
                s->queue_tail->queue_next = req;
        else
                s->queue_head = req;
        s->queue_tail = req;
}

static void attempt_reset(S3Request *req) {
        req->up_pos = 0;
        req->got = 0;
        req->err_len = 0;
        req->err_mode = req->mode_known = req->err_overflow = false;
        req->abort_r = 0;
        req->curl_error[0] = 0;
        req->size = UINT64_MAX;
}

static void s3_start_queued(S3 *s) {
        if (s->free_requested)
                return;
        while (s->queue_head && s->n_active < s->max_connections) {
                S3Request *req = s->queue_head;
                s->queue_head = req->queue_next;
                if (!s->queue_head)
                        s->queue_tail = NULL;
                req->queue_next = NULL;
                attempt_reset(req);
                req->attempts++;
                if (curl_multi_add_handle(s->multi, req->easy) != CURLM_OK) {
                        /* Only on memory shortage or a broken handle: report
                         * it through the usual path on the next turn. */
                        req->start_r = -ENOMEM;
                        set_error(req, "could not start the transfer");
                        req->state = STATE_BACKOFF;
                        (void) sd_event_source_set_time_relative(req->retry_source, 0);
                        (void) sd_event_source_set_enabled(req->retry_source, SD_EVENT_ONESHOT);
                        continue;
                }
                req->state = STATE_ACTIVE;
                s->n_active++;
        }
}

/* Call back and free req; true when the callback freed the client too. */
static bool request_complete(S3Request *req, int r) {
        S3 *s = req->s3;

        req->state = STATE_DONE;
        s->in_callback++;
        if (req->done)
                req->done(req, r, req->userdata);
        s->in_callback--;
        request_free(req);
        if (s->free_requested && s->in_callback == 0) {
                s3_free_now(s);
                return true;
        }
        return false;
}

static int on_retry(sd_event_source *source, uint64_t usec, void *userdata) {
        S3Request *req = userdata;
        S3 *s = req->s3;

        if (req->start_r < 0) {
                if (!request_complete(req, req->start_r))
                        s3_start_queued(s);
                return 0;
        }
        request_enqueue(req);
        s3_start_queued(s);
        return 0;
}

typedef struct ErrorMap {
        const char *code;
        int r;             /* 0: retryable */
} ErrorMap;

static const ErrorMap error_map[] = {
        { "NoSuchKey", -ENOENT },
        { "NoSuchBucket", -ENOENT },
        { "AccessDenied", -EACCES },
        { "InvalidAccessKeyId", -EACCES },
        { "SignatureDoesNotMatch", -EACCES },
        { "RequestTimeTooSkewed", -EACCES },
        { "ExpiredToken", -EACCES },
        { "InvalidRange", -ERANGE },
        { "EntityTooLarge", -EFBIG },
        { "QuotaExceeded", -EDQUOT },
        { "InsufficientStorage", -ENOSPC },
        { "BucketAlreadyExists", -EEXIST },
        { "XAmzContentSHA256Mismatch", -EBADMSG },
        { "BadDigest", -EBADMSG },
        { "NotImplemented", -EOPNOTSUPP },
        { "SlowDown", 0 },
        { "RequestTimeout", 0 },
        { "InternalError", 0 },
        { "ServiceUnavailable", 0 },
        { "OperationAborted", 0 },
};

/* The error for an HTTP answer; 0 with *retry set when it may pass. */
static int http_error(long code, const char *s3code, bool *retry) {
        *retry = false;
        if (s3code)
                for (size_t i = 0; i < ELEMENTSOF(error_map); i++)
                        if (strcmp(error_map[i].code, s3code) == 0) {
                                if (error_map[i].r == 0)
                                        *retry = true;
                                return error_map[i].r ? error_map[i].r : -EAGAIN;
                        }
        switch (code) {
        case 408: case 429: case 500: case 502: case 503: case 504:
                *retry = true;
                return -EAGAIN;
        case 401: case 403:
                return -EACCES;
        case 404:
                return -ENOENT;
        case 405: case 501:
                return -EOPNOTSUPP;
        case 409:
                return -EBUSY;
        case 413:
                return -EFBIG;
        case 416:
                return -ERANGE;
        case 507:
                return -ENOSPC;
        default:
                return code >= 400 && code < 500 ? -EINVAL : -EIO;
        }
}

static int curl_error_to_errno(CURLcode c, bool *retry) {
        *retry = false;
        switch (c) {
        case CURLE_COULDNT_CONNECT:
                *retry = true;
                return -ECONNREFUSED;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                *retry = true;
                return -EHOSTUNREACH;
        case CURLE_OPERATION_TIMEDOUT:
                *retry = true;
                return -ETIMEDOUT;
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
                *retry = true;
                return -ECONNRESET;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
                return -EPERM;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
                return -EINVAL;
        case CURLE_WEIRD_SERVER_REPLY:
        case CURLE_BAD_CONTENT_ENCODING:
                return -EBADMSG;
        default:
                return -EIO;
        }
}

/* "bytes START-END/TOTAL" (206) or "bytes * /TOTAL" (416), strictly. */
static int content_range_parse(const char *v, uint64_t *start, uint64_t *end, uint64_t *total) {
        const char *dash, *slash;
        size_t n = strlen(v);

        if (n < 7 || n > 80 || strncmp(v, "bytes ", 6) != 0)
                return -EBADMSG;
        v += 6;
        n -= 6;
        slash = memchr(v, '/', n);
        if (!slash)
                return -EBADMSG;
        if (parse_u64(slash + 1, n - (size_t) (slash + 1 - v), total) < 0)
                return -EBADMSG;
        if (slash - v == 1 && v[0] == '*') {
                *start = *end = UINT64_MAX;
                return 0;
        }
        dash = memchr(v, '-', (size_t) (slash - v));
        if (!dash ||
            parse_u64(v, (size_t) (dash - v), start) < 0 ||
            parse_u64(dash + 1, (size_t) (slash - dash - 1), end) < 0 ||
            *end < *start || *end >= *total)
                return -EBADMSG;
        return 0;
}

static const char *header_value(S3Request *req, const char *name) {
        struct curl_header *h = NULL;
        if (curl_easy_header(req->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
                return NULL;
        return h->value;
}

static int list_parse(S3Request *req) {
        const char *p = (const char *) req->buf, *end = p + req->got, *c, *after;
        size_t cl;
        const char *prev_key = req->start_after;
        size_t prefix_len = req->prefix ? strlen(req->prefix) : 0;
        int r;

        if (!p || !memmem(p, req->got, "<ListBucketResult", 17))
                return -EBADMSG;
        if (!xml_find(p, end, "IsTruncated", &c, &cl, NULL))
                return -EBADMSG;
        if (cl == 4 && memcmp(c, "true", 4) == 0)
                req->truncated = true;
        else if (cl == 5 && memcmp(c, "false", 5) == 0)
                req->truncated = false;
        else
                return -EBADMSG;

        while (xml_find(p, end, "Contents", &c, &cl, &after)) {
                const char *k, *z, *cend = c + cl;
                size_t kl, zl, key_len;
                S3Entry e = {};

                if (req->n_entries >= req->max_keys)
                        return -EBADMSG;   /* more than asked */
                if (!xml_find(c, cend, "Key", &k, &kl, NULL) || !xml_find(c, cend, "Size", &z, &zl, NULL))
                        return -EBADMSG;
                if (kl > S3_KEY_MAX * 6 + 16)
                        return -EBADMSG;   /* no key, however escaped, is this long */
                e.key = malloc(kl + 1);
                if (!e.key)
                        return -ENOMEM;
                r = key_decode(k, kl, e.key, &key_len);
                if (r >= 0)
                        r = parse_u64(z, zl, &e.size);
                /* In order, after start_after, under the prefix: a store
                 * that breaks this would make a caller's paging loop forever. */
                if (r >= 0 && ((prefix_len && (key_len < prefix_len || memcmp(e.key, req->prefix, prefix_len) != 0)) ||
                               (prev_key && strcmp(e.key, prev_key) <= 0)))
                        r = -EBADMSG;
                if (r < 0) {
                        free(e.key);
                        return r;
                }
                if (req->n_entries % 64 == 0) {
                        S3Entry *n = reallocarray(req->entries, req->n_entries + 64, sizeof(S3Entry));
                        if (!n) {
                                free(e.key);
                                return -ENOMEM;
                        }
                        req->entries = n;
                }
                req->entries[req->n_entries++] = e;
                prev_key = e.key;
                p = after;
        }
        if (req->truncated && req->n_entries == 0)
                return -EBADMSG;
        return 0;
}

/* What a finished 2xx answer means for the request. */
static int success_check(S3Request *req, long code) {
        curl_off_t cl = -1;
        const char *v;
        uint64_t start, end, total;

        switch (req->op) {
        case OP_HEAD:
                if (curl_easy_getinfo(req->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK || cl < 0) {
                        set_error(req, "HEAD answer without Content-Length");
                        return -EBADMSG;
                }
                req->size = (uint64_t) cl;
                return 0;
        case OP_GET:
        case OP_GET_FD:
                if (code == 206) {
                        v = header_value(req, "Content-Range");
                        if (!v || content_range_parse(v, &start, &end, &total) < 0 || start == UINT64_MAX ||
                            start != req->want_off || end - start + 1 != req->got ||
                            (req->want_len != UINT64_MAX && req->got > req->want_len)) {
                                set_error(req, "the range answered is not the one asked");
                                return -EBADMSG;
                        }
                        req->size = total;
                        return 0;
                }
                if (code != 200 || req->want_off != 0) {
                        set_error(req, "HTTP %ld instead of the range asked", code);
                        return -EBADMSG;
                }
                /* A whole object: curl checked its length against Content-Length. */
                req->size = req->got;
                return 0;
        case OP_LIST: {
                int r = list_parse(req);
                if (r == -EBADMSG)
                        set_error(req, "malformed ListObjectsV2 answer");
                return r;
        }
        default:
                return 0;
        }
}

/* The answer's S3 error code and message into req->error; the code for matching. */
static const char *error_document(S3Request *req, long code, char *s3code, size_t size) {
        const char *c, *m;
        size_t cl, ml;
        char msg[256] = "";

        s3code[0] = 0;
        if (req->err_body && xml_find(req->err_body, req->err_body + req->err_len, "Code", &c, &cl, NULL)) {
                copy_printable(s3code, size, c, cl);
                if (xml_find(req->err_body, req->err_body + req->err_len, "Message", &m, &ml, NULL))
                        copy_printable(msg, sizeof(msg), m, ml);
        }
        set_error(req, "HTTP %ld%s%s%s%s", code, s3code[0] ? " " : "", s3code, msg[0] ? ": " : "", msg);
        return s3code[0] ? s3code : NULL;
}

/* True when the callback freed the client. */
static bool request_finished(S3Request *req, CURLcode cc) {
        S3 *s = req->s3;
        long code = 0;
        bool retry = false;
        char s3code[64];
        int r;

        long connects = 0;

        (void) curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &code);
        if (curl_easy_getinfo(req->easy, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK && connects > 0)
                s->connects += (uint64_t) connects;
        if (req->abort_r < 0)
                r = req->abort_r;
        else if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && req->err_overflow)) {
                r = curl_error_to_errno(cc, &retry);
                set_error(req, "%s", req->curl_error[0] ? req->curl_error : curl_easy_strerror(cc));
        } else if (code >= 200 && code < 300)
                r = success_check(req, code);
        else {
                const char *c = error_document(req, code, s3code, sizeof(s3code));
                r = http_error(code, c, &retry);
                if (req->op == OP_DELETE && r == -ENOENT && (!c || strcmp(c, "NoSuchKey") == 0))
                        r = 0;
                else if (req->op == OP_CREATE_BUCKET && c && strcmp(c, "BucketAlreadyOwnedByYou") == 0)
                        r = 0;
                else if (req->op == OP_GET && r == -ERANGE && req->want_off == 0) {
                        /* Bytes 0..len-1 exist in any object but an empty one,
                         * which has no byte 0 to start a range at (RGW does not
                         * say "bytes * /0" in Content-Range either). */
                        req->size = 0;
                        req->got = 0;
                        req->error[0] = 0;
                        r = 0;
                }
        }

        if (r < 0 && retry) {
                uint64_t now = now_usec(s);
                if (req->first_failure_usec == 0)
                        req->first_failure_usec = now;
                if (now - req->first_failure_usec < s->retry_usec) {
                        uint64_t left = s->retry_usec - (now - req->first_failure_usec), delay;
                        req->backoff_usec = req->backoff_usec ? MIN(req->backoff_usec * 2, BACKOFF_MAX_USEC) : BACKOFF_MIN_USEC;
                        /* Jitter: clients retrying together do not hit a recovering store together. */
                        delay = req->backoff_usec / 2 + arc4random_uniform((uint32_t) (req->backoff_usec / 2 + 1));
                        delay = MIN(delay, left);
                        req->state = STATE_BACKOFF;
                        if (sd_event_source_set_time_relative(req->retry_source, delay) >= 0 &&
                            sd_event_source_set_enabled(req->retry_source, SD_EVENT_ONESHOT) >= 0)
                                return false;
                }
                if (s->retry_usec > 0) {
                        char last[sizeof(req->error)];
                        memcpy(last, req->error, sizeof(last));
                        set_error(req, "gave up after %u attempts, last: %s", req->attempts, last);
                        r = -ETIMEDOUT;
                }
        }
        return request_complete(req, r);
}

static void s3_process(S3 *s) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(s->multi, &left))) {
                S3Request *req;
                char *priv = NULL;
                CURLcode cc;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                cc = msg->data.result;
                (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
                req = (S3Request *) priv;
                /* msg is gone after this. */
                (void) curl_multi_remove_handle(s->multi, msg->easy_handle);
                if (!req)
                        continue;
                s->n_active--;
                req->state = STATE_BACKOFF;
                if (request_finished(req, cc))
                        return;
                s3_start_queued(s);
        }
        s3_start_queued(s);
}

static int request_new(S3 *s, Op op, const char *key, s3_done_fn done, void *userdata, S3Request **ret) {
        _cleanup_(freep) char *enc = NULL;
        S3Request *req;
        int r;

        if (key && !key_valid(key))
                return -EINVAL;
        if (key) {
                r = uri_encode(key, strlen(key), true, &enc);
                if (r < 0)
                        return r;
        }
        req = calloc(1, sizeof(*req));
        if (!req)
                return -ENOMEM;
        req->s3 = s;
        req->op = op;
        req->fd = -1;
        req->done = done;
        req->userdata = userdata;
        req->size = UINT64_MAX;
        req->next = s->requests;
        if (req->next)
                req->next->prev = req;
        s->requests = req;
        if (key && asprintf(&req->url, "%s/%s", s->base, enc) < 0) {
                req->url = NULL;
                request_free(req);
                return -ENOMEM;
        }
        *ret = req;
        return 0;
}

/* Everything but the operation's own options; the payload hash is what
 * curl 7.88 signs as x-amz-content-sha256 but does not compute itself. */
static int request_setup(S3Request *req, const char *payload_hash) {
        S3 *s = req->s3;
        char h[128];
        CURL *e;

        e = req->easy = curl_easy_init();
        if (!e)
                return -ENOMEM;
        snprintf(h, sizeof(h), "x-amz-content-sha256: %s", payload_hash);
        struct curl_slist *l = curl_slist_append(NULL, h);
        if (!l)
                return -ENOMEM;
        req->headers = l;
        if (curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PRIVATE, req) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_AWS_SIGV4, s->sigv4) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_USERNAME, s->access_key) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PASSWORD, s->secret_key) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_LIMIT) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, LOW_SPEED_TIME) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->curl_error) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_WRITEDATA, req) != CURLE_OK ||
            (s->ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, s->ca_file) != CURLE_OK))
                return -EIO;
        if (sd_event_add_time(s->event, &req->retry_source, CLOCK_MONOTONIC, 0, 1, on_retry, req) < 0)
                return -ENOMEM;
        (void) sd_event_source_set_description(req->retry_source, "s3-retry");
        return sd_event_source_set_enabled(req->retry_source, SD_EVENT_OFF) < 0 ? -ENOMEM : 0;
}

static int request_upload(S3Request *req, uint64_t len) {
        CURL *e = req->easy;
        req->up_len = len;
        if (curl_easy_setopt(e, CURLOPT_UPLOAD, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_READDATA, req) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_SEEKDATA, req) != CURLE_OK ||
            /* S3 wants a Content-Length: a chunked upload is HTTP 411. */
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t) len) != CURLE_OK)
                return -EIO;
        return 0;
}

/* Queue req, or free it and return r when r < 0. */
static int request_submit(S3Request *req, int r, S3Request **ret) {
        if (r < 0) {
                request_free(req);
                return r;
        }
        request_enqueue(req);
        s3_start_queued(req->s3);
        if (ret)
                *ret = req;
        return 0;
}

int s3_put(S3 *s, const char *key, const void *data, size_t len,
           s3_done_fn done, void *userdata, S3Request **ret) {
        char hash[SHA256_HEX_LEN + 1];
        S3Request *req;
        int r;

        if (!s || (!data && len > 0))
                return -EINVAL;
        r = request_new(s, OP_PUT, key, done, userdata, &req);
        if (r < 0)
                return r;
        req->data = data;
        sha256_hex(data ? data : "", len, hash);
        r = request_setup(req, hash);
        if (r >= 0)
                r = request_upload(req, len);
        return request_submit(req, r, ret);
}

int s3_put_fd(S3 *s, const char *key, int fd, uint64_t off, uint64_t len,
              s3_done_fn done, void *userdata, S3Request **ret) {
        S3Request *req;
        int r;

        if (!s || fd < 0 || off > INT64_MAX || len > INT64_MAX - off)
                return -EINVAL;
        r = request_new(s, OP_PUT_FD, key, done, userdata, &req);
        if (r < 0)
                return r;
        req->fd = fd;
        req->fd_off = off;
        r = request_setup(req, "UNSIGNED-PAYLOAD");
        if (r >= 0)
                r = request_upload(req, len);
        return request_submit(req, r, ret);
}

static int request_range(S3Request *req, uint64_t off, uint64_t len) {
        char range[64];

        req->want_off = off;
        req->want_len = len;
        if (off == 0 && len == UINT64_MAX)
                return 0;
        if (len == UINT64_MAX)
                snprintf(range, sizeof(range), "%" PRIu64 "-", off);
        else
                snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, off, off + len - 1);
        return curl_easy_setopt(req->easy, CURLOPT_RANGE, range) == CURLE_OK ? 0 : -EIO;
}

int s3_get(S3 *s, const char *key, uint64_t off, uint64_t len,
           s3_done_fn done, void *userdata, S3Request **ret) {
        S3Request *req;
        int r;

        if (!s || len == 0 || off > INT64_MAX || (len != UINT64_MAX && len > INT64_MAX - off))
                return -EINVAL;
        r = request_new(s, OP_GET, key, done, userdata, &req);
        if (r < 0)
                return r;
        r = request_setup(req, EMPTY_SHA256);
        if (r >= 0)
                r = request_range(req, off, len);
        return request_submit(req, r, ret);
}

int s3_get_fd(S3 *s, const char *key, int fd,
              s3_done_fn done, void *userdata, S3Request **ret) {
        S3Request *req;
        off_t pos;
        int r;

        if (!s || fd < 0)
                return -EINVAL;
        pos = lseek(fd, 0, SEEK_CUR);
        if (pos < 0)
                return -errno;
        r = request_new(s, OP_GET_FD, key, done, userdata, &req);
        if (r < 0)
                return r;
        req->fd = fd;
        req->fd_off = (uint64_t) pos;
        r = request_setup(req, EMPTY_SHA256);
        if (r >= 0)
                r = request_range(req, 0, UINT64_MAX);
        return request_submit(req, r, ret);
}

int s3_head(S3 *s, const char *key, s3_done_fn done, void *userdata, S3Request **ret) {
        S3Request *req;
        int r;

        if (!s)
                return -EINVAL;
        r = request_new(s, OP_HEAD, key, done, userdata, &req);
        if (r < 0)
                return r;
        r = request_setup(req, EMPTY_SHA256);
        if (r >= 0 && curl_easy_setopt(req->easy, CURLOPT_NOBODY, 1L) != CURLE_OK)
                r = -EIO;
        return request_submit(req, r, ret);
}

int s3_delete(S3 *s, const char *key, s3_done_fn done, void *userdata, S3Request **ret) {
        S3Request *req;
        int r;

        if (!s)
                return -EINVAL;
        r = request_new(s, OP_DELETE, key, done, userdata, &req);
        if (r < 0)
                return r;
        r = request_setup(req, EMPTY_SHA256);
        if (r >= 0 && curl_easy_setopt(req->easy, CURLOPT_CUSTOMREQUEST, "DELETE") != CURLE_OK)
                r = -EIO;
        return request_submit(req, r, ret);
}

int s3_list(S3 *s, const char *prefix, const char *start_after, unsigned max_keys,
            s3_done_fn done, void *userdata, S3Request **ret) {
        _cleanup_(freep) char *p = NULL, *a = NULL;
        S3Request *req;
        int r;

        if (!s || max_keys > S3_LIST_MAX)
                return -EINVAL;
        if (prefix && !*prefix)
                prefix = NULL;
        if (start_after && !*start_after)
                start_after = NULL;
        if ((prefix && !key_valid(prefix)) || (start_after && !key_valid(start_after)))
                return -EINVAL;
        if ((prefix && uri_encode(prefix, strlen(prefix), false, &p) < 0) ||
            (start_after && uri_encode(start_after, strlen(start_after), false, &a) < 0))
                return -ENOMEM;
        r = request_new(s, OP_LIST, NULL, done, userdata, &req);
        if (r < 0)
                return r;
        req->max_keys = max_keys ? max_keys : S3_LIST_MAX;
        req->prefix = prefix ? strdup(prefix) : NULL;
        req->start_after = start_after ? strdup(start_after) : NULL;
        if ((prefix && !req->prefix) || (start_after && !req->start_after)) {
                request_free(req);
                return -ENOMEM;
        }
        /* Sorted by name, as SigV4's canonical query wants and curl 7.88 does not do. */
        if (asprintf(&req->url, "%s?encoding-type=url&list-type=2&max-keys=%u%s%s%s%s", s->base, req->max_keys,
                     p ? "&prefix=" : "", p ? p : "", a ? "&start-after=" : "", a ? a : "") < 0) {
                req->url = NULL;
                request_free(req);
                return -ENOMEM;
        }
        r = request_setup(req, EMPTY_SHA256);
        return request_submit(req, r, ret);
}

int s3_create_bucket(S3 *s, s3_done_fn done, void *userdata, S3Request **ret) {
        char hash[SHA256_HEX_LEN + 1];
        S3Request *req;
        size_t len = 0;
        int r;

        if (!s)
                return -EINVAL;
        r = request_new(s, OP_CREATE_BUCKET, NULL, done, userdata, &req);
        if (r < 0)
                return r;
        req->url = strdup(s->base);
        if (!req->url) {
                request_free(req);
                return -ENOMEM;
        }
        /* us-east-1 is the default and AWS refuses it named as a constraint;
         * any other region must be named or AWS refuses the request. */
        if (strcmp(s->region, "us-east-1") != 0) {
                if (asprintf(&req->body,
                             "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                             "<LocationConstraint>%s</LocationConstraint></CreateBucketConfiguration>",
                             s->region) < 0) {
                        req->body = NULL;
                        request_free(req);
                        return -ENOMEM;
                }
                len = strlen(req->body);
        }
        sha256_hex(req->body ? req->body : "", len, hash);
        r = request_setup(req, hash);
        if (r >= 0)
                r = request_upload(req, len);
        return request_submit(req, r, ret);
}

void s3_request_cancel(S3Request *req) {
        S3 *s;

        if (!req)
                return;
        s = req->s3;
        switch (req->state) {
        case STATE_DONE:
                return;   /* freed once its callback returns */
        case STATE_ACTIVE:
                (void) curl_multi_remove_handle(s->multi, req->easy);
                s->n_active--;
                break;
        case STATE_QUEUED:
                queue_remove(req);
                break;
        case STATE_BACKOFF:
                break;
        }
        request_free(req);
        s3_start_queued(s);
}

/* Only s3_get() collects a body for the caller; a listing's XML is ours. */
static size_t data_len(S3Request *req) {
        return req->op == OP_GET ? (size_t) req->got : 0;
}

const void *s3_request_data(S3Request *req, size_t *len) {
        if (len)
                *len = data_len(req);
        return req->buf ? req->buf : (const void *) "";
}

void *s3_request_take_data(S3Request *req, size_t *len) {
        void *p;
        if (req->op != OP_GET) {
                if (len)
                        *len = 0;
                return NULL;
        }
        p = TAKE_PTR(req->buf);
        if (len)
                *len = data_len(req);
        req->got = 0;
        req->buf_size = 0;
        return p;
}

uint64_t s3_request_size(S3Request *req) {
        return req->size;
}

const S3Entry *s3_request_entries(S3Request *req, size_t *n) {
        if (n)
                *n = req->n_entries;
        return req->entries;
}

bool s3_request_truncated(S3Request *req) {
        return req->truncated;
}

const char *s3_request_error(S3Request *req) {
        return req->error;
}

uint64_t s3_connects(S3 *s) {
        return s->connects;
}

unsigned s3_request_attempts(S3Request *req) {
        return req->attempts;
}
