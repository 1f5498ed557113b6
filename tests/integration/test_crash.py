"""The server killed (SIGKILL) in the middle of transfers: nothing partial
becomes visible, the metadata is repaired at the next start, agents
reconnect by themselves and everything converges."""

import os
import subprocess
import time

from harness import (SERVER_BIN, Env, assert_trees_equal, check, read_bytes,
                     wait_until, write_file)

MiB = 1 << 20


def _two(env):
    srv = env.server()
    adir = env.path("A")
    os.makedirs(adir)
    write_file(os.path.join(adir, "seed.txt"), "seed\n")
    a = env.agent("A", adir, poll="1s")
    b = env.agent("B", env.path("B"), token=a.token, poll="1s")
    assert_trees_equal(adir, b.dir, msg="initial join")
    return srv, a, b


def _tree_files(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = p
    return out


def _no_partial_visible(srv, a):
    """Every file the server shows is whole: its bytes are A's bytes."""
    tree = srv.tree(a.token)
    for rel, p in _tree_files(tree).items():
        check(not os.path.basename(rel).startswith(".backupsync-tmp"),
              "temporary file visible in the server's tree: %s" % rel)
        src = os.path.join(a.dir, rel)
        check(os.path.exists(src), "server tree holds %s, which A never had" % rel)
        check(read_bytes(p) == read_bytes(src),
              "partial or wrong content visible in the server's tree: %s (%d of %d bytes)"
              % (rel, os.path.getsize(p), os.path.getsize(src)))


def _verify(srv):
    r = subprocess.run([SERVER_BIN, "--verify", "--storage", srv.storage],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = r.stdout.decode(errors="replace")
    check(r.returncode == 0, "backupsyncd --verify found differences (exit %d):\n%s" % (r.returncode, out))
    check("0 with differences" in out, "unexpected --verify output:\n%s" % out)


def _kill_restart_converge(srv, a, b, write, when):
    write()
    time.sleep(when)
    srv.kill9()
    _no_partial_visible(srv, a)
    srv.start()
    snap = assert_trees_equal(a.dir, b.dir, timeout=120, msg="after the server was killed")
    assert_trees_equal(a.dir, srv.tree(a.token), timeout=30, modes=False, msg="server tree after the kill")
    check(not any(".conflict-" in k for k in snap), "conflict copies after a server kill: %s"
          % [k for k in snap if ".conflict-" in k])
    srv.stop()
    _verify(srv)
    srv.start()
    return snap


def test_server_killed_burst():
    with Env("server_killed_burst") as env:
        srv, a, b = _two(env)

        def burst():
            # Each file is moved in whole, so whatever the server holds of
            # it must be exactly A's bytes: anything else was partial.
            stage = env.path("stage")
            os.makedirs(stage)
            os.makedirs(os.path.join(a.dir, "burst"))
            for d in range(10):
                os.makedirs(os.path.join(a.dir, "burst", "d%d" % d))
                for f in range(100):
                    tmp = os.path.join(stage, "f")
                    write_file(tmp, "%d %d\n" % (d, f) * 50)
                    os.rename(tmp, os.path.join(a.dir, "burst", "d%d" % d, "f%03d" % f))
        snap = _kill_restart_converge(srv, a, b, burst, 0.15)
        check(sum(1 for k in snap if k.startswith("burst/")) == 1010, "burst incomplete after recovery")


def test_server_killed_large_file():
    with Env("server_killed_large_file") as env:
        srv, a, b = _two(env)

        def big():
            with open(os.path.join(a.dir, "big.bin"), "wb") as f:
                for i in range(200):
                    f.write(os.urandom(MiB))
        _kill_restart_converge(srv, a, b, big, 0.5)
        # And again while B is downloading it from the server.
        def big2():
            with open(os.path.join(a.dir, "big2.bin"), "wb") as f:
                for i in range(200):
                    f.write(os.urandom(MiB))
            wait_until(lambda: os.path.exists(os.path.join(srv.tree(a.token), "big2.bin")), 60,
                       "big2.bin stored on the server")
        _kill_restart_converge(srv, a, b, big2, 0.05)


def test_server_recovers_tree_ahead():
    """A tree changed behind the metadata's back (as a kill between the
    rename and the commit leaves it) is repaired at the next start and
    the change reaches every agent."""
    with Env("server_recovers_tree_ahead") as env:
        srv, a, b = _two(env)
        tree = srv.tree(a.token)
        srv.kill9()
        write_file(os.path.join(tree, "seed.txt"), "written, never committed\n")
        write_file(os.path.join(tree, "orphan.txt"), "orphan\n")
        r = subprocess.run([SERVER_BIN, "--verify", "--storage", srv.storage],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode(errors="replace")
        check(r.returncode == 1 and "seed.txt" in out and "orphan.txt" in out,
              "--verify did not report the differences (exit %d):\n%s" % (r.returncode, out))
        srv.start()
        wait_until(lambda: os.path.exists(os.path.join(b.dir, "orphan.txt")), 60, "orphan.txt on B")
        assert_trees_equal(a.dir, b.dir, timeout=60, msg="after recovery")
        check(read_bytes(os.path.join(a.dir, "seed.txt")) == b"written, never committed\n",
              "the repaired content did not reach A")
        check(any("not closed cleanly" in l for l in srv.log_lines()), "no recovery line in the server log")
        srv.stop()
        _verify(srv)
