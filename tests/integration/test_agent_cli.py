"""Command-line behaviour of the agent: tokens, --once, exit codes, safety."""

import os
import shutil
import time

from harness import (Env, assert_trees_equal, check, free_port, snapshot,
                     wait_content, wait_tree, write_file)

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_NOPERM = 64, 65, 66, 69, 77


def _other_id(acct):
    cand = "ZZZZ" if acct != "ZZZZ" else "YYYY"
    return cand


def _flip_key(key):
    # change every character of the key to another base32 character
    alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "".join(alpha[(alpha.index(c) + 1) % 32] if c in alpha else "A" for c in key)


def test_wrong_token():
    with Env("wrong_token") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "secret.txt"), "account data\n")
        a = env.agent("A", adir)
        wait_content(os.path.join(srv.tree(a.token), "secret.txt"), "account data\n")
        acct, _, key = a.token.partition("-")
        check(key, "token %r has no KEY part (require-key defaults to yes)" % a.token)

        cases = [("unknown ID", _other_id(acct) + "-" + key),
                 ("right ID, wrong key", acct + "-" + _flip_key(key))]
        for i, (what, tok) in enumerate(cases):
            x = env.agent("X%d" % i, env.path("X%d" % i), token=tok, start=False)
            # without --once: a refused token is final, the agent must exit
            x.start()
            rc = x.wait_exit(60)
            err = x.log_text()
            check(rc == EX_NOPERM, "%s: agent exited %s, want %d (token refused); stderr:\n%s"
                  % (what, rc, EX_NOPERM, err))
            check("token" in err.lower() or "auth" in err.lower(),
                  "%s: stderr does not say the token was refused:\n%s" % (what, err))
            got = snapshot(x.dir) if os.path.isdir(x.dir) else {}
            check(got == {}, "%s: files were written into the agent's dir: %s" % (what, sorted(got)))
            # --once too
            rc, out, err = x.run_once(timeout=60)
            check(rc == EX_NOPERM, "%s (--once): exit %s, want %d; stderr:\n%s" % (what, rc, EX_NOPERM, err))
            check(out == [], "%s: printed on stdout: %s" % (what, out))
            got = snapshot(x.dir) if os.path.isdir(x.dir) else {}
            check(got == {}, "%s (--once): files were written into the agent's dir: %s" % (what, sorted(got)))

        # Tokens are case-insensitive ("abcd-..." names account ABCD), so only
        # wrong shapes are malformed.
        for i, tok in enumerate(["bad token!", "AB", "ab-cd" + key, acct + "-" + key + "!", acct + "-" + key[:-1] + "1"]):
            x = env.agent("M%d" % i, env.path("M%d" % i), token=tok, start=False)
            rc, out, err = x.run_once(timeout=30)
            check(rc == EX_USAGE, "malformed token %r: exit %s, want %d; stderr:\n%s" % (tok, rc, EX_USAGE, err))
            check(err.strip(), "malformed token %r: no message on stderr" % tok)
            check(not os.path.exists(x.dir) or os.listdir(x.dir) == [],
                  "malformed token %r: files written into the dir" % tok)

        # the account is untouched and A still works
        write_file(os.path.join(adir, "after.txt"), "after the bad logins\n")
        wait_content(os.path.join(srv.tree(a.token), "after.txt"), "after the bad logins\n")
        wait_content(os.path.join(srv.tree(a.token), "secret.txt"), "account data\n")


