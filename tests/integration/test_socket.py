"""Socket activation without a booted systemd: systemd-socket-activate
listens, execs backupsyncd on the first connection and hands it the
listening socket (LISTEN_FDS=1, fd 3), as backupsyncd.socket does."""

import os
import shutil
import subprocess
import time

from harness import (SERVER_BIN, Env, Server, assert_trees_equal, check, fail,
                     wait_content, wait_until, write_file)

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


class ActivatedServer(Server):
    """backupsyncd behind systemd-socket-activate (no --accept: one server
    process, started by the first connection, takes over the socket)."""

    def start(self, timeout=15):
        argv = [ACTIVATE, "-l", "127.0.0.1:%d" % self.port,
                SERVER_BIN, "--storage", self.storage]
        with open(self.log, "ab") as log:
            log.write(("### %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self._start(argv, log, log)
        # Wait for the activator's "Listening on ..." without connecting:
        # a connection would start the server.
        wait_until(lambda: "Listening on 127.0.0.1:%d" % self.port in self.log_text(), timeout,
                   "systemd-socket-activate listening on 127.0.0.1:%d" % self.port)
        return self

    def comm(self):
        with open("/proc/%d/comm" % self.popen.pid) as f:
            return f.read().strip()


def test_socket_activation():
    if not os.access(ACTIVATE, os.X_OK):
        fail("%s is missing (package systemd)" % ACTIVATE)
    with Env("socket_activation") as env:
        srv = ActivatedServer(env)
        env.servers.append(srv)
        srv.start()
        time.sleep(0.3)
        check(srv.comm() == "systemd-socket-", "before any connection the activator should still "
              "be waiting, but the process is %r" % srv.comm())

        adir = env.path("A")
        write_file(os.path.join(adir, "first.txt"), "through the inherited socket\n")
        write_file(os.path.join(adir, "sub dir/second.txt"), "second\n")
        a = env.agent("A", adir)  # the first connection starts the server
        wait_until(lambda: srv.comm() == "backupsyncd", 10,
                   "the first connection to exec backupsyncd in the activator's process")
        wait_until(lambda: "socket from systemd" in srv.log_text(), 10,
                   "backupsyncd to log that it took the socket from systemd")

        b = env.agent("B", env.path("B"), token=a.token)
        assert_trees_equal(adir, b.dir, msg="A -> B through the socket-activated server")
        write_file(os.path.join(b.dir, "from-b.txt"), "from B\n")
        wait_content(os.path.join(adir, "from-b.txt"), "from B\n", msg="B -> A")

        # No --accept: once the server runs nobody else listens; killing it
        # closes the port. A new activator on the same storage picks up.
        srv.kill9()
        srv.start()
        write_file(os.path.join(adir, "after-restart.txt"), "again\n")
        wait_content(os.path.join(b.dir, "after-restart.txt"), "again\n", timeout=60,
                     msg="B to get a change made after the server was started again by a connection")
        wait_until(lambda: srv.comm() == "backupsyncd", 10, "the second activation")
        assert_trees_equal(adir, b.dir)


def test_socket_activation_not_a_socket():
    """LISTEN_FDS=1 but fd 3 is a regular file: exit 69 (EX_UNAVAILABLE)."""
    with Env("socket_not_a_socket") as env:
        storage = env.path("storage")
        log = env.path("server.log")
        with open(log, "wb") as out:
            # $$ is the shell's PID, which exec hands to backupsyncd.
            p = subprocess.run(["/bin/sh", "-c",
                                'exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --storage "$1"',
                                SERVER_BIN, storage],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=30)
        with open(log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        check(p.returncode == 69, "backupsyncd with a non-socket fd 3 exited %d, want 69; output:\n%s"
              % (p.returncode, text))
        check("socket" in text, "the error should name the socket problem; output:\n%s" % text)
