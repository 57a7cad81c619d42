"""Direct mappings and pins: which file pages clients have mapped straight from the image.

A client maps file pages (daxfs.dax) and asks for a page's block the first time it touches it (the
fault layer, fault.py, answers; the daemon's fault service carries the question). Every block handed
out is pinned: a block freed while some mapping may still store into it becomes reusable only at its
last unpin. Truncate, hole punch and the last unlink revoke the mappings of what they take away
(revoke); a write that gives a block to a page some mapping holds as the zero page marks that page
stale (filled). dax_notify, set by the fault service, hears of both.
"""

from __future__ import annotations

import errno
import stat
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, FsCore
from daxfs.engine.errors import FsError
from daxfs.engine.extent import WRITTEN, IoMap
from daxfs.engine.inode import Inode
from daxfs.engine.pmem import PmemRegion


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

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.first < hi and lo < self.first + self.count


class Mappings(FsCore):
    def __init__(self, region: PmemRegion, sb: fmt.Superblock, readonly: bool) -> None:
        super().__init__(region, sb, readonly)
        self.dax: dict[int, list[DaxMapping]] = {}  # ino -> its direct mappings (revoked ones too)
        self.dax_notify: Callable[[DaxMapping], None] = lambda m: None  # a mapping was revoked or went stale
        self._pins: dict[int, int] = {}  # pmem block -> mappings holding it
        self._held: set[int] = set()  # freed, checkpointed, but pinned: reusable at the last unpin
        self._next_map = 1
        # Files that have been mapped since the page cache last started afresh: stores went behind its
        # back (the daemon drops the kernel's cached pages at their next open, then forgets them here).
        self.behind_cache: set[int] = set()

    def dax_map(self, ino: int, first: int, count: int, writable: bool) -> DaxMapping:
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV, "only regular files can be mapped")
        if writable and self.readonly:
            raise FsError(errno.EROFS)
        if first < 0 or count <= 0 or first + count > fmt.MAX_FILE_BLOCKS:
            raise FsError(errno.EINVAL, "the range is outside what a file can hold")
        m = DaxMapping(self._next_map, ino, first, count, writable)
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

    def _dax_revoke(self, inode: Inode, lo: int, hi: int) -> None:
        for m in self.dax.get(inode.ino, ()):
            if not m.revoked and m.overlaps(lo, hi):
                m.revoked = True
                self.dax_notify(m)

    def _dax_filled(self, inode: Inode, lo: int, hi: int) -> None:
        for m in self.dax.get(inode.ino, ()):
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

