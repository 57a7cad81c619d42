"""Unstable blocks and the MAP_SYNC rule (unstable.py, FileSystem.tid_to_commit)."""

from __future__ import annotations

from daxfs.engine import format as fmt
from daxfs.engine.unstable import UnstableMap, tid_to_commit
from helpers import mkfile


BS = fmt.BLOCK_SIZE


def stable_flags(f, ino) -> list[bool]:
    return [s for m, s in f.map(ino) if m.pblk is not None]


def test_a_new_allocation_is_unstable_until_its_transaction_commits(fs):
    ino = mkfile(fs, b"a")
    tid = fs.journal.running_tid
    fs.write(ino, 0, b"x" * BS)
    assert fs.tid_to_commit(ino, 0, BS) == tid
    assert fs.tid_to_commit(ino, 100, 1) == tid
    assert stable_flags(fs, ino) == [False]
    assert fs.unstable_blocks() == 1
    assert fs.commit() == tid
    assert fs.tid_to_commit(ino, 0, BS) == 0
    assert stable_flags(fs, ino) == [True]
    assert fs.unstable_blocks() == 0


def test_overwriting_a_stable_block_needs_no_commit(fs):
    ino = mkfile(fs, b"a", b"x" * (2 * BS))
    fs.commit()
    fs.write(ino, 10, b"y" * 100)  # in place: the mapping does not change
    fs.write(ino, BS, b"z" * BS)
    assert fs.tid_to_commit(ino, 0, 2 * BS) == 0
    assert fs.unstable_blocks() == 0


def test_blocks_next_to_an_unstable_one_stay_stable(fs):
    ino = mkfile(fs, b"a", b"x" * BS)
    fs.commit()
    fs.write(ino, 3 * BS, b"y")  # allocates block 3 only
    assert fs.tid_to_commit(ino, 0, BS) == 0
    assert fs.tid_to_commit(ino, 3 * BS, 1) != 0
    assert fs.tid_to_commit(ino, 0, 4 * BS) != 0  # a range with one unstable block needs the commit


def test_unwritten_to_written_conversion_is_unstable(fs):
    ino = mkfile(fs, b"a")
    fs.prealloc(ino, 0, 4 * BS)
    fs.commit()
    assert fs.tid_to_commit(ino, 0, 4 * BS) == 0
    tid = fs.journal.running_tid
    fs.write(ino, BS, b"w" * 10)  # the extent state changes: metadata to commit before MAP_SYNC may ack
    assert fs.tid_to_commit(ino, BS, 10) == tid
    assert fs.tid_to_commit(ino, 0, BS) == 0 and fs.tid_to_commit(ino, 2 * BS, 2 * BS) == 0
    fs.commit()
    assert fs.tid_to_commit(ino, 0, 4 * BS) == 0


def test_growing_the_size_makes_the_exposed_blocks_unstable(fs):
    ino = mkfile(fs, b"a", b"x" * 100)
    fs.commit()
    tid = fs.journal.running_tid
    fs.write(ino, 200, b"y" * 100)  # same, already mapped block, but i_size changes
    assert fs.tid_to_commit(ino, 200, 100) == tid
    fs.commit()
    assert fs.tid_to_commit(ino, 0, BS) == 0
    fs.truncate(ino, 3 * BS)  # truncate up: the blocks it exposes are unstable too
    assert fs.tid_to_commit(ino, 2 * BS, 10) == fs.journal.running_tid
    fs.commit()
    assert fs.tid_to_commit(ino, 0, 3 * BS) == 0


def test_tid_to_commit_names_the_newest_uncommitted_tid_of_the_range(fs):
    ino = mkfile(fs, b"a")
    fs.write(ino, 0, b"a" * BS)
    t1 = fs.start_commit()
    # Frozen, not yet written: block 0 is still unstable, and the tid to wait for is t1's.
    assert fs.tid_to_commit(ino, 0, BS) == t1.tid
    fs.write(ino, BS, b"b" * BS)
    t2 = fs.journal.running_tid
    assert t2 == t1.tid + 1
    assert fs.tid_to_commit(ino, 0, 2 * BS) == t2  # committing t2 commits t1 too
    fs.journal.write_commit(t1)
    fs.finish_commit(t1)
    assert fs.tid_to_commit(ino, 0, BS) == 0
    assert fs.tid_to_commit(ino, 0, 2 * BS) == t2
    fs.commit()
    assert fs.tid_to_commit(ino, 0, 2 * BS) == 0


def test_an_empty_range_needs_nothing(fs):
    ino = mkfile(fs, b"a", b"x")
    assert fs.tid_to_commit(ino, 0, 0) == 0


def test_sequential_writes_in_one_transaction_extend_one_range():
    u = UnstableMap()
    for i in range(100):
        u.mark(i, i + 1, 7)
    assert u.ranges == [[0, 100, 7]]
    u.mark(200, 201, 7)
    assert len(u.ranges) == 2


def test_count_counts_a_block_unstable_in_two_transactions_once():
    u = UnstableMap()
    u.mark(0, 10, 3)
    u.mark(5, 15, 4)
    assert u.count(0) == 15
    assert u.count(3) == 10  # tid 3 committed: only [5, 15) left
    assert tid_to_commit(u, 0, 5, 3) == 0
    assert tid_to_commit(u, 0, 6, 3) == 4
    assert u.count(4) == 0 and not u.any(4)


def test_an_uncommitted_size_change_keeps_the_inode_unstable():
    u = UnstableMap()
    u.size_tid = 9
    assert u.any(8) and not u.any(9)
