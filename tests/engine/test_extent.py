"""Extent maps (extent.py): file block -> pmem block, holes, unwritten extents, splitting and merging."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedDict

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage
from daxfs.engine.extent import HOLE, UNWRITTEN, WRITTEN, Extent, ExtentMap
from helpers import MiB, crash, mkfile, reopen


BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO


def shape(f, ino) -> list[tuple[int, int, int]]:
    """(first block, blocks, state) of every extent and hole up to EOF."""
    return [(m.lblk, m.len, m.state) for m, _ in f.map(ino)]


def test_a_sparse_file_reads_zeros_in_its_holes_and_allocates_only_what_was_written(fs):
    ino = mkfile(fs, b"sparse")
    fs.write(ino, 5 * BS + 100, b"middle")
    fs.write(ino, 100 * BS, b"end")
    inode = fs.inode(ino)
    assert inode.size == 100 * BS + 3
    assert inode.blocks == 2
    assert shape(fs, ino) == [(0, 5, HOLE), (5, 1, WRITTEN), (6, 94, HOLE), (100, 1, WRITTEN)]
    data = fs.read(ino, 0, inode.size)
    assert len(data) == inode.size
    assert data[5 * BS + 100:5 * BS + 106] == b"middle" and data[-3:] == b"end"
    assert data.count(0) == len(data) - 9  # everything else, holes and block edges alike, is zero
    assert fs.read(ino, inode.size, 10) == b""  # nothing past EOF


def test_a_file_of_100k_extents_reads_correctly_and_fast(new_image):
    # Every other block preallocated: the logical gaps keep the extents from merging. Unwritten extents
    # cost no data pages, so the 1 GiB image stays a few MiB in RAM.
    image = new_image(1 << 30, journal_blocks=4096)
    f = reopen(image)
    ino = mkfile(f, b"many")
    n = 100_000
    for i in range(n):
        f.prealloc(ino, 2 * i * BS, BS)
    sample = range(0, n, 331)
    for i in sample:  # unwritten -> written on a few: splits nothing, merges with nothing
        f.write(ino, 2 * i * BS, i.to_bytes(4, "little") * (BS // 4))
    ext = f.inode(ino).extents
    assert len(ext) == n
    t = time.perf_counter()
    reads = 0
    for i in range(0, n, 97):
        want = i.to_bytes(4, "little") * (BS // 4) if i % 331 == 0 else bytes(BS)
        assert f.read(ino, 2 * i * BS, BS) == want
        assert f.read(ino, (2 * i + 1) * BS, BS) == bytes(BS)  # the hole between two extents
        reads += 2
    per_read = (time.perf_counter() - t) / reads
    # A lookup is a bisection of the sorted extents: a linear scan of 100k extents would take far longer.
    assert per_read < 2e-3, f"{per_read * 1e3:.2f} ms per one-block read with {n} extents"
    f.commit()
    crash(f)
    g = reopen(image)
    ext = g._extents(g.inode(ino))  # rebuilt from the inline slots and the chain on the image
    assert len(ext) == n
    assert g.read(ino, 2 * 331 * BS, 8) == (331).to_bytes(4, "little") * 2
    g.close()


def test_writing_the_middle_of_an_unwritten_extent_splits_it_and_filling_it_merges_back(fs):
    ino = mkfile(fs, b"pre")
    assert fs.prealloc(ino, 0, 8 * BS) == 8
    assert shape(fs, ino) == [(0, 8, UNWRITTEN)]
    pblk = fs.map(ino)[0][0].pblk
    fs.write(ino, 4 * BS + 100, b"xyz")
    maps = [m for m, _ in fs.map(ino)]
    assert [(m.lblk, m.len, m.state) for m in maps] == [(0, 4, UNWRITTEN), (4, 1, WRITTEN), (5, 3, UNWRITTEN)]
    assert [m.pblk for m in maps] == [pblk, pblk + 4, pblk + 5]  # a split moves no data
    block4 = fs.read(ino, 4 * BS, BS)
    assert block4[100:103] == b"xyz" and block4.count(0) == BS - 3
    fs.write(ino, 0, b"a" * (4 * BS))
    assert shape(fs, ino) == [(0, 5, WRITTEN), (5, 3, UNWRITTEN)]
    fs.write(ino, 5 * BS, b"b" * (3 * BS))
    assert shape(fs, ino) == [(0, 8, WRITTEN)]
    assert len(fs.inode(ino).extents) == 1  # merged in memory and in its slots: one slot left in use
    assert sum(1 for _ in fs.inode(ino).extents.chain.load()) == 1


def test_split_and_merged_extents_survive_a_crash_exactly(image):
    f = reopen(image)
    ino = mkfile(f, b"pre")
    f.prealloc(ino, 0, 16 * BS)
    f.write(ino, 3 * BS, b"c" * BS)
    f.write(ino, 9 * BS, b"d" * (2 * BS))
    before = shape(f, ino)
    f.commit()
    crash(f)
    g = reopen(image)
    assert shape(g, ino) == before
    assert g.read(ino, 3 * BS, BS) == b"c" * BS and g.read(ino, 4 * BS, BS) == bytes(BS)
    g.close()


def test_more_extents_than_inline_slots_go_to_a_chain_block(image):
    f = reopen(image)
    ino = mkfile(f, b"ten")
    for i in range(10):
        f.write(ino, 2 * i * BS, bytes([i + 1]) * 10)
    inode = f.inode(ino)
    assert inode.extent_head != 0 and len(inode.extents) == 10
    before = shape(f, ino)
    f.commit()
    crash(f)
    g = reopen(image)
    assert shape(g, ino) == before
    for i in range(10):
        assert g.read(ino, 2 * i * BS, 10) == bytes([i + 1]) * 10
    g.close()


def test_truncate_splits_the_extent_it_cuts_and_frees_the_rest(fs):
    ino = mkfile(fs, b"t", b"t" * (8 * BS))
    free = fs.statfs().blocks_free
    fs.truncate(ino, 3 * BS + 1)
    assert shape(fs, ino) == [(0, 4, WRITTEN)]
    assert fs.inode(ino).blocks == 4
    assert fs.statfs().blocks_free == free + 4


def test_iomap_covers_a_range_with_mappings_and_holes_in_order(fs):
    ino = mkfile(fs, b"io")
    fs.write(ino, 2 * BS, b"x" * BS)
    fs.prealloc(ino, 4 * BS, 2 * BS)
    ext = fs.inode(ino).extents
    got = [(m.lblk, m.len, m.state) for m in ext.iomap(1, 6)]
    assert got == [(1, 1, HOLE), (2, 1, WRITTEN), (3, 1, HOLE), (4, 2, UNWRITTEN), (6, 1, HOLE)]
    assert [(m.lblk, m.len) for m in ext.iomap(2, 1)] == [(2, 1)]
    assert ext.last_block() == 6


def test_mapping_over_mapped_blocks_is_refused(fs):
    ino = mkfile(fs, b"m", b"m" * BS)
    ext = fs.inode(ino).extents
    with pytest.raises(CorruptImage):
        ext.insert(0, 1, fs.sb.data_start + 100, WRITTEN)


def test_overlapping_extent_slots_on_the_image_are_reported_not_read(image):
    f = reopen(image)
    ino = mkfile(f, b"o")
    f.write(ino, 0, b"a" * BS)
    f.write(ino, 5 * BS, b"b" * BS)
    ext = f.inode(ino).extents
    first = ext.map[0]
    ext.chain.update(first.addr, fmt.EXTENT.pack(WRITTEN, 8, 0, first.pblk, 0))  # now covers block 5 too
    f.commit()
    crash(f)
    g = reopen(image)
    with pytest.raises(CorruptImage, match="overlap"):
        g.read(ino, 0, 10)
    g.region.close()


def test_a_file_can_be_sparse_far_beyond_the_image_size(fs):
    ino = mkfile(fs, b"far")
    far = 64 * 1024 * MiB  # 64 GiB on a 16 MiB image: holes cost nothing
    fs.write(ino, far, b"!")
    assert fs.inode(ino).size == far + 1 and fs.inode(ino).blocks == 1
    assert fs.read(ino, far - 5, 10) == bytes(5) + b"!"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 9)), max_size=400),
       st.lists(st.tuples(st.integers(0, 3100), st.integers(1, 60)), min_size=1, max_size=20))
def test_overlapping_extents_are_those_a_plain_scan_finds(spans, queries):
    """_overlapping walks sortedcontainers' sorted lists directly (for speed at 100,000 extents); a
    plain scan of every extent is the reference. Maps of up to 400 extents span several of its
    sublists (its load factor is 1,000 keys, split at 2,000: shrunk here to split often)."""
    m = ExtentMap.__new__(ExtentMap)
    m.map = SortedDict()
    m.map._list._reset(8)  # sublists of 8 to 16 keys, so that a small map has many
    end = -1
    for lblk, ln in sorted(spans):
        if lblk >= end:  # keep them disjoint, as a file's extents are
            m.map[lblk] = Extent(lblk, ln, 1000 + lblk, WRITTEN)
            end = lblk + ln
    for lo, n in queries:
        want = [e for e in m.map.values() if e.lblk < lo + n and e.end > lo]
        assert m._overlapping(lo, lo + n) == want
