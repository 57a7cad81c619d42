"""Write and read faults of direct mappings: the engine's answer to a client touching a page.

A read fault maps written blocks and gives holes and unwritten blocks as the zero page, allocating
nothing. A write fault makes the blocks written through the write path's own _make_written
(allocation or conversion, zeroed whole) and hands them out writable, with the tid the MAP_SYNC rule
(unstable.tid_to_commit) says must be committed before a sync mapping may store.
"""

from __future__ import annotations

import errno

from daxfs.engine.core import BS
from daxfs.engine.errors import FsError
from daxfs.engine.mappings import DaxMapping
from daxfs.engine.namespace import Namespace
from daxfs.engine.unstable import tid_to_commit


class Faults(Namespace):
    def dax_fault(self, m: DaxMapping, page: int, count: int,
                  write: bool) -> tuple[list[tuple[int, int, int | None]], int]:
        """Fault file pages [page, page+count) of mapping m: runs (file page, pages, pmem block, None
        for the zero page) and the tid to commit before a MAP_SYNC mapping may store (0: none)."""
        if m.revoked:
            raise FsError(errno.EFAULT, "the mapping was revoked (truncate, hole punch or unlink)")
        if not (m.first <= page and count > 0 and page + count <= m.first + m.count):
            raise FsError(errno.EINVAL, "pages outside the mapping")
        if write and not m.writable:
            raise FsError(errno.EACCES, "write fault on a read-only mapping")
        inode = self.inode(m.ino)
        if (page + count - 1) * BS >= inode.size:
            raise FsError(errno.EFAULT, f"page {page + count - 1} is beyond the end of the file (SIGBUS)")
        ext = self._extents(inode)
        tid = 0
        if write:
            self._make_written(inode, ext, page, page + count, page * BS, page * BS)
            self._touch(inode)
            tid = tid_to_commit(inode.unstable, page, page + count, self.committed_tid)
        return self._hand_out(m, ext.iomap(page, count), write), tid
