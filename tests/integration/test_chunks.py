"""History stores each chunk once: kept versions of a big file are cut into
the server's chunk store after they were acknowledged, every version stays
restorable, backupsyncd --verify checks the chunks, and a server killed in
the middle of cutting loses nothing."""

import hashlib
import json
import os
import random
import subprocess
import time

import harness
from harness import Env, check, snapshot, wait_until, write_file

MiB = 1 << 20


def _cli(*args):
    r = subprocess.run([harness.CLI_BIN] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=300)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def _du(path):
    """Disk space of the regular files below path with one link."""
    total = 0
    for d, _, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if st.st_nlink == 1:
                total += st.st_blocks * 512
    return total


def _files(path, suffix=""):
    return [os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith(suffix)]


def _account_dir(srv, a):
    return os.path.dirname(srv.tree(a.token))


def _wait_cut(acc, n, timeout, what):
    """Until n kept versions are recipes and no plain kept file is left."""
    content = os.path.join(acc, "content")
    wait_until(lambda: len(_files(content, ".chunks")) == n and
               not [f for f in _files(content) if not f.endswith(".chunks")], timeout, what)


def _server_with_fast_pruning(env):
    conf = env.path("server.ini")
    write_file(conf, "[server]\nprune-interval = 1s\n")
    return env.server(args=["--config", conf])


def _start_with_big_file(env, size, seed):
    """A server that prunes every second, and agent A with big.bin (size
    random bytes) uploaded: (server, agent, path, bytes)."""
    srv = _server_with_fast_pruning(env)
    adir = env.path("A")
    os.makedirs(adir)
    data = bytearray(random.Random(seed).randbytes(size))
    p = os.path.join(adir, "big.bin")
    write_file(p, bytes(data))
    a = env.agent("A", adir)
    wait_until(lambda: "uploaded big.bin" in a.log_text(), harness.SYNC_TIMEOUT, "big.bin uploaded")
    return srv, a, p, data


def _edit_versions(a, path, data, n, edit):
    """n successive edits of path, each waiting for the server's ACK (the
    agent's log); the bytes of every version, oldest first."""
    versions = [bytes(data)]
    rng = random.Random(7)
    for i in range(n):
        off = rng.randrange(0, len(data) - edit)
        data[off:off + edit] = rng.randbytes(edit)
        seen = a.log_text().count("uploaded big.bin")
        write_file(path, bytes(data))
        wait_until(lambda: a.log_text().count("uploaded big.bin") > seen, harness.SYNC_TIMEOUT,
                   "edit %d of big.bin uploaded" % (i + 1))
        versions.append(bytes(data))
    return versions


def _restore_all(env, a, versions):
    """Every version of big.bin, by number, restored byte for byte."""
    rc, out, err = _cli("versions", "big.bin", "--json", "--state-dir", a.state_dir)
    check(rc == 0, "backupsync versions exited %d: %s" % (rc, err))
    listed = json.loads(out)
    by_sha = {hashlib.sha256(v).hexdigest(): v for v in versions}
    check(len(listed) == len(versions) and all(x["sha256"] in by_sha for x in listed),
          "versions lists %d contents, want the %d written" % (len(listed), len(versions)))
    for x in listed:
        out_dir = env.path("restored-%d" % x["version"])
        rc, _, err = _cli("restore", "big.bin", "--version", x["version"], "--to", out_dir, "--state-dir", a.state_dir)
        check(rc == 0, "restore --version %d exited %d: %s" % (x["version"], rc, err))
        got = harness.read_bytes(os.path.join(out_dir, "big.bin"))
        check(got == by_sha[x["sha256"]], "version %d restored with other bytes" % x["version"])


