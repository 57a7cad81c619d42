"""Range operations (ranges.py): fallocate's modes, SEEK_DATA/SEEK_HOLE, copy_file_range, with
Linux's errors, crashes, and the pieces that keep a long operation inside transactions."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.core import RESERVE, SLACK
from daxfs.engine.extent import UNWRITTEN, WRITTEN
from daxfs.engine.fs import FileSystem
from daxfs.engine.fsck import check
from daxfs.engine.mkfs import mkfs
from daxfs.engine.ranges import (COLLAPSE_RANGE, COPY_MAX, INSERT_RANGE, KEEP_SIZE, PUNCH_HOLE, SEEK_DATA,
                                 SEEK_HOLE, UNSHARE_RANGE, WRITE_ZEROES, ZERO_RANGE)
from helpers import crash, err, mkfile, reopen

BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO


def states(f: FileSystem, ino: int) -> list[tuple[int, int, str]]:
    """(first block, blocks, state) of every extent and hole up to EOF."""
    return [(m.lblk, m.len, {0: "hole", UNWRITTEN: "unwritten", WRITTEN: "written"}[m.state]) for m, _ in f.map(ino)]


def content(f: FileSystem, ino: int) -> bytes:
    return f.read(ino, 0, f.inode(ino).size)


# --- fallocate: modes ---------------------------------------------------------------------------------

def test_mode_0_allocates_unwritten_blocks_and_grows_the_size(fs):
    a = mkfile(fs, b"a", b"abc")
    free = fs.statfs().blocks_free
    assert fs.fallocate(a, 0, 0, 4 * BS + 1) == 4  # block 0 is mapped already; 4 blocks for the rest
    assert fs.inode(a).size == 4 * BS + 1 and fs.inode(a).blocks == 5
    assert states(fs, a) == [(0, 1, "written"), (1, 4, "unwritten")]
    assert content(fs, a) == b"abc" + bytes(4 * BS + 1 - 3)
    assert fs.tid_to_commit(a, BS, BS) == fs.journal.running_tid  # the new mapping is unstable
    fs.commit()
    assert fs.statfs().blocks_free == free - 4


def test_keep_size_allocates_past_eof_without_growing(fs):
    a = mkfile(fs, b"a", b"abc")
    assert fs.fallocate(a, KEEP_SIZE, 0, 8 * BS) == 7
    assert fs.inode(a).size == 3 and fs.inode(a).blocks == 8
    assert fs.fallocate(a, KEEP_SIZE, 0, 8 * BS) == 0  # all there already
    fs.write(a, 5 * BS, b"later")  # a write into the preallocation only converts it
    assert fs.inode(a).blocks == 8 and (5, 1, "written") in states(fs, a)


def test_mode_0_without_room_fails_before_allocating_anything(image):
    f = reopen(image)
    a = mkfile(f, b"a", b"x")
    f.commit()
    free, before = f.statfs().blocks_free, states(f, a)
    assert err(f.fallocate, a, 0, 0, (free + 1) * BS) == errno.ENOSPC
    assert f.statfs().blocks_free == free and states(f, a) == before and f.inode(a).size == 1
    f.close()
    assert check(image).clean


MARGIN = SLACK + RESERVE + 4  # free blocks a fallocate leaves: room for 4 extent-slot blocks beyond SLACK


def test_mode_0_of_nearly_all_the_free_space_fits_when_free_space_is_whole(image):
    """The extent-slot reserve counts the extents the allocation can make, not one per block: a
    fallocate of all but a little of a fresh file system's space fits (xfstests generic/103)."""
    f = reopen(image)
    a = mkfile(f, b"a")
    f.commit()
    n = f.statfs().blocks_free - MARGIN
    assert f.fallocate(a, 0, 0, n * BS) == n
    f.close()
    assert check(image).clean


def test_mode_0_over_broken_free_space_still_reserves_a_slot_per_extent(image):
    f = reopen(image)
    a, b = mkfile(f, b"a"), mkfile(f, b"b")
    k = f.statfs().blocks_free // 3
    for i in range(k):  # a's and b's blocks alternate: b's become k runs of one free block
        f.write(a, i * BS, b"a")
        f.write(b, i * BS, b"b")
    f.unlink(fmt.ROOT_INO, b"b")
    f.commit()
    f.checkpoint()
    n = f.statfs().blocks_free - MARGIN  # ~k new extents: their slot blocks do not fit in MARGIN
    assert err(f.fallocate, a, 0, k * BS, n * BS) == errno.ENOSPC
    f.close()
    assert check(image).clean


