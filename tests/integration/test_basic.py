"""Basic scenarios: registration, joining, every operation both ways."""

import os
import stat
import time

import bsproto
from harness import (Env, Relay, TestFailure, assert_trees_equal, check, conflict_copies, fail,
                     inotify_watches, make_small_files, read_bytes, resident_pages,
                     snapshot, wait_absent, wait_content, wait_tree, wait_until,
                     write_file)

EXEC_MTIME = 1500000000


def _populate(root):
    os.makedirs(root)
    write_file(os.path.join(root, "top.txt"), "top level\n")
    write_file(os.path.join(root, "empty-file"), b"")
    write_file(os.path.join(root, "sub dir", "file with spaces.txt"), "spaces\n")
    write_file(os.path.join(root, "sub dir", "deeper", "deepest", "leaf.bin"), bytes(range(256)) * 40)
    write_file(os.path.join(root, "Ünïcødé", "日本語ファイル.txt"), "unicode ✓\n")
    write_file(os.path.join(root, "new\nline.txt"), "name has a newline\n")
    write_file(os.path.join(root, "run.sh"), "#!/bin/sh\necho hi\n", mode=0o755, mtime=EXEC_MTIME)
    write_file(os.path.join(root, "private.txt"), "secret\n", mode=0o600)
    os.makedirs(os.path.join(root, "empty dir"))
    os.symlink("sub dir/file with spaces.txt", os.path.join(root, "link-rel"))
    os.symlink("/etc/passwd", os.path.join(root, "link-outside"))
    os.symlink("does/not/exist", os.path.join(root, "link-dangling"))
    os.mkfifo(os.path.join(root, "a-fifo"))


def test_register_and_join():
    with Env("register_and_join") as env:
        srv = env.server()
        adir = env.path("A")
        _populate(adir)
        a = env.agent("A", adir)
        expected = snapshot(adir)
        check(expected.pop("a-fifo")[0] == "other", "test setup: FIFO missing")

        # server tree equals A, without the FIFO
        exp_nomode = {k: (v[0], v[1], None) for k, v in expected.items()}
        wait_tree(srv.tree(a.token), exp_nomode, modes=False, msg="server tree equals A (no FIFO)")
        check(not os.path.lexists(os.path.join(srv.tree(a.token), "a-fifo")), "FIFO reached the server")
        check(os.path.islink(os.path.join(srv.tree(a.token), "link-outside")),
              "server stored link-outside as something other than a symlink")

        # FIFO skipped with a log line naming it
        wait_until(lambda: any("a-fifo" in l and "skip" in l.lower() for l in a.log_lines()),
                   10, "agent A to log that it skipped the FIFO a-fifo")

        # B joins into a directory that does not exist yet
        bdir = env.path("nonexistent-parent-is-ok", "B")
        os.makedirs(os.path.dirname(bdir))
        b = env.agent("B", bdir, token=a.token)
        wait_tree(bdir, expected, modes=True, msg="B equals A incl. modes, without the FIFO")

        for rel, (kind, content, mode) in expected.items():
            pa, pb = os.path.join(adir, rel), os.path.join(bdir, rel)
            sa, sb = os.lstat(pa), os.lstat(pb)
            if kind == "file":
                check(int(sa.st_mtime) == int(sb.st_mtime),
                      "mtime of %r: A %d, B %d" % (rel, sa.st_mtime, sb.st_mtime))
            if kind == "link":
                check(stat.S_ISLNK(sb.st_mode), "%r is not a symlink on B" % rel)
        st = os.lstat(os.path.join(bdir, "run.sh"))
        check(stat.S_IMODE(st.st_mode) == 0o755, "run.sh mode on B is %o" % stat.S_IMODE(st.st_mode))
        check(int(st.st_mtime) == EXEC_MTIME, "run.sh mtime on B is %d, want %d" % (st.st_mtime, EXEC_MTIME))
        check(os.readlink(os.path.join(bdir, "link-outside")) == "/etc/passwd", "link-outside target on B")
        check(os.readlink(os.path.join(bdir, "link-rel")) == "sub dir/file with spaces.txt", "link-rel target on B")
        check(not os.path.lexists(os.path.join(bdir, "a-fifo")), "FIFO arrived on B")
        check(os.path.isdir(os.path.join(bdir, "empty dir")), "empty dir missing on B")
        check(conflict_copies(adir) == [] and conflict_copies(bdir) == [], "conflict copies appeared")
        # A still holds its FIFO untouched
        check(stat.S_ISFIFO(os.lstat(os.path.join(adir, "a-fifo")).st_mode), "A's FIFO was touched")


def _two(env, name, files=None):
    """Server + A (registered with files) + B joined and in sync."""
    srv = env.server()
    adir = env.path("A")
    os.makedirs(adir)
    for rel, data in (files or {"seed.txt": "seed\n"}).items():
        write_file(os.path.join(adir, rel), data)
    a = env.agent("A", adir)
    b = env.agent("B", env.path("B"), token=a.token)
    assert_trees_equal(adir, b.dir, msg="initial join")
    return srv, a, b


