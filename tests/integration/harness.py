"""harness.py - a small library for backupsync's integration tests.

Real processes on loopback in temporary directories: one backupsyncd and
several backupsync-agent processes. Python 3 standard library only.

Binaries are found under $BS_BUILD_DIR (default: build/ at the top of
the source tree this file is in).

Typical use:

    with harness.Env("name") as env:
        srv = env.server()
        a = env.agent("A", env.path("a"))      # registers, waits for ID:
        b = env.agent("B", env.path("b"), token=a.token)
        harness.assert_trees_equal(a.dir, b.dir)

Everything started through an Env is killed when the `with` block ends,
also on failure; on failure the tail of every log is printed first.
"""

import contextlib
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

_SRC_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_DIR = os.environ.get("BS_BUILD_DIR", os.path.join(_SRC_DIR, "build"))
SERVER_BIN = os.path.join(BUILD_DIR, "daemon", "backupsyncd")
AGENT_BIN = os.path.join(BUILD_DIR, "client-agent", "backupsync-agent")
CLI_BIN = os.path.join(BUILD_DIR, "client-cli", "backupsync")

TMP_PREFIX = ".backupsync-tmp."

# How long a change may take to travel A -> server -> B. The poll interval
# is 5 s and NOTIFY makes it immediate, so 30 s is generous.
SYNC_TIMEOUT = 30.0
LOG_TAIL = 40

# Processes expected to be running; wait_until() fails fast when one died.
_running = []


class TestFailure(AssertionError):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


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


def _check_alive():
    for proc in list(_running):
        rc = proc.popen.poll() if proc.popen else None
        if rc is not None:
            _running.remove(proc)
            fail("%s exited unexpectedly with status %s" % (proc.name, rc))


def wait_until(pred, timeout=SYNC_TIMEOUT, msg="condition", check_alive=True):
    """Poll pred() every 20 ms until it returns a true value (returned)."""
    deadline = time.monotonic() + timeout
    last_err = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError) as e:  # files vanish while we look
            last_err = e
        if check_alive:
            _check_alive()
        if time.monotonic() >= deadline:
            extra = " (last error: %r)" % (last_err,) if last_err else ""
            fail("timed out after %.1f s waiting for: %s%s" % (timeout, msg, extra))
        time.sleep(0.02)


# ---------------------------------------------------------------- trees

SMALL = 1 << 20


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_file(path):
    return _file_digest(path)


