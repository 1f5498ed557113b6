#!/usr/bin/env python3
"""test_hostile.py - a cluster node under hostile clients, with its limits

A node of the cluster backend gets what the embedded server's hostile
tests send: malformed and oversized frames, paths out of the tree, a
content whose SHA-256 lies, more data than announced, wrong keys until
rate-limited, another account's paths, a frame stalled past the idle
timeout, and more connections than max-connections. Each is answered
with its protocol error; nothing reaches the database or the bucket
outside the account (no entry, no object, no account created), nothing
is left in the spool directory, and a well-behaved agent on the other
node keeps syncing through all of it. What the node tells systemd
(READY=1, STATUS= with its accounts, connections and key) is read from
its $NOTIFY_SOCKET, as `systemctl status` shows it.
"""
import os
import re
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import bsproto  # noqa: E402
import harness  # noqa: E402
from harness import Env, check, wait_content, wait_until, write_file  # noqa: E402
from engines import Engines  # noqa: E402
from test_nodes import Cluster  # noqa: E402
from test_hostile import (HOSTILE_PATHS, _allowed, _hello_answer, connect_from, desc, join,  # noqa: E402
                          next_msg, read_until_eof, send_quiet, server_paths)

E = bsproto.ERR


def main():
    eng = Engines.from_env()
    with Env("cluster_hostile") as env:
        cl = Cluster(env, eng, extra="idle-timeout = 2s\nmax-connections = 6\n")
        notify = harness.NotifyListener(env.path("notify.sock"))
        said = notify.said
        try:
            with notify.exported():
                n1 = cl.node("node1")
            n2 = cl.node("node2")
            a_dir, b_dir = env.path("a"), env.path("b")
            os.makedirs(a_dir)
            write_file(os.path.join(a_dir, "seed.txt"), b"seed\n")
            a = harness.Agent(env, "A", a_dir, server=n2).start()
            b = harness.Agent(env, "B", b_dir, token=a.token, server=n2).start()
            wait_content(os.path.join(b_dir, "seed.txt"), b"seed\n", msg="the seed on B")
            tok, acct = a.token, a.token.split("-")[0]
            synced = [0]

            def still_syncing(what):
                synced[0] += 1
                name, data = "after-%d.txt" % synced[0], b"after %s\n" % what.encode()
                write_file(os.path.join(a_dir, name), data)
                wait_content(os.path.join(b_dir, name), data, 30, msg="%s: A's file on B" % what)
                check(n1.running() and n2.running(), "%s: a node died" % what)

            def rows(sql):
                return cl.sql(sql)

            entries_before = rows("SELECT count(*) FROM bs_entries")
            failures = []

            # Frames: each answered with its error and the connection closed.
            def outcome(what, sock, want):
                msgs, closed = read_until_eof(sock, 8)
                sock.close()
                errs = [m["name"] for m in msgs if m["type"] == "ERROR"]
                if not closed or not errs or any(e not in want for e in errs):
                    failures.append("%s: %s closed=%s" % (what, [desc(m) for m in msgs], closed))

            badf = {"BAD_FRAME", "TOO_LARGE", "PROTOCOL"}
            for what, data in [("length 0", struct.pack(">I", 0)),
                               ("length 0xFFFFFFFF", struct.pack(">I", 0xFFFFFFFF) + b"\x01"),
                               ("unknown type", bsproto.frame(0x7f, b"junk"))]:
                s = connect_from(n1.port, "127.0.0.2")
                send_quiet(s, data)
                outcome(what, s, badf)
            s = join(n1.port, tok)
            send_quiet(s, struct.pack(">I", (1 << 20) + 2) + b"\x15" + b"\0" * 1000)
            outcome("after WELCOME: length 1 MiB + 2", s, badf)
            still_syncing("malformed frames")

            # Paths out of the tree: BAD_PATH, in the database nothing.
            s, req = join(n1.port, tok), 100
            for p in HOSTILE_PATHS:
                for what, frames in [("PUT", lambda r: bsproto.enc_put(r, p, 0, 4) + bsproto.enc_data(r, b"evil")
                                      + bsproto.enc_put_end(r, bsproto.sha256(b"evil"))),
                                     ("MKDIR", lambda r: bsproto.enc_mkdir(r, p)),
                                     ("SYMLINK", lambda r: bsproto.enc_symlink(r, p, b"/etc/passwd")),
                                     ("MOVE", lambda r: bsproto.enc_move(r, "seed.txt", p, 1)),
                                     ("DELETE", lambda r: bsproto.enc_delete(r, p, 1))]:
                    req += 1
                    if s is None:
                        s = join(n1.port, tok)
                    send_quiet(s, frames(req))
                    m = next_msg(s)
                    if m is None or (m["type"] == "ERROR" and m["code"] == E["BAD_FRAME"]):
                        s.close()
                        s = None
                    if not _allowed(p, m):
                        failures.append("%s %r -> %s" % (what, p[:60], desc(m)))
            if s:
                s.close()
            check(set(server_paths(n1.port, tok)) == {b"seed.txt"} | {b"after-%d.txt" % i
                                                                      for i in range(1, synced[0] + 1)},
                  "the account's tree changed under hostile paths: %r" % sorted(server_paths(n1.port, tok)))
            check(rows("SELECT count(*) FROM bs_entries WHERE account <> '%s'" % acct) == "0",
                  "an entry outside the account")
            still_syncing("hostile paths")

            # A content whose SHA-256 lies, and more data than announced.
            s = join(n1.port, tok)
            send_quiet(s, bsproto.enc_put(7, "liar.txt", 0, 5) + bsproto.enc_data(7, b"truth")
                       + bsproto.enc_put_end(7, bsproto.sha256(b"lies!")))
            m = next_msg(s)
            if not (m and m["type"] == "ERROR" and m["name"] == "CHECKSUM"):
                failures.append("a lying SHA-256: %s" % desc(m))
            s.close()
            s = join(n1.port, tok)
            send_quiet(s, bsproto.enc_put(8, "big.txt", 0, 4) + bsproto.enc_data(8, b"more than four"))
            m = next_msg(s)
            if not (m and m["type"] == "ERROR" and m["name"] == "TOO_LARGE"):
                failures.append("more data than announced: %s" % desc(m))
            s.close()
            for name, data in ((b"liar.txt", b"truth"), (b"big.txt", b"more than four")):
                check(rows("SELECT count(*) FROM bs_entries WHERE path = '\\x%s'::bytea" % name.hex()) == "0",
                      "%s was recorded" % name)
                check(rows("SELECT count(*) FROM bs_objects WHERE sha = '\\x%s'::bytea"
                           % bsproto.sha256(data).hex()) == "0", "the refused content of %s is named" % name)
            check(not any(k.endswith(bsproto.sha256(b"truth").hex()) for k, _ in cl.objects(tok)),
                  "a refused content was stored in the bucket")

            # Wrong keys until rate-limited; an unknown account is not created.
            names = []
            for i in range(15):
                m = _hello_answer(n1.port, "%s-%s" % (acct, "A" * 32), "127.0.0.5")
                names.append(m["name"] if m and m["type"] == "ERROR" else desc(m))
            check(all(x in ("AUTH", "RATE_LIMITED") for x in names) and "RATE_LIMITED" in names,
                  "wrong keys: %s" % names)
            m = _hello_answer(n1.port, "ZZZZ-" + "A" * 32, "127.0.0.6")
            check(m and m["type"] == "ERROR" and m["name"] == "AUTH", "an unknown account: %s" % desc(m))
            check(rows("SELECT count(*) FROM bs_accounts") == "1", "an account was created by a stranger")

            # Another account sees none of this one.
            other_dir = env.path("o")
            os.makedirs(other_dir)
            o = harness.Agent(env, "O", other_dir, server=n1).start()
            write_file(os.path.join(other_dir, "theirs.txt"), b"other\n")
            wait_until(lambda: rows("SELECT count(*) FROM bs_entries WHERE path = '\\x%s'::bytea"
                                    % b"theirs.txt".hex()) == "1", 30, "the other account's file")
            check(set(server_paths(n1.port, o.token)) == {b"theirs.txt"},
                  "another account's tree shows this one's: %r" % sorted(server_paths(n1.port, o.token)))

            # A DATA frame stalled past the idle timeout: TIMEOUT, closed,
            # and the spool has nothing left.
            s = join(n1.port, tok)
            t0 = time.monotonic()
            send_quiet(s, bsproto.enc_put(9, "stalled.txt", 0, 100) + bsproto.enc_data(9, b"x" * 100)[:50])
            msgs, closed = read_until_eof(s, 10)
            took = time.monotonic() - t0
            s.close()
            if not closed or not msgs or msgs[-1]["name"] != "TIMEOUT" or not 1.5 <= took <= 8:
                failures.append("a stalled DATA frame: %s closed=%s after %.1f s" % ([desc(x) for x in msgs],
                                                                                     closed, took))
            spool = os.path.join(n1.storage, "spool")
            check(os.listdir(spool) == [], "the spool keeps %r" % os.listdir(spool))

            # max-connections = 6: six idle connections fill the node; a
            # seventh is refused with BUSY, and served once they are gone.
            held = [socket.create_connection(("127.0.0.1", n1.port), timeout=5) for _ in range(6)]
            time.sleep(0.3)
            s = connect_from(n1.port, "127.0.0.8")
            m = next_msg(s)
            s.close()
            check(m is not None and m["type"] == "ERROR" and m["name"] == "BUSY",
                  "a connection over max-connections: %s" % desc(m))
            for h in held:
                h.close()
            still_syncing("connections over max-connections on the other node")
            wait_until(lambda: bsproto.ping(join(n1.port, tok)) or True, 10, "the node to serve again")

            # systemctl status: ready, and the figures of accounts, connections and key.
            check(any("READY=1" in m for m in said), "node 1 never said READY=1: %r" % said[:5])
            status = [m for m in said if "STATUS=" in m]
            check(any(re.search(r"STATUS=\d+ accounts open, \d+ connections; TLS key SHA256:[0-9a-f]{64}", m)
                      for m in status), "no STATUS= with the figures: %r" % status[-3:])
            check(any(re.search(r"STATUS=\d+ accounts open, ([6-9]|\d\d+) connections", m) for m in status),
                  "STATUS= never counted the connections at the cap: %r" % status[-5:])
            check(not failures, "hostile input on a cluster node:\n  " + "\n  ".join(failures))
            check(rows("SELECT count(*) FROM bs_entries") != entries_before, "nothing synced meanwhile")
            print("ok: a cluster node refused malformed frames, %d hostile paths, a lying SHA-256, an "
                  "oversized upload, wrong keys (%s), another account's reads and a stalled frame; the "
                  "agents on the other node kept syncing" % (len(HOSTILE_PATHS), " ".join(names)))
        finally:
            notify.close()
            cl.drop()


if __name__ == "__main__":
    main()
