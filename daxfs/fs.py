"""The file system: POSIX operations over inodes, extents and directories. No FUSE here.

Every mutating operation is one atomic step of the running transaction: it checks everything that
could fail (names, permissions the kernel does not check, free space, journal room) before it changes
anything, so an error never leaves half an operation in a transaction, and a crash shows each
operation either whole or not at all (whole transactions are committed, in order).

Data goes straight to pmem (DAX): write() stores into the region before it returns. What a write
changes in the block mapping is marked unstable (unstable.py) with the running transaction's id; in
sync mode the caller asks needs_commit() and commits before acknowledging.

Freed blocks are reusable only after their transaction is checkpointed (journal.py), and a newly
allocated block is zeroed, or wholly overwritten, before the transaction mapping it can commit
(commit.py I1), so no file ever shows another file's old bytes.

Direct access (the last section): clients map file pages straight from the image and ask for each
page's block on first touch (faults); the blocks they were given stay pinned until they unmap.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable

from daxfs import crashpoint
from daxfs import format as fmt
from daxfs.alloc import Allocator
from daxfs.chain import SlotChain, read_blob, write_blob
from daxfs.directory import Directory, Entry
from daxfs.errors import CorruptImage, DaxfsError, FsError
from daxfs.extent import HOLE, UNWRITTEN, WRITTEN, ExtentMap, IoMap
from daxfs.inode import Inode, InodeTable
from daxfs.journal import Journal, Transaction
from daxfs.pmem import PmemRegion
from daxfs.recovery import replay
from daxfs.superblock import read_superblock, write_superblock
from daxfs.unstable import needs_commit

BS = fmt.BLOCK_SIZE
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
MAP_SYNC_XATTR = b"user.daxfs.map_sync"
SLACK = 4  # blocks an operation may need for chain growth beyond its data
# Blocks that only operations freeing space may dip into: on a full file system an unlink must still
# work, although it may grow the orphan directory, and so must the forget that later frees the file.
RESERVE = 32


@dataclass
class OpenReport:
    replayed: int  # committed transactions replayed from the journal
    orphans: int  # unlinked-but-open inodes freed
    was_dirty: bool


@dataclass
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int  # free, less the RESERVE that only freeing operations may use
    files: int
    files_free: int
    namemax: int = fmt.MAX_NAME


@dataclass(eq=False)
class DaxMapping:
    """One client's direct mapping of file pages [first, first+count), as the engine tracks it."""
    id: int
    ino: int
    first: int
    count: int
    writable: bool
    blocks: dict[int, int] = field(default_factory=dict)  # file page -> pmem block handed out (pinned)
    written: set[int] = field(default_factory=set)  # pages handed out writable
    holes: set[int] = field(default_factory=set)  # pages handed out as the zero page
    stale: set[int] = field(default_factory=set)  # zero pages that got a block since: fault them again
    revoked: bool = False  # truncate, hole punch or the last unlink took the range away

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.first < hi and lo < self.first + self.count


def now_ns() -> int:
    return time.time_ns()


