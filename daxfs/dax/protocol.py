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
{"ok": false, "error": "ENAME: what happened"}: an errno name, then words for people.
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
