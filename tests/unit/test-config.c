/* test-config.c - unit tests for common/bs-config.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bs-config.h"

static char dir[] = "/tmp/bs-test-config-XXXXXX";
static char sysfile[PATH_MAX], userfile[PATH_MAX];

static void setup(void) {
        cr_assert_not_null(mkdtemp(dir));
        snprintf(sysfile, sizeof(sysfile), "%s/system.ini", dir);
        snprintf(userfile, sizeof(userfile), "%s/user.ini", dir);
        setenv("HOME", "/home/tester", 1);
}

static void teardown(void) {
        unlink(sysfile);
        unlink(userfile);
        rmdir(dir);
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");
        cr_assert_not_null(f);
        fputs(text, f);
        fclose(f);
}

static const char *formatted(const BsConfigError *e) {
        static char buf[2048];
        bs_config_error_format(e, buf, sizeof(buf));
        return buf;
}

/* Load text as a server config; returns the result, cfg is left filled. */
static int server_load(const char *text, BsServerConfig *cfg, BsConfigError *err) {
        write_file(sysfile, text);
        bs_server_config_init(cfg);
        return bs_config_load_server(sysfile, true, cfg, err);
}

static int agent_load(const char *sys, const char *user, const char *name, BsAgentConfig *cfg, BsConfigError *err) {
        unlink(sysfile);
        unlink(userfile);
        if (sys)
                write_file(sysfile, sys);
        if (user)
                write_file(userfile, user);
        bs_agent_config_init(cfg);
        return bs_config_load_agent(sysfile, false, userfile, name, cfg, err);
}

TestSuite(config, .init = setup, .fini = teardown);

Test(config, server_defaults) {
        BsServerConfig c;
        BsConfigError e = {};
        cr_assert_eq(server_load("; nothing\n", &c, &e), 0);
        cr_expect_eq(c.port, 7373);
        cr_expect_null(c.listen);
        cr_expect_null(c.storage);
        cr_expect(c.require_key);
        cr_expect_eq(c.keep_versions_usec, 365ULL * 86400 * 1000000);
        cr_expect_eq(c.keep_all_usec, 3600ULL * 1000000);
        cr_expect_eq(c.keep_hourly_usec, 86400ULL * 1000000);
        cr_expect_eq(c.keep_daily_usec, 30ULL * 86400 * 1000000);
        cr_expect_eq(c.history_max_bytes, 0);
        cr_expect_eq(c.idle_timeout_usec, 120000000ULL);
        cr_expect_eq(c.max_connections, 1024);
        cr_expect(c.tls, "TLS is on unless switched off");
        cr_expect_null(c.tls_cert, "the server's own key");
        cr_expect_null(c.tls_key);
        bs_server_config_done(&c);

        /* A missing file is fine unless it must exist. */
        unlink(sysfile);
        bs_server_config_init(&c);
        cr_expect_eq(bs_config_load_server(sysfile, false, &c, &e), 0);
        cr_expect_eq(bs_config_load_server(sysfile, true, &c, &e), -ENOENT);
        cr_expect_str_eq(e.file, sysfile);
        cr_expect(strstr(e.message, "cannot read") != NULL, "%s", e.message);
}

