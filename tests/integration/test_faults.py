"""Faults: a full server disk, an unreachable server, agents killed mid
transfer, the inotify watch limit. These need root (tmpfs mounts, sysctls)."""

import os
import re
import subprocess
import tempfile
import threading
import time

from harness import (TMP_PREFIX, Env, Server, assert_trees_equal, check,
                     conflict_copies, fail, read_bytes, sha256_file, snapshot,
                     wait_absent, wait_content, wait_tree, wait_until,
                     write_file)

MiB = 1 << 20


def _need_root(what):
    if os.geteuid() != 0:
        fail("%s needs root (it %s); run the integration tests as root" % (
            "this scenario", what))


def _server_view(snap):
    return {k: (v[0], v[1], None) for k, v in snap.items()}


def _count(lines, pattern):
    rx = re.compile(pattern)
    return sum(1 for l in lines if rx.search(l))


def _temps(root):
    """Every .backupsync-tmp.* name below root."""
    found = []
    for d, dirs, files in os.walk(root):
        found += [os.path.join(d, n) for n in dirs + files if n.startswith(TMP_PREFIX)]
    return found


def _write_random(path, size):
    """A file of random bytes, written outside the watched tree when path is
    outside it; returns its SHA-256."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    return sha256_file(path)


# ------------------------------------------------------------ disk full

def test_fault_disk_full():
    _need_root("mounts a small tmpfs for the server's storage")
    mnt = tempfile.mkdtemp(prefix="bs-it-fault-storage-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt], check=True)
    try:
        with Env("fault_disk_full") as env:
            srv = env.server(storage=mnt)
            adir = env.path("A")
            os.makedirs(adir)
            earlier = {"early-%d.bin" % i: os.urandom(MiB // 2) for i in range(3)}
            earlier["notes.txt"] = b"stored before the disk filled up\n"
            for rel, data in earlier.items():
                write_file(os.path.join(adir, rel), data)
            a = env.agent("A", adir)
            b = env.agent("B", env.path("B"), token=a.token)
            assert_trees_equal(adir, b.dir, msg="initial join")
            tree = srv.tree(a.token)
            wait_tree(tree, _server_view(snapshot(adir)), msg="server has the earlier files")
            time.sleep(0.5)
            srv_mark, a_mark = len(srv.log_lines()), len(a.log_lines())

            # 30 MB does not fit in 20 MB; written outside the tree and moved
            # in so the agent sees it whole.
            src = env.path("big.src")
            big_sha = _write_random(src, 30 * MiB)
            t0 = time.monotonic()
            os.rename(src, os.path.join(adir, "big.bin"))
            small = {"small-%d.txt" % i: ("small file %d\n" % i).encode() for i in range(3)}
            for rel, data in small.items():
                write_file(os.path.join(adir, rel), data)

            for rel, data in small.items():
                wait_content(os.path.join(b.dir, rel), data, timeout=20,
                             msg="%s on B while big.bin does not fit on the server" % rel)
            wait_until(lambda: _count(a.log_lines()[a_mark:], r"server's disk is full.*big\.bin"), 20,
                       "agent A to log that the server's disk is full (naming big.bin)")
            # Watch the retries for ~10 s: backoff, not a loop every round.
            time.sleep(max(0.0, 10.0 - (time.monotonic() - t0)))
            srv_new = srv.log_lines()[srv_mark:]
            attempts = _count(srv_new, r"upload \S+ big\.bin failed")
            agent_says = _count(a.log_lines()[a_mark:], r"server's disk is full.*big\.bin")
            print("fault_disk_full: %d upload attempts of big.bin in %.1f s (agent logged %d)" % (
                attempts, time.monotonic() - t0, agent_says))
            check(attempts >= 2, "want at least two attempts to store big.bin in ~10 s (a retry), "
                  "the server logged %d" % attempts)
            check(attempts < 30, "%d attempts to store big.bin in ~10 s: the agent retries without backoff"
                  % attempts)
            check(_count(srv_new, r"NO_SPACE|No space left") > 0 or agent_says > 0,
                  "nobody said the disk is full")

            # Nothing half-written is visible, nothing stored is damaged.
            check(not os.path.lexists(os.path.join(tree, "big.bin")),
                  "a (partial) big.bin is visible in the server's tree while the disk is full")
            check(_temps(tree) == [], "temporary files in the server's tree: %s" % _temps(tree))
            for rel, data in list(earlier.items()) + list(small.items()):
                check(read_bytes(os.path.join(tree, rel)) == data,
                      "%s on the server was damaged by the full disk" % rel)
            check(not os.path.lexists(os.path.join(b.dir, "big.bin")), "big.bin reached B while not stored")

            subprocess.run(["mount", "-o", "remount,size=100m", mnt], check=True)
            t1 = time.monotonic()
            bbig = os.path.join(b.dir, "big.bin")
            wait_until(lambda: os.path.isfile(bbig) and os.path.getsize(bbig) == 30 * MiB
                       and sha256_file(bbig) == big_sha, 90,
                       "big.bin on B once the server has space again (no restart)")
            print("fault_disk_full: big.bin arrived %.1f s after space was freed" % (time.monotonic() - t1))
            check(sha256_file(os.path.join(tree, "big.bin")) == big_sha, "big.bin on the server differs")
            for rel, data in earlier.items():
                check(read_bytes(os.path.join(tree, rel)) == data, "%s on the server changed" % rel)
            assert_trees_equal(adir, b.dir, msg="after the disk had space again")
            for root in (adir, b.dir):
                check(conflict_copies(root) == [], "conflict copies in %s" % root)
                check(_temps(root) == [], "temporary files left in %s" % root)
            check(a.running() and b.running(), "an agent exited")
    finally:
        r = subprocess.run(["umount", mnt])
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


# ------------------------------------------------------------ agent's disk full

def test_fault_agent_disk_full():
    """A join into a file system too small for the account: the files that
    fit are placed whole, none half-written under its name, no temporary
    file is left; once there is room the same agent (not restarted)
    completes the tree."""
    _need_root("mounts a small tmpfs for an agent's tree")
    mnt = tempfile.mkdtemp(prefix="bs-it-fault-agent-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    try:
        with Env("fault_agent_disk_full") as env:
            env.server()
            adir = env.path("A")
            # 8 MB of small files (written by the pull's writer thread)
            # in 30 directories, in bursts of several batches.
            for d in range(30):
                os.makedirs(os.path.join(adir, "d%02d" % d))
                for f in range(25):
                    write_file(os.path.join(adir, "d%02d" % d, "f%02d" % f), os.urandom(10000 + d * 100 + f))
            a = env.agent("A", adir)
            a.wait_scanned()
            b = env.agent("B", os.path.join(mnt, "B"), token=a.token, start=False)
            os.makedirs(b.dir, exist_ok=True)
            b.start()
            wait_until(lambda: _count(b.log_lines(), r"cannot write .*No space left|No space left"), 60,
                       "agent B to log that its disk is full")
            time.sleep(1)
            # What is there is whole: each file has A's content or is absent.
            placed = 0
            for d, dirs, files in os.walk(b.dir):
                for n in files:
                    p = os.path.join(d, n)
                    rel = os.path.relpath(p, b.dir)
                    check(not n.startswith(TMP_PREFIX), "a temporary file under its own name in B: %s" % rel)
                    if n.startswith(TMP_PREFIX):
                        continue
                    check(read_bytes(p) == read_bytes(os.path.join(adir, rel)),
                          "%s on B is not A's (half-written?)" % rel)
                    placed += 1
            print("fault_agent_disk_full: %d of 750 files placed while the disk was full" % placed)
            check(placed < 750, "all 750 files fit in 4 MB: the test proves nothing")
            subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
            assert_trees_equal(adir, b.dir, timeout=60, msg="B once its disk has room")
            check(_temps(b.dir) == [], "temporary files left in B: %s" % _temps(b.dir))
            check(conflict_copies(b.dir) == [], "conflict copies in B")
            check(b.running(), "agent B exited")
    finally:
        r = subprocess.run(["umount", mnt])
        if r.returncode != 0:
            subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


# ------------------------------------------------------------ server unreachable

def test_fault_server_unreachable():
    with Env("fault_server_unreachable") as env:
        srv = env.server()
        adir = env.path("A")
        files = {"a-mod.txt": "a 0\n", "b-mod.txt": "b 0\n", "a-del.txt": "a del\n",
                 "b-del.txt": "b del\n", "keep.txt": "keep\n"}
        for rel, data in files.items():
            write_file(os.path.join(adir, rel), data)
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, msg="initial join")
        A = lambda *p: os.path.join(a.dir, *p)
        B = lambda *p: os.path.join(b.dir, *p)

        rc = srv.stop()
        check(rc == 0, "server exited %s on SIGTERM, want 0" % rc)
        a_mark, b_mark = len(a.log_lines()), len(b.log_lines())
        t0 = time.monotonic()
        # Changes spread over the outage, on both sides, to different files.
        write_file(A("a-mod.txt"), "a 1 while the server is down\n")
        write_file(B("b-mod.txt"), "b 1 while the server is down\n")
        time.sleep(2.5)
        write_file(A("a-new.txt"), "new on A while down\n")
        os.unlink(B("b-del.txt"))
        write_file(B("b-dir", "deep", "b-new.txt"), "new on B while down\n")
        time.sleep(2.5)
        os.unlink(A("a-del.txt"))
        write_file(A("a-mod.txt"), "a 2 while the server is down\n")
        os.makedirs(A("a-dir", "empty"))
        time.sleep(max(0.0, 8.0 - (time.monotonic() - t0)))

        check(a.running() and b.running(), "an agent exited while the server was down")
        for ag, mark in ((a, a_mark), (b, b_mark)):
            lines = ag.log_lines()[mark:]
            n = _count(lines, r"cannot reach|connection .* lost")
            check(n >= 2, "%s logged %d connection failures in %.0f s with the server down, want >= 2 (retries):\n%s"
                  % (ag.name, n, time.monotonic() - t0, "\n".join(lines[-10:])))
            check(n < 40, "%s logged %d connection failures in ~8 s: no backoff" % (ag.name, n))

        srv.start()  # same port, same storage
        t1 = time.monotonic()
        exp = {"a-mod.txt": ("file", b"a 2 while the server is down\n", None),
               "b-mod.txt": ("file", b"b 1 while the server is down\n", None),
               "keep.txt": ("file", b"keep\n", None),
               "a-new.txt": ("file", b"new on A while down\n", None),
               "a-dir": ("dir", None, None), "a-dir/empty": ("dir", None, None),
               "b-dir": ("dir", None, None), "b-dir/deep": ("dir", None, None),
               "b-dir/deep/b-new.txt": ("file", b"new on B while down\n", None)}
        wait_tree(a.dir, exp, timeout=15, msg="A within 15 s of the server's restart")
        wait_tree(b.dir, exp, timeout=max(1.0, 15 - (time.monotonic() - t1)),
                  msg="B within 15 s of the server's restart")
        print("fault_server_unreachable: converged %.1f s after the restart" % (time.monotonic() - t1))
        wait_tree(srv.tree(a.token), exp, timeout=10, msg="server tree after the restart")
        for root in (a.dir, b.dir):
            check(conflict_copies(root) == [], "conflict copies in %s" % root)
        write_file(B("after.txt"), "after\n")
        wait_content(A("after.txt"), "after\n", timeout=10)


# ------------------------------------------------------------ agents killed

class _NamePoller(threading.Thread):
    """Every 10 ms: the real name must be absent or hold the full size."""

    def __init__(self, path, size):
        super().__init__(daemon=True)
        self.path, self.size = path, size
        self.bad = []
        self.seen_full = False
        self.stop_flag = False

    def run(self):
        while not self.stop_flag:
            try:
                st = os.lstat(self.path)
                if st.st_size != self.size:
                    self.bad.append(st.st_size)
                else:
                    self.seen_full = True
            except FileNotFoundError:
                pass
            except OSError as e:
                self.bad.append(repr(e))
            time.sleep(0.01)


def _big_file_done(path, size, sha):
    return os.path.isfile(path) and os.path.getsize(path) == size and sha256_file(path) == sha


def _tmp_files(stmp):
    """Upload files waiting under the server's tmp/."""
    return [os.path.join(r, f) for r, _, fs in os.walk(stmp) for f in fs]


