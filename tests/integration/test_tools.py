"""Real tools: what cp, rsync, tar, git, vim, sed, SQLite and stress-ng do
on computer A converges exactly on computer B and on the server (kind,
content, file and directory modes, symlink targets, file mtimes in ns),
and backupsyncd --verify finds nothing wrong."""

import glob
import hashlib
import os
import shutil
import sqlite3
import subprocess
import time

from harness import (Env, TestFailure, assert_converged, check, fail,
                     server_snapshot, snapshot, wait_content, write_file)

# A tool's changes must arrive within this; the bigger trees get more.
CONVERGE = 45.0
CONVERGE_BIG = 60.0


def _run(argv, cwd=None, env=None, timeout=120):
    """Run argv (a list, or a string for sh -c); fail with its output
    unless it exits 0. Returns its stdout+stderr as text."""
    if isinstance(argv, str):
        argv = ["sh", "-c", argv]
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("%s did not finish within %d s" % (" ".join(argv)[:300], timeout))
    out = r.stdout.decode("utf-8", "replace")
    check(r.returncode == 0, "%s exited %d:\n%s" % (" ".join(argv)[:300], r.returncode, out[-4000:]))
    return out


def _need(tool):
    if not shutil.which(tool):
        fail("%s is not installed (tools/deps installs it)" % tool)


def _describe(v):
    kind, content, mode, mtime = v
    if kind == "file" and isinstance(content, bytes):
        content = "%d bytes sha256 %s" % (len(content), hashlib.sha256(content).hexdigest()[:12])
    return "%s %s mode %s mtime %s" % (kind, content if kind != "file" else "(" + content + ")",
                                       "%o" % mode if mode is not None else "-", mtime)


def _field_diff(snap, ss, name, limit=25):
    """Field by field: what differs between an agent's tree and the
    server's record (the harness's diff cuts long values short)."""
    lines = []
    for k in sorted(set(snap) | set(ss)):
        if k not in ss:
            lines.append("  only on %s: %r %s" % (name, k, _describe(snap[k])))
        elif k not in snap:
            lines.append("  only on the server: %r %s" % (k, _describe(ss[k])))
        elif snap[k] != ss[k]:
            fields = [f for f, x, y in zip(("kind", "content", "mode", "mtime"), snap[k], ss[k]) if x != y]
            lines.append("  %r differs in %s: %s: %s / server: %s"
                         % (k, "+".join(fields), name, _describe(snap[k]), _describe(ss[k])))
    if len(lines) > limit:
        lines = lines[:limit] + ["  ... and %d more" % (len(lines) - limit)]
    return "\n".join(lines)


def _converged(srv, agents, timeout=None, msg="", verify=True):
    """assert_converged(); on failure, also say field by field what
    differs on each agent."""
    try:
        return assert_converged(srv, agents, timeout=timeout or CONVERGE, msg=msg, verify=verify)
    except TestFailure as e:
        detail = []
        try:
            ss = server_snapshot(srv, agents[0].token)
            for ag in agents:
                d = _field_diff(snapshot(ag.dir, modes=True, mtimes=True), ss, ag.name)
                if d:
                    detail.append("%s vs server:\n%s" % (ag.name, d))
        except Exception as e2:  # keep the original failure
            detail.append("(no detail: %r)" % (e2,))
        raise TestFailure("%s\n--- field by field ---\n%s" % (e, "\n".join(detail))) from None


def _pair(env, name, args=()):
    """Server + agent A (registers, empty directory) + agent B (joins),
    converged on the empty tree."""
    srv = env.server()
    adir = env.path("A")
    os.makedirs(adir)
    a = env.agent("A", adir, args=list(args))
    b = env.agent("B", env.path("B"), token=a.token, args=list(args))
    _converged(srv, [a, b], msg="%s: empty tree at the start" % name, verify=False)
    return srv, a, b


def _count(root):
    """(files, directories, symlinks) below root."""
    files = dirs = links = 0
    for kind, _content, *_rest in snapshot(root, modes=False).values():
        if kind == "file":
            files += 1
        elif kind == "dir":
            dirs += 1
        elif kind == "link":
            links += 1
    return files, dirs, links


