/* fuzz-config.c - libFuzzer target for backupsync.ini parsing (common/bs-config.c)
 *
 * bs-config reads files by name only, so the input is written to an
 * unlinked temporary file that is opened again through /proc/self/fd/N.
 * Each input is loaded as the server configuration, as [agent:docs] from
 * the system file alone, and from the system file plus the same file as
 * the user's file (keys override keys). Errors are fine; a crash, a leak
 * or a successful load that breaks the documented guarantees is not.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-config.h"
#include "bs-token.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fd = -1;
static char path[64];

#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        abort();                                                        \
                }                                                                       \
        } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        const char *tmp = getenv("TMPDIR");
        char templ[4096];

        snprintf(templ, sizeof(templ), "%s/fuzz-config.XXXXXX", tmp && tmp[0] == '/' ? tmp : "/tmp");
        fd = mkstemp(templ);
        if (fd < 0) {
                perror("fuzz-config: mkstemp");
                abort();
        }
        unlink(templ);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        /* '~' in path= expands from $HOME: make that deterministic. */
        setenv("HOME", "/home/fuzz", 1);
        unsetenv("XDG_CONFIG_HOME");
        return 0;
}

static void check_error(int r, const BsConfigError *err) {
        char buf[PATH_MAX + 1024];

        CHECK(r < 0);
        CHECK(memchr(err->file, 0, sizeof(err->file)) && memchr(err->key, 0, sizeof(err->key)) &&
              memchr(err->message, 0, sizeof(err->message)));
        CHECK(err->message[0]);
        bs_config_error_format(err, buf, sizeof(buf));
}

static void load_agent(const char *user_file) {
        BsAgentConfig agent;
        BsConfigError err;

        memset(&err, 0, sizeof(err));
        bs_agent_config_init(&agent);
        int r = bs_config_load_agent(path, true, user_file, "docs", &agent, &err);
        if (r == 0) {
                CHECK(agent.name && strcmp(agent.name, "docs") == 0);
                CHECK(agent.server && agent.server[0]);
                CHECK(agent.port != 0);
                CHECK(agent.path && agent.path[0] == '/');
                if (agent.id) {
                        BsToken t;
                        CHECK(bs_token_parse(agent.id, strlen(agent.id), &t) == 0);
                }
                CHECK(agent.poll_usec >= BS_CONFIG_MIN_POLL_USEC);
        } else
                check_error(r, &err);
        bs_agent_config_done(&agent);
        bs_agent_config_done(&agent); /* done twice must be harmless */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BsServerConfig server;
        BsConfigError err;

        CHECK(ftruncate(fd, 0) == 0);
        CHECK(pwrite(fd, data, size, 0) == (ssize_t) size);

        memset(&err, 0, sizeof(err));
        bs_server_config_init(&server);
        int r = bs_config_load_server(path, true, &server, &err);
        if (r == 0) {
                CHECK(server.max_connections >= 1 && server.max_connections <= BS_CONFIG_MAX_CONNECTIONS);
                CHECK(server.port != 0);
                CHECK(!server.storage || server.storage[0] == '/');
        } else
                check_error(r, &err);
        bs_server_config_done(&server);

        load_agent(NULL);
        load_agent(path);
        return 0;
}
