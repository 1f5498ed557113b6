/* main.c - backupsync: the user's command for the state of the agents
 *
 * One subcommand per file (cli-*.c); main() parses the command line and
 * turns the outcome into an exit status from sysexits.h.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "bs-config.h"
#include "bs-macro.h"
#include "cli-status.h"

static void usage(FILE *f) {
        fprintf(f, "usage: backupsync status [--json] [--instance NAME | --state-dir DIR]...\n"
                   "\n"
                   "  status               how each agent of this user stands: in sync, syncing,\n"
                   "                       offline, paused or in error, last sync, pending changes\n"
                   "  --instance NAME      the agent of backupsync-agent@NAME (or --instance NAME)\n"
                   "  --state-dir DIR      the agent run by hand with --state-dir DIR\n"
                   "  --json               one JSON array of objects instead of text\n"
                   "\n"
                   "Without --instance or --state-dir: every agent of this user.\n"
                   "See backupsync(1).\n");
}

int main(int argc, char **argv) {
        enum { ARG_JSON = 0x100, ARG_INSTANCE, ARG_STATE_DIR, ARG_HELP, ARG_VERSION };
        static const struct option options[] = {
                { "json", no_argument, NULL, ARG_JSON },
                { "instance", required_argument, NULL, ARG_INSTANCE },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "help", no_argument, NULL, ARG_HELP },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        char **dirs = calloc((size_t) argc, sizeof(*dirs));
        size_t n = 0;
        bool json = false;
        int c, ret = EX_OK;

        if (!dirs)
                return EX_OSERR;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                switch (c) {
                case ARG_JSON:
                        json = true;
                        break;
                case ARG_INSTANCE:
                        if (!bs_config_instance_valid(optarg)) {
                                fprintf(stderr, "backupsync: --instance: '%s' is not an instance name "
                                                "(A-Z, a-z, 0-9, '_', '.', '@', '-')\n", optarg);
                                ret = EX_USAGE;
                                goto out;
                        }
                        if (!(dirs[n++] = bs_state_dir_for_instance(optarg))) {
                                fprintf(stderr, "backupsync: neither XDG_STATE_HOME nor HOME is set; use --state-dir\n");
                                ret = EX_USAGE;
                                goto out;
                        }
                        break;
                case ARG_STATE_DIR:
                        if (!(dirs[n++] = strdup(optarg))) {
                                ret = EX_OSERR;
                                goto out;
                        }
                        break;
                case ARG_HELP:
                        usage(stdout);
                        goto out;
                case ARG_VERSION:
                        puts("backupsync " BS_VERSION);
                        goto out;
                default:
                        ret = EX_USAGE;
                        goto out;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                ret = EX_USAGE;
        } else if (strcmp(argv[optind], "status") == 0 && optind + 1 == argc)
                ret = cli_status(dirs, n, json);
        else if (strcmp(argv[optind], "status") == 0) {
                fprintf(stderr, "backupsync: status takes no arguments but options; try --help\n");
                ret = EX_USAGE;
        } else {
                fprintf(stderr, "backupsync: unknown command '%s'; try --help\n", argv[optind]);
                ret = EX_USAGE;
        }
out:
        for (size_t i = 0; i < n; i++)
                free(dirs[i]);
        free(dirs);
        return ret;
}
