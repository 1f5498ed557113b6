"""bsproto - a raw-frame client for the backupsync wire protocol (version 1).

Encodes and decodes every message of docs/protocol.md with struct, so
integration and hostile-client tests can talk to backupsyncd frame by frame.

Frames are ``u32 length`` (bytes after the field), ``u8 type``, payload; all
integers big-endian; ``str`` is ``u16 length`` + bytes. Paths and texts are
``bytes`` on the wire; functions accept ``str`` (encoded UTF-8) or ``bytes``.

Decoded messages are dicts with a ``"type"`` key holding the message name
("WELCOME", "ERROR", ...) plus the payload fields by their protocol names.

Typical use::

    sock = bsproto.connect(port)
    w = bsproto.hello(sock)                    # register: w["token"] = "ID-KEY"
    ack = bsproto.put(sock, 1, "a.txt", 0, b"hello")
    changes = bsproto.pull(sock, 2, 0)         # list of record dicts
    f = bsproto.get(sock, 3, bsproto.sha256(b"hello"), "a.txt")
"""

import hashlib
import os
import socket
import ssl
import struct

VERSION = 1        # what this client speaks unless told otherwise
DELTA_VERSION = 2  # COPY and GET_DELTA
ATTR_VERSION = 3   # ATTR
HISTORY_VERSION = 4  # HISTORY and HISTORY_ROWS
PAGE_VERSION = 5     # PULL_PAGE
FRAME_MAX_DEFAULT = 1024 * 1024
CHUNK = 256 * 1024

MSG = {
    "HELLO": 1, "WELCOME": 2, "ERROR": 3, "PING": 4, "PONG": 5, "NOTIFY": 6,
    "PULL": 10, "CHANGES": 11, "GET": 12, "FILE": 13, "GET_DELTA": 14,
    "PUT": 20, "DATA": 21, "PUT_END": 22, "MKDIR": 23, "DELETE": 24,
    "MOVE": 25, "SYMLINK": 26, "COPY": 27, "ATTR": 28, "ACK": 30,
    "HISTORY": 15, "HISTORY_ROWS": 16, "PULL_PAGE": 17,
}
HIST = {"LOG": 1, "VERSIONS": 2, "DELETED": 3, "TREE": 4}
MSG_NAME = {v: k for k, v in MSG.items()}

ERR = {
    "BAD_FRAME": 1, "VERSION": 2, "AUTH": 3, "BAD_PATH": 4, "CONFLICT": 5,
    "NOT_FOUND": 6, "TOO_LARGE": 7, "NO_SPACE": 8, "IO": 9, "BUSY": 10,
    "PROTOCOL": 11, "CHECKSUM": 12, "ABORTED": 13, "RATE_LIMITED": 14,
    "TIMEOUT": 15,
}
ERR_NAME = {v: k for k, v in ERR.items()}

OP = {"PUT": 1, "MKDIR": 2, "DELETE": 3, "MOVE": 4, "SYMLINK": 5}
OP_NAME = {v: k for k, v in OP.items()}
KIND = {"FILE": 1, "DIR": 2, "SYMLINK": 3}
KIND_NAME = {v: k for k, v in KIND.items()}

CHANGES_SNAPSHOT = 0x01
CHANGES_MORE = 0x02
CHANGES_PAGE = 0x04
PULL_CONTINUE = 0x01
PUT_ABORT = 0x01

RECORD_MIN = 8 + 1 + 1 + 16 + 8 + 4 + 8 + 32 + 2 + 2


class ProtocolError(Exception):
    """The peer sent something this client cannot decode."""


class ServerError(Exception):
    """The server answered ERROR where a success was expected."""

    def __init__(self, msg):
        self.msg = msg
        self.code = msg["code"]
        self.name = ERR_NAME.get(msg["code"], "UNKNOWN")
        super().__init__("%s (req %d): %s" % (self.name, msg["req"], msg["text"]))


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def sha256(data):
    """SHA-256 of bytes, as the 32 raw bytes the protocol carries."""
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------- encoding

