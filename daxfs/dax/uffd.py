"""userfaultfd(2), the few calls daxfs needs: the client makes one and registers its window, the daemon
serves its faults (daemon/uffd_service.py). Values from include/uapi/linux/userfaultfd.h (x86-64).

A userfaultfd is tied to the address space of the process that made it; whoever holds the descriptor
(here: the daemon, which received it over SCM_RIGHTS) reads that process's page faults from it and
resolves them with ioctls that act on that process's page tables.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")

_NR_USERFAULTFD = 323  # x86-64
UFFD_USER_MODE_ONLY = 1  # faults from the kernel's own accesses (a syscall's copy) are refused: EFAULT
_API = 0xAA

# features the client asks for
F_PAGEFAULT_FLAG_WP = 1 << 0
F_MISSING_SHMEM = 1 << 5
F_MINOR_SHMEM = 1 << 10
F_WP_HUGETLBFS_SHMEM = 1 << 12
F_POISON = 1 << 14
FEATURES = F_PAGEFAULT_FLAG_WP | F_MISSING_SHMEM | F_MINOR_SHMEM | F_WP_HUGETLBFS_SHMEM | F_POISON

MODE_MISSING, MODE_WP, MODE_MINOR = 1, 2, 4  # UFFDIO_REGISTER_MODE_*


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (_API << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (_API << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_UNREGISTER = _ior(0x01, 16)
UFFDIO_WAKE = _ior(0x02, 16)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)
UFFDIO_CONTINUE = _iowr(0x07, 32)
UFFDIO_POISON = _iowr(0x08, 32)

CONTINUE_MODE_WP = 2  # map the page write-protected: the next store is a WP fault
WRITEPROTECT_MODE_WP = 1

EVENT_PAGEFAULT = 0x12
FLAG_WRITE, FLAG_WP, FLAG_MINOR = 1, 2, 4  # UFFD_PAGEFAULT_FLAG_*
MSG_SIZE = 32

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Unavailable(OSError):
    """This kernel, user or memory cannot have its faults served through userfaultfd."""


def create(user_mode_only: bool) -> int:
    """A new userfaultfd of this process (non-blocking, close-on-exec), its API handshake done."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK | (UFFD_USER_MODE_ONLY if user_mode_only else 0)
    fd = _libc.syscall(_NR_USERFAULTFD, flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise Unavailable(e, f"userfaultfd: {os.strerror(e)}")
    try:
        api = bytearray(struct.pack("QQQ", _API, FEATURES, 0))
        fcntl.ioctl(fd, UFFDIO_API, api)
        features = struct.unpack("QQQ", api)[1]
        if features & FEATURES != FEATURES:
            raise Unavailable(errno.EOPNOTSUPP, f"userfaultfd lacks features {FEATURES & ~features:#x}")
    except OSError as e:
        os.close(fd)
        if isinstance(e, Unavailable):
            raise
        raise Unavailable(e.errno, f"userfaultfd handshake: {e.strerror}") from None
    return fd


def register(fd: int, start: int, length: int, writable: bool) -> None:
    """Send every fault of [start, start+length) to fd: pages absent from the image's page cache
    (MISSING), present but not mapped here (MINOR) and, for a writable window, stores to pages mapped
    read-only (WP)."""
    mode = MODE_MISSING | MODE_MINOR | (MODE_WP if writable else 0)
    try:
        fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("QQQQ", start, length, mode, 0)))
    except OSError as e:
        raise Unavailable(e.errno, f"userfaultfd cannot register this memory: {e.strerror}") from None


@dataclass(frozen=True)
class Fault:
    address: int
    write: bool  # a store (a WP fault is always one)
    wp: bool  # a store to a page mapped read-only
    minor: bool  # the page is in the page cache, just not mapped in the faulting process


def read_faults(fd: int, limit: int = 64) -> list[Fault]:
    """The faults waiting on fd (none: an empty list). Events other than page faults are not asked
    for, so none come."""
    try:
        data = os.read(fd, MSG_SIZE * limit)
    except BlockingIOError:
        return []
    out = []
    for i in range(0, len(data) - MSG_SIZE + 1, MSG_SIZE):
        event, flags, address = data[i], *struct.unpack_from("QQ", data, i + 8)
        if event == EVENT_PAGEFAULT:
            out.append(Fault(address & ~(PAGE - 1), bool(flags & (FLAG_WRITE | FLAG_WP)), bool(flags & FLAG_WP),
                             bool(flags & FLAG_MINOR)))
    return out


def map_page(fd: int, address: int, n: int, writable: bool) -> None:
    """Map pages present in the page cache into the faulting process (UFFDIO_CONTINUE), read-only
    unless writable, and wake whoever waits on them. EEXIST (mapped already: a fault raced with
    another on the same page) is not an error."""
    _ioctl_ignoring_eexist(fd, UFFDIO_CONTINUE,
                           struct.pack("QQQq", address, n * PAGE, 0 if writable else CONTINUE_MODE_WP, 0))


def make_writable(fd: int, address: int, n: int) -> None:
    """Lift the write protection of mapped pages and wake the threads that stored into them."""
    fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", address, n * PAGE, 0)))


def poison(fd: int, address: int, n: int) -> None:
    """Make the next access of pages SIGBUS (UFFDIO_POISON), and wake the faulting threads."""
    _ioctl_ignoring_eexist(fd, UFFDIO_POISON, struct.pack("QQQq", address, n * PAGE, 0, 0))


def wake(fd: int, address: int, n: int) -> None:
    fcntl.ioctl(fd, UFFDIO_WAKE, bytearray(struct.pack("QQ", address, n * PAGE)))


def _ioctl_ignoring_eexist(fd: int, request: int, arg: bytes) -> None:
    try:
        fcntl.ioctl(fd, request, bytearray(arg))
    except FileExistsError:
        wake(fd, *struct.unpack_from("QQ", arg, 0)[:1], struct.unpack_from("Q", arg, 8)[0] // PAGE)
