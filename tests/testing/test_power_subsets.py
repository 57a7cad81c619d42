"""Power failures at every ordering point, losing any subset of the stores not yet persisted there.

A killed daemon loses nothing it stored; a power cut may also lose the stores nobody persisted, in any
combination (Chipmunk and Yat enumerate such crash states for pmem file systems). This test runs a
fixed script of engine operations once, on a CrashRegion that records at every fence() which pages
hold unpersisted stores. Then, for every fence and every subset of those pages (all subsets of up to
six pages; beyond that none, all, each page alone and each page kept alone), it runs the script again
on a fresh image, cuts the power at that fence losing exactly that subset, replays, and checks:

  * fsck finds the image clean, before and after the replay;
  * names, kinds, sizes and xattrs are those of the last commit whose record was stored, or of the one
    before (the record itself may be what was lost);
  * every byte of every file is zero or a value the script wrote to that file at that offset: no
    stale block shows through, whatever was lost.

This proves the journal's own ordering (commit.py's I1-I5) against a power cut, which the process-crash
campaigns cannot reach: they lose no store.
"""

from __future__ import annotations

import itertools
import os
import stat
import uuid


from daxfs.engine import fsck
from daxfs.engine import format as fmt
from daxfs.engine.crashpoint import PowerCut
from daxfs.engine.fs import FileSystem
from daxfs.engine.mkfs import mkfs
from daxfs.testing.power import CrashRegion
from helpers import SHM


BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO
# The byte values the script writes to each file, by every name it has: a file showing any other
# nonzero byte shows another file's data.
VALUES = {"/a": {1, 3, 4}, "/d/b": {2, 5}, "/c": {2, 5}, "/e": {6}, "/old": {7}, "/n": {8}}


def script(fs: FileSystem, commit) -> None:
    """The operations: data into new, preallocated and stable blocks, truncation, names, xattrs; commits
    and a checkpoint between them. `commit()` commits and records the state it made durable."""
    a = fs.create(ROOT, b"a", 0o644, 0, 0).ino
    fs.write(a, 0, bytes([1]) * (2 * BS + 100))
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    commit()
    b = fs.create(d, b"b", 0o644, 0, 0).ino
    fs.write(b, 5000, bytes([2]) * 3000)
    fs.prealloc(a, 4 * BS, 4 * BS)
    fs.write(a, 5 * BS + 7, bytes([3]) * 100)  # unwritten -> written
    for blk in range(3):  # stable blocks: never journaled, never persisted until an fsync
        fs.write(a, blk * BS + 10, bytes([4]) * 50)
    commit()
    fs.setxattr(b, b"user.k", b"v" * 40)
    fs.truncate(a, BS + 5)
    fs.rename(d, b"b", ROOT, b"c")
    fs.unlink(ROOT, b"a")
    fs.write(b, 0, bytes([5]) * 200)
    commit()
    fs.journal.checkpoint()
    fs.after_commit()
    e = fs.create(ROOT, b"e", 0o600, 0, 0).ino
    fs.write(e, 0, bytes([6]) * (3 * BS))
    fs.persist_data(b)  # an fdatasync of c's data
    commit()
    old = fs.create(ROOT, b"old", 0o644, 0, 0).ino
    fs.write(old, 0, bytes([7]) * (8 * BS))
    fs.persist_data(old)  # fsync'd: its bytes are durable, and would show through a lost zeroing
    commit()
    old_blocks = {m.pblk + i for m, _ in fs.map(old) for i in range(m.len)}
    fs.alloc.cursor = min(old_blocks)  # so that n's blocks are old's: stale data to show through
    fs.unlink(ROOT, b"old")
    commit()
    fs.journal.checkpoint()
    fs.after_commit()
    n = fs.create(ROOT, b"n", 0o644, 0, 0).ino
    fs.write(n, 100, bytes([8]) * 200)  # the rest of its new block must read as zeros
    fs.write(n, 3 * BS + 50, bytes([8]) * 10)
    assert {m.pblk for m, _ in fs.map(n) if m.pblk} <= old_blocks
    commit()


