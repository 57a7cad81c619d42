"""Checkpoint: write committed metadata home and give its journal space back.

Order (what makes a crash at any step harmless):
  1. store every pending transaction's images at their home locations, in commit order (a block in
     several transactions gets its newest image), then persist them;
  2. only then advance the journal tail and sequence in the superblock (persisted, two copies).
A crash before 2 leaves the tail where it was: replay writes the same images home again, which is
idempotent. Block runs freed by the checkpointed transactions become reusable after 2.
"""

from __future__ import annotations

from collections.abc import Mapping

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.runs import block_runs
from daxfs.engine.superblock import write_superblock
from daxfs.engine.transaction import JournalState, newest_images


def checkpoint(j: JournalState) -> None:
    """Caller holds j.io."""
    if not j.pending:
        return
    write_home(j.region, newest_images(txn.blocks for txn in j.pending), "checkpoint.half_written")
    crashpoint.hit("checkpoint.before_tail")

    j.sb.journal_tail = j.head
    j.sb.journal_seq = j.pending[-1].tid + 1
    write_superblock(j.region, j.sb)
    for txn in j.pending:
        j.releasable.extend(txn.freed)
    j.pending = []
    j.used = 0
    j.stats_checkpoints += 1


def write_home(region: PmemRegion, newest: Mapping[int, bytes], half_point: str | None = None) -> None:
    """Store each image at its home block and persist them all (checkpoint step 1, and replay's)."""
    homes = sorted(newest)
    for i, home in enumerate(homes):
        if half_point and i == len(homes) // 2:
            crashpoint.hit(half_point)
        region.store(home * fmt.BLOCK_SIZE, newest[home])
    for first, n in block_runs(homes):
        region.persist(first * fmt.BLOCK_SIZE, n * fmt.BLOCK_SIZE)
    region.fence()