def _ops_one_way(src, dst, srv_tree, tag):
    """Do every operation in src, check each arrives in dst and on the server."""
    S = lambda *p: os.path.join(src, *p)
    D = lambda *p: os.path.join(dst, *p)
    V = lambda *p: os.path.join(srv_tree, *p)

    def both(rel, data):
        wait_content(D(rel), data, msg="%s: %r = %r on the other side" % (tag, rel, data))
        wait_content(V(rel), data, msg="%s: %r = %r on the server" % (tag, rel, data))

    def gone(rel):
        wait_absent(D(rel), msg="%s: %r deleted on the other side" % (tag, rel))
        wait_absent(V(rel), msg="%s: %r deleted on the server" % (tag, rel))

    # create, modify, delete a file
    write_file(S("f-%s.txt" % tag), "created on %s\n" % tag)
    both("f-%s.txt" % tag, "created on %s\n" % tag)
    write_file(S("f-%s.txt" % tag), "modified on %s, longer content\n" % tag)
    both("f-%s.txt" % tag, "modified on %s, longer content\n" % tag)
    with open(S("f-%s.txt" % tag), "ab") as f:
        f.write(b"appended\n")
    both("f-%s.txt" % tag, "modified on %s, longer content\nappended\n" % tag)
    os.unlink(S("f-%s.txt" % tag))
    gone("f-%s.txt" % tag)

    # mkdir, mkdir -p, rmdir of a tree
    os.mkdir(S("d-%s" % tag))
    wait_until(lambda: os.path.isdir(D("d-%s" % tag)), msg="%s: mkdir arrives" % tag)
    os.makedirs(S("p-%s" % tag, "x", "y", "z"))
    write_file(S("p-%s" % tag, "x", "y", "z", "in.txt"), "deep %s\n" % tag)
    write_file(S("p-%s" % tag, "x", "mid.txt"), "mid %s\n" % tag)
    both(os.path.join("p-%s" % tag, "x", "y", "z", "in.txt"), "deep %s\n" % tag)
    both(os.path.join("p-%s" % tag, "x", "mid.txt"), "mid %s\n" % tag)
    wait_until(lambda: os.path.isdir(D("d-%s" % tag)) and os.path.isdir(V("d-%s" % tag)),
               msg="%s: empty dir on both" % tag)
    import shutil
    shutil.rmtree(S("p-%s" % tag))
    gone("p-%s" % tag)
    os.rmdir(S("d-%s" % tag))
    gone("d-%s" % tag)

    # rename a file; move a file into another dir
    write_file(S("r-%s.txt" % tag), "rename me %s\n" % tag)
    both("r-%s.txt" % tag, "rename me %s\n" % tag)
    os.rename(S("r-%s.txt" % tag), S("renamed-%s.txt" % tag))
    both("renamed-%s.txt" % tag, "rename me %s\n" % tag)
    gone("r-%s.txt" % tag)
    os.makedirs(S("target-%s" % tag))
    wait_until(lambda: os.path.isdir(D("target-%s" % tag)), msg="%s: target dir arrives" % tag)
    os.rename(S("renamed-%s.txt" % tag), S("target-%s" % tag, "moved.txt"))
    both(os.path.join("target-%s" % tag, "moved.txt"), "rename me %s\n" % tag)
    gone("renamed-%s.txt" % tag)

    # rename a directory with content
    write_file(S("target-%s" % tag, "sub", "two.txt"), "two %s\n" % tag)
    both(os.path.join("target-%s" % tag, "sub", "two.txt"), "two %s\n" % tag)
    os.rename(S("target-%s" % tag), S("dir-renamed-%s" % tag))
    both(os.path.join("dir-renamed-%s" % tag, "moved.txt"), "rename me %s\n" % tag)
    both(os.path.join("dir-renamed-%s" % tag, "sub", "two.txt"), "two %s\n" % tag)
    gone("target-%s" % tag)

    # symlink create / delete
    os.symlink("dir-renamed-%s/moved.txt" % tag, S("ln-%s" % tag))
    wait_until(lambda: os.path.islink(D("ln-%s" % tag)) and
               os.readlink(D("ln-%s" % tag)) == "dir-renamed-%s/moved.txt" % tag,
               msg="%s: symlink arrives with its target" % tag)
    wait_until(lambda: os.path.islink(V("ln-%s" % tag)), msg="%s: symlink on the server" % tag)
    os.unlink(S("ln-%s" % tag))
    gone("ln-%s" % tag)


def test_ops_both_directions():
    with Env("ops_both_directions") as env:
        srv, a, b = _two(env, "ops")
        _ops_one_way(a.dir, b.dir, srv.tree(a.token), "A")
        assert_trees_equal(a.dir, b.dir, msg="after A's operations")
        _ops_one_way(b.dir, a.dir, srv.tree(a.token), "B")
        assert_trees_equal(a.dir, b.dir, msg="after B's operations")
        assert_trees_equal(a.dir, srv.tree(a.token), modes=False, msg="server equals A")
        check(conflict_copies(a.dir) == [], "conflict copies: %s" % conflict_copies(a.dir))


def test_move_read_during_a_round():
    """A move whose events the agent reads in the middle of a round (while
    it applies what it pulled), with nothing after it, is still sent: the
    round hands it on, not a later event."""
    with Env("move_read_during_a_round") as env:
        srv = env.server()
        relay = Relay(srv.port)
        os.makedirs(env.path("A"))
        # No poll rounds: A's only round is the one the change below starts.
        a = env.agent("A", env.path("A"), port=relay.port, poll="1h")
        b = env.agent("B", env.path("B"), token=a.token)
        write_file(os.path.join(a.dir, "note.txt"), "note\n")
        os.makedirs(os.path.join(a.dir, "into"))
        wait_content(os.path.join(b.dir, "note.txt"), "note\n")
        wait_until(lambda: os.path.isdir(os.path.join(b.dir, "into")), msg="the directory on B")
        # A change starts a round; the server's answers wait in the relay.
        up = relay.hold_when_quiet()
        write_file(os.path.join(a.dir, "trigger.txt"), "go\n")
        wait_until(lambda: relay.sent_up > up, msg="A to ask the server")
        time.sleep(0.5)
        os.rename(os.path.join(a.dir, "note.txt"), os.path.join(a.dir, "into", "moved.txt"))
        relay.hold = False
        wait_content(os.path.join(b.dir, "trigger.txt"), "go\n")
        wait_content(os.path.join(b.dir, "into", "moved.txt"), "note\n", timeout=15,
                     msg="the move on B (nothing happened after it on A)")
        wait_absent(os.path.join(b.dir, "note.txt"), msg="the old name gone on B")
        a.stop()
        relay.close()


