"""fsck: check every invariant of a daxfs image without changing it.

The image is checked as it will be once its journal is replayed: committed transactions past the
journal tail are laid over the home blocks (recovery.ReplayedImage), and every metadata block is read
through that. Nothing is ever written, so fsck of a crashed image is
safe, and a crash-consistent image is clean.

Passes:
  1 superblocks  both copies valid and agreeing; the newest one's geometry consistent;
  2 journal      scan from the tail; a descriptor naming a home block outside the image, or a committed
                 transaction lying past where replay stops, is an error (a torn last one is normal);
  3 bitmaps      every block bitmap and inode bitmap block's header; reserved bits;
  4 inode table  every written table block's header; allocated inodes readable; free inodes' records
                 zero (numpy, a chunk of table blocks at a time);
  5 inodes       per allocated inode (fsck_inodes.py);
  6 namespace    link counts, parents, reachability, the orphan list (fsck_inodes.py);
  7 ownership    owner counts against the block bitmap: doubly-owned, leaked and unmarked blocks.

Only operational failures raise (DaxfsError: no file, not a daxfs image, no valid superblock);
everything else found is a Problem in the report.
"""

from __future__ import annotations

import stat
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage
from daxfs.engine.fsck_inodes import BS, Claim, Dirent, InodeChecks
from daxfs.engine.inode import Inode
from daxfs.engine.pmem import PmemRegion, image_in_use
from daxfs.engine.recovery import ReplayedImage, ScanResult, Stop, lost_commits
from daxfs.engine.runs import true_runs
from daxfs.engine.superblock import check_geometry, read_superblock

BITS_PER_BLOCK = fmt.PAYLOAD * 8
ITABLE_CHUNK = 2048  # inode table blocks read at once: 8 MiB
MAX_RUNS = 20  # block runs listed per kind of bitmap disagreement; the rest are counted
# Superblock fields that never change after mkfs: both copies must agree on them.
FIXED_FIELDS = ("version", "block_size", "total_blocks", "journal_start", "journal_blocks", "ibitmap_start",
                "ibitmap_blocks", "bitmap_start", "bitmap_blocks", "itable_start", "itable_blocks",
                "data_start", "inode_count", "mkfs_time_ns", "uuid")


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class JournalReport:
    tail: int
    seq: int
    pending: int  # committed transactions past the tail, to be replayed
    pending_blocks: int  # block images they hold
    stop_reason: str


@dataclass
class FsckCounts:
    inodes_used: int = 0
    files: int = 0
    directories: int = 0  # the hidden orphan directory not counted
    symlinks: int = 0
    special: int = 0  # fifos, sockets, device nodes
    blocks_total: int = 0
    blocks_used: int = 0  # per the block bitmap
    data_blocks: int = 0  # owned by file extents
    metadata_blocks: int = 0  # fixed metadata areas plus chain blocks


@dataclass
class FsckReport:
    path: str
    problems: list[Problem] = field(default_factory=list)
    stats: FsckCounts = field(default_factory=FsckCounts)
    journal: JournalReport | None = None
    elapsed: float = 0.0
    live: bool = False  # a daemon held the image: only what was on pmem then was checked

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        s = self.stats
        status = "clean" if self.clean else f"{len(self.problems)} error{'s' * (len(self.problems) != 1)}"
        summary = (f"{self.path}: {status}, {s.files} files, {s.directories} directories, "
                   f"{s.blocks_used}/{s.blocks_total} blocks")
        if self.journal and self.journal.pending:
            summary += f", {self.journal.pending} transactions to replay"
        lines = [str(p) for p in self.problems] + [summary]
        if self.live:
            lines.append(f"{self.path} is mounted: this is the state on pmem now; what the daemon has not "
                         "committed is not seen, and a commit in flight can show as errors (unmount for a "
                         "full check)")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.path, "clean": self.clean, "problems": [asdict(p) for p in self.problems],
                "stats": asdict(self.stats), "journal": asdict(self.journal) if self.journal else None,
                "elapsed_seconds": round(self.elapsed, 3), "live": self.live}



def check(path: str) -> FsckReport:
    """Check the image at `path` read-only; see the module doc."""
    t0 = time.monotonic()
    region = PmemRegion(path, writable=False)
    try:
        report = Checker(region, path).run()
        report.live = image_in_use(path)
    finally:
        region.close()
    report.elapsed = time.monotonic() - t0
    return report


