"""Range operations on a file's block map: fallocate(2) with its modes, lseek's SEEK_DATA and
SEEK_HOLE, and copy_file_range(2). The daemon gets them from the kernel through its C shim
(daemon/fuseshim.py); the side channels user.daxfs.prealloc and user.daxfs.punch call them too.

fallocate is checked in the order Linux's vfs_fallocate checks (EINVAL, EOPNOTSUPP, EISDIR, ESPIPE,
ENODEV, EFBIG), then:
  0, KEEP_SIZE             unwritten extents over the holes of the range (they read as zeros; a
                           later write only converts them); i_size grows unless KEEP_SIZE
  PUNCH_HOLE | KEEP_SIZE   whole blocks unmapped, the partial blocks at the edges zeroed
  ZERO_RANGE [| KEEP_SIZE] written whole blocks become unwritten in place (no data I/O, nothing
                           freed), holes get unwritten blocks, partial edges are zeroed; i_size as
                           for mode 0
  COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES: EOPNOTSUPP (docs/design.md says why).
ENOSPC is decided before anything changes: no partial preallocation. An operation is one
transaction unless it changes more extents than one transaction holds; then it goes in pieces,
each leaving a consistent file (as truncate does, attrs.py), so a crash between pieces leaves part
of the range done, which Linux allows too: fallocate promises nothing until fsync.

fallocate changes block mappings, so the blocks it touches are unstable (unstable.py) until their
transaction commits, and fdatasync commits them. Punching and zeroing revoke the direct mappings of
the range, as truncate does.
"""

from __future__ import annotations

import errno
import stat

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, RESERVE, SLACK
from daxfs.engine.data import DataPath, alloc_goal
from daxfs.engine.errors import FsError
from daxfs.engine.extent import HOLE, UNWRITTEN, WRITTEN, ExtentMap, IoMap
from daxfs.engine.inode import Inode
from daxfs.engine.journal import OPERATION_MARGIN

# fallocate(2) modes, linux/falloc.h
KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE = 0x01, 0x02, 0x08, 0x10
INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES = 0x20, 0x40, 0x80
MODES = (0, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES)
SEEK_DATA, SEEK_HOLE = 3, 4
COPY_MAX = 8 << 20  # bytes one copy_file_range copies (a short copy; callers loop, as Linux allows)
PIECE = 32  # extents one piece of a long operation changes: each may sit in its own slot block
SLOTS = fmt.slots_per_block(fmt.EXTENT_SIZE)


