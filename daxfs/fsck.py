"""fsck: check every invariant of a daxfs image without changing it; describe an image for `inspect`.

The image is checked as it will be once its journal is replayed: committed transactions past the
journal tail (recovery.scan) are laid over the home blocks as an overlay {home block -> newest image},
and every metadata block is read through it. Nothing is ever written, so fsck of a crashed image is
safe, and a crash-consistent image is clean.

Passes:
  1 superblocks  both copies valid and agreeing; the newest one's geometry consistent;
  2 journal      scan from the tail; a descriptor naming a home block outside the image, or a committed
                 transaction lying past where replay stops, is an error (a torn last one is normal);
  3 bitmaps      every block bitmap and inode bitmap block's header; reserved bits;
  4 inode table  every written table block's header; allocated inodes readable; free inodes' records
                 zero (numpy, a chunk of table blocks at a time);
  5 inodes       per allocated inode: record, type, extents, chains, directory entries, xattr blob,
                 symlink size; every block an inode owns is claimed in an owner-count array;
  6 namespace    link counts, parents, one name per directory, reachability, the orphan list;
  7 ownership    owner counts against the block bitmap: doubly-owned, leaked and unmarked blocks.

Only operational failures raise (DaxfsError: no file, not a daxfs image, no valid superblock);
everything else found is a Problem in the report.
"""

from __future__ import annotations

import stat
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daxfs import format as fmt
from daxfs.errors import CorruptImage
from daxfs.fs import _check_geometry, _unpack_xattrs
from daxfs.inode import Inode
from daxfs.pmem import PmemRegion
from daxfs.recovery import ScanResult, scan
from daxfs.superblock import read_superblock

BS = fmt.BLOCK_SIZE
BITS_PER_BLOCK = fmt.PAYLOAD * 8
ITABLE_CHUNK = 2048  # inode table blocks read at once: 8 MiB
MAX_RUNS = 20  # block runs listed per kind of bitmap disagreement; the rest are counted
KNOWN_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK}
DIR_DTYPE = stat.S_IFDIR >> 12
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
class JournalState:
    tail: int
    seq: int
    pending: int  # committed transactions past the tail, to be replayed
    pending_blocks: int  # block images they hold
    stop_reason: str


@dataclass
class Stats:
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
    stats: Stats = field(default_factory=Stats)
    journal: JournalState | None = None
    elapsed: float = 0.0

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
        return [str(p) for p in self.problems] + [summary]

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.path, "clean": self.clean, "problems": [asdict(p) for p in self.problems],
                "stats": asdict(self.stats), "journal": asdict(self.journal) if self.journal else None,
                "elapsed_seconds": round(self.elapsed, 3)}


class Image:
    """The image as replay would leave it: home blocks with the newest committed journal image of each
    block laid over them. Read-only."""

    def __init__(self, region: PmemRegion, overlay: dict[int, bytes]) -> None:
        self.region = region
        self.overlay = overlay

    def block(self, blkno: int) -> bytes:
        image = self.overlay.get(blkno)
        return image if image is not None else self.region.load(blkno * BS, BS)

    def blocks(self, start: int, n: int) -> np.ndarray:
        """Blocks [start, start+n) as an (n, BS) array."""
        arr = self.region.view(start * BS, n * BS).reshape(n, BS)
        patched = [b for b in self.overlay if start <= b < start + n]
        if patched:
            arr = arr.copy()  # the region is mapped read-only
            for b in patched:
                arr[b - start] = np.frombuffer(self.overlay[b], dtype=np.uint8)
        return arr


@dataclass(slots=True)
class Dirent:
    name: bytes
    ino: int
    dtype: int


@dataclass(slots=True)
class Claim:
    start: int
    n: int
    who: str


def check(path: str) -> FsckReport:
    """Check the image at `path` read-only; see the module doc."""
    t0 = time.monotonic()
    region = PmemRegion(path, writable=False)
    try:
        report = Checker(region, path).run()
    finally:
        region.close()
    report.elapsed = time.monotonic() - t0
    return report


