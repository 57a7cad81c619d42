"""The fault service: the daemon's side of direct access (daxfs.dax is the client's).

A client maps a file range straight from the pmem image and asks here, over the control socket
(control.py: JSON lines, the caller's uid/gid/pid from SO_PEERCRED), for each page's block the first
time it touches the page:

  dax_map    {ino, offset, length, write, sync} -> {id, slot, epoch, sync, fds, size}
             checks the caller (below) and the file's owner and mode; registers the mapping.
  dax_fault  {id, page, count, write} -> {runs: [[file page, pages, pmem block or null], ...]}
             null is the zero page (a hole or an unwritten block, read). A write fault of a MAP_SYNC
             mapping whose blocks are unstable commits first and answers after: the seed's
             VM_FAULT_NEEDDSYNC, flush the metadata, then make the page writable.
  dax_sync   {id} -> {epoch, revoked, stale: [pages], more}  what changed since the client looked
             (more: the list went on beyond MAX_STALE pages; ask again)
  dax_unmap  {id} -> {}
Refusals are {"ok": false, "error": "EACCES: ..."}: an errno name, then what happened. Every op checks
its caller (SO_PEERCRED: root or the image's owner, and allow_other) before it reads a field, then
every field's type and range (protocol.field) before it uses one; a count is at most MAX_FAULT_PAGES.

The image itself reaches the client through a second socket (`fds` in the reply): one request,
{"write": bool}, answered with two file descriptors (SCM_RIGHTS), the image (read-only unless a
writable mapping was asked for) and the board. Only root and the image's owner get them, whatever
the file's mode says: the image holds every file's data, and a process holding its descriptor can
read or write any block of it. A third user must go through read() and write() (docs/dax.md).

The board is a small shared file of 64-bit words, one slot per mapping, which the client reads
before every access (no system call): its mapping's epoch. The daemon bumps it when pages the
client holds as the zero page got a block, and sets it to 0 when the mapping is revoked (truncate,
hole punch or the last unlink of its range), when the daemon unmounts, and, after a crash, when the
next daemon starts (revoke_stale): a mapping never outlives the daemon that handed out its blocks.
"""

from __future__ import annotations

import array
import contextlib
import functools
import logging
import mmap
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import pyfuse3
import trio

from daxfs.engine import crashpoint
from daxfs.daemon.control import LINE_TIMEOUT, SEND_TIMEOUT, ControlServer, Peer, serve_unix
from daxfs.daemon.proc import groups, start_time
from daxfs.daemon.stats import DaemonStats
from daxfs.daemon.syncrule import SyncRule
from daxfs.daemon.userfaults import Window
from daxfs.dax import uffd
from daxfs.dax.protocol import (MAX_FAULT_PAGES, MAX_ID, ControlError, ProtocolError, decode, encode, field,
                                refusal)
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.format import BLOCK_SIZE as BS, MAX_FILE_BLOCKS
from daxfs.engine.fs import FileSystem
from daxfs.engine.mappings import DaxMapping
from daxfs.engine.inode import Inode
from daxfs.engine.mounttab import fs_type

log = logging.getLogger("daxfs")

BOARD = "board"
FD_SOCKET = "dax"
SLOTS = 4096  # live mappings per mount (slot 0 is never used)
REAP_INTERVAL = 2.0  # seconds between looks for mappings of processes that died
MAX_BYTES = MAX_FILE_BLOCKS * BS  # the largest offset or length a mapping may have
MAX_STALE = 4096  # stale pages in one dax_sync answer (so that it fits in a message)
FDS_REQUEST = 4096  # bytes in the one request of the descriptor socket
LAYOUT_RUNS = 2048  # (page, pages, block) runs in one dax_layout answer (so that it fits in a message)
MAX_ADDRESS = 1 << 47  # x86-64 user space: a window's base must lie below


def revoke_stale(state_dir: str) -> None:
    """Revoke every mapping a killed predecessor handed out (it could not say so itself): zero its
    board, which those clients still read, then remove it. Call before the file system opens."""
    path = os.path.join(state_dir, BOARD)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    try:
        os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)
    os.unlink(path)


