"""Shared fixtures for the engine tests: small images in /dev/shm, crash helpers, a crash-simulating region.

A "crash" here is what a killed daemon or a power cut leaves behind: the image file as the region had
stored it (CrashRegion can also throw away whatever was never persisted), reopened without
FileSystem.close() having run.
"""

from __future__ import annotations

import os
import uuid

import pytest

from daxfs import crashpoint
from daxfs import format as fmt
from daxfs.crashpoint import PowerCut
from daxfs.errors import FsError
from daxfs.fs import FileSystem, mkfs
from daxfs.pmem import PAGE, PmemRegion

MiB = 1 << 20
SHM = "/dev/shm"


def image_dir(tmp_path) -> str:
    """/dev/shm when it is there (RAM: msync is cheap, sparse images cost nothing), else tmp_path."""
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else str(tmp_path)


@pytest.fixture
def new_image(tmp_path):
    """Factory: new_image(size=16 MiB, **mkfs options) -> path of a fresh image, removed afterwards."""
    made: list[str] = []

    def make(size: int = 16 * MiB, **kw) -> str:
        path = os.path.join(image_dir(tmp_path), f"daxfs-test-{uuid.uuid4().hex}.img")
        made.append(path)
        mkfs(path, size, **kw)
        return path

    yield make
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def image(new_image) -> str:
    return new_image()


@pytest.fixture
def fs(image):
    """A mounted 16 MiB file system; closed cleanly at the end unless the test crashed it."""
    f = FileSystem.open(image, durable=False)
    yield f
    if f.region.mem is not None:
        f.close()


@pytest.fixture(autouse=True)
def _disarm_crashpoints():
    # An armed point that a test did not reach must not fire in the next test.
    crashpoint.disarm_all()
    yield
    crashpoint.disarm_all()


def crash(f: FileSystem) -> None:
    """A daemon kill: unmap the image without commit, checkpoint or the clean flag."""
    f.region.close()


def reopen(path: str) -> FileSystem:
    return FileSystem.open(path, durable=False)


def power_cut(_name: str = "") -> None:
    """Crash point action of the unit tests."""
    raise PowerCut(_name)


def err(fn, *args, **kw) -> int:
    """The errno of the FsError fn raises (it must raise one)."""
    with pytest.raises(FsError) as e:
        fn(*args, **kw)
    return e.value.errno


def mkfile(f: FileSystem, name: bytes, data: bytes = b"", parent: int = fmt.ROOT_INO, mode: int = 0o644) -> int:
    ino = f.create(parent, name, mode, 0, 0).ino
    if data:
        f.write(ino, 0, data)
    return ino


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
                and int.from_bytes(bytes(data[4:6]), "little") == fmt.K_JCOMMIT):
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
