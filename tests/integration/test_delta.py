"""Delta transfer: an edit in a big file sends only the chunks around it,
both ways, and a wrong base falls back to the whole file."""

import hashlib
import os
import re
import socket
import stat
import subprocess
import time

import bsproto
import harness
from harness import (Env, check, fail, read_bytes, sha256_file, wait_until, write_file)

MiB = 1 << 20
# The largest content-defined chunk (common/bs-chunk.h): an edit costs its
# own bytes and at most the chunk on either side of it.
CHUNK_MAX = 256 * 1024


def _random_file(path, size, seed):
    """Incompressible, reproducible content."""
    import random
    write_file(path, random.Random(seed).randbytes(size))


def _overwrite(path, offset, data, keep_mtime=False):
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _same(pa, pb):
    return (os.path.isfile(pb) and os.path.getsize(pb) == os.path.getsize(pa)
            and sha256_file(pb) == sha256_file(pa))


def _numbers(lines, pattern):
    """The (total, moved) byte counts of every log line matching pattern."""
    out = []
    for l in lines:
        m = re.search(pattern, l)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def _join(env, files):
    srv = env.server()
    adir = env.path("A")
    os.makedirs(adir)
    for rel, (size, seed) in files.items():
        _random_file(os.path.join(adir, rel), size, seed)
    a = env.agent("A", adir)
    b = env.agent("B", env.path("B"), token=a.token)
    for rel in files:
        wait_until(lambda: _same(os.path.join(adir, rel), os.path.join(b.dir, rel)), 60,
                   "%s on B after the join" % rel)
    return srv, a, b


def test_delta_edit_both_ways():
    with Env("delta_edit_both_ways") as env:
        size = 24 * MiB
        srv, a, b = _join(env, {"disk.img": (size, 1), "small.txt": (100 * 1024, 2)})
        pa, pb = os.path.join(a.dir, "disk.img"), os.path.join(b.dir, "disk.img")

        # 100 KB overwritten in the middle on A: it and a chunk on either side go up.
        _overwrite(pa, 10 * MiB + 1000, b"A" * 100000)
        wait_until(lambda: _same(pa, pb), 60, "A's edit of disk.img on B")
        ups = _numbers(srv.log_lines(), r"uploaded \S+ disk\.img \((\d+) bytes, (\d+) sent")
        check(len(ups) == 1, "server: one delta upload of disk.img expected, log shows %r" % ups)
        check(ups[0][0] == size and ups[0][1] <= 100000 + 2 * CHUNK_MAX,
              "server: %d of %d bytes of disk.img were sent, want at most 100000 + 512 KiB" % (ups[0][1], size))
        wait_until(lambda: _numbers(b.log_lines(), r"downloaded disk\.img \((\d+) bytes, (\d+) received"), 10,
                   "B to log a delta download of disk.img")
        downs = _numbers(b.log_lines(), r"downloaded disk\.img \((\d+) bytes, (\d+) received")
        check(downs[-1][1] <= 100000 + 2 * CHUNK_MAX,
              "B received %d bytes of disk.img for a 100 KB edit" % downs[-1][1])

        # B, which only ever downloaded the file, edits the start and grows it.
        _overwrite(pb, 0, b"B" * 5000)
        with open(pb, "ab") as f:
            f.write(b"appended on B\n" * 1000)
        wait_until(lambda: _same(pb, pa), 60, "B's edit of disk.img on A")
        ups = _numbers(srv.log_lines(), r"uploaded \S+ disk\.img \((\d+) bytes, (\d+) sent")
        check(len(ups) == 2 and ups[1][0] == size + 14000 and ups[1][1] <= 14000 + 3 * CHUNK_MAX,
              "server: B's edit should be a delta of at most three chunks, log shows %r" % ups)
        wait_until(lambda: _numbers(a.log_lines(), r"downloaded disk\.img \((\d+) bytes, (\d+) received"), 10,
                   "A to log a delta download of disk.img")

        # The server tree holds the result, and the replaced versions are kept.
        spath = os.path.join(srv.tree(a.token), "disk.img")
        check(sha256_file(spath) == sha256_file(pa), "the server's disk.img differs from A's")
        # (Plain files, or cut into the chunk store by then: read either way.)
        acct = os.path.dirname(srv.tree(a.token))
        kept = {h: harness.kept_content(acct, h) for h in harness.kept_contents(acct)}
        kept = {h: d for h, d in kept.items() if d is not None and len(d) == size}
        check(len(kept) == 2, "two replaced versions of disk.img kept, found %r" % sorted(kept))
        check(all(hashlib.sha256(d).hexdigest() == h for h, d in kept.items()),
              "a kept content is not what its SHA-256 says")

        # A small file is always sent whole.
        ps = os.path.join(a.dir, "small.txt")
        _overwrite(ps, 10, b"edit")
        wait_until(lambda: _same(ps, os.path.join(b.dir, "small.txt")), 30, "small.txt on B")
        check(not _numbers(srv.log_lines(), r"uploaded \S+ small\.txt \((\d+) bytes, (\d+) sent"),
              "small.txt (100 KiB) was sent as a delta")


