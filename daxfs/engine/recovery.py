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

Two rules keep a damaged journal from doing harm (as jbd2 keeps them):
  * Sequence numbers only grow. After replay, the next transaction's sequence is beyond every sequence
    present anywhere in the journal area (seq_ceiling), so no stale block of an earlier lap, or of
    transactions cut off by damage, can ever be chained into a later replay.
  * Damage does not pass silently. When the scan stops short of committed transactions that lie
    beyond it (lost_commits), replay refuses (JournalDamaged) unless asked to discard them:
    `daxfs fsck --repair` does, and reports exactly what was lost.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

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
    seqs: list[int] = field(default_factory=list)  # the committed transactions' sequence numbers

    @property
    def stop_reason(self) -> str:
        return f"{self.detail}: {self.stop.value}" if self.detail else self.stop.value


def scan(region: PmemRegion, sb: fmt.Superblock) -> ScanResult:
    start, size = sb.journal_start, sb.journal_blocks
    pos, seq = sb.journal_tail, sb.journal_seq
    txns: list[dict[int, bytes]] = []
    seqs: list[int] = []
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
                seqs.append(seq)
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
            return ScanResult(txns, pos % size, seq, *stop, seqs)


class JournalDamaged(CorruptImage):
    """Replay stops at damage while committed transactions lie beyond it."""

    def __init__(self, path: str, result: ScanResult, lost: list[tuple[int, int]]) -> None:
        self.result, self.lost = result, lost
        at = result.detail or "the tail"
        super().__init__(f"{path}: journal damaged: {len(lost)} committed transaction"
                         f"{'s' * (len(lost) != 1)} after {at} would be lost ({result.stop.value}); "
                         f"run daxfs fsck --repair to keep what replays and discard them")


def journal_blocks(region: PmemRegion, sb: fmt.Superblock) -> np.ndarray:
    """The journal area as a (journal_blocks, BLOCK_SIZE) array (a view: read only)."""
    bs = fmt.BLOCK_SIZE
    return region.view(sb.journal_start * bs, sb.journal_blocks * bs).reshape(sb.journal_blocks, bs)


def _verified(region: PmemRegion, sb: fmt.Superblock, kinds: tuple[int, ...]) -> list[tuple[int, int]]:
    """(seq, block number) of every journal block of one of `kinds` whose header verifies."""
    arr = journal_blocks(region, sb)
    magic = (arr[:, :4] == np.frombuffer(fmt.MAGIC, dtype=np.uint8)).all(axis=1)
    kind = arr[:, fmt.KIND_OFFSET:fmt.KIND_OFFSET + 2].copy().view("<u2")[:, 0]
    seq = arr[:, fmt.SEQ_OFFSET:fmt.SEQ_OFFSET + 8].copy().view("<u8")[:, 0]
    out = []
    for i in np.flatnonzero(magic & np.isin(kind, kinds)):
        blkno = sb.journal_start + int(i)
        try:
            fmt.read_header(arr[i].tobytes(), blkno)
        except CorruptImage:
            continue  # a damaged block commits nothing and numbers nothing
        if int(seq[i]) >= fmt.MAX_SEQ:
            continue  # no writer numbers so high: damage that only looks like a header
        out.append((int(seq[i]), blkno))
    return out


def lost_commits(region: PmemRegion, sb: fmt.Superblock, result: ScanResult) -> list[tuple[int, int]]:
    """(seq, block) of valid commit records at or past the sequence where the scan stopped: sequences
    only grow, so each was a whole transaction written after the last one replay reaches."""
    return sorted((seq, blk) for seq, blk in _verified(region, sb, (fmt.K_JCOMMIT,)) if seq >= result.next_seq)


def seq_ceiling(region: PmemRegion, sb: fmt.Superblock) -> int:
    """One past the highest sequence number of any valid descriptor or commit record in the journal."""
    return max((seq for seq, _ in _verified(region, sb, (fmt.K_JDESC, fmt.K_JCOMMIT))), default=0) + 1


def replay(region: PmemRegion, sb: fmt.Superblock, discard_lost: bool = False) -> ScanResult:
    """Replay what the journal holds past its tail, then move the tail past it with the next sequence
    beyond every one in the journal. JournalDamaged if committed transactions lie past where the scan
    stops, unless discard_lost: then they are dropped (the caller reports them from the result)."""
    result = scan(region, sb)
    lost = lost_commits(region, sb, result)
    if lost and not discard_lost:
        raise JournalDamaged(region.path, result, lost)
    if result.transactions:
        write_home(region, newest_images(result.transactions))
        crashpoint.hit("replay.applied")
    next_seq = max(result.next_seq, seq_ceiling(region, sb))
    if result.transactions or next_seq != sb.journal_seq:
        sb.journal_tail, sb.journal_seq = result.end, next_seq
        write_superblock(region, sb)
    return result


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
