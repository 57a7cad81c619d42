"""Real page faults: the daemon's half of userfaultfd (the client's half is daxfs.dax).

A client that maps a file with real faults has put every page of its window on the pmem block under
it (the layout, engine/mappings.py), registered the window with a userfaultfd and sent that here. The
kernel then stops a thread of the client at its first load of a page (a read fault), at its first
store (a write fault) and at a store to a page mapped read-only (a write-protect fault: the seed's
pfn_mkwrite), and queues the fault on that descriptor. Window.serve answers each as the seed's DAX
fault handler does:

  read   the engine makes the block readable as the page (a hole or unwritten block is zeroed) and
         the page is mapped (UFFDIO_CONTINUE), write-protected in a writable window so that the
         first store faults again;
  write  the engine makes the block written as write() does (a hole claims the block the window
         points at; conversion; zeroing), and for a MAP_SYNC window whose block is unstable the
         journal is committed first (VM_FAULT_NEEDDSYNC); then the page becomes writable;
  SIGBUS beyond EOF, ENOSPC, a page outside the window: UFFDIO_POISON.

Stores to writable pages never reach the daemon. The client is touched only through these ioctls, so
one that dies mid-fault costs its own window only: the ioctls fail, and the window ends.
"""

from __future__ import annotations

import errno
import logging
import time

import pyfuse3
import trio

from daxfs.daemon.stats import DaemonStats
from daxfs.daemon.syncrule import SyncRule
from daxfs.dax import uffd
from daxfs.engine import crashpoint
from daxfs.engine.errors import FsError
from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.engine.fs import FileSystem
from daxfs.engine.mappings import DaxMapping

log = logging.getLogger("daxfs")

GONE = (errno.ESRCH, errno.ENOENT)  # the faulting process, or its window, no longer exists


class Window:
    """One client's registered window: a mapping with a layout, its userfaultfd, and its address."""

    def __init__(self, fs: FileSystem, rule: SyncRule, stats: DaemonStats, dm: DaxMapping, sync: bool,
                 fd: int, base: int, around: int) -> None:
        self.fs, self.rule, self.stats = fs, rule, stats
        self.dm, self.sync, self.fd, self.base = dm, sync, fd, base
        self.around = around  # pages one fault may map, from the faulting one on (-o fault_around)

    async def serve(self) -> None:
        """Answer faults until cancelled, or until the client's address space is gone."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            for f in uffd.read_faults(self.fd):
                try:
                    await self._answer(f)
                except OSError as e:
                    if e.errno in GONE:
                        return
                    self.stats.request_errors += 1
                    log.warning("fault at %#x of mapping %d could not be answered: %s", f.address, self.dm.id,
                                e.strerror or e)

    async def _answer(self, f: uffd.Fault) -> None:
        t0 = time.perf_counter()
        rel = (f.address - self.base) // uffd.PAGE
        page = self.dm.first + rel
        try:
            if not 0 <= rel < self.dm.count:
                raise FsError(errno.EFAULT, "a fault outside the window the client said it registered")
            # a store to a page mapped read-only lifts that page's protection only
            n, tid = self.fs.dax_layout_fault(self.dm, page, f.write, 1 if f.wp else self.around)
        except FsError:  # beyond EOF, ENOSPC, a store to a read-only window: SIGBUS, as on Linux
            self.stats.sigbus_faults += 1
            uffd.poison(self.fd, f.address, 1)
            return
        # VM_FAULT_NEEDDSYNC: a sync window's block mapping is committed before the page is writable
        waited = f.write and self.sync and await self.rule.commit_before_ack(tid)
        if not f.wp:  # tmpfs may have no page there yet (a hole of the image)
            for pblk in self.dm.layout[rel:rel + n].tolist():
                self.fs.region.populate(pblk * BS, BS)
        if f.write:
            _invalidate_attr(self.dm.ino)  # st_blocks and mtime changed behind the kernel's back
            crashpoint.hit("fault.before_reply")
        if f.wp:
            uffd.make_writable(self.fd, f.address, 1)
        else:  # write-protected unless it is a store (a read-only window registers no WP)
            uffd.map_page(self.fd, f.address, n, writable=f.write or not self.dm.writable)
        self.stats.fault_done(f.write, waited, time.perf_counter() - t0)


def _invalidate_attr(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError:
        pass  # the kernel does not know the inode (no cache to drop)