def s16(s):
    """A protocol string: u16 length + bytes."""
    s = _b(s)
    return struct.pack(">H", len(s)) + s


def frame(msg_type, payload=b""):
    """One frame of a message type (name or number) around a raw payload."""
    t = MSG[msg_type] if isinstance(msg_type, str) else msg_type
    return struct.pack(">IB", 1 + len(payload), t) + payload


def enc_hello(token="", device=b"\0" * 16, name="x", min_version=VERSION,
              max_version=VERSION, max_frame=FRAME_MAX_DEFAULT):
    return frame("HELLO", struct.pack(">HHI", min_version, max_version, max_frame)
                 + _b(device) + s16(token) + s16(name))


def enc_welcome(version, max_frame, seq, account_id, token=""):
    return frame("WELCOME", struct.pack(">HIQ", version, max_frame, seq) + s16(account_id) + s16(token))


def enc_error(req, code, text=""):
    return frame("ERROR", struct.pack(">IH", req, code) + s16(text))


def enc_ping(nonce):
    return frame("PING", struct.pack(">Q", nonce))


def enc_pong(nonce):
    return frame("PONG", struct.pack(">Q", nonce))


def enc_notify(seq):
    return frame("NOTIFY", struct.pack(">Q", seq))


def enc_pull(req, since):
    return frame("PULL", struct.pack(">IQ", req, since))


def enc_pull_page(req, since, count, flags=0):
    return frame("PULL_PAGE", struct.pack(">IBQI", req, flags, since, count))


def enc_record(rec):
    """A change record from a dict like the ones dec_record() returns."""
    return (struct.pack(">QBB", rec.get("seq", 0), rec.get("op", 1), rec.get("kind", 1))
            + _b(rec.get("device", b"\0" * 16))
            + struct.pack(">QIq", rec.get("size", 0), rec.get("mode", 0), rec.get("mtime_ns", 0))
            + _b(rec.get("sha", b"\0" * 32)) + s16(rec.get("path", b"")) + s16(rec.get("path2", b"")))


def enc_changes(req, seq, flags, records):
    body = b"".join(enc_record(r) for r in records)
    return frame("CHANGES", struct.pack(">IQBI", req, seq, flags, len(records)) + body)


def enc_get(req, content_sha, path):
    return frame("GET", struct.pack(">I", req) + _b(content_sha) + s16(path))


def enc_get_delta(req, content_sha, have_sha, path):
    return frame("GET_DELTA", struct.pack(">I", req) + _b(content_sha) + _b(have_sha) + s16(path))


def enc_copy(req, offset, length, content_sha):
    return frame("COPY", struct.pack(">IQQ", req, offset, length) + _b(content_sha))


def enc_file(req, size, mode, mtime_ns, version, content_sha):
    return frame("FILE", struct.pack(">IQIqQ", req, size, mode, mtime_ns, version) + _b(content_sha))


def enc_put(req, path, base, size, mode=0o644, mtime_ns=0):
    return frame("PUT", struct.pack(">IQQIq", req, base, size, mode, mtime_ns) + s16(path))


def enc_data(req, data):
    return frame("DATA", struct.pack(">I", req) + _b(data))


def enc_put_end(req, content_sha, flags=0):
    return frame("PUT_END", struct.pack(">IB", req, flags) + _b(content_sha))


def enc_mkdir(req, path, base=0, mode=0o755, mtime_ns=0):
    return frame("MKDIR", struct.pack(">IQIq", req, base, mode, mtime_ns) + s16(path))


def enc_delete(req, path, base):
    return frame("DELETE", struct.pack(">IQ", req, base) + s16(path))


def enc_move(req, src, dst, base_from, base_to=0):
    return frame("MOVE", struct.pack(">IQQ", req, base_from, base_to) + s16(src) + s16(dst))


def enc_symlink(req, path, target, base=0, mtime_ns=0):
    return frame("SYMLINK", struct.pack(">IQq", req, base, mtime_ns) + s16(path) + s16(target))


def enc_attr(req, path, base, mode, mtime_ns, content_sha):
    return frame("ATTR", struct.pack(">IQIq", req, base, mode, mtime_ns) + _b(content_sha) + s16(path))


