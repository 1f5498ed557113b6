"""TLS between agent and server: nothing readable on the wire, the
server's key pinned at first contact and checked after, a given
fingerprint, CA-signed certificates, clear-text/TLS mismatches, and a
flood of stalled handshakes that delays nobody."""

import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import bsproto
import harness
from harness import (AGENT_BIN, Env, Relay, check, free_port, wait_content, wait_until, write_file)

EX_NOPERM = 77


def _spki_fingerprint(der_cert):
    """SHA256:... of a certificate's public key, computed by openssl(1), not by us."""
    pub = subprocess.run(["openssl", "x509", "-inform", "DER", "-pubkey", "-noout"], input=der_cert,
                         stdout=subprocess.PIPE, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         stdout=subprocess.PIPE, check=True).stdout
    import hashlib
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _presented(port, host="127.0.0.1"):
    """The fingerprint of the key the server presents, and the TLS version and cipher."""
    s = bsproto.connect(port, host=host)
    der = s.getpeercert(binary_form=True)
    version, cipher = s.version(), s.cipher()[0]
    s.close()
    return _spki_fingerprint(der), version, cipher


def test_tls_nothing_readable_on_the_wire():
    """Every byte between agents and server, recorded by a relay on the
    path, holds no file content, no file or directory name and no token;
    the server's key is the one backupsyncd --fingerprint prints and logs,
    and the one openssl computes from the certificate it presents."""
    with Env("tls_wire") as env:
        srv = env.server()
        fp = srv.fingerprint()
        check(fp.startswith("SHA256:") and len(fp) == 71 and all(c in "0123456789abcdef" for c in fp[7:]),
              "backupsyncd --fingerprint printed %r" % fp)
        check("key fingerprint %s" % fp in srv.log_text(), "the server did not log its fingerprint at start")
        got, version, cipher = _presented(srv.port)
        check(got == fp, "the server presents %s, --fingerprint says %s" % (got, fp))
        check(version == "TLSv1.3", "negotiated %s" % version)
        # Only TLS 1.3 is offered.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), 5)).close()
            check(False, "the server accepted TLS 1.2")
        except ssl.SSLError:
            pass

        relay = Relay(srv.port)
        secret_name = "Quarterly-report-name-7f3a9c"
        secret_dir = "private-dir-name-b81e44"
        secret = b"SECRET-CONTENT-" + os.urandom(8).hex().encode() + b"-END\n"
        adir = env.path("A")
        write_file(os.path.join(adir, secret_dir, secret_name + ".txt"), secret * 200)
        a = env.agent("A", adir, port=relay.port)
        b = env.agent("B", env.path("B"), token=a.token, port=relay.port)
        wait_content(os.path.join(b.dir, secret_dir, secret_name + ".txt"), (secret * 200).decode(), timeout=30)
        write_file(os.path.join(b.dir, secret_dir, "second-" + secret_name), secret)
        wait_content(os.path.join(adir, secret_dir, "second-" + secret_name), secret.decode(), timeout=30)
        a.stop()
        b.stop()
        relay.close()
        cap = bytes(relay.captured)
        check(len(cap) > len(secret) * 200, "the relay carried only %d bytes" % len(cap))
        check(cap[0] == 0x16, "the first byte on the wire is 0x%02x, not a TLS handshake record" % cap[0])
        for what, needle in (("the token", a.token.encode()), ("the key part of the token", a.token.split("-")[1].encode()),
                             ("a file name", secret_name.encode()), ("a directory name", secret_dir.encode()),
                             ("file content", secret[:24])):
            check(needle not in cap, "%s appears in the recorded stream" % what)


def test_tls_key_changed_refused():
    """An agent pins the key at first contact (and logs it); a server that
    comes back with another key is refused before anything is sent: exit
    77, both fingerprints and how to accept the change logged, the pin
    unchanged. Accepting it as the log says works."""
    with Env("tls_key_changed") as env:
        srv = env.server()
        old = srv.fingerprint()
        write_file(env.path("A", "one.txt"), "one\n")
        a = env.agent("A", env.path("A"))
        wait_content(os.path.join(srv.tree(a.token), "one.txt"), "one\n")
        pin = os.path.join(a.state_dir, "server-fingerprint")
        check(open(pin).read().strip() == old, "pinned %r, the server's key is %s" % (open(pin).read(), old))
        check(os.stat(pin).st_mode & 0o777 == 0o600, "the pin file is not mode 0600")
        check("its key %s is now pinned" % old in a.log_text(), "the first contact was not logged with the key")
        a.stop()

        srv.stop()
        os.unlink(os.path.join(srv.storage, "tls.pem"))
        srv.start()
        new = srv.fingerprint()
        check(new != old, "a new key has the old fingerprint")
        before = srv.log_text()
        write_file(os.path.join(a.dir, "two.txt"), "two\n")
        rc, _, err = a.run_once(timeout=60)
        check(rc == EX_NOPERM, "agent facing a changed key exited %d, want 77:\n%s" % (rc, err))
        check(new in err and old in err and "nothing was sent" in err and "server-fingerprint" in err,
              "the refusal does not name both keys and the way out:\n%s" % err)
        check(open(pin).read().strip() == old, "the pin changed after a refusal")
        time.sleep(0.5)
        after = srv.log_text()[len(before):]
        check("connected" not in after and a.account not in after,
              "the server heard from the refused agent:\n%s" % after)
        check(not os.path.exists(os.path.join(srv.tree(a.token), "two.txt")), "two.txt reached the new server")

        # Accepted as the message says: the pin removed, then pinned again.
        os.unlink(pin)
        rc, _, err = a.run_once(timeout=60)
        check(rc == 0, "after removing the pin: exit %d\n%s" % (rc, err))
        check(open(pin).read().strip() == new, "the new key was not pinned")
        wait_content(os.path.join(srv.tree(a.token), "two.txt"), "two\n")


