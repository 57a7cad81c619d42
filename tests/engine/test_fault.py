"""Direct access in the engine (fs.py, "direct access" section): faults, pins, revocation, stale zero pages.

No FUSE here: the fault service (faults.py) and the client (daxfs.dax) are tested through real mounts in
test_dax.py. These tests hold the rules those rely on.
"""

from __future__ import annotations

import errno

import pytest

from daxfs.engine import format as fmt
from daxfs.engine import core as fs_module
from daxfs.engine.fsck import check
from daxfs.engine.core import SLACK
from daxfs.engine.fs import FileSystem
from helpers import crash, err, mkfile, reopen


BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO


def sized(f: FileSystem, name: bytes, size: int) -> int:
    """A sparse file of `size` bytes, committed: no blocks, nothing unstable."""
    ino = mkfile(f, name)
    f.truncate(ino, size)
    f.commit()
    return ino


def test_a_read_fault_on_a_hole_or_unwritten_block_gives_the_zero_page_and_allocates_nothing(fs):
    ino = sized(fs, b"a", 8 * BS)
    fs.prealloc(ino, 4 * BS, 2 * BS)
    fs.commit()
    blocks = fs.inode(ino).blocks
    m = fs.dax_map(ino, 0, 8, writable=True)
    runs, tid = fs.dax_fault(m, 0, 8, write=False)
    assert runs == [(0, 4, None), (4, 2, None), (6, 2, None)] and tid == 0
    assert fs.inode(ino).blocks == blocks and not fs._pins


def test_a_write_fault_allocates_zeroed_blocks_and_names_the_transaction_to_commit(fs):
    ino = sized(fs, b"a", 4 * BS)
    m = fs.dax_map(ino, 0, 4, writable=True)
    (page, n, pblk), = fs.dax_fault(m, 1, 2, write=True)[0]
    tid = fs.tid_to_commit(ino, BS, 2 * BS)
    assert (page, n) == (1, 2) and tid == fs.journal.running_tid
    assert fs.region.load(pblk * BS, 2 * BS) == bytes(2 * BS)
    fs.commit()
    # the same pages again: stable now, so a MAP_SYNC mapping has nothing to wait for
    runs, tid = fs.dax_fault(m, 1, 2, write=True)
    assert runs == [(1, 2, pblk)] and tid == 0
    fs.region.store(pblk * BS + 10, b"direct")  # a store through the mapping
    assert fs.read(ino, BS + 10, 6) == b"direct"


def test_a_write_fault_converts_unwritten_blocks_and_zeroes_their_old_bytes(fs):
    ino = mkfile(fs, b"a")
    fs.prealloc(ino, 0, 2 * BS)
    fs.commit()
    pblk = fs.map(ino)[0][0].pblk
    fs.region.store(pblk * BS, b"\xaa" * BS)  # whatever an earlier owner left
    m = fs.dax_map(ino, 0, 2, writable=True)
    runs, tid = fs.dax_fault(m, 0, 1, write=True)
    assert runs == [(0, 1, pblk)] and tid == fs.journal.running_tid  # a conversion is unstable too
    assert fs.region.load(pblk * BS, BS) == bytes(BS)


def test_faults_are_refused_beyond_eof_outside_the_mapping_and_for_writes_to_read_only_mappings(fs):
    ino = sized(fs, b"a", 2 * BS + 1)
    m = fs.dax_map(ino, 0, 4, writable=False)
    assert fs.dax_fault(m, 2, 1, write=False)[0] == [(2, 1, None)]  # the EOF page itself
    assert err(fs.dax_fault, m, 3, 1, write=False) == errno.EFAULT  # SIGBUS
    assert err(fs.dax_fault, m, 0, 5, write=False) == errno.EINVAL
    assert err(fs.dax_fault, m, 0, 1, write=True) == errno.EACCES
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    assert err(fs.dax_map, d, 0, 1, writable=False) == errno.ENODEV


@pytest.mark.parametrize("how", ["truncate", "punch", "unlink"])
def test_taking_a_mapped_range_away_revokes_the_mapping_and_tells_the_service(fs, how):
    told = []
    fs.dax_notify = told.append
    ino = sized(fs, b"a", 8 * BS)
    inside = fs.dax_map(ino, 4, 2, writable=True)
    before = fs.dax_map(ino, 0, 2, writable=True)
    fs.dax_fault(inside, 4, 2, write=True)
    if how == "truncate":
        fs.truncate(ino, 3 * BS)
    elif how == "punch":
        fs.punch(ino, 4 * BS, 2 * BS)
    else:
        fs.unlink(ROOT, b"a")
    revoked = [inside, before] if how == "unlink" else [inside]
    assert told == revoked and all(m.revoked for m in revoked)
    assert before.revoked == (how == "unlink")  # truncate and punch left its range alone
    assert err(fs.dax_fault, inside, 4, 1, write=False) == errno.EFAULT
    assert fs.dax_mapped(ino) == (how != "unlink")