def test_notify_read_during_a_round():
    """Another computer's change announced (NOTIFY) while this one waits
    for the answers of a round of its own is pulled at once after that
    round, not at the next poll."""
    with Env("notify_read_during_a_round") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        relay = Relay(srv.port)
        # No poll rounds: only a NOTIFY makes B pull.
        b = env.agent("B", env.path("B"), token=a.token, port=relay.port, poll="1h")
        write_file(os.path.join(a.dir, "seed.txt"), "seed\n")
        wait_content(os.path.join(b.dir, "seed.txt"), "seed\n")
        # B's round asks; the answer, made now, and the NOTIFY of A's change
        # below reach B together once the relay lets them through.
        up = relay.hold_when_quiet()
        write_file(os.path.join(b.dir, "trigger.txt"), "go\n")
        wait_until(lambda: relay.sent_up > up, msg="B to ask the server")
        write_file(os.path.join(a.dir, "from-a.txt"), "A's change\n")
        wait_until(lambda: os.path.isfile(os.path.join(srv.tree(a.token), "from-a.txt")), msg="A's change on the server")
        relay.hold = False
        wait_content(os.path.join(a.dir, "trigger.txt"), "go\n")
        wait_content(os.path.join(b.dir, "from-a.txt"), "A's change\n", timeout=15, msg="A's change on B")
        b.stop()
        relay.close()


def test_burst_2000():
    with Env("burst_2000") as env:
        srv, a, b = _two(env, "burst")
        expected = {}
        for d in range(20):
            os.makedirs(os.path.join(a.dir, "dir%02d" % d))
            for i in range(100):
                rel = "dir%02d/file%03d.txt" % (d, i)
                data = ("burst %s " % rel).encode() * (1 + (d * 100 + i) % 7)
                write_file(os.path.join(a.dir, rel), data)
                expected[rel] = data
        snap = snapshot(a.dir)
        wait_tree(b.dir, snap, timeout=120, modes=True, msg="2000 files on B")
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  timeout=60, modes=False, msg="2000 files on the server")
        # The server logs 100 changes one by one, then 10 a second, and
        # the others once committed, in one line per commit.
        import re
        lines = srv.log_lines()
        each = [l for l in lines if re.search(r"uploaded \S+ dir\d\d/file\d+\.txt \(", l)]
        burst = [int(m.group(1)) for m in (re.search(r"uploaded \S+ (\d+) more files \(", l) for l in lines) if m]
        print("server: %d uploads logged one by one, %s in bursts" % (len(each), burst))
        check(burst and len(each) < 1000 and sum(burst) + len(each) >= 2000,
              "the server logged %d uploads one by one and %s in bursts" % (len(each), burst))


def _slices(agent):
    """The sizes of the slices the agent planned ("sending N changes", debug)."""
    import re
    return [int(m.group(1)) for m in re.finditer(r"sending (\d+) changes", agent.log_text())]


def test_first_backup_in_slices():
    """A first backup goes in slices (512 changes, then 4,096 at a time,
    each planned while the answers to the one before are on their way),
    and nothing is lost between them; later, a rescan that finds a new
    subtree bigger than a slice and more than half of the synced files
    deleted still holds every deletion (known directories are never put
    off to a later slice, so the brake sees them all at once)."""
    os.environ["BACKUPSYNC_LOG_LEVEL"] = "debug"
    with Env("first_backup_in_slices") as env:
        srv = env.server()
        adir = env.path("A")
        for t in range(25):
            for s in range(8):
                d = os.path.join(adir, "t%02d" % t, "s%d" % s)
                os.makedirs(d)
                for f in range(90):
                    with open(os.path.join(d, "f%02d" % f), "wb") as fh:
                        fh.write(b"%d %d %d\n" % (t, s, f))
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, timeout=240, msg="B after A's first backup of 18,000 files")
        snap = snapshot(adir)
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  timeout=60, modes=False, msg="18,000 files on the server")
        sl = _slices(a)
        print("slices: %s" % sl)
        # A directory is never split: a slice may pass its size by one.
        check(len(sl) >= 5 and sl[0] <= 512 + 91 and max(sl) <= 4096 + 91 and sum(sl) >= 18000 + 225,
              "A sent the first backup in slices of 512, then at most 4,096 changes: %s" % sl)

        # Offline: 60 % of the files deleted all over, the others
        # rewritten: 18,000 changes, more than a slice, all in directories
        # the server has. --once (no quiet second to gather a burst in)
        # must still see every deletion in one plan and hold them all.
        a.stop()
        for t in range(25):
            for s in range(8):
                for f in range(90):
                    p = os.path.join(adir, "t%02d" % t, "s%d" % s, "f%02d" % f)
                    if f < 54:
                        os.unlink(p)
                    else:
                        with open(p, "ab") as fh:
                            fh.write(b"rewritten\n")
        n0 = len(_slices(a))
        rc, _, err = a.run_once(timeout=300)
        check(rc != 0 and "holding the deletion of 10800 files" in err,
              "--once exited %d and held all 10,800 deletions at once: %s" % (rc, err[-2000:]))
        print("slices after the restart: %s" % _slices(a)[n0:])
        tree = srv.tree(a.token)
        left = sum(len(os.listdir(os.path.join(tree, "t%02d" % t, "s%d" % s))) for t in range(25) for s in range(8))
        check(left == 18000, "the server still has all 18,000 files, %d" % left)
        wait_content(os.path.join(b.dir, "t24", "s7", "f89"), b"24 7 89\nrewritten\n", timeout=120,
                     msg="the rewritten files on B")
        check(os.path.exists(os.path.join(b.dir, "t00", "s0", "f00")), "B keeps the files whose deletion is held")


