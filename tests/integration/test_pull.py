"""Pulls answered in pages (protocol 5): what the server sends, and
joins and comparisons of trees bigger than a page."""

import os
import re
import time

import bsproto
import harness
from harness import (Env, assert_trees_equal, check, make_small_files, wait_content, wait_until,
                     write_file)


def _reader(srv, token, version=bsproto.PAGE_VERSION):
    sock = bsproto.connect(srv.port)
    w = bsproto.hello(sock, token, name="reader", max_version=version)
    check(w["version"] == version, "WELCOME: %r" % (w,))
    return sock


def test_pull_pages():
    """A snapshot in pages of 5: every page of the one snapshot it began
    with (a change made between pages is not in it), GETs between pages,
    each path once and in order; a long log is paged too; CONTINUE with
    no answer kept is PROTOCOL and the session goes on; PULL_PAGE before
    version 5 is PROTOCOL."""
    with Env("pull_pages") as env:
        srv = env.server()
        adir = env.path("A")
        for i in range(12):
            write_file(os.path.join(adir, "d%d" % (i % 3), "f%02d" % i), "file %d\n" % i)
        a = env.agent("A", adir)
        wait_content(os.path.join(srv.tree(a.token), "d2", "f11"), "file 11\n", timeout=60)

        sock = _reader(srv, a.token)
        seq, flags, first = bsproto.pull_page(sock, 2, 0, 5)
        check(flags & bsproto.CHANGES_SNAPSHOT and flags & bsproto.CHANGES_PAGE and len(first) == 5,
              "first page: flags %#x, %d records" % (flags, len(first)))
        # A change between pages: the next pages are still of the snapshot taken first.
        write_file(os.path.join(adir, "d0", "later"), "later\n")
        wait_content(os.path.join(srv.tree(a.token), "d0", "later"), "later\n", timeout=60)
        f = bsproto.get(sock, 3, first[-1]["sha"], first[-1]["path"]) if first[-1]["op"] == 1 else None
        recs = list(first)
        req = 4
        while flags & bsproto.CHANGES_PAGE:
            s2, flags, page = bsproto.pull_page(sock, req, 0, 5, bsproto.PULL_CONTINUE)
            check(s2 == seq, "page %d is of snapshot %d, not %d" % (req, seq, s2))
            check(len(page) <= 5, "a page of 5 holds %d" % len(page))
            recs += page
            req += 1
        paths = [r["path"] for r in recs]
        check(len(recs) == 15 and paths == sorted(paths) and b"d0/later" not in paths,
              "the snapshot in pages: %r" % paths)
        if f is not None:
            check(f["data"] == open(os.path.join(adir, first[-1]["path"].decode()), "rb").read(),
                  "GET between pages")
        m = bsproto.pull_page(sock, 30, 0, 5, bsproto.PULL_CONTINUE)
        check(isinstance(m, dict) and m["name"] == "PROTOCOL" and m["req"] == 30,
              "CONTINUE after the last page: %r" % (m,))
        bsproto.ping(sock)
        # The log since the snapshot: one record, one page.
        s3, flags, log = bsproto.pull_page(sock, 31, seq, 5)
        check(not flags & (bsproto.CHANGES_SNAPSHOT | bsproto.CHANGES_PAGE) and
              [r["path"] for r in log] == [b"d0/later"], "log since %d: %#x %r" % (seq, flags, log))
        # A log longer than a page is paged as well.
        _, flags, log = bsproto.pull_page(sock, 32, 1, 4)
        check(not flags & bsproto.CHANGES_SNAPSHOT and flags & bsproto.CHANGES_PAGE and len(log) == 4,
              "a long log in pages: %#x, %d records" % (flags, len(log)))
        # A new PULL_PAGE drops the kept answer: its CONTINUE reads the new one.
        _, flags, again = bsproto.pull_page(sock, 33, 0, 100)
        check(flags & bsproto.CHANGES_SNAPSHOT and not flags & bsproto.CHANGES_PAGE and len(again) == 16,
              "a whole snapshot in one page of 100: %#x, %d" % (flags, len(again)))
        sock.close()

        sock = _reader(srv, a.token, bsproto.HISTORY_VERSION)
        m = bsproto.pull_page(sock, 2, 0, 5)
        check(isinstance(m, dict) and m["name"] == "PROTOCOL", "PULL_PAGE in a version 4 session: %r" % (m,))
        sock.close()


def _asked(agent):
    """The agent's PULL requests (debug lines): [(since, next page?)]."""
    return [(int(m.group(1)), bool(m.group(2))) for m in
            re.finditer(r"asking for changes since (\d+)(, next page)? \(request", agent.log_text())]


def _files(root):
    return sum(len(fs) for _, _, fs in os.walk(root))