class Checker(InodeChecks):
    def __init__(self, region: PmemRegion, path: str) -> None:
        self.region = region
        self.sb = read_superblock(region)
        self.report = FsckReport(path)
        self.img = ReplayedImage(region, {})
        self.owners = np.zeros(self.sb.total_blocks, dtype=np.uint8)  # claims per block, saturating
        self.claims: list[Claim] = []
        self.records: dict[int, tuple[Inode, bytes]] = {}  # readable allocated inodes: record, inline slots
        self.dirs: dict[int, list[Dirent]] = {}
        self.ialloc = np.zeros(0, dtype=bool)
        self.ialloc_known = np.zeros(0, dtype=bool)
        self.bits = np.zeros(0, dtype=bool)
        self.bits_known = np.zeros(0, dtype=bool)

    def problem(self, where: str, what: str) -> None:
        self.report.problems.append(Problem(where, what))

    def run(self) -> FsckReport:
        if not self.superblocks():
            return self.report  # the areas cannot be trusted: nothing else is safe to read
        self.journal()
        self.bitmaps()
        self.inode_table()
        for ino, (rec, inline) in list(self.records.items()):
            self.check_inode(ino, rec, inline)
        self.namespace()
        self.ownership()
        self.count()
        return self.report

    # --- pass 1: superblocks ----------------------------------------------------------------------
    def superblocks(self) -> bool:
        """Report damaged or disagreeing copies; return whether the geometry is usable."""
        copies = []
        for blkno in (0, 1):
            try:
                copies.append(fmt.Superblock.unpack(self.region.load(blkno * BS, BS), blkno))
            except CorruptImage as e:
                self.problem("superblock", f"copy in block {blkno} is damaged: {e}")
        if len(copies) == 2:
            differ = [f for f in FIXED_FIELDS if getattr(copies[0], f) != getattr(copies[1], f)]
            if differ:
                self.problem("superblock", f"the two copies disagree on {', '.join(differ)}")
        try:
            check_geometry(self.sb, self.region)
        except CorruptImage as e:
            self.problem("superblock", str(e))
            return False
        if self.sb.inode_count <= fmt.ORPHAN_INO:
            self.problem("superblock", f"{self.sb.inode_count} inodes leave no room for the reserved ones")
            return False
        return True

    # --- pass 2: journal --------------------------------------------------------------------------
    def journal(self) -> None:
        sb = self.sb
        self.img, result = ReplayedImage.of(self.region, sb)
        self.report.journal = JournalReport(sb.journal_tail, sb.journal_seq, len(result.transactions),
                                           sum(len(t) for t in result.transactions), result.stop_reason)
        # recovery.scan stops at the first block that breaks a transaction: normally a torn last one.
        # A descriptor naming a home outside the image is no torn write but damage replay steps over.
        if result.stop is Stop.BAD_HOME:
            self.problem("journal", result.stop_reason)
        self.lost_commits(result)

    def lost_commits(self, result: ScanResult) -> None:
        for seq, blkno in lost_commits(self.region, self.sb, result):
            self.problem("journal", f"transaction {seq} committed at block {blkno} lies past where replay stops "
                                    f"({result.stop_reason}): its changes would be lost (daxfs fsck --repair "
                                    "keeps what replays and discards the rest)")

    # --- pass 3: bitmaps --------------------------------------------------------------------------
    def bitmaps(self) -> None:
        sb = self.sb
        self.bits, self.bits_known = self.read_bitmap(sb.bitmap_start, sb.bitmap_blocks, sb.total_blocks,
                                                      fmt.K_BITMAP)
        ibits, iknown = self.read_bitmap(sb.ibitmap_start, sb.ibitmap_blocks, sb.inode_count, fmt.K_IBITMAP)
        for ino in (0, fmt.ROOT_INO, fmt.ORPHAN_INO):
            if iknown[ino] and not ibits[ino]:
                self.problem("inode bitmap", f"reserved inode {ino} is marked free")
        # One entry per record slot of the table; slots past inode_count are free. Where the inode
        # bitmap is unreadable, inode_table() takes a non-zero record as allocated.
        slots = sb.itable_blocks * fmt.INODES_PER_BLOCK
        self.ialloc, self.ialloc_known = np.zeros(slots, dtype=bool), np.ones(slots, dtype=bool)
        self.ialloc[:sb.inode_count], self.ialloc_known[:sb.inode_count] = ibits & iknown, iknown
        self.ialloc[0], self.ialloc_known[0] = False, True  # inode 0 is reserved and never has a record

    def read_bitmap(self, start: int, nblocks: int, nbits: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """(bits, known): bit values, and which bits come from a valid block."""
        bits = np.zeros(nblocks * BITS_PER_BLOCK, dtype=bool)
        known = np.ones(nblocks * BITS_PER_BLOCK, dtype=bool)
        for i in range(nblocks):
            lo, hi = i * BITS_PER_BLOCK, (i + 1) * BITS_PER_BLOCK
            raw = self.img.block(start + i)
            try:
                fmt.read_header(raw, start + i, kind)
            except CorruptImage as e:
                self.problem(fmt.KIND_NAMES[kind], str(e))
                known[lo:hi] = False
                continue
            payload = np.frombuffer(raw, dtype=np.uint8, count=fmt.PAYLOAD, offset=fmt.HEADER_SIZE)
            bits[lo:hi] = np.unpackbits(payload, bitorder="little").astype(bool)
        if bits[nbits:].any():
            self.problem(fmt.KIND_NAMES[kind], f"bits past the last of {nbits} are set")
        return bits[:nbits], known[:nbits]

    # --- pass 4: inode table ----------------------------------------------------------------------
    def inode_table(self) -> None:
        for c0 in range(0, self.sb.itable_blocks, ITABLE_CHUNK):
            self.table_chunk(c0, min(ITABLE_CHUNK, self.sb.itable_blocks - c0))
        self.report.stats.inodes_used = int(np.count_nonzero(self.ialloc))
        for ino in (fmt.ROOT_INO, fmt.ORPHAN_INO):
            rec = self.records.get(ino)
            if rec is not None and not stat.S_ISDIR(rec[0].mode):
                self.problem(f"inode {ino}", "reserved inode is not a directory")

    def table_chunk(self, c0: int, n: int) -> None:
        per = fmt.INODES_PER_BLOCK
        first_blk, lo, hi = self.sb.itable_start + c0, c0 * per, (c0 + n) * per
        arr = self.img.blocks(first_blk, n)
        written, valid = self.table_headers(arr, first_blk)
        recs = arr[:, fmt.HEADER_SIZE:fmt.HEADER_SIZE + per * fmt.INODE_SIZE].reshape(n * per, fmt.INODE_SIZE)
        nonzero = recs.any(axis=1)
        alloc = self.ialloc[lo:hi] | (~self.ialloc_known[lo:hi] & nonzero)
        self.ialloc[lo:hi] = alloc
        blk_written, blk_valid = np.repeat(written, per), np.repeat(valid, per)
        for j in np.flatnonzero(~alloc & nonzero & blk_valid):
            self.problem(f"inode {lo + int(j)}", "free, but its record is not zero")
        for j in np.flatnonzero(alloc & ~blk_written):
            self.problem(f"inode {lo + int(j)}", f"allocated, but its table block {first_blk + int(j) // per} "
                                                 "was never written")
        for j in np.flatnonzero(alloc & blk_valid):
            raw = recs[j].tobytes()
            self.records[lo + int(j)] = (Inode.unpack(raw, 0, self.sb.version), raw[fmt.INODE_FIXED:])

    def table_headers(self, arr: np.ndarray, first_blk: int) -> tuple[np.ndarray, np.ndarray]:
        """(written, valid) per table block. mkfs leaves table blocks zero until their first inode."""
        written = arr.any(axis=1)
        valid = np.zeros(len(arr), dtype=bool)
        for i in np.flatnonzero(written):
            try:
                fmt.read_header(arr[i].tobytes(), first_blk + int(i), fmt.K_INODES)
                valid[i] = True
            except CorruptImage as e:
                self.problem("inode table", str(e))
        return written, valid

    def ownership(self) -> None:
        self.claim(0, self.sb.data_start, "metadata areas")
        self.doubly_owned()
        owned = self.owners > 0
        leaked = self.bits & ~owned & self.bits_known
        unmarked = owned & ~self.bits & self.bits_known
        self.report_runs(leaked, "marked in use, but nothing owns them")
        self.report_runs(unmarked, "in use, but marked free in the block bitmap")

    def doubly_owned(self) -> None:
        if not (self.owners > 1).any():
            return
        hit = sorted((c for c in self.claims if (self.owners[c.start:c.start + c.n] > 1).any()),
                     key=lambda c: c.start)
        for i, a in enumerate(hit):
            for b in hit[i + 1:]:
                if b.start >= a.start + a.n:
                    break
                lo, hi = b.start, min(a.start + a.n, b.start + b.n)
                self.problem(fmt.describe_blocks(lo, hi - lo), f"owned by both {a.who} and {b.who}")

    def report_runs(self, mask: np.ndarray, what: str) -> None:
        runs = true_runs(mask)
        for lo, n in runs[:MAX_RUNS]:
            self.problem(fmt.describe_blocks(lo, n), what)
        if len(runs) > MAX_RUNS:
            rest = runs[MAX_RUNS:]
            self.problem(f"{len(rest)} more runs ({sum(n for _, n in rest)} blocks)", what)

    # --- statistics -------------------------------------------------------------------------------
    def count(self) -> None:
        s = self.report.stats
        for ino, (rec, _) in self.records.items():
            kind = stat.S_IFMT(rec.mode)
            if kind == stat.S_IFREG:
                s.files += 1
            elif kind == stat.S_IFDIR:
                s.directories += ino != fmt.ORPHAN_INO
            elif kind == stat.S_IFLNK:
                s.symlinks += 1
            else:
                s.special += 1
        s.blocks_total = self.sb.total_blocks
        s.blocks_used = int(np.count_nonzero(self.bits))
        s.metadata_blocks = sum(c.n for c in self.claims) - s.data_blocks


