#!/usr/bin/env python3
"""test_failover.py - the cluster backend when a node, the database or the store goes away

Two backupsyncd nodes on the same port of two loopback addresses
(127.0.0.1 and 127.0.0.2) with one TLS key between them, so that agents
given `server = 127.0.0.1, 127.0.0.2` trust either. Each scenario runs a
burst of new files on agent A while something fails, then checks that
agent B (on the other node) has every one of them and that the trees
agree:
  - node 1 killed with SIGKILL mid-burst: A moves to node 2;
  - PostgreSQL restarted mid-burst (immediate stop: commits in flight),
    and away for 3 s mid-burst;
  - the object store (RGW) stopped mid-burst and started again 3 s later.
"""
import os
import shutil
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import Env, check, wait_content  # noqa: E402
from engines import Engines  # noqa: E402
from test_nodes import Cluster  # noqa: E402

BURST = 120


def listening(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


class Node(harness.Server):
    """A node on its own loopback address."""

    def __init__(self, env, name, addr, port, config):
        super().__init__(env, name=name, port=port, args=["--config", config])
        self.addr = addr

    def start(self, timeout=60):
        argv = [harness.SERVER_BIN, str(self.port), "--storage", self.storage, "--listen", self.addr] + self.args
        with open(self.log, "ab") as log:
            log.write(("### %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self._start(argv, log, log)
        harness.wait_until(lambda: listening(self.addr, self.port), timeout,
                           "%s listening on %s:%d" % (self.name, self.addr, self.port))
        return self


class ListAgent(harness.Agent):
    """An agent given a list of servers."""

    def __init__(self, env, name, dir, servers, port, token=None):
        super().__init__(env, name, dir, token=token, server=env.servers[0])
        self.servers, self.port = servers, port

    def argv(self, once=False, token=None, port=None):
        argv = super().argv(once=once, token=token)
        argv[1], argv[2] = self.servers, str(self.port)
        return argv


def burst(src, tag, during, at=BURST // 3):
    """Write BURST files into src/tag/, calling during() after the first at."""
    os.makedirs(os.path.join(src, tag))
    files = {}
    for i in range(BURST):
        name = os.path.join(tag, "f%03d" % i)
        data = ("%s %d\n" % (tag, i)).encode() * (1 + i % 7)
        harness.write_file(os.path.join(src, name), data)
        files[name] = data
        if i == at:
            during()
        time.sleep(0.01)
    return files


def all_arrive(env, dst, files, what, timeout=120):
    for name, data in sorted(files.items()):
        try:
            wait_content(os.path.join(dst, name), data, timeout=timeout, msg="%s: %s" % (what, name))
        except harness.TestFailure:
            # What every process said of that file, beyond the logs' tails.
            for log in env.logs:
                if os.path.exists(log):
                    with open(log, "rb") as f:
                        for line in f.read().decode("utf-8", "replace").splitlines():
                            if name in line or "lost" in line or "refused" in line or "failed" in line:
                                print("%s: %s" % (os.path.basename(log), line), file=sys.stderr)
            raise


def scenario(env, src, dst, tag, during, what):
    """A burst on src with during() in its middle; every file must reach dst."""
    t0 = time.monotonic()
    files = burst(src, tag, during)
    all_arrive(env, dst, files, "after: " + what)
    print("%s mid-burst: all %d files on B after %.1f s" % (what, len(files), time.monotonic() - t0))


def main():
    eng = Engines.from_env()
    with Env("failover") as env:
        cl = Cluster(env, eng)
        try:
            port = harness.free_port()
            n1 = Node(env, "node1", "127.0.0.1", port, cl.config)
            env.servers.append(n1)
            n1.start()
            # One identity for the cluster: node 2 serves with node 1's key.
            os.makedirs(os.path.join(env.path("node2-storage")), exist_ok=True)
            shutil.copy(os.path.join(n1.storage, "tls.pem"), os.path.join(env.path("node2-storage"), "tls.pem"))
            n2 = Node(env, "node2", "127.0.0.2", port, cl.config)
            env.servers.append(n2)
            n2.start()

            a_dir, b_dir = env.path("a"), env.path("b")
            os.makedirs(a_dir)
            os.makedirs(b_dir)
            a = ListAgent(env, "A", a_dir, "127.0.0.1, 127.0.0.2", port).start()
            b = ListAgent(env, "B", b_dir, "127.0.0.2, 127.0.0.1", port, token=a.token).start()
            harness.write_file(os.path.join(a_dir, "first.txt"), b"first\n")
            wait_content(os.path.join(b_dir, "first.txt"), b"first\n", msg="the first file on B")

            # 1. Node 1 killed mid-burst: A goes on with node 2.
            scenario(env, a_dir, b_dir, "killed", n1.kill9, "node 1 killed")
            check("127.0.0.2 port %d answers" % port in a.log_text(), "agent A did not say it moved to node 2")
            n1.start()

            # 2. PostgreSQL restarted mid-burst: commits in flight fail, nothing acknowledged is lost.
            scenario(env, a_dir, b_dir, "pg", eng.restart_postgres, "PostgreSQL restarted")

            # 2b. PostgreSQL away for 3 s mid-burst: commits, lookups and listings
            # fail meanwhile (an agent's download fails, then its comparison
            # with the server's tree); all of it is made up afterwards.
            def db_away():
                eng.stop_postgres()
                time.sleep(3)
                eng.start_postgres()
            scenario(env, a_dir, b_dir, "pgaway", db_away, "PostgreSQL away for 3 s")

            # 3. The store away for 3 s mid-burst: stores are retried, then go on.
            def store_away():
                eng.stop_rgw()
                time.sleep(3)
                eng.start_rgw()
            scenario(env, a_dir, b_dir, "s3", store_away, "store stopped for 3 s")

            harness.assert_trees_equal(a_dir, b_dir, msg="A and B at the end")
            account = a.token.split("-")[0]
            n = int(cl.sql("SELECT count(*) FROM bs_entries WHERE account = '%s' AND kind = 1" % account))
            check(n == 1 + 4 * BURST, "%d files in the database, expected %d" % (n, 1 + 4 * BURST))
            missing = int(cl.sql("SELECT count(*) FROM bs_entries e WHERE account = '%s' AND kind = 1 AND NOT EXISTS "
                                 "(SELECT 1 FROM bs_objects o WHERE o.account = e.account AND o.sha = e.sha)"
                                 % account))
            check(missing == 0, "%d entries name a content the store was not recorded to hold" % missing)
            keys = {k for k, _ in cl.objects(account)}
            shas = cl.sql("SELECT DISTINCT encode(sha, 'hex') FROM bs_entries WHERE account = '%s' AND kind = 1"
                          % account).split()
            lost = [h for h in shas if "accounts/%s/c/%s" % (account, h) not in keys]
            check(not lost, "%d contents named in the database are not in the bucket: %s" % (len(lost), lost[:3]))
            print("ok: a node killed, the database restarted, the store away: nothing lost, "
                  "every named content in the bucket")
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
