"""Layouts, the engine's side of real faults (mappings.py): every page of a window gets a block at map
time, holes a reserved one that every later filling of the hole claims, and pages the file loses are
discarded from the image once the change is committed. The fault service and the client are tested
through real mounts in tests/dax/test_real_faults.py."""

from __future__ import annotations

import errno

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.fsck import check
from helpers import crash, err, mkfile, reopen

BS = fmt.BLOCK_SIZE


def sized(f, name: bytes, size: int) -> int:
    ino = mkfile(f, name)
    f.truncate(ino, size)
    f.commit()
    return ino


def test_a_layout_gives_every_page_a_block_reserving_the_holes_without_using_them(image, fs):
    ino = sized(fs, b"a", 8 * BS)
    fs.write(ino, 2 * BS, b"x" * BS)
    fs.prealloc(ino, 5 * BS, BS)
    fs.commit()
    free = fs.alloc.blocks.free_now
    m = fs.dax_map(ino, 0, 8, writable=True, layout=True)
    ext = {r.lblk: r.pblk for r in fs._extents(fs.inode(ino)).iomap(0, 8) if r.pblk is not None}
    assert m.layout[2] == ext[2] and m.layout[5] == ext[5]
    assert len(set(m.layout.tolist())) == 8  # six holes, six distinct reserved blocks
    assert fs.alloc.blocks.free_now == free - 6
    assert fs.inode(ino).blocks == 2  # reserved is not used: the image is unchanged
    fs.dax_unmap(m)
    assert fs.alloc.blocks.free_now == free and not fs._pins and not fs._reserved
    fs.close()
    assert check(image).clean


def test_write_into_a_hole_claims_the_block_the_window_points_at(fs):
    ino = sized(fs, b"a", 4 * BS)
    m = fs.dax_map(ino, 0, 4, writable=True, layout=True)
    fs.write(ino, BS + 100, b"hello")
    (r,) = [r for r in fs._extents(fs.inode(ino)).iomap(1, 1)]
    assert r.pblk == m.layout[1]
    assert fs.region.load(int(m.layout[1]) * BS + 100, 5) == b"hello"  # what the client's page shows
    fs.dax_unmap(m)
    assert fs.read(ino, BS + 100, 5) == b"hello"
    assert int(m.layout[1]) not in fs._reserved


def test_a_second_layout_of_the_same_holes_shares_their_blocks(fs):
    ino = sized(fs, b"a", 4 * BS)
    a = fs.dax_map(ino, 0, 4, writable=True, layout=True)
    b = fs.dax_map(ino, 2, 2, writable=False, layout=True)
    assert b.layout.tolist() == a.layout[2:].tolist()
    fs.dax_unmap(a)
    assert set(b.layout.tolist()) <= fs._reserved  # b still holds them
    fs.dax_unmap(b)
    assert not fs._reserved


def test_a_write_fault_makes_the_page_written_and_a_read_fault_zeroes_an_unwritten_block(fs):
    ino = sized(fs, b"a", 4 * BS)
    fs.prealloc(ino, 0, BS)
    fs.commit()
    m = fs.dax_map(ino, 0, 4, writable=True, layout=True)
    pblk = int(m.layout[0])
    fs.region.store(pblk * BS, b"stale bytes of a freed file")
    assert fs.dax_layout_fault(m, 0, write=False) == (1, 0)
    assert fs.region.load(pblk * BS, BS) == bytes(BS)
    n, tid = fs.dax_layout_fault(m, 3, write=True)
    assert n == 1 and tid == fs.journal.running_tid and 3 in m.written
    fs.region.store(int(m.layout[3]) * BS, b"direct")
    assert fs.read(ino, 3 * BS, 6) == b"direct"
    assert err(fs.dax_layout_fault, m, 4, True) == errno.EINVAL  # outside the window
    fs.truncate(ino, 3 * BS)
    assert err(fs.dax_layout_fault, m, 3, False) == errno.EFAULT  # beyond EOF: SIGBUS


def test_fault_around_maps_the_untouched_pages_after_the_fault_up_to_eof_and_the_window(fs):
    ino = sized(fs, b"a", 10 * BS)
    m = fs.dax_map(ino, 0, 16, writable=True, layout=True)
    assert fs.dax_layout_fault(m, 2, write=False, around=4) == (4, 0)  # pages 2-5, read-only
    n, tid = fs.dax_layout_fault(m, 0, write=True, around=16)
    assert n == 2 and tid and fs.inode(ino).blocks == 2  # stops at page 2, mapped already
    n, _ = fs.dax_layout_fault(m, 6, write=True, around=16)
    assert n == 4 and fs.inode(ino).blocks == 6  # stops at EOF (10 pages)
    n, _ = fs.dax_layout_fault(m, 3, write=True, around=16)  # a store to a read-only page
    assert n == 1 and m.mapped.tolist()[:10] == [2, 2, 1, 2, 1, 1, 2, 2, 2, 2]
    fs.punch(ino, 0, 4 * BS)
    assert m.mapped.tolist()[:4] == [0, 0, 0, 0]  # discarded: the client faults them again


def test_punch_under_a_layout_commits_discards_the_pages_and_keeps_the_blocks_for_the_same_page(image, fs):
    ino = sized(fs, b"a", 4 * BS)
    fs.write(ino, 0, b"y" * 4 * BS)
    fs.commit()
    m = fs.dax_map(ino, 0, 4, writable=True, layout=True)
    tid = fs.committed_tid
    fs.punch(ino, BS // 2, 2 * BS)  # page 1 wholly, pages 0 and 2 in part
    assert fs.committed_tid > tid  # committed before the pages went
    assert fs.region.load(int(m.layout[1]) * BS, BS) == bytes(BS)
    assert fs.region.load(int(m.layout[0]) * BS, BS // 2) == b"y" * (BS // 2)  # edges zeroed in place only
    assert fs.read(ino, 0, 4 * BS) == b"y" * (BS // 2) + bytes(2 * BS) + b"y" * (BS + BS // 2)
    fs.commit()
    fs.checkpoint()
    assert int(m.layout[1]) in fs._held  # freed, but pinned: the window still points at it
    fs.write(ino, BS, b"again")
    assert fs._extents(fs.inode(ino)).iomap(1, 1)[0].pblk == m.layout[1]
    fs.dax_unmap(m)
    fs.close()
    assert check(image).clean


def test_an_unlinked_file_lives_while_a_layout_maps_it(fs):
    ino = sized(fs, b"a", 2 * BS)
    fs.write(ino, 0, b"z" * BS)
    m = fs.dax_map(ino, 0, 2, writable=True, layout=True)
    fs.unlink(fmt.ROOT_INO, b"a")
    assert not m.revoked and fs.read(ino, 0, 1) == b"z"
    fs.dax_unmap(m)
    assert ino not in fs.inodes.cache and not fs.alloc.inodes.ondisk[ino]


def test_a_layout_that_cannot_reserve_its_holes_is_refused_whole(fs):
    ino = sized(fs, b"a", 4 * BS)
    free = fs.alloc.blocks.free_now
    assert err(fs.dax_map, ino, 0, free + 1, True, True) == errno.ENOSPC
    assert fs.alloc.blocks.free_now == free and not fs._pins and not fs._reserved


def test_reservations_vanish_in_a_crash(image, fs):
    ino = sized(fs, b"a", 4 * BS)
    fs.dax_map(ino, 0, 4, writable=True, layout=True)
    free = fs.alloc.blocks.free_ondisk
    crash(fs)
    f2 = reopen(image)
    assert f2.alloc.blocks.free_now == free
    f2.close()