def test_fault_agent_killed():
    size = 300 * MiB
    with Env("fault_agent_killed") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "seed.txt"), "seed\n")
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, msg="initial join")
        stmp = os.path.join(srv.storage, a.account, "tmp")
        tree = srv.tree(a.token)

        # 1. A killed while uploading.
        src = env.path("up.src")
        sha1 = _write_random(src, size)
        os.rename(src, os.path.join(adir, "upload.bin"))
        t0 = time.monotonic()

        def partial_on_server():
            try:
                return any(os.path.getsize(p) > 0 for p in _tmp_files(stmp))
            except OSError:
                return False
        while not partial_on_server() and time.monotonic() - t0 < 0.3:
            time.sleep(0.005)
        a.kill9()
        print("fault_agent_killed: A killed %.2f s into the upload (partial upload on the server: %s)" % (
            time.monotonic() - t0, partial_on_server()))
        check(not _big_file_done(os.path.join(tree, "upload.bin"), size, sha1),
              "upload.bin was already stored before the kill: the test did not interrupt anything")
        a.start()
        wait_until(lambda: _big_file_done(os.path.join(b.dir, "upload.bin"), size, sha1), 180,
                   "upload.bin complete on B after A restarted")
        check(_big_file_done(os.path.join(tree, "upload.bin"), size, sha1), "upload.bin on the server differs")
        t1 = time.monotonic()
        while _tmp_files(stmp) and time.monotonic() - t1 < 10:
            time.sleep(0.02)
        left = [(p, os.path.getsize(p)) for p in _tmp_files(stmp)]
        check(left == [], "the server kept the killed agent's partial upload: %r" % left)
        exp = {"seed.txt", "upload.bin"}
        for root in (adir, b.dir):
            wait_until(lambda: set(snapshot(root, modes=False)) == exp, 10,
                       "%s to hold exactly %s" % (root, sorted(exp)))
            check(_temps(root) == [], "temporary files left in %s: %s" % (root, _temps(root)))
            check(conflict_copies(root) == [], "conflict copies in %s" % root)

        # 2. B killed while downloading; the real name is never partial.
        poller = _NamePoller(os.path.join(b.dir, "download.bin"), size)
        poller.start()
        try:
            src = env.path("down.src")
            sha2 = _write_random(src, size)
            os.rename(src, os.path.join(adir, "download.bin"))

            def downloading():
                return any(os.path.isfile(p) and os.path.getsize(p) > 0 for p in _temps(b.dir))
            wait_until(downloading, 120, "B to start downloading download.bin into a temporary file")
            # Written in the unwatched downloads directory, not beside the
            # user's files (where each write would queue inotify events).
            downloads = os.path.join(b.dir, TMP_PREFIX + "downloads")
            stray = [p for p in _temps(b.dir) if os.path.isfile(p) and os.path.dirname(p) != downloads]
            check(stray == [], "temporary files outside %s: %s" % (downloads, stray))
            b.kill9()
            check(not os.path.lexists(os.path.join(b.dir, "download.bin")) or poller.seen_full,
                  "download.bin visible on B at kill time")
            time.sleep(0.5)
            check(_temps(b.dir) != [] or os.path.exists(os.path.join(b.dir, "download.bin")),
                  "test setup: expected the killed download's temporary file on B")
            b.start()
            wait_until(lambda: _big_file_done(os.path.join(b.dir, "download.bin"), size, sha2), 180,
                       "download.bin complete on B after B restarted")
        finally:
            poller.stop_flag = True
            poller.join()
        check(poller.bad == [], "download.bin was visible on B with the wrong size (want %d): %s" % (
            size, poller.bad[:10]))
        exp = {"seed.txt", "upload.bin", "download.bin"}
        for root in (adir, b.dir):
            wait_until(lambda: set(snapshot(root, modes=False)) == exp, 10,
                       "%s to hold exactly %s" % (root, sorted(exp)))
            check(_temps(root) == [], "temporary files left in %s: %s" % (root, _temps(root)))
        check(_big_file_done(os.path.join(tree, "download.bin"), size, sha2), "download.bin on the server differs")
        write_file(os.path.join(b.dir, "after.txt"), "after\n")
        wait_content(os.path.join(adir, "after.txt"), "after\n", timeout=15)


