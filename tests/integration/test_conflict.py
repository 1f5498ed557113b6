"""Conflicts and offline changes: nothing may be lost, nothing duplicated."""

import os

import harness
import re
import shutil
import time

from harness import (Env, Relay, assert_trees_equal, check, conflict_copies,
                     read_bytes, snapshot, wait_content, wait_tree,
                     wait_until, write_file)

CONFLICT_RE = r"\.conflict-(?P<dev>[AB])-(?P<ts>\d{8}-\d{6})"


def _two(env, files):
    srv = env.server()
    adir = env.path("A")
    os.makedirs(adir)
    for rel, data in files.items():
        write_file(os.path.join(adir, rel), data)
    a = env.agent("A", adir)
    b = env.agent("B", env.path("B"), token=a.token)
    assert_trees_equal(adir, b.dir, msg="initial join")
    return srv, a, b


def _check_one_conflict(root, stem, ext, contents, msg):
    """root holds stem+ext and exactly one stem.conflict-<dev>-<ts>+ext;
    between them they hold exactly the contents {device: bytes}."""
    snap = snapshot(root, modes=False)
    copies = [k for k in snap if ".conflict-" in k]
    check(len(copies) == 1, "%s: want exactly one conflict copy in %s, have %s" % (msg, root, copies))
    m = re.fullmatch(re.escape(stem) + CONFLICT_RE + re.escape(ext), copies[0])
    check(m, "%s: conflict copy %r is not named %s.conflict-<device>-<YYYYMMDD-HHMMSS>%s"
          % (msg, copies[0], stem, ext))
    loser = m.group("dev")
    winner = "A" if loser == "B" else "B"
    check(snap[copies[0]] == ("file", contents[loser], None),
          "%s: conflict copy %r holds %r, want the content of %s: %r"
          % (msg, copies[0], snap[copies[0]][1], loser, contents[loser]))
    check(snap.get(stem + ext) == ("file", contents[winner], None),
          "%s: %r holds %r, want the content of %s: %r"
          % (msg, stem + ext, snap.get(stem + ext), winner, contents[winner]))
    return copies[0]


def test_simultaneous_conflict():
    with Env("simultaneous_conflict") as env:
        srv, a, b = _two(env, {"f.txt": "original\n", "other.txt": "untouched\n"})
        rc = b.stop()
        check(rc == 0, "agent B exited %s on SIGTERM, want 0" % rc)
        contents = {"A": b"edited on A while B was offline\n", "B": b"edited on B offline, different\n"}
        write_file(os.path.join(a.dir, "f.txt"), contents["A"])
        wait_content(os.path.join(srv.tree(a.token), "f.txt"), contents["A"], msg="A's edit on the server")
        write_file(os.path.join(b.dir, "f.txt"), contents["B"])
        b.start()

        def settled():
            for root in (a.dir, b.dir, srv.tree(a.token)):
                if len(conflict_copies(root)) < 1:
                    return False
            return True
        wait_until(settled, msg="a conflict copy on A, B and the server")
        snap = assert_trees_equal(a.dir, b.dir, msg="A and B after the conflict")
        copy = _check_one_conflict(a.dir, "f", ".txt", contents, "A")
        _check_one_conflict(b.dir, "f", ".txt", contents, "B")
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  msg="server tree equals A")
        check(snap["other.txt"][1] == b"untouched\n", "other.txt changed")
        check(any("conflict" in l and "f.txt" in l for l in a.log_lines() + b.log_lines()),
              "no agent logged the conflict on f.txt")
        # still exactly one copy a bit later (no ping-pong of copies)
        import time
        time.sleep(2)
        for root in (a.dir, b.dir, srv.tree(a.token)):
            check(conflict_copies(root) == [copy], "conflict copies in %s: %s" % (root, conflict_copies(root)))
        # backupsync status tells both computers there is one to look at;
        # once it is removed, none.
        import json
        import subprocess

        def present(x):
            r = subprocess.run([harness.CLI_BIN, "status", "--json", "--state-dir", x.state_dir],
                               stdout=subprocess.PIPE, timeout=30)
            return json.loads(r.stdout)[0]["conflicts_present"]
        wait_until(lambda: present(a) == 1 and present(b) == 1, 90, "status: one conflict copy present")
        os.unlink(os.path.join(a.dir, copy))
        wait_until(lambda: present(a) == 0 and present(b) == 0, 90, "status: no conflict copy present")


def test_new_name_taken_while_downloading():
    """A name new to B is made on B while B fetches A's new file of that
    name: B's file is not replaced but kept as a conflict copy, and both
    contents end on both computers."""
    with Env("new_name_taken_while_downloading") as env:
        srv = env.server()
        adir = env.path("A")
        os.makedirs(adir)
        write_file(os.path.join(adir, "seed.txt"), "seed\n")
        a = env.agent("A", adir)
        relay = Relay(srv.port)
        # No poll rounds: B's only round is the one its change below starts,
        # and it waits for the server's answers.
        b = env.agent("B", env.path("B"), token=a.token, port=relay.port, poll="1h")
        wait_content(os.path.join(b.dir, "seed.txt"), "seed\n")
        up = relay.hold_when_quiet()
        contents = {"A": b"made on A\n", "B": b"made on B meanwhile\n"}
        write_file(os.path.join(adir, "f.txt"), contents["A"])
        wait_content(os.path.join(srv.tree(a.token), "f.txt"), contents["A"])
        write_file(os.path.join(b.dir, "trigger.txt"), "go\n")
        wait_until(lambda: relay.sent_up > up, msg="B to ask the server")
        time.sleep(0.5)
        write_file(os.path.join(b.dir, "f.txt"), contents["B"])
        relay.hold = False
        wait_until(lambda: all(len(conflict_copies(d)) == 1 for d in (a.dir, b.dir)),
                   msg="a conflict copy on A and B")
        assert_trees_equal(a.dir, b.dir, msg="A and B after the conflict")
        _check_one_conflict(b.dir, "f", ".txt", contents, "B")
        check(any("conflict on f.txt" in l for l in b.log_lines()), "B did not log the conflict on f.txt")
        b.stop()
        relay.close()


