"""Every way a file appears or changes is seen.

Each way of making a change is done on computer A twice: in a directory
made just before (the agent may not watch it yet) and in a directory that
A, B and the server have had for a while. Then A, B and the server's
record must agree exactly (content, file and directory modes, file mtimes
in ns, symlink targets) and backupsyncd --verify must find nothing, and A
must still hold exactly what the test made (the agent never undoes a
local change). Directory names are '<synced|fresh>-<case>', so a
difference names its case.
"""

import ctypes
import errno
import functools
import hashlib
import mmap
import os
import subprocess
import time

import harness
from harness import (Env, check, fail, read_bytes, server_snapshot, snapshot,
                     write_file)

# How long the synced directories exist on A, B and the server before the
# changes are made.
SETTLE = 2.0

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _oserror(what, path):
    e = ctypes.get_errno()
    return OSError(e, "%s: %s" % (what, os.strerror(e)), path)


def _describe(v):
    """One snapshot entry, readable: kind, size, digest, mode, mtime."""
    if v is None:
        return "absent"
    kind, content, mode = v[0], v[1], v[2]
    mtime = v[3] if len(v) > 3 else None
    if kind == "file":
        if isinstance(content, bytes):
            size, digest = "%d bytes" % len(content), hashlib.sha256(content).hexdigest()[:12]
        else:
            size, digest = "over 1 MiB", content[7:19]
        return "file %s sha256 %s mode %o mtime_ns %s" % (size, digest, mode, mtime)
    if kind == "dir":
        return "dir mode %o" % mode
    if kind == "link":
        return "symlink -> %r" % (content,)
    return repr(v)


def assert_converged(srv, agents, timeout=30, msg="", verify=True):
    """harness.assert_converged, with every difference spelled out (sizes,
    digests, octal modes, mtimes) when it fails."""
    try:
        return harness.assert_converged(srv, agents, timeout=timeout, msg=msg, verify=verify)
    except harness.TestFailure as e:
        lines = []
        try:
            ss = server_snapshot(srv, agents[0].token)
            for ag in agents:
                sa = snapshot(ag.dir, modes=True, mtimes=True)
                for k in sorted(set(sa) | set(ss)):
                    if sa.get(k) != ss.get(k):
                        lines.append("  %s: %s: %s / server: %s"
                                     % (k, ag.name, _describe(sa.get(k)), _describe(ss.get(k))))
        except Exception as e2:  # the details are a help, not the verdict
            lines.append("  (no details: %r)" % (e2,))
        if not lines:
            raise
        raise harness.TestFailure("%s\nin detail:\n%s" % (e, "\n".join(lines[:40]))) from None


def linkat(olddirfd, oldpath, newdirfd, newpath, flags):
    if _libc.linkat(olddirfd, os.fsencode(oldpath), newdirfd, os.fsencode(newpath), flags) != 0:
        raise _oserror("linkat", newpath)


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        raise _oserror("renameat2", new)


def fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        raise _oserror("fallocate", "fd %d" % fd)


@functools.lru_cache(maxsize=None)
def data(tag, size):
    """size bytes, different for every tag, not compressible to nothing."""
    seed = tag.encode()
    out = bytearray()
    i = 0
    while len(out) < size:
        out += b"%s %08d " % (seed, i) + bytes((i * 37 + k) & 0xFF for k in range(48))
        i += 1
    return bytes(out[:size])


def F(content, mode=0o644, mtime_ns=None):
    """An expected regular file."""
    return ("file", content, mode) if mtime_ns is None else ("file", content, mode, mtime_ns)


def D(mode=0o755):
    """An expected directory."""
    return ("dir", None, mode)


def L(target):
    """An expected symlink."""
    return ("link", target, None)


class Ctx:
    """Where one case runs: d is '<where>-<case>' at the top of A's tree;
    outside is a directory on the same file system outside the tree;
    staging is a directory in the tree that is synced before the change."""

    def __init__(self, env, root, case, where):
        self.case = case
        self.where = where
        self.name = "%s-%s" % (where, case)
        self.root = root
        self.d = os.path.join(root, self.name)
        self.outside = env.path("outside", self.name)
        self.staging = os.path.join(root, "staging", self.name)

    def p(self, *parts):
        return os.path.join(self.d, *parts)

    def s(self, *parts):
        return os.path.join(self.staging, *parts)

    def o(self, *parts):
        return os.path.join(self.outside, *parts)


class Case:
    """name; prepare(c): things outside c.d, made during setup for both
    places; seed(c): what c.d holds before the change (during setup for
    'synced', just before the change for 'fresh'); do(c): the change,
    returning what c.d must then hold {relpath: F()/D()/L()}; later(c),
    optional: a second change made after everything converged, returning
    what c.d must hold after it."""

    def __init__(self, name, do, seed=None, prepare=None, later=None):
        self.name = name
        self.do = do
        self.seed = seed or (lambda c: None)
        self.prepare = prepare or (lambda c: None)
        self.later = later


def _start(env, root, args=()):
    srv = env.server()
    a = env.agent("A", root, args=list(args))
    b = env.agent("B", env.path("B"), token=a.token)
    return srv, a, b


def _setup(env, cases, args=()):
    """Server, A and B with the synced directory of every case on all
    three; returns (srv, a, b, [Ctx for synced and fresh of every case])."""
    os.umask(0o022)  # the modes expected below assume it
    root = env.path("A")
    os.makedirs(root)
    os.makedirs(os.path.join(root, "staging"))
    ctxs = []
    for case in cases:
        for where in ("synced", "fresh"):
            c = Ctx(env, root, case.name, where)
            os.makedirs(c.outside)
            case.prepare(c)
            if where == "synced":
                os.mkdir(c.d)
                case.seed(c)
            ctxs.append((case, c))
    srv, a, b = _start(env, root, args)
    assert_converged(srv, [a, b], timeout=60, msg="setup: the synced directories", verify=False)
    time.sleep(SETTLE)
    return srv, a, b, ctxs


