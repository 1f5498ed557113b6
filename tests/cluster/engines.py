#!/usr/bin/env python3
"""engines.py - throwaway PostgreSQL 15 and Ceph RGW (S3) for the cluster tests.

Real engines from the Debian packages, never mocks. Everything lives in one
directory DIR given by the caller (nothing in /etc/ceph, /var/lib/ceph,
/var/lib/postgresql); ports are picked free at start, all on 127.0.0.1.

    engines.py start DIR      start both, write DIR/engines.json, print
                              `export VAR=...` lines for a shell
    engines.py stop DIR       stop everything started in DIR, remove DIR
    engines.py run [--dir DIR] -- CMD ARGS...
                              start (in DIR or a fresh temporary directory),
                              run CMD with the variables below, always stop
                              and clean up (also on Ctrl-C / SIGTERM), exit
                              with CMD's status; if an engine cannot start,
                              say which one with its log tail and exit 70
                              (CMD runs in its own process group; a signal
                              to `run` is passed on to all of it)
    engines.py rss DIR        memory of each engine, MiB [rss, pss]

A failed `start` stops what it started, prints which engine failed with its
log tail, exits 70 and keeps DIR (logs in DIR/log, DIR/pg/log) until
`stop DIR`.

Environment given to CMD (and printed by `start`):
    BS_TEST_ENGINES        DIR/engines.json (read by Engines.from_env())
    BS_TEST_PG_DSN         libpq conninfo: superuser postgres, database
                           postgres, host=127.0.0.1, port, password
    BS_TEST_S3_ENDPOINT    http://127.0.0.1:PORT (path-style buckets)
    BS_TEST_S3_REGION      us-east-1
    BS_TEST_S3_ACCESS_KEY, BS_TEST_S3_SECRET_KEY

PostgreSQL: initdb and pg_ctl run as the `postgres` user (initdb refuses
root) on DIR/pg/data; socket directory DIR/pg; fsync on. Authentication:
TCP on 127.0.0.1 uses scram-sha-256 with a random password for the
superuser `postgres` (it is in the DSN), the Unix socket is trust (for
psql as the postgres user).

Ceph: own fsid and DIR/ceph.conf, one keyring DIR/keyring (mon., client.admin,
osd.0, client.rgw.gw), one mon (msgr v2 only), one bluestore OSD on a 10 GiB
sparse file DIR/osd.0/block, pool size 1, no mgr (RGW does not need one),
radosgw with beast on 127.0.0.1:PORT. Daemons run in their own sessions (a
Ctrl-C on the terminal reaches only `run`, which stops them in order); their
pids are in DIR/run/*.pid, so another process (a test) may stop and start
RGW or PostgreSQL and `stop` still finds them.

Module API (tests): e = Engines.from_env(); e.dsn, e.s3_endpoint,
e.s3_region, e.access_key, e.secret_key, e.pg_port, e.pg_password;
e.create_database(name) -> dsn, e.drop_database(name), e.psql(sql, db);
e.create_bucket(name), e.delete_bucket(name) (empties it first),
e.put_object/get_object/delete_object, e.list_objects(bucket, prefix) ->
[(key, size)]; e.stop_postgres(), start_postgres(), restart_postgres(),
kill_postgres() (immediate mode: crash recovery on the next start);
e.stop_rgw(), e.start_rgw() (same port, same data).

The engines are shared by every test of a run: give each test its own
database and bucket. A test that stops or restarts an engine must be
registered with is_parallel: false.

Measured on the 2-core Debian 12 VM (Ceph 16.2.15, PostgreSQL 15.18; other
work running on the machine, load 2-5):
    start, both engines in parallel: 4.9-6.4 s wall to a successful S3
        bucket create+delete (8-9.5 s under heavier load). PostgreSQL
        (initdb --no-sync + start) 1.5-1.9 s; Ceph: mon up 0.5 s, OSD up
        3.9-4.8 s, radosgw-admin user + RGW serving S3 another 0.9-1.0 s
    stop (all daemons, DIR removed): 0.4-1.0 s
    idle RSS after 20-30 s: ceph-mon 39 MiB, ceph-osd 58 MiB, radosgw
        48 MiB, PostgreSQL 65 MiB summed over its 6 processes (16 MiB
        PSS: most of it is shared memory); `engines.py rss DIR` prints it
    restart_postgres() 0.23 s; stop_rgw() + start_rgw() to a working
        endpoint 0.35-0.45 s
"""
import datetime
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