class Ranges(DataPath):
    def fallocate(self, ino: int, mode: int, off: int, length: int) -> int:
        """fallocate(2); returns the blocks allocated (mode 0, ZERO_RANGE) or freed (PUNCH_HOLE)."""
        inode = self.inode(ino)
        keep = bool(mode & KEEP_SIZE)
        op = mode & ~KEEP_SIZE
        if off < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        if (op not in MODES or (op == PUNCH_HOLE and not keep)
                or (op in (COLLAPSE_RANGE, INSERT_RANGE, WRITE_ZEROES) and keep)):
            raise FsError(errno.EOPNOTSUPP)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if stat.S_ISFIFO(inode.mode):
            raise FsError(errno.ESPIPE)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV)
        if off + length > fmt.MAX_FILE_BLOCKS * BS:
            raise FsError(errno.EFBIG)
        if op == 0:
            return self._prealloc(inode, off, off + length, keep)
        if op == PUNCH_HOLE:
            return self._punch(inode, off, off + length)
        if op == ZERO_RANGE:
            return self._zero_range(inode, off, off + length, keep)
        raise FsError(errno.EOPNOTSUPP)

    def prealloc(self, ino: int, off: int, length: int, keep_size: bool = False) -> int:
        """fallocate(mode 0, or KEEP_SIZE): returns the blocks allocated."""
        return self.fallocate(ino, KEEP_SIZE if keep_size else 0, off, length)

    def punch(self, ino: int, off: int, length: int) -> int:
        """fallocate(PUNCH_HOLE | KEEP_SIZE): returns the blocks freed."""
        return self.fallocate(ino, PUNCH_HOLE | KEEP_SIZE, off, length)

    # --- the modes ----------------------------------------------------------------------------------
    def _prealloc(self, inode: Inode, off: int, end: int, keep: bool) -> int:
        ext = self._extents(inode)
        holes = self._holes(ext, off, end)
        total = self._begin_alloc(holes)
        self._alloc_unwritten(inode, ext, holes)
        if not keep:
            self._extend(inode, end)
        self._touch(inode, m=False)
        return total

    def _punch(self, inode: Inode, off: int, end: int) -> int:
        """The whole range, past EOF too (blocks preallocated with KEEP_SIZE), as XFS does."""
        self._begin(freeing=True)
        self._dax_revoke(inode, off, end)
        ext = self._extents(inode)
        self._zero_partial(inode, ext, off, end)
        freed = 0

        def unmap(lo: int, hi: int) -> None:
            nonlocal freed
            for pblk, n in ext.remove(lo, hi):
                self.alloc.free_blocks(pblk, n)
                inode.blocks -= n
                freed += n
            inode.unstable.mark(lo, hi, self.journal.running_tid)  # fdatasync must commit the unmapping
        self._in_pieces(ext, -(-off // BS), min(end // BS, ext.last_block()), unmap)
        self._touch(inode)
        self._dax_zap()
        return freed

    def _zero_range(self, inode: Inode, off: int, end: int, keep: bool) -> int:
        ext = self._extents(inode)
        holes = self._holes(ext, off, end)
        total = self._begin_alloc(holes)
        self._dax_revoke(inode, off, end)
        self._zero_partial(inode, ext, off, end)

        def unwrite(lo: int, hi: int) -> None:
            ext.set_state(lo, hi, UNWRITTEN)  # the old bytes stay in pmem, never readable again
            inode.unstable.mark(lo, hi, self.journal.running_tid)
        self._in_pieces(ext, -(-off // BS), min(end // BS, ext.last_block()), unwrite)
        self._alloc_unwritten(inode, ext, holes)
        if not keep:
            self._extend(inode, end)
        self._touch(inode)
        self._dax_zap()
        return total

    # --- their parts --------------------------------------------------------------------------------
    @staticmethod
    def _holes(ext: ExtentMap, off: int, end: int) -> list[IoMap]:
        lo, hi = off // BS, -(-end // BS)
        return [m for m in ext.iomap(lo, hi - lo) if m.state == HOLE]

    def _begin_alloc(self, holes: list[IoMap]) -> int:
        """Begin an operation that fills these holes; ENOSPC now unless all of it fits, with room
        for an extent slot per new extent beyond what SLACK covers. A new extent per block is the
        worst case (free space may be that broken); when that bound is what refuses, count instead:
        no more new extents than free runs the allocation can use, holes, and MAX_EXTENT_LEN pieces
        (a fallocate of nearly all the free space of a fresh file system fits, xfstests generic/103)."""
        total = sum(m.len for m in holes)
        extents = total
        if self.alloc.blocks.free_now < total + max(0, -(-total // SLOTS) - SLACK) + SLACK + RESERVE:
            extents = min(total, self.alloc.blocks.free_runs() + len(holes) + total // fmt.MAX_EXTENT_LEN)
        self._begin(total + max(0, -(-extents // SLOTS) - SLACK))
        return total

    def _alloc_unwritten(self, inode: Inode, ext: ExtentMap, holes: list[IoMap]) -> None:
        """Unwritten extents over the holes, at most PIECE new extents per transaction."""
        for m in holes:
            lblk, end = m.lblk, m.lblk + m.len
            while lblk < end:
                self._room(PIECE)
                start = lblk
                for pblk, n in self._new_blocks(inode, lblk, end - lblk, alloc_goal(ext, lblk), max_runs=PIECE):
                    ext.insert(lblk, n, pblk, UNWRITTEN)
                    inode.blocks += n
                    lblk += n
                inode.unstable.mark(start, lblk, self.journal.running_tid)

    def _in_pieces(self, ext: ExtentMap, lo: int, hi: int, change) -> None:
        """change(a, b) over file blocks [lo, hi) in pieces of at most PIECE extents, each in a
        transaction with room for it."""
        while lo < hi:
            b = ext.piece_end(lo, hi, PIECE)
            self._room(PIECE)
            change(lo, b)
            lo = b

    def _room(self, blocks: int) -> None:
        """Commit first unless the running transaction can take `blocks` more metadata blocks."""
        j = self.journal
        if len(j.running.blocks) + blocks + OPERATION_MARGIN >= j.max_txn_blocks:
            self.commit()

    def _zero_partial(self, inode: Inode, ext: ExtentMap, off: int, end: int) -> None:
        """Zero bytes [off, end) in the written blocks it covers only in part (its edges)."""
        inner_lo, inner_hi = -(-off // BS) * BS, end // BS * BS
        edges = [(off, end)] if inner_lo > inner_hi else [(off, inner_lo), (inner_hi, end)]
        for a, b in edges:
            if a < b:
                m = ext.iomap(a // BS, 1)[0]
                if m.state == WRITTEN:
                    self._store(inode, m.pblk * BS + a % BS, bytes(b - a))

    def _extend(self, inode: Inode, end: int) -> None:
        if end > inode.size:
            self._grow_size(inode, end)
            inode.size = end

    # --- lseek and copy_file_range ------------------------------------------------------------------
    def seek(self, ino: int, off: int, whence: int) -> int:
        """lseek(2) SEEK_DATA / SEEK_HOLE from the extent map. Unwritten extents are holes: they read
        as zeros, and daxfs has no page cache that could hold their data (ext4 reports them as holes
        too, unless the page cache has dirty pages over them). EOF counts as a hole; ENXIO at or
        past EOF, as Linux answers."""
        inode = self.inode(ino)
        if whence not in (SEEK_DATA, SEEK_HOLE) or not stat.S_ISREG(inode.mode):
            raise FsError(errno.EINVAL)
        if off < 0 or off >= inode.size:
            raise FsError(errno.ENXIO)
        blk = self._extents(inode).seek(off // BS, whence == SEEK_DATA)
        if whence == SEEK_DATA:
            if blk is None or blk * BS >= inode.size:
                raise FsError(errno.ENXIO)
            return max(off, blk * BS)
        return min(inode.size, max(off, blk * BS))  # blk is never None for SEEK_HOLE

    def copy_range(self, ino_in: int, off_in: int, ino_out: int, off_out: int, length: int) -> int:
        """copy_file_range(2) inside the image: up to COPY_MAX bytes (short, as Linux allows), read
        from the source's extents and written through the write path (new blocks zeroed and
        ordered as for any write), in one transaction. Holes and unwritten blocks of the source
        are written as zeros, as Linux's generic copy writes them. The checks are the kernel's
        (generic_copy_file_checks), which it makes before the request reaches us."""
        src, dst = self.inode(ino_in), self.inode(ino_out)
        for inode in (src, dst):
            if stat.S_ISDIR(inode.mode):
                raise FsError(errno.EISDIR)
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EINVAL)
        if off_in < 0 or off_out < 0 or length < 0:
            raise FsError(errno.EINVAL)
        n = max(0, min(length, COPY_MAX, src.size - off_in))
        if ino_in == ino_out and off_out < off_in + n and off_in < off_out + n:
            raise FsError(errno.EINVAL)
        if n == 0:
            return 0
        return self.write(ino_out, off_out, self.read(ino_in, off_in, n))
