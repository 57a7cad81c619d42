"""Helpers shared by the test suites, one module (tests/ is on sys.path: pyproject's pythonpath).

  engine   small images, crashes without close, errno of a failing call (engine/ and testing/ tests);
  images   editing one on-image structure of a closed image, re-sealed (fsck, corruption, CLI tests);
  mounts   the `daxfs` command, real mounts, running code as another user (daemon/, dax/, cli/ tests).
The fixtures are in conftest.py. Mounts themselves come from daxfs.testing, which users' tests use too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import stat
import subprocess
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from daxfs import testing
from daxfs.engine import format as fmt
from daxfs.engine.crashpoint import PowerCut
from daxfs.engine.errors import FsError
from daxfs.engine.fs import FileSystem
from daxfs.engine.fsck import check
from daxfs.engine.inode import Inode
from daxfs.engine.mkfs import mkfs
from daxfs.engine.mounttab import mount_entry  # noqa: F401 (the tests use it from here)
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.superblock import read_superblock
from daxfs.testing import DAXFS, Mount, is_mounted, pid_alive, wait_dead  # noqa: F401 (the tests use them from here)

BS = fmt.BLOCK_SIZE
MiB = 1 << 20
SHM = "/dev/shm"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout under test
ROOT = fmt.ROOT_INO
BITS_PER_BLOCK = fmt.PAYLOAD * 8


# === engine ===========================================================================================
def image_dir(tmp_path) -> str:
    """/dev/shm when it is there (RAM: msync is cheap, sparse images cost nothing), else tmp_path."""
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else str(tmp_path)


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


# === images ===========================================================================================
@dataclass
class Tree:
    """Inode numbers of the populated template."""
    d: int  # directory with 20 files: two directory chain blocks
    sub: int  # d/sub
    big: int  # 6 extents: an extent chain block
    small: int  # one written block, also linked as "hard"
    link: int  # symlink
    pre: int  # preallocated (unwritten) extent
    xa: int  # 5000-byte xattr: two xattr chain blocks
    fifo: int


def populate(f: FileSystem) -> Tree:
    d = f.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    for i in range(20):
        f.create(d, b"f%d" % i, 0o644, 0, 0)
    sub = f.mkdir(d, b"sub", 0o755, 0, 0).ino
    big = f.create(ROOT, b"big", 0o644, 0, 0).ino
    for i in range(6):  # every other block: no two extents can merge
        f.write(big, 2 * i * BS, b"B" * BS)
    small = f.create(ROOT, b"small", 0o644, 0, 0).ino
    f.write(small, 0, b"small file")
    f.link(small, d, b"hard")
    link = f.symlink(ROOT, b"sl", b"/some/target", 0, 0).ino
    pre = f.create(ROOT, b"pre", 0o644, 0, 0).ino
    f.prealloc(pre, 0, 64 * 1024)
    xa = f.create(ROOT, b"xa", 0o644, 0, 0).ino
    f.setxattr(xa, b"user.big", b"v" * 5000)
    fifo = f.create(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0).ino
    return Tree(d, sub, big, small, link, pre, xa, fifo)


def make_template(path: str, size: int = 16 * MiB) -> Tree:
    mkfs(path, size)
    f = FileSystem.open(path, durable=False)
    tree = populate(f)
    f.close()
    return tree


def superblock(path: str) -> fmt.Superblock:
    region = PmemRegion(path, writable=False)
    try:
        return read_superblock(region)
    finally:
        region.close()


def load(path: str, blkno: int) -> bytearray:
    with open(path, "rb") as f:
        f.seek(blkno * BS)
        return bytearray(f.read(BS))


def store(path: str, blkno: int, data: bytes | bytearray) -> None:
    with open(path, "r+b") as f:
        f.seek(blkno * BS)
        f.write(data)


def edit(path: str, blkno: int, change: Callable[[bytearray], None], reseal: bool = True) -> None:
    """Change a block and (by default) seal it again, so that its checksum stays valid."""
    b = load(path, blkno)
    change(b)
    store(path, blkno, fmt.seal(b) if reseal else b)


def flip(path: str, blkno: int, off: int) -> None:
    edit(path, blkno, lambda b: b.__setitem__(off, b[off] ^ 0xFF), reseal=False)


def inode_at(path: str, ino: int) -> tuple[int, int]:
    return fmt.inode_location(superblock(path).itable_start, ino)


def record(path: str, ino: int) -> Inode:
    blk, off = inode_at(path, ino)
    return Inode.unpack(load(path, blk), off, superblock(path).version)


def edit_inode(path: str, ino: int, /, **changes: int) -> None:
    blk, off = inode_at(path, ino)
    version = superblock(path).version

    def change(b: bytearray) -> None:
        rec = Inode.unpack(b, off, version)
        for k, v in changes.items():
            setattr(rec, k, v)
        fixed, nsec = rec.pack(version)
        b[off:off + fmt.INODE_FIXED] = fixed
        b[off + fmt.INODE_NSEC_OFFSET:off + fmt.INODE_NSEC_OFFSET + fmt.INODE_NSEC.size] = nsec
    edit(path, blk, change)


def extent_slot(path: str, ino: int, i: int = 0) -> tuple[int, int]:
    """(block, offset) of inline extent slot i."""
    blk, off = inode_at(path, ino)
    return blk, off + fmt.INODE_FIXED + i * fmt.EXTENT_SIZE


def edit_extent(path: str, ino: int, i: int = 0, **changes: int) -> None:
    blk, off = extent_slot(path, ino, i)

    def change(b: bytearray) -> None:
        state, ln, lblk, pblk, res = fmt.EXTENT.unpack_from(b, off)
        e = dict(state=state, len=ln, lblk=lblk, pblk=pblk) | changes
        fmt.EXTENT.pack_into(b, off, e["state"], e["len"], e["lblk"], e["pblk"], res)
    edit(path, blk, change)


def extent(path: str, ino: int, i: int = 0) -> tuple[int, int, int, int]:
    blk, off = extent_slot(path, ino, i)
    return fmt.EXTENT.unpack_from(load(path, blk), off)[:4]


def dirent_slot(path: str, d: int, name: bytes) -> tuple[int, int]:
    blk = record(path, d).dirent_head
    while blk:
        b = load(path, blk)
        for i in range(fmt.slots_per_block(fmt.DIRENT_SIZE)):
            off = fmt.HEADER_SIZE + i * fmt.DIRENT_SIZE
            ino, _, n, _, raw = fmt.DIRENT.unpack_from(b, off)
            if ino and raw[:n] == name:
                return blk, off
        blk = fmt.read_header(b, blk).next
    raise KeyError(name)


def edit_dirent(path: str, d: int, name: bytes, ino: int | None = None, dtype: int | None = None,
                new_name: bytes | None = None) -> None:
    blk, off = dirent_slot(path, d, name)

    def change(b: bytearray) -> None:
        old_ino, old_type, _, _, _ = fmt.DIRENT.unpack_from(b, off)
        nm = name if new_name is None else new_name
        fmt.DIRENT.pack_into(b, off, old_ino if ino is None else ino, old_type if dtype is None else dtype,
                             len(nm), 0, nm)
    edit(path, blk, change)


def set_bit(path: str, start: int, bit: int, value: bool) -> None:
    blk, i = start + bit // BITS_PER_BLOCK, bit % BITS_PER_BLOCK
    off = fmt.HEADER_SIZE + i // 8

    def change(b: bytearray) -> None:
        b[off] = b[off] | (1 << i % 8) if value else b[off] & ~(1 << i % 8)
    edit(path, blk, change)


def problems(path: str) -> list[str]:
    report = check(path)
    assert report.clean == (not report.problems)
    return [str(p) for p in report.problems]


def only(path: str, *fragments: str) -> list[str]:
    """Assert that every problem mentions one of the fragments and every fragment is reported."""
    found = problems(path)
    for frag in fragments:
        assert any(frag in p for p in found), (frag, found)
    for p in found:
        assert any(frag in p for frag in fragments), (p, fragments)
    return found


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- clean images -----------------------------------------------------------------------------------


def crashed_with_transactions(path: str, n: int) -> list[int]:
    """An image killed with n committed transactions in its journal; returns their commit blocks."""
    mkfs(path, 16 * MiB)
    f = FileSystem.open(path, durable=False)
    for i in range(n):
        f.create(ROOT, b"t%d" % i, 0o644, 0, 0)
        f.commit()
    f.region.close()
    sb = superblock(path)
    commits = []
    for blkno in range(sb.journal_start, sb.journal_start + sb.journal_blocks):
        b = load(path, blkno)
        if b[:4] == fmt.MAGIC and fmt.HEADER.unpack_from(b)[1] == fmt.K_JCOMMIT:  # images carry their home's number
            commits.append(blkno)
    assert len(commits) >= n
    return commits[-n:]


# === mounts ===========================================================================================
def daxfs(*args, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    """Run `daxfs ARGS...`; returns the CompletedProcess (text stdout/stderr)."""
    return testing.run(*args, timeout=timeout, check=check)


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: non-zero exit, exactly one line on stderr starting with 'daxfs: ', no traceback."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {p.stderr!r} (stdout {p.stdout!r})"
    assert lines[0].startswith("daxfs: "), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def new_mount(directory, size: str = "64M", mkfs_args=(), name: str = "img") -> Mount:
    """mkfs an image in `directory` and make a mount point beside it (not mounted yet)."""
    return Mount.create(directory, size, "", name, mkfs_args)


@contextlib.contextmanager
def mounted(directory, opts: str = "", size: str = "64M", mkfs_args=(), name: str = "img"):
    """A fresh image mounted in `directory`; unmounted and fsck'ed at the end (fails if not clean)."""
    try:
        with testing.mounted(directory, opts, size, mkfs_args, name) as m:
            yield m
    except testing.CheckFailed as e:
        pytest.fail(str(e), pytrace=False)