def enc_history(req, what, path=b"", seq=0, time=0, limit=0):
    return frame("HISTORY", struct.pack(">IBQqI", req, HIST.get(what, what), seq, time, limit) + s16(path))


def enc_ack(req, version):
    return frame("ACK", struct.pack(">IQ", req, version))


# ---------------------------------------------------------------- decoding

class _Reader:
    def __init__(self, data):
        self.data = data
        self.off = 0

    def take(self, n):
        if self.off + n > len(self.data):
            raise ProtocolError("short payload")
        b = self.data[self.off:self.off + n]
        self.off += n
        return b

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def str(self):
        (n,) = self.unpack(">H")
        return self.take(n)

    def rest(self):
        b = self.data[self.off:]
        self.off = len(self.data)
        return b

    def end(self):
        if self.off != len(self.data):
            raise ProtocolError("trailing bytes")


def dec_record(rd):
    seq, op, kind = rd.unpack(">QBB")
    device = rd.take(16)
    size, mode, mtime_ns = rd.unpack(">QIq")
    content = rd.take(32)
    path = rd.str()
    path2 = rd.str()
    return {"seq": seq, "op": op, "op_name": OP_NAME.get(op), "kind": kind,
            "kind_name": KIND_NAME.get(kind), "device": device, "size": size,
            "mode": mode, "mtime_ns": mtime_ns, "sha": content, "path": path, "path2": path2}


def decode(msg_type, payload):
    """Decode a payload of a message type number into a dict."""
    rd = _Reader(payload)
    name = MSG_NAME.get(msg_type)
    m = {"type": name or msg_type}
    if name == "HELLO":
        m["min_version"], m["max_version"], m["max_frame"] = rd.unpack(">HHI")
        m["device"] = rd.take(16)
        m["token"] = rd.str()
        m["name"] = rd.str()
    elif name == "WELCOME":
        m["version"], m["max_frame"], m["seq"] = rd.unpack(">HIQ")
        m["account_id"] = rd.str().decode()
        m["token"] = rd.str().decode()
    elif name == "ERROR":
        m["req"], m["code"] = rd.unpack(">IH")
        m["name"] = ERR_NAME.get(m["code"], "UNKNOWN")
        m["text"] = rd.str().decode(errors="replace")
    elif name in ("PING", "PONG"):
        (m["nonce"],) = rd.unpack(">Q")
    elif name == "NOTIFY":
        (m["seq"],) = rd.unpack(">Q")
    elif name == "PULL":
        m["req"], m["since"] = rd.unpack(">IQ")
    elif name == "PULL_PAGE":
        m["req"], m["flags"], m["since"], m["count"] = rd.unpack(">IBQI")
    elif name == "CHANGES":
        m["req"], m["seq"], m["flags"], m["count"] = rd.unpack(">IQBI")
        if m["count"] * RECORD_MIN > len(payload) - rd.off:
            raise ProtocolError("CHANGES count over payload")
        m["records"] = [dec_record(rd) for _ in range(m["count"])]
    elif name == "HISTORY_ROWS":
        m["req"], m["seq"], m["flags"], m["count"] = rd.unpack(">IQBI")
        rows = []
        for _ in range(m["count"]):
            row = {}
            row["until"], row["time"], row["until_time"] = rd.unpack(">Qqq")
            row["device_name"] = rd.str()
            row.update(dec_record(rd))
            rows.append(row)
        m["rows"] = rows
    elif name == "GET":
        (m["req"],) = rd.unpack(">I")
        m["sha"] = rd.take(32)
        m["path"] = rd.str()
    elif name == "GET_DELTA":
        (m["req"],) = rd.unpack(">I")
        m["sha"] = rd.take(32)
        m["have"] = rd.take(32)
        m["path"] = rd.str()
    elif name == "COPY":
        m["req"], m["offset"], m["size"] = rd.unpack(">IQQ")
        m["sha"] = rd.take(32)
    elif name == "FILE":
        m["req"], m["size"], m["mode"], m["mtime_ns"], m["version"] = rd.unpack(">IQIqQ")
        m["sha"] = rd.take(32)
    elif name == "PUT":
        m["req"], m["base"], m["size"], m["mode"], m["mtime_ns"] = rd.unpack(">IQQIq")
        m["path"] = rd.str()
    elif name == "DATA":
        (m["req"],) = rd.unpack(">I")
        m["data"] = rd.rest()
    elif name == "PUT_END":
        m["req"], m["flags"] = rd.unpack(">IB")
        m["sha"] = rd.take(32)
    elif name == "MKDIR":
        m["req"], m["base"], m["mode"], m["mtime_ns"] = rd.unpack(">IQIq")
        m["path"] = rd.str()
    elif name == "DELETE":
        m["req"], m["base"] = rd.unpack(">IQ")
        m["path"] = rd.str()
    elif name == "MOVE":
        m["req"], m["base_from"], m["base_to"] = rd.unpack(">IQQ")
        m["from"] = rd.str()
        m["to"] = rd.str()
    elif name == "SYMLINK":
        m["req"], m["base"], m["mtime_ns"] = rd.unpack(">IQq")
        m["path"] = rd.str()
        m["target"] = rd.str()
    elif name == "ACK":
        m["req"], m["version"] = rd.unpack(">IQ")
    else:
        raise ProtocolError("unknown message type %r" % msg_type)
    rd.end()
    return m


