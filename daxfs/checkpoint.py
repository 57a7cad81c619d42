"""Checkpoint: write committed metadata home and give its journal space back.

Order (what makes a crash at any step harmless):
  1. store every pending transaction's images at their home locations, in commit order (a block in
     several transactions gets its newest image), then persist them;
  2. only then advance the journal tail and sequence in the superblock (persisted, two copies).
A crash before 2 leaves the tail where it was: replay writes the same images home again, which is
idempotent. Block runs freed by the checkpointed transactions become reusable after 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from daxfs import crashpoint
from daxfs import format as fmt
from daxfs.superblock import write_superblock

if TYPE_CHECKING:
    from daxfs.journal import Journal


def checkpoint(j: "Journal") -> None:
    """Caller holds j.io."""
    if not j.pending:
        return
    newest: dict[int, bytearray] = {}
    for txn in j.pending:
        newest.update(txn.blocks)
    homes = sorted(newest)
    half = len(homes) // 2
    for i, home in enumerate(homes):
        if i == half:
            crashpoint.hit("checkpoint.half_written")
        j.region.store(home * fmt.BLOCK_SIZE, newest[home])
    for first, n in runs(homes):
        j.region.persist(first * fmt.BLOCK_SIZE, n * fmt.BLOCK_SIZE)
    j.region.fence()
    crashpoint.hit("checkpoint.before_tail")

    j.sb.journal_tail = j.head
    j.sb.journal_seq = j.pending[-1].tid + 1
    write_superblock(j.region, j.sb)
    for txn in j.pending:
        j.releasable.extend(txn.freed)
    j.pending = []
    j.used = 0
    j.stats_checkpoints += 1


def runs(sorted_blocks: list[int]) -> list[tuple[int, int]]:
    """Adjacent block numbers merged into (first, count) runs: one msync each."""
    out: list[tuple[int, int]] = []
    for b in sorted_blocks:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out