PG_BIN = "/usr/lib/postgresql/15/bin"
REGION = "us-east-1"
MARKER = ".bs-engines"  # stop removes only a directory carrying it
READY_TIMEOUT = 90.0
S3NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class EngineError(Exception):
    """An engine failed: the message names it and carries its log tail."""


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "(no log %s: %s)" % (path, e.strerror)
    return "\n".join("    " + l for l in data[-lines:]) or "    (empty log %s)" % path


def _run(cmd, what, log=None, timeout=60, **kw):
    """Run cmd; on failure raise EngineError with its output."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise EngineError("%s: %s timed out after %d s%s" % (
            what, " ".join(cmd), timeout, "\n" + _tail(log) if log else ""))
    if p.returncode != 0:
        raise EngineError("%s: %s exited %d:\n%s%s" % (
            what, " ".join(cmd), p.returncode,
            p.stdout.decode("utf-8", "replace"), "\n" + _tail(log) if log else ""))
    return p.stdout.decode("utf-8", "replace")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def _kill_wait(pid, timeout=15.0, sig=signal.SIGTERM):
    """Signal pid, wait for it to go; SIGKILL after timeout."""
    if pid is None or not _alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > end:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            end = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.02)
            return
        time.sleep(0.02)
        try:
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        except ChildProcessError:
            pass


def _procs_under(path):
    """Pids whose command line mentions path, and their descendants."""
    found, parents = set(), {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open("/proc/%s/stat" % d) as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if st[0] == "Z":
            continue
        parents[int(d)] = int(st[1])
        if path in cmd:
            found.add(int(d))
    grew = True
    while grew:  # postgres backends do not name the data directory
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _mem_mib(pids, field="Rss:"):
    """Sum of Rss (or Pss: shared pages split, right for postgres) in MiB."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


# --- S3 (SigV4, path-style) -------------------------------------------------

