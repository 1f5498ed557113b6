#!/usr/bin/env python3
"""make-seeds.py - write the seed corpora of the fuzz targets.

    tests/fuzz/make-seeds.py        rewrites tests/fuzz/corpus/{frame,path,config}/

frame/: one valid frame of every message type (encoded with
tests/integration/bsproto.py, the test suite's independent encoder), a
CHANGES frame with records of every op, a buffer of several frames, and a
few malformed ones. path/: valid and invalid tree paths. config/: valid
and invalid backupsync.ini files. The files are small on purpose: the
fuzzer finds the long inputs itself.
"""
import os
import shutil
import struct
import sys

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import bsproto as p  # noqa: E402

SHA = p.sha256(b"hello")
DEV = bytes(range(16))


def frames():
    recs = [
        {"seq": 1, "op": p.OP["MKDIR"], "kind": p.KIND["DIR"], "mode": 0o755, "path": "docs"},
        {"seq": 2, "op": p.OP["PUT"], "kind": p.KIND["FILE"], "device": DEV, "size": 5,
         "mode": 0o644, "mtime_ns": 1700000000123456789, "sha": SHA, "path": "docs/a.txt"},
        {"seq": 3, "op": p.OP["SYMLINK"], "kind": p.KIND["SYMLINK"], "path": "docs/link",
         "path2": "../elsewhere"},
        {"seq": 4, "op": p.OP["MOVE"], "kind": p.KIND["FILE"], "path": "docs/a.txt",
         "path2": "docs/b.txt"},
        {"seq": 5, "op": p.OP["DELETE"], "kind": p.KIND["FILE"], "path": "docs/b.txt"},
    ]
    out = {
        "hello": p.enc_hello("", DEV, "laptop"),
        "hello-token": p.enc_hello("ABCD-" + "A" * 32, DEV, "desktop", 1, 3, 65536),
        "welcome": p.enc_welcome(1, 1 << 20, 42, "ABCD", "ABCD-" + "B" * 32),
        "error": p.enc_error(7, p.ERR["CONFLICT"], "base 3 is not the current version 5"),
        "ping": p.enc_ping(0x0102030405060708),
        "pong": p.enc_pong(0x0102030405060708),
        "notify": p.enc_notify(99),
        "pull": p.enc_pull(3, 0),
        "changes": p.enc_changes(4, 5, p.CHANGES_SNAPSHOT, recs),
        "changes-empty": p.enc_changes(5, 0, p.CHANGES_MORE, []),
        "get": p.enc_get(6, SHA, "docs/a.txt"),
        "file": p.enc_file(6, 5, 0o644, -1, 2, SHA),
        "put": p.enc_put(8, "docs/new file.txt", 0, 5, 0o600, 123),
        "data": p.enc_data(8, b"hello"),
        "put-end": p.enc_put_end(8, SHA),
        "put-end-abort": p.enc_put_end(9, b"\0" * 32, p.PUT_ABORT),
        "mkdir": p.enc_mkdir(10, "docs/sub", 0, 0o700, 5),
        "delete": p.enc_delete(11, "docs/sub", 10),
        "move": p.enc_move(12, "docs/a.txt", "docs/c.txt", 2, 0),
        "symlink": p.enc_symlink(13, "docs/l", "/etc/passwd", 0, 7),
        "ack": p.enc_ack(13, 14),
        "get-delta": p.enc_get_delta(14, SHA, p.sha256(b"older"), "docs/a.txt"),
        "copy": p.enc_copy(15, 1 << 20, 64 << 10, SHA),
        "bad-copy-short": p.frame("COPY", struct.pack(">IQQ", 1, 0, 1) + SHA[:31]),
        "attr": p.enc_attr(16, "docs/a.txt", 2, 0o640, 1700000000123456789, SHA),
        "bad-attr-short": p.frame("ATTR", struct.pack(">IQIq", 1, 2, 0o644, 0) + SHA[:31]),
        # malformed: each should be refused, never crash
        "bad-zero-length": struct.pack(">I", 0),
        "bad-unknown-type": p.frame(99, b"\0" * 8),
        "bad-short-ping": p.frame("PING", b"\0" * 7),
        "bad-trailing": p.frame("PONG", b"\0" * 9),
        "bad-changes-count": p.frame("CHANGES", struct.pack(">IQBI", 1, 1, 0, 1000)),
        "bad-record-op": p.enc_changes(1, 1, 0, [{"op": 9, "kind": 1, "path": "x"}]),
        "bad-string-over": p.frame("GET", struct.pack(">I", 1) + SHA + struct.pack(">H", 200) + b"x"),
    }
    out["stream"] = out["hello"] + out["welcome"] + out["pull"] + out["changes"] + out["ack"]
    return out


PATHS = {
    "simple": b"a.txt",
    "nested": b"docs/2024/report final.pdf",
    "dots-in-name": b"...hidden/..a/a..",
    "bytes": b"caf\xc3\xa9/\xff\xfe\n\t name",
    "temp": b".backupsync-tmp.123",
    "bad-absolute": b"/etc/passwd",
    "bad-dotdot": b"a/../b",
    "bad-dot": b"./a",
    "bad-empty-component": b"a//b",
    "bad-trailing-slash": b"a/",
    "bad-nul": b"a\0b",
    "bad-component-256": b"d/" + b"n" * 256,
    "component-255": b"d/" + b"n" * 255,
}

CONFIGS = {
    "server": b"[server]\nport = 7373\nlisten = ::\nstorage = /var/lib/backupsync\n"
              b"require-key = yes\nkeep-versions = 30d\nidle-timeout = 120s\nmax-connections = 1024\n",
    "agent": b"[agent:docs]\nserver = backup.example.org\nport = 7373\npath = ~/Documents\n"
             b"id = ABCD\npoll-interval = 250ms\nverify-interval = 30m\ndevice-name = laptop\n",
    "both": b"; comment\n# comment\n[server]\nport = 1\n\n[agent:docs]\nserver = ::1\nport = 2\n"
            b"path = /srv/docs\n[agent:photos]\nserver = 10.0.0.1\nport = 3\npath = ~\n",
    "bom-continuation": b"\xef\xbb\xbf[agent:docs]\nserver = h\nport = 9\npath = /p\n"
                        b"device-name = long\n  continued\n",
    "bad-section": b"[client]\nport = 1\n",
    "bad-key": b"[server]\nportt = 1\n",
    "bad-values": b"[server]\nport = 0\nlisten = nowhere\nmax-connections = -1\n",
    "bad-agent": b"[agent:docs]\nserver = -x\nport = 70000\npath = relative\npoll-interval = 1ms\n"
                 b"id = not a token\n",
    "bad-syntax": b"[agent:docs\nserver\n= value\n",
    "bad-outside": b"port = 1\n[server]\n",
    "bad-instance": b"[agent:a b]\nserver = h\n[agent:]\n",
    "empty": b"",
}


def write(kind, items):
    d = os.path.join(HERE, "corpus", kind)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in items.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds in %s" % (kind, len(items), os.path.relpath(d)))


def main():
    write("frame", frames())
    write("path", PATHS)
    write("config", CONFIGS)


if __name__ == "__main__":
    main()
