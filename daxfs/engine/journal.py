"""The metadata journal: transactions and the metadata buffer cache.

A transaction's life, one module each (as jbd2 splits it):
  transaction.py the records the phases share (Transaction, JournalState);
  journal.py     the running transaction collects changed metadata blocks;
  commit.py      writes a transaction into the journal area and makes it durable;
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

A commit has three steps, named as jbd2 names them: start_commit() closes the running transaction
(file system thread), write_commit() writes it and returns once it is durable (any thread), and
finish_commit() records it as committed (file system thread). commit() does all three at once.

Transaction ids are journal sequence numbers: T is written with seq == T.tid, consecutive, and the
running transaction's tid is the next sequence number.
"""

from __future__ import annotations

from daxfs.engine import format as fmt
from daxfs.engine.checkpoint import checkpoint
from daxfs.engine.commit import commit_transaction
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.transaction import JournalState, Transaction

# Room an operation may take in the running transaction before the next must commit first: the
# biggest single operation (freeing a file touches every bitmap block) is bounded by mkfs's journal
# size rule, the rest of an operation by this margin.
OPERATION_MARGIN = 64


class Journal(JournalState):
    def __init__(self, region: PmemRegion, sb: fmt.Superblock) -> None:
        super().__init__(region, sb)
        # Biggest transaction allowed: half the journal, so that one commit always fits after a checkpoint.
        self.max_txn_blocks = self.size // 2 - self.size // fmt.DESC_ENTRIES - 2
        self.cache: dict[int, bytearray] = {}  # newest version of blocks changed since their checkpoint
        self.running = Transaction(sb.journal_seq)
        self.committed_tid = sb.journal_seq - 1
        self.next_write_tid = sb.journal_seq
        self.inflight = 0  # transactions started, not yet finished

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

    def running_full(self) -> bool:
        return len(self.running.blocks) + OPERATION_MARGIN >= self.max_txn_blocks

    # --- the transaction's life -------------------------------------------------------------------
    def start_commit(self) -> Transaction | None:
        """Close the running transaction and open the next (None if there was nothing to commit). The
        closed one holds sealed copies of its blocks, so later changes to the same blocks go to the
        next transaction only."""
        txn = self.running
        if not txn.blocks and not txn.freed and not txn.ordered:
            return None
        txn.blocks = {b: fmt.seal(bytearray(buf)) for b, buf in txn.blocks.items()}
        self.running = Transaction(txn.tid + 1)
        self.inflight += 1
        return txn

    def write_commit(self, txn: Transaction) -> None:
        """Write a started commit into the journal (any thread); returns once it is durable."""
        with self.io:
            while self.next_write_tid != txn.tid:
                self.io.wait()
            try:
                commit_transaction(self, txn)
            finally:
                self.next_write_tid = txn.tid + 1
                self.io.notify_all()

    def finish_commit(self, txn: Transaction) -> None:
        """File system thread, after write_commit(): the transaction's blocks are now stable."""
        self.committed_tid = max(self.committed_tid, txn.tid)
        self.inflight -= 1

    def commit(self) -> int:
        """Commit everything changed so far, synchronously. Returns the committed tid."""
        txn = self.start_commit()
        if txn is not None:
            self.write_commit(txn)
            self.finish_commit(txn)
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
