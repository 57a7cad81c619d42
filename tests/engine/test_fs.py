"""FileSystem (fs.py): POSIX semantics of the operations, orphans, and no stale data ever."""

from __future__ import annotations

import errno
import stat

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.errors import DaxfsError, FsError
from daxfs.engine import core as fs_module
from daxfs.engine.core import SLACK
from daxfs.engine.fs import FileSystem
from daxfs.engine.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from daxfs.engine.xattr import MAP_SYNC_XATTR, XATTR_CREATE, XATTR_REPLACE
from daxfs.testing.power import CrashRegion
from helpers import crash, err, mkfile, reopen


BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO


def mkdir(f, parent, name) -> int:
    return f.mkdir(parent, name, 0o755, 0, 0).ino


def ls(f, ino) -> set[bytes]:
    return {n for _, n, _, _ in f.readdir(ino) if n not in (b".", b"..")}


def content(f, ino) -> bytes:
    return f.read(ino, 0, f.inode(ino).size)


# --- rename ---------------------------------------------------------------------------------------

def test_rename_over_a_file_replaces_it_and_frees_the_old_one(fs):
    a = mkfile(fs, b"a", b"new")
    mkfile(fs, b"b", b"old" * 2000)
    files_free, blocks_free = fs.statfs().files_free, fs.statfs().blocks_free
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert ls(fs, ROOT) == {b"b"}
    assert fs.lookup(ROOT, b"b").ino == a and content(fs, a) == b"new"
    assert fs.statfs().files_free == files_free + 1
    assert fs.statfs().blocks_free == blocks_free + 2


def test_rename_exchange_swaps_two_names_across_directories(fs):
    d1, d2 = mkdir(fs, ROOT, b"d1"), mkdir(fs, ROOT, b"d2")
    f = mkfile(fs, b"f", b"file", parent=d1)
    sub = mkdir(fs, d2, b"sub")
    fs.rename(d1, b"f", d2, b"sub", RENAME_EXCHANGE)
    assert fs.lookup(d1, b"f").ino == sub and fs.lookup(d2, b"sub").ino == f
    assert fs.inode(sub).parent == d1 and fs.lookup(sub, b"..").ino == d1
    assert fs.inode(d1).nlink == 3 and fs.inode(d2).nlink == 2  # the subdirectory's ".." moved
    assert err(fs.rename, d1, b"f", d2, b"missing", RENAME_EXCHANGE) == errno.ENOENT


