"""The MAP_SYNC rule, daemon side: which writes are synchronous, and commit before acknowledging them.

The seed's fault handler, for a write to a synchronous mapping whose block mapping is dirty, calls
fdatasync for the range and only then makes the page writable (VM_FAULT_NEEDDSYNC). daxfs splits the
same rule in two: the engine names the transaction that must be durable first
(FileSystem.tid_to_commit for a range, FileSystem.sync_tid for fsync/fdatasync; unstable.py holds the
rule itself), and this module decides when to ask and waits for the answer:

  is_sync(ino, asked)      is this write synchronous? -o map_sync for the whole mount, the file's
                           user.daxfs.map_sync flag, or the request's own asking (a handle opened
                           O_SYNC/O_DSYNC, a MAP_SYNC mapping). The one place that decides it.
  commit_before_ack(tid)   the action: wait until tid is committed (group commit, committer.py);
                           returns whether it had to wait. A write to stable blocks (tid 0) never does.

Callers: FUSE write() (and so O_SYNC/O_DSYNC writes), fsync and fdatasync, and the write faults of
direct mappings (faults.py).
"""

from __future__ import annotations

from daxfs.daemon.committer import Committer
from daxfs.engine import format as fmt
from daxfs.engine.fs import FileSystem


class SyncRule:
    def __init__(self, fs: FileSystem, committer: Committer, map_sync: bool) -> None:
        self.fs = fs
        self.committer = committer
        self.map_sync = map_sync

    def is_sync(self, ino: int, asked: bool = False) -> bool:
        return asked or self.map_sync or bool(self.fs.inode(ino).flags & fmt.FLAG_MAP_SYNC)

    async def commit_before_ack(self, tid: int) -> bool:
        if not tid or self.fs.committed_tid >= tid:
            return False
        await self.committer.wait_commit(tid)
        return True