def test_once_mode():
    with Env("once_mode") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "one.txt"), "one\n")
        write_file(os.path.join(adir, "d", "two.bin"), os.urandom(200000))
        os.symlink("one.txt", os.path.join(adir, "ln"))
        a = env.agent("A", adir, start=False)
        rc, out, err = a.run_once()
        check(rc == 0, "register --once: exit %s, want 0; stderr:\n%s" % (rc, err))
        check(len(out) == 1 and out[0].startswith("ID: "),
              "register --once: stdout must be exactly one 'ID: <TOKEN>' line, got %r" % out)
        a.token = out[0][4:]
        exp = snapshot(adir)
        # the server has everything the moment --once returned 0
        got = snapshot(srv.tree(a.token), modes=False)
        want = {k: (v[0], v[1], None) for k, v in exp.items()}
        check(got == want, "server tree right after --once returned: %s" % sorted(got))

        b = env.agent("B", env.path("B"), token=a.token, start=False)
        rc, out, err = b.run_once()
        check(rc == 0, "join --once: exit %s, want 0; stderr:\n%s" % (rc, err))
        check(out == [], "join --once printed on stdout: %r" % out)
        check(snapshot(b.dir) == exp, "B right after --once differs from A")

        # a change on B with --once goes up; A --once brings it down
        write_file(os.path.join(b.dir, "from-b.txt"), "from B\n")
        rc, out, err = b.run_once()
        check(rc == 0, "B --once (push): exit %s; stderr:\n%s" % (rc, err))
        rc, out, err = a.run_once()
        check(rc == 0, "A --once (pull): exit %s; stderr:\n%s" % (rc, err))
        check(open(os.path.join(adir, "from-b.txt"), "rb").read() == b"from B\n", "from-b.txt not on A")
        check(snapshot(adir) == snapshot(b.dir), "A and B differ after --once both ways")
        # running again when in sync is a no-op that exits 0
        rc, out, err = a.run_once()
        check(rc == 0 and out == [], "A --once when in sync: exit %s, stdout %r" % (rc, out))

        # no server
        dead = free_port()
        c = env.agent("C", env.path("C"), start=False)
        write_file(os.path.join(c.dir, "x"), "x")
        rc, out, err = c.run_once(timeout=60, port=dead)
        check(rc == EX_UNAVAILABLE, "register --once, no server: exit %s, want %d; stderr:\n%s"
              % (rc, EX_UNAVAILABLE, err))
        check(out == [], "no server: printed %r on stdout" % out)
        rc, out, err = b.run_once(timeout=60, port=dead)
        check(rc == EX_UNAVAILABLE, "join --once, no server: exit %s, want %d; stderr:\n%s"
              % (rc, EX_UNAVAILABLE, err))
        # registering a missing dir
        d = env.agent("D", env.path("missing"), start=False)
        rc, out, err = d.run_once(timeout=30)
        check(rc == EX_NOINPUT, "register a missing DIR: exit %s, want %d; stderr:\n%s" % (rc, EX_NOINPUT, err))


def test_empty_tree_safety():
    with Env("empty_tree_safety") as env:
        srv = env.server()
        adir = env.path("A")
        files = {"a.txt": "a\n", "sub/b.txt": "b\n", "sub/deep/c.txt": "c\n"}
        for rel, data in files.items():
            write_file(os.path.join(adir, rel), data)
        a = env.agent("A", adir)
        b = env.agent("B", env.path("B"), token=a.token)
        exp = assert_trees_equal(adir, b.dir)
        server_exp = {k: (v[0], v[1], None) for k, v in exp.items()}
        wait_tree(srv.tree(a.token), server_exp)
        check(a.stop() == 0, "agent A did not exit 0 on SIGTERM")

        for what in ("contents deleted", "directory deleted"):
            if what == "contents deleted":
                for n in os.listdir(adir):
                    p = os.path.join(adir, n)
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            else:
                shutil.rmtree(adir)
            rc, out, err = a.run_once(timeout=60)
            check(rc == EX_DATAERR, "%s: A --once exited %s, want %d; stderr:\n%s" % (what, rc, EX_DATAERR, err))
            check(err.strip(), "%s: no error message on stderr" % what)
            time.sleep(1.0)  # give a wrong deletion time to travel
            got = snapshot(srv.tree(a.token), modes=False)
            check(got == server_exp, "%s: server tree lost files: %s" % (what, sorted(got)))
            check(snapshot(b.dir) == exp, "%s: B's tree changed: %s" % (what, sorted(snapshot(b.dir))))
            check(b.running(), "agent B stopped")


def test_state_dir_in_use():
    """Two agents must never share a state directory: the second one stops
    at once with a message naming it, and the first keeps syncing."""
    with Env("state_dir_in_use") as env:
        srv = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "one.txt"), "one\n")
        a = env.agent("A", adir)
        wait_content(os.path.join(srv.tree(a.token), "one.txt"), "one\n")
        for once in (True, False):
            x = env.agent("X%d" % once, adir, token=a.token, state_dir=a.state_dir, start=False)
            if once:
                rc, _, err = x.run_once(timeout=30)
            else:
                x.start()
                rc = x.wait_exit(30)
                err = x.log_text()
            check(rc == 75, "second agent on the same state directory exited %s, want 75; stderr:\n%s"
                  % (rc, err))
            check("in use" in err and a.state_dir in err,
                  "the message does not say the state directory is in use:\n%s" % err)
        write_file(os.path.join(adir, "two.txt"), "two\n")
        wait_content(os.path.join(srv.tree(a.token), "two.txt"), "two\n")
