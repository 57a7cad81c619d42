"""fsck (daxfs/engine/fsck.py, fsck_inodes.py) and inspect (describe.py): clean images stay clean,
each broken invariant is reported.

Corruptions are crafted on a closed (checkpointed) image by editing one structure with the image
helpers (helpers.py) and re-sealing its checksum, so that only the intended invariant breaks.
"""

from __future__ import annotations

import json
import shutil
import stat
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxfs.engine import format as fmt
from daxfs.engine.describe import describe
from daxfs.engine.errors import FsError
from daxfs.engine.fs import FileSystem
from daxfs.engine.fsck import check
from daxfs.engine.mkfs import mkfs
from daxfs.engine.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from helpers import (MiB, ROOT, Tree, crashed_with_transactions, digest, edit, edit_dirent, edit_extent,
                     edit_inode, extent, flip, load, make_template, only, populate, problems, record, set_bit, store,
                     superblock)

DIR_DTYPE = stat.S_IFDIR >> 12


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[str, Tree]:
    path = str(tmp_path_factory.mktemp("fsck") / "template.img")
    return path, make_template(path)


@pytest.fixture
def img(template, tmp_path) -> tuple[str, Tree]:
    """A private copy of the populated, cleanly closed template."""
    path = str(tmp_path / "img.img")
    shutil.copyfile(template[0], path)
    return path, template[1]


def test_fresh_image_is_clean(tmp_path):
    path = str(tmp_path / "fresh.img")
    mkfs(path, 16 * MiB)
    report = check(path)
    assert report.clean, report.lines()
    assert report.stats.directories == 1 and report.stats.files == 0
    assert report.lines()[-1].startswith(f"{path}: clean, 0 files, 1 directories, ")
    assert report.journal.pending == 0


def test_populated_image_is_clean(img):
    path, _ = img
    report = check(path)
    assert report.clean, report.lines()
    s = report.stats
    assert (s.files, s.directories, s.symlinks, s.special) == (24, 3, 1, 1)
    assert s.inodes_used == 2 + 28  # the reserved two and the tree
    assert s.data_blocks == 6 + 1 + 1 + 16  # big, small, the symlink, pre
    assert s.blocks_used == s.data_blocks + s.metadata_blocks
    d = report.as_dict()
    assert d["clean"] and d["problems"] == [] and d["stats"]["files"] == 24


def test_crashed_image_is_checked_as_replay_would_leave_it(tmp_path):
    path = str(tmp_path / "crash.img")
    mkfs(path, 16 * MiB)
    f = FileSystem.open(path, durable=False)
    tree = populate(f)
    f.commit()
    f.unlink(ROOT, b"big")
    f.ref(tree.small)  # held open: unlinking it twice makes an orphan
    f.unlink(ROOT, b"small")
    f.unlink(tree.d, b"hard")
    f.mkdir(tree.sub, b"deeper", 0o700, 0, 0)
    f.commit()
    f.create(ROOT, b"never-committed", 0o644, 0, 0)
    f.region.close()  # a daemon kill: no checkpoint, no clean flag

    before = digest(path)
    report = check(path)
    assert digest(path) == before  # fsck never writes
    assert report.clean, report.lines()
    assert report.journal.pending >= 2
    assert report.stats.files == 24 - 1  # big gone; small an orphan; the uncommitted file absent
    assert report.lines()[-1].endswith(f"{report.journal.pending} transactions to replay")

    f = FileSystem.open(path, durable=False)
    assert f.open_report.orphans == 1
    f.close()
    after = check(path)
    assert after.clean and after.journal.pending == 0 and after.stats.files == 22


OPS = ("create", "mkdir", "write", "truncate", "prealloc", "unlink", "unlink open", "forget", "rmdir", "rename",
       "link", "symlink", "xattr", "commit", "checkpoint")


