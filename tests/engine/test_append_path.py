"""The append fast paths (alloc.Bitmap.mark_used of a few bits, ExtentMap.insert continuing the last
extent, iomap at or after the last extent): the same image as the general paths would write."""

from __future__ import annotations

from daxfs.engine.extent import WRITTEN
from daxfs.engine.fsck import check
from helpers import BS, mkfile, reopen


def test_appends_grow_one_extent_and_the_bitmap_says_what_they_took(image, fs):
    ino = mkfile(fs, b"a")
    for i in range(300):
        assert fs.write(ino, i * BS, bytes([i % 251]) * BS) == BS
    fs.commit()
    rows = [(m.lblk, m.len, m.state) for m, _ in fs.map(ino)]
    assert rows == [(0, 300, WRITTEN)]
    fs.close()
    assert check(image).clean  # bitmap bits set one by one agree with the extents
    f = reopen(image)
    assert f.read(ino, 299 * BS, BS) == bytes([299 % 251]) * BS
    f.close()


def test_an_append_that_does_not_continue_the_last_extent_starts_a_new_one(image, fs):
    a, b = mkfile(fs, b"a"), mkfile(fs, b"b")
    for i in range(4):  # interleaved: each file's next block is not after its last one
        fs.write(a, i * BS, b"a" * BS)
        fs.write(b, i * BS, b"b" * BS)
    fs.write(a, 10 * BS, b"x" * 100)  # past a hole
    fs.commit()
    assert all(m.len == 1 for m, _ in fs.map(b) if m.state == WRITTEN)
    assert [m.lblk for m, _ in fs.map(a) if m.state == WRITTEN] == [0, 1, 2, 3, 10]
    assert fs.read(a, 9 * BS, 2 * BS) == bytes(BS) + b"x" * 100
    fs.close()
    assert check(image).clean


def test_small_records_growing_inside_a_block_zero_what_a_truncate_left_there(image, fs):
    ino = mkfile(fs, b"log", b"x" * 100)
    fs.setattr(ino, size=50)  # bytes 50-99 stay in the block's pmem
    assert fs.write(ino, 200, b"r" * 10) == 10  # past EOF, inside the allocated block
    assert fs.inode(ino).size == 210
    assert fs.read(ino, 0, 300) == b"x" * 50 + bytes(150) + b"r" * 10
    for i in range(20):  # a log's records, each growing i_size inside the block
        fs.write(ino, 210 + i * 24, bytes([i]) * 24)
    assert fs.inode(ino).size == 210 + 20 * 24
    assert fs.sync_tid(ino, True) > fs.committed_tid  # i_size is unstable until a commit
    fs.commit()
    fs.close()
    assert check(image).clean
    f = reopen(image)
    assert f.read(ino, 210 + 19 * 24, 24) == bytes([19]) * 24
    f.close()
