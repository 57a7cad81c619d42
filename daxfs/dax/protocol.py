"""The wire protocol between a daxfs daemon and its clients (daxfs.dax, the CLI, daxfs.testing): the
names of the side-channel extended attributes, the control socket's messages, and a blocking client.
It imports no trio and no pyfuse3, so every client stays light.

Extended attributes the daemon answers on any inode of its mount (the kernel checks permissions
first, as for any xattr):
  user.daxfs.stats     (get)  the daemon's counters as JSON
  user.daxfs.map       (get, file)  the file's extents with their stability, as JSON
  user.daxfs.prealloc  (set, file: "OFFSET LENGTH")  unwritten extents: fallocate mode 0, a convenience
  user.daxfs.punch     (set, file: "OFFSET LENGTH")  hole punch: fallocate PUNCH_HOLE|KEEP_SIZE, likewise
  user.daxfs.control   (get)  the path of the daemon's control socket
(user.daxfs.map_sync is file state, not a side channel: the engine keeps it, daxfs.engine.xattr.)

Control socket: one JSON object per line each way, at most MAX_MESSAGE bytes. A request names an op,
{"op": "mark", "text": "..."}; the reply comes once the op has taken effect, {"ok": true, ...} or
{"ok": false, "error": "ENAME: what happened"}: an errno name, then words for people. Every field an op
uses is checked for its JSON type and range before it is used (field()): an integer is an integer
(not a boolean, not a float like 1e400), a boolean is true or false. Fields an op does not know are
ignored, so that a newer client may send more.
"""

from __future__ import annotations

import errno
import json
import os
import socket

STATS_XATTR = "user.daxfs.stats"
MAP_XATTR = "user.daxfs.map"
PREALLOC_XATTR = "user.daxfs.prealloc"
PUNCH_XATTR = "user.daxfs.punch"
CONTROL_XATTR = "user.daxfs.control"

# What every access to a mount whose daemon was killed answers.
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)

MAX_MESSAGE = 64 * 1024  # bytes in one line, either way
MAX_DEPTH = 8  # nesting of objects and arrays in one message
MAX_FAULT_PAGES = 1024  # pages in one dax_fault: its answer (a run per page at worst) fits in a message
MAX_ID = (1 << 63) - 1  # inode numbers and mapping ids


class ControlError(Exception):
    """A refusal: {"ok": false, "error": str(e)} on the wire."""


class ProtocolError(ControlError):
    """A message that is not one: too long, not JSON, not an object, nested too deep, NaN."""


def read_stats(path: str) -> dict:
    """The daemon's counters, asked through any path of its mount (OSError if the mount is dead)."""
    return json.loads(os.getxattr(path, STATS_XATTR))


def encode(obj: dict) -> bytes:
    return json.dumps(obj, allow_nan=False).encode() + b"\n"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number here")


def decode(line: bytes) -> dict:
    """One message, validated as every peer's input must be: ProtocolError if it is not a JSON object
    of at most MAX_MESSAGE bytes and MAX_DEPTH levels, without NaN or Infinity."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(line)} bytes, more than {MAX_MESSAGE}")
    depth = peak = 0
    for c in line:  # a bound on nesting before parsing: brackets inside strings only make it stricter
        if c in b"[{":
            depth += 1
            peak = max(peak, depth)
        elif c in b"]}":
            depth -= 1
    if peak > MAX_DEPTH:
        raise ProtocolError(f"message nested {peak} levels deep, more than {MAX_DEPTH}")
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message is a JSON object")
    return obj


_MISSING = object()


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number" if isinstance(v, int) else f"a non-integer number ({v!r})"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


def field(req: dict, name: str, kind: type, lo: int | None = None, hi: int | None = None,
          default=_MISSING, max_len: int | None = None):
    """req[name], checked before anyone uses it: kind int (a JSON integer, not a boolean or a float,
    within [lo, hi]), bool (true or false) or str (at most max_len characters). Absent: `default`,
    or refused if there is none. A refusal is EINVAL naming the field."""
    if name not in req:
        if default is _MISSING:
            raise refusal(errno.EINVAL, f"field {name!r} is missing")
        return default
    v = req[name]
    if kind is int:
        if type(v) is not int:
            raise refusal(errno.EINVAL, f"field {name!r} must be an integer, not {_json_kind(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            shown = str(v) if v.bit_length() <= 64 else f"a {v.bit_length()}-bit integer"
            raise refusal(errno.EINVAL, f"field {name!r} is {shown}, outside [{lo}, {hi}]")
    elif kind is bool:
        if type(v) is not bool:
            raise refusal(errno.EINVAL, f"field {name!r} must be true or false, not {_json_kind(v)}")
    elif kind is str:
        if type(v) is not str:
            raise refusal(errno.EINVAL, f"field {name!r} must be a string, not {_json_kind(v)}")
        if max_len is not None and len(v) > max_len:
            raise refusal(errno.EINVAL, f"field {name!r} is {len(v)} characters long, more than {max_len}")
    else:
        raise TypeError(f"field(): no such kind {kind!r}")
    return v


def refusal(err: int, what: str) -> ControlError:
    """The refusal of an op that failed with errno `err`."""
    return ControlError(f"{errno.errorcode.get(err, 'EIO')}: {what}")


def errno_of(e: ControlError) -> tuple[int | None, str]:
    """(errno, what) of a refusal; errno None if it names none."""
    name, _, what = str(e).partition(": ")
    code = getattr(errno, name, None) if name.isupper() and name.startswith("E") else None
    return (code, what) if code else (None, str(e))


class ControlClient:
    """Blocking client: `ControlClient.for_path(any_path_on_mount).call("mark", text=...)`."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(socket_path)
        except OSError:
            self.sock.close()
            raise
        self.reader = self.sock.makefile("rb")

    @classmethod
    def for_path(cls, path: str, timeout: float = 30.0) -> "ControlClient":
        return cls(os.getxattr(path, CONTROL_XATTR).decode(), timeout)

    def call(self, op: str, **args) -> dict:
        """Send one request and return the reply; ControlError if refused, ConnectionError if the
        daemon died first (which is the expected answer to "crash")."""
        self.sock.sendall(encode({"op": op, **args}))
        line = self.reader.readline(MAX_MESSAGE + 1)
        if not line:
            raise ConnectionError("the daemon closed the control channel")
        reply = decode(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "refused"))
        return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