def test_rename_noreplace_refuses_an_existing_target(fs):
    mkfile(fs, b"a", b"1")
    mkfile(fs, b"b", b"2")
    assert err(fs.rename, ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE) == errno.EEXIST
    fs.rename(ROOT, b"a", ROOT, b"c", RENAME_NOREPLACE)
    assert ls(fs, ROOT) == {b"b", b"c"}
    assert err(fs.rename, ROOT, b"b", ROOT, b"c", RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL


def test_rename_a_directory_into_its_own_subtree_is_einval(fs):
    a = mkdir(fs, ROOT, b"a")
    b = mkdir(fs, a, b"b")
    c = mkdir(fs, b, b"c")
    assert err(fs.rename, ROOT, b"a", c, b"a") == errno.EINVAL
    assert err(fs.rename, ROOT, b"a", a, b"self") == errno.EINVAL
    assert fs.inode(a).parent == ROOT and ls(fs, ROOT) == {b"a"}


def test_rename_directory_over_directory(fs):
    src = mkdir(fs, ROOT, b"src")
    full = mkdir(fs, ROOT, b"full")
    mkfile(fs, b"x", parent=full)
    empty = mkdir(fs, ROOT, b"empty")
    nlink = fs.inode(ROOT).nlink
    assert err(fs.rename, ROOT, b"src", ROOT, b"full") == errno.ENOTEMPTY
    fs.rename(ROOT, b"src", ROOT, b"empty")
    assert fs.lookup(ROOT, b"empty").ino == src
    assert fs.inode(ROOT).nlink == nlink - 1  # the replaced directory's ".." is gone
    assert err(fs.inode, empty) == errno.ENOENT


def test_rename_between_a_file_and_a_directory_is_eisdir_or_enotdir(fs):
    mkfile(fs, b"f")
    mkdir(fs, ROOT, b"d")
    assert err(fs.rename, ROOT, b"f", ROOT, b"d") == errno.EISDIR
    assert err(fs.rename, ROOT, b"d", ROOT, b"f") == errno.ENOTDIR
    assert err(fs.rename, ROOT, b"nope", ROOT, b"x") == errno.ENOENT


def test_rename_onto_another_link_of_the_same_file_does_nothing(fs):
    a = mkfile(fs, b"a", b"1")
    fs.link(a, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert ls(fs, ROOT) == {b"a", b"b"} and fs.inode(a).nlink == 2


def test_rename_moves_a_directory_and_its_dotdot(fs):
    d1, d2 = mkdir(fs, ROOT, b"d1"), mkdir(fs, ROOT, b"d2")
    sub = mkdir(fs, d1, b"sub")
    fs.rename(d1, b"sub", d2, b"moved")
    assert fs.lookup(d2, b"moved").ino == sub and fs.lookup(sub, b"..").ino == d2
    assert fs.inode(d1).nlink == 2 and fs.inode(d2).nlink == 3


# --- links, unlink, rmdir -------------------------------------------------------------------------

def test_link_and_unlink_count_links_and_free_at_zero(fs):
    a = mkfile(fs, b"a", b"data")
    fs.link(a, ROOT, b"b")
    d = mkdir(fs, ROOT, b"d")
    fs.link(a, d, b"c")
    assert fs.inode(a).nlink == 3
    fs.unlink(ROOT, b"a")
    fs.unlink(d, b"c")
    assert fs.inode(a).nlink == 1 and content(fs, fs.lookup(ROOT, b"b").ino) == b"data"
    fs.unlink(ROOT, b"b")
    assert err(fs.inode, a) == errno.ENOENT
    assert err(fs.link, d, ROOT, b"dirlink") == errno.EPERM
    assert err(fs.unlink, ROOT, b"b") == errno.ENOENT


def test_mkdir_and_rmdir_keep_nlink(fs):
    n = fs.inode(ROOT).nlink
    d = mkdir(fs, ROOT, b"d")
    assert fs.inode(d).nlink == 2 and fs.inode(ROOT).nlink == n + 1
    mkfile(fs, b"f", parent=d)
    assert err(fs.rmdir, ROOT, b"d") == errno.ENOTEMPTY
    assert err(fs.unlink, ROOT, b"d") == errno.EISDIR
    assert err(fs.rmdir, d, b"f") == errno.ENOTDIR
    assert err(fs.rmdir, d, b".") == errno.EINVAL
    fs.unlink(d, b"f")
    fs.rmdir(ROOT, b"d")
    assert fs.inode(ROOT).nlink == n and ls(fs, ROOT) == set()


def test_nothing_can_be_created_in_a_removed_directory(fs):
    d = mkdir(fs, ROOT, b"d")
    fs.ref(d)  # a process still has it as its cwd
    fs.rmdir(ROOT, b"d")
    assert err(mkfile, fs, b"f", b"", d) == errno.ENOENT


def test_names_of_256_bytes_are_enametoolong_everywhere(fs):
    long = b"n" * 256
    a = mkfile(fs, b"a")
    assert err(mkfile, fs, long) == errno.ENAMETOOLONG
    assert err(fs.mkdir, ROOT, long, 0o755, 0, 0) == errno.ENAMETOOLONG
    assert err(fs.link, a, ROOT, long) == errno.ENAMETOOLONG
    assert err(fs.rename, ROOT, b"a", ROOT, long) == errno.ENAMETOOLONG
    assert err(fs.symlink, ROOT, long, b"a", 0, 0) == errno.ENAMETOOLONG
    assert err(fs.lookup, ROOT, long) == errno.ENAMETOOLONG


# --- data -----------------------------------------------------------------------------------------

def test_writes_and_truncates_past_the_largest_file_are_efbig(fs):
    a = mkfile(fs, b"a")
    limit = fmt.MAX_FILE_BLOCKS * BS
    assert fs.write(a, limit - 1, b"xy") == 1  # as Linux: short up to the limit (generic_write_checks)
    assert fs.inode(a).size == limit
    assert err(fs.write, a, limit, b"x") == errno.EFBIG  # nothing fits
    assert err(fs.truncate, a, limit + 1) == errno.EFBIG
    assert err(fs.prealloc, a, limit - BS, 2 * BS) == errno.EFBIG


def test_truncate_down_then_up_reads_zeros_where_the_cut_bytes_were(fs):
    a = mkfile(fs, b"a", b"\xaa" * (3 * BS))
    fs.truncate(a, 100)  # block 0 keeps its bytes past 100 on pmem
    fs.truncate(a, 3 * BS)
    assert content(fs, a) == b"\xaa" * 100 + bytes(3 * BS - 100)


def test_regression_append_into_the_eof_block_keeps_the_appended_bytes(fs):
    # Bug: _write() grew i_size after copying the data, and growing zeroes the old EOF block from the
    # old size on, wiping the bytes just appended there.
    a = mkfile(fs, b"a", b"x" * 100)
    fs.write(a, 100, b"y" * 50)  # a plain append
    fs.write(a, 200, b"z" * 10)  # past EOF, same block
    fs.write(a, 205, b"w" * 5000)  # overlapping EOF, into the next block
    assert content(fs, a) == b"x" * 100 + b"y" * 50 + bytes(50) + b"z" * 5 + b"w" * 5000


def test_regression_truncate_down_then_write_past_eof_zeroes_only_the_gap(fs):
    # Same bug through a truncate: the old tail must become zeros, the new bytes must stay.
    a = mkfile(fs, b"a", b"\xaa" * BS)
    fs.truncate(a, 10)
    fs.write(a, 20, b"new")
    assert content(fs, a) == b"\xaa" * 10 + bytes(10) + b"new"


def test_regression_zeros_of_a_grown_eof_block_are_persisted_before_the_size_commits(image):
    # Bug: growing a file zeroed the cut bytes of its old EOF block with a plain store, not ordered
    # before the commit (commit.py I1). A power cut after the commit could lose the zeros and show the
    # cut bytes again inside the file.
    f = FileSystem(CrashRegion(image, lose_unpersisted=True))
    a = mkfile(f, b"a", b"\xaa" * BS)
    f.commit()
    f.truncate(a, 10)
    f.commit()
    f.truncate(a, BS)
    f.write(a, 2 * BS, b"b")  # and through a write past EOF
    f.commit()
    f.region.power_off()
    f.region.close()
    g = reopen(image)
    assert content(g, a) == b"\xaa" * 10 + bytes(2 * BS - 10) + b"b"
    g.close()


def test_prealloc_keep_size_and_reads_of_unwritten_blocks(fs):
    a = mkfile(fs, b"a", b"abc")
    assert fs.prealloc(a, 0, 4 * BS, keep_size=True) == 3  # block 0 is already mapped
    assert fs.inode(a).size == 3
    fs.prealloc(a, 0, 4 * BS)
    assert fs.inode(a).size == 4 * BS
    assert content(fs, a) == b"abc" + bytes(4 * BS - 3)
    assert err(fs.prealloc, a, 0, 0) == errno.EINVAL
    d = mkdir(fs, ROOT, b"d")
    assert err(fs.prealloc, d, 0, BS) == errno.EISDIR  # as fallocate(2) answers for a directory


def test_reading_or_writing_a_directory_is_eisdir(fs):
    d = mkdir(fs, ROOT, b"d")
    assert err(fs.read, d, 0, 1) == errno.EISDIR
    assert err(fs.write, d, 0, b"x") == errno.EISDIR
    assert err(fs.truncate, d, 0) == errno.EISDIR


# --- no stale data --------------------------------------------------------------------------------

def test_a_new_file_never_shows_a_deleted_files_bytes(image, monkeypatch):
    monkeypatch.setattr(fs_module, "RESERVE", 0)  # b must reuse a's blocks, not take the reserve
    f = FileSystem(CrashRegion(image, lose_unpersisted=True))
    a = mkfile(f, b"a")
    n = f.alloc.blocks.free_now - SLACK  # all of it but the slack an operation needs
    f.write(a, 0, b"\xaa" * (n * BS))
    f.commit()
    old = {m.pblk + i for m, _ in f.map(a) for i in range(m.len)}
    f.unlink(ROOT, b"a")
    f.commit()
    f.journal.checkpoint()
    f.after_commit()
    b = mkfile(f, b"b")
    f.write(b, 100, b"few")  # inside a new block: the rest of it must read as zeros
    f.write(b, 5 * BS + 3000, b"more")
    f.prealloc(b, 8 * BS, 8 * BS)  # unwritten: zeros, whatever the blocks held
    f.write(b, 10 * BS + 7, b"into unwritten")
    f.truncate(b, 20 * BS)
    f.write(b, 30 * BS - 1, b"x" * 2)  # straddles two new blocks
    new = {m.pblk + i for m, _ in f.map(b) if m.pblk is not None for i in range(m.len)}
    assert new & old, "the test must reuse the deleted file's blocks to mean anything"
    assert b"\xaa" not in content(f, b)
    f.commit()
    f.region.power_off()  # and after a power cut that loses every store nobody persisted
    f.region.close()
    g = reopen(image)
    data = content(g, b)
    assert len(data) == 30 * BS + 1 and b"\xaa" not in data
    assert data[100:103] == b"few" and data[10 * BS + 7:10 * BS + 21] == b"into unwritten"
    g.close()


# --- orphans --------------------------------------------------------------------------------------

def test_an_unlinked_open_file_stays_readable_and_is_freed_at_the_next_mount(image):
    f = reopen(image)
    mkfile(f, b"warm")
    f.ref(mkfile(f, b"w2"))
    f.unlink(ROOT, b"w2")  # gives the orphan directory its entry block before we count
    f.commit()
    crash(f)
    f = reopen(image)
    before = f.statfs()
    a = mkfile(f, b"a", b"still here" * 1000)
    f.ref(a)
    f.unlink(ROOT, b"a")
    assert f.read(a, 0, 10) == b"still here"
    assert b"a" not in ls(f, ROOT)
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.open_report.orphans == 1
    assert err(g.inode, a) == errno.ENOENT
    assert g.statfs().blocks_free == before.blocks_free and g.statfs().files_free == before.files_free
    g.close()


def test_forgetting_an_unlinked_file_frees_it_at_once(fs):
    for name in (b"warm", b"a"):  # the first round gives root and the orphan directory their entry blocks
        before = fs.statfs()
        a = mkfile(fs, name, b"x" * (4 * BS))
        fs.ref(a)
        fs.unlink(ROOT, name)
        assert fs.read(a, 0, 1) == b"x"
        fs.forget(a)
        assert err(fs.inode, a) == errno.ENOENT
    assert fs.statfs().blocks_free == before.blocks_free
    assert fs.statfs().files_free == before.files_free
    fs.close()
    g = reopen(fs.region.path)
    assert g.open_report.orphans == 0
    g.close()


def test_an_unlinked_open_file_can_be_linked_back(image):
    f = reopen(image)
    a = mkfile(f, b"a", b"x")
    f.ref(a)
    f.unlink(ROOT, b"a")
    f.link(a, ROOT, b"back")
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.open_report.orphans == 0 and content(g, g.lookup(ROOT, b"back").ino) == b"x"
    g.close()


# --- xattrs ---------------------------------------------------------------------------------------

def test_xattr_create_and_replace_flags(fs):
    a = mkfile(fs, b"a")
    assert err(fs.setxattr, a, b"user.k", b"v", XATTR_REPLACE) == errno.ENODATA
    fs.setxattr(a, b"user.k", b"v", XATTR_CREATE)
    assert err(fs.setxattr, a, b"user.k", b"w", XATTR_CREATE) == errno.EEXIST
    fs.setxattr(a, b"user.k", b"w", XATTR_REPLACE)
    assert fs.getxattr(a, b"user.k") == b"w"
    assert fs.listxattr(a) == [b"user.k"]
    fs.removexattr(a, b"user.k")
    assert err(fs.getxattr, a, b"user.k") == errno.ENODATA
    assert err(fs.removexattr, a, b"user.k") == errno.ENODATA


def test_xattrs_of_several_blocks_survive_a_crash_and_shrink(image):
    f = reopen(image)
    a = mkfile(f, b"a")
    big = bytes(range(256)) * 40  # 10 KiB: three chain blocks
    f.setxattr(a, b"user.big", big)
    f.setxattr(a, b"user.small", b"s")
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.getxattr(a, b"user.big") == big and g.getxattr(a, b"user.small") == b"s"
    free = g.statfs().blocks_free
    g.removexattr(a, b"user.big")
    assert g.statfs().blocks_free == free + 2
    assert err(g.setxattr, a, b"user.huge", b"h" * (fmt.XATTR_VALUE_MAX + 1)) == errno.E2BIG  # as Linux
    name255 = b"user." + b"n" * 250
    g.setxattr(a, name255, b"m" * fmt.XATTR_VALUE_MAX)  # the kernel's limits: a 255-byte name, a 64 KiB value
    g.setxattr(a, b"user.second", b"s" * fmt.XATTR_VALUE_MAX)
    assert err(g.setxattr, a, b"user.third", b"t" * 40000) == errno.ENOSPC  # past the inode's 160 KiB
    g.commit()
    crash(g)
    h = reopen(image)
    assert h.getxattr(a, name255) == b"m" * fmt.XATTR_VALUE_MAX and len(h.getxattr(a, b"user.second")) == 65536
    h.close()


def test_map_sync_xattr_takes_0_or_1_only_and_is_kept_as_an_inode_flag(image):
    f = reopen(image)
    a = mkfile(f, b"a")
    assert err(f.getxattr, a, MAP_SYNC_XATTR) == errno.ENODATA
    for bad in (b"2", b"yes", b"", b"-1"):
        assert err(f.setxattr, a, MAP_SYNC_XATTR, bad) == errno.EINVAL
    f.setxattr(a, MAP_SYNC_XATTR, b"1")
    assert f.getxattr(a, MAP_SYNC_XATTR) == b"1" and MAP_SYNC_XATTR in f.listxattr(a)
    assert f.inode(a).flags & fmt.FLAG_MAP_SYNC
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.getxattr(a, MAP_SYNC_XATTR) == b"1"
    g.setxattr(a, MAP_SYNC_XATTR, b"0")
    assert not g.inode(a).flags & fmt.FLAG_MAP_SYNC
    assert err(g.getxattr, a, MAP_SYNC_XATTR) == errno.ENODATA
    g.close()


# --- symlinks, attributes -------------------------------------------------------------------------

def test_symlink_and_readlink(image):
    f = reopen(image)
    s = f.symlink(ROOT, b"s", b"some/target", 0, 0).ino
    long = f.symlink(ROOT, b"long", b"t" * 4000, 0, 0).ino
    assert f.readlink(s) == b"some/target"
    assert stat.S_ISLNK(f.inode(s).mode)
    a = mkfile(f, b"a")
    assert err(f.readlink, a) == errno.EINVAL
    assert err(f.symlink, ROOT, b"e", b"", 0, 0) == errno.ENOENT
    assert err(f.symlink, ROOT, b"e", b"t" * BS, 0, 0) == errno.ENAMETOOLONG
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.readlink(s) == b"some/target" and g.readlink(long) == b"t" * 4000
    g.close()


def test_a_setgid_directory_passes_its_group_down(fs):
    d = fs.mkdir(ROOT, b"d", 0o2775, 0, 1234).ino
    assert fs.inode(d).mode & stat.S_ISGID
    f = fs.create(d, b"f", 0o644, 0, 99).ino
    sub = fs.mkdir(d, b"sub", 0o755, 0, 99).ino
    assert fs.inode(f).gid == 1234 and not fs.inode(f).mode & stat.S_ISGID
    assert fs.inode(sub).gid == 1234 and fs.inode(sub).mode & stat.S_ISGID
    plain = fs.mkdir(ROOT, b"plain", 0o755, 0, 1234).ino
    assert fs.create(plain, b"g", 0o644, 0, 99).gid == 99


def test_setattr_changes_only_what_it_is_given(fs):
    a = mkfile(fs, b"a", b"abc")
    fs.setattr(a, mode=0o600, uid=5, mtime_ns=123)
    i = fs.inode(a)
    assert stat.S_IMODE(i.mode) == 0o600 and stat.S_ISREG(i.mode) and i.uid == 5 and i.gid == 0
    assert i.mtime_ns == 123 and i.size == 3
    fs.setattr(a, uid=0xFFFFFFFF, size=1)  # -1 means "unchanged"
    assert fs.inode(a).uid == 5 and content(fs, a) == b"a"


def test_mknod_makes_special_files_but_not_directories(fs):
    p = fs.mknod(ROOT, b"p", stat.S_IFIFO | 0o600, 0, 0)
    assert stat.S_ISFIFO(p.mode)
    c = fs.mknod(ROOT, b"c", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0501)
    assert c.rdev == 0x0501
    assert err(fs.mknod, ROOT, b"d", stat.S_IFDIR | 0o755, 0, 0) == errno.EINVAL
    assert err(fs.truncate, p.ino, 0) == errno.EINVAL


def test_a_read_only_mount_refuses_changes_and_a_dirty_image(image):
    f = reopen(image)
    mkfile(f, b"a", b"1")
    f.close()
    ro = FileSystem.open(image, readonly=True)
    assert content(ro, ro.lookup(ROOT, b"a").ino) == b"1"
    assert err(mkfile, ro, b"b") == errno.EROFS
    ro.close()
    f = reopen(image)
    crash(f)
    with pytest.raises(DaxfsError, match="not unmounted cleanly"):
        FileSystem.open(image, readonly=True)


def test_a_full_fs_can_still_be_emptied_while_the_kernel_holds_references(fs):
    """Unlinking a file the kernel still references puts it on the orphan list, which may need a new
    block; the forget that frees it must work too. Both may use the RESERVE that writes may not."""
    names = [b"f%03d" % i for i in range(200)]
    inos = []
    with pytest.raises(FsError) as e:
        for name in names:
            ino = mkfile(fs, name)
            inos.append(ino)
            fs.ref(ino)  # as a lookup by the kernel does
            fs.write(ino, 0, b"\x5a" * (64 * BS))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(FsError) as e:  # to the last block an ordinary write may take
        for i in range(64):
            fs.write(inos[-1], i * BS, b"\x5a" * BS)
    assert e.value.errno == errno.ENOSPC
    assert fs.statfs().blocks_avail == 0
    for name, ino in zip(names, inos):
        fs.unlink(ROOT, name)  # would fail with ENOSPC if the orphan entry could not be added
    for ino in inos:
        fs.forget(ino)
    fs.commit()
    assert fs.statfs().blocks_avail > fs.statfs().blocks - 100
    ino = mkfile(fs, b"again", b"\x77" * (64 * BS))
    assert fs.read(ino, 0, 64 * BS) == b"\x77" * (64 * BS)


def test_read_updates_atime_as_relatime_does(fs):
    ino = mkfile(fs, b"a", b"data")
    inode = fs.inode(ino)
    inode.atime_ns, inode.mtime_ns, inode.ctime_ns = 1_000, 2_000, 2_000
    fs.read(ino, 0, 4)
    t1 = inode.atime_ns
    assert t1 > 2_000  # atime older than mtime: updated
    fs.read(ino, 0, 4)
    assert inode.atime_ns == t1  # newer than mtime and recent: reads change no metadata
    fs.commit()
    assert fs.inode(ino).atime_ns == t1


def test_remount_read_only_checkpoints_marks_clean_and_refuses_writes_then_read_write_again(image):
    f = reopen(image)
    a = mkfile(f, b"a", b"before")
    f.remount(True)
    assert f.sb.state == fmt.STATE_CLEAN and not f.journal.pending
    assert err(f.write, a, 0, b"x") == errno.EROFS and err(f.mkdir, ROOT, b"d", 0o755, 0, 0) == errno.EROFS
    assert f.read(a, 0, 6) == b"before"
    f.remount(False)
    f.write(a, 0, b"after!")
    assert f.sb.state == fmt.STATE_DIRTY
    f.close()
    g = reopen(image)
    assert g.read(a, 0, 6) == b"after!"
    g.close()