def test_first_scan_watches_as_it_lists():
    """The first comparison adds each directory's watch just before it
    lists it, in one walk of the tree, so the first request leaves before
    the last directory was looked at. A change made while it runs, in a
    directory listed already or not yet, reaches the server; afterwards
    every directory is watched, and a change deep in the last one arrives
    by its event, not by a poll."""
    os.environ["BACKUPSYNC_LOG_LEVEL"] = "debug"
    with Env("first_scan_watches_as_it_lists") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 40, 150, "d%02d", "f%03d")
        for d in range(40):
            os.makedirs(os.path.join(adir, "d%02d" % d, "sub", "deep"))
            write_file(os.path.join(adir, "d%02d" % d, "sub", "deep", "x"), b"x %d\n" % d)
        ndirs = 40 * 3
        a = env.agent("A", adir, poll="1h")
        # While the first scan and upload run (6,000 files, several slices).
        with open(os.path.join(adir, "d00", "f000"), "ab") as f:
            f.write(b"appended at once\n")
        write_file(os.path.join(adir, "d39", "sub", "deep", "new"), b"made during the first scan\n")
        os.makedirs(os.path.join(adir, "d39", "sub", "deep", "newdir"))
        write_file(os.path.join(adir, "d39", "sub", "deep", "newdir", "n"), b"in a new directory\n")
        snap = snapshot(adir)
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  timeout=120, modes=False, msg="the first backup with the changes made during it")
        wait_until(lambda: "watching %d directories of" % (ndirs + 2) in a.log_text(), 30,
                   "A to log that it watches the %d directories" % (ndirs + 2))
        log = a.log_text()
        first = log.index("sending ")
        check(log.index("watching %d directories of" % (ndirs + 2)) > first,
              "the watch count is logged after the first scan, not before it")
        check(inotify_watches(a.popen.pid) == ndirs + 2,
              "%d inotify watches, want %d" % (inotify_watches(a.popen.pid), ndirs + 2))
        # Every directory is watched: a change in the last one arrives at once
        # (the poll is an hour away).
        write_file(os.path.join(adir, "d39", "sub", "deep", "later"), b"after the first scan\n")
        wait_content(os.path.join(srv.tree(a.token), "d39", "sub", "deep", "later"), b"after the first scan\n",
                     timeout=10, msg="a change in the last directory, by its watch")