def _check_local(root, ctxs_expected, when):
    """A's tree below every case's directory is exactly what the test made."""
    snap = snapshot(root, modes=True, mtimes=True)
    errs = []
    for c, exp in ctxs_expected:
        pre = c.name + "/"
        got = {k[len(pre):]: v for k, v in snap.items() if k.startswith(pre)}
        for rel in sorted(set(got) | set(exp)):
            if rel not in exp:
                errs.append("case %s (%s): A has unexpected %r %s" % (c.case, c.where, rel, _short(got[rel])))
            elif rel not in got:
                errs.append("case %s (%s): A lacks %r" % (c.case, c.where, rel))
            else:
                e = exp[rel]
                g = got[rel][:len(e)]
                if g != e:
                    errs.append("case %s (%s): A's %r is %s, the test made %s"
                                % (c.case, c.where, rel, _short(got[rel]), _short(e)))
    check(not errs, "%s: A does not hold what the test made:\n%s" % (when, "\n".join(errs[:30])))


def _short(v):
    s = repr(v)
    return s if len(s) < 160 else s[:157] + "..."


def _run(name, cases, after=None):
    """Every case in a synced and a fresh directory, then convergence;
    after(srv, a, b, done), when given, checks more once it converged."""
    with Env(name) as env:
        srv, a, b, ctxs = _setup(env, cases)
        done = []
        for case, c in ctxs:
            if c.where == "fresh":
                os.mkdir(c.d)
                case.seed(c)
            try:
                exp = case.do(c)
            except OSError as e:
                fail("case %s (%s): the change itself failed: %s" % (case.name, c.where, e))
            done.append((case, c, exp))
        assert_converged(srv, [a, b], timeout=30,
                         msg="%s: after %s" % (name, ", ".join(c.name for _, c, _ in done)))
        _check_local(a.dir, [(c, exp) for _, c, exp in done], name)
        if after:
            after(srv, a, b, done)
        later = [(case, c) for case, c, _ in done if case.later]
        if later:
            again = []
            for case, c in later:
                again.append((c, case.later(c)))
            assert_converged(srv, [a, b], timeout=30,
                             msg="%s: after the later changes of %s" % (name, ", ".join(c.name for c, _ in again)))
            _check_local(a.dir, again, name + " (later)")


# ---------------------------------------------------------------- open/write/close

def _write_new(c):
    write_file(c.p("new.txt"), data(c.name, 5000))
    return {"new.txt": F(data(c.name, 5000))}


def _seed_existing(c):
    write_file(c.p("f.txt"), data("old " + c.name, 3000))


def _rewrite(c):
    with open(c.p("f.txt"), "wb") as f:  # O_TRUNC, same inode
        f.write(data("new " + c.name, 2000))
    return {"f.txt": F(data("new " + c.name, 2000))}


def _overwrite_middle(c):
    with open(c.p("f.txt"), "r+b") as f:  # no truncation: same size
        f.seek(1000)
        f.write(b"X" * 100)
    want = bytearray(data("old " + c.name, 3000))
    want[1000:1100] = b"X" * 100
    return {"f.txt": F(bytes(want))}


def _append(c):
    with open(c.p("f.txt"), "ab") as f:
        f.write(b"appended line\n")
    return {"f.txt": F(data("old " + c.name, 3000) + b"appended line\n")}


def _write_empty(c):
    open(c.p("empty"), "wb").close()
    return {"empty": F(b"")}


def _write_nested(c):
    os.makedirs(c.p("a", "b"))
    write_file(c.p("a", "b", "deep.txt"), "deep\n")
    return {"a": D(), "a/b": D(), "a/b/deep.txt": F(b"deep\n")}


def test_detect_write():
    """open/write/close: a new file, an empty one, one in new
    subdirectories, and an existing file rewritten with O_TRUNC, written
    over in the middle and appended to."""
    _run("detect_write", [
        Case("new", _write_new),
        Case("empty", _write_empty),
        Case("nested", _write_nested),
        Case("rewrite", _rewrite, seed=_seed_existing),
        Case("overwrite", _overwrite_middle, seed=_seed_existing),
        Case("append", _append, seed=_seed_existing),
    ])


# ---------------------------------------------------------------- link()

