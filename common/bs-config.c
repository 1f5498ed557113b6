/* bs-config.c - backupsync.ini: the [server] and [agent:NAME] sections */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bs-config.h"
#include "bs-hash.h"
#include "bs-macro.h"
#include "bs-parse.h"
#include "bs-tls.h"
#include "bs-token.h"

#define INSTANCE_MAX 128

typedef enum ParseMode {
        PARSE_SERVER,
        PARSE_AGENT,
} ParseMode;

typedef struct Parser {
        ParseMode mode;
        const char *file;
        FILE *f;
        unsigned line;     /* of the line inih is looking at */
        bool line_started; /* fgets() handed out a partial line */

        BsServerConfig *server;
        BsAgentConfig *agent;
        const char *instance;
        bool found;               /* [agent:instance] seen in some file */
        const char *section_file; /* last file with [agent:instance] */
        const char *ignore_file;  /* the file the ignore = lines so far came from */

        BsConfigError *err;
        int error; /* negative errno of the first problem; 0: none */
} Parser;

static const char *const agent_keys[] = { "server", "port", "path", "id", "poll-interval", "verify-interval",
                                           "device-name", "tls", "server-fingerprint", "ca-file", "ignore",
                                           "default-ignores", "max-delete" };

void bs_server_config_init(BsServerConfig *cfg) {
        *cfg = (BsServerConfig) {
                .port = BS_CONFIG_DEFAULT_PORT,
                .require_key = true,
                .tls = true,
                .keep_versions_usec = BS_CONFIG_DEFAULT_KEEP_VERSIONS_USEC,
                .keep_all_usec = BS_CONFIG_DEFAULT_KEEP_ALL_USEC,
                .keep_hourly_usec = BS_CONFIG_DEFAULT_KEEP_HOURLY_USEC,
                .keep_daily_usec = BS_CONFIG_DEFAULT_KEEP_DAILY_USEC,
                .prune_interval_usec = BS_CONFIG_DEFAULT_PRUNE_USEC,
                .idle_timeout_usec = BS_CONFIG_DEFAULT_IDLE_USEC,
                .max_connections = BS_CONFIG_DEFAULT_MAX_CONNECTIONS,
        };
}

void bs_server_config_done(BsServerConfig *cfg) {
        free(cfg->listen);
        free(cfg->storage);
        free(cfg->tls_cert);
        free(cfg->tls_key);
        free(cfg->metadata);
        free(cfg->content_bucket);
        free(cfg->s3_endpoint);
        free(cfg->s3_region);
        free(cfg->s3_credentials);
        free(cfg->s3_ca_file);
        cfg->listen = cfg->storage = cfg->tls_cert = cfg->tls_key = NULL;
        cfg->metadata = cfg->content_bucket = cfg->s3_endpoint = cfg->s3_region = NULL;
        cfg->s3_credentials = cfg->s3_ca_file = NULL;
}

/* A password in the world-readable configuration file is refused: libpq
 * reads one from a passfile (passfile=, PGPASSFILE, ~/.pgpass). */
static bool conninfo_has_password(const char *v) {
        if (strncmp(v, "postgresql://", 13) == 0 || strncmp(v, "postgres://", 11) == 0) {
                const char *auth = strstr(v, "://") + 3, *end = auth + strcspn(auth, "/?"), *at = NULL;
                for (const char *q = auth; q < end; q++)
                        if (*q == '@')
                                at = q;
                if (at && memchr(auth, ':', (size_t) (at - auth)))
                        return true;
                return strstr(v, "password=") != NULL;
        }
        return strstr(v, "password") != NULL;
}

/* S3 bucket names: 3 to 63 of a-z, 0-9, '.', '-', starting and ending with a letter or digit. */
static bool bucket_valid(const char *b) {
        size_t n = strlen(b);
        if (n < 3 || n > 63 || !(isalnum((unsigned char) b[0]) && isalnum((unsigned char) b[n - 1])))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!(islower((unsigned char) b[i]) || isdigit((unsigned char) b[i]) || b[i] == '.' || b[i] == '-'))
                        return false;
        return true;
}

