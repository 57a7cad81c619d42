"""Recovery: replay committed transactions at open.

Passes (as jbd2's recovery):
  scan    from the superblock's journal tail, expecting sequence journal_seq, read transaction after
          transaction: descriptors with the expected seq, their images, then a commit record with the
          same seq whose CRC-32C matches every descriptor and image read (commit.py I3). The first
          block that breaks this ends the scan (Stop says why); what follows it was never committed
          (a torn commit, or an older lap of the circular journal, whose seqs are lower).
  replay  store every committed image at its home location in commit order, persist.
  advance move the tail past the replayed transactions (superblock, persisted).

Replay is idempotent: a crash in the middle of it replays the same transactions again next time.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

import crc32c

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine.checkpoint import write_home
from daxfs.engine.errors import CorruptImage
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.superblock import write_superblock
from daxfs.engine.transaction import newest_images


class Stop(enum.Enum):
    """Why the scan ended. END and TORN are how a journal normally ends; the others are damage."""
    END = "no transaction of the expected sequence follows"
    TORN = "the last transaction's commit record does not match its blocks (torn)"
    WRAPPED = "the scan went once round the journal"
    BAD_BLOCK = "a journal block's header is damaged"
    BAD_DESCRIPTOR = "a descriptor claims more entries than a block holds"
    BAD_HOME = "a descriptor names home block outside the image"


@dataclass
class ScanResult:
    transactions: list[dict[int, bytes]]  # committed transactions, in order: home -> image
    end: int  # journal-relative position after the last committed transaction
    next_seq: int
    stop: Stop
    detail: str  # where the scan stopped, for people

    @property
    def stop_reason(self) -> str:
        return f"{self.detail}: {self.stop.value}" if self.detail else self.stop.value


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
        stop: tuple[Stop, str] | None = None
        while stop is None:
            if scanned + (p - pos) >= size:
                stop = Stop.WRAPPED, ""
                break
            blkno, raw = block(p)
            try:
                h = fmt.read_header(raw, blkno)
            except CorruptImage as e:
                # An unwritten or overwritten block after the last transaction looks like this too.
                stop = (Stop.BAD_BLOCK if raw[:4] == fmt.MAGIC else Stop.END), str(e)
                break
            if h.seq != seq or h.kind not in (fmt.K_JDESC, fmt.K_JCOMMIT):
                stop = Stop.END, f"block {blkno}"
                break
            p += 1
            if h.kind == fmt.K_JCOMMIT:
                n, want_crc, _, _ = fmt.COMMIT.unpack_from(raw, fmt.HEADER_SIZE)
                if n != len(images) or want_crc != crc:
                    stop = Stop.TORN, f"transaction {seq}"
                    break
                txns.append(images)
                scanned += p - pos
                pos, seq = p, seq + 1
                break
            if h.used > fmt.DESC_ENTRIES:
                stop = Stop.BAD_DESCRIPTOR, f"block {blkno}"
                break
            crc = crc32c.crc32c(raw, crc)
            for home in struct.unpack_from(f"<{h.used}Q", raw, fmt.HEADER_SIZE):
                if scanned + (p - pos) >= size:
                    break
                _, image = block(p)
                crc = crc32c.crc32c(image, crc)
                if not (sb.journal_start + sb.journal_blocks <= home < sb.total_blocks):
                    stop = Stop.BAD_HOME, f"block {blkno}: home block {home}"
                    break
                images[home] = image
                p += 1
        if stop is not None:
            return ScanResult(txns, pos % size, seq, *stop)


def replay(region: PmemRegion, sb: fmt.Superblock) -> int:
    """Replay what the journal holds past its tail; return how many transactions were replayed."""
    result = scan(region, sb)
    if not result.transactions:
        return 0
    write_home(region, newest_images(result.transactions))
    crashpoint.hit("replay.applied")
    sb.journal_tail, sb.journal_seq = result.end, result.next_seq
    write_superblock(region, sb)
    return len(result.transactions)


class ReplayedImage:
    """The image as replay would leave it, without writing it: home blocks with the newest committed
    journal image of each block laid over them (fsck and inspect read images through it). Read-only."""

    def __init__(self, region: PmemRegion, overlay: dict[int, bytes]) -> None:
        self.region = region
        self.overlay = overlay

    @classmethod
    def of(cls, region: PmemRegion, sb: fmt.Superblock) -> tuple["ReplayedImage", ScanResult]:
        result = scan(region, sb)
        return cls(region, newest_images(result.transactions)), result

    def block(self, blkno: int) -> bytes:
        image = self.overlay.get(blkno)
        return image if image is not None else self.region.load(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)

    def blocks(self, start: int, n: int) -> np.ndarray:
        """Blocks [start, start+n) as an (n, BLOCK_SIZE) array."""
        arr = self.region.view(start * fmt.BLOCK_SIZE, n * fmt.BLOCK_SIZE).reshape(n, fmt.BLOCK_SIZE)
        patched = [b for b in self.overlay if start <= b < start + n]
        if patched:
            arr = arr.copy()  # the region is mapped read-only
            for b in patched:
                arr[b - start] = np.frombuffer(self.overlay[b], dtype=np.uint8)
        return arr