def _varied_tree(root):
    """A small tree with unusual directory and file modes and old mtimes
    with nanoseconds, for the tools that copy modes and times."""
    spec = [  # (directory, its mode)
        ("private", 0o700),
        ("group", 0o750),
        ("readonly", 0o555),
        ("group/inner", 0o710),
        ("open", 0o777),
    ]
    os.makedirs(root)
    for i, (d, _m) in enumerate(spec):
        p = os.path.join(root, d)
        os.makedirs(p, exist_ok=True)
        for j, fmode in enumerate((0o600, 0o644, 0o755, 0o444, 0o640)):
            f = os.path.join(p, "f%d-%o" % (j, fmode))
            write_file(f, ("%s file %d\n" % (d, j)) * (j * 37 + 1))
            os.chmod(f, fmode)
            ns = (1000000000 + i * 86400 + j * 3601) * 10 ** 9 + 123456789 + j
            os.utime(f, ns=(ns, ns))
        os.symlink("f1-644", os.path.join(p, "link-to-f1"))
    write_file(os.path.join(root, "top-exec"), "#!/bin/sh\nexit 0\n", mode=0o700)
    # modes last: readonly/ must be filled before it becomes 0555
    for d, m in sorted(spec, key=lambda s: -s[0].count("/")):
        os.chmod(os.path.join(root, d), m)


