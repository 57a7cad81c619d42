"""Operations whose metadata would not fit one transaction are cut into steps that each fit, and a
crash between steps is finished by the next mount (regression: a 1900-extent unlink on a 16-block
journal used to commit a transaction that overwrote its own start, and replay lost it)."""

import pytest

from daxfs.engine import crashpoint
from daxfs.engine.errors import DaxfsError
from daxfs.engine.fs import FileSystem
from daxfs.engine.mkfs import mkfs

BS = 4096


def fragmented(fs: FileSystem, name: bytes, extents: int):
    """A file of `extents` one-block extents: every other block written, so none can merge."""
    f = fs.create(1, name, 0o644, 0, 0)
    for i in range(extents):
        fs.write(f.ino, 2 * i * BS, b"%08d" % i)
    fs.commit()
    return f


def test_mkfs_refuses_a_journal_that_cannot_hold_every_bitmap_block(tmp_path):
    with pytest.raises(DaxfsError, match="too small"):
        mkfs(str(tmp_path / "img"), 64 << 20, journal_blocks=16)


def test_truncating_a_very_fragmented_file_takes_several_commits_and_survives(tmp_path):
    path = str(tmp_path / "img")
    mkfs(path, 64 << 20, journal_blocks=256)
    fs = FileSystem.open(path)
    f = fragmented(fs, b"frag", 3000)
    free_before = fs.statfs().blocks_free
    commits_before = fs.journal.stats_commits
    fs.truncate(f.ino, BS)
    assert fs.journal.stats_commits - commits_before > 1  # it did need steps
    assert fs.read(f.ino, 0, 8) == b"00000000"
    fs.commit()
    fs.region.close()  # crash after the truncate: replay must give the truncated file
    fs = FileSystem.open(path)
    f = fs.lookup(1, b"frag")
    assert f.size == BS and f.blocks == 1 and len(fs.map(f.ino)) == 1
    # 2999 data blocks freed; the orphan directory kept the chain block its step entry needed
    assert fs.statfs().blocks_free == free_before + 2999 - 1
    fs.close()


def test_a_crash_between_truncate_steps_is_finished_at_the_next_mount(tmp_path):
    path = str(tmp_path / "img")
    mkfs(path, 64 << 20, journal_blocks=256)
    fs = FileSystem.open(path)
    f = fragmented(fs, b"frag", 3000)
    crashpoint.arm("commit.done", 3, lambda p: (_ for _ in ()).throw(crashpoint.PowerCut(p)))
    try:
        with pytest.raises(crashpoint.PowerCut):
            fs.truncate(f.ino, BS)
    finally:
        crashpoint.disarm_all()
    fs.region.close()
    fs = FileSystem.open(path)
    assert fs.open_report.orphans == 1  # the orphan entry told the mount to finish the cut
    f = fs.lookup(1, b"frag")
    assert f.size == BS and f.blocks == 1
    assert fs.read(f.ino, 0, 8) == b"00000000"
    assert list(fs.readdir(2)) == [(1, b".", 2, 4), (2, b"..", 2, 4)]  # orphan list empty again
    fs.close()


def test_unlinking_a_very_fragmented_file_fits_one_transaction(tmp_path):
    path = str(tmp_path / "img")
    mkfs(path, 64 << 20, journal_blocks=256)
    fs = FileSystem.open(path)
    fragmented(fs, b"frag", 3000)
    free_before = fs.statfs().blocks_free
    fs.unlink(1, b"frag")
    fs.commit()
    fs.region.close()
    fs = FileSystem.open(path)
    with pytest.raises(Exception):
        fs.lookup(1, b"frag")
    assert fs.statfs().blocks_free > free_before + 3000 - 1
    fs.close()
