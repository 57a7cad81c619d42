"""The direct-access client: map files of a daxfs mount straight from pmem, as DAX with MAP_SYNC
does on real pmem.

    from daxfs import dax

    m = dax.mmap("/mnt/pm/log", 1 << 20, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC)
    m[0:5] = b"hello"            # first store to a page: a write fault (the daemon allocates, commits)
    m.persist(0, 5)              # the user-space flush (pmem_persist): now it survives a power cut
    a = m.view(4096, 8192, write=True)   # a numpy view: plain memory stores, no daxfs code at all
    a[:] = 7
    del a
    m.close()

The mapping is a window of the caller's address space whose pages are the image's own pages (mmap of
the image at the block's offset, MAP_FIXED into a reserved range): loads and stores never pass through
FUSE. Page faults are explicit, since Python cannot catch SIGSEGV: every access through the mapping's
methods first looks at the page's state here, and a page not yet there is faulted in by asking the
daemon (faults.py) for its block. The first read of a page maps it (a hole or unwritten block reads
as the zero page, nothing is allocated); the first write asks for the page writable: the daemon
allocates or converts the block, and for a MAP_SYNC mapping commits the journal before it answers.
Stores to pages already writable never talk to the daemon.

Before each access the mapping reads one shared word (its slot on the daemon's board): when the
daemon revokes the mapping (truncate, hole punch or unlink of its range, unmount, daemon restart)
the access raises BusError, the SIGBUS of this world; when a page held as the zero page got a block
through another path, the page is faulted again. numpy views from view() are raw memory: they see
no revocation (their blocks stay pinned, so stores there harm no other file) and close() refuses
to run while one is alive. Not thread-safe: give each thread its own mapping.

With the image on tmpfs (the usual case) the faults are real instead (faults="auto", the default):
the window is mapped whole, each page on its block, and registered with a userfaultfd that the daemon
serves (daemon/userfaults.py). Then any load or store into the window, from any code (numpy, a C
extension, a system call copying from it) faults as on a DAX kernel, and the methods below only
check that the mapping is open. A page beyond EOF then gives SIGBUS, as with Python's own mmap
module. Where real faults are not possible (the image is not on tmpfs, or this kernel or user may not
use userfaultfd), the mapping falls back to explicit faults and says why once (ExplicitFaults).

Only root and the image's owner may map (faults.py says why); everyone else uses read() and write().
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap as _mmap
import os
import socket
import stat
import threading
import warnings
import weakref

import numpy as np

from daxfs.dax import uffd
from daxfs.dax.protocol import (CONTROL_XATTR, MAX_FAULT_PAGES, ControlClient, ControlError, decode, encode,
                                errno_of)
from daxfs.engine.runs import true_runs

PAGE = _mmap.PAGESIZE
PROT_READ = _mmap.PROT_READ
PROT_WRITE = _mmap.PROT_WRITE

# mmap(2) flags, with the kernel's values (asm-generic/mman*.h, x86-64)
MAP_SHARED = 0x01
MAP_SHARED_VALIDATE = 0x03  # MAP_SHARED that refuses the flags it does not know (EOPNOTSUPP)
MAP_POPULATE = 0x8000  # read-fault every page at mmap time, as Linux does for shared mappings
MAP_SYNC = 0x80000  # synchronous page faults: a page is writable only once its mapping is committed
_MAP_PRIVATE = 0x02
_MAP_TYPE = 0x0F
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_MAP_GROWSDOWN = 0x100
_MAP_NORESERVE = 0x4000
_MAP_HUGETLB = 0x40000
# Linux's LEGACY_MAP_MASK (include/linux/mman.h, 6.x, x86-64): what MAP_SHARED keeps and
# MAP_SHARED_VALIDATE accepts without asking the file system; checked bit by bit against this kernel.
LEGACY_MAP_MASK = (MAP_SHARED | _MAP_PRIVATE | _MAP_FIXED | _MAP_ANONYMOUS | 0x40 | 0x80 | _MAP_GROWSDOWN
                   | 0x800 | 0x1000 | 0x2000 | _MAP_NORESERVE | MAP_POPULATE | 0x10000 | 0x20000
                   | _MAP_HUGETLB | 0x7C000000)
# Legacy flags that would place or back the mapping some other way: daxfs.dax does that itself.
_REFUSED = _MAP_FIXED | _MAP_ANONYMOUS | _MAP_GROWSDOWN | _MAP_HUGETLB
_MS_SYNC = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MADV_DONTFORK = 10
_MAP_FAILED = ctypes.c_void_p(-1).value

_NONE, _READ, _WRITE = 0, 1, 2  # a page's state in this process


class ExplicitFaults(RuntimeWarning):
    """Real faults are not possible here; the mapping uses explicit ones (the message says why)."""


_said_explicit = False


def _say_explicit(why: str) -> None:
    global _said_explicit
    if not _said_explicit:
        _said_explicit = True
        warnings.warn(f"daxfs.dax: explicit faults only (only the mapping's own methods fault): {why}",
                      ExplicitFaults, stacklevel=3)


class BusError(OSError):
    """An access the file system cannot back any more (SIGBUS on Linux): the mapping was revoked, the
    page is beyond the end of the file, no space for a new block, or the daemon is gone."""


def mmap(path: str | os.PathLike, length: int, flags: int = MAP_SHARED, offset: int = 0,
         prot: int = PROT_READ | PROT_WRITE, faults: str = "auto") -> "Mapping":
    """Map [offset, offset+length) of a file on a daxfs mount. Errors are those of mmap(2): EINVAL
    (length, offset, flags), EOPNOTSUPP (unknown flags with MAP_SHARED_VALIDATE), EACCES (the file's
    mode, or not root nor the image's owner), ENODEV (not a regular file of a daxfs mount).
    faults: "auto" (real faults where possible), "real" (EOPNOTSUPP where not), "explicit"."""
    if faults not in ("auto", "real", "explicit"):
        raise ValueError(f"faults={faults!r}: 'auto', 'real' or 'explicit'")
    flags = _check_flags(flags)
    if length <= 0 or offset < 0 or offset % PAGE:
        raise OSError(errno.EINVAL, "the length must be positive and the offset a multiple of the page size")
    if prot & ~(PROT_READ | PROT_WRITE):
        raise OSError(errno.EINVAL, "prot: PROT_READ and PROT_WRITE only")
    write = bool(prot & PROT_WRITE)
    sync = bool(flags & MAP_SYNC)
    fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)  # the kernel checks access
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ENODEV, f"{os.fspath(path)}: not a regular file")
        try:
            control = os.getxattr(fd, CONTROL_XATTR).decode()
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
            raise OSError(errno.EOPNOTSUPP if sync else errno.ENODEV,
                          f"{os.fspath(path)}: not on a daxfs mount") from None
    finally:
        os.close(fd)
    try:
        conn = ControlClient(control)
    except PermissionError:  # the sockets are 0600: root's and the image owner's only
        raise PermissionError(errno.EACCES, f"{os.fspath(path)}: direct access is for root and the image's "
                              f"owner: this user may not reach the daemon's socket {control}; use read() and "
                              "write()") from None
    try:
        reply = _ask(conn, "dax_map", OSError, ino=st.st_ino, offset=int(offset), length=int(length), write=write,
                     sync=sync, real=faults != "explicit")
        try:
            # userfaultfd registers only memory that could be made writable: a window's image descriptor
            # is read-write even for PROT_READ (the image is its owner's or root's, as are windows)
            image_fd, board_fd = _receive_fds(reply["fds"], write or reply.get("real", False))
        except BaseException:
            with contextlib.suppress(ControlError, OSError):
                conn.call("dax_unmap", id=reply["id"])  # or its blocks stay pinned until we exit
            raise
    except BaseException:
        conn.close()
        raise
    m = Mapping(os.fspath(path), conn, reply, image_fd, board_fd, offset, length, write)
    why = reply.get("why")
    if reply.get("real"):
        try:
            m._attach_window()
        except uffd.Unavailable as e:
            m.close()
            why = str(e)
            if faults == "real":
                raise OSError(errno.EOPNOTSUPP, f"{os.fspath(path)}: no real faults: {why}") from None
            _say_explicit(why)
            return mmap(path, length, flags, offset, prot, faults="explicit")
    elif faults == "real":
        m.close()
        raise OSError(errno.EOPNOTSUPP, f"{os.fspath(path)}: no real faults: {why}")
    elif faults == "auto":
        _say_explicit(why or "the daemon offers none")
    if flags & MAP_POPULATE:
        m.populate()
    return m


def _check_flags(flags: int) -> int:
    """mmap(2)'s rules: MAP_SHARED drops what it does not know (MAP_SYNC among it: a MAP_SYNC that
    could be ignored must be asked for with MAP_SHARED_VALIDATE); MAP_SHARED_VALIDATE refuses it."""
    kind = flags & _MAP_TYPE
    if kind == MAP_SHARED:
        flags &= LEGACY_MAP_MASK
    elif kind == MAP_SHARED_VALIDATE:
        unknown = flags & ~(LEGACY_MAP_MASK | MAP_SYNC)
        if unknown:
            raise OSError(errno.EOPNOTSUPP, f"mmap flags {unknown:#x} are not supported")
    elif kind == _MAP_PRIVATE:
        raise OSError(errno.EINVAL, "MAP_PRIVATE: daxfs.dax makes shared mappings only")
    else:
        raise OSError(errno.EINVAL, f"mapping type {kind:#x}: use MAP_SHARED or MAP_SHARED_VALIDATE")
    if flags & _REFUSED:
        raise OSError(errno.EINVAL, f"mmap flags {flags & _REFUSED:#x}: daxfs.dax places and backs its mappings itself")
    return flags


def _ask(conn: ControlClient, op: str, error: type[OSError], **args) -> dict:
    """One request to the fault service; a refusal ("ENAME: what") becomes error(errno, what)."""
    try:
        return conn.call(op, **args)
    except ControlError as e:
        code, what = errno_of(e)
        raise error(code or errno.EIO, what) from None
    except (ConnectionError, OSError) as e:
        raise BusError(errno.ENOTCONN, f"the daxfs daemon is gone ({e}): the mapping is invalid") from None


def _receive_fds(path: str, write: bool) -> tuple[int, int]:
    """The image and the board, handed over by the daemon (SCM_RIGHTS)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(encode({"write": write}))
        msg, fds, _, _ = socket.recv_fds(s, 4096, 2)
    reply = decode(msg or b"{}")
    if not reply.get("ok") or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        code, what = errno_of(ControlError(reply.get("error", "EIO: no descriptors")))
        raise OSError(code or errno.EIO, what)
    return fds[0], fds[1]


