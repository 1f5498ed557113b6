#!/usr/bin/env python3
"""test_nodes.py - backupsyncd on the cluster backend: two nodes, real agents

Two backupsyncd nodes on different ports share one PostgreSQL database
and one bucket of the suite's engines (tests/cluster/engines.py). Agent A
registers on node 1 and agent B joins the account on node 2; files, edits,
renames and deletions go both ways; what A changes reaches B through the
other node (PostgreSQL NOTIFY), and the propagation time is printed.
The content is in the bucket, one object per content, and the database's
log is the account's one order. A configuration with a password in it is
refused with the file, line and key.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import Env, check, wait_content, wait_absent, write_file  # noqa: E402
from engines import Engines  # noqa: E402


class Cluster:
    """A database and a bucket of their own, and the configuration naming them."""

    def __init__(self, env, eng, extra=""):
        self.env, self.eng = env, eng
        tag = uuid.uuid4().hex[:10]
        self.db = "bs_nodes_" + tag
        self.bucket = "bs-nodes-" + tag
        eng.create_database(self.db)
        passfile = env.path("pgpass")
        with open(passfile, "w") as f:
            f.write("%s:%s:%s:%s:%s\n" % (eng.pg_host, eng.pg_port, self.db, eng.pg_user, eng.pg_password))
        os.chmod(passfile, 0o600)
        creds = env.path("s3.key")
        with open(creds, "w") as f:
            f.write("%s\n%s\n" % (eng.access_key, eng.secret_key))
        os.chmod(creds, 0o600)
        self.config = env.path("backupsync.ini")
        with open(self.config, "w") as f:
            f.write("[server]\n"
                    "metadata = host=%s port=%d user=%s dbname=%s passfile=%s\n"
                    "content = s3://%s\n"
                    "s3-endpoint = %s\n"
                    "s3-credentials = %s\n"
                    "%s"
                    % (eng.pg_host, eng.pg_port, eng.pg_user, self.db, passfile, self.bucket,
                       eng.s3_endpoint, creds, extra))

    def node(self, name):
        srv = harness.Server(self.env, name=name, args=["--config", self.config])
        self.env.servers.append(srv)
        return srv.start(timeout=60)

    def sql(self, query):
        return self.eng.psql(query, dbname=self.db).strip()

    def objects(self, account):
        """The account's objects of whole contents: (key, size)."""
        return self.eng.list_objects(self.bucket, "accounts/%s/c/" % account.split("-")[0])

    def chunks(self, account):
        """The account's objects of chunks of big contents: (key, size)."""
        return self.eng.list_objects(self.bucket, "accounts/%s/k/" % account.split("-")[0])

    def drop(self):
        try:
            self.eng.drop_database(self.db)
        finally:
            self.eng.delete_bucket(self.bucket)