# ---------------------------------------------------------------- transport

def tls_context():
    """TLS 1.3 as the agent speaks it; these tests check the server's key
    themselves where it matters (the agent's checks are tested in
    test_tls.py)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class ClearAnswer:
    """What a server said in clear text instead of a TLS handshake (BUSY,
    RATE_LIMITED, a TLS/clear mismatch), read like a socket: the ERROR
    frame, then EOF. TLS consumed the frame's first 5 bytes as a record
    header; they are its length and type, which the rest implies."""

    def __init__(self, sock, rest):
        self.sock = sock  # at EOF: always readable, for select()
        self.data = struct.pack(">IB", 1 + len(rest), MSG["ERROR"]) + rest

    def fileno(self):
        return self.sock.fileno()

    def setblocking(self, flag):
        pass

    def recv(self, n):
        out, self.data = self.data[:n], self.data[n:]
        return out

    def sendall(self, data):
        pass

    def settimeout(self, t):
        pass

    def shutdown(self, how):
        pass

    def close(self):
        self.sock.close()


def wrap(sock, tls=True):
    """The socket inside TLS (the handshake done), or as it is for tls=False;
    a ClearAnswer when the server answered in clear text."""
    if not tls:
        return sock
    s = tls_context().wrap_socket(sock, do_handshake_on_connect=False)
    try:
        s.do_handshake()
    except ssl.SSLError:
        rest = b""
        while True:
            try:
                chunk = socket.socket.recv(s, 65536)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
        if not rest:
            s.close()
            raise
        return ClearAnswer(s, rest)
    return s


def connect(port, host="127.0.0.1", timeout=10.0, tls=True, source=None):
    """A connection to the server with a receive timeout: TLS unless tls=False."""
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return wrap(sock, tls)


def recv_exact(sock, n):
    """Exactly n bytes; raises EOFError when the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_raw(sock, max_frame=16 * 1024 * 1024):
    """The next frame as (type number, payload bytes)."""
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    if length == 0 or length > max_frame:
        raise ProtocolError("frame length %d" % length)
    body = recv_exact(sock, length)
    return body[0], body[1:]


def recv_frame(sock, skip_notify=False):
    """The next message as a dict; NOTIFY frames are dropped when skip_notify."""
    while True:
        t, payload = recv_raw(sock)
        m = decode(t, payload)
        if skip_notify and m["type"] == "NOTIFY":
            continue
        return m


def expect(sock, *types, skip_notify=True):
    """The next message, which must be of one of types; ERROR raises ServerError."""
    m = recv_frame(sock, skip_notify=skip_notify)
    if m["type"] in types:
        return m
    if m["type"] == "ERROR":
        raise ServerError(m)
    raise ProtocolError("expected %s, got %s" % ("/".join(types), m["type"]))


