"""The pmem region: the image file mapped with numpy.memmap.

Every store the file system makes to its image goes through one PmemRegion, so that a tracing or
fault-injecting region can stand in for it. The contract is that of persistent memory:

  * store() makes bytes visible at once to every later load() and to every other mapping of the
    image (it is a store into the shared page cache). A killed daemon loses nothing it stored.
  * persist(off, n) makes the stored bytes of that range durable across a host crash (msync of the
    pages that cover it). Only persisted bytes are promised to survive a power cut.
  * fence() is an ordering point: stores and persists before it are ordered before those after it.
    For a memmap, msync already returns only when the pages are written, so fence() only marks the
    point for regions that trace or reorder.

`durable=False` skips msync: right for an image on tmpfs (RAM, where msync only costs time) or when
only daemon kills, not host crashes, are to be survived. docs/design.md gives the measured costs.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import time

import numpy as np

from daxfs.engine.errors import DaxfsError
from daxfs.engine.mounttab import fs_type, mounts

PAGE = mmap.PAGESIZE
_KEEP_SIZE, _PUNCH_HOLE = 1, 2  # fallocate(2) modes
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_PWRITE_MIN = 64 * 1024


class PmemRegion:
    def __init__(self, path: str, writable: bool = True, durable: bool = True) -> None:
        self.path = path
        self.writable = writable
        self.durable = durable
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise DaxfsError(f"{path}: {e.strerror}") from None
        if size == 0:
            raise DaxfsError(f"{path}: empty file, not a daxfs image")
        try:
            self.mem = np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r", shape=(size,))
        except OSError as e:
            raise DaxfsError(f"{path}: cannot map: {e.strerror}") from None
        self.size = size
        # numpy.memmap keeps the mmap object it mapped; its flush(offset, size) is msync of a range.
        self._mmap = self.mem._mmap
        # Loads and stores of metadata-sized pieces go through a plain memoryview of the same mapping:
        # slicing a memmap builds a new ndarray each time, which costs more than the copy itself.
        self._buf = memoryview(self._mmap)
        self.on_ram = fs_type(path) in ("tmpfs", "ramfs")
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)

    @staticmethod
    def create(path: str, size: int, force: bool = False) -> None:
        """Create a sparse image of `size` bytes, mode 0600 (an image holds every file's data)."""
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    # --- loads and stores --------------------------------------------------------------------------
    def load(self, off: int, n: int) -> bytes:
        return self._buf[off:off + n].tobytes()

    def view(self, off: int, n: int) -> np.ndarray:
        """A live numpy view of the region: the DAX window. Writes through it bypass store()."""
        return self.mem[off:off + n]

    def store(self, off: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        mv = memoryview(data).cast("B")
        if mv.nbytes >= _PWRITE_MIN:
            # Same page cache as the mapping, but the kernel fills never-touched pages of a sparse
            # image faster through write(2) than through page faults (measured: 641 -> 791 MiB/s).
            if os.pwrite(self._fd, mv, off) == mv.nbytes:
                return
        self._buf[off:off + mv.nbytes] = mv

    def zero(self, off: int, n: int) -> None:
        if n < _PWRITE_MIN:  # a write's edges: numpy's slicing costs more than the bytes
            self._buf[off:off + n] = bytes(n)
        else:
            self.mem[off:off + n] = 0

    # --- durability --------------------------------------------------------------------------------
    def discard(self, off: int, n: int) -> None:
        """Give the pages of [off, off+n) back to tmpfs (they read as zeros), which also takes them out
        of every process's page tables: how a direct mapping loses pages (mappings.py)."""
        if _libc.fallocate(self._fd, _PUNCH_HOLE | _KEEP_SIZE, off, n) != 0:
            self.zero(off, n)  # a file system that cannot punch: zeroing is all that is left

    def populate(self, off: int, n: int) -> None:
        """Make sure tmpfs has pages for [off, off+n) (a discarded page reads as zeros but is not in
        the page cache until then, and a client's fault can only be served from the page cache)."""
        os.posix_fallocate(self._fd, off, n)

    def persist(self, off: int, n: int) -> None:
        if not self.durable or n <= 0:
            return
        start = off - off % PAGE
        end = min(self.size, off + n)
        self._mmap.flush(start, end - start)

    def persist_ranges(self, ranges: list[tuple[int, int]]) -> None:
        """Persist many (offset, length) ranges, merged into page runs first: msync costs per call
        (about 0.4 ms on a disk-backed image), hardly per byte."""
        if not self.durable:
            return
        runs: list[list[int]] = []
        for off, n in sorted(ranges):
            lo, hi = off - off % PAGE, -(-(off + n) // PAGE) * PAGE
            if runs and lo <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], hi)
            else:
                runs.append([lo, hi])
        for lo, hi in runs:
            self.persist(lo, hi - lo)

    def fence(self) -> None:
        """Ordering point (see module doc)."""

    def close(self) -> None:
        if self.mem is not None:
            if self.writable and self.durable:
                self.mem.flush()
            self._buf.release()
            os.close(self._fd)
            self._mmap = None
            del self.mem
            self.mem = None  # type: ignore[assignment]


def lock_image(path: str, wait: float = 0.0) -> int:
    """An fd holding an exclusive flock on the image: a daemon holds it while mounted, so that no second
    daemon, mkfs or repair can open it underneath. DaxfsError if it is held still after `wait` seconds
    (a daemon that was just unmounted may still be checkpointing)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DaxfsError(f"{path} is in use by a mounted daxfs{where_mounted(path)} (unmount it first)") from None
            time.sleep(0.05)


def image_in_use(path: str) -> bool:
    """Does a daemon hold the image (lock_image)? Asks without taking the lock from anyone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def where_mounted(path: str) -> str:
    """' on MOUNTPOINT' for the daxfs mounts of this image that this process can see, or ''."""
    real = os.path.realpath(path)
    try:
        targets = [m["target"] for m in mounts() if m["fstype"] == "fuse.daxfs" and m["source"] == real]
    except OSError:
        targets = []
    return f" on {', '.join(targets)}" if targets else ""