def _q(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


class S3Error(Exception):
    def __init__(self, status, body, what):
        self.status = status
        self.body = body
        super().__init__("%s: HTTP %d %s" % (what, status, body[:300].decode("utf-8", "replace")))


def s3_request(endpoint, access_key, secret_key, method, path, query=None,
               body=b"", headers=None, region=REGION, timeout=30):
    """One signed S3 request; returns (status, headers, body)."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate = now.strftime("%Y%m%dT%H%M%SZ")
    date = amzdate[:8]
    payload = hashlib.sha256(body).hexdigest()
    hdrs = {"host": host, "x-amz-date": amzdate, "x-amz-content-sha256": payload}
    for k, v in (headers or {}).items():
        hdrs[k.lower()] = str(v).strip()
    uri = _q(path, safe="-_.~/")
    cq = "&".join("%s=%s" % (_q(k), _q(v)) for k, v in sorted((query or {}).items()))
    signed = ";".join(sorted(hdrs))
    creq = "\n".join([method, uri, cq,
                      "".join("%s:%s\n" % (k, hdrs[k]) for k in sorted(hdrs)),
                      signed, payload])
    scope = "%s/%s/s3/aws4_request" % (date, region)
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = ("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s"
                             % (access_key, scope, signed, sig))
    del hdrs["host"]
    hdrs["content-length"] = str(len(body))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, uri + ("?" + cq if cq else ""), body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


# --- the engines ------------------------------------------------------------

def _as_postgres():
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Engines:
    """The running engines of one directory (from engines.json)."""

    def __init__(self, info):
        self.info = info
        self.dir = info["dir"]
        pg, s3 = info["pg"], info["s3"]
        self.pg_host, self.pg_port = pg["host"], pg["port"]
        self.pg_user, self.pg_password = pg["user"], pg["password"]
        self.pg_socket_dir, self.pg_data = pg["socket_dir"], pg["data"]
        self.dsn = pg["dsn"]
        self.s3_endpoint, self.s3_region = s3["endpoint"], s3["region"]
        self.s3_port = s3["port"]
        self.access_key, self.secret_key = s3["access_key"], s3["secret_key"]
        self.ceph_conf = info["ceph"]["conf"]

    @classmethod
    def load(cls, dir_):
        with open(os.path.join(dir_, "engines.json"), encoding="utf-8") as f:
            return cls(json.load(f))

    @classmethod
    def from_env(cls):
        path = os.environ.get("BS_TEST_ENGINES")
        if not path:
            raise EngineError(
                "BS_TEST_ENGINES is not set: the cluster suite needs real PostgreSQL "
                "and S3 engines and runs under `tests/cluster/engines.py run -- meson "
                "test --suite cluster ...`, which tools/test does "
                "(tools/test --suite cluster)")
        try:
            with open(path, encoding="utf-8") as f:
                return cls(json.load(f))
        except OSError as e:
            raise EngineError("BS_TEST_ENGINES=%s: %s (engines stopped?)" % (path, e.strerror))

    def env(self):
        return dict(self.info["env"])

    # PostgreSQL

    def dsn_for(self, dbname):
        return "host=%s port=%d user=%s password=%s dbname=%s" % (
            self.pg_host, self.pg_port, self.pg_user, self.pg_password, dbname)

    def psql(self, sql, dbname="postgres"):
        """Run sql with psql over the Unix socket as postgres; returns stdout."""
        return _run(_as_postgres() + [PG_BIN + "/psql", "-X", "-q", "-A", "-t",
                                      "-v", "ON_ERROR_STOP=1", "-h", self.pg_socket_dir,
                                      "-p", str(self.pg_port), "-U", self.pg_user,
                                      "-d", dbname, "-c", sql], "psql", cwd="/")

    def create_database(self, name):
        self.psql('CREATE DATABASE "%s"' % name.replace('"', '""'))
        return self.dsn_for(name)

    def drop_database(self, name):
        self.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name.replace('"', '""'))

    def _pg_ctl(self, *args, timeout=60):
        log = os.path.join(self.dir, "pg", "log")
        return _run(_as_postgres() + [PG_BIN + "/pg_ctl", "-D", self.pg_data, "-l", log]
                    + list(args), "postgres", log=log, timeout=timeout, cwd="/",
                    start_new_session=True, stdin=subprocess.DEVNULL)

    def start_postgres(self):
        self._pg_ctl("-w", "-t", "60", "start")

    def stop_postgres(self):
        self._pg_ctl("-w", "-t", "60", "-m", "fast", "stop")

    def restart_postgres(self):
        self.stop_postgres()
        self.start_postgres()

    def kill_postgres(self):
        """Immediate-mode stop: no checkpoint, recovery on the next start."""
        self._pg_ctl("-w", "-t", "60", "-m", "immediate", "stop")

    # RGW

    def _rgw_pid_path(self):
        return os.path.join(self.dir, "run", "rgw.pid")

    def stop_rgw(self):
        _kill_wait(_read_pid(self._rgw_pid_path()))

    def start_rgw(self, timeout=READY_TIMEOUT):
        _spawn_ceph(self.dir, "radosgw", ["-n", "client.rgw.gw"], "rgw")
        _wait_s3(self, timeout)

    # S3

    def s3(self, method, path, query=None, body=b"", headers=None, ok=(200, 204)):
        st, h, b = s3_request(self.s3_endpoint, self.access_key, self.secret_key,
                              method, path, query, body, headers, self.s3_region)
        if st not in ok:
            raise S3Error(st, b, "%s %s" % (method, path))
        return st, h, b

    def create_bucket(self, name):
        self.s3("PUT", "/" + name)

    def put_object(self, bucket, key, data):
        self.s3("PUT", "/%s/%s" % (bucket, key), body=data)

    def get_object(self, bucket, key):
        return self.s3("GET", "/%s/%s" % (bucket, key))[2]

    def delete_object(self, bucket, key):
        self.s3("DELETE", "/%s/%s" % (bucket, key))

    def list_objects(self, bucket, prefix=""):
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            root = ET.fromstring(self.s3("GET", "/" + bucket, query=q)[2])
            for c in root.findall(S3NS + "Contents"):
                out.append((c.find(S3NS + "Key").text, int(c.find(S3NS + "Size").text)))
            if root.findtext(S3NS + "IsTruncated") != "true":
                return out
            token = root.findtext(S3NS + "NextContinuationToken")

    def delete_bucket(self, name):
        """Empty the bucket, then delete it."""
        for key, _ in self.list_objects(name):
            self.delete_object(name, key)
        self.s3("DELETE", "/" + name)


# --- start / stop -----------------------------------------------------------

def _ceph_conf(d, fsid, mon_port, rgw_port):
    return """# throwaway single-node cluster of engines.py; every path is in {d}
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.ceph.pid
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
crash dir = {d}/crash
log to stderr = false
err to stderr = true
# one node: no replicas, no mgr, small pools
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
auth allow insecure global id reclaim = false

[mon]
mon data = {d}/mon.$id
# single mon: commit proposals at once (start-up 19 s -> 8 s)
paxos propose interval = 0.05
mon data avail warn = 2
mon data avail crit = 1

[osd]
osd data = {d}/osd.$id
osd objectstore = bluestore
# a 10 GiB sparse file osd.0/block: no loop device
bluestore block create = true
bluestore block size = 10737418240
# osd memory target below 896 MiB is ignored: cap the cache itself
bluestore cache autotune = false
bluestore cache size = 67108864
bluestore fsck on mount = false
osd op num shards = 2
osd op num threads per shard = 1

[client.rgw.gw]
rgw data = {d}/rgw
# without tcp_nodelay a small GET takes 44 ms instead of 2
rgw frontends = beast endpoint=127.0.0.1:{rgw} tcp_nodelay=1
rgw thread pool size = 64
rgw enable usage log = false
""".format(d=d, fsid=fsid, mon=mon_port, rgw=rgw_port)


def _spawn_ceph(d, binary, args, name):
    """Start a ceph daemon in the foreground of its own session; pid in DIR/run."""
    log = open(os.path.join(d, "log", name + ".out"), "ab")
    p = subprocess.Popen([binary, "-f", "-c", os.path.join(d, "ceph.conf"),
                          "--setuser", "root", "--setgroup", "root"] + args,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, cwd=d)
    log.close()
    with open(os.path.join(d, "run", name + ".pid"), "w") as f:
        f.write("%d\n" % p.pid)
    return p


def _check_daemon(d, name, logname):
    pid = _read_pid(os.path.join(d, "run", name + ".pid"))
    if pid is None or not _alive(pid):
        raise EngineError("ceph: %s exited during start-up; %s:\n%s\n%s:\n%s" % (
            name, logname, _tail(os.path.join(d, "log", logname)),
            name + ".out", _tail(os.path.join(d, "log", name + ".out"), 10)))


def _wait_s3(eng, timeout):
    """Ready when a real S3 request works: create and delete a bucket."""
    end = time.monotonic() + timeout
    bucket = "engines-ready-" + secrets.token_hex(4)
    last = "no answer"
    while True:
        _check_daemon(eng.dir, "rgw", "client.rgw.gw.log")
        try:
            st, _, b = s3_request(eng.s3_endpoint, eng.access_key, eng.secret_key,
                                  "PUT", "/" + bucket, timeout=10)
            if st == 200:
                eng.s3("DELETE", "/" + bucket)
                return
            last = "HTTP %d %s" % (st, b[:200])
        except (OSError, http.client.HTTPException) as e:
            last = str(e)
        if time.monotonic() > end:
            raise EngineError("ceph: RGW on %s not serving S3 after %d s (last: %s); "
                              "client.rgw.gw.log:\n%s" % (
                                  eng.s3_endpoint, timeout, last,
                                  _tail(os.path.join(eng.dir, "log", "client.rgw.gw.log"))))
        time.sleep(0.1)


def _ceph(d, *args, timeout=30):
    return _run(["ceph", "-c", os.path.join(d, "ceph.conf"), "--connect-timeout", "20"]
                + list(args), "ceph: ceph " + " ".join(args),
                log=os.path.join(d, "log", "mon.a.log"), timeout=timeout, cwd=d)


def _start_ceph(d, info, timings):
    t0 = time.monotonic()
    conf = os.path.join(d, "ceph.conf")
    for sub in ("run", "log", "crash", "rgw", "osd.0"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(conf, "w") as f:
        f.write(_ceph_conf(d, info["ceph"]["fsid"], info["ceph"]["mon_port"],
                           info["s3"]["port"]))
    kr = os.path.join(d, "keyring")
    caps = [("mon.", ["mon", "allow *"]),
            ("client.admin", ["mon", "allow *", "osd", "allow *", "mgr", "allow *"]),
            ("osd.0", ["mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"]),
            ("client.rgw.gw", ["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"])]
    for i, (name, c) in enumerate(caps):
        cmd = ["ceph-authtool", kr, "--gen-key", "-n", name]
        if i == 0:
            cmd.insert(1, "--create-keyring")
        for j in range(0, len(c), 2):
            cmd += ["--cap", c[j], c[j + 1]]
        _run(cmd, "ceph: ceph-authtool")
    monmap = os.path.join(d, "monmap")
    _run(["monmaptool", "--create", "--fsid", info["ceph"]["fsid"], "--addv", "a",
          "[v2:127.0.0.1:%d]" % info["ceph"]["mon_port"], monmap], "ceph: monmaptool")
    mon_log = os.path.join(d, "log", "mon.a.log")
    # --mkfs imports every key of the keyring into the mon's auth database.
    _run(["ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", kr,
          "--setuser", "root", "--setgroup", "root"], "ceph: ceph-mon --mkfs", log=mon_log)
    _spawn_ceph(d, "ceph-mon", ["-i", "a"], "mon")
    osd_uuid = str(uuid.uuid4())
    _ceph(d, "osd", "create", osd_uuid, "0")
    timings["ceph_mon_s"] = round(time.monotonic() - t0, 2)
    osd_log = os.path.join(d, "log", "osd.0.log")
    _run(["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid,
          "--setuser", "root", "--setgroup", "root"], "ceph: ceph-osd --mkfs",
         log=osd_log, timeout=120, cwd=d)
    _spawn_ceph(d, "ceph-osd", ["-i", "0"], "osd")
    end = time.monotonic() + READY_TIMEOUT
    while True:
        _check_daemon(d, "mon", "mon.a.log")
        _check_daemon(d, "osd", "osd.0.log")
        st = json.loads(_ceph(d, "osd", "stat", "-f", "json"))
        if st.get("num_up_osds") == 1:
            break
        if time.monotonic() > end:
            raise EngineError("ceph: osd.0 not up after %d s; osd.0.log:\n%s"
                              % (READY_TIMEOUT, _tail(osd_log)))
        time.sleep(0.2)
    timings["ceph_osd_s"] = round(time.monotonic() - t0, 2)
    # The S3 user (radosgw-admin also creates the default zone and its pools).
    _run(["radosgw-admin", "-c", conf, "user", "create", "--uid=bs-test",
          "--display-name=backupsync tests", "--access-key=" + info["s3"]["access_key"],
          "--secret=" + info["s3"]["secret_key"]], "ceph: radosgw-admin user create",
         log=os.path.join(d, "log", "client.admin.log"), timeout=READY_TIMEOUT, cwd=d)
    eng = Engines(info)
    eng.start_rgw(timeout=max(5.0, end - time.monotonic()))
    timings["ceph_s"] = round(time.monotonic() - t0, 2)


def _start_pg(d, info, timings):
    t0 = time.monotonic()
    pg = info["pg"]
    top = os.path.join(d, "pg")
    os.makedirs(top)
    pwfile = os.path.join(top, "pw")
    with open(pwfile, "w") as f:
        f.write(pg["password"] + "\n")
    if os.geteuid() == 0:
        shutil.chown(top, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    os.chmod(pwfile, 0o600)
    _run(_as_postgres() + [PG_BIN + "/initdb", "-D", pg["data"], "-U", pg["user"],
                           "--pwfile", pwfile, "--auth-local=trust",
                           "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                           "--no-sync"],
         "postgres: initdb", timeout=120, cwd="/")
    os.unlink(pwfile)  # (initdb --no-sync: a throwaway cluster; the server itself runs with fsync)
    with open(os.path.join(pg["data"], "postgresql.auto.conf"), "a") as f:
        f.write("# engines.py: a throwaway cluster on 127.0.0.1 only\n"
                "port = %d\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = '%s'\n"
                "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                "shared_buffers = 32MB\nmax_connections = 200\n"
                "log_min_messages = warning\n" % (pg["port"], top))
    Engines(info).start_postgres()
    timings["postgres_s"] = round(time.monotonic() - t0, 2)


def start(d):
    """Start both engines in d; returns the Engines. On failure everything
    started is stopped (d is kept for its logs) and EngineError raised."""
    d = os.path.abspath(d)
    if os.path.exists(os.path.join(d, "engines.json")):
        raise EngineError("%s: engines already running there (engines.json exists)" % d)
    os.makedirs(d, exist_ok=True)
    if os.listdir(d):
        raise EngineError("%s: not empty" % d)
    open(os.path.join(d, MARKER), "w").close()
    os.chmod(d, 0o755)  # the postgres user must reach DIR/pg
    if len(d) > 70:
        raise EngineError("%s: path too long for the Unix sockets inside it" % d)
    ak = "BS" + secrets.token_hex(9).upper()
    sk = secrets.token_urlsafe(30)
    pw = secrets.token_hex(12)
    pg_port, mon_port, rgw_port = _free_port(), _free_port(), _free_port()
    while len({pg_port, mon_port, rgw_port}) < 3:
        mon_port, rgw_port = _free_port(), _free_port()
    endpoint = "http://127.0.0.1:%d" % rgw_port
    dsn = "host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres" % (pg_port, pw)
    info = {
        "dir": d,
        "pg": {"host": "127.0.0.1", "port": pg_port, "user": "postgres", "password": pw,
               "dbname": "postgres", "dsn": dsn, "socket_dir": os.path.join(d, "pg"),
               "data": os.path.join(d, "pg", "data"), "log": os.path.join(d, "pg", "log"),
               "bin": PG_BIN},
        "s3": {"endpoint": endpoint, "port": rgw_port, "region": REGION,
               "access_key": ak, "secret_key": sk},
        "ceph": {"conf": os.path.join(d, "ceph.conf"), "fsid": str(uuid.uuid4()),
                 "mon_port": mon_port, "logs": os.path.join(d, "log")},
        "env": {"BS_TEST_ENGINES": os.path.join(d, "engines.json"),
                "BS_TEST_PG_DSN": dsn, "BS_TEST_S3_ENDPOINT": endpoint,
                "BS_TEST_S3_REGION": REGION, "BS_TEST_S3_ACCESS_KEY": ak,
                "BS_TEST_S3_SECRET_KEY": sk},
    }
    timings = {}
    t0 = time.monotonic()
    errors = []

    def pg_thread():
        try:
            _start_pg(d, info, timings)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    th = threading.Thread(target=pg_thread, daemon=True)
    th.start()
    try:
        _start_ceph(d, info, timings)
    except BaseException as e:
        errors.insert(0, e)
    while True:  # PostgreSQL must not start behind stop()'s back
        try:
            th.join()
            break
        except BaseException as e:
            errors.insert(0, e)
    if errors:
        stop(d, remove=False)
        e = errors[0]
        if isinstance(e, EngineError) and len(errors) > 1:
            e = EngineError("\n".join(str(x) for x in errors))
        raise e
    timings["total_s"] = round(time.monotonic() - t0, 2)
    info["start_timings"] = timings
    tmp = os.path.join(d, "engines.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(d, "engines.json"))
    return Engines(info)


def stop(d, remove=True):
    """Stop everything started in d (also after a failed start); remove d.
    Raises EngineError when a process survives."""
    d = os.path.abspath(d)
    if not os.path.exists(os.path.join(d, MARKER)):
        if not os.path.exists(d):
            return
        raise EngineError("%s: not an engines directory (no %s), not touching it" % (d, MARKER))
    data = os.path.join(d, "pg", "data")
    pm = _read_pid(os.path.join(data, "postmaster.pid"))
    if pm is not None and _alive(pm):
        try:
            _run(_as_postgres() + [PG_BIN + "/pg_ctl", "-D", data, "-w", "-t", "20",
                                   "-m", "immediate", "stop"], "postgres: stop", cwd="/",
                 timeout=30)
        except EngineError:
            pass  # killed below
    for name in ("rgw", "osd", "mon"):
        _kill_wait(_read_pid(os.path.join(d, "run", name + ".pid")))
    left = _procs_under(d)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 5
    while any(_alive(p) for p in left) and time.monotonic() < end:
        time.sleep(0.05)
    still = [p for p in left if _alive(p)]
    if remove:
        shutil.rmtree(d, ignore_errors=True)
    if still:
        raise EngineError("%s: processes survived stop: %s" % (d, still))
    if left:
        print("engines.py: killed leftover processes %s" % sorted(left), file=sys.stderr)


def _idle_rss(d):
    """Memory of each engine in MiB: {name: [rss, pss]}."""
    out = {}
    for name in ("mon", "osd", "rgw"):
        pid = _read_pid(os.path.join(d, "run", name + ".pid"))
        out[name] = [round(_mem_mib([pid] if pid else [], f), 1) for f in ("Rss:", "Pss:")]
    pg = _procs_under(os.path.join(d, "pg", "data"))
    out["postgres"] = [round(_mem_mib(pg, f), 1) for f in ("Rss:", "Pss:")]
    return out


# --- CLI --------------------------------------------------------------------

class _Signalled(Exception):
    def __init__(self, signum):
        self.signum = signum


def _fail(msg):
    bar = "=" * 72
    print("%s\nengines.py: THE TEST ENGINES DID NOT START\n%s\n%s" % (bar, msg, bar),
          file=sys.stderr)


def _cmd_start(d):
    try:
        eng = start(d)
    except EngineError as e:
        _fail(str(e))
        return 70
    t = eng.info["start_timings"]
    print("# engines in %s started in %.1f s (postgres %.1f s, ceph %.1f s)" % (
        eng.dir, t["total_s"], t["postgres_s"], t["ceph_s"]), file=sys.stderr)
    for k, v in sorted(eng.env().items()):
        print("export %s=%s" % (k, shlex.quote(v)))
    return 0


def _cmd_stop(d):
    t0 = time.monotonic()
    try:
        stop(d)
    except EngineError as e:
        print("engines.py: stop: %s" % e, file=sys.stderr)
        return 1
    print("# engines in %s stopped in %.1f s" % (os.path.abspath(d), time.monotonic() - t0),
          file=sys.stderr)
    return 0


def _cmd_run(d, cmd):
    def on_signal(signum, frame):
        for x in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(x, signal.SIG_IGN)  # one is enough: clean up
        raise _Signalled(signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    if d is None:
        d = tempfile.mkdtemp(prefix="bs-engines.")
        os.rmdir(d)  # start() wants to make it (empty) itself
    rc, child = 70, None
    try:
        try:
            eng = start(d)
        except EngineError as e:
            _fail(str(e))
            return 70
        t = eng.info["start_timings"]
        print("engines.py: started in %.1f s (postgres %.1f s, ceph %.1f s) in %s" % (
            t["total_s"], t["postgres_s"], t["ceph_s"], eng.dir), file=sys.stderr)
        env = dict(os.environ)
        env.update(eng.env())
        try:
            # Its own process group: a signal to run reaches all of CMD
            # (a shell's children too) without hitting run's caller.
            child = subprocess.Popen(cmd, env=env, process_group=0)
        except OSError as e:
            print("engines.py: run: %s: %s" % (cmd[0], e.strerror), file=sys.stderr)
            return 127
        r = child.wait()
        rc = 128 - r if r < 0 else r
        return rc
    except _Signalled as s:
        if child is not None:
            try:
                os.killpg(child.pid, s.signum)
                child.wait(10)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
        print("engines.py: %s: stopping the engines" % signal.Signals(s.signum).name,
              file=sys.stderr)
        rc = 128 + s.signum
        return rc
    finally:
        for x in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(x, signal.SIG_IGN)
        t0 = time.monotonic()
        try:
            if os.path.exists(d):
                stop(d)
                print("engines.py: stopped in %.1f s" % (time.monotonic() - t0), file=sys.stderr)
        except EngineError as e:
            print("engines.py: stop: %s" % e, file=sys.stderr)


def main(argv):
    usage = ("usage: engines.py start DIR | stop DIR | rss DIR | "
             "run [--dir DIR] -- CMD ARGS...")
    if len(argv) == 3 and argv[1] == "start":
        return _cmd_start(argv[2])
    if len(argv) == 3 and argv[1] == "stop":
        return _cmd_stop(argv[2])
    if len(argv) == 3 and argv[1] == "rss":  # memory of a running set: MiB [rss, pss]
        print(json.dumps(_idle_rss(os.path.abspath(argv[2]))))
        return 0
    if len(argv) >= 2 and argv[1] == "run":
        args, d = argv[2:], None
        if args[:1] == ["--dir"] and len(args) >= 2:
            d, args = args[1], args[2:]
        if args[:1] == ["--"]:
            args = args[1:]
        if not args:
            print(usage, file=sys.stderr)
            return 64
        return _cmd_run(d, args)
    print(usage, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