def test_tls_given_fingerprint():
    """--server-fingerprint wrong at first contact: refused with 77 before
    anything is sent (no account registered); right: used, and it, not a
    pin, decides from then on."""
    with Env("tls_given_fingerprint") as env:
        srv = env.server()
        fp = srv.fingerprint()
        wrong = "SHA256:" + ("0" * 64 if fp[7:] != "0" * 64 else "1" * 64)
        a = env.agent("A", env.path("A"), start=False, args=["--server-fingerprint", wrong])
        write_file(os.path.join(a.dir, "f.txt"), "f\n")
        rc, out, err = a.run_once(timeout=60)
        check(rc == EX_NOPERM, "wrong --server-fingerprint: exit %d\n%s" % (rc, err))
        check(fp in err and wrong in err, "the refusal does not name both keys:\n%s" % err)
        check(not out and "registered" not in srv.log_text(), "an account was registered through a wrong key")
        check(not os.path.exists(os.path.join(a.state_dir, "server-fingerprint")), "a pin was written")
        # Either case, with or without the prefix.
        a.args = ["--server-fingerprint", fp[7:].upper()]
        rc, out, err = a.run_once(timeout=60)
        check(rc == 0 and out and out[0].startswith("ID: "), "right --server-fingerprint: exit %d\n%s" % (rc, err))
        a.token = out[0][4:]
        wait_content(os.path.join(srv.tree(a.token), "f.txt"), "f\n")
        # In the configuration, validated with file, line and key.
        ini = env.path("agent.ini")
        write_file(ini, "[agent:x]\nserver = 127.0.0.1\nport = %d\npath = %s\nserver-fingerprint = SHA256:12\n"
                   % (srv.port, a.dir))
        p = subprocess.run([AGENT_BIN, "--instance", "x", "--config", ini, "--once"], capture_output=True,
                           timeout=30, env=dict(os.environ, XDG_CONFIG_HOME=env.path("nocfg"),
                                                XDG_STATE_HOME=env.path("xstate")))
        err = p.stderr.decode()
        check(p.returncode == 78 and "%s:5: server-fingerprint:" % ini in err,
              "a malformed server-fingerprint: exit %d\n%s" % (p.returncode, err))


