"""The operation layer: transactions, space reservation and the per-inode structures every file
system operation works through. The layers above (mappings, data, attrs, xattr, namespace, fault,
fs) each add one job to this class; see daxfs/engine/__init__.py for the order.

Every mutating operation is one atomic step of the running transaction: it calls _begin() first,
which refuses a read-only file system and makes room in the transaction and in the bitmap, and it
checks everything that could fail before it changes anything, so an error never leaves half an
operation in a transaction, and a crash shows each operation either whole or not at all.

Freed blocks are reusable only after their transaction is checkpointed (journal.py): after_commit()
hands them back through release_freed(), which the mappings layer narrows to blocks no direct
mapping still holds.
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass

from daxfs.engine import format as fmt
from daxfs.engine.alloc import Allocator
from daxfs.engine.chain import SlotChain
from daxfs.engine.directory import Directory
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.extent import ExtentMap
from daxfs.engine.inode import Inode, InodeTable
from daxfs.engine.journal import Journal
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.transaction import Transaction

BS = fmt.BLOCK_SIZE
SLACK = 4  # blocks an operation may need for chain growth beyond its data
# Blocks that only operations freeing space may dip into: on a full file system an unlink must still
# work, although it may grow the orphan directory, and so must the forget that later frees the file.
RESERVE = 32
DAY_NS = 86400 * 10**9


def now_ns() -> int:
    return time.time_ns()


@dataclass
class AtimePolicy:
    """When a read updates atime, as the mount options say (ext4's meanings): relatime (the default),
    strictatime (every read), noatime (never); nodiratime spares directories; lazytime keeps atime
    updates in memory until the inode is written anyway, synced, forgotten, or the mount ends."""
    mode: str = "relatime"
    diratime: bool = True
    lazytime: bool = False


class FsCore:
    def __init__(self, region: PmemRegion, sb: fmt.Superblock, readonly: bool) -> None:
        self.region = region
        self.readonly = readonly
        self.sb = sb
        self.journal = Journal(region, sb)
        self.alloc = Allocator(self.journal, sb)
        self.inodes = InodeTable(self.journal, self.alloc, sb)
        self.times = AtimePolicy()
        self._lazy: set[int] = set()  # inodes whose atime changed in memory only (lazytime)

    # --- transactions -----------------------------------------------------------------------------
    def commit(self) -> int:
        """Commit the running transaction now (synchronously). Returns the committed tid."""
        tid = self.journal.commit()
        self.after_commit()
        return tid

    def start_commit(self) -> Transaction | None:
        """Close the running transaction (None: nothing to commit); journal.write_commit() writes it on
        any thread, then finish_commit() here."""
        return self.journal.start_commit()

    def finish_commit(self, txn: Transaction) -> None:
        self.journal.finish_commit(txn)
        self.after_commit()

    def after_commit(self) -> None:
        self.release_freed(self.journal.take_releasable())
        self.journal.evict_clean()

    def release_freed(self, runs: list[tuple[int, int]]) -> None:
        """Checkpointed frees become allocatable (the mappings layer holds back pinned blocks)."""
        self.alloc.release(runs)

    def checkpoint(self) -> None:
        """Commit, then write every committed block home and free the journal."""
        self.commit()
        self.journal.checkpoint()
        self.after_commit()

    @property
    def committed_tid(self) -> int:
        return self.journal.committed_tid

    def _begin(self, blocks: int = 0, freeing: bool = False) -> None:
        """Start an operation: refuse a read-only fs, make room in the transaction and in the bitmap.
        An operation that frees space (`freeing`) may use the RESERVE, so that a full fs can be emptied."""
        self._begin_in_place()
        need = blocks + SLACK + (0 if freeing else RESERVE)
        if self.alloc.blocks.free_now < need and self.alloc.blocks.pending:
            self.checkpoint()  # blocks freed by committed transactions come back at checkpoint
        if self.alloc.blocks.free_now < need:
            raise FsError(errno.ENOSPC)

    def _begin_in_place(self) -> None:
        """Start an operation that allocates nothing (an overwrite of allocated blocks changes only
        its inode's times): refuse a read-only fs, make room in the transaction. No space check, so a
        full file system can still be overwritten, as on Linux."""
        if self.readonly:
            raise FsError(errno.EROFS)
        if self.journal.running_full():
            self.commit()

    def _room_for(self, blocks: int) -> int:
        """How many of `blocks` new blocks an operation that frees nothing may take now (checkpointing
        first when frees waiting for it would make the difference): what a short write can write."""
        if self.readonly:
            raise FsError(errno.EROFS)
        if self.alloc.blocks.free_now - SLACK - RESERVE < blocks and self.alloc.blocks.pending:
            self.checkpoint()
        return max(0, min(blocks, self.alloc.blocks.free_now - SLACK - RESERVE))

    # --- inode helpers ----------------------------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        return self.inodes.get(ino)

    def _extents(self, inode: Inode) -> ExtentMap:
        if inode.extents is None:
            chain = SlotChain(self.journal, self.alloc.alloc_block, fmt.K_EXTENTS, inode.ino, fmt.EXTENT_SIZE,
                              inode.extent_head, lambda head: self._set_head(inode, "extent_head", head),
                              self.inodes.inline_extent_slots(inode.ino))
            ext = ExtentMap(chain, inode.ino)
            mapped = sum(e.len for e in ext)
            if mapped != inode.blocks:  # every later free would take the count below what it holds
                raise CorruptImage(f"inode {inode.ino}: blocks field says {inode.blocks}, its extents map {mapped}",
                                   inode.extent_head)
            inode.extents = ext
        return inode.extents

    def _dir(self, inode: Inode) -> Directory:
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        if inode.directory is None:
            chain = SlotChain(self.journal, self.alloc.alloc_block, fmt.K_DIRENTS, inode.ino, fmt.DIRENT_SIZE,
                              inode.dirent_head, lambda head: self._set_head(inode, "dirent_head", head))
            inode.directory = Directory(chain, inode.ino)
        return inode.directory

    def _set_head(self, inode: Inode, field: str, head: int) -> None:
        setattr(inode, field, head)
        self.inodes.save(inode)

    def _touch(self, inode: Inode, m: bool = True, c: bool = True) -> None:
        t = now_ns()
        if m:
            inode.mtime_ns = t
        if c:
            inode.ctime_ns = t
        self.inodes.save(inode)

    def _accessed(self, inode: Inode) -> None:
        """A read: update atime as the mount's AtimePolicy says. Under relatime, as Linux mounts by
        default, a read updates atime when atime is not newer than mtime or ctime, or is a day old;
        otherwise reads change no metadata at all."""
        t = now_ns()
        if self.read_updates_atime(inode, t):
            inode.atime_ns = t
            if self.times.lazytime:
                self._lazy.add(inode.ino)
                return
            if self.journal.running_full():
                self.commit()
            self.inodes.save(inode)

    def read_updates_atime(self, inode: Inode, t: int | None = None) -> bool:
        """Would a read now change the inode's atime? (The daemon lets the kernel serve reads from its
        page cache only while the answer is no: a cached read never reaches us.)"""
        policy = self.times
        if self.readonly or policy.mode == "noatime" or (not policy.diratime and stat.S_ISDIR(inode.mode)):
            return False
        return (policy.mode == "strictatime" or inode.atime_ns <= max(inode.mtime_ns, inode.ctime_ns)
                or (now_ns() if t is None else t) - inode.atime_ns > DAY_NS)

    def _save_lazy(self, ino: int | None = None) -> None:
        """Write the in-memory atimes of lazytime (one inode's, or all) into the running transaction."""
        for i in ([ino] if ino is not None else list(self._lazy)):
            if i in self._lazy:
                self._lazy.discard(i)
                inode = self.inodes.cache.get(i)
                if inode is not None and inode.nlink > 0:
                    if self.journal.running_full():
                        self.commit()
                    self.inodes.save(inode)
