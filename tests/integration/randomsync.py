#!/usr/bin/env python3
"""randomsync.py - randomized convergence testing of backupsync.

One run ("a seed") starts a server and 2 or 3 agents (A, B, C) on one
account, then performs a seeded random sequence of operations on the
computers' trees, all at once, the way people and programs do:

  files     create, write (whole, in place, in pieces), append, truncate,
            chmod, utime with nanosecond values, rename within and across
            directories, delete, editor saves (temporary file renamed over
            the file; vim-style backup rename), content going back to an
            earlier state (X, Y, X again), hard links (link, then unlink
            the old name), O_TMPFILE + linkat, renameat2(RENAME_EXCHANGE),
            copy_file_range, posix_fallocate, hole punching, writes
            through mmap (also after the descriptor is closed, and kept
            mapped), files kept open while written
  dirs      mkdir (also with restrictive modes opened up later), chmod,
            rename, delete trees, moves in from and out to a directory
            outside the tree
  symlinks  created and replaced; targets stay inside the tree or point
            nowhere
  faults    an agent paused (SIGSTOP/SIGCONT), an agent or the server
            killed with SIGKILL and started again (at once or later),
            short sleeps so that some changes are sent between steps and
            others coalesce, and rare settle points (everything resumed,
            convergence required, the run goes on)

Every operation picks its target among what exists at that moment, and
tolerates the other computers changing the same tree meanwhile.

After the last operation every mapping is removed (docs/sync-model.md:
a write through a mapping is seen when the last mapping goes, otherwise
only by the hourly verification pass), half of the files kept open are
closed, everything is resumed, and the run requires:

  1. every agent's tree equals the server's records exactly (kinds,
     content, file and directory modes, symlink targets, file mtimes in
     ns; every name of a hard-linked file is a file of its own), and
     `backupsyncd --verify` finds nothing (harness.assert_converged);
  2. no content is lost: every content the server ever stored (PUT records
     of its change log) and every file content on any computer when the
     operations stopped is, at the end, in some computer's tree (conflict
     copies count) or among the server's kept versions (a versions row
     whose stored file still holds that content).

A failure prints the seed, the last operations and a replay command.
Replays use the same random choices, but the trees they act on depend on
timing (what the agents had synced by then), so a replay is likely, not
certain, to fail the same way; a soak over many seeds finds such bugs
again.

Usage:
  randomsync.py [--seed N] [--ops N] [--computers 2|3]
  randomsync.py --seeds 50 [--seed FIRST]   # soak: seeds FIRST..FIRST+49
  randomsync.py --skip mmap,keep_open ...   # or BS_RANDOM_SKIP=...; leave
                                            # out operation kinds (to make
                                            # progress while a known bug
                                            # is being fixed)
  randomsync.py --seeds 50 --keep-failed    # keep trees, logs, state and
                                            # storage of failing seeds
  randomsync.py --list-ops
  BS_SEED=N is the default for --seed; BS_KEEP=1 keeps every directory.
  A failing seed's whole operation log is written to
  randomsync-SEED-ops.txt (in the kept directory, else in /tmp).
"""

import argparse
import ctypes
import hashlib
import mmap
import os
import platform
import random
import shutil
import signal
import sqlite3
import stat
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402
from harness import TMP_PREFIX, Env, TestFailure, assert_converged  # noqa: E402

SENTINEL = "KEEP-randomsync"  # never touched: the tree is never empty
FILE_NAMES = ["a.txt", "b.txt", "c", "d.bin", "e.txt", "notes.md", "g", "h.txt"]
DIR_NAMES = ["d0", "d1", "d2", "sub", "x y"]
LINK_NAMES = ["l0", "l1", "link.txt"]
MAX_DEPTH = 3
FILE_MODES = [0o644, 0o644, 0o644, 0o600, 0o755, 0o640, 0o444, 0o700, 0o664, 0o000]
DIR_MODES = [0o755, 0o755, 0o700, 0o750, 0o775, 0o555, 0o500, 0o711, 0o000]
SLEEPS = [0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.8, 1.5]
INNER_SLEEPS = [0, 0, 0.002, 0.01, 0.05, 0.2]
OPLOG_TAIL = 50
MiB = 1 << 20

# kind -> weight. Faults and other kinds that need something (a paused
# agent, an open file, ...) are drawn only when they apply.
FS_OPS = {
    "create": 10, "write": 8, "append": 4, "truncate": 3, "chmod_file": 3,
    "chmod_dir": 2.5, "utime": 3, "rename_file": 5, "rename_dir": 3,
    "delete_file": 4, "delete_tree": 1.5, "mkdir": 4, "mkdir_restrictive": 1.5,
    "symlink": 2, "atomic_save": 4, "revert": 3, "restore_earlier": 2,
    "move_in": 2, "move_out": 2, "hardlink": 2.5, "tmpfile": 2, "exchange": 2,
    "copy_range": 2, "fallocate": 1.5, "punch_hole": 1.5, "mmap": 2.5,
    "keep_open": 2, "write_open": 2, "close_open": 1.5, "sleep": 20,
}
FAULT_OPS = {
    "pause": 2, "resume": 3, "kill_agent": 1, "start_agent": 3,
    "kill_server": 0.7, "start_server": 3, "settle": 0.3,
}
ALL_OPS = dict(FS_OPS, **FAULT_OPS)


class NoTarget(Exception):
    pass


class RandomSyncFailure(TestFailure):
    pass


# ---------------------------------------------------------------- libc

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "i686": 353, "armv7l": 382}


def _raise_errno(what, path=None):
    e = ctypes.get_errno()
    raise OSError(e, "%s: %s" % (what, os.strerror(e)), path)


def rename_exchange(a, b):
    fa, fb = os.fsencode(a), os.fsencode(b)
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        r = fn(AT_FDCWD, fa, AT_FDCWD, fb, RENAME_EXCHANGE)
    else:
        nr = _SYS_RENAMEAT2[platform.machine()]
        _libc.syscall.restype = ctypes.c_long
        r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), ctypes.c_char_p(fa),
                          ctypes.c_int(AT_FDCWD), ctypes.c_char_p(fb), ctypes.c_uint(RENAME_EXCHANGE))
    if r != 0:
        _raise_errno("renameat2(RENAME_EXCHANGE)", a)


def _linkat(olddirfd, oldpath, newpath, flags, what):
    fn = _libc.linkat
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    if fn(olddirfd, oldpath, AT_FDCWD, os.fsencode(newpath), flags) != 0:
        _raise_errno(what, newpath)