class Checker:
    def __init__(self, region: PmemRegion, path: str) -> None:
        self.region = region
        self.sb = read_superblock(region)
        self.report = FsckReport(path)
        self.img = Image(region, {})
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
            _check_geometry(self.sb, self.region)
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
        result = scan(self.region, sb)
        overlay: dict[int, bytes] = {}
        for images in result.transactions:
            overlay.update(images)
        self.img = Image(self.region, overlay)
        self.report.journal = JournalState(sb.journal_tail, sb.journal_seq, len(result.transactions),
                                           sum(len(t) for t in result.transactions), result.stop_reason)
        # recovery.scan stops at the first block that breaks a transaction: normally a torn last one.
        # These two stops are not torn writes but damage that replay would silently step over.
        if "descriptor names home block" in result.stop_reason:
            self.problem("journal", result.stop_reason)
        self.lost_commits(result)

    def lost_commits(self, result: ScanResult) -> None:
        """A valid commit record at or past the sequence where the scan stopped: transactions are
        written one after the other, so that transaction was whole once and replay would lose it."""
        sb = self.sb
        arr = self.region.view(sb.journal_start * BS, sb.journal_blocks * BS).reshape(sb.journal_blocks, BS)
        magic = (arr[:, :4] == np.frombuffer(fmt.MAGIC, dtype=np.uint8)).all(axis=1)
        kind = arr[:, 4:6].copy().view("<u2")[:, 0]
        seq = arr[:, 40:48].copy().view("<u8")[:, 0]
        for i in np.flatnonzero(magic & (kind == fmt.K_JCOMMIT) & (seq >= result.next_seq)):
            blkno = sb.journal_start + int(i)
            try:
                fmt.read_header(arr[i].tobytes(), blkno, fmt.K_JCOMMIT)
            except CorruptImage:
                continue  # a damaged commit record commits nothing
            self.problem("journal", f"transaction {int(seq[i])} committed at block {blkno} lies past where "
                                    f"replay stops ({result.stop_reason}): its changes would be lost")

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
            self.records[lo + int(j)] = (Inode(*fmt.INODE.unpack_from(raw)), raw[fmt.INODE_FIXED:])

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

    # --- pass 5: each inode -----------------------------------------------------------------------
    def check_inode(self, ino: int, rec: Inode, inline: bytes) -> None:
        where = f"inode {ino}"
        if rec.ino != ino:
            self.problem(where, f"record says it is inode {rec.ino}")
            del self.records[ino]
            return
        kind = stat.S_IFMT(rec.mode)
        if kind not in KNOWN_TYPES:
            self.problem(where, f"unknown file type {kind:#o}")
            del self.records[ino]
            return
        nblocks = self.extents(ino, rec, inline)
        if kind == stat.S_IFDIR:
            if nblocks:
                self.problem(where, "directory has data blocks")
            self.dirs[ino] = self.dirents(ino, rec)
        elif rec.dirent_head:
            self.problem(where, f"{'symlink' if kind == stat.S_IFLNK else 'file'} has a directory chain")
        self.xattrs(ino, rec)
        if kind == stat.S_IFLNK and not 0 < rec.size < BS:
            self.problem(where, f"symlink of size {rec.size}")

    def extents(self, ino: int, rec: Inode, inline: bytes) -> int:
        """Check and claim the inode's extents; return the data blocks they map."""
        where = f"inode {ino}"
        chain = self.chain(ino, rec.extent_head, fmt.K_EXTENTS)
        slots = [inline[i * fmt.EXTENT_SIZE:(i + 1) * fmt.EXTENT_SIZE] for i in range(fmt.INLINE_EXTENTS)]
        slots += self.used_slots(chain, fmt.EXTENT_SIZE)
        good: list[tuple[int, int, int]] = []
        bad = 0
        for slot in slots:
            if slot[:4] == b"\0\0\0\0":
                continue
            state, ln, lblk, pblk, _ = fmt.EXTENT.unpack(slot)
            what = self.extent_problem(state, ln, lblk, pblk)
            if what:
                self.problem(where, f"extent at file block {lblk}: {what}")
                bad += 1
            else:
                good.append((lblk, ln, pblk))
        good.sort()
        for (alo, aln, _), (blo, _, _) in zip(good, good[1:]):
            if blo < alo + aln:
                self.problem(where, f"extent at file block {blo} overlaps the extent at file block {alo}")
        total = sum(ln for _, ln, _ in good)
        if not bad and total != rec.blocks:
            self.problem(where, f"blocks field says {rec.blocks}, its extents map {total}")
        for lblk, ln, pblk in good:
            self.claim(pblk, ln, f"inode {ino} data")
        self.report.stats.data_blocks += total
        return total

    def extent_problem(self, state: int, ln: int, lblk: int, pblk: int) -> str:
        if state not in (fmt.EXT_UNWRITTEN, fmt.EXT_WRITTEN):
            return f"unknown state {state}"
        if not 0 < ln <= fmt.MAX_EXTENT_LEN:
            return f"length {ln}"
        if lblk + ln > fmt.MAX_FILE_BLOCKS:
            return f"ends past the largest file ({ln} blocks)"
        if pblk < self.sb.data_start or pblk + ln > self.sb.total_blocks:
            return f"maps {_blocks(pblk, ln)}, outside the data area"
        return ""

    def chain(self, ino: int, head: int, kind: int) -> list[tuple[int, bytes, fmt.BlockHeader]]:
        """The chain's valid blocks from head, claimed; the walk stops at the first bad link."""
        name, out, seen, blk = fmt.KIND_NAMES[kind], [], set(), head
        while blk:
            if blk in seen:
                self.problem(f"inode {ino}", f"{name} loops back to block {blk}")
                break
            if not self.sb.data_start <= blk < self.sb.total_blocks:
                self.problem(f"inode {ino}", f"{name} points at block {blk}, outside the data area")
                break
            seen.add(blk)
            raw = self.img.block(blk)
            try:
                h = fmt.read_header(raw, blk, kind)
            except CorruptImage as e:
                self.problem(f"inode {ino}", f"{name}: {e}")
                break
            if h.owner != ino:
                self.problem(f"inode {ino}", f"{name} reaches block {blk}, which belongs to inode {h.owner}")
                break
            self.claim(blk, 1, f"inode {ino} {name}")
            out.append((blk, raw, h))
            blk = h.next
        return out

    def used_slots(self, chain: list[tuple[int, bytes, fmt.BlockHeader]], size: int) -> list[bytes]:
        """The chain's used slots; each block's header must count them."""
        out: list[bytes] = []
        for blk, raw, h in chain:
            slots = [raw[fmt.HEADER_SIZE + i * size:fmt.HEADER_SIZE + (i + 1) * size]
                     for i in range(fmt.slots_per_block(size))]
            used = [s for s in slots if s[:4] != b"\0\0\0\0"]
            if len(used) != h.used:
                self.problem(f"block {blk}", f"header counts {h.used} used slots, {len(used)} are in use")
            out += used
        return out

    def dirents(self, ino: int, rec: Inode) -> list[Dirent]:
        where = f"directory {ino}"
        out: list[Dirent] = []
        seen: set[bytes] = set()
        for slot in self.used_slots(self.chain(ino, rec.dirent_head, fmt.K_DIRENTS), fmt.DIRENT_SIZE):
            target, dtype, namelen, _, raw_name = fmt.DIRENT.unpack_from(slot)
            name = raw_name[:namelen]
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                self.problem(where, f"entry with invalid name {_show(name)}")
            elif name in seen:
                self.problem(where, f"two entries named {_show(name)}")
            elif target >= self.sb.inode_count:
                self.problem(where, f"entry {_show(name)} names inode {target}, past the last inode")
            else:
                seen.add(name)
                out.append(Dirent(name, target, dtype))
        return out

    def xattrs(self, ino: int, rec: Inode) -> None:
        parts = []
        for blk, raw, h in self.chain(ino, rec.xattr_head, fmt.K_XATTR):
            if h.used > fmt.PAYLOAD:
                self.problem(f"block {blk}", f"xattr block says it holds {h.used} bytes")
                return
            parts.append(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + h.used])
        blob = b"".join(parts)
        if len(blob) > fmt.MAX_XATTR_BYTES:
            self.problem(f"inode {ino}", f"{len(blob)} bytes of extended attributes, more than the limit")
        try:
            _unpack_xattrs(blob, ino)
        except CorruptImage as e:
            self.problem(f"inode {ino}", str(e).removeprefix(f"inode {ino}: "))

    def claim(self, start: int, n: int, who: str) -> None:
        seg = self.owners[start:start + n]
        np.add(seg, 1, out=seg, where=seg < 255)
        self.claims.append(Claim(start, n, who))

    # --- pass 6: namespace ------------------------------------------------------------------------
    def namespace(self) -> None:
        names: dict[int, list[int]] = defaultdict(list)  # inode -> directories naming it
        orphans: set[int] = set()
        for d, entries in self.dirs.items():
            for e in entries:
                if not self.entry_ok(d, e):
                    continue
                if d == fmt.ORPHAN_INO:
                    orphans.add(e.ino)
                else:
                    names[e.ino].append(d)
        for ino, (rec, _) in self.records.items():
            self.links(ino, rec, names.get(ino, []), ino in orphans)
        self.reachability(orphans)

    def entry_ok(self, d: int, e: Dirent) -> bool:
        """Does the entry name a readable inode of its type? (Unreadable ones are reported already.)"""
        where, name = f"directory {d}", _show(e.name)
        if not self.ialloc[e.ino]:
            self.problem(where, f"entry {name} names free inode {e.ino}")
            return False
        if e.ino in (fmt.ROOT_INO, fmt.ORPHAN_INO):
            self.problem(where, f"entry {name} names reserved directory {e.ino}")
            return False
        if e.ino not in self.records:
            return False
        kind = stat.S_IFMT(self.records[e.ino][0].mode)
        if e.dtype != kind >> 12:
            self.problem(where, f"entry {name} has type {e.dtype}, inode {e.ino} is of type {kind >> 12}")
        if d == fmt.ORPHAN_INO and e.name != b"%d" % e.ino:
            self.problem(where, f"orphan entry {name} names inode {e.ino}")
        return True

    def subdirs(self, d: int) -> int:
        return sum(1 for e in self.dirs.get(d, []) if e.ino in self.records and self.is_dir(e.ino))

    def is_dir(self, ino: int) -> bool:
        return stat.S_ISDIR(self.records[ino][0].mode)

    def links(self, ino: int, rec: Inode, naming: list[int], orphan: bool) -> None:
        where = f"inode {ino}"
        is_dir = stat.S_ISDIR(rec.mode)
        if ino in (fmt.ROOT_INO, fmt.ORPHAN_INO):
            want = 2 + (self.subdirs(ino) if ino == fmt.ROOT_INO else 0)  # orphaned dirs are not links
            if rec.parent != ino:
                self.problem(where, f"reserved directory's parent is {rec.parent}, not itself")
        elif orphan:
            want = 0
            if naming:
                self.problem(where, f"on the orphan list, yet named in directories {naming}")
            if is_dir and self.dirs.get(ino):
                self.problem(where, "removed directory on the orphan list still has entries")
        elif is_dir:
            want = 2 + self.subdirs(ino)
            if len(naming) != 1:
                self.problem(where, f"directory named {len(naming)} times (in {naming}), not once")
            elif rec.parent != naming[0]:
                self.problem(where, f"parent field says {rec.parent}, but directory {naming[0]} names it")
        elif naming:
            want = len(naming)
        else:
            self.problem(where, "no directory entry names it and it is not on the orphan list")
            return
        if rec.nlink != want:
            self.problem(where, f"link count {rec.nlink}, expected {want}")

    def reachability(self, orphans: set[int]) -> None:
        """Every live directory hangs off the root: a cycle or a lost subtree is not reached."""
        if fmt.ROOT_INO not in self.dirs:
            return  # no root to start from; that is reported already
        reached, todo = {fmt.ROOT_INO}, [fmt.ROOT_INO]
        while todo:
            for e in self.dirs.get(todo.pop(), []):
                if e.ino in self.dirs and e.ino not in reached and e.ino not in (fmt.ROOT_INO, fmt.ORPHAN_INO):
                    reached.add(e.ino)
                    todo.append(e.ino)
        for d in sorted(set(self.dirs) - reached - orphans - {fmt.ORPHAN_INO}):
            self.problem(f"inode {d}", "directory is not reachable from the root")

    # --- pass 7: ownership ------------------------------------------------------------------------
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
                self.problem(_blocks(lo, hi - lo), f"owned by both {a.who} and {b.who}")

    def report_runs(self, mask: np.ndarray, what: str) -> None:
        runs = _runs(mask)
        for lo, n in runs[:MAX_RUNS]:
            self.problem(_blocks(lo, n), what)
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


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends)]


