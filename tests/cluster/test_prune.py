#!/usr/bin/env python3
"""test_prune.py - retention on the cluster backend: history thinned, objects collected

Two nodes that keep versions and the log for a few seconds and prune every
second: old versions leave the database and their objects the bucket,
while every current content stays; an object a dead node stored but never
named (a crash between upload and commit) is swept, a key that is not a
content's is left alone; a burst of edits through both nodes while the
collector runs leaves no name pointing at a missing object (--verify);
restore and a join still work; `backupsyncd --prune` on the cluster runs
beside the nodes and reports what it freed.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import Env, check, wait_content, wait_until, write_file, snapshot, wait_tree  # noqa: E402
from engines import Engines, S3Error  # noqa: E402
from test_nodes import Cluster, cli, cli_json  # noqa: E402

RETENTION = "keep-versions = 3s\nkeep-all = 0\nprune-interval = 1s\n"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def chunk_keys(cl, agent):
    return set(k.rsplit("/", 1)[1] for k, _ in cl.chunks(agent.token))


def recipe_chunks(cl, acct, data):
    rec = bytes.fromhex(cl.sql("SELECT encode(recipe, 'hex') FROM bs_objects WHERE account = '%s' AND "
                               "sha = '\\x%s'" % (acct, sha(data))))
    return set(rec[i + 4:i + 36].hex() for i in range(0, len(rec), 36))


def keys_of(cl, agent):
    """The last parts of the account's object keys."""
    return set(k.rsplit("/", 1)[1] for k, _ in cl.objects(agent.token))


