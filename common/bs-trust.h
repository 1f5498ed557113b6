/* bs-trust.h - how a client knows it talks to the right server
 *
 * In this order: a fingerprint the user gave (server-fingerprint =,
 * --server-fingerprint); else, when asked for (ca-file =), a certificate
 * chain to a CA and the server's name, checked during the handshake; else
 * the fingerprint pinned in the state directory at first contact, as SSH
 * does with host keys. Nothing secret is sent before this check passed.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "bs-tls.h"

/* The pinned fingerprint, in the agent's state directory. */
#define BS_PIN_FILE "server-fingerprint"

typedef struct BsTrust {
        bool tls;                /* false: clear text, no check at all */
        bool have_fp;            /* fp was given */
        uint8_t fp[BS_FP_LEN];
        const char *ca_file;     /* non-NULL: CA verification; "" the system store */
        int pin_dir_fd;          /* where the pin lives (a given key is kept there too); -1: nowhere */
} BsTrust;

typedef enum BsTrustOutcome {
        BS_TRUST_GIVEN,    /* the given fingerprint matched */
        BS_TRUST_CA,       /* the chain and name verified */
        BS_TRUST_PINNED,   /* the pinned fingerprint matched */
        BS_TRUST_NEW_PIN,  /* first contact: the fingerprint is now pinned */
        BS_TRUST_MISMATCH, /* not the expected key: refuse */
        BS_TRUST_UNKNOWN,  /* nothing to check against and nowhere to pin: refuse */
} BsTrustOutcome;

/** Read the pinned fingerprint. -ENOENT without one, -EBADMSG for a damaged file. */
int bs_pin_read(int dir_fd, uint8_t fp[BS_FP_LEN]);
/** Pin fp (mode 0600, written whole or not at all). */
int bs_pin_write(int dir_fd, const uint8_t fp[BS_FP_LEN]);

/**
 * Decide about the key a server presented. expected receives the
 * fingerprint it was compared with (for the log of a mismatch). Returns
 * 0 with *outcome set, or a negative errno when the pin could not be read
 * or written.
 */
int bs_trust_check(const BsTrust *t, const uint8_t presented[BS_FP_LEN], uint8_t expected[BS_FP_LEN],
                   BsTrustOutcome *outcome);