def apply(f: FileSystem, dirs: list[int], held: list[int], op: str, a: int, b: int, n: int) -> None:
    """One engine operation on names n0..n7 of the known directories; errors (ENOENT, ...) are fine."""
    d, name, other, there = dirs[a % len(dirs)], b"n%d" % (a % 8), b"n%d" % (b % 8), dirs[b % len(dirs)]
    e = f.entry(d, name)
    if op == "create":
        f.create(d, name, 0o644, 0, 0)
    elif op == "mkdir":
        dirs.append(f.mkdir(d, name, 0o755, 0, 0).ino)
    elif op == "write" and e and e.dtype == stat.S_IFREG >> 12:
        f.write(e.ino, n, b"w" * (n % 20000 + 1))
    elif op == "truncate" and e:
        f.truncate(e.ino, n)
    elif op == "prealloc" and e:
        f.prealloc(e.ino, n, 40000, keep_size=bool(b % 2))
    elif op.startswith("unlink"):
        if e and op == "unlink open":
            f.ref(e.ino)  # held open: unlinking the last name makes an orphan
            held.append(e.ino)
        f.unlink(d, name)
    elif op == "forget" and held:
        f.forget(held.pop())
    elif op == "rmdir":
        f.rmdir(d, name)
    elif op == "rename":
        f.rename(d, name, there, other, (0, RENAME_NOREPLACE, RENAME_EXCHANGE)[n % 3])
    elif op == "link" and e:
        f.link(e.ino, there, other)
    elif op == "symlink":
        f.symlink(d, name, b"t" * (n % 4000 + 1), 0, 0)
    elif op == "xattr" and e:
        f.setxattr(e.ino, b"user.%d" % (b % 2), b"x" * (n % 9000))
    elif op == "commit":
        f.commit()
    elif op == "checkpoint":
        f.commit()
        f.journal.checkpoint()
        f.after_commit()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 15), st.integers(0, 15), st.integers(0, 1 << 17)),
                    max_size=80),
       end=st.sampled_from(["close", "crash", "commit and crash"]))
def test_whatever_the_engine_leaves_is_clean(tmp_path_factory, ops, end):
    """fsck agrees with the engine: any sequence of operations, closed or killed, checks clean, and so
    does the image after replay."""
    path = str(tmp_path_factory.getbasetemp() / "ops.img")
    mkfs(path, 8 * MiB, force=True)
    f = FileSystem.open(path, durable=False)
    dirs: list[int] = [ROOT]
    held: list[int] = []
    for op in ops:
        try:
            apply(f, dirs, held, *op)
        except FsError:
            pass
    if end == "close":
        f.close()
    else:
        if end == "commit and crash":
            f.commit()
        f.region.close()
    report = check(path)
    assert report.clean, report.lines()
    FileSystem.open(path, durable=False).close()
    report = check(path)
    assert report.clean and report.journal.pending == 0, report.lines()


def test_describe_is_read_only_and_serialisable(img):
    path, _ = img
    before = digest(path)
    info = describe(path)
    assert digest(path) == before
    json.dumps(info)
    sb = superblock(path)
    assert info["total blocks"] == sb.total_blocks and info["data start"] == sb.data_start
    assert info["blocks used"] == check(path).stats.blocks_used
    assert info["blocks used"] + info["blocks free"] == sb.total_blocks
    assert info["inodes used"] == 30 and info["state"] == "clean"
    assert info["journal transactions to replay"] == 0


# --- superblocks and geometry -----------------------------------------------------------------------
def test_damaged_secondary_superblock_is_a_problem(img):
    path, _ = img
    flip(path, 1, 200)
    only(path, "superblock: copy in block 1 is damaged")


def test_superblock_copies_that_disagree(img):
    path, _ = img
    sb = superblock(path)
    other = 1 - sb.generation % 2
    old = fmt.Superblock.unpack(load(path, other), other)
    old.inode_count += 1
    store(path, other, old.pack(other))
    only(path, "disagree on inode_count")


def test_inconsistent_geometry_is_reported_not_raised(img):
    path, _ = img
    sb = superblock(path)
    sb.data_start += 1
    for blkno in (0, 1):
        store(path, blkno, sb.pack(blkno))
    report = check(path)
    assert not report.clean
    assert "geometry" in str(report.problems[-1])


# --- bitmaps and ownership --------------------------------------------------------------------------
def free_data_block(path: str) -> int:
    return superblock(path).total_blocks - 10


def test_leaked_block(img):
    path, _ = img
    blk = free_data_block(path)
    set_bit(path, superblock(path).bitmap_start, blk, True)
    only(path, f"block {blk}: marked in use, but nothing owns them")


def test_owned_block_marked_free(img):
    path, tree = img
    _, _, _, pblk = extent(path, tree.small)
    set_bit(path, superblock(path).bitmap_start, pblk, False)
    only(path, f"block {pblk}: in use, but marked free in the block bitmap")


def test_two_files_share_a_block(img):
    path, tree = img
    _, _, _, shared = extent(path, tree.small)
    _, _, _, own = extent(path, tree.big)
    edit_extent(path, tree.big, pblk=shared)
    only(path, f"block {shared}: owned by both inode {tree.big} data and inode {tree.small} data",
         f"block {own}: marked in use, but nothing owns them")


def test_extent_outside_the_data_area(img):
    path, tree = img
    _, _, _, own = extent(path, tree.small)
    edit_extent(path, tree.small, pblk=5)
    only(path, f"inode {tree.small}: extent at file block 0: maps block 5, outside the data area",
         f"block {own}: marked in use")