def test_backup_leaves_page_cache():
    """A backup drops from the page cache what it read from disk, and only
    that: files that were cold (a small one, read by the probe alone, and
    bigger ones read ahead) are not cached after the first backup, files
    that were cached still are; the server has them all."""
    with Env("backup_leaves_page_cache") as env:
        srv = env.server()
        adir = env.path("A")
        os.makedirs(adir)
        sizes = {"cold-small": 8 * 1024, "cold-big": 512 * 1024, "cold-huge": 3 * 1024 * 1024,
                 "hot-small": 8 * 1024, "hot-big": 512 * 1024}
        data = {}
        for name, size in sizes.items():
            data[name] = os.urandom(size)
            p = os.path.join(adir, name)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, data[name])
            os.fsync(fd)
            if name.startswith("cold"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            if name.startswith("hot"):
                read_bytes(p)
        pages = {n: (s + 4095) // 4096 for n, s in sizes.items()}
        before = {n: resident_pages(os.path.join(adir, n)) for n in sizes}
        check(all(before[n] == 0 for n in sizes if n.startswith("cold")) and
              all(before[n] == pages[n] for n in sizes if n.startswith("hot")),
              "set up: cold files out of the page cache, hot ones in: %s" % before)
        a = env.agent("A", adir, start=False)
        rc, out, err = a.run_once(timeout=120)
        check(rc == 0, "--once exited %d: %s" % (rc, err[-2000:]))
        after = {n: resident_pages(os.path.join(adir, n)) for n in sizes}
        check(all(after[n] == 0 for n in sizes if n.startswith("cold")),
              "what the backup read from disk is not left in the page cache: %s" % after)
        check(all(after[n] == pages[n] for n in sizes if n.startswith("hot")),
              "what was cached before still is: %s" % after)
        token = next(l.split(" ", 1)[1] for l in out if l.startswith("ID: "))
        for name in sizes:
            check(read_bytes(os.path.join(srv.tree(token), name)) == data[name], "%s on the server" % name)


def test_backup_from_tmpfs():
    """A tree on tmpfs, which cannot be read uncached (RWF_DONTCACHE is
    refused there, as on kernels before 6.14): the files read ahead into
    memory are read again as usual, the rest the old way, and the server
    and a second computer get every one of them whole."""
    import shutil
    import tempfile
    with Env("backup_from_tmpfs") as env:
        srv = env.server()
        adir = tempfile.mkdtemp(prefix="bs-test-tmpfs-", dir="/dev/shm")
        try:
            for d in range(10):
                for i in range(40):
                    write_file(os.path.join(adir, "d%d" % d, "f%02d" % i), os.urandom(100 + 997 * i))
            write_file(os.path.join(adir, "big.bin"), os.urandom(3 << 20))
            a = env.agent("A", adir, start=False)
            rc, out, err = a.run_once(timeout=120)
            check(rc == 0, "--once exited %d: %s" % (rc, err[-2000:]))
            token = next(l.split(" ", 1)[1] for l in out if l.startswith("ID: "))
            want = snapshot(adir)
            wait_tree(srv.tree(token), {k: (v[0], v[1], None) for k, v in want.items()}, timeout=30,
                      msg="the server's tree after a backup from tmpfs")
            b = env.agent("B", env.path("B"), token=token)
            assert_trees_equal(adir, b.dir, msg="B after a backup from tmpfs")
        finally:
            shutil.rmtree(adir, ignore_errors=True)


def test_backup_leaves_access_times():
    """Backing up reads every file but moves no access time (mail readers
    take an mbox read after its last change as read): files read ahead
    and read in chunks by a first backup, the ignore file, a file sent
    again when it changes while watched, and the server's copies when a
    second computer joins. Each atime is set older than the mtime, so a
    relatime mount would move it at the first read."""
    old_atime, mtime = 1000000000 * 10**9, 1600000000 * 10**9
    with Env("backup_leaves_access_times") as env:
        srv = env.server()
        adir = env.path("A")
        files = {"small.txt": os.urandom(3000), "sub/big.bin": os.urandom(3 << 20),
                 ".bsignore": b"*.tmp\n", "mbox": b"From a@b\n\nhello\n"}
        for name, data in files.items():
            write_file(os.path.join(adir, name), data)
            os.utime(os.path.join(adir, name), ns=(old_atime, mtime))

        def atimes(root):
            return {n: os.stat(os.path.join(root, n)).st_atime_ns for n in files}

        a = env.agent("A", adir, start=False)
        rc, out, err = a.run_once(timeout=120)
        check(rc == 0, "--once exited %d: %s" % (rc, err[-2000:]))
        token = next(l.split(" ", 1)[1] for l in out if l.startswith("ID: "))
        for name, data in files.items():
            check(read_bytes(os.path.join(srv.tree(token), name)) == data, "%s on the server" % name)
        check(atimes(adir) == dict.fromkeys(files, old_atime),
              "access times after the first backup: %s" % atimes(adir))

        # Changed while watched: read again and sent, its atime still old.
        a = env.agent("A", adir, token=token)
        mbox = os.path.join(adir, "mbox")
        more = b"From c@d\n\nsecond\n"
        with open(mbox, "ab") as f:
            f.write(more)
        os.utime(mbox, ns=(old_atime, os.stat(mbox).st_mtime_ns))
        wait_content(os.path.join(srv.tree(token), "mbox"), files["mbox"] + more,
                     msg="the appended mbox on the server")
        check(os.stat(mbox).st_atime_ns == old_atime, "the mbox's access time after it was sent again")

        # The server reads its copies for a joining computer: theirs stay too.
        stored = srv.tree(token)
        for name in files:
            os.utime(os.path.join(stored, name), ns=(old_atime, os.stat(os.path.join(stored, name)).st_mtime_ns))
        b = env.agent("B", env.path("B"), token=token)
        assert_trees_equal(adir, b.dir, msg="B after joining")
        check(atimes(stored) == dict.fromkeys(files, old_atime),
              "the server's access times after a join: %s" % atimes(stored))


def test_server_leaves_page_cache():
    """The server drops a burst's files from the page cache once they are
    on disk, and keeps a lone edit cached for the computers about to pull
    it."""
    with Env("server_leaves_page_cache") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 4, 50)
        a = env.agent("A", adir)
        tree = srv.tree(a.token)
        names = [os.path.join("d%03d" % d, "f%02d" % f) for d in range(4) for f in range(50)]
        wait_until(lambda: all(os.path.exists(os.path.join(tree, n)) for n in names), 60,
                   "the 200 files on the server")

        def cached():
            return sum(resident_pages(os.path.join(tree, n)) for n in names)
        try:
            wait_until(lambda: cached() == 0, 30, "")
        except TestFailure:
            fail("the burst's files out of the server's page cache (%d pages left)" % cached())
        # A change a second after the burst is not part of it.
        time.sleep(1.2)
        write_file(os.path.join(adir, "d000", "edit"), b"one small edit\n")
        p = os.path.join(tree, "d000", "edit")
        wait_content(p, b"one small edit\n", timeout=30, msg="the edit on the server")
        check(resident_pages(p) == 1, "a lone edit stays in the server's page cache (%d pages)" % resident_pages(p))


def test_burst_in_small_batches_leaves_page_cache():
    """A burst is told by its files, not by its batches: twenty files
    uploaded one by one, each waiting for its answer (so each is a batch
    of its own, as a slow computer's or a big file's are), all leave the
    server's page cache. Three files a second later stay cached."""
    with Env("burst_in_small_batches_leaves_page_cache") as env:
        srv = env.server()
        os.makedirs(env.path("A"))
        a = env.agent("A", env.path("A"))
        a.stop()
        tree = srv.tree(a.token)
        sock = bsproto.connect(srv.port)
        bsproto.hello(sock, a.token, device=os.urandom(16), name="slow")

        def upload(names):
            for i, n in enumerate(names):
                ans = bsproto.put(sock, 100 + i, n, 0, os.urandom(8192))
                check(ans["type"] == "ACK", "%s acknowledged: %r" % (n, ans))

        burst = ["burst%02d" % i for i in range(20)]
        upload(burst)
        try:
            wait_until(lambda: not any(resident_pages(os.path.join(tree, n)) for n in burst), 10, "")
        except TestFailure:
            fail("the burst out of the server's page cache: %s" %
                 {n: resident_pages(os.path.join(tree, n)) for n in burst})
        time.sleep(1.2)
        few = ["few%d" % i for i in range(3)]
        upload(few)
        got = {n: resident_pages(os.path.join(tree, n)) for n in few}
        check(all(v == 2 for v in got.values()), "three files after the burst stay cached: %s" % got)


def test_join_leaves_page_cache():
    """A join drops from the page cache what it wrote, once it is synced,
    and the server what it read from disk for it; files the server had
    cached stay cached, and a lone change pulled later stays cached for
    the user about to open it."""
    with Env("join_leaves_page_cache") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 2, 20)
        for i in range(3):
            write_file(os.path.join(adir, "big%d" % i), os.urandom(256 * 1024))
        names = [os.path.join("d%03d" % d, "f%02d" % f) for d in range(2) for f in range(20)]
        names += ["big%d" % i for i in range(3)]
        a = env.agent("A", adir)
        tree = srv.tree(a.token)
        wait_until(lambda: all(os.path.exists(os.path.join(tree, n)) for n in names), 60, "the files on the server")

        def cached(root, which):
            return {n: resident_pages(os.path.join(root, n)) for n in which}
        try:
            wait_until(lambda: not any(cached(tree, names).values()), 30, "")
        except TestFailure:
            fail("the burst out of the server's page cache: %s" % {k: v for k, v in cached(tree, names).items() if v})
        hot = ["d000/f00", "big0"]
        for n in hot:
            read_bytes(os.path.join(tree, n))
        cold = [n for n in names if n not in hot]
        b = env.agent("B", env.path("B"), token=a.token, start=False)
        rc, _, err = b.run_once(timeout=120, token=a.token)
        check(rc == 0, "B's join exited %d: %s" % (rc, err[-2000:]))
        # Looked at before anything reads the files again.
        got = cached(b.dir, names)
        check(not any(got.values()), "what the join wrote left B's page cache once synced: %s" % got)
        # The server lets go of the last contents when it sees B leave.
        try:
            wait_until(lambda: not any(cached(tree, cold).values()), 10, "")
        except TestFailure:
            fail("what the server read from disk for the join left its page cache: %s" % cached(tree, cold))
        got = cached(tree, hot)
        check(all(got[n] == (os.path.getsize(os.path.join(tree, n)) + 4095) // 4096 for n in hot),
              "what the server had cached still is: %s" % got)
        assert_trees_equal(adir, b.dir, timeout=1, msg="B after its join")
        write_file(os.path.join(adir, "d000", "edit"), b"one small edit\n")
        wait_content(os.path.join(tree, "d000", "edit"), b"one small edit\n", timeout=30, msg="the edit on the server")
        rc, _, err = b.run_once(timeout=120, token=a.token)
        check(rc == 0, "B's pull exited %d: %s" % (rc, err[-2000:]))
        p = os.path.join(b.dir, "d000", "edit")
        check(read_bytes(p) == b"one small edit\n", "the edit on B")
        check(resident_pages(p) == 1, "a lone pulled change stays in B's page cache (%d pages)" % resident_pages(p))


def test_join_reads_events_during_batch():
    """A join of 6,000 files: each file placed and each directory made
    queues inotify events (downloads are written in an unwatched
    directory, so nothing more); an overflow of the kernel's queue (16,384
    by default) would cost a rescan of the whole tree. None may happen."""
    with Env("join_reads_events_during_batch") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 60, 100, "d%02d", "f%03d")
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, timeout=180, msg="B after joining 6,000 files")
        over = [l for l in b.log_lines() if "overflowed" in l]
        check(not over, "B's event queue never overflowed during the join: %s" % over[:3])


