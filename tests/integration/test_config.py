"""The configuration file: --instance, --config, exit 78 on errors, SIGHUP reload."""

import os
import signal
import socket
import subprocess
import time

import harness
from harness import (AGENT_BIN, SERVER_BIN, Env, check, wait_content,
                     wait_until, write_file)

EX_CONFIG = 78


def _environ(home, state=None, config=None):
    """A clean environment with HOME and the XDG directories in the test's tree."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("STATE_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET",
                      "XDG_STATE_HOME", "XDG_CONFIG_HOME", "LISTEN_FDS", "LISTEN_PID")}
    e["HOME"] = home
    if state:
        e["XDG_STATE_HOME"] = state
    if config:
        e["XDG_CONFIG_HOME"] = config
    os.makedirs(home, exist_ok=True)
    return e


class InstanceAgent(harness.Agent):
    """backupsync-agent --instance NAME --config FILE in its own environment."""

    def __init__(self, env, name, instance, config, environ, dir, token=None, args=()):
        super().__init__(env, name, dir, token=token, args=args)
        self.instance = instance
        self.config = config
        self.environ = environ

    def argv(self, once=False, token=None, port=None):
        argv = [AGENT_BIN, "--instance", self.instance, "--config", self.config]
        if once:
            argv.append("--once")
        return argv + self.args

    def _start(self, argv, stdout, stderr):
        self.popen = subprocess.Popen(argv, stdout=stdout, stderr=stderr,
                                      stdin=subprocess.DEVNULL, env=self.environ)
        if self not in harness._running:
            harness._running.append(self)


def _run(argv, environ=None, timeout=30):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, env=environ, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def _closed_when_idle(port, within):
    """Connect, say nothing; True when the server closes us within `within` s."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(within)
        t0 = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except socket.timeout:
            return False
        except ConnectionResetError:
            pass
        return time.monotonic() - t0 <= within


def test_config_instance():
    with Env("config_instance") as env:
        srv = env.server()
        ini = env.path("backupsync.ini")
        write_file(ini, "[server]\n"
                        "port = 1           ; the server's business, ignored by agents\n"
                        "\n"
                        "[agent:docs]\n"
                        "server = 127.0.0.1\n"
                        "port = %d\n"
                        "path = ~/Documents\n"
                        "poll-interval = 500ms\n"
                        "device-name = A\n"
                        "\n"
                        "[agent:docs2]\n"
                        "server = localhost\n"
                        "port = %d\n"
                        "path = %s\n"
                        "device-name = B\n" % (srv.port, srv.port, env.path("B")))

        home_a = env.path("home-a")
        env_a = _environ(home_a, state=os.path.join(home_a, "state"), config=os.path.join(home_a, "cfg"))
        adir = os.path.join(home_a, "Documents")
        write_file(os.path.join(adir, "hello.txt"), "hello from A\n")
        a = InstanceAgent(env, "A", "docs", ini, env_a, adir)
        a.start()  # no id anywhere: registers and prints ID: <TOKEN>
        wait_content(os.path.join(srv.tree(a.token), "hello.txt"), "hello from A\n")
        state_a = os.path.join(home_a, "state", "backupsync", "docs")
        check(os.path.isdir(state_a) and os.listdir(state_a),
              "state is not in $XDG_STATE_HOME/backupsync/docs (%s)" % state_a)
        check("state in %s" % state_a in a.log_text(), "the agent does not log its state directory %s" % state_a)

        # The second computer: its user file adds the id to the system
        # file's [agent:docs2], key by key; no XDG_STATE_HOME there.
        home_b = env.path("home-b")
        env_b = _environ(home_b, config=os.path.join(home_b, "cfg"))
        write_file(os.path.join(home_b, "cfg", "backupsync.ini"),
                   "; secrets belong here, not in the system file\n[agent:docs2]\nid = %s\n" % a.token)
        b = InstanceAgent(env, "B", "docs2", ini, env_b, env.path("B"), token=a.token)
        b.start()
        wait_content(os.path.join(b.dir, "hello.txt"), "hello from A\n")
        write_file(os.path.join(b.dir, "sub", "from-b.txt"), "hello from B\n")
        wait_content(os.path.join(adir, "sub", "from-b.txt"), "hello from B\n")
        harness.assert_trees_equal(adir, b.dir)
        state_b = os.path.join(home_b, ".local", "state", "backupsync", "docs2")
        check(os.path.isdir(state_b) and os.listdir(state_b),
              "state is not in ~/.local/state/backupsync/docs2 (%s)" % state_b)
        check(b.id_lines() == [], "the joining agent printed %r" % b.id_lines())

        # The token was kept in the state: A restarts without an id and
        # stays in its account (no second ID: line).
        check(a.stop() == 0, "agent A did not exit 0 on SIGTERM")
        a.start(wait_id=False)
        write_file(os.path.join(adir, "again.txt"), "after restart\n")
        wait_content(os.path.join(b.dir, "again.txt"), "after restart\n")
        check(len(a.id_lines()) == 1, "A registered again after a restart: %r" % a.id_lines())

        # The command line beats the file; --state-dir beats the default;
        # the user file may move path too.
        home_c = env.path("home-c")
        env_c = _environ(home_c, state=os.path.join(home_c, "state"), config=os.path.join(home_c, "cfg"))
        write_file(os.path.join(home_c, "cfg", "backupsync.ini"),
                   "[agent:docs2]\nid = %s\npath = ~/C\n" % a.token)
        rc, out, err = _run([AGENT_BIN, "--instance", "docs2", "--config", ini, "--once",
                             "--state-dir", env.path("state-C"), "--poll-interval", "1s"], env_c, timeout=60)
        check(rc == 0, "--instance --once: exit %s; stderr:\n%s" % (rc, err))
        check(out == "", "a joining agent printed %r" % out)
        check(os.listdir(env.path("state-C")), "--state-dir was not used under --instance")
        check(not os.path.exists(os.path.join(home_c, "state", "backupsync")), "state written beside --state-dir")
        check(harness.read_bytes(os.path.join(home_c, "C", "again.txt")) == b"after restart\n",
              "the user file's path was not used")

        for p in (a, b):
            check(p.stop() == 0, "%s did not exit 0 on SIGTERM" % p.name)


