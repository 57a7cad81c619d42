"""Commit: how a frozen transaction becomes durable in the journal.

On the image a transaction T is, starting at the journal head:

    descriptor(seq=T) image image ... [descriptor(seq=T) image ...] commit(seq=T, n, crc)

Invariants (recovery.py relies on each):
  I1  Data blocks that T's mappings newly expose (allocation, zeroing, unwritten->written) are persisted
      before T's records: a committed mapping never points at data that a power cut could undo.
  I2  T's descriptors and images are persisted, and a fence passed, before T's commit record is
      written. The commit record is the single commit point.
  I3  The commit record carries seq == T and the CRC-32C of all T's descriptor and image blocks in
      order; recovery accepts T only if both match, so a torn T is ignored whole.
  I4  Transactions are written in tid order, contiguously (modulo the journal size), and the journal
      never overwrites a transaction that is not yet checkpointed: if T does not fit, checkpoint first.
  I5  No home location is written here: only checkpoint and replay write them, from committed images.
"""

from __future__ import annotations

import struct
import time

import crc32c

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine.checkpoint import checkpoint
from daxfs.engine.errors import DaxfsError
from daxfs.engine.transaction import JournalState, Transaction


def commit_transaction(j: JournalState, txn: Transaction) -> None:
    """Write the frozen transaction txn at the journal head and make it durable (caller holds j.io)."""
    region = j.region
    need = txn.journal_blocks_needed()
    if need > j.size:  # the engine bounds transactions (journal.running_full); this is its assertion
        raise DaxfsError(f"transaction {txn.tid} needs {need} journal blocks, the journal has {j.size}")
    if need > j.size - j.used:  # I4
        checkpoint(j)

    region.persist_ranges(txn.ordered)  # I1
    region.fence()
    crashpoint.hit("commit.ordered_data")

    homes = list(txn.blocks)
    pos = j.head
    crc = 0
    for first in range(0, len(homes), fmt.DESC_ENTRIES):
        chunk = homes[first:first + fmt.DESC_ENTRIES]
        desc = fmt.new_block(fmt.BlockHeader(fmt.K_JDESC, used=len(chunk), self_blk=j.start + pos % j.size,
                                             seq=txn.tid))
        struct.pack_into(f"<{len(chunk)}Q", desc, fmt.HEADER_SIZE, *chunk)
        fmt.seal(desc)
        crc = crc32c.crc32c(desc, crc)
        pos = _put(j, pos, desc)
        for home in chunk:
            image = txn.blocks[home]
            crc = crc32c.crc32c(image, crc)
            pos = _put(j, pos, image)
    _persist_range(j, j.head, pos - j.head)  # I2
    region.fence()
    crashpoint.hit("commit.records_written")

    rec = fmt.new_block(fmt.BlockHeader(fmt.K_JCOMMIT, self_blk=j.start + pos % j.size, seq=txn.tid))
    fmt.COMMIT.pack_into(rec, fmt.HEADER_SIZE, len(homes), crc, 0, time.time_ns())
    pos = _put(j, pos, fmt.seal(rec))
    _persist_range(j, pos - 1, 1)
    region.fence()
    crashpoint.hit("commit.done")

    txn.jlen = pos - j.head
    j.head = pos % j.size
    j.used += txn.jlen
    j.pending.append(txn)
    j.stats_commits += 1


def _put(j: JournalState, pos: int, block: bytes | bytearray) -> int:
    j.region.store((j.start + pos % j.size) * fmt.BLOCK_SIZE, block)
    return pos + 1


def _persist_range(j: JournalState, pos: int, n: int) -> None:
    """Persist n journal blocks from pos, in at most two pieces when they wrap."""
    while n > 0:
        p = pos % j.size
        run = min(n, j.size - p)
        j.region.persist((j.start + p) * fmt.BLOCK_SIZE, run * fmt.BLOCK_SIZE)
        pos += run
        n -= run

