"""The records the journal's phases share: a Transaction, and the JournalState that commit.py and
checkpoint.py change on the journal's behalf.

Keeping them here, below journal.py, commit.py and checkpoint.py, lets each phase name what it
changes without importing the journal that calls it. Journal (journal.py) is a JournalState.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from daxfs.engine import format as fmt
from daxfs.engine.pmem import PmemRegion


@dataclass
class Transaction:
    tid: int
    blocks: dict[int, bytearray] = field(default_factory=dict)  # home block -> image
    ordered: list[tuple[int, int]] = field(default_factory=list)  # data byte ranges to persist first
    freed: list[tuple[int, int]] = field(default_factory=list)  # block runs, reusable once checkpointed
    jlen: int = 0  # journal blocks it occupies once committed

    def journal_blocks_needed(self) -> int:
        n = len(self.blocks)
        return n + (n + fmt.DESC_ENTRIES - 1) // fmt.DESC_ENTRIES + 1


class JournalState:
    """Where the journal area stands. commit.py appends to it, checkpoint.py empties it; both hold `io`."""

    def __init__(self, region: PmemRegion, sb: fmt.Superblock) -> None:
        self.region = region
        self.sb = sb
        self.start = sb.journal_start
        self.size = sb.journal_blocks
        self.head = sb.journal_tail  # where the next transaction goes (journal-relative)
        self.used = 0  # journal blocks held by pending transactions
        self.pending: list[Transaction] = []  # committed, not yet checkpointed, in tid order
        self.releasable: list[tuple[int, int]] = []  # freed runs whose transaction is checkpointed
        self.io = threading.Condition()  # serialises commit/checkpoint I/O and orders it by tid
        self.stats_commits = 0
        self.stats_checkpoints = 0


def newest_images(transactions: Iterable[Mapping[int, bytes]]) -> dict[int, bytes]:
    """Home block -> its newest image, over transactions in commit order: what checkpoint and replay
    write home, and what fsck and inspect read the image through."""
    newest: dict[int, bytes] = {}
    for images in transactions:
        newest.update(images)
    return newest