def test_delta_insertions_both_ways():
    """Bytes inserted at the start and in the middle of a big file, and
    bytes deleted, with the tools a user would use (cat, head, tail, mv):
    the rest of the file moves, yet only the chunks around each edit travel
    up to the server and down to the other computer."""
    with Env("delta_insertions") as env:
        size = 16 * MiB
        srv, a, b = _join(env, {"big.bin": (size, 5)})
        pa, pb = os.path.join(a.dir, "big.bin"), os.path.join(b.dir, "big.bin")
        spath = os.path.join(srv.tree(a.token), "big.bin")
        ins = env.path("ins.bin")
        write_file(ins, os.urandom(100))

        def sh(cmd, d):
            subprocess.run(["sh", "-c", cmd], cwd=d, check=True)

        # The new version is put together beside the tree and moved in: one
        # written inside would be synced half-written now and then (it is a
        # file like any other), and be the other computer's base.
        new = env.path("big.new")
        steps = [
            # (who edits, shell command, new size, what it is)
            (a, "cat %s big.bin > %s && mv %s big.bin" % (ins, new, new), size + 100,
             "100 bytes inserted at the start on A"),
            (b, "head -c 8000000 big.bin > %s && cat %s >> %s && tail -c +8000001 big.bin >> %s "
                "&& mv %s big.bin" % (new, ins, new, new, new), size + 200, "100 bytes inserted in the middle on B"),
            (a, "head -c 5000000 big.bin > %s && tail -c +5001001 big.bin >> %s && mv %s big.bin" % (new, new, new),
             size - 800, "1000 bytes deleted in the middle on A"),
        ]
        for i, (who, cmd, new_size, what) in enumerate(steps):
            other = b if who is a else a
            mine, theirs = os.path.join(who.dir, "big.bin"), os.path.join(other.dir, "big.bin")
            pat = r"downloaded big\.bin \((\d+) bytes, (\d+) received"
            seen = len(_numbers(other.log_lines(), pat))
            sh(cmd, who.dir)
            check(os.path.getsize(mine) == new_size, "%s: the edit made %d bytes" % (what, os.path.getsize(mine)))
            wait_until(lambda: _same(mine, theirs), 60, "%s: the file on the other computer" % what)
            check(sha256_file(spath) == sha256_file(mine), "%s: the server's copy differs" % what)
            ups = _numbers(srv.log_lines(), r"uploaded \S+ big\.bin \((\d+) bytes, (\d+) sent")
            check(len(ups) == i + 1 and ups[i][0] == new_size and ups[i][1] <= 2 * CHUNK_MAX,
                  "%s: want at most two chunks sent up, the server logged %r" % (what, ups))
            wait_until(lambda: len(_numbers(other.log_lines(), pat)) > seen, 10, "%s: a delta download logged" % what)
            downs = _numbers(other.log_lines(), pat)
            check(downs[-1][0] == new_size and downs[-1][1] <= 2 * CHUNK_MAX,
                  "%s: want at most two chunks received, the other computer logged %r" % (what, downs))


