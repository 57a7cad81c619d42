"""Inode records (daxfs/engine/inode.py): every field bounded as the format says, times by version."""

from __future__ import annotations

import errno

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage
from daxfs.engine.fs import FileSystem
from daxfs.engine.fsck import check
from daxfs.engine.inode import clamp_time
from helpers import ROOT, edit, edit_inode, err, make_template, mkfile, superblock

Y2514_NS = 17_241_753_600 * 10**9  # 2514-05-30, past what signed 64-bit nanoseconds hold


@pytest.fixture
def populated(tmp_path):
    path = str(tmp_path / "img.img")
    return path, make_template(path)


@pytest.mark.parametrize("field, value, words", [
    ("size", 1 << 63, "past the largest file"),
    ("size", fmt.MAX_FILE_BLOCKS * fmt.BLOCK_SIZE + 1, "past the largest file"),
    ("blocks", 1 << 60, "more than the data area"),
    ("extent_head", 1, "outside the data area"),
    ("mode", 0o170644, "unknown file type"),
])
def test_an_out_of_range_field_is_refused_at_load_and_reported_by_fsck(populated, field, value, words):
    path, tree = populated
    edit_inode(path, tree.small, **{field: value})
    assert any(f"inode {tree.small}: " in p and words in p for p in map(str, check(path).problems))
    f = FileSystem.open(path, durable=False)
    with pytest.raises(CorruptImage, match=words):
        f.inode(tree.small)  # the daemon answers EIO for this file, and serves the others
    assert f.inode(tree.big).size > 0
    f.close()


@pytest.mark.parametrize("ino", [fmt.ROOT_INO, fmt.ORPHAN_INO])
def test_an_image_whose_reserved_directory_is_marked_free_is_refused_at_open(populated, ino):
    path, _ = populated
    sb = superblock(path)
    edit(path, sb.ibitmap_start, lambda b: b.__setitem__(fmt.HEADER_SIZE, b[fmt.HEADER_SIZE] & ~(1 << ino)))
    with pytest.raises(CorruptImage, match=f"inode {ino}.*marked free"):
        FileSystem.open(path, durable=False)
    assert not check(path).clean


def test_a_root_that_is_no_directory_is_refused_at_open(populated):
    path, _ = populated
    edit_inode(path, ROOT, mode=0o100644)
    with pytest.raises(CorruptImage, match="not a directory"):
        FileSystem.open(path, durable=False)


def test_times_past_2262_are_kept_to_the_nanosecond_in_version_2(image):
    f = FileSystem.open(image, durable=False)
    ino = mkfile(f, b"future")
    f.setattr(ino, mtime_ns=Y2514_NS + 123, atime_ns=-(10**18) - 7)  # 2514, and 1938
    f.close()
    g = FileSystem.open(image, durable=False)
    assert g.inode(ino).mtime_ns == Y2514_NS + 123 and g.inode(ino).atime_ns == -(10**18) - 7
    g.close()
    assert check(image).clean


def test_a_version_1_image_is_read_as_it_is_and_clamps_times_as_linux_does(image):
    for blk in (0, 1):
        edit(image, blk, lambda b: b.__setitem__(slice(fmt.HEADER_SIZE, fmt.HEADER_SIZE + 4), (1).to_bytes(4, "little")))
    f = FileSystem.open(image, durable=False)
    assert f.sb.version == 1
    ino = mkfile(f, b"old")
    f.setattr(ino, mtime_ns=Y2514_NS)
    assert f.inode(ino).mtime_ns == fmt.V1_TIME_RANGE[1]  # clamped, never an exception
    f.close()
    g = FileSystem.open(image, durable=False)
    assert g.sb.version == 1 and g.inode(ino).mtime_ns == fmt.V1_TIME_RANGE[1]
    g.close()
    assert check(image).clean
    assert clamp_time(Y2514_NS, 2) == Y2514_NS


def test_xattr_names_follow_the_kernels_rules(image):
    f = FileSystem.open(image, durable=False)
    ino = mkfile(f, b"x")
    assert err(f.setxattr, ino, b"user.a\0b", b"v") == errno.EINVAL
    assert err(f.setxattr, ino, b"nonamespace", b"v") == errno.EINVAL
    f.setxattr(ino, b"user.ok", b"v")
    f.close()