def linkat_empty_path(fd, path):
    """linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH."""
    _linkat(fd, b"", path, AT_EMPTY_PATH, "linkat(AT_EMPTY_PATH)")


def linkat_proc_fd(fd, path):
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW),
    the unprivileged way to name an O_TMPFILE file (os.link would link
    the /proc symlink itself)."""
    _linkat(AT_FDCWD, b"/proc/self/fd/%d" % fd, path, AT_SYMLINK_FOLLOW, "linkat(/proc/self/fd, AT_SYMLINK_FOLLOW)")


def fallocate(fd, mode, off, length):
    fn = getattr(_libc, "fallocate64", None) or _libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fn(fd, mode, off, length) != 0:
        _raise_errno("fallocate")


# ---------------------------------------------------------------- trees

O_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _j(d, name):
    return name if not d else d + "/" + name


def _depth(rel):
    return 0 if not rel else rel.count("/") + 1


class Tree:
    """What one computer's tree holds right now (never follows links)."""

    def __init__(self, root):
        self.files, self.dirs, self.links = [], [""], []
        self._walk(root, "")

    def _walk(self, d, rel):
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith(TMP_PREFIX) or (rel == "" and e.name == SENTINEL):
                continue
            r = rel + e.name
            try:
                st = os.lstat(e.path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                self.links.append(r)
            elif stat.S_ISDIR(st.st_mode):
                self.dirs.append(r)
                self._walk(e.path, r + "/")
            elif stat.S_ISREG(st.st_mode):
                self.files.append(r)

    @property
    def subdirs(self):
        return self.dirs[1:]

    @property
    def entries(self):
        return self.files + self.subdirs + self.links


def sha256_fd(fd):
    h = hashlib.sha256()
    off = 0
    while True:
        b = os.pread(fd, MiB, off)
        if not b:
            return h.hexdigest()
        h.update(b)
        off += len(b)


def sha256_path(path):
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def tree_contents(root):
    """sha256 -> relpath for every regular file below root (temporary
    downloads ignored; files vanishing meanwhile skipped)."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [n for n in dirs if not n.startswith(TMP_PREFIX)]
        for n in files:
            if n.startswith(TMP_PREFIX):
                continue
            p = os.path.join(d, n)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                out.setdefault(sha256_path(p), os.path.relpath(p, root))
            except OSError:
                pass
    return out


def server_contents(srv, account):
    """The server's view of content: (log, entries, versions, bad_versions).
    log: sha -> (seq, path) of PUT records; entries: shas of current files;
    versions: shas of kept versions whose stored file holds that content;
    bad_versions: sha -> stored name of rows whose file is gone or differs."""
    base = os.path.join(srv.storage, account.split("-")[0])
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(base, "meta.db"), uri=True, timeout=30)

    def s(v):
        return v if isinstance(v, str) else bytes(v or b"").decode("utf-8", "surrogateescape")
    try:
        log = {}
        for seq, path, sha in db.execute("SELECT seq, path, sha FROM log WHERE op = 1 AND sha IS NOT NULL"):
            log.setdefault(bytes(sha).hex(), (seq, s(path)))
        entries = {bytes(sha).hex() for (sha,) in
                   db.execute("SELECT sha FROM entries WHERE kind = 1 AND sha IS NOT NULL")}
        rows = db.execute("SELECT sha, stored FROM versions WHERE sha IS NOT NULL").fetchall()
    finally:
        db.close()
    versions, bad = set(), {}
    for sha, stored in rows:
        h = bytes(sha).hex()
        if h in versions:
            continue
        # Kept contents are in content/ by SHA-256 (big ones as a recipe of
        # chunks); versions/ holds those of earlier releases, by the name
        # the row gives.
        if stored is None:
            data = harness.kept_content(base, h)
            ok = data is not None and hashlib.sha256(data).hexdigest() == h
        else:
            try:
                ok = sha256_path(os.path.join(base, "versions", s(stored))) == h
            except OSError:
                ok = False
        if ok:
            versions.add(h)
            bad.pop(h, None)
        else:
            bad[h] = s(stored)
    return log, entries, versions, bad


def describe_content(t):
    v = t[1]
    if t[0] == "link":
        return "-> %r" % v
    if isinstance(v, str):  # 'sha256:...' for big files
        return v[:19]
    head = v.split(b"\n", 1)[0][:40]
    return "%d bytes %s %r" % (len(v), hashlib.sha256(v).hexdigest()[:12], head)


def describe(t):
    if t[0] == "dir":
        return "dir mode %o" % t[2]
    if t[0] == "link":
        return "link -> %r" % t[1]
    if t[0] == "file":
        return "file mode %o, %s" % (t[2], describe_content(t))
    return t[0]


# ---------------------------------------------------------------- computers

class Computer:
    def __init__(self, name, dir, outside):
        self.name = name
        self.dir = dir
        self.outside = outside
        self.agent = None
        self.paused = False
        self.down = False
        self.handles = []  # files kept open: dicts with fd, map, path

    def p(self, rel):
        return os.path.join(self.dir, rel) if rel else self.dir


class Run:
    def __init__(self, seed, ops=150, computers=None, skip=(), converge_timeout=90.0,
                 verbose=False, out=sys.stdout, keep_failed=False):
        self.seed = seed
        self.nops = ops
        self.rng = random.Random("randomsync/%d" % seed)
        self.ncomputers = computers or self.rng.choice([2, 3])
        self.skip = set(skip)
        unknown = self.skip - set(ALL_OPS)
        if unknown:
            raise ValueError("unknown operation kinds: %s" % ", ".join(sorted(unknown)))
        self.converge_timeout = converge_timeout
        self.verbose = verbose
        self.out = out
        self.oplog = []
        self.counts = {}
        self.errors = 0
        self.provenance = {}  # sha -> first op that left that content on disk
        self.history = []     # earlier small contents, for restore_earlier
        self.t0 = None
        self.done = 0
        self.summary = ""
        self.keep_failed = keep_failed
        self.oplog_file = None
        self.diff_paths = set()

    # -------------------------------------------------- bookkeeping

    def replay_command(self):
        cmd = "BS_SEED=%d python3 tests/integration/randomsync.py --seed %d --ops %d --computers %d" % (
            self.seed, self.seed, self.nops, self.ncomputers)
        if self.skip:
            cmd += " --skip " + ",".join(sorted(self.skip))
        return cmd

    def log(self, line):
        line = "%7.2fs %s" % (time.monotonic() - self.t0, line)
        self.oplog.append(line)
        if self.verbose:
            print(line, file=self.out, flush=True)

    def note(self, i, c, what, rel):
        """Remember which op left the file at rel holding what it holds."""
        try:
            sha = sha256_path(c.p(rel))
        except OSError:
            return
        self.provenance.setdefault(sha, "#%d [%s] %s %s" % (i, c.name, what, rel))

    def content(self, r, i, c, what, big=True):
        head = ("%s#%d %s\n" % (c.name, i, what)).encode()
        k = r.random()
        if k < 0.04:
            n = 0
            head = b""
        elif k < 0.50:
            n = r.randint(1, 200)
        elif k < 0.85:
            n = r.randint(200, 4096)
        elif k < 0.97 or not big:
            n = r.randint(4096, 65536)
        else:
            n = r.randint(MiB + 1, 5 * MiB // 2)
        if r.random() < 0.8:
            body = r.randbytes((n + 1) // 2).hex()[:n].encode()
        else:
            body = r.randbytes(n)
        data = head + body
        if len(data) <= 65536:
            self.history.append(data)
            del self.history[:-200]
        return data

    # -------------------------------------------------- helpers for ops

    @staticmethod
    def write_all(fd, data, off=None):
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if off is None:
                n = os.write(fd, view[pos:pos + MiB])
            else:
                n = os.pwrite(fd, view[pos:pos + MiB], off + pos)
            pos += n

    def write_file(self, path, data, mode=0o644, excl=False, pieces=False, r=None):
        flags = os.O_WRONLY | os.O_CREAT | O_NOFOLLOW | (os.O_EXCL if excl else os.O_TRUNC)
        fd = os.open(path, flags, mode)
        try:
            if pieces and len(data) > 1:
                cut = r.randrange(1, len(data))
                self.write_all(fd, data[:cut])
                time.sleep(r.choice(INNER_SLEEPS))
                self.write_all(fd, data[cut:])
            else:
                self.write_all(fd, data)
        finally:
            os.close(fd)

    @staticmethod
    def pick(r, seq):
        if not seq:
            raise NoTarget()
        return r.choice(seq)

    @staticmethod
    def new_file_rel(r, t, names=FILE_NAMES):
        d = r.choice(t.dirs)
        for _ in range(3):
            rel = _j(d, r.choice(names))
            if rel not in t.files and rel not in t.links and rel not in t.dirs:
                return rel
        return rel

    @staticmethod
    def new_dir_rel(r, t):
        parents = [d for d in t.dirs if _depth(d) < MAX_DEPTH] or [""]
        d = r.choice(parents)
        return _j(d, r.choice(DIR_NAMES))

    # -------------------------------------------------- file operations

    def op_create(self, i, c, r, t):
        rel = self.new_file_rel(r, t)
        data = self.content(r, i, c, "create " + rel)
        mode = r.choice(FILE_MODES)
        self.write_file(c.p(rel), data, mode, excl=r.random() < 0.5, pieces=r.random() < 0.2, r=r)
        self.note(i, c, "create", rel)
        return "create %s (%d bytes, mode %o)" % (rel, len(data), mode)

    def op_write(self, i, c, r, t):
        rel = self.pick(r, t.files)
        k = r.random()
        if k < 0.6:
            data = self.content(r, i, c, "write " + rel)
            self.write_file(c.p(rel), data, pieces=r.random() < 0.25, r=r)
            how = "whole"
        else:
            fd = os.open(c.p(rel), os.O_WRONLY | O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                off = r.randrange(size + 1)
                data = ("<%s#%d>" % (c.name, i)).encode() * r.randint(1, 40)
                self.write_all(fd, data, off)
            finally:
                os.close(fd)
            how = "in place at %d" % off
        self.note(i, c, "write", rel)
        return "write %s (%d bytes, %s)" % (rel, len(data), how)

    def op_append(self, i, c, r, t):
        rel = self.pick(r, t.files)
        data = ("%s#%d appended\n" % (c.name, i)).encode() * r.randint(1, 20)
        fd = os.open(c.p(rel), os.O_WRONLY | os.O_APPEND | O_NOFOLLOW)
        try:
            self.write_all(fd, data)
        finally:
            os.close(fd)
        self.note(i, c, "append", rel)
        return "append %s (%d bytes)" % (rel, len(data))

    def op_truncate(self, i, c, r, t):
        rel = self.pick(r, t.files)
        fd = os.open(c.p(rel), os.O_WRONLY | O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            n = r.choice([0, size // 2, size + r.randint(1, 5000), max(0, size - 1)])
            os.ftruncate(fd, n)
        finally:
            os.close(fd)
        self.note(i, c, "truncate", rel)
        return "truncate %s %d -> %d" % (rel, size, n)

    def op_chmod_file(self, i, c, r, t):
        rel = self.pick(r, t.files)
        mode = r.choice(FILE_MODES)
        fd = os.open(c.p(rel), os.O_RDONLY | O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return "chmod %o %s" % (mode, rel)

    def op_chmod_dir(self, i, c, r, t):
        rel = self.pick(r, t.subdirs)
        mode = r.choice(DIR_MODES)
        fd = os.open(c.p(rel), os.O_RDONLY | os.O_DIRECTORY | O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return "chmod %o %s/" % (mode, rel)

    def op_utime(self, i, c, r, t):
        on_dir = r.random() < 0.15 and t.subdirs
        rel = self.pick(r, t.subdirs if on_dir else t.files)
        now = time.time_ns()
        k = r.random()
        if k < 0.5:
            ns = now - r.randrange(0, 10 ** 15)
        elif k < 0.7:
            ns = now + r.randrange(1, 10 ** 14)
        else:
            ns = r.choice([0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789,
                           4_000_000_000_000_000_001, -1_234_567_891, 86_400_000_000_007])
        fd = os.open(c.p(rel), os.O_RDONLY | O_NOFOLLOW | (os.O_DIRECTORY if on_dir else 0))
        try:
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        return "utime %s mtime_ns=%d" % (rel + ("/" if on_dir else ""), ns)

    def op_rename_file(self, i, c, r, t):
        src = self.pick(r, t.files + t.links)
        d = os.path.dirname(src) if r.random() < 0.5 else r.choice(t.dirs)
        dst = _j(d, r.choice(FILE_NAMES + LINK_NAMES))
        os.rename(c.p(src), c.p(dst))
        return "rename %s -> %s%s" % (src, dst, " (over a file)" if dst in t.files or dst in t.links else "")

    def op_rename_dir(self, i, c, r, t):
        src = self.pick(r, t.subdirs)
        d = os.path.dirname(src) if r.random() < 0.4 else r.choice(t.dirs)
        dst = _j(d, r.choice(DIR_NAMES))
        os.rename(c.p(src), c.p(dst))
        return "rename %s/ -> %s/" % (src, dst)

    def op_delete_file(self, i, c, r, t):
        rel = self.pick(r, t.files + t.links)
        os.unlink(c.p(rel))
        return "delete %s" % rel

    def op_delete_tree(self, i, c, r, t):
        rel = self.pick(r, t.subdirs)
        n = sum(1 for x in t.entries if x.startswith(rel + "/"))
        shutil.rmtree(c.p(rel))
        return "rmtree %s/ (%d entries below)" % (rel, n)

    def op_mkdir(self, i, c, r, t):
        rel = self.new_dir_rel(r, t)
        mode = r.choice([0o755, 0o755, 0o700, 0o750, 0o775])
        os.mkdir(c.p(rel), mode)
        extra = ""
        if r.random() < 0.5:
            f = _j(rel, r.choice(FILE_NAMES))
            self.write_file(c.p(f), self.content(r, i, c, "mkdir+file " + f))
            self.note(i, c, "mkdir+file", f)
            extra = " + file " + f
        return "mkdir %s/ (mode %o)%s" % (rel, mode, extra)

    def op_mkdir_restrictive(self, i, c, r, t):
        rel = self.new_dir_rel(r, t)
        mode = r.choice([0o500, 0o000, 0o555, 0o700, 0o311])
        os.mkdir(c.p(rel), mode)
        os.chmod(c.p(rel), mode)  # not the umask's idea of it
        names = r.sample(FILE_NAMES, r.randint(0, 2))
        for n in names:
            f = _j(rel, n)
            self.write_file(c.p(f), self.content(r, i, c, "restricted " + f))
            self.note(i, c, "mkdir_restrictive", f)
        time.sleep(r.choice(INNER_SLEEPS))
        opened = r.choice([0o755, 0o775, 0o700])
        fd = os.open(c.p(rel), os.O_RDONLY | os.O_DIRECTORY | O_NOFOLLOW)
        try:
            os.fchmod(fd, opened)
        finally:
            os.close(fd)
        return "mkdir %s/ mode %o, %d files, then chmod %o" % (rel, mode, len(names), opened)

    def op_symlink(self, i, c, r, t):
        d = r.choice(t.dirs)
        rel = _j(d, r.choice(LINK_NAMES + FILE_NAMES[:2]))
        # Targets never contain "..": wherever the link is moved, it
        # resolves inside the tree (or nowhere).
        below = [x[len(d) + 1:] if d else x for x in t.entries if not d or x.startswith(d + "/")]
        k = r.random()
        if below and k < 0.6:
            target = r.choice(below)
        elif k < 0.85:
            target = r.choice(FILE_NAMES + ["missing-%d" % i, "d0/deeper/%d" % i])
        else:
            target = "/nonexistent-randomsync/%s-%d" % (c.name, i)
        if os.path.lexists(c.p(rel)) and r.random() < 0.6:
            tmp = _j(d, ".%s.lnk%d" % (os.path.basename(rel), i))
            os.symlink(target, c.p(tmp))
            os.rename(c.p(tmp), c.p(rel))
            return "symlink %s -> %s (replacing)" % (rel, target)
        os.symlink(target, c.p(rel))
        return "symlink %s -> %s" % (rel, target)

    def op_atomic_save(self, i, c, r, t):
        rel = self.pick(r, t.files) if t.files and r.random() < 0.8 else self.new_file_rel(r, t)
        d, base = os.path.dirname(rel), os.path.basename(rel)
        data = self.content(r, i, c, "save " + rel)
        try:
            mode = stat.S_IMODE(os.lstat(c.p(rel)).st_mode)
        except OSError:
            mode = 0o644
        if r.random() < 0.7:
            tmp = _j(d, r.choice([".%s.tmp%d" % (base, i), "%s.new" % base, ".#%s" % base, "%d" % (4900 + i)]))
            self.write_file(c.p(tmp), data, mode, pieces=r.random() < 0.2, r=r)
            if r.random() < 0.5:
                fd = os.open(c.p(tmp), os.O_RDONLY | O_NOFOLLOW)
                os.fsync(fd)
                os.close(fd)
            time.sleep(r.choice(INNER_SLEEPS))
            os.rename(c.p(tmp), c.p(rel))
            how = "via " + tmp
        else:  # vim with backupcopy=no: rename to a backup, write, remove it
            bak = rel + "~"
            os.rename(c.p(rel), c.p(bak))
            self.write_file(c.p(rel), data, mode)
            time.sleep(r.choice(INNER_SLEEPS))
            os.unlink(c.p(bak))
            how = "vim-style via " + bak
        self.note(i, c, "atomic_save", rel)
        return "save %s (%d bytes, %s)" % (rel, len(data), how)

    def op_revert(self, i, c, r, t):
        rel = self.pick(r, t.files)
        path = c.p(rel)
        if r.random() < 0.5:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                x = os.pread(fd, st.st_size + 1, 0)
            finally:
                os.close(fd)
            y = self.content(r, i, c, "revert-away " + rel, big=False)
            self.write_file(path, y)
            time.sleep(r.choice(INNER_SLEEPS))
            self.write_file(path, x)
            same_mtime = r.random() < 0.3
            if same_mtime:  # bit-identical to before, mtime included
                fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
                try:
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
            self.note(i, c, "revert", rel)
            return "revert %s: old (%d bytes), Y, old again%s" % (rel, len(x), " with its mtime" if same_mtime else "")
        x = self.content(r, i, c, "revert-X " + rel, big=False)
        y = self.content(r, i, c, "revert-Y " + rel, big=False)
        self.write_file(path, x)
        self.note(i, c, "revert X", rel)
        time.sleep(r.choice(INNER_SLEEPS))
        self.write_file(path, y)
        self.note(i, c, "revert Y", rel)
        time.sleep(r.choice(INNER_SLEEPS))
        self.write_file(path, x)
        return "revert %s: X, Y, X (%d/%d bytes)" % (rel, len(x), len(y))

    def op_restore_earlier(self, i, c, r, t):
        data = self.pick(r, self.history)
        rel = self.pick(r, t.files) if t.files and r.random() < 0.7 else self.new_file_rel(r, t)
        self.write_file(c.p(rel), data)
        return "restore earlier content %s into %s" % (hashlib.sha256(data).hexdigest()[:12], rel)

    def op_move_in(self, i, c, r, t):
        try:
            outside = sorted(os.listdir(c.outside))
        except OSError:
            outside = []
        dst_dir = r.choice(t.dirs)
        if outside and r.random() < 0.5:
            name = r.choice(outside)
            src = os.path.join(c.outside, name)
            is_dir = os.path.isdir(src) and not os.path.islink(src)
            what = "earlier moved out"
        else:
            name = "in%d" % i
            src = os.path.join(c.outside, name)
            is_dir = r.random() < 0.4
            if is_dir:
                os.mkdir(src)
                for n in r.sample(FILE_NAMES, r.randint(1, 3)):
                    self.write_file(os.path.join(src, n), self.content(r, i, c, "outside " + n))
                if r.random() < 0.5:
                    os.mkdir(os.path.join(src, "sub"))
                    self.write_file(os.path.join(src, "sub", "a.txt"), self.content(r, i, c, "outside sub/a.txt"))
            else:
                self.write_file(src, self.content(r, i, c, "outside " + name))
            what = "new"
        rel = _j(dst_dir, r.choice(DIR_NAMES if is_dir else FILE_NAMES))
        os.rename(src, c.p(rel))
        if not is_dir:
            self.note(i, c, "move_in", rel)
        return "move in %s%s (%s) -> %s" % (name, "/" if is_dir else "", what, rel)

    def op_move_out(self, i, c, r, t):
        rel = self.pick(r, t.entries)
        dst = os.path.join(c.outside, "out%d-%s" % (i, os.path.basename(rel)))
        os.rename(c.p(rel), dst)
        return "move out %s" % rel

    def op_hardlink(self, i, c, r, t):
        src = self.pick(r, t.files)
        dst = self.new_file_rel(r, t)
        os.link(c.p(src), c.p(dst))
        k = r.random()
        if k < 0.6:
            time.sleep(r.choice(INNER_SLEEPS))
            os.unlink(c.p(src))
            return "link %s %s, unlink %s" % (src, dst, src)
        if k < 0.8:
            fd = os.open(c.p(dst), os.O_WRONLY | os.O_APPEND | O_NOFOLLOW)
            try:
                self.write_all(fd, ("%s#%d via link\n" % (c.name, i)).encode())
            finally:
                os.close(fd)
            self.note(i, c, "hardlink+append", dst)
            return "link %s %s, append to %s" % (src, dst, dst)
        return "link %s %s (both kept)" % (src, dst)

    def op_tmpfile(self, i, c, r, t):
        d = r.choice(t.dirs)
        rel = self.new_file_rel(r, t) if r.random() < 0.3 else _j(d, r.choice(FILE_NAMES))
        d = os.path.dirname(rel)
        data = self.content(r, i, c, "tmpfile " + rel)
        fd = os.open(c.p(d), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            self.write_all(fd, data)
            if r.random() < 0.5:
                os.fchmod(fd, r.choice(FILE_MODES))
            replace = os.path.lexists(c.p(rel))
            name = _j(d, ".tmpfile%d" % i) if replace else rel
            if r.random() < 0.5:
                linkat_empty_path(fd, c.p(name))
                how = "linkat(AT_EMPTY_PATH)"
            else:
                linkat_proc_fd(fd, c.p(name))
                how = "linkat(/proc/self/fd, AT_SYMLINK_FOLLOW)"
            if replace:
                os.rename(c.p(name), c.p(rel))
                how += " + rename over"
            if r.random() < 0.3:  # more written after it got its name
                time.sleep(r.choice(INNER_SLEEPS))
                self.write_all(fd, ("%s#%d after linkat\n" % (c.name, i)).encode(), len(data))
                how += " + write"
        finally:
            os.close(fd)
        self.note(i, c, "tmpfile", rel)
        return "O_TMPFILE %s (%d bytes, %s)" % (rel, len(data), how)

    def op_exchange(self, i, c, r, t):
        ents = t.entries
        if len(ents) < 2:
            raise NoTarget()
        a, b = r.sample(ents, 2)
        rename_exchange(c.p(a), c.p(b))
        return "exchange %s <-> %s" % (a, b)

    def op_copy_range(self, i, c, r, t):
        src = self.pick(r, t.files)
        into = t.files and r.random() < 0.3
        dst = r.choice(t.files) if into else self.new_file_rel(r, t)
        sfd = os.open(c.p(src), os.O_RDONLY | O_NOFOLLOW)
        try:
            size = os.fstat(sfd).st_size
            if into:
                dfd = os.open(c.p(dst), os.O_WRONLY | O_NOFOLLOW)
                off = r.randrange(size + 1)
                count = r.randint(0, size - off)
                doff = r.randrange(os.fstat(dfd).st_size + 1)
            else:
                dfd = os.open(c.p(dst), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW, 0o644)
                off, count, doff = 0, size, 0
            try:
                done = 0
                while done < count:
                    n = os.copy_file_range(sfd, dfd, count - done, off + done, doff + done)
                    if n == 0:
                        break
                    done += n
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        self.note(i, c, "copy_range", dst)
        return "copy_file_range %s[%d:+%d] -> %s at %d" % (src, off, count, dst, doff)

    def op_fallocate(self, i, c, r, t):
        rel = self.pick(r, t.files)
        fd = os.open(c.p(rel), os.O_RDWR | O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            off = r.randrange(size + 1)
            n = r.randint(1, 70000)
            if r.random() < 0.7:
                os.posix_fallocate(fd, off, n)
                how = "posix_fallocate"
            else:
                fallocate(fd, FALLOC_FL_KEEP_SIZE, off, n)
                how = "fallocate KEEP_SIZE"
            new = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.note(i, c, "fallocate", rel)
        return "%s %s off %d len %d (size %d -> %d)" % (how, rel, off, n, size, new)

    def op_punch_hole(self, i, c, r, t):
        rel = self.pick(r, t.files)
        fd = os.open(c.p(rel), os.O_RDWR | O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise NoTarget()
            off = r.randrange(size)
            n = r.randint(1, size - off)
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n)
        finally:
            os.close(fd)
        self.note(i, c, "punch_hole", rel)
        return "punch hole %s off %d len %d" % (rel, off, n)

    def _map_write(self, m, r, i, c, fd, size=None):
        # Only below the file's current end: a page past it is SIGBUS (a
        # kept map outlives our own truncates; agents never truncate).
        size = min(len(m), os.fstat(fd).st_size if fd is not None else size)
        if size == 0:
            raise NoTarget()
        off = r.randrange(size)
        data = ("[%s#%d]" % (c.name, i)).encode() * r.randint(1, 8)
        data = data[:size - off]
        m[off:off + len(data)] = data
        return off, len(data)

    def op_mmap(self, i, c, r, t):
        rel = self.pick(r, t.files)
        fd = os.open(c.p(rel), os.O_RDWR | O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size == 0:
                raise NoTarget()
            m = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        k = r.random()
        kept = False
        try:
            if k < 0.4:
                off, n = self._map_write(m, r, i, c, fd)
                m.flush()
                how = "map, write, msync, unmap, close"
            elif k < 0.8:
                size = os.fstat(fd).st_size
                os.close(fd)
                fd = None
                time.sleep(r.choice(INNER_SLEEPS))
                off, n = self._map_write(m, r, i, c, None, size)
                m.flush()
                how = "map, close the fd, write, msync, unmap"
            else:
                off, n = self._map_write(m, r, i, c, fd)
                m.flush()
                c.handles.append({"fd": fd, "map": m, "path": rel, "op": i})
                kept = True
                how = "write, msync, kept mapped and open"
        finally:
            if not kept:
                m.close()
                if fd is not None:
                    os.close(fd)
        self.note(i, c, "mmap", rel)
        return "mmap %s: %d bytes at %d (%s)" % (rel, n, off, how)

    def op_keep_open(self, i, c, r, t):
        if t.files and r.random() < 0.7:
            rel = r.choice(t.files)
            flags = os.O_WRONLY | O_NOFOLLOW | (os.O_APPEND if r.random() < 0.5 else 0)
            fd = os.open(c.p(rel), flags)
            new = False
        else:
            rel = self.new_file_rel(r, t)
            fd = os.open(c.p(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW, 0o644)
            new = True
        try:
            data = ("%s#%d kept open\n" % (c.name, i)).encode() * r.randint(1, 30)
            self.write_all(fd, data)
        except BaseException:
            os.close(fd)
            raise
        c.handles.append({"fd": fd, "map": None, "path": rel, "op": i})
        self.note(i, c, "keep_open", rel)
        return "open %s%s, write %d bytes, keep it open" % (rel, " (new)" if new else "", len(data))

    def op_write_open(self, i, c, r, t):
        h = self.pick(r, c.handles)
        if h["map"] is not None:
            off, n = self._map_write(h["map"], r, i, c, h["fd"])
            h["map"].flush()
            how = "through the map at %d" % off
        else:
            data = ("%s#%d still open\n" % (c.name, i)).encode() * r.randint(1, 30)
            self.write_all(h["fd"], data)
            n, how = len(data), "to the fd"
        self.note(i, c, "write_open", h["path"])
        return "write %d bytes %s of %s (opened at #%d)" % (n, how, h["path"], h["op"])

    def op_close_open(self, i, c, r, t):
        h = self.pick(r, c.handles)
        self.close_handle(c, h)
        return "close %s (opened at #%d)" % (h["path"], h["op"])

    @staticmethod
    def close_handle(c, h):
        c.handles.remove(h)
        try:
            if h["map"] is not None:
                h["map"].close()
        finally:
            os.close(h["fd"])

    def op_sleep(self, i, c, r, t):
        s = r.choice(SLEEPS)
        time.sleep(s)
        return "sleep %.3f" % s

    # -------------------------------------------------- faults

    def op_pause(self, i, c, r, t):
        c.agent.popen.send_signal(signal.SIGSTOP)
        c.paused = True
        return "agent %s paused (SIGSTOP)" % c.name

    def op_resume(self, i, c, r, t):
        c.agent.popen.send_signal(signal.SIGCONT)
        c.paused = False
        return "agent %s resumed (SIGCONT)" % c.name

    def op_kill_agent(self, i, c, r, t):
        c.agent.kill9()
        c.paused = False
        c.down = True
        if r.random() < 0.5:
            time.sleep(r.choice(INNER_SLEEPS))
            c.agent.start()
            c.down = False
            return "agent %s killed (SIGKILL) and started again" % c.name
        return "agent %s killed (SIGKILL), stays down" % c.name

    def op_start_agent(self, i, c, r, t):
        c.agent.start()
        c.down = False
        return "agent %s started" % c.name

    def op_kill_server(self, i, c, r, t):
        self.srv.kill9()
        self.server_down = True
        if r.random() < 0.5:
            time.sleep(r.choice(INNER_SLEEPS))
            self.srv.start()
            self.server_down = False
            return "server killed (SIGKILL) and started again"
        return "server killed (SIGKILL), stays down"

    def op_start_server(self, i, c, r, t):
        self.srv.start()
        self.server_down = False
        return "server started"

    def op_settle(self, i, c, r, t):
        self.settle("settle point at #%d" % i, verify=False)
        return "settled: everything resumed, converged, nothing lost"

    # -------------------------------------------------- the run

    def applicable(self, kind, c):
        if kind == "pause":
            return not c.paused and not c.down
        if kind == "resume":
            return c.paused
        if kind == "kill_agent":
            return not c.down
        if kind == "start_agent":
            return c.down
        if kind == "kill_server":
            return not self.server_down
        if kind == "start_server":
            return self.server_down
        if kind in ("write_open", "close_open"):
            return bool(c.handles)
        if kind == "restore_earlier":
            return bool(self.history)
        return True

    def step(self, i):
        r = random.Random("randomsync/%d/%d" % (self.seed, i))
        c = r.choice(self.computers)
        kinds = [k for k in sorted(ALL_OPS) if k not in self.skip and self.applicable(k, c)]
        kind = r.choices(kinds, [ALL_OPS[k] for k in kinds])[0]
        fn = getattr(self, "op_" + kind)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        t = Tree(c.dir)
        try:
            try:
                desc = fn(i, c, r, t)
            except NoTarget:
                if "create" in self.skip:
                    desc = "(nothing to %s)" % kind
                else:
                    kind = "create"
                    desc = "(nothing to %s) " % kind + self.op_create(i, c, r, Tree(c.dir))
        except NoTarget:
            desc = "(nothing to %s)" % kind
        except (OSError, ValueError) as e:
            self.errors += 1
            desc = "%s failed: %s" % (kind, e)
        self.log("#%d [%s] %s" % (i, c.name, desc))
        harness._check_alive()

    def bring_up(self):
        if self.server_down:
            self.srv.start()
            self.server_down = False
        for c in self.computers:
            if c.paused:
                c.agent.popen.send_signal(signal.SIGCONT)
                c.paused = False
            if c.down:
                c.agent.start()
                c.down = False

    def unmap_all(self):
        """A write through a mapping kept open is not seen until the last
        mapping goes (then IN_CLOSE_WRITE), or by the agent's verification
        pass (hourly): docs/sync-model.md. Convergence is required once
        they are gone."""
        for c in self.computers:
            for h in list(c.handles):
                if h["map"] is not None:
                    self.close_handle(c, h)
                    self.log("-- [%s] unmapped and closed %s (mapped at #%d)" % (c.name, h["path"], h["op"]))

    def settle(self, what, verify):
        """Everything up; convergence within the timeout, and no content
        lost: what any tree held now, or the server ever stored."""
        self.unmap_all()
        before = {}
        for c in self.computers:
            for sha, rel in tree_contents(c.dir).items():
                before.setdefault(sha, "%s:%s" % (c.name, rel))
        self.bring_up()
        self.log("-- %s: everything resumed, waiting for convergence" % what)
        t = time.monotonic()
        problems = []
        try:
            assert_converged(self.srv, [c.agent for c in self.computers],
                             timeout=self.converge_timeout, msg=what, verify=verify)
        except TestFailure as e:
            msg = str(e)
            if msg.startswith("not converged"):
                try:
                    msg = msg.splitlines()[0] + "\n" + self.explain()
                except Exception as e2:  # keep the harness's words
                    msg += "\n(%r)" % (e2,)
            problems.append(msg)
        lost = self.lost_content(before)
        if lost:
            problems.append("content lost (%s):\n%s" % (what, lost))
        if problems:
            raise TestFailure("\n".join(problems))
        self.log("-- %s: converged in %.1f s" % (what, time.monotonic() - t))

    def explain(self, limit=25):
        """Each difference between a tree and the server's records, field by field."""
        ss = harness.server_snapshot(self.srv, self.computers[0].agent.token)
        lines = []
        for c in self.computers:
            sa = harness.snapshot(c.dir, modes=True, mtimes=True)
            for k in sorted(set(sa) | set(ss)):
                a, b = sa.get(k), ss.get(k)
                if a == b:
                    continue
                self.diff_paths.add(k)
                if a is None or b is None:
                    lines.append("  %s: %r only %s: %s" % (c.name, k, "on the server" if a is None else "here",
                                                          describe(a or b)))
                    continue
                fields = []
                if a[0] != b[0]:
                    fields.append("kind %s / server %s" % (describe(a), describe(b)))
                else:
                    if a[1] != b[1]:
                        fields.append("content %s / server %s" % (describe_content(a), describe_content(b)))
                    if a[2] != b[2]:
                        fields.append("mode %s / server %s" % (oct(a[2]) if a[2] is not None else None,
                                                               oct(b[2]) if b[2] is not None else None))
                    if a[3] != b[3]:
                        fields.append("mtime_ns %s / server %s" % (a[3], b[3]))
                lines.append("  %s: %r differs: %s" % (c.name, k, "; ".join(fields)))
        more = len(lines) - limit
        return "\n".join(lines[:limit] + (["  ... and %d more" % more] if more > 0 else []))

    def lost_content(self, before):
        final = {}
        for c in self.computers:
            for sha, rel in tree_contents(c.dir).items():
                final.setdefault(sha, "%s:%s" % (c.name, rel))
        log, entries, versions, bad = server_contents(self.srv, self.computers[0].agent.token)
        have = set(final) | entries | versions
        lines = []
        unnamed = None
        for sha, (seq, path) in sorted(log.items(), key=lambda kv: kv[1][0]):
            if sha not in have:
                self.diff_paths.add(path)
                if unnamed is None:
                    unnamed = self.unnamed_versions()
                where = self._bad(bad, sha)
                if sha in unnamed:
                    where += " (its bytes are in %s, which no versions row names)" % unnamed[sha]
                lines.append("  %s stored by the server (log seq %d, PUT %s)%s, written by %s" % (
                    sha[:12], seq, path, where, self.provenance.get(sha, "?")))
        for sha, where in sorted(before.items(), key=lambda kv: kv[1]):
            if sha not in have and sha not in log:
                lines.append("  %s was in %s when the operations stopped, written by %s; the server never had it" % (
                    sha[:12], where, self.provenance.get(sha, "?")))
        return "\n".join(lines)

    def unnamed_versions(self):
        """sha -> path below versions/ or content/ of files the server
        keeps there that no versions row names (e.g. versions/recovered-*)."""
        acct = os.path.join(self.srv.storage, self.computers[0].agent.account)
        out = {}
        for sub in ("versions", "content"):
            for d, dirs, files in os.walk(os.path.join(acct, sub)):
                for n in files:
                    p = os.path.join(d, n)
                    if n.endswith(".chunks"):
                        out.setdefault(n[:-len(".chunks")], os.path.relpath(p, acct))
                        continue
                    try:
                        out.setdefault(sha256_path(p), os.path.relpath(p, acct))
                    except OSError:
                        pass
        return out

    @staticmethod
    def _bad(bad, sha):
        return " (a versions row names it, but its kept file %s is missing or differs)" % bad[sha] if sha in bad else ""

    def setup(self, env):
        self.env = env
        self.srv = env.server()
        self.server_down = False
        names = "ABC"[:self.ncomputers]
        self.computers = []
        for n in names:
            c = Computer(n, env.path(n), env.path("outside-" + n))
            os.makedirs(c.dir)
            os.makedirs(c.outside)
            self.computers.append(c)
        a = self.computers[0]
        harness.write_file(a.p(SENTINEL), "never touched: the tree is never empty\n")
        harness.write_file(a.p("d0/a.txt"), "first\n")
        harness.write_file(a.p("b.txt"), "second\n")
        # Its editors leave name~ backups, which the default ignores keep
        # local: this checks convergence of everything, so without them.
        a.agent = env.agent("A", a.dir, args=["--default-ignores", "no"])
        for c in self.computers[1:]:
            c.agent = env.agent(c.name, c.dir, token=a.agent.token, args=["--default-ignores", "no"])
        assert_converged(self.srv, [c.agent for c in self.computers], timeout=60,
                         msg="initial join", verify=False)

    def release(self):
        for c in getattr(self, "computers", []):
            if c.paused and c.agent.running():
                c.agent.popen.send_signal(signal.SIGCONT)
                c.paused = False
            for h in list(c.handles):
                try:
                    self.close_handle(c, h)
                except OSError:
                    pass

    def report(self, err):
        lines = ["", "=" * 72,
                 "randomsync: seed %d FAILED (%d computers, op %d of %d, %d ops failed harmlessly)" % (
                     self.seed, self.ncomputers, self.done, self.nops, self.errors),
                 "last %d operations:" % min(OPLOG_TAIL, len(self.oplog))]
        lines += ["  " + l for l in self.oplog[-OPLOG_TAIL:]]
        if self.diff_paths:
            names = set()
            for k in self.diff_paths:
                names.add(k)
                names.add(os.path.basename(k).split(".conflict-")[0])
            older = [l for l in self.oplog[:-OPLOG_TAIL]
                     if any((" " + n) in l or ("/" + n) in l for n in names)]
            if older:
                lines.append("earlier operations naming %s:" % ", ".join(sorted(names)))
                lines += ["  " + l for l in older[-30:]]
            # What each program logged about them: the tail of a log
            # (printed by the harness) often misses the moment it went wrong.
            logs = [("server", getattr(self, "srv", None))]
            logs += [("agent " + c.name, getattr(c, "agent", None)) for c in getattr(self, "computers", [])]
            for who, proc in logs:
                try:
                    said = [l for l in proc.log_lines() if any(n in l for n in self.diff_paths)]
                except (AttributeError, OSError):
                    continue
                if said:
                    lines.append("%s logged about %s:" % (who, ", ".join(sorted(self.diff_paths))))
                    lines += ["  " + l for l in said[-25:]]
        if self.oplog_file:
            lines.append("all operations: " + self.oplog_file)
        lines += ["failure:", str(err), "replay: " + self.replay_command(), "=" * 72]
        return "\n".join(lines)

    def save_oplog(self, env):
        d = env.root if self.keep_failed else tempfile.gettempdir()
        path = os.path.join(d, "randomsync-%d-ops.txt" % self.seed)
        try:
            with open(path, "w") as f:
                f.write("\n".join(self.oplog) + "\n")
            self.oplog_file = path
        except OSError:
            pass

    def run(self):
        had_keep = "BS_KEEP" in os.environ
        try:
            return self._run()
        finally:
            if not had_keep:
                os.environ.pop("BS_KEEP", None)

    def _run(self):
        wait_for_build()
        self.t0 = time.monotonic()
        with Env("random-%d" % self.seed) as env:
            try:
                self.setup(env)
                self.log("-- seed %d, %d computers, %d operations%s" % (
                    self.seed, self.ncomputers, self.nops,
                    (", skipping " + ",".join(sorted(self.skip))) if self.skip else ""))
                for i in range(1, self.nops + 1):
                    self.step(i)
                    self.done = i
                # Some files written while open stay open while the run
                # converges (their writes are seen by IN_MODIFY).
                r = random.Random("randomsync/%d/end" % self.seed)
                self.unmap_all()
                for c in self.computers:
                    for h in list(c.handles):
                        if r.random() < 0.5:
                            self.close_handle(c, h)
                            self.log("-- [%s] closed %s (opened at #%d)" % (c.name, h["path"], h["op"]))
                        else:
                            self.log("-- [%s] %s (opened at #%d) stays open" % (c.name, h["path"], h["op"]))
                self.settle("end of run", verify=True)
            except Exception as e:
                self.save_oplog(env)
                if self.keep_failed:
                    os.environ["BS_KEEP"] = "1"  # harness.Env keeps the directory
                print(self.report(e), file=sys.stderr, flush=True)
                first = str(e).strip().splitlines()[:12]
                self.summary = "\n".join(first[:3])
                raise RandomSyncFailure("seed %d: %s\nreplay: %s" % (
                    self.seed, "\n".join(first), self.replay_command())) from e
            finally:
                self.release()
        return time.monotonic() - self.t0


def wait_for_build(timeout=300):
    """The binaries may be missing for a moment while they are rebuilt."""
    deadline = time.monotonic() + timeout
    while not all(os.access(b, os.X_OK) for b in (harness.SERVER_BIN, harness.AGENT_BIN)):
        if time.monotonic() > deadline:
            return  # Env says which one is missing
        time.sleep(1)
    time.sleep(0.5)


def skip_from_env():
    v = os.environ.get("BS_RANDOM_SKIP", "")
    return [k for k in v.replace(" ", ",").split(",") if k]


def main(argv=None):
    ap = argparse.ArgumentParser(description="randomized convergence test of backupsync "
                                 "(see the module docstring)")
    env_seed = os.environ.get("BS_SEED")
    ap.add_argument("--seed", type=int, default=int(env_seed) if env_seed else None,
                    help="the seed (the first one with --seeds); default $BS_SEED or random")
    ap.add_argument("--ops", type=int, default=150, help="operations per seed (150)")
    ap.add_argument("--computers", type=int, choices=[2, 3], default=None,
                    help="2 or 3 (default: chosen by the seed)")
    ap.add_argument("--seeds", type=int, default=1, help="soak: run this many seeds in a row")
    ap.add_argument("--skip", default="", help="comma-separated operation kinds to leave out "
                    "(also $BS_RANDOM_SKIP)")
    ap.add_argument("--timeout", type=float, default=90.0,
                    help="seconds to wait for convergence at the end (90)")
    ap.add_argument("--keep-failed", action="store_true",
                    help="keep the directories (trees, logs, state, storage) of failing seeds")
    ap.add_argument("--stop", action="store_true", help="stop a soak at the first failure")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every operation")
    ap.add_argument("--list-ops", action="store_true", help="print the operation kinds and weights")
    args = ap.parse_args(argv)
    if args.list_ops:
        for k in sorted(ALL_OPS):
            print("%-18s %5.1f%s" % (k, ALL_OPS[k], "  (fault)" if k in FAULT_OPS else ""))
        return 0
    skip = [k for k in args.skip.split(",") if k] + skip_from_env()
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    failed = []
    total_ops = 0
    seeds = 0
    t0 = time.monotonic()
    for seed in range(first, first + args.seeds):
        run = Run(seed, args.ops, args.computers, skip, args.timeout, args.verbose,
                  keep_failed=args.keep_failed)
        seeds += 1
        try:
            took = run.run()
            total_ops += run.done
            print("ok seed %d: %d computers, %d ops (%d failed harmlessly) in %.1f s" % (
                seed, run.ncomputers, run.done, run.errors, took), flush=True)
        except TestFailure as e:
            total_ops += run.done
            failed.append((seed, run.replay_command(), (run.summary or str(e)).splitlines()))
            print("FAIL seed %d after %d ops" % (seed, run.done), flush=True)
            if args.stop:
                break
        except KeyboardInterrupt:
            total_ops += run.done
            print("interrupted in seed %d" % seed)
            break
        except Exception:
            total_ops += run.done
            traceback.print_exc()
            failed.append((seed, run.replay_command(), ["internal error"]))
            if args.stop:
                break
    print("randomsync: %d seeds, %d operations, %d failed, %.0f s" % (
        seeds, total_ops, len(failed), time.monotonic() - t0))
    for seed, cmd, what in failed:
        print("  seed %d: %s\n    %s" % (seed, "\n    ".join(what[:3]), cmd))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