def test_delta_copies_travel_as_nothing():
    """A copy of a big file made with cp(1), a big file deleted and made
    again with the same bytes, and a copy edited in one place: each goes up
    as COPY from what the server already holds, with almost no data, and
    arrives whole on the other computer."""
    with Env("delta_copies") as env:
        size = 8 * MiB
        srv, a, b = _join(env, {"big.bin": (size, 3)})
        pa = os.path.join(a.dir, "big.bin")

        def sent(name):
            return _numbers(srv.log_lines(), r"uploaded \S+ %s \((\d+) bytes, (\d+) sent" % re.escape(name))

        subprocess.run(["cp", pa, os.path.join(a.dir, "copy.bin")], check=True)
        wait_until(lambda: _same(pa, os.path.join(b.dir, "copy.bin")), 60, "copy.bin on B")
        ups = sent("copy.bin")
        check(len(ups) == 1 and ups[0] == (size, 0), "cp big.bin copy.bin: the server logged %r, want "
              "(%d, 0): nothing but COPY" % (ups, size))
        # B holds those bytes as big.bin: the copy comes down as COPY too.
        wait_until(lambda: _numbers(b.log_lines(), r"downloaded copy\.bin \((\d+) bytes, (\d+) received"), 10,
                   "B to log the download of copy.bin")
        downs = _numbers(b.log_lines(), r"downloaded copy\.bin \((\d+) bytes, (\d+) received")
        check(downs == [(size, 0)], "B fetched copy.bin with %r, want (%d, 0): copied from its big.bin" % (downs, size))

        # Deleted everywhere, then made again with the same bytes: the server
        # keeps the content in the history.
        data = read_bytes(pa)
        for n in ("big.bin", "copy.bin"):
            os.unlink(os.path.join(a.dir, n))
        wait_until(lambda: not os.path.exists(os.path.join(srv.tree(a.token), "copy.bin"))
                   and not os.path.exists(os.path.join(srv.tree(a.token), "big.bin")), 30, "the deletions on the server")
        write_file(os.path.join(a.dir, "again.bin"), data)
        wait_until(lambda: _same(os.path.join(a.dir, "again.bin"), os.path.join(b.dir, "again.bin")), 60,
                   "again.bin on B")
        ups = sent("again.bin")
        check(len(ups) == 1 and ups[0] == (size, 0), "a deleted file made again: the server logged %r" % ups)

        # A copy edited in one block: that block travels.
        pe = os.path.join(a.dir, "edited.bin")
        subprocess.run(["cp", os.path.join(a.dir, "again.bin"), pe + ".tmp"], check=True)
        _overwrite(pe + ".tmp", 3 * MiB + 7, b"E" * 1000)
        os.rename(pe + ".tmp", pe)
        wait_until(lambda: _same(pe, os.path.join(b.dir, "edited.bin")), 60, "edited.bin on B")
        ups = sent("edited.bin")
        check(len(ups) == 1 and ups[0][0] == size and 0 < ups[0][1] <= 2 * CHUNK_MAX,
              "an edited copy: the server logged %r, want at most two chunks sent" % ups)
        check(sha256_file(os.path.join(srv.tree(a.token), "edited.bin")) == sha256_file(pe),
              "the server's edited.bin differs")


