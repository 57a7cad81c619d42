"""The daemon's control channel: a Unix socket beside the FUSE mount, for what FUSE cannot carry.

The protocol (one JSON object per line each way) is daxfs.dax.protocol's, which clients share. The
daemon tells clients where the socket is through the `user.daxfs.control` extended attribute of any
inode on the mount.

Credentials: every connection's peer uid/gid/pid is read with SO_PEERCRED and handed to the op.
Ops that steer or look into the daemon itself (crash, crash_at, mark, passes) are for root and the
user who mounted; ops on files (direct-access faults, faults.py) check the caller against the image's
owner and the file's mode before they touch anything.

Hostile input: a connection is one peer's, and whatever the peer sends or does ends that connection
at worst, never the daemon (docs/design.md, "Hostile input: sockets"):
  - every message is validated before use: protocol.decode (size, nesting, NaN), then protocol.field
    for each field an op reads (JSON type and range); a line that is no message is answered EINVAL
    and ends the connection, a field that is wrong is answered EINVAL naming it;
  - an op that fails unexpectedly is logged with its traceback, counted (request_errors in `daxfs
    stats`) and answered "EIO: internal error (see the log)";
  - a line must be complete LINE_TIMEOUT seconds after its first byte, and a reply taken within
    SEND_TIMEOUT, or the connection is closed; between requests a connection may idle for ever
    (a direct mapping keeps its connection for its whole life);
  - a uid other than root has at most MAX_CONNECTIONS_PER_UID connections open on each socket; the
    next ones are closed at once (counted, logged once per uid);
  - accept() out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off and tries
    again (logged once until it works again).
The sockets are made mode 0600, owned by the user they serve, in the mount's private state
directory (mount.state_directory); see docs/dax.md for who may reach them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from daxfs.daemon.stats import DaemonStats
from daxfs.dax.protocol import MAX_MESSAGE, ControlError, ProtocolError, decode, encode, field
from daxfs.engine import crashpoint

log = logging.getLogger("daxfs")

LINE_TIMEOUT = 10.0  # seconds from a request's first byte to its newline
SEND_TIMEOUT = 10.0  # seconds for the peer to take a reply
MAX_CONNECTIONS_PER_UID = 256  # live connections per socket of one uid other than root
ACCEPT_BACKOFF = 0.1  # seconds to wait after accept() found no descriptor
BACKLOG = 128


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


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class ControlServer:
    def __init__(self, path: str, owner_uid: int, stats: DaemonStats, socket_owner: int | None = None) -> None:
        """owner_uid: the user who mounted (privileged ops are for root and this user); socket_owner:
        who owns the socket file (default owner_uid), the one user besides root who may connect."""
        self.path = path
        self.owner_uid = owner_uid
        self.stats = stats
        self.socket_owner = owner_uid if socket_owner is None else socket_owner
        self.handlers: dict[str, Handler] = {}

    def register(self, op: str, handler: Handler, privileged: bool = False) -> None:
        """privileged: only root and the user who mounted may call it (checked before the handler
        sees the request)."""
        async def guarded(peer: Peer, req: dict) -> dict:
            if privileged and peer.uid not in (0, self.owner_uid):
                raise ControlError(f"EPERM: {op}: permission denied (uid {peer.uid}): for root and the user "
                                   f"who mounted (uid {self.owner_uid})")
            return await handler(peer, req)
        self.handlers[op] = guarded

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_unix(self.path, self._client, self.stats, self.socket_owner, task_status)

    async def _client(self, conn, peer: Peer) -> None:
        """One connection: requests answered in order until the peer closes, sends what is no
        message, stalls, or goes away; whatever happens ends this connection only."""
        stream = trio.SocketStream(conn)
        buf = bytearray()
        deadline = math.inf  # for the line begun in buf
        try:
            while True:
                chunk = None
                with trio.move_on_at(deadline):
                    chunk = await stream.receive_some(65536)
                if chunk is None:
                    log.info("uid %d pid %d: a request unfinished after %.0f s: connection closed",
                             peer.uid, peer.pid, LINE_TIMEOUT)
                    return
                if not chunk:
                    return
                fresh = not buf  # does a new line start in this chunk?
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    fresh = True
                    data, after, last = await self._dispatch(peer, line)
                    if not await _send(stream, data):
                        return
                    if after is not None:  # e.g. "crash": answer first, then take effect
                        after()
                    if last:
                        return
                if len(buf) > MAX_MESSAGE:
                    self.stats.control_refusals += 1
                    error = f"EMSGSIZE: request longer than {MAX_MESSAGE} bytes"
                    await _send(stream, encode({"ok": False, "error": error}))
                    return
                if not buf:
                    deadline = math.inf
                elif fresh:
                    deadline = trio.current_time() + LINE_TIMEOUT
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the peer went away mid-request: its answer has nowhere to go

    async def _dispatch(self, peer: Peer, line: bytes) -> tuple[bytes, Callable | None, bool]:
        """(the reply, what to run once it is sent, whether the connection ends after it)."""
        self.stats.control_requests += 1
        if len(line) > MAX_MESSAGE:
            return self._refused(f"EMSGSIZE: request of {len(line)} bytes, longer than {MAX_MESSAGE}"), None, True
        try:
            req = decode(line)
        except ProtocolError as e:
            return self._refused(f"EINVAL: {e}"), None, True  # not a message: end the connection
        op = req.get("op")
        handler = self.handlers.get(op) if type(op) is str else None
        try:
            if handler is None:
                raise ControlError(f"EINVAL: unknown op {_short(op)}")
            reply = await handler(peer, req)
            after = reply.pop("_after", None)
            return encode({"ok": True, **reply}), after, False
        except ControlError as e:
            return self._refused(str(e)), None, False
        except Exception:
            self.stats.request_errors += 1
            log.exception("control op %s of uid %d pid %d failed; answered EIO", op, peer.uid, peer.pid)
            return self._refused("EIO: internal error (see the log)"), None, False

    def _refused(self, error: str) -> bytes:
        self.stats.control_refusals += 1
        return encode({"ok": False, "error": error})


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    """Send one reply; False if the peer did not take it within SEND_TIMEOUT."""
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)
        return True
    return False


def listen_unix(path: str, owner: int) -> socket.socket:
    """A listening Unix socket at path, mode 0600 and owned by `owner` from the moment it exists: only
    that user and root may connect (connect(2) needs write permission on the socket). path's
    directory must be one no one else may write (mount.state_directory)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a killed daemon of this image
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if owner != os.geteuid():
            os.chown(path, owner, -1, follow_symlinks=False)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_unix(path: str, client: Callable, stats: DaemonStats, owner: int,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on a Unix socket at path (listen_unix) and run client(conn, peer) for each connection,
    until cancelled. The client checks its peer itself; here only the per-uid cap is applied. Nothing
    a connection does ends this loop: accept() failures back off, a client's exception is logged."""
    listener = trio.socket.from_stdlib_socket(listen_unix(path, owner))
    live: dict[int, int] = {}  # uid -> open connections
    warned: set[int] = set()
    starved = False
    name = os.path.basename(path)

    async def run(conn, peer: Peer) -> None:
        try:
            with conn:
                await client(conn, peer)
        except Exception:
            stats.request_errors += 1
            log.exception("%s socket: the connection of uid %d pid %d failed", name, peer.uid, peer.pid)
        finally:
            live[peer.uid] -= 1
            if not live[peer.uid]:
                del live[peer.uid]

    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as e:
                    if e.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                        continue
                    stats.accept_failures += 1
                    if not starved:
                        log.warning("%s socket: accept failed (%s); backing off (logged once until it works again)",
                                    name, e.strerror or e)
                        starved = True
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                if starved:
                    log.info("%s socket: accepting connections again", name)
                    starved = False
                try:
                    peer = peer_of(conn)
                except OSError:
                    conn.close()
                    continue
                if peer.uid != 0 and live.get(peer.uid, 0) >= MAX_CONNECTIONS_PER_UID:
                    conn.close()
                    stats.connections_refused += 1
                    if peer.uid not in warned:
                        warned.add(peer.uid)
                        log.warning("%s socket: uid %d has %d connections open, the most allowed; closing its "
                                    "further ones (logged once per uid)", name, peer.uid, MAX_CONNECTIONS_PER_UID)
                    continue
                live[peer.uid] = live.get(peer.uid, 0) + 1
                nursery.start_soon(run, conn, peer)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def kill_self(point: str) -> None:
    """A crash point's action in the daemon: SIGKILL, as a crash test asks."""
    log.warning("crash point %s reached: SIGKILL", point)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def register_crash_ops(control: ControlServer) -> None:
    """What a crash test may ask of a running daemon: die now, die at the next pass of
    a crash point, write a mark into the log, or how often each crash point was passed. Each answers
    once it has taken effect; all are for root and the user who mounted."""
    async def crash(peer, req):
        log.warning("crash requested by pid %d: SIGKILL", peer.pid)
        return {"_after": lambda: kill_self("control")}

    async def crash_at(peer, req):
        point = field(req, "point", str, max_len=100)
        nth = field(req, "nth", int, 1, MAX_NTH, default=1)
        if point not in crashpoint.POINTS:
            raise ControlError(f"EINVAL: unknown crash point {_short(point)}")
        crashpoint.arm(point, nth, kill_self)
        log.info("crash point %s armed for pass %d by pid %d", point, nth, peer.pid)
        return {}

    async def mark(peer, req):
        text = field(req, "text", str, max_len=MAX_MARK)
        # one line in the log whatever the text holds: control characters are written as escapes
        log.info("MARK %s", text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text)
        for h in logging.getLogger().handlers:
            h.flush()
        return {}

    async def passes(peer, req):
        return {"passes": dict(crashpoint.passes)}

    control.register("crash", crash, privileged=True)
    control.register("passes", passes, privileged=True)
    control.register("crash_at", crash_at, privileged=True)
    control.register("mark", mark, privileged=True)


MAX_NTH = 10 ** 6  # crash_at's pass count
MAX_MARK = 1000  # characters in a mark
