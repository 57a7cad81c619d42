"""The daemon's control channel: a Unix socket beside the FUSE mount, for what FUSE cannot carry.

The protocol (one JSON object per line each way) is daxfs.dax.protocol's, which clients share. The
daemon tells clients where the socket is through the `user.daxfs.control` extended attribute of any
inode on the mount.

Credentials: every connection's peer uid/gid/pid is read with SO_PEERCRED and handed to the op.
Ops that steer the daemon itself (crash, crash_at, mark) are for root and the user who mounted;
ops on files (direct-access faults) check the caller against the file's owner and mode.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from daxfs.dax.protocol import MAX_MESSAGE, ControlError, ProtocolError, decode, encode
from daxfs.engine import crashpoint

log = logging.getLogger("daxfs")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


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
                raise ControlError(f"EPERM: {op}: permission denied (uid {peer.uid})")
            return await handler(peer, req)
        self.handlers[op] = guarded

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_unix(self.path, self._client, task_status)

    async def _client(self, conn) -> None:
        """One connection: requests answered in order until the peer closes, sends what is no
        message, or goes away; whatever happens ends this connection only."""
        with conn:
            peer = peer_of(conn)
            stream = trio.SocketStream(conn)
            buf = b""
            try:
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_MESSAGE and b"\n" not in buf:
                        await stream.send_all(encode({"ok": False, "error": "EMSGSIZE: request too long"}))
                        return
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        reply = await self._dispatch(peer, line)
                        after = reply.pop("_after", None)
                        await stream.send_all(encode(reply))
                        if after is not None:  # e.g. "crash": answer first, then take effect
                            after()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # the peer went away mid-request: its answer has nowhere to go

    async def _dispatch(self, peer: Peer, line: bytes) -> dict:
        try:
            req = decode(line)
            op = req.get("op")
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ControlError(f"EINVAL: unknown op {op!r}")
            reply = await handler(peer, req)
            return {"ok": True, **reply}
        except ProtocolError as e:
            return {"ok": False, "error": f"EINVAL: {e}"}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            return {"ok": False, "error": f"EINVAL: bad request: {e!r}"}


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


def kill_self(point: str) -> None:
    """A crash point's action in the daemon: SIGKILL, as a crash test asks."""
    log.warning("crash point %s reached: SIGKILL", point)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def register_crash_ops(control: ControlServer) -> None:
    """What a crash test may ask of a running daemon: die now, die at the next pass of
    a crash point, write a mark into the log, or how often each crash point was passed. Each answers
    once it has taken effect."""
    async def crash(peer, req):
        log.warning("crash requested by pid %d: SIGKILL", peer.pid)
        return {"_after": lambda: kill_self("control")}

    async def crash_at(peer, req):
        point, nth = req["point"], int(req.get("nth", 1))
        if point not in crashpoint.POINTS:
            raise ControlError(f"EINVAL: unknown crash point {point!r}")
        crashpoint.arm(point, nth, kill_self)
        log.info("crash point %s armed for pass %d by pid %d", point, nth, peer.pid)
        return {}

    async def mark(peer, req):
        log.info("MARK %s", str(req["text"])[:1000])
        for h in logging.getLogger().handlers:
            h.flush()
        return {}

    async def passes(peer, req):
        return {"passes": dict(crashpoint.passes)}

    control.register("crash", crash, privileged=True)
    control.register("passes", passes)
    control.register("crash_at", crash_at, privileged=True)
    control.register("mark", mark, privileged=True)