def cli(*args):
    p = subprocess.run([harness.CLI_BIN] + [str(x) for x in args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def cli_json(*args):
    rc, out, err = cli(*(args + ("--json",)))
    check(rc == 0, "backupsync %s exited %d: %s" % (" ".join(args), rc, err))
    return json.loads(out)


def refuses_password(env, eng):
    bad = env.path("bad.ini")
    with open(bad, "w") as f:
        f.write("[server]\n# cluster\nmetadata = postgresql://u:secret@127.0.0.1/db\ncontent = s3://b-ucket\n"
                "s3-endpoint = http://127.0.0.1:1\n")
    p = subprocess.run([harness.SERVER_BIN, "1", "--storage", env.path("bad-storage"), "--config", bad],
                       capture_output=True, text=True, timeout=30)
    check(p.returncode == 78, "a password in the file: exit %d, expected 78 (EX_CONFIG)" % p.returncode)
    check("%s:3: metadata:" % bad in p.stderr and "passfile" in p.stderr,
          "the error names the file, line and key: %r" % p.stderr)


def main():
    eng = Engines.from_env()
    with Env("nodes") as env:
        refuses_password(env, eng)
        cl = Cluster(env, eng)
        try:
            n1 = cl.node("node1")
            n2 = cl.node("node2")
            check("cluster backend" in n1.log_text(), "node 1 does not say it runs on the cluster backend")

            a_dir, b_dir = env.path("a"), env.path("b")
            os.makedirs(a_dir)
            os.makedirs(b_dir)
            write_file(os.path.join(a_dir, "hello.txt"), b"hello from A\n")
            os.makedirs(os.path.join(a_dir, "docs", "deep"))
            write_file(os.path.join(a_dir, "docs", "deep", "big.bin"), os.urandom(6 * 1024 * 1024 + 17))
            os.symlink("hello.txt", os.path.join(a_dir, "link"))
            a = harness.Agent(env, "A", a_dir, server=n1).start()
            b = harness.Agent(env, "B", b_dir, token=a.token, server=n2).start()
            wait_content(os.path.join(b_dir, "hello.txt"), b"hello from A\n", msg="A's file on B (via node 2)")
            wait_content(os.path.join(b_dir, "docs", "deep", "big.bin"),
                         harness.read_bytes(os.path.join(a_dir, "docs", "deep", "big.bin")), msg="the big file on B")
            harness.wait_until(lambda: os.path.islink(os.path.join(b_dir, "link")), msg="the symlink on B")
            check(os.readlink(os.path.join(b_dir, "link")) == "hello.txt", "the symlink's target")

            # The big file (6 MiB) is kept as chunks, each one object, and no
            # whole object; its recipe adds up to its size.
            big = harness.read_bytes(os.path.join(a_dir, "docs", "deep", "big.bin"))
            acct = a.token.split("-")[0]
            chunks = cl.chunks(a.token)
            check(len(chunks) >= 2 and all(size <= 4 * 1024 * 1024 for _, size in chunks),
                  "the big file's chunks: %r" % [size for _, size in chunks])
            check(sum(size for _, size in chunks) == len(big), "the chunks do not add up to the big file")
            check(not any(k.endswith(hashlib.sha256(big).hexdigest()) for k, _ in cl.objects(a.token)),
                  "the big file was stored whole too")
            check(cl.sql("SELECT length(recipe) / 36 FROM bs_objects WHERE account = '%s' AND sha = '\\x%s'"
                         % (acct, hashlib.sha256(big).hexdigest())) == str(len(chunks)),
                  "the recipe does not list every chunk")

            # A copy (cp -a) names a content the store holds: not stored again.
            key = "/%s/%s" % (cl.bucket, chunks[0][0])
            stamp = eng.s3("HEAD", key)[1].get("Last-Modified")
            time.sleep(1.2)
            subprocess.run(["cp", "-a", os.path.join(a_dir, "docs", "deep", "big.bin"),
                            os.path.join(a_dir, "big-copy.bin")], check=True)
            wait_content(os.path.join(b_dir, "big-copy.bin"), big, msg="the copy on B")
            again = eng.s3("HEAD", key)[1].get("Last-Modified")
            check(stamp and stamp == again, "the copy's content was stored again (%s, then %s)" % (stamp, again))

            # Both ways, and how fast: a change on one node reaches an agent of the other.
            times = []
            for i in range(10):
                src, dst = (a_dir, b_dir) if i % 2 == 0 else (b_dir, a_dir)
                data = ("change %d\n" % i).encode()
                t0 = time.monotonic()
                write_file(os.path.join(src, "ping.txt"), data)
                wait_content(os.path.join(dst, "ping.txt"), data, msg="change %d across the nodes" % i)
                times.append(time.monotonic() - t0)
                time.sleep(0.2)
            times.sort()
            print("propagation across two nodes: p50 %.0f ms, max %.0f ms (10 changes)"
                  % (times[len(times) // 2] * 1000, times[-1] * 1000))
            # Told at once (NOTIFY), not found by the agent's 5 s poll.
            check(times[len(times) // 2] < 2.0, "a change reached the other node's agent only by polling")
            # The same through one node, for comparison: C beside A on node 1.
            c_dir = env.path("c")
            os.makedirs(c_dir)
            c = harness.Agent(env, "C", c_dir, token=a.token, server=n1).start()
            wait_content(os.path.join(c_dir, "ping.txt"), data, msg="C joined")
            one = []
            for i in range(10):
                data = ("one node %d\n" % i).encode()
                t0 = time.monotonic()
                write_file(os.path.join(a_dir, "ping.txt"), data)
                wait_content(os.path.join(c_dir, "ping.txt"), data, msg="change %d on one node" % i)
                one.append(time.monotonic() - t0)
                time.sleep(0.2)
            one.sort()
            print("propagation through one node: p50 %.0f ms, max %.0f ms (10 changes)"
                  % (one[len(one) // 2] * 1000, one[-1] * 1000))
            check(one[len(one) // 2] < 2.0, "a change reached an agent of the same node only by polling")
            c.stop()

            # A small edit in the middle of the big file, both ways: the upload
            # takes the rest from the stored content (COPY) and the download
            # from the content the other computer holds (GET_DELTA), both read
            # from the store a window at a time.
            before = len(cl.chunks(a.token))
            for src, dst, tag in ((b_dir, a_dir, b"B"), (a_dir, b_dir, b"A")):
                path = os.path.join(src, "docs", "deep", "big.bin")
                data = bytearray(harness.read_bytes(path))
                data[1500000:1500100] = tag * 100
                tmp = path + ".tmp"
                write_file(tmp, bytes(data))
                os.rename(tmp, path)
                wait_content(os.path.join(dst, "docs", "deep", "big.bin"), bytes(data),
                             msg="an edit in the middle of big.bin from %s" % tag.decode())
            # The store keeps each chunk once: two edits add a few chunks, not
            # two more copies of the file.
            added = len(cl.chunks(a.token)) - before
            check(1 <= added <= 6, "two 100-byte edits stored %d new chunks" % added)
            check(any("copied from the stored version" in line for line in n1.log_lines() + n2.log_lines()),
                  "no upload took part of its content from the stored version (COPY)")
            check(any("big.bin" in line and "the rest unchanged" in line and "downloaded" in line
                      for line in a.log_lines() + b.log_lines()),
                  "no download of the edit took the rest from the computer's own copy (GET_DELTA)")

            # Edits, renames and deletions from B reach A.
            write_file(os.path.join(b_dir, "hello.txt"), b"edited on B\n")
            wait_content(os.path.join(a_dir, "hello.txt"), b"edited on B\n", msg="B's edit on A")
            os.rename(os.path.join(b_dir, "docs"), os.path.join(b_dir, "papers"))
            wait_content(os.path.join(a_dir, "papers", "deep", "big.bin"),
                         harness.read_bytes(os.path.join(b_dir, "papers", "deep", "big.bin")), msg="the moved tree on A")
            wait_absent(os.path.join(a_dir, "docs"), msg="the old name gone on A")
            os.unlink(os.path.join(b_dir, "ping.txt"))
            wait_absent(os.path.join(a_dir, "ping.txt"), msg="B's deletion on A")
            harness.assert_trees_equal(a_dir, b_dir, msg="A and B")

            # The same file changed through both nodes: one order decides, the
            # other change is a conflict, kept as a copy, as on one machine.
            write_file(os.path.join(a_dir, "same.txt"), b"original\n")
            wait_content(os.path.join(b_dir, "same.txt"), b"original\n", msg="same.txt on B")
            os.kill(a.popen.pid, signal.SIGSTOP)
            os.kill(b.popen.pid, signal.SIGSTOP)
            write_file(os.path.join(a_dir, "same.txt"), b"A's version\n")
            write_file(os.path.join(b_dir, "same.txt"), b"B's version, longer\n")
            os.kill(a.popen.pid, signal.SIGCONT)
            os.kill(b.popen.pid, signal.SIGCONT)
            harness.wait_until(lambda: len(harness.conflict_copies(a_dir)) == 1 and
                               len(harness.conflict_copies(b_dir)) == 1,
                               msg="one conflict copy on A and on B")
            harness.assert_trees_equal(a_dir, b_dir, msg="A and B after the conflict")
            snap = harness.snapshot(a_dir, modes=False)
            both = {snap["same.txt"][1], snap[harness.conflict_copies(a_dir)[0]][1]}
            check(both == {b"A's version\n", b"B's version, longer\n"},
                  "the winner and the conflict copy do not hold the two versions: %s" % both)
            check(any("conflict" in line.lower() and "same.txt" in line
                      for line in n1.log_lines() + n2.log_lines() + a.log_lines() + b.log_lines()),
                  "nobody logged the conflict on same.txt")

            # Getting files back on the cluster: the log, a file's versions, and
            # a deleted tree restored (through node 1) reaching B (node 2).
            big = harness.read_bytes(os.path.join(a_dir, "papers", "deep", "big.bin"))
            versions = cli_json("versions", "hello.txt", "--state-dir", a.state_dir)
            check([v.get("size") for v in versions][:2] == [len(b"edited on B\n"), len(b"hello from A\n")],
                  "versions of hello.txt: %s" % versions)
            shutil.rmtree(os.path.join(b_dir, "papers"))
            wait_absent(os.path.join(a_dir, "papers"), msg="the deletion of papers/ on A")
            log = cli_json("log", "-n", "5", "--state-dir", a.state_dir)
            check(any(r.get("path") == "papers" and r.get("op") in ("delete", "DELETE") for r in log),
                  "the deletion is not in the log: %s" % log[:5])
            deleted = cli_json("deleted", "--state-dir", a.state_dir)
            check(any(r.get("path") == "papers" for r in deleted), "papers/ is not listed as deleted: %s" % deleted)
            rc, out, err = cli("restore", "papers", "--state-dir", a.state_dir)
            check(rc == 0, "restore exited %d: %s" % (rc, err))
            check(harness.read_bytes(os.path.join(a_dir, "papers", "deep", "big.bin")) == big,
                  "the restored big file differs")
            wait_content(os.path.join(b_dir, "papers", "deep", "big.bin"), big, msg="the restore on B")

            # Content in the store: an object per small content, a chunk object
            # per chunk of the big ones; one order in the log.
            account = a.token.split("-")[0]
            objs = cl.objects(account)
            contents = int(cl.sql("SELECT count(*) FROM bs_objects WHERE account = '%s'" % account))
            whole = int(cl.sql("SELECT count(*) FROM bs_objects WHERE account = '%s' AND recipe IS NULL" % account))
            check(len(objs) == whole, "%d objects in the bucket, %d whole contents recorded" % (len(objs), whole))
            kept = int(cl.sql("SELECT count(*) FROM bs_chunks WHERE account = '%s' AND refs > 0" % account))
            check(len(cl.chunks(account)) == kept, "%d chunk objects, %d chunks named" % (len(cl.chunks(account)), kept))
            seqs = cl.sql("SELECT count(*), min(seq), max(seq) FROM bs_log WHERE account = '%s'" % account)
            n, lo, hi = (int(x) for x in seqs.split("|"))
            check(n == hi and lo == 1, "the log is not one gapless order: %s" % seqs)
            check(cl.sql("SELECT seq FROM bs_accounts WHERE id = '%s'" % account) == str(hi),
                  "the account's sequence is not its last change")

            # backupsyncd --verify: every content named is in the store, whole.
            def verify(*extra):
                p = subprocess.run([harness.SERVER_BIN, "--verify", "--config", cl.config,
                                    "--storage", env.path("verify-storage")] + list(extra),
                                   capture_output=True, text=True, timeout=300)
                return p.returncode, p.stdout, p.stderr
            rc, out, err = verify()
            check(rc == 0 and "%d contents checked (hashed), 0 problems" % contents in out,
                  "--verify of a sound cluster: exit %d: %s %s" % (rc, out, err))
            (gone, _), (damaged, dsize) = sorted(objs)[0], sorted(objs)[1]
            eng.delete_object(cl.bucket, gone)
            eng.put_object(cl.bucket, damaged, b"x" * dsize)
            # A chunk of the current big file lost, another damaged.
            cur = hashlib.sha256(big).hexdigest()
            rec = bytes.fromhex(cl.sql("SELECT encode(recipe, 'hex') FROM bs_objects WHERE account = '%s' AND "
                                       "sha = '\\x%s'" % (account, cur)))
            lost_chunk = "accounts/%s/k/%s" % (account, rec[4:36].hex())
            bad_chunk, bad_len = "accounts/%s/k/%s" % (account, rec[40:72].hex()), int.from_bytes(rec[36:40], "big")
            eng.delete_object(cl.bucket, lost_chunk)
            eng.put_object(cl.bucket, bad_chunk, b"y" * bad_len)
            rc, out, err = verify()
            check(rc == 1, "--verify with lost and damaged objects: exit %d, expected 1: %s" % (rc, out))
            check("missing in the store" in out and "damaged in the store" in out and "chunk 0" in out
                  and "problems" in out, "--verify does not name the problems: %s" % out)
            rc, out, err = verify("--no-hash")
            check(rc == 1 and "missing in the store" in out and "damaged" not in out and "chunk 0" in out,
                  "--verify --no-hash: exit %d: %s" % (rc, out))
            print("ok: two nodes, one account: %d changes in one order, %d objects; --verify finds a lost "
                  "and a damaged object" % (n, len(objs)))
        finally:
            for p in list(env.procs):
                p.cleanup()
            cl.drop()


if __name__ == "__main__":
    try:
        main()
    except harness.TestFailure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
