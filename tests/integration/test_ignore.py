"""Choosing what syncs: .backupsyncignore files, this computer's --ignore
patterns (selective sync) and the default ignores."""

import os
import signal

from harness import Env, check, inotify_watches, wait_until, write_file
from test_config import InstanceAgent, _environ


def _server_tree(srv, a):
    out = set()
    root = srv.tree(a.token)
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def test_ignore_files_nested_and_defaults():
    """Ignore files at several depths, each for its own directory and
    below, a negation, and the default ignores: what they name never
    reaches the server; the rest does."""
    with Env("ignore_nested") as env:
        env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, ".backupsyncignore"), "*.log\n/build/\n")
        write_file(os.path.join(adir, "src/.backupsyncignore"), "gen/\n!keep.log\n")
        write_file(os.path.join(adir, "src/deep/.backupsyncignore"), "*.tmp\n")
        files = {
            "notes.txt": True, "run.log": False, "build/out.o": False, "sub/build/x": True,
            "src/main.c": True, "src/gen/table.c": False, "src/keep.log": True, "src/other.log": False,
            "src/deep/a.tmp": False, "src/deep/b.c": True, "a.tmp": True,
            ".notes.txt.swp": False, "notes.txt~": False, ".~lock.report.odt#": False, "dl.part": False,
            "thumbs/a.png": False, "notcache/a.png": True,
        }
        for rel in files:
            write_file(os.path.join(adir, rel), rel + "\n")
        # A cache directory by the CACHEDIR.TAG convention, and one whose tag lacks the signature.
        write_file(os.path.join(adir, "thumbs/CACHEDIR.TAG"),
                   "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n")
        write_file(os.path.join(adir, "notcache/CACHEDIR.TAG"), "not the signature\n")
        a = env.agent("A", adir)
        srv = env.servers[0]
        # Upload order is the agent's own: wait for every path that must arrive.
        wait_until(lambda: all(rel in _server_tree(srv, a) for rel, synced in files.items() if synced), 30,
                   "the synced files on the server")
        tree = _server_tree(srv, a)
        for rel, synced in files.items():
            check((rel in tree) == synced, "%s: %s on the server" % (rel, "missing" if synced else "present"))
        for rel in (".backupsyncignore", "src/.backupsyncignore", "src/deep/.backupsyncignore"):
            check(rel in tree, "the ignore file %s is synced" % rel)
        check("thumbs" not in tree and "notcache/CACHEDIR.TAG" in tree, "cache directories: %r" % sorted(tree))


def test_ignore_selective_sync_both_ways():
    """B ignores videos/: B gets none of A's videos, sends none of its
    own, and its lack of them deletes nothing; everything else syncs."""
    with Env("ignore_selective") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "videos/a.mp4"), "A's video\n")
        write_file(os.path.join(adir, "docs/x.txt"), "x\n")
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token, args=["--ignore", "videos/"])
        wait_until(lambda: os.path.exists(os.path.join(b.dir, "docs/x.txt")), 30, "docs/x.txt on B")
        write_file(os.path.join(adir, "videos/b.mp4"), "another\n")
        write_file(os.path.join(b.dir, "videos/local.mp4"), "B's own\n")
        write_file(os.path.join(adir, "docs/y.txt"), "y\n")
        write_file(os.path.join(b.dir, "docs/z.txt"), "z\n")
        wait_until(lambda: os.path.exists(os.path.join(b.dir, "docs/y.txt")) and
                   os.path.exists(os.path.join(adir, "docs/z.txt")), 30, "the other files both ways")
        tree = _server_tree(srv, a)
        check({"videos/a.mp4", "videos/b.mp4"} <= tree, "A's videos left the server: %r" % sorted(tree))
        check("videos/local.mp4" not in tree, "B's ignored file reached the server")
        check(not os.path.exists(os.path.join(b.dir, "videos/a.mp4")) and
              not os.path.exists(os.path.join(b.dir, "videos/b.mp4")), "A's videos reached B")
        check(os.path.exists(os.path.join(adir, "videos/a.mp4")), "B's lack of videos deleted A's")
        # Moves across the line: out of the synced part is gone from B, into it arrives.
        os.rename(os.path.join(adir, "docs/x.txt"), os.path.join(adir, "videos/x.txt"))
        os.rename(os.path.join(adir, "videos/a.mp4"), os.path.join(adir, "docs/a.mp4"))
        wait_until(lambda: not os.path.exists(os.path.join(b.dir, "docs/x.txt")) and
                   os.path.exists(os.path.join(b.dir, "docs/a.mp4")), 30, "the moves across the line on B")
        check(not os.path.exists(os.path.join(b.dir, "videos/x.txt")), "a file moved into videos/ reached B")
        check(os.path.exists(os.path.join(adir, "videos/x.txt")) and "videos/x.txt" in _server_tree(srv, a),
              "the file moved into videos/ was lost")