def _doc_subset(target_files, start=""):
    """Top-level entries of /usr/share/doc (package directories and
    symlinks to them), in name order from `start`, until they hold about
    target_files files."""
    names, total = [], 0
    for n in sorted(os.listdir("/usr/share/doc")):
        if n < start:
            continue
        p = os.path.join("/usr/share/doc", n)
        if os.path.islink(p):
            names.append(n)
            continue
        if not os.path.isdir(p):
            continue
        c = sum(len(fs) for _d, _ds, fs in os.walk(p))
        if c > target_files // 2:
            continue  # keep it to many small packages
        names.append(n)
        total += c
        if total >= target_files:
            break
    check(total >= target_files // 2, "/usr/share/doc holds too few files (%d)" % total)
    return names


def test_tools_cp_a():
    """cp -a of real header trees (hundreds of files, dozens of
    directories) and of a tree with unusual directory modes (0700, 0555
    filled before its mode is set, ...) and old ns mtimes converges
    exactly; so do cp -a over the copy, hard links (ln, cp -al) next to
    synced files, and copies of known content and chmod -R made while B
    is off."""
    with Env("tools_cp_a") as env:
        srv, a, b = _pair(env, "cp -a")
        cands = ["linux", "scsi", "sound", "rdma", "misc", "mtd", "drm", "xen"]
        cands += [os.path.basename(p) for p in sorted(glob.glob("/usr/include/*-linux-gnu"))]
        src = [os.path.join("/usr/include", c) for c in cands
               if os.path.isdir(os.path.join("/usr/include", c))]
        check(src, "no /usr/include subtrees to copy")
        inc = os.path.join(a.dir, "include")
        os.mkdir(inc)
        _run(["cp", "-a"] + src + [inc])
        varied = env.path("varied")
        _varied_tree(varied)
        _run(["cp", "-a", varied, os.path.join(a.dir, "varied")])
        files, dirs, _links = _count(a.dir)
        check(files >= 300 and dirs >= 50,
              "test setup: only %d files and %d directories copied" % (files, dirs))
        _converged(srv, [a, b], timeout=CONVERGE_BIG, msg="after cp -a of %d files, %d dirs" % (files, dirs))

        # a second cp -a over the existing copy: same content, times, modes
        _run(["cp", "-a", varied + "/.", os.path.join(a.dir, "varied")])
        _run(["cp", "-a", src[0], os.path.join(a.dir, "include")])
        # and hard links (ln, cp -al) next to synced files
        V = lambda *p: os.path.join(a.dir, "varied", *p)
        _run(["ln", V("group", "f2-755"), V("group", "f2-755.hardlink")])
        _run(["cp", "-al", V("private"), V("private-links")])
        _converged(srv, [a, b], timeout=CONVERGE, msg="after cp -a over the copy, ln and cp -al")

        # B is off while A copies content it already has to new places
        # and changes modes; B catches up when it comes back
        b.stop()
        _run(["cp", "-a", os.path.join(a.dir, "varied"), os.path.join(a.dir, "varied-copy")])
        _run(["cp", "-a", os.path.join(inc, "scsi" if os.path.isdir(os.path.join(inc, "scsi")) else
                                       os.path.basename(src[0])), os.path.join(a.dir, "copy2")])
        _run(["chmod", "-R", "go-rwx", os.path.join(a.dir, "varied")])
        b.start()
        _converged(srv, [a, b], timeout=CONVERGE_BIG, msg="B back after copies and chmod -R while it was off")


def test_tools_rsync_a():
    """rsync -a of a real tree (/usr/lib/python3*/email and part of
    /usr/share/doc, with its symlinks), then a second rsync -a --delete
    after edits, deletions, mode-only and mtime-only changes in the
    source converges exactly; so does a third rsync that undoes all of
    it while B is off."""
    _need("rsync")
    with Env("tools_rsync_a") as env:
        srv, a, b = _pair(env, "rsync -a")
        stage = env.path("stage")
        os.makedirs(os.path.join(stage, "doc"))
        emails = sorted(glob.glob("/usr/lib/python3*/email"))
        check(emails, "no /usr/lib/python3*/email")
        _run(["rsync", "-a", emails[-1], stage + "/"])
        docs = [os.path.join("/usr/share/doc", n) for n in _doc_subset(250)]
        _run(["rsync", "-a"] + docs + [os.path.join(stage, "doc") + "/"])
        _varied_tree(os.path.join(stage, "varied"))
        dst = os.path.join(a.dir, "r")
        _run(["rsync", "-a", stage + "/", dst + "/"])
        files, dirs, links = _count(a.dir)
        check(files >= 200, "test setup: only %d files" % files)
        _converged(srv, [a, b], timeout=CONVERGE_BIG,
                         msg="after rsync -a of %d files, %d dirs, %d links" % (files, dirs, links))

        pristine = env.path("pristine")
        _run(["cp", "-a", stage, pristine])

        # change the source in every way, rsync again
        regular = sorted(k for k, v in snapshot(stage, modes=False).items() if v[0] == "file")
        for i, rel in enumerate(regular[:60]):
            p = os.path.join(stage, rel)
            k = i % 5
            if k == 0:
                with open(p, "ab") as f:
                    f.write(b"appended by the test\n")
            elif k == 1:
                os.unlink(p)
            elif k == 2:
                os.chmod(p, 0o600)                       # mode only
            elif k == 3:
                os.utime(p, ns=(1200000000123456789, 1200000000123456789))  # mtime only
            else:
                write_file(p + ".new", "new file %d\n" % i, mode=0o640)
        os.chmod(os.path.join(stage, "varied", "group"), 0o700)  # directory mode only
        shutil.rmtree(os.path.join(stage, "varied", "open"))
        _run(["rsync", "-a", "--delete", stage + "/", dst + "/"])
        _converged(srv, [a, b], timeout=CONVERGE, msg="after the second rsync -a --delete")

        # B is off while rsync puts every change back: the content, modes
        # and times B saw before, which it must take again
        b.stop()
        _run(["rsync", "-a", "--delete", pristine + "/", dst + "/"])
        b.start()
        _converged(srv, [a, b], timeout=CONVERGE, msg="B back after rsync -a --delete undid the changes")


def test_tools_tar_x():
    """tar -x of an archive of part of /usr/share/doc plus a tree with
    unusual directory modes: tar creates each directory, fills it, and
    sets its mode and the files' mtimes afterwards; all converges
    exactly. Extracting again over the tree, and into a second
    directory, converges too, also when B was off meanwhile."""
    with Env("tools_tar_x") as env:
        srv, a, b = _pair(env, "tar -x")
        stage = env.path("stage")
        os.makedirs(stage)
        docs = _doc_subset(400, start="l")
        _run(["cp", "-a"] + [os.path.join("/usr/share/doc", n) for n in docs] + [stage])
        _varied_tree(os.path.join(stage, "varied"))
        tarball = env.path("doc.tar")
        _run(["tar", "-c", "-f", tarball, "-C", stage, "."])
        out = os.path.join(a.dir, "x")
        os.mkdir(out)
        _run(["tar", "-x", "-f", tarball, "-C", out])
        files, dirs, links = _count(a.dir)
        check(files >= 200, "test setup: only %d files extracted" % files)
        _converged(srv, [a, b], timeout=CONVERGE_BIG,
                         msg="after tar -x of %d files, %d dirs, %d links" % (files, dirs, links))

        # the same archive again over the extracted tree (tar replaces
        # each file, sets the same modes and times), then a second copy
        # right next to it
        _run(["tar", "-x", "-f", tarball, "-C", out])
        out2 = os.path.join(a.dir, "x2")
        os.mkdir(out2)
        _run(["tar", "-x", "-f", tarball, "-C", out2])
        _converged(srv, [a, b], timeout=CONVERGE_BIG, msg="after tar -x again and into x2")

        # B is off while x2 is changed and then extracted again over
        # (content, modes and times B knows come back)
        b.stop()
        _run(["chmod", "-R", "u=rwX,go=", out2])
        for n, (rel, v) in enumerate(sorted(snapshot(out2, modes=False).items())):
            if v[0] == "file" and n % 4 == 0:
                write_file(os.path.join(out2, rel), "changed while B was off\n")
        _run(["touch", "-d", "@1000000000", os.path.join(out2, "varied", "private", "f0-600")])
        _run(["tar", "-x", "-f", tarball, "-C", out2])
        b.start()
        _converged(srv, [a, b], timeout=CONVERGE_BIG, msg="B back after x2 was changed and extracted again")


def _git_env(home):
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".gitconfig"), "w") as f:
        f.write("[user]\n\tname = Test User\n\temail = test@example.com\n"
                "[init]\n\tdefaultBranch = main\n"
                "[gc]\n\tautoDetach = false\n"
                "[advice]\n\tdetachedHead = false\n"
                "[safe]\n\tdirectory = *\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    e.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    return e


def _git(env, repo, *args):
    return _run(["git", "-C", repo] + list(args), env=env)


def _commit(genv, repo, files, msg):
    for rel, data in files.items():
        write_file(os.path.join(repo, rel), data)
    _git(genv, repo, "add", "-A")
    _git(genv, repo, "commit", "-q", "-m", msg)
    return _git(genv, repo, "rev-parse", "HEAD").strip()


def test_tools_git():
    """git clone into A, then checkout of an old commit, checkout -b,
    commit, checkout -, checkout of the branch, commit and gc in A: B's
    copy converges exactly, passes git fsck --full and has A's HEAD and
    status (git writes objects read-only, with link() then unlink()).
    The same after more branch switches, commits and gc --prune=now
    while B is off."""
    _need("git")
    with Env("tools_git") as env:
        srv, a, b = _pair(env, "git")
        genv = _git_env(env.path("home"))
        origin = env.path("origin")
        _run(["git", "init", "-q", origin], env=genv)
        commits = []
        for i in range(6):
            files = {"README": "readme version %d\n" % i,
                     "src/main%d.c" % i: "int main(void) { return %d; }\n" % i,
                     "docs/notes.txt": "".join("note %d.%d\n" % (i, j) for j in range(i * 20))}
            commits.append(_commit(genv, origin, files, "commit %d" % i))
        _git(genv, origin, "branch", "feature", commits[2])
        _git(genv, origin, "tag", "v1", commits[3])
        _git(genv, origin, "checkout", "-q", "feature")
        _commit(genv, origin, {"feature.txt": "feature work\n"}, "feature commit")
        _git(genv, origin, "checkout", "-q", "main")

        repo = os.path.join(a.dir, "repo")
        _run(["git", "clone", "-q", origin, repo], env=genv)
        _converged(srv, [a, b], timeout=CONVERGE, msg="after git clone")

        _git(genv, repo, "checkout", "-q", commits[1])
        _git(genv, repo, "checkout", "-q", "-b", "side")
        _commit(genv, repo, {"side.txt": "side 1\n", "README": "readme on side\n"}, "side 1")
        _git(genv, repo, "checkout", "-q", "-")
        _git(genv, repo, "checkout", "-q", "side")
        os.chmod(os.path.join(repo, "side.txt"), 0o755)
        head = _commit(genv, repo, {"side2.txt": "side 2\n" * 50}, "side 2")
        _git(genv, repo, "gc", "-q")
        _converged(srv, [a, b], timeout=CONVERGE, msg="after checkouts, commits and gc")

        _git_same(env, genv, repo, os.path.join(b.dir, "repo"), head, "side", "1")

        # B is off while A switches branches back and forth (B gets back
        # file contents it has seen before), commits, and gc prunes
        b.stop()
        _git(genv, repo, "checkout", "-q", "main")
        _git(genv, repo, "checkout", "-q", "feature")
        _commit(genv, repo, {"feature.txt": "more feature work\n"}, "feature 2")
        _git(genv, repo, "checkout", "-q", commits[4])
        _git(genv, repo, "checkout", "-q", "side")
        head = _commit(genv, repo, {"README": "readme version 5\n", "side.txt": "side 1\n"}, "side 3")
        _git(genv, repo, "gc", "-q", "--prune=now")
        b.start()
        _converged(srv, [a, b], timeout=CONVERGE, msg="B back after branch switches, commits and gc --prune=now")
        _git_same(env, genv, repo, os.path.join(b.dir, "repo"), head, "side", "2")


def _git_same(env, genv, repo, brepo, head, branch, tag):
    """B's repository brepo is sound and in the same state as A's repo.
    Checked on copies, so that git's index refreshes touch neither tree."""
    ca, cb = env.path("check-A" + tag), env.path("check-B" + tag)
    _run(["cp", "-a", repo, ca])
    _run(["cp", "-a", brepo, cb])
    _git(genv, cb, "fsck", "--full", "--strict")
    head_b = _git(genv, cb, "rev-parse", "HEAD").strip()
    check(head_b == head, "B's HEAD is %s, A committed %s" % (head_b, head))
    sym = _git(genv, cb, "symbolic-ref", "HEAD").strip()
    check(sym == "refs/heads/" + branch, "B's HEAD is %s, not branch %s" % (sym, branch))
    st_a = _git(genv, ca, "status", "--porcelain=v1", "--branch")
    st_b = _git(genv, cb, "status", "--porcelain=v1", "--branch")
    check(st_a == st_b, "git status differs:\nA:\n%s\nB:\n%s" % (st_a, st_b))
    check(st_b.strip() == "## " + branch, "B's working tree is not clean:\n%s" % st_b)

    def refs(r):
        return _git(genv, r, "for-each-ref", "--format=%(refname) %(objectname)")
    check(refs(ca) == refs(cb), "refs differ:\nA:\n%s\nB:\n%s" % (refs(ca), refs(cb)))
    shutil.rmtree(ca)
    shutil.rmtree(cb)


def _vim(path, setting, line, saves=1):
    # backupskip= : vim makes no backup at all of files in /tmp by default
    argv = ["vim", "-u", "NONE", "-N", "-n", "-i", "NONE", "-es", "-c", "set backupskip=", "-c", setting]
    for k in range(saves):
        argv += ["-c", "normal Go%s %d" % (line, k), "-c", "w"]
    argv += ["-c", "q", os.path.basename(path)]
    _run(argv, cwd=os.path.dirname(path))


def test_tools_vim():
    """vim saves in A with writebackup (backupcopy=auto), nowritebackup
    nobackup, backupcopy=yes, backupcopy=no and a kept backup file~,
    several saves each, back to back (the last round while B is off):
    converges exactly, with the content vim wrote and the file modes
    kept."""
    _need("vim")
    with Env("tools_vim") as env:
        # Every file vim makes, its backups too, must sync exactly: without
        # the default ignores, which keep backups and swap files local.
        srv, a, b = _pair(env, "vim", args=["--default-ignores", "no"])
        variants = [
            ("wb-auto.txt", 0o644, "set writebackup"),
            ("nowb.txt", 0o644, "set nowritebackup nobackup"),
            ("bc-yes.txt", 0o600, "set writebackup backupcopy=yes"),
            ("bc-no.txt", 0o640, "set writebackup backupcopy=no"),
            ("bc-no-exec.sh", 0o755, "set nowritebackup backupcopy=no"),
            ("keep-backup.txt", 0o644, "set backup backupcopy=no"),
        ]
        os.mkdir(os.path.join(a.dir, "sub"))
        expect = {}
        for name, mode, _s in variants:
            for rel in (name, "sub/" + name):
                write_file(os.path.join(a.dir, rel), "first line of %s\n" % rel, mode=mode)
                expect[rel] = "first line of %s\n" % rel
        _converged(srv, [a, b], timeout=CONVERGE, msg="files before vim")

        for rnd in range(3):
            if rnd == 2:
                b.stop()  # B is off for the last round
            for name, _mode, setting in variants:
                for rel in (name, "sub/" + name):
                    saves = 1 + (rnd % 2)
                    _vim(os.path.join(a.dir, rel), setting, "round %d" % rnd, saves)
                    expect[rel] += "".join("round %d %d\n" % (rnd, k) for k in range(saves))
            if rnd == 1:
                _converged(srv, [a, b], timeout=CONVERGE, msg="after vim round %d" % rnd)
        b.start()
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="after all vim saves, B back after the last round")
        for name, mode, _s in variants:
            for rel in (name, "sub/" + name):
                check(snap[rel][1] == expect[rel].encode(), "%s holds %r, vim wrote %r" % (rel, snap[rel][1], expect[rel]))
                check(snap[rel][2] == mode, "%s has mode %o, want %o" % (rel, snap[rel][2], mode))
        check("keep-backup.txt~" in snap and "sub/keep-backup.txt~" in snap,
              "vim's kept backup files are missing: %s" % sorted(snap))