def kept_content(account_dir, sha):
    """The bytes the server keeps for content sha (hex) of an account: the
    plain file content/ab/<sha>, or, once cut into the chunk store, the
    chunks its recipe content/ab/<sha>.chunks names, in order. None when
    it keeps neither; a missing chunk gives None too."""
    plain = os.path.join(account_dir, "content", sha[:2], sha)
    try:
        with open(plain, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    try:
        with open(plain + ".chunks", "rb") as f:
            r = f.read()
    except FileNotFoundError:
        return None
    if r[:8] != b"bsrecip1" or len(r) < 20:
        return None
    size, count = int.from_bytes(r[8:16], "little"), int.from_bytes(r[16:20], "little")
    if len(r) != 20 + 36 * count:
        return None
    out = bytearray()
    for i in range(count):
        e = r[20 + 36 * i:56 + 36 * i]
        n, h = int.from_bytes(e[:4], "little"), e[4:].hex()
        try:
            with open(os.path.join(account_dir, "chunks", h[:2], h), "rb") as f:
                c = f.read()
        except FileNotFoundError:
            return None
        if len(c) != n:
            return None
        out += c
    return bytes(out) if len(out) == size else None


def kept_contents(account_dir):
    """The hex SHA-256 of every content the server keeps for an account,
    plain or as a recipe."""
    out = set()
    for _, _, names in os.walk(os.path.join(account_dir, "content")):
        for n in names:
            h = n[:-len(".chunks")] if n.endswith(".chunks") else n
            if len(h) == 64:
                out.add(h)
    return out


def snapshot(root, modes=True, mtimes=False):
    """relpath -> (kind, content, mode) for everything below root.

    kind is 'file', 'dir' or 'link' (or 'other'); content is the file's
    bytes (or 'sha256:<hex>' for files over 1 MiB), the link target for a
    symlink, None for a directory. mode is the permission bits (None for
    links, or for everything when modes=False). With mtimes=True each
    tuple gets a fourth item: a file's mtime in nanoseconds (None for
    directories and links). Names starting with .backupsync-tmp. are
    ignored. Symlinks are never followed.
    """
    out = {}

    def walk(d, rel):
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith(TMP_PREFIX):
                continue
            r = rel + e.name
            st = os.lstat(e.path)
            m = stat.S_IMODE(st.st_mode) if modes else None
            if stat.S_ISLNK(st.st_mode):
                t = ("link", os.readlink(e.path), None)
            elif stat.S_ISDIR(st.st_mode):
                t = ("dir", None, m)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size <= SMALL:
                    with open(e.path, "rb") as f:
                        content = f.read()
                else:
                    content = "sha256:" + _file_digest(e.path)
                t = ("file", content, m)
            else:
                t = ("other", None, m)
            if mtimes:
                t = t + (st.st_mtime_ns if t[0] == "file" else None,)
            out[r] = t
            if t[0] == "dir":
                walk(e.path, r + "/")

    walk(root, "")
    return out


def server_snapshot(srv, account):
    """The account as the server records it, in the shape of
    snapshot(root, modes=True, mtimes=True): kinds, modes and mtimes from
    meta.db (the tree on disk always grants the server rw), content from
    the tree. Read while the server runs (SQLite readers do not block it,
    nor it them, in WAL mode)."""
    import sqlite3
    acct = account.split("-")[0]
    base = os.path.join(srv.storage, acct)
    tree = os.path.join(base, "tree")
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(base, "meta.db"), uri=True, timeout=30)
    try:
        rows = db.execute("SELECT path, kind, mode, mtime_ns, target FROM entries").fetchall()
    finally:
        db.close()
    out = {}
    for path, kind, mode, mtime_ns, target in rows:
        rel = bytes(path).decode("utf-8", "surrogateescape") if not isinstance(path, str) else path
        full = os.path.join(tree, rel)
        if kind == 1:
            st = os.lstat(full)
            if st.st_size <= SMALL:
                content = read_bytes(full)
            else:
                content = "sha256:" + _file_digest(full)
            out[rel] = ("file", content, mode & 0o7777, mtime_ns)
        elif kind == 2:
            out[rel] = ("dir", None, mode & 0o7777, None)
        else:
            t = target if isinstance(target, str) else bytes(target or b"").decode("utf-8", "surrogateescape")
            out[rel] = ("link", t, None, None)
    return out