# --- running code as another user ---------------------------------------------------------------------
def as_user(fn, *args, uid: int = 65534, gid: int = 65534, cwd=None):
    """Run fn(*args) in a forked child with uid/gid (no supplementary groups), in directory cwd (entered
    while still root: pytest's tmp dirs are 0700, so the child could not walk there itself; use paths
    relative to cwd). Returns what fn returned; an OSError it raised is raised again here (same errno),
    anything else becomes an AssertionError."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                if cwd is not None:
                    os.chdir(cwd)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                result = ("ok", fn(*args))
            except OSError as e:
                result = ("oserror", (e.errno, e.strerror, e.filename))
            except BaseException:
                result = ("error", traceback.format_exc())
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"child exited without a result (status {status})")
    kind, value = pickle.loads(data)
    if kind == "ok":
        return value
    if kind == "oserror":
        raise OSError(*value)
    raise AssertionError(f"child failed:\n{value}")


def errno_of(fn, *args, **kw) -> int:
    """The errno fn raises (0 if it returns)."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def errno_as_user(fn, *args, uid: int = 65534, gid: int = 65534, cwd=None) -> int:
    try:
        as_user(fn, *args, uid=uid, gid=gid, cwd=cwd)
    except OSError as e:
        return e.errno
    return 0


# --- file content helpers -------------------------------------------------------------------------------
def pattern(seed: int, n: int) -> bytes:
    """n bytes that depend on seed and on the position (cheap, no two blocks of a file alike)."""
    import hashlib

    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.blake2b(b"%d:%d" % (seed, i), digest_size=64).digest() * 64  # 4 KiB
        i += 1
    return bytes(out[:n])


# fallocate(2) modes (linux/falloc.h); os has only posix_fallocate
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE = 0x01, 0x02, 0x08
FALLOC_FL_ZERO_RANGE, FALLOC_FL_INSERT_RANGE = 0x10, 0x20
_libc = None


def fallocate(fd: int, mode: int, off: int, length: int) -> None:
    """fallocate(2) through libc; raises OSError as os functions do."""
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def crash_under(m, child: subprocess.Popen) -> tuple[str, str]:
    """SIGKILL m's daemon while `child` (a program holding direct mappings) waits for a line on its
    stdin; give its watch thread time to see the daemon go, then let it go on. Its stdout and stderr."""
    m.crash()
    time.sleep(0.5)
    child.stdin.write("\n")
    child.stdin.flush()
    return child.communicate(timeout=60)


def fresh_dir(m, mode: int = 0o755) -> str:
    """A new directory of a unique name on a mount that several tests share: one test's own."""
    path = os.path.join(m.mnt, "t-" + uuid.uuid4().hex[:8])
    os.mkdir(path)
    os.chmod(path, mode)
    return path


def j(*parts) -> str:
    return os.path.join(*parts)


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data: bytes, mode: int = 0o644, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def wait_until(cond, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll cond() until it is true (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