void bs_agent_config_init(BsAgentConfig *cfg) {
        *cfg = (BsAgentConfig) { .poll_usec = BS_CONFIG_DEFAULT_POLL_USEC,
                                 .verify_usec = BS_CONFIG_DEFAULT_VERIFY_USEC,
                                 .tls = true,
                                 .default_ignores = true,
                                 .max_delete = BS_DELETE_LIMIT_DEFAULT };
}

void bs_agent_config_done(BsAgentConfig *cfg) {
        free(cfg->name);
        free(cfg->server);
        free(cfg->path);
        free(cfg->id);
        free(cfg->device_name);
        free(cfg->server_fingerprint);
        free(cfg->ca_file);
        cfg->name = cfg->server = cfg->path = cfg->id = cfg->device_name = NULL;
        cfg->server_fingerprint = cfg->ca_file = NULL;
        for (size_t i = 0; i < cfg->n_ignore; i++)
                free(cfg->ignore[i]);
        free(cfg->ignore);
        cfg->ignore = NULL;
        cfg->n_ignore = 0;
}

bool bs_config_instance_valid(const char *name) {
        size_t n = name ? strlen(name) : 0;
        if (n == 0 || n > INSTANCE_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) name[i]) && !strchr("_.@-", name[i]))
                        return false;
        return true;
}

