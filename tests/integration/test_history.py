"""Getting files back: backupsync log, versions, deleted and restore against
a real server, with agents running, stopped, or absent (only the token)."""

import hashlib
import json
import os
import shutil
import subprocess
import time

import harness
from harness import Env, check, read_bytes, snapshot, wait_content, wait_tree, wait_until, write_file

EX_USAGE, EX_DATAERR, EX_NOPERM = 64, 65, 77


def _cli(*args, env=None, timeout=120):
    r = subprocess.run([harness.CLI_BIN] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def _json(*args):
    rc, out, err = _cli(*(args + ("--json",)))
    check(rc == 0, "backupsync %s exited %d: %s" % (" ".join(map(str, args)), rc, err))
    return json.loads(out)


def _sha(data):
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def _seq_now(a):
    """The newest sequence in the account's log."""
    log = _json("log", "-n", 1, "--state-dir", a.state_dir)
    return log[0]["seq"] if log else 0


def _wait_log(a, pred, msg):
    return wait_until(lambda: (lambda v: v if pred(v) else None)(_json("log", "--state-dir", a.state_dir)),
                      harness.SYNC_TIMEOUT, msg)


def _next_second():
    """Sleep into the next wall-clock second, so changes before and after
    have different times in the log (which counts seconds)."""
    t = time.time()
    time.sleep(int(t) + 1.05 - t)


def _make_tree(root):
    """A directory with nested files, modes, mtimes and symlinks."""
    write_file(os.path.join(root, "proj/README"), "read me\n", mode=0o644, mtime=1700000000)
    write_file(os.path.join(root, "proj/bin/run.sh"), "#!/bin/sh\necho hi\n", mode=0o755, mtime=1700000100)
    write_file(os.path.join(root, "proj/secret/key"), "k" * 5000, mode=0o600, mtime=1700000200)
    write_file(os.path.join(root, "proj/empty"), b"", mode=0o640, mtime=1700000300)
    os.symlink("../README", os.path.join(root, "proj/bin/readme-link"))
    os.symlink("/nonexistent/target", os.path.join(root, "proj/dangling"))
    os.chmod(os.path.join(root, "proj/secret"), 0o700)
    os.chmod(os.path.join(root, "proj/bin"), 0o750)


def test_first_scan_waits_for_files_being_written():
    """A log another program keeps appending to while the agent starts is
    not sent as the first scan finds it: the scan watches its directory
    before listing it, the writes queue events, and the agent reads them
    before the upload. The log waits until it settles (here, until it is
    closed), so its history holds one version, the whole file. The rest
    of the tree goes up meanwhile."""
    import threading
    with Env("first_scan_waits_for_files_being_written") as env:
        srv = env.server()
        adir = env.path("A")
        # Siblings: the log's upload comes a while after its directory is
        # watched, and the writer writes meanwhile.
        names = [os.path.join("logs", "old%03d" % i) for i in range(600)]
        for n in names:
            write_file(os.path.join(adir, n), "old log %s\n" % n)
        log = os.path.join(adir, "logs", "app.log")
        stop = threading.Event()

        def append():
            with open(log, "ab", buffering=0) as f:
                i = 0
                while not stop.is_set():
                    f.write(b"line %d\n" % i)
                    i += 1
                    time.sleep(0.001)
        t = threading.Thread(target=append)
        t.start()
        try:
            time.sleep(0.05)
            a = env.agent("A", adir)
            tree = srv.tree(a.token)
            wait_until(lambda: all(os.path.exists(os.path.join(tree, n)) for n in names), 60,
                       "the rest of the tree on the server")
            a.wait_scanned()
            check(not os.path.exists(os.path.join(tree, "logs", "app.log")),
                  "the log being written was sent by the first scan")
        finally:
            stop.set()
            t.join()
        final = read_bytes(log)
        wait_content(os.path.join(tree, "logs", "app.log"), final, timeout=30, msg="the closed log on the server")
        v = _json("versions", log, "--state-dir", a.state_dir)
        check([x["sha256"] for x in v] == [_sha(final)], "the log's history is the whole file alone: %r" % (v,))


def test_history_log_versions_deleted():
    """log, versions and deleted tell exactly what happened: operations,
    paths, computers, sizes and SHA-256 of every version; clear errors for
    paths and times that name nothing."""
    with Env("history_log_versions_deleted") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        b = env.agent("B", env.path("B"), token=a.token)
        # Exactly four versions: A's first scan must not catch the first
        # write between its open() and its write() (an empty version).
        a.wait_scanned()
        f = os.path.join(a.dir, "notes.txt")
        contents = ["first\n", "second, longer\n", "third\n"]
        for c in contents:
            write_file(f, c)
            wait_content(os.path.join(b.dir, "notes.txt"), c)
        # sed -i: a new file renamed over the old one.
        subprocess.run(["sed", "-i", "s/third/fourth/", f], check=True)
        contents.append("fourth\n")
        wait_content(os.path.join(b.dir, "notes.txt"), "fourth\n")
        _make_tree(b.dir)
        # All of it on A (and B's modes sent) before A deletes what it sees.
        wait_tree(os.path.join(a.dir, "proj"), snapshot(os.path.join(b.dir, "proj")), modes=True)
        harness.assert_converged(srv, [a, b])
        shutil.rmtree(os.path.join(a.dir, "proj"))
        harness.wait_absent(os.path.join(b.dir, "proj"))

        v = _json("versions", "notes.txt", "--state-dir", a.state_dir)
        check([x["sha256"] for x in v] == [_sha(c) for c in reversed(contents)],
              "versions are not the four contents newest first: %r" % (v,))
        check([x["size"] for x in v] == [len(c) for c in reversed(contents)], "sizes: %r" % (v,))
        check(all(x["device"] == "A" for x in v) and v[0]["current"] and v[0]["replaced"] is None and
              all(x["replaced"] and not x["current"] for x in v[1:]), "devices/current/replaced: %r" % (v,))
        check(all(v[i]["version"] > v[i + 1]["version"] for i in range(3)), "version numbers: %r" % (v,))
        check(all(v[i]["time"] >= v[i + 1]["time"] and v[i + 1]["replaced"] == v[i]["time"] for i in range(3)),
              "each version is replaced when the next is written: %r" % (v,))
        # The same by an absolute path in the synced directory, and as text.
        check(_json("versions", f, "--state-dir", a.state_dir) == v, "absolute path gives another answer")
        rc, out, _ = _cli("versions", "notes.txt", "--state-dir", a.state_dir)
        check(rc == 0 and "(current)" in out and _sha("first\n") in out, "text versions: %s" % out)

        log = _json("log", "--state-dir", a.state_dir)
        ops = [(x["op"], x["path"], x["device"]) for x in log]
        check(ops[0] == ("delete", "proj", "A"), "newest change is not A's delete of proj: %r" % ops[:3])
        check(("put", "proj/secret/key", "B") in ops and ("symlink", "proj/dangling", "B") in ops and
              ("mkdir", "proj/bin", "B") in ops, "B's changes missing from the log: %r" % ops)
        check(all(log[i]["seq"] > log[i + 1]["seq"] for i in range(len(log) - 1)), "log not newest first")
        only = _json("log", "notes.txt", "--state-dir", a.state_dir)
        check([x["path"] for x in only] == ["notes.txt"] * 4, "log of one path: %r" % (only,))
        check(len(_json("log", "-n", 2, "--state-dir", a.state_dir)) == 2, "-n 2")
        check(_json("log", "--since", "-1h", "--state-dir", a.state_dir) == log, "--since -1h drops changes")
        check(_json("log", "--since", "@%d" % (int(time.time()) + 3600), "--state-dir", a.state_dir) == [],
              "--since in the future lists changes")
        check(all(x["device"] in ("A", "B") for x in log), "a reader counted as a computer: %r" % (log,))

        d = _json("deleted", "--state-dir", a.state_dir)
        got = {x["path"]: (x["kind"], x["size"], x["device"]) for x in d}
        check(got.get("proj") == ("directory", 0, "A") and got.get("proj/secret/key") == ("file", 5000, "A") and
              got.get("proj/bin/readme-link", ("",))[0] == "symlink" and "notes.txt" not in got,
              "deleted: %r" % (d,))
        check({x["path"] for x in _json("deleted", "proj/bin", "--state-dir", a.state_dir)} ==
              {"proj/bin", "proj/bin/run.sh", "proj/bin/readme-link"}, "deleted under proj/bin")

        # Errors: nothing kept, paths outside the account, bad times.
        for args, want in [(("versions", "no-such-file"), EX_DATAERR), (("versions", "../etc/passwd"), EX_USAGE),
                           (("log", "--since", "yesterday"), EX_USAGE), (("versions",), EX_USAGE),
                           (("restore", "no-such-file"), EX_DATAERR), (("restore", "/"), EX_USAGE),
                           (("restore", "notes.txt", "--at", "-1h", "--version", "3"), EX_USAGE),
                           (("log", "--to", "/tmp"), EX_USAGE)]:
            rc, out, err = _cli(*(args + ("--state-dir", a.state_dir)))
            check(rc == want and err.startswith("backupsync: "),
                  "backupsync %s: exit %d (want %d): %s" % (" ".join(args), rc, want, err))
        rc, _, err = _cli("log", "--server", "127.0.0.1", "--port", srv.port, "--token", a.account + "-" + "A" * 32,
                          "--server-fingerprint", srv.fingerprint())
        check(rc == EX_NOPERM and "AUTH" in err, "a wrong key: exit %d: %s" % (rc, err))


def test_restore_deleted_tree_in_place():
    """A deleted directory tree comes back by default as it was before the
    deletion, exactly (contents, modes, mtimes, symlinks), as a new change
    from this computer that reaches the other one."""
    with Env("restore_deleted_tree_in_place") as env:
        env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        b = env.agent("B", env.path("B"), token=a.token)
        _make_tree(a.dir)
        want = snapshot(os.path.join(a.dir, "proj"), mtimes=True)
        wait_tree(os.path.join(b.dir, "proj"), snapshot(os.path.join(a.dir, "proj")), modes=True)
        # rm -r deletes the files first: those deletions may travel on their
        # own before the directory's. Make sure one does.
        os.unlink(os.path.join(b.dir, "proj/secret/key"))
        harness.wait_absent(os.path.join(a.dir, "proj/secret/key"))
        subprocess.run(["rm", "-rf", os.path.join(b.dir, "proj")], check=True)
        harness.wait_absent(os.path.join(a.dir, "proj"))
        a.stop()  # works whether or not the agent runs

        rc, out, err = _cli("restore", "proj", "--state-dir", a.state_dir)
        check(rc == 0, "restore exited %d: %s" % (rc, err))
        got = snapshot(os.path.join(a.dir, "proj"), mtimes=True)
        check(got == want, "restored tree differs:\n%s" % harness.diff_snapshots(got, want, "restored", "before"))
        a.start()
        wait_tree(os.path.join(b.dir, "proj"), snapshot(os.path.join(a.dir, "proj")), modes=True,
                  msg="the restore did not reach B")
        _wait_log(a, lambda log: any(x["path"] == "proj/secret/key" and x["device"] == "A" and x["op"] == "put"
                                     for x in log[:12]), "the restore logged as A's change")


def test_restore_in_place_and_undo():
    """Restoring a file in place makes its current content a version in
    turn, reaches the other computer, and is itself undone by restoring
    again; --version N takes exactly that version."""
    with Env("restore_in_place_and_undo") as env:
        env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        b = env.agent("B", env.path("B"), token=a.token)
        f = os.path.join(a.dir, "doc.txt")
        write_file(f, "good text\n", mode=0o640, mtime=1600000000)
        wait_content(os.path.join(b.dir, "doc.txt"), "good text\n")
        # Replaced whole, as an editor saves: written in place, the file
        # can be caught empty between the truncation and the write, and
        # that empty content would be the version before the current one.
        write_file(os.path.join(b.dir, ".doc.txt.new"), "ruined\n")
        os.replace(os.path.join(b.dir, ".doc.txt.new"), os.path.join(b.dir, "doc.txt"))
        wait_content(f, "ruined\n")

        rc, _, err = _cli("restore", "doc.txt", "--state-dir", a.state_dir)
        check(rc == 0, "restore exited %d: %s" % (rc, err))
        check(harness.read_bytes(f) == b"good text\n", "not restored in place")
        st = os.stat(f)
        check(st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1600000000 * 10**9,
              "mode %o mtime %d not as before" % (st.st_mode & 0o777, st.st_mtime_ns))
        wait_content(os.path.join(b.dir, "doc.txt"), "good text\n", msg="the restore did not reach B")
        v = wait_until(lambda: (lambda v: v if len(v) == 3 else None)(
            _json("versions", "doc.txt", "--state-dir", b.state_dir)), 30, "three versions")
        check([x["sha256"] for x in v] == [_sha("good text\n"), _sha("ruined\n"), _sha("good text\n")],
              "versions after the restore: %r" % (v,))

        # Undo: the content before the current one is the ruined one.
        rc, _, err = _cli("restore", "doc.txt", "--state-dir", b.state_dir)
        check(rc == 0, "undo exited %d: %s" % (rc, err))
        wait_content(f, "ruined\n", msg="the undo did not reach A")
        # --version N into another directory: exactly that version.
        out = env.path("out")
        rc, _, err = _cli("restore", "doc.txt", "--version", v[2]["version"], "--to", out, "--state-dir", a.state_dir)
        check(rc == 0 and harness.read_bytes(os.path.join(out, "doc.txt")) == b"good text\n",
              "--version: exit %d: %s" % (rc, err))
        rc, _, err = _cli("restore", "doc.txt", "--version", 999999, "--to", out, "--state-dir", a.state_dir)
        check(rc == EX_DATAERR and "no version 999999" in err, "a version that never was: %d %s" % (rc, err))


def test_restore_tree_in_batches():
    """A whole tree of more entries than a restore holds at once (16,384:
    directories are kept apart, the rest waits in an unnamed file in
    TMPDIR and comes back a batch at a time): every file, link, mode and
    mtime is restored, and TMPDIR is left as it was."""
    with Env("restore_tree_in_batches") as env:
        srv = env.server()
        adir = env.path("A")
        harness.make_small_files(adir, 170, 100, "d%03d", "f%03d")
        for d in (0, 85, 169):
            os.symlink("f000", os.path.join(adir, "d%03d" % d, "link"))
        write_file(os.path.join(adir, "d169", "run.sh"), "#!/bin/sh\n", mode=0o755, mtime=1600000000)
        os.chmod(os.path.join(adir, "d120"), 0o555)
        a = env.agent("A", adir)
        snap = snapshot(adir, mtimes=True)
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snapshot(adir).items()},
                  timeout=180, modes=False, msg="17,000 files on the server")
        _next_second()
        tmp = env.path("tmp")
        os.makedirs(tmp)
        out = env.path("restored")
        p = subprocess.Popen([harness.CLI_BIN, "restore", "/", "--at", "@%d" % int(time.time()), "--to", out,
                              "--state-dir", a.state_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, TMPDIR=tmp))
        # While it runs, the list is an unnamed file in TMPDIR, open in it.
        spill = False
        while p.poll() is None and not spill:
            try:
                spill = any(os.readlink("/proc/%d/fd/%s" % (p.pid, fd)).startswith(tmp + "/")
                            for fd in os.listdir("/proc/%d/fd" % p.pid))
            except OSError:
                pass
            time.sleep(0.01)
        _, err = p.communicate(timeout=300)
        rc, err = p.returncode, err.decode()
        check(spill, "restore kept no list in TMPDIR while it ran")
        got = snapshot(out, mtimes=True)
        check(rc == 0 and got == snap, "restore of 17,000 entries: exit %d %s\n%s" % (
            rc, err[-2000:], harness.diff_snapshots(got, snap, "restored", "expected")))
        check(os.listdir(tmp) == [], "TMPDIR holds %r after the restore" % os.listdir(tmp))
        os.chmod(os.path.join(adir, "d120"), 0o755)
        os.chmod(os.path.join(out, "d120"), 0o755)


