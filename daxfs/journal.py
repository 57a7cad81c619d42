"""The metadata journal: transactions and the metadata buffer cache.

A transaction's life, one module each (as jbd2 splits it):
  journal.py     the running transaction collects changed metadata blocks; freeze() closes it;
  commit.py      writes a frozen transaction into the journal area and makes it durable;
  checkpoint.py  writes committed blocks to their home locations and advances the journal tail;
  recovery.py    replays committed transactions at open after a crash.

Rules every caller keeps:
  * Metadata blocks are changed only through write_access()/create(), never stored into the region
    directly. Their home locations are written only by checkpoint and replay (commit.py invariant I5).
  * Metadata changes happen on one thread (the file system's); commit and checkpoint I/O may run on
    another, and read only frozen copies.
  * A block run freed by transaction T may be reused only after T is checkpointed: until then replay
    could write an old image of it home (if it was metadata), or a crash could give it back to its old
    owner (if it was data).

Transaction ids are journal sequence numbers: T is written with seq == T.tid, consecutive, and the
running transaction's tid is the next sequence number.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from daxfs import format as fmt
from daxfs.checkpoint import checkpoint
from daxfs.commit import commit_transaction
from daxfs.pmem import PmemRegion


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


class Journal:
    def __init__(self, region: PmemRegion, sb: fmt.Superblock) -> None:
        self.region = region
        self.sb = sb
        self.start = sb.journal_start
        self.size = sb.journal_blocks
        # Biggest transaction allowed: half the journal, so that one commit always fits after a checkpoint.
        self.max_txn_blocks = self.size // 2 - self.size // fmt.DESC_ENTRIES - 2
        self.cache: dict[int, bytearray] = {}  # newest version of blocks changed since their checkpoint
        self.running = Transaction(sb.journal_seq)
        self.committed_tid = sb.journal_seq - 1
        self.pending: list[Transaction] = []  # committed, not yet checkpointed, in tid order
        self.head = sb.journal_tail  # where the next transaction goes (journal-relative)
        self.used = 0  # journal blocks held by pending transactions
        self.releasable: list[tuple[int, int]] = []  # freed runs whose transaction is checkpointed
        self.io = threading.Condition()  # serialises commit/checkpoint I/O and orders it by tid
        self.next_write_tid = sb.journal_seq
        self.inflight = 0  # frozen transactions not yet completed
        self.stats_commits = 0
        self.stats_checkpoints = 0

    # --- buffer access (file system thread) -------------------------------------------------------
    def read(self, blkno: int) -> bytes | bytearray:
        """The newest version of a metadata block. Callers must not modify it."""
        buf = self.cache.get(blkno)
        if buf is not None:
            return buf
        return self.region.load(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)

    def write_access(self, blkno: int) -> bytearray:
        """The block's buffer, joined to the running transaction, to be modified in place."""
        buf = self.cache.get(blkno)
        if buf is None:
            buf = bytearray(self.region.load(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE))
            self.cache[blkno] = buf
        self.running.blocks[blkno] = buf
        return buf

    def create(self, blkno: int, header: fmt.BlockHeader) -> bytearray:
        """A new metadata block with fresh contents, joined to the running transaction."""
        header.self_blk = blkno
        buf = fmt.new_block(header)
        self.cache[blkno] = buf
        self.running.blocks[blkno] = buf
        return buf

    def ordered(self, off: int, n: int) -> None:
        """Data bytes that the running transaction's mappings expose: persisted before its records."""
        self.running.ordered.append((off, n))

    def free_later(self, start: int, n: int) -> None:
        self.running.freed.append((start, n))

    @property
    def running_tid(self) -> int:
        return self.running.tid

    def running_full(self, margin: int = 64) -> bool:
        return len(self.running.blocks) + margin >= self.max_txn_blocks

    # --- the transaction's life -------------------------------------------------------------------
    def freeze(self) -> Transaction | None:
        """Close the running transaction and open the next. The frozen one holds sealed copies of its
        blocks, so later changes to the same blocks go to the next transaction only."""
        txn = self.running
        if not txn.blocks and not txn.freed and not txn.ordered:
            return None
        txn.blocks = {b: fmt.seal(bytearray(buf)) for b, buf in txn.blocks.items()}
        self.running = Transaction(txn.tid + 1)
        self.inflight += 1
        return txn

    def write(self, txn: Transaction) -> None:
        """Commit a frozen transaction (any thread). Returns when it is durable."""
        with self.io:
            while self.next_write_tid != txn.tid:
                self.io.wait()
            try:
                commit_transaction(self, txn)
            finally:
                self.next_write_tid = txn.tid + 1
                self.io.notify_all()

    def complete(self, txn: Transaction) -> None:
        """File system thread, after write(): the transaction's blocks are now stable."""
        self.committed_tid = max(self.committed_tid, txn.tid)
        self.inflight -= 1

    def commit(self) -> int:
        """Commit everything changed so far, synchronously. Returns the committed tid."""
        txn = self.freeze()
        if txn is not None:
            self.write(txn)
            self.complete(txn)
        return self.committed_tid

    def checkpoint(self) -> None:
        with self.io:
            checkpoint(self)

    def take_releasable(self) -> list[tuple[int, int]]:
        runs, self.releasable = self.releasable, []
        return runs

    def evict_clean(self) -> None:
        """Drop cached blocks that are home and in no open transaction (file system thread)."""
        if self.pending or self.inflight:
            return
        keep = self.running.blocks
        self.cache = {b: buf for b, buf in self.cache.items() if b in keep}