def test_punch_frees_whole_blocks_past_eof_too_and_keeps_the_size(fs):
    a = mkfile(fs, b"a", b"\x22" * (4 * BS))
    fs.fallocate(a, KEEP_SIZE, 4 * BS, 4 * BS)  # preallocated past EOF
    assert fs.fallocate(a, PUNCH_HOLE | KEEP_SIZE, 2 * BS + 10, 100 * BS) == 5  # blocks 3..7
    assert fs.inode(a).size == 4 * BS and fs.inode(a).blocks == 3
    assert content(fs, a) == b"\x22" * (2 * BS + 10) + bytes(2 * BS - 10)
    assert fs.tid_to_commit(a, 3 * BS, BS) == fs.journal.running_tid  # fdatasync must commit the unmapping


def test_zero_range_makes_written_blocks_unwritten_in_place_and_fills_holes(fs):
    a = mkfile(fs, b"a", b"\x33" * (2 * BS))
    fs.write(a, 4 * BS, b"\x44" * (2 * BS))  # blocks 2, 3 are a hole
    pblk = {m.lblk: m.pblk for m, _ in fs.map(a)}
    assert fs.fallocate(a, ZERO_RANGE, 100, 5 * BS) == 2  # the hole's two blocks; nothing freed
    assert fs.inode(a).blocks == 6
    data = content(fs, a)
    assert data == b"\x33" * 100 + bytes(5 * BS) + b"\x44" * (BS - 100)
    assert states(fs, a) == [(0, 1, "written"), (1, 4, "unwritten"), (5, 1, "written")]
    assert {m.lblk: m.pblk for m, _ in fs.map(a)}[0] == pblk[0]  # the edge block stays, zeroed in part
    assert fs.inode(a).size == 6 * BS  # inside the file: no size change


def test_zero_range_past_eof_grows_the_size_unless_keep_size(fs):
    a = mkfile(fs, b"a", b"\x55" * 100)
    fs.fallocate(a, ZERO_RANGE | KEEP_SIZE, 50, 3 * BS)
    assert fs.inode(a).size == 100 and content(fs, a) == b"\x55" * 50 + bytes(50)
    fs.fallocate(a, ZERO_RANGE, 10, 2 * BS)
    assert fs.inode(a).size == 2 * BS + 10 and content(fs, a) == b"\x55" * 10 + bytes(2 * BS)
    assert fs.inode(a).blocks == 4 and fs.tid_to_commit(a, 0, BS) == fs.journal.running_tid


def test_zero_range_inside_one_block_zeroes_only_those_bytes(fs):
    a = mkfile(fs, b"a", b"\x66" * BS)
    fs.fallocate(a, ZERO_RANGE, 10, 20)
    assert content(fs, a) == b"\x66" * 10 + bytes(20) + b"\x66" * (BS - 30)
    assert states(fs, a) == [(0, 1, "written")]


def test_punch_and_zero_range_revoke_direct_mappings_of_the_range_only(fs):
    a = mkfile(fs, b"a", b"\x77" * (8 * BS))
    inside, outside = fs.dax_map(a, 0, 4, writable=True), fs.dax_map(a, 6, 2, writable=True)
    fs.fallocate(a, ZERO_RANGE | KEEP_SIZE, BS, BS)
    assert inside.revoked and not outside.revoked
    fs.fallocate(a, PUNCH_HOLE | KEEP_SIZE, 6 * BS, 10)
    assert outside.revoked


# --- fallocate: errors, in Linux's order --------------------------------------------------------------

@pytest.mark.parametrize("mode", [PUNCH_HOLE, COLLAPSE_RANGE | KEEP_SIZE, INSERT_RANGE | KEEP_SIZE, 0x04, 0x100,
                                  COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES, PUNCH_HOLE | ZERO_RANGE])
def test_modes_daxfs_does_not_do_are_eopnotsupp(fs, mode):
    a = mkfile(fs, b"a", b"x" * (4 * BS))
    assert err(fs.fallocate, a, mode, 0, BS) == errno.EOPNOTSUPP
    assert states(fs, a) == [(0, 4, "written")]


def test_fallocate_errors(fs):
    a = mkfile(fs, b"a")
    assert err(fs.fallocate, a, 0, -1, BS) == errno.EINVAL
    assert err(fs.fallocate, a, 0, 0, 0) == errno.EINVAL
    assert err(fs.fallocate, a, 0x100, 0, 0) == errno.EINVAL  # the range is checked before the mode
    limit = fmt.MAX_FILE_BLOCKS * BS
    assert err(fs.fallocate, a, 0, limit - BS, 2 * BS) == errno.EFBIG
    assert err(fs.fallocate, a, PUNCH_HOLE | KEEP_SIZE, limit, 1) == errno.EFBIG
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fifo = fs.create(ROOT, b"p", stat.S_IFIFO | 0o644, 0, 0).ino
    link = fs.symlink(ROOT, b"l", b"a", 0, 0).ino
    assert err(fs.fallocate, d, 0, 0, BS) == errno.EISDIR
    assert err(fs.fallocate, fifo, 0, 0, BS) == errno.ESPIPE
    assert err(fs.fallocate, link, 0, 0, BS) == errno.ENODEV


