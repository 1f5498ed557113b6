/* test-status.c - the agent's status file: written whole, read back, refused when damaged */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-status.h"

static char dir[] = "/tmp/bs-test-status-XXXXXX";
static int dfd = -1;

static void setup(void) {
        cr_assert_not_null(mkdtemp(dir));
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert_geq(dfd, 0);
}

static void teardown(void) {
        unlinkat(dfd, BS_STATUS_FILE, 0);
        close(dfd);
        rmdir(dir);
}

TestSuite(status, .init = setup, .fini = teardown);

Test(status, round_trip) {
        BsStatus s = {
                .pid = 4242, .state = BS_SYNC_OFFLINE, .updated_usec = 1796000000123456, .last_sync_usec = 17,
                .offline_since_usec = 1796000000000000, .pending = 3, .watched = 12, .uploaded = 100,
                .downloaded = 7, .conflicts = 1, .held_deletes = 150,
        }, t;
        strcpy(s.dir, "/home/u/my docs");
        strcpy(s.server, "backup.example.org");
        strcpy(s.port, "4000");
        strcpy(s.account, "AB2C");
        strcpy(s.reason, "a reason\nwith a newline");
        cr_assert_eq(bs_status_write(dfd, &s), 0);
        cr_assert_eq(faccessat(dfd, BS_STATUS_FILE ".tmp", F_OK, 0), -1, "no temporary file left");
        cr_assert_eq(bs_status_read(dfd, &t), 0);
        cr_assert_eq(t.pid, 4242);
        cr_assert_eq(t.state, BS_SYNC_OFFLINE);
        cr_assert_str_eq(t.dir, "/home/u/my docs");
        cr_assert_str_eq(t.server, "backup.example.org");
        cr_assert_str_eq(t.port, "4000");
        cr_assert_str_eq(t.account, "AB2C");
        cr_assert_str_eq(t.reason, "a reason?with a newline", "a value stays on its line");
        cr_assert_eq(t.updated_usec, 1796000000123456);
        cr_assert_eq(t.last_sync_usec, 17);
        cr_assert_eq(t.offline_since_usec, 1796000000000000);
        cr_assert_eq(t.pending, 3);
        cr_assert_eq(t.watched, 12);
        cr_assert_eq(t.uploaded, 100);
        cr_assert_eq(t.downloaded, 7);
        cr_assert_eq(t.conflicts, 1);
        cr_assert_eq(t.held_deletes, 150);
}

Test(status, state_names) {
        cr_assert_str_eq(bs_sync_state_to_string(BS_SYNC_IN_SYNC), "in sync");
        cr_assert_str_eq(bs_sync_state_to_string(BS_SYNC_STOPPED), "stopped");
        cr_assert_str_eq(bs_sync_state_to_string(BS_SYNC_HOLDING), "holding deletions");
        cr_assert_null(bs_sync_state_to_string(_BS_SYNC_MAX));
        cr_assert_null(bs_sync_state_to_string((BsSyncState) -1));
}

Test(status, missing) {
        BsStatus t;
        cr_assert_eq(bs_status_read(dfd, &t), -ENOENT);
}

struct bad {
        const char *text;
        int want;
};

static const struct bad damaged[] = {
        { "PID=12\nno equals sign\n", -EBADMSG },
        { "STATE=1\n", -EBADMSG }, /* no PID */
        { "PID=0\n", -EBADMSG },
        { "PID=-3\n", -EBADMSG },
        { "PID=99999999999\n", -EBADMSG },
        { "PID=12\nSTATE=99\n", -EBADMSG },
        { "PID=12\nPENDING=12x\n", -EBADMSG },
        { "PID=12\nPENDING=99999999999999999999999\n", -EBADMSG },
        { "PID=12\nACCOUNT=ABCDE\n", -EBADMSG }, /* longer than an ID */
        { "PID=12\nPORT=12", -EBADMSG }, /* cut short */
        { "PID=12\nNEWER_KEY=whatever\n", 0 }, /* a newer agent's key */
};

/* One table, one test: Criterion runs each test in a new process, where
 * pointers into a parameter array would not hold. */
Test(status, damaged) {
        for (size_t i = 0; i < sizeof(damaged) / sizeof(damaged[0]); i++) {
                const struct bad *b = &damaged[i];
                BsStatus t;
                int fd = openat(dfd, BS_STATUS_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                cr_assert_geq(fd, 0);
                cr_assert_eq(write(fd, b->text, strlen(b->text)), (ssize_t) strlen(b->text));
                close(fd);
                cr_expect_eq(bs_status_read(dfd, &t), b->want, "for %s", b->text);
        }
}

Test(status, over_long_line) {
        BsStatus t;
        char *text = malloc(10000);
        cr_assert_not_null(text);
        memset(text, 'x', 9999);
        memcpy(text, "PID=12\nDIR=", 11);
        text[9998] = '\n';
        text[9999] = 0;
        int fd = openat(dfd, BS_STATUS_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0);
        cr_assert_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
        free(text);
        cr_assert_eq(bs_status_read(dfd, &t), -EBADMSG);
}
