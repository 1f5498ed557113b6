/* cli-history.c - `backupsync log`, `versions` and `deleted`
 *
 * Each is one HISTORY question to the server, printed as it streams in:
 * a table on a terminal or in a pipe, or one JSON array with --json.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "bs-hash.h"
#include "bs-macro.h"
#include "cli-history.h"
#include "cli-util.h"

typedef struct Printer {
        BsHistWhat what;
        bool json;
        uint64_t n;
} Printer;

const char *cli_kind_name(uint8_t kind) {
        switch (kind) {
        case BS_KIND_FILE: return "file";
        case BS_KIND_DIR: return "directory";
        case BS_KIND_SYMLINK: return "symlink";
        }
        return "unknown";
}

static const char *op_name(uint8_t op) {
        switch (op) {
        case BS_OP_PUT: return "put";
        case BS_OP_MKDIR: return "mkdir";
        case BS_OP_DELETE: return "delete";
        case BS_OP_MOVE: return "move";
        case BS_OP_SYMLINK: return "symlink";
        }
        return "unknown";
}

static const char *device_of(const BsHistRow *row) {
        static const uint8_t none[BS_DEVICE_LEN];
        if (row->device_name[0])
                return row->device_name;
        return memcmp(row->rec.device, none, BS_DEVICE_LEN) ? "?" : "server";
}

static void print_json(const Printer *p, const BsHistRow *row) {
        const BsRecord *r = &row->rec;
        char sha[2 * BS_SHA_LEN + 1];
        bs_hex(r->sha, BS_SHA_LEN, sha);
        fputs(p->n ? ",\n {" : "[{", stdout);
        if (p->what == BS_HIST_LOG) {
                printf("\"seq\": %" PRIu64, r->seq);
                cli_json_time("time", (time_t) row->time);
                fputs(", \"op\": ", stdout);
                cli_json_string(op_name(r->op));
        } else {
                printf("\"version\": %" PRIu64, r->seq);
                cli_json_time("time", (time_t) row->time);
                cli_json_time(p->what == BS_HIST_DELETED ? "deleted" : "replaced", (time_t) row->until_time);
                if (p->what == BS_HIST_VERSIONS)
                        printf(", \"current\": %s", row->until ? "false" : "true");
        }
        fputs(", \"device\": ", stdout);
        cli_json_string(device_of(row));
        fputs(", \"kind\": ", stdout);
        cli_json_string(cli_kind_name(r->kind));
        fputs(", \"path\": ", stdout);
        cli_json_string(r->path);
        if (r->path2_len) {
                fputs(r->kind == BS_KIND_SYMLINK && r->op != BS_OP_MOVE ? ", \"target\": " : ", \"to\": ", stdout);
                cli_json_string(r->path2);
        }
        printf(", \"size\": %" PRIu64 ", \"mode\": \"%04o\"", r->size, (unsigned) r->mode & 07777);
        if (r->kind == BS_KIND_FILE)
                printf(", \"sha256\": \"%s\"", sha);
        putchar('}');
}

static void print_text(const Printer *p, const BsHistRow *row) {
        const BsRecord *r = &row->rec;
        char t1[32], t2[32], sha[2 * BS_SHA_LEN + 1];
        cli_format_time((time_t) row->time, t1, sizeof(t1));
        cli_format_time((time_t) row->until_time, t2, sizeof(t2));
        bs_hex(r->sha, BS_SHA_LEN, sha);
        switch (p->what) {
        case BS_HIST_LOG:
                if (p->n == 0)
                        printf("%-8s %-19s  %-16s %-8s %s\n", "SEQ", "TIME", "COMPUTER", "CHANGE", "PATH");
                printf("%-8" PRIu64 " %-19s  %-16s %-8s %s", r->seq, t1, device_of(row), op_name(r->op), r->path);
                if (r->op == BS_OP_MOVE)
                        printf(" -> %s", r->path2);
                else if (r->op == BS_OP_SYMLINK)
                        printf(" -> %s", r->path2);
                putchar('\n');
                break;
        case BS_HIST_VERSIONS:
                if (p->n == 0)
                        printf("%-8s %-19s  %-19s  %12s  %-16s %s\n", "VERSION", "WRITTEN", "REPLACED", "SIZE",
                               "COMPUTER", "SHA-256");
                printf("%-8" PRIu64 " %-19s  %-19s  %12" PRIu64 "  %-16s %s\n", r->seq, t1,
                       row->until ? t2 : "(current)", r->size, device_of(row),
                       r->kind == BS_KIND_FILE ? sha : cli_kind_name(r->kind));
                break;
        default:
                if (p->n == 0)
                        printf("%-19s  %-16s %12s  %s\n", "DELETED", "BY", "SIZE", "PATH");
                printf("%-19s  %-16s %12" PRIu64 "  %s%s\n", t2, device_of(row), r->size, r->path,
                       r->kind == BS_KIND_DIR ? "/" : "");
        }
}

static void print_tree_row(const Printer *p, const BsHistRow *row) {
        const BsRecord *r = &row->rec;
        char sha[2 * BS_SHA_LEN + 1], when[32];
        time_t mt = (time_t) (r->mtime_ns / 1000000000);
        if (p->json) {
                bs_hex(r->sha, BS_SHA_LEN, sha);
                printf("%s\"path\": ", p->n ? ",\n {" : "[{");
                cli_json_string(r->path);
                fputs(", \"kind\": ", stdout);
                cli_json_string(cli_kind_name(r->kind));
                printf(", \"version\": %" PRIu64 ", \"size\": %" PRIu64 ", \"mode\": \"%04o\"", r->seq, r->size,
                       (unsigned) r->mode & 07777);
                cli_json_time("mtime", mt);
                if (r->kind == BS_KIND_FILE)
                        printf(", \"sha256\": \"%s\"", sha);
                if (r->kind == BS_KIND_SYMLINK) {
                        fputs(", \"target\": ", stdout);
                        cli_json_string(r->path2);
                }
                putchar('}');
                return;
        }
        cli_format_time(mt, when, sizeof(when));
        printf("%c%04o %12" PRIu64 "  %s  %s%s%s\n", r->kind == BS_KIND_DIR ? 'd' : r->kind == BS_KIND_SYMLINK ? 'l' : '-',
               (unsigned) r->mode & 07777, r->size, when, r->path,
               r->kind == BS_KIND_DIR ? "/" : r->kind == BS_KIND_SYMLINK ? " -> " : "",
               r->kind == BS_KIND_SYMLINK ? r->path2 : "");
}

static int on_row(void *userdata, const BsHistRow *row) {
        Printer *p = userdata;
        if (p->what == BS_HIST_TREE)
                print_tree_row(p, row);
        else if (p->json)
                print_json(p, row);
        else
                print_text(p, row);
        p->n++;
        return EX_OK;
}

static int run(const CliAccount *acc, BsHistWhat what, const char *path, time_t since, uint32_t n, bool json) {
        _cleanup_(bs_conn_freep) BsConn *c = NULL;
        Printer p = { .what = what, .json = json };
        int r = cli_connect(acc, &c);
        if (r != EX_OK)
                return r;
        /* ls: since is the moment, without it now. */
        r = cli_history(c, what, path, 0, (int64_t) since, n, on_row, &p, NULL);
        if (json && (p.n || r == EX_OK))
                puts(p.n ? "]" : "[]");
        if (r != EX_OK)
                return r;
        if (p.n == 0 && what == BS_HIST_VERSIONS) {
                fprintf(stderr, "backupsync: %s: nothing is kept under this path\n", path);
                return EX_DATAERR;
        }
        if (p.n == 0 && what == BS_HIST_TREE) {
                fprintf(stderr, "backupsync: %s: nothing was there %s\n", path[0] ? path : "/",
                        since ? "at that time" : "now");
                return EX_DATAERR;
        }
        return EX_OK;
}

int cli_log(const CliAccount *acc, const char *path, time_t since, uint32_t n, bool json) {
        return run(acc, BS_HIST_LOG, path, since, n, json);
}

int cli_versions(const CliAccount *acc, const char *path, bool json) {
        return run(acc, BS_HIST_VERSIONS, path, 0, 0, json);
}

int cli_deleted(const CliAccount *acc, const char *path, bool json) {
        return run(acc, BS_HIST_DELETED, path, 0, 0, json);
}

int cli_ls(const CliAccount *acc, const char *path, time_t at, bool json) {
        return run(acc, BS_HIST_TREE, path, at, 0, json);
}