def main():
    eng = Engines.from_env()
    with Env("prune") as env:
        cl = Cluster(env, eng, extra=RETENTION)
        try:
            n1 = cl.node("node1")
            n2 = cl.node("node2")
            a_dir, b_dir = env.path("a"), env.path("b")
            os.makedirs(a_dir)
            write_file(os.path.join(a_dir, "keep.txt"), b"kept for ever\n")
            a = harness.Agent(env, "A", a_dir, server=n1).start()
            acct = a.token.split("-")[0]
            wait_until(lambda: cl.sql("SELECT count(*) FROM bs_entries WHERE account = '%s'" % acct) == "1", 30,
                       "keep.txt on the cluster")

            # Five states of one file and a deleted file: history, then none.
            states = [("state %d of the diary\n" % i).encode() * 50 for i in range(5)]
            for data in states:
                write_file(os.path.join(a_dir, "diary.txt"), data)
                wait_until(lambda d=data: cl.sql("SELECT encode(sha, 'hex') FROM bs_entries WHERE account = '%s' "
                                                 "AND path = 'diary.txt'" % acct) == sha(d), 30, "a diary state")
                # Looked at while current: a state replaced is pruned 3 s later.
                check(sha(data) in keys_of(cl, a), "a content stored is not in the bucket")
            # A big file (kept as chunks) and an edit in its middle: the old
            # version shares all chunks but the edited one.
            big1 = bytearray(os.urandom(6 * 1024 * 1024 + 5))
            big2 = bytearray(big1)
            big2[1000000:1000100] = b"e" * 100
            for data in (big1, big2):
                write_file(os.path.join(a_dir, "big.bin"), bytes(data))
                wait_until(lambda d=data: cl.sql("SELECT encode(sha, 'hex') FROM bs_entries WHERE account = '%s' "
                                                 "AND path = 'big.bin'" % acct) == sha(bytes(d)), 30, "a big state")
            chunks_both = chunk_keys(cl, a)
            write_file(os.path.join(a_dir, "gone.txt"), b"deleted soon\n")
            wait_until(lambda: cl.sql("SELECT count(*) FROM bs_entries WHERE account = '%s' AND path = 'gone.txt'"
                                      % acct) == "1", 30, "gone.txt")
            check(sha(b"deleted soon\n") in keys_of(cl, a), "a content stored is not in the bucket")
            os.unlink(os.path.join(a_dir, "gone.txt"))
            wait_until(lambda: cl.sql("SELECT count(*) FROM bs_entries WHERE account = '%s' AND path = 'gone.txt'"
                                      % acct) == "0", 30, "gone.txt deleted")
            check(sha(b"kept for ever\n") in keys_of(cl, a), "a content stored is not in the bucket")

            # A dead node's upload nothing names, and a key that is no content's.
            orphan = sha(b"an upload whose commit never came")
            eng.put_object(cl.bucket, "accounts/%s/c/%s" % (acct, orphan), b"an upload whose commit never came")
            eng.put_object(cl.bucket, "accounts/%s/c/NOTES" % acct, b"not a content")
            orphan_chunk = sha(b"a chunk whose commit never came")
            eng.put_object(cl.bucket, "accounts/%s/k/%s" % (acct, orphan_chunk), b"a chunk whose commit never came")
            # The nodes prune every second, so a sweep may take the orphan
            # before it is listed: listed, or gone for good, but never
            # stored outside the account's keys.
            def listed_or_swept(tail, kind, listed):
                if tail in listed():
                    return True
                try:
                    eng.get_object(cl.bucket, "accounts/%s/%s/%s" % (acct, kind, tail))
                except S3Error as e:
                    if e.status == 404:
                        return True
                    raise
                return False

            check(listed_or_swept(orphan, "c", lambda: keys_of(cl, a)), "the orphan is not among the account's keys")
            check(listed_or_swept(orphan_chunk, "k", lambda: chunk_keys(cl, a)),
                  "the orphan chunk is not among the account's keys")

            # keep-versions = 3 s: the nodes prune it all away within seconds.
            def pruned():
                keys = keys_of(cl, a)
                versions = cl.sql("SELECT count(*) FROM bs_versions WHERE account = '%s'" % acct)
                floor = int(cl.sql("SELECT log_floor FROM bs_accounts WHERE id = '%s'" % acct))
                return versions == "0" and floor > 0 and not any(sha(d) in keys for d in states[:-1] + [b"deleted soon\n"]) \
                    and orphan not in keys and orphan_chunk not in chunk_keys(cl, a)
            wait_until(pruned, 60, "the old versions and their objects to be pruned")
            keys = keys_of(cl, a)
            check(sha(states[-1]) in keys and sha(b"kept for ever\n") in keys, "a current content was collected")
            # The old big version's own chunks went, the shared ones stayed.
            wait_until(lambda: chunk_keys(cl, a) == recipe_chunks(cl, acct, bytes(big2)), 30,
                       "only the current big file's chunks in the bucket")
            check(len(chunks_both - chunk_keys(cl, a)) >= 1, "no chunk of the old big version was collected")
            check(cl.sql("SELECT count(*) FROM bs_chunks WHERE account = '%s' AND refs <= 0" % acct) == "0",
                  "unnamed chunk rows are left")
            check("NOTES" in keys, "the sweep removed a key that is not a content's")
            objects = cl.sql("SELECT count(*) FROM bs_objects WHERE account = '%s'" % acct)
            check(objects == "3", "bs_objects keeps %s rows, want the 3 current contents" % objects)
            log_floor = int(cl.sql("SELECT log_floor FROM bs_accounts WHERE id = '%s'" % acct))
            seq = int(cl.sql("SELECT seq FROM bs_accounts WHERE id = '%s'" % acct))
            check(0 < log_floor < seq, "the log was not trimmed (floor %d, seq %d)" % (log_floor, seq))
            logs = n1.log_text() + n2.log_text()
            check("pruned" in logs, "no node says what it pruned")

            # A join after the trimmed log: a snapshot, every current file.
            os.makedirs(b_dir)
            b = harness.Agent(env, "B", b_dir, token=a.token, server=n2).start()
            wait_content(os.path.join(b_dir, "diary.txt"), states[-1], msg="the diary on B after pruning")
            wait_content(os.path.join(b_dir, "keep.txt"), b"kept for ever\n", msg="keep.txt on B")
            wait_content(os.path.join(b_dir, "big.bin"), bytes(big2), msg="the big file on B after pruning")

            # Edits through both nodes while the collector runs every second:
            # nothing acknowledged may name a missing object.
            for rnd in range(4):
                for i in range(40):
                    write_file(os.path.join(a_dir, "burst", "a%02d" % i), b"A round %d file %d\n" % (rnd, i))
                    write_file(os.path.join(b_dir, "burst", "b%02d" % i), b"B round %d file %d\n" % (rnd, i))
                time.sleep(1.2)
            for i in range(40):
                wait_content(os.path.join(a_dir, "burst", "b%02d" % i), b"B round 3 file %d\n" % i,
                             msg="B's burst on A")
            wait_tree(b_dir, snapshot(a_dir), timeout=120, modes=True, msg="the burst, both ways")
            time.sleep(4)  # a few collector rounds after the last edit
            p = subprocess.run([harness.SERVER_BIN, "--verify", "--config", cl.config,
                                "--storage", env.path("verify-storage")], capture_output=True, text=True,
                               timeout=300)
            check(p.returncode == 0 and ", 0 problems" in p.stdout,
                  "--verify after pruning beside a burst: exit %d: %s %s" % (p.returncode, p.stdout, p.stderr))

            # What was the diary a moment ago is gone; what is current restores.
            v = cli_json("versions", "diary.txt", "--state-dir", b.state_dir)
            check(len(v) == 1 and v[0]["current"], "versions of the diary after pruning: %r" % (v,))
            rc, _, err = cli("restore", "diary.txt", "--state-dir", b.state_dir)
            check(rc != 0 and "no earlier version" in err, "restore of a pruned state: %d %s" % (rc, err))
            out = env.path("restored")
            rc, _, err = cli("restore", "diary.txt", "--version", v[0]["version"], "--to", out,
                             "--state-dir", b.state_dir)
            check(rc == 0 and harness.read_bytes(os.path.join(out, "diary.txt")) == states[-1],
                  "restore of the current diary: %s" % err)

            # The nodes told to keep everything for an hour (SIGHUP), then
            # backupsyncd --prune with the strict rules, beside them.
            strict = env.path("strict.ini")
            with open(cl.config) as f:
                text = f.read()
            write_file(strict, text)
            write_file(cl.config, text.replace(RETENTION, "keep-all = 1h\nprune-interval = 10m\n"))
            for n in (n1, n2):
                n.popen.send_signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in n1.log_text() and "configuration reloaded" in n2.log_text(),
                       30, "the nodes to read the configuration again")
            olds = [b"old state %d\n" % i for i in range(3)]
            for data in olds + [b"the last state\n"]:
                write_file(os.path.join(a_dir, "kept-for-now.txt"), data)
                wait_until(lambda d=data: cl.sql("SELECT encode(sha, 'hex') FROM bs_entries WHERE account = '%s' "
                                                 "AND path = 'kept-for-now.txt'" % acct) == sha(d), 30, "a state")
            time.sleep(3.5)  # older than the strict keep-versions, so even the hour's newest goes
            check(all(sha(d) in keys_of(cl, a) for d in olds), "the nodes collected what they must keep now")
            p = subprocess.run([harness.SERVER_BIN, "--prune", "--config", strict,
                                "--storage", env.path("prune-storage")], capture_output=True, text=True, timeout=300)
            check(p.returncode == 0 and "1 account pruned: 3 versions, 3 contents" in p.stdout,
                  "backupsyncd --prune on the cluster: exit %d: %s %s" % (p.returncode, p.stdout, p.stderr))
            check(not any(sha(d) in keys_of(cl, a) for d in olds), "--prune left the old states' objects")
            check(sha(b"the last state\n") in keys_of(cl, a), "--prune collected a current content")
            print("ok: pruning on the cluster: versions, log and objects collected, orphans swept, a burst "
                  "beside the collector verified; --prune: %s" % p.stdout.strip().splitlines()[-1])
        finally:
            cl.drop()


if __name__ == "__main__":
    main()
