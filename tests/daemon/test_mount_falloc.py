"""fallocate(2), lseek SEEK_DATA/SEEK_HOLE and copy_file_range(2) through real mounts.

pyfuse3 cannot receive these; the daemon's C shim (daxfs/daemon/fuseshim.c) adds them to libfuse's
operations table. If a pyfuse3 or libfuse upgrade stops the shim from being interposed, the first
test here says so in those words, and the others fail with EOPNOTSUPP.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess

import pytest
from helpers import (BS, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE,
                     FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, MiB, daxfs, fallocate, pattern, read_file,
                     write_file)

pytestmark = pytest.mark.mount

KEEP, PUNCH, ZERO = FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE


@contextlib.contextmanager
def opened(path, flags: int = os.O_RDWR | os.O_CREAT):
    fd = os.open(path, flags, 0o644)
    try:
        yield fd
    finally:
        with contextlib.suppress(OSError):  # a killed daemon: close fails, the fd is gone all the same
            os.close(fd)


def rows(path) -> list[tuple[int, int, str, bool]]:
    """`daxfs map`'s extents: (first block, blocks, state, stable)."""
    d = json.loads(daxfs("map", path, "--json", check=True).stdout)
    return [(e[0], e[1], e[3], e[4]) for e in d["extents"]]


def requests(m) -> dict[str, int]:
    return m.stats()["requests"]


def test_the_shim_is_in_the_session(daxmount):
    m = daxmount()
    assert m.stats()["fuse_shim"] is True, (
        "pyfuse3 did not create its FUSE session through daxfs's shim: fallocate, SEEK_DATA/SEEK_HOLE and "
        "copy_file_range are not served (docs/design.md, 'Operations pyfuse3 cannot receive')")


def test_posix_fallocate_preallocates_unwritten_extents_in_one_request(daxmount):
    m = daxmount("commit=60")
    p = m / "f"
    with opened(p) as fd:
        before = requests(m)
        os.posix_fallocate(fd, 0, MiB)
        after = requests(m)
        st = os.fstat(fd)
        assert st.st_size == MiB and st.st_blocks == MiB // 512
        assert after["fallocate"] - before.get("fallocate", 0) == 1
        assert after.get("write", 0) == before.get("write", 0)  # glibc did not fall back to writing
        assert rows(p) == [(0, 256, "unwritten", False)]  # unstable until committed...
        assert read_file(p) == bytes(MiB)
        os.fdatasync(fd)
        assert rows(p) == [(0, 256, "unwritten", True)]  # ...as fdatasync does
        os.pwrite(fd, b"w" * BS, 0)  # a write only converts
        assert rows(p)[0] == (0, 1, "written", False) and os.fstat(fd).st_blocks == MiB // 512


def test_each_fallocate_mode_through_the_mount(daxmount):
    m = daxmount("commit=60")
    p = m / "f"
    data = pattern(1, 16 * BS)
    write_file(p, data, fsync=True)
    with opened(p) as fd:
        assert os.pread(fd, len(data), 0) == data  # the kernel caches these pages
        fallocate(fd, KEEP, 16 * BS, 8 * BS)  # past EOF, size kept
        assert os.fstat(fd).st_size == 16 * BS and os.fstat(fd).st_blocks == 24 * 8
        fallocate(fd, PUNCH | KEEP, 2 * BS + 100, 3 * BS)  # blocks 3, 4 whole; 2 and 5 in part
        fallocate(fd, ZERO, 8 * BS, 2 * BS)  # written -> unwritten, nothing freed
        fallocate(fd, ZERO | KEEP, 12 * BS + 1, 10)  # inside one block
        fallocate(fd, 0, 4 * BS, 2 * BS)  # mode 0 over the punched hole and a written block
        expect = bytearray(data)
        expect[2 * BS + 100:5 * BS + 100] = bytes(3 * BS)
        expect[8 * BS:10 * BS] = bytes(2 * BS)
        expect[12 * BS + 1:12 * BS + 11] = bytes(10)
        assert os.pread(fd, len(data), 0) == expect  # the kernel dropped the cached pages of the ranges
        st = os.fstat(fd)
        assert st.st_size == 16 * BS and st.st_blocks == (24 - 2 + 1) * 8  # block 4 back, unwritten
        assert [r[:3] for r in rows(p)] == [(0, 3, "written", ), (3, 1, "hole"), (4, 1, "unwritten"),
                                            (5, 3, "written"), (8, 2, "unwritten"), (10, 6, "written"),
                                            (16, 8, "unwritten")]
        fallocate(fd, ZERO, 30 * BS, 100)  # past EOF without KEEP_SIZE: the size grows
        assert os.fstat(fd).st_size == 30 * BS + 100
        assert os.pread(fd, 14 * BS + 100, 16 * BS) == bytes(14 * BS + 100)
    assert requests(m)["fallocate"] == 6