def test_join_in_pages():
    """A join of 17,000 files comes in pages of 16,384 records and loses
    nothing; a computer that was away while 17,000 files more were added
    elsewhere (and one deleted, one directory moved) is answered with the
    whole tree in pages instead of the long log, and ends equal."""
    os.environ["BACKUPSYNC_LOG_LEVEL"] = "debug"
    with Env("join_in_pages") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 170, 100)
        a = env.agent("A", adir)
        wait_until(lambda: _files(srv.tree(a.token)) == 17000, 240, "A's first backup on the server")
        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, timeout=240, msg="B after joining 17,000 files")
        asked = _asked(b)
        check((0, False) in asked and (0, True) in asked, "B joined in pages: %s" % asked)
        # The next page is asked for while the last batches of the first
        # are still to be placed: they are placed as its files arrive.
        log = b.log_text()
        nxt = log.index(", next page")
        placed = [int(m.group(1)) for m in re.finditer(r"placed records \d+ to (\d+) of the answer", log[:nxt])]
        check(placed and max(placed) < 16384,
              "B placed the first page's last batches before asking for the next page: %s" % placed[-3:])
        later = [int(m.group(1)) for m in re.finditer(r"placed records \d+ to (\d+) of the answer", log[nxt:])]
        check(later and max(later) > 16384, "B placed the records after the first page: %s" % later[-3:])

        b.stop()
        make_small_files(adir, 170, 100, "n%03d", "g%02d", b"new ")
        os.unlink(os.path.join(adir, "d000", "f00"))
        os.rename(os.path.join(adir, "d001"), os.path.join(adir, "moved001"))
        wait_until(lambda: _files(srv.tree(a.token)) == 33999 and
                   os.path.isdir(os.path.join(srv.tree(a.token), "moved001")), 240, "A's 17,000 files more on the server")
        n0 = len(b.log_text())
        t0 = time.monotonic()
        b.start(wait_id=False)
        assert_trees_equal(adir, b.dir, timeout=240, msg="B after 17,000 files more")
        print("B caught up in %.1f s" % (time.monotonic() - t0))
        later = b.log_text()[n0:]
        check("comparing the whole tree instead" in later,
              "B was answered with the whole tree, not a log of 17,000 records: %s" % later[-3000:])


def _account_for_joins(env):
    """A server and agent A with 400 small files and a 3 MiB one, all on
    the server: (server, A, A's snapshot with mtimes)."""
    srv = env.server()
    adir = env.path("A")
    make_small_files(adir, 20, 20)
    write_file(os.path.join(adir, "big.bin"), os.urandom(3 << 20))
    a = env.agent("A", adir)
    want = harness.snapshot(adir, mtimes=True)
    wait_until(lambda: harness.server_snapshot(srv, a.token) == want, harness.SYNC_TIMEOUT,
               "A's tree on the server")
    return srv, a, want


def _join(env, a, name, want):
    """A new computer joins A's account with --once and a limit of 128
    fds (so 16 downloads kept open at once: an eighth), and then holds
    exactly A's tree."""
    x = env.agent(name, env.path(name), token=a.token, start=False)
    rc, _, err = x.run_once(timeout=120, max_fds=128)
    check(rc == 0, "%s's join exited %d:\n%s" % (name, rc, err[-2000:]))
    got = harness.snapshot(x.dir, mtimes=True)
    check(got == want, "%s after its join differs from A:\n%s" % (name, harness.diff_snapshots(want, got, "A", name)))


def test_join_with_few_fds():
    """The downloads kept open stay within their budget of the fd limit,
    however far ahead the GETs run: a join at 128 fds completes."""
    with Env("join_with_few_fds") as env:
        srv, a, want = _account_for_joins(env)
        _join(env, a, "B", want)


def test_join_leaves_others_data():
    """A join with another program's data waiting for the disk syncs its
    downloads one by one, those past the fds kept open opened again: a
    syncfs() would write all of that data first, and make the join wait
    for a slow disk."""
    with Env("join_leaves_others_data") as env:
        srv, a, want = _account_for_joins(env)
        other = harness.OthersData(env.path("other-program.img"))
        _join(env, a, "B", want)
        other.check("after B joined")


def test_join_refuses_corrupt_download():
    """A small file whose copy on the server rotted (the same size, one
    byte changed) is refused by a computer joining: its SHA-256 is checked
    before it is written, so nothing of it lands in the tree, the failure
    is logged, and every file beside it arrives."""
    with Env("join_refuses_corrupt_download") as env:
        srv = env.server()
        adir = env.path("A")
        make_small_files(adir, 4, 25)
        write_file(os.path.join(adir, "rot.txt"), b"the content A sent\n" * 100)
        a = env.agent("A", adir)
        want = harness.snapshot(adir, mtimes=True)
        wait_until(lambda: harness.server_snapshot(srv, a.token) == want, harness.SYNC_TIMEOUT,
                   "A's tree on the server")
        a.stop()
        spath = os.path.join(srv.tree(a.token), "rot.txt")
        with open(spath, "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0x20]))
        b = env.agent("B", env.path("B"), token=a.token, start=False)
        rc, _, err = b.run_once(timeout=120)
        check(not os.path.lexists(os.path.join(b.dir, "rot.txt")), "B placed the rotten rot.txt")
        check("download of rot.txt failed: Bad message" in err,
              "B did not report the refused download:\n%s" % err[-2000:])
        got = harness.snapshot(b.dir, mtimes=True)
        del want["rot.txt"]
        check(got == want, "B beside rot.txt differs from A:\n%s" % harness.diff_snapshots(want, got, "A", "B"))
