#!/usr/bin/env python3
"""bench.py - backupsync's benchmark suite (Python 3 standard library only).

Runs backupsyncd and backupsync-agent on 127.0.0.1 against rsync (daemon
mode, and over ssh to a private sshd) and lsyncd (default.rsync) on the
same generated data, prints a table of medians, ratios and targets, and
writes tests/bench/results.md. backupsync runs with TLS, its default;
cases 1 and 2 are measured again with tls = no beside it, so that the
cost of encryption shows. Cases 1 to 3 are measured on the cluster
backend too, against the embedded one: a throwaway PostgreSQL and Ceph
RGW (tests/cluster/engines.py) are started for them, and each case
compares one node with two (a first backup as two computers with half
the tree each, one per node; propagation and a burst to an agent on the
other node); the notes say what the store and the database hold.
--no-cluster leaves them out.

Run it through tools/bench, which installs rsync, lsyncd and OpenSSH and
builds:

    tools/bench                 # full run, 3 runs per case
    tools/bench --quick         # small data, to smoke-test the suite
    tools/bench --runs 5 --cases 1,6

Everything runs in a temporary directory under /var/tmp (not tmpfs) that
is removed at the end, with every process started here, also on failure.
Every wait is bounded; a tool that breaks makes its case FAIL and the
script exit non-zero.
"""

import argparse
import datetime
import errno
import hashlib
import importlib.util
import os
import platform
import pwd
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("BS_BUILD_DIR", os.path.join(TOP, "build"))
SERVER_BIN = os.path.join(BUILD_DIR, "daemon", "backupsyncd")
AGENT_BIN = os.path.join(BUILD_DIR, "client-agent", "backupsync-agent")
CLI_BIN = os.path.join(BUILD_DIR, "client-cli", "backupsync")
BSPROTO = os.path.join(TOP, "tests", "integration", "bsproto.py")
RESULTS = os.path.join(HERE, "results.md")

MiB = 1 << 20
GiB = 1 << 30


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- helpers

def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def wait_until(pred, timeout, what, interval=0.02, procs=()):
    """Poll pred() until true (returned); BenchError after timeout or when
    one of procs exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
            if v:
                return v
        except OSError:
            pass
        for p in procs:
            if p.poll() is not None:
                raise BenchError("%s exited with status %s while waiting for %s"
                                 % (p.bench_name, p.returncode, what))
        if time.monotonic() >= deadline:
            raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def du(path):
    """Disk space of the regular files below path that have one link."""
    n = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if st.st_nlink == 1:
                n += st.st_blocks * 512
    return n


def history_du(account_dir):
    """An account's kept versions on the server's disk: the content store
    and the chunk store."""
    return du(os.path.join(account_dir, "content")) + du(os.path.join(account_dir, "chunks"))


def insert_bytes(src, dst, at, data):
    """dst: src with data inserted at offset at."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        left = at
        while left > 0:
            buf = f.read(min(left, 8 * MiB))
            g.write(buf)
            left -= len(buf)
        g.write(data)
        shutil.copyfileobj(f, g, 8 * MiB)