def test_restore_at_boundaries():
    """--at TIME is the tree as of the last change made by then: exactly at
    a change's second it is included, a second before it is not; before
    the first change there is nothing, which is an error."""
    with Env("restore_at_boundaries") as env:
        env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        states = []
        for i, (name, data) in enumerate([("x.txt", "1\n"), ("x.txt", "2\n"), ("y/z.txt", "3\n")]):
            _next_second()
            write_file(os.path.join(a.dir, name), data)
            _wait_log(a, lambda log, n=i: len(log) >= n + 1 + (1 if n == 2 else 0), "change %d logged" % i)
            _next_second()
            states.append(snapshot(a.dir, modes=False))
        log = _json("log", "--state-dir", a.state_dir)
        times = sorted({x["time"] for x in log})
        check(len(times) == 3, "three changes in three seconds: %r" % (log,))

        def at(t, name):
            out = env.path(name)
            rc, _, err = _cli("restore", "/", "--at", t, "--to", out, "--state-dir", a.state_dir)
            return rc, err, (snapshot(out, modes=False) if rc == 0 else None)

        for i, t in enumerate(times):
            rc, err, got = at(t, "at-%d" % i)  # ISO 8601 with Z, as the log prints it
            check(rc == 0 and got == states[i], "--at %s (change %d): exit %d %s\n%s" % (
                t, i, rc, err, harness.diff_snapshots(got or {}, states[i], "restored", "expected")))
            listed = _json("ls", "--at", t, "--state-dir", a.state_dir)
            check({x["path"]: x["kind"] for x in listed} ==
                  {k: {"file": "file", "dir": "directory"}[v[0]] for k, v in states[i].items()},
                  "ls --at %s: %r" % (t, listed))
        check([x["path"] for x in _json("ls", "y", "--state-dir", a.state_dir)] == ["y", "y/z.txt"], "ls y")
        rc, out, _ = _cli("ls", "--state-dir", a.state_dir)
        check(rc == 0 and "-0644" in out and "x.txt" in out and "y/\n" in out, "ls as text: %s" % out)
        epoch = int(time.mktime(time.strptime(times[1], "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone
        rc, err, got = at("@%d" % (epoch - 1), "before-1")
        check(rc == 0 and got == states[0], "a second before change 1: %s" % err)
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
        rc, err, got = at(local, "local-1")
        check(rc == 0 and got == states[1], "local time of change 1: %s" % err)
        rc, err, _ = at("@%d" % (epoch - 3600), "before-all")
        check(rc == EX_DATAERR and "nothing was there" in err, "before the first change: %d %s" % (rc, err))
        rc, _, err = _cli("ls", "--at", "@%d" % (epoch - 3600), "--state-dir", a.state_dir)
        check(rc == EX_DATAERR and "nothing was there" in err, "ls before the first change: %d %s" % (rc, err))


def test_restore_token_only():
    """Disaster recovery: a fresh computer with nothing but the token (on
    the command line or in BACKUPSYNC_TOKEN) rebuilds the whole account
    as it is now and as it was before a mass deletion."""
    with Env("restore_token_only") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        _make_tree(a.dir)
        for i in range(300):
            write_file(os.path.join(a.dir, "many/%02d/f%03d" % (i % 10, i)), "file %d\n" % i * (i + 1))
        harness.assert_converged(srv, [a])
        want = snapshot(a.dir, mtimes=True)
        time.sleep(1.1)
        before = int(time.time())
        time.sleep(1.1)
        shutil.rmtree(os.path.join(a.dir, "many"))
        # Past max-delete: held until confirmed, as a user would.
        wait_until(lambda: "holding the deletion of 300 files" in a.log_text(), 30, "the mass deletion held")
        rc, out, err = _cli("confirm-deletes", "--state-dir", a.state_dir)
        check(rc == 0 and "deleted 300 files" in out, "confirm-deletes: %d %s %s" % (rc, out, err))
        _wait_log(a, lambda log: log[0]["op"] == "delete" and log[0]["path"] == "many", "the deletion logged")
        a.stop()

        # Nowhere to pin the server's key: it must be given, and nothing is sent before.
        rc, _, err = _cli("restore", "/", "--at", "@%d" % before, "--to", env.path("new"),
                          "--server", "127.0.0.1", "--port", srv.port, "--token", a.token)
        check(rc == EX_NOPERM and srv.fingerprint() in err and "--server-fingerprint" in err
              and not os.listdir(env.path("new")),
              "restore with the token but not the server's key: %d %s" % (rc, err))
        fp = srv.fingerprint()
        rc, _, err = _cli("restore", "/", "--at", "@%d" % before, "--to", env.path("new"),
                          "--server", "127.0.0.1", "--port", srv.port, "--token", a.token, "--server-fingerprint", fp)
        check(rc == 0, "restore with the token exited %d: %s" % (rc, err))
        got = snapshot(env.path("new"), mtimes=True)
        check(got == want, "rebuilt tree differs:\n%s" % harness.diff_snapshots(got, want, "rebuilt", "A"))
        e = dict(os.environ, BACKUPSYNC_TOKEN=a.token)
        rc, _, err = _cli("restore", "/", "--at", "-0s", "--to", env.path("now"), "--server", "127.0.0.1",
                          "--port", srv.port, "--server-fingerprint", fp.lower().replace("sha256:", ""), env=e)
        check(rc == 0, "restore with BACKUPSYNC_TOKEN exited %d: %s" % (rc, err))
        check(snapshot(env.path("now"), mtimes=True) == snapshot(a.dir, mtimes=True), "the account as it is now")
        rc, _, err = _cli("restore", "/", "--at", "-1s", "--server", "127.0.0.1", "--port", srv.port, env=e)
        check(rc == EX_USAGE and "--to" in err, "token only, no --to: %d %s" % (rc, err))
        # An instance configured with the token whose agent never ran here:
        # its [agent:NAME] section names the account.
        conf = env.path("backupsync.ini")
        write_file(conf, "[agent:home]\nserver = 127.0.0.1\nport = %d\npath = %s\nid = %s\n"
                   % (srv.port, env.path("home"), a.token))
        cenv = dict(os.environ, XDG_STATE_HOME=env.path("no-state"), XDG_CONFIG_HOME=env.path("no-config"))
        rc, out, err = _cli("restore", "/", "--at", "@%d" % before, "--to", env.path("from-config"),
                            "--instance", "home", "--config", conf, env=cenv)
        check(rc == 0 and snapshot(env.path("from-config"), mtimes=True) == want,
              "restore --instance from the configuration: %d %s" % (rc, err))
        rc, out, err = _cli("log", "--instance", "nope", "--config", conf, env=cenv)
        check(rc == 66 and "no [agent:nope] section" in err, "an instance neither run nor configured: %d %s" % (rc, err))


def _prune(srv, *extra, env=None):
    r = subprocess.run([harness.SERVER_BIN, "--prune", "--storage", srv.storage] + list(extra),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_retention_thinning_and_prune():
    """With the server's clock moved by a test clock: 24 edits half an
    hour apart, then ten days later --prune keeps one version a day (and
    says what it freed); every kept version still restores, and the tree
    as of any moment still has the file. --prune refuses a running server."""
    with Env("retention_thinning_and_prune") as env:
        clock = env.path("clock")
        write_file(clock, "0")
        os.environ["BACKUPSYNC_TEST_CLOCK"] = clock
        srv = env.server(args=["--config", "/dev/null"])
        started = time.monotonic()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        f = os.path.join(a.dir, "diary.txt")
        contents = {}
        for i in range(24):
            write_file(clock, str(i * 1800))
            data = ("entry %d\n" % i) * 2000
            write_file(f, data)
            contents[_sha(data)] = data
            # Not a count: the server thins versions older than an hour on
            # its own (5 s after its start, then every 10 minutes).
            wait_until(lambda: (lambda r: r[0] == 0 and json.loads(r[1])[0]["current"] and
                                json.loads(r[1])[0]["sha256"] == _sha(data))(
                _cli("versions", "diary.txt", "--json", "--state-dir", a.state_dir)), 30, "version %d on the server" % i)
        # 11.5 hours of edits: at least one an hour is kept. Counted once
        # the server's own first pruning (5 s after its start; the next is
        # 10 minutes later) is over, or it could thin them after the count.
        time.sleep(max(0.0, started + 7 - time.monotonic()))
        count = lambda: len(_json("versions", "diary.txt", "--state-dir", a.state_dir))
        n_before = count()
        for _ in range(30):
            time.sleep(1)
            n, n_before = n_before, count()
            if n == n_before:
                break
        check(n_before >= 12, "%d versions before pruning" % n_before)
        rc, _, err = _prune(srv)
        check(rc == 75 and "in use" in err, "--prune on a running server: exit %d: %s" % (rc, err))
        a.stop()
        srv.stop()
        write_file(clock, str(10 * 86400))
        rc, out, err = _prune(srv)
        check(rc == 0, "--prune exited %d: %s%s" % (rc, out, err))
        check("1 account pruned:" in out, "report: %s" % out)
        n_pruned = int(out.split("pruned: ")[1].split(" versions")[0])
        srv.start()
        v = _json("versions", "diary.txt", "--state-dir", a.state_dir)
        # The 24 edits spanned 11.5 hours: ten days later one a day is kept,
        # the day bucket boundary may split them in two.
        check(2 <= len(v) <= 3 and v[0]["current"], "versions after pruning: %r" % (v,))
        check(n_pruned == n_before - len(v), "the report says %d versions pruned, %d of %d are left" %
              (n_pruned, len(v), n_before))
        check("history" in out and "before" in out and "after" in out, "no history sizes: %s" % out)
        for x in v:
            out_dir = env.path("v%d" % x["version"])
            rc, _, err = _cli("restore", "diary.txt", "--version", x["version"], "--to", out_dir,
                              "--state-dir", a.state_dir)
            check(rc == 0 and harness.read_bytes(os.path.join(out_dir, "diary.txt")).decode() == contents[x["sha256"]],
                  "version %d does not restore: %s" % (x["version"], err))
        log = _json("log", "diary.txt", "--state-dir", a.state_dir)
        for k, rec in enumerate(reversed(log)):
            out_dir = env.path("at%d" % k)
            rc, _, err = _cli("restore", "/", "--at", rec["time"], "--to", out_dir, "--state-dir", a.state_dir)
            check(rc == 0 and os.path.exists(os.path.join(out_dir, "diary.txt")),
                  "the tree as of %s lost the file: %s" % (rec["time"], err))


def test_prune_during_burst():
    """A server that prunes every second and keeps versions and the log for
    one second only, while 2,000 files are written, then rewritten twice:
    pruning runs during the burst (agents behind the pruned log get
    snapshots), and nothing current is lost on the server or the other
    computer."""
    with Env("prune_during_burst") as env:
        conf = env.path("backupsync.ini")
        write_file(conf, "[server]\nkeep-versions = 1s\nkeep-all = 0\nprune-interval = 1s\n")
        srv = env.server(args=["--config", conf])
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        b = env.agent("B", env.path("B"), token=a.token)
        for rnd in range(3):
            for d in range(20):
                for i in range(100):
                    write_file(os.path.join(a.dir, "d%02d/f%03d" % (d, i)), "round %d file %d %d\n" % (rnd, d, i))
            if rnd == 0:
                wait_content(os.path.join(b.dir, "d19/f099"), "round 0 file 19 99\n", timeout=120)
        snap = snapshot(a.dir)
        wait_tree(b.dir, snap, timeout=120, modes=True, msg="the rewritten burst on B")
        wait_until(lambda: "pruned" in srv.log_text(), 30, "the server to prune")
        harness.assert_converged(srv, [a, b])
        for d in (0, 19):
            v = _json("versions", "d%02d/f000" % d, "--state-dir", b.state_dir)
            check(v[0]["current"] and v[0]["sha256"] == _sha("round 2 file %d 0\n" % d), "current version: %r" % (v,))


def _history(sock, req, what, path=b"", **kw):
    """Send HISTORY; the rows of all HISTORY_ROWS frames, or the ERROR."""
    import bsproto
    sock.sendall(bsproto.enc_history(req, what, path, **kw))
    rows = []
    while True:
        m = bsproto.recv_frame(sock, skip_notify=True)
        if m["type"] != "HISTORY_ROWS":
            return m
        check(m["req"] == req, "HISTORY_ROWS for request %d, want %d" % (m["req"], req))
        rows += m["rows"]
        if not m["flags"] & 0x02:
            return rows


def test_hostile_history():
    """HISTORY from a client that lies or is behind: before version 4 it
    ends the session; an unknown kind, a path out of the tree or VERSIONS
    without a path are refused with their codes and the session goes on; a
    token reads its own account's history only; a reader is no computer."""
    import bsproto
    with Env("hostile_history") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        os.makedirs(env.path("O"))
        a = env.agent("A", env.path("A"))
        other = env.agent("O", env.path("O"))
        write_file(os.path.join(a.dir, "mine.txt"), "A's\n")
        write_file(os.path.join(other.dir, "theirs.txt"), "O's\n")
        wait_content(os.path.join(srv.tree(a.token), "mine.txt"), "A's\n")
        wait_content(os.path.join(srv.tree(other.token), "theirs.txt"), "O's\n")

        sock = bsproto.connect(srv.port)
        w = bsproto.hello(sock, a.token, name="old", max_version=bsproto.ATTR_VERSION)
        check(w["version"] == bsproto.ATTR_VERSION, "WELCOME: %r" % (w,))
        m = _history(sock, 1, "LOG")
        check(m["type"] == "ERROR" and m["name"] == "PROTOCOL", "HISTORY in a version 3 session: %r" % (m,))
        sock.close()

        sock = bsproto.connect(srv.port)
        w = bsproto.hello(sock, a.token, name="reader", max_version=bsproto.HISTORY_VERSION)
        check(w["version"] == bsproto.HISTORY_VERSION, "WELCOME: %r" % (w,))
        for req, (what, path, code) in enumerate([(9, b"", "PROTOCOL"), (0, b"", "PROTOCOL"),
                                                  ("VERSIONS", b"", "BAD_PATH"), ("LOG", b"../x", "BAD_PATH"),
                                                  ("TREE", b"/etc", "BAD_PATH"), ("DELETED", b"a\0b", "BAD_PATH"),
                                                  ("VERSIONS", b"a//b", "BAD_PATH")], start=2):
            m = _history(sock, req, what, path)
            check(isinstance(m, dict) and m["type"] == "ERROR" and m["name"] == code and m["req"] == req,
                  "HISTORY %r %r: %r, want %s" % (what, path, m, code))
        bsproto.ping(sock)
        log = _history(sock, 20, "LOG")
        check([r["path"] for r in log] == [b"mine.txt"], "A's log over the wire: %r" % (log,))
        check(log[0]["device_name"] == b"A" and log[0]["time"] > 0, "row fields: %r" % (log[0],))
        tree = _history(sock, 21, "TREE", seq=log[0]["seq"])
        check([r["path"] for r in tree] == [b"mine.txt"] and tree[0]["until"] == 0, "A's tree: %r" % (tree,))
        check(_history(sock, 22, "TREE", b"theirs.txt") == [], "A's token sees another account's path")
        check(_history(sock, 23, "LOG", limit=1, time=int(time.time()) + 3600) == [], "LOG time bound")
        sock.close()
        # The raw reader (device 0) and the command are not the account's computers.
        _cli("log", "--state-dir", a.state_dir)
        check(all(x["device"] in ("A",) for x in _json("log", "--state-dir", a.state_dir)), "devices")
        import sqlite3
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(srv.storage, a.account, "meta.db"), uri=True)
        names = sorted(n for (n,) in db.execute("SELECT name FROM devices"))
        db.close()
        check(names == ["A"], "readers (device 0) recorded among the account's computers: %r" % (names,))
