"""What the agent tells systemd ($NOTIFY_SOCKET) during a long first upload."""

import os
import socket
import time

import harness

from harness import Env, check

GiB = 1 << 30


def _collect(sock, until, timeout):
    msgs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536).decode(errors="replace")
        except socket.timeout:
            continue
        msgs.append((time.monotonic(), data))
        if until(data):
            return msgs
    raise AssertionError("no %r within %d s; got: %r" % (until, timeout, msgs[-5:]))


def test_status_progress():
    """During a first upload that takes seconds the agent keeps the
    watchdog fed and shows upload progress in STATUS=, then READY=1."""
    with Env("status_progress") as env:
        env.server()
        d = env.path("A")
        os.makedirs(d)
        with open(os.path.join(d, "big.img"), "wb") as f:
            f.truncate(GiB)
            f.seek(GiB // 2)
            f.write(b"not only zeros\n")
        for i in range(50):
            with open(os.path.join(d, "small%02d.txt" % i), "w") as f:
                f.write("file %d\n" % i)
        path = env.path("notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            a = env.agent("A", d)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        # Meanwhile backupsync status shows the same progress.
        import json
        import subprocess
        import threading
        samples, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                r = subprocess.run([harness.CLI_BIN, "status", "--json", "--state-dir", a.state_dir],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
                if r.returncode == 0:
                    samples.append(json.loads(r.stdout)[0])
                time.sleep(0.1)
        t = threading.Thread(target=poll)
        t.start()
        try:
            msgs = _collect(sock, lambda m: "READY=1" in m, 300)
        finally:
            stop.set()
            t.join()
        prog = [x["progress"] for x in samples if x["state"] == "syncing" and x.get("progress")]
        check(any(p["what"] == "uploading" and 0 < p["total"] and p["done"] <= p["total"] for p in prog),
              "no upload progress in backupsync status: %r" % samples[-5:])
        before = [m for _, m in msgs[:-1]]
        check(any("WATCHDOG=1" in m for m in before), "no WATCHDOG=1 during the first upload: %r" % before)
        check(any("STATUS=" in m and "uploading" in m and "changes" in m for m in before),
              "no upload progress in STATUS= during the first upload: %r" % before)
        msgs = _collect(sock, lambda m: "STATUS=" in m and "last sync" in m, 30)
        sock.close()
