"""Inodes: the fixed-size records of the inode table, cached in memory.

An Inode object is the in-memory truth of one record; save() writes it into its table block through
the journal. Table blocks are initialised lazily (mkfs leaves them as zeros, a large sparse image
would otherwise need its whole table written): a zero block holds only free inodes.

The per-inode structures built on top (extent map, directory, xattrs) are attached by the layers
above and loaded on first use, so opening a file system reads no inode at all.
"""

from __future__ import annotations

import errno
import operator
import stat
from dataclasses import dataclass, field, fields
from typing import Any

from daxfs.engine import format as fmt
from daxfs.engine.alloc import Allocator
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.journal import Journal
from daxfs.engine.unstable import UnstableMap


@dataclass(eq=False)
class Inode:
    ino: int
    generation: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 0
    flags: int = 0
    pad: int = 0
    size: int = 0
    blocks: int = 0  # allocated data blocks
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    extent_head: int = 0
    dirent_head: int = 0
    xattr_head: int = 0
    parent: int = 0  # directories: the inode of ".."
    # --- in memory only ---
    refs: int = 0  # kernel lookups (and open handles through them): an unlinked inode lives while > 0
    extents: Any = None  # extent.ExtentMap, loaded on first use
    directory: Any = None  # directory.Directory, loaded on first use
    xattrs: dict[bytes, bytes] | None = None
    xattr_blocks: list[int] = field(default_factory=list)
    unstable: UnstableMap = field(default_factory=UnstableMap)
    dirty_data: list[tuple[int, int]] = field(default_factory=list)  # pmem byte runs stored since fsync

    def pack(self, version: int) -> tuple[bytes, bytes]:
        """The record's fixed part and its nanoseconds (INODE_NSEC), as format `version` stores them."""
        values = _record(self)
        if version == 1:
            return fmt.INODE.pack(*values), _NO_NSEC
        (a, an), (m, mn), (c, cn) = divmod(self.atime_ns, 10**9), divmod(self.mtime_ns, 10**9), divmod(self.ctime_ns, 10**9)
        fixed = fmt.INODE.pack(*values[:_T], a, m, c, *values[_T + 3:])
        return fixed, fmt.INODE_NSEC.pack(an, mn, cn)

    @classmethod
    def unpack(cls, raw: bytes | bytearray, off: int, version: int) -> "Inode":
        """The record at raw[off:off + INODE_SIZE] (a table block, or one record at off 0)."""
        inode = cls(*fmt.INODE.unpack_from(raw, off))
        if version != 1:
            for name, ns in zip(TIME_FIELDS, fmt.INODE_NSEC.unpack_from(raw, off + fmt.INODE_NSEC_OFFSET)):
                setattr(inode, name, getattr(inode, name) * 10**9 + ns)
        return inode

    def problem(self, sb: fmt.Superblock) -> str:
        """What makes this record one the engine must not use ("" if nothing): the bounds the format
        sets on every field. Loading refuses such an inode (EIO for that file); fsck reports it."""
        if stat.S_IFMT(self.mode) not in KNOWN_TYPES:
            return f"unknown file type {stat.S_IFMT(self.mode):#o}"
        if self.size > fmt.MAX_FILE_BLOCKS * fmt.BLOCK_SIZE:
            return f"size {self.size} is past the largest file"
        if self.blocks > sb.total_blocks - sb.data_start:
            return f"blocks field {self.blocks} is more than the data area holds"
        for name in ("extent_head", "dirent_head", "xattr_head"):
            head = getattr(self, name)
            if head and not sb.data_start <= head < sb.total_blocks:
                return f"{name} {head} is outside the data area"
        if stat.S_ISDIR(self.mode) and not 0 < self.parent < sb.inode_count:
            return f"parent {self.parent} is no inode"
        if stat.S_ISLNK(self.mode) and not 0 < self.size < fmt.BLOCK_SIZE:
            return f"symlink of size {self.size}"
        return ""


# The fields of the on-image record, in fmt.INODE's order (the rest of Inode lives in memory only).
RECORD_FIELDS = tuple(f.name for f in fields(Inode))[:len(fmt.INODE.format) - 1]
assert RECORD_FIELDS[-1] == "parent"
TIME_FIELDS = ("atime_ns", "mtime_ns", "ctime_ns")  # fmt.INODE_NSEC's order, consecutive in the record
_T = RECORD_FIELDS.index("atime_ns")
assert RECORD_FIELDS[_T:_T + 3] == TIME_FIELDS
_record = operator.attrgetter(*RECORD_FIELDS)  # one C call for the whole record: pack is on every write
_NO_NSEC = bytes(fmt.INODE_NSEC.size)
KNOWN_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK}


