/* cli-account.h - which account a backupsync command reads, and its connection */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bs-conn.h"
#include "bs-proto.h"
#include "bs-status.h"
#include "bs-tls.h"
#include "bs-token.h"

typedef struct CliAccount {
        char server[BS_STATUS_TEXT_MAX];
        char port[16];
        char token[BS_TOKEN_MAX + 1];
        char dir[BS_STATUS_TEXT_MAX]; /* the synced directory; "" when only the token is known */
        /* How the server is checked (see bs-trust.h): as the agent does. */
        bool tls;
        bool have_fp;
        uint8_t fp[BS_FP_LEN];
        bool ca;
        char ca_file[PATH_MAX];  /* "" with ca: the system store */
        char pin_dir[PATH_MAX];  /* the agent's state directory; "": none */
} CliAccount;

/* What the command line says about checking the server; overrides the rest. */
typedef struct CliTrustOptions {
        const char *fingerprint; /* --server-fingerprint, validated */
        const char *ca_file;     /* --ca-file; "" for system */
        int tls;                 /* --tls: -1 not given, 0 no, 1 yes */
} CliTrustOptions;

/** The state directories under base that hold a status file, sorted; free each and the array. */
void cli_find_agents(const char *base, char ***ret, size_t *ret_n);

/**
 * Choose the account: the agent of state_dir (from its status and token
 * files), else server/port/token given on the command line (token may
 * come from BACKUPSYNC_TOKEN), else the one agent of this user. Prints
 * what is wrong and returns an exit status (sysexits.h).
 */
int cli_account_resolve(const char *state_dir, const char *server, const char *port, const char *token,
                        CliAccount *ret);

/**
 * The account of [agent:instance] in system_file and the user's file:
 * server, port, path and the token in id (which an agent that registered
 * the account has only in its state). Prints what is wrong and returns
 * an exit status.
 */
int cli_account_from_config(const char *system_file, const char *instance, CliAccount *ret);

/**
 * Settle how acc's server is checked: [agent:instance] of system_file and
 * the user's file when instance is set (tls, server-fingerprint, ca-file),
 * then what o says.
 */
void cli_account_trust(CliAccount *acc, const char *system_file, const char *instance, const CliTrustOptions *o);

/** Connect and log in as a reader; prints what is wrong and returns an exit status. */
int cli_connect(const CliAccount *acc, BsConn **ret);

typedef int (*cli_row_fn)(void *userdata, const BsHistRow *row);

/**
 * Ask a HISTORY question and hand each row to fn (which returns 0, or an
 * exit status to stop). *ret_seq receives the sequence the answer is as
 * of. Prints what is wrong and returns an exit status.
 */
int cli_history(BsConn *c, BsHistWhat what, const char *path, uint64_t seq, int64_t time, uint32_t limit,
                cli_row_fn fn, void *userdata, uint64_t *ret_seq);

/** An exit status for a protocol error code from the server. */
int cli_exit_for_error(uint16_t code);