def test_ignore_becoming_ignored_and_back():
    """A directory that becomes ignored stays on the server as it was and
    its new files stay here; once the pattern goes they sync."""
    with Env("ignore_toggle") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "node_modules/x/i.js"), "i\n")
        a = env.agent("A", adir)
        wait_until(lambda: "node_modules/x/i.js" in _server_tree(srv, a), 30, "i.js on the server")
        write_file(os.path.join(adir, ".backupsyncignore"), "node_modules/\n")
        wait_until(lambda: ".backupsyncignore" in _server_tree(srv, a), 30, "the ignore file on the server")
        write_file(os.path.join(adir, "node_modules/x/j.js"), "j\n")
        os.unlink(os.path.join(adir, "node_modules/x/i.js"))
        write_file(os.path.join(adir, "marker"), "m\n")
        wait_until(lambda: "marker" in _server_tree(srv, a), 30, "the marker on the server")
        tree = _server_tree(srv, a)
        check("node_modules/x/i.js" in tree, "a file deleted inside an ignored directory was deleted on the server")
        check("node_modules/x/j.js" not in tree, "a new file inside an ignored directory was uploaded")
        write_file(os.path.join(adir, ".backupsyncignore"), "")
        wait_until(lambda: "node_modules/x/j.js" in _server_tree(srv, a), 30,
                   "the file no longer ignored on the server")


def test_ignore_node_modules_costs_no_watches():
    """20,000 files in an ignored node_modules/: no upload, no watch."""
    with Env("ignore_node_modules") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, ".backupsyncignore"), "node_modules/\n")
        for i in range(200):
            d = os.path.join(adir, "node_modules/pkg%03d" % i)
            os.makedirs(d)
            for j in range(100):
                with open(os.path.join(d, "f%03d.js" % j), "w") as f:
                    f.write("x")
        write_file(os.path.join(adir, "src/app.js"), "app\n")
        a = env.agent("A", adir)
        wait_until(lambda: "src/app.js" in _server_tree(srv, a), 60, "src/app.js on the server")
        check(not any(p.startswith("node_modules") for p in _server_tree(srv, a)), "node_modules reached the server")
        w = inotify_watches(a.popen.pid)
        check(w <= 3, "%d inotify watches for a tree of 2 directories besides node_modules" % w)


def test_ignore_sighup_reload():
    """ignore = in [agent:NAME], changed and reloaded with SIGHUP: a path
    no longer ignored arrives, a newly ignored one stops syncing."""
    with Env("ignore_sighup") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "videos/a.mp4"), "video\n")
        write_file(os.path.join(adir, "docs/x.txt"), "x\n")
        a = env.agent("A", adir)
        home = env.path("home-b")
        environ = _environ(home, state=os.path.join(home, "state"), config=os.path.join(home, "cfg"))
        ini = env.path("agent.ini")
        base = "[agent:b]\nserver = 127.0.0.1\nport = %d\npath = %s\nid = %s\n" % (srv.port, env.path("B"), a.token)
        write_file(ini, base + "ignore = videos/\n")
        b = InstanceAgent(env, "B", "b", ini, environ, env.path("B"), token=a.token)
        b.start()
        wait_until(lambda: os.path.exists(os.path.join(b.dir, "docs/x.txt")), 30, "docs/x.txt on B")
        check(not os.path.exists(os.path.join(b.dir, "videos")), "videos/ reached B while ignored")
        write_file(ini, base + "ignore = docs/\n")
        b.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(os.path.join(b.dir, "videos/a.mp4")), 30,
                   "videos/a.mp4 on B once no longer ignored")
        write_file(os.path.join(b.dir, "docs/new.txt"), "new\n")
        write_file(os.path.join(b.dir, "marker"), "m\n")
        wait_until(lambda: "marker" in _server_tree(srv, a), 30, "B's marker on the server")
        check("docs/new.txt" not in _server_tree(srv, a), "a file in docs/ went up after docs/ became ignored")
        check("docs/x.txt" in _server_tree(srv, a), "docs/x.txt left the server when B began to ignore it")


def test_ignore_file_changed_during_burst():
    """gen/ becomes ignored half-way through a burst of 400 new files
    there and 400 elsewhere: nothing of gen/ written after the change goes
    up, what went up stays (on the server and B), everything else
    arrives, and gen/'s watches are dropped."""
    with Env("ignore_burst") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, ".backupsyncignore"), "*.log\n")
        for k in range(5):
            os.makedirs(os.path.join(adir, "gen/sub%d" % k))
        os.makedirs(os.path.join(adir, "src"))
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        wait_until(lambda: os.path.isdir(os.path.join(b.dir, "gen/sub4")), 30, "gen/ on B")
        check(inotify_watches(a.popen.pid) == 8, "watches before: %d, want 8" % inotify_watches(a.popen.pid))
        for i in range(400):
            write_file(os.path.join(adir, "gen/sub%d/f%03d.txt" % (i % 5, i)), "g%d\n" % i)
            write_file(os.path.join(adir, "src/s%03d.txt" % i), "s%d\n" % i)
            if i == 199:
                write_file(os.path.join(adir, ".backupsyncignore"), "*.log\ngen/\n")
        wait_until(lambda: len(os.listdir(os.path.join(b.dir, "src"))) == 400, 60, "src/ on B")
        tree = srv.tree(a.token)

        def gen_files(root):
            out = set()
            for k in range(5):
                d = os.path.join(root, "gen/sub%d" % k)
                out |= set(os.listdir(d)) if os.path.isdir(d) else set()
            return out
        on_server = gen_files(tree)
        late = sorted(n for n in on_server if int(n[1:4]) >= 200)
        check(not late, "gen/ files written after gen/ became ignored went up: %s" % late[:10])
        check(gen_files(adir) == set("f%03d.txt" % i for i in range(400)), "A's gen/ changed")
        wait_until(lambda: gen_files(b.dir) == on_server, 15, "B's gen/ to be what the server kept")
        w = inotify_watches(a.popen.pid)
        check(w == 2, "%d inotify watches after gen/ became ignored, want 2 (the top and src/)" % w)
        print("ignore_burst: %d of gen/'s 200 files before the change went up" % len(on_server))
