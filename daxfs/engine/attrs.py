"""Attributes: setattr (mode, owner, times, size) and truncate, stepwise where a file is large.

A truncate that removes more extents than one transaction may hold is cut in steps, as ext4 does:
i_size and an orphan entry commit first, the extents then go from the end one transaction at a
time, and the orphan entry goes with the last step; a crash between steps leaves the orphan entry,
and the next open finishes the cut (fs.FileSystem's orphan pass).
"""

from __future__ import annotations

import errno
import stat
from typing import Callable

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, now_ns
from daxfs.engine.errors import FsError
from daxfs.engine.inode import Inode, clamp_time
from daxfs.engine.ranges import Ranges

KEEP_ID = 0xFFFFFFFF  # chown's "leave this id as it is" (-1)
BITMAP_MARGIN = 64  # journal blocks a truncate step leaves for the rest of its transaction


def setid_to_drop(mode: int, in_group: Callable[[], bool], capable: Callable[[], bool],
                  owner_change: bool = False) -> int:
    """The setid bits Linux's VFS clears when a file's data or size (or, owner_change, its owner)
    changes, as setattr_should_drop_suidgid and chown do: S_ISUID; S_ISGID if the file is group-
    executable, or if the caller is neither in the file's group (in_group) nor has CAP_FSETID
    (capable); for a data or size change, nothing when the caller has CAP_FSETID. Only regular files
    (any non-directory for an owner change). in_group and capable are asked only when they matter."""
    if not mode & (stat.S_ISUID | stat.S_ISGID):
        return 0
    if not (stat.S_ISREG(mode) or (owner_change and not stat.S_ISDIR(mode))):
        return 0
    drop = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not (in_group() or capable())):
        drop |= stat.S_ISGID
    if drop and not owner_change and capable():
        return 0
    return drop


class Attributes(Ranges):
    def kill_setid(self, ino: int, in_group: Callable[[int], bool], capable: Callable[[], bool],
                   owner_change: bool = False) -> bool:
        """Clear the setid bits setid_to_drop() names (in_group gets the file's gid), before a write,
        truncate, fallocate or chown by that caller; True if the mode changed."""
        inode = self.inode(ino)
        drop = setid_to_drop(inode.mode, lambda: in_group(inode.gid), capable, owner_change)
        if drop:
            self.setattr(ino, mode=inode.mode & 0o7777 & ~drop)
        return bool(drop)


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
        if uid is not None and uid != KEEP_ID:
            inode.uid = uid
        if gid is not None and gid != KEEP_ID:
            inode.gid = gid
        v = self.sb.version
        if atime_ns is not None:
            inode.atime_ns = clamp_time(atime_ns, v)
        if mtime_ns is not None:
            inode.mtime_ns = clamp_time(mtime_ns, v)
        inode.ctime_ns = clamp_time(ctime_ns, v) if ctime_ns is not None else now_ns()
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
        self._dax_zap()

    def _truncate_down(self, inode: Inode, size: int) -> None:
        """Unmap everything past `size`, in steps if it takes more than one transaction (module doc)."""
        keep = (size + BS - 1) // BS
        self._dax_revoke(inode, size, fmt.MAX_FILE_BLOCKS * BS)
        ext = self._extents(inode)
        budget = max(16, self.journal.max_txn_blocks - self.sb.bitmap_blocks - BITMAP_MARGIN)
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

