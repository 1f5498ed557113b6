"""The brake on mass deletions (max-delete): a round that would delete
more than 100 files and more than half of the tree is held, shown, and
let go by `backupsync confirm-deletes` or released by bringing the files
back; everything else keeps syncing."""

import json
import os
import shutil
import subprocess
import time

import harness
from harness import Env, check, wait_content, wait_until, write_file

EX_TEMPFAIL = 75


def _cli(*args):
    r = subprocess.run([harness.CLI_BIN] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def _status(agent):
    rc, out, err = _cli("status", "--json", "--state-dir", agent.state_dir)
    check(rc == 0, "backupsync status exited %d: %s" % (rc, err))
    return json.loads(out)[0]


def _fill(root, sub, n):
    for i in range(n):
        write_file(os.path.join(root, sub, "f%03d.txt" % i), "%s %d\n" % (sub, i))


def _count(root, sub):
    d = os.path.join(root, sub)
    return len(os.listdir(d)) if os.path.isdir(d) else 0


def _held_lines(agent):
    return [l for l in agent.log_lines() if "holding the deletion of" in l]


def test_brake_hold_and_confirm():
    """rm -rf of 150 of 170 files: held (log, status, STATUS), the rest
    syncs both ways, B keeps the files; confirm-deletes lets them go."""
    with Env("brake_confirm") as env:
        srv = env.server()
        adir = env.path("A")
        _fill(adir, "photos", 150)
        _fill(adir, "docs", 20)
        # Read all along: a datagram queue left full would block the
        # agent's sd_notify(), and so the agent.
        notify = harness.NotifyListener(env.path("notify.sock"))
        with notify.exported():
            a = env.agent("A", adir, poll="300ms")
        b = env.agent("B", env.path("B"), token=a.token, poll="300ms")
        wait_until(lambda: _count(b.dir, "photos") == 150 and _count(b.dir, "docs") == 20, 60, "B to join")
        tree = srv.tree(a.token)

        subprocess.run(["rm", "-rf", os.path.join(adir, "photos")], check=True)
        wait_until(lambda: _held_lines(a), 20, "A to hold the deletions")
        line = _held_lines(a)[0]
        check("confirm-deletes" in line and "more than 100 files and more than 50% of the 170 synced" in line,
              "the hold's log line: %r" % line)
        print("brake: " + line.strip())
        # rm -rf removes one file after another: a first round of 10 or
        # fewer goes at once; from the 11th the burst waits and is held whole.
        wait_until(lambda: not os.path.exists(os.path.join(adir, "photos")) and
                   _status(a)["held_deletes"] + (150 - _count(tree, "photos")) == 150, 10,
                   "every deletion of photos/ held or sent")
        st = _status(a)
        held = st["held_deletes"]
        print("brake: %d deletions held, %d went before the hold" % (held, 150 - held))
        check(st["state"] == "holding deletions" and held >= 140, "status: %r" % st)
        check("holding the deletion of %d files" % held in line, "the log line names %d: %r" % (held, line))
        rc, out, _ = _cli("status", "--state-dir", a.state_dir)
        check(rc == 0 and "holding deletions" in out and "%d files" % held in out and "confirm-deletes" in out,
              "status text: %s" % out)
        try:
            wait_until(lambda: any("STATUS=%d DELETIONS HELD" % held in m for m in list(notify.said)), 10,
                       "STATUS= to say the deletions are held")
        finally:
            notify.close()

        # Everything else syncs, both ways, while the deletions wait.
        write_file(os.path.join(adir, "docs/new.txt"), "new\n")
        wait_content(os.path.join(b.dir, "docs/new.txt"), "new\n", timeout=15)
        write_file(os.path.join(b.dir, "docs/fromb.txt"), "b\n")
        wait_content(os.path.join(adir, "docs/fromb.txt"), "b\n", timeout=15)
        time.sleep(1)
        check(_count(tree, "photos") == held and _count(b.dir, "photos") == held,
              "held deletions reached the server (%d) or B (%d)" % (_count(tree, "photos"), _count(b.dir, "photos")))
        check(not os.path.exists(os.path.join(adir, "photos")), "the pull brought the held files back to A")
        check(len(_held_lines(a)) == 1, "the hold was logged %d times, want once" % len(_held_lines(a)))

        t0 = time.monotonic()
        rc, out, err = _cli("confirm-deletes", "--state-dir", a.state_dir)
        check(rc == 0 and "deleted %d files" % held in out, "confirm-deletes: %d %r %r" % (rc, out, err))
        print("brake: confirm-deletes answered in %.1f s: %s" % (time.monotonic() - t0, out.strip()))
        wait_until(lambda: _count(tree, "photos") == 0 and _count(b.dir, "photos") == 0, 15,
                   "the confirmed deletions on the server and B")
        check(_count(b.dir, "docs") == 22, "B's docs: %r" % sorted(os.listdir(os.path.join(b.dir, "docs"))))
        st = _status(a)
        check(st["held_deletes"] == 0 and st["state"] == "in sync", "status after confirming: %r" % st)
        check(any("as confirmed with backupsync confirm-deletes" in l for l in a.log_lines()),
              "the let-go was not logged")
        rc, out, err = _cli("confirm-deletes", "--state-dir", a.state_dir)
        check(rc == 66 and "no deletions are held" in err, "confirm with nothing held: %d %r" % (rc, err))


def test_brake_released_by_restoring():
    """Held deletions brought back with backupsync restore: the hold ends,
    nothing was deleted anywhere. Below the limit (101 of 303, a third)
    deletions go as usual."""
    with Env("brake_restore") as env:
        srv = env.server()
        adir = env.path("A")
        _fill(adir, "photos", 150)
        a = env.agent("A", adir, poll="300ms")
        b = env.agent("B", env.path("B"), token=a.token, poll="300ms")
        wait_until(lambda: _count(b.dir, "photos") == 150, 60, "B to join")
        tree = srv.tree(a.token)
        before = int(time.time())
        time.sleep(1.1)

        shutil.rmtree(os.path.join(adir, "photos"))
        wait_until(lambda: _held_lines(a), 20, "A to hold the deletions")
        rc, out, err = _cli("restore", "photos", "--at", "@%d" % before, "--state-dir", a.state_dir)
        check(rc == 0, "backupsync restore: %d %s %s" % (rc, out, err))
        wait_until(lambda: _count(adir, "photos") == 150, 15, "the files back on A")
        st = wait_until(lambda: (lambda s: s if s["state"] == "in sync" else None)(_status(a)), 15,
                        "the hold to end")
        check(st["held_deletes"] == 0, "status after restoring: %r" % st)
        check(any("deletions no longer held" in l for l in a.log_lines()), "the release was not logged")
        time.sleep(1)
        check(_count(tree, "photos") == 150 and _count(b.dir, "photos") == 150, "a held deletion went out")
        # A first round of 10 or fewer deletions goes before the burst is
        # seen; nothing more.
        rc, out, _ = _cli("log", "--state-dir", a.state_dir)
        dels = [l for l in out.splitlines() if " delete " in l]
        check(rc == 0 and len(dels) <= 10, "the account's log shows %d deletions: %s" % (len(dels), dels[:20]))

        # Within the limit: 101 files of 303 is a third of the tree.
        _fill(adir, "more", 153)
        wait_until(lambda: _count(b.dir, "more") == 153, 30, "more/ on B")
        for i in range(101):
            os.unlink(os.path.join(adir, "more", "f%03d.txt" % i))
        wait_until(lambda: _count(b.dir, "more") == 52, 20, "101 deletions on B")
        check(len(_held_lines(a)) == 1, "a deletion within the limit was held")


def test_brake_once_and_config():
    """--once: the hold exits 75 and deletes nothing; confirm-deletes with
    the agent stopped is taken at its next run. --max-delete no turns the
    brake off; a lower limit holds less."""
    with Env("brake_once") as env:
        srv = env.server()
        adir = env.path("A")
        _fill(adir, "x", 120)
        write_file(os.path.join(adir, "keep.txt"), "keep\n")
        a = env.agent("A", adir)
        wait_until(lambda: _count(srv.tree(a.token), "x") == 120, 30, "x/ on the server")
        a.stop()
        tree = srv.tree(a.token)
        shutil.rmtree(os.path.join(adir, "x"))
        rc, _, err = a.run_once()
        check(rc == EX_TEMPFAIL, "--once with held deletions exited %d, want 75: %s" % (rc, err[-2000:]))
        check("holding the deletion of 120 files" in err, "no hold logged: %s" % err[-2000:])
        check(_count(tree, "x") == 120, "--once deleted what it held")
        # What the state directory holds is read with care: a confirmation
        # that is not a count lets nothing go, and is dropped.
        confirm = os.path.join(a.state_dir, "confirm-deletes")
        write_file(confirm, "-5\n")
        rc, _, err = a.run_once()
        check(rc == EX_TEMPFAIL and "not a number" in err and not os.path.exists(confirm) and _count(tree, "x") == 120,
              "a confirmation of -5: %d %s" % (rc, err[-1000:]))
        rc, out, err = _cli("confirm-deletes", "--state-dir", a.state_dir)
        check(rc == 0 and "not running" in out, "confirm-deletes, agent stopped: %d %r %r" % (rc, out, err))
        rc, _, err = a.run_once()
        check(rc == 0, "--once after confirming exited %d: %s" % (rc, err[-2000:]))
        check(_count(tree, "x") == 0, "the confirmed deletions did not reach the server")

        # Off, and lower.
        _fill(adir, "y", 120)
        rc, _, err = a.run_once()
        check(rc == 0 and _count(tree, "y") == 120, "upload of y/: %d %s" % (rc, err[-1000:]))
        shutil.rmtree(os.path.join(adir, "y"))
        a.args = ["--max-delete", "no"]
        rc, _, err = a.run_once()
        check(rc == 0 and _count(tree, "y") == 0, "--max-delete no still held: %d %s" % (rc, err[-1000:]))
        _fill(adir, "z", 12)
        a.args = ["--max-delete", "10"]
        rc, _, err = a.run_once()
        check(rc == 0 and _count(tree, "z") == 12, "upload of z/: %d" % rc)
        for i in range(11):
            os.unlink(os.path.join(adir, "z", "f%03d.txt" % i))
        rc, _, err = a.run_once()
        check(rc == EX_TEMPFAIL and "(more than 10 files, max-delete)" in err, "--max-delete 10 did not hold 11: %d %s"
              % (rc, err[-1000:]))
        r = subprocess.run([harness.AGENT_BIN, "--max-delete", "lots"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        check(r.returncode == 64 and b"--max-delete takes" in r.stderr,
              "--max-delete lots: %d %r" % (r.returncode, r.stderr))