def verify_server(srv):
    """backupsyncd --verify on srv's storage must find no difference. The
    server is stopped for it (and started again when it was running)."""
    was = srv.running()
    if was:
        srv.stop()
    r = subprocess.run([SERVER_BIN, "--verify", "--storage", srv.storage],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    out = r.stdout.decode(errors="replace")
    check(r.returncode == 0, "backupsyncd --verify found differences (exit %d):\n%s" % (r.returncode, out))
    check("0 with differences" in out, "unexpected --verify output:\n%s" % out)
    if was:
        srv.start()


def assert_converged(srv, agents, timeout=SYNC_TIMEOUT, msg="", verify=True):
    """Wait until every agent's tree equals the server's record of the
    account exactly (kind, content, file and directory modes, symlink
    targets, file mtimes in ns), then (verify=True) run --verify.
    Returns the common snapshot."""
    deadline = time.monotonic() + timeout
    account = agents[0].token
    last = ""
    while True:
        try:
            ss = server_snapshot(srv, account)
            diffs = []
            for ag in agents:
                sa = snapshot(ag.dir, modes=True, mtimes=True)
                if sa != ss:
                    diffs.append(diff_snapshots(sa, ss, ag.name, "server"))
            if not diffs:
                break
            last = "\n".join(diffs)
        except (OSError, ValueError) as e:
            last = "(%r)" % (e,)
        except Exception as e:  # sqlite3 errors while the server writes
            last = "(%r)" % (e,)
        _check_alive()
        if time.monotonic() >= deadline:
            fail("not converged after %.1f s%s:\n%s" % (timeout, (" (" + msg + ")") if msg else "", last))
        time.sleep(0.05)
    if verify:
        verify_server(srv)
    return ss


def _short(v):
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


def diff_snapshots(a, b, na="a", nb="b", limit=20):
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            lines.append("only in %s: %r %s" % (na, k, _short(a[k])))
        elif k not in a:
            lines.append("only in %s: %r %s" % (nb, k, _short(b[k])))
        elif a[k] != b[k]:
            lines.append("differs: %r %s: %s / %s: %s" % (k, na, _short(a[k]), nb, _short(b[k])))
    more = len(lines) - limit
    lines = lines[:limit]
    if more > 0:
        lines.append("... and %d more differences" % more)
    return "\n".join(lines)


def assert_trees_equal(a, b, timeout=SYNC_TIMEOUT, modes=True, msg=""):
    """Wait until the trees under a and b are equal (see snapshot())."""
    deadline = time.monotonic() + timeout
    sa = sb = {}
    while True:
        try:
            sa = snapshot(a, modes)
            sb = snapshot(b, modes)
            if sa == sb:
                return sa
        except OSError:
            pass
        _check_alive()
        if time.monotonic() >= deadline:
            fail("trees differ after %.1f s%s: %s vs %s\n%s" % (
                timeout, (" (" + msg + ")") if msg else "", a, b,
                diff_snapshots(sa, sb, a, b)))
        time.sleep(0.02)


def wait_tree(root, expected, timeout=SYNC_TIMEOUT, modes=False, msg=""):
    """Wait until snapshot(root) == expected (a snapshot dict)."""
    deadline = time.monotonic() + timeout
    s = {}
    while True:
        try:
            s = snapshot(root, modes)
            if s == expected:
                return s
        except OSError:
            pass
        _check_alive()
        if time.monotonic() >= deadline:
            fail("tree %s is not as expected after %.1f s%s:\n%s" % (
                root, timeout, (" (" + msg + ")") if msg else "",
                diff_snapshots(s, expected, root, "expected")))
        time.sleep(0.02)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data, mode=None, mtime=None):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def inotify_watches(pid):
    """The number of inotify watches the process holds."""
    n = 0
    for fd in os.listdir("/proc/%d/fdinfo" % pid):
        try:
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                n += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            pass
    return n


def resident_pages(path):
    """How many pages of the file are in the page cache (mincore(2) on a
    mapping of it: looking does not read it in)."""
    import ctypes
    import mmap
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    npages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            fail("mmap %s: %s" % (path, os.strerror(ctypes.get_errno())))
        try:
            vec = ctypes.create_string_buffer(npages)
            if libc.mincore(addr, size, vec) != 0:
                fail("mincore %s: %s" % (path, os.strerror(ctypes.get_errno())))
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def dirty_pages(path):
    """Pages of the file dirty, not yet handed to the disk (cachestat(2),
    Linux 6.5)."""
    import ctypes

    class Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class Stat(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in
                    ("cache", "dirty", "writeback", "evicted", "recently_evicted")]

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = Stat()
        if libc.syscall(451, fd, ctypes.byref(Range(0, 0)), ctypes.byref(st), 0) != 0:
            fail("cachestat %s: %s" % (path, os.strerror(ctypes.get_errno())))
        return st.dirty
    finally:
        os.close(fd)


class OthersData:
    """mib MiB written to path and never synced: another program's data
    waiting for the disk, which backupsync must not write for it."""

    def __init__(self, path, mib=128):
        self.path = path
        chunk = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
        self.pages = (mib << 20) // os.sysconf("SC_PAGE_SIZE")
        self.check("test setup (a file system that writes at once, such as tmpfs?)")

    def check(self, when):
        n = dirty_pages(self.path)
        check(n >= self.pages * 0.9, "%s: %d of another program's %d unsynced pages are still dirty: "
              "backupsync wrote them" % (when, n, self.pages))