Test(config, server_all_keys) {
        BsServerConfig c;
        BsConfigError e = {};
        cr_assert_eq(server_load("[server]\n"
                                 "port = 8000\n"
                                 "listen = 127.0.0.1\n"
                                 "storage = /srv/bs\n"
                                 "require-key = no\n"
                                 "keep-versions = 30d\n"
                                 "keep-all = 2h\n"
                                 "keep-hourly = 2d\n"
                                 "keep-daily = 14d\n"
                                 "history-max-size = 10G\n"
                                 "prune-interval = 30s\n"
                                 "idle-timeout = 2m\n"
                                 "max-connections = 10\n"
                                 "tls = no\n"
                                 "tls-cert = /etc/letsencrypt/live/b/fullchain.pem\n"
                                 "tls-key = /etc/letsencrypt/live/b/privkey.pem\n"
                                 "[agent:docs]\n"
                                 "anything = is skipped by the server\n"
                                 "[server]\n"
                                 "listen = ::1 ; the later duplicate section wins\n",
                                 &c, &e),
                     0, "%s", formatted(&e));
        cr_expect_eq(c.port, 8000);
        cr_expect_str_eq(c.listen, "::1");
        cr_expect_str_eq(c.storage, "/srv/bs");
        cr_expect_not(c.require_key);
        cr_expect_eq(c.keep_versions_usec, 30ULL * 86400 * 1000000);
        cr_expect_eq(c.keep_all_usec, 2ULL * 3600 * 1000000);
        cr_expect_eq(c.keep_hourly_usec, 2ULL * 86400 * 1000000);
        cr_expect_eq(c.keep_daily_usec, 14ULL * 86400 * 1000000);
        cr_expect_eq(c.history_max_bytes, 10ULL << 30);
        cr_expect_eq(c.prune_interval_usec, 30ULL * 1000000);
        cr_expect_eq(c.idle_timeout_usec, 120ULL * 1000000);
        cr_expect_eq(c.max_connections, 10);
        cr_expect_not(c.tls);
        cr_expect_str_eq(c.tls_cert, "/etc/letsencrypt/live/b/fullchain.pem");
        cr_expect_str_eq(c.tls_key, "/etc/letsencrypt/live/b/privkey.pem");
        bs_server_config_done(&c);

        cr_assert_eq(server_load("[server]\nidle-timeout = 250ms\nmax-connections = 1000000\nrequire-key = yes\n"
                                 "port = 65535\n",
                                 &c, &e),
                     0);
        cr_expect_eq(c.idle_timeout_usec, 250000);
        cr_expect_eq(c.max_connections, 1000000);
        cr_expect_eq(c.port, 65535);
        bs_server_config_done(&c);
}