def _sys(result: int | None, what: str) -> int:
    if result is None or result == _MAP_FAILED or result == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return result


class Mapping:
    """A direct mapping of a file range (see the module doc). len(m) is its length in bytes."""

    def __init__(self, path: str, conn: ControlClient, reply: dict, image_fd: int, board_fd: int,
                 offset: int, length: int, writable: bool) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.writable = writable
        self.sync = bool(reply["sync"])  # MAP_SYNC, or the mount's or the file's sync mode
        self._id, self._slot, self._epoch = reply["id"], reply["slot"], reply["epoch"]
        self._first = offset // PAGE
        self._size = reply["size"]  # i_size when mapped (for MAP_POPULATE)
        self._fds_path = reply["fds"]
        npages = -(-length // PAGE)
        self._conn = conn
        self._image_fd = image_fd
        board = _mmap.mmap(board_fd, 0, prot=_mmap.PROT_READ)
        os.close(board_fd)
        self._board = memoryview(board).cast("Q")
        # The window: reserved, inaccessible until pages are faulted into it.
        self._base = _sys(_libc.mmap(None, npages * PAGE, 0, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0),
                          "reserving address space")
        self._mem = np.frombuffer((ctypes.c_uint8 * (npages * PAGE)).from_address(self._base), dtype=np.uint8)
        self._state = np.zeros(npages, dtype=np.uint8)
        self._exports: list[weakref.ref] = []  # the buffers under view()s (ctypes arrays: unhashable)
        self._closed = False
        self.real = False  # real faults (userfaultfd), once _attach_window has registered the window
        self._watch = _Watch(self._base, npages * PAGE)
        self._release = weakref.finalize(self, _release, os.getpid(), conn, self._id, self._base, npages * PAGE,
                                         image_fd, self._board, board, self._watch)

    # --- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            a, b = self._span(key)
            if a >= b:
                return b""
            self._ensure(a, b, write=False)
            return self._mem[a:b].tobytes()
        i = self._index(key)
        if self._state[i // PAGE] == _NONE or self._board[self._slot] != self._epoch:
            self._ensure(i, i + 1, write=False)
        return int(self._mem[i])

    def __setitem__(self, key: int | slice, value) -> None:
        if isinstance(key, slice):
            a, b = self._span(key)
            src = np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
            if len(src) != b - a:
                raise ValueError(f"assigning {len(src)} bytes to a slice of {max(0, b - a)}")
            if a < b:
                self._ensure(a, b, write=True)
                self._mem[a:b] = src
            return
        i = self._index(key)
        if self._state[i // PAGE] != _WRITE or self._board[self._slot] != self._epoch:
            self._ensure(i, i + 1, write=True)
        self._mem[i] = value

    def view(self, offset: int = 0, length: int | None = None, write: bool = False) -> np.ndarray:
        """A numpy uint8 array over [offset, offset+length), faulted in first (writable if write).
        Stores into it are plain memory stores; it must be dropped before close()."""
        a, b = self._span(slice(offset, None if length is None else offset + length))
        if a >= b or a != offset or (length is not None and b - a != length):
            raise IndexError(f"view [{offset}, +{length}) is outside the mapping of {self.length} bytes")
        self._ensure(a, b, write)
        buf = (ctypes.c_uint8 * (b - a)).from_address(self._base + a)
        buf._mapping = self  # a view keeps the mapping (and so the window) alive
        self._exports = [r for r in self._exports if r() is not None] + [weakref.ref(buf)]
        arr = np.frombuffer(buf, dtype=np.uint8)
        if not write:
            arr.flags.writeable = False
        return arr

    def persist(self, offset: int = 0, length: int | None = None) -> None:
        """Make what was stored in [offset, offset+length) durable (msync of its pages; libpmem's
        pmem_persist). With MAP_SYNC the blocks' mappings were committed at the fault, so after this the
        bytes are in the file after any crash; without it they may be in blocks a crash unmaps."""
        a, b = self._span(slice(offset, None if length is None else offset + length))
        self._check()
        if a < b:
            start = a - a % PAGE
            _sys(_libc.msync(self._base + start, b - start, _MS_SYNC), "msync")

    def populate(self) -> None:
        """Read-fault every page up to the end of the file (what MAP_POPULATE does at mmap time)."""
        end = min(self.length, max(0, self._size - self.offset))
        if end > 0 and self.real:
            self._check()
            int(self._mem[0:end:PAGE].sum())  # one load per page: each a real read fault
        elif end > 0:
            self._ensure(0, end, write=False)

    def close(self) -> None:
        """Unmap. Refused (BufferError) while a view() is alive, as mmap.close() refuses with exports."""
        if self._closed:
            return
        alive = sum(r() is not None for r in self._exports)
        if alive:
            raise BufferError(f"{alive} view(s) of the mapping are still alive")
        self._closed = True
        self._state[:] = _NONE  # every access now goes to _check(), which says the mapping is closed
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> int:
        """Where the window starts in this process's address space: for C code (ctypes, cffi) to
        load and store into. With real faults any access there faults as on a DAX kernel; with
        explicit ones only pages the mapping's methods faulted in are there."""
        return self._base

    def __enter__(self) -> "Mapping":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{int(np.count_nonzero(self._state))} pages faulted"
        return (f"<daxfs.dax.Mapping {self.path} [{self.offset}, +{self.length}) "
                f"{'rw' if self.writable else 'ro'}{' MAP_SYNC' if self.sync else ''}, {state}>")

    # --- real faults ------------------------------------------------------------------------------
    def _attach_window(self) -> None:
        """Map every page of the window on its block (the daemon's layout), register the window with
        a new userfaultfd and hand that to the daemon, which serves its faults from then on. The
        window is not inherited by fork() (a child would get it unregistered, with no one to fault
        it): MADV_DONTFORK. uffd.Unavailable if this kernel or user cannot."""
        npages = len(self._state)
        prot = PROT_READ | (PROT_WRITE if self.writable else 0)
        start: int | None = 0
        while start is not None:
            r = _ask(self._conn, "dax_layout", OSError, id=self._id, **{"from": start})
            for rel, n, pblk in r["runs"]:
                _sys(_libc.mmap(self._base + rel * PAGE, n * PAGE, prot, MAP_SHARED | _MAP_FIXED, self._image_fd,
                                pblk * PAGE), "mapping the window")
            start = r["next"]
        _sys(_libc.madvise(self._base, npages * PAGE, _MADV_DONTFORK), "madvise(MADV_DONTFORK)")
        try:
            fd = uffd.create(user_mode_only=False)
        except uffd.Unavailable as e:
            if e.errno != errno.EPERM:
                raise
            fd = uffd.create(user_mode_only=True)  # unprivileged: vm.unprivileged_userfaultfd = 0
        try:
            uffd.register(fd, self._base, npages * PAGE, self.writable)
            self._watch.start(self._fds_path, self._id, fd)
        except BaseException:
            os.close(fd)
            raise
        # Kept until the window goes (_Watch): were the daemon's copy the last, its death would
        # unregister the window at once, and a store to a page not yet faulted would land, with no
        # fault, in a block the file does not own until the watch thread acts. With this copy such a
        # fault waits, and closing it after the SIGBUS memory is in place wakes it into SIGBUS.
        self._watch.uffd = fd
        self._state[:] = _WRITE if self.writable else _READ  # nothing for the methods to fault
        self.real = True

    # --- faults -----------------------------------------------------------------------------------
    def _index(self, i: int) -> int:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError("mapping index out of range")
        return i

    def _span(self, key: slice) -> tuple[int, int]:
        a, b, step = key.indices(self.length)
        if step != 1:
            raise ValueError("slices of a mapping take no step")
        return a, max(a, b)

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the mapping is closed")
        if self._board[self._slot] != self._epoch:
            self._refresh()

    def _refresh(self) -> None:
        """The board says something changed: revoked, or zero pages that now have blocks."""
        if self._board[self._slot] == 0:
            raise BusError(errno.EFAULT, f"{self.path}: the mapping was revoked (truncate, hole punch or unlink "
                                         "of its range, unmount, or a daemon restart)")
        while True:  # a long list of stale pages comes in parts ("more")
            r = _ask(self._conn, "dax_sync", BusError, id=self._id)
            if r["revoked"]:
                raise BusError(errno.EFAULT, f"{self.path}: the mapping was revoked")
            for page in r["stale"]:
                rel = page - self._first
                self._place(rel, 1, None, 0)
                self._state[rel] = _NONE
            self._epoch = r["epoch"]
            if not r.get("more"):
                return

    def _ensure(self, a: int, b: int, write: bool) -> None:
        """Fault in the pages of bytes [a, b) that are not there (or not writable, for a write)."""
        self._check()
        if write and not self.writable:
            raise PermissionError(errno.EACCES, f"{self.path}: the mapping is read-only")
        p0, p1 = a // PAGE, (b - 1) // PAGE + 1
        missing = np.flatnonzero(self._state[p0:p1] < (_WRITE if write else _READ))
        if not len(missing):
            return
        lo, hi = p0 + int(missing[0]), p0 + int(missing[-1]) + 1  # one request for the span (per MAX_FAULT_PAGES)
        for start in range(lo, hi, MAX_FAULT_PAGES):
            self._fault(start, min(hi, start + MAX_FAULT_PAGES), write)

    def _fault(self, lo: int, hi: int, write: bool) -> None:
        r = _ask(self._conn, "dax_fault", BusError, id=self._id, page=self._first + lo, count=hi - lo,
                 write=bool(write))
        for page, n, pblk in r["runs"]:
            rel = page - self._first
            if write:
                self._place(rel, n, pblk, PROT_READ | PROT_WRITE)
                self._state[rel:rel + n] = _WRITE
                continue
            for s, k in true_runs(self._state[rel:rel + n] == _NONE):  # a read fault keeps write access
                self._place(rel + s, k, None if pblk is None else pblk + s, PROT_READ)
                self._state[rel + s:rel + s + k] = _READ

    def _place(self, rel: int, n: int, pblk: int | None, prot: int) -> None:
        """Put pages [rel, rel+n) of the window on image blocks from pblk, on the zero page (None,
        prot PROT_READ), or back to inaccessible (None, prot 0)."""
        addr = self._base + rel * PAGE
        if pblk is None:
            res = _libc.mmap(addr, n * PAGE, prot, _MAP_PRIVATE | _MAP_FIXED | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        else:
            res = _libc.mmap(addr, n * PAGE, prot, MAP_SHARED | _MAP_FIXED | MAP_POPULATE, self._image_fd,
                             pblk * PAGE)
        _sys(res, "mapping pages")


class _Watch:
    """The connection on which a window was handed to the daemon. The daemon keeps it open while it
    serves the window; when it closes (unmount, a daemon killed), the window's registration is gone
    with the daemon's userfaultfd, and the window would be plain shared memory of the image: loads
    and stores with no fault and no rule. So a thread waits for that close and puts memory over the
    window that gives SIGBUS at any access (a mapping of an empty memfd), as Linux does to mappings of
    a file system that went away."""

    def __init__(self, base: int, size: int) -> None:
        _watches.add(self)
        self.base, self.size = base, size
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.gone = False  # closed by us (unmapped) or by the daemon (revoked): act no more
        self.uffd: int | None = None  # our copy of the window's userfaultfd (Mapping._attach_window)

    def start(self, fds_path: str, map_id: int, fd: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(30)
            sock.connect(fds_path)
            socket.send_fds(sock, [encode({"uffd": map_id, "base": self.base})], [fd])
            reply = decode(sock.recv(4096).split(b"\n", 1)[0] or b"{}")
            if not reply.get("ok"):
                code, what = errno_of(ControlError(reply.get("error", "EIO: the daemon closed the connection")))
                raise uffd.Unavailable(code or errno.EIO, f"the daemon refused the window: {what}")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        threading.Thread(target=self._wait, name=f"daxfs-watch-{map_id}", daemon=True).start()

    def _wait(self) -> None:
        with contextlib.suppress(OSError):
            while self.sock.recv(256):
                pass
        with self.lock:
            if self.gone:
                return
            self.gone = True
            memfd = os.memfd_create("daxfs-revoked", os.MFD_CLOEXEC)  # size 0: every page is past EOF
            try:
                _libc.mmap(self.base, self.size, PROT_READ | PROT_WRITE, MAP_SHARED | _MAP_FIXED, memfd, 0)
            finally:
                os.close(memfd)
                self._close_uffd()  # wakes the faults waiting on it: they retry on the SIGBUS memory

    def stop(self, owner: bool) -> None:
        """Stop watching. The owner (not a forked child, whose descriptor is a copy of the same
        connection) shuts the connection down, which also wakes the thread."""
        with self.lock:
            self.gone = True
            if self.sock is not None:
                if owner:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()
            self._close_uffd()

    def _close_uffd(self) -> None:
        if self.uffd is not None:
            os.close(self.uffd)
            self.uffd = None


_watches: weakref.WeakSet[_Watch] = weakref.WeakSet()


def _forget_uffds_in_child() -> None:
    """A forked child has no windows (MADV_DONTFORK): its copies of their userfaultfds would only
    keep the parent's registrations alive after the daemon's death, with the parent's faults waiting."""
    for w in list(_watches):
        w._close_uffd()


os.register_at_fork(after_in_child=_forget_uffds_in_child)


def _release(pid: int, conn: ControlClient, map_id: int, base: int, size: int, image_fd: int, board: memoryview,
             board_map: _mmap.mmap, watch: _Watch) -> None:
    """close(), or the garbage collector: tell the daemon (its blocks may be reused), unmap, close.
    A forked child only drops its copies: the mapping is its parent's, and so is the connection."""
    if os.getpid() == pid:
        try:
            conn.call("dax_unmap", id=map_id)
        except (ControlError, OSError):
            pass  # revoked already, or the daemon is gone: nothing holds the blocks any more
    watch.stop(os.getpid() == pid)  # before the munmap: the range may be someone else's right after
    conn.close()
    _libc.munmap(base, size)
    os.close(image_fd)
    board.release()
    board_map.close()