def test_config_errors():
    with Env("config_errors") as env:
        home = env.path("home")
        environ = _environ(home, state=env.path("xdg-state"), config=env.path("xdg-config"))
        port = harness.free_port()

        def server(text):
            ini = env.path("server.ini")
            write_file(ini, text)
            return ini, _run([SERVER_BIN, str(port), "--listen", "127.0.0.1", "--storage",
                              env.path("storage"), "--config", ini], environ)

        ini, (rc, out, err) = server("[server]\nport = 7373\nbogus = 1\n")
        check(rc == EX_CONFIG, "server, unknown key: exit %s, want 78; stderr:\n%s" % (rc, err))
        check("%s:3: bogus: unknown key" % ini in err, "server error does not name file:line: key:\n%s" % err)
        ini, (rc, out, err) = server("[server]\nidle-timeout = 5x\n")
        check(rc == EX_CONFIG and "%s:2: idle-timeout: '5x' is not a duration" % ini in err,
              "server, bad duration: exit %s; stderr:\n%s" % (rc, err))
        ini, (rc, out, err) = server("[server]\nmax-connections = 0\n")
        check(rc == EX_CONFIG and "%s:2: max-connections:" % ini in err,
              "server, bad max-connections: exit %s; stderr:\n%s" % (rc, err))
        ini, (rc, out, err) = server("[sever]\nport = 1\n")
        check(rc == EX_CONFIG and "%s:1: unknown section [sever]" % ini in err,
              "server, unknown section: exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = _run([SERVER_BIN, "--config", env.path("missing.ini"), "--storage", env.path("storage")],
                            environ)
        check(rc == EX_CONFIG and env.path("missing.ini") in err,
              "server, missing --config file: exit %s; stderr:\n%s" % (rc, err))
        check(not harness.port_open(port), "a server with a bad config is listening")

        ini = env.path("agent.ini")
        good = "[agent:docs]\nserver = 127.0.0.1\nport = %d\npath = ~/docs\n" % port

        def agent(text, instance="docs", user=None, extra=()):
            write_file(ini, text)
            ufile = os.path.join(env.path("xdg-config"), "backupsync.ini")
            if user is None:
                if os.path.exists(ufile):
                    os.unlink(ufile)
            else:
                write_file(ufile, user)
            return _run([AGENT_BIN, "--instance", instance, "--config", ini] + list(extra), environ)

        rc, out, err = agent(good + "poll-interval = 5x\n")
        check(rc == EX_CONFIG, "agent, bad poll-interval: exit %s, want 78; stderr:\n%s" % (rc, err))
        check("%s:5: poll-interval: '5x' is not a duration" % ini in err,
              "agent error does not name file:line: key:\n%s" % err)
        check(out == "", "agent printed on stdout: %r" % out)
        rc, out, err = agent(good + "colour = blue\n")
        check(rc == EX_CONFIG and "%s:5: colour: unknown key" % ini in err,
              "agent, unknown key: exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = agent(good, instance="music")
        check(rc == EX_CONFIG and "no [agent:music] section in %s" % ini in err,
              "agent, missing section: exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = agent("[agent:docs]\nport = 1\npath = /x\n")
        check(rc == EX_CONFIG and "%s: [agent:docs]: missing required key 'server'" % ini in err,
              "agent, missing key: exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = agent(good, user="[agent:docs]\nid = not-a-token!\n")
        ufile = os.path.join(env.path("xdg-config"), "backupsync.ini")
        check(rc == EX_CONFIG and "%s:2: id:" % ufile in err,
              "agent, bad id in the user file: exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = _run([AGENT_BIN, "--instance", "docs", "--config", env.path("missing.ini")], environ)
        check(rc == EX_CONFIG and env.path("missing.ini") in err,
              "agent, missing --config file: exit %s; stderr:\n%s" % (rc, err))
        check(not os.path.exists(os.path.join(home, "docs")), "an agent with a bad config created its directory")


def test_sighup_reload():
    with Env("sighup_reload") as env:
        ini = env.path("server.ini")
        write_file(ini, "[server]\nidle-timeout = 60s\nrequire-key = yes\n")
        srv = env.server(args=["--config", ini])
        check(not _closed_when_idle(srv.port, 2.5), "closed an idle connection with idle-timeout = 60s")

        adir = env.path("A")
        write_file(os.path.join(adir, "one.txt"), "one\n")
        a = env.agent("A", adir)
        wait_content(os.path.join(srv.tree(a.token), "one.txt"), "one\n")

        # A shorter idle-timeout applies to new and open connections.
        write_file(ini, "[server]\nidle-timeout = 2s\nrequire-key = yes\n")
        srv.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded: idle timeout 2000 ms" in srv.log_text(), 15,
                   "the server to log the reload")
        check(_closed_when_idle(srv.port, 8), "idle-timeout = 2s was not applied by SIGHUP")
        write_file(os.path.join(adir, "two.txt"), "two\n")
        wait_content(os.path.join(srv.tree(a.token), "two.txt"), "two\n")

        # A broken file: logged, the old configuration stays.
        write_file(ini, "[server]\nidle-timeout = soon\n")
        srv.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the old configuration" in srv.log_text(), 15,
                   "the server to log the broken file")
        log = srv.log_text()
        check("%s:2: idle-timeout: 'soon' is not a duration" % ini in log,
              "the reload error does not name file:line: key:\n%s" % log[-2000:])
        check(srv.running() and harness.port_open(srv.port), "the server died on a broken config")
        check(_closed_when_idle(srv.port, 8), "the old idle-timeout was not kept")
        write_file(os.path.join(adir, "three.txt"), "three\n")
        wait_content(os.path.join(srv.tree(a.token), "three.txt"), "three\n")

        # The agent reloads too: poll-interval applies, a broken file is kept out.
        home = env.path("home-b")
        environ = _environ(home, state=os.path.join(home, "state"), config=os.path.join(home, "cfg"))
        aini = env.path("agent.ini")
        base = "[agent:b]\nserver = 127.0.0.1\nport = %d\npath = %s\nid = %s\n" % (srv.port, env.path("B"), a.token)
        write_file(aini, base + "poll-interval = 5s\n")
        b = InstanceAgent(env, "B", "b", aini, environ, env.path("B"), token=a.token)
        b.start()
        wait_content(os.path.join(b.dir, "three.txt"), "three\n")
        write_file(aini, base + "poll-interval = 700ms\nverify-interval = 10m\ndevice-name = renamed\n")
        b.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded: poll interval 700 ms, verification every 600 s, device name renamed"
                   in b.log_text(), 15,
                   "the agent to log the reload")
        write_file(aini, base.replace("path = ", "path = /elsewhere") + "poll-interval = 1s\n")
        b.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "path changed; that needs a restart" in b.log_text(), 15,
                   "the agent to say a new path needs a restart")
        write_file(aini, base + "poll-interval = 5x\n")
        b.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "%s:6: poll-interval: '5x' is not a duration" % aini in b.log_text(), 15,
                   "the agent to log the broken file")
        check("keeping the old configuration" in b.log_text(), "the agent does not say it keeps the old config")
        write_file(os.path.join(adir, "four.txt"), "four\n")
        wait_content(os.path.join(b.dir, "four.txt"), "four\n")
        check(b.stop() == 0, "agent B did not exit 0 on SIGTERM")
        check(srv.stop() == 0, "the server did not exit 0 on SIGTERM")