class Board:
    """The shared slots: word i is mapping i's epoch, 0 when revoked or free."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, SLOTS * 8)
            self._mm = mmap.mmap(fd, SLOTS * 8)
        finally:
            os.close(fd)
        self.words = memoryview(self._mm).cast("Q")
        self.ro_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)  # what clients are given
        self.free = list(range(SLOTS - 1, 0, -1))

    def take(self, epoch: int) -> int:
        if not self.free:
            raise ControlError(f"ENOMEM: {SLOTS - 1} mappings are live on this mount already")
        slot = self.free.pop()
        self.words[slot] = epoch
        return slot

    def give_back(self, slot: int) -> None:
        self.words[slot] = 0
        self.free.append(slot)

    def close(self) -> None:
        """Revoke every mapping: the daemon is going away."""
        self.words.release()
        self._mm[:] = bytes(SLOTS * 8)
        self._mm.close()
        os.close(self.ro_fd)


@dataclass(eq=False)
class Client:
    """A mapping as the service knows it: whose it is, and what its slot on the board says."""
    dm: DaxMapping
    pid: int
    started: str  # the process's start time: a reused pid is not the same process
    sync: bool
    slot: int
    epoch: int
    window: trio.CancelScope | None = None  # real faults being served (userfaults.Window)


def _answers(fn):
    """Engine errors become refusals ("ENAME: what"); nothing else may escape into the server."""
    @functools.wraps(fn)
    async def wrapper(self, peer: Peer, req: dict) -> dict:
        try:
            return await fn(self, peer, req)
        except FsError as e:
            raise refusal(e.errno, str(e)) from None
        except CorruptImage as e:
            log.error("corruption found during %s: %s", fn.__name__, e)
            raise ControlError(f"EIO: {e}") from None
    return wrapper


class FaultService:
    def __init__(self, fs: FileSystem, rule: SyncRule, stats: DaemonStats, state_dir: str, image: str,
                 allow_other: bool, socket_owner: int | None = None, fault_around: int = 16) -> None:
        self.fs = fs
        self.rule = rule
        self.stats = stats
        self.allow_other = allow_other
        self.fault_around = fault_around
        self.mounter = os.getuid()
        self.image_owner = os.stat(image).st_uid
        self.image_ro = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        self.image_rw = None if fs.readonly else os.open(image, os.O_RDWR | os.O_CLOEXEC)
        self.board = Board(os.path.join(state_dir, BOARD))
        self.fd_path = os.path.join(state_dir, FD_SOCKET)
        self.socket_owner = self.mounter if socket_owner is None else socket_owner
        self.clients: dict[int, Client] = {}  # by mapping id
        self.epoch = 1
        # Real faults (userfaultfd) can only be served from shmem: the client's window must be mapped
        # from the page cache of a tmpfs image.
        kind = fs_type(image)
        self.no_real_faults = None if kind == "tmpfs" else (
            f"the image is on {kind or 'an unknown file system'}, not tmpfs: userfaultfd serves faults of "
            "shared memory only")
        fs.dax_notify = self._changed

    def register(self, control: ControlServer) -> None:
        control.register("dax_map", self._map)
        control.register("dax_fault", self._fault)
        control.register("dax_sync", self._sync)
        control.register("dax_layout", self._layout)
        control.register("dax_unmap", self._unmap)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hand out image descriptors, and drop the mappings of processes that died without unmapping."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve_fds)
            task_status.started()
            starved = False
            while True:
                await trio.sleep(REAP_INTERVAL)
                try:
                    self._reap()
                    starved = False
                except OSError as e:  # no descriptor left to read /proc with: try again next round
                    if not starved:
                        log.warning("cannot look for mappings of dead processes (%s); trying again every %.0f s",
                                    e.strerror or e, REAP_INTERVAL)
                        starved = True
                except Exception:  # never die of it either
                    self.stats.request_errors += 1
                    log.exception("looking for mappings of dead processes failed; trying again in %.0f s",
                                  REAP_INTERVAL)

    def close(self) -> None:
        self.board.close()
        for fd in (self.image_ro, self.image_rw):
            if fd is not None:
                os.close(fd)

    # --- who may ----------------------------------------------------------------------------------
    def _refusal(self, peer: Peer) -> str | None:
        if not self.allow_other and peer.uid != self.mounter:
            return f"EACCES: mounted without allow_other: only uid {self.mounter} may use this mount"
        if peer.uid not in (0, self.image_owner):
            return (f"EACCES: direct access is for root and the image's owner (uid {self.image_owner}): a "
                    "mapping hands out the image itself, which holds every file's data; use read() and write()")
        return None

    @staticmethod
    def _may(peer: Peer, inode: Inode, write: bool) -> bool:
        """open(2)'s check of the file's mode: owner, then group (with supplementary groups), then others."""
        if peer.uid == 0:
            return True
        if peer.uid == inode.uid:
            bits = inode.mode >> 6
        elif inode.gid == peer.gid or inode.gid in groups(peer.pid):
            bits = inode.mode >> 3
        else:
            bits = inode.mode
        need = 0o6 if write else 0o4
        return bits & need == need

    def _check(self, peer: Peer) -> None:
        """Every op's first step: is the caller one who may use direct access at all?"""
        error = self._refusal(peer)
        if error:
            raise ControlError(error)

    def _own(self, peer: Peer, map_id: int) -> Client:
        c = self.clients.get(map_id)
        if c is None or c.pid != peer.pid:
            raise ControlError("EBADF: no such mapping in this process (unmapped, or the daemon restarted)")
        return c

    # --- the ops ----------------------------------------------------------------------------------
    @_answers
    async def _map(self, peer: Peer, req: dict) -> dict:
        self._check(peer)
        ino = field(req, "ino", int, 1, MAX_ID)
        off = field(req, "offset", int, 0, MAX_BYTES)
        length = field(req, "length", int, 1, MAX_BYTES)
        write = field(req, "write", bool, default=False)
        want_sync = field(req, "sync", bool, default=False)
        real = field(req, "real", bool, default=False)
        why = self.no_real_faults or (None if self.image_rw is not None else
                                      "a read-only mount: userfaultfd registers only memory that may be written")
        real = real and why is None
        if off % BS:
            raise ControlError(f"EINVAL: field 'offset' must be a multiple of the page size ({BS})")
        self._reap()
        inode = self.fs.inode(ino)
        if not self._may(peer, inode, write):
            raise ControlError(f"EACCES: uid {peer.uid} may not {'write' if write else 'read'} inode {ino}")
        started = start_time(peer.pid)
        if not started:  # gone already: _reap could never tell that its mapping died
            raise ControlError(f"ESRCH: process {peer.pid} is gone")
        dm = self.fs.dax_map(ino, off // BS, -(-length // BS), write, layout=real)
        try:
            sync = self.rule.is_sync(ino, want_sync)
            self.epoch += 1
            c = Client(dm, peer.pid, started, sync, self.board.take(self.epoch), self.epoch)
        except BaseException:
            self.fs.dax_unmap(dm)  # no slot: the mapping must not stay registered
            raise
        self.clients[dm.id] = c
        self.stats.dax_maps += 1
        self.stats.real_fault_maps += real
        # Pages read before through handles opened before now must not be served from the page cache
        # any more; handles opened from now on bypass it (fuseops._open_handle). In a thread: the
        # kernel waits for pages under read, and those reads need this loop.
        await trio.to_thread.run_sync(_invalidate, ino, False)
        return {"id": dm.id, "slot": c.slot, "epoch": c.epoch, "sync": sync, "fds": self.fd_path,
                "size": inode.size, "real": real, "why": why}

    @_answers
    async def _layout(self, peer: Peer, req: dict) -> dict:
        """The window's pages as runs (first page, pages, pmem block) from page `from` of the window;
        "next" is where to ask again, null at the end."""
        self._check(peer)
        c = self._own(peer, field(req, "id", int, 1, MAX_ID))
        layout = c.dm.layout
        if layout is None:
            raise ControlError("EINVAL: the mapping has explicit faults: it has no layout")
        start = field(req, "from", int, 0, len(layout))
        # a run breaks wherever the next page's block is not the next block
        breaks = np.flatnonzero(np.diff(layout[start:]) != 1) + 1
        edges = [0, *breaks.tolist(), len(layout) - start]
        runs = [[start + a, b - a, int(layout[start + a])] for a, b in zip(edges[:LAYOUT_RUNS], edges[1:LAYOUT_RUNS + 1])
                if b > a]
        end = runs[-1][0] + runs[-1][1] if runs else len(layout)
        return {"runs": runs, "next": end if end < len(layout) else None}

    @_answers
    async def _fault(self, peer: Peer, req: dict) -> dict:
        t0 = time.perf_counter()
        self._check(peer)
        map_id = field(req, "id", int, 1, MAX_ID)
        page = field(req, "page", int, 0, MAX_FILE_BLOCKS)
        count = field(req, "count", int, 1, MAX_FAULT_PAGES)
        write = field(req, "write", bool, default=False)
        c = self._own(peer, map_id)
        runs, tid = self.fs.dax_fault(c.dm, page, count, write)
        # VM_FAULT_NEEDDSYNC: a sync mapping's block mapping is committed before the page is writable
        waited = write and c.sync and await self.rule.commit_before_ack(tid)
        if write:
            _invalidate(c.dm.ino, True)  # st_blocks and mtime changed behind the kernel's back
        self.stats.fault_done(write, waited, time.perf_counter() - t0)
        if write:
            crashpoint.hit("fault.before_reply")
        return {"runs": runs}

    @_answers
    async def _sync(self, peer: Peer, req: dict) -> dict:
        self._check(peer)
        c = self._own(peer, field(req, "id", int, 1, MAX_ID))
        stale = self.fs.dax_take_stale(c.dm)
        more = len(stale) > MAX_STALE
        if more:  # the rest waits for the client's next dax_sync
            c.dm.stale.update(stale[MAX_STALE:])
            stale = stale[:MAX_STALE]
        return {"epoch": c.epoch, "revoked": c.dm.revoked, "stale": stale, "more": more}

    @_answers
    async def _unmap(self, peer: Peer, req: dict) -> dict:
        self._check(peer)
        self._drop(self._own(peer, field(req, "id", int, 1, MAX_ID)))
        return {}

    # --- bookkeeping ------------------------------------------------------------------------------
    def _changed(self, dm: DaxMapping) -> None:
        """The engine revoked dm or made some of its pages stale: tell the client through its slot."""
        c = self.clients.get(dm.id)
        if c is None:
            return
        if not dm.revoked:
            self.epoch += 1
            c.epoch = self.epoch
        self.board.words[c.slot] = 0 if dm.revoked else c.epoch

    def _drop(self, c: Client) -> None:
        if c.window is not None:
            c.window.cancel()
        self.fs.dax_unmap(c.dm)
        self.board.give_back(c.slot)
        del self.clients[c.dm.id]

    def _reap(self) -> None:
        for c in list(self.clients.values()):
            if start_time(c.pid) != c.started:
                log.info("process %d died with mapping %d of inode %d: unmapped", c.pid, c.dm.id, c.dm.ino)
                self._drop(c)

    async def _serve_fds(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_unix(self.fd_path, self._hand_fds, self.stats, self.socket_owner, task_status)

    async def _hand_fds(self, conn, peer: Peer) -> None:
        """One request, one answer: {"write": bool} gets the image and board descriptors;
        {"uffd": id, "base": address} with a userfaultfd attached registers a real-fault window, and
        the connection then stays open while the window lives (the client learns of the daemon's end
        from its close). A refusal ends the connection; anything unexpected is logged, counted and
        answered EIO."""
        fds: list[int] = []
        try:
            line, fds = await _read_request(conn)
            if line is None:
                return  # no request within LINE_TIMEOUT, or the peer went away: nothing to answer
            try:
                error = self._refusal(peer)
                req = {} if error else decode(line)
                if error is None and "uffd" in req:
                    c = self._own(peer, field(req, "uffd", int, 1, MAX_ID))
                    base = field(req, "base", int, uffd.PAGE, MAX_ADDRESS)
                    fd = self._userfaultfd(c, base, fds)
                    fds.remove(fd)
                    return await self._serve_window(c, conn, fd, base)
                write = field(req, "write", bool, default=False)
                if error is None and write and self.image_rw is None:
                    error = "EROFS: the mount is read-only"
            except ProtocolError as e:
                error = f"EINVAL: {e}"
            except ControlError as e:
                error = str(e)
            if error is not None:
                self.stats.control_refusals += 1
                with trio.move_on_after(SEND_TIMEOUT):
                    await conn.send(encode({"ok": False, "error": error}))
                return
            handed = array.array("i", [self.image_rw if write else self.image_ro, self.board.ro_fd])
            with trio.move_on_after(SEND_TIMEOUT):
                await conn.sendmsg([encode({"ok": True})], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, handed.tobytes())])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the peer went away: its answer has nowhere to go
        except Exception:
            self.stats.request_errors += 1
            log.exception("descriptor request of uid %d pid %d failed; answered EIO", peer.uid, peer.pid)
            with contextlib.suppress(OSError), trio.move_on_after(SEND_TIMEOUT):
                await conn.send(encode({"ok": False, "error": "EIO: internal error (see the log)"}))
        finally:
            for fd in fds:
                os.close(fd)

    def _userfaultfd(self, c: Client, base: int, fds: list[int]) -> int:
        """The one descriptor a window request carries, checked to be a userfaultfd."""
        if c.dm.layout is None or c.window is not None:
            raise ControlError("EINVAL: the mapping has explicit faults, or its window is registered already")
        if base % uffd.PAGE:
            raise ControlError("EINVAL: field 'base' must be a multiple of the page size")
        if len(fds) != 1 or os.readlink(f"/proc/self/fd/{fds[0]}") != "anon_inode:[userfaultfd]":
            raise ControlError("EINVAL: a window request carries exactly one descriptor, a userfaultfd")
        return fds[0]

    async def _serve_window(self, c: Client, conn, fd: int, base: int) -> None:
        """Serve the window's faults until the client closes the connection (it unmapped or died),
        the mapping is dropped, or the daemon stops. The userfaultfd is closed at the end, which
        unregisters the window: the client's own watch (daxfs.dax) then takes its pages away."""
        try:
            os.set_blocking(fd, False)
            window = Window(self.fs, self.rule, self.stats, c.dm, c.sync, fd, base, self.fault_around)
            with trio.CancelScope() as scope:
                c.window = scope
                with trio.move_on_after(SEND_TIMEOUT):
                    await conn.send(encode({"ok": True}))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(window.serve)
                    await _closed(conn)
                    nursery.cancel_scope.cancel()
        finally:
            os.close(fd)
            if self.clients.get(c.dm.id) is c:
                self._drop(c)


async def _closed(conn) -> None:
    """Return when the peer closes its end (anything it sends meanwhile is ignored)."""
    with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        while await conn.recv(256):
            pass


async def _read_request(conn) -> tuple[bytes | None, list[int]]:
    """The descriptor socket's one request: a line of at most FDS_REQUEST bytes (longer: returned as
    it is, for decode to refuse), or None if the peer sent no newline within LINE_TIMEOUT or left;
    and the descriptors that came with it (the caller closes them)."""
    buf, fds = b"", []
    with trio.move_on_after(LINE_TIMEOUT):
        while b"\n" not in buf:
            if len(buf) > FDS_REQUEST:
                return buf, fds
            chunk, anc, _, _ = await conn.recvmsg(FDS_REQUEST + 1, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += array.array("i", data[:len(data) - len(data) % 4])
            if not chunk:
                return None, fds
            buf += chunk
        return buf.split(b"\n", 1)[0], fds
    return None, fds


def _invalidate(ino: int, attr_only: bool) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=attr_only)
    except OSError:
        pass  # the kernel does not know the inode (no cache to drop)

