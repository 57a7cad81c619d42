"""Write and read faults of direct mappings: the engine's answer to a client touching a page.

A read fault maps written blocks and gives holes and unwritten blocks as the zero page, allocating
nothing. A write fault makes the blocks written through the write path's own _make_written
(allocation or conversion, zeroed whole) and hands them out writable, with the tid the MAP_SYNC rule
(unstable.tid_to_commit) says must be committed before a sync mapping may store.

Mappings with a layout (real faults, mappings.py) need no answer but the tid: the client's window
already points at each page's block, so a fault only makes that block what the access needs.
"""

from __future__ import annotations

import errno

import numpy as np

from daxfs.engine.core import BS
from daxfs.engine.errors import FsError
from daxfs.engine.extent import WRITTEN
from daxfs.engine.inode import Inode
from daxfs.engine.mappings import MAPPED_NONE, MAPPED_READ, MAPPED_WRITE, DaxMapping
from daxfs.engine.namespace import Namespace
from daxfs.engine.unstable import tid_to_commit


class Faults(Namespace):
    def dax_map(self, ino: int, first: int, count: int, writable: bool, layout: bool = False) -> DaxMapping:
        m = super().dax_map(ino, first, count, writable, layout)
        if layout:
            self.ref(ino)  # an unlinked file lives on while a window maps it
        return m

    def dax_unmap(self, m: DaxMapping) -> None:
        live = m in self.dax.get(m.ino, ())
        super().dax_unmap(m)
        if live and m.layout is not None:
            self.forget(m.ino)

    def dax_fault(self, m: DaxMapping, page: int, count: int,
                  write: bool) -> tuple[list[tuple[int, int, int | None]], int]:
        """Fault file pages [page, page+count) of mapping m: runs (file page, pages, pmem block, None
        for the zero page) and the tid to commit before a MAP_SYNC mapping may store (0: none)."""
        inode = self._faultable(m, page, count, write)
        ext = self._extents(inode)
        tid = self._make_writable(m, inode, page, count) if write else 0
        return self._hand_out(m, ext.iomap(page, count), write), tid

    def dax_layout_fault(self, m: DaxMapping, page: int, write: bool, around: int = 1) -> tuple[int, int]:
        """Fault a page of a mapping with a layout, and with it up to around-1 pages after it that
        the client has not mapped (fault-around: one answer for a run of first touches, as Linux
        maps several pages at a read fault; here at write faults too, since each costs a round trip
        to this process). Returns (pages, tid): how many pages to map from `page`, and the tid to
        commit before a MAP_SYNC mapping's store may proceed (0: none). A read of a hole or an
        unwritten block zeroes the block under the window (it is this page's alone: reserved for it,
        or unwritten) so that the page reads as zeros; a write makes it written as write() would."""
        inode = self._faultable(m, page, 1, write)
        rel = page - m.first
        n = 1
        limit = min(around, m.count - rel, -(-inode.size // BS) - page)
        while n < limit and m.mapped[rel + n] == MAPPED_NONE:
            n += 1
        if write:
            m.written.update(range(page, page + n))
            m.mapped[rel:rel + n] = MAPPED_WRITE
            return n, self._make_writable(m, inode, page, n)
        for r in self._extents(inode).iomap(page, n):
            if r.state != WRITTEN:
                for i in range(r.lblk - m.first, r.lblk - m.first + r.len):
                    self.region.zero(int(m.layout[i]) * BS, BS)
        m.mapped[rel:rel + n] = np.maximum(m.mapped[rel:rel + n], MAPPED_READ)
        return n, 0

    def _faultable(self, m: DaxMapping, page: int, count: int, write: bool) -> Inode:
        if m.revoked:
            raise FsError(errno.EFAULT, "the mapping was revoked (truncate, hole punch or unlink)")
        if not (m.first <= page and count > 0 and page + count <= m.first + m.count):
            raise FsError(errno.EINVAL, "pages outside the mapping")
        if write and not m.writable:
            raise FsError(errno.EACCES, "write fault on a read-only mapping")
        inode = self.inode(m.ino)
        if (page + count - 1) * BS >= inode.size:
            raise FsError(errno.EFAULT, f"page {page + count - 1} is beyond the end of the file (SIGBUS)")
        return inode

    def _make_writable(self, m: DaxMapping, inode: Inode, page: int, count: int) -> int:
        self._make_written(inode, self._extents(inode), page, page + count, page * BS, page * BS)
        self._touch(inode)
        return tid_to_commit(inode.unstable, page, page + count, self.committed_tid)