def _blocks(start: int, n: int) -> str:
    return f"block {start}" if n == 1 else f"blocks {start}-{start + n - 1}"


def _show(name: bytes) -> str:
    return repr(name.decode(errors="backslashreplace"))


# --- inspect ----------------------------------------------------------------------------------------
def describe(path: str) -> dict[str, Any]:
    """What `daxfs inspect` prints: geometry, usage, state and journal, as replay would leave it.
    It describes, it does not verify: bitmap blocks are counted whatever their headers say."""
    region = PmemRegion(path, writable=False)
    try:
        sb = read_superblock(region)
        _check_geometry(sb, region)
        result = scan(region, sb)
        overlay: dict[int, bytes] = {}
        for images in result.transactions:
            overlay.update(images)
        img = Image(region, overlay)
        blocks_used = _count_bits(img, sb.bitmap_start, sb.bitmap_blocks, sb.total_blocks)
        inodes_used = _count_bits(img, sb.ibitmap_start, sb.ibitmap_blocks, sb.inode_count) - 1  # inode 0
        size = region.size
    finally:
        region.close()
    return {
        "image": path,
        "uuid": sb.uuid.hex(),
        "state": "clean" if sb.state == fmt.STATE_CLEAN else "dirty",
        "created": _when(sb.mkfs_time_ns),
        "last mounted": _when(sb.last_mount_ns) if sb.last_mount_ns else "never",
        "mount count": sb.mount_count,
        "superblock generation": sb.generation,
        "size bytes": size,
        "block size": sb.block_size,
        "total blocks": sb.total_blocks,
        "journal start": sb.journal_start,
        "journal blocks": sb.journal_blocks,
        "inode bitmap start": sb.ibitmap_start,
        "inode bitmap blocks": sb.ibitmap_blocks,
        "block bitmap start": sb.bitmap_start,
        "block bitmap blocks": sb.bitmap_blocks,
        "inode table start": sb.itable_start,
        "inode table blocks": sb.itable_blocks,
        "data start": sb.data_start,
        "blocks used": blocks_used,
        "blocks free": sb.total_blocks - blocks_used,
        "inodes": sb.inode_count,
        "inodes used": inodes_used,
        "inodes free": sb.inode_count - 1 - inodes_used,
        "journal tail": sb.journal_tail,
        "journal seq": sb.journal_seq,
        "journal transactions to replay": len(result.transactions),
        "journal blocks to replay": sum(len(t) for t in result.transactions),
        "journal scan stopped": result.stop_reason,
    }


def _count_bits(img: Image, start: int, nblocks: int, nbits: int) -> int:
    """Set bits among the first nbits of a bitmap (bit i is bit i % 8 of byte i // 8)."""
    payload = img.blocks(start, nblocks)[:, fmt.HEADER_SIZE:].reshape(-1)
    whole, rest = divmod(nbits, 8)
    tail = int(payload[whole]) & ((1 << rest) - 1) if rest else 0
    return int(np.bitwise_count(payload[:whole]).sum(dtype=np.int64)) + tail.bit_count()


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ns / 1e9))
