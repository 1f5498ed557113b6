#!/usr/bin/env python3
"""test_migrate.py - backupsyncd --migrate: a single-machine storage moves into the cluster

A server with the embedded backend keeps two accounts, one with history
(an edit, a deletion). It is stopped and `backupsyncd --migrate` copies
its storage into the cluster; a second run passes over what is there
already. The same storage directory (its TLS key) then serves as a
cluster node on the same port: the agent goes on with its token and its
sequence and uploads nothing again, the history from before is there
(versions, deleted, a restore), a new computer joins and gets the tree,
and --verify finds every content in the store.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import Env, check, wait_content, write_file  # noqa: E402
from engines import Engines  # noqa: E402
from test_nodes import Cluster, cli, cli_json  # noqa: E402


def backupsyncd(*args):
    p = subprocess.run([harness.SERVER_BIN] + list(args), capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def main():
    eng = Engines.from_env()
    with Env("migrate") as env:
        cl = Cluster(env, eng)
        try:
            srv = env.server()
            a_dir, o_dir = env.path("a"), env.path("other")
            os.makedirs(os.path.join(a_dir, "docs"))
            os.makedirs(o_dir)
            write_file(os.path.join(a_dir, "docs", "notes.txt"), b"first version\n")
            write_file(os.path.join(a_dir, "docs", "gone.txt"), b"deleted before the move\n")
            write_file(os.path.join(a_dir, "big.bin"), os.urandom(2 * 1024 * 1024 + 5))
            write_file(os.path.join(o_dir, "x"), b"another account\n")
            a = harness.Agent(env, "A", a_dir).start()
            o = harness.Agent(env, "O", o_dir).start()
            wait_content(os.path.join(srv.tree(a.token), "big.bin"), harness.read_bytes(os.path.join(a_dir, "big.bin")))
            write_file(os.path.join(a_dir, "docs", "notes.txt"), b"second version\n")
            wait_content(os.path.join(srv.tree(a.token), "docs", "notes.txt"), b"second version\n")
            os.unlink(os.path.join(a_dir, "docs", "gone.txt"))
            harness.wait_absent(os.path.join(srv.tree(a.token), "docs", "gone.txt"))
            wait_content(os.path.join(srv.tree(o.token), "x"), b"another account\n")
            a.stop()
            o.stop()
            srv.stop()

            # Move in, twice: the second run has nothing to do.
            rc, out, err = backupsyncd("--migrate", "--config", cl.config, "--storage", srv.storage)
            check(rc == 0, "--migrate exited %d: %s %s" % (rc, out, err))
            check("2 accounts moved into the cluster, 0 could not be" in out, "--migrate said: %s" % out)
            account = a.token.split("-")[0]
            check("%s: moved: sequence" % account in out, "no line for the account: %s" % out)
            rc, out, err = backupsyncd("--migrate", "--config", cl.config, "--storage", srv.storage)
            check(rc == 0 and "0 accounts moved" in out and out.count("in the cluster already") == 2,
                  "a second --migrate: exit %d: %s %s" % (rc, out, err))
            log_rows = int(cl.sql("SELECT count(*) FROM bs_log WHERE account = '%s'" % account))

            # The same storage, now a cluster node on the same port: the agent
            # goes on where it was, uploading nothing again.
            node = harness.Server(env, name="node", storage=srv.storage, port=srv.port,
                                  args=["--config", cl.config])
            env.servers.append(node)
            node.start(timeout=60)
            a2 = harness.Agent(env, "A", a_dir, token=a.token, server=node, state_dir=a.state_dir).start()
            write_file(os.path.join(a_dir, "after.txt"), b"written after the move\n")
            harness.wait_until(lambda: int(cl.sql("SELECT count(*) FROM bs_log WHERE account = '%s'" % account))
                               == log_rows + 1, msg="the new file, and only it, in the cluster's log")
            check(not any("uploaded" in line and "after.txt" not in line for line in node.log_lines()),
                  "something was uploaded again after the move: %s" % [l for l in node.log_lines() if "uploaded" in l])

            # The history from before the move.
            versions = cli_json("versions", "docs/notes.txt", "--state-dir", a.state_dir)
            check(len(versions) >= 2, "versions of docs/notes.txt after the move: %s" % versions)
            deleted = cli_json("deleted", "--state-dir", a.state_dir)
            check(any(r.get("path") == "docs/gone.txt" for r in deleted), "gone.txt is not listed as deleted")
            rc, out, err = cli("restore", "docs/gone.txt", "--state-dir", a.state_dir)
            check(rc == 0, "restore after the move exited %d: %s" % (rc, err))
            check(harness.read_bytes(os.path.join(a_dir, "docs", "gone.txt")) == b"deleted before the move\n",
                  "the restored file differs")

            # A new computer gets the whole tree from the cluster.
            b_dir = env.path("b")
            os.makedirs(b_dir)
            b = harness.Agent(env, "B", b_dir, token=a.token, server=node).start()
            harness.assert_trees_equal(a_dir, b_dir, msg="A and a computer that joined after the move")
            rc, out, err = backupsyncd("--verify", "--config", cl.config, "--storage", env.path("verify"))
            check(rc == 0 and ", 0 problems" in out, "--verify after the move: exit %d: %s %s" % (rc, out, err))
            a2.stop()
            b.stop()
            print("ok: two accounts moved (%d log records of %s), moved again as a no-op; the agent went on "
                  "without uploading again; history, restore, join and --verify on the cluster" % (log_rows, account))
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