def _count_files(root):
    return sum(len(fs) for _, _, fs in os.walk(root))


def test_join_compares_nothing_it_brought():
    """A join into an empty directory makes its first comparison before
    the pull (a listing of one empty directory), watches each directory
    it makes at once and knows the events of the files it places as its
    own: nothing it brought is looked at again as a change. Compared
    after the pull, as before, that was every one of the 2,000 files."""
    os.environ["BACKUPSYNC_LOG_LEVEL"] = "debug"
    with Env("join_compares_nothing_it_brought") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(os.path.join(adir, "top"), 20, 100)
        a = env.agent("A", adir)
        wait_until(lambda: _count_files(srv.tree(a.token)) == 2000, 120, "A's files on the server")
        b = env.agent("B", env.path("B"), token=a.token, start=False)
        rc, _, err = b.run_once(timeout=120, token=a.token)
        check(rc == 0, "B's join exited %d: %s" % (rc, err[-2000:]))
        assert_trees_equal(adir, b.dir, timeout=1, msg="B after its join")
        events = [l for l in err.splitlines() if "event: " in l]
        check(not events, "B reported its own join as %d changes: %s" % (len(events), events[:5]))
        rounds = [l for l in err.splitlines() if "round: " in l]
        check(len(rounds) == 1, "B joined in one round: %s" % rounds)


