"""Directories (directory.py): entries in a slot chain, an O(1) name index, cookies for readdir."""

from __future__ import annotations

import errno
import random
import stat

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.errors import FsError
from helpers import MiB, crash, mkfile, reopen


ROOT = fmt.ROOT_INO


def names(f, ino, cookie=0) -> list[bytes]:
    return [n for _, n, _, _ in f.readdir(ino, cookie) if n not in (b".", b"..")]


def test_a_directory_of_100k_entries_finds_every_name(new_image):
    n = 100_000
    image = new_image(96 * MiB, inodes=n + 64, journal_blocks=4096)
    f = reopen(image)
    d = f.mkdir(ROOT, b"big", 0o755, 0, 0).ino
    inos = {}
    for i in range(n):
        inos[b"e%06d" % i] = f.create(d, b"e%06d" % i, 0o644, 0, 0).ino
    assert len(f.inode(d).directory) == n
    for name, ino in inos.items():
        assert f.lookup(d, name).ino == ino
    with pytest.raises(FsError) as e:
        f.lookup(d, b"e%06d" % n)
    assert e.value.errno == errno.ENOENT
    listed = names(f, d)
    assert len(listed) == n and set(listed) == set(inos)
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.entry(d, b"e054321").ino == inos[b"e054321"]  # the index is rebuilt from the slots
    assert len(g._dir(g.inode(d))) == n
    g.close()


def test_readdir_resumes_at_a_cookie_and_returns_each_name_once_while_entries_come_and_go(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    rng = random.Random(7)
    for i in range(300):
        mkfile(fs, b"n%d" % i, parent=d)
    present = {b"n%d" % i for i in range(300)}
    always = set(present)  # names that exist for the whole listing
    removed: set[bytes] = set()
    seen: list[bytes] = []
    cookie = 0
    added = 0
    while True:
        chunk = []
        for c, name, _, _ in fs.readdir(d, cookie):
            chunk.append(name)
            cookie = c
            if len(chunk) == 40:
                break
        if not chunk:
            break
        seen += [n for n in chunk if n not in (b".", b"..")]
        # Between two getdents calls: remove some names, seen or not, and add new ones.
        for name in rng.sample(sorted(present), 15):
            fs.unlink(d, name)
            present.discard(name)
            always.discard(name)
            removed.add(name)
        for _ in range(15):
            name = b"new%d" % added
            added += 1
            mkfile(fs, name, parent=d)
            present.add(name)
    assert len(seen) == len(set(seen)), "a name was returned twice"
    assert always <= set(seen), "a name that existed all along was skipped"
    assert set(seen) <= always | removed | {b"new%d" % i for i in range(added)}


def test_cookies_stay_valid_across_a_remount(image):
    f = reopen(image)
    d = f.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    for i in range(40):
        mkfile(f, b"f%d" % i, parent=d)
    listing = list(f.readdir(d))
    cookie = listing[12][0]
    rest = [n for _, n, _, _ in listing[13:]]
    f.commit()
    crash(f)
    g = reopen(image)
    assert names(g, d, cookie) == rest
    g.close()


def test_dot_and_dotdot_come_first_with_their_own_cookies(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    sub = fs.mkdir(d, b"sub", 0o755, 0, 0).ino
    listing = list(fs.readdir(sub))
    assert listing[:2] == [(1, b".", sub, stat.S_IFDIR >> 12), (2, b"..", d, stat.S_IFDIR >> 12)]
    assert list(fs.readdir(sub, 1)) == listing[1:]
    assert list(fs.readdir(sub, 2)) == []
    assert fs.lookup(sub, b"..").ino == d and fs.lookup(sub, b".").ino == sub
    assert fs.lookup(ROOT, b"..").ino == ROOT


def test_readdir_reports_each_entry_type(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fs.mkdir(d, b"dir", 0o755, 0, 0)
    mkfile(fs, b"file", parent=d)
    fs.symlink(d, b"link", b"file", 0, 0)
    fs.mknod(d, b"fifo", stat.S_IFIFO | 0o644, 0, 0)
    types = {n: t for _, n, _, t in fs.readdir(d) if n not in (b".", b"..")}
    assert types == {b"dir": stat.S_IFDIR >> 12, b"file": stat.S_IFREG >> 12, b"link": stat.S_IFLNK >> 12,
                     b"fifo": stat.S_IFIFO >> 12}


def test_freed_slots_are_reused_before_the_chain_grows(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    for i in range(100):
        mkfile(fs, b"a%d" % i, parent=d)
    blocks = fs.inode(d).directory.chain.blocks()
    for i in range(100):
        fs.unlink(d, b"a%d" % i)
    for i in range(100):
        mkfile(fs, b"b%d" % i, parent=d)
    assert fs.inode(d).directory.chain.blocks() == blocks


def test_bad_names_are_refused(fs):
    for bad, err in ((b"a/b", errno.EINVAL), (b"", errno.EINVAL), (b"a\0b", errno.EINVAL), (b".", errno.EINVAL),
                     (b"x" * 256, errno.ENAMETOOLONG)):
        with pytest.raises(FsError) as e:
            mkfile(fs, bad)
        assert e.value.errno == err, bad
    mkfile(fs, b"x" * 255)  # the longest name that fits
    assert fs.lookup(ROOT, b"x" * 255)