def test_bad_extent_state_and_length(img):
    path, tree = img
    edit_extent(path, tree.small, state=7)
    edit_extent(path, tree.pre, len=0)
    only(path, f"inode {tree.small}: extent at file block 0: unknown state 7",
         f"inode {tree.pre}: extent at file block 0: length 0", "marked in use")


def test_overlapping_extents_within_a_file(img):
    path, tree = img
    edit_extent(path, tree.big, 1, lblk=0)  # second extent now also starts at file block 0
    only(path, f"inode {tree.big}: extent at file block 0 overlaps the extent at file block 0")


def test_blocks_field_must_count_extent_blocks(img):
    path, tree = img
    edit_inode(path, tree.big, blocks=5)
    only(path, f"inode {tree.big}: blocks field says 5, its extents map 6")


def test_bits_past_the_end_of_the_bitmap(img):
    path, _ = img
    sb = superblock(path)
    set_bit(path, sb.bitmap_start, sb.total_blocks + 3, True)
    only(path, "block bitmap: bits past the last")


# --- inodes -----------------------------------------------------------------------------------------
def test_reserved_inode_marked_free(img):
    path, _ = img
    set_bit(path, superblock(path).ibitmap_start, fmt.ORPHAN_INO, False)
    only(path, "reserved inode 2 is marked free", "inode 2: free, but its record is not zero")


def test_free_inode_with_a_record(img):
    path, tree = img
    ino = tree.fifo + 1  # free, in a table block that is written
    edit_inode(path, ino, ino=ino, mode=stat.S_IFREG | 0o644)
    only(path, f"inode {ino}: free, but its record is not zero")


def test_allocated_inode_in_an_unwritten_table_block(img):
    path, _ = img
    sb = superblock(path)
    ino = sb.inode_count - 1
    set_bit(path, sb.ibitmap_start, ino, True)
    only(path, f"inode {ino}: allocated, but its table block")


def test_record_of_another_inode(img):
    path, tree = img
    edit_inode(path, tree.fifo, ino=tree.fifo + 7)
    # the entry naming it then names an unreadable inode: one problem, not a cascade
    only(path, f"inode {tree.fifo}: record says it is inode {tree.fifo + 7}")


def test_unknown_file_type(img):
    path, tree = img
    edit_inode(path, tree.fifo, mode=0o170644)
    only(path, f"inode {tree.fifo}: unknown file type")


def test_symlink_size(img):
    path, tree = img
    edit_inode(path, tree.link, size=0)
    only(path, f"inode {tree.link}: symlink of size 0")


def test_wrong_link_count_of_a_file(img):
    path, tree = img
    edit_inode(path, tree.small, nlink=1)
    only(path, f"inode {tree.small}: link count 1, expected 2")


def test_wrong_link_count_of_a_directory(img):
    path, tree = img
    edit_inode(path, tree.d, nlink=2)
    only(path, f"inode {tree.d}: link count 2, expected 3")


def test_file_with_no_links_off_the_orphan_list(img):
    path, tree = img
    edit_inode(path, tree.fifo, nlink=0)
    only(path, f"inode {tree.fifo}: link count 0, expected 1")


# --- chains -----------------------------------------------------------------------------------------
def test_chain_loop(img):
    path, tree = img
    head = record(path, tree.d).dirent_head
    edit(path, head, lambda b: fmt.set_next(b, head))
    found = problems(path)
    assert any(f"inode {tree.d}: directory chain loops back to block {head}" in p for p in found), found


def test_chain_of_another_inode(img):
    path, tree = img
    edit_inode(path, tree.small, extent_head=record(path, tree.big).extent_head)
    found = problems(path)
    assert any(f"inode {tree.small}: extent chain reaches block" in p and f"belongs to inode {tree.big}" in p
               for p in found), found


def test_chain_pointing_outside_the_data_area(img):
    path, tree = img
    edit_inode(path, tree.xa, xattr_head=superblock(path).total_blocks + 100)
    found = problems(path)
    assert any(f"inode {tree.xa}: xattr chain points at block" in p for p in found), found


def test_chain_block_used_count(img):
    path, tree = img
    head = record(path, tree.big).extent_head
    edit(path, head, lambda b: fmt.set_used(b, 9))
    only(path, f"block {head}: header counts 9 used slots, 2 are in use")


def test_xattr_blob_that_does_not_parse(img):
    path, tree = img
    head = record(path, tree.xa).xattr_head
    edit(path, head, lambda b: struct.pack_into("<BI", b, fmt.HEADER_SIZE, 0, 1))
    only(path, f"inode {tree.xa}: bad extended attribute lengths")


