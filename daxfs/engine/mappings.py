"""Direct mappings and pins: which file pages clients have mapped straight from the image.

A client maps file pages (daxfs.dax) and asks for a page's block the first time it touches it (the
fault layer, fault.py, answers; the daemon's fault service carries the question). Every block handed
out is pinned: a block freed while some mapping may still store into it becomes reusable only at its
last unpin. Truncate, hole punch and the last unlink revoke the mappings of what they take away
(revoke); a write that gives a block to a page some mapping holds as the zero page marks that page
stale (filled). dax_notify, set by the fault service, hears of both.

Real faults (userfaultfd, docs/dax.md) need more: the client maps its whole window at once, each
page onto the pmem block under it, before any fault. So a mapping with a *layout* gets, at map time,
a block for every page of its range: the file's own block where there is one, and for a hole a
block reserved for it (busy in the allocator, free on the image, and given back to tmpfs so that it
reads as zeros). Every write that fills such a hole (write(), a fault, fallocate) claims the reserved
block instead of allocating one (_new_blocks), so the mapping and the file never disagree about
where a page lives. Pinning covers every block of a layout: one freed under it (truncate, punch)
stays where the window points, for that same page to claim again. Pages the file loses are taken out
of the client's page tables by discarding them on the image (_dax_zap), once the transaction that
freed them is committed, as the kernel unmaps the page cache of what truncate removes.
"""

from __future__ import annotations

import errno
import stat
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, FsCore
from daxfs.engine.errors import FsError
from daxfs.engine.extent import HOLE, WRITTEN, IoMap
from daxfs.engine.inode import Inode
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.runs import true_runs


MAPPED_NONE, MAPPED_READ, MAPPED_WRITE = 0, 1, 2  # a page of a layout in the client's page tables


@dataclass(eq=False)
class DaxMapping:
    """One client's direct mapping of file pages [first, first+count), as the engine tracks it."""
    id: int
    ino: int
    first: int
    count: int
    writable: bool
    blocks: dict[int, int] = field(default_factory=dict)  # file page -> pmem block handed out (pinned)
    written: set[int] = field(default_factory=set)  # pages handed out writable
    holes: set[int] = field(default_factory=set)  # pages handed out as the zero page
    stale: set[int] = field(default_factory=set)  # zero pages that got a block since: fault them again
    revoked: bool = False  # truncate, hole punch or the last unlink took the range away
    layout: np.ndarray | None = None  # real faults: the pmem block under each page of the window
    mapped: np.ndarray | None = None  # real faults: what the client's page tables hold (MAPPED_*)

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.first < hi and lo < self.first + self.count


