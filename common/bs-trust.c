/* bs-trust.c - checking a server's key against what the client knows */
#include <errno.h>
#include <string.h>

#include "bs-status.h"
#include "bs-trust.h"

int bs_pin_read(int dir_fd, uint8_t fp[BS_FP_LEN]) {
        char line[BS_FP_TEXT_MAX + 1];
        int r = bs_line_file_read(dir_fd, BS_PIN_FILE, line, sizeof(line));
        if (r < 0)
                return r;
        return bs_fp_parse(line, fp) < 0 ? -EBADMSG : 0;
}

int bs_pin_write(int dir_fd, const uint8_t fp[BS_FP_LEN]) {
        char text[BS_FP_TEXT_MAX];
        bs_fp_format(fp, text);
        return bs_line_file_write(dir_fd, BS_PIN_FILE, text);
}

int bs_trust_check(const BsTrust *t, const uint8_t presented[BS_FP_LEN], uint8_t expected[BS_FP_LEN],
                   BsTrustOutcome *outcome) {
        int r;

        memset(expected, 0, BS_FP_LEN);
        if (t->have_fp) {
                memcpy(expected, t->fp, BS_FP_LEN);
                if (memcmp(t->fp, presented, BS_FP_LEN) != 0) {
                        *outcome = BS_TRUST_MISMATCH;
                        return 0;
                }
                /* Kept as the pin too, so that the backupsync command, which
                 * reads the agent's state, checks the same key. */
                *outcome = BS_TRUST_GIVEN;
                return t->pin_dir_fd >= 0 ? bs_pin_write(t->pin_dir_fd, presented) : 0;
        }
        if (t->ca_file) {
                /* The handshake verified the chain and the name, or failed. */
                *outcome = BS_TRUST_CA;
                return 0;
        }
        if (t->pin_dir_fd < 0) {
                *outcome = BS_TRUST_UNKNOWN;
                return 0;
        }
        r = bs_pin_read(t->pin_dir_fd, expected);
        if (r == 0) {
                *outcome = memcmp(expected, presented, BS_FP_LEN) == 0 ? BS_TRUST_PINNED : BS_TRUST_MISMATCH;
                return 0;
        }
        if (r != -ENOENT)
                return r;
        r = bs_pin_write(t->pin_dir_fd, presented);
        if (r < 0)
                return r;
        memcpy(expected, presented, BS_FP_LEN);
        *outcome = BS_TRUST_NEW_PIN;
        return 0;
}