def test_a_freed_block_stays_unallocatable_while_a_mapping_holds_it(fs, monkeypatch):
    monkeypatch.setattr(fs_module, "RESERVE", 0)
    ino = sized(fs, b"a", 4 * BS)
    m = fs.dax_map(ino, 0, 4, writable=True)
    (_, _, pblk), = fs.dax_fault(m, 0, 4, write=True)[0]
    held = set(range(pblk, pblk + 4))
    fs.truncate(ino, 0)  # frees the four blocks; the mapping is revoked but still holds them
    fs.commit()
    fs.journal.checkpoint()
    fs.after_commit()
    b = mkfile(fs, b"b")
    fs.write(b, 0, b"\xbb" * ((fs.alloc.blocks.free_now - SLACK) * BS))  # everything allocatable
    got = {r.pblk + i for r, _ in fs.map(b) for i in range(r.len)}
    assert not got & held
    assert err(fs.write, b, 1 << 30, b"x" * BS * 8) == errno.ENOSPC
    fs.dax_unmap(m)  # the last unpin makes them allocatable
    fs.write(b, 1 << 30, b"x" * BS * 4)
    got = {r.pblk + i for r, _ in fs.map(b) if r.pblk is not None for i in range(r.len)}
    assert held <= got


def test_a_write_that_fills_a_hole_held_as_the_zero_page_marks_that_page_stale(fs):
    told = []
    fs.dax_notify = told.append
    ino = sized(fs, b"a", 8 * BS)
    m = fs.dax_map(ino, 0, 8, writable=False)
    fs.dax_fault(m, 0, 8, write=False)
    fs.write(ino, 2 * BS + 5, b"through the mount")
    other = fs.dax_map(ino, 0, 8, writable=True)
    fs.dax_fault(other, 6, 1, write=True)  # another mapping's write fault fills a hole too
    assert told == [m, m]
    assert fs.dax_take_stale(m) == [2, 6] and fs.dax_take_stale(m) == []
    (_, _, pblk), = fs.dax_fault(m, 2, 1, write=False)[0]
    assert fs.region.load(pblk * BS + 5, 17) == b"through the mount"


def test_punch_frees_whole_blocks_zeroes_partial_ones_and_keeps_the_size(image):
    f = reopen(image)
    ino = mkfile(f, b"a", b"\x11" * (6 * BS))
    assert f.punch(ino, BS + 100, 3 * BS) == 2  # blocks 2 and 3 whole; 1 and 4 in part
    data = f.read(ino, 0, 6 * BS)
    assert len(data) == 6 * BS and f.inode(ino).blocks == 4
    assert data[:BS + 100] == b"\x11" * (BS + 100)
    assert data[BS + 100:4 * BS + 100] == bytes(3 * BS)
    assert data[4 * BS + 100:] == b"\x11" * (2 * BS - 100)
    assert f.punch(ino, 10 * BS, BS) == 0  # past EOF: nothing
    assert err(f.punch, ino, 0, 0) == errno.EINVAL
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.read(ino, 0, 6 * BS) == data
    g.close()
    assert check(image).clean


def test_a_committed_write_fault_survives_a_crash_with_what_was_stored_through_it(image):
    f = reopen(image)
    ino = sized(f, b"a", 2 * BS)
    m = f.dax_map(ino, 0, 2, writable=True)
    (_, _, pblk), = f.dax_fault(m, 0, 2, write=True)[0]
    f.commit()  # what the service does for a MAP_SYNC mapping before answering
    f.region.store(pblk * BS, b"stored directly")
    f.dax_fault(f.dax_map(ino, 0, 2, writable=True), 0, 1, write=True)  # uncommitted: mtime only
    crash(f)
    g = reopen(image)
    assert g.read(ino, 0, 15) == b"stored directly" and g.inode(ino).blocks == 2
    g.close()
    assert check(image).clean


def test_fsync_persists_the_blocks_mapped_writable(fs, monkeypatch):
    ino = sized(fs, b"a", 2 * BS)
    m = fs.dax_map(ino, 0, 2, writable=True)
    (_, _, pblk), = fs.dax_fault(m, 0, 2, write=True)[0]
    flushed = []
    monkeypatch.setattr(fs.region, "persist_ranges", lambda runs: flushed.extend(runs))
    fs.persist_data(ino)
    fs.persist_data(ino)  # stores may come at any time: flushed every time, not once
    assert flushed.count((pblk * BS, BS)) == 2 and flushed.count(((pblk + 1) * BS, BS)) == 2