def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _make_ca(d):
    """A test CA and two server certificates it signed: one for the name
    localhost (and no address), one for another name."""
    os.makedirs(d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=backupsync test CA", cwd=d)
    for name in ("localhost", "elsewhere.example"):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                 name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
        write_file(os.path.join(d, name + ".ext"), "subjectAltName = DNS:%s\n" % name)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext", cwd=d)


def test_tls_ca_certificate():
    """An administrator's certificate from a CA (tls-cert, tls-key): an
    agent with ca-file checks the chain and the name and is accepted for
    the right name, refused (77, nothing sent) for a wrong one; SIGHUP
    takes a renewed certificate and key without a restart."""
    with Env("tls_ca") as env:
        d = env.path("pki")
        _make_ca(d)
        ini = env.path("server.ini")
        write_file(ini, "[server]\ntls-cert = %s/localhost.pem\ntls-key = %s/localhost.key\n" % (d, d))
        srv = env.server(args=["--config", ini])
        check("TLS 1.3, %s/localhost.pem" % d in srv.log_text(), "the server did not log the certificate in use")
        fp = srv.fingerprint()
        check(_presented(srv.port)[0] == fp, "the server does not present the administrator's certificate")
        adir = env.path("A")
        write_file(os.path.join(adir, "f.txt"), "f\n")
        state = env.path("state-A")

        def agent(host, *extra):
            p = subprocess.run([AGENT_BIN, host, str(srv.port), adir, "--state-dir", state, "--once"] + list(extra),
                               capture_output=True, timeout=60)
            return p.returncode, p.stdout.decode(), p.stderr.decode()

        rc, out, err = agent("localhost", "--ca-file", "%s/ca.pem" % d)
        check(rc == 0 and out.startswith("ID: "), "the CA-signed server by its name: exit %d\n%s" % (rc, err))
        token = out.split()[1]
        check(not os.path.exists(os.path.join(state, "server-fingerprint")), "a CA-verified server was pinned")
        wait_content(os.path.join(srv.tree(token), "f.txt"), "f\n")
        # By address: the certificate names no address.
        rc, out, err = agent("127.0.0.1", "--ca-file", "%s/ca.pem" % d)
        check(rc == EX_NOPERM and "certificate verify failed" in err and "nothing was sent" in err,
              "the CA-signed server by an address it does not name: exit %d\n%s" % (rc, err))
        # Another CA: refused.
        rc, out, err = agent("localhost", "--ca-file", "/etc/ssl/certs/ca-certificates.crt")
        check(rc == EX_NOPERM and "certificate verify failed" in err, "a CA that did not sign it: %d\n%s" % (rc, err))

        # Renewed as an ACME client would: new files in place, then SIGHUP.
        shutil.copy(os.path.join(d, "elsewhere.example.pem"), os.path.join(d, "localhost.pem"))
        shutil.copy(os.path.join(d, "elsewhere.example.key"), os.path.join(d, "localhost.key"))
        srv.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: srv.log_text().count("configuration reloaded: TLS 1.3") >= 1, 15, "the reload")
        new = srv.fingerprint()
        check(new != fp and _presented(srv.port)[0] == new, "SIGHUP did not bring the renewed key into use")
        rc, out, err = agent("localhost", "--ca-file", "%s/ca.pem" % d)
        check(rc == EX_NOPERM and "certificate verify failed" in err,
              "a certificate for elsewhere.example accepted for localhost: %d\n%s" % (rc, err))
        # A broken pair keeps the one in use.
        shutil.copy(os.path.join(d, "ca.key"), os.path.join(d, "localhost.key"))
        srv.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the configuration in effect" in srv.log_text(), 15, "the broken reload logged")
        check(_presented(srv.port)[0] == new, "a broken certificate and key replaced the working ones")
        # tls-cert without tls-key is an error naming the file.
        write_file(ini, "[server]\ntls-cert = %s/localhost.pem\n" % d)
        p = subprocess.run([harness.SERVER_BIN, "--config", ini, "--storage", env.path("s2"), "--fingerprint"],
                           capture_output=True, timeout=30)
        check(p.returncode == 78 and ini in p.stderr.decode() and "tls-key" in p.stderr.decode(),
              "tls-cert alone: %d %s" % (p.returncode, p.stderr.decode()))


def test_tls_clear_mismatch():
    """tls = no on one side only fails with a clear message on both sides,
    never in clear text by surprise; both sides with tls = no sync."""
    with Env("tls_clear_mismatch") as env:
        ini = env.path("clear.ini")
        write_file(ini, "[server]\ntls = no\n")
        clear = env.server(args=["--config", ini])
        check("TLS is off (tls = no)" in clear.log_text(), "the clear server does not warn")
        tls = env.server()
        adir = env.path("A")
        write_file(os.path.join(adir, "f.txt"), "f\n")

        a = env.agent("A", adir, server=clear, start=False)
        rc, out, err = a.run_once(timeout=30)
        check(rc != 0 and not out, "a TLS agent registered at a clear server: %d" % rc)
        check("refused TLS" in err and "runs without TLS (tls = no)" in err,
              "the TLS agent's message at a clear server:\n%s" % err)
        check("runs without TLS (tls = no)" in clear.log_text(), "the clear server did not log the TLS client")

        b = env.agent("B", adir, server=tls, start=False, args=["--tls", "no"])
        rc, out, err = b.run_once(timeout=30)
        check(rc != 0 and not out, "a clear agent registered at a TLS server: %d" % rc)
        check("requires TLS" in err, "the clear agent's message at a TLS server:\n%s" % err)
        check("requires TLS" in tls.log_text() and "registered" not in tls.log_text(),
              "the TLS server's log about the clear agent")

        c = env.agent("C", adir, server=clear, start=False, args=["--tls", "no"])
        rc, out, err = c.run_once(timeout=30)
        check(rc == 0 and out and out[0].startswith("ID: "), "clear agent, clear server: %d\n%s" % (rc, err))
        wait_content(os.path.join(clear.tree(out[0][4:]), "f.txt"), "f\n")


