"""Recovery: replay committed transactions at open.

Passes (as jbd2's recovery):
  scan    from the superblock's journal tail, expecting sequence journal_seq, read transaction after
          transaction: descriptors with the expected seq, their images, then a commit record with the
          same seq whose CRC-32C matches every descriptor and image read (commit.py I3). The first
          block that breaks this ends the scan; what follows it was never committed (a torn commit, or
          an older lap of the circular journal, whose seqs are lower).
  replay  store every committed image at its home location in commit order, persist.
  advance move the tail past the replayed transactions (superblock, persisted).

Replay is idempotent: a crash in the middle of it replays the same transactions again next time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

from daxfs import crashpoint
from daxfs import format as fmt
from daxfs.checkpoint import runs
from daxfs.errors import CorruptImage
from daxfs.pmem import PmemRegion
from daxfs.superblock import write_superblock


@dataclass
class ScanResult:
    transactions: list[dict[int, bytes]]  # committed transactions, in order: home -> image
    end: int  # journal-relative position after the last committed transaction
    next_seq: int
    stop_reason: str


def scan(region: PmemRegion, sb: fmt.Superblock) -> ScanResult:
    start, size = sb.journal_start, sb.journal_blocks
    pos, seq = sb.journal_tail, sb.journal_seq
    txns: list[dict[int, bytes]] = []
    scanned = 0

    def block(p: int) -> tuple[int, bytes]:
        blkno = start + p % size
        return blkno, region.load(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)

    while True:
        images: dict[int, bytes] = {}
        p = pos
        crc = 0
        reason = ""
        while True:
            if scanned + (p - pos) >= size:
                reason = "journal wrapped"
                break
            blkno, raw = block(p)
            try:
                h = fmt.read_header(raw, blkno)
            except CorruptImage as e:
                reason = str(e)
                break
            if h.seq != seq or h.kind not in (fmt.K_JDESC, fmt.K_JCOMMIT):
                reason = f"block {blkno}: no transaction {seq}"
                break
            p += 1
            if h.kind == fmt.K_JCOMMIT:
                n, want_crc, _, _ = fmt.COMMIT.unpack_from(raw, fmt.HEADER_SIZE)
                if n != len(images) or want_crc != crc:
                    reason = f"transaction {seq}: commit record does not match its blocks (torn)"
                    break
                txns.append(images)
                scanned += p - pos
                pos, seq = p, seq + 1
                images = {}
                break
            if h.used > fmt.DESC_ENTRIES:
                reason = f"block {blkno}: descriptor claims {h.used} entries"
                break
            crc = crc32c.crc32c(raw, crc)
            homes = struct.unpack_from(f"<{h.used}Q", raw, fmt.HEADER_SIZE)
            for home in homes:
                if scanned + (p - pos) >= size:
                    break
                iblk, image = block(p)
                crc = crc32c.crc32c(image, crc)
                if not (sb.journal_start + sb.journal_blocks <= home < sb.total_blocks):
                    reason = f"block {blkno}: descriptor names home block {home} outside the image"
                    break
                images[home] = image
                p += 1
            if reason:
                break
        if reason:
            return ScanResult(txns, pos % size, seq, reason)


def replay(region: PmemRegion, sb: fmt.Superblock) -> int:
    """Replay what the journal holds past its tail; return how many transactions were replayed."""
    result = scan(region, sb)
    if not result.transactions:
        return 0
    newest: dict[int, bytes] = {}
    for images in result.transactions:
        newest.update(images)
    for home, image in newest.items():
        region.store(home * fmt.BLOCK_SIZE, image)
    for first, n in runs(sorted(newest)):
        region.persist(first * fmt.BLOCK_SIZE, n * fmt.BLOCK_SIZE)
    region.fence()
    crashpoint.hit("replay.applied")
    sb.journal_tail, sb.journal_seq = result.end, result.next_seq
    write_superblock(region, sb)
    return len(result.transactions)