def test_offline_both_sides():
    with Env("offline_both_sides") as env:
        files = {"keep.txt": "keep\n", "a-mod.txt": "a-mod 0\n", "b-mod.txt": "b-mod 0\n",
                 "a-del.txt": "a-del\n", "b-del.txt": "b-del\n", "b-ren.txt": "b-ren\n",
                 "dir/a-in.txt": "a-in 0\n", "dir/b-in.txt": "b-in 0\n", "gone-b/x.txt": "x\n"}
        srv, a, b = _two(env, files)
        check(b.stop() == 0, "agent B did not exit 0 on SIGTERM")
        A = lambda *p: os.path.join(a.dir, *p)
        B = lambda *p: os.path.join(b.dir, *p)
        # on A (online)
        write_file(A("a-mod.txt"), "a-mod 1 changed on A\n")
        write_file(A("a-new.txt"), "new on A\n")
        os.unlink(A("a-del.txt"))
        write_file(A("a-newdir", "x", "deep.txt"), "deep on A\n")
        write_file(A("dir", "a-in.txt"), "a-in 1\n")
        # on B (offline)
        write_file(B("b-mod.txt"), "b-mod 1 changed on B offline\n")
        write_file(B("b-new.txt"), "new on B\n")
        os.unlink(B("b-del.txt"))
        os.rename(B("b-ren.txt"), B("b-renamed.txt"))
        write_file(B("dir", "b-in.txt"), "b-in 1\n")
        write_file(B("b-newdir", "y", "deep.txt"), "deep on B\n")
        shutil.rmtree(B("gone-b"))
        expected = {
            "keep.txt": b"keep\n", "a-mod.txt": b"a-mod 1 changed on A\n",
            "b-mod.txt": b"b-mod 1 changed on B offline\n", "a-new.txt": b"new on A\n",
            "b-new.txt": b"new on B\n", "b-renamed.txt": b"b-ren\n",
            "dir/a-in.txt": b"a-in 1\n", "dir/b-in.txt": b"b-in 1\n",
            "a-newdir/x/deep.txt": b"deep on A\n", "b-newdir/y/deep.txt": b"deep on B\n",
        }
        exp = {}
        for rel, data in expected.items():
            exp[rel] = ("file", data, None)
            parts = rel.split("/")[:-1]
            for i in range(len(parts)):
                exp["/".join(parts[:i + 1])] = ("dir", None, None)
        wait_tree(srv.tree(a.token), {k: v for k, v in exp.items() if not k.startswith("b-") and
                                      k not in ("dir/b-in.txt",)} | {
            "b-mod.txt": ("file", b"b-mod 0\n", None), "b-del.txt": ("file", b"b-del\n", None),
            "b-ren.txt": ("file", b"b-ren\n", None), "dir/b-in.txt": ("file", b"b-in 0\n", None),
            "gone-b": ("dir", None, None), "gone-b/x.txt": ("file", b"x\n", None)},
            msg="A's changes on the server while B is offline")
        b.start()
        wait_tree(a.dir, exp, msg="A has the union of both sides' changes")
        wait_tree(b.dir, exp, msg="B has the union of both sides' changes")
        wait_tree(srv.tree(a.token), exp, msg="server has the union of both sides' changes")
        assert_trees_equal(a.dir, b.dir)
        check(not any("conflict" in l for l in a.log_lines() + b.log_lines()),
              "an agent logged a conflict for changes to different files")


def test_join_non_empty():
    with Env("join_non_empty") as env:
        srv = env.server()
        adir, bdir = env.path("A"), env.path("B")
        write_file(os.path.join(adir, "same.txt"), "same on both\n")
        write_file(os.path.join(adir, "diff.txt"), "A's version of diff\n")
        write_file(os.path.join(adir, "onlyA.txt"), "only on A\n")
        write_file(os.path.join(adir, "sub", "a.txt"), "sub on A\n")
        a = env.agent("A", adir)
        wait_content(os.path.join(srv.tree(a.token), "onlyA.txt"), "only on A\n")
        write_file(os.path.join(bdir, "same.txt"), "same on both\n")
        write_file(os.path.join(bdir, "diff.txt"), "B's version of diff, longer\n")
        write_file(os.path.join(bdir, "onlyB.txt"), "only on B\n")
        write_file(os.path.join(bdir, "sub", "b.txt"), "sub on B\n")
        b = env.agent("B", bdir, token=a.token)

        wait_until(lambda: len(conflict_copies(adir)) >= 1 and len(conflict_copies(bdir)) >= 1,
                   msg="the conflict copy of diff.txt on A and B")
        snap = assert_trees_equal(adir, bdir, msg="A and B after the merge")
        _check_one_conflict(adir, "diff", ".txt",
                            {"A": b"A's version of diff\n", "B": b"B's version of diff, longer\n"}, "A")
        for rel, data in (("same.txt", b"same on both\n"), ("onlyA.txt", b"only on A\n"),
                          ("onlyB.txt", b"only on B\n"), ("sub/a.txt", b"sub on A\n"),
                          ("sub/b.txt", b"sub on B\n")):
            check(snap.get(rel, (None, None))[1] == data, "%s after the merge: %r" % (rel, snap.get(rel)))
        check(len(snap) == 8, "unexpected entries after the merge: %s" % sorted(snap))
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  msg="server tree equals the merged tree")
