"""Block and inode allocation (alloc.py), seen through the file system that uses it."""

from __future__ import annotations

import errno

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.errors import FsError
from daxfs.engine.extent import WRITTEN
from daxfs.engine.core import RESERVE, SLACK
from helpers import crash, mkfile, pattern, reopen


BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO


def pblocks(f, ino) -> set[int]:
    out = set()
    for m, _ in f.map(ino):
        if m.pblk is not None:
            out.update(range(m.pblk, m.pblk + m.len))
    return out


def fill(f, name: bytes, leave: int) -> int:
    """A file using all free blocks that ordinary writes may take but about `leave` (the RESERVE is
    for operations that free space)."""
    ino = mkfile(f, name)
    n = f.alloc.blocks.free_now - leave - RESERVE
    f.write(ino, 0, b"\x5a" * (n * BS))
    return ino


def test_consecutive_single_block_writes_become_one_extent(fs):
    ino = mkfile(fs, b"seq")
    for i in range(64):
        fs.write(ino, i * BS, bytes([i]) * BS)
    (m, _), = fs.map(ino)
    assert (m.lblk, m.len, m.state) == (0, 64, WRITTEN)
    assert len(fs.inode(ino).extents) == 1
    assert fs.read(ino, 63 * BS, BS) == bytes([63]) * BS


def test_interleaved_files_each_stay_contiguous_where_room_allows(fs):
    # Each file's next block goes right after its previous one (the goal), not at the global cursor.
    a, b = mkfile(fs, b"a"), mkfile(fs, b"b")
    fs.write(a, 0, b"a" * BS)
    fs.write(b, 0, b"b" * BS)
    # a's goal block is taken by b now, so a gets a new run; from then on each of a and b keeps growing its run.
    for i in range(1, 8):
        fs.write(a, i * BS, b"a" * BS)
    for i in range(1, 8):
        fs.write(b, i * BS, b"b" * BS)
    assert len(fs.inode(a).extents) <= 2 and len(fs.inode(b).extents) <= 2


def test_a_new_file_and_an_append_whose_next_block_is_taken_go_where_there_is_room(fs):
    """A file written with holes leaves one free block between each of its blocks: a new file must not
    start in those gaps, nor an append be scattered over them (each scan of the gaps also cost a
    numpy search per block: 200 us per 4 KiB append on a 64 GiB image, 23 us now)."""
    sparse = mkfile(fs, b"sparse")
    for i in range(256):
        fs.write(sparse, 2 * i * BS, b"s" * BS)
    gaps = {lo for lo in range(min(pblocks(fs, sparse)), max(pblocks(fs, sparse)))} - pblocks(fs, sparse)
    assert len(gaps) >= 200  # the pattern this test is about
    fs.alloc.cursor = fs.sb.data_start  # as after a mount: the search starts at the beginning
    new = mkfile(fs, b"new")
    for i in range(64):
        fs.write(new, i * BS, b"n" * BS)
    assert len(fs.inode(new).extents) == 1 and not pblocks(fs, new) & gaps
    # An append whose next block another file took: it jumps to a run with room, once.
    blocker = mkfile(fs, b"blocker", b"b" * BS)
    taken = min(pblocks(fs, blocker))
    grow = mkfile(fs, b"grow")
    fs.write(grow, 0, b"g" * BS)
    assert min(pblocks(fs, grow)) == taken + 1
    fs.write(blocker, BS, b"b" * BS)  # takes the block right after grow's
    for i in range(1, 33):
        fs.write(grow, i * BS, b"g" * BS)
    assert len(fs.inode(grow).extents) == 2 and not pblocks(fs, grow) & gaps
    assert fs.read(grow, 0, 33 * BS) == b"g" * (33 * BS)


def test_a_write_larger_than_free_space_writes_what_fits_then_enospc_changes_nothing(fs):
    """POSIX: a write that runs out of space writes what fits and returns the short count; only a
    write of which nothing fits fails, and that one changes nothing at all."""
    ino = mkfile(fs, b"small", b"keep" * 100)
    fs.commit()
    free_now = fs.alloc.blocks.free_now
    room = free_now - SLACK - RESERVE  # what an operation that frees nothing may take
    data = pattern(1, (free_now + 1) * BS)
    n = fs.write(ino, BS, data)
    assert n == room * BS, (n, room)
    assert fs.read(ino, BS, n) == data[:n] and fs.inode(ino).size == BS + n
    fs.commit()
    free_now, free_disk = fs.alloc.blocks.free_now, fs.statfs().blocks_free
    before_map, before_size = fs.map(ino), fs.inode(ino).size
    dirty = set(fs.journal.running.blocks)
    with pytest.raises(FsError) as e:
        fs.write(ino, BS + n, b"x" * BS)
    assert e.value.errno == errno.ENOSPC
    assert fs.alloc.blocks.free_now == free_now and fs.statfs().blocks_free == free_disk
    assert fs.map(ino) == before_map and fs.inode(ino).size == before_size
    assert set(fs.journal.running.blocks) == dirty  # not even a bitmap block was touched
    assert fs.write(ino, 0, b"over") == 4  # overwriting allocated blocks needs no space
    with pytest.raises(FsError) as e:
        fs.prealloc(ino, BS + n, BS)
    assert e.value.errno == errno.ENOSPC
    assert fs.alloc.blocks.free_now == free_now