def test_delta_copy_after_a_bulk():
    """A first backup of more files than the server records with its index
    by content (docs/backend.md), a big file among them: a cp(1) of the big
    file then still goes up as COPY with nothing sent, the content found by
    its SHA-256 alone, and the index is there again."""
    import sqlite3
    with Env("delta_copy_after_bulk") as env:
        size = 2 * MiB
        n = 4200
        srv = env.server()
        adir = env.path("A")
        for i in range(n):
            write_file(os.path.join(adir, "d%02d" % (i // 100), "f%d" % i), "small %d\n" % i)
        pa = os.path.join(adir, "big.bin")
        _random_file(pa, size, 5)
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        wait_until(lambda: _same(pa, os.path.join(b.dir, "big.bin"))
                   and os.path.isfile(os.path.join(b.dir, "d41", "f%d" % (n - 1))), 60, "the first backup on B")
        subprocess.run(["cp", pa, os.path.join(a.dir, "copy.bin")], check=True)
        wait_until(lambda: _same(pa, os.path.join(b.dir, "copy.bin")), 60, "copy.bin on B")
        ups = _numbers(srv.log_lines(), r"uploaded \S+ copy\.bin \((\d+) bytes, (\d+) sent")
        check(ups == [(size, 0)], "cp big.bin copy.bin after a bulk: the server logged %r, want (%d, 0)" % (ups, size))
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(srv.storage, a.token.split("-")[0], "meta.db"),
                             uri=True, timeout=30)
        try:
            idx = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'entries_sha'").fetchone()[0]
            files = db.execute("SELECT count(*) FROM entries WHERE kind = 1").fetchone()[0]
        finally:
            db.close()
        check(idx == 1, "the index by content is not there again after a lookup by content")
        check(files == n + 2, "the server records %d files, want %d" % (files, n + 2))


def test_delta_restores_travel_as_nothing():
    """An old version of a big file restored in place with backupsync
    restore, and a deleted big file restored, each after the agent was
    restarted: the server holds those bytes, so each upload is COPY alone."""
    with Env("delta_restores") as env:
        size = 8 * MiB
        srv, a, b = _join(env, {"big.bin": (size, 11)})
        pa, pb = os.path.join(a.dir, "big.bin"), os.path.join(b.dir, "big.bin")
        spath = os.path.join(srv.tree(a.token), "big.bin")

        def sent():
            return _numbers(srv.log_lines(), r"uploaded \S+ big\.bin \((\d+) bytes, (\d+) sent")

        def restore(what):
            n = len(sent())
            a.stop()
            a.start()
            r = subprocess.run([harness.CLI_BIN, "restore", "big.bin", "--state-dir", a.state_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
            check(r.returncode == 0, "%s: backupsync restore exited %d: %s" % (what, r.returncode, r.stderr.decode()))
            wait_until(lambda: len(sent()) > n, 60, "%s: the restored file uploaded" % what)
            wait_until(lambda: _same(pa, pb), 60, "%s: the restored file on B" % what)
            check(sent()[-1] == (size, 0), "%s: the server logged %r, want (%d, 0): nothing but COPY"
                  % (what, sent()[-1], size))

        v1 = sha256_file(pa)
        _overwrite(pa, 3 * MiB, os.urandom(MiB))
        wait_until(lambda: _same(pa, pb), 60, "the edit on B")
        restore("the previous version restored in place")
        check(sha256_file(pa) == v1 and sha256_file(spath) == v1, "the restore did not bring back the first version")

        os.unlink(pa)
        wait_until(lambda: not os.path.exists(spath) and not os.path.exists(pb), 30, "the deletion everywhere")
        restore("the deleted file restored")
        check(sha256_file(spath) == v1, "the server's big.bin is not the restored content")


def test_delta_many_turns():
    """A 200 MiB file edited at its end: the server copies the unchanged
    199 MiB over several turns (16 MiB per COPY, 64 MiB per turn) while a
    second connection keeps being served."""
    with Env("delta_many_turns") as env:
        size = 200 * MiB
        srv = env.server()
        adir = env.path("A")
        os.makedirs(adir)
        pa = os.path.join(adir, "big.bin")
        with open(pa, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        pb = os.path.join(b.dir, "big.bin")
        wait_until(lambda: _same(pa, pb), 120, "big.bin on B")
        sock = bsproto.connect(srv.port)
        bsproto.hello(sock, a.token, device=os.urandom(16), name="bystander")
        _overwrite(pa, size - 1000, b"the end, edited")
        pongs = 0
        deadline = time.monotonic() + 60
        while not _same(pa, pb):
            bsproto.ping(sock, pongs)
            pongs += 1
            check(time.monotonic() < deadline, "the edit did not reach B within 60 s")
            time.sleep(0.01)
        sock.close()
        ups = _numbers(srv.log_lines(), r"uploaded \S+ big\.bin \((\d+) bytes, (\d+) sent")
        check(len(ups) == 1 and ups[0][1] <= 2 * CHUNK_MAX, "server: the edit was not a small delta: %r" % ups)
        check(pongs > 0, "the bystander connection was never answered")


def test_delta_server_copy_differs():
    """The server's stored copy no longer matches what A fingerprinted: the
    delta's SHA-256 fails, A drops its fingerprints and sends the whole file."""
    with Env("delta_server_copy_differs") as env:
        size = 8 * MiB
        srv, a, b = _join(env, {"vm.img": (size, 3)})
        pa = os.path.join(a.dir, "vm.img")
        spath = os.path.join(srv.tree(a.token), "vm.img")
        _overwrite(spath, 6 * MiB, b"bit rot on the server" * 10)  # a block A will not send
        _overwrite(pa, 1 * MiB, b"A" * 1000)
        wait_until(lambda: sha256_file(spath) == sha256_file(pa), 60, "A's edit on the server")
        wait_until(lambda: _same(pa, os.path.join(b.dir, "vm.img")), 60, "A's edit on B")
        text = srv.log_text()
        check("CHECKSUM" in text or "refused" in text, "the server did not refuse the wrong delta")
        check(any("sending the whole file" in l for l in a.log_lines()),
              "A did not say it sends vm.img whole after the refused delta")
        whole = [l for l in srv.log_lines() if re.search(r"uploaded \S+ vm\.img \(%d bytes\)$" % size, l)]
        check(len(whole) >= 2, "expected the join upload and a whole re-upload of vm.img, got %r" % whole)


def test_delta_local_copy_differs():
    """B's local copy was changed behind its back (same size and mtime), so
    what it copies for a delta download is wrong: the SHA-256 check refuses
    it and B fetches the whole file."""
    with Env("delta_local_copy_differs") as env:
        size = 8 * MiB
        srv, a, b = _join(env, {"data.bin": (size, 4)})
        pa, pb = os.path.join(a.dir, "data.bin"), os.path.join(b.dir, "data.bin")
        time.sleep(0.5)  # B's own events of the join are behind it
        _overwrite(pb, 5 * MiB, b"silently corrupted" * 10, keep_mtime=True)
        _overwrite(pa, 1 * MiB, b"A" * 1000)
        wait_until(lambda: _same(pa, pb), 60, "A's edit on B despite B's corrupted copy")
        check(any("download of data.bin failed" in l for l in b.log_lines()),
              "B did not report the failed delta download")
        check(not [n for n in os.listdir(b.dir) if "conflict" in n], "a conflict copy appeared on B")


def _session(port, token, version=bsproto.DELTA_VERSION):
    sock = bsproto.connect(port)
    w = bsproto.hello(sock, token, device=os.urandom(16), name="hostile", max_version=version)
    return sock, w


def _closed_after(sock, timeout=5.0):
    """The messages until the server closes: a list, or None when it stays open."""
    sock.settimeout(timeout)
    msgs = []
    try:
        while True:
            msgs.append(bsproto.recv_frame(sock, skip_notify=True))
    except (EOFError, ConnectionResetError):
        return msgs
    except socket.timeout:
        return None


def test_pipelined_gets():
    """A burst of GETs sent at once, as a restore sends them, with uploads,
    unknown contents and bad paths among them: the server reads the queued
    contents ahead, and every answer is still the content asked for, in
    order, including a file replaced between two GETs of it."""
    with Env("pipelined_gets") as env:
        srv = env.server()
        sock, w = _session(srv.port, "")
        files = {"d/f%02d" % i: os.urandom(1000 + 997 * i) for i in range(40)}
        files["big.bin"] = os.urandom(3 * MiB + 17)
        ver = {}
        for i, (rel, data) in enumerate(sorted(files.items())):
            if rel.startswith("d/") and "d" not in ver:
                ver["d"] = bsproto.mkdir(sock, 1000, "d")["version"]
            ver[rel] = bsproto.put(sock, 1 + i, rel, 0, data)["version"]
        old = files["d/f05"]
        new = os.urandom(5000)
        # (req, what is expected: bytes, or an ERROR name) in the order sent.
        want, out = [], []
        for i, rel in enumerate(sorted(files)):
            out.append(bsproto.enc_get(100 + i, bsproto.sha256(files[rel]), rel))
            want.append((100 + i, files[rel]))
            if rel == "d/f03":
                # d/f05 replaced while its GETs (by both contents) wait in the queue.
                data = [bsproto.enc_put(200, "d/f05", ver["d/f05"], len(new)), bsproto.enc_data(200, new),
                        bsproto.enc_put_end(200, bsproto.sha256(new))]
                out += data
                want.append((200, "ACK"))
                out.append(bsproto.enc_get(201, bsproto.sha256(new), "d/f05"))
                want.append((201, new))
                out.append(bsproto.enc_get(202, bsproto.sha256(old), "d/f05"))
                want.append((202, old))
                out.append(bsproto.enc_get(203, os.urandom(32), "d/f06"))
                want.append((203, "NOT_FOUND"))
                out.append(bsproto.enc_get(204, bsproto.sha256(files["d/f07"]), "../d/f07"))
                want.append((204, "BAD_PATH"))
                out.append(bsproto.enc_get(205, bsproto.sha256(files["d/f07"]), ""))
                want.append((205, files["d/f07"]))
        # Everything at once, as one write; a GET of d/f05 by its old content
        # after the replacement is answered from the history.
        sock.sendall(b"".join(out))
        for req, x in want:
            m = bsproto.recv_frame(sock, skip_notify=True)
            check(m["req"] == req, "answer for req %d while req %d was next" % (m["req"], req))
            if isinstance(x, bytes):
                check(m["type"] == "FILE" and m["sha"] == bsproto.sha256(x),
                      "GET req %d: %r" % (req, {k: m[k] for k in m if k != "data"}))
                data = bytearray()
                while len(data) < m["size"]:
                    d = bsproto.expect(sock, "DATA")
                    check(d["req"] == req, "DATA for req %d inside req %d" % (d["req"], req))
                    data += d["data"]
                check(bytes(data) == x, "GET req %d: wrong bytes" % req)
            elif x == "ACK":
                check(m["type"] == "ACK", "PUT in the burst: %r" % m)
            else:
                check(m["type"] == "ERROR" and m["name"] == x, "GET req %d: want %s, got %r" % (req, x, m))
        bsproto.ping(sock)
        sock.close()


def test_hostile_attr():
    """ATTR (mode and mtime without content) from a client that lies or is
    behind: a content other than the file's, a directory, a missing path,
    a stale base, a bad path, and ATTR in a version 2 session are refused
    with their codes; the tree keeps its mode and time; an honest ATTR is
    applied and reaches the other computer."""
    with Env("hostile_attr") as env:
        srv, a, b = _join(env, {"f.bin": (1000, 3)})
        os.mkdir(os.path.join(a.dir, "d"))
        wait_until(lambda: os.path.isdir(os.path.join(b.dir, "d")), 30, "d on B")
        port, tok = srv.port, a.token
        data = open(os.path.join(a.dir, "f.bin"), "rb").read()
        sha = bsproto.sha256(data)
        tree = srv.tree(tok)
        st0 = os.stat(os.path.join(tree, "f.bin"))

        sock, w = _session(port, tok, version=bsproto.ATTR_VERSION)
        check(w["version"] == bsproto.ATTR_VERSION, "WELCOME chose version %d, want 3" % w["version"])
        recs = {r["path"]: r for r in bsproto.pull(sock, 1, 0)[2]}
        ver = recs[b"f.bin"]["seq"]

        def attr(req, path, base, mode, mtime_ns, content):
            sock.sendall(bsproto.enc_attr(req, path, base, mode, mtime_ns, content))
            return bsproto.answer(sock)

        for req, (what, args, code) in enumerate([
                ("another content", ("f.bin", ver, 0o600, 5, os.urandom(32)), "CONFLICT"),
                ("a directory", ("d", recs[b"d"]["seq"], 0o700, 5, sha), "CONFLICT"),
                ("a missing path", ("nothing", 0, 0o600, 5, sha), "NOT_FOUND"),
                ("a stale base", ("f.bin", ver - 1, 0o600, 5, sha), "CONFLICT"),
                ("a path out of the tree", ("../f.bin", ver, 0o600, 5, sha), "BAD_PATH"),
        ], start=2):
            m = attr(req, *args)
            check(m["type"] == "ERROR" and m["name"] == code, "ATTR of %s: %r, want %s" % (what, m, code))
        st = os.stat(os.path.join(tree, "f.bin"))
        check((st.st_mode, st.st_mtime_ns) == (st0.st_mode, st0.st_mtime_ns), "a refused ATTR changed the file")
        bsproto.ping(sock)

        # The honest one: applied, a new version, on B without its content.
        m = attr(20, "f.bin", ver, 0o640, 981173106123456789, sha)
        check(m["type"] == "ACK" and m["version"] > ver, "honest ATTR: %r" % m)
        st = os.stat(os.path.join(tree, "f.bin"))
        check(st.st_mtime_ns == 981173106123456789, "the server's file has mtime %d" % st.st_mtime_ns)
        pb = os.path.join(b.dir, "f.bin")
        wait_until(lambda: os.stat(pb).st_mtime_ns == 981173106123456789 and
                   stat.S_IMODE(os.stat(pb).st_mode) == 0o640, 30, "the new mode and time on B")
        # Sent again (its ACK lost): the current version, no new one.
        m2 = attr(21, "f.bin", ver, 0o640, 981173106123456789, sha)
        check(m2["type"] == "ACK" and m2["version"] == m["version"], "repeated ATTR: %r" % m2)
        sock.close()

        # A version 2 session may not use it.
        sock, w = _session(port, tok, version=2)
        sock.sendall(bsproto.enc_attr(1, "f.bin", m["version"], 0o600, 5, sha))
        msgs = _closed_after(sock)
        check(msgs is not None and any(x["type"] == "ERROR" and x["name"] == "PROTOCOL" for x in msgs),
              "ATTR in a version 2 session: %r" % msgs)
        sock.close()
        wait_until(lambda: read_bytes(pb) == data, 5, "B's content unchanged")
        check(stat.S_IMODE(os.stat(os.path.join(a.dir, "f.bin")).st_mode) == 0o640, "A did not get the mode")


def test_hostile_delta():
    """COPY and GET_DELTA from a client that lies: each refused with its
    code, nothing half-written stored, the session (or at worst only it)
    ends, and the honest agents go on syncing."""
    with Env("hostile_delta") as env:
        size = 4 * MiB
        srv, a, b = _join(env, {"base.bin": (size, 5)})
        port, tok = srv.port, a.token
        pa = os.path.join(a.dir, "base.bin")
        base = open(pa, "rb").read()
        base_sha = bsproto.sha256(base)
        tree = srv.tree(tok)
        before = sha256_file(os.path.join(tree, "base.bin"))

        sock, w = _session(port, tok)
        check(w["version"] == bsproto.DELTA_VERSION, "WELCOME chose version %d, want 2" % w["version"])

        def put_copy(req, path, size, copies, sha, data=b""):
            out = [bsproto.enc_put(req, path, 0 if path != "base.bin" else ver, size)]
            for off, n in copies:
                out.append(bsproto.enc_copy(req, off, n, base_sha))
            if data:
                out.append(bsproto.enc_data(req, data))
            out.append(bsproto.enc_put_end(req, sha))
            sock.sendall(b"".join(out))
            return bsproto.answer(sock)

        recs = {r["path"]: r for r in bsproto.pull(sock, 1, 0)[2]}
        ver = recs[b"base.bin"]["seq"]

        # A copy of the whole base under a new name: legitimate, nothing sent.
        m = put_copy(2, "copy.bin", size, [(0, size)], base_sha)
        check(m["type"] == "ACK", "COPY of a whole stored file refused: %r" % m)
        check(sha256_file(os.path.join(tree, "copy.bin")) == before, "copy.bin differs from base.bin")

        # A range past the end of the content.
        m = put_copy(3, "past.bin", 100, [(size - 10, 100)], bsproto.sha256(b"x" * 100))
        check(m["type"] == "ERROR" and m["name"] == "CHECKSUM", "COPY past the end: %r" % m)
        # An offset that overflows when the length is added.
        m = put_copy(4, "wrap.bin", 16, [((1 << 64) - 8, 16)], bsproto.sha256(b"x" * 16))
        check(m["type"] == "ERROR" and m["name"] == "CHECKSUM", "COPY with a wrapping offset: %r" % m)
        # More bytes than the PUT announced.
        m = put_copy(5, "long.bin", 10, [(0, 11)], bsproto.sha256(base[:11]))
        check(m["type"] == "ERROR" and m["name"] == "TOO_LARGE", "COPY longer than the upload: %r" % m)
        # One COPY may name at most 16 MiB (each costs the server disk work).
        m = put_copy(11, "huge.bin", 64 * MiB, [(0, 16 * MiB + 1)], bsproto.sha256(b""))
        check(m["type"] == "ERROR" and m["name"] == "TOO_LARGE", "COPY of 16 MiB + 1: %r" % m)
        # A content the account does not have.
        sock.sendall(bsproto.enc_put(6, "ghost.bin", 0, 10) + bsproto.enc_copy(6, 0, 10, os.urandom(32))
                     + bsproto.enc_put_end(6, os.urandom(32)))
        m = bsproto.answer(sock)
        check(m["type"] == "ERROR" and m["name"] == "NOT_FOUND", "COPY of unknown content: %r" % m)
        # A content only another account holds: each account's store is its own.
        other = bsproto.connect(port)
        other_tok = bsproto.hello(other, "", device=os.urandom(16), name="other")["token"]
        secret = os.urandom(2 * MiB)
        other.sendall(bsproto.enc_put(1, "secret.bin", 0, len(secret))
                      + b"".join(bsproto.enc_data(1, secret[i:i + 256 * 1024]) for i in range(0, len(secret), 256 * 1024))
                      + bsproto.enc_put_end(1, bsproto.sha256(secret)))
        m = bsproto.answer(other)
        check(m["type"] == "ACK", "the other account's upload was refused: %r" % m)
        other.close()
        check(other_tok.split("-")[0] != tok.split("-")[0], "a second account was not made")
        sock.sendall(bsproto.enc_put(12, "stolen.bin", 0, len(secret))
                     + bsproto.enc_copy(12, 0, len(secret), bsproto.sha256(secret))
                     + bsproto.enc_put_end(12, bsproto.sha256(secret)))
        m = bsproto.answer(sock)
        check(m["type"] == "ERROR" and m["name"] == "NOT_FOUND", "COPY of another account's content: %r" % m)
        sock.sendall(bsproto.enc_get_delta(13, bsproto.sha256(secret), bsproto.sha256(secret), "secret.bin"))
        m = bsproto.answer(sock)
        check(m["type"] == "ERROR" and m["name"] == "NOT_FOUND", "GET_DELTA of another account's content: %r" % m)
        # A result whose SHA-256 is not what was claimed: base.bin stays as it was.
        m = put_copy(7, "base.bin", size, [(0, size - 5)], bsproto.sha256(base), data=b"EVIL!")
        check(m["type"] == "ERROR" and m["name"] == "CHECKSUM", "a lying delta was not refused: %r" % m)
        check(sha256_file(os.path.join(tree, "base.bin")) == before, "base.bin changed by a refused delta")
        bsproto.ping(sock)  # all of these kept the session

        # GET_DELTA of content the server no longer has as "have": answered whole.
        sock.sendall(bsproto.enc_get_delta(8, base_sha, os.urandom(32), "base.bin"))
        f = bsproto.expect(sock, "FILE")
        got = b""
        while len(got) < f["size"]:
            d = bsproto.expect(sock, "DATA", "COPY")
            check(d["type"] == "DATA", "COPY from content the client does not have")
            got += d["data"]
        check(got == base, "GET_DELTA with an unknown have did not send the whole file")
        # GET_DELTA against itself: all COPY, no DATA.
        sock.sendall(bsproto.enc_get_delta(9, base_sha, base_sha, "base.bin"))
        f = bsproto.expect(sock, "FILE")
        n = 0
        while n < f["size"]:
            d = bsproto.expect(sock, "COPY", "DATA")
            check(d["type"] == "COPY" and d["offset"] == n and d["sha"] == base_sha,
                  "GET_DELTA of the content held: %r" % {k: d[k] for k in d if k != "data"})
            n += d["size"]
        bsproto.ping(sock)

        # COPY outside an upload is a protocol error that ends the session.
        sock.sendall(bsproto.enc_copy(10, 0, 1, base_sha))
        msgs = _closed_after(sock)
        check(msgs is not None and any(m["type"] == "ERROR" and m["name"] == "PROTOCOL" for m in msgs),
              "COPY without PUT: %r" % msgs)
        sock.close()

        # A version 1 session may not use them.
        sock, w = _session(port, tok, version=1)
        check(w["version"] == 1, "WELCOME chose version %d for a version 1 client" % w["version"])
        sock.sendall(bsproto.enc_get_delta(1, base_sha, base_sha, "base.bin"))
        msgs = _closed_after(sock)
        check(msgs is not None and any(m["type"] == "ERROR" and m["name"] == "PROTOCOL" for m in msgs),
              "GET_DELTA in a version 1 session: %r" % msgs)
        sock.close()

        # Nothing half-written is left, and the honest agents still sync.
        tmp = os.path.join(os.path.dirname(tree), "tmp")
        wait_until(lambda: not os.listdir(tmp), 10, "the refused uploads' temporary files to go")
        for name in ("past.bin", "wrap.bin", "long.bin", "ghost.bin", "huge.bin", "stolen.bin"):
            check(not os.path.exists(os.path.join(tree, name)), "%s was stored" % name)
        _overwrite(pa, 100, b"honest edit")
        wait_until(lambda: _same(pa, os.path.join(b.dir, "base.bin")), 30, "an honest edit on B")
        wait_until(lambda: _same(os.path.join(tree, "copy.bin"), os.path.join(b.dir, "copy.bin")), 30,
                   "copy.bin on B")
