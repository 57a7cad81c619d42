"""The daemon's control channel: a Unix socket beside the FUSE mount, for what FUSE cannot carry.

Protocol: one JSON object per line each way. A request names an op, `{"op": "mark", "text": "..."}`;
the reply comes once the op has taken effect, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
The daemon tells clients where the socket is through the `user.daxfs.control` extended attribute of
any inode on the mount.

Credentials: every connection's peer uid/gid/pid is read with SO_PEERCRED and handed to the op.
Ops that steer the daemon itself (crash, crash_at, mark) are for root and the user who mounted;
ops on files (direct-access faults) check the caller against the file's owner and mode.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

log = logging.getLogger("daxfs")

MAX_REQUEST = 64 * 1024


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


class ControlError(Exception):
    """An op's refusal: becomes {"ok": false, "error": str(e)}."""


# A handler's reply may carry "_after": a callable run once the reply has been sent.
Handler = Callable[[Peer, dict], Awaitable[dict]]


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Peer(pid, uid, gid)


class ControlServer:
    def __init__(self, path: str, owner_uid: int) -> None:
        self.path = path
        self.owner_uid = owner_uid
        self.handlers: dict[str, Handler] = {}

    def register(self, op: str, handler: Handler, privileged: bool = False) -> None:
        """privileged: only root and the user who mounted may call it."""
        async def guarded(peer: Peer, req: dict) -> dict:
            if privileged and peer.uid not in (0, self.owner_uid):
                raise ControlError(f"{op}: permission denied (uid {peer.uid})")
            return await handler(peer, req)
        self.handlers[op] = guarded

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_unix(self.path, self._client, task_status)

    async def _client(self, conn) -> None:
        with conn:
            peer = peer_of(conn)
            stream = trio.SocketStream(conn)
            buf = b""
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_REQUEST and b"\n" not in buf:
                    await _send(stream, {"ok": False, "error": "request too long"})
                    return
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    reply = await self._dispatch(peer, line)
                    after = reply.pop("_after", None)
                    await _send(stream, reply)
                    if after is not None:  # e.g. "crash": answer first, then take effect
                        after()

    async def _dispatch(self, peer: Peer, line: bytes) -> dict:
        try:
            req = json.loads(line)
            handler = self.handlers.get(req.get("op")) if isinstance(req, dict) else None
            if handler is None:
                raise ControlError(f"unknown op {req.get('op') if isinstance(req, dict) else req!r}")
            reply = await handler(peer, req)
            return {"ok": True, **reply}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}"}


async def serve_unix(path: str, client: Callable, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on a Unix socket at path and run client(conn) for each connection, until cancelled.
    Anyone may connect (mode 0666): whoever serves a request checks its caller (peer_of)."""
    if os.path.exists(path):
        os.unlink(path)  # left by a killed daemon of this image
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(16)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(client, conn)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _send(stream, obj: dict) -> None:
    await stream.send_all(json.dumps(obj).encode() + b"\n")


class ControlClient:
    """Blocking client, for tests and tools: `ControlClient.for_path(any_path_on_mount).call("mark", text=...)`."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.reader = self.sock.makefile("rb")

    @classmethod
    def for_path(cls, path: str, timeout: float = 30.0) -> "ControlClient":
        return cls(os.getxattr(path, "user.daxfs.control").decode(), timeout)

    def call(self, op: str, **args) -> dict:
        """Send one request and return the reply; ConnectionError if the daemon died first
        (which is the expected answer to "crash")."""
        self.sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the daemon closed the control channel")
        reply = json.loads(line)
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
