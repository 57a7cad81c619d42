"""Bitmap allocators for blocks and inodes.

The on-image bitmap (bit i set = i in use) changes only through the journal. In memory each bitmap
keeps two arrays:
  ondisk  what the running transaction's bitmap blocks say;
  busy    ondisk, plus runs freed by transactions not yet checkpointed (journal.py: such a run must
          not be reused before then), plus blocks reserved for the holes of direct mappings
          (mappings.py: the client's address space points at them already). Allocation searches
          `busy` only.
An allocation checks the free count first and changes nothing when it cannot be satisfied whole, so
ENOSPC never leaves partial metadata behind.
"""

from __future__ import annotations

import errno

import numpy as np

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.journal import Journal

BITS_PER_BLOCK = fmt.PAYLOAD * 8
_WINDOW = 1 << 16
_NEAR = 1 << 8  # the first window of a search (it grows to _WINDOW)
GROW_ROOM = 16  # free blocks a file's first allocation looks for (Allocator.alloc_blocks)
ROOM_SEARCH = 16 * _WINDOW  # bits Bitmap.room() looks at per call (about 1.5 ms at most)


class Bitmap:
    def __init__(self, journal: Journal, start: int, nblocks: int, nbits: int, kind: int, first: int) -> None:
        self.journal = journal
        self.start = start
        self.nblocks = nblocks
        self.nbits = nbits
        self.kind = kind
        self.first = first  # lowest allocatable bit
        self.ondisk = np.zeros(nbits, dtype=bool)
        for i in range(nblocks):
            blkno = start + i
            raw = journal.read(blkno)
            fmt.read_header(raw, blkno, kind)
            lo = i * BITS_PER_BLOCK
            hi = min(nbits, lo + BITS_PER_BLOCK)
            payload = np.frombuffer(raw, dtype=np.uint8, count=fmt.PAYLOAD, offset=fmt.HEADER_SIZE)
            self.ondisk[lo:hi] = np.unpackbits(payload, bitorder="little")[: hi - lo].astype(bool)
        self.busy = self.ondisk.copy()
        self.busy[:first] = True
        self.free_now = int(np.count_nonzero(~self.busy))
        self.free_ondisk = int(np.count_nonzero(~self.ondisk[first:]))
        self.pending = 0  # bits freed, not yet reusable
        self._room = first  # where room() goes on looking
        self._room_misses = 0  # room()'s calls since it last found one

    # --- on-image bits ----------------------------------------------------------------------------
    def _store(self, lo: int, hi: int) -> None:
        """Copy ondisk[lo:hi] into the bitmap blocks that hold it (joining them to the transaction)."""
        for i in range(lo // BITS_PER_BLOCK, (hi - 1) // BITS_PER_BLOCK + 1):
            blo = i * BITS_PER_BLOCK
            bhi = min(self.nbits, blo + BITS_PER_BLOCK)
            a, b = max(lo, blo), min(hi, bhi)
            # whole bytes covering [a, b) within this block's payload
            ba, bb = (a - blo) // 8, (b - blo + 7) // 8
            bits = np.zeros((bb - ba) * 8, dtype=bool)
            src_lo = blo + ba * 8
            src_hi = min(bhi, blo + bb * 8)
            bits[: src_hi - src_lo] = self.ondisk[src_lo:src_hi]
            buf = self.journal.write_access(self.start + i)
            off = fmt.HEADER_SIZE + ba
            buf[off:off + bb - ba] = np.packbits(bits, bitorder="little").tobytes()

    def _set_bits(self, lo: int, n: int) -> None:
        """Set bits [lo, lo+n) in the bitmap blocks, one by one: for a few bits, cheaper than _store's
        repacking, and the same result, since the blocks hold what ondisk says."""
        for b in range(lo, lo + n):
            i, bit = divmod(b, BITS_PER_BLOCK)
            self.journal.write_access(self.start + i)[fmt.HEADER_SIZE + (bit >> 3)] |= 1 << (bit & 7)

    def mark_used(self, lo: int, n: int) -> None:
        self.ondisk[lo:lo + n] = True
        self.busy[lo:lo + n] = True
        self.free_now -= n
        self.free_ondisk -= n
        if n <= 8:  # an append's block: the common case
            self._set_bits(lo, n)
        else:
            self._store(lo, lo + n)

    def release_on_checkpoint(self, lo: int, n: int) -> None:
        """Clear the bits on the image now; make them allocatable once the transaction is checkpointed."""
        if not self.ondisk[lo:lo + n].all():
            raise CorruptImage(f"{fmt.KIND_NAMES[self.kind]}: freeing bits {lo}+{n} that are not all in use", lo)
        self.ondisk[lo:lo + n] = False
        self.free_ondisk += n
        self.pending += n
        self._store(lo, lo + n)
        self.journal.free_later(lo, n)

    def free_now_bits(self, lo: int, n: int) -> None:
        """Clear and make allocatable at once (inodes: reuse in a later transaction is safe)."""
        self.ondisk[lo:lo + n] = False
        self.busy[lo:lo + n] = False
        self._room_misses = 0
        self.free_now += n
        self.free_ondisk += n
        self._store(lo, lo + n)

    def reusable(self, lo: int, n: int) -> None:
        """The freeing transaction was checkpointed."""
        self._room_misses = 0
        self.busy[lo:lo + n] = self.ondisk[lo:lo + n]
        self.free_now += int(np.count_nonzero(~self.busy[lo:lo + n]))
        self.pending -= n

    def reserve(self, lo: int, n: int) -> None:
        """Keep free bits out of allocation without using them on the image (a crash forgets it)."""
        self.busy[lo:lo + n] = True
        self.free_now -= n

    def unreserve(self, lo: int, n: int) -> None:
        self.busy[lo:lo + n] = self.ondisk[lo:lo + n]
        self.free_now += int(np.count_nonzero(~self.busy[lo:lo + n]))

    def claim(self, lo: int) -> None:
        """Use a bit that is busy but free on the image: a reserved block, or one freed while pinned
        (its free count was taken when it was reserved or allocated first)."""
        if self.ondisk[lo] or not self.busy[lo]:
            raise CorruptImage(f"{fmt.KIND_NAMES[self.kind]}: claiming bit {lo}, which is not reserved", lo)
        self.ondisk[lo] = True
        self.free_ondisk -= 1
        self._store(lo, lo + 1)

    def free_runs(self) -> int:
        """How many runs of free bits there are (an allocation of any size uses at most that many)."""
        free = ~self.busy[self.first:]
        return int(np.count_nonzero(np.diff(free.view(np.int8)) == 1)) + int(free[0]) if len(free) else 0

    # --- search -----------------------------------------------------------------------------------
    def find(self, n: int, goal: int) -> list[tuple[int, int]]:
        """Runs totalling n free bits, preferring one contiguous run at or after goal. Marks nothing."""
        if n > self.free_now:
            raise FsError(errno.ENOSPC)
        goal = min(max(goal, self.first), self.nbits - 1)
        if n == 1 and not self.busy[goal]:  # the block after the last one given: an append's
            return [(goal, 1)]
        if goal + n <= self.nbits and not self.busy[goal:goal + n].any():
            return [(goal, n)]
        whole = self._first_run(goal, n, whole=True)
        if whole is not None:
            return [whole]
        out: list[tuple[int, int]] = []
        need = n
        pos = goal
        while need:
            lo, ln = self._first_run(pos, need, whole=False)  # type: ignore[misc]
            out.append((lo, ln))
            need -= ln
            pos = lo + ln
        return out

    def room(self, n: int) -> int | None:
        """Where a free run of n bits starts, or None if the search has not found one yet. The search
        goes on from where it stopped the last time (it wraps at the end) and looks at most
        ROOM_SEARCH bits per call: over a fragmented stretch, successive calls walk across it. After
        a whole lap without a find it stops looking until bits are freed."""
        if self._room_misses * ROOM_SEARCH >= self.nbits:
            return None
        lo = self._room
        found = self._first_run(lo, n, whole=True, spans=((lo, min(self.nbits, lo + ROOM_SEARCH)),))
        if found is not None:
            self._room, self._room_misses = found[0], 0
            return found[0]
        self._room = lo + ROOM_SEARCH if lo + ROOM_SEARCH < self.nbits else self.first
        self._room_misses += 1
        return None

    def room_near(self, goal: int, n: int) -> int | None:
        """Where a free run of n bits starts at or after goal, within one window of it."""
        found = self._first_run(goal, n, whole=True, spans=((goal, min(self.nbits, goal + _WINDOW)),))
        return None if found is None else found[0]

    def _first_run(self, goal: int, n: int, whole: bool, spans=None) -> tuple[int, int] | None:
        """The first free run at or after goal (wrapping, unless `spans` says where to look) of length
        >= n (whole) or of any length."""
        for lo0, hi0 in spans or ((goal, self.nbits), (self.first, goal)):
            lo = lo0
            w = _NEAR  # look near the goal first: free space is usually close (a file written with
            while lo < hi0:  # holes leaves one free block between each of its own)
                hi = min(hi0, lo + w + n)
                free = ~self.busy[lo:hi]
                edges = np.diff(np.concatenate(([0], free.view(np.int8), [0])))
                starts = np.flatnonzero(edges == 1)
                if len(starts):
                    ends = np.flatnonzero(edges == -1)
                    lens = ends - starts
                    if not whole:
                        return lo + int(starts[0]), min(n, int(lens[0]))
                    ok = np.flatnonzero(lens >= n)
                    if len(ok):
                        return lo + int(starts[ok[0]]), n
                lo += w
                w = min(w * 16, _WINDOW)
        return None


class Allocator:
    """Blocks and inodes of one file system."""

    def __init__(self, journal: Journal, sb: fmt.Superblock) -> None:
        self.journal = journal
        self.blocks = Bitmap(journal, sb.bitmap_start, sb.bitmap_blocks, sb.total_blocks, fmt.K_BITMAP,
                             sb.data_start)
        self.inodes = Bitmap(journal, sb.ibitmap_start, sb.ibitmap_blocks, sb.inode_count, fmt.K_IBITMAP,
                             fmt.FIRST_FREE_INO)
        self.cursor = sb.data_start
        self.icursor = fmt.FIRST_FREE_INO

    def alloc_blocks(self, n: int, goal: int = 0, max_runs: int = 0) -> list[tuple[int, int]]:
        """Runs totalling n blocks, or fewer blocks in at most max_runs runs (an operation that
        allocates in pieces, so that each piece's new extents fit a transaction). Without a goal (a
        file's first blocks), where GROW_ROOM blocks are free: room to grow in one extent, rather than
        the first free block between others' (ext4's preallocation, simply); and where the block after
        a file's last one is taken, such a run near it."""
        bits = self.blocks
        if not goal:
            goal = bits.room(max(n, GROW_ROOM)) or self.cursor
        elif n < GROW_ROOM and goal < bits.nbits and bits.busy[goal]:
            goal = bits.room_near(goal, GROW_ROOM) or goal
        runs = bits.find(n, goal)
        if max_runs:
            runs = runs[:max_runs]
        for lo, ln in runs:
            self.blocks.mark_used(lo, ln)
        self.cursor = runs[-1][0] + runs[-1][1]
        return runs

    def alloc_block(self, goal: int = 0) -> int:
        return self.alloc_blocks(1, goal)[0][0]

    def free_blocks(self, lo: int, n: int) -> None:
        self.blocks.release_on_checkpoint(lo, n)

    def release(self, runs: list[tuple[int, int]]) -> None:
        for lo, n in runs:
            self.blocks.reusable(lo, n)

    def alloc_inode(self) -> int:
        (ino, _), = self.inodes.find(1, self.icursor)
        self.inodes.mark_used(ino, 1)
        self.icursor = ino + 1
        return ino

    def free_inode(self, ino: int) -> None:
        self.inodes.free_now_bits(ino, 1)
