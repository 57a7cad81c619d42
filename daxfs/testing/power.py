"""CrashRegion: an emulated pmem region that cuts the power, for engine-level crash tests.

A PmemRegion stands for persistent memory (daxfs.engine.pmem): store() is visible at once, persist()
makes it durable, fence() orders. CrashRegion keeps track of what was stored but never persisted, and
at a power cut gives those pages back the contents they had when last persisted: the worst a power
failure can do to a store nobody flushed. The power-cut property test and the bounded power-failure
enumeration (tests/testing/) drive the engine over it; your own engine-level tests can too:

    from daxfs.engine.fs import FileSystem
    from daxfs.testing.power import CrashRegion, PowerCut

    region = CrashRegion(image, lose_unpersisted=True)
    fs = FileSystem(region)
    region.arm_cut(10)            # PowerCut after the 10th store from now
"""

from __future__ import annotations

from daxfs.engine import format as fmt
from daxfs.engine.crashpoint import PowerCut
from daxfs.engine.pmem import PAGE, PmemRegion

__all__ = ["CrashRegion", "PowerCut"]


class CrashRegion(PmemRegion):
    """A PmemRegion that can cut the power.

    * cut_after: raise PowerCut right after the cut_after-th store()/zero() from now (arm_cut()).
    * lose_unpersisted: at a cut, every page stored since it was last persisted gets back the contents it
      had when it was last persisted: the worst a power cut can do to a store nobody msync'ed.
    * on_commit_record: called after a journal commit record was stored (the harness uses it to learn
      which model state the journal now holds).
    * cut_at_fence: raise PowerCut at the n-th ordering point (fence()) from now; `lose` then names the
      pages whose unpersisted stores are lost (default: all of them, if lose_unpersisted). `fences`
      records, for every fence passed, which pages held unpersisted stores there.

    persist() only records durability (no msync: the image is on tmpfs, and the bookkeeping is the point).
    """

    def __init__(self, path: str, lose_unpersisted: bool = False) -> None:
        super().__init__(path, writable=True, durable=True)
        self.lose_unpersisted = lose_unpersisted
        self.saved: dict[int, bytes] = {}  # page -> contents at its last persist
        self.stores = 0
        self.cut_at: int | None = None
        self.on_commit_record = None
        self.cut = False
        self.cut_at_fence: int | None = None
        self.lose: set[int] | None = None
        self.fences: list[frozenset[int]] = []

    def arm_cut(self, k: int) -> None:
        self.cut_at = self.stores + k

    def _before(self, off: int, n: int) -> None:
        if self.cut:
            raise PowerCut("store after the power was cut")
        if self.lose_unpersisted and n > 0:
            for page in range(off // PAGE, (off + n - 1) // PAGE + 1):
                if page not in self.saved:
                    self.saved[page] = self.mem[page * PAGE:(page + 1) * PAGE].tobytes()

    def _after(self, off: int, data) -> None:
        self.stores += 1
        if (self.on_commit_record is not None and len(data) == fmt.BLOCK_SIZE and bytes(data[:4]) == fmt.MAGIC
                and fmt.header_kind(data) == fmt.K_JCOMMIT):
            self.on_commit_record()
        if self.cut_at is not None and self.stores >= self.cut_at:
            self.power_off()
            raise PowerCut(f"after store {self.stores}")

    def store(self, off, data) -> None:
        self._before(off, len(data))
        super().store(off, data)
        self._after(off, data)

    def zero(self, off: int, n: int) -> None:
        self._before(off, n)
        super().zero(off, n)
        self._after(off, b"")

    def persist(self, off: int, n: int) -> None:
        if n <= 0 or not self.saved:
            return
        start = off - off % PAGE
        for page in range(start // PAGE, (min(self.size, off + n) - 1) // PAGE + 1):
            self.saved.pop(page, None)

    def fence(self) -> None:
        self.fences.append(frozenset(self.saved))
        if self.cut_at_fence is not None and len(self.fences) >= self.cut_at_fence:
            self.power_off()
            raise PowerCut(f"at fence {len(self.fences)}")

    def power_off(self) -> None:
        """Lose what was never persisted (if asked to: all of it, or the pages in `lose`); later stores
        raise PowerCut."""
        if self.cut:
            return
        self.cut = True
        self.cut_at = self.cut_at_fence = None
        for page, old in self.saved.items():
            if self.lose is None or page in self.lose:
                self.mem[page * PAGE:page * PAGE + len(old)] = memoryview(old)
        self.saved.clear()

    def close(self) -> None:
        # PmemRegion.close() msyncs the whole image: an orderly close persists every store. A crash is
        # power_off() first.
        self.saved.clear()
        super().close()