def make_small_files(root, ndirs, per_dir, dname="d%03d", fname="f%02d", tag=b""):
    """ndirs directories of per_dir small files under root, each file's
    content naming its place (tag, then "D I")."""
    for d in range(ndirs):
        os.makedirs(os.path.join(root, dname % d))
        for i in range(per_dir):
            with open(os.path.join(root, dname % d, fname % i), "wb") as f:
                f.write(tag + b"%d %d\n" % (d, i))


def wait_content(path, data, timeout=SYNC_TIMEOUT, msg=None):
    """Wait until the regular file at path holds exactly data."""
    if isinstance(data, str):
        data = data.encode()

    def ok():
        st = os.lstat(path)
        return stat.S_ISREG(st.st_mode) and read_bytes(path) == data

    wait_until(ok, timeout, msg or "%s to hold %s" % (path, _short(data)))


def wait_absent(path, timeout=SYNC_TIMEOUT, msg=None):
    wait_until(lambda: not os.path.lexists(path), timeout, msg or "%s to disappear" % path)


def conflict_copies(root):
    return sorted(k for k in snapshot(root, modes=False) if ".conflict-" in k)


# ---------------------------------------------------------------- processes

def _tail(path, n=LOG_TAIL):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return ["(cannot read %s: %s)" % (path, e)]
    return lines[-n:]