def test_tls_handshake_flood():
    """Hundreds of connections that stop half-way through the handshake
    (or never begin it) delay no agent, and each is closed at the
    handshake deadline."""
    with Env("tls_handshake_flood") as env:
        srv = env.server(args=["--idle-timeout", "3s"])
        write_file(env.path("A", "first.txt"), "first\n")
        a = env.agent("A", env.path("A"), poll="500ms")
        b = env.agent("B", env.path("B"), token=a.token, poll="500ms")
        write_file(os.path.join(a.dir, "warm.txt"), "warm\n")
        wait_content(os.path.join(b.dir, "warm.txt"), "warm\n")
        # A real ClientHello, cut short.
        hello = bytearray()
        inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = bsproto.tls_context().wrap_bio(inb, outb)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            hello = outb.read()
        check(hello[:1] == b"\x16", "no ClientHello to cut")
        socks = []
        t0 = time.monotonic()
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", srv.port), 5,
                                         source_address=("127.0.0.%d" % (2 + i % 50), 0))
            if i % 3 == 0:
                s.sendall(hello[:len(hello) // 2])
            elif i % 3 == 1:
                s.sendall(hello[:5])
            socks.append(s)
        for i in range(5):
            name = "during-%d.txt" % i
            t1 = time.monotonic()
            write_file(os.path.join(a.dir, name), "x%d\n" % i)
            wait_content(os.path.join(b.dir, name), "x%d\n" % i, timeout=10)
            check(time.monotonic() - t1 < 3, "a change took %.1f s to reach B during the flood"
                  % (time.monotonic() - t1))
        open_ = list(socks)
        deadline = t0 + 12
        closed_at = {}
        while open_ and time.monotonic() < deadline:
            r, _, _ = select.select(open_, [], [], 0.2)
            for s in r:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed_at[s] = time.monotonic() - t0
                    open_.remove(s)
        check(not open_, "%d stalled handshakes still open %.0f s later (deadline 3 s)"
              % (len(open_), time.monotonic() - t0))
        early = [t for t in closed_at.values() if t < 2.5]
        check(not early, "%d stalled handshakes closed before the deadline" % len(early))
        for s in socks:
            s.close()
        check(srv.running(), "the server died")
        check("no TLS handshake in time" in srv.log_text(), "the stalled handshakes were not logged")
        write_file(os.path.join(a.dir, "after.txt"), "after\n")
        wait_content(os.path.join(b.dir, "after.txt"), "after\n", timeout=10)


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cut_upload(port, token, rst, tmpdir):
    """Authenticate, begin an upload, then end the connection in the middle
    of a TLS record, as an agent killed while sending does."""
    sock = socket.create_connection(("127.0.0.1", port), 5)
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = bsproto.tls_context().wrap_bio(inb, outb)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outb.read())
            data = sock.recv(65536)
            check(data, "the server closed the connection during the handshake")
            inb.write(data)
    sock.sendall(outb.read())
    # More than the 64 KiB the server keeps in memory: the upload is in tmp/.
    obj.write(bsproto.enc_hello(token, os.urandom(16), "cut") +
              bsproto.enc_put(2, "cut.bin", 0, 1 << 20) + bsproto.enc_data(2, b"x" * (68 << 10)))
    sock.sendall(outb.read())
    wait_until(lambda: os.listdir(tmpdir), 10, "the server to begin the upload")
    obj.write(bsproto.enc_data(2, b"y" * 8192))
    record = outb.read()
    sock.sendall(record[:len(record) // 2])
    time.sleep(0.2)
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_tls_cut_record():
    """A connection that ends in the middle of a TLS record (an agent
    killed while uploading) is closed at once: its partial upload is
    dropped and the server does not spin on what TLS still holds."""
    with Env("tls_cut_record") as env:
        srv = env.server()
        write_file(env.path("A", "first.txt"), "first\n")
        a = env.agent("A", env.path("A"))
        wait_until(lambda: os.path.exists(os.path.join(srv.tree(a.token), "first.txt")), 30,
                   "first.txt on the server")
        tmpdir = os.path.join(srv.storage, a.account, "tmp")
        for rst in (False, True):
            _cut_upload(srv.port, a.token, rst, tmpdir)
            wait_until(lambda: not os.listdir(tmpdir), 5,
                       "the server to drop the cut upload (%s)" % ("reset" if rst else "FIN"))
            cpu0 = _cpu_seconds(srv.popen.pid)
            time.sleep(1)
            used = _cpu_seconds(srv.popen.pid) - cpu0
            check(used < 0.3, "the server used %.2f s of CPU in 1 s after a cut record (%s)"
                  % (used, "reset" if rst else "FIN"))
        write_file(os.path.join(a.dir, "after.txt"), "after\n")
        wait_until(lambda: os.path.exists(os.path.join(srv.tree(a.token), "after.txt")), 10,
                   "after.txt on the server")
