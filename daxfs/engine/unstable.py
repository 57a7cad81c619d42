"""Unstable blocks, daxfs's model of the seed's IOMAP_F_DIRTY, and the MAP_SYNC rule over them.

A file block is *unstable* while fdatasync() of it would still have metadata to write: its mapping was
created (allocation), changed (unwritten -> written, punched) or exposed by an i_size change in a
transaction that is not yet committed. Each inode remembers, for ranges of file blocks, the id of the
newest transaction that changed their mapping; the range is stable once the journal has committed it.
"""

from __future__ import annotations


class UnstableMap:
    """File-block ranges [lo, hi) with the tid that last changed their mapping, pruned as commits land."""

    __slots__ = ("ranges", "size_tid")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []  # [lo, hi, tid]
        self.size_tid = 0  # tid of the last uncommitted i_size change

    def mark(self, lo: int, hi: int, tid: int) -> None:
        if lo >= hi:
            return
        last = self.ranges[-1] if self.ranges else None
        if last is not None and last[2] == tid and last[1] >= lo and last[0] <= hi:
            last[0], last[1] = min(last[0], lo), max(last[1], hi)  # sequential writes extend one range
        else:
            self.ranges.append([lo, hi, tid])

    def prune(self, committed_tid: int) -> None:
        if self.ranges and self.ranges[0][2] <= committed_tid:
            self.ranges = [r for r in self.ranges if r[2] > committed_tid]

    def any(self, committed_tid: int) -> bool:
        self.prune(committed_tid)
        return bool(self.ranges) or self.size_tid > committed_tid

    def count(self, committed_tid: int) -> int:
        """Unstable blocks (ranges may overlap across transactions; counted once)."""
        self.prune(committed_tid)
        spans = sorted((r[0], r[1]) for r in self.ranges)
        total, end = 0, -1
        for lo, hi in spans:
            lo = max(lo, end)
            if hi > lo:
                total += hi - lo
                end = hi
        return total


def tid_to_commit(unstable: UnstableMap, lo: int, hi: int, committed_tid: int) -> int:
    """THE MAP_SYNC RULE. The seed: "while a block is writeably mapped into page tables of this
    mapping, it is guaranteed to be visible in the file at that offset also after a crash"; the fault
    handler refrains from making the page writable while the block's mapping metadata is unstable
    (IOMAP_F_DIRTY), commits it (VM_FAULT_NEEDDSYNC -> fdatasync), and only then maps it writable.

    Here: a sync-mode write or write fault to file blocks [lo, hi) may be acknowledged only after the
    journal has committed the returned tid. 0 means the blocks are stable: no commit, ever, for a
    write to stable blocks. Committing a later tid also commits every earlier one."""
    unstable.prune(committed_tid)
    tid = 0
    for rlo, rhi, rtid in unstable.ranges:
        if rlo < hi and lo < rhi and rtid > tid:
            tid = rtid
    return tid


def datasync_tid(unstable: UnstableMap, committed_tid: int) -> int:
    """What fdatasync() of the whole file must commit: the newest uncommitted change of any block's
    mapping or of i_size (0: nothing; timestamps alone can wait)."""
    unstable.prune(committed_tid)
    tid = max((r[2] for r in unstable.ranges), default=0)
    return max(tid, unstable.size_tid) if unstable.size_tid > committed_tid else tid
