#!/usr/bin/env python3
"""test_schema.py - the cluster backend's change functions on a real PostgreSQL

Loads daemon/cluster-schema.sql into a fresh database of the PostgreSQL
the cluster suite started (BS_TEST_PG_DSN) and checks each change's
answers as the embedded backend gives them: applied, already done,
conflict, missing parent, history kept, log written; and that two
transactions on one account from two connections (two nodes) are put in
one order by the account's row lock, so a stale base is a conflict
whichever node applies it.
"""
import os
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(ROOT, "daemon", "cluster-schema.sql")

ESTALE, ENOENT, EINVAL = -116, -2, -22
DEV = "'\\x0102'::bytea"


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def dsn_with_db(dsn, db):
    return " ".join(w for w in dsn.split() if not w.startswith("dbname=")) + " dbname=" + db


class Db:
    def __init__(self, dsn):
        self.dsn = dsn

    def run(self, sql, check=True):
        p = subprocess.run(["psql", "-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1", self.dsn],
                           input=sql, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            fail("psql failed: %s\n%s" % (sql[:200], p.stderr))
        return p.stdout.strip()

    def one(self, sql):
        return self.run(sql).split("\n")[-1]

    def change(self, call):
        out = self.one("SELECT r, version FROM %s;" % call)
        r, v = out.split("|")
        return int(r), int(v)


def b(s):
    return "'\\x%s'::bytea" % s.encode().hex()


def sha(n):
    return "'\\x%s'::bytea" % ("%02x" % n * 32)


def expect(got, r, what):
    if got[0] != r:
        fail("%s: answer %d, expected %d" % (what, got[0], r))
    return got[1]


def main():
    dsn = os.environ.get("BS_TEST_PG_DSN")
    if not dsn:
        fail("BS_TEST_PG_DSN is not set: the cluster suite runs under tests/cluster/engines.py run "
             "(tools/test does this)")
    name = "schema_" + uuid.uuid4().hex[:12]
    admin = Db(dsn)
    admin.run("CREATE DATABASE %s;" % name)
    try:
        db = Db(dsn_with_db(dsn, name))
        with open(SCHEMA, encoding="utf-8") as f:
            sql = f.read()
        db.run(sql)
        db.run(sql)  # loading twice is harmless: every node does it at start
        db.run("INSERT INTO bs_accounts(id, key_hash, created) VALUES ('AAAA', 'h', 0), ('BBBB', 'h', 0);")
        A = "'AAAA'"

        # Files: new, repeat, conflict, missing parent, overwrite keeps history.
        v1 = expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("f"), sha(1))), 0, "new file")
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("f"), sha(1))), 1, "repeat")
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 2000, %s)" % (A, DEV, b("f"), sha(1))), ESTALE,
               "same content, other mtime, old base")
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("d/f"), sha(1))), ENOENT,
               "no parent")
        v2 = expect(db.change("bs_put(%s, %s, %s, %d, 6, 420, 3000, %s)" % (A, DEV, b("f"), v1, sha(2))), 0,
                    "overwrite")
        if v2 != v1 + 1:
            fail("sequence went from %d to %d" % (v1, v2))
        if db.one("SELECT count(*) FROM bs_versions WHERE account = 'AAAA' AND path = %s AND replaced_seq = %d;"
                  % (b("f"), v2)) != "1":
            fail("the replaced state is not in the history")
        expect(db.change("bs_attr(%s, %s, %s, %d, 384, 3000, %s)" % (A, DEV, b("f"), v1, sha(2))), ESTALE,
               "attr on an old base")
        v3 = expect(db.change("bs_attr(%s, %s, %s, %d, 384, 4000, %s)" % (A, DEV, b("f"), v2, sha(2))), 0, "attr")
        expect(db.change("bs_attr(%s, %s, %s, %d, 384, 4000, %s)" % (A, DEV, b("f"), v2, sha(3))), ESTALE,
               "attr naming other content")

        # Directories and links.
        vd = expect(db.change("bs_mkdir(%s, %s, %s, 0, 493, 0)" % (A, DEV, b("d"))), 0, "mkdir")
        expect(db.change("bs_mkdir(%s, %s, %s, 0, 493, 0)" % (A, DEV, b("d"))), 1, "mkdir again")
        expect(db.change("bs_mkdir(%s, %s, %s, 0, 493, 0)" % (A, DEV, b("f"))), ESTALE, "mkdir over a file")
        vd2 = expect(db.change("bs_mkdir(%s, %s, %s, 0, 448, 0)" % (A, DEV, b("d"))), 0,
                     "a directory's new mode wins whatever its base")
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("d/x"), sha(4))), 0, "file in d")
        expect(db.change("bs_mkdir(%s, %s, %s, 0, 493, 0)" % (A, DEV, b("d/e"))), 0, "d/e")
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("d/e/y"), sha(5))), 0, "d/e/y")
        expect(db.change("bs_symlink(%s, %s, %s, 0, %s, 0)" % (A, DEV, b("d/l"), b("x"))), 0, "symlink")
        expect(db.change("bs_symlink(%s, %s, %s, 0, %s, 0)" % (A, DEV, b("d/l"), b("x"))), 1, "symlink again")
        expect(db.change("bs_symlink(%s, %s, %s, 0, %s, 0)" % (A, DEV, b("d/m"), "''::bytea")), EINVAL,
               "empty link target")

        # Moves: into itself refused, stale bases refused, below keeps versions.
        expect(db.change("bs_move(%s, %s, %s, %d, %s, 0)" % (A, DEV, b("d"), vd2, b("d/e/z"))), EINVAL,
               "move into itself")
        expect(db.change("bs_move(%s, %s, %s, %d, %s, 0)" % (A, DEV, b("d"), vd, b("g"))), ESTALE,
               "move on an old base")
        vy = int(db.one("SELECT version FROM bs_entries WHERE account = 'AAAA' AND path = %s;" % b("d/e/y")))
        vm = expect(db.change("bs_move(%s, %s, %s, %d, %s, 0)" % (A, DEV, b("d"), vd2, b("g"))), 0, "move d to g")
        rows = db.run("SELECT convert_from(path, 'UTF8'), version, since FROM bs_entries "
                      "WHERE account = 'AAAA' ORDER BY path;").split("\n")
        paths = [r.split("|")[0] for r in rows]
        if paths != ["f", "g", "g/e", "g/e/y", "g/l", "g/x"]:
            fail("entries after the move: %s" % paths)
        got = [r for r in rows if r.startswith("g/e/y|")][0].split("|")
        if int(got[1]) != vy or int(got[2]) != vm:
            fail("a moved entry below keeps its version and begins anew: %s" % got)

        # Move over an existing entry replaces it and keeps it.
        expect(db.change("bs_put(%s, %s, %s, 0, 5, 420, 1000, %s)" % (A, DEV, b("h"), sha(6))), 0, "h")
        vh = int(db.one("SELECT version FROM bs_entries WHERE account = 'AAAA' AND path = %s;" % b("h")))
        expect(db.change("bs_move(%s, %s, %s, %d, %s, 0)" % (A, DEV, b("f"), v3, b("h"))), ESTALE,
               "move over an entry without its base")
        expect(db.change("bs_move(%s, %s, %s, %d, %s, %d)" % (A, DEV, b("f"), v3, b("h"), vh)), 0, "move over h")
        if db.one("SELECT count(*) FROM bs_versions WHERE account = 'AAAA' AND path = %s;" % b("h")) != "1":
            fail("the replaced entry is not in the history")

        # Delete a tree: every entry below goes, each kept in the history.
        vg = int(db.one("SELECT version FROM bs_entries WHERE account = 'AAAA' AND path = %s;" % b("g")))
        expect(db.change("bs_delete(%s, %s, %s, %d)" % (A, DEV, b("g"), vg - 1)), ESTALE, "delete on an old base")
        vdel = expect(db.change("bs_delete(%s, %s, %s, %d)" % (A, DEV, b("g"), vg)), 0, "delete g")
        expect(db.change("bs_delete(%s, %s, %s, %d)" % (A, DEV, b("g"), vg)), 1, "delete again")
        if db.one("SELECT count(*) FROM bs_entries WHERE account = 'AAAA';") != "1":
            fail("entries left after deleting g")
        if db.one("SELECT count(*) FROM bs_versions WHERE account = 'AAAA' AND replaced_seq = %d;" % vdel) != "5":
            fail("g and the 4 entries below it are not all in the history")

        # The log holds one record per applied change, in sequence order.
        seqs = db.run("SELECT seq FROM bs_log WHERE account = 'AAAA' ORDER BY seq;").split("\n")
        if [int(s) for s in seqs] != list(range(1, vdel + 1)):
            fail("log sequences are not 1..%d: %s" % (vdel, seqs))
        if db.one("SELECT seq FROM bs_accounts WHERE id = 'AAAA';") != str(vdel):
            fail("the account's sequence is not its last change")
        # Another account is untouched by all of this.
        if db.one("SELECT count(*) FROM bs_entries WHERE account = 'BBBB';") != "0":
            fail("another account's entries changed")
        expect(db.change("bs_put('CCCC', %s, %s, 0, 5, 420, 1000, %s)" % (DEV, b("f"), sha(1))), ENOENT,
               "unknown account")

        # Two nodes, one account: the second transaction waits for the
        # first one's row lock, then sees its change: a conflict.
        node1 = Db(dsn_with_db(dsn, name))
        node2 = Db(dsn_with_db(dsn, name))
        expect(node1.change("bs_put('BBBB', %s, %s, 0, 5, 420, 1000, %s)" % (DEV, b("k"), sha(7))), 0, "k")
        vk = int(node1.one("SELECT version FROM bs_entries WHERE account = 'BBBB' AND path = %s;" % b("k")))
        out = {}

        def first():
            out[1] = node1.run("BEGIN; SELECT r FROM bs_put('BBBB', %s, %s, %d, 5, 420, 2000, %s); "
                               "SELECT pg_sleep(1.5); COMMIT;" % (DEV, b("k"), vk, sha(8)))
            out["t1"] = time.monotonic()

        t = threading.Thread(target=first)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        out[2] = node2.run("BEGIN; SELECT r FROM bs_put('BBBB', %s, %s, %d, 5, 420, 3000, %s); COMMIT;"
                           % (DEV, b("k"), vk, sha(9)))
        t2 = time.monotonic()
        t.join()
        if out[1].split("\n")[0] != "0":
            fail("the first node's change was not applied: %r" % out[1])
        if out[2].split("\n")[-1] != str(ESTALE):
            fail("the second node's change on the same base was not a conflict: %r" % out[2])
        if t2 - t0 < 0.7:
            fail("the second node did not wait for the first one's lock (%.2f s)" % (t2 - t0))
        if node1.one("SELECT seq FROM bs_accounts WHERE id = 'BBBB';") != str(vk + 1):
            fail("the account's sequence counts the refused change")

        # NOTIFY at commit carries the account and its sequence.
        got = node1.run("LISTEN backupsync; SELECT bs_announce('BBBB');")
        if 'payload "BBBB %d"' % (vk + 1) not in got:
            fail("no NOTIFY with the account and its sequence: %r" % got)

        # Pruning: with keep-all 0 the hour's newest state stays and takes
        # the dropped ones' time; past keep-versions all go, and the log
        # up to the one before the last record.
        for i, t in enumerate((11, 12, 13)):
            v = int(node1.one("SELECT version FROM bs_entries WHERE account = 'BBBB' AND path = %s;" % b("k")))
            expect(node1.change("bs_put('BBBB', %s, %s, %d, 5, 420, %d, %s)" % (DEV, b("k"), v, 5000 + i, sha(t))),
                   0, "k again")
        kept = node1.run("SELECT count(*), min(since), max(replaced_seq) FROM bs_versions "
                         "WHERE account = 'BBBB' AND path = %s;" % b("k")).split("|")
        now = int(time.time())
        out = node1.one("SELECT versions, log_records, history FROM bs_prune('BBBB', %d, 0, 86400, 604800, 0, 0, 1000);"
                        % now).split("|")
        if int(out[0]) != int(kept[0]) - 1 or out[1] != "0" or out[2] != "-1":
            fail("bs_prune thinning the hour: %r (versions before %r)" % (out, kept))
        left = node1.run("SELECT since, replaced_seq FROM bs_versions WHERE account = 'BBBB' AND path = %s;"
                         % b("k")).split("|")
        if left != [kept[1], kept[2]]:
            fail("the kept state does not cover the dropped ones' time: %r, want %r" % (left, kept[1:]))
        out = node1.one("SELECT versions, log_records FROM bs_prune('BBBB', %d, 0, 86400, 604800, 1, 0, 1000);"
                        % (now + 10)).split("|")
        seq = int(node1.one("SELECT seq FROM bs_accounts WHERE id = 'BBBB';"))
        if node1.one("SELECT count(*) FROM bs_versions WHERE account = 'BBBB';") != "0" or \
                node1.one("SELECT log_floor FROM bs_accounts WHERE id = 'BBBB';") != str(seq - 1):
            fail("bs_prune past keep-versions: %r, log floor %s, seq %d" % (
                out, node1.one("SELECT log_floor FROM bs_accounts WHERE id = 'BBBB';"), seq))
        out = node1.one("SELECT versions, log_records, history FROM bs_prune('BBBB', %d, 0, 86400, 604800, 1, 0, 1000);"
                        % (now + 10)).split("|")
        if out != ["0", "0", "0"]:
            fail("a pruned account pruned again: %r" % (out,))

        # The collector: objects nothing names, and the lock that keeps it
        # from a batch between its uploads and its commit.
        cur = node1.one("SELECT encode(sha, 'hex') FROM bs_entries WHERE account = 'BBBB' AND path = %s;" % b("k"))
        node1.run("INSERT INTO bs_objects VALUES ('BBBB', '\\x%s', 5, 1), ('BBBB', %s, 5, 1);" % (cur, sha(77)))
        unnamed = node1.run("SELECT encode(sha, 'hex') FROM bs_unnamed('BBBB', 100);").split("\n")
        if unnamed != ["%02x" % 77 * 32]:
            fail("bs_unnamed: %r, want only the unnamed object" % (unnamed,))
        p = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", node1.dsn],
                           input="BEGIN; SELECT bs_objects_held('BBBB'); COMMIT;", capture_output=True, text=True,
                           timeout=60)
        if p.returncode == 0 or "objects lock" not in p.stderr:
            fail("a transaction without the objects lock was not refused: %d %r" % (p.returncode, p.stderr))
        if node1.one("SELECT bs_objects_share('BBBB'); SELECT bs_objects_held('BBBB'); "
                     "SELECT bs_objects_unshare('BBBB');") != "t":
            fail("a session holding the objects lock was refused")
        held = {}

        def batch():
            held["out"] = node2.run("SELECT bs_objects_share('BBBB'); SELECT pg_sleep(1.5);")

        t = threading.Thread(target=batch)
        t.start()
        time.sleep(0.5)
        during = node1.one("SELECT bs_objects_collect('BBBB');")
        share2 = node1.one("SELECT bs_objects_share('BBBB'); SELECT bs_objects_unshare('BBBB');")
        t.join()
        after = node1.one("SELECT bs_objects_collect('BBBB');")
        if during != "f" or after != "t" or share2 != "t":
            fail("the collector's lock beside a batch: during %r, after %r, a second batch %r" % (during, after, share2))
        # Chunked contents: a recipe names chunks (one of them twice), each
        # counted once per naming; a second content sharing one adds to it;
        # forgetting the contents gives the names back.
        def entry(n, byte):
            return "%08x%s" % (n, ("%02x" % byte) * 32)
        rec1 = entry(5000, 0xc1) + entry(6000, 0xc2) + entry(5000, 0xc1)
        rec2 = entry(6000, 0xc2) + entry(7000, 0xc3)
        node1.run("SELECT bs_object_add('BBBB', %s, 16000, 1, '\\x%s'); "
                  "SELECT bs_object_add('BBBB', %s, 13000, 1, '\\x%s'); "
                  "SELECT bs_object_add('BBBB', %s, 16000, 1, '\\x%s');" % (sha(201), rec1, sha(202), rec2,
                                                                              sha(201), rec1))
        refs = node1.run("SELECT encode(sha, 'hex'), size, refs FROM bs_chunks WHERE account = 'BBBB' ORDER BY sha;")
        want = "\n".join("%s|%d|%d" % (("%02x" % b) * 32, n, r) for b, n, r in ((0xc1, 5000, 2), (0xc2, 6000, 2),
                                                                                  (0xc3, 7000, 1)))
        if refs != want:
            fail("chunk names after two recipes (one added twice): %r, want %r" % (refs, want))
        node1.run("SELECT bs_object_drop('BBBB', %s);" % sha(201))
        refs = node1.run("SELECT refs FROM bs_chunks WHERE account = 'BBBB' ORDER BY sha;").split("\n")
        if refs != ["0", "1", "1"]:
            fail("chunk names after forgetting the first content: %r" % refs)
        print("ok: every change answered as on one machine; two nodes kept one order (waited %.2f s); pruning, "
              "the collector's lock and chunk names" % (t2 - t0))
    finally:
        admin.run("DROP DATABASE IF EXISTS %s WITH (FORCE);" % name, check=False)


if __name__ == "__main__":
    main()
