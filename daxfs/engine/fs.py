"""The file system: open (replay, orphans), close, and the whole-file-system queries. No FUSE here.

FileSystem is the top of the engine's layers, each a module with one job that adds to the one below
(daxfs/engine/__init__.py lists them): core (transactions, space, per-inode structures) -> mappings
(direct mappings and pins) -> data (read, write) -> ranges (fallocate, SEEK_DATA/SEEK_HOLE,
copy_file_range) -> attrs (setattr, truncate) -> xattr -> namespace (names, links, orphans) -> fault (direct-access faults) -> fs (this).

The MAP_SYNC rule's engine side is tid_to_commit() here, over unstable.py's tid_to_commit: the one
question every acknowledgement asks (the daemon's write path, O_SYNC/O_DSYNC, fdatasync, faults).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, RESERVE, SLACK, now_ns
from daxfs.engine.errors import CorruptImage, DaxfsError, FsError
from daxfs.engine.extent import HOLE, IoMap
from daxfs.engine.fault import Faults
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.recovery import replay
from daxfs.engine.superblock import check_geometry, read_superblock, write_superblock
from daxfs.engine.unstable import datasync_tid, tid_to_commit


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


class FileSystem(Faults):
    def __init__(self, region: PmemRegion, readonly: bool = False) -> None:
        sb = read_superblock(region)
        check_geometry(sb, region)
        was_dirty = sb.state != fmt.STATE_CLEAN
        replayed = 0
        if not readonly:
            replayed = len(replay(region, sb).transactions)
        elif was_dirty:
            raise DaxfsError(f"{region.path}: was not unmounted cleanly; mount it read-write once to replay "
                             "its journal")
        super().__init__(region, sb, readonly)
        self._check_reserved()
        orphans = 0
        if not readonly:
            orphans = self._free_orphans()
            sb.state = fmt.STATE_DIRTY
            sb.mount_count += 1
            sb.last_mount_ns = now_ns()
            self.commit()  # orphan frees, before the superblock says "in use"
            write_superblock(region, sb)
        self.open_report = OpenReport(replayed, orphans, was_dirty)

    def _check_reserved(self) -> None:
        """The root and orphan directories must be there, or nothing else can be trusted."""
        for ino, what in ((fmt.ROOT_INO, "root directory"), (fmt.ORPHAN_INO, "orphan directory")):
            try:
                inode = self.inode(ino)
            except FsError:
                raise CorruptImage(f"{self.region.path}: the {what} (inode {ino}) is marked free; "
                                   "run daxfs fsck") from None
            if not stat.S_ISDIR(inode.mode):
                raise CorruptImage(f"{self.region.path}: the {what} (inode {ino}) is not a directory; "
                                   "run daxfs fsck")

    @classmethod
    def open(cls, path: str, readonly: bool = False, durable: bool = True) -> "FileSystem":
        return cls(PmemRegion(path, writable=not readonly, durable=durable), readonly)

    def close(self) -> None:
        """Commit, checkpoint, mark clean. After a daemon kill this never runs: replay does its work."""
        if not self.readonly:
            self._save_lazy()
            self.checkpoint()
            self.sb.state = fmt.STATE_CLEAN
            write_superblock(self.region, self.sb)
        self.region.close()

    def remount(self, readonly: bool) -> None:
        """mount -o remount,ro / rw. Read-only: commit, checkpoint, mark clean, and take writable direct
        mappings away, so that the image on pmem is complete and nothing changes it; read-write: the
        image is in use again (state dirty until the next clean unmount)."""
        if readonly == self.readonly:
            return
        if readonly:
            self._save_lazy()
            self.checkpoint()
            for maps in self.dax.values():
                for m in maps:
                    if m.writable and not m.revoked:
                        m.revoked = True
                        self.dax_notify(m)
            self.readonly = True
            self.sb.state = fmt.STATE_CLEAN
        else:
            if not self.region.writable:
                raise DaxfsError(f"{self.region.path}: mounted read-only from the start; unmount it and mount it "
                                 "read-write")
            self.readonly = False
            self.sb.state = fmt.STATE_DIRTY
        write_superblock(self.region, self.sb)

    # --- durability and the MAP_SYNC rule ---------------------------------------------------------
    def tid_to_commit(self, ino: int, off: int, length: int) -> int:
        """The MAP_SYNC rule (unstable.tid_to_commit) for bytes [off, off+length) of a file: the tid to
        commit before a write to them may be acknowledged in sync mode; 0 if none."""
        if length <= 0:
            return 0
        return tid_to_commit(self.inode(ino).unstable, off // BS, (off + length - 1) // BS + 1,
                             self.committed_tid)

    def sync_tid(self, ino: int, datasync: bool) -> int:
        """What fsync (datasync: fdatasync) of a file must commit: fdatasync the metadata that finds
        its data (mappings, i_size; 0 when all is stable), fsync everything changed so far."""
        if datasync:
            return datasync_tid(self.inode(ino).unstable, self.committed_tid)
        if not self.readonly:
            self._save_lazy(ino)  # fsync writes lazytime's timestamps too, as ext4's does
        return self.journal.running_tid

    def fsync(self, ino: int, datasync: bool = False) -> int:
        """Persist the file's data and commit what sync_tid says, synchronously; returns the committed tid."""
        self.persist_data(ino)
        if self.sync_tid(ino, datasync) > self.committed_tid:
            self.commit()
        return self.committed_tid

    def map(self, ino: int) -> list[tuple[IoMap, bool]]:
        """Every extent and hole up to EOF with its stability: what `daxfs map` prints."""
        inode = self.inode(ino)
        ext = self._extents(inode)
        nblocks = max((inode.size + BS - 1) // BS, ext.last_block())
        out = []
        for m in ext.iomap(0, nblocks) if nblocks else []:
            stable = m.state == HOLE or not tid_to_commit(inode.unstable, m.lblk, m.lblk + m.len, self.committed_tid)
            out.append((m, stable))
        return out

    def unstable_blocks(self) -> int:
        return sum(i.unstable.count(self.committed_tid) for i in self.inodes.cache.values())

    def statfs(self) -> StatFs:
        sb = self.sb
        free = self.alloc.blocks.free_ondisk
        return StatFs(BS, sb.total_blocks - sb.data_start, free, max(0, free - RESERVE - SLACK),
                      sb.inode_count - fmt.FIRST_FREE_INO, self.alloc.inodes.free_ondisk)