def test_modes_linux_does_not_forward_are_refused_and_fallocate_keeps_working(daxmount):
    m = daxmount()
    p = m / "f"
    write_file(p, pattern(2, 8 * BS))
    with opened(p) as fd:
        for mode in (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, PUNCH, 0x100):
            with pytest.raises(OSError) as e:
                fallocate(fd, mode, 0, BS)
            assert e.value.errno == errno.EOPNOTSUPP, mode
        with pytest.raises(OSError) as e:
            fallocate(fd, 0, 0, 0)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:  # past daxfs's largest file, below the kernel's: ours
            fallocate(fd, 0, 300 << 40, BS)
        assert e.value.errno == errno.EFBIG
        blocks = os.fstat(fd).st_blocks
        with pytest.raises(OSError) as e:  # more than the 64 MiB image: nothing allocated at all
            fallocate(fd, 0, 0, 128 * MiB)
        assert e.value.errno == errno.ENOSPC
        assert os.fstat(fd).st_blocks == blocks and os.fstat(fd).st_size == 8 * BS
        fallocate(fd, 0, 0, 16 * BS)  # still there: no error made the kernel give up on fallocate
        assert os.fstat(fd).st_size == 16 * BS
    with opened(p, os.O_RDONLY) as fd:
        with pytest.raises(OSError) as e:
            fallocate(fd, 0, 0, BS)
        assert e.value.errno == errno.EBADF


def test_seek_data_and_seek_hole_follow_the_extent_map(daxmount):
    m = daxmount()
    p = m / "f"
    with opened(p) as fd:
        os.pwrite(fd, b"d" * BS, 2 * BS)  # block 2: data
        fallocate(fd, 0, 3 * BS, 2 * BS)  # blocks 3, 4: unwritten, reported as a hole
        os.pwrite(fd, b"e" * 10, 5 * BS + 100)  # block 5: data
        size = 5 * BS + 110
        assert os.lseek(fd, 0, os.SEEK_DATA) == 2 * BS
        assert os.lseek(fd, 2 * BS + 7, os.SEEK_DATA) == 2 * BS + 7
        assert os.lseek(fd, 3 * BS, os.SEEK_DATA) == 5 * BS
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
        assert os.lseek(fd, 2 * BS, os.SEEK_HOLE) == 3 * BS
        assert os.lseek(fd, 5 * BS, os.SEEK_HOLE) == size
        for whence in (os.SEEK_DATA, os.SEEK_HOLE):
            with pytest.raises(OSError) as e:
                os.lseek(fd, size, whence)
            assert e.value.errno == errno.ENXIO
        os.ftruncate(fd, 20 * BS)
        with pytest.raises(OSError) as e:  # nothing but hole after block 5
            os.lseek(fd, 6 * BS, os.SEEK_DATA)
        assert e.value.errno == errno.ENXIO
    assert requests(m)["lseek"] == 9


