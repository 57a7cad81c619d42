"""The data path: read and write, straight to and from pmem (DAX).

write() stores into the region before it returns. What a write changes in the block mapping
(allocation, unwritten -> written, a new i_size) is marked unstable (unstable.py) with the running
transaction's id; in sync mode the daemon asks fs.tid_to_commit() and commits before acknowledging.
A newly allocated block is zeroed, or wholly overwritten, before the transaction mapping it can
commit (commit.py I1, through journal.ordered), so no file ever shows another file's old bytes.
"""

from __future__ import annotations

import errno
import stat

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine.core import BS
from daxfs.engine.errors import FsError
from daxfs.engine.extent import HOLE, WRITTEN, ExtentMap, IoMap
from daxfs.engine.inode import Inode
from daxfs.engine.mappings import Mappings

DIRTY_RUNS = 4096  # pmem runs an inode remembers for fsync; past that, fsync persists the whole image


class DataPath(Mappings):
    # --- data -------------------------------------------------------------------------------------
    def read(self, ino: int, off: int, size: int) -> bytes:
        inode = self.inode(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if size > 0:
            self._accessed(inode)
        if off >= inode.size or size <= 0:
            return b""
        size = min(size, inode.size - off)
        first, last = off // BS, (off + size - 1) // BS
        out = bytearray()
        for m in self._extents(inode).iomap(first, last - first + 1):
            lo = max(off, m.lblk * BS)
            hi = min(off + size, (m.lblk + m.len) * BS)
            if m.state == WRITTEN:
                out += self.region.load(m.pblk * BS + (lo - m.lblk * BS), hi - lo)
            else:
                out += bytes(hi - lo)
        return bytes(out)

    def write(self, ino: int, off: int, data: bytes) -> int:
        """Store data at off. As Linux file systems do, a write that runs into a full file system or
        the largest file size writes what fits and returns the short count; only a write of which
        nothing fits fails (ENOSPC, EFBIG)."""
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EINVAL)
        if off < 0:
            raise FsError(errno.EINVAL)
        if not data:
            return 0
        n = min(len(data), fmt.MAX_FILE_BLOCKS * BS - off)
        if n <= 0:
            raise FsError(errno.EFBIG)
        ext = self._extents(inode)
        maps = ext.iomap(off // BS, (off + n - 1) // BS + 1 - off // BS)
        if all(m.state == WRITTEN for m in maps):
            if off + n <= inode.size:
                # The common overwrite: no mapping changes, so nothing to allocate, zero or mark unstable.
                self._begin_in_place()
            else:  # growing i_size inside allocated blocks (a log's small records): _write's steps, less
                self._begin()  # the mapping, which has nothing to do
                self._grow_size(inode, off + n, off)
                inode.size = off + n
            self._copy_in(inode, maps, off, memoryview(data)[:n])
            self._touch(inode)
            return n
        fit = self._fits(maps, off, n)
        if fit == 0:
            raise FsError(errno.ENOSPC)
        return self._write(inode, off, memoryview(data)[:fit], maps=maps if fit == n else None)

    def _fits(self, maps: list[IoMap], off: int, n: int) -> int:
        """The longest prefix of a write of n bytes at off (over `maps`) whose new blocks the file
        system can give."""
        lo = off // BS
        need = sum(m.len for m in maps if m.state == HOLE)
        budget = self._room_for(need)
        if budget >= need:
            return n
        end = lo  # first file block that does not fit
        for m in maps:
            if m.state == HOLE and m.len > budget:
                end = m.lblk + budget
                break
            budget -= m.len if m.state == HOLE else 0
            end = m.lblk + m.len
        return max(0, min(n, end * BS - off))

    def _write(self, inode: Inode, off: int, data: bytes | memoryview, begin: bool = True,
               maps: list[IoMap] | None = None) -> int:
        n = len(data)
        if n == 0:
            return 0
        if off < 0:
            raise FsError(errno.EINVAL)
        if off + n > fmt.MAX_FILE_BLOCKS * BS:
            raise FsError(errno.EFBIG)
        ext = self._extents(inode)
        end = off + n
        self._make_written(inode, ext, off // BS, (end - 1) // BS + 1, off, end, begin, maps)
        if end > inode.size:  # before the copy: growing zeroes the old EOF block past the old size
            self._grow_size(inode, end, off)
            inode.size = end
        self._copy_in(inode, ext.iomap(off // BS, (end - 1) // BS + 1 - off // BS), off, data)
        self._touch(inode)
        return n

    def _make_written(self, inode: Inode, ext: ExtentMap, lo: int, hi: int, off: int, end: int,
                      begin: bool = True, maps: list[IoMap] | None = None) -> None:
        """Make file blocks [lo, hi) written for a store of bytes [off, end): allocate the holes,
        convert the unwritten extents, zero what the store will not cover, mark them unstable. The
        write path and the write fault (off == end: the whole blocks are zeroed) share it. `maps`:
        ext.iomap(lo, hi - lo) when the caller has it already."""
        if maps is None:
            maps = ext.iomap(lo, hi - lo)
        if begin:
            self._begin(sum(m.len for m in maps if m.state == HOLE))
        tid = self.journal.running_tid
        for m in maps:
            if m.state == WRITTEN:
                continue
            if m.state == HOLE:
                self._map_new(inode, ext, m, off, end)
            else:
                self._zero_edges(m, m.pblk, off, end)
                ext.set_written(m.lblk, m.lblk + m.len)
                self.journal.ordered(m.pblk * BS, m.len * BS)
            inode.unstable.mark(m.lblk, m.lblk + m.len, tid)
            self._dax_filled(inode, m.lblk, m.lblk + m.len)

    def _map_new(self, inode: Inode, ext: ExtentMap, hole: IoMap, off: int, end: int) -> None:
        """Allocate pmem for a hole, zero what the write will not cover, map it written."""
        lblk = hole.lblk
        for pblk, n in self._new_blocks(inode, lblk, hole.len, alloc_goal(ext, lblk)):
            crashpoint.hit("alloc.before_zero")
            self._zero_edges(IoMap(lblk, n, pblk, HOLE), pblk, off, end)
            self.journal.ordered(pblk * BS, n * BS)
            ext.insert(lblk, n, pblk, WRITTEN)
            inode.blocks += n
            lblk += n

    def _zero_edges(self, m: IoMap, pblk: int, off: int, end: int) -> None:
        """Zero the parts of blocks [m.lblk, m.lblk+m.len) that the write [off, end) leaves untouched."""
        lo, hi = m.lblk * BS, (m.lblk + m.len) * BS
        if off > lo:
            self.region.zero(pblk * BS, min(off, hi) - lo)
        if end < hi:
            start = max(end, lo)
            self.region.zero(pblk * BS + (start - lo), hi - start)

    def _copy_in(self, inode: Inode, maps: list[IoMap], off: int, data: bytes | memoryview) -> None:
        """Store data at off into the written blocks `maps` cover."""
        n = len(data)
        mv = memoryview(data)
        half = n // 2
        for m in maps:
            lo = max(off, m.lblk * BS)
            hi = min(off + n, (m.lblk + m.len) * BS)
            if lo - off <= half < hi - off:
                crashpoint.hit("write.half_copied")
            self._store(inode, m.pblk * BS + (lo - m.lblk * BS), mv[lo - off:hi - off])

    def _store(self, inode: Inode, at: int, data: bytes | memoryview) -> None:
        self.region.store(at, data)
        self._dirty(inode, at, len(data))

    def _dirty(self, inode: Inode, at: int, n: int) -> None:
        """Remember pmem bytes [at, at+n) as stored since the last fsync (persist_data flushes them)."""
        runs = inode.dirty_data
        if runs and runs[-1][0] + runs[-1][1] == at:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        elif len(runs) < DIRTY_RUNS:
            runs.append((at, n))
        else:
            runs[0] = (0, self.region.size)  # too many runs to track: fsync persists the whole image

    def persist_data(self, ino: int) -> None:
        """Make the file's stored data durable against a host crash (msync of what it wrote)."""
        inode = self.inodes.cache.get(ino)
        runs = self._dax_written(ino)  # direct stores may land in these at any time: always flushed
        if inode is not None:
            runs += inode.dirty_data
            inode.dirty_data = []
        self.region.persist_ranges(runs)

    def _grow_size(self, inode: Inode, new_size: int, stored_from: int | None = None) -> None:
        """Before i_size grows: zero the old EOF block past the old size (it may hold bytes a
        truncate cut off), and mark the newly exposed blocks unstable. A write passes its offset
        (`stored_from`): it stores its own bytes from there right after, so only the gap before them
        needs zeros."""
        old = inode.size
        if new_size <= old:
            return
        if old % BS:
            m = self._extents(inode).iomap(old // BS, 1)[0]
            if m.state == WRITTEN:
                end = min(new_size, (old // BS + 1) * BS)
                gap = end if stored_from is None else max(old, min(end, stored_from))
                if gap > old:
                    self._store(inode, m.pblk * BS + old % BS, bytes(gap - old))
                self.journal.ordered(m.pblk * BS + old % BS, end - old)  # I1: durable before the new size
        inode.unstable.mark(old // BS, (new_size + BS - 1) // BS, self.journal.running_tid)
        inode.unstable.size_tid = self.journal.running_tid


def alloc_goal(ext: ExtentMap, lblk: int) -> int:
    """Where to look for free pmem for file block lblk: right after the nearest mapped block before it."""
    prev = ext.before(lblk)
    return prev.pblk + (lblk - prev.lblk) if prev is not None else 0