def observe(fs: FileSystem) -> dict[str, tuple]:
    """name -> (kind, size, xattrs) of everything reachable."""
    out: dict[str, tuple] = {}

    def walk(ino: int, path: str) -> None:
        for _, name, child, _ in fs.readdir(ino):
            if name in (b".", b".."):
                continue
            inode = fs.inode(child)
            sub = f"{path}/{name.decode()}"
            kind = "d" if stat.S_ISDIR(inode.mode) else "f"
            out[sub] = (kind, inode.size if kind == "f" else 0, dict((x, fs.getxattr(child, x))
                                                                     for x in fs.listxattr(child)), child)
            if kind == "d":
                walk(child, sub)

    walk(ROOT, "")
    return out


def run(path: str, fence: int | None = None, lose: set[int] | None = None):
    """Run the script on a fresh image; cut at `fence` losing `lose`. Returns the region, the states
    each commit made durable (index 0: the empty file system) and how many commit records were stored."""
    mkfs(path, 4 << 20, force=True)
    region = CrashRegion(path, lose_unpersisted=True)
    region.cut_at_fence, region.lose = fence, lose
    records = [0]
    region.on_commit_record = lambda: records.__setitem__(0, records[0] + 1)
    states: list[dict] = [{}]
    try:
        fs = FileSystem(region)

        def commit() -> None:
            fs.commit()
            states.append(observe(fs))

        script(fs, commit)
        region.power_off()
    except PowerCut:
        pass
    region.close()
    return region, states, records[0]


def subsets(pages: frozenset[int]) -> list[set[int]]:
    pages = sorted(pages)
    if len(pages) <= 6:
        return [set(c) for r in range(len(pages) + 1) for c in itertools.combinations(pages, r)]
    return [set(), set(pages)] + [{p} for p in pages] + [set(pages) - {p} for p in pages]


def test_every_subset_of_unpersisted_stores_lost_at_every_fence_replays_consistently():
    path = os.path.join(SHM if os.access(SHM, os.W_OK) else "/tmp", f"daxfs-ps-{uuid.uuid4().hex}.img")
    try:
        reference, states, _ = run(path)
        assert len(reference.fences) >= 12 and any(reference.fences), "the script must leave stores unpersisted"
        cases = 0
        for fence, pages in enumerate(reference.fences, start=1):
            for lose in subsets(pages):
                cases += 1
                _, _, records = run(path, fence, lose)
                _verify(path, f"fence {fence}, losing pages {sorted(lose)}", states, records)
        assert cases >= 40
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _verify(path: str, what: str, states: list[dict], records: int) -> None:
    report = fsck.check(path)
    assert report.clean, f"{what}: crashed image: " + "; ".join(map(str, report.problems[:5]))
    g = FileSystem.open(path, durable=False)
    try:
        got = observe(g)
        allowed = [states[i] for i in (records, records - 1) if 0 <= i < len(states)]
        strip = lambda s: {k: v[:3] for k, v in s.items()}  # noqa: E731 - inode numbers may differ
        assert strip(got) in [strip(s) for s in allowed], f"{what}: {strip(got)} is no committed state"
        for name, (kind, size, _, ino) in got.items():
            if kind == "f" and size:
                data = set(g.read(ino, 0, size)) - {0}
                assert data <= VALUES[name], f"{what}: {name} shows bytes {sorted(data - VALUES[name])}"
    finally:
        g.close()
    report = fsck.check(path)
    assert report.clean, f"{what}: after replay: " + "; ".join(map(str, report.problems[:5]))


def test_the_reference_run_commits_what_it_says():
    path = os.path.join(SHM if os.access(SHM, os.W_OK) else "/tmp", f"daxfs-ps-{uuid.uuid4().hex}.img")
    try:
        _, states, records = run(path)
        assert records == 7 and len(states) == 8
        assert set(states[-1]) == {"/d", "/c", "/e", "/n"} and states[-1]["/c"][2] == {b"user.k": b"v" * 40}
    finally:
        os.unlink(path)