class Relay:
    """A TCP relay from a local port to the server that keeps every byte it
    carries, both ways: what anyone on the path could record. While hold
    is set, what the server sends waits in the relay's socket; while
    hold_up is, what the client sends."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.stop = False
        self.hold = False
        self.hold_up = False
        self.sent_up = 0
        self.last_data = time.monotonic()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.lsock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            s = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(c, s), daemon=True).start()

    def _pump(self, a, b):
        socks = [a, b]
        try:
            while not self.stop:
                ready = [x for x in socks if not (self.hold if x is b else self.hold_up)]
                r, _, _ = select.select(ready, [], [], 0.05)
                for x in r:
                    data = x.recv(65536)
                    if not data:
                        return
                    with self.lock:
                        self.captured += data
                        self.last_data = time.monotonic()
                        if x is a:
                            self.sent_up += len(data)
                    (b if x is a else a).sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def hold_when_quiet(self, quiet=1.0, timeout=60):
        """Hold the server's data once nothing has passed for quiet
        seconds: no answer the client waits for is caught in the hold.
        Returns the bytes the client had sent by then: more means it asked
        and waits (a round of its own may start before the caller's)."""
        wait_until(lambda: time.monotonic() - self.last_data >= quiet, timeout, "the relay to be quiet")
        with self.lock:
            self.hold = True
            return self.sent_up

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.lsock.close()


class _Proc:
    name = "process"
    popen = None

    def _start(self, argv, stdout, stderr):
        self.popen = subprocess.Popen(argv, stdout=stdout, stderr=stderr,
                                      stdin=subprocess.DEVNULL)
        if self not in _running:
            _running.append(self)

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def _forget(self):
        if self in _running:
            _running.remove(self)

    def stop(self, timeout=15):
        """SIGTERM, wait; returns the exit status (SIGKILL after timeout)."""
        self._forget()
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                fail("%s did not exit within %d s of SIGTERM" % (self.name, timeout))
        return self.popen.returncode

    def kill9(self):
        self._forget()
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def cleanup(self):
        """SIGTERM first, so a sanitized build's leak check runs at exit
        (tools/test counts its reports); SIGKILL if it does not stop."""
        self._forget()
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                try:
                    self.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass

    def wait_exit(self, timeout):
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            fail("%s did not exit within %s s" % (self.name, timeout))
        self._forget()
        return rc


class Server(_Proc):
    def __init__(self, env, name="server", storage=None, port=None, args=()):
        self.env = env
        self.name = name
        self.storage = storage or env.path(name + "-storage")
        self.port = port or free_port()
        # Picked here and not yet listened on: another may take it first.
        self.port_picked = port is None
        self.args = list(args)
        self.log = env.path(name + ".log")
        env.logs.append(self.log)
        env.procs.append(self)

    def start(self, timeout=15):
        # The port free_port() saw free can be taken by another test's
        # connection before the server binds it: a first start then picks
        # another. A restart keeps its port, which clients know.
        for attempt in range(5):
            try:
                self._start_once(timeout)
                self.port_picked = False
                return self
            except TestFailure:
                if not (self.port_picked and attempt < 4 and not self.running() and
                        b"Address already in use" in self._log_bytes()[self._since:]):
                    raise
                self.port = free_port()

    def _start_once(self, timeout):
        argv = [SERVER_BIN, str(self.port), "--storage", self.storage,
                "--listen", "127.0.0.1"] + self.args
        with open(self.log, "ab") as log:
            log.write(("### %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self._since = log.tell()
            self._start(argv, log, log)
        wait_until(lambda: port_open(self.port), timeout,
                   "%s listening on 127.0.0.1:%d" % (self.name, self.port))
        # The socket listens before the last lines of the start are logged.
        wait_until(lambda: b"identity: " in self._log_bytes()[self._since:], timeout,
                   "%s logging its identity" % self.name)

    def _log_bytes(self):
        with open(self.log, "rb") as f:
            return f.read()

    def restart(self):
        self.stop()
        return self.start()

    def log_text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        return self.log_text().splitlines()

    def tree(self, account):
        """The account's tree directory; account is an ID or a token."""
        return os.path.join(self.storage, account.split("-")[0], "tree")

    def fingerprint(self):
        """The server's key, SHA256:..., as backupsyncd --fingerprint prints it."""
        p = subprocess.run([SERVER_BIN, "--fingerprint", "--storage", self.storage] + self.args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=30)
        if p.returncode != 0:
            raise TestFailure("backupsyncd --fingerprint exited %d: %s" % (p.returncode, p.stderr.decode()))
        return p.stdout.decode().strip()


class Agent(_Proc):
    def __init__(self, env, name, dir, token=None, server=None, state_dir=None,
                 args=(), poll=None, port=None):
        self.env = env
        self.name = "agent " + name
        self.device = name
        self.dir = dir
        self.token = token
        self.server = server or env.servers[0]
        self.state_dir = state_dir or env.path("state-" + name)
        self.args = list(args)
        self.poll = poll
        self.port = port
        self.log = env.path("agent-%s.log" % name)
        self.out = env.path("agent-%s.out" % name)
        env.logs.append(self.log)
        env.logs.append(self.out)
        env.procs.append(self)

    def argv(self, once=False, token=None, port=None):
        tok = token if token is not None else self.token
        argv = [AGENT_BIN, "127.0.0.1", str(port or self.port or self.server.port), self.dir]
        if tok:
            argv.append(tok)
        argv += ["--state-dir", self.state_dir, "--device-name", self.device]
        if self.poll:
            argv += ["--poll-interval", self.poll]
        if once:
            argv.append("--once")
        return argv + self.args

    def _mark(self, argv):
        for p in (self.log, self.out):
            with open(p, "ab") as f:
                f.write(("### %s: %s\n" % (time.strftime("%H:%M:%S"),
                                           " ".join(argv))).encode())

    def start(self, wait_id=True, timeout=60):
        """Start watching; when registering, wait for the ID line."""
        registering = not self.token
        argv = self.argv()
        self._mark(argv)
        with open(self.out, "ab") as out, open(self.log, "ab") as log:
            self._start(argv, out, log)
        if registering and wait_id:
            self.token = self.wait_id(timeout)
        return self

    def id_lines(self):
        with open(self.out, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return [l for l in lines if not l.startswith("### ")]

    def wait_id(self, timeout=60):
        def got():
            ls = self.id_lines()
            return ls[0] if ls else None
        line = wait_until(got, timeout, "%s to print its 'ID: <TOKEN>' line" % self.name)
        check(line.startswith("ID: "), "%s printed %r instead of 'ID: <TOKEN>'" % (self.name, line))
        token = line[4:]
        acct = token.split("-")[0]
        check(len(acct) == 4 and all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" for c in acct),
              "account ID %r in token %r is not 4 characters of [A-Z0-9]" % (acct, token))
        return token

    @property
    def account(self):
        return self.token.split("-")[0]

    def run_once(self, timeout=120, token=None, port=None, max_fds=None):
        """Run with --once; returns (exit status, stdout lines, stderr text).
        max_fds: its RLIMIT_NOFILE, soft and hard."""
        argv = self.argv(once=True, token=token, port=port)
        limit = None
        if max_fds:
            import resource

            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))
        self._mark(argv)
        out_start = os.path.getsize(self.out)
        log_start = os.path.getsize(self.log)
        with open(self.out, "ab") as out, open(self.log, "ab") as log:
            p = subprocess.Popen(argv, stdout=out, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=limit)
            self.popen = p
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                fail("%s --once did not exit within %d s" % (self.name, timeout))
        with open(self.out, "rb") as f:
            f.seek(out_start)
            stdout = f.read().decode("utf-8", "replace").splitlines()
        with open(self.log, "rb") as f:
            f.seek(log_start)
            stderr = f.read().decode("utf-8", "replace")
        return rc, stdout, stderr

    def log_text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        return self.log_text().splitlines()

    def wait_scanned(self, timeout=30):
        """Wait for the end of the first comparison of the tree (its "watching
        N directories" line): a file written before may be found by that
        scan half-written (created, not yet written) and sent as such."""
        wait_until(lambda: re.search(r"watching \d+ directories of", self.log_text()), timeout,
                   "%s to finish its first scan" % self.name)


class NotifyListener:
    """A $NOTIFY_SOCKET of the test's own: every message a program started
    with exported() sends to systemd (READY=1, STATUS=...), in .said."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.path = path
        self.said = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.said.append(self.sock.recv(65536).decode(errors="replace"))
            except socket.timeout:
                pass

    @contextlib.contextmanager
    def exported(self):
        """NOTIFY_SOCKET set for what starts inside the block."""
        os.environ["NOTIFY_SOCKET"] = self.path
        try:
            yield self
        finally:
            del os.environ["NOTIFY_SOCKET"]

    def close(self):
        """Stop reading; the program's next sd_notify() fails instead of waiting."""
        self._stop.set()
        self._reader.join()
        self.sock.close()


class Env:
    """One scenario: a temporary directory and everything started in it."""

    def __init__(self, name="test"):
        self.name = name
        self.procs = []
        self.logs = []
        self.servers = []
        self.root = None

    def __enter__(self):
        for b in (SERVER_BIN, AGENT_BIN):
            if not os.access(b, os.X_OK):
                fail("%s is not built (BS_BUILD_DIR=%s)" % (b, BUILD_DIR))
        self.root = tempfile.mkdtemp(prefix="bs-it-%s-" % self.name, dir="/tmp")
        return self

    def __exit__(self, exc_type, exc, tb):
        for p in reversed(self.procs):
            try:
                p.cleanup()
            except Exception:  # keep cleaning up
                pass
        if exc_type is not None:
            self.print_logs()
        if os.environ.get("BS_KEEP"):
            print("kept %s" % self.root, file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        return False

    def print_logs(self, n=LOG_TAIL):
        for log in self.logs:
            if not os.path.exists(log):
                continue
            print("----- last %d lines of %s -----" % (n, os.path.basename(log)), file=sys.stderr)
            for line in _tail(log, n):
                print("  " + line, file=sys.stderr)
        sys.stderr.flush()

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def server(self, start=True, **kw):
        s = Server(self, name="server" if not self.servers else "server%d" % len(self.servers), **kw)
        self.servers.append(s)
        if start:
            s.start()
        return s

    def agent(self, name, dir=None, token=None, start=True, **kw):
        a = Agent(self, name, dir or self.path(name), token=token, **kw)
        if start:
            a.start()
        return a
