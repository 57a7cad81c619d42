"""tools/dump_image.py reads images from docs/format.md alone; here it must agree with FileSystem.

Each case builds an image through daxfs.fs, runs the dump tool as a separate process with --json, and
compares what the tool read (names, inode numbers, sizes, link counts, extents, xattrs, readdir
cookies, symlink targets, orphans, committed journal transactions) with what FileSystem reports.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daxfs.engine.extent import HOLE, STATE_NAMES
from daxfs.engine.fs import FileSystem
from daxfs.engine.mkfs import mkfs
from helpers import REPO

TOOL = Path(REPO) / "tools" / "dump_image.py"
BS = 4096
UID, GID = os.getuid(), os.getgid()


def dump(path: Path, *args: str, ok: bool = True) -> dict:
    p = subprocess.run([sys.executable, str(TOOL), str(path), "--json", *args], capture_output=True, text=True,
                       timeout=60)
    if ok:
        assert p.returncode == 0, p.stderr + p.stdout[-3000:]
    return json.loads(p.stdout)


def name(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def snapshot(fs: FileSystem) -> dict:
    """What FileSystem says about every allocated inode and every path."""
    paths: dict[str, int] = {}

    def walk(ino: int, path: str) -> None:
        paths[path or "/"] = ino
        if stat.S_ISDIR(fs.inode(ino).mode):
            for _, n, child, _ in fs.readdir(ino):
                if n in (b".", b".."):
                    continue
                assert fs.lookup(ino, n).ino == child
                walk(child, f"{path}/{name(n)}")

    walk(1, "")
    inodes = {}
    for ino in (int(i) for i in np.flatnonzero(fs.alloc.inodes.ondisk) if i != 0):
        inode = fs.inode(ino)
        rec = {
            "size": inode.size, "nlink": inode.nlink, "mode": inode.mode, "blocks": inode.blocks,
            "parent": inode.parent,
            "extents": [[m.lblk, m.len, m.pblk, STATE_NAMES[m.state]] for m, _ in fs.map(ino) if m.state != HOLE],
            "xattrs": {name(n): fs.getxattr(ino, n).hex() for n in fs.listxattr(ino)},
        }
        if stat.S_ISLNK(inode.mode):
            rec["target"] = name(fs.readlink(ino))
        if stat.S_ISDIR(inode.mode):
            rec["entries"] = {name(n): {"ino": c, "dtype": t, "cookie": k}
                              for k, n, c, t in fs.readdir(ino) if n not in (b".", b"..")}
        inodes[ino] = rec
    orphans = {name(n): c for _, n, c, _ in fs.readdir(2) if n not in (b".", b"..")}
    return {"paths": paths, "inodes": inodes, "orphans": orphans}


def assert_matches(d: dict, snap: dict) -> None:
    assert d["problems"] == []
    assert d["paths"] == snap["paths"]
    assert d["orphans"] == snap["orphans"]
    assert sorted(map(int, d["inodes"])) == sorted(snap["inodes"])
    for ino, want in snap["inodes"].items():
        got = d["inodes"][str(ino)]
        assert got["ino"] == ino
        for k in ("size", "nlink", "mode", "blocks", "parent", "xattrs"):
            assert got[k] == want[k], (ino, k)
        assert [[e["lblk"], e["len"], e["pblk"], e["state"]] for e in got["extents"]] == want["extents"], ino
        assert got.get("target") == want.get("target"), ino
        assert got.get("entries") == want.get("entries"), ino


def populate(fs: FileSystem) -> dict[str, int]:
    """Every structure the format has: dirs, files, sparse file with an extent chain, preallocation,
    symlink, hard link, fifo, xattrs (inline flag and a two-block blob), a two-block directory, an orphan."""
    ino = {}
    d = fs.mkdir(1, b"d", 0o755, UID, GID)
    ino["d"] = d.ino
    f = fs.create(d.ino, b"f", 0o644, UID, GID)
    fs.write(f.ino, 0, b"hello, world\n")
    ino["f"] = f.ino
    fs.setxattr(f.ino, b"user.small", b"value")
    fs.setxattr(f.ino, b"user.big", bytes(range(256)) * 20)  # 5 KiB: the blob spans two chain blocks
    fs.setxattr(f.ino, b"user.daxfs.map_sync", b"1")
    fs.link(f.ino, 1, b"hard")
    ino["link"] = fs.symlink(1, b"link", b"d/f", UID, GID).ino
    s = fs.create(1, b"sparse", 0o600, UID, GID)
    for i in range(0, 40, 2):  # 20 separate extents: 4 inline slots, the rest in an extent chain block
        fs.write(s.ino, i * BS + 7, b"x" * 100)
    fs.write(s.ino, 1000 * BS, b"far")  # a long hole
    ino["sparse"] = s.ino
    p = fs.create(1, b"pre", 0o644, UID, GID)
    fs.prealloc(p.ino, 0, 6 * BS)
    fs.write(p.ino, 2 * BS, b"w" * BS)  # splits the unwritten extent: unwritten, written, unwritten
    fs.prealloc(p.ino, 6 * BS, 2 * BS, keep_size=True)  # allocated past EOF
    ino["pre"] = p.ino
    ino["fifo"] = fs.mknod(d.ino, b"fifo", stat.S_IFIFO | 0o600, UID, GID).ino
    big = fs.mkdir(1, b"many", 0o755, UID, GID)  # 20 entries: two directory chain blocks
    for i in range(20):
        fs.create(big.ino, b"entry-%02d" % i, 0o644, UID, GID)
    fs.mkdir(big.ino, b"sub", 0o755, UID, GID)
    fs.unlink(big.ino, b"entry-05")  # a free slot in the middle of a chain block
    ino["many"] = big.ino
    o = fs.create(1, b"open-then-unlinked", 0o644, UID, GID)
    fs.write(o.ino, 0, b"still open")
    fs.ref(o.ino)  # the kernel holds it: unlink makes it an orphan
    fs.unlink(1, b"open-then-unlinked")
    ino["orphan"] = o.ino
    return ino


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img"
    mkfs(str(path), 8 << 20)
    return path


def test_fresh_image(image: Path) -> None:
    d = dump(image)
    assert d["superblock"]["generation"] == 2 and d["superblock"]["copy"] == 0
    assert [c["valid"] for c in d["superblock_copies"]] == [True, True]
    assert d["superblock"]["journal_blocks"] == 256  # min(16384, max(256, 2048 // 64), 2048 // 4)
    assert d["superblock"]["inode_count"] == 512  # one per 16 KiB
    assert d["journal"]["transactions"] == []
    assert d["paths"] == {"/": 1}
    assert sorted(d["inodes"]) == ["1", "2"]
    assert d["problems"] == []


def test_clean_image(image: Path) -> None:
    fs = FileSystem.open(str(image), durable=False)
    ino = populate(fs)
    fs.commit()
    snap = snapshot(fs)
    fs.close()  # checkpoints: nothing left in the journal

    d = dump(image)
    assert d["superblock"]["state_name"] == "clean"
    assert d["journal"]["transactions"] == []
    assert_matches(d, snap)

    inodes = d["inodes"]
    assert d["paths"]["/d/f"] == d["paths"]["/hard"] == ino["f"]
    assert inodes[str(ino["link"])]["target"] == "d/f"
    assert len(inodes[str(ino["f"])]["xattr_chain"]) == 2
    assert inodes[str(ino["f"])]["xattrs"]["user.daxfs.map_sync"] == b"1".hex()
    assert inodes[str(ino["sparse"])]["extent_chain"]
    assert {e["slot"] for e in inodes[str(ino["sparse"])]["extents"]} >= {"inline"}
    assert [e["state"] for e in inodes[str(ino["pre"])]["extents"]] == ["unwritten", "written", "unwritten"]
    assert len(inodes[str(ino["many"])]["dirent_chain"]) == 2
    assert d["orphans"] == {str(ino["orphan"]): ino["orphan"]}
    assert inodes[str(ino["orphan"])]["nlink"] == 0

    text = subprocess.run([sys.executable, str(TOOL), str(image)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "d/f" in text.stdout and "problems: none" in text.stdout


def test_crashed_image_with_committed_transactions(image: Path) -> None:
    fs = FileSystem.open(str(image), durable=False)
    ino = populate(fs)
    fs.close()
    before = dump(image)

    fs = FileSystem.open(str(image), durable=False)  # frees the orphan in its first transaction
    assert fs.open_report.orphans == 1
    n = fs.create(ino["d"], b"new", 0o644, UID, GID)
    fs.write(n.ino, 0, b"n" * (3 * BS + 5))
    fs.truncate(ino["sparse"], 10 * BS)
    fs.rename(1, b"hard", ino["d"], b"renamed")
    fs.unlink(ino["many"], b"entry-00")
    fs.setxattr(ino["f"], b"user.big", b"shorter now")
    fs.commit()
    fs.setxattr(n.ino, b"user.second", b"transaction")
    fs.commit()
    snap = snapshot(fs)
    pending = [(t.tid, list(t.blocks)) for t in fs.journal.pending]
    assert len(pending) >= 2
    # More changes that are never committed: the crash loses them.
    fs.create(1, b"uncommitted", 0o644, UID, GID)
    fs.write(n.ino, 3 * BS + 5, b"more")
    fs.unlink(ino["d"], b"f")
    assert [(t.tid, list(t.blocks)) for t in fs.journal.pending] == pending
    fs.region.close()  # crash: no fs.close(), no checkpoint

    d = dump(image)
    assert d["superblock"]["state_name"] == "dirty"
    j = d["journal"]
    assert [(t["seq"], t["homes"]) for t in j["transactions"]] == pending
    assert j["seq"] == pending[0][0] and j["next_seq"] == pending[-1][0] + 1
    assert j["end"] == (j["tail"] + sum(t["length"] for t in j["transactions"])) % j["blocks"]
    assert_matches(d, snap)
    assert "/uncommitted" not in d["paths"] and "/d/f" in d["paths"]
    assert d["paths"]["/d/renamed"] == ino["f"]
    assert d["orphans"] == {}

    # The home blocks alone still show the last checkpoint: the state before this mount.
    home = dump(image, "--no-replay")
    assert home["paths"] == before["paths"]
    assert home["orphans"] == before["orphans"]

    # Replay agrees with the tool's overlay.
    fs = FileSystem.open(str(image), durable=False)
    assert fs.open_report.replayed == len(pending)
    assert_matches(dump(image), snapshot(fs))
    assert snapshot(fs)["paths"] == snap["paths"]
    fs.close()


def test_committed_transactions_wrapping_around_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "img"
    mkfs(str(path), 8 << 20, journal_blocks=64)  # every operation commits; checkpoints come often
    fs = FileSystem.open(str(path), durable=False)
    j = fs.journal
    for i in range(500):
        fs.create(1, b"f%03d" % i, 0o644, UID, GID)
        fs.commit()
        if len(j.pending) >= 3 and j.sb.journal_tail + j.used > j.size:
            break
    else:
        pytest.fail("the pending transactions never wrapped around the journal")
    snap = snapshot(fs)
    pending = [(t.tid, list(t.blocks)) for t in j.pending]
    fs.region.close()

    d = dump(path)
    jd = d["journal"]
    assert [(t["seq"], t["homes"]) for t in jd["transactions"]] == pending
    assert jd["tail"] + sum(t["length"] for t in jd["transactions"]) > jd["blocks"]  # it did wrap
    assert_matches(d, snap)
    fs = FileSystem.open(str(path), durable=False)
    assert fs.open_report.replayed == len(pending)
    fs.close()


def test_torn_superblock_and_corruption(image: Path) -> None:
    fs = FileSystem.open(str(image), durable=False)
    fs.mkdir(1, b"d", 0o755, UID, GID)
    fs.close()
    d = dump(image)
    newest = d["superblock"]["copy"]
    with open(image, "r+b") as f:  # tear the newest copy: the older one is read instead
        f.seek(newest * BS + 100)
        f.write(b"\xff" * 8)
    d2 = dump(image)
    assert d2["superblock"]["copy"] == 1 - newest
    assert not d2["superblock_copies"][newest]["valid"]
    assert "checksum" in d2["superblock_copies"][newest]["error"]

    with open(image, "r+b") as f:  # flip a byte in the root's directory chain block
        blk = d["inodes"]["1"]["dirent_chain"][0]
        f.seek(blk * BS + 60)
        f.write(b"\x01")
    bad = dump(image, ok=False)
    assert any("checksum" in p for p in bad["problems"])

    with open(image, "r+b") as f:
        f.seek(0)
        f.write(bytes(2 * BS))
    p = subprocess.run([sys.executable, str(TOOL), str(image)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not a daxfs image" in p.stderr


def test_tool_reads_from_the_spec_alone() -> None:
    """The tool may import only the standard library, numpy and crc32c: never daxfs."""
    import ast

    tree = ast.parse(TOOL.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods - sys.stdlib_module_names == {"numpy", "crc32c"}