def answer(sock):
    """The final answer of a change: the ACK dict, or the ERROR dict (no raise)."""
    m = recv_frame(sock, skip_notify=True)
    if m["type"] not in ("ACK", "ERROR"):
        raise ProtocolError("expected ACK or ERROR, got %s" % m["type"])
    return m


# ---------------------------------------------------------------- requests

def hello(sock, token="", device=b"\0" * 16, name="x", **kw):
    """Send HELLO and return WELCOME (raises ServerError on ERROR)."""
    sock.sendall(enc_hello(token, device, name, **kw))
    return expect(sock, "WELCOME", skip_notify=False)


def ping(sock, nonce=42):
    sock.sendall(enc_ping(nonce))
    return expect(sock, "PONG")


def send_put(sock, req, path, base, data, mode=0o644, mtime_ns=0, chunk=CHUNK, content_sha=None, flags=0):
    """Send PUT, DATA frames and PUT_END without reading the answer (for pipelining)."""
    data = _b(data)
    out = [enc_put(req, path, base, len(data), mode, mtime_ns)]
    for i in range(0, len(data), chunk):
        out.append(enc_data(req, data[i:i + chunk]))
    out.append(enc_put_end(req, content_sha if content_sha is not None else sha256(data), flags))
    sock.sendall(b"".join(out))


def put(sock, req, path, base, data, **kw):
    """Upload data as path on base; returns the ACK or ERROR dict."""
    send_put(sock, req, path, base, data, **kw)
    return answer(sock)


def mkdir(sock, req, path, base=0, mode=0o755, mtime_ns=0):
    sock.sendall(enc_mkdir(req, path, base, mode, mtime_ns))
    return answer(sock)


def delete(sock, req, path, base):
    sock.sendall(enc_delete(req, path, base))
    return answer(sock)


def move(sock, req, src, dst, base_from, base_to=0):
    sock.sendall(enc_move(req, src, dst, base_from, base_to))
    return answer(sock)


def symlink(sock, req, path, target, base=0, mtime_ns=0):
    sock.sendall(enc_symlink(req, path, target, base, mtime_ns))
    return answer(sock)


def pull(sock, req, since):
    """PULL since; returns (seq, flags of the first frame, records) over all CHANGES frames."""
    sock.sendall(enc_pull(req, since))
    records, flags, seq = [], None, None
    while True:
        m = expect(sock, "CHANGES")
        if flags is None:
            flags = m["flags"]
        seq = m["seq"]
        records += m["records"]
        if not m["flags"] & CHANGES_MORE:
            return seq, flags, records


def pull_page(sock, req, since, count, flags=0):
    """PULL_PAGE; returns (seq, flags of the last frame, records) of one
    page (all CHANGES frames up to one without MORE), or the ERROR dict."""
    sock.sendall(enc_pull_page(req, since, count, flags))
    records, seq = [], None
    while True:
        m = recv_frame(sock, skip_notify=True)
        if m["type"] == "ERROR":
            return m
        if m["type"] != "CHANGES" or m["req"] != req:
            raise ProtocolError("expected CHANGES for %d, got %r" % (req, m))
        if seq is not None and m["seq"] != seq:
            raise ProtocolError("CHANGES frames of one page with seq %d and %d" % (seq, m["seq"]))
        seq = m["seq"]
        records += m["records"]
        if not m["flags"] & CHANGES_MORE:
            return seq, m["flags"], records


def get(sock, req, content_sha, path=""):
    """GET content; returns the FILE dict with "data" (all bytes) added."""
    sock.sendall(enc_get(req, content_sha, path))
    f = expect(sock, "FILE")
    data = bytearray()
    while len(data) < f["size"]:
        d = expect(sock, "DATA")
        if d["req"] != req:
            raise ProtocolError("DATA for req %d, expected %d" % (d["req"], req))
        data += d["data"]
    f["data"] = bytes(data)
    return f


def random_device():
    return os.urandom(16)