def test_chunks_history_each_chunk_once():
    """Ten 256 KiB edits of a 16 MiB file: the history takes about one
    copy of the file and the changed chunks, not ten copies, and every
    version comes back byte for byte; a chunk lost on the server's disk
    is what --verify reports."""
    with Env("chunks_history") as env:
        size = 16 * MiB
        srv, a, p, data = _start_with_big_file(env, size, 5)
        versions = _edit_versions(a, p, data, 10, 256 * 1024)
        acc = _account_dir(srv, a)
        # Cut in the background after the ACKs: ten recipes, no plain copy left.
        _wait_cut(acc, 10, 60, "the ten kept versions cut into the chunk store")
        history = _du(os.path.join(acc, "content")) + _du(os.path.join(acc, "chunks"))
        # One copy, and per edit the chunks it touched (at most 2 x 256 KiB
        # around 256 KiB), far from the 160 MiB of ten copies.
        check(history <= size + 10 * (256 * 1024 + 2 * 256 * 1024) + MiB,
              "history takes %d bytes for ten edits of a %d-byte file" % (history, size))
        _restore_all(env, a, versions)
        harness.verify_server(srv)
        # A chunk lost: --verify names the content it breaks, and fails.
        victim = sorted(_files(os.path.join(acc, "chunks")))[0]
        os.unlink(victim)
        srv.stop()
        r = subprocess.run([harness.SERVER_BIN, "--verify", "--storage", srv.storage],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        out = r.stdout.decode(errors="replace")
        check(r.returncode != 0 and "content/" in out and os.path.basename(victim) in out and "missing" in out,
              "--verify after a chunk was lost: exit %d:\n%s" % (r.returncode, out))


def test_chunks_server_killed_while_cutting():
    """The server is killed (SIGKILL) again and again while it cuts a
    64 MiB version into chunks: every version stays restorable, the
    cutting finishes after the restarts, and --verify finds nothing."""
    with Env("chunks_killed") as env:
        size = 64 * MiB
        srv, a, p, data = _start_with_big_file(env, size, 9)
        acc = _account_dir(srv, a)
        chunks = os.path.join(acc, "chunks")
        versions = [bytes(data)]
        rng = random.Random(7)
        kills = 0
        for i in range(3):
            # An edit makes the version before it a kept one, which the
            # server then cuts. Watched from before the edit: a slow run
            # must not find the cutting over before it looks.
            n0 = len(_files(chunks)) if os.path.isdir(chunks) else 0
            seen = a.log_text().count("uploaded big.bin")
            off = rng.randrange(0, size - MiB)
            data[off:off + MiB] = rng.randbytes(MiB)
            write_file(p, bytes(data))
            versions.append(bytes(data))
            # Killed as soon as the cutting has written more chunks (staged
            # ".tmp" files or named ones) than there were before.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not os.path.isdir(chunks) or len(_files(chunks)) <= n0):
                time.sleep(0.005)
            if os.path.isdir(chunks) and len(_files(chunks)) > n0:
                srv.kill9()
                kills += 1
                srv.start()
            wait_until(lambda: a.log_text().count("uploaded big.bin") > seen, harness.SYNC_TIMEOUT,
                       "edit %d of big.bin uploaded" % (i + 1))
        print("killed %d times while cutting" % kills)
        check(kills > 0, "the server was never caught cutting")
        _wait_cut(acc, 3, 120, "the three kept versions cut after the restarts")
        _restore_all(env, a, versions)
        harness.verify_server(srv)


def test_commit_leaves_others_data():
    """With another program's data waiting for the disk, the server's
    commits sync their own files, chunks and directories one by one: a
    syncfs() would wait for all of it (a slow disk's minutes) while every
    client waits. A burst of small files, a big one, and its old version
    cut into chunks: all on the server, the other data still unwritten."""
    import resource
    with Env("commit_leaves_others_data") as env:
        srv = _server_with_fast_pruning(env)
        # An account opened now keeps 16 files of a commit open (an eighth
        # of the limit): the rest of a burst is opened again to be synced.
        resource.prlimit(srv.popen.pid, resource.RLIMIT_NOFILE, (128, 128))
        adir = env.path("A")
        harness.make_small_files(adir, 20, 20)
        data = bytearray(random.Random(3).randbytes(4 * MiB))
        big = os.path.join(adir, "big.bin")
        write_file(big, bytes(data))
        # Beside the server's storage, on its file system.
        other = harness.OthersData(env.path("other-program.img"))
        a = env.agent("A", adir)
        want = snapshot(adir, mtimes=True)
        wait_until(lambda: harness.server_snapshot(srv, a.token) == want, harness.SYNC_TIMEOUT,
                   "the first backup on the server")
        other.check("after the first backup")
        # One burst that keeps 40 old versions (content/ in many fan-out
        # directories) and deletes in 20 directories.
        for d in range(20):
            for i in range(2):
                write_file(os.path.join(adir, "d%03d" % d, "f%02d" % i), "edited %d %d\n" % (d, i))
            os.unlink(os.path.join(adir, "d%03d" % d, "f19"))
        want = snapshot(adir, mtimes=True)
        wait_until(lambda: harness.server_snapshot(srv, a.token) == want, harness.SYNC_TIMEOUT,
                   "the edits and deletions on the server")
        other.check("after the edits and deletions")
        versions = _edit_versions(a, big, data, 1, 64 * 1024)
        content = os.path.join(_account_dir(srv, a), "content")
        wait_until(lambda: len(_files(content, ".chunks")) == 1, 30, "the old version of big.bin cut into chunks")
        other.check("after the old version was cut")
        _restore_all(env, a, versions)