def test_copy_file_range_copies_inside_the_image(daxmount):
    m = daxmount("commit=60")
    src, dst = m / "src", m / "dst"
    data = pattern(3, 3 * MiB + 5)
    write_file(src, data)
    with opened(src, os.O_RDONLY) as fi, opened(dst) as fo:
        before = requests(m)
        assert os.copy_file_range(fi, fo, 100, 5, 2) == 100
        assert os.pread(fo, 102, 0) == bytes(2) + data[5:105]
        assert os.copy_file_range(fi, fo, 64 * MiB, 0, 0) == len(data)  # short: the source's EOF
        assert os.copy_file_range(fi, fo, 10, len(data), 0) == 0  # the kernel answers that one itself
        after = requests(m)
        assert after["copy_file_range"] - before.get("copy_file_range", 0) == 2
        assert after.get("read", 0) - before.get("read", 0) == 1  # the pread above; the copies none
        assert os.fstat(fo).st_size == len(data) and os.fstat(fo).st_blocks == 769 * 8
        assert read_file(dst) == data
        with pytest.raises(OSError) as e:  # overlapping inside one file: the kernel refuses
            os.copy_file_range(fo, fo, 100, 0, 50)
        assert e.value.errno == errno.EINVAL
    assert rows(dst)[0][2:] == ("written", False)  # new blocks, unstable as any write's


def _killed_after(m, fn) -> None:
    """Run fn(), SIGKILL the daemon the moment it returns, clean the dead mount, mount again."""
    pid = m.pid()
    fn()
    os.kill(pid, signal.SIGKILL)
    m.crash(pid)
    m.mount()


def test_copy_file_range_in_sync_mode_is_durable_when_it_returns(daxmount):
    m = daxmount("map_sync,commit=60")
    data = pattern(4, MiB)
    write_file(m / "src", data, fsync=True)
    faults = m.stats()["sync_faults"]

    def copy():
        with opened(m / "src", os.O_RDONLY) as fi, opened(m / "dst") as fo:
            assert os.copy_file_range(fi, fo, MiB) == MiB
        assert m.stats()["sync_faults"] == faults + 1  # the reply waited for the commit
    _killed_after(m, copy)
    assert read_file(m / "dst") == data


@pytest.mark.parametrize("o_sync", [True, False])
def test_fallocate_on_an_o_sync_handle_is_committed_before_it_returns(daxmount, o_sync):
    m = daxmount("commit=60")
    p = m / "f"
    write_file(p, b"x", fsync=True)

    def prealloc():
        with opened(p, os.O_RDWR | (os.O_SYNC if o_sync else 0)) as fd:
            fallocate(fd, 0, 0, MiB)
    _killed_after(m, prealloc)
    if o_sync:  # as ext4 and XFS do for O_SYNC
        assert os.stat(p).st_size == MiB and rows(p) == [(0, 1, "written", True), (1, 255, "unwritten", True)]
    else:  # fallocate alone promises nothing until fsync: commit=60 had not come
        assert os.stat(p).st_size == 1 and rows(p) == [(0, 1, "written", True)]


def test_a_committed_fallocate_survives_a_crash_and_fsck_is_clean(daxmount):
    m = daxmount("commit=60")
    p = m / "f"
    data = pattern(5, 8 * BS)
    write_file(p, data, fsync=True)
    with opened(p) as fd:
        fallocate(fd, 0, 8 * BS, 8 * BS)
        fallocate(fd, KEEP, 16 * BS, 4 * BS)
        fallocate(fd, PUNCH | KEEP, BS, BS)
        fallocate(fd, ZERO, 4 * BS, 2 * BS)
        os.fsync(fd)
        before, st = rows(p), os.fstat(fd)
        content = os.pread(fd, st.st_size, 0)
    assert [r[2] for r in before] == ["written", "hole", "written", "unwritten", "written", "unwritten"]
    m.crash()
    m.mount()
    assert rows(p) == before
    assert os.stat(p).st_size == st.st_size == 16 * BS and os.stat(p).st_blocks == st.st_blocks == 19 * 8
    assert read_file(p) == content == data[:BS] + bytes(BS) + data[2 * BS:4 * BS] + bytes(2 * BS) \
        + data[6 * BS:] + bytes(8 * BS)
    m.umount()
    m.fsck()


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_preallocates_natively(daxmount):
    """fio preallocates by default (fallocate=native); without the shim it quietly did not."""
    m = daxmount()
    job = ["fio", "--name=pre", f"--directory={m.mnt}", "--size=8M", "--rw=write", "--bs=64k",
           "--ioengine=psync", "--fallocate=native", "--end_fsync=1"]
    p = subprocess.run(job, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert requests(m).get("fallocate", 0) >= 1
    assert rows(m / "pre.0.0") == [(0, 2048, "written", True)]