class FileSystem:
    def __init__(self, region: PmemRegion, readonly: bool = False) -> None:
        self.region = region
        self.readonly = readonly
        sb = read_superblock(region)
        _check_geometry(sb, region)
        was_dirty = sb.state != fmt.STATE_CLEAN
        replayed = 0
        if not readonly:
            replayed = replay(region, sb)
        elif was_dirty:
            raise DaxfsError(f"{region.path}: was not unmounted cleanly; mount it read-write once to replay "
                             "its journal")
        self.sb = sb
        self.journal = Journal(region, sb)
        self.alloc = Allocator(self.journal, sb)
        self.inodes = InodeTable(self.journal, self.alloc, sb)
        self.dax: dict[int, list[DaxMapping]] = {}  # ino -> its direct mappings (revoked ones too)
        self.dax_notify: Callable[[DaxMapping], None] = lambda m: None  # a mapping was revoked or went stale
        self._pins: dict[int, int] = {}  # pmem block -> mappings holding it
        self._held: set[int] = set()  # freed, checkpointed, but pinned: reusable at the last unpin
        self._next_map = 1
        orphans = 0
        if not readonly:
            orphans = self._free_orphans()
            sb.state = fmt.STATE_DIRTY
            sb.mount_count += 1
            sb.last_mount_ns = now_ns()
            self.commit()  # orphan frees, before the superblock says "in use"
            write_superblock(region, sb)
        self.open_report = OpenReport(replayed, orphans, was_dirty)

    @classmethod
    def open(cls, path: str, readonly: bool = False, durable: bool = True) -> "FileSystem":
        return cls(PmemRegion(path, writable=not readonly, durable=durable), readonly)

    def close(self) -> None:
        """Commit, checkpoint, mark clean. After a daemon kill this never runs: replay does its work."""
        if not self.readonly:
            self.commit()
            self.journal.checkpoint()
            self.after_commit()
            self.sb.state = fmt.STATE_CLEAN
            write_superblock(self.region, self.sb)
        self.region.close()

    # --- transactions -----------------------------------------------------------------------------
    def commit(self) -> int:
        """Commit the running transaction now (synchronously). Returns the committed tid."""
        tid = self.journal.commit()
        self.after_commit()
        return tid

    def start_commit(self) -> Transaction | None:
        """Freeze the running transaction; write it with journal.write() on any thread, then finish."""
        return self.journal.freeze()

    def finish_commit(self, txn: Transaction) -> None:
        self.journal.complete(txn)
        self.after_commit()

    def after_commit(self) -> None:
        self.alloc.release(self._unpinned(self.journal.take_releasable()))
        self.journal.evict_clean()

    @property
    def committed_tid(self) -> int:
        return self.journal.committed_tid

    def _begin(self, blocks: int = 0, freeing: bool = False) -> None:
        """Start an operation: refuse a read-only fs, make room in the transaction and in the bitmap.
        An operation that frees space (`freeing`) may use the RESERVE, so that a full fs can be emptied."""
        if self.readonly:
            raise FsError(errno.EROFS)
        if self.journal.running_full():
            self.commit()
        need = blocks + SLACK + (0 if freeing else RESERVE)
        if self.alloc.blocks.free_now < need and self.alloc.blocks.pending:
            self.commit()  # blocks freed by committed transactions come back at checkpoint
            self.journal.checkpoint()
            self.after_commit()
        if self.alloc.blocks.free_now < need:
            raise FsError(errno.ENOSPC)

    # --- inode helpers ----------------------------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        return self.inodes.get(ino)

    def _extents(self, inode: Inode) -> ExtentMap:
        if inode.extents is None:
            chain = SlotChain(self.journal, self._alloc_meta(inode), fmt.K_EXTENTS, inode.ino, fmt.EXTENT_SIZE,
                              inode.extent_head, lambda head: self._set_head(inode, "extent_head", head),
                              self.inodes.inline_extent_slots(inode.ino))
            inode.extents = ExtentMap(chain, inode.ino)
        return inode.extents

    def _dir(self, inode: Inode) -> Directory:
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        if inode.directory is None:
            chain = SlotChain(self.journal, self._alloc_meta(inode), fmt.K_DIRENTS, inode.ino, fmt.DIRENT_SIZE,
                              inode.dirent_head, lambda head: self._set_head(inode, "dirent_head", head))
            inode.directory = Directory(chain, inode.ino)
        return inode.directory

    def _alloc_meta(self, inode: Inode):
        return lambda: self.alloc.alloc_block()

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
        """relatime, as Linux mounts by default: a read updates atime when atime is not newer than
        mtime or ctime, or is a day old; otherwise reads change no metadata at all."""
        if self.readonly:
            return
        t = now_ns()
        if inode.atime_ns <= max(inode.mtime_ns, inode.ctime_ns) or t - inode.atime_ns > 86400 * 10**9:
            if self.journal.running_full():
                self.commit()
            inode.atime_ns = t
            self.inodes.save(inode)

    # --- namespace --------------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Inode:
        d = self.inode(parent)
        if name == b".":
            return d
        if name == b"..":
            self._dir(d)
            return self.inode(d.parent)
        _check_name(name)
        e = self._dir(d).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        return self.inode(e.ino)

    def _new_entry_checks(self, parent: Inode, name: bytes) -> Directory:
        _check_name(name)
        d = self._dir(parent)
        if parent.nlink == 0:
            raise FsError(errno.ENOENT)  # the directory was removed
        if d.lookup(name) is not None:
            raise FsError(errno.EEXIST)
        return d

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Inode:
        """Regular files, fifos, sockets, device nodes (all plain inodes here)."""
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        return self._create(parent, name, mode, uid, gid, rdev)

    create = mknod

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        if not target or len(target) >= BS:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        inode = self._create(parent, name, stat.S_IFLNK | 0o777, uid, gid, extra_blocks=1)
        self._write(inode, 0, target, begin=False)
        return inode

    def _create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                extra_blocks: int = 0) -> Inode:
        parent = self.inode(parent_ino)
        d = self._new_entry_checks(parent, name)
        self._begin(extra_blocks)
        if self.alloc.inodes.free_now < 1:
            raise FsError(errno.ENOSPC)
        if parent.mode & stat.S_ISGID:  # BSD group semantics for setgid directories
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inode = self.inodes.new(mode, uid, gid, now_ns(), rdev)
        if stat.S_ISDIR(mode):
            inode.nlink = 2
            inode.parent = parent.ino
            parent.nlink += 1
        else:
            inode.nlink = 1
        self.inodes.save(inode)
        d.add(name, inode.ino, mode)
        self._touch(parent)
        return inode

    def readlink(self, ino: int) -> bytes:
        inode = self.inode(ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL)
        return self.read(ino, 0, inode.size)

    def link(self, ino: int, new_parent: int, name: bytes) -> Inode:
        inode = self.inode(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM)
        if inode.nlink >= 65000:
            raise FsError(errno.EMLINK)
        parent = self.inode(new_parent)
        d = self._new_entry_checks(parent, name)
        self._begin()
        was_orphan = inode.nlink == 0
        d.add(name, ino, inode.mode)
        inode.nlink += 1
        if was_orphan:  # linkat(O_TMPFILE-like) resurrection
            self._dir(self.inode(fmt.ORPHAN_INO)).remove(b"%d" % ino)
        self._touch(inode, m=False)
        self._touch(parent)
        return inode

    def unlink(self, parent: int, name: bytes) -> None:
        p = self.inode(parent)
        _check_name(name)
        e = self._dir(p).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        inode = self.inode(e.ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        self._begin(freeing=True)
        self._dir(p).remove(name)
        self._touch(p)
        self._drop_link(inode)

    def rmdir(self, parent: int, name: bytes) -> None:
        p = self.inode(parent)
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        _check_name(name)
        e = self._dir(p).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        inode = self.inode(e.ino)
        if len(self._dir(inode)):
            raise FsError(errno.ENOTEMPTY)
        self._begin(freeing=True)
        self._dir(p).remove(name)
        p.nlink -= 1
        self._touch(p)
        inode.nlink = 0
        self._unreferenced(inode)

    def _drop_link(self, inode: Inode) -> None:
        inode.nlink -= 1
        self._touch(inode, m=False)
        if inode.nlink == 0:
            self._unreferenced(inode)

    def _unreferenced(self, inode: Inode) -> None:
        """nlink reached 0: free now, or keep as an orphan while the kernel still references it."""
        self._dax_revoke(inode, 0, fmt.MAX_FILE_BLOCKS)
        if inode.refs > 0:
            self.inodes.save(inode)
            self._dir(self.inode(fmt.ORPHAN_INO)).add(b"%d" % inode.ino, inode.ino, inode.mode)
        else:
            self._destroy(inode)

    def _destroy(self, inode: Inode) -> None:
        """Free an inode with no links and no references: its data, chains and record. The chain
        blocks are freed whole, not emptied slot by slot, so the transaction touches only bitmap
        blocks (mkfs sizes the journal to hold all of them) and the inode's table block."""
        for e in self._extents(inode):
            self.alloc.free_blocks(e.pblk, e.len)
        for blk in inode.extents.chain.blocks():
            self.alloc.free_blocks(blk, 1)
        if stat.S_ISDIR(inode.mode):
            for blk in self._dir(inode).chain.blocks():
                self.alloc.free_blocks(blk, 1)
        for blk in self._xattr_blocks(inode):
            self.alloc.free_blocks(blk, 1)
        self.inodes.delete(inode)

    def ref(self, ino: int, n: int = 1) -> None:
        """The kernel (or a test) holds n more references to ino (lookup counts)."""
        self.inode(ino).refs += n

    def forget(self, ino: int, n: int = 1) -> None:
        inode = self.inodes.cache.get(ino)
        if inode is None:
            return
        inode.refs = max(0, inode.refs - n)
        if inode.refs == 0 and inode.nlink == 0 and not self.readonly:
            self._begin(freeing=True)
            self._dir(self.inode(fmt.ORPHAN_INO)).remove(b"%d" % ino)
            self._destroy(inode)
        elif inode.refs == 0:
            self.inodes.evict(inode, self.committed_tid)

    def _free_orphans(self) -> int:
        orphans = self._dir(self.inode(fmt.ORPHAN_INO))
        names = list(orphans.entries)
        for name in names:
            if self.journal.running_full():
                self.commit()  # each orphan is freed whole within one transaction
            inode = self.inode(orphans.lookup(name).ino)
            if inode.nlink == 0:
                orphans.remove(name)
                self._destroy(inode)
            else:  # a truncate that took several transactions was cut short: finish it
                self._truncate_down(inode, inode.size)
        return len(names)

    def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL)
        _check_name(old)
        _check_name(new)
        op, np_ = self.inode(old_parent), self.inode(new_parent)
        od, nd = self._dir(op), self._dir(np_)
        se = od.lookup(old)
        if se is None:
            raise FsError(errno.ENOENT)
        src = self.inode(se.ino)
        te = nd.lookup(new)
        target = self.inode(te.ino) if te is not None else None
        if target is not None and target.ino == src.ino:
            return  # POSIX: same file, nothing to do
        if flags & RENAME_NOREPLACE and target is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE and target is None:
            raise FsError(errno.ENOENT)
        if stat.S_ISDIR(src.mode) and new_parent != old_parent and self._is_ancestor(src.ino, np_):
            raise FsError(errno.EINVAL)
        if target is not None and stat.S_ISDIR(target.mode) and old_parent != new_parent \
                and self._is_ancestor(target.ino, op):
            raise FsError(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)
        if target is not None and not flags & RENAME_EXCHANGE:
            if stat.S_ISDIR(src.mode) and not stat.S_ISDIR(target.mode):
                raise FsError(errno.ENOTDIR)
            if not stat.S_ISDIR(src.mode) and stat.S_ISDIR(target.mode):
                raise FsError(errno.EISDIR)
            if stat.S_ISDIR(target.mode) and len(self._dir(target)):
                raise FsError(errno.ENOTEMPTY)
        self._begin(freeing=target is not None)
        if flags & RENAME_EXCHANGE:
            od.retarget(old, target.ino, target.mode)
            nd.retarget(new, src.ino, src.mode)
            self._reparent(target, np_, op)
            self._reparent(src, op, np_)
            for i in (src, target):
                self._touch(i, m=False)
        else:
            if target is not None:
                nd.retarget(new, src.ino, src.mode)
                if stat.S_ISDIR(target.mode):
                    np_.nlink -= 1
                    target.nlink = 0
                    self._unreferenced(target)
                else:
                    self._drop_link(target)
            else:
                nd.add(new, src.ino, src.mode)
            od.remove(old)
            self._reparent(src, op, np_)
            self._touch(src, m=False)
        self._touch(op)
        if np_ is not op:
            self._touch(np_)

    def _reparent(self, inode: Inode, old: Inode, new: Inode) -> None:
        if stat.S_ISDIR(inode.mode) and old is not new:
            inode.parent = new.ino
            old.nlink -= 1
            new.nlink += 1
            self.inodes.save(inode)

    def _is_ancestor(self, ino: int, d: Inode) -> bool:
        """Is inode `ino` the directory d or one of d's ancestors?"""
        seen = 0
        while True:
            if d.ino == ino:
                return True
            if d.ino == fmt.ROOT_INO or seen > self.sb.inode_count:
                return False
            d = self.inode(d.parent)
            seen += 1

    def readdir(self, ino: int, cookie: int = 0):
        """(cookie, name, inode number, dtype) after `cookie`, "." and ".." first."""
        inode = self.inode(ino)
        d = self._dir(inode)
        if cookie == 0:
            self._accessed(inode)
        if cookie < 1:
            yield 1, b".", inode.ino, stat.S_IFDIR >> 12
        if cookie < 2:
            yield 2, b"..", inode.parent, stat.S_IFDIR >> 12
        for c, e in d.after(max(cookie, 2)):
            yield c, e.name, e.ino, e.dtype

    def entry(self, parent: int, name: bytes) -> Entry | None:
        return self._dir(self.inode(parent)).lookup(name)

    # --- attributes -------------------------------------------------------------------------------
    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                ctime_ns: int | None = None) -> Inode:
        inode = self.inode(ino)
        if size is not None:
            self._check_truncate(inode, size)
        self._begin(freeing=size is not None and size < inode.size)
        if size is not None:
            self._truncate(inode, size)
        if mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
        if uid is not None and uid != 0xFFFFFFFF:
            inode.uid = uid
        if gid is not None and gid != 0xFFFFFFFF:
            inode.gid = gid
        if atime_ns is not None:
            inode.atime_ns = atime_ns
        if mtime_ns is not None:
            inode.mtime_ns = mtime_ns
        inode.ctime_ns = ctime_ns if ctime_ns is not None else now_ns()
        self.inodes.save(inode)
        return inode

    def truncate(self, ino: int, size: int) -> None:
        inode = self.inode(ino)
        self._check_truncate(inode, size)
        self._begin(freeing=size < inode.size)
        self._truncate(inode, size)

    @staticmethod
    def _check_truncate(inode: Inode, size: int) -> None:
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.EINVAL)
        if size < 0:
            raise FsError(errno.EINVAL)
        if size > fmt.MAX_FILE_BLOCKS * BS:
            raise FsError(errno.EFBIG)

    def _truncate(self, inode: Inode, size: int) -> None:
        if size < inode.size:
            self._truncate_down(inode, size)
        else:
            self._grow_size(inode, size)
        inode.size = size
        inode.unstable.size_tid = self.journal.running_tid
        self._touch(inode)

    def _truncate_down(self, inode: Inode, size: int) -> None:
        """Unmap everything past `size`. Each removed extent rewrites a slot, so a file fragmented
        into more extents than one transaction may hold is cut in steps, as ext4 does: first i_size
        and an orphan entry commit together, then the extents go from the end, one transaction per
        step, and the orphan entry goes with the last. A crash between steps leaves the orphan entry,
        and the next mount finishes the cut (_free_orphans)."""
        keep = (size + BS - 1) // BS
        self._dax_revoke(inode, keep, fmt.MAX_FILE_BLOCKS)
        ext = self._extents(inode)
        budget = max(16, self.journal.max_txn_blocks - self.sb.bitmap_blocks - 64)
        orphans = self._dir(self.inode(fmt.ORPHAN_INO))
        name = b"%d" % inode.ino
        if ext.count_from(keep) > budget and orphans.lookup(name) is None:
            inode.size = size
            orphans.add(name, inode.ino, inode.mode)
            self.inodes.save(inode)
            self.commit()
        while True:
            lo = max(keep, ext.start_of_last(budget))
            for pblk, n in ext.remove(lo, fmt.MAX_FILE_BLOCKS):
                self.alloc.free_blocks(pblk, n)
                inode.blocks -= n
            if lo == keep:
                break
            self.inodes.save(inode)
            self.commit()
        if orphans.lookup(name) is not None and inode.nlink > 0:
            orphans.remove(name)

    def _grow_size(self, inode: Inode, new_size: int) -> None:
        """Before i_size grows: zero the old EOF block past the old size (it may hold bytes a
        truncate cut off), and mark the newly exposed blocks unstable."""
        old = inode.size
        if new_size <= old:
            return
        if old % BS:
            m = self._extents(inode).iomap(old // BS, 1)[0]
            if m.state == WRITTEN:
                end = min(new_size, (old // BS + 1) * BS)
                self._store(inode, m.pblk * BS + old % BS, bytes(end - old))
                self.journal.ordered(m.pblk * BS + old % BS, end - old)  # I1: durable before the new size
        inode.unstable.mark(old // BS, (new_size + BS - 1) // BS, self.journal.running_tid)
        inode.unstable.size_tid = self.journal.running_tid

    # --- data -------------------------------------------------------------------------------------
    def read(self, ino: int, off: int, size: int) -> bytes:
        inode = self.inode(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        if size > 0:
            self._accessed(inode)
        if off >= inode.size or size <= 0:
            return b""
        size = min(size, inode.size - off)
        first, last = off // BS, (off + size - 1) // BS
        out = bytearray()
        for m in self._extents(inode).iomap(first, last - first + 1):
            lo = max(off, m.lblk * BS)
            hi = min(off + size, (m.lblk + m.len) * BS)
            if m.state == WRITTEN:
                out += self.region.load(m.pblk * BS + (lo - m.lblk * BS), hi - lo)
            else:
                out += bytes(hi - lo)
        return bytes(out)

    def write(self, ino: int, off: int, data: bytes) -> int:
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EINVAL)
        return self._write(inode, off, data)

    def _write(self, inode: Inode, off: int, data: bytes | memoryview, begin: bool = True) -> int:
        n = len(data)
        if n == 0:
            return 0
        if off < 0:
            raise FsError(errno.EINVAL)
        if off + n > fmt.MAX_FILE_BLOCKS * BS:
            raise FsError(errno.EFBIG)
        ext = self._extents(inode)
        end = off + n
        self._make_written(inode, ext, off // BS, (end - 1) // BS + 1, off, end, begin)
        if end > inode.size:  # before the copy: growing zeroes the old EOF block past the old size
            self._grow_size(inode, end)
            inode.size = end
        self._copy_in(inode, ext, off, data)
        self._touch(inode)
        return n

    def _make_written(self, inode: Inode, ext: ExtentMap, lo: int, hi: int, off: int, end: int,
                      begin: bool = True) -> None:
        """Make file blocks [lo, hi) written for a store of bytes [off, end): allocate the holes,
        convert the unwritten extents, zero what the store will not cover, mark them unstable. The
        write path and the write fault (off == end: the whole blocks are zeroed) share it."""
        maps = ext.iomap(lo, hi - lo)
        if begin:
            self._begin(sum(m.len for m in maps if m.state == HOLE))
        tid = self.journal.running_tid
        for m in maps:
            if m.state == WRITTEN:
                continue
            if m.state == HOLE:
                self._map_new(inode, ext, m, off, end)
            else:
                self._zero_edges(m, m.pblk, off, end)
                ext.set_written(m.lblk, m.lblk + m.len)
                self.journal.ordered(m.pblk * BS, m.len * BS)
            inode.unstable.mark(m.lblk, m.lblk + m.len, tid)
            self._dax_filled(inode, m.lblk, m.lblk + m.len)

    def _map_new(self, inode: Inode, ext: ExtentMap, hole: IoMap, off: int, end: int) -> None:
        """Allocate pmem for a hole, zero what the write will not cover, map it written."""
        prev = ext.before(hole.lblk)
        goal = prev.pblk + (hole.lblk - prev.lblk) if prev is not None else 0
        lblk = hole.lblk
        for pblk, n in self.alloc.alloc_blocks(hole.len, goal):
            crashpoint.hit("alloc.before_zero")
            self._zero_edges(IoMap(lblk, n, pblk, HOLE), pblk, off, end)
            self.journal.ordered(pblk * BS, n * BS)
            ext.insert(lblk, n, pblk, WRITTEN)
            inode.blocks += n
            lblk += n

    def _zero_edges(self, m: IoMap, pblk: int, off: int, end: int) -> None:
        """Zero the parts of blocks [m.lblk, m.lblk+m.len) that the write [off, end) leaves untouched."""
        lo, hi = m.lblk * BS, (m.lblk + m.len) * BS
        if off > lo:
            self.region.zero(pblk * BS, min(off, hi) - lo)
        if end < hi:
            start = max(end, lo)
            self.region.zero(pblk * BS + (start - lo), hi - start)

    def _copy_in(self, inode: Inode, ext: ExtentMap, off: int, data: bytes | memoryview) -> None:
        n = len(data)
        first, last = off // BS, (off + n - 1) // BS
        mv = memoryview(data)
        half = n // 2
        for m in ext.iomap(first, last - first + 1):
            lo = max(off, m.lblk * BS)
            hi = min(off + n, (m.lblk + m.len) * BS)
            if lo - off <= half < hi - off:
                crashpoint.hit("write.half_copied")
            self._store(inode, m.pblk * BS + (lo - m.lblk * BS), mv[lo - off:hi - off])

    def _store(self, inode: Inode, at: int, data: bytes | memoryview) -> None:
        self.region.store(at, data)
        self._dirty(inode, at, len(data))

    def _dirty(self, inode: Inode, at: int, n: int) -> None:
        """Remember pmem bytes [at, at+n) as stored since the last fsync (persist_data flushes them)."""
        runs = inode.dirty_data
        if runs and runs[-1][0] + runs[-1][1] == at:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        elif len(runs) < 4096:
            runs.append((at, n))
        else:
            runs[0] = (0, self.region.size)  # too many runs to track: fsync persists the whole image

    def prealloc(self, ino: int, off: int, length: int, keep_size: bool = False) -> int:
        """fallocate(mode 0): unwritten extents over the holes of [off, off+length). Returns blocks."""
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV if stat.S_ISDIR(inode.mode) else errno.EINVAL)
        if off < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        if off + length > fmt.MAX_FILE_BLOCKS * BS:
            raise FsError(errno.EFBIG)
        ext = self._extents(inode)
        first, last = off // BS, (off + length - 1) // BS
        maps = [m for m in ext.iomap(first, last - first + 1) if m.state == HOLE]
        total = sum(m.len for m in maps)
        self._begin(total)
        tid = self.journal.running_tid
        for m in maps:
            lblk = m.lblk
            prev = ext.before(lblk)
            goal = prev.pblk + (lblk - prev.lblk) if prev is not None else 0
            for pblk, n in self.alloc.alloc_blocks(m.len, goal):
                ext.insert(lblk, n, pblk, UNWRITTEN)
                inode.blocks += n
                lblk += n
            inode.unstable.mark(m.lblk, m.lblk + m.len, tid)
        if not keep_size and off + length > inode.size:
            self._grow_size(inode, off + length)
            inode.size = off + length
        self._touch(inode, m=False)
        return total

    def punch(self, ino: int, off: int, length: int) -> int:
        """fallocate(PUNCH_HOLE | KEEP_SIZE): unmap the whole blocks inside [off, off+length) and zero
        the bytes of the partial blocks at its edges; i_size stays. Returns the blocks freed."""
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV if stat.S_ISDIR(inode.mode) else errno.EINVAL)
        if off < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        end = min(off + length, inode.size)
        if end <= off:
            return 0
        self._begin(freeing=True)
        lo, hi = -(-off // BS), end // BS  # whole blocks
        self._dax_revoke(inode, off // BS, -(-end // BS))
        ext = self._extents(inode)
        for a, b in ((off, min(end, lo * BS)), (max(off, hi * BS), end)):  # partial edge blocks
            if a < b:
                m = ext.iomap(a // BS, 1)[0]
                if m.state == WRITTEN:
                    self._store(inode, m.pblk * BS + a % BS, bytes(b - a))
        freed = 0
        if lo < hi:
            for pblk, n in ext.remove(lo, hi):
                self.alloc.free_blocks(pblk, n)
                inode.blocks -= n
                freed += n
            inode.unstable.mark(lo, hi, self.journal.running_tid)  # fdatasync must commit the unmapping
        self._touch(inode)
        return freed

    def fsync(self, ino: int, datasync: bool = False) -> int:
        """Persist the file's data and commit the journal; returns the committed tid."""
        self.persist_data(ino)
        return self.commit()

    def persist_data(self, ino: int) -> None:
        """Make the file's stored data durable against a host crash (msync of what it wrote)."""
        inode = self.inodes.cache.get(ino)
        runs = self._dax_written(ino)  # direct stores may land in these at any time: always flushed
        if inode is not None:
            runs += inode.dirty_data
            inode.dirty_data = []
        self.region.persist_ranges(runs)

    def needs_commit(self, ino: int, off: int, length: int) -> int:
        """MAP_SYNC rule for a write [off, off+length): the tid to commit first, 0 if none."""
        inode = self.inode(ino)
        if length <= 0:
            return 0
        return needs_commit(inode.unstable, off // BS, (off + length - 1) // BS + 1, self.committed_tid)

    def map(self, ino: int) -> list[tuple[IoMap, bool]]:
        """Every extent and hole up to EOF with its stability: what `daxfs map` prints."""
        inode = self.inode(ino)
        ext = self._extents(inode)
        nblocks = max((inode.size + BS - 1) // BS, ext.last_block())
        out = []
        for m in ext.iomap(0, nblocks) if nblocks else []:
            stable = m.state == HOLE or not inode.unstable.tid_for(m.lblk, m.lblk + m.len, self.committed_tid)
            out.append((m, stable))
        return out

    def unstable_blocks(self) -> int:
        return sum(i.unstable.count(self.committed_tid) for i in self.inodes.cache.values())

    # --- direct access (DAX faults) ----------------------------------------------------------------
    # A client maps file pages straight from the image (daxfs.dax) and asks for a page's block the
    # first time it touches it (faults.py carries the question). Every block handed out is pinned: a
    # block freed while some mapping may still store into it becomes reusable only at its last unpin.
    # Truncate, hole punch and the last unlink revoke the mappings of what they take away; a write
    # that gives a block to a page some mapping holds as the zero page marks that page stale.
    # dax_notify (set by the fault service) hears of both.

    def dax_map(self, ino: int, first: int, count: int, writable: bool) -> DaxMapping:
        inode = self.inode(ino)
        if not stat.S_ISREG(inode.mode):
            raise FsError(errno.ENODEV, "only regular files can be mapped")
        if writable and self.readonly:
            raise FsError(errno.EROFS)
        if first < 0 or count <= 0 or first + count > fmt.MAX_FILE_BLOCKS:
            raise FsError(errno.EINVAL, "the range is outside what a file can hold")
        m = DaxMapping(self._next_map, ino, first, count, writable)
        self._next_map += 1
        self.dax.setdefault(ino, []).append(m)
        return m

    def dax_unmap(self, m: DaxMapping) -> None:
        maps = self.dax.get(m.ino, [])
        if m in maps:
            maps.remove(m)
            if not maps:
                del self.dax[m.ino]
            for pblk in m.blocks.values():
                self._unpin(pblk)
            m.blocks.clear()

    def dax_mapped(self, ino: int) -> bool:
        """Does the file have a live (not revoked) direct mapping?"""
        return any(not m.revoked for m in self.dax.get(ino, ()))

    def dax_fault(self, m: DaxMapping, page: int, count: int, write: bool) -> tuple[list[tuple[int, int, int | None]], int]:
        """Fault file pages [page, page+count) of mapping m: runs (file page, pages, pmem block, None
        for the zero page) and the tid to commit before a MAP_SYNC mapping may store (0: none).

        A read fault maps written blocks and gives holes and unwritten blocks as the zero page,
        allocating nothing. A write fault makes the blocks written (_make_written: allocation or
        conversion, zeroed whole) and hands them out writable."""
        if m.revoked:
            raise FsError(errno.EFAULT, "the mapping was revoked (truncate, hole punch or unlink)")
        if not (m.first <= page and count > 0 and page + count <= m.first + m.count):
            raise FsError(errno.EINVAL, "pages outside the mapping")
        if write and not m.writable:
            raise FsError(errno.EACCES, "write fault on a read-only mapping")
        inode = self.inode(m.ino)
        if (page + count - 1) * BS >= inode.size:
            raise FsError(errno.EFAULT, f"page {page + count - 1} is beyond the end of the file (SIGBUS)")
        ext = self._extents(inode)
        tid = 0
        if write:
            self._make_written(inode, ext, page, page + count, page * BS, page * BS)
            self._touch(inode)
            tid = needs_commit(inode.unstable, page, page + count, self.committed_tid)
        runs: list[tuple[int, int, int | None]] = []
        for r in ext.iomap(page, count):
            if r.state != WRITTEN:
                m.holes.update(range(r.lblk, r.lblk + r.len))
                runs.append((r.lblk, r.len, None))
                continue
            for i in range(r.len):
                p, pblk = r.lblk + i, r.pblk + i
                m.holes.discard(p)
                m.stale.discard(p)
                if p not in m.blocks:
                    m.blocks[p] = pblk
                    self._pins[pblk] = self._pins.get(pblk, 0) + 1
                if write:
                    m.written.add(p)
            runs.append((r.lblk, r.len, r.pblk))
        return runs, tid

    def dax_take_stale(self, m: DaxMapping) -> list[int]:
        """The zero pages of m that have a block now (the client unmaps them to fault them again)."""
        stale, m.stale = sorted(m.stale), set()
        return stale

    def _dax_revoke(self, inode: Inode, lo: int, hi: int) -> None:
        for m in self.dax.get(inode.ino, ()):
            if not m.revoked and m.overlaps(lo, hi):
                m.revoked = True
                self.dax_notify(m)

    def _dax_filled(self, inode: Inode, lo: int, hi: int) -> None:
        for m in self.dax.get(inode.ino, ()):
            hit = [p for p in range(max(lo, m.first), min(hi, m.first + m.count)) if p in m.holes]
            if hit and not m.revoked:
                m.holes.difference_update(hit)
                m.stale.update(hit)
                self.dax_notify(m)

    def _dax_written(self, ino: int) -> list[tuple[int, int]]:
        return [(m.blocks[p] * BS, BS) for m in self.dax.get(ino, ()) for p in m.written if p in m.blocks]

    def _unpin(self, pblk: int) -> None:
        n = self._pins[pblk] - 1
        if n:
            self._pins[pblk] = n
            return
        del self._pins[pblk]
        if pblk in self._held:
            self._held.discard(pblk)
            self.alloc.release([(pblk, 1)])

    def _unpinned(self, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Freed runs that may become reusable now: pinned blocks are held back until unpinned."""
        if not self._pins or not runs:
            return runs
        pinned = sorted(self._pins)
        out = []
        for lo, n in runs:
            start, end = lo, lo + n
            i = bisect_left(pinned, lo)
            while i < len(pinned) and pinned[i] < end:
                b = pinned[i]
                if b > start:
                    out.append((start, b - start))
                self._held.add(b)
                start = b + 1
                i += 1
            if start < end:
                out.append((start, end - start))
        return out

    # --- extended attributes ----------------------------------------------------------------------
    def _xattr_blocks(self, inode: Inode) -> list[int]:
        self._xattrs(inode)
        return inode.xattr_blocks

    def _xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        if inode.xattrs is None:
            blob, inode.xattr_blocks = read_blob(self.journal, inode.xattr_head, inode.ino)
            inode.xattrs = _unpack_xattrs(blob, inode.ino)
        return inode.xattrs

    def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = self.inode(ino)
        if name == MAP_SYNC_XATTR:
            if inode.flags & fmt.FLAG_MAP_SYNC:
                return b"1"
            raise FsError(errno.ENODATA)
        try:
            return self._xattrs(inode)[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    def listxattr(self, ino: int) -> list[bytes]:
        inode = self.inode(ino)
        names = list(self._xattrs(inode))
        if inode.flags & fmt.FLAG_MAP_SYNC:
            names.append(MAP_SYNC_XATTR)
        return names

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        inode = self.inode(ino)
        if not name or len(name) > fmt.MAX_NAME:
            raise FsError(errno.ERANGE)
        if name == MAP_SYNC_XATTR:
            exists = bool(inode.flags & fmt.FLAG_MAP_SYNC)
            _check_xattr_flags(flags, exists)
            if value.strip() not in (b"0", b"1"):
                raise FsError(errno.EINVAL, "user.daxfs.map_sync takes 0 or 1")
            self._begin()
            inode.flags = (inode.flags & ~fmt.FLAG_MAP_SYNC) | (fmt.FLAG_MAP_SYNC if value.strip() == b"1" else 0)
            self._touch(inode, m=False)
            return
        xattrs = self._xattrs(inode)
        _check_xattr_flags(flags, name in xattrs)
        new = dict(xattrs)
        new[name] = bytes(value)
        self._store_xattrs(inode, new)

    def removexattr(self, ino: int, name: bytes) -> None:
        inode = self.inode(ino)
        if name == MAP_SYNC_XATTR:
            if not inode.flags & fmt.FLAG_MAP_SYNC:
                raise FsError(errno.ENODATA)
            self._begin()
            inode.flags &= ~fmt.FLAG_MAP_SYNC
            self._touch(inode, m=False)
            return
        xattrs = self._xattrs(inode)
        if name not in xattrs:
            raise FsError(errno.ENODATA)
        new = dict(xattrs)
        del new[name]
        self._store_xattrs(inode, new)

    def _store_xattrs(self, inode: Inode, xattrs: dict[bytes, bytes]) -> None:
        blob = _pack_xattrs(xattrs)
        if len(blob) > fmt.MAX_XATTR_BYTES:
            raise FsError(errno.ENOSPC, "extended attributes of one inode are limited to 64 KiB")
        self._begin(len(blob) // fmt.PAYLOAD + 1, freeing=len(xattrs) < len(inode.xattrs or {}))
        blocks = write_blob(self.journal, self.alloc.alloc_block, lambda b: self.alloc.free_blocks(b, 1),
                            inode.ino, inode.xattr_blocks, blob)
        inode.xattr_blocks = blocks
        inode.xattr_head = blocks[0] if blocks else 0
        inode.xattrs = xattrs
        self._touch(inode, m=False)

    # --- whole file system ------------------------------------------------------------------------
    def statfs(self) -> StatFs:
        sb = self.sb
        free = self.alloc.blocks.free_ondisk
        return StatFs(BS, sb.total_blocks - sb.data_start, free, max(0, free - RESERVE - SLACK),
                      sb.inode_count - fmt.FIRST_FREE_INO, self.alloc.inodes.free_ondisk)


def _check_name(name: bytes) -> None:
    if len(name) > fmt.MAX_NAME:
        raise FsError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FsError(errno.EINVAL)


def _check_xattr_flags(flags: int, exists: bool) -> None:
    if flags & XATTR_CREATE and exists:
        raise FsError(errno.EEXIST)
    if flags & XATTR_REPLACE and not exists:
        raise FsError(errno.ENODATA)


_XA = struct.Struct("<BI")


def _pack_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    out = bytearray()
    for name, value in xattrs.items():
        out += _XA.pack(len(name), len(value)) + name + value
    return bytes(out)


def _unpack_xattrs(blob: bytes, ino: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(blob):
        if pos + _XA.size > len(blob):
            raise CorruptImage(f"inode {ino}: truncated extended attribute")
        nl, vl = _XA.unpack_from(blob, pos)
        pos += _XA.size
        if nl == 0 or pos + nl + vl > len(blob):
            raise CorruptImage(f"inode {ino}: bad extended attribute lengths")
        out[blob[pos:pos + nl]] = blob[pos + nl:pos + nl + vl]
        pos += nl + vl
    return out


def _check_geometry(sb: fmt.Superblock, region: PmemRegion) -> None:
    """Refuse superblocks whose areas overlap or leave the image (a valid checksum is not enough)."""
    areas = [("journal", sb.journal_start, sb.journal_blocks), ("inode bitmap", sb.ibitmap_start, sb.ibitmap_blocks),
             ("block bitmap", sb.bitmap_start, sb.bitmap_blocks), ("inode table", sb.itable_start, sb.itable_blocks)]
    pos = 2
    for name, start, n in areas:
        if start != pos or n <= 0:
            raise CorruptImage(f"{region.path}: superblock geometry: {name} at {start}+{n}, expected at {pos}", 0)
        pos += n
    if sb.data_start != pos or sb.data_start >= sb.total_blocks:
        raise CorruptImage(f"{region.path}: superblock geometry: data at {sb.data_start}", 0)
    if sb.bitmap_blocks != fmt.blocks_for_bits(sb.total_blocks) or \
            sb.ibitmap_blocks != fmt.blocks_for_bits(sb.inode_count) or \
            sb.itable_blocks * fmt.INODES_PER_BLOCK < sb.inode_count or not (0 <= sb.journal_tail < sb.journal_blocks):
        raise CorruptImage(f"{region.path}: superblock geometry is inconsistent", 0)


def mkfs(path: str, size: int, inodes: int | None = None, journal_blocks: int | None = None,
         force: bool = False) -> fmt.Superblock:
    """Create a daxfs image at `path` (sparse, 0600)."""
    total = size // BS
    if total < 512:
        raise DaxfsError(f"size {size} is too small: daxfs needs at least 2 MiB")
    if journal_blocks is None:
        journal_blocks = min(16384, max(256, total // 64), total // 4)
        journal_blocks = max(journal_blocks, min_journal_blocks(total))
    if inodes is None:
        inodes = max(64, min(size // 16384, 0xFFFFFFFF))
    inodes = min(inodes, 0xFFFFFFFF)
    if journal_blocks < min_journal_blocks(total):
        raise DaxfsError(f"a {journal_blocks}-block journal is too small for {total} blocks: an operation may "
                         f"change every bitmap block; use at least {min_journal_blocks(total)}")
    ibitmap = fmt.blocks_for_bits(inodes)
    bitmap = fmt.blocks_for_bits(total)
    itable = (inodes + fmt.INODES_PER_BLOCK - 1) // fmt.INODES_PER_BLOCK
    data_start = 2 + journal_blocks + ibitmap + bitmap + itable
    if data_start + 16 > total:
        raise DaxfsError(f"size {size} is too small for {inodes} inodes and a {journal_blocks}-block journal")
    if os.path.exists(path) and not force:
        existing = os.path.getsize(path) if os.path.isfile(path) else -1
        if existing != 0:
            with open(path, "rb") as f:
                head = f.read(4)
            what = "a daxfs image" if head == fmt.MAGIC else "an existing file"
            raise DaxfsError(f"{path} is {what}; use --force to overwrite it")
    PmemRegion.create(path, size, force=True)
    region = PmemRegion(path)
    t = now_ns()
    sb = fmt.Superblock(version=fmt.VERSION, block_size=BS, total_blocks=total, generation=0,
                        state=fmt.STATE_CLEAN, flags=0, journal_start=2, journal_blocks=journal_blocks,
                        ibitmap_start=2 + journal_blocks, ibitmap_blocks=ibitmap,
                        bitmap_start=2 + journal_blocks + ibitmap, bitmap_blocks=bitmap,
                        itable_start=2 + journal_blocks + ibitmap + bitmap, itable_blocks=itable,
                        data_start=data_start, inode_count=inodes, journal_tail=0, journal_seq=1,
                        mkfs_time_ns=t, mount_count=0, uuid=os.urandom(16), last_mount_ns=0)
    # Bitmaps: metadata area and the reserved inodes 0 (none), 1 (root), 2 (orphans) in use.
    _write_bitmap(region, sb.bitmap_start, bitmap, total, data_start, fmt.K_BITMAP)
    _write_bitmap(region, sb.ibitmap_start, ibitmap, inodes, fmt.FIRST_FREE_INO, fmt.K_IBITMAP)
    uid, gid = os.getuid(), os.getgid()
    table = fmt.new_block(fmt.BlockHeader(fmt.K_INODES, self_blk=sb.itable_start))
    for ino, mode, parent in ((fmt.ROOT_INO, 0o40755, fmt.ROOT_INO), (fmt.ORPHAN_INO, 0o40700, fmt.ORPHAN_INO)):
        rec = Inode(ino, generation=1, mode=mode, uid=uid, gid=gid, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t,
                    parent=parent)
        _, off = fmt.inode_location(sb.itable_start, ino)
        table[off:off + fmt.INODE_FIXED] = rec.pack()
    region.store(sb.itable_start * BS, fmt.seal(table))
    region.persist(0, region.size)
    write_superblock(region, sb)  # generation 1 -> block 1
    write_superblock(region, sb)  # generation 2 -> block 0: both copies valid
    region.close()
    return sb


def min_journal_blocks(total_blocks: int) -> int:
    """Freeing a file may touch every bitmap block in one transaction, which must fit in half the
    journal (journal.max_txn_blocks), with room for the inode and directory blocks beside them."""
    return 2 * (fmt.blocks_for_bits(total_blocks) + 16) + 8


def _write_bitmap(region: PmemRegion, start: int, nblocks: int, nbits: int, used: int, kind: int) -> None:
    per = fmt.PAYLOAD * 8
    for i in range(nblocks):
        b = fmt.new_block(fmt.BlockHeader(kind, self_blk=start + i))
        lo, hi = i * per, min(nbits, (i + 1) * per)
        ones = max(0, min(used, hi) - lo)  # bits [lo, used) are in use
        full, rest = divmod(ones, 8)
        b[fmt.HEADER_SIZE:fmt.HEADER_SIZE + full] = b"\xff" * full
        if rest:
            b[fmt.HEADER_SIZE + full] = (1 << rest) - 1
        region.store((start + i) * BS, fmt.seal(b))