Test(config, server_bad_values) {
        static const struct {
                const char *line, *key, *needle;
        } bad[] = {
                { "port = 0", "port", "'0' is not a TCP port" },
                { "port = 65536", "port", "not a TCP port" },
                { "port = http", "port", "not a TCP port" },
                { "listen = localhost", "listen", "not an IPv4 or IPv6 address" },
                { "listen = 1.2.3", "listen", "not an IPv4 or IPv6 address" },
                { "storage = relative/dir", "storage", "not an absolute path" },
                { "storage =", "storage", "not an absolute path" },
                { "require-key = maybe", "require-key", "not a boolean" },
                { "keep-versions = 30 days", "keep-versions", "'30 days' is not a duration" },
                { "keep-hourly = 1 day", "keep-hourly", "'1 day' is not a duration" },
                { "history-max-size = 10 GB", "history-max-size", "'10 GB' is not a size" },
                { "prune-interval = 1h", "prune-interval", "'1h' is not between 1s and 10m" },
                { "idle-timeout = 5x", "idle-timeout", "'5x' is not a duration" },
                { "idle-timeout = -1", "idle-timeout", "not a duration" },
                { "max-connections = 0", "max-connections", "not a number from 1 to 1000000" },
                { "max-connections = 1000001", "max-connections", "not a number" },
                { "max-connections = -5", "max-connections", "not a number" },
                { "max-connections = 10k", "max-connections", "not a number" },
                { "tls = maybe", "tls", "not a boolean" },
                { "tls-cert = cert.pem", "tls-cert", "not an absolute path" },
                { "tls-key = ~/key.pem", "tls-key", "not an absolute path" },
                { "metadata =", "metadata", "an empty connection string" },
                { "metadata = host=db password=secret", "metadata", "a password does not belong in this file" },
                { "metadata = postgresql://bs:secret@db/backup", "metadata", "passfile" },
                { "metadata = postgres://db/backup?password=x", "metadata", "passfile" },
                { "content = /srv/backup", "content", "is not s3://BUCKET" },
                { "content = s3://", "content", "is not s3://BUCKET" },
                { "content = s3://Backup", "content", "is not s3://BUCKET" },
                { "content = s3://-bucket", "content", "is not s3://BUCKET" },
                { "content = s3://b/key", "content", "is not s3://BUCKET" },
                { "s3-endpoint = 127.0.0.1:7480", "s3-endpoint", "not an http:// or https:// URL" },
                { "s3-region = US East", "s3-region", "not a region name" },
                { "s3-addressing = dns", "s3-addressing", "not path or virtual" },
                { "s3-credentials = s3.key", "s3-credentials", "not an absolute path" },
                { "s3-ca-file = ca.pem", "s3-ca-file", "not an absolute path" },
                { "bogus = 1", "bogus", "unknown key in [server]" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                BsServerConfig c;
                BsConfigError e = {};
                char text[256], want[PATH_MAX + 64];
                snprintf(text, sizeof(text), "; comment\n[server]\n%s\n", bad[i].line);
                cr_expect_eq(server_load(text, &c, &e), -EINVAL, "%s", bad[i].line);
                cr_expect_str_eq(e.file, sysfile);
                cr_expect_eq(e.line, 3, "%s: line %u", bad[i].line, e.line);
                cr_expect_str_eq(e.key, bad[i].key);
                cr_expect(strstr(e.message, bad[i].needle) != NULL, "%s: %s", bad[i].line, e.message);
                snprintf(want, sizeof(want), "%s:3: %s: ", sysfile, bad[i].key);
                cr_expect(strncmp(formatted(&e), want, strlen(want)) == 0, "%s", formatted(&e));
                bs_server_config_done(&c);
        }
}

Test(config, server_tls_cert_and_key_together) {
        BsServerConfig c;
        BsConfigError e = {};
        cr_expect_eq(server_load("[server]\ntls-cert = /c.pem\n", &c, &e), -EINVAL);
        cr_expect_str_eq(e.key, "tls-key");
        cr_expect(strstr(e.message, "go together") != NULL, "%s", e.message);
        bs_server_config_done(&c);
        cr_expect_eq(server_load("[server]\ntls-key = /k.pem\n", &c, &e), -EINVAL);
        cr_expect_str_eq(e.key, "tls-cert");
        bs_server_config_done(&c);
}

/* The cluster backend: every key read, and the ones that go together. */
Test(config, server_cluster_keys) {
        BsServerConfig c;
        BsConfigError e = {};
        cr_assert_eq(server_load("[server]\n"
                                 "metadata = postgresql://bs@db1.example.org/backup?passfile=/etc/bs/pgpass\n"
                                 "content = s3://backup.example-1\n"
                                 "s3-endpoint = https://s3.example.org:9000\n"
                                 "s3-region = eu-west-1\n"
                                 "s3-addressing = virtual\n"
                                 "s3-credentials = /etc/backupsync/s3.key\n"
                                 "s3-ca-file = /etc/ssl/ca.pem\n", &c, &e), 0, "%s", e.message);
        cr_expect_str_eq(c.metadata, "postgresql://bs@db1.example.org/backup?passfile=/etc/bs/pgpass");
        cr_expect_str_eq(c.content_bucket, "backup.example-1");
        cr_expect_str_eq(c.s3_endpoint, "https://s3.example.org:9000");
        cr_expect_str_eq(c.s3_region, "eu-west-1");
        cr_expect(c.s3_virtual_host);
        cr_expect_str_eq(c.s3_credentials, "/etc/backupsync/s3.key");
        cr_expect_str_eq(c.s3_ca_file, "/etc/ssl/ca.pem");
        bs_server_config_done(&c);

        static const struct {
                const char *text, *key, *needle;
        } half[] = {
                { "[server]\nmetadata = host=10.0.0.5 dbname=backup\n", "content", "go together" },
                { "[server]\ncontent = s3://backup\ns3-endpoint = http://10.0.0.6:7480\n", "metadata", "go together" },
                { "[server]\nmetadata = host=10.0.0.5\ncontent = s3://backup\n", "s3-endpoint", "needs s3-endpoint" },
        };
        for (size_t i = 0; i < sizeof(half) / sizeof(half[0]); i++) {
                cr_expect_eq(server_load(half[i].text, &c, &e), -EINVAL, "%s", half[i].text);
                cr_expect_str_eq(e.key, half[i].key);
                cr_expect(strstr(e.message, half[i].needle) != NULL, "%s", e.message);
                bs_server_config_done(&c);
        }
}

Test(config, server_structure_errors) {
        BsServerConfig c;
        BsConfigError e = {};
        char want[PATH_MAX + 64];

        /* An unknown section is an error even when it is empty. */
        cr_expect_eq(server_load("[server]\nport = 1\n[servers]\n", &c, &e), -EINVAL);
        cr_expect_eq(e.line, 3);
        cr_expect_str_eq(e.key, "");
        cr_expect(strstr(e.message, "unknown section [servers]") != NULL, "%s", e.message);
        snprintf(want, sizeof(want), "%s:3: unknown section [servers]", sysfile);
        cr_expect(strncmp(formatted(&e), want, strlen(want)) == 0, "%s", formatted(&e));
        bs_server_config_done(&c);

        cr_expect_eq(server_load("[agent:]\n", &c, &e), -EINVAL);
        cr_expect(strstr(e.message, "invalid section [agent:]") != NULL, "%s", e.message);
        cr_expect_eq(server_load("[agent:a b]\nserver = x\n", &c, &e), -EINVAL);
        cr_expect_eq(e.line, 1);
        cr_expect_eq(server_load("port = 1\n", &c, &e), -EINVAL);
        cr_expect(strstr(e.message, "outside of a section") != NULL, "%s", e.message);

        /* Syntax errors name their line, also before a later value error. */
        cr_expect_eq(server_load("[server]\nport 7373\nidle-timeout = 5x\n", &c, &e), -EINVAL);
        cr_expect_eq(e.line, 2);
        cr_expect(strstr(e.message, "syntax error") != NULL, "%s", e.message);
        cr_expect_eq(server_load("[server]\nport = 7373\n[server\n", &c, &e), -EINVAL);
        cr_expect_eq(e.line, 3);
        cr_expect(strstr(e.message, "syntax error") != NULL, "%s", e.message);

        /* The first problem is reported, not a later one. */
        cr_expect_eq(server_load("[server]\nport = 0\nlisten = x\n", &c, &e), -EINVAL);
        cr_expect_eq(e.line, 2);
        cr_expect_str_eq(e.key, "port");

        /* Lines inih cannot hold are refused, not split. */
        char text[600];
        snprintf(text, sizeof(text), "[server]\nstorage = /%0400d\n", 0);
        cr_expect_eq(server_load(text, &c, &e), -EINVAL);
        cr_expect_eq(e.line, 2);
        cr_expect(strstr(e.message, "line longer than") != NULL, "%s", e.message);
        bs_server_config_done(&c);
}

static const char agents[] = "[server]\n"
                             "port = 7373\n"
                             "[agent:photos]\n"
                             "server = photos.example.org\n"
                             "port = 9000\n"
                             "path = /data/photos\n"
                             "[agent:docs]\n"
                             "server = backup.example.org\n"
                             "port = 7373\n"
                             "path = ~/Documents\n"
                             "poll-interval = 250ms\n"
                             "verify-interval = 0\n"
                             "device-name = laptop\n"
                             "server-fingerprint = sha256:0ED8DADBB51C7B4A6E124636BA2D3E185EBDF698025EB62D2491AE26EA700FBB\n"
                             "ca-file = ~/ca.pem\n"
                             "tls = yes\n"
                             "id = ABCD\n";

Test(config, agent_lookup) {
        BsAgentConfig c;
        BsConfigError e = {};

        cr_assert_eq(agent_load(agents, NULL, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_expect_str_eq(c.name, "docs");
        cr_expect_str_eq(c.server, "backup.example.org");
        cr_expect_eq(c.port, 7373);
        cr_expect_str_eq(c.path, "/home/tester/Documents");
        cr_expect_eq(c.poll_usec, 250000);
        cr_expect_eq(c.verify_usec, 0, "verify-interval = 0: no verification pass");
        cr_expect_str_eq(c.device_name, "laptop");
        cr_expect_str_eq(c.id, "ABCD");
        cr_expect(c.tls);
        cr_expect_str_eq(c.server_fingerprint,
                         "SHA256:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb", "one text form");
        cr_expect_str_eq(c.ca_file, "/home/tester/ca.pem");
        bs_agent_config_done(&c);

        cr_assert_eq(agent_load(agents, NULL, "photos", &c, &e), 0, "%s", formatted(&e));
        cr_expect_str_eq(c.server, "photos.example.org");
        cr_expect_eq(c.port, 9000);
        cr_expect_str_eq(c.path, "/data/photos");
        cr_expect_eq(c.poll_usec, 5000000, "default poll-interval");
        cr_expect_eq(c.verify_usec, 3600000000ULL, "default verify-interval");
        cr_expect_null(c.id);
        cr_expect_null(c.device_name);
        cr_expect(c.tls, "TLS by default");
        cr_expect_null(c.server_fingerprint, "pinned at first contact");
        cr_expect_null(c.ca_file);
        bs_agent_config_done(&c);

        cr_assert_eq(agent_load("[agent:x]\nserver = h\nport = 1\npath = /p\nca-file = system\ntls = no\n", NULL,
                                "x", &c, &e),
                     0, "%s", formatted(&e));
        cr_expect_str_eq(c.ca_file, "", "the system store");
        cr_expect_not(c.tls);
        bs_agent_config_done(&c);

        /* Addresses, IPv6 included, and a bare ~. */
        cr_assert_eq(agent_load("[agent:x]\nserver = a.example.org, 10.0.0.2 ,::1\nport = 1\npath = /p\n", NULL, "x",
                                &c, &e), 0, "%s", e.message);
        cr_expect_str_eq(c.server, "a.example.org, 10.0.0.2 ,::1", "a list of servers is kept as written");
        bs_agent_config_done(&c);
        cr_assert_eq(agent_load("[agent:x]\nserver = ::1\nport = 1\npath = ~\n", NULL, "x", &c, &e), 0,
                     "%s", formatted(&e));
        cr_expect_str_eq(c.server, "::1");
        cr_expect_str_eq(c.path, "/home/tester");
        bs_agent_config_done(&c);
        cr_assert_eq(agent_load("[agent:a.b@c_d-e]\nserver = 10.0.0.1\nport = 1\npath = /x\nid = abcd-"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567\n",
                                NULL, "a.b@c_d-e", &c, &e),
                     0, "%s", formatted(&e));
        cr_expect_str_eq(c.id, "abcd-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
        bs_agent_config_done(&c);
}

Test(config, agent_user_overrides) {
        BsAgentConfig c;
        BsConfigError e = {};

        /* Key by key: the user file changes port and adds id, the rest stays. */
        cr_assert_eq(agent_load(agents, "[agent:docs]\nport = 7000\nid = WXYZ\n", "docs", &c, &e), 0,
                     "%s", formatted(&e));
        cr_expect_str_eq(c.server, "backup.example.org");
        cr_expect_eq(c.port, 7000);
        cr_expect_str_eq(c.id, "WXYZ");
        cr_expect_eq(c.poll_usec, 250000);
        bs_agent_config_done(&c);

        /* A section only in the user file, with the system file missing. */
        cr_assert_eq(agent_load(NULL, "[agent:mine]\nserver = h\nport = 2\npath = /m\n", "mine", &c, &e), 0,
                     "%s", formatted(&e));
        cr_expect_str_eq(c.server, "h");
        bs_agent_config_done(&c);

        /* Required keys may come from either file. */
        cr_assert_eq(agent_load("[agent:s]\nserver = h\n", "[agent:s]\nport = 2\npath = /m\n", "s", &c, &e), 0,
                     "%s", formatted(&e));
        bs_agent_config_done(&c);

        /* Errors in the user file name the user file. */
        cr_expect_eq(agent_load(agents, "[agent:docs]\n\npoll-interval = 5x\n", "docs", &c, &e), -EINVAL);
        cr_expect_str_eq(e.file, userfile);
        cr_expect_eq(e.line, 3);
        bs_agent_config_done(&c);
}

Test(config, agent_missing_section) {
        BsAgentConfig c;
        BsConfigError e = {};

        cr_expect_eq(agent_load(agents, NULL, "music", &c, &e), -ESRCH);
        cr_expect(strstr(formatted(&e), "no [agent:music] section in ") == formatted(&e), "%s", formatted(&e));
        cr_expect(strstr(e.message, sysfile) != NULL && strstr(e.message, userfile) != NULL, "%s", e.message);
        bs_agent_config_done(&c);
        cr_expect_eq(agent_load(NULL, NULL, "music", &c, &e), -ESRCH);
        bs_agent_config_done(&c);

        /* An explicit file must exist. */
        unlink(sysfile);
        bs_agent_config_init(&c);
        cr_expect_eq(bs_config_load_agent(sysfile, true, NULL, "docs", &c, &e), -ENOENT);
        cr_expect_str_eq(e.file, sysfile);
        bs_agent_config_done(&c);

        cr_expect_eq(agent_load(agents, NULL, "bad name", &c, &e), -EINVAL);
        cr_expect(strstr(e.message, "not an instance name") != NULL, "%s", e.message);
        bs_agent_config_done(&c);
}

Test(config, agent_missing_keys) {
        static const struct {
                const char *text, *missing;
        } cases[] = {
                { "[agent:docs]\nport = 1\npath = /p\n", "server" },
                { "[agent:docs]\nserver = h\npath = /p\n", "port" },
                { "[agent:docs]\nserver = h\nport = 1\n", "path" },
                { "[agent:docs]\n", "server" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                BsAgentConfig c;
                BsConfigError e = {};
                char want[PATH_MAX + 128];
                cr_expect_eq(agent_load(cases[i].text, NULL, "docs", &c, &e), -EINVAL);
                snprintf(want, sizeof(want), "%s: [agent:docs]: missing required key '%s'", sysfile, cases[i].missing);
                cr_expect_str_eq(formatted(&e), want);
                bs_agent_config_done(&c);
        }
}

Test(config, agent_bad_values) {
        static const struct {
                const char *line, *key, *needle;
        } bad[] = {
                { "server = bad host", "server", "not a host name or address" },
                { "server =", "server", "not a host name" },
                { "server = a.example.org,,b.example.org", "server", "separated by commas" },
                { "server = a.example.org, b c", "server", "separated by commas" },
                { "server = a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q", "server", "up to 16" },
                { "port = 0", "port", "not a TCP port" },
                { "port = 70000", "port", "not a TCP port" },
                { "path = relative", "path", "not an absolute path" },
                { "path = ~alice/x", "path", "only a leading ~ or ~/" },
                { "id = not a token", "id", "not an account token" },
                { "id = AB", "id", "not an account token" },
                { "poll-interval = 5x", "poll-interval", "'5x' is not a duration" },
                { "poll-interval = 50ms", "poll-interval", "shorter than 100ms" },
                { "verify-interval = often", "verify-interval", "'often' is not a duration" },
                { "device-name =", "device-name", "empty value" },
                { "tls = sometimes", "tls", "not a boolean" },
                { "server-fingerprint = SHA256:12ab", "server-fingerprint", "not a fingerprint" },
                { "server-fingerprint = MD5:0ed8dadbb51c7b4a6e124636ba2d3e185ebdf698025eb62d2491ae26ea700fbb",
                  "server-fingerprint", "not a fingerprint" },
                { "ca-file = ca.pem", "ca-file", "not an absolute path" },
                { "ignore =", "ignore", "empty pattern" },
                { "default-ignores = maybe", "default-ignores", "not a boolean" },
                { "max-delete = lots", "max-delete", "'lots' is not a limit" },
                { "max-delete = 150%", "max-delete", "'150%' is not a limit" },
                { "colour = blue", "colour", "unknown key in [agent:docs]" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                BsAgentConfig c;
                BsConfigError e = {};
                char text[256], want[PATH_MAX + 64];
                snprintf(text, sizeof(text), "[agent:docs]\nserver = h\nport = 1\npath = /p\n%s\n", bad[i].line);
                cr_expect_eq(agent_load(text, NULL, "docs", &c, &e), -EINVAL, "%s", bad[i].line);
                snprintf(want, sizeof(want), "%s:5: %s: ", sysfile, bad[i].key);
                cr_expect(strncmp(formatted(&e), want, strlen(want)) == 0, "%s", formatted(&e));
                cr_expect(strstr(e.message, bad[i].needle) != NULL, "%s: %s", bad[i].line, e.message);
                bs_agent_config_done(&c);
        }
}

Test(config, agent_ignore_keys) {
        BsAgentConfig c;
        BsConfigError e = {};
        static const char base[] = "[agent:docs]\nserver = h\nport = 1\npath = /p\n";
        char sys[512], user[256];
        cr_assert_eq(agent_load(base, NULL, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_assert_eq(c.n_ignore, 0);
        cr_assert(c.default_ignores, "default ignores are on unless switched off");
        cr_assert(!c.max_delete.off && c.max_delete.files == 100 && c.max_delete.percent == 50,
                  "deletions are held past 100 files and half the tree unless configured");
        bs_agent_config_done(&c);
        snprintf(sys, sizeof(sys), "%smax-delete = 20 10%%\n", base);
        cr_assert_eq(agent_load(sys, NULL, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_assert(!c.max_delete.off && c.max_delete.files == 20 && c.max_delete.percent == 10);
        bs_agent_config_done(&c);
        snprintf(sys, sizeof(sys), "%smax-delete = no\n", base);
        cr_assert_eq(agent_load(sys, NULL, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_assert(c.max_delete.off);
        bs_agent_config_done(&c);
        snprintf(sys, sizeof(sys), "%signore = videos/\nignore = *.iso\ndefault-ignores = no\n", base);
        cr_assert_eq(agent_load(sys, NULL, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_assert_eq(c.n_ignore, 2, "each ignore = line adds a pattern");
        cr_assert_str_eq(c.ignore[0], "videos/");
        cr_assert_str_eq(c.ignore[1], "*.iso");
        cr_assert(!c.default_ignores);
        bs_agent_config_done(&c);
        /* The user file's lines replace the system file's, as other keys do. */
        snprintf(user, sizeof(user), "[agent:docs]\nignore = build/\n");
        cr_assert_eq(agent_load(sys, user, "docs", &c, &e), 0, "%s", formatted(&e));
        cr_assert_eq(c.n_ignore, 1);
        cr_assert_str_eq(c.ignore[0], "build/");
        cr_assert(!c.default_ignores, "a key the user file does not set stays");
        bs_agent_config_done(&c);
        cr_assert_null(c.ignore);
}

Test(config, agent_other_sections) {
        BsAgentConfig c;
        BsConfigError e = {};

        /* [server] is the server's: even unknown keys there are not ours. */
        cr_expect_eq(agent_load("[server]\nbogus = 1\n[agent:docs]\nserver = h\nport = 1\npath = /p\n", NULL,
                                "docs", &c, &e),
                     0, "%s", formatted(&e));
        bs_agent_config_done(&c);
        /* Another instance's bad value does not stop this one ... */
        cr_expect_eq(agent_load("[agent:o]\nport = 0\n[agent:docs]\nserver = h\nport = 1\npath = /p\n", NULL, "docs",
                                &c, &e),
                     0, "%s", formatted(&e));
        bs_agent_config_done(&c);
        /* ... but unknown keys and sections are errors wherever they are. */
        cr_expect_eq(agent_load("[agent:o]\nprot = 1\n[agent:docs]\nserver = h\nport = 1\npath = /p\n", NULL, "docs",
                                &c, &e),
                     -EINVAL);
        cr_expect_eq(e.line, 2);
        cr_expect_str_eq(e.key, "prot");
        bs_agent_config_done(&c);
        cr_expect_eq(agent_load("[agent:docs]\nserver = h\nport = 1\npath = /p\n[agents:x]\n", NULL, "docs", &c, &e),
                     -EINVAL);
        cr_expect_eq(e.line, 5);
        cr_expect(strstr(e.message, "unknown section [agents:x]") != NULL, "%s", e.message);
        bs_agent_config_done(&c);
}

Test(config, home_unset) {
        BsAgentConfig c;
        BsConfigError e = {};
        unsetenv("HOME");
        cr_expect_eq(agent_load("[agent:docs]\nserver = h\nport = 1\npath = ~/d\n", NULL, "docs", &c, &e), -EINVAL);
        cr_expect(strstr(e.message, "$HOME is not set") != NULL, "%s", e.message);
        bs_agent_config_done(&c);
}

Test(config, user_file) {
        char *s = NULL;
        setenv("XDG_CONFIG_HOME", "/xdg", 1);
        cr_assert_eq(bs_config_user_file(&s), 0);
        cr_expect_str_eq(s, "/xdg/backupsync.ini");
        free(s);
        setenv("XDG_CONFIG_HOME", "relative", 1);
        cr_assert_eq(bs_config_user_file(&s), 0);
        cr_expect_str_eq(s, "/home/tester/.config/backupsync.ini");
        free(s);
        unsetenv("XDG_CONFIG_HOME");
        unsetenv("HOME");
        cr_expect_eq(bs_config_user_file(&s), -ENOENT);
}

Test(config, instance_names) {
        cr_expect(bs_config_instance_valid("docs"));
        cr_expect(bs_config_instance_valid("a-b_c.d@e9"));
        cr_expect_not(bs_config_instance_valid(""));
        cr_expect_not(bs_config_instance_valid(NULL));
        cr_expect_not(bs_config_instance_valid("a/b"));
        cr_expect_not(bs_config_instance_valid("a b"));
        cr_expect_not(bs_config_instance_valid("a:b"));
}

Test(config, error_format) {
        BsConfigError e = { .file = "/etc/backupsync.ini", .line = 12, .key = "poll-interval",
                            .message = "'5x' is not a duration" };
        cr_expect_str_eq(formatted(&e), "/etc/backupsync.ini:12: poll-interval: '5x' is not a duration");
        e.line = 0;
        e.key[0] = 0;
        snprintf(e.message, sizeof(e.message), "[agent:docs]: missing required key 'server'");
        cr_expect_str_eq(formatted(&e), "/etc/backupsync.ini: [agent:docs]: missing required key 'server'");
        e.file[0] = 0;
        snprintf(e.message, sizeof(e.message), "no [agent:x] section in a or b");
        cr_expect_str_eq(formatted(&e), "no [agent:x] section in a or b");
}