# --- directories ------------------------------------------------------------------------------------
def test_xattr_name_with_a_nul_byte(img):
    path, tree = img
    head = record(path, tree.xa).xattr_head
    edit(path, head, lambda b: b.__setitem__(fmt.HEADER_SIZE + 5 + 4, 0))  # a NUL inside the first name
    assert any(f"inode {tree.xa}: extended attribute" in p and "NUL" in p for p in problems(path))


def test_entry_naming_a_free_inode(img):
    path, tree = img
    free = tree.fifo + 1
    edit_dirent(path, ROOT, b"fifo", ino=free)
    only(path, f"directory 1: entry 'fifo' names free inode {free}",
         f"inode {tree.fifo}: no directory entry names it")


def test_entry_type_mismatch(img):
    path, tree = img
    edit_dirent(path, ROOT, b"small", dtype=DIR_DTYPE)
    only(path, f"directory 1: entry 'small' has type {DIR_DTYPE}, inode {tree.small} is of type 8")


def test_duplicate_and_invalid_names(img):
    path, tree = img
    edit_dirent(path, tree.d, b"f1", new_name=b"f0")
    edit_dirent(path, tree.d, b"f2", new_name=b"a/b")
    only(path, f"directory {tree.d}: two entries named 'f0'", f"directory {tree.d}: entry with invalid name 'a/b'",
         "no directory entry names it")


def test_directory_parent_field(img):
    path, tree = img
    edit_inode(path, tree.sub, parent=ROOT)
    only(path, f"inode {tree.sub}: parent field says 1, but directory {tree.d} names it")


def test_directory_named_twice(img):
    path, tree = img
    edit_dirent(path, ROOT, b"small", ino=tree.sub, dtype=DIR_DTYPE)
    found = problems(path)
    assert any(f"inode {tree.sub}: directory named 2 times" in p for p in found), found


def test_unreachable_directory_cycle(img):
    path, tree = img
    # d names sub, sub's entry would need a chain: instead point root's "d" at sub and d's "sub" at d.
    edit_dirent(path, ROOT, b"d", ino=tree.sub)
    edit_dirent(path, tree.d, b"sub", ino=tree.d)
    edit_inode(path, tree.sub, parent=ROOT)
    edit_inode(path, tree.d, parent=tree.d)
    found = problems(path)
    assert any(f"inode {tree.d}: directory is not reachable from the root" in p for p in found), found


def test_entry_naming_the_root(img):
    path, tree = img
    edit_dirent(path, tree.d, b"f0", ino=ROOT, dtype=DIR_DTYPE)
    found = problems(path)
    assert any(f"directory {tree.d}: entry 'f0' names reserved directory 1" in p for p in found), found


def test_orphan_with_links(tmp_path):
    path = str(tmp_path / "orphan.img")
    mkfs(path, 16 * MiB)
    f = FileSystem.open(path, durable=False)
    ino = f.create(ROOT, b"gone", 0o644, 0, 0).ino
    f.ref(ino)
    f.unlink(ROOT, b"gone")
    f.commit()
    f.journal.checkpoint()
    f.region.close()  # crashed with the orphan on the list, everything home
    assert check(path).clean
    edit_inode(path, ino, nlink=1)
    only(path, f"inode {ino}: link count 1, expected 0")


# --- journal ----------------------------------------------------------------------------------------
def test_torn_last_transaction_is_not_an_error(tmp_path):
    path = str(tmp_path / "torn.img")
    commits = crashed_with_transactions(path, 3)
    flip(path, commits[-1], 100)
    report = check(path)
    assert report.clean, report.lines()
    assert report.journal.pending == 2


def test_damaged_transaction_before_committed_ones(tmp_path):
    path = str(tmp_path / "lost.img")
    commits = crashed_with_transactions(path, 3)
    flip(path, commits[0], 100)
    found = problems(path)
    assert len(found) == 2 and all("lies past where replay stops" in p for p in found), found


def test_descriptor_naming_a_home_outside_the_image(tmp_path):
    path = str(tmp_path / "desc.img")
    crashed_with_transactions(path, 1)
    sb = superblock(path)
    desc = sb.journal_start + sb.journal_tail
    edit(path, desc, lambda b: struct.pack_into("<Q", b, fmt.HEADER_SIZE, sb.total_blocks + 5))
    found = problems(path)
    assert any("descriptor names home block" in p for p in found), found



def test_a_superblock_state_that_is_neither_clean_nor_dirty(img):
    path, _ = img
    sb = superblock(path)
    blk = sb.generation % 2
    edit(path, blk, lambda b: struct.pack_into("<I", b, fmt.HEADER_SIZE + 24, 4095))
    assert any("state 4095" in p for p in problems(path)), problems(path)