def test_tools_vim_default_ignores():
    """vim with its swap file and a kept backup, the default ignores on:
    the edits arrive on B, neither .notes.txt.swp (while vim holds it)
    nor notes.txt~ ever leaves A."""
    _need("vim")
    with Env("tools_vim_defaults") as env:
        srv, a, b = _pair(env, "vim, default ignores")
        path = os.path.join(a.dir, "notes.txt")
        write_file(path, "first\n")
        wait_content(os.path.join(b.dir, "notes.txt"), "first\n")
        tree = srv.tree(a.token)
        argv = ["vim", "-u", "NONE", "-N", "-i", "NONE", "-es", "-c", "set backupskip= backup backupcopy=no",
                "-c", "normal Gosecond", "-c", "w", "-c", "sleep 2", "-c", "normal Gothird", "-c", "w",
                "-c", "q", "notes.txt"]
        p = subprocess.Popen(argv, cwd=a.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        swap = os.path.join(a.dir, ".notes.txt.swp")
        seen_swap = False
        try:
            while p.poll() is None:
                seen_swap |= os.path.exists(swap)
                check(not os.path.exists(os.path.join(tree, ".notes.txt.swp")),
                      "vim's swap file reached the server")
                time.sleep(0.02)
        finally:
            if p.poll() is None:
                p.kill()
        check(p.returncode == 0, "vim exited %d" % p.returncode)
        check(seen_swap, "vim made no swap file: the test saw nothing to ignore")
        wait_content(os.path.join(b.dir, "notes.txt"), "first\nsecond\nthird\n")
        check(os.path.exists(path + "~"), "vim kept no backup file")
        time.sleep(1)
        for rel in (".notes.txt.swp", "notes.txt~"):
            check(not os.path.lexists(os.path.join(tree, rel)) and not os.path.lexists(os.path.join(b.dir, rel)),
                  "%s left A" % rel)


def test_tools_sed_i():
    """sed -i (a temporary file renamed over the original, mode kept) on
    several files, many times back to back, some with -i.bak backups:
    converges exactly with the expected content; also when B was off
    while sed changed the files and back."""
    with Env("tools_sed_i") as env:
        srv, a, b = _pair(env, "sed -i")
        names = {"plain.txt": 0o644, "private.txt": 0o600, "script.sh": 0o755,
                 "d/nested.txt": 0o640, "d/e/deep.conf": 0o444}
        for rel, mode in names.items():
            write_file(os.path.join(a.dir, rel), "".join("line %d value=0\n" % i for i in range(40)), mode=mode)
        _converged(srv, [a, b], timeout=CONVERGE, msg="files before sed")

        paths = [os.path.join(a.dir, rel) for rel in sorted(names)]
        for n in range(1, 16):
            _run(["sed", "-i", "-e", "s/value=%d$/value=%d/" % (n - 1, n), "-e", "1i round %d" % n] + paths)
            if n % 5 == 0:
                _run(["sed", "-i.bak", "-e", "$a tail %d" % n, paths[n // 5 - 1]])
            if n == 8:
                _converged(srv, [a, b], timeout=CONVERGE, msg="after sed round %d" % n)
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="after all sed rounds")
        for rel, mode in names.items():
            check(snap[rel][2] == mode, "%s has mode %o, want %o" % (rel, snap[rel][2], mode))
            data = snap[rel][1]
            check(data.count(b"value=15\n") == 40 and data.startswith(b"round 15\n"),
                  "%s does not hold the last sed round: %r" % (rel, data[:200]))
        check(sum(1 for k in snap if k.endswith(".bak")) == 3, "expected 3 .bak files: %s" % sorted(snap))

        # B is off while sed changes every file and changes it back: the
        # content B has, with a new mtime
        b.stop()
        for n in range(4):
            _run(["sed", "-i", "-e", "y/lv/LV/" if n % 2 == 0 else "y/LV/lv/"] + paths)
        b.start()
        snap2 = _converged(srv, [a, b], timeout=CONVERGE, msg="B back after sed changed the files back and forth")
        for rel in names:
            check(snap2[rel][1] == snap[rel][1], "%s changed content" % rel)


_SQLITE_WRITER = r"""
import os, sqlite3, sys, time
path = sys.argv[1]
db = sqlite3.connect(path, isolation_level=None)
assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
db.execute("PRAGMA synchronous=NORMAL")
db.execute("PRAGMA wal_autocheckpoint=50")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
db.execute("CREATE INDEX IF NOT EXISTS t_k ON t(k)")
n = 0
for tx in range(250):
    db.execute("BEGIN")
    for r in range(20):
        n += 1
        db.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("key%d" % (n * 7919 % 1000), os.urandom(150 + n % 300)))
    if tx % 10 == 9:
        db.execute("DELETE FROM t WHERE id % 13 = ?", (tx % 13,))
        db.execute("UPDATE t SET v = randomblob(64) WHERE id % 17 = ?", (tx % 17,))
    db.execute("COMMIT")
    if tx % 50 == 0:
        time.sleep(0.2)
print(db.execute("SELECT count(*), total(length(v)), sum(id) FROM t").fetchone())
db.close()
"""


def _db_summary(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchall()
        rows = db.execute("SELECT count(*), total(length(v)), sum(id) FROM t").fetchone()
    finally:
        db.close()
    return ok, rows


def test_tools_sqlite_wal():
    """A SQLite database in WAL mode written by another process (many
    transactions, checkpoints, deletes and updates) and one written by
    the sqlite3 CLI: once the writers closed them, A, B and the server
    agree exactly and B's copy passes PRAGMA integrity_check with A's
    rows; the same after the writer ran again while B was off."""
    with Env("tools_sqlite_wal") as env:
        srv, a, b = _pair(env, "sqlite")
        os.mkdir(os.path.join(a.dir, "data"))
        dbp = os.path.join(a.dir, "data", "app.db")
        out = _run(["python3", "-c", _SQLITE_WRITER, dbp], timeout=120).strip()
        if shutil.which("sqlite3"):
            cli = os.path.join(a.dir, "data", "cli.db")
            _run(["sqlite3", cli, "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB);"])
            for i in range(10):
                _run(["sqlite3", cli,
                      "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<200) "
                      "INSERT INTO t (k, v) SELECT 'k'||x, randomblob(100) FROM c; "
                      "DELETE FROM t WHERE id %% 7 = %d; COMMIT;" % (i % 7)])
        _sqlite_same(env, srv, a, b, out, "1", "after the SQLite writers closed")

        # B is off while the writer adds to the database again
        b.stop()
        out = _run(["python3", "-c", _SQLITE_WRITER, dbp], timeout=120).strip()
        b.start()
        _sqlite_same(env, srv, a, b, out, "2", "B back after a second writer run while it was off")


def _sqlite_same(env, srv, a, b, out, tag, msg):
    snap = _converged(srv, [a, b], timeout=CONVERGE, msg=msg)
    left = [k for k in snap if k.endswith("-wal") or k.endswith("-shm") or k.endswith("-journal")]
    check(left == [], "the writers left %s behind" % left)

    # B's copies, checked in a directory of their own (opening a
    # database may create -wal/-shm files next to it)
    chk = env.path("check" + tag)
    os.mkdir(chk)
    names = sorted(os.listdir(os.path.join(b.dir, "data")))
    for n in names:
        shutil.copy2(os.path.join(b.dir, "data", n), os.path.join(chk, "B-" + n))
        shutil.copy2(os.path.join(a.dir, "data", n), os.path.join(chk, "A-" + n))
    for n in names:
        ok_b, rows_b = _db_summary(os.path.join(chk, "B-" + n))
        check(ok_b == [("ok",)], "integrity_check of B's %s: %s" % (n, ok_b))
        _ok_a, rows_a = _db_summary(os.path.join(chk, "A-" + n))
        check(rows_b == rows_a, "%s: B has rows %s, A %s" % (n, rows_b, rows_a))
        if n == "app.db":
            check(str(rows_b) == out, "app.db: B has rows %s, the writer wrote %s" % (rows_b, out))


def test_tools_stress_ng():
    """stress-ng's rename, dir, link, symlink, chmod, utime and dirmany
    stressors thrash a subdirectory of A for 10 s; once stress-ng has
    stopped (and cleaned up), A, B and the server agree exactly. Again
    for 5 s with --keep-files: what the stressors left converges too."""
    _need("stress-ng")
    with Env("tools_stress_ng") as env:
        # stress-ng removes nearly all it made when it stops: a mass
        # deletion the brake would hold (test_brake.py tests that).
        srv, a, b = _pair(env, "stress-ng", args=["--max-delete", "no"])
        write_file(os.path.join(a.dir, "before.txt"), "here before stress-ng\n", mode=0o640)
        sdir = os.path.join(a.dir, "stress")
        os.mkdir(sdir)
        _converged(srv, [a, b], timeout=CONVERGE, msg="before stress-ng", verify=False)
        out = _run(["stress-ng", "--rename", "1", "--dir", "1", "--link", "1", "--symlink", "1",
                    "--chmod", "1", "--utime", "1", "--dirmany", "1", "--timeout", "10s",
                    "--temp-path", sdir, "--metrics-brief"], cwd=env.root, timeout=120)
        check("successful run completed" in out or "passed" in out,
              "stress-ng did not report success:\n%s" % out[-2000:])
        _converged(srv, [a, b], timeout=CONVERGE_BIG, msg="after stress-ng stopped")
        # and the tree still syncs afterwards
        write_file(os.path.join(sdir, "after.txt"), "after stress-ng\n", mode=0o600)
        _converged(srv, [a, b], timeout=CONVERGE, msg="a file written after stress-ng")

        # again with --keep-files (without dirmany, which would leave
        # too many files): the end state holds what the stressors left
        sdir2 = os.path.join(a.dir, "stress-kept")
        os.mkdir(sdir2)
        out = _run(["stress-ng", "--rename", "1", "--dir", "1", "--dir-dirs", "500", "--link", "1",
                    "--symlink", "1", "--chmod", "1", "--utime", "1", "--timeout", "5s",
                    "--temp-path", sdir2, "--keep-files", "--metrics-brief"], cwd=env.root, timeout=120)
        check("successful run completed" in out or "passed" in out,
              "stress-ng --keep-files did not report success:\n%s" % out[-2000:])
        files, dirs, links = _count(sdir2)
        check(files + dirs > 100, "stress-ng --keep-files left only %d files, %d dirs" % (files, dirs))
        _converged(srv, [a, b], timeout=CONVERGE_BIG,
                   msg="after stress-ng --keep-files left %d files, %d dirs, %d links" % (files, dirs, links))


def test_tools_chmod_dirs():
    """Directory and file modes exact on B: mkdir -m 700, fill, chmod 755
    at once; chmod of already-synced directories and files (mode-only
    changes); chmod right after writing; touch -d of a synced file
    (mtime-only change); modes and times set back to earlier values
    while B is off."""
    with Env("tools_chmod_dirs") as env:
        srv, a, b = _pair(env, "chmod")
        A = lambda *p: os.path.join(a.dir, *p)
        os.makedirs(A("synced", "sub"))
        os.makedirs(A("locked"))
        for rel in ("synced/one.txt", "synced/sub/two.txt", "locked/three.txt", "top.txt", "old.txt"):
            write_file(A(rel), "content of %s\n" % rel)
        os.chmod(A("locked"), 0o700)
        os.chmod(A("synced", "sub"), 0o750)
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="initial tree with 0700/0750 directories")
        check(snap["locked"][2] == 0o700 and snap["synced/sub"][2] == 0o750,
              "initial directory modes: locked %o, synced/sub %o" % (snap["locked"][2], snap["synced/sub"][2]))

        # all at once, with the tools themselves
        _run("set -e; cd '%s'\n"
             "mkdir -m 700 fresh; for i in 1 2 3 4 5; do echo \"fresh $i\" > fresh/f$i; done; mkdir fresh/deeper;"
             " echo x > fresh/deeper/x; chmod 755 fresh\n"
             "chmod 755 locked; chmod 700 synced; chmod 711 synced/sub\n"
             "chmod 600 top.txt; chmod 755 synced/one.txt\n"
             "echo 'new content' > synced/sub/two.txt; chmod 640 synced/sub/two.txt\n"
             "echo 'written then chmod' > written.txt; chmod 604 written.txt\n"
             "touch -d @981173106.123456789 old.txt\n" % a.dir)
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="after mkdir -m 700/fill/chmod 755 and chmods")
        want = {"fresh": 0o755, "locked": 0o755, "synced": 0o700, "synced/sub": 0o711,
                "top.txt": 0o600, "synced/one.txt": 0o755, "synced/sub/two.txt": 0o640, "written.txt": 0o604}
        for rel, m in want.items():
            check(snap[rel][2] == m, "%s: mode %o, want %o" % (rel, snap[rel][2], m))
        check(snap["old.txt"][3] == 981173106123456789, "old.txt mtime %s" % (snap["old.txt"][3],))

        # mode changes only, repeated quickly, on files and directories
        for m in (0o700, 0o750, 0o755, 0o555, 0o775):
            os.chmod(A("fresh"), m)
            os.chmod(A("fresh", "f1"), m & 0o666)
        os.utime(A("top.txt"), ns=(1300000000000000001, 1300000000000000001))
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="after repeated chmod of fresh and fresh/f1")
        check(snap["fresh"][2] == 0o775 and snap["fresh/f1"][2] == 0o664,
              "fresh %o, fresh/f1 %o" % (snap["fresh"][2], snap["fresh/f1"][2]))
        check(snap["top.txt"][3] == 1300000000000000001, "top.txt mtime %s" % (snap["top.txt"][3],))

        # B is off while modes and times go back to values B had before
        # (content unchanged), and a new directory is made the tar way
        b.stop()
        _run("set -e; cd '%s'\n"
             "chmod 700 fresh locked; chmod 750 synced/sub; chmod 755 synced; chmod 644 top.txt synced/one.txt\n"
             "chmod 600 fresh/f1; touch -d @1300000000.000000001 old.txt; touch top.txt\n"
             "mkdir -m 700 later; echo later > later/f; chmod 444 later/f; chmod 555 later\n" % a.dir)
        b.start()
        snap = _converged(srv, [a, b], timeout=CONVERGE, msg="B back after chmods and touch while it was off")
        want = {"fresh": 0o700, "locked": 0o700, "synced": 0o755, "synced/sub": 0o750, "later": 0o555,
                "later/f": 0o444, "top.txt": 0o644, "synced/one.txt": 0o644, "fresh/f1": 0o600}
        for rel, m in want.items():
            check(snap[rel][2] == m, "%s: mode %o, want %o" % (rel, snap[rel][2], m))
        check(snap["old.txt"][3] == 1300000000000000001, "old.txt mtime %s" % (snap["old.txt"][3],))