def test_a_write_past_the_largest_file_is_short_and_one_wholly_past_it_is_efbig(fs):
    ino = mkfile(fs, b"big")
    limit = fmt.MAX_FILE_BLOCKS * BS
    assert fs.write(ino, limit - 10, b"y" * 100) == 10
    assert fs.inode(ino).size == limit
    with pytest.raises(FsError) as e:
        fs.write(ino, limit, b"z")
    assert e.value.errno == errno.EFBIG


def test_enospc_on_a_full_image_then_the_image_still_works(fs):
    big = fill(fs, b"big", leave=6)
    more = mkfile(fs, b"more")
    assert fs.write(more, 0, b"y" * (8 * BS)) == (6 - SLACK) * BS  # short: what fits
    with pytest.raises(FsError) as e:
        fs.write(more, (6 - SLACK) * BS, b"y" * BS)
    assert e.value.errno == errno.ENOSPC
    fs.truncate(big, 16 * BS)
    fs.commit()
    fs.journal.checkpoint()
    fs.after_commit()
    fs.write(more, 0, b"y" * (8 * BS))
    assert fs.read(more, 0, 8 * BS) == b"y" * (8 * BS)


def test_freed_blocks_are_not_reused_until_their_transaction_is_checkpointed(fs):
    a = mkfile(fs, b"a", b"\xaa" * (16 * BS))
    fs.commit()
    freed = pblocks(fs, a)
    free_now = fs.alloc.blocks.free_now
    fs.unlink(ROOT, b"a")
    # On the image the bits are clear at once (statfs counts them), but they are not allocatable: until
    # the unlink is checkpointed, a crash could give them back to "a" (journal.py).
    assert fs.alloc.blocks.free_now == free_now
    b = mkfile(fs, b"b", b"\xbb" * (16 * BS))
    assert not pblocks(fs, b) & freed
    fs.commit()
    c = mkfile(fs, b"c", b"\xcc" * BS)
    assert not pblocks(fs, c) & freed  # committed is not enough
    fs.journal.checkpoint()
    fs.after_commit()
    assert fs.alloc.blocks.pending == 0
    assert fs.alloc.blocks.free_now == free_now - 16 - 1 + 16  # b and c allocated, a's 16 back
    assert fs.alloc.blocks.busy[list(freed)].sum() == 0


def test_delete_then_rewrite_on_a_nearly_full_image_works(fs):
    fill(fs, b"big", leave=8)
    fs.commit()
    n = fs.inode(fs.entry(ROOT, b"big").ino).blocks
    fs.unlink(ROOT, b"big")
    # No free block is reusable yet; _begin must commit and checkpoint to get them back, not fail.
    ino = mkfile(fs, b"again")
    fs.write(ino, 0, b"\x77" * (n * BS))
    assert fs.read(ino, (n - 1) * BS, BS) == b"\x77" * BS


def test_allocation_from_fragmented_free_space_uses_each_free_block_once(fs):
    ino = mkfile(fs, b"frag")
    n = 64
    fs.write(ino, 0, b"f" * (2 * n * BS))
    fs.commit()
    # Free every other block: the free space is now 64 one-block holes (plus what follows the file).
    holes = []
    for i in range(0, 2 * n, 2):
        (m, _), = [x for x in fs.map(ino) if x[0].lblk <= i < x[0].lblk + x[0].len]
        holes.append(m.pblk + i - m.lblk)
    for i in range(0, 2 * n, 2):
        fs.alloc.free_blocks(holes[i // 2], 1)
    fs.commit()
    fs.journal.checkpoint()
    fs.after_commit()
    # Keep only the holes free, then ask for more blocks than any one run holds.
    rest = fs.alloc.blocks.free_now - n
    fs.alloc.alloc_blocks(rest, fs.sb.data_start)
    runs = fs.alloc.alloc_blocks(n, holes[0])
    got = [b for lo, ln in runs for b in range(lo, lo + ln)]
    assert sorted(got) == sorted(holes)
    assert fs.alloc.blocks.free_now == 0
    with pytest.raises(FsError):
        fs.alloc.alloc_blocks(1)


def test_statfs_counts_blocks_and_inodes(fs):
    mkfile(fs, b"first")  # gives the root directory its first entry block
    st = fs.statfs()
    ino = mkfile(fs, b"x", b"1" * (3 * BS))
    st2 = fs.statfs()
    assert st2.blocks_free == st.blocks_free - 3
    assert st2.files_free == st.files_free - 1
    fs.unlink(ROOT, b"x")
    assert fs.statfs().blocks_free == st.blocks_free and fs.statfs().files_free == st.files_free
    assert ino >= fmt.FIRST_FREE_INO


def test_inode_numbers_are_reusable_at_once_and_inode_exhaustion_is_enospc(new_image):
    f = reopen(new_image(16 << 20, inodes=64))
    made = []
    while True:
        try:
            made.append(mkfile(f, b"i%d" % len(made)))
        except FsError as e:
            assert e.errno == errno.ENOSPC
            break
    assert len(made) == 64 - fmt.FIRST_FREE_INO
    f.unlink(ROOT, b"i5")
    assert mkfile(f, b"again") == made[5]  # an inode number needs no checkpoint to be reused
    f.close()


def test_the_allocator_is_rebuilt_from_the_bitmaps_at_open(image):
    f = reopen(image)
    mkfile(f, b"a", b"1" * (5 * BS))
    f.commit()
    free, used = f.alloc.blocks.free_now, pblocks(f, f.entry(ROOT, b"a").ino)
    crash(f)
    g = reopen(image)
    assert g.alloc.blocks.free_now == free
    assert g.alloc.blocks.busy[list(used)].all()
    g.close()