def _git_write(tmp, final, content):
    """As git writes an object: a temporary file, closed, linked to its
    name, the temporary name removed at once."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.link(tmp, final)
    os.unlink(tmp)


def _link_same_dir(c):
    _git_write(c.p("tmp_obj_x1"), c.p("obj"), data(c.name, 700))
    return {"obj": F(data(c.name, 700), 0o444)}


def _seed_fanout(c):
    os.mkdir(c.p("ab"))
    write_file(c.p("ab", "existing"), "already there\n", mode=0o444)


def _link_into_fanout(c):
    # git: objects/tmp_obj_XXXXXX, then objects/ab/<rest of the hash>
    _git_write(c.p("tmp_obj_y2"), c.p("ab", "cdef0123"), data(c.name, 900))
    return {"ab": D(), "ab/existing": F(b"already there\n", 0o444),
            "ab/cdef0123": F(data(c.name, 900), 0o444)}


def _seed_fanouts(c):
    for i in range(4):
        os.mkdir(c.p("%02x" % i))


def _link_many(c):
    exp = {"%02x" % i: D() for i in range(4)}
    for i in range(30):
        sub = "%02x" % (i % 4)
        _git_write(c.p("tmp_obj_%d" % i), c.p(sub, "obj%02d" % i), data("%s %d" % (c.name, i), 100 + i * 50))
        exp["%s/obj%02d" % (sub, i)] = F(data("%s %d" % (c.name, i), 100 + i * 50), 0o444)
    return exp


def _link_kept(c):
    write_file(c.p("first"), data(c.name, 1200))
    os.link(c.p("first"), c.p("second"))
    return {"first": F(data(c.name, 1200)), "second": F(data(c.name, 1200))}


def _link_from_outside(c):
    write_file(c.o("made-outside"), data(c.name, 1500))
    os.link(c.o("made-outside"), c.p("linked-in"))
    os.unlink(c.o("made-outside"))
    return {"linked-in": F(data(c.name, 1500))}


def _link_replace(c):
    # link to a temporary name in the tree, rename over an existing file
    write_file(c.o("made-outside"), data("new " + c.name, 1800))
    os.link(c.o("made-outside"), c.p(".f.txt.tmp"))
    os.rename(c.p(".f.txt.tmp"), c.p("f.txt"))
    os.unlink(c.o("made-outside"))
    return {"f.txt": F(data("new " + c.name, 1800))}


def test_detect_link():
    """link(): a file written under a temporary name and closed, linked to
    its final name and the temporary name removed at once (how git writes
    objects), in the same directory, into a fan-out subdirectory and thirty
    in a row; a second name kept beside the first; a link from outside the
    tree with the outside name removed; a link renamed over a file."""
    _run("detect_link", [
        Case("link-same-dir", _link_same_dir),
        Case("link-fanout", _link_into_fanout, seed=_seed_fanout),
        Case("link-many", _link_many, seed=_seed_fanouts),
        Case("link-kept", _link_kept),
        Case("link-from-outside", _link_from_outside),
        Case("link-replace", _link_replace, seed=_seed_existing),
    ])


# ---------------------------------------------------------------- O_TMPFILE + linkat()

def _tmpfile_link(path, content, how, more=b""):
    fd = os.open(os.path.dirname(path), os.O_TMPFILE | os.O_WRONLY, 0o644)
    try:
        os.write(fd, content)
        if how == "empty-path":
            try:
                linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH)
            except OSError as e:  # AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH
                if e.errno not in (errno.ENOENT, errno.EPERM):
                    raise
                how = "proc-fd"
        if how == "proc-fd":
            linkat(AT_FDCWD, "/proc/self/fd/%d" % fd, AT_FDCWD, path, AT_SYMLINK_FOLLOW)
        if more:
            time.sleep(0.5)  # the name is seen and read before this write
            os.write(fd, more)
    finally:
        os.close(fd)


def _tmpfile_empty_path(c):
    _tmpfile_link(c.p("t.bin"), data(c.name, 4000), "empty-path")
    return {"t.bin": F(data(c.name, 4000))}


def _tmpfile_proc_fd(c):
    _tmpfile_link(c.p("t.bin"), data(c.name, 4000), "proc-fd")
    return {"t.bin": F(data(c.name, 4000))}


def _tmpfile_write_after(c):
    _tmpfile_link(c.p("t.bin"), data(c.name, 4000), "empty-path", more=b"written after linkat\n")
    return {"t.bin": F(data(c.name, 4000) + b"written after linkat\n")}


def _tmpfile_then_rename(c):
    _tmpfile_link(c.p(".f.txt.new"), data("new " + c.name, 2500), "proc-fd")
    os.rename(c.p(".f.txt.new"), c.p("f.txt"))
    return {"f.txt": F(data("new " + c.name, 2500))}


def test_detect_tmpfile_linkat():
    """An O_TMPFILE file written and given a name with linkat(): by
    AT_EMPTY_PATH and by /proc/self/fd with AT_SYMLINK_FOLLOW; written
    more 0.5 s after the linkat and closed (the kernel reports that close
    under the name '#<inode>', not the new name); linked to a temporary name and
    renamed over an existing file."""
    _run("detect_tmpfile_linkat", [
        Case("tmpfile-empty-path", _tmpfile_empty_path),
        Case("tmpfile-proc-fd", _tmpfile_proc_fd),
        Case("tmpfile-write-after", _tmpfile_write_after),
        Case("tmpfile-rename-over", _tmpfile_then_rename, seed=_seed_existing),
    ])


# ---------------------------------------------------------------- rename in

def _prep_staging_file(c):
    os.makedirs(c.staging)
    write_file(c.s("moving.txt"), data("staged " + c.name, 2200), mode=0o640, mtime=1400000000)


def _rename_from_tree(c):
    os.rename(c.s("moving.txt"), c.p("moved.txt"))
    return {"moved.txt": F(data("staged " + c.name, 2200), 0o640, 1400000000 * 10**9)}


def _prep_staging_dir(c):
    os.makedirs(c.s("tree", "inner"))
    write_file(c.s("tree", "one.txt"), "one " + c.name)
    write_file(c.s("tree", "inner", "two.txt"), "two " + c.name, mode=0o600)
    os.symlink("one.txt", c.s("tree", "ln"))


def _rename_dir_from_tree(c):
    os.rename(c.s("tree"), c.p("tree"))
    return {"tree": D(), "tree/inner": D(), "tree/one.txt": F(("one " + c.name).encode()),
            "tree/inner/two.txt": F(("two " + c.name).encode(), 0o600), "tree/ln": L("one.txt")}


def _rename_from_outside(c):
    write_file(c.o("outside.txt"), data("outside " + c.name, 2600), mode=0o600, mtime=1300000000)
    os.rename(c.o("outside.txt"), c.p("came-in.txt"))
    return {"came-in.txt": F(data("outside " + c.name, 2600), 0o600, 1300000000 * 10**9)}


def _rename_over_from_outside(c):
    write_file(c.o("replacement"), data("replacement " + c.name, 1700))
    os.rename(c.o("replacement"), c.p("f.txt"))
    return {"f.txt": F(data("replacement " + c.name, 1700))}


def _rename_dir_from_outside(c):
    top = c.o("outside-tree")
    os.makedirs(os.path.join(top, "a", "b"))
    write_file(os.path.join(top, "top.txt"), "top " + c.name)
    write_file(os.path.join(top, "a", "b", "leaf.txt"), "leaf " + c.name, mode=0o755)
    os.mkdir(os.path.join(top, "a", "empty"))
    os.symlink("../top.txt", os.path.join(top, "a", "ln"))
    os.rename(top, c.p("came-in"))
    return {"came-in": D(), "came-in/top.txt": F(("top " + c.name).encode()),
            "came-in/a": D(), "came-in/a/b": D(), "came-in/a/empty": D(),
            "came-in/a/b/leaf.txt": F(("leaf " + c.name).encode(), 0o755),
            "came-in/a/ln": L("../top.txt")}


def test_detect_rename_in():
    """rename() into the directory: a file and a directory tree from
    elsewhere in the synced tree, and a file, a file over an existing one
    and a directory tree from outside the tree (same file system)."""
    _run("detect_rename_in", [
        Case("from-tree-file", _rename_from_tree, prepare=_prep_staging_file),
        Case("from-tree-dir", _rename_dir_from_tree, prepare=_prep_staging_dir),
        Case("from-outside-file", _rename_from_outside),
        Case("from-outside-over", _rename_over_from_outside, seed=_seed_existing),
        Case("from-outside-dir", _rename_dir_from_outside),
    ])


# ---------------------------------------------------------------- renameat2

def _seed_two_files(c):
    write_file(c.p("x"), data("x " + c.name, 1100), mode=0o644, mtime=1200000000)
    write_file(c.p("y"), data("y " + c.name, 2300), mode=0o600, mtime=1250000000)


def _exchange_files(c):
    renameat2(c.p("x"), c.p("y"), RENAME_EXCHANGE)
    return {"x": F(data("y " + c.name, 2300), 0o600, 1250000000 * 10**9),
            "y": F(data("x " + c.name, 1100), 0o644, 1200000000 * 10**9)}


def _exchange_then_write(c):
    # The names stay (each holds the other file): later writes to them are
    # writes to files that are there, not through removed names.
    renameat2(c.p("x"), c.p("y"), RENAME_EXCHANGE)
    time.sleep(0.3)
    for name in ("x", "y"):
        with open(c.p(name), "r+b") as f:
            f.seek(10)
            f.write(b"written after the exchange")
    want = {}
    for name, was in (("x", data("y " + c.name, 2300)), ("y", data("x " + c.name, 1100))):
        want[name] = F(was[:10] + b"written after the exchange" + was[36:], 0o600 if name == "x" else 0o644)
    return want


def _seed_file_and_dir(c):
    write_file(c.p("f"), data("f " + c.name, 1300), mode=0o640)
    os.makedirs(c.p("sub", "deeper"))
    write_file(c.p("sub", "in.txt"), "in " + c.name)
    write_file(c.p("sub", "deeper", "leaf.txt"), "leaf " + c.name)


def _exchange_file_dir(c):
    renameat2(c.p("f"), c.p("sub"), RENAME_EXCHANGE)
    return {"f": D(), "f/in.txt": F(("in " + c.name).encode()), "f/deeper": D(),
            "f/deeper/leaf.txt": F(("leaf " + c.name).encode()),
            "sub": F(data("f " + c.name, 1300), 0o640)}


def _seed_two_dirs(c):
    os.makedirs(c.p("left"))
    os.makedirs(c.p("right"))
    write_file(c.p("left", "a.txt"), "left a " + c.name)
    write_file(c.p("right", "b.txt"), "right b " + c.name)


def _exchange_across_dirs(c):
    renameat2(c.p("left", "a.txt"), c.p("right", "b.txt"), RENAME_EXCHANGE)
    return {"left": D(), "right": D(),
            "left/a.txt": F(("right b " + c.name).encode()),
            "right/b.txt": F(("left a " + c.name).encode())}


def _noreplace(c):
    try:
        renameat2(c.p("x"), c.p("y"), RENAME_NOREPLACE)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
    else:
        fail("case %s: RENAME_NOREPLACE over an existing file succeeded" % c.name)
    renameat2(c.p("x"), c.p("z"), RENAME_NOREPLACE)
    return {"y": F(data("y " + c.name, 2300), 0o600, 1250000000 * 10**9),
            "z": F(data("x " + c.name, 1100), 0o644, 1200000000 * 10**9)}


def _noreplace_dir(c):
    renameat2(c.p("sub"), c.p("sub2"), RENAME_NOREPLACE)
    return {"f": F(data("f " + c.name, 1300), 0o640), "sub2": D(), "sub2/in.txt": F(("in " + c.name).encode()),
            "sub2/deeper": D(), "sub2/deeper/leaf.txt": F(("leaf " + c.name).encode())}


def test_detect_renameat2():
    """renameat2(): RENAME_EXCHANGE of two files (contents, modes and
    mtimes swap), of a file with a directory, and of two files in different
    directories; RENAME_NOREPLACE of a file and of a directory."""
    _run("detect_renameat2", [
        Case("exchange-files", _exchange_files, seed=_seed_two_files),
        Case("exchange-then-write", _exchange_then_write, seed=_seed_two_files),
        Case("exchange-file-dir", _exchange_file_dir, seed=_seed_file_and_dir),
        Case("exchange-across-dirs", _exchange_across_dirs, seed=_seed_two_dirs),
        Case("noreplace-file", _noreplace, seed=_seed_two_files),
        Case("noreplace-dir", _noreplace_dir, seed=_seed_file_and_dir),
    ])


# ---------------------------------------------------------------- copies

COPY_SIZE = 300 * 1024


def _prep_source(c):
    write_file(c.o("src.bin"), data("src " + c.name, COPY_SIZE), mode=0o600, mtime=1100000000)


def _cp(args):
    r = subprocess.run(["cp"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise OSError(errno.EIO, "cp %s: %s" % (" ".join(args), r.stdout.decode(errors="replace")))


def _cp_reflink(c):
    _cp(["--reflink=auto", c.o("src.bin"), c.p("copy.bin")])
    return {"copy.bin": F(data("src " + c.name, COPY_SIZE), 0o600)}


def _cp_reflink_preserve(c):
    _cp(["--reflink=auto", "-p", c.o("src.bin"), c.p("copy.bin")])
    return {"copy.bin": F(data("src " + c.name, COPY_SIZE), 0o600, 1100000000 * 10**9)}


def _cp_reflink_over(c):
    _cp(["--reflink=auto", c.o("src.bin"), c.p("f.txt")])  # same inode, mode kept
    return {"f.txt": F(data("src " + c.name, COPY_SIZE), 0o644)}


def _copy_range(src, dst, flags, offset=None, count=None):
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, flags, 0o644)
    try:
        if offset is None:
            while os.copy_file_range(fi, fo, 1 << 20):
                pass
        else:
            left = count
            while left:
                n = os.copy_file_range(fi, fo, left, offset, offset)
                check(n > 0, "copy_file_range copied nothing")
                offset += n
                left -= n
    finally:
        os.close(fi)
        os.close(fo)


def _copy_file_range_new(c):
    _copy_range(c.o("src.bin"), c.p("cfr.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    return {"cfr.bin": F(data("src " + c.name, COPY_SIZE))}


def _seed_big(c):
    write_file(c.p("big.bin"), data("big " + c.name, COPY_SIZE))


def _copy_file_range_into(c):
    _copy_range(c.o("src.bin"), c.p("big.bin"), os.O_WRONLY, offset=8192, count=12288)
    want = bytearray(data("big " + c.name, COPY_SIZE))
    want[8192:8192 + 12288] = data("src " + c.name, COPY_SIZE)[8192:8192 + 12288]
    return {"big.bin": F(bytes(want))}


def test_detect_copy():
    """Copies: cp --reflink=auto to a new name, with -p (mode and mtime
    kept) and over an existing file; os.copy_file_range to a new file and
    into the middle of an existing one (size unchanged)."""
    _run("detect_copy", [
        Case("cp-reflink", _cp_reflink, prepare=_prep_source),
        Case("cp-reflink-p", _cp_reflink_preserve, prepare=_prep_source),
        Case("cp-reflink-over", _cp_reflink_over, prepare=_prep_source, seed=_seed_existing),
        Case("copy_file_range-new", _copy_file_range_new, prepare=_prep_source),
        Case("copy_file_range-into", _copy_file_range_into, prepare=_prep_source, seed=_seed_big),
    ])


# ---------------------------------------------------------------- truncate, fallocate

SIZE_T = 100 * 1024


def _seed_t(c):
    write_file(c.p("t.bin"), data("t " + c.name, SIZE_T))


def _orig(c):
    return data("t " + c.name, SIZE_T)


def _truncate_shrink(c):
    os.truncate(c.p("t.bin"), 30000)  # by path: no open, no close
    return {"t.bin": F(_orig(c)[:30000])}


def _truncate_grow(c):
    os.truncate(c.p("t.bin"), SIZE_T + 50000)
    return {"t.bin": F(_orig(c) + bytes(50000))}


def _truncate_zero(c):
    os.truncate(c.p("t.bin"), 0)
    return {"t.bin": F(b"")}


def _ftruncate_shrink(c):
    fd = os.open(c.p("t.bin"), os.O_RDWR)
    try:
        os.ftruncate(fd, 4567)
    finally:
        os.close(fd)
    return {"t.bin": F(_orig(c)[:4567])}


def _posix_fallocate_grow(c):
    fd = os.open(c.p("t.bin"), os.O_RDWR)
    try:
        os.posix_fallocate(fd, SIZE_T - 100, 70000)
    finally:
        os.close(fd)
    return {"t.bin": F(_orig(c) + bytes(70000 - 100))}


def _punch_hole(c):
    fd = os.open(c.p("t.bin"), os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 16384 + 100)
    finally:
        os.close(fd)
    want = bytearray(_orig(c))
    want[4096:4096 + 16384 + 100] = bytes(16384 + 100)
    return {"t.bin": F(bytes(want))}


def test_detect_truncate():
    """Size changes without write(): truncate() by path shrinking, growing
    and to zero (no open, so no close); ftruncate() on an open fd;
    posix_fallocate() growing the file; fallocate() punching a hole with
    FALLOC_FL_KEEP_SIZE (size unchanged, the hole reads as zeros)."""
    _run("detect_truncate", [
        Case("truncate-shrink", _truncate_shrink, seed=_seed_t),
        Case("truncate-grow", _truncate_grow, seed=_seed_t),
        Case("truncate-zero", _truncate_zero, seed=_seed_t),
        Case("ftruncate-shrink", _ftruncate_shrink, seed=_seed_t),
        Case("posix_fallocate-grow", _posix_fallocate_grow, seed=_seed_t),
        Case("punch-hole", _punch_hole, seed=_seed_t),
    ])


# ---------------------------------------------------------------- mmap

SIZE_M = 64 * 1024


def _seed_m(c):
    write_file(c.p("m.bin"), data("m " + c.name, SIZE_M))


def _mmap_write(c):
    """Writes through a shared mapping and msync; returns (fd, mapping,
    expected content); both are still open."""
    fd = os.open(c.p("m.bin"), os.O_RDWR)
    mm = mmap.mmap(fd, SIZE_M, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    want = bytearray(data("m " + c.name, SIZE_M))
    for off in (0, 5000, SIZE_M - 300):
        patch = ("mmap write at %d in %s\n" % (off, c.name)).encode()
        mm[off:off + len(patch)] = patch
        want[off:off + len(patch)] = patch
    mm.flush()
    return fd, mm, bytes(want)


def test_detect_mmap():
    """Writes through mmap(MAP_SHARED) and msync() to an existing file:
    once with the mapping and the fd closed right after, once with both
    kept open (no event at all comes until the last mapping goes: the
    agent's verification pass, run every 3 s here, must find the content
    while the file stays mapped), then closed. In the fresh directory the
    file is made 0.5 s before the mmap writes, so they change a file
    already seen."""
    cases = [Case("mmap-closed", None, seed=_seed_m), Case("mmap-kept-open", None, seed=_seed_m)]
    with Env("detect_mmap") as env:
        srv, a, b, ctxs = _setup(env, cases, args=["--verify-interval", "3s"])
        done, kept = [], []
        try:
            for case, c in ctxs:
                if c.where == "fresh":
                    os.mkdir(c.d)
                    case.seed(c)
                    time.sleep(0.5)  # the new file is read before the mmap writes
                fd, mm, want = _mmap_write(c)
                if case.name == "mmap-closed":
                    mm.close()
                    os.close(fd)
                else:
                    kept.append((fd, mm))
                done.append((c, {"m.bin": F(want)}))
            assert_converged(srv, [a, b], timeout=30,
                             msg="mmap writes; the files of mmap-kept-open are still mapped and open")
            _check_local(a.dir, done, "detect_mmap, still mapped")
        finally:
            for fd, mm in kept:
                mm.close()
                os.close(fd)
        assert_converged(srv, [a, b], timeout=30, msg="mmap writes, every mapping closed")
        _check_local(a.dir, done, "detect_mmap, closed")


# ---------------------------------------------------------------- a file kept open

LOG_FOR = 8.0
LOG_EVERY = 0.2
LOG_BOUND = 15.0


def test_detect_open_append():
    """A log kept open and appended to every 0.2 s for 8 s, in a synced
    directory (the file was synced with a first line) and in a fresh one
    (the file is new): while it stays open the server's copy is always a
    prefix of what was written and grows, each line on the server within
    15 s of being written; B never holds anything but a prefix; after the
    close everything converges."""
    def seed(c):
        write_file(c.p("app.log"), "log of %s starts\n" % c.name)

    cases = [Case("log", None, seed=seed)]
    with Env("detect_open_append") as env:
        srv, a, b, ctxs = _setup(env, cases)
        logs = []
        for case, c in ctxs:
            if c.where == "fresh":
                os.mkdir(c.d)
                fd = os.open(c.p("app.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                content = b""
            else:
                fd = os.open(c.p("app.log"), os.O_WRONLY | os.O_APPEND)
                content = read_bytes(c.p("app.log"))
            rel = c.name + "/app.log"
            logs.append({"c": c, "fd": fd, "rel": rel, "content": content, "start": len(content),
                         "marks": [], "seen": [], "srv": os.path.join(srv.tree(a.token), rel),
                         "b": os.path.join(b.dir, rel)})
        try:
            t0 = time.monotonic()
            n = 0
            while True:
                now = time.monotonic()
                writing = now - t0 < LOG_FOR
                if writing and now >= t0 + n * LOG_EVERY:
                    for lg in logs:
                        line = ("%.3f line %d of %s\n" % (now - t0, n, lg["c"].name)).encode()
                        os.write(lg["fd"], line)
                        lg["content"] += line
                        lg["marks"].append((now, len(lg["content"])))
                    n += 1
                now = time.monotonic()
                all_there = True
                for lg in logs:
                    name = lg["c"].name
                    try:
                        on_srv = read_bytes(lg["srv"])
                    except FileNotFoundError:
                        on_srv = None
                    if on_srv is not None:
                        check(lg["content"].startswith(on_srv),
                              "case %s: while open, the server's %s (%d bytes) is not a prefix of what "
                              "was written (%d bytes): %r" % (name, lg["rel"], len(on_srv),
                                                             len(lg["content"]), on_srv[-200:]))
                        if not lg["seen"] or lg["seen"][-1][1] != len(on_srv):
                            lg["seen"].append((round(now - t0, 2), len(on_srv)))
                    have = len(on_srv) if on_srv is not None else -1
                    due = [ln for t, ln in lg["marks"] if t <= now - LOG_BOUND]
                    if due and have < due[-1]:
                        fail("case %s: %s is open and appended to; a line written %.0f s ago (%d bytes "
                             "written by then) is not on the server, which holds %s; server sizes seen "
                             "(s, bytes): %s" % (name, lg["rel"], LOG_BOUND, due[-1],
                                                 "nothing" if on_srv is None else "%d bytes" % have,
                                                 lg["seen"]))
                    try:
                        on_b = read_bytes(lg["b"])
                    except FileNotFoundError:
                        on_b = None
                    if on_b is not None:
                        check(lg["content"].startswith(on_b),
                              "case %s: while open, B's %s (%d bytes) is not a prefix of what was "
                              "written (%d bytes)" % (name, lg["rel"], len(on_b), len(lg["content"])))
                    if have != len(lg["content"]):
                        all_there = False
                if not writing and all_there:
                    break
                check(a.running() and b.running() and srv.running(), "a process exited")
                time.sleep(0.05)
            for lg in logs:
                grew = [s for s in lg["seen"] if s[1] > lg["start"]]
                check(grew, "case %s: the server's copy never grew while open: %s" % (lg["c"].name, lg["seen"]))
        finally:
            for lg in logs:
                os.close(lg["fd"])
        assert_converged(srv, [a, b], timeout=30, msg="the logs closed")
        _check_local(a.dir, [(lg["c"], {"app.log": F(lg["content"])}) for lg in logs], "detect_open_append")


# ---------------------------------------------------------------- attributes alone

def _seed_attr(c):
    write_file(c.p("f.txt"), data("attr " + c.name, 1500), mode=0o644, mtime=1000000000)


def _orig_attr(c):
    return data("attr " + c.name, 1500)


def _chmod_private(c):
    os.chmod(c.p("f.txt"), 0o600)
    return {"f.txt": F(_orig_attr(c), 0o600, 1000000000 * 10**9)}


def _chmod_exec(c):
    os.chmod(c.p("f.txt"), 0o755)
    return {"f.txt": F(_orig_attr(c), 0o755, 1000000000 * 10**9)}


def _seed_attr_dir(c):
    os.mkdir(c.p("sub"))
    write_file(c.p("sub", "in.txt"), "in " + c.name)


def _chmod_dir(c):
    os.chmod(c.p("sub"), 0o750)
    return {"sub": D(0o750), "sub/in.txt": F(("in " + c.name).encode())}


UTIME_NS = 1500000000123456789


def _utime_ns(c):
    os.utime(c.p("f.txt"), ns=(1600000000987654321, UTIME_NS))
    return {"f.txt": F(_orig_attr(c), 0o644, UTIME_NS)}


def _touch_now(c):
    os.utime(c.p("f.txt"))
    return {"f.txt": F(_orig_attr(c), 0o644, os.lstat(c.p("f.txt")).st_mtime_ns)}


OTHER_UID, OTHER_GID = 12345, 23456


def _chown(c):
    os.chown(c.p("f.txt"), OTHER_UID, OTHER_GID)
    c.inode = os.lstat(c.p("f.txt")).st_ino
    return {"f.txt": F(_orig_attr(c), 0o644, 1000000000 * 10**9)}


def _chmod_and_utime(c):
    os.chmod(c.p("f.txt"), 0o640)
    os.utime(c.p("f.txt"), ns=(UTIME_NS, UTIME_NS + 1))
    return {"f.txt": F(_orig_attr(c), 0o640, UTIME_NS + 1)}


def test_detect_attrs():
    """Metadata alone: chmod of a file (0o600, 0o755) and of a directory;
    os.utime with ns= to a past time and to now; chmod and utime together;
    chown to another uid and gid. The owner is not synced (modes, mtimes
    and content are): a chown must not disturb convergence, and A's file
    keeps its new owner and its inode (the agent neither reverts it nor
    replaces the file)."""
    if os.geteuid() != 0:
        fail("detect_attrs needs root for chown (the tests run as root)")

    def owner_kept(srv, a, b, done):
        time.sleep(2)  # a late reaction of the agent would show now
        for case, c, _ in done:
            if case.name != "chown":
                continue
            st = os.lstat(c.p("f.txt"))
            check((st.st_uid, st.st_gid) == (OTHER_UID, OTHER_GID),
                  "case chown (%s): A's f.txt is owned by %d:%d, it was chowned to %d:%d"
                  % (c.where, st.st_uid, st.st_gid, OTHER_UID, OTHER_GID))
            check(st.st_ino == c.inode, "case chown (%s): A's f.txt was replaced (inode %d, was %d)"
                  % (c.where, st.st_ino, c.inode))
        assert_converged(srv, [a, b], timeout=30, msg="2 s after converging", verify=False)

    _run("detect_attrs", [
        Case("chmod-600", _chmod_private, seed=_seed_attr),
        Case("chmod-755", _chmod_exec, seed=_seed_attr),
        Case("chmod-dir", _chmod_dir, seed=_seed_attr_dir),
        Case("utime-ns", _utime_ns, seed=_seed_attr),
        Case("touch-now", _touch_now, seed=_seed_attr),
        Case("chmod-utime", _chmod_and_utime, seed=_seed_attr),
        Case("chown", _chown, seed=_seed_attr),
    ], after=owner_kept)


# ---------------------------------------------------------------- directory modes

def _mkdir_700(c):
    os.mkdir(c.p("priv"), 0o700)
    os.chmod(c.p("priv"), 0o700)  # whatever the umask
    write_file(c.p("priv", "secret.txt"), "secret " + c.name, mode=0o600)
    os.mkdir(c.p("priv", "sub"), 0o700)
    os.chmod(c.p("priv", "sub"), 0o700)
    write_file(c.p("priv", "sub", "more.txt"), "more " + c.name)
    return {"priv": D(0o700), "priv/secret.txt": F(("secret " + c.name).encode(), 0o600),
            "priv/sub": D(0o700), "priv/sub/more.txt": F(("more " + c.name).encode())}


def _open_700(c):
    os.chmod(c.p("priv"), 0o755)
    write_file(c.p("priv", "added.txt"), "added " + c.name)
    return {"priv": D(0o755), "priv/secret.txt": F(("secret " + c.name).encode(), 0o600),
            "priv/added.txt": F(("added " + c.name).encode()),
            "priv/sub": D(0o700), "priv/sub/more.txt": F(("more " + c.name).encode())}


def _mkdir_500(c):
    os.mkdir(c.p("ro"))
    write_file(c.p("ro", "r.txt"), "read only dir " + c.name, mode=0o444)
    os.mkdir(c.p("ro", "inner"))
    write_file(c.p("ro", "inner", "i.txt"), "inner " + c.name)
    os.chmod(c.p("ro", "inner"), 0o500)
    os.chmod(c.p("ro"), 0o500)
    return {"ro": D(0o500), "ro/r.txt": F(("read only dir " + c.name).encode(), 0o444),
            "ro/inner": D(0o500), "ro/inner/i.txt": F(("inner " + c.name).encode())}


def _open_500(c):
    os.chmod(c.p("ro"), 0o755)
    os.chmod(c.p("ro", "inner"), 0o755)
    write_file(c.p("ro", "inner", "new.txt"), "new " + c.name)
    return {"ro": D(0o755), "ro/r.txt": F(("read only dir " + c.name).encode(), 0o444),
            "ro/inner": D(0o755), "ro/inner/i.txt": F(("inner " + c.name).encode()),
            "ro/inner/new.txt": F(("new " + c.name).encode())}


def test_detect_dir_modes():
    """Directories with restrictive modes: made 0o700 (with a 0o700
    subdirectory) and filled, made, filled and then set to 0o500 (with a
    0o500 subdirectory); once that converged they are opened up to 0o755
    and given a new file. Also a 0o700 directory that was synced for a
    while before being opened up."""
    _run("detect_dir_modes", [
        Case("mkdir-700", _mkdir_700, later=_open_700),
        Case("dir-500", _mkdir_500, later=_open_500),
        Case("made-700-opened", _open_700, seed=_mkdir_700),
    ])


# ---------------------------------------------------------------- new directory race

RACE_ROUNDS = 300


def _race_fill(top, i):
    """A directory made and filled at once, three ways; returns what the
    test made {relpath below top: (kind, content)}."""
    d = os.path.join(top, "r%03d" % i)
    r = "r%03d/" % i
    k = i % 3
    if k == 0:
        os.mkdir(d)
        write_file(os.path.join(d, "f0"), "f0 %d\n" % i)
        os.mkdir(os.path.join(d, "sub"))
        write_file(os.path.join(d, "sub", "f1"), "f1 %d\n" % i)
        os.mkdir(os.path.join(d, "sub", "deeper"))
        write_file(os.path.join(d, "sub", "deeper", "f2"), "f2 %d\n" % i)
        made = {"f0": b"f0 %d\n" % i, "sub": None, "sub/f1": b"f1 %d\n" % i,
                "sub/deeper": None, "sub/deeper/f2": b"f2 %d\n" % i}
    elif k == 1:
        os.makedirs(os.path.join(d, "a", "b", "c"))
        write_file(os.path.join(d, "a", "b", "c", "leaf"), "leaf %d\n" % i)
        write_file(os.path.join(d, "a", "mid"), "mid %d\n" % i)
        os.mkdir(os.path.join(d, "empty"))
        made = {"a": None, "a/b": None, "a/b/c": None, "a/b/c/leaf": b"leaf %d\n" % i,
                "a/mid": b"mid %d\n" % i, "empty": None}
    else:
        os.mkdir(d)
        os.mkdir(os.path.join(d, "x"))
        write_file(os.path.join(d, "x", "first"), "first %d\n" % i)
        write_file(os.path.join(d, "second"), "second %d\n" % i)
        os.symlink("x/first", os.path.join(d, "ln"))
        made = {"x": None, "x/first": b"first %d\n" % i, "second": b"second %d\n" % i, "ln": "x/first"}
    out = {r[:-1]: ("dir", None)}
    for rel, v in made.items():
        kind = "dir" if v is None else "link" if isinstance(v, str) else "file"
        out[r + rel] = (kind, v)
    return out


def test_detect_new_dir_race():
    """A directory made and at once (no pause) filled with files and with
    subdirectories holding files, before the agent can watch it: 300
    times, in a synced directory and in directories themselves made just
    before. Everything arrives, and A still holds exactly what was made."""
    with Env("detect_new_dir_race") as env:
        os.umask(0o022)
        root = env.path("A")
        os.makedirs(os.path.join(root, "synced-race"))
        srv, a, b = _start(env, root)
        assert_converged(srv, [a, b], msg="setup", verify=False)
        time.sleep(SETTLE)
        made = {"synced-race": ("dir", None)}
        for i in range(RACE_ROUNDS):
            if i % 2:
                top = "synced-race"
            else:
                top = "fresh-race-%03d" % i
                os.mkdir(os.path.join(root, top))
                made[top] = ("dir", None)
            for rel, v in _race_fill(os.path.join(root, top), i).items():
                made[top + "/" + rel] = v
        snap = assert_converged(srv, [a, b], timeout=30, msg="new directories filled at once")
        got = {k: v[:2] for k, v in snap.items()}
        check(got == made, "A does not hold what the test made:\n%s"
              % harness.diff_snapshots(got, made, "A", "made"))