def clamp_time(ns: int, version: int) -> int:
    """A time as format `version` can store it: clamped to its range, as Linux clamps to s_time_max."""
    lo, hi = fmt.V1_TIME_RANGE if version == 1 else fmt.TIME_RANGE
    return min(max(ns, lo), hi)


class InodeTable:
    def __init__(self, journal: Journal, alloc: Allocator, sb: fmt.Superblock) -> None:
        self.journal = journal
        self.alloc = alloc
        self.sb = sb
        self.cache: dict[int, Inode] = {}
        self.generation = sb.mount_count << 20  # fresh generations each mount: ino reuse is detectable

    def location(self, ino: int) -> tuple[int, int]:
        return fmt.inode_location(self.sb.itable_start, ino)

    def get(self, ino: int) -> Inode:
        inode = self.cache.get(ino)
        if inode is not None:
            return inode
        if not (0 < ino < self.sb.inode_count) or not self.alloc.inodes.ondisk[ino]:
            raise FsError(errno.ENOENT, f"inode {ino}")
        blk, off = self.location(ino)
        raw = self.journal.read(blk)
        if raw[:4] != fmt.MAGIC:
            raise CorruptImage(f"inode {ino} is allocated but its table block {blk} was never written", blk)
        fmt.read_header(raw, blk, fmt.K_INODES, check_crc=blk not in self.journal.cache)
        inode = Inode.unpack(raw, off, self.sb.version)
        if inode.ino != ino:
            raise CorruptImage(f"inode {ino}: record in block {blk} says it is inode {inode.ino}", blk)
        what = inode.problem(self.sb)
        if what:
            raise CorruptImage(f"inode {ino}: {what}", blk)
        self.cache[ino] = inode
        return inode

    def save(self, inode: Inode) -> None:
        blk, off = self.location(inode.ino)
        buf = self._table_block(blk)
        fixed, nsec = inode.pack(self.sb.version)
        buf[off:off + fmt.INODE_FIXED] = fixed
        buf[off + fmt.INODE_NSEC_OFFSET:off + fmt.INODE_NSEC_OFFSET + fmt.INODE_NSEC.size] = nsec

    def _table_block(self, blk: int) -> bytearray:
        raw = self.journal.read(blk)
        if raw[:4] != fmt.MAGIC:  # first inode in this block: initialise it
            return self.journal.create(blk, fmt.BlockHeader(fmt.K_INODES))
        return self.journal.write_access(blk)

    def new(self, mode: int, uid: int, gid: int, now_ns: int, rdev: int = 0) -> Inode:
        ino = self.alloc.alloc_inode()
        self.generation += 1
        inode = Inode(ino, generation=self.generation & 0xFFFFFFFF, mode=mode, uid=uid, gid=gid, nlink=0,
                      rdev=rdev, atime_ns=now_ns, mtime_ns=now_ns, ctime_ns=now_ns)
        blk, off = self.location(ino)
        buf = self._table_block(blk)
        buf[off:off + fmt.INODE_SIZE] = bytes(fmt.INODE_SIZE)  # clears stale inline extents too
        self.cache[ino] = inode
        self.save(inode)
        return inode

    def delete(self, inode: Inode) -> None:
        """Clear the record and free the inode number (its blocks are the caller's to free first)."""
        blk, off = self.location(inode.ino)
        buf = self.journal.write_access(blk)
        buf[off:off + fmt.INODE_SIZE] = bytes(fmt.INODE_SIZE)
        self.alloc.free_inode(inode.ino)
        self.cache.pop(inode.ino, None)

    def inline_extent_slots(self, ino: int) -> list[tuple[int, int]]:
        blk, off = self.location(ino)
        return [(blk, off + fmt.INODE_FIXED + i * fmt.EXTENT_SIZE) for i in range(fmt.INLINE_EXTENTS)]

    def evict(self, inode: Inode, committed_tid: int) -> None:
        """Forget an unreferenced inode's in-memory state, unless it still knows unstable blocks."""
        if inode.refs == 0 and inode.nlink > 0 and not inode.unstable.any(committed_tid) and not inode.dirty_data:
            self.cache.pop(inode.ino, None)
