/* cli-account.h - which account a backupsync command reads, and its connection */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "bs-conn.h"
#include "bs-proto.h"
#include "bs-status.h"
#include "bs-token.h"

typedef struct CliAccount {
        char server[BS_STATUS_TEXT_MAX];
        char port[16];
        char token[BS_TOKEN_MAX + 1];
        char dir[BS_STATUS_TEXT_MAX]; /* the synced directory; "" when only the token is known */
} CliAccount;

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
