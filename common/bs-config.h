/* bs-config.h - backupsync.ini: the [server] and [agent:NAME] sections
 *
 * Both programs read the same file format (inih). Every key is checked
 * when the file is read, and the first problem comes back as a
 * BsConfigError naming file, line and key, which the caller formats
 * with bs_config_error_format() and reports once.
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bs-parse.h"

#define BS_CONFIG_DEFAULT_PORT 7373
#define BS_CONFIG_DEFAULT_IDLE_USEC (120ULL * 1000000ULL)
#define BS_CONFIG_DEFAULT_MAX_CONNECTIONS 1024u
#define BS_CONFIG_DEFAULT_POLL_USEC (5ULL * 1000000ULL)
#define BS_CONFIG_MIN_POLL_USEC 100000ULL
/* The agent's verification pass: every hour, as Syncthing's full rescan. */
#define BS_CONFIG_DEFAULT_VERIFY_USEC (3600ULL * 1000000ULL)
#define BS_CONFIG_MAX_CONNECTIONS 1000000u
/* Retention: every version for an hour, one an hour for a day, one a day
 * for 30 days, one a week for a year. */
#define BS_CONFIG_DEFAULT_KEEP_VERSIONS_USEC (365ULL * 86400 * 1000000)
#define BS_CONFIG_DEFAULT_KEEP_ALL_USEC (3600ULL * 1000000)
#define BS_CONFIG_DEFAULT_KEEP_HOURLY_USEC (86400ULL * 1000000)
#define BS_CONFIG_DEFAULT_KEEP_DAILY_USEC (30ULL * 86400 * 1000000)
#define BS_CONFIG_DEFAULT_PRUNE_USEC (600ULL * 1000000)

/* The first problem found; line 0 when it belongs to no line, key "" when to no key. */
typedef struct BsConfigError {
        char file[PATH_MAX];
        unsigned line;
        char key[64];
        char message[512];
} BsConfigError;

/* [server]; strings are owned (NULL: not set). */
typedef struct BsServerConfig {
        uint16_t port;
        char *listen;
        char *storage;
        bool require_key;
        uint64_t keep_versions_usec; /* 0: keep versions forever */
        uint64_t keep_all_usec;      /* every version younger than this */
        uint64_t keep_hourly_usec;   /* then one per hour until this age */
        uint64_t keep_daily_usec;    /* then one per day, then one per week */
        uint64_t history_max_bytes;  /* 0: no cap on the space of kept versions */
        uint64_t prune_interval_usec; /* 1 s .. 10 min */
        uint64_t idle_timeout_usec;  /* 0: never */
        unsigned max_connections;
        bool tls;                    /* default yes */
        char *tls_cert, *tls_key;    /* an administrator's; NULL: the server's own */
        /* The cluster backend (both set) instead of the embedded one (neither). */
        char *metadata;              /* libpq connection string, without a password */
        char *content_bucket;        /* from content = s3://BUCKET */
        char *s3_endpoint;           /* http(s)://host[:port] */
        char *s3_region;             /* NULL: us-east-1 */
        bool s3_virtual_host;        /* s3-addressing = virtual; default path */
        char *s3_credentials;        /* file with the access key and the secret; NULL: systemd's credential "s3" */
        char *s3_ca_file;
} BsServerConfig;

/* [agent:NAME]; strings are owned (NULL: not set). */
typedef struct BsAgentConfig {
        char *name;
        char *server;
        uint16_t port;
        char *path; /* with ~ expanded */
        char *id;   /* token, validated; NULL: register a new account */
        uint64_t poll_usec;
        uint64_t verify_usec; /* 0: no verification pass */
        char *device_name;
        bool tls;                 /* default yes */
        char *server_fingerprint; /* "SHA256:..." as validated; NULL: pinned at first contact */
        char *ca_file;            /* "" for the system store; NULL: no CA verification */
        /* What this computer does not sync: ignore = lines (those of the
         * user file replace the system file's) and the shipped defaults. */
        char **ignore;
        size_t n_ignore;
        bool default_ignores; /* default yes */
        BsDeleteLimit max_delete; /* default 100 files and 50 % */
} BsAgentConfig;

/** Fill cfg with the built-in defaults (port 7373, listen ::, require-key yes, ...). */
void bs_server_config_init(BsServerConfig *cfg);
/** Free the strings of cfg; it may be initialized again afterwards. */
void bs_server_config_done(BsServerConfig *cfg);
/** Fill cfg with the built-in defaults (poll-interval 5s, verify-interval 1h) and nothing else. */
void bs_agent_config_init(BsAgentConfig *cfg);
/** Free the strings of cfg; it may be initialized again afterwards. */
void bs_agent_config_done(BsAgentConfig *cfg);

/**
 * Read the [server] section of file over the values already in cfg
 * (other sections but [agent:*] are errors; [agent:*] are skipped).
 * A missing file is fine unless must_exist. On error cfg may be partly
 * overwritten, so load into a copy when the old values must survive.
 * Returns 0, or a negative errno with err filled in.
 */
int bs_config_load_server(const char *file, bool must_exist, BsServerConfig *cfg, BsConfigError *err);

/**
 * Read [agent:instance] from system_file, then from user_file (NULL: none),
 * whose keys override the system file's key by key. Only [agent:*]
 * sections are looked at; every one of them must hold known keys only,
 * the values of [agent:instance] must be valid, and server, port and path
 * are required. A missing file is fine unless system_must_exist (only the
 * system file can be named by the user). Returns 0, -ESRCH when neither
 * file has [agent:instance], another negative errno on other errors; err
 * is filled in on every error.
 */
int bs_config_load_agent(const char *system_file, bool system_must_exist, const char *user_file,
                         const char *instance, BsAgentConfig *cfg, BsConfigError *err);

/** The user's file: $XDG_CONFIG_HOME/backupsync.ini, else ~/.config/backupsync.ini. -ENOENT without either. */
int bs_config_user_file(char **ret);

/**
 * Add the NAMEs of the [agent:NAME] sections of file (valid names only,
 * each once) to *names / *n (strings and array owned by the caller). A
 * file that cannot be read adds nothing. Returns 0 or -ENOMEM.
 */
int bs_config_agent_instances(const char *file, char ***names, size_t *n);

/** True when name may follow "agent:" in a section name: [A-Za-z0-9_.@-]+. */
bool bs_config_instance_valid(const char *name);

/**
 * Where an agent keeps its state when not told: for a by-hand agent of DIR
 * $XDG_STATE_HOME/backupsync/<DIR escaped> (~/.local/state without
 * XDG_STATE_HOME), for an instance a unit's $STATE_DIRECTORY, else
 * .../backupsync/NAME. NULL when neither variable nor HOME says where.
 */
char *bs_state_dir_for_dir(const char *dir);
/** $XDG_STATE_HOME/backupsync, else ~/.local/state/backupsync; NULL without either variable. */
char *bs_state_base(void);
char *bs_state_dir_for_instance(const char *name);

/** "FILE:LINE: KEY: MESSAGE", leaving out what err does not have. */
void bs_config_error_format(const BsConfigError *err, char *buf, size_t size);