# ------------------------------------------------------------ watch limit

WATCHES = "/proc/sys/fs/inotify/max_user_watches"


def _inotify_lines(pid):
    out = []
    d = "/proc/%s/fdinfo" % pid
    try:
        for fd in os.listdir(d):
            try:
                with open(os.path.join(d, fd)) as f:
                    out += [l for l in f if l.startswith("inotify wd:")]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _root_watches():
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat("/proc/" + pid).st_uid != 0:
                continue
        except OSError:
            continue
        n += len(_inotify_lines(pid))
    return n


def _watched_inodes(pid):
    inos = set()
    for l in _inotify_lines(pid):
        m = re.search(r"\bino:([0-9a-f]+)", l)
        if m:
            inos.add(int(m.group(1), 16))
    return inos


def test_fault_watch_limit():
    _need_root("lowers fs.inotify.max_user_watches")
    with open(WATCHES) as f:
        saved = f.read().strip()

    def restore():
        with open(WATCHES, "w") as f:
            f.write(saved)
    try:
        with Env("fault_watch_limit") as env:
            srv = env.server()
            adir = env.path("A")
            dirs = ["d%02d" % i for i in range(50)]
            for d in dirs:
                write_file(os.path.join(adir, d, "f.txt"), "in %s\n" % d)
            limit = _root_watches() + 20
            with open(WATCHES, "w") as f:
                f.write(str(limit))
            try:
                a = env.agent("A", adir, poll="1s")
                # The first comparison adds the watches as it lists the
                # directories; once it is done A says what it watches.
                wait_until(lambda: "fs.inotify.max_user_watches" in a.log_text(), 10,
                           "agent A to log that fs.inotify.max_user_watches is too low")
                # Looked at before the limit is raised again: A's next
                # rescan then watches the rest.
                inos = _watched_inodes(a.popen.pid)
            finally:
                restore()
            print("fault_watch_limit: max_user_watches was %d while A started" % limit)
            b = env.agent("B", env.path("B"), token=a.token, poll="1s")
            assert_trees_equal(adir, b.dir, msg="initial join")

            watched = [d for d in dirs if os.stat(os.path.join(adir, d)).st_ino in inos]
            unwatched = [d for d in dirs if d not in watched]
            print("fault_watch_limit: A watches %d of %d subdirectories" % (len(watched), len(dirs)))
            check(unwatched, "every directory is watched: the lowered limit had no effect")
            check(watched, "no subdirectory is watched: cannot test prompt changes")

            for d in watched[:3]:
                t0 = time.monotonic()
                write_file(os.path.join(adir, d, "new.txt"), "new in watched %s\n" % d)
                wait_content(os.path.join(b.dir, d, "new.txt"), "new in watched %s\n" % d, timeout=1.0,
                             msg="a change in watched %s on B within 1 s" % d)
                print("fault_watch_limit: watched %s: %.2f s" % (d, time.monotonic() - t0))
            for d in unwatched[:3]:
                t0 = time.monotonic()
                write_file(os.path.join(adir, d, "new.txt"), "new in unwatched %s\n" % d)
                os.unlink(os.path.join(adir, d, "f.txt"))
                wait_content(os.path.join(b.dir, d, "new.txt"), "new in unwatched %s\n" % d, timeout=2.5,
                             msg="a change in unwatched %s on B within ~2 poll intervals (1 s)" % d)
                wait_absent(os.path.join(b.dir, d, "f.txt"), timeout=1.0)
                print("fault_watch_limit: unwatched %s: %.2f s" % (d, time.monotonic() - t0))
            assert_trees_equal(adir, b.dir, msg="at the end")
    finally:
        restore()