static void error_set(BsConfigError *err, const char *file, unsigned line, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

static void error_set(BsConfigError *err, const char *file, unsigned line, const char *key, const char *fmt, ...) {
        va_list ap;

        snprintf(err->file, sizeof(err->file), "%s", file ?: "");
        err->line = line;
        snprintf(err->key, sizeof(err->key), "%s", key ?: "");
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
}

/* Only the first problem is kept: later ones are often its consequences. */
#define parser_fail(p, errnum, key, ...)                                                 \
        do {                                                                             \
                if (!(p)->error) {                                                       \
                        (p)->error = (errnum);                                           \
                        error_set((p)->err, (p)->file, (p)->line, (key), __VA_ARGS__);   \
                }                                                                        \
        } while (0)

void bs_config_error_format(const BsConfigError *err, char *buf, size_t size) {
        char where[PATH_MAX + 32] = "";

        if (err->file[0] && err->line)
                snprintf(where, sizeof(where), "%s:%u: ", err->file, err->line);
        else if (err->file[0])
                snprintf(where, sizeof(where), "%s: ", err->file);
        snprintf(buf, size, "%s%s%s%s", where, err->key, err->key[0] ? ": " : "", err->message);
}

static int set_string(char **dst, const char *value) {
        char *s = strdup(value);
        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

static bool is_address(const char *s) {
        unsigned char buf[sizeof(struct in6_addr)];
        return inet_pton(AF_INET6, s, buf) == 1 || inet_pton(AF_INET, s, buf) == 1;
}

/* RFC 1123 host name characters; the resolver decides whether it exists. */
static bool is_host(const char *s) {
        if (!s[0] || strlen(s) > 253 || s[0] == '-' || s[0] == '.')
                return false;
        for (const char *c = s; *c; c++)
                if (!isalnum((unsigned char) *c) && *c != '-' && *c != '.' && *c != '_')
                        return false;
        return true;
}

/* Servers an agent tries in turn (server = a, b): a sane number. */
#define SERVERS_MAX 16u

/* "a.example.org, 10.0.0.2": each a host name or address, spaces around commas allowed. */
static bool servers_valid(const char *s) {
        char buf[1024];
        unsigned n = 0;
        if (strlen(s) >= sizeof(buf))
                return false;
        for (const char *p = s;;) {
                p += strspn(p, " \t");
                size_t len = strcspn(p, ","), end = len;
                while (end > 0 && (p[end - 1] == ' ' || p[end - 1] == '\t'))
                        end--;
                memcpy(buf, p, end);
                buf[end] = 0;
                if (!(is_address(buf) || is_host(buf)) || ++n > SERVERS_MAX)
                        return false;
                if (!p[len])
                        return true;
                p += len + 1;
        }
}

/* A leading "~" or "~/" is $HOME; "~user" is not supported. */
static int expand_path(Parser *p, const char *key, const char *value, char **ret) {
        const char *home = getenv("HOME");
        char *s;

        if (value[0] != '~')
                s = strdup(value);
        else if (value[1] != 0 && value[1] != '/') {
                parser_fail(p, -EINVAL, key, "'%s': only a leading ~ or ~/ is expanded", value);
                return -EINVAL;
        } else if (!home || home[0] != '/') {
                parser_fail(p, -EINVAL, key, "'%s': cannot expand ~, $HOME is not set", value);
                return -EINVAL;
        } else if (asprintf(&s, "%s%s", home, value + 1) < 0)
                s = NULL;
        if (!s) {
                parser_fail(p, -ENOMEM, key, "out of memory");
                return -ENOMEM;
        }
        if (s[0] != '/') {
                parser_fail(p, -EINVAL, key, "'%s' is not an absolute path (or one starting with ~/)", value);
                free(s);
                return -EINVAL;
        }
        *ret = s;
        return 0;
}

static int parse_duration(Parser *p, const char *key, const char *value, uint64_t min, uint64_t *ret) {
        uint64_t v;
        if (bs_parse_duration(value, &v) < 0) {
                parser_fail(p, -EINVAL, key, "'%s' is not a duration (e.g. 5, 5s, 250ms, 2m, 1h, 30d)", value);
                return -EINVAL;
        }
        if (v < min) {
                parser_fail(p, -EINVAL, key, "'%s' is shorter than %llums", value, (unsigned long long) (min / 1000));
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_port(Parser *p, const char *key, const char *value, uint16_t *ret) {
        uint16_t v;
        if (bs_parse_port(value, &v) < 0 || v == 0) {
                parser_fail(p, -EINVAL, key, "'%s' is not a TCP port (1-65535)", value);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int store_string(Parser *p, const char *key, char **dst, const char *value) {
        if (set_string(dst, value) < 0) {
                parser_fail(p, -ENOMEM, key, "out of memory");
                return -ENOMEM;
        }
        return 0;
}

static void server_key(Parser *p, const char *key, const char *value) {
        BsServerConfig *c = p->server;

        if (strcmp(key, "port") == 0)
                (void) parse_port(p, key, value, &c->port);
        else if (strcmp(key, "listen") == 0) {
                if (!is_address(value))
                        parser_fail(p, -EINVAL, key, "'%s' is not an IPv4 or IPv6 address", value);
                else
                        (void) store_string(p, key, &c->listen, value);
        } else if (strcmp(key, "storage") == 0) {
                if (value[0] != '/')
                        parser_fail(p, -EINVAL, key, "'%s' is not an absolute path", value);
                else
                        (void) store_string(p, key, &c->storage, value);
        } else if (strcmp(key, "require-key") == 0) {
                if (bs_parse_bool(value, &c->require_key) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a boolean (yes or no)", value);
        } else if (strcmp(key, "tls") == 0) {
                if (bs_parse_bool(value, &c->tls) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a boolean (yes or no)", value);
        } else if (strcmp(key, "tls-cert") == 0 || strcmp(key, "tls-key") == 0) {
                if (value[0] != '/')
                        parser_fail(p, -EINVAL, key, "'%s' is not an absolute path", value);
                else
                        (void) store_string(p, key, key[4] == 'c' ? &c->tls_cert : &c->tls_key, value);
        } else if (strcmp(key, "metadata") == 0) {
                if (!value[0])
                        parser_fail(p, -EINVAL, key, "an empty connection string");
                else if (conninfo_has_password(value))
                        parser_fail(p, -EINVAL, key, "a password does not belong in this file: put it in a passfile "
                                                     "(passfile=, PGPASSFILE or ~/.pgpass)");
                else
                        (void) store_string(p, key, &c->metadata, value);
        } else if (strcmp(key, "content") == 0) {
                if (strncmp(value, "s3://", 5) != 0 || !bucket_valid(value + 5))
                        parser_fail(p, -EINVAL, key, "'%s' is not s3://BUCKET (a bucket name of 3 to 63 a-z, 0-9, "
                                                     "'.' and '-')", value);
                else
                        (void) store_string(p, key, &c->content_bucket, value + 5);
        } else if (strcmp(key, "s3-endpoint") == 0) {
                if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not an http:// or https:// URL", value);
                else
                        (void) store_string(p, key, &c->s3_endpoint, value);
        } else if (strcmp(key, "s3-region") == 0) {
                if (!value[0] || strlen(value) > 64 || strspn(value, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(value))
                        parser_fail(p, -EINVAL, key, "'%s' is not a region name", value);
                else
                        (void) store_string(p, key, &c->s3_region, value);
        } else if (strcmp(key, "s3-addressing") == 0) {
                if (strcmp(value, "path") == 0 || strcmp(value, "virtual") == 0)
                        c->s3_virtual_host = value[0] == 'v';
                else
                        parser_fail(p, -EINVAL, key, "'%s' is not path or virtual", value);
        } else if (strcmp(key, "s3-credentials") == 0 || strcmp(key, "s3-ca-file") == 0) {
                if (value[0] != '/')
                        parser_fail(p, -EINVAL, key, "'%s' is not an absolute path", value);
                else
                        (void) store_string(p, key, strcmp(key, "s3-credentials") == 0 ? &c->s3_credentials
                                                                                         : &c->s3_ca_file, value);
        } else if (strcmp(key, "keep-versions") == 0)
                (void) parse_duration(p, key, value, 0, &c->keep_versions_usec);
        else if (strcmp(key, "keep-all") == 0)
                (void) parse_duration(p, key, value, 0, &c->keep_all_usec);
        else if (strcmp(key, "keep-hourly") == 0)
                (void) parse_duration(p, key, value, 0, &c->keep_hourly_usec);
        else if (strcmp(key, "keep-daily") == 0)
                (void) parse_duration(p, key, value, 0, &c->keep_daily_usec);
        else if (strcmp(key, "prune-interval") == 0) {
                uint64_t v;
                if (parse_duration(p, key, value, 0, &v) == 0) {
                        if (v < 1000000 || v > BS_CONFIG_DEFAULT_PRUNE_USEC)
                                parser_fail(p, -EINVAL, key, "'%s' is not between 1s and 10m", value);
                        else
                                c->prune_interval_usec = v;
                }
        } else if (strcmp(key, "history-max-size") == 0) {
                if (bs_parse_size(value, &c->history_max_bytes) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a size (bytes, or with K, M, G or T)", value);
        }
        else if (strcmp(key, "idle-timeout") == 0)
                (void) parse_duration(p, key, value, 0, &c->idle_timeout_usec);
        else if (strcmp(key, "max-connections") == 0) {
                char *end;
                errno = 0;
                unsigned long long v = isdigit((unsigned char) value[0]) ? strtoull(value, &end, 10) : 0;
                if (!isdigit((unsigned char) value[0]) || errno || *end || v < 1 || v > BS_CONFIG_MAX_CONNECTIONS)
                        parser_fail(p, -EINVAL, key, "'%s' is not a number from 1 to %u", value,
                                    BS_CONFIG_MAX_CONNECTIONS);
                else
                        c->max_connections = (unsigned) v;
        } else
                parser_fail(p, -EINVAL, key, "unknown key in [server] (known: port, listen, storage, require-key, "
                            "tls, tls-cert, tls-key, "
                            "keep-versions, keep-all, keep-hourly, keep-daily, history-max-size, prune-interval, "
                            "idle-timeout, "
                            "max-connections)");
}

/* One ignore = line: a pattern of this computer's. A file's lines replace
 * those of the file before it, as its other keys do. */
static void add_ignore(Parser *p, const char *key, const char *value) {
        BsAgentConfig *c = p->agent;
        if (!value[0]) {
                parser_fail(p, -EINVAL, key, "empty pattern");
                return;
        }
        if (p->ignore_file != p->file) {
                for (size_t i = 0; i < c->n_ignore; i++)
                        free(c->ignore[i]);
                c->n_ignore = 0;
                p->ignore_file = p->file;
        }
        char **v = realloc(c->ignore, (c->n_ignore + 1) * sizeof(*v));
        if (!v || !(v[c->n_ignore] = strdup(value))) {
                if (v)
                        c->ignore = v;
                parser_fail(p, -ENOMEM, key, "out of memory");
                return;
        }
        c->ignore = v;
        c->n_ignore++;
}

static void agent_key(Parser *p, const char *instance, const char *key, const char *value) {
        BsAgentConfig *c = p->agent;
        bool known = false;

        for (size_t i = 0; i < ELEMENTSOF(agent_keys); i++)
                known = known || strcmp(key, agent_keys[i]) == 0;
        if (!known) {
                parser_fail(p, -EINVAL, key, "unknown key in [agent:%s] (known: server, port, path, id, "
                            "poll-interval, verify-interval, device-name, tls, server-fingerprint, ca-file, "
                            "ignore, default-ignores, max-delete)",
                            instance);
                return;
        }
        /* Values of other instances are their agents' business: a typo
         * there must not stop this one from starting or reloading. */
        if (strcmp(instance, p->instance) != 0)
                return;
        p->found = true;
        p->section_file = p->file;

        if (strcmp(key, "server") == 0) {
                if (!servers_valid(value))
                        parser_fail(p, -EINVAL, key, "'%s' is not a host name or address, or a list of up to %u "
                                                     "of them separated by commas", value, SERVERS_MAX);
                else
                        (void) store_string(p, key, &c->server, value);
        } else if (strcmp(key, "port") == 0)
                (void) parse_port(p, key, value, &c->port);
        else if (strcmp(key, "path") == 0) {
                char *s;
                if (expand_path(p, key, value, &s) >= 0) {
                        free(c->path);
                        c->path = s;
                }
        } else if (strcmp(key, "id") == 0) {
                BsToken t;
                if (bs_token_parse(value, strlen(value), &t) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not an account token (ID or ID-KEY)", value);
                else
                        (void) store_string(p, key, &c->id, value);
        } else if (strcmp(key, "poll-interval") == 0)
                (void) parse_duration(p, key, value, BS_CONFIG_MIN_POLL_USEC, &c->poll_usec);
        else if (strcmp(key, "verify-interval") == 0)
                (void) parse_duration(p, key, value, 0, &c->verify_usec);
        else if (strcmp(key, "device-name") == 0) {
                if (!value[0])
                        parser_fail(p, -EINVAL, key, "empty value");
                else
                        (void) store_string(p, key, &c->device_name, value);
        } else if (strcmp(key, "tls") == 0) {
                if (bs_parse_bool(value, &c->tls) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a boolean (yes or no)", value);
        } else if (strcmp(key, "server-fingerprint") == 0) {
                uint8_t fp[BS_FP_LEN];
                char text[BS_FP_TEXT_MAX];
                if (bs_fp_parse(value, fp) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a fingerprint (SHA256: and 64 hex digits, "
                                    "as backupsyncd --fingerprint prints it)", value);
                else {
                        bs_fp_format(fp, text);
                        (void) store_string(p, key, &c->server_fingerprint, text);
                }
        } else if (strcmp(key, "ca-file") == 0) {
                char *s;
                if (strcmp(value, "system") == 0)
                        (void) store_string(p, key, &c->ca_file, "");
                else if (expand_path(p, key, value, &s) >= 0) {
                        free(c->ca_file);
                        c->ca_file = s;
                }
        } else if (strcmp(key, "ignore") == 0)
                add_ignore(p, key, value);
        else if (strcmp(key, "default-ignores") == 0) {
                if (bs_parse_bool(value, &c->default_ignores) < 0)
                        parser_fail(p, -EINVAL, key, "'%s' is not a boolean (yes or no)", value);
        } else if (strcmp(key, "max-delete") == 0) {
                if (bs_parse_delete_limit(value, &c->max_delete) < 0)
                        parser_fail(p, -EINVAL, key,
                                    "'%s' is not a limit: a number of files, a share of the tree (50%%), "
                                    "both (100 50%%), or no", value);
        }
}

/* Checks a section name; called for every header line, so that an empty
 * section is checked too (inih only reports sections that have keys). */
static void section_begin(Parser *p, const char *section) {
        if (strcmp(section, "server") == 0)
                return;
        if (strncmp(section, "agent:", 6) == 0) {
                if (!bs_config_instance_valid(section + 6))
                        parser_fail(p, -EINVAL, NULL,
                                    "invalid section [%s]: the name after 'agent:' may only contain "
                                    "A-Z, a-z, 0-9, '_', '.', '@' and '-'", section);
                else if (p->mode == PARSE_AGENT && strcmp(section + 6, p->instance) == 0) {
                        p->found = true;
                        p->section_file = p->file;
                }
                return;
        }
        parser_fail(p, -EINVAL, NULL, "unknown section [%s] (known: [server], [agent:NAME])", section);
}

static int handler(void *user, const char *section, const char *key, const char *value) {
        Parser *p = user;
        int before = p->error;

        if (!section[0])
                parser_fail(p, -EINVAL, key, "key outside of a section");
        else if (strcmp(section, "server") == 0) {
                if (p->mode == PARSE_SERVER)
                        server_key(p, key, value);
        } else if (strncmp(section, "agent:", 6) == 0) {
                if (p->mode == PARSE_AGENT && bs_config_instance_valid(section + 6))
                        agent_key(p, section + 6, key, value);
        } else
                section_begin(p, section);
        return before == p->error;
}

/* fgets() for inih that counts lines and spots section headers. */
static char *reader(char *str, int num, void *stream) {
        Parser *p = stream;

        char *s = fgets(str, num, p->f);
        if (!s)
                return NULL;
        size_t n = strlen(s);
        if (!p->line_started)
                p->line++;
        p->line_started = n > 0 && s[n - 1] != '\n' && !feof(p->f);
        if (p->line_started) {
                /* inih would take the rest for a line of its own. */
                parser_fail(p, -EINVAL, NULL, "line longer than %d characters", num - 2);
                return NULL;
        }
        if (p->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
                s += 3;
        /* Like inih: '[' first on the line, the name up to ']'; an
         * indented line may be a continuation, so inih decides those. */
        if (s[0] == '[') {
                char *end = strchr(s + 1, ']');
                if (end) {
                        char name[256];
                        snprintf(name, sizeof(name), "%.*s", (int) (end - s - 1), s + 1);
                        section_begin(p, name);
                }
        }
        return str;
}

static int parse_file(Parser *p, const char *file, bool must_exist) {
        p->file = file;
        p->line = 0;
        p->line_started = false;
        p->f = fopen(file, "re");
        if (!p->f) {
                int r = -errno;
                if (r == -ENOENT && !must_exist)
                        return 0;
                error_set(p->err, file, 0, NULL, "cannot read: %s", strerror(-r));
                return r;
        }
        int line = ini_parse_stream(reader, p, handler, p);
        fclose(p->f);
        p->f = NULL;
        if (line == -2) {
                error_set(p->err, file, 0, NULL, "out of memory");
                return -ENOMEM;
        }
        /* inih reports the first line it did not like; when that is before
         * the first problem we found, it is a syntax error. */
        if (line > 0 && (!p->error || (unsigned) line < p->err->line)) {
                p->error = -EINVAL;
                error_set(p->err, file, (unsigned) line, NULL,
                          "syntax error: expected [section], key = value, or a comment");
        }
        return p->error;
}

int bs_config_load_server(const char *file, bool must_exist, BsServerConfig *cfg, BsConfigError *err) {
        Parser p = { .mode = PARSE_SERVER, .server = cfg, .err = err };
        int r = parse_file(&p, file, must_exist);
        if (r == 0 && !cfg->tls_cert != !cfg->tls_key) {
                error_set(err, file, 0, cfg->tls_cert ? "tls-key" : "tls-cert",
                          "tls-cert and tls-key go together: set both, or neither for the server's own key");
                return -EINVAL;
        }
        if (r == 0 && !cfg->metadata != !cfg->content_bucket) {
                error_set(err, file, 0, cfg->metadata ? "content" : "metadata",
                          "metadata and content go together: set both for the cluster backend, or neither");
                return -EINVAL;
        }
        if (r == 0 && cfg->content_bucket && !cfg->s3_endpoint) {
                error_set(err, file, 0, "s3-endpoint", "content = s3://... needs s3-endpoint");
                return -EINVAL;
        }
        return r;
}

int bs_config_load_agent(const char *system_file, bool system_must_exist, const char *user_file,
                         const char *instance, BsAgentConfig *cfg, BsConfigError *err) {
        Parser p = { .mode = PARSE_AGENT, .agent = cfg, .instance = instance, .err = err };
        int r;

        if (!bs_config_instance_valid(instance)) {
                error_set(err, NULL, 0, NULL,
                          "'%s' is not an instance name: it may only contain A-Z, a-z, 0-9, '_', '.', '@' and '-'",
                          instance ?: "");
                return -EINVAL;
        }
        r = parse_file(&p, system_file, system_must_exist);
        if (r < 0)
                return r;
        if (user_file) {
                r = parse_file(&p, user_file, false);
                if (r < 0)
                        return r;
        }
        if (!p.found) {
                error_set(err, NULL, 0, NULL, "no [agent:%s] section in %s%s%s", instance, system_file,
                          user_file ? " or " : "", user_file ?: "");
                return -ESRCH;
        }
        const char *missing = !cfg->server ? "server" : cfg->port == 0 ? "port" : !cfg->path ? "path" : NULL;
        if (missing) {
                error_set(err, p.section_file, 0, NULL, "[agent:%s]: missing required key '%s'", instance, missing);
                return -EINVAL;
        }
        if (set_string(&cfg->name, instance) < 0) {
                error_set(err, NULL, 0, NULL, "out of memory");
                return -ENOMEM;
        }
        return 0;
}

int bs_config_user_file(char **ret) {
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        char *s;

        /* The XDG spec says to ignore a relative $XDG_CONFIG_HOME. */
        if (xdg && xdg[0] == '/') {
                if (asprintf(&s, "%s/backupsync.ini", xdg) < 0)
                        return -ENOMEM;
        } else if (home && home[0] == '/') {
                if (asprintf(&s, "%s/.config/backupsync.ini", home) < 0)
                        return -ENOMEM;
        } else
                return -ENOENT;
        *ret = s;
        return 0;
}

char *bs_state_base(void) {
        const char *base = getenv("XDG_STATE_HOME");
        const char *home = getenv("HOME");
        char *out = NULL;
        if (base && base[0] == '/')
                return asprintf(&out, "%s/backupsync", base) < 0 ? NULL : out;
        if (home && home[0] == '/')
                return asprintf(&out, "%s/.local/state/backupsync", home) < 0 ? NULL : out;
        return NULL;
}

static char *under_base(const char *name) {
        char *base = bs_state_base(), *out = NULL;
        if (base && asprintf(&out, "%s/%s", base, name) < 0)
                out = NULL;
        free(base);
        return out;
}

/* Under the base: "home-alice-docs" for /home/alice/docs, like systemd-escape --path. */
char *bs_state_dir_for_dir(const char *dir) {
        char name[200];
        size_t o = 0;

        for (const char *p = dir + 1; *p && o < 150; p++)
                name[o++] = *p == '/' ? '-' : (isalnum((unsigned char) *p) || *p == '.' || *p == '_') ? *p : '_';
        if (strlen(dir) > 150 || o == 0) {
                uint8_t sha[32];
                char hex[65];
                bs_sha_buf(dir, strlen(dir), sha);
                bs_hex(sha, 8, hex);
                o += (size_t) snprintf(name + o, sizeof(name) - o, "%s%s", o ? "-" : "root-", hex);
        }
        name[o] = 0;
        return under_base(name);
}

/* A unit's StateDirectory= if it has one, else under the base. */
char *bs_state_dir_for_instance(const char *name) {
        const char *sd = getenv("STATE_DIRECTORY");

        if (sd && sd[0] == '/')
                /* It may list several directories; the first is ours. */
                return strndup(sd, strcspn(sd, ":"));
        return under_base(name);
}

typedef struct Instances {
        char ***names;
        size_t *n;
        int error;
} Instances;

static int instance_handler(void *user, const char *section, const char *key, const char *value) {
        Instances *in = user;
        (void) key;
        (void) value;
        if (in->error || strncmp(section, "agent:", 6) != 0 || !bs_config_instance_valid(section + 6))
                return 1;
        for (size_t i = 0; i < *in->n; i++)
                if (strcmp((*in->names)[i], section + 6) == 0)
                        return 1;
        char **v = reallocarray(*in->names, *in->n + 1, sizeof(*v));
        if (!v || !(v[*in->n] = strdup(section + 6))) {
                if (v)
                        *in->names = v;
                in->error = -ENOMEM;
                return 1;
        }
        *in->names = v;
        (*in->n)++;
        return 1;
}

int bs_config_agent_instances(const char *file, char ***names, size_t *n) {
        Instances in = { .names = names, .n = n };
        FILE *f = fopen(file, "re");
        if (!f)
                return 0;
        /* Every line, errors or not: a broken file still names its sections. */
        (void) ini_parse_file(f, instance_handler, &in);
        fclose(f);
        return in.error;
}