class Mappings(FsCore):
    def __init__(self, region: PmemRegion, sb: fmt.Superblock, readonly: bool) -> None:
        super().__init__(region, sb, readonly)
        self.dax: dict[int, list[DaxMapping]] = {}  # ino -> its direct mappings (revoked ones too)
        self.dax_notify: Callable[[DaxMapping], None] = lambda m: None  # a mapping was revoked or went stale
        self._pins: dict[int, int] = {}  # pmem block -> mappings holding it
        self._held: set[int] = set()  # freed, checkpointed, but pinned: reusable at the last unpin
        self._reserved: set[int] = set()  # blocks under holes of layouts, not (yet) used by the file
        self._zaps: list[tuple[int, int]] = []  # pmem runs to take out of clients' page tables
        self._next_map = 1
        # Files that have been mapped since the page cache last started afresh: stores went behind its
        # back (the daemon drops the kernel's cached pages at their next open, then forgets them here).
        self.behind_cache: set[int] = set()

    def dax_map(self, ino: int, first: int, count: int, writable: bool, layout: bool = False) -> DaxMapping:
        """Register a mapping of file pages [first, first+count); with layout, a block for every page
        (ENOSPC when the holes cannot all be reserved)."""
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV, "only regular files can be mapped")
        if writable and self.readonly:
            raise FsError(errno.EROFS)
        if first < 0 or count <= 0 or first + count > fmt.MAX_FILE_BLOCKS:
            raise FsError(errno.EINVAL, "the range is outside what a file can hold")
        m = DaxMapping(self._next_map, ino, first, count, writable)
        if layout:
            m.layout = self._lay_out(inode, first, count)
            m.mapped = np.zeros(count, dtype=np.uint8)
            m.blocks = dict(zip(range(first, first + count), m.layout.tolist()))
            for pblk in m.blocks.values():
                self._pins[pblk] = self._pins.get(pblk, 0) + 1
        self._next_map += 1
        self.dax.setdefault(ino, []).append(m)
        self.behind_cache.add(ino)
        return m

    def dax_unmap(self, m: DaxMapping) -> None:
        maps = self.dax.get(m.ino, [])
        if m in maps:
            maps.remove(m)
            if not maps:
                del self.dax[m.ino]
            for pblk in m.blocks.values():
                self._unpin(pblk)
            m.blocks.clear()

    def _lay_out(self, inode: Inode, first: int, count: int) -> np.ndarray:
        """The block under each page: the file's, another layout's for the same hole, or reserved."""
        out = np.full(count, -1, dtype=np.int64)
        for r in self._extents(inode).iomap(first, count):
            if r.state != HOLE:
                out[r.lblk - first:r.lblk - first + r.len] = np.arange(r.pblk, r.pblk + r.len)
        for m in self.dax.get(inode.ino, ()):
            if m.layout is not None and m.overlaps(first, first + count):
                lo, hi = max(first, m.first), min(first + count, m.first + m.count)
                mine, theirs = out[lo - first:hi - first], m.layout[lo - m.first:hi - m.first]
                np.copyto(mine, theirs, where=mine < 0)
        bits = self.alloc.blocks
        taken: list[tuple[int, int]] = []
        try:
            for s, k in true_runs(out < 0):
                goal = int(out[s - 1]) + 1 if s else 0
                for lo, n in bits.find(k, goal or self.alloc.cursor):
                    bits.reserve(lo, n)
                    taken.append((lo, n))
                    out[s:s + n] = np.arange(lo, lo + n)
                    s += n
        except BaseException:
            for lo, n in taken:
                bits.unreserve(lo, n)
            raise
        for lo, n in taken:
            self._reserved.update(range(lo, lo + n))
            self.region.discard(lo * BS, n * BS)  # a free block may hold another file's old bytes
        return out

    def _new_blocks(self, inode: Inode, lblk: int, n: int, goal: int, max_runs: int = 0) -> list[tuple[int, int]]:
        """pmem for file blocks [lblk, lblk+n) of a hole: the blocks layouts have under them
        (claimed), new ones for the rest; at most max_runs runs (0: any), as alloc_blocks."""
        laid_out = [m for m in self.dax.get(inode.ino, ()) if m.layout is not None and m.overlaps(lblk, lblk + n)]
        if not laid_out:  # the common case: the write path's cost stays what it was
            return self.alloc.alloc_blocks(n, goal, max_runs)
        laid = np.full(n, -1, dtype=np.int64)
        for m in laid_out:
            lo, hi = max(lblk, m.first), min(lblk + n, m.first + m.count)
            laid[lo - lblk:hi - lblk] = m.layout[lo - m.first:hi - m.first]
        runs: list[tuple[int, int]] = []
        at = 0
        while at < n and (not max_runs or len(runs) < max_runs):
            if laid[at] >= 0:
                pblk = int(laid[at])
                self.alloc.blocks.claim(pblk)
                self._reserved.discard(pblk)
                self._held.discard(pblk)  # freed while pinned: the same page has it again
                if runs and sum(runs[-1]) == pblk:
                    runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                else:
                    runs.append((pblk, 1))
                at += 1
                continue
            k = next((i for i in range(at, n) if laid[i] >= 0), n) - at
            more = self.alloc.alloc_blocks(k, goal, max_runs and max_runs - len(runs))
            runs += more
            at += sum(ln for _, ln in more)
        return runs

    def dax_mapped(self, ino: int) -> bool:
        """Does the file have a live (not revoked) direct mapping?"""
        return any(not m.revoked for m in self.dax.get(ino, ()))

    def _hand_out(self, m: DaxMapping, maps: list[IoMap], write: bool) -> list[tuple[int, int, int | None]]:
        """Record what a fault hands m: written blocks pinned (and marked writable for a write fault),
        holes and unwritten blocks as the zero page. Returns (file page, pages, pmem block or None)."""
        runs: list[tuple[int, int, int | None]] = []
        for r in maps:
            if r.state != WRITTEN:
                m.holes.update(range(r.lblk, r.lblk + r.len))
                runs.append((r.lblk, r.len, None))
                continue
            for i in range(r.len):
                p, pblk = r.lblk + i, r.pblk + i
                m.holes.discard(p)
                m.stale.discard(p)
                if p not in m.blocks:
                    m.blocks[p] = pblk
                    self._pins[pblk] = self._pins.get(pblk, 0) + 1
                if write:
                    m.written.add(p)
            runs.append((r.lblk, r.len, r.pblk))
        return runs

    def dax_take_stale(self, m: DaxMapping) -> list[int]:
        """The zero pages of m that have a block now (the client unmaps them to fault them again)."""
        stale, m.stale = sorted(m.stale), set()
        return stale

    def _dax_revoke(self, inode: Inode, off: int, end: int, unlink: bool = False) -> None:
        """Bytes [off, end) of the file lose their blocks (or, with unlink, the file its last name).
        Mappings of explicit faults of the pages they touch are revoked. Layouts keep their blocks
        (pinned) and lose the pages wholly inside the range, whose bytes the operation discards (the
        caller zeroes the edges in place, which a window sees as it is the same memory): _dax_zap
        takes them away once the change is committed. A layout holds a reference to its inode, so
        an unlinked file lives on while it is mapped, as on Linux."""
        lo, hi = off // BS, -(-end // BS)
        for m in self.dax.get(inode.ino, ()):
            if m.revoked or not m.overlaps(lo, hi):
                continue
            if m.layout is None:
                m.revoked = True
                self.dax_notify(m)
            elif not unlink:
                a, b = max(-(-off // BS), m.first), min(end // BS, m.first + m.count)
                m.written.difference_update(range(a, b))
                if a < b:
                    m.mapped[a - m.first:b - m.first] = MAPPED_NONE
                self._zaps += [(int(m.layout[i]), 1) for i in range(a - m.first, b - m.first)]

    def _dax_zap(self) -> None:
        """Take the pages _dax_revoke collected out of every client's page tables: commit first, so
        that a crash cannot bring back the old extents over blocks whose bytes are gone, then give
        the pages back to tmpfs (the kernel unmaps a page wherever it is mapped when its file loses
        it). The next access faults again, and the fault service sees the file as it is now."""
        if not self._zaps:
            return
        zaps, self._zaps = self._zaps, []
        self.commit()
        zaps.sort()
        merged: list[list[int]] = []
        for pblk, n in zaps:
            if merged and merged[-1][0] + merged[-1][1] >= pblk:
                merged[-1][1] = max(merged[-1][1], pblk + n - merged[-1][0])
            else:
                merged.append([pblk, n])
        for pblk, n in merged:
            self.region.discard(pblk * BS, n * BS)

    def _dax_filled(self, inode: Inode, lo: int, hi: int) -> None:
        for m in self.dax.get(inode.ino, ()):
            if m.layout is not None:
                continue  # the window already points at the block the hole gets
            hit = [p for p in range(max(lo, m.first), min(hi, m.first + m.count)) if p in m.holes]
            if hit and not m.revoked:
                m.holes.difference_update(hit)
                m.stale.update(hit)
                self.dax_notify(m)

    def _dax_written(self, ino: int) -> list[tuple[int, int]]:
        return [(m.blocks[p] * BS, BS) for m in self.dax.get(ino, ()) for p in m.written if p in m.blocks]

    def _unpin(self, pblk: int) -> None:
        n = self._pins[pblk] - 1
        if n:
            self._pins[pblk] = n
            return
        del self._pins[pblk]
        if pblk in self._held:
            self._held.discard(pblk)
            self.alloc.release([(pblk, 1)])
        elif pblk in self._reserved:
            self._reserved.discard(pblk)
            self.alloc.blocks.unreserve(pblk, 1)

    def release_freed(self, runs: list[tuple[int, int]]) -> None:
        """Checkpointed frees become allocatable, except pinned blocks: those wait for their last unpin."""
        super().release_freed(self._unpinned(runs))

    def _unpinned(self, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not self._pins or not runs:
            return runs
        pinned = sorted(self._pins)
        out = []
        for lo, n in runs:
            start, end = lo, lo + n
            i = bisect_left(pinned, lo)
            while i < len(pinned) and pinned[i] < end:
                b = pinned[i]
                if b > start:
                    out.append((start, b - start))
                self._held.add(b)
                start = b + 1
                i += 1
            if start < end:
                out.append((start, end - start))
        return out

