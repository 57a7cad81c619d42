"""Damaged images: FileSystem.open and fsck fail only with DaxfsError, and fsck sees every damaged
metadata block.

Bytes are flipped without re-sealing, as a bad sector or a stray store would leave them: every
metadata block carries a CRC-32C, so each flip in a block in use must show up as a problem (or, for
both superblocks, as an operational error). A flipped data block is invisible to fsck by design.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.engine import format as fmt
from daxfs.engine.errors import DaxfsError
from daxfs.engine.fs import FileSystem
from daxfs.engine.fsck import FsckReport, check
from helpers import Tree, crashed_with_transactions, extent, flip, load, make_template, record, superblock


OFFSETS = (0, 4, 8, 17, 24, 40, 48, 200, 3000, 4095)  # magic, kind, crc, self, owner, seq, payload


@dataclass
class Images:
    clean: str  # populated, cleanly closed
    tree: Tree
    crashed: str  # killed with three committed transactions in the journal
    commits: list[int]  # their commit record blocks
    work: str  # where a test makes its damaged copy


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    d = tmp_path_factory.mktemp("corrupt")
    clean, crashed = str(d / "clean.img"), str(d / "crashed.img")
    tree = make_template(clean)
    commits = crashed_with_transactions(crashed, 3)
    return Images(clean, tree, crashed, commits, str(d / "work.img"))


def chain_head(path: str, ino: int, field: str) -> int:
    return getattr(record(path, ino), field)


def locate(structure: str, im: Images) -> tuple[str, int]:
    """(image, block) holding the structure."""
    sb = superblock(im.clean)
    csb = superblock(im.crashed)
    where = {
        "superblock 0": (im.clean, 0),
        "superblock 1": (im.clean, 1),
        "journal descriptor": (im.crashed, csb.journal_start + csb.journal_tail),
        "journal commit": (im.crashed, im.commits[0]),
        "block bitmap": (im.clean, sb.bitmap_start),
        "inode bitmap": (im.clean, sb.ibitmap_start),
        "inode table": (im.clean, fmt.inode_location(sb.itable_start, im.tree.d)[0]),
        "extent chain": (im.clean, chain_head(im.clean, im.tree.big, "extent_head")),
        "directory chain": (im.clean, chain_head(im.clean, im.tree.d, "dirent_head")),
        "xattr chain": (im.clean, chain_head(im.clean, im.tree.xa, "xattr_head")),
    }
    return where[structure]


def fsck(path: str) -> FsckReport | None:
    """The report, or None when fsck refused the image with a DaxfsError (any other error fails)."""
    try:
        return check(path)
    except DaxfsError:
        return None


def opens(path: str) -> bool:
    """Does the engine mount it? Refusing with a DaxfsError is fine; any other exception fails the test."""
    try:
        f = FileSystem.open(path, durable=False)
    except DaxfsError:
        return False
    f.close()
    return True


def damaged(src: str, work: str, blkno: int, offsets: tuple[int, ...]) -> str:
    shutil.copyfile(src, work)
    for off in offsets:
        flip(work, blkno, off)
    return work


@pytest.mark.parametrize("structure", ["superblock 0", "superblock 1", "journal descriptor", "journal commit",
                                       "block bitmap", "inode bitmap", "inode table", "extent chain",
                                       "directory chain", "xattr chain"])
@pytest.mark.parametrize("off", OFFSETS)
def test_flipped_metadata_is_seen(images, structure, off):
    src, blkno = locate(structure, images)
    path = damaged(src, images.work, blkno, (off,))
    report = fsck(path)
    assert report is not None and not report.clean  # one copy gone is a problem, not a failure
    opens(path)


def test_both_superblocks_flipped(images):
    for off in OFFSETS:
        path = damaged(images.clean, images.work, 0, (off,))
        flip(path, 1, off)
        assert fsck(path) is None
        assert not opens(path)


def test_one_superblock_gone_still_mounts(images):
    for blkno in (0, 1):
        path = damaged(images.clean, images.work, blkno, (0, 100))
        assert opens(path)


def test_flipped_data_block_is_invisible_to_fsck(images):
    _, _, _, pblk = extent(images.clean, images.tree.small)
    path = damaged(images.clean, images.work, pblk, (0, 5, 4095))
    report = fsck(path)
    assert report is not None and report.clean, report.lines()
    assert opens(path)


def metadata_blocks(im: Images) -> list[int]:
    """Every metadata block of the clean image that is in use."""
    sb = superblock(im.clean)
    blocks = [0, 1, sb.bitmap_start, sb.ibitmap_start]
    blocks += [b for b in range(sb.itable_start, sb.data_start) if any(load(im.clean, b))]
    for ino, field in ((im.tree.big, "extent_head"), (im.tree.d, "dirent_head"), (im.tree.xa, "xattr_head")):
        blk = chain_head(im.clean, ino, field)
        while blk:
            blocks.append(blk)
            blk = fmt.read_header(load(im.clean, blk), blk).next
    return blocks


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_metadata(images, data):
    blkno = data.draw(st.sampled_from(metadata_blocks(images)), label="block")
    flips = data.draw(st.lists(st.tuples(st.integers(0, fmt.BLOCK_SIZE - 1), st.integers(1, 255)),
                               min_size=1, max_size=4, unique_by=lambda t: t[0]), label="flips")
    shutil.copyfile(images.clean, images.work)
    with open(images.work, "r+b") as f:
        for off, mask in flips:
            f.seek(blkno * fmt.BLOCK_SIZE + off)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ mask]))
    report = fsck(images.work)
    assert report is None or not report.clean
    opens(images.work)


# --- operational failures of `daxfs fsck` ---------------------------------------------------------------
def run_fsck(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daxfs.cli", "fsck", path], capture_output=True, text=True,
                          timeout=60)


def not_images(tmp_path) -> dict[str, str]:
    rnd, empty = tmp_path / "random.img", tmp_path / "empty.img"
    rnd.write_bytes(os.urandom(1 << 20))
    empty.write_bytes(b"")
    return {"random": str(rnd), "empty": str(empty), "missing": str(tmp_path / "missing.img")}


def assert_operational_error(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 8, r
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("daxfs: ") and "Traceback" not in r.stderr


def test_fsck_of_what_is_not_an_image(tmp_path):
    for path in not_images(tmp_path).values():
        with pytest.raises(DaxfsError):
            check(path)
        assert_operational_error(run_fsck(path))


def test_check_of_a_directory_is_an_operational_error(tmp_path):
    with pytest.raises(DaxfsError):
        check(str(tmp_path))


def test_fsck_cli_of_a_directory(tmp_path):
    assert_operational_error(run_fsck(str(tmp_path)))
