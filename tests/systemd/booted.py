#!/usr/bin/env python3
"""booted.py - backupsync under a booted systemd, driven as a user would.

Boots systemd in a container (systemd-nspawn over the host's /usr with
--volatile=yes and a private network), installs the build into it
(/usr/local, /etc) and then, inside the container:

  systemctl start backupsyncd.socket
  alice and bob (lingering users) run
  systemctl --user enable --now backupsync-agent@docs
  files travel alice -> bob and bob -> alice through the server,
  the journal has the structured entries, reload works, a stopped server
  is started again by its socket, `systemctl status` shows Status: lines,
  systemd-analyze security scores the server at or below 1.5.

Needs root and systemd-nspawn (package systemd-container); otherwise it
prints SKIPPED: and exits 77 (meson reports SKIP). Python 3 stdlib only.

Environment: BS_SOURCE_DIR (the source tree), BS_BUILD_DIR (a build dir:
reused when configured with --prefix=/usr/local --sysconfdir=/etc, else
the test configures and builds its own under /tmp), BS_KEEP=1 keeps the
work directory.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("BS_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
BUILD_DIR = os.environ.get("BS_BUILD_DIR", "")
MAX_EXPOSURE = 1.5
SYNC_TIMEOUT = 60

T0 = time.monotonic()


def say(msg):
    print("[%6.1f s] %s" % (time.monotonic() - T0, msg), flush=True)


def skip(reason):
    print("SKIPPED: %s" % reason, flush=True)
    sys.exit(77)


class StepFailed(Exception):
    pass


def run(argv, check=True, timeout=120, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=timeout, text=True, **kw)
    if check and p.returncode != 0:
        raise StepFailed("%s exited %d:\n%s" % (" ".join(argv), p.returncode, p.stdout[-3000:]))
    return p


# ------------------------------------------------------------ preconditions

def preconditions():
    if os.geteuid() != 0:
        skip("the booted-systemd test needs root (systemd-nspawn); run it as root, as CI does")
    for tool in ("systemd-nspawn", "nsenter", "meson"):
        if not shutil.which(tool):
            skip("%s is not installed (tools/deps installs systemd-container)" % tool)
    if not os.path.exists("/usr/lib/systemd/systemd") and not os.path.exists("/lib/systemd/systemd"):
        skip("systemd is not installed, nothing to boot")


# ------------------------------------------------------------ build + install

def build_options(build):
    p = run(["meson", "introspect", "--buildoptions", build], check=False)
    if p.returncode != 0:
        return {}
    try:
        return {o["name"]: o["value"] for o in json.loads(p.stdout)}
    except ValueError:
        return {}


def prepare_build(work):
    if BUILD_DIR:
        opts = build_options(BUILD_DIR)
        if opts.get("prefix") == "/usr/local" and opts.get("sysconfdir") == "/etc":
            say("using the build in %s (prefix /usr/local, sysconfdir /etc)" % BUILD_DIR)
            run(["meson", "compile", "-C", BUILD_DIR], timeout=600)
            return BUILD_DIR
    build = os.path.join(work, "build")
    say("configuring %s with --prefix=/usr/local --sysconfdir=/etc" % build)
    run(["meson", "setup", build, SOURCE_DIR, "--prefix=/usr/local", "--sysconfdir=/etc"], timeout=300)
    say("building (about a minute)")
    run(["meson", "compile", "-C", build], timeout=900)
    return build


def install(build, stage):
    run(["meson", "install", "-C", build, "--destdir", stage, "--quiet", "--no-rebuild"], timeout=300)
    for f in ("usr/local/sbin/backupsyncd", "usr/local/bin/backupsync-agent",
              "usr/local/lib/systemd/system/backupsyncd.socket",
              "usr/local/lib/systemd/system/backupsyncd.service",
              "usr/local/lib/systemd/user/backupsync-agent@.service"):
        if not os.path.exists(os.path.join(stage, f)):
            raise StepFailed("meson install did not install /%s" % f)
    say("installed into %s" % stage)


# ------------------------------------------------------------ the container

class Container:
    def __init__(self, stage, work):
        self.name = "bs-test-%d" % os.getpid()
        self.stage = stage
        self.log = os.path.join(work, "nspawn.log")
        self.proc = None
        self.pid = None

    def boot(self):
        argv = ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no",
                "--directory=/", "--volatile=yes", "--private-network",
                "--machine=" + self.name, "--console=passive",
                "--bind-ro=/etc/pam.d", "--bind-ro=/etc/security",
                "--bind-ro=%s/usr/local:/usr/local" % self.stage]
        ini = os.path.join(self.stage, "etc", "backupsync.ini")
        if os.path.exists(ini):
            argv.append("--bind-ro=%s:/etc/backupsync.ini" % ini)
        # The container enables every unit of the host's packages (first
        # boot presets). Those of the engines the cluster tests install
        # would hold the boot for minutes in a container without a network
        # (rbdmap wants network-online.target, whose wait times out after
        # 2 min) or restart for ever (ceph-crash without a ceph user):
        # masked, as they have nothing to do with what is tested here.
        argv += ["-b", "systemd.firstboot=off", "systemd.mask=systemd-networkd-wait-online.service",
                 "systemd.mask=rbdmap.service", "systemd.mask=ceph-crash.service", "systemd.mask=ceph.target",
                 "systemd.mask=smartmontools.service"]
        say("booting: " + " ".join(argv))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while self.pid is None:
            if self.proc.poll() is not None:
                raise StepFailed("systemd-nspawn exited %d:\n%s" % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise StepFailed("no systemd process appeared under systemd-nspawn")
            self.pid = self._find_init()
            time.sleep(0.2)
        say("container %s: init is pid %d" % (self.name, self.pid))
        # systemctl needs the manager's bus, which appears a moment after init.
        wait_for("the container's systemd to answer",
                 lambda: self.sh("test -S /run/systemd/private", check=False).returncode == 0,
                 timeout=60, interval=0.2)
        p = self.sh("systemctl is-system-running --wait", check=False, timeout=180)
        state = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "?"
        if state not in ("running", "degraded"):
            raise StepFailed("the container's systemd is %r, not running" % state)
        if state == "degraded":
            say("system is degraded; failed units: "
                + self.sh("systemctl --failed --no-legend --plain", check=False).stdout.strip())
        say("container is up (%s)" % state)

    def _find_init(self):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
            except OSError:
                continue
            comm = st[st.index("(") + 1:st.rindex(")")]
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            if ppid == self.proc.pid and comm == "systemd":
                return int(d)
        return None

    def log_tail(self, n=30):
        try:
            with open(self.log, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def run(self, argv, check=True, timeout=120):
        return run(["nsenter", "--target", str(self.pid), "--all", "-r", "-w"] + argv,
                   check=check, timeout=timeout)

    def sh(self, script, check=True, timeout=120):
        return self.run(["/bin/sh", "-c", script], check=check, timeout=timeout)

    def user(self, user, script, check=True, timeout=120):
        """Run a shell command as user, with the environment of a login."""
        uid = int(self.run(["id", "-u", user]).stdout.strip())
        env = ("env HOME=/home/{u} USER={u} LOGNAME={u} XDG_RUNTIME_DIR=/run/user/{id} "
               "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{id}/bus").format(u=user, id=uid)
        return self.run(["runuser", "-u", user, "--"] + env.split() + ["/bin/sh", "-c", "cd && " + script],
                        check=check, timeout=timeout)

    def dump_journal(self):
        if self.pid is None or self.proc.poll() is not None:
            print("----- systemd-nspawn output -----\n" + self.log_tail(100), flush=True)
            return
        p = self.sh("journalctl -b --no-pager | tail -200", check=False, timeout=60)
        print("----- journalctl -b | tail -200 (inside the container) -----", flush=True)
        print(p.stdout, flush=True)

    def terminate(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        say("powering off the container")
        if self.pid is not None:
            try:
                self.sh("systemctl poweroff --no-block", check=False, timeout=30)
            except (subprocess.TimeoutExpired, StepFailed):
                pass
        try:
            self.proc.wait(60)
            return
        except subprocess.TimeoutExpired:
            pass
        say("the container did not power off; SIGTERM to systemd-nspawn")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# ------------------------------------------------------------ the scenario

def wait_for(what, pred, timeout=SYNC_TIMEOUT, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (StepFailed, subprocess.TimeoutExpired) as e:
            last = e
        if time.monotonic() > deadline:
            raise StepFailed("timed out after %d s waiting for %s%s" % (
                timeout, what, (" (last error: %s)" % last) if last else ""))
        time.sleep(interval)


def file_is(c, user, rel, content):
    p = c.sh("cat '/home/%s/%s' 2>/dev/null" % (user, rel), check=False)
    return p.returncode == 0 and p.stdout == content


def unit_active(c, unit, user=None):
    if user:
        p = c.user(user, "systemctl --user is-active %s" % unit, check=False)
    else:
        p = c.run(["systemctl", "is-active", unit], check=False)
    return p.stdout.strip()


AGENT_INI = """[agent:docs]
server = 127.0.0.1
port = 7373
path = ~/Documents
poll-interval = 2s
"""


class Scenario:
    def __init__(self, c):
        self.c = c
        self.token = None
        self.passed = []
        self.failed = []
        self.skipped = []
        self.reactivated_at = time.monotonic()

    def step(self, name, fn, needs=()):
        missing = [n for n in needs if n not in self.passed]
        if missing:
            say("SKIP %s (needs: %s)" % (name, ", ".join(missing)))
            self.skipped.append(name)
            return False
        say("---- %s" % name)
        try:
            fn()
        except (StepFailed, subprocess.TimeoutExpired) as e:
            say("FAIL %s: %s" % (name, e))
            self.failed.append(name)
            return False
        say("PASS %s" % name)
        self.passed.append(name)
        return True

    # -- system side
    def security(self):
        p = self.c.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        "backupsyncd.service"], check=False)
        m = re.search(r"Overall exposure level for backupsyncd\.service: ([0-9.]+)", p.stdout)
        if not m:
            raise StepFailed("no 'Overall exposure level' line:\n" + p.stdout[-2000:])
        score = float(m.group(1))
        say("systemd-analyze security: exposure %.1f (at most %.1f wanted)" % (score, MAX_EXPOSURE))
        if score > MAX_EXPOSURE:
            raise StepFailed("exposure %.1f is above %.1f:\n%s" % (score, MAX_EXPOSURE, p.stdout))

    def socket(self):
        c = self.c
        # A persistent journal splits per user, so users can read their own
        # (journalctl --user), as on an installed Debian system.
        c.sh("mkdir -p /var/log/journal && systemd-tmpfiles --create --prefix /var/log/journal "
             "&& journalctl --flush")
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "backupsyncd.socket"])
        state = unit_active(c, "backupsyncd.socket")
        if state != "active":
            raise StepFailed("backupsyncd.socket is %s" % state)
        say(c.run(["systemctl", "status", "--no-pager", "backupsyncd.socket"], check=False).stdout)

    def users(self):
        c = self.c
        for u in ("alice", "bob"):
            c.run(["useradd", "-m", "-s", "/bin/bash", u])
        c.run(["loginctl", "enable-linger", "alice", "bob"])
        for u in ("alice", "bob"):
            wait_for("the user manager of %s" % u,
                     lambda u=u: c.user(u, "systemctl --user is-system-running", check=False)
                     .stdout.strip() in ("running", "degraded"), timeout=60)
            say("%s's user manager is running" % u)

    def alice_enables(self):
        c = self.c
        c.user("alice", "mkdir -p .config 'Documents/sub dir' && "
                        "printf 'quarterly numbers\\n' > Documents/report.txt && "
                        "printf 'ideas\\n' > 'Documents/sub dir/notes.md'")
        c.user("alice", "cat > .config/backupsync.ini <<'EOF'\n%sEOF" % AGENT_INI)
        c.user("alice", "systemctl --user enable --now backupsync-agent@docs")

        def token():
            p = c.user("alice", "journalctl --user -u backupsync-agent@docs --no-pager -o cat",
                       check=False)
            m = re.search(r"use the token (\S+)", p.stdout) or re.search(r"^ID: (\S+)$", p.stdout, re.M)
            if m:
                return m.group(1)
            if unit_active(c, "backupsync-agent@docs", user="alice") in ("failed", "inactive"):
                raise StepFailed("backupsync-agent@docs of alice is not running:\n" + c.user(
                    "alice", "systemctl --user status --no-pager backupsync-agent@docs",
                    check=False).stdout)
            return None
        self.token = wait_for("alice's token in journalctl --user -u backupsync-agent@docs", token)
        say("alice's token: %s" % self.token)
        p = c.user("alice", "test -s .local/state/backupsync/docs/state.db && echo present", check=False)
        if "present" not in p.stdout:
            raise StepFailed("alice's agent state is not in ~/.local/state/backupsync/docs")
        say("state in ~/.local/state/backupsync/docs")

    def bob_joins(self):
        c = self.c
        c.user("bob", "mkdir -p .config && cat > .config/backupsync.ini <<'EOF'\n%sid = %s\nEOF"
               % (AGENT_INI, self.token))
        c.user("bob", "systemctl --user enable --now backupsync-agent@docs")
        wait_for("report.txt at bob", lambda: file_is(c, "bob", "Documents/report.txt", "quarterly numbers\n"))
        wait_for("sub dir/notes.md at bob", lambda: file_is(c, "bob", "Documents/sub dir/notes.md", "ideas\n"))

    def bob_to_alice(self):
        c = self.c
        c.user("bob", "printf 'from bob\\n' > Documents/from-bob.txt")
        wait_for("from-bob.txt at alice", lambda: file_is(c, "alice", "Documents/from-bob.txt", "from bob\n"))
        c.user("alice", "printf 'edited by alice\\n' > Documents/report.txt")
        wait_for("alice's edit at bob", lambda: file_is(c, "bob", "Documents/report.txt", "edited by alice\n"))

    def journal_fields(self):
        account = self.token.split("-")[0]
        p = self.c.run(["journalctl", "-o", "json", "-u", "backupsyncd", "--no-pager"])
        found = []
        tls_key = []
        for line in p.stdout.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("MESSAGE_ID") and e.get("BACKUPSYNC_ACCOUNT") == account:
                found.append(e)
            if e.get("MESSAGE_ID") == "6f0c1a4e2b7d4f0a9c1e3b5d7f9a1c11" and e.get("BACKUPSYNC_FINGERPRINT"):
                tls_key.append(e)
        if not tls_key:
            raise StepFailed("no backupsyncd journal entry for its TLS key (MESSAGE_ID=...c11, BACKUPSYNC_FINGERPRINT=)")
        say("TLS key at start: %s" % tls_key[-1].get("MESSAGE"))
        if not found:
            raise StepFailed("no backupsyncd journal entry with MESSAGE_ID= and BACKUPSYNC_ACCOUNT=%s" % account)
        say("%d structured entries for account %s, e.g. MESSAGE_ID=%s MESSAGE=%s" % (
            len(found), account, found[0]["MESSAGE_ID"], found[0].get("MESSAGE")))
        self.message_ids = sorted({e["MESSAGE_ID"] for e in found})

    def catalog(self):
        c = self.c
        c.run(["journalctl", "--update-catalog"])
        listed = c.run(["journalctl", "--list-catalog", "--no-pager"]).stdout
        known = [m for m in self.message_ids if m in listed]
        if not known:
            raise StepFailed("none of the MESSAGE_IDs %s is in journalctl --list-catalog" % self.message_ids)
        say("catalog explains %s" % ", ".join(known))

    def reload(self):
        c = self.c
        c.run(["systemctl", "reload", "backupsyncd.service"])
        time.sleep(2)
        state = unit_active(c, "backupsyncd.service")
        if state != "active":
            raise StepFailed("backupsyncd.service is %s after reload:\n%s" % (state, c.run(
                ["systemctl", "status", "--no-pager", "backupsyncd.service"], check=False).stdout))
        c.user("alice", "systemctl --user reload backupsync-agent@docs")
        time.sleep(2)
        state = unit_active(c, "backupsync-agent@docs", user="alice")
        if state != "active":
            raise StepFailed("alice's backupsync-agent@docs is %s after reload" % state)

    def reactivation(self):
        c = self.c
        old_pid = c.run(["systemctl", "show", "-P", "MainPID", "backupsyncd.service"]).stdout.strip()
        c.run(["systemctl", "stop", "backupsyncd.service"])
        # An agent that notices the stop reconnects within a second or so,
        # which may already start a new server through the socket: the
        # socket must stay, and the server that serves next must be new.
        svc, sock = unit_active(c, "backupsyncd.service"), unit_active(c, "backupsyncd.socket")
        if sock != "active":
            raise StepFailed("after stop: socket %s (want active)" % sock)
        say("server stopped (service now %s), socket still listening" % svc)
        self.reactivated_at = time.monotonic()
        c.user("alice", "printf 'written while the server was stopped\\n' > Documents/after-stop.txt")
        wait_for("after-stop.txt at bob",
                 lambda: file_is(c, "bob", "Documents/after-stop.txt", "written while the server was stopped\n"))
        state = unit_active(c, "backupsyncd.service")
        if state != "active":
            raise StepFailed("backupsyncd.service is %s after the socket took a connection" % state)
        new_pid = c.run(["systemctl", "show", "-P", "MainPID", "backupsyncd.service"]).stdout.strip()
        if new_pid in ("", "0", old_pid):
            raise StepFailed("backupsyncd.service was not started again (MainPID %s, before %s)" % (new_pid, old_pid))
        say("started again through the socket: MainPID %s -> %s" % (old_pid, new_pid))

    def status_lines(self):
        c = self.c
        p = c.run(["systemctl", "status", "--no-pager", "backupsyncd.service"], check=False)
        say(p.stdout)
        if not re.search(r"^\s*Status: ", p.stdout, re.M):
            raise StepFailed("systemctl status backupsyncd has no Status: line")
        # The server's key, for an administrator to read out to users, is
        # the one backupsyncd --fingerprint prints for the unit's storage.
        m = re.search(r"^\s*Status: .*TLS key (SHA256:[0-9a-f]{64})", p.stdout, re.M)
        if not m:
            raise StepFailed("systemctl status backupsyncd does not show the TLS key's fingerprint")
        fp = c.run(["/usr/local/sbin/backupsyncd", "--fingerprint", "--storage", "/var/lib/backupsync"]).stdout.strip()
        if fp != m.group(1):
            raise StepFailed("Status: shows %s, backupsyncd --fingerprint prints %s" % (m.group(1), fp))
        for u in ("alice", "bob"):
            p = c.user(u, "systemctl --user status --no-pager backupsync-agent@docs", check=False)
            say(p.stdout)
            if not re.search(r"^\s*Status: ", p.stdout, re.M):
                raise StepFailed("systemctl --user status backupsync-agent@docs of %s has no Status: line" % u)

    def no_restarts(self):
        """The watchdog (WatchdogSec=30s) killed nothing, nothing restarted."""
        c = self.c
        # Outlast WatchdogSec=30s, counted from the service's last start.
        left = 35 - (time.monotonic() - self.reactivated_at)
        if left > 0:
            say("waiting %.0f s to outlast WatchdogSec=30s" % left)
            time.sleep(left)
        bad = []
        n = c.run(["systemctl", "show", "-P", "NRestarts", "backupsyncd.service"]).stdout.strip()
        if n != "0":
            bad.append("backupsyncd.service restarted %s times" % n)
        for u in ("alice", "bob"):
            n = c.user(u, "systemctl --user show -P NRestarts backupsync-agent@docs").stdout.strip()
            if n != "0":
                bad.append("%s's backupsync-agent@docs restarted %s times" % (u, n))
        if bad:
            raise StepFailed("; ".join(bad) + "\n" + c.sh(
                "journalctl -b --no-pager | grep -i 'watchdog' | tail -20", check=False).stdout)

    def run_all(self):
        s = self.step
        s("security score", self.security)
        s("start backupsyncd.socket", self.socket)
        s("users alice and bob with lingering", self.users)
        s("alice: enable --now backupsync-agent@docs, token from journalctl --user",
          self.alice_enables, needs=["start backupsyncd.socket", "users alice and bob with lingering"])
        a = "alice: enable --now backupsync-agent@docs, token from journalctl --user"
        s("bob: id = TOKEN, enable --now, alice's files arrive", self.bob_joins, needs=[a])
        b = "bob: id = TOKEN, enable --now, alice's files arrive"
        s("bob -> alice and alice -> bob", self.bob_to_alice, needs=[b])
        s("journal: MESSAGE_ID= and BACKUPSYNC_ACCOUNT=", self.journal_fields, needs=[a])
        s("journal catalog", self.catalog, needs=["journal: MESSAGE_ID= and BACKUPSYNC_ACCOUNT="])
        s("systemctl reload", self.reload, needs=[b])
        s("stop the service, the socket starts it again", self.reactivation, needs=[b])
        s("systemctl status shows Status: lines", self.status_lines, needs=[b])
        s("no restarts (watchdog)", self.no_restarts, needs=[b])


def main():
    preconditions()
    work = tempfile.mkdtemp(prefix="bs-systemd-", dir="/var/tmp")
    c = None
    rc = 1
    try:
        build = prepare_build(work)
        stage = os.path.join(work, "stage")
        install(build, stage)
        c = Container(stage, work)
        c.boot()
        sc = Scenario(c)
        sc.run_all()
        total = len(sc.passed) + len(sc.failed) + len(sc.skipped)
        if sc.failed or sc.skipped:
            c.dump_journal()
            say("failed: %s" % "; ".join(sc.failed))
            if sc.skipped:
                say("not run (an earlier step failed): %s" % "; ".join(sc.skipped))
        else:
            rc = 0
        say("%d of %d steps passed" % (len(sc.passed), total))
        print("%d passed, %d failed" % (len(sc.passed), len(sc.failed) + len(sc.skipped)), flush=True)
    except (StepFailed, subprocess.TimeoutExpired) as e:
        say("FAIL: %s" % e)
        if c is not None:
            c.dump_journal()
    finally:
        if c is not None:
            c.terminate()
        if os.environ.get("BS_KEEP"):
            say("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    say("done in %.0f s" % (time.monotonic() - T0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
