"""The backupsync command: status of the agents, live and after they stop."""

import json
import os
import signal
import subprocess

import harness
from harness import Env, check, wait_content, wait_until, write_file

EX_USAGE, EX_DATAERR, EX_NOINPUT = 64, 65, 66


def _cli(*args, env=None):
    r = subprocess.run([harness.CLI_BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def _status(state_dir):
    rc, out, err = _cli("status", "--json", "--state-dir", state_dir)
    if rc == EX_NOINPUT:
        raise OSError("no status yet: %s" % err)  # wait_until retries
    check(rc == 0, "backupsync status --json exited %d: %s" % (rc, err))
    v = json.loads(out)
    check(isinstance(v, list) and len(v) == 1, "want one object, got %r" % (v,))
    return v[0]


def test_cli_status():
    """backupsync status follows one agent through in sync, offline (the
    server killed), in sync again, stopped and killed; text and JSON."""
    with Env("cli_status") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        write_file(os.path.join(a.dir, "f.txt"), "hello\n")
        wait_content(os.path.join(srv.tree(a.token), "f.txt"), "hello\n")
        s = wait_until(lambda: (lambda v: v if v["state"] == "in sync" and v["uploaded"] >= 1 else None)(
            _status(a.state_dir)), 10, "status in sync with one upload")
        check(s["running"] and s["directory"] == a.dir and s["account"] == a.token.split("-")[0] and
              s["server"] == "127.0.0.1" and s["port"] == str(srv.port) and s["last_sync"] and
              s["pending"] == 0 and s["watched"] == 1 and s["offline_since"] is None,
              "unexpected status: %r" % (s,))
        rc, out, err = _cli("status", "--state-dir", a.state_dir)
        check(rc == 0 and "state:      in sync" in out and "directory:  %s" % a.dir in out and
              "account %s" % s["account"] in out, "text status (%d): %s%s" % (rc, out, err))

        srv.kill9()
        write_file(os.path.join(a.dir, "g.txt"), "while the server is down\n")
        s = wait_until(lambda: (lambda v: v if v["state"] == "offline" else None)(_status(a.state_dir)), 20,
                       "status offline")
        check(s["offline_since"] is not None, "offline without a time: %r" % (s,))
        srv.start()
        wait_until(lambda: _status(a.state_dir)["state"] == "in sync", 30, "status in sync again")

        # The directory removed under the agent: paused, with the reason.
        moved = env.path("A-moved-away")
        os.rename(a.dir, moved)
        s = wait_until(lambda: (lambda v: v if v["state"] == "paused" else None)(_status(a.state_dir)), 20,
                       "status paused")
        check("removed, moved or unmounted" in s["reason"], "paused without the reason: %r" % (s,))
        rc, out, _ = _cli("status", "--state-dir", a.state_dir)
        check(rc == 0 and "state:      paused: the directory was removed" in out, "text when paused: %s" % out)
        os.rename(moved, a.dir)
        wait_until(lambda: _status(a.state_dir)["state"] == "in sync", 30, "in sync once the directory is back")

        check(a.stop() == 0, "agent A did not stop cleanly")
        s = _status(a.state_dir)
        check(not s["running"] and s["state"] == "not running" and s["last_state"] == "stopped",
              "after SIGTERM: %r" % (s,))
        rc, out, _ = _cli("status", "--state-dir", a.state_dir)
        check(rc == 0 and "not running (stopped at" in out, "text after SIGTERM: %s" % out)

        a.start()
        wait_until(lambda: _status(a.state_dir)["running"], 10, "running again")
        # A second agent refused the same state directory (exit 75) does
        # not speak for the one that holds it.
        r = subprocess.run(a.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        check(r.returncode == 75, "a second agent on the state directory exited %d" % r.returncode)
        s = _status(a.state_dir)
        check(s["running"] and s["state"] == "in sync", "after a refused second agent: %r" % (s,))
        a.kill9()
        rc, out, _ = _cli("status", "--state-dir", a.state_dir)
        check(rc == 0 and "not running (ended without saying so; last" in out, "text after SIGKILL: %s" % out)

        # --once: syncs, then says it stopped.
        write_file(os.path.join(a.dir, "h.txt"), "for --once\n")
        r = subprocess.run(a.argv(once=True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        check(r.returncode == 0, "--once exited %d" % r.returncode)
        s = _status(a.state_dir)
        check(not s["running"] and s["last_state"] == "stopped" and s["uploaded"] >= 1,
              "after --once: %r" % (s,))


def test_cli_status_all_and_errors():
    """Without a selection, every agent under the user's state directory;
    --instance finds an instance's; errors are clear, with sysexits codes."""
    with Env("cli_status_all") as env:
        srv = env.server()
        xdg = env.path("xdg-state")
        os.makedirs(os.path.join(xdg, "backupsync"))
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"), state_dir=os.path.join(xdg, "backupsync", "docs"))
        b = env.agent("B", env.path("B"), token=a.token, state_dir=os.path.join(xdg, "backupsync", "home-u-photos"))
        penv = dict(os.environ, XDG_STATE_HOME=xdg)
        wait_until(lambda: all(_status(x.state_dir)["state"] == "in sync" for x in (a, b)), 20, "both in sync")
        rc, out, err = _cli("status", "--json", env=penv)
        v = json.loads(out)
        check(rc == 0 and [x["name"] for x in v] == ["docs", "home-u-photos"],
              "status of all agents (%d): %s %s" % (rc, out, err))
        rc, out, err = _cli("status", "--instance", "docs", env=penv)
        check(rc == 0 and out.startswith("docs (%s)" % a.state_dir), "--instance docs (%d): %s%s" % (rc, out, err))

        rc, out, err = _cli("status", "--state-dir", env.path("nothing-here"))
        check(rc == EX_NOINPUT and "no agent status here" in err, "missing state dir: %d %s" % (rc, err))
        bad = env.path("bad-state")
        os.makedirs(bad)
        write_file(os.path.join(bad, "status"), "PID=12\nthis is not a status line\n")
        rc, out, err = _cli("status", "--state-dir", bad)
        check(rc == EX_DATAERR and "not a status file" in err, "malformed status file: %d %s" % (rc, err))
        write_file(os.path.join(bad, "status"), "PID=12\nDIR=" + "x" * 5000 + "\n")
        rc, out, err = _cli("status", "--state-dir", bad)
        check(rc == EX_DATAERR, "an over-long value: %d %s" % (rc, err))
        noconf = env.path("no-config")
        os.makedirs(noconf)
        rc, out, err = _cli("status", "--config", "/dev/null",
                            env=dict(os.environ, XDG_STATE_HOME=env.path("empty"), XDG_CONFIG_HOME=noconf))
        check(rc == EX_NOINPUT and "no agent is configured or has run" in err, "no agents: %d %s" % (rc, err))
        # Configured instances are listed too, also one that never ran.
        conf = env.path("backupsync.ini")
        write_file(conf, "[agent:docs]\nserver = 127.0.0.1\nport = %d\npath = %s\n"
                         "[agent:laptop]\nserver = 127.0.0.1\nport = %d\npath = %s\n"
                   % (srv.port, a.dir, srv.port, env.path("L")))
        cenv = dict(penv, XDG_CONFIG_HOME=noconf)
        rc, out, err = _cli("status", "--json", "--config", conf, env=cenv)
        v = json.loads(out)
        check(rc == 0 and [(x["name"], x["state"]) for x in v] ==
              [("docs", "in sync"), ("laptop", "never run"), ("home-u-photos", "in sync")],
              "configured and found agents (%d): %s %s" % (rc, out, err))
        rc, out, err = _cli("status", "--config", conf, env=cenv)
        check(rc == 0 and "never run (configured in [agent:laptop]" in out, "text (%d): %s %s" % (rc, out, err))
        rc, _, err = _cli("restore-everything")
        check(rc == EX_USAGE and "unknown command" in err, "unknown command: %d %s" % (rc, err))
        rc, _, err = _cli("status", "--instance", "../etc")
        check(rc == EX_USAGE and "not an instance name" in err, "bad instance name: %d %s" % (rc, err))
        for x in (a, b):
            x.stop()