def test_changes_during_join_are_sent():
    """While B joins 6,000 files, another program writes a file into each
    directory as soon as the pull has made it, and appends to or renames a
    file over the first file the pull placed there. The pull's own events
    are told from these, which all reach A."""
    with Env("changes_during_join_are_sent") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 60, 100, "d%02d", "f%03d")
        a = env.agent("A", adir)
        wait_until(lambda: _count_files(srv.tree(a.token)) == 6000, 120, "A's files on the server")
        bdir = env.path("B")
        os.makedirs(bdir)
        b = env.agent("B", bdir, token=a.token)
        made, edited = set(), set()
        deadline = time.monotonic() + 120
        while len(edited) < 60 and time.monotonic() < deadline:
            for d in range(60):
                dp = os.path.join(bdir, "d%02d" % d)
                if d not in made and os.path.isdir(dp):
                    write_file(os.path.join(dp, "from-b"), b"made on B in %d\n" % d)
                    made.add(d)
                first = os.path.join(dp, "f000")
                if d in made and d not in edited and os.path.exists(first):
                    if d % 2:
                        with open(first, "ab") as f:
                            f.write(b"appended on B\n")
                    else:
                        write_file(os.path.join(dp, "new-f000"), b"replaced on B %d\n" % d)
                        os.rename(os.path.join(dp, "new-f000"), first)
                    edited.add(d)
            time.sleep(0.002)
        check(len(edited) == 60, "the pull made every directory and its first file (%d of 60)" % len(edited))
        assert_trees_equal(adir, bdir, timeout=180, msg="A with what was changed on B during its join")
        for d in (0, 1):
            got = read_bytes(os.path.join(adir, "d%02d" % d, "f000"))
            want = b"replaced on B 0\n" if d == 0 else b"1 0\nappended on B\n"
            check(got == want, "d%02d/f000 on A: %r" % (d, got))
        check(read_bytes(os.path.join(adir, "d59", "from-b")) == b"made on B in 59\n", "d59/from-b on A")


def test_churn_during_first_backup():
    """Files deleted, replaced, rewritten and moved while the first upload
    reads ahead of what it sends: the server and a second computer end with
    what the disk holds, nothing that was there only for a moment."""
    import random
    with Env("churn_during_first_backup") as env:
        srv = env.server()
        adir = env.path("A")
        rnd = random.Random(7)
        for d in range(30):
            os.makedirs(os.path.join(adir, "d%02d" % d))
            for i in range(100):
                write_file(os.path.join(adir, "d%02d/f%03d" % (d, i)), os.urandom(rnd.choice((100, 4096, 20000))))
        for i in range(3):
            write_file(os.path.join(adir, "big%d.bin" % i), os.urandom(4 << 20))
        a = env.agent("A", adir)
        # While the upload runs: delete, rename over, rewrite, move a directory.
        picks = rnd.sample(range(30 * 100), 900)
        for k, n in enumerate(picks):
            rel = os.path.join(adir, "d%02d/f%03d" % (n // 100, n % 100))
            if not os.path.exists(rel):
                continue
            if k % 3 == 0:
                os.unlink(rel)
            elif k % 3 == 1:
                write_file(rel + ".new", b"replaced %d\n" % n)
                os.rename(rel + ".new", rel)
            else:
                with open(rel, "r+b") as f:
                    f.write(b"rewritten in place %d" % n)
        os.rename(os.path.join(adir, "d29"), os.path.join(adir, "moved29"))
        os.unlink(os.path.join(adir, "big1.bin"))
        write_file(os.path.join(adir, "big2.bin"), b"small now\n")
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, timeout=180, msg="B after the churn")
        snap = snapshot(adir)
        wait_tree(srv.tree(a.token), {k: (v[0], v[1], None) for k, v in snap.items()},
                  timeout=60, modes=False, msg="server tree after the churn")


def test_editor_save():
    with Env("editor_save") as env:
        srv, a, b = _two(env, "editor", {"doc.txt": "version 0\n"})
        path = os.path.join(a.dir, "doc.txt")
        for i in range(1, 8):
            # as vim/gedit: write a temporary file, fsync, rename over
            tmp = os.path.join(a.dir, ".doc.txt.swp%d" % i if i % 2 else ".goutputstream-%d" % i)
            with open(tmp, "wb") as f:
                f.write(("version %d\n" % i).encode() * i)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            if i % 3 == 0:  # sometimes wait for it to arrive, sometimes not
                wait_content(os.path.join(b.dir, "doc.txt"), ("version %d\n" % i).encode() * i)
        final = ("version 7\n").encode() * 7
        wait_content(os.path.join(b.dir, "doc.txt"), final)
        wait_content(os.path.join(srv.tree(a.token), "doc.txt"), final)
        snap = assert_trees_equal(a.dir, b.dir)
        check(sorted(snap) == ["doc.txt"], "unexpected entries: %s" % sorted(snap))
        # B's downloads directory lives while its pull runs: the content can
        # land before the pull that wrote it has ended, so leftovers are
        # whatever is still there once the pull must have ended.
        for root in (b.dir, srv.tree(a.token)):
            deadline = time.monotonic() + 10
            while True:
                leftovers = [n for n in os.listdir(root) if n != "doc.txt"]
                if not leftovers or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            check(leftovers == [], "left-over temporary files in %s: %s" % (root, leftovers))
        # Temporary files written and removed, or moved out, before the
        # agent looked (configure's conftest, a download moved away) are
        # names seen going: nothing for the verification pass to look for.
        for i in range(20):
            tmp = os.path.join(a.dir, "conftest%d.c" % i)
            write_file(tmp, "int main(void) { return %d; }\n" % i)
            if i % 2:
                os.unlink(tmp)
            else:
                os.rename(tmp, env.path("moved-out-%d" % i))
        wait_content(os.path.join(b.dir, "doc.txt"), final)
        time.sleep(1.5)
        passes = [l for l in a.log_lines() if "verification pass" in l]
        check(passes == [], "editor saves and temporary files brought the verification pass forward: %s" % passes)


def test_changing_while_read():
    """A file that changes while the agent reads it is read again: the
    upload is aborted (the server answers ABORTED) and the final content
    arrives, never a mix of old and new bytes. The file grows only once
    its upload has begun: one the agent knows is being written waits to
    settle instead of being read."""
    import threading
    with Env("changing_while_read") as env:
        srv, a, b = _two(env, "grow", {"grow.bin": "start\n"})
        path = os.path.join(a.dir, "grow.bin")
        tmp = os.path.join(srv.storage, a.token.split("-")[0], "tmp")
        with open(path, "wb") as f:
            f.write(os.urandom(64 << 20))
        # The server's temporary file for the upload: the agent is reading.
        wait_until(lambda: any(n.startswith(".backupsync-tmp") for n in os.listdir(tmp)), 30,
                   "the upload of grow.bin to begin")
        chunk = os.urandom(256 << 10)
        with open(path, "ab") as f:
            for i in range(20):
                f.write(chunk)
                f.flush()
                time.sleep(0.002)
        with open(path, "rb") as f:
            final = f.read()
        wait_content(os.path.join(b.dir, "grow.bin"), final, timeout=120)
        wait_content(os.path.join(srv.tree(a.token), "grow.bin"), final, timeout=10)
        check(any("ABORTED" in line for line in a.log_lines()),
              "the agent never saw the file change under it (no aborted upload in its log)")


def test_sequential_edits():
    with Env("sequential_edits") as env:
        srv, a, b = _two(env, "seq", {"f.txt": "v0\n"})
        fa, fb = os.path.join(a.dir, "f.txt"), os.path.join(b.dir, "f.txt")
        fs = os.path.join(srv.tree(a.token), "f.txt")
        for rnd in range(3):
            write_file(fa, "A round %d\n" % rnd)
            wait_content(fb, "A round %d\n" % rnd)
            wait_content(fs, "A round %d\n" % rnd)
            write_file(fb, "B round %d, a bit longer\n" % rnd)
            wait_content(fa, "B round %d, a bit longer\n" % rnd)
            wait_content(fs, "B round %d, a bit longer\n" % rnd)
        write_file(fa, "A final\n")
        wait_content(fb, "A final\n")
        assert_trees_equal(a.dir, b.dir)
        for root in (a.dir, b.dir, srv.tree(a.token)):
            check(conflict_copies(root) == [], "conflict copies in %s: %s" % (root, conflict_copies(root)))
        check(not any("conflict" in l for l in a.log_lines() + b.log_lines()),
              "an agent logged a conflict")


class _Inotify:
    """Just enough inotify (ctypes) to act the instant an agent renames a file into place."""
    IN_MOVED_TO = 0x80

    def __init__(self, directory, mask):
        import ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC)
        check(self.fd >= 0, "inotify_init1 failed")
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
        check(wd >= 0, "inotify_add_watch failed")

    def wait_name(self, name, timeout):
        import select
        import struct
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                fail("no inotify event for %r within %.0f s" % (name, timeout))
            buf = os.read(self.fd, 65536)
            off = 0
            while off < len(buf):
                _, _, _, n = struct.unpack_from("iIII", buf, off)
                ev = buf[off + 16:off + 16 + n].rstrip(b"\0")
                off += 16 + n
                if ev == os.fsencode(name):
                    return

    def close(self):
        os.close(self.fd)