def test_fallocate_on_a_read_only_file_system_is_erofs(image):
    g = reopen(image)
    a = mkfile(g, b"a", b"x")
    g.close()
    f = FileSystem.open(image, readonly=True)
    try:
        for mode in (0, PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE):
            assert err(f.fallocate, a, mode, 0, BS) == errno.EROFS
    finally:
        f.close()


# --- crashes ----------------------------------------------------------------------------------------

def test_committed_fallocate_survives_a_crash_and_an_uncommitted_zero_range_is_undone_whole(image):
    f = reopen(image)
    a = mkfile(f, b"a", b"\x88" * (4 * BS))
    b = mkfile(f, b"b")
    f.fallocate(b, 0, 0, 8 * BS)
    f.fallocate(b, KEEP_SIZE, 8 * BS, 8 * BS)
    f.fallocate(a, PUNCH_HOLE | KEEP_SIZE, 3 * BS, BS)
    f.commit()
    f.fallocate(a, ZERO_RANGE, 0, 2 * BS)  # block-aligned: no data store, all in the transaction
    crash(f)
    g = reopen(image)
    assert states(g, b) == [(0, 16, "unwritten")] and g.inode(b).size == 8 * BS and g.inode(b).blocks == 16
    assert states(g, a) == [(0, 3, "written"), (3, 1, "hole")]
    assert content(g, a) == b"\x88" * (3 * BS) + bytes(BS)
    g.close()
    assert check(image).clean


def test_long_operations_go_in_pieces_that_each_fit_a_transaction(tmp_path):
    path = str(tmp_path / "img")
    mkfs(path, 64 << 20, journal_blocks=64)  # a transaction holds fewer blocks than a piece may touch
    f = FileSystem.open(path, durable=False)
    a = f.create(ROOT, b"frag", 0o644, 0, 0).ino
    for i in range(1500):  # every other block: 1500 extents that cannot merge
        f.write(a, 2 * i * BS, b"%08d" % i)
    f.commit()
    commits = f.journal.stats_commits
    f.fallocate(a, ZERO_RANGE | KEEP_SIZE, 0, 1000 * BS)  # 500 extents made unwritten, 500 holes filled
    f.fallocate(a, PUNCH_HOLE | KEEP_SIZE, 1000 * BS, 2000 * BS)  # 1000 extents removed
    assert f.journal.stats_commits - commits > 2  # it did need pieces
    assert f.read(a, 0, 1000 * BS) == bytes(1000 * BS)
    assert f.read(a, 1000 * BS, 2000 * BS) == bytes(f.inode(a).size - 1000 * BS)
    assert f.inode(a).blocks == 1000
    f.commit()
    crash(f)
    g = FileSystem.open(path, durable=False)
    first = [(n, st) for lblk, n, st in states(g, a) if lblk < 1000]
    assert g.inode(a).blocks == 1000 and {st for _, st in first} == {"unwritten"} and sum(n for n, _ in first) == 1000
    g.close()
    assert check(path).clean


def test_preallocating_fragmented_free_space_goes_in_pieces(tmp_path):
    path = str(tmp_path / "img")
    mkfs(path, 64 << 20, journal_blocks=64)
    f = FileSystem.open(path, durable=False)
    a = f.create(ROOT, b"comb", 0o644, 0, 0).ino
    for i in range(3000):
        f.write(a, i * BS, b"c")
    f.commit()
    for i in range(0, 3000, 2):  # free every other block: 1500 one-block holes in free space
        f.punch(a, i * BS, BS)
    f.checkpoint()  # frees are reusable only once checkpointed
    free = f.statfs().blocks_free
    b = f.create(ROOT, b"b", 0o644, 0, 0).ino
    n = free - 300  # more than the free run after the comb: the one-block gaps too
    commits = f.journal.stats_commits
    f.fallocate(b, 0, 0, n * BS)
    assert f.journal.stats_commits - commits > 2
    assert f.inode(b).blocks == n and f.inode(b).size == n * BS
    f.close()
    assert check(path).clean


# --- SEEK_DATA and SEEK_HOLE ------------------------------------------------------------------------