def lo_bytes():
    """Bytes received on the loopback interface (= bytes sent on it)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise BenchError("no lo interface in /proc/net/dev")


def kernel_tls():
    """Whether the kernel's TLS (the "tls" upper layer protocol of TCP)
    attaches to a connected loopback socket, as a sentence for the notes."""
    TCP_ULP = getattr(socket, "TCP_ULP", 31)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            with socket.create_connection(ls.getsockname(), 5) as c:
                peer, _ = ls.accept()
                with peer:
                    c.setsockopt(socket.SOL_TCP, TCP_ULP, b"tls")
    except OSError as e:
        if e.errno == errno.ENOENT:
            why = "this kernel has no tls module"
        else:
            why = "TCP_ULP tls: %s" % (os.strerror(e.errno) if e.errno else e)
        return "kernel TLS: not available (%s); OpenSSL's user-space TLS measured." % why
    return ("kernel TLS: available (the tls module attaches to TCP sockets); OpenSSL hands "
            "record encryption to it where its build and the cipher allow.")


def file_system_note(path):
    """The file system the trees are made on, as a sentence for the notes:
    an ext4 without a journal makes files slowly for minutes after a
    removal (see Bench.discard())."""
    try:
        out = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", path], capture_output=True, text=True,
                             timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "file system of %s: unknown (findmnt failed)." % path
    if len(out) != 2:
        return "file system of %s: unknown." % path
    source, fstype = out
    if fstype != "ext4":
        return "file system of %s: %s (%s)." % (path, fstype, source)
    try:
        with open("/sys/fs/ext4/%s/journal_task" % os.path.basename(source)) as f:
            journal = f.read().strip() != "<none>"
    except OSError:
        return "file system of %s: ext4 (%s)." % (path, source)
    if journal:
        return "file system of %s: ext4 with a journal (%s)." % (path, source)
    return ("file system of %s: ext4 without a journal (%s), which passes over inodes freed in the last "
            "minutes when it makes files: no tree is removed before the end of the run." % (path, source))


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def tree_stats(root):
    """(number of regular files, total size) below root."""
    n = size = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            n += 1
            size += st.st_size
    return n, size


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def percentile(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def write_random_file(path, size, chunk=8 * MiB):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def make_tree(root, ndirs, per_dir, size_fn):
    os.makedirs(root, exist_ok=True)
    for d in range(ndirs):
        dp = os.path.join(root, "d%05d" % d)
        os.mkdir(dp)
        for i in range(per_dir):
            with open(os.path.join(dp, "f%05d" % i), "wb") as f:
                f.write(os.urandom(size_fn()))


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1:
        return "%.1f ms" % (s * 1000)
    return "%.2f s" % s


def fmt_bytes(b):
    if b is None:
        return "-"
    if b >= GiB:
        return "%.2f GiB" % (b / GiB)
    if b >= MiB:
        return "%.1f MiB" % (b / MiB)
    if b >= 1024:
        return "%.1f KiB" % (b / 1024)
    return "%d B" % b


# ---------------------------------------------------------------- processes

class Bench:
    """The temporary directory and every process started in it."""

    def __init__(self, root):
        self.root = root
        self.procs = []
        self.logs = []
        self.n_discarded = 0

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def discard(self, path):
        """Put path out of the way, to be removed with the rest at the end.
        On ext4 without a journal, new inodes skip those freed in the last
        minutes in their group, each checked in turn: a case run right after
        the removal of tens of thousands of files was slower by a third
        (backupsync, whose uploads are all made in one directory and so one
        group, more than rsync)."""
        if not os.path.lexists(path):
            return
        bin_ = self.path("discarded")
        os.makedirs(bin_, exist_ok=True)
        self.n_discarded += 1
        os.rename(path, os.path.join(bin_, str(self.n_discarded)))

    def spawn(self, name, argv, logname, stdout=None):
        logpath = self.path(logname)
        self.logs.append(logpath)
        lf = open(logpath, "ab")
        out = lf
        if stdout is not None:
            out = open(self.path(stdout), "ab")
            self.logs.append(self.path(stdout))
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=lf,
                             start_new_session=True)
        lf.close()
        if out is not lf:
            out.close()
        p.bench_name = name
        p.bench_log = logpath
        self.procs.append(p)
        return p

    def stop(self, p, timeout=15):
        """SIGTERM the process group, then SIGKILL after timeout."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        # children in its group (lsyncd's rsyncs) go too
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            try:
                self.stop(p, timeout=5)
            except Exception:
                pass

    def tail(self, n=15):
        for lp in self.logs:
            try:
                with open(lp, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            if not lines:
                continue
            print("----- last %d lines of %s -----" % (n, os.path.basename(lp)), file=sys.stderr)
            for l in lines[-n:]:
                print("  " + l, file=sys.stderr)

    # ---- backupsync

    def server(self, name, extra=(), tls=True):
        """backupsyncd on a free port; tls=False: with a configuration
        file saying tls = no (its agents then get --tls no)."""
        port = free_port()
        storage = self.path(name + "-storage")
        argv = [SERVER_BIN, str(port), "--storage", storage, "--listen", "127.0.0.1"]
        if not tls:
            conf = self.path(name + ".ini")
            with open(conf, "w") as f:
                f.write("[server]\ntls = no\n")
            argv += ["--config", conf]
        p = self.spawn(name, argv + list(extra), name + ".log")
        wait_until(lambda: port_open(port), 15, "%s to listen" % name, procs=[p])
        p.port = port
        p.storage = storage
        p.tls = tls
        return p

    def fingerprint(self, srv):
        """The server's key as backupsyncd --fingerprint prints it."""
        p = subprocess.run([SERVER_BIN, "--fingerprint", "--storage", srv.storage],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        fp = p.stdout.decode().strip()
        if p.returncode != 0 or not re.fullmatch(r"SHA256:[0-9a-f]{64}", fp):
            raise BenchError("backupsyncd --fingerprint exited %d: %s" % (p.returncode,
                                                                         (p.stdout + p.stderr).decode()[-300:]))
        return fp

    def agent_argv(self, srv, d, token, state, once=False, extra=()):
        argv = [AGENT_BIN, "127.0.0.1", str(srv.port), d]
        if token:
            argv.append(token)
        # The cases remove their own bursts between runs: no brake.
        argv += ["--state-dir", state, "--max-delete", "no"]
        if once:
            argv.append("--once")
        if not srv.tls:
            argv += ["--tls", "no"]
        return argv + list(extra)

    def agent(self, name, srv, d, token=None, extra=(), timeout=120, state=None):
        """A watching agent; when registering, waits for its ID line."""
        state = state or self.path("state-" + name)
        p = self.spawn("agent " + name, self.agent_argv(srv, d, token, state, extra=extra),
                       "agent-%s.log" % name, stdout="agent-%s.out" % name)
        p.state = state
        if not token:
            p.token = wait_id(self.path("agent-%s.out" % name), timeout, p)
        else:
            p.token = token
        return p

    # ---- rsync daemon

    def rsync_daemon(self, modules):
        port = free_port()
        conf = self.path("rsyncd.conf")
        with open(conf, "w") as f:
            f.write("use chroot = no\nuid = root\ngid = root\n"
                    "log file = %s\n" % self.path("rsyncd-xfer.log"))
            for name, path in modules.items():
                os.makedirs(path, exist_ok=True)
                f.write("[%s]\npath = %s\nread only = no\n" % (name, path))
        p = self.spawn("rsync daemon", ["rsync", "--daemon", "--no-detach", "--config=" + conf,
                                        "--port=%d" % port, "--address=127.0.0.1"],
                       "rsyncd.log")
        wait_until(lambda: port_open(port), 15, "rsync daemon to listen", procs=[p])
        p.port = port
        return p

    # ---- sshd, for rsync -e ssh

    def sshd(self):
        """A private sshd on 127.0.0.1 with its own host key, letting this
        user (root) in with a key generated here; returns it with .ssh, the
        -e command of rsync for it, and .user."""
        d = self.path("sshd")
        os.makedirs(d)
        host_key = os.path.join(d, "host_ed25519")
        client_key = os.path.join(d, "client_ed25519")
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                           stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
        shutil.copyfile(client_key + ".pub", os.path.join(d, "authorized_keys"))
        # sshd's privilege separation directory, made by its service otherwise
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        port = free_port()
        conf = os.path.join(d, "sshd_config")
        with open(conf, "w") as f:
            f.write("\n".join([
                "ListenAddress 127.0.0.1:%d" % port,
                "HostKey %s" % host_key,
                "PidFile %s" % os.path.join(d, "sshd.pid"),
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "AuthorizedKeysFile %s" % os.path.join(d, "authorized_keys"),
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                ""]))
        p = self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", conf], "sshd.log")
        wait_until(lambda: port_open(port), 15, "sshd to listen", procs=[p])
        p.port = port
        p.user = pwd.getpwuid(os.geteuid()).pw_name
        p.ssh = ("ssh -p %d -i %s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                 "-o BatchMode=yes -o Compression=no -o LogLevel=ERROR" % (port, client_key))
        return p

    # ---- lsyncd

    def lsyncd(self, name, src, target, delay=None):
        """lsyncd default.rsync src -> target; waits until its start-up sync
        copied the marker file when target is a local directory."""
        conf = self.path(name + ".lua")
        with open(src + "/.bench-ready", "w") as f:
            f.write(name)
        lines = ['settings { nodaemon = true, logfile = "%s", statusFile = "%s" }'
                 % (self.path(name + ".lsyncd-log"), self.path(name + ".status")),
                 'sync { default.rsync, source = "%s", target = "%s"%s }'
                 % (src, target, "" if delay is None else ", delay = %s" % delay)]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.logs.append(self.path(name + ".lsyncd-log"))
        p = self.spawn(name, ["lsyncd", conf], name + ".log")
        return p


def wait_id(outpath, timeout, proc):
    def got():
        with open(outpath, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                if line.startswith("ID: "):
                    return line[4:].strip()
        return None
    return wait_until(got, timeout, "%s to print its ID line" % proc.bench_name, procs=[proc])


def count_lines(path, needle):
    with open(path, "rb") as f:
        return sum(1 for l in f.read().decode("utf-8", "replace").splitlines() if needle in l)


def count_uploads(path):
    """Uploads in a server log: lines of one file each, plus the files of
    the lines that count those logged at debug level."""
    n = 0
    with open(path, "rb") as f:
        for l in f.read().decode("utf-8", "replace").splitlines():
            m = re.search(r"uploaded \S+ (\d+) more files \(", l)
            n += int(m.group(1)) if m else ("uploaded " in l)
    return n


def load_bsproto():
    spec = importlib.util.spec_from_file_location("bsproto", BSPROTO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- results

class BenchCluster:
    """The cluster backend's engines (PostgreSQL 15 and a single-node Ceph
    RGW, tests/cluster/engines.py), started on first use and stopped at
    the end; one database and one bucket, nodes as backupsyncd processes
    of the Bench on a configuration naming them."""

    def __init__(self, b):
        self.b = b
        self.eng = None
        self.top = None
        self.conf = None

    def start(self):
        if self.eng is not None:
            return
        sys.path.insert(0, os.path.join(TOP, "tests", "cluster"))
        import engines
        # Apart from the bench's own directory (0700): PostgreSQL runs as its own user.
        self.top = tempfile.mkdtemp(prefix="bs-bench-engines-", dir="/tmp")
        os.chmod(self.top, 0o755)
        log("cluster: starting PostgreSQL and Ceph RGW")
        eng = engines.start(os.path.join(self.top, "e"))
        self.eng = eng
        eng.create_database("bench")
        eng.create_bucket("bench")
        b = self.b
        passfile, creds, self.conf = b.path("pgpass"), b.path("s3.key"), b.path("cluster.ini")
        with open(passfile, "w") as f:
            f.write("%s:%s:bench:%s:%s\n" % (eng.pg_host, eng.pg_port, eng.pg_user, eng.pg_password))
        with open(creds, "w") as f:
            f.write("%s\n%s\n" % (eng.access_key, eng.secret_key))
        for path in (passfile, creds):
            os.chmod(path, 0o600)
        with open(self.conf, "w") as f:
            f.write("[server]\nmetadata = host=%s port=%d user=%s dbname=bench passfile=%s\n"
                    "content = s3://bench\ns3-endpoint = %s\ns3-credentials = %s\n"
                    % (eng.pg_host, eng.pg_port, eng.pg_user, passfile, eng.s3_endpoint, creds))

    def node(self, name):
        """A backupsyncd node of the cluster."""
        self.start()
        return self.b.server(name, extra=["--config", self.conf])

    def stored(self, token=None):
        """Objects and bytes in the bucket (of one account, given its token)."""
        prefix = "accounts/%s/" % token.split("-")[0] if token else ""
        objs = self.eng.list_objects("bench", prefix)
        return len(objs), sum(sz for _, sz in objs)

    def database_size(self):
        return int(self.eng.psql("SELECT pg_database_size('bench')", dbname="bench").strip())

    def stop(self):
        if self.eng is None:
            return
        sys.path.insert(0, os.path.join(TOP, "tests", "cluster"))
        import engines
        engines.stop(os.path.join(self.top, "e"))
        shutil.rmtree(self.top, ignore_errors=True)
        self.eng = None


class Results:
    def __init__(self):
        self.rows = []      # dicts
        self.notes = []

    def add(self, case, metric, bs, peer=None, peer_val=None, fmt=fmt_time,
            target=None, target_text="-", ratio_target=None):
        """target: callable(bs, ratio) -> bool, or None."""
        ratio = None
        if bs is not None and peer_val:
            ratio = bs / peer_val
        res = "-"
        if target is not None and bs is not None:
            res = "PASS" if target(bs, ratio) else "MISS"
        self.rows.append(dict(case=case, metric=metric, bs=fmt(bs) if bs is not None else "-",
                              peer=peer or "-", peer_val=fmt(peer_val) if peer_val is not None else "-",
                              ratio=("%.2f" % ratio) if ratio is not None else "-",
                              target=target_text, result=res))

    def fail(self, case, msg):
        self.rows.append(dict(case=case, metric="FAILED: " + msg.replace("|", "/").replace("\n", " "),
                              bs="-", peer="-", peer_val="-", ratio="-", target="-", result="FAIL"))

    def note(self, text):
        self.notes.append(text)

    HEAD = ["Case", "Metric", "backupsync", "Peer", "Peer value", "Ratio bs/peer", "Target", "Result"]
    KEYS = ["case", "metric", "bs", "peer", "peer_val", "ratio", "target", "result"]

    def markdown(self):
        out = ["| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
        for r in self.rows:
            out.append("| " + " | ".join(str(r[k]) for k in self.KEYS) + " |")
        return "\n".join(out)

    def text(self):
        table = [self.HEAD] + [[str(r[k]) for k in self.KEYS] for r in self.rows]
        w = [max(len(row[i]) for row in table) for i in range(len(self.HEAD))]
        lines = []
        for j, row in enumerate(table):
            lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip())
            if j == 0:
                lines.append("  ".join("-" * x for x in w))
        return "\n".join(lines)


# ---------------------------------------------------------------- cases

def case1_first_backup(b, cfg, res):
    """10,000 x 4 KiB in 100 dirs + 4 x 64 MiB: first backup, with TLS and
    with tls = no, against rsync to its daemon and rsync -e ssh."""
    C = "1 first backup"
    src = b.path("c1-src")
    log("case 1: generating %d small files + %d x %s" % (cfg.c1_dirs * cfg.c1_per_dir, 4,
                                                         fmt_bytes(cfg.c1_big)))
    make_tree(src, cfg.c1_dirs, cfg.c1_per_dir, lambda: 4096)
    for i in range(4):
        write_random_file(os.path.join(src, "big%d.bin" % i), cfg.c1_big)
    nfiles, total = tree_stats(src)
    has_fsync = "--fsync" in subprocess.run(["rsync", "--help"], capture_output=True,
                                             text=True, timeout=30).stdout
    if not has_fsync:
        res.note("case 1: this rsync has no --fsync; the rsync --fsync column is skipped.")
    dst = b.path("c1-rsync-dst")
    ssh_dst = b.path("c1-ssh-dst")
    os.makedirs(ssh_dst)
    rd = b.rsync_daemon({"mod": dst})
    sshd = None
    bs_kinds = (("backupsync", True), ("backupsync (tls = no)", False))
    times = {"backupsync": [], "backupsync (tls = no)": [], "rsync": [], "rsync --fsync": [],
             "rsync -e ssh": []}
    dropped = True
    try:
        sshd = b.sshd()
        def run_backupsync(run, name, tls):
            sub = "c1-%s-%d" % ("server" if tls else "clear", run)
            srv = b.server(sub, tls=tls)
            state = b.path(sub + "-state")
            argv = b.agent_argv(srv, src, None, state, once=True)
            t0 = time.monotonic()
            with open(b.path(sub + "-agent.log"), "wb") as lf:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                   timeout=cfg.c1_timeout)
            dt = time.monotonic() - t0
            if p.returncode != 0:
                b.logs.append(b.path(sub + "-agent.log"))
                raise BenchError("%s: backupsync-agent --once exited %d" % (name, p.returncode))
            up = count_uploads(srv.bench_log)
            if up != nfiles:
                raise BenchError("%s: server logged %d uploads, expected %d" % (name, up, nfiles))
            b.stop(srv)
            return dt

        def run_rsync(name, extra, to, local):
            t0 = time.monotonic()
            p = subprocess.run(["rsync", "-a"] + extra + [src + "/", to],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=cfg.c1_timeout)
            dt = time.monotonic() - t0
            if p.returncode != 0:
                raise BenchError("%s exited %d: %s" % (name, p.returncode, p.stderr.decode()[-500:]))
            if tree_stats(local) != (nfiles, total):
                raise BenchError("%s: destination incomplete" % name)
            return dt

        for run in range(cfg.runs):
            # backupsync: fresh server storage, register + --once until exit 0
            tools = [(name, lambda run=run, name=name, tls=tls: run_backupsync(run, name, tls))
                     for name, tls in bs_kinds]
            tools.append(("rsync", lambda run=run: run_rsync(
                "rsync", [], "rsync://127.0.0.1:%d/mod/run%d/" % (rd.port, run), os.path.join(dst, "run%d" % run))))
            if has_fsync:
                tools.append(("rsync --fsync", lambda run=run: run_rsync(
                    "rsync --fsync", ["--fsync"], "rsync://127.0.0.1:%d/mod/run%d-fsync/" % (rd.port, run),
                    os.path.join(dst, "run%d-fsync" % run))))
            tools.append(("rsync -e ssh", lambda run=run: run_rsync(
                "rsync -e ssh", ["-e", sshd.ssh], "%s@127.0.0.1:%s/run%d/" % (sshd.user, ssh_dst, run),
                os.path.join(ssh_dst, "run%d" % run))))
            # Each run starts with another tool: whichever runs first after
            # the file system took the previous run's 50,000 files pays more.
            k = run % len(tools)
            for name, fn in tools[k:] + tools[:k]:
                dropped &= drop_caches()
                dt = fn()
                times[name].append(dt)
                log("case 1 run %d: %s %.2f s" % (run + 1, name, dt))
            # Copies are kept until the end of the whole run (see
            # Bench.discard()): a removal slows whichever tool runs next.
    finally:
        b.stop(rd)
        if sshd is not None:
            b.stop(sshd)
        b.discard(dst)
        b.discard(ssh_dst)
        for run in range(cfg.runs):
            for sub in ("c1-server-%d" % run, "c1-clear-%d" % run):
                b.discard(b.path(sub + "-storage"))
                b.discard(b.path(sub + "-state"))
    if not dropped:
        res.note("case 1: could not drop the page cache (not root?); runs are warm.")
    res.note("case 1 per run: " + "; ".join("%s %s" % (k, ", ".join("%.1f s" % t for t in v))
                                              for k, v in times.items() if v))
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=30)
    res.note("case 1: rsync -e ssh logs in as %s to a private sshd on 127.0.0.1 (%s, its default "
             "cipher, Compression=no), the encrypted peer to backupsync's TLS; the tls = no rows are "
             "backupsync in clear text against the same peers, for the cost of encryption."
             % (sshd.user, (ssh_v.stderr or ssh_v.stdout).strip().split(",")[0]))
    desc = "time, %d files, %s" % (nfiles, fmt_bytes(total))
    for name, tls in bs_kinds:
        bs = statistics.median(times[name])
        d = desc if tls else desc + " (tls = no)"
        res.add(C, d, bs, "rsync", statistics.median(times["rsync"]),
                target=(lambda v, r: r <= 1.0) if tls else None, target_text="ratio <= 1.0" if tls else "-")
        if has_fsync:
            res.add(C, d, bs, "rsync --fsync", statistics.median(times["rsync --fsync"]),
                    target=(lambda v, r: r <= 0.5) if tls else None,
                    target_text="ratio <= 0.5 (well under 1)" if tls else "-")
        res.add(C, d, bs, "rsync -e ssh", statistics.median(times["rsync -e ssh"]),
                target=(lambda v, r: r <= 0.5) if tls else None, target_text="ratio <= 0.5" if tls else "-")
    try:
        if b.cluster:
            case1_cluster(b, cfg, res, src, nfiles, total, desc, statistics.median(times["backupsync"]))
    finally:
        b.discard(src)


def _split_tree(src, dst, part, parts):
    """Hard links of every parts-th top-level entry of src, from part, in dst."""
    os.makedirs(dst)
    for k, name in enumerate(sorted(os.listdir(src))):
        if k % parts != part:
            continue
        p = os.path.join(src, name)
        if os.path.isdir(p):
            os.mkdir(os.path.join(dst, name))
            for f in os.listdir(p):
                os.link(os.path.join(p, f), os.path.join(dst, name, f))
        else:
            os.link(p, os.path.join(dst, name))


def case1_cluster(b, cfg, res, src, nfiles, total, desc, embedded):
    """Case 1's tree on the cluster backend: one computer through one node,
    and two computers with half the tree each, one per node, at once."""
    C = "1 first backup"
    cl = b.cluster
    n1, n2 = cl.node("c1-node1"), cl.node("c1-node2")
    halves = [b.path("c1-half%d" % k) for k in range(2)]
    for k, h in enumerate(halves):
        _split_tree(src, h, k, 2)
    times = {"one": [], "two": []}
    stored = None

    def once(srv, tree, sub):
        argv = b.agent_argv(srv, tree, None, b.path(sub + "-state"), once=True)
        lf = open(b.path(sub + "-agent.log"), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT)
        lf.close()
        return p

    def finish(p, sub):
        if p.wait(cfg.c1_timeout) != 0:
            b.logs.append(b.path(sub + "-agent.log"))
            raise BenchError("%s: backupsync-agent --once exited %d" % (sub, p.returncode))

    try:
        for run in range(cfg.runs):
            drop_caches()
            t0 = time.monotonic()
            p = once(n1, src, "c1-cluster-%d" % run)
            finish(p, "c1-cluster-%d" % run)
            times["one"].append(time.monotonic() - t0)
            if stored is None:
                with open(b.path("c1-cluster-0-state", "token")) as f:
                    stored = cl.stored(f.read().strip())
            drop_caches()
            t0 = time.monotonic()
            ps = [once(n, h, "c1-cluster2-%d-%d" % (run, k)) for k, (n, h) in enumerate(zip((n1, n2), halves))]
            for k, p in enumerate(ps):
                finish(p, "c1-cluster2-%d-%d" % (run, k))
            times["two"].append(time.monotonic() - t0)
            log("case 1 run %d: cluster, one node %.2f s; two nodes, half the tree each %.2f s"
                % (run + 1, times["one"][-1], times["two"][-1]))
    finally:
        b.stop(n1)
        b.stop(n2)
        for h in halves:
            b.discard(h)
    one, two = statistics.median(times["one"]), statistics.median(times["two"])
    res.add(C, desc + ", cluster backend, one node", one, "backupsync, embedded", embedded)
    res.add(C, desc + ", cluster backend, two computers with half each, one per node", two,
            "cluster, one node", one)
    res.note("case 1 cluster per run: one node %s; two nodes %s" % (
        ", ".join("%.1f s" % t for t in times["one"]), ", ".join("%.1f s" % t for t in times["two"])))
    if stored:
        res.note("case 1 cluster: one account of the tree holds %d objects, %s, in the store" %
                 (stored[0], fmt_bytes(stored[1])))


class BsPair:
    """A server and agents A and B of one account, idle and in sync
    (tls=False: the server with tls = no, the agents with --tls no)."""

    def __init__(self, b, name, tls=True):
        self.b = b
        self.name = name
        self.a_dir = b.path(name + "-A")
        self.b_dir = b.path(name + "-B")
        os.makedirs(self.a_dir)
        self.srv = b.server(name + "-server", tls=tls)
        self.a = b.agent(name + "-A", self.srv, self.a_dir)
        self.b_agent = b.agent(name + "-B", self.srv, self.b_dir, token=self.a.token)
        self.procs = [self.srv, self.a, self.b_agent]
        with open(os.path.join(self.a_dir, ".bench-ready"), "w") as f:
            f.write("ready")
        wait_until(lambda: os.path.exists(os.path.join(self.b_dir, ".bench-ready")), 60,
                   "%s: B to have the marker file" % name, procs=self.procs)
        time.sleep(1)

    def stop(self):
        for p in (self.b_agent, self.a, self.srv):
            self.b.stop(p)


class ClusterTrio:
    """Agents of one account on the cluster backend, idle and in sync: A
    on node 1, B1 beside it on node 1 and B2 on node 2."""

    def __init__(self, b, name):
        self.b = b
        cl = b.cluster
        self.n1, self.n2 = cl.node(name + "-node1"), cl.node(name + "-node2")
        self.a_dir = b.path(name + "-A")
        self.b_dirs = {"one": b.path(name + "-B1"), "two": b.path(name + "-B2")}
        os.makedirs(self.a_dir)
        self.a = b.agent(name + "-A", self.n1, self.a_dir)
        self.b1 = b.agent(name + "-B1", self.n1, self.b_dirs["one"], token=self.a.token)
        self.b2 = b.agent(name + "-B2", self.n2, self.b_dirs["two"], token=self.a.token)
        self.procs = [self.n1, self.n2, self.a, self.b1, self.b2]
        with open(os.path.join(self.a_dir, ".bench-ready"), "w") as f:
            f.write("ready")
        for d in self.b_dirs.values():
            wait_until(lambda d=d: os.path.exists(os.path.join(d, ".bench-ready")), 60,
                       "%s: the marker file on both nodes' agents" % name, procs=self.procs)
        time.sleep(1)

    def stop(self):
        for p in (self.b2, self.b1, self.a, self.n2, self.n1):
            self.b.stop(p)


class LsPair:
    """lsyncd default.rsync A -> B (a local directory, or an rsync daemon
    module whose path is B)."""

    def __init__(self, b, name, delay=None, via_daemon=False):
        self.b = b
        self.a_dir = b.path(name + "-A")
        self.b_dir = b.path(name + "-B")
        os.makedirs(self.a_dir)
        os.makedirs(self.b_dir)
        self.rd = None
        target = self.b_dir + "/"
        if via_daemon:
            self.rd = b.rsync_daemon({"lsync": self.b_dir})
            target = "rsync://127.0.0.1:%d/lsync/" % self.rd.port
        self.p = b.lsyncd(name, self.a_dir, target, delay)
        self.procs = [self.p] + ([self.rd] if self.rd else [])
        wait_until(lambda: os.path.exists(os.path.join(self.b_dir, ".bench-ready")), 60,
                   "%s: lsyncd start-up sync" % name, procs=self.procs)
        time.sleep(1)

    def stop(self):
        self.b.stop(self.p)
        if self.rd:
            self.b.stop(self.rd)


def latency_trials(pair, n, label, timeout, gap=0.1):
    lat = []
    for i in range(n):
        name = "lat-%s-%d" % (label, i)
        data = ("%s %d %s\n" % (label, i, os.urandom(8).hex())).encode()
        dst = os.path.join(pair.b_dir, name)
        t0 = time.monotonic()
        with open(os.path.join(pair.a_dir, name), "wb") as f:
            f.write(data)
        deadline = t0 + timeout
        while True:
            try:
                with open(dst, "rb") as f:
                    if f.read() == data:
                        break
            except OSError:
                pass
            now = time.monotonic()
            if now > deadline:
                raise BenchError("%s: trial %d not on B after %.0f s" % (label, i, timeout))
            if i % 10 == 0:
                for p in pair.procs:
                    if p.poll() is not None:
                        raise BenchError("%s exited with status %s" % (p.bench_name, p.returncode))
            time.sleep(0.001)
        lat.append(time.monotonic() - t0)
        time.sleep(gap)
    return lat


def case2_latency(b, cfg, res, pairs):
    C = "2 change propagation"
    bs = pairs["bs"]
    log("case 2: backupsync, %d trials" % cfg.trials)
    lb = latency_trials(bs, cfg.trials, "bs", 30)
    log("case 2: backupsync with tls = no, %d trials" % cfg.trials)
    cp = BsPair(b, "c2-clear", tls=False)
    try:
        lc = latency_trials(cp, cfg.trials, "clear", 30)
    finally:
        cp.stop()
    log("case 2: lsyncd delay=0, %d trials" % cfg.trials)
    l0 = latency_trials(pairs["ls0"], cfg.trials, "ls0", 30)
    log("case 2: lsyncd default delay, %d trials" % cfg.trials_default)
    lsd = b.path("c2-lsd")
    lp = LsPair(b, "c2-lsd", delay=None)
    try:
        ld = latency_trials(lp, cfg.trials_default, "lsd", 60, gap=0.5)
    finally:
        lp.stop()
    lcl = cluster_latency(pairs["cluster"], cfg.trials) if "cluster" in pairs else None
    res.note("case 2: %d trials for backupsync (with TLS, and with tls = no: a second server and "
             "pair of agents) and lsyncd delay=0; %d for lsyncd with its default delay (15 s), whose "
             "p99 is then just its maximum." % (cfg.trials, cfg.trials_default))
    # the targets are backupsync's with TLS, its default; tls = no is for comparison
    for lat, suffix, tls in ((lb, "", True), (lc, " (tls = no)", False)):
        for p, ms in ((50, 15), (99, 250)):
            v = percentile(lat, p)
            for peer, pl in (("lsyncd delay=0", l0), ("lsyncd default delay", ld)):
                res.add(C, "p%d latency A -> B%s" % (p, suffix), v, peer, percentile(pl, p),
                        target=(lambda x, r, t=ms / 1000.0: x <= t) if tls else None,
                        target_text=("<= %d ms" % ms) if tls else "-")
    if lcl:
        for p in (50, 99):
            one, two = percentile(lcl["one"], p), percentile(lcl["two"], p)
            res.add(C, "p%d latency A -> B, cluster backend, through one node" % p, one,
                    "backupsync, embedded", percentile(lb, p))
            res.add(C, "p%d latency A -> B, cluster backend, across two nodes" % p, two,
                    "cluster, through one node", one)


def cluster_latency(trio, n):
    """Trials of a small file written on A until both B1 and B2 have it."""
    log("case 2: the cluster backend, %d trials" % n)
    lat = {"one": [], "two": []}
    for i in range(n):
        name = "lat-cluster-%d" % i
        data = ("cluster %d %s\n" % (i, os.urandom(8).hex())).encode()
        t0 = time.monotonic()
        with open(os.path.join(trio.a_dir, name), "wb") as f:
            f.write(data)
        got = set()
        while len(got) < 2:
            for k, d in trio.b_dirs.items():
                if k in got:
                    continue
                try:
                    with open(os.path.join(d, name), "rb") as f:
                        if f.read() == data:
                            lat[k].append(time.monotonic() - t0)
                            got.add(k)
                except OSError:
                    pass
            if time.monotonic() - t0 > 30:
                raise BenchError("cluster: trial %d not on both nodes' agents after 30 s" % i)
            time.sleep(0.001)
        time.sleep(0.1)
    return lat


def wait_tree(d, want, timeout, procs, what):
    wait_until(lambda: os.path.isdir(d) and tree_stats(d) == want, timeout, what,
               interval=0.02, procs=procs)


def case3_burst(b, cfg, res, pairs):
    C = "3 burst"
    prep = b.path("c3-tree")
    make_tree(prep, cfg.c3_dirs, cfg.c3_per_dir, lambda: random.randint(100, 4096))
    want = tree_stats(prep)
    times = {"bs": [], "ls0": []}
    for run in range(cfg.runs):
        for key in ("bs", "ls0"):
            pair = pairs[key]
            name = "burst-%d" % run
            t0 = time.monotonic()
            subprocess.run(["cp", "-r", prep, os.path.join(pair.a_dir, name)], check=True, timeout=300)
            wait_tree(os.path.join(pair.b_dir, name), want, cfg.wait_timeout, pair.procs,
                      "%s: burst on B" % key)
            dt = time.monotonic() - t0
            times[key].append(dt)
            log("case 3 run %d: %s %.2f s" % (run + 1, key, dt))
            shutil.rmtree(os.path.join(pair.a_dir, name))
            wait_until(lambda: not os.path.exists(os.path.join(pair.b_dir, name)),
                       cfg.wait_timeout, "%s: burst removed on B" % key, procs=pair.procs)
            time.sleep(1)
    res.note("case 3 per run: backupsync %s; lsyncd %s" % (
        ", ".join("%.1f s" % t for t in times["bs"]), ", ".join("%.1f s" % t for t in times["ls0"])))
    res.add(C, "time, cp -r of %d files until all on B" % want[0], statistics.median(times["bs"]),
            "lsyncd delay=0", statistics.median(times["ls0"]),
            target=lambda v, r: r <= 1.0, target_text="ratio <= 1.0")
    cl = {"one": [], "two": []}
    trio = pairs.get("cluster")
    for run in range(cfg.runs if trio else 0):
        name = "burst-cluster-%d" % run
        t0 = time.monotonic()
        subprocess.run(["cp", "-r", prep, os.path.join(trio.a_dir, name)], check=True, timeout=300)
        pending = dict(trio.b_dirs)
        while pending:
            for k, d in list(pending.items()):
                p = os.path.join(d, name)
                if os.path.isdir(p) and tree_stats(p) == want:
                    cl[k].append(time.monotonic() - t0)
                    del pending[k]
            if time.monotonic() - t0 > cfg.wait_timeout:
                raise BenchError("cluster: the burst did not reach both nodes' agents")
            for pr in trio.procs:
                if pr.poll() is not None:
                    raise BenchError("%s exited with status %s" % (pr.bench_name, pr.returncode))
            time.sleep(0.02)
        log("case 3 run %d: cluster, through one node %.2f s, across two nodes %.2f s"
            % (run + 1, cl["one"][-1], cl["two"][-1]))
        shutil.rmtree(os.path.join(trio.a_dir, name))
        for d in trio.b_dirs.values():
            wait_until(lambda d=d: not os.path.exists(os.path.join(d, name)), cfg.wait_timeout,
                       "cluster: burst removed on B", procs=trio.procs)
        time.sleep(1)
    if cl["one"]:
        one, two = statistics.median(cl["one"]), statistics.median(cl["two"])
        res.add(C, "time, cp -r of %d files until all on B, cluster backend, through one node" % want[0], one,
                "backupsync, embedded", statistics.median(times["bs"]))
        res.add(C, "time, cp -r of %d files until all on B, cluster backend, across two nodes" % want[0], two,
                "cluster, through one node", one)
        objs, size = b.cluster.stored()
        res.note("case 3 cluster per run: through one node %s; across two nodes %s. After cases 1-3 the "
                 "store holds %d objects, %s, and the database %s" % (
                     ", ".join("%.1f s" % t for t in cl["one"]), ", ".join("%.1f s" % t for t in cl["two"]),
                     objs, fmt_bytes(size), fmt_bytes(b.cluster.database_size())))
    b.discard(prep)


def case4_rename(b, cfg, res, pairs):
    C = "4 rename"
    prep = b.path("c4-tree")
    make_tree(prep, 1, cfg.c4_files, lambda: random.randint(100, 4096))
    flat = os.path.join(prep, "d00000")
    want = tree_stats(flat)
    lsn = LsPair(b, "c4-lsnet", delay=0, via_daemon=True)
    out = {}
    try:
        for key, pair in (("bs", pairs["bs"]), ("ls", lsn)):
            subprocess.run(["cp", "-r", flat, os.path.join(pair.a_dir, "ren-0")], check=True, timeout=300)
            wait_tree(os.path.join(pair.b_dir, "ren-0"), want, cfg.wait_timeout, pair.procs,
                      "%s: rename dir on B" % key)
            time.sleep(2)
            times, nbytes, ups = [], [], []
            for run in range(cfg.runs):
                old = os.path.join(pair.a_dir, "ren-%d" % run)
                new = os.path.join(pair.a_dir, "ren-%d" % (run + 1))
                bold = os.path.join(pair.b_dir, "ren-%d" % run)
                bnew = os.path.join(pair.b_dir, "ren-%d" % (run + 1))
                u0 = count_uploads(pair.srv.bench_log) if key == "bs" else 0
                l0 = lo_bytes()
                t0 = time.monotonic()
                os.rename(old, new)
                wait_until(lambda: not os.path.exists(bold) and os.path.isdir(bnew)
                           and tree_stats(bnew) == want, cfg.wait_timeout,
                           "%s: renamed dir on B" % key, procs=pair.procs)
                dt = time.monotonic() - t0
                nb = lo_bytes() - l0
                times.append(dt)
                nbytes.append(nb)
                if key == "bs":
                    ups.append(count_uploads(pair.srv.bench_log) - u0)
                log("case 4 run %d: %s %.2f s, %s on lo" % (run + 1, key, dt, fmt_bytes(nb)))
                time.sleep(2)
            out[key] = (times, nbytes, ups)
    finally:
        lsn.stop()
    b.discard(prep)
    res.note("case 4: lsyncd targets an rsync daemon on 127.0.0.1 here (not a local directory) "
             "so that its bytes cross the loopback interface like backupsync's; loopback bytes "
             "count everything on lo while the rename propagates.")
    bt, bb, bu = out["bs"]
    lt, lb, _ = out["ls"]
    res.add(C, "time, rename of a %d-file dir" % want[0], statistics.median(bt), "lsyncd delay=0",
            statistics.median(lt), target=lambda v, r: r <= 1.0, target_text="ratio <= 1.0")
    res.add(C, "bytes on loopback", statistics.median(bb), "lsyncd delay=0", statistics.median(lb),
            fmt=fmt_bytes, target=lambda v, r: v <= 1 * MiB, target_text="<= 1 MiB (metadata only)")
    res.add(C, "files re-uploaded (server log)", max(bu), fmt=lambda x: "%d" % x,
            target=lambda v, r: v == 0, target_text="0")


def wait_idle(pid, quiet=2.0, timeout=600, proc=None):
    """Until the process used no CPU for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pid)
    since = time.monotonic()
    while True:
        time.sleep(0.25)
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s exited with status %s" % (proc.bench_name, proc.returncode))
        t = cpu_ticks(pid)
        now = time.monotonic()
        if t != last:
            last, since = t, now
        elif now - since >= quiet:
            return
        if now > deadline:
            raise BenchError("pid %d not idle after %.0f s" % (pid, timeout))


def case5_memory(b, cfg, res):
    C = "5 memory"
    root = b.path("c5-tree")
    log("case 5: creating %d files in %d dirs" % (cfg.c5_dirs * cfg.c5_per_dir, cfg.c5_dirs))
    make_tree(root, cfg.c5_dirs, cfg.c5_per_dir, lambda: random.randint(0, 100))
    srv = b.server("c5-server")
    state = b.path("c5-state")
    t0 = time.monotonic()
    with open(b.path("c5-once.log"), "wb") as lf:
        b.logs.append(b.path("c5-once.log"))
        p = subprocess.run(b.agent_argv(srv, root, None, state, once=True), stdin=subprocess.DEVNULL,
                           stdout=lf, stderr=subprocess.STDOUT, timeout=cfg.c5_timeout)
    if p.returncode != 0:
        raise BenchError("first upload (--once) exited %d" % p.returncode)
    log("case 5: first upload of %d files took %.1f s" % (cfg.c5_dirs * cfg.c5_per_dir,
                                                          time.monotonic() - t0))
    with open(b.path("c5-once.log"), "rb") as f:
        token = [l for l in f.read().decode().splitlines() if l.startswith("ID: ")][0][4:]
    # the same state (manifest) the first upload left: a restarted agent,
    # whose verification pass runs once it is idle
    verify_s = 20
    a = b.agent("c5-A", srv, root, token=token, state=state, extra=["--verify-interval", "%ds" % verify_s])
    t1 = time.monotonic()
    time.sleep(1)
    wait_idle(a.pid, quiet=3.0, timeout=600, proc=a)
    st = proc_status(a.pid)
    log("case 5: agent idle after %.1f s" % (time.monotonic() - t1))
    alog = b.path("agent-c5-A.log")
    passes = []
    for _ in range(cfg.runs):
        want = len(passes) + 1
        ticks0 = cpu_ticks(a.pid)
        wait_until(lambda: len(re.findall(r"verification pass: \d+ entries compared in ([0-9.]+) ms",
                                          open(alog).read())) >= want, verify_s * 3 + 600,
                   "the agent's verification pass %d" % want, interval=0.2, procs=[a])
        found = re.findall(r"verification pass: (\d+) entries compared in ([0-9.]+) ms, (\d+) changes",
                           open(alog).read())
        passes.append((int(found[-1][0]), float(found[-1][1]) / 1000.0, int(found[-1][2]),
                       (cpu_ticks(a.pid) - ticks0) / os.sysconf("SC_CLK_TCK")))
    t2 = time.monotonic()
    subprocess.run(["find", root, "-printf", "%s %T@\n"], stdout=subprocess.DEVNULL, check=True)
    find_s = time.monotonic() - t2
    b.stop(a)
    b.stop(srv)
    b.discard(root)
    b.discard(b.path("c5-server-storage"))
    desc = "agent idle, %d files / %d dirs" % (cfg.c5_dirs * cfg.c5_per_dir, cfg.c5_dirs)
    res.add(C, desc + ": VmRSS", st["VmRSS"], fmt=fmt_bytes,
            target=lambda v, r: v <= 32 * MiB, target_text="<= 32 MiB")
    res.add(C, desc + ": VmHWM", st["VmHWM"], fmt=fmt_bytes,
            target=lambda v, r: v <= 32 * MiB, target_text="<= 32 MiB")
    secs = sorted(p[1] for p in passes)
    res.add(C, "verification pass, %d entries: time" % passes[-1][0], secs[len(secs) // 2], fmt=fmt_time,
            peer="find -printf (a stat of every entry)", peer_val=find_s)
    res.note("case 5: verification passes (entries, seconds, differences found, agent CPU seconds "
             "between two passes): %s; a pass runs every verify-interval (default 1h)."
             % "; ".join("%d, %.2f s, %d, %.2f s" % p for p in passes))
    if any(p[2] for p in passes):
        raise BenchError("the verification pass found changes in a tree nobody changed: %r" % passes)

    # server with 1,000 idle sessions
    bsproto = load_bsproto()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cfg.c5_sessions + 1000
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = b.server("c5-sessions-server", ["--max-connections", "2000"])
    socks = []
    try:
        s = bsproto.connect(srv.port)
        socks.append(s)
        token = bsproto.hello(s, name="bench")["token"]
        time.sleep(0.5)
        base = proc_status(srv.pid)["VmRSS"]
        for i in range(cfg.c5_sessions):
            s = bsproto.connect(srv.port)
            socks.append(s)
            bsproto.hello(s, token=token, device=os.urandom(16), name="bench%d" % i)
        time.sleep(1)
        if srv.poll() is not None:
            raise BenchError("server exited with %s" % srv.returncode)
        st = proc_status(srv.pid)
    finally:
        for s in socks:
            s.close()
        b.stop(srv)
    res.add(C, "server, %d idle sessions: VmRSS" % cfg.c5_sessions, st["VmRSS"], fmt=fmt_bytes,
            target=lambda v, r: v <= 64 * MiB, target_text="<= 64 MiB")
    res.note("case 5: the server's VmRSS was %s with one session, %s with %d (VmHWM %s)."
             % (fmt_bytes(base), fmt_bytes(st["VmRSS"]), cfg.c5_sessions + 1, fmt_bytes(st["VmHWM"])))


def case6_big_edit(b, cfg, res):
    C = "6 edit in a big file"
    size = cfg.c6_size
    gen = b.path("c6-big.bin")
    log("case 6: generating a %s file" % fmt_bytes(size))
    write_random_file(gen, size)
    off = size // 2 - MiB // 2
    # backupsync pair, then the file copied into A
    pair = BsPair(b, "c6-bs")
    rsrc = b.path("c6-rsync-src")
    rdst = b.path("c6-rsync-dst")
    os.makedirs(rsrc)
    rd = b.rsync_daemon({"big": rdst})
    try:
        shutil.copyfile(gen, os.path.join(rsrc, "big.bin"))
        shutil.copyfile(gen, os.path.join(pair.a_dir, "big.bin.part"))
        os.rename(os.path.join(pair.a_dir, "big.bin.part"), os.path.join(pair.a_dir, "big.bin"))
        os.unlink(gen)
        bfile = os.path.join(pair.b_dir, "big.bin")
        wait_until(lambda: os.path.getsize(bfile) == size, cfg.c6_timeout,
                   "backupsync: big file on B", interval=0.2, procs=pair.procs)
        time.sleep(2)
        r = subprocess.run(["rsync", "-a", rsrc + "/", "rsync://127.0.0.1:%d/big/" % rd.port],
                           capture_output=True, timeout=cfg.c6_timeout)
        if r.returncode != 0:
            raise BenchError("rsync (initial) exited %d: %s" % (r.returncode, r.stderr.decode()[-300:]))
        sfile = os.path.join(b.path("c6-bs-server-storage"), pair.a.token[:4], "tree", "big.bin")

        def has_patch(path, patch):
            with open(path, "rb") as f:
                f.seek(off)
                return f.read(MiB) == patch

        ut, ub, bt, bb, rt, rb = [], [], [], [], [], []
        for run in range(cfg.runs):
            patch = os.urandom(MiB)
            # backupsync in two measured hops: A -> server while B is paused
            # (so the loopback bytes are the upload's only), then B resumes
            # and fetches the edit, as it does at once after the server's
            # NOTIFY (which is waiting in its socket).
            os.kill(pair.b_agent.pid, signal.SIGSTOP)
            try:
                l0 = lo_bytes()
                t0 = time.monotonic()
                with open(os.path.join(pair.a_dir, "big.bin"), "r+b") as f:
                    f.seek(off)
                    f.write(patch)
                wait_until(lambda: has_patch(sfile, patch), cfg.c6_timeout, "backupsync: edit on the server",
                           interval=0.02, procs=pair.procs)
                ut.append(time.monotonic() - t0)
                ub.append(lo_bytes() - l0)
            finally:
                os.kill(pair.b_agent.pid, signal.SIGCONT)
            wait_until(lambda: has_patch(bfile, patch), cfg.c6_timeout, "backupsync: edit on B", interval=0.02,
                       procs=pair.procs)
            bt.append(time.monotonic() - t0)
            bb.append(lo_bytes() - l0)
            log("case 6 run %d: backupsync A -> server %.2f s, %s on lo; A -> B %.2f s, %s on lo"
                % (run + 1, ut[-1], fmt_bytes(ub[-1]), bt[-1], fmt_bytes(bb[-1])))
            time.sleep(2)
            # rsync
            with open(os.path.join(rsrc, "big.bin"), "r+b") as f:
                f.seek(off)
                f.write(patch)
            l0 = lo_bytes()
            t0 = time.monotonic()
            r = subprocess.run(["rsync", "-a", rsrc + "/", "rsync://127.0.0.1:%d/big/" % rd.port],
                               capture_output=True, timeout=cfg.c6_timeout)
            dt = time.monotonic() - t0
            if r.returncode != 0:
                raise BenchError("rsync exited %d: %s" % (r.returncode, r.stderr.decode()[-300:]))
            with open(os.path.join(rdst, "big.bin"), "rb") as f:
                f.seek(off)
                if f.read(MiB) != patch:
                    raise BenchError("rsync: edit not at the destination")
            rt.append(dt)
            rb.append(lo_bytes() - l0)
            log("case 6 run %d: rsync %.2f s, %s on lo" % (run + 1, rt[-1], fmt_bytes(rb[-1])))
        # (b), (c): 100 bytes inserted at the start and in the middle. The
        # new file is made outside the tree and renamed over the old one, as
        # an editor saves; the same for rsync's source. Timed from the rename.
        inserts = []
        for what, at in (("at the start", 0), ("in the middle", size // 2)):
            ins = os.urandom(100)
            new_size = os.path.getsize(os.path.join(pair.a_dir, "big.bin")) + 100

            def has_ins(path):
                try:
                    if os.path.getsize(path) != new_size:
                        return False
                    with open(path, "rb") as f:
                        f.seek(at)
                        return f.read(100) == ins
                except OSError:
                    return False
            tmp = b.path("c6-new.bin")
            insert_bytes(os.path.join(pair.a_dir, "big.bin"), tmp, at, ins)
            os.kill(pair.b_agent.pid, signal.SIGSTOP)
            try:
                l0 = lo_bytes()
                t0 = time.monotonic()
                os.rename(tmp, os.path.join(pair.a_dir, "big.bin"))
                wait_until(lambda: has_ins(sfile), cfg.c6_timeout, "backupsync: insertion on the server",
                           interval=0.02, procs=pair.procs)
                it, ib = time.monotonic() - t0, lo_bytes() - l0
            finally:
                os.kill(pair.b_agent.pid, signal.SIGCONT)
            wait_until(lambda: has_ins(bfile), cfg.c6_timeout, "backupsync: insertion on B", interval=0.02,
                       procs=pair.procs)
            ibt, ibb = time.monotonic() - t0, lo_bytes() - l0
            time.sleep(1)
            insert_bytes(os.path.join(rsrc, "big.bin"), tmp, at, ins)
            os.rename(tmp, os.path.join(rsrc, "big.bin"))
            l0 = lo_bytes()
            t0 = time.monotonic()
            r = subprocess.run(["rsync", "-a", rsrc + "/", "rsync://127.0.0.1:%d/big/" % rd.port],
                               capture_output=True, timeout=cfg.c6_timeout)
            rit, rib = time.monotonic() - t0, lo_bytes() - l0
            if r.returncode != 0 or not has_ins(os.path.join(rdst, "big.bin")):
                raise BenchError("rsync (insertion %s) exited %d: %s" % (what, r.returncode, r.stderr.decode()[-300:]))
            log("case 6 insertion %s: backupsync A -> server %.2f s, %s on lo; A -> B %.2f s, %s on lo; "
                "rsync %.2f s, %s on lo" % (what, it, fmt_bytes(ib), ibt, fmt_bytes(ibb), rit, fmt_bytes(rib)))
            inserts.append((what, it, ib, ibt, ibb, rit, rib))
            time.sleep(1)
        # (d) cp of the file to a new name: the upload hop, B paused.
        os.kill(pair.b_agent.pid, signal.SIGSTOP)
        try:
            cfile = os.path.join(os.path.dirname(sfile), "copy.bin")
            l0 = lo_bytes()
            t0 = time.monotonic()
            subprocess.run(["cp", os.path.join(pair.a_dir, "big.bin"), os.path.join(pair.a_dir, "copy.bin")],
                           check=True, timeout=cfg.c6_timeout)
            # The server renames an upload into the tree only once its SHA-256 checked out.
            wait_until(lambda: os.path.exists(cfile), cfg.c6_timeout, "backupsync: the copy on the server",
                       interval=0.02, procs=pair.procs)
            ct, cb = time.monotonic() - t0, lo_bytes() - l0
        finally:
            os.kill(pair.b_agent.pid, signal.SIGCONT)
        # B's download of the copy must not count in rsync's bytes.
        bcopy = os.path.join(pair.b_dir, "copy.bin")
        wait_until(lambda: os.path.exists(bcopy) and os.path.getsize(bcopy) == os.path.getsize(cfile), cfg.c6_timeout,
                   "backupsync: the copy on B", interval=0.05, procs=pair.procs)
        time.sleep(1)
        subprocess.run(["cp", os.path.join(rsrc, "big.bin"), os.path.join(rsrc, "copy.bin")], check=True,
                       timeout=cfg.c6_timeout)
        l0 = lo_bytes()
        t0 = time.monotonic()
        r = subprocess.run(["rsync", "-a", rsrc + "/", "rsync://127.0.0.1:%d/big/" % rd.port],
                           capture_output=True, timeout=cfg.c6_timeout)
        if r.returncode != 0:
            raise BenchError("rsync (copy) exited %d: %s" % (r.returncode, r.stderr.decode()[-300:]))
        rct, rcb = time.monotonic() - t0, lo_bytes() - l0
        log("case 6 cp: backupsync %.2f s, %s on lo; rsync %.2f s, %s on lo"
            % (ct, fmt_bytes(cb), rct, fmt_bytes(rcb)))
        # History: ten more 1 MiB edits, then backupsyncd --prune (the
        # server stopped) cuts every kept version into the chunk store.
        rng = random.Random(6)
        for i in range(10):
            patch = os.urandom(MiB)
            at = rng.randrange(0, os.path.getsize(sfile) - MiB)
            with open(os.path.join(pair.a_dir, "big.bin"), "r+b") as f:
                f.seek(at)
                f.write(patch)

            def edited(path=sfile, at=at, patch=patch):
                with open(path, "rb") as f:
                    f.seek(at)
                    return f.read(MiB) == patch
            wait_until(edited, cfg.c6_timeout, "backupsync: history edit %d on the server" % (i + 1),
                       interval=0.05, procs=pair.procs)
    finally:
        pair.stop()
        b.stop(rd)
    storage = b.path("c6-bs-server-storage")
    account = os.path.dirname(os.path.dirname(sfile))
    t0 = time.monotonic()
    p = subprocess.run([SERVER_BIN, "--prune", "--storage", storage, "--config", "/dev/null"],
                       capture_output=True, timeout=cfg.c6_timeout)
    prune_s = time.monotonic() - t0
    if p.returncode != 0:
        raise BenchError("backupsyncd --prune exited %d: %s" % (p.returncode, p.stderr.decode()[-300:]))
    history = history_du(account)
    n_versions = sum(1 for _, _, names in os.walk(os.path.join(account, "content"))
                     for n in names if n.endswith(".chunks"))
    log("case 6 history: %s in %d recipes after --prune (%.1f s)" % (fmt_bytes(history), n_versions, prune_s))
    for d in (rsrc, rdst, pair.a_dir, pair.b_dir, b.path("c6-bs-server-storage")):
        b.discard(d)
    res.add(C, "time, 1 MiB overwritten in a %s file, A -> server" % fmt_bytes(size), statistics.median(ut),
            "rsync (daemon)", statistics.median(rt), target=lambda v, r: r <= 1.0,
            target_text="ratio <= 1.0")
    res.add(C, "bytes on loopback, A -> server", statistics.median(ub), "rsync (daemon)", statistics.median(rb),
            fmt=fmt_bytes, target=lambda v, r: r <= 1.0, target_text="ratio <= 1.0")
    res.add(C, "time, A -> server -> B (two hops)", statistics.median(bt), "rsync (daemon)",
            statistics.median(rt))
    res.add(C, "bytes on loopback, A -> server -> B", statistics.median(bb), "rsync (daemon)",
            statistics.median(rb), fmt=fmt_bytes)
    for what, it, ib, ibt, ibb, rit, rib in inserts:
        res.add(C, "bytes on loopback, 100 bytes inserted %s, A -> server" % what, ib, "rsync (daemon)", rib,
                fmt=fmt_bytes, target=lambda v, r: r <= 1.0, target_text="ratio <= 1.0")
        res.add(C, "time, 100 bytes inserted %s, A -> server" % what, it, "rsync (daemon)", rit)
        res.add(C, "bytes on loopback, 100 bytes inserted %s, A -> server -> B" % what, ibb, "rsync (daemon)", rib,
                fmt=fmt_bytes)
    res.add(C, "bytes on loopback, cp of the file to a new name, A -> server", cb, "rsync (daemon)", rcb,
            fmt=fmt_bytes, target=lambda v, r: v < MiB, target_text="< 1 MiB")
    res.add(C, "time, cp of the file to a new name, A -> server", ct, "rsync (daemon)", rct)
    res.add(C, "history on the server after ten more 1 MiB edits (%d kept versions)" % n_versions, history,
            fmt=fmt_bytes, target=lambda v, r: v <= 1.1 * GiB, target_text="<= 1.1 GiB beyond the current file")
    res.add(C, "backupsyncd --prune time (cuts every kept version into chunks)", prune_s)
    res.note("case 6: backupsync cuts the file into content-defined chunks (FastCDC, 16/64/256 KiB) and "
             "sends A's changed chunks to the server (COPY for the rest), and the server sends B only the "
             "chunks B's version lacks, wherever they moved. Insertions are one run each, after (a). The upload "
             "(A -> server, timed until the server's tree shows the edit, B paused meanwhile) is the hop "
             "rsync's one hop to its daemon compares with; A -> server -> B adds B fetching it.")


def case7_restore(b, cfg, res):
    """The tree of case 1 restored from the server into an empty directory
    with backupsync restore / --at, against rsync -a pulling it from its
    daemon."""
    C = "7 restore"
    src = b.path("c7-src")
    log("case 7: generating %d small files + %d x %s" % (cfg.c1_dirs * cfg.c1_per_dir, 4, fmt_bytes(cfg.c1_big)))
    make_tree(src, cfg.c1_dirs, cfg.c1_per_dir, lambda: 4096)
    for i in range(4):
        write_random_file(os.path.join(src, "big%d.bin" % i), cfg.c1_big)
    nfiles, total = tree_stats(src)
    srv = b.server("c7-server")
    rd = b.rsync_daemon({"c7": src})
    times = {"backupsync": [], "rsync": []}
    try:
        argv = b.agent_argv(srv, src, None, b.path("c7-state"), once=True)
        with open(b.path("c7-agent.out"), "wb") as out:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                               timeout=cfg.c1_timeout)
        if p.returncode != 0:
            raise BenchError("backupsync-agent --once exited %d" % p.returncode)
        with open(b.path("c7-agent.out"), "rb") as f:
            token = [l[4:].strip() for l in f.read().decode().splitlines() if l.startswith("ID: ")][0]
        fp = b.fingerprint(srv)
        time.sleep(1.1)
        at = "@%d" % int(time.time())
        for run in range(cfg.runs):
            for name in ("backupsync", "rsync"):
                dst = b.path("c7-%s-%d" % (name.split()[0], run))
                drop_caches()
                t0 = time.monotonic()
                if name == "backupsync":
                    p = subprocess.run([CLI_BIN, "restore", "/", "--at", at, "--to", dst, "--server", "127.0.0.1",
                                        "--port", str(srv.port), "--token", token, "--server-fingerprint", fp],
                                       stdin=subprocess.DEVNULL, capture_output=True, timeout=cfg.c1_timeout)
                else:
                    p = subprocess.run(["rsync", "-a", "rsync://127.0.0.1:%d/c7/" % rd.port, dst + "/"],
                                       stdin=subprocess.DEVNULL, capture_output=True, timeout=cfg.c1_timeout)
                dt = time.monotonic() - t0
                if p.returncode != 0:
                    raise BenchError("%s exited %d: %s" % (name, p.returncode, p.stderr.decode()[-500:]))
                if tree_stats(dst) != (nfiles, total):
                    raise BenchError("%s: restored tree incomplete" % name)
                times[name].append(dt)
                log("case 7 run %d: %s %.2f s" % (run + 1, name, dt))
    finally:
        b.stop(srv)
        b.stop(rd)
        # Kept until the end of the whole run, as in case 1.
        for run in range(cfg.runs):
            for name in ("backupsync", "rsync"):
                b.discard(b.path("c7-%s-%d" % (name, run)))
        b.discard(src)
        b.discard(b.path("c7-server-storage"))
    res.note("case 7 per run: " + "; ".join("%s %s" % (k, ", ".join("%.1f s" % t for t in v))
                                              for k, v in times.items()))
    res.add(C, "time, restore / --at of %d files, %s, to an empty directory" % (nfiles, fmt_bytes(total)),
            statistics.median(times["backupsync"]), "rsync -a from its daemon", statistics.median(times["rsync"]),
            target=lambda v, r: r <= 1.0, target_text="ratio <= 1.0")


def case8_history(b, cfg, res):
    """A big file rewritten 20 times an hour apart (a test clock moves the
    server's time), then saved 5 times unchanged: the history's size, and
    after backupsyncd --prune two days later."""
    C = "8 history and pruning"
    size = cfg.c8_size
    clock = b.path("c8-clock")
    with open(clock, "w") as f:
        f.write("0")
    os.environ["BACKUPSYNC_TEST_CLOCK"] = clock
    d = b.path("c8-A")
    os.makedirs(d)
    try:
        srv = b.server("c8-server")
        a = b.agent("c8-A", srv, d)
    finally:
        del os.environ["BACKUPSYNC_TEST_CLOCK"]
    storage = b.path("c8-server-storage")
    content = os.path.join(storage, a.token[:4])
    sfile = os.path.join(storage, a.token[:4], "tree", "big.bin")

    try:
        for i in range(20):
            with open(clock, "w") as f:
                f.write(str(i * 3600))
            data = os.urandom(size)
            with open(os.path.join(d, "big.bin.tmp"), "wb") as f:
                f.write(data)
            os.rename(os.path.join(d, "big.bin.tmp"), os.path.join(d, "big.bin"))
            head = data[:4096]
            wait_until(lambda: os.path.getsize(sfile) == size and open(sfile, "rb").read(4096) == head,
                       cfg.c6_timeout, "rewrite %d on the server" % i, interval=0.05, procs=[srv, a])
        rewritten = history_du(content)
        for i in range(5):
            os.utime(os.path.join(d, "big.bin"), (1700000000 + i, 1700000000 + i))
            time.sleep(0.5)
        time.sleep(2)
        unchanged = history_du(content) - rewritten
        b.stop(a)
        b.stop(srv)
        with open(clock, "w") as f:
            f.write(str(2 * 86400))
        t0 = time.monotonic()
        p = subprocess.run([SERVER_BIN, "--prune", "--storage", storage, "--config", "/dev/null"],
                           capture_output=True, timeout=600, env=dict(os.environ, BACKUPSYNC_TEST_CLOCK=clock))
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise BenchError("backupsyncd --prune exited %d: %s" % (p.returncode, p.stderr.decode()[-300:]))
        report = p.stdout.decode().strip().splitlines()[-1]
        after = history_du(content)
    finally:
        b.discard(d)
    b.discard(storage)
    res.add(C, "history after 20 rewrites of a %s file" % fmt_bytes(size), rewritten, fmt=fmt_bytes,
            target=lambda v, r: v <= 19 * size * 1.05, target_text="<= 19 contents")
    res.add(C, "history added by 5 saves with the same content", unchanged, fmt=fmt_bytes,
            target=lambda v, r: v == 0, target_text="0")
    res.add(C, "history after backupsyncd --prune, 2 days later (default retention)", after, fmt=fmt_bytes,
            target=lambda v, r: v <= 2 * size * 1.05, target_text="<= one per day")
    res.add(C, "backupsyncd --prune time", dt)
    res.note("case 8: backupsyncd --prune said: " + report)


def case9_chunker(b, cfg, res):
    """The content-defined chunker on one core, in memory, and what each
    chunk size would cost: bytes in new chunks after an edit of a 64 MiB
    file against the chunk list such a file needs."""
    C = "9 chunker"
    exe = os.path.join(BUILD_DIR, "tests", "bench", "bench-chunk")
    mib = 64 if cfg.c6_size < GiB else 512  # --quick: less
    p = subprocess.run(["taskset", "-c", "0", exe, str(mib)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise BenchError("bench-chunk exited %d: %s" % (p.returncode, p.stderr[-300:]))
    v = dict(l.split("=", 1) for l in p.stdout.split())
    n = int(v["chunker_bytes"])
    gbs = n / float(v["chunker_seconds"]) / 1e9
    res.add(C, "FastCDC throughput, one core, %s in memory (GB/s)" % fmt_bytes(n), gbs,
            fmt=lambda x: "%.2f" % x, target=lambda x, r: x >= 1.0, target_text=">= 1 GB/s")
    res.add(C, "mean chunk size (min 16 KiB, avg 64 KiB, max 256 KiB)", n / int(v["chunker_chunks"]), fmt=fmt_bytes)
    res.add(C, "chunking and SHA-256 of every chunk (GB/s)", n / float(v["chunk_and_sha_seconds"]) / 1e9,
            fmt=lambda x: "%.2f" % x)
    rows = []
    for avg in sorted({int(k.split("_")[1]) for k in v if k.startswith("sizes_")}):
        g = lambda what: int(v["sizes_%d_%s" % (avg, what)])
        rows.append("avg %s: 100 B inserted at the start %s, in the middle %s, 1 MiB overwritten %s; "
                    "chunk list of a 64 MiB file %s (%d chunks)"
                    % (fmt_bytes(avg), fmt_bytes(g("insert100_start")), fmt_bytes(g("insert100_middle")),
                       fmt_bytes(g("overwrite1m_middle")), fmt_bytes(g("list_bytes")), g("chunks")))
    res.note("case 9: bytes in chunks an edit of a 64 MiB file makes new, per average size (min avg/4, "
             "max avg*4): " + "; ".join(rows))


# ---------------------------------------------------------------- main

class Cfg:
    pass


def make_scale_tree(root, n):
    """n files of 1-8 KiB, 10 per directory, 100 directories in each
    top-level one (a million files: 100,000 directories)."""
    rnd = random.Random(n)
    data = os.urandom(MiB)
    k = 0
    for t in range(max(1, (n + 999) // 1000)):
        for s in range(100):
            if k >= n:
                return
            d = os.path.join(root, "t%04d" % t, "s%03d" % s)
            os.makedirs(d)
            for f in range(min(10, n - k)):
                size = rnd.randint(1024, 8192)
                off = rnd.randint(0, MiB - size)
                with open(os.path.join(d, "f%d.dat" % f), "wb") as fh:
                    fh.write(data[off:off + size])
                k += 1


def case10_sizes(b, cfg, res, C, per_file, runs_of, made):
    """The sizes of case 10 in turn (see case10_scale()); what each made
    is listed in made, for the caller to remove."""
    for n in cfg.c10_sizes:
        src = b.path("c10-src-%d" % n)
        runs = cfg.runs if n <= 100000 else 1
        made.append((n, runs, src))
        log("case 10: generating %d files" % n)
        make_scale_tree(src, n)
        nfiles, total = tree_stats(src)
        desc = "%d files, %s" % (nfiles, fmt_bytes(total))
        # Up to 100,000 files each figure is the median of cfg.runs runs
        # (peaks: the highest), as in the other cases: one run of a tree
        # that size moves by a fifth, rsync's more than ours. A million
        # files take minutes per tool: one run.
        def one_run(run):
            name = "c10-%d-r%d" % (n, run)
            srv = b.server(name + "-server")
            rd = b.rsync_daemon({"c10": b.path(name + "-rsync")})
            state = b.path(name + "-state")
            tmo = cfg.c10_timeout
            figures = {}
            try:
                def agent(d, token, st):
                    return b.agent_argv(srv, d, token, st, once=True)

                def timed(argv, what, check_tree=None):
                    drop_caches()
                    peak = [0]
                    lf = open(b.path(name + "-%s.log" % what), "ab")
                    # GNU time's child: its peak is the program's own, not
                    # that of this Python forking it.
                    rss = b.path(name + "-maxrss")
                    t0 = time.monotonic()
                    p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss] + argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=lf)
                    lf.close()
                    out = []
                    reader = threading.Thread(target=lambda: out.append(p.stdout.read()))
                    reader.start()
                    try:
                        p.wait(tmo)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        raise BenchError("case 10: %s of %d files did not finish within %d s" % (what, n, tmo))
                    dt = time.monotonic() - t0
                    with open(rss) as f:
                        peak[0] = int(f.read().split()[-1]) * 1024
                    reader.join()
                    if p.returncode != 0:
                        b.logs.append(b.path(name + "-%s.log" % what))
                        raise BenchError("case 10: %s of %d files exited %d" % (what, n, p.returncode))
                    if check_tree and tree_stats(check_tree) != (nfiles, total):
                        raise BenchError("case 10: %s of %d files: the tree is incomplete" % (what, n))
                    log("case 10, %d files, run %d: %s %.2f s%s" % (n, run + 1, what, dt,
                                                            ", peak %s" % fmt_bytes(peak[0]) if peak[0] else ""))
                    return dt, peak[0], b"".join(out).decode("utf-8", "replace")

                # first backup, then rsync of the same tree to its daemon
                dt, peak, out = timed(agent(src, None, state), "first backup")
                token = [l[4:].strip() for l in out.splitlines() if l.startswith("ID: ")][0]
                figures["first"] = dt
                figures["agent_peak"] = peak
                figures["rsync"] = timed(["rsync", "-a", src + "/", "rsync://127.0.0.1:%d/c10/" % rd.port],
                                         "rsync -a")[0]
                # restart with nothing changed, cold and warm, beside rsync -an
                figures["restart_cold"] = timed(agent(src, token, state), "restart")[0]
                os.sync()
                t0 = time.monotonic()
                subprocess.run(agent(src, token, state), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=tmo, check=True)
                figures["restart_warm"] = time.monotonic() - t0
                rsync_n = ["rsync", "-an", src + "/", "rsync://127.0.0.1:%d/c10/" % rd.port]
                figures["rsync_n_cold"] = timed(rsync_n, "rsync -an")[0]
                t0 = time.monotonic()
                subprocess.run(rsync_n, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=tmo, check=True)
                figures["rsync_n_warm"] = time.monotonic() - t0
                # watching: a restarted agent once idle
                a = b.agent(name + "-watch", srv, src, token=token, state=state)
                time.sleep(1)
                wait_idle(a.pid, quiet=3.0, timeout=tmo, proc=a)
                st = proc_status(a.pid)
                figures["watch_rss"], figures["watch_hwm"] = st["VmRSS"], st["VmHWM"]
                figures["watches"] = count_lines(a.bench_log, "raise fs.inotify.max_user_watches")
                b.stop(a)
                # join into an empty directory; restore of the whole tree; rsync pulling
                fp = b.fingerprint(srv)
                at = "@%d" % int(time.time())
                join = b.path(name + "-join")
                os.makedirs(join)
                figures["join"], figures["join_peak"], _ = timed(agent(join, token, b.path(name + "-join-state")), "join",
                                                                 join)
                restore = b.path(name + "-restore")
                figures["restore"], figures["restore_peak"], _ = timed(
                    [CLI_BIN, "restore", "/", "--at", at, "--to", restore, "--server", "127.0.0.1", "--port",
                     str(srv.port), "--token", token, "--server-fingerprint", fp], "restore", restore)
                pull = b.path(name + "-pull")
                figures["pull"] = timed(["rsync", "-a", "rsync://127.0.0.1:%d/c10/" % rd.port, pull + "/"],
                                        "rsync -a pull", pull)[0]
                figures["server_hwm"] = proc_status(srv.pid)["VmHWM"]
            finally:
                b.stop(srv)
                b.stop(rd)
            return figures

        all_runs = [one_run(run) for run in range(runs)]
        f = {}
        for k in all_runs[0]:
            v = [r[k] for r in all_runs]
            f[k] = max(v) if k.endswith(("peak", "rss", "hwm")) or k == "watches" else statistics.median(v)
        watches = f.pop("watches")
        runs_of[nfiles] = runs
        mem = 32 * MiB if n <= 100000 else 64 * MiB
        res.add(C, "first backup, " + desc, f["first"], "rsync -a to its daemon", f["rsync"],
                target=lambda v, r: r <= 0.7, target_text="ratio <= 0.7")
        res.add(C, "agent peak memory, first backup, %d files" % nfiles, f["agent_peak"], fmt=fmt_bytes,
                target=lambda v, r, m=mem: v <= m, target_text="<= %d MiB" % (mem // MiB))
        res.add(C, "agent memory watching %d files (VmRSS; VmHWM %s)" % (nfiles, fmt_bytes(f["watch_hwm"])),
                f["watch_rss"], fmt=fmt_bytes, target=lambda v, r, m=mem: v <= m,
                target_text="<= %d MiB" % (mem // MiB))
        res.add(C, "server peak memory (VmHWM), %d files" % nfiles, f["server_hwm"], fmt=fmt_bytes,
                target=lambda v, r: v <= 64 * MiB, target_text="<= 64 MiB")
        # The targets name 100,000 files (1 s) and a million (10 s); a
        # smaller tree is mostly the start-up's fixed cost.
        limit = 10.0 * n / 1000000 if n >= 100000 else None
        res.add(C, "restart, nothing changed, warm cache, %d files" % nfiles, f["restart_warm"],
                "rsync -an (warm)", f["rsync_n_warm"], target=(lambda v, r, l=limit: v <= l) if limit else None,
                target_text="<= %s" % fmt_time(limit) if limit else "-")
        res.add(C, "restart, nothing changed, cold cache, %d files" % nfiles, f["restart_cold"],
                "rsync -an (cold)", f["rsync_n_cold"])
        res.add(C, "agent peak memory, join, %d files" % nfiles, f["join_peak"], fmt=fmt_bytes,
                target=lambda v, r, m=mem: v <= m, target_text="<= %d MiB" % (mem // MiB))
        res.add(C, "join into an empty directory, " + desc, f["join"], "rsync -a from its daemon", f["pull"],
                target=lambda v, r: r <= 0.8, target_text="ratio <= 0.8")
        res.add(C, "restore / --at into an empty directory, " + desc, f["restore"], "rsync -a from its daemon",
                f["pull"], target=lambda v, r: r <= 0.8, target_text="ratio <= 0.8")
        res.add(C, "backupsync restore peak memory, %d files" % nfiles, f["restore_peak"], fmt=fmt_bytes,
                target=lambda v, r, m=mem: v <= m, target_text="<= %d MiB" % (mem // MiB))
        if watches:
            res.note("case 10, %d files: the agent asked for a higher fs.inotify.max_user_watches." % nfiles)
        per_file[nfiles] = f


def case10_scale(b, cfg, res):
    """First backup, restart, join and restore of 10,000 to 1,000,000
    small files, against rsync in the same run, with the agent's and the
    server's peak memory, and how each cost per file grows."""
    C = "10 scale"
    per_file = {}
    runs_of = {}
    made = []
    try:
        case10_sizes(b, cfg, res, C, per_file, runs_of, made)
    finally:
        # Kept until the end of the whole run (see Bench.discard()).
        for n, runs, src in made:
            for run in range(runs):
                for sub in ("-server-storage", "-rsync", "-state", "-join", "-join-state", "-restore", "-pull"):
                    b.discard(b.path("c10-%d-r%d%s" % (n, run, sub)))
            b.discard(src)
    sizes = sorted(per_file)
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for key, what in (("first", "first backup"), ("restart_warm", "restart (warm)"), ("join", "join"),
                          ("restore", "restore")):
            a = per_file[lo][key] / lo * 1e6
            z = per_file[hi][key] / hi * 1e6
            res.add(C, "%s: time per file at %d files / at %d files (%.1f / %.1f us)" % (what, hi, lo, z, a),
                    z / a, fmt=lambda v: "%.2f" % v, target=lambda v, r: v <= 1.2, target_text="<= 1.20")
    res.note("case 10: medians of the runs per size up to 100,000 files (peaks: the highest), one run of "
             "a million (it takes minutes per tool), cold page cache before each timed command but the warm "
             "restarts; per size: " + "; ".join(
                 "%d files, %d run%s: %s" % (k, runs_of[k], "" if runs_of[k] == 1 else "s",
                                             ", ".join("%s %.2f s" % (x, v) for x, v in per_file[k].items()
                                                       if not x.endswith(("peak", "rss", "hwm"))))
                 for k in sizes))


def config(args):
    c = Cfg()
    c.runs = args.runs
    q = args.quick
    c.c1_dirs, c.c1_per_dir = (10, 100) if q else (100, 100)
    c.c1_big = 8 * MiB if q else 64 * MiB
    c.c1_timeout = 600
    c.trials = args.trials or (20 if q else 100)
    c.trials_default = args.trials_default or (2 if q else 5)
    c.c3_dirs, c.c3_per_dir = (10, 100) if q else (100, 100)
    c.c4_files = 1000 if q else 10000
    c.c5_dirs, c.c5_per_dir = (1000, 10) if q else (10000, 10)
    c.c5_sessions = 100 if q else 1000
    c.c5_timeout = 1800
    c.c6_size = 64 * MiB if q else GiB
    c.c6_timeout = 600
    c.c8_size = 8 * MiB if q else 64 * MiB
    c.wait_timeout = 300
    c.c10_sizes = [n for n in ((1000, 10000) if q else (10000, 100000, 1000000)) if n <= args.scale_max]
    c.c10_timeout = 3600
    return c


def main():
    ap = argparse.ArgumentParser(description="backupsync benchmark suite")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (default 3)")
    ap.add_argument("--quick", action="store_true", help="small data, to smoke-test the suite")
    ap.add_argument("--cases", default="1,2,3,4,5,6,7,8,9,10", help="comma-separated case numbers")
    ap.add_argument("--scale-max", type=int, default=1000000,
                    help="case 10: the largest tree, in files (10,000, 100,000, 1,000,000)")
    ap.add_argument("--no-cluster", action="store_true",
                    help="leave out the cluster backend's rows of cases 1-3 (and its engines)")
    ap.add_argument("--trials", type=int, default=0, help="case 2 trials (default 100, quick 20)")
    ap.add_argument("--trials-default", type=int, default=0,
                    help="case 2 trials for lsyncd with its 15 s default delay (default 5)")
    ap.add_argument("--shared-net", action="store_true",
                    help="do not run in a private network namespace (loopback byte counts then "
                         "include other programs' traffic)")
    ap.add_argument("--output", default=RESULTS, help="markdown results file (default %(default)s)")
    args = ap.parse_args()
    # A private network namespace with its own lo: the loopback byte counts
    # (cases 4 and 6) then see only this benchmark's traffic, not that of
    # tests others run on the machine at the same time.
    private_net = os.environ.get("BENCH_NETNS") == "1"
    if not args.shared_net and not private_net and os.geteuid() == 0 and shutil.which("unshare"):
        env = dict(os.environ, BENCH_NETNS="1")
        sys.stdout.flush()
        os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__)]
                   + sys.argv[1:], env)
    if private_net:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
    cases = {int(x) for x in args.cases.split(",") if x.strip()}
    cfg = config(args)
    for binary in (SERVER_BIN, AGENT_BIN):
        if not os.access(binary, os.X_OK):
            sys.exit("bench: %s is not built (run tools/bench)" % binary)
    for tool in ("rsync", "lsyncd") + (("ssh", "ssh-keygen", "/usr/sbin/sshd") if 1 in cases else ()):
        if shutil.which(tool) is None:
            sys.exit("bench: %s is not installed (run tools/bench)" % tool)

    started = time.monotonic()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    res = Results()
    if private_net:
        res.note("run in a private network namespace (unshare --net): loopback bytes are this "
                 "benchmark's only (they include TCP/IP headers).")
    else:
        res.note("run in the host's network namespace: loopback bytes may include other traffic.")
    res.note(kernel_tls())
    res.note(file_system_note("/var/tmp"))
    if args.quick:
        res.note("--quick: reduced data sizes; not comparable with a full run.")
    root = tempfile.mkdtemp(prefix="bs-bench-", dir="/var/tmp")
    b = Bench(root)
    b.cluster = None if args.no_cluster else BenchCluster(b)
    failed = False
    log("bench: working in %s" % root)

    def run_case(n, fn, *a):
        nonlocal failed
        if n not in cases:
            return
        try:
            fn(b, cfg, res, *a)
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            failed = True
            log("case %d FAILED: %s" % (n, e))
            b.tail()
            res.fail(str(n), str(e))

    try:
        run_case(1, case1_first_backup)
        pairs = {}
        if cases & {2, 3, 4}:
            try:
                pairs["bs"] = BsPair(b, "bs")
                pairs["ls0"] = LsPair(b, "ls0", delay=0)
            except BenchError as e:
                failed = True
                log("setting up agents / lsyncd FAILED: %s" % e)
                b.tail()
                res.fail("2-4", str(e))
                cases -= {2, 3, 4}
        if b.cluster and cases & {2, 3}:
            try:
                pairs["cluster"] = ClusterTrio(b, "cl")
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                failed = True
                log("setting up the cluster's agents FAILED: %s" % e)
                b.tail()
                res.fail("2-3 cluster", str(e))
        run_case(2, case2_latency, pairs)
        run_case(3, case3_burst, pairs)
        run_case(4, case4_rename, pairs)
        for p in pairs.values():
            p.stop()
        run_case(5, case5_memory)
        run_case(6, case6_big_edit)
        run_case(7, case7_restore)
        run_case(8, case8_history)
        run_case(9, case9_chunker)
        run_case(10, case10_scale)
    except KeyboardInterrupt:
        failed = True
        res.note("interrupted")
    finally:
        b.stop_all()
        if b.cluster:
            b.cluster.stop()
        if os.environ.get("BENCH_KEEP"):
            log("kept %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = time.monotonic() - started
    cmd = "tools/bench" + ("" if len(sys.argv) == 1 else " " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    machine = "Linux %s, %d cores (nproc), %s" % (platform.release(), os.cpu_count(),
                                                 platform.machine())
    print()
    print(res.text())
    print()
    for n in res.notes:
        print("note: " + n)
    print("command: %s; date %s; %s; runs %d; took %.0f s" % (cmd, date, machine, cfg.runs, elapsed))
    md = ["# backupsync benchmark results", "",
          "- command: `%s`" % cmd,
          "- date: %s" % date,
          "- machine: %s (`uname -r` %s, nproc %d)" % (machine, platform.release(), os.cpu_count()),
          "- runs per case: %d (values are medians); run time %.0f s" % (cfg.runs, elapsed),
          "", res.markdown(), ""]
    md += ["- " + n for n in res.notes]
    md.append("")
    with open(args.output, "w") as f:
        f.write("\n".join(md))
    print("wrote %s" % args.output)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