def test_edit_right_after_download():
    """An edit made the instant a download lands is a new local change, not
    part of the download: it must reach the other computer."""
    with Env("edit_right_after_download") as env:
        srv, a, b = _two(env, "edit", {"f.txt": "v0\n"})
        fa, fb = os.path.join(a.dir, "f.txt"), os.path.join(b.dir, "f.txt")
        fs = os.path.join(srv.tree(a.token), "f.txt")
        ino = _Inotify(b.dir, _Inotify.IN_MOVED_TO)
        try:
            for rnd in range(25):
                write_file(fa, "A %d\n" % rnd)
                # A may first send the empty file it saw mid-write: wait
                # for the rename that brings A's whole version.
                while read_bytes(fb) != ("A %d\n" % rnd).encode():
                    ino.wait_name("f.txt", 30)
                # Same inode, new size and mtime: what an editor saving in place does.
                write_file(fb, "B %d, written as soon as A's version landed\n" % rnd)
                want = "B %d, written as soon as A's version landed\n" % rnd
                wait_content(fs, want, msg="round %d: B's edit on the server" % rnd)
                wait_content(fa, want, msg="round %d: B's edit on A" % rnd)
        finally:
            ino.close()
        assert_trees_equal(a.dir, b.dir)


def test_log_summary():
    """A big batch is one journal line, not one per file (journald drops
    lines past its rate limit); a single change still names its file."""
    with Env("log_summary") as env:
        # 260: more than one batch of 256 downloads
        files = {"many/f%03d.txt" % i: "file %d\n" % i for i in range(260)}
        srv, a, b = _two(env, "summary", files)  # B has them all when this returns
        for agent, verb in ((a, "uploaded"), (b, "downloaded")):
            # The summary follows the pull's commit, a moment after the
            # files are in place.
            wait_until(lambda: any((verb + " 260 files") in l for l in agent.log_lines()), 10,
                       "%s to log the '%s 260 files' summary" % (agent.name, verb))
            lines = agent.log_lines()
            per_file = [l for l in lines if verb + " many/" in l]
            summary = [l for l in lines if (verb + " 260 files") in l]
            check(per_file == [], "%s logged %d per-file lines for one batch of 260, e.g. %r"
                  % (agent.name, len(per_file), per_file[:1]))
            check(len(summary) == 1, "%s did not log one '%s 260 files' summary:\n%s"
                  % (agent.name, verb, "\n".join(lines[-10:])))
            errors = [l for l in lines if "cannot" in l or "no content" in l]
            check(errors == [], "%s logged errors: %s" % (agent.name, errors))
        write_file(os.path.join(a.dir, "one.txt"), "one\n")
        wait_content(os.path.join(b.dir, "one.txt"), "one\n")
        wait_until(lambda: any("uploaded one.txt (" in l for l in a.log_lines()), 10,
                   "A to log the single upload by name")
        wait_until(lambda: any("downloaded one.txt (" in l for l in b.log_lines()), 10,
                   "B to log the single download by name")