def test_seek_data_and_hole_follow_the_extent_map_with_unwritten_as_holes(fs):
    a = mkfile(fs, b"a")
    fs.write(a, 2 * BS, b"d" * BS)  # block 2: data
    fs.fallocate(a, 0, 3 * BS, 2 * BS)  # blocks 3, 4: unwritten
    fs.write(a, 5 * BS + 100, b"e" * 10)  # block 5: data; size 5 BS + 110
    size = 5 * BS + 110
    assert fs.seek(a, 0, SEEK_DATA) == 2 * BS
    assert fs.seek(a, 2 * BS + 7, SEEK_DATA) == 2 * BS + 7
    assert fs.seek(a, 3 * BS, SEEK_DATA) == 5 * BS
    assert fs.seek(a, 0, SEEK_HOLE) == 0
    assert fs.seek(a, 2 * BS + 1, SEEK_HOLE) == 3 * BS
    assert fs.seek(a, 5 * BS, SEEK_HOLE) == size  # EOF is a hole
    assert fs.seek(a, size - 1, SEEK_HOLE) == size
    for whence in (SEEK_DATA, SEEK_HOLE):
        assert err(fs.seek, a, size, whence) == errno.ENXIO
        assert err(fs.seek, a, -1, whence) == errno.ENXIO
    assert err(fs.seek, a, 0, os.SEEK_END) == errno.EINVAL


def test_seek_data_past_the_last_data_is_enxio(fs):
    a = mkfile(fs, b"a", b"x")
    fs.fallocate(a, 0, 0, 4 * BS)  # unwritten after block 0, and a size that covers them
    fs.fallocate(a, KEEP_SIZE, 10 * BS, BS)
    fs.write(a, 12 * BS, b"past eof")
    fs.truncate(a, 4 * BS)  # the written block past EOF is gone; the unwritten one too
    assert fs.seek(a, BS, SEEK_HOLE) == BS
    assert err(fs.seek, a, BS, SEEK_DATA) == errno.ENXIO
    b = mkfile(fs, b"b")
    fs.truncate(b, 10 * BS)  # all hole
    assert err(fs.seek, b, 0, SEEK_DATA) == errno.ENXIO and fs.seek(b, 0, SEEK_HOLE) == 0


# --- copy_file_range --------------------------------------------------------------------------------

def test_copy_range_copies_through_the_write_path(fs):
    src = mkfile(fs, b"s", b"0123456789" * 1000)
    fs.truncate(src, 20 * BS)  # a hole after the data
    dst = mkfile(fs, b"d", b"old")
    assert fs.copy_range(src, 5, dst, 2, 100) == 100
    assert content(fs, dst) == b"ol" + (b"0123456789" * 11)[5:105]
    assert fs.tid_to_commit(dst, 0, 102) == fs.journal.running_tid  # the MAP_SYNC rule sees a write
    n = fs.copy_range(src, 0, dst, 0, 1 << 30)  # short: to the source's EOF
    assert n == 20 * BS and content(fs, dst) == content(fs, src)
    assert fs.copy_range(src, 20 * BS, dst, 0, 10) == 0 and fs.copy_range(src, 0, dst, 0, 0) == 0


def test_copy_range_is_short_past_copy_max_and_inside_one_file_unless_the_ranges_overlap(image):
    mkfs(image, 64 << 20, force=True)
    f = reopen(image)
    a = mkfile(f, b"a", b"a" * (COPY_MAX + BS))
    assert f.copy_range(a, 0, a, COPY_MAX + BS, COPY_MAX + BS) == COPY_MAX
    assert f.inode(a).size == 2 * COPY_MAX + BS
    assert err(f.copy_range, a, 0, a, 100, 200) == errno.EINVAL
    assert err(f.copy_range, a, 100, a, 0, 200) == errno.EINVAL
    assert f.copy_range(a, 0, a, 200, 200) == 200
    f.close()


def test_copy_range_errors(fs):
    a = mkfile(fs, b"a", b"x" * 100)
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fifo = fs.create(ROOT, b"p", stat.S_IFIFO | 0o644, 0, 0).ino
    assert err(fs.copy_range, a, 0, d, 0, 10) == errno.EISDIR
    assert err(fs.copy_range, d, 0, a, 0, 10) == errno.EISDIR
    assert err(fs.copy_range, fifo, 0, a, 0, 10) == errno.EINVAL
    assert err(fs.copy_range, a, -1, a, 200, 10) == errno.EINVAL
    assert err(fs.copy_range, a, 0, a, fmt.MAX_FILE_BLOCKS * BS, 10) == errno.EFBIG
    free = fs.statfs().blocks_avail
    big = mkfile(fs, b"big", b"b" * ((free - 4) * BS))
    b = mkfile(fs, b"b")
    n = fs.copy_range(big, 0, b, 0, (free - 4) * BS)  # runs out of space: short, as write() is
    assert 0 < n < (free - 4) * BS
