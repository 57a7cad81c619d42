"""Group commit for the daemon: one journal commit serves every request that waits for it.

A sync-mode write to an unstable block must not be acknowledged before the journal has committed the
transaction that made the block unstable (syncrule.py decides which writes wait, and for which tid).
Callers await wait_commit(tid), jbd2's log_wait_commit:
  * if the journal already committed tid, return at once;
  * if a commit is being written, wait for it, then look again: a request that arrived while a
    commit was in flight is served by the next single commit, together with all that arrived with it;
  * otherwise start the commit of the running transaction and write it on a worker thread, so that requests that
    need no commit go on being served while the journal I/O (and its msync) runs. A small
    transaction on a RAM-backed image is written inline instead: there the whole commit (~45 µs)
    costs less than handing it to a thread (~55 µs), and it holds the loop no longer than one
    ordinary request does.

Metadata changes stay on the trio thread (the engine is single-threaded); only the frozen
transaction's I/O leaves it.
"""

from __future__ import annotations

import time

import trio

from daxfs.engine.fs import FileSystem
from daxfs.daemon.session import detach
from daxfs.daemon.stats import DaemonStats


INLINE_BLOCKS = 16


class Committer:
    def __init__(self, fs: FileSystem, stats: DaemonStats) -> None:
        self.fs = fs
        self.stats = stats
        self._idle = trio.Event()
        self._idle.set()

    async def wait_commit(self, tid: int | None = None) -> None:
        """Return once every change up to `tid` (default: everything so far) is committed."""
        target = self.fs.journal.running_tid if tid is None else tid
        while self.fs.committed_tid < target:
            if not self._idle.is_set():
                await detach()  # a FUSE request: the session loop goes on reading the next ones
                await self._idle.wait()
                continue
            txn = self.fs.start_commit()
            if txn is None:
                return  # the running transaction is empty: everything before it is committed
            self._idle = trio.Event()
            t0 = time.perf_counter()
            try:
                if len(txn.blocks) <= INLINE_BLOCKS and (self.fs.region.on_ram or not self.fs.region.durable):
                    self.fs.journal.write_commit(txn)
                else:
                    await detach()
                    await trio.to_thread.run_sync(self.fs.journal.write_commit, txn)
                self.fs.finish_commit(txn)
                self.stats.commit_done(time.perf_counter() - t0)
            finally:
                self._idle.set()

    async def commit_periodically(self, interval: float) -> None:
        """Normal mode: commit every `interval` seconds whatever has changed."""
        while True:
            await trio.sleep(interval)
            await self.wait_commit()
