#!/usr/bin/env python3
"""Hostile images (issue 9): corrupt daxfs images on purpose and see what daxfs does with them.

    .venv/bin/python tools/fuzz_images.py --seed 1 --cases 5000 --mounts 500 --json fuzz.json
    .venv/bin/python tools/fuzz_images.py --seed 1 --case 1234              # replay one case (phase 1)
    .venv/bin/python tools/fuzz_images.py --seed 1 --case 1234 --mounts 1   # ... and mount it too

A run builds a few seed images (mkfs, then populated through the engine in-process; some closed
cleanly, some "crashed" with committed transactions left in their journal), byte-identical for a given
--seed (the clock and os.urandom are frozen while they are built). Each case N then copies one seed and
corrupts it with one mutator, both chosen by (seed, N) alone, so that any case replays by itself:

  bitflip          1-8 bit flips anywhere in the image
  flip_meta        1-4 bit flips inside one metadata block in use (no reseal: the CRC must catch it)
  scramble_reseal  random bytes in one metadata block, then the checksum recomputed
  random_block     a whole block of random bytes (sometimes with a valid, sealed header)
  zero_block       1-3 blocks zeroed
  truncate         the image file cut short (0 bytes, mid-superblock, mid-metadata, inside the data)
  journal_flip     bit flips in a live journal block (descriptor, image, commit record)
  journal_drop     a commit record destroyed
  journal_reorder  two journal blocks or two transactions swapped; an old transaction replayed again
  journal_field    a descriptor or commit record field set to an extreme, resealed, commit CRC redone
  field_edit       one numeric field of a parsed structure (superblock, inode record, inline or chain
                   extent, directory entry, xattr record, bitmap bit, chain block header) set to an
                   extreme value (0, 1, -1, 2^31, 2^32-1, 2^63, 2^64-1, just past a bound such as
                   total_blocks, inode_count or MAX_FILE_BLOCKS, another structure's block), and the
                   block resealed so that only semantic checks can catch it. In a crashed seed the edit
                   goes where replay reads it: into the newest journal image of the block, with the
                   commit record's CRC recomputed.

Phase 1 (every case): fsck (check) and inspect (describe) in-process, in a worker process (at most
--jobs 2) with a per-case deadline. An exception that is not a DaxfsError is a traceback; a deadline
passed is a hang; fsck's verdict is clean / errors / operational (a DaxfsError: a refusal).

Phase 2 (--mounts M of the phase-1 cases: a tenth among those fsck refused, half of the rest among the
field edits, evenly spread; the walk aims at the inode the mutation damaged): `daxfs mount`, a tree walk (scandir, lstat, readlink,
listxattr/getxattr, reads) and a write phase (create, write, append, truncate, mkdir, rename, link,
setxattr, fsync, unlink, rmdir; on new files and on the damaged ones) in a child process with a
deadline, `daxfs umount`, fsck again. A daemon death is the mount going away or answering ENOTCONN /
ECONNABORTED, or the daemon's pid gone, while we still use it; a Traceback in the daemon's log is a
traceback; EIO answers are counted (EIO is the right answer for a damaged file); a mount refused with
one line and a non-zero exit is a pass. Nothing stays mounted: every mount is unmounted (daxfs umount,
else fusermount3 -uz and the daemon killed by its pid), also on Ctrl-C and SIGTERM.

Findings that do not fail the run (reported, in the JSON): fsck calls an image clean although the edit
broke a rule of docs/format.md ("fsck missed"), the daemon reports corruption on an image fsck called
clean, an image fsck called clean before the mount is not clean after it, `daxfs umount` fails.

Exit status: 1 if any traceback, daemon death or hang was found, else 0. Every failing case is printed
with a one-line replay command.
"""

from __future__ import annotations

# --- adapter: everything this tool takes from daxfs, in one place (change these lines when modules move) ---
import daxfs  # only for where the package lives: frames inside it name the failing daxfs function
from daxfs.engine import format as fmt  # block layouts, seal(), the limits
from daxfs.engine.describe import describe  # phase 1
from daxfs.engine.errors import DaxfsError  # what daxfs raises on purpose
from daxfs.engine.fs import FileSystem  # the engine, to populate seed images in-process
from daxfs.engine.fsck import check  # phase 1
from daxfs.engine.mkfs import mkfs
from daxfs.daemon.proc import process_alive, wait_exit  # a daemon is dead once its threads are gone too
# (phase 2 runs the `daxfs` command beside this Python: mount, stats, umount, fsck; see daxfs_cli())
# --- end of adapter ----------------------------------------------------------------------------------------

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402
import crc32c  # noqa: E402

DAXFS_PACKAGE_DIR = os.path.realpath(list(daxfs.__path__)[0])
# The xattr record (docs/format.md §11: namelen u8, valuelen u32); format.py has no struct for it.
XATTR_RECORD = struct.Struct("<BI")
BS = fmt.BLOCK_SIZE
HS = fmt.HEADER_SIZE
MiB = 1 << 20
TOOL = os.path.abspath(__file__)
TOOL_REL = "tools/fuzz_images.py"
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def daxfs_cli() -> list[str]:
    """The `daxfs` command of this interpreter's environment (the venv's console script)."""
    beside = os.path.join(os.path.dirname(sys.executable), "daxfs")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("daxfs")
    if found:
        return [found]
    raise click.ClickException("no `daxfs` command beside this Python or on PATH; pip install -e . first")


# =============================================================================================
# Layouts, from format.py's structs and the field tables of docs/format.md
# =============================================================================================
@dataclass(frozen=True)
class Field:
    name: str
    offset: int  # within the structure
    code: str  # struct code: B H I Q q, or Ns for bytes

    @property
    def bits(self) -> int:
        return {"B": 8, "H": 16, "I": 32, "Q": 64, "q": 64}.get(self.code, 0)

    @property
    def numeric(self) -> bool:
        return self.bits > 0


def layout(st: struct.Struct, names: list[str]) -> dict[str, Field]:
    """Field offsets of a packed little-endian struct, by walking its format string."""
    out: dict[str, Field] = {}
    off = 0
    codes = re.findall(r"(\d*)([a-zA-Z])", st.format.lstrip("<"))
    assert len(codes) == len(names), (st.format, names)
    for (count, code), name in zip(codes, names):
        c = f"{count}{code}" if code == "s" else code
        out[name] = Field(name, off, c)
        off += struct.calcsize("<" + c)
    assert off == st.size
    return out


HEADER_F = layout(fmt.HEADER, ["magic", "kind", "used", "crc", "reserved", "self", "owner", "next", "seq"])
SUPER_NAMES = [f.name for f in dataclasses.fields(fmt.Superblock)]
SUPER_F = {n: Field(n, HS + f.offset, f.code) for n, f in
           layout(struct.Struct("<IIQQIIQQQQQQQQQQQQQQ16sQQ"), SUPER_NAMES).items()}  # docs/format.md §4
INODE_F = layout(fmt.INODE, ["ino", "generation", "mode", "uid", "gid", "nlink", "flags", "pad", "size", "blocks",
                             "atime_ns", "mtime_ns", "ctime_ns", "rdev", "extent_head", "dirent_head",
                             "xattr_head", "parent"])
EXTENT_F = layout(fmt.EXTENT, ["state", "len", "lblk", "pblk", "reserved"])
DIRENT_F = layout(fmt.DIRENT, ["ino", "type", "namelen", "reserved", "name"])
COMMIT_F = {n: Field(n, HS + f.offset, f.code) for n, f in
            layout(fmt.COMMIT, ["nblocks", "crc", "reserved", "commit_time_ns"]).items()}
INLINE_OFF = fmt.INODE_FIXED  # inline extent slots start here in a record
BITS_PER_BLOCK = fmt.PAYLOAD * 8
DIRENTS_PER_BLOCK = fmt.slots_per_block(fmt.DIRENT_SIZE)
EXTENTS_PER_BLOCK = fmt.slots_per_block(fmt.EXTENT_SIZE)


def self_check_layouts() -> None:
    """The superblock table above must say what format.Superblock.pack writes."""
    vals = {}
    for i, f in enumerate(dataclasses.fields(fmt.Superblock)):
        vals[f.name] = bytes([i + 1]) * 16 if f.name == "uuid" else 1000 + i
    b = fmt.Superblock(**vals).pack(0)
    for name, fl in SUPER_F.items():
        got = get_field(b, 0, fl)
        assert got == vals[name], f"superblock layout of {name}: {got} != {vals[name]}"


def get_field(buf, base: int, f: Field):
    return struct.unpack_from("<" + f.code, buf, base + f.offset)[0]


def put_field(buf: bytearray, base: int, f: Field, value) -> None:
    if f.code == "q" and isinstance(value, int) and value >= 1 << 63:
        value -= 1 << 64
    struct.pack_into("<" + f.code, buf, base + f.offset, value)


def seal_at(buf: bytearray, blk_off: int) -> None:
    """Recompute the checksum of the metadata block at byte offset blk_off of the image."""
    b = bytearray(buf[blk_off:blk_off + BS])
    fmt.seal(b)
    buf[blk_off:blk_off + BS] = b


# =============================================================================================
# Seed images
# =============================================================================================
@contextlib.contextmanager
def frozen_entropy(seed: int, name: str):
    """A fake clock and a seeded os.urandom while a seed image is built: same seed, same bytes."""
    rng = random.Random(f"daxfs-fuzz-entropy:{seed}:{name}")
    clock = [1_700_000_000_000_000_000 + seed * 1_000_000_007]

    def time_ns() -> int:
        clock[0] += 1_000_003
        return clock[0]

    saved = time.time_ns, os.urandom
    time.time_ns, os.urandom = time_ns, rng.randbytes
    try:
        yield
    finally:
        time.time_ns, os.urandom = saved


ROOT = fmt.ROOT_INO


def _data(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def populate(f: FileSystem, rng: random.Random) -> list[int]:
    """A tree with every structure on the format: chains of each kind, inline and chained extents,
    unwritten extents, holes, hard links, symlinks, special files, xattrs, map_sync. Returns the
    regular files' inode numbers."""
    files: list[int] = []
    d = f.mkdir(ROOT, b"dir", 0o755, 0, 0).ino
    for i in range(rng.randint(18, 40)):  # two or three directory chain blocks
        ino = f.create(d, b"entry-%03d" % i, 0o644, 1000, 1000).ino
        if i % 5 == 0:
            f.write(ino, 0, _data(rng, rng.randint(1, 3 * BS)))
        files.append(ino)
    sub = f.mkdir(d, b"sub", 0o750, 0, 0).ino
    deep = sub
    for i in range(3):
        deep = f.mkdir(deep, b"level%d" % i, 0o755, 0, 0).ino
    leaf = f.create(deep, b"leaf", 0o600, 0, 0).ino
    f.write(leaf, 0, b"deep leaf\n")
    files.append(leaf)
    big = f.create(ROOT, b"big", 0o644, 0, 0).ino  # every other block: an extent chain
    for i in range(rng.randint(6, 12)):
        f.write(big, 2 * i * BS, _data(rng, BS))
    files.append(big)
    small = f.create(ROOT, b"small", 0o644, 0, 0).ino
    f.write(small, 0, b"small file\n")
    f.link(small, d, b"hard")
    f.link(small, sub, b"hard2")
    files.append(small)
    f.symlink(ROOT, b"sl", b"/some/target", 0, 0)
    f.symlink(sub, b"longlink", b"x/" * 1500, 0, 0)
    pre = f.create(ROOT, b"pre", 0o644, 0, 0).ino
    f.prealloc(pre, 0, 64 * 1024)
    f.write(pre, 8 * BS, b"written inside the preallocation")
    f.prealloc(pre, 1 << 20, 16 * BS, keep_size=True)  # unwritten beyond EOF
    files.append(pre)
    holes = f.create(ROOT, b"holes", 0o644, 0, 0).ino
    f.write(holes, 0, _data(rng, 20 * BS))
    f.punch(holes, 3 * BS, 4 * BS)
    f.punch(holes, 11 * BS + 100, BS)
    f.truncate(holes, 17 * BS + 5)
    f.truncate(holes, 40 * BS)  # a hole at the end
    files.append(holes)
    xa = f.create(ROOT, b"xa", 0o644, 0, 0).ino
    f.setxattr(xa, b"user.big", _data(rng, 5000))  # two xattr chain blocks
    f.setxattr(xa, b"user.small", b"v")
    f.setxattr(xa, b"trusted.t", b"")
    files.append(xa)
    for ino in files[:6]:
        f.setxattr(ino, b"user.color", b"blue")
        f.setxattr(ino, b"user.n%d" % ino, b"%d" % ino)
    f.setxattr(d, b"user.dirattr", b"on a directory")
    f.setxattr(small, b"user.daxfs.map_sync", b"1")
    f.create(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    f.mknod(sub, b"chr", stat.S_IFCHR | 0o600, 0, 0, os.makedev(1, 3))
    f.mknod(sub, b"blk", stat.S_IFBLK | 0o600, 0, 0, os.makedev(7, 0))
    f.create(sub, b"sock", stat.S_IFSOCK | 0o600, 0, 0)
    moved = f.create(ROOT, b"to-move", 0o644, 0, 0).ino
    f.write(moved, 0, b"moved\n")
    f.rename(ROOT, b"to-move", sub, b"moved")
    files.append(moved)
    gone = f.create(d, b"gone", 0o644, 0, 0).ino
    f.write(gone, 0, _data(rng, 3 * BS))
    f.unlink(d, b"gone")  # leaves a free dirent slot and freed blocks
    f.mkdir(ROOT, b"empty", 0o755, 0, 0)
    odd = f.create(ROOT, b"not-utf8-\xa3\xff", 0o644, 0, 0).ino  # names are bytes, not text
    f.setxattr(odd, b"user.\xe9t\xe9", b"\xff")
    return files


def build_clean(path: str, rng: random.Random) -> None:
    mkfs(path, 16 * MiB)
    f = FileSystem.open(path, durable=False)
    populate(f, rng)
    f.close()


def build_crashed(path: str, rng: random.Random) -> None:
    """Populated, closed, reopened, changed in several committed transactions, killed: the journal holds
    them and the home blocks are stale."""
    build_clean(path, rng)
    f = FileSystem.open(path, durable=False)
    for i in range(6):
        ino = f.create(ROOT, b"after-%d" % i, 0o644, 0, 0).ino
        f.write(ino, 0, _data(rng, rng.randint(1, 2 * BS)))
        if i % 2:
            f.setxattr(ino, b"user.i", b"%d" % i)
        f.mkdir(ROOT, b"adir-%d" % i, 0o755, 0, 0)
        f.commit()
    big = f.lookup(ROOT, b"big").ino
    f.truncate(big, 3 * BS)
    f.commit()
    f.rename(ROOT, b"small", ROOT, b"small-renamed")
    f.commit()
    f.create(ROOT, b"never-committed", 0o644, 0, 0)  # lost in the crash
    f.region.close()  # a daemon kill: no commit, no checkpoint, no clean flag


def build_wrapped(path: str, rng: random.Random) -> None:
    """A 48-block journal that has wrapped around many times (checkpoints in between), killed."""
    mkfs(path, 8 * MiB, journal_blocks=48)
    f = FileSystem.open(path, durable=False)
    d = f.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    for i in range(150):
        ino = f.create(d, b"w%d" % i, 0o644, 0, 0).ino
        f.write(ino, 0, _data(rng, rng.randint(1, 600)))
        if i % 7 == 0:
            f.unlink(d, b"w%d" % (i // 2))
        f.commit()
    f.region.close()


def build_orphans(path: str, rng: random.Random) -> None:
    """Killed with unlinked-but-open files: the orphan directory lists them."""
    mkfs(path, 8 * MiB)
    f = FileSystem.open(path, durable=False)
    for i in range(4):
        ino = f.create(ROOT, b"o%d" % i, 0o644, 0, 0).ino
        f.write(ino, 0, _data(rng, (i + 1) * BS))
        f.ref(ino)  # an open file
        f.unlink(ROOT, b"o%d" % i)
    keep = f.create(ROOT, b"keep", 0o644, 0, 0).ino
    f.write(keep, 0, b"kept\n")
    f.commit()
    f.region.close()


def build_empty(path: str, rng: random.Random) -> None:
    mkfs(path, 8 * MiB)


SEED_BUILDERS: dict[str, Callable[[str, random.Random], None]] = {
    "clean": build_clean, "crashed": build_crashed, "wrapped": build_wrapped, "orphans": build_orphans,
    "empty": build_empty,
}


def build_seeds(seed: int, directory: str) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    out = {}
    for name, build in SEED_BUILDERS.items():
        path = os.path.join(directory, f"seed-{name}.img")
        if os.path.exists(path):
            os.unlink(path)
        with frozen_entropy(seed, name):
            build(path, random.Random(f"daxfs-fuzz-populate:{seed}:{name}"))
        out[name] = path
    return out


# =============================================================================================
# A model of a seed image: where every structure is, in the committed state
# =============================================================================================
@dataclass
class Txn:
    seq: int
    start: int  # journal position of its first block
    descs: list[int]  # positions of its descriptors
    images: list[tuple[int, int]]  # (position, home)
    commit: int  # position of its commit record

    @property
    def end(self) -> int:
        return self.commit + 1


@dataclass
class Model:
    """Positions in the seed; an edit applies them to a copy."""
    name: str
    size: int
    sb: fmt.Superblock
    sb_blk: int  # block of the current superblock copy
    txns: list[Txn]
    newest: dict[int, int]  # home -> journal position of its newest committed image
    kinds: dict[int, int]  # reachable metadata home block -> kind
    records: dict[int, dict[str, int]]  # allocated ino -> record fields
    chains: dict[tuple[int, int], list[int]]  # (ino, kind) -> chain blocks from the head
    extent_slots: list[tuple[int, int, int]]  # (home block, offset of slot in block, ino), used slots
    free_inline: list[tuple[int, int, int]]  # free inline slots of allocated inodes
    dirents: list[tuple[int, int, int, bytes]]  # (home block, offset, dir ino, name)
    data_blocks: list[int]  # data blocks mapped by written extents
    free_inos: list[int]
    free_data: list[int]  # data-area blocks marked free

    def jblk(self, pos: int) -> int:
        return self.sb.journal_start + pos % self.sb.journal_blocks

    def where(self, home: int) -> int:
        """Byte offset in the image of the committed version of home block `home`."""
        pos = self.newest.get(home)
        return (self.jblk(pos) if pos is not None else home) * BS

    def txn_of_image(self, home: int) -> Txn | None:
        pos = self.newest.get(home)
        if pos is None:
            return None
        return next(t for t in self.txns if any(p == pos for p, _ in t.images))

    def blocks_of(self, *kinds: int) -> list[int]:
        return sorted(b for b, k in self.kinds.items() if k in kinds)


def scan_journal(buf: bytes, sb: fmt.Superblock) -> list[Txn]:
    """docs/format.md §16 on a seed image (which is consistent)."""
    size = sb.journal_blocks
    txns: list[Txn] = []
    pos, seq, scanned = sb.journal_tail, sb.journal_seq, 0
    while scanned < size:
        start, descs, images, p = pos, [], [], pos
        while True:
            blkno = sb.journal_start + p % size
            raw = buf[blkno * BS:(blkno + 1) * BS]
            try:
                h = fmt.read_header(raw, blkno)
            except Exception:
                return txns
            if h.seq != seq or h.kind not in (fmt.K_JDESC, fmt.K_JCOMMIT):
                return txns
            if h.kind == fmt.K_JCOMMIT:
                txns.append(Txn(seq, start, descs, images, p))
                scanned += p + 1 - pos
                pos, seq = p + 1, seq + 1
                break
            descs.append(p)
            homes = struct.unpack_from(f"<{h.used}Q", raw, HS)
            for i, home in enumerate(homes):
                images.append((p + 1 + i, home))
            p += 1 + len(homes)
            if p - pos + scanned > size:
                return txns
    return txns


def read_model(name: str, buf: bytes) -> Model:
    copies = []
    for blk in (0, 1):
        try:
            copies.append((fmt.Superblock.unpack(buf[blk * BS:(blk + 1) * BS], blk), blk))
        except Exception:
            pass
    sb, sb_blk = max(copies, key=lambda c: c[0].generation)
    txns = scan_journal(buf, sb)
    newest: dict[int, int] = {}
    for t in txns:
        for pos, home in t.images:
            newest[home] = pos
    m = Model(name, len(buf), sb, sb_blk, txns, newest, {}, {}, {}, [], [], [], [], [], [])

    def blk(home: int) -> bytes:
        off = m.where(home)
        return buf[off:off + BS]

    m.kinds[0] = m.kinds[1] = fmt.K_SUPER
    for i in range(sb.bitmap_blocks):
        m.kinds[sb.bitmap_start + i] = fmt.K_BITMAP
    for i in range(sb.ibitmap_blocks):
        m.kinds[sb.ibitmap_start + i] = fmt.K_IBITMAP
    for i in range(sb.itable_blocks):
        if any(blk(sb.itable_start + i)):
            m.kinds[sb.itable_start + i] = fmt.K_INODES

    def bit(start: int, i: int) -> bool:
        b = blk(start + i // BITS_PER_BLOCK)
        return bool(b[HS + (i % BITS_PER_BLOCK) // 8] >> (i % 8) & 1)

    for ino in range(1, sb.inode_count):
        if not bit(sb.ibitmap_start, ino):
            if ino >= fmt.FIRST_FREE_INO and len(m.free_inos) < 64:
                m.free_inos.append(ino)
            continue
        tblk, off = fmt.inode_location(sb.itable_start, ino)
        raw = blk(tblk)
        rec = dict(zip(INODE_F, fmt.INODE.unpack_from(raw, off)))
        m.records[ino] = rec
        for i in range(fmt.INLINE_EXTENTS):
            so = off + INLINE_OFF + i * fmt.EXTENT_SIZE
            (m.extent_slots if raw[so:so + 4] != b"\0\0\0\0" else m.free_inline).append((tblk, so, ino))
        for head, kind in ((rec["extent_head"], fmt.K_EXTENTS), (rec["dirent_head"], fmt.K_DIRENTS),
                           (rec["xattr_head"], fmt.K_XATTR)):
            chain, b = [], head
            while b and b not in chain:
                chain.append(b)
                m.kinds[b] = kind
                b = fmt.read_header(blk(b), b, kind).next
            if chain:
                m.chains[(ino, kind)] = chain
        for cb in m.chains.get((ino, fmt.K_EXTENTS), []):
            raw_c = blk(cb)
            for i in range(EXTENTS_PER_BLOCK):
                so = HS + i * fmt.EXTENT_SIZE
                if raw_c[so:so + 4] != b"\0\0\0\0":
                    m.extent_slots.append((cb, so, ino))
        for cb in m.chains.get((ino, fmt.K_DIRENTS), []):
            raw_c = blk(cb)
            for i in range(DIRENTS_PER_BLOCK):
                so = HS + i * fmt.DIRENT_SIZE
                if raw_c[so:so + 4] != b"\0\0\0\0":
                    _, _, nl, _, nm = fmt.DIRENT.unpack_from(raw_c, so)
                    m.dirents.append((cb, so, ino, nm[:nl]))
    for b, so, ino in m.extent_slots:
        state, ln, _, pblk, _ = fmt.EXTENT.unpack_from(blk(b), so)
        if state == fmt.EXT_WRITTEN:
            m.data_blocks.extend(range(pblk, pblk + min(ln, 8)))
    for b in range(sb.data_start, sb.total_blocks, 7):
        if not bit(sb.bitmap_start, b) and len(m.free_data) < 64:
            m.free_data.append(b)
    return m


# =============================================================================================
# Mutators
# =============================================================================================
@dataclass
class Mutation:
    mutator: str
    seed_image: str
    detail: dict[str, Any] = field(default_factory=dict)
    must_detect: bool = False  # docs/format.md says the result is corrupt: fsck must not call it clean

    def describe(self) -> str:
        d = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.mutator} on {self.seed_image}: {d}"


class Ctx:
    """One case: the seed's bytes (a copy, to corrupt), its model, the case's random stream."""

    def __init__(self, buf: bytearray, model: Model, rng: random.Random, mutation: Mutation) -> None:
        self.buf = buf
        self.m = model
        self.rng = rng
        self.mut = mutation
        self.sealed_txns: set[int] = set()

    # --- helpers ---
    def note(self, **kw) -> None:
        self.mut.detail.update(kw)

    def flip_bits(self, lo: int, hi: int, n: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            off = self.rng.randrange(lo, hi)
            b = self.rng.randrange(8)
            self.buf[off] ^= 1 << b
            out.append((off, b))
        return out

    def any_meta_block(self) -> int:
        return self.rng.choice(sorted(self.m.kinds))

    def fix_commit(self, t: Txn) -> None:
        """Recompute a transaction's running CRC (descriptors and images, in journal order) and reseal
        its commit record, so that the scan accepts whatever its blocks now say."""
        crc = 0
        for p in range(t.start, t.commit):
            o = self.m.jblk(p) * BS
            crc = crc32c.crc32c(bytes(self.buf[o:o + BS]), crc)
        o = self.m.jblk(t.commit) * BS
        put_field(self.buf, o, COMMIT_F["crc"], crc)
        seal_at(self.buf, o)

    def edit_block(self, home: int, change: Callable[[int], None], shadow_ok: bool = True) -> None:
        """Apply change(byte offset of the block) to the committed version of `home` and reseal it:
        the home block, or its newest journal image (then the commit CRC is recomputed too)."""
        t = self.m.txn_of_image(home) if shadow_ok else None
        off = self.m.where(home) if t is not None else home * BS
        change(off)
        seal_at(self.buf, off)
        if t is not None:
            self.fix_commit(t)
            self.note(in_journal_image_of_txn=t.seq)


def extremes(bits: int, m: Model, current: int | None = None, extra: tuple[int, ...] = ()) -> list[int]:
    top = (1 << bits) - 1
    vals = {0, 1, top, 1 << (bits - 1), (1 << (bits - 1)) - 1, top - 1}
    if bits >= 32:
        vals |= {1 << 31, (1 << 31) - 1, (1 << 32) - 1, 1 << 16, 65535}
    if bits == 64:
        vals |= {1 << 32, (1 << 32) + 1, 1 << 63, (1 << 63) - 1, (1 << 63) + 1, 1 << 60, 1 << 62, 1 << 48,
                 fmt.MAX_FILE_BLOCKS, fmt.MAX_FILE_BLOCKS - 1, fmt.MAX_FILE_BLOCKS + 1,
                 fmt.MAX_FILE_BLOCKS * BS, fmt.MAX_FILE_BLOCKS * BS + 1, (1 << 64) - BS}
    sb = m.sb
    vals |= {sb.total_blocks, sb.total_blocks - 1, sb.total_blocks + 1, sb.inode_count, sb.inode_count - 1,
             sb.inode_count + 1, sb.data_start, sb.data_start - 1, sb.journal_start, sb.itable_start,
             sb.bitmap_start, sb.ibitmap_start, fmt.MAX_EXTENT_LEN, fmt.MAX_EXTENT_LEN + 1, 65000, 65001, 4096,
             4095, 255, 256}
    if current is not None:
        vals |= {current + 1, current - 1, current * 2, current ^ (1 << 40)}
    vals |= set(extra)
    return sorted(v for v in vals if 0 <= v <= top and v != current)


def pick_value(ctx: Ctx, f: Field, current: int, extra: tuple[int, ...] = ()) -> int:
    return ctx.rng.choice(extremes(f.bits, ctx.m, current, extra))


def cross_blocks(m: Model) -> tuple[int, ...]:
    """Block numbers that are something else: other chains, the table, bitmaps, the journal, data."""
    out = {0, 1, m.sb.journal_start, m.sb.bitmap_start, m.sb.ibitmap_start, m.sb.itable_start,
           m.sb.data_start, m.sb.total_blocks - 1}
    for chain in m.chains.values():
        out.update(chain[:2])
    out.update(m.data_blocks[:6])
    out.update(m.free_data[:3])
    return tuple(sorted(out))


# --- plain damage ----------------------------------------------------------------------------
def mut_bitflip(ctx: Ctx) -> None:
    n = ctx.rng.randint(1, 8)
    flips = ctx.flip_bits(0, len(ctx.buf), n)
    ctx.note(flips=[f"block {o // BS} byte {o % BS} bit {b}" for o, b in flips])


def mut_flip_meta(ctx: Ctx) -> None:
    m = ctx.m
    home = ctx.any_meta_block()
    shadowed = home in m.newest
    off = m.where(home) if shadowed and ctx.rng.random() < 0.7 else home * BS
    n = ctx.rng.randint(1, 4)
    flips = ctx.flip_bits(off, off + BS, n)
    in_image = off != home * BS
    ctx.note(block=off // BS, home=home, kind=fmt.KIND_NAMES[m.kinds[home]], journal_image=in_image,
             flips=[f"byte {o % BS} bit {b}" for o, b in flips])
    # A flip in a block the committed state reads must be seen, by the CRC. A stale home block under a
    # journal image is not read; a flipped journal image tears its transaction (only a later commit
    # record past it makes that an error).
    ctx.mut.must_detect = not shadowed


def mut_scramble_reseal(ctx: Ctx) -> None:
    home = ctx.any_meta_block()
    kind = ctx.m.kinds[home]
    n = ctx.rng.randint(1, 16)
    lo = HS if ctx.rng.random() < 0.8 else 0
    # Mostly in the used part of the payload, where the structures are.
    hi = {fmt.K_SUPER: HS + 176, fmt.K_INODES: HS + fmt.INODES_PER_BLOCK * fmt.INODE_SIZE}.get(kind, BS)
    changed = []

    def change(off: int) -> None:
        for _ in range(n):
            o = ctx.rng.randrange(lo, hi)
            ctx.buf[off + o] = ctx.rng.randrange(256)
            changed.append(o)

    ctx.edit_block(home, change)
    ctx.note(block=home, kind=fmt.KIND_NAMES[kind], bytes_changed=sorted(changed))


def mut_random_block(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    home = ctx.any_meta_block() if rng.random() < 0.6 else rng.randrange(m.sb.total_blocks)
    off = home * BS
    ctx.buf[off:off + BS] = rng.randbytes(BS)
    sealed = rng.random() < 0.4
    if sealed:  # random payload behind a valid header: only the parsers stand in the way
        kind = m.kinds.get(home) or rng.choice(list(fmt.KIND_NAMES))
        owner = rng.choice([0, *m.records]) if kind in (fmt.K_EXTENTS, fmt.K_DIRENTS, fmt.K_XATTR) else 0
        used = rng.choice([0, 1, 5, 15, 126, 506, 4048, 65535])
        nxt = rng.choice([0, 0, home, *cross_blocks(m)])
        fmt.put_header(b := bytearray(ctx.buf[off:off + BS]), fmt.BlockHeader(kind, used, home, owner, nxt,
                                                                                 rng.choice([0, 1])))
        ctx.buf[off:off + BS] = b
        seal_at(ctx.buf, off)
        ctx.note(header_kind=fmt.KIND_NAMES[kind], owner=owner, used=used, next=nxt)
    ctx.note(block=home, kind=fmt.KIND_NAMES.get(m.kinds.get(home), "data or free"), sealed=sealed)
    ctx.mut.must_detect = home in m.kinds and home not in m.newest and not sealed


def mut_zero_block(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    blocks = []
    for _ in range(rng.randint(1, 3)):
        home = ctx.any_meta_block() if rng.random() < 0.7 else rng.randrange(m.sb.total_blocks)
        if home in m.newest and rng.random() < 0.5:
            home = m.jblk(m.newest[home])  # the journal image replay would use
        ctx.buf[home * BS:(home + 1) * BS] = bytes(BS)
        blocks.append(home)
    ctx.note(blocks=blocks, kinds=[fmt.KIND_NAMES.get(m.kinds.get(b), "other") for b in blocks])
    # Zeroed table blocks read as "never written" and only matter where inodes are allocated;
    # fsck sees those too, but a zeroed journal image only tears its transaction.
    ctx.mut.must_detect = any(b in m.kinds and b not in m.newest and (m.kinds[b] != fmt.K_INODES or any(
        fmt.inode_location(m.sb.itable_start, i)[0] == b for i in m.records)) for b in blocks)


def mut_truncate(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    total = m.sb.total_blocks * BS
    choices = [0, 1, 100, BS - 1, BS, BS + 7, 2 * BS - 1, 2 * BS, 3 * BS, m.sb.journal_start * BS + 5,
               m.sb.itable_start * BS, m.sb.data_start * BS, rng.randrange(2 * BS, m.sb.data_start * BS),
               rng.randrange(m.sb.data_start * BS, total), total - BS, total - 1]
    n = rng.choice(choices)
    del ctx.buf[n:]
    ctx.note(new_size=n, blocks=n / BS)
    ctx.mut.must_detect = False  # a refusal is an operational error, not "clean"


# --- the journal -----------------------------------------------------------------------------
def live_journal_positions(m: Model) -> list[int]:
    return [p for t in m.txns for p in range(t.start, t.commit + 1)]


def mut_journal_flip(ctx: Ctx) -> None:
    m = ctx.m
    pos = ctx.rng.choice(live_journal_positions(m))
    blk = m.jblk(pos)
    flips = ctx.flip_bits(blk * BS, (blk + 1) * BS, ctx.rng.randint(1, 3))
    t = next(t for t in m.txns if t.start <= pos <= t.commit)
    what = "commit" if pos == t.commit else "descriptor" if pos in t.descs else "image"
    ctx.note(txn=t.seq, of=len(m.txns), block=blk, what=what, flips=[f"byte {o % BS} bit {b}" for o, b in flips])


def mut_journal_drop(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    t = rng.choice(m.txns)
    blk = m.jblk(t.commit)
    how = rng.choice(["zero", "magic", "seq+1"])
    if how == "zero":
        ctx.buf[blk * BS:(blk + 1) * BS] = bytes(BS)
    elif how == "magic":
        ctx.buf[blk * BS] ^= 0xFF
    else:
        put_field(ctx.buf, blk * BS, HEADER_F["seq"], t.seq + 1)
        seal_at(ctx.buf, blk * BS)
    ctx.note(txn=t.seq, of=len(m.txns), commit_block=blk, how=how)


def _swap(buf: bytearray, a: int, b: int) -> None:
    ba, bb = bytes(buf[a * BS:(a + 1) * BS]), bytes(buf[b * BS:(b + 1) * BS])
    buf[a * BS:(a + 1) * BS], buf[b * BS:(b + 1) * BS] = bb, ba


def mut_journal_reorder(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    how = rng.choice(["swap blocks", "swap transactions", "replay an old transaction again"])
    if how == "swap transactions" and len(m.txns) >= 2:
        i = rng.randrange(len(m.txns) - 1)
        a, b = m.txns[i], m.txns[i + 1]
        blocks = [bytes(ctx.buf[m.jblk(p) * BS:(m.jblk(p) + 1) * BS]) for p in range(a.start, b.end)]
        na = a.end - a.start
        new = blocks[na:] + blocks[:na]  # B then A, in the same place
        for k, data in enumerate(new):
            o = m.jblk(a.start + k) * BS
            ctx.buf[o:o + BS] = data
        ctx.note(how=how, txns=[a.seq, b.seq])
    elif how == "replay an old transaction again" and len(m.txns) >= 2:
        # Copy an early transaction after the last one, renumbered as the next seq and resealed: replay
        # then writes older images over newer ones. fsck must see the inconsistency that leaves.
        old, last = m.txns[rng.randrange(len(m.txns) - 1)], m.txns[-1]
        n = old.end - old.start
        if n + (last.end - m.txns[0].start) > m.sb.journal_blocks:
            how = "swap blocks"
        else:
            seq = last.seq + 1
            for k in range(n):
                src = m.jblk(old.start + k) * BS
                dst = m.jblk(last.end + k) * BS
                data = bytearray(ctx.buf[src:src + BS])
                if old.start + k in old.descs or k == n - 1:  # descriptor or commit: own seq and self
                    put_field(data, 0, HEADER_F["seq"], seq)
                    put_field(data, 0, HEADER_F["self"], dst // BS)
                    fmt.seal(data)
                ctx.buf[dst:dst + BS] = data
            copy = Txn(seq, last.end, [last.end + (p - old.start) for p in old.descs],
                       [(last.end + (p - old.start), h) for p, h in old.images], last.end + n - 1)
            ctx.fix_commit(copy)
            ctx.note(how=how, txn=old.seq, as_seq=seq)
            return
    if how == "swap blocks":
        pos = live_journal_positions(m)
        a, b = rng.sample(pos, 2) if len(pos) >= 2 else (pos[0], pos[0] + 1)
        _swap(ctx.buf, m.jblk(a), m.jblk(b))
        ctx.note(how=how, blocks=[m.jblk(a), m.jblk(b)])


def stale_descriptors(buf: bytes, m: Model) -> list[tuple[int, int]]:
    """(journal position, seq) of valid descriptors older than the tail: earlier laps of the journal."""
    out = []
    live = set(live_journal_positions(m))
    for p in range(m.sb.journal_blocks):
        blk = m.sb.journal_start + p
        raw = buf[blk * BS:(blk + 1) * BS]
        if p in live or raw[:4] != fmt.MAGIC:
            continue
        try:
            h = fmt.read_header(raw, blk, fmt.K_JDESC)
        except Exception:
            continue
        if h.seq < m.sb.journal_seq:
            out.append((p, h.seq))
    return out


def mut_journal_rewind(ctx: Ctx) -> None:
    """Point the superblock's tail (both copies, resealed) at an older transaction still in the journal,
    or at the live one with a wrong seq: replay then applies stale images, or stops early."""
    m, rng = ctx.m, ctx.rng
    stale = stale_descriptors(ctx.buf, m)
    if stale and rng.random() < 0.7:
        tail, seq = rng.choice(stale)
        how = "to a stale transaction"
    else:
        tail = rng.randrange(m.sb.journal_blocks)
        seq = rng.choice([m.sb.journal_seq - 1, m.sb.journal_seq + 1, 0, 1, (1 << 64) - 1, m.sb.journal_seq])
        how = "anywhere"
    for b in (0, 1):
        def change(off: int) -> None:
            put_field(ctx.buf, off, SUPER_F["journal_tail"], tail)
            put_field(ctx.buf, off, SUPER_F["journal_seq"], seq)
        ctx.edit_block(b, change, shadow_ok=False)
    ctx.note(how=how, stale_transactions=len(stale), old_tail=m.sb.journal_tail, tail=tail,
             old_seq=m.sb.journal_seq, seq=seq)


def mut_combo(ctx: Ctx) -> None:
    """Two or three of the other mutators on one image (truncation last, if at all)."""
    names = [n for n in MUTATORS if n not in ("combo", "truncate") and (ctx.m.txns or not MUTATORS[n][2])]
    steps = ctx.rng.sample(names, ctx.rng.randint(2, 3))
    details = []
    for n in steps:
        ctx.mut.detail = {}
        MUTATORS[n][0](ctx)
        details.append({"mutator": n, **ctx.mut.detail})
    ctx.mut.detail = {"steps": details}
    ctx.mut.must_detect = False


def mut_journal_field(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    t = rng.choice(m.txns)
    if t.descs and rng.random() < 0.6:
        p = rng.choice(t.descs)
        o = m.jblk(p) * BS
        used = get_field(ctx.buf, o, HEADER_F["used"])
        if rng.random() < 0.35:
            new = rng.choice(extremes(16, m, used, (0, fmt.DESC_ENTRIES, fmt.DESC_ENTRIES + 1)))
            put_field(ctx.buf, o, HEADER_F["used"], new)
            ctx.note(txn=t.seq, field="descriptor used", old=used, new=new)
        else:
            i = rng.randrange(max(used, 1))
            f = Field(f"home[{i}]", HS + 8 * i, "Q")
            old = get_field(ctx.buf, o, f)
            homes = [h for _, h in t.images]
            new = pick_value(ctx, f, old, cross_blocks(m) + tuple(homes) + (m.sb.journal_start + m.sb.journal_blocks,
                                                                            m.sb.journal_start + m.sb.journal_blocks - 1))
            put_field(ctx.buf, o, f, new)
            ctx.note(txn=t.seq, field=f.name, old=old, new=new)
            ctx.mut.must_detect = not (m.sb.journal_start + m.sb.journal_blocks <= new < m.sb.total_blocks)
        seal_at(ctx.buf, o)
        ctx.fix_commit(t)
    else:
        o = m.jblk(t.commit) * BS
        name = rng.choice(["nblocks", "crc", "reserved", "commit_time_ns", "seq"])
        f = HEADER_F["seq"] if name == "seq" else COMMIT_F[name]
        old = get_field(ctx.buf, o, f)
        new = pick_value(ctx, f, old, (len(t.images) + 1, max(len(t.images) - 1, 0), t.seq - 1, t.seq + 1))
        put_field(ctx.buf, o, f, new)
        seal_at(ctx.buf, o)
        ctx.note(txn=t.seq, of=len(m.txns), field=f"commit {name}", old=old, new=new)


# --- field edits -----------------------------------------------------------------------------
MODES = (stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o600,
         stat.S_IFCHR | 0o600, stat.S_IFBLK | 0o600, stat.S_IFSOCK | 0o600, 0o170777, 0o070777, 0o000644)


def edit_superblock(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    name = rng.choice(SUPER_NAMES)
    f = SUPER_F[name]
    which = rng.choices(["current", "other", "both"], [5, 2, 3])[0]
    blocks = {"current": [m.sb_blk], "other": [1 - m.sb_blk], "both": [0, 1]}[which]
    if f.numeric:
        cur = getattr(m.sb, name)
        extra = (m.sb.journal_blocks - 1, m.sb.journal_tail + 1, m.sb.journal_seq - 1, m.sb.journal_seq + 1,
                 m.sb.generation + 1, m.sb.generation + 2, 3, 2, 1)
        new: Any = pick_value(ctx, f, cur, extra)
    else:
        cur, new = getattr(m.sb, name).hex(), rng.randbytes(16)
    for b in blocks:
        def change(off: int) -> None:
            put_field(ctx.buf, off, f, new)
        ctx.edit_block(b, change, shadow_ok=False)
    ctx.note(structure="superblock", copies=which, field=name, old=cur, new=new.hex() if isinstance(new, bytes) else new)
    geometry = ("version", "block_size", "total_blocks", "journal_start", "journal_blocks", "ibitmap_start",
                "ibitmap_blocks", "bitmap_start", "bitmap_blocks", "itable_start", "itable_blocks", "data_start",
                "inode_count")
    fixed = geometry + ("mkfs_time_ns", "uuid")
    # One copy changed on a field both must agree on, or the geometry of the copy in use: seen.
    if which != "both" and name in fixed and (which == "current" or name != "generation"):
        ctx.mut.must_detect = True
    # Both copies on a geometry field: seen unless the formulas still hold (one block or inode fewer).
    if which in ("current", "both") and name in geometry and name not in ("total_blocks", "inode_count"):
        ctx.mut.must_detect = True
    if which in ("current", "both") and name == "state" and new not in (1, 2):
        ctx.mut.must_detect = True  # 1 clean, 2 dirty (§4)


# Fields the engine computes with weigh more than timestamps and ids.
INODE_WEIGHTS = {"size": 4, "blocks": 3, "mode": 3, "nlink": 3, "extent_head": 3, "dirent_head": 3,
                 "xattr_head": 3, "parent": 2, "ino": 2, "flags": 2}


def edit_inode(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    inos = sorted(m.records)
    r = rng.random()
    if r < 0.15:
        ino = fmt.ROOT_INO
    elif r < 0.22:
        ino = fmt.ORPHAN_INO
    elif r < 0.28 and m.free_inos:
        ino = rng.choice(m.free_inos)  # a free slot that suddenly holds something
    else:
        ino = rng.choice(inos)
    tblk, roff = fmt.inode_location(m.sb.itable_start, ino)
    if tblk not in m.kinds:
        ino, (tblk, roff) = fmt.ROOT_INO, fmt.inode_location(m.sb.itable_start, fmt.ROOT_INO)
    rec = m.records.get(ino)
    names = list(INODE_F)
    name = rng.choices(names, [INODE_WEIGHTS.get(n, 1) for n in names])[0]
    f = INODE_F[name]
    cur = rec[name] if rec else 0
    if name == "mode":
        new = rng.choice([v for v in MODES + tuple(extremes(32, m, cur)) if v != cur])
    else:
        extra = cross_blocks(m) if name.endswith("_head") else tuple(inos[:8]) + (fmt.ORPHAN_INO, ino)
        if name == "size":
            extra += (fmt.MAX_FILE_BLOCKS * BS - 1, BS - 1, BS, 0)
        if name == "flags":
            extra += (fmt.FLAG_MAP_SYNC, 2, 0xFFFFFFFE)
        new = pick_value(ctx, f, cur, extra)
        if f.code == "q" and new >= 1 << 63:
            new -= 1 << 64

    def change(off: int) -> None:
        put_field(ctx.buf, off + roff, f, new)

    ctx.edit_block(tblk, change)
    ctx.note(structure="inode record", ino=ino, allocated=rec is not None, field=name, old=cur, new=new)
    if rec is None:
        ctx.mut.must_detect = True  # a free record that is not zero
        return
    kind = stat.S_IFMT(rec["mode"])
    md = False
    if name in ("ino", "nlink", "blocks", "extent_head", "dirent_head", "xattr_head") and new != cur:
        md = name != "dirent_head" or kind == stat.S_IFDIR or new != 0
        if name == "extent_head" and cur == 0 and new == 0:
            md = False
    if name == "nlink" and ino not in (fmt.ROOT_INO, fmt.ORPHAN_INO) and rec["nlink"] == 0:
        md = True
    if name == "parent" and kind == stat.S_IFDIR:
        md = True
    if name == "mode" and stat.S_IFMT(new) != kind:
        md = True  # another type: the entries naming it, its data or its chains disagree
    if name == "size" and kind == stat.S_IFLNK:
        md = not 0 < new < BS  # a target is 1..4095 bytes (§13)
    if name == "size" and kind == stat.S_IFREG and new > fmt.MAX_FILE_BLOCKS * BS:
        md = True  # past the largest file (§20)
    ctx.mut.must_detect = md


def _extent_valid(state: int, ln: int, lblk: int, pblk: int, m: Model) -> bool:
    return (state in (fmt.EXT_UNWRITTEN, fmt.EXT_WRITTEN) and 0 < ln <= fmt.MAX_EXTENT_LEN
            and lblk + ln <= fmt.MAX_FILE_BLOCKS and m.sb.data_start <= pblk and pblk + ln <= m.sb.total_blocks)


def edit_extent(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    new_slot = rng.random() < 0.1 and m.free_inline
    blk, so, ino = rng.choice(m.free_inline if new_slot else m.extent_slots)
    name = rng.choice(list(EXTENT_F))
    f = EXTENT_F[name]
    off0 = m.where(blk)
    state, ln, lblk, pblk, res = fmt.EXTENT.unpack_from(ctx.buf, off0 + so)
    cur = {"state": state, "len": ln, "lblk": lblk, "pblk": pblk, "reserved": res}[name]
    extra = {"state": (2, 3, 0xFFFFFFFF), "pblk": cross_blocks(m), "lblk": (fmt.MAX_FILE_BLOCKS - 1, lblk + 1)}
    new = pick_value(ctx, f, cur, extra.get(name, ()))

    def change(off: int) -> None:
        if new_slot:  # an extent appears in a free inline slot
            fmt.EXTENT.pack_into(ctx.buf, off + so, fmt.EXT_WRITTEN, 1, 1000, m.sb.data_start + 1, 0)
        put_field(ctx.buf, off + so, f, new)

    ctx.edit_block(blk, change)
    after = dict(state=state, len=ln, lblk=lblk, pblk=pblk)
    if new_slot:
        after = dict(state=fmt.EXT_WRITTEN, len=1, lblk=1000, pblk=m.sb.data_start + 1)
    if name != "reserved":
        after[name] = new
    ctx.note(structure="inline extent" if m.kinds.get(blk) == fmt.K_INODES else "extent chain slot", ino=ino,
             block=blk, slot_offset=so, new_slot=bool(new_slot), field=name, old=cur, new=new)
    valid = _extent_valid(after["state"], after["len"], after["lblk"], after["pblk"], m)
    # An invalid extent, a new one, another length or another place in pmem (the bitmap and the other
    # owners disagree then) must be seen; another state or another file offset need not be.
    ctx.mut.must_detect = (not valid) or bool(new_slot) or name in ("len", "pblk")
    if new_slot and name == "state" and new == 0:
        ctx.mut.must_detect = False  # the slot is free again


def edit_dirent(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    blk, so, dino, name_b = rng.choice(m.dirents)
    off0 = m.where(blk)
    target, dtype, nlen, res, raw_name = fmt.DIRENT.unpack_from(ctx.buf, off0 + so)
    what = rng.choice(["ino", "type", "namelen", "reserved", "name"])
    siblings = [n for b, s, d, n in m.dirents if d == dino and n != name_b]
    if what == "name":
        choice = rng.choice(["nul", "slash", "dot", "dotdot", "duplicate", "empty", "255"])
        nm = {"nul": name_b[:1] + b"\0" + name_b[2:] if len(name_b) > 1 else b"\0",
              "slash": b"a/" + name_b, "dot": b".", "dotdot": b"..",
              "duplicate": rng.choice(siblings) if siblings else name_b, "empty": b"", "255": b"n" * 255}[choice]
        new: Any = choice

        def change(off: int) -> None:
            ctx.buf[off + so + 8:off + so + 8 + 255] = nm.ljust(255, b"\0")
            put_field(ctx.buf, off + so, DIRENT_F["namelen"], len(nm))
        ctx.mut.must_detect = choice != "255" and not (choice == "duplicate" and not siblings)
        old: Any = name_b.decode(errors="backslashreplace")
    else:
        f = DIRENT_F[what]
        old = {"ino": target, "type": dtype, "namelen": nlen, "reserved": res}[what]
        extra = {"ino": (fmt.ROOT_INO, fmt.ORPHAN_INO, dino, *(sorted(m.records)[:10]), *m.free_inos[:3]),
                 "type": (0, 1, 2, 4, 6, 8, 10, 12, 14, 15), "namelen": (nlen + 1, nlen - 1, 0, 255)}
        new = pick_value(ctx, f, old, extra.get(what, ()))

        def change(off: int) -> None:
            put_field(ctx.buf, off + so, f, new)
        # Another target breaks link counts or names a free/reserved inode; another type or name length
        # disagrees with the target or puts NULs in the name... except where the new length lands on a
        # name that happens to be fine (a shorter prefix): not required then.
        ctx.mut.must_detect = what in ("ino", "type") or (what == "namelen" and (new == 0 or new > nlen))
    ctx.edit_block(blk, change)
    ctx.note(structure="directory entry", dir=dino, block=blk, slot_offset=so, entry=name_b.decode(errors="replace"),
             field=what, old=old, new=new)


def _xattr_blob(ctx: Ctx, ino: int) -> tuple[list[int], bytearray]:
    m = ctx.m
    chain = m.chains[(ino, fmt.K_XATTR)]
    blob = bytearray()
    for b in chain:
        o = m.where(b)
        used = get_field(ctx.buf, o, HEADER_F["used"])
        blob += ctx.buf[o + HS:o + HS + used]
    return chain, blob


def edit_xattr(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    owners = sorted(ino for ino, k in m.chains if k == fmt.K_XATTR)
    ino = rng.choice(owners)
    chain, blob = _xattr_blob(ctx, ino)
    recs = []
    pos = 0
    while pos + XATTR_RECORD.size <= len(blob):
        nl, vl = XATTR_RECORD.unpack_from(blob, pos)
        recs.append((pos, nl, vl, bytes(blob[pos + 5:pos + 5 + nl])))
        pos += 5 + nl + vl
    what = rng.choice(["namelen", "valuelen", "name nul", "name empty-ish", "duplicate name", "block used"])
    if what == "block used":
        b = rng.choice(chain)
        o0 = m.where(b)
        cur = get_field(ctx.buf, o0, HEADER_F["used"])
        new = rng.choice(extremes(16, m, cur, (0, fmt.PAYLOAD, fmt.PAYLOAD + 1, cur + 1, cur - 1)))

        def change(off: int) -> None:
            put_field(ctx.buf, off, HEADER_F["used"], new)
        ctx.edit_block(b, change)
        ctx.note(structure="xattr chain block", ino=ino, block=b, field="used", old=cur, new=new)
        _, after = _xattr_blob(ctx, ino)
        ctx.mut.must_detect = new > fmt.PAYLOAD or xattr_blob_violation(after) is not None
        return
    if not recs:
        return
    rpos, nl, vl, nm = rng.choice(recs)
    patch: dict[int, int] = {}  # blob offset -> new byte
    if what == "namelen":
        new = rng.choice([0, 1, 255, nl + 1, max(nl - 1, 0), 128])
        patch[rpos] = new
        ctx.mut.must_detect = new == 0 or new > nl
        old: Any = nl
    elif what == "valuelen":
        new = rng.choice(extremes(32, m, vl, (vl + 1, len(blob), len(blob) - rpos - 5 - nl + 1)))
        for i, byte in enumerate(struct.pack("<I", new)):
            patch[rpos + 1 + i] = byte
        ctx.mut.must_detect = new > vl
        old = vl
    elif what == "name nul":
        if not nl:
            return
        i = rng.randrange(nl)
        patch[rpos + 5 + i] = 0
        new, old = f"NUL at name byte {i}", nm.decode(errors="replace")
        ctx.mut.must_detect = True  # names are C strings: getxattr could never reach it
    elif what == "name empty-ish":
        for i in range(nl):
            patch[rpos + 5 + i] = ord(".")
        new, old = "." * nl, nm.decode(errors="replace")
        ctx.mut.must_detect = False
    else:
        others = [r for r in recs if r[0] != rpos and r[1] == nl]
        if others:
            for i, byte in enumerate(others[0][3]):
                patch[rpos + 5 + i] = byte
            new, old = others[0][3].decode(errors="replace"), nm.decode(errors="replace")
            ctx.mut.must_detect = True  # names are unique within an inode (§11)
        else:
            patch[rpos + 5] = (nm[0] ^ 0x20) if nl else 0
            new, old = "first byte case-flipped", nm.decode(errors="replace")
    # Apply blob offsets to the chain blocks they fall in.
    by_block: dict[int, list[tuple[int, int]]] = defaultdict(list)
    base = 0
    for b in chain:
        used = get_field(ctx.buf, m.where(b), HEADER_F["used"])
        for bo, v in patch.items():
            if base <= bo < base + used:
                by_block[b].append((HS + bo - base, v))
        base += used
    for b, edits in by_block.items():
        def change(off: int, edits=edits) -> None:
            for o, v in edits:
                ctx.buf[off + o] = v
        ctx.edit_block(b, change)
    ctx.note(structure="xattr record", ino=ino, record_at=rpos, name=nm.decode(errors="replace"), field=what,
             old=old, new=new)
    _, after = _xattr_blob(ctx, ino)
    violation = xattr_blob_violation(after)
    ctx.mut.must_detect = violation is not None
    if violation:
        ctx.note(violates=violation)


def xattr_blob_violation(blob: bytes) -> str | None:
    """What docs/format.md §11 forbids in a blob (and a NUL in a name: names are C strings)."""
    pos, names = 0, set()
    if len(blob) > fmt.XATTR_BLOB_MAX[fmt.VERSION]:
        return "blob too long"
    while pos < len(blob):
        if pos + XATTR_RECORD.size > len(blob):
            return "record header runs past the blob"
        nl, vl = XATTR_RECORD.unpack_from(blob, pos)
        pos += XATTR_RECORD.size
        if nl == 0:
            return "namelen 0"
        if pos + nl + vl > len(blob):
            return "record runs past the blob"
        name = bytes(blob[pos:pos + nl])
        if b"\0" in name:
            return "NUL in a name"
        if name in names:
            return "duplicate name"
        names.add(name)
        pos += nl + vl
    return None


def edit_bitmap(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    inode_map = rng.random() < 0.5
    sb = m.sb
    start, nbits = (sb.ibitmap_start, sb.inode_count) if inode_map else (sb.bitmap_start, sb.total_blocks)
    if inode_map:
        cands = [("reserved", i) for i in (0, 1, 2)] + [("allocated", i) for i in sorted(m.records)[:20]] + \
                [("free", i) for i in m.free_inos[:5]] + [("past the end", nbits + rng.randrange(3))]
    else:
        cands = [("metadata", rng.randrange(sb.data_start)), ("metadata", 0), ("metadata", sb.itable_start)] + \
                [("data", b) for b in m.data_blocks[:10]] + [("chain", c[0]) for c in list(m.chains.values())[:6]] + \
                [("free", b) for b in m.free_data[:5]] + [("past the end", nbits + rng.randrange(3))]
    cands = [c for c in cands if c[1] < (sb.ibitmap_blocks if inode_map else sb.bitmap_blocks) * BITS_PER_BLOCK]
    what, i = rng.choice(cands)
    blk = start + i // BITS_PER_BLOCK
    byte, bit = HS + (i % BITS_PER_BLOCK) // 8, i % 8

    def change(off: int) -> None:
        ctx.buf[off + byte] ^= 1 << bit

    ctx.edit_block(blk, change)
    ctx.note(structure="inode bitmap" if inode_map else "block bitmap", bit=i, what=what, block=blk)
    ctx.mut.must_detect = True  # every bit has one right value in a consistent image (§6)


def edit_header(ctx: Ctx) -> None:
    m, rng = ctx.m, ctx.rng
    home = ctx.any_meta_block()
    kind = m.kinds[home]
    name = rng.choice(["kind", "used", "reserved", "self", "owner", "next", "seq"])
    f = HEADER_F[name]
    o0 = m.where(home)
    cur = get_field(ctx.buf, o0, f)
    extra = {"kind": tuple(range(0, 11)), "owner": tuple(sorted(m.records)[:10]),
             "next": cross_blocks(m) + (home,), "self": cross_blocks(m)}.get(name, ())
    new = pick_value(ctx, f, cur, extra)

    def change(off: int) -> None:
        put_field(ctx.buf, off, f, new)

    ctx.edit_block(home, change, shadow_ok=kind != fmt.K_SUPER)
    ctx.note(structure=f"{fmt.KIND_NAMES[kind]} header", block=home, field=name, old=cur, new=new)
    chain = kind in (fmt.K_EXTENTS, fmt.K_DIRENTS, fmt.K_XATTR)
    md = name in ("kind", "self") or (chain and name in ("owner", "next"))
    if chain and name == "used" and kind != fmt.K_XATTR:
        md = True
    if kind == fmt.K_SUPER and home != m.sb_blk and name in ("kind", "self"):
        md = True
    ctx.mut.must_detect = md


# (editor, weight, does the seed have the structure)
FIELD_EDITS: list[tuple[Callable[[Ctx], None], int, Callable[[Model], bool]]] = [
    (edit_superblock, 3, lambda m: True),
    (edit_inode, 8, lambda m: True),
    (edit_extent, 5, lambda m: bool(m.extent_slots)),
    (edit_dirent, 5, lambda m: bool(m.dirents)),
    (edit_xattr, 3, lambda m: any(k == fmt.K_XATTR for _, k in m.chains)),
    (edit_bitmap, 3, lambda m: True),
    (edit_header, 4, lambda m: True),
]


def mut_field_edit(ctx: Ctx) -> None:
    usable = [(fn, w) for fn, w, ok in FIELD_EDITS if ok(ctx.m)]
    fns, weights = zip(*usable)
    ctx.rng.choices(fns, weights)[0](ctx)


# name -> (function, weight, needs a journal with transactions)
MUTATORS: dict[str, tuple[Callable[[Ctx], None], int, bool]] = {
    "bitflip": (mut_bitflip, 4, False),
    "flip_meta": (mut_flip_meta, 8, False),
    "scramble_reseal": (mut_scramble_reseal, 6, False),
    "random_block": (mut_random_block, 5, False),
    "zero_block": (mut_zero_block, 5, False),
    "truncate": (mut_truncate, 3, False),
    "journal_flip": (mut_journal_flip, 4, True),
    "journal_drop": (mut_journal_drop, 3, True),
    "journal_reorder": (mut_journal_reorder, 4, True),
    "journal_field": (mut_journal_field, 5, True),
    "journal_rewind": (mut_journal_rewind, 3, True),
    "field_edit": (mut_field_edit, 40, False),
    "combo": (mut_combo, 4, False),
}


class Corpus:
    """The seed images of a run and their models; makes case images."""

    def __init__(self, seed: int, seed_paths: dict[str, str]) -> None:
        self.seed = seed
        self.paths = seed_paths
        self.bytes = {n: open(p, "rb").read() for n, p in seed_paths.items()}
        self.models = {n: read_model(n, b) for n, b in self.bytes.items()}
        self.digests = {n: hashlib.sha256(b).hexdigest()[:16] for n, b in self.bytes.items()}

    def mutate(self, case: int) -> tuple[bytearray, Mutation]:
        rng = random.Random(f"daxfs-fuzz-case:{self.seed}:{case}")
        names = list(MUTATORS)
        name = rng.choices(names, [MUTATORS[n][1] for n in names])[0]
        fn, _, needs_journal = MUTATORS[name]
        seeds = sorted(n for n, mdl in self.models.items() if mdl.txns or not needs_journal)
        seed_name = rng.choice(seeds)
        buf = bytearray(self.bytes[seed_name])
        mut = Mutation(name, seed_name)
        ctx = Ctx(buf, self.models[seed_name], rng, mut)
        fn(ctx)
        if bytes(buf) == self.bytes[seed_name]:
            mut.detail["unchanged"] = True  # e.g. two flips of one bit
            mut.must_detect = False
        return buf, mut

    def write_case(self, case: int, path: str) -> Mutation:
        buf, mut = self.mutate(case)
        with open(path, "wb") as f:
            f.write(buf)
        return mut


# =============================================================================================
# Phase 1: fsck and inspect, in-process in a worker
# =============================================================================================
def _frames(tb) -> tuple[str, str]:
    """(the last frame, the deepest frame inside the daxfs package) as 'file:line in function'."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "", ""

    def show(fr) -> str:
        path = fr.filename
        if path.startswith(DAXFS_PACKAGE_DIR):
            path = "daxfs/" + os.path.relpath(path, DAXFS_PACKAGE_DIR)
        return f"{path}:{fr.lineno} in {fr.name}"

    ours = [fr for fr in frames if fr.filename.startswith(DAXFS_PACKAGE_DIR)]
    return show(frames[-1]), show(ours[-1]) if ours else ""


def guarded(fn: Callable[[], Any]) -> tuple[str, Any]:
    """Run fn: ('ok', value) | ('refused', message) for a DaxfsError | ('traceback', info)."""
    try:
        return "ok", fn()
    except DaxfsError as e:
        return "refused", f"{type(e).__name__}: {e}"
    except (Exception, RecursionError) as e:  # everything else is a bug
        last, ours = _frames(e.__traceback__)
        return "traceback", {"type": type(e).__name__, "message": str(e)[:500], "last_frame": last,
                             "daxfs_frame": ours}


def phase1_case(corpus: Corpus, case: int, workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, f"p1-{os.getpid()}.img")
    t0 = time.monotonic()
    mut = corpus.write_case(case, path)
    out: dict[str, Any] = {"case": case, "mutator": mut.mutator, "seed_image": mut.seed_image,
                           "detail": mut.detail, "must_detect": mut.must_detect}
    status, value = guarded(lambda: check(path))
    if status == "ok":
        out["fsck"] = {"verdict": "clean" if value.clean else "errors", "problems": len(value.problems),
                       "first": [str(p) for p in value.problems[:3]]}
    elif status == "refused":
        out["fsck"] = {"verdict": "operational", "message": value}
    else:
        out["fsck"] = {"verdict": "traceback", "traceback": value}
    status, value = guarded(lambda: describe(path))
    out["inspect"] = ({"verdict": "ok"} if status == "ok" else {"verdict": "operational", "message": value}
                      if status == "refused" else {"verdict": "traceback", "traceback": value})
    out["seconds"] = round(time.monotonic() - t0, 3)
    os.unlink(path)
    return out


def worker_main(seed: int, seeds_dir: str, workdir: str, mem_limit: int) -> None:
    """`_worker`: read case numbers on stdin, answer one JSON line each on stdout."""
    if mem_limit:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    sys.setrecursionlimit(10000)
    paths = {n: os.path.join(seeds_dir, f"seed-{n}.img") for n in SEED_BUILDERS}
    corpus = Corpus(seed, paths)
    out = os.fdopen(os.dup(1), "w")  # results only; anything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write(json.dumps({"ready": True, "digests": corpus.digests}) + "\n")
    out.flush()
    selftest = dict(kv.split(":") for kv in os.environ.get("FUZZ_IMAGES_SELFTEST", "").split(",") if ":" in kv)
    for line in sys.stdin:
        case = int(line)
        if selftest.get("hang") == str(case):  # tests of the harness itself (tests/test_fuzz.py)
            time.sleep(3600)
        if selftest.get("die") == str(case):
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            if selftest.get("raise") == str(case):
                res = {"case": case, "mutator": "selftest", "fsck": {"verdict": "traceback",
                       "traceback": guarded(lambda: [][1])[1]}, "inspect": {"verdict": "ok"}}
                out.write(json.dumps(res) + "\n")
                out.flush()
                continue
            res = phase1_case(corpus, case, workdir)
        except Exception as e:  # the fuzzer's own bug: report it, do not hide it as a daxfs one
            res = {"case": case, "fuzzer_error": "".join(traceback.format_exception(e))[-2000:]}
        out.write(json.dumps(res, default=str) + "\n")
        out.flush()


class Worker:
    """A `_worker` process: one case number per line in, one JSON line per case out."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.fd = self.proc.stdout.fileno()
        self.case: int | None = None
        self.deadline = 0.0
        self.buf = b""

    def send(self, case: int, timeout: float) -> None:
        self.case = case
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write(b"%d\n" % case)

    def read_lines(self) -> tuple[list[str], bool]:
        """Whole lines available now, and whether the worker's output has ended."""
        chunk = os.read(self.fd, 1 << 20)
        self.buf += chunk
        lines = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(line.decode())
        return lines, chunk == b""

    def first_line(self) -> str:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class Phase1:
    """At most `jobs` worker processes; a case that passes its deadline is a hang: its worker is killed
    and replaced. A worker that dies is a crash of the case it was running."""

    def __init__(self, seed: int, seeds_dir: str, workdir: str, jobs: int, timeout: float, mem_limit: int) -> None:
        self.args = [sys.executable, TOOL, "_worker", "--seed", str(seed), "--seeds-dir", seeds_dir,
                     "--workdir", workdir, "--mem-limit", str(mem_limit)]
        self.jobs = jobs
        self.timeout = timeout
        self.workers: list[Worker] = []
        self.digests: dict[str, str] = {}

    def _start(self) -> Worker:
        w = Worker(self.args)
        line = w.first_line()
        if not line:
            raise click.ClickException("a phase-1 worker died at start")
        self.digests = json.loads(line)["digests"]
        self.workers.append(w)
        return w

    def run(self, cases: list[int], on_result: Callable[[dict], None]) -> None:
        todo = list(reversed(cases))
        for _ in range(min(self.jobs, len(cases))):
            self._start()
        sel = selectors.DefaultSelector()
        for w in self.workers:
            sel.register(w.fd, selectors.EVENT_READ, w)
        while todo or any(w.case is not None for w in self.workers):
            for w in self.workers:
                if w.case is None and todo:
                    w.send(todo.pop(), self.timeout)
            now = time.monotonic()
            wait = max(0.05, min(w.deadline for w in self.workers if w.case is not None) - now)
            for key, _ in sel.select(timeout=wait):
                w = key.data
                lines, ended = w.read_lines()
                for line in lines:
                    on_result(json.loads(line))
                    w.case = None
                if ended:  # the worker died (a signal, an exit from deep inside)
                    code = w.proc.wait()
                    self._replace(sel, w, {"verdict": "traceback", "traceback": {
                        "type": f"worker died (exit status {code})", "message": "", "last_frame": "",
                        "daxfs_frame": ""}}, on_result)
            now = time.monotonic()
            for w in list(self.workers):
                if w.case is not None and now > w.deadline:
                    self._replace(sel, w, {"verdict": "hang", "seconds": self.timeout}, on_result)
        sel.close()

    def _replace(self, sel, w: Worker, what: dict, on_result) -> None:
        case = w.case
        sel.unregister(w.fd)
        w.kill()
        self.workers.remove(w)
        if case is not None:
            on_result({"case": case, "fsck": what, "inspect": {"verdict": "not run"}, "lost_worker": True})
        nw = self._start()
        sel.register(nw.fd, selectors.EVENT_READ, nw)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []


# =============================================================================================
# Phase 2: mount, walk, write, unmount, fsck again
# =============================================================================================
def mountinfo(target: str) -> dict | None:
    target = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            mp = parts[4].encode().decode("unicode_escape") if "\\" in parts[4] else parts[4]
            if mp == target:
                return {"devid": parts[2], "fstype": right.split()[0]}
    return None


def cmdlines():
    """(pid, arguments) of every other process, as /proc shows them."""
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                yield int(d), f.read().split(b"\0")
        except OSError:
            continue


def pids_with_arg(token: str) -> list[int]:
    """Processes whose command line has `token` as one argument: the daemons this run started (every
    case image path is unique to the run)."""
    out = []
    for pid, args in cmdlines():
        if token.encode() in args:
            out.append(pid)
    return out


def kill_pid(pid: int, grace: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        t = time.monotonic() + grace
        while process_alive(pid) and time.monotonic() < t:
            time.sleep(0.05)
        if not process_alive(pid):
            return


def abort_connection(devid: str) -> None:
    """Make a hung FUSE connection fail every request (what `umount -f` cannot)."""
    minor = devid.split(":")[1]
    with contextlib.suppress(OSError):
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")


def force_unmount(mnt: str, image: str) -> list[str]:
    """Whatever is left: detach the mount, kill our daemons for this image. Returns what it did."""
    did = []
    info = mountinfo(mnt)
    if info:
        p = subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, text=True, errors="backslashreplace",
                           timeout=30)
        did.append(f"fusermount3 -uz: exit {p.returncode}")
        if mountinfo(mnt):
            abort_connection(info["devid"])
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
            did.append("aborted the connection, umount -l")
    for pid in pids_with_arg(image):
        kill_pid(pid)
        did.append(f"killed daemon {pid}")
    return did


FRAME_RE = re.compile(r'^\s+File "([^"]+)", line (\d+), in (\S+)')


def _show_frame(path: str, line: str, fn: str) -> str:
    if path.startswith(DAXFS_PACKAGE_DIR):
        path = "daxfs/" + os.path.relpath(path, DAXFS_PACKAGE_DIR)
    return f"{path}:{line} in {fn}"


def tracebacks_in(text: str) -> list[dict[str, str]]:
    """Each leaf traceback in a log (plain, or inside an exception group's '| ' frame): the exception
    line, the last frame and the deepest frame inside the daxfs package."""
    out: list[dict[str, str]] = []
    frames: list[tuple[str, str, str]] | None = None
    for raw in text.splitlines():
        line = re.sub(r"^\s*\| ?", "", raw) if re.match(r"^\s*\|", raw) else raw
        if line.strip().endswith("Traceback (most recent call last):"):
            frames = [] if not line.lstrip(" +").startswith("Exception Group") else None
            continue
        if frames is None:
            continue
        m = FRAME_RE.match(line)
        if m:
            frames.append(m.groups())
        elif line[:1].strip() and not line.startswith("+"):  # the exception line ends the block
            typ, _, msg = line.strip().partition(": ")
            ours = [f for f in frames if f[0].startswith(DAXFS_PACKAGE_DIR)]
            out.append({"type": typ, "message": msg[:500],
                        "last_frame": _show_frame(*frames[-1]) if frames else "",
                        "daxfs_frame": _show_frame(*ours[-1]) if ours else ""})
            frames = None
    return out


def run_cmd(args: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr)."""
    try:
        p = subprocess.run(args, capture_output=True, text=True, errors="backslashreplace", timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        def s(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        return None, s(e.stdout), s(e.stderr)


def fsck_cli(image: str, timeout: float) -> dict[str, Any]:
    rc, out, err = run_cmd(daxfs_cli() + ["fsck", "--json", image], timeout)
    if rc is None:
        return {"verdict": "hang"}
    if "Traceback" in out + err:
        return {"verdict": "traceback", "traceback": (tracebacks_in(out + err) or [{}])[-1]}
    if rc == 0:
        return {"verdict": "clean"}
    if rc == 4:
        try:
            rep = json.loads(out)
            return {"verdict": "errors", "problems": len(rep["problems"]),
                    "first": [f"{p['where']}: {p['what']}" for p in rep["problems"][:3]]}
        except (ValueError, KeyError):
            return {"verdict": "errors"}
    if rc == 8:
        return {"verdict": "operational", "message": err.strip()[-300:]}
    return {"verdict": "traceback", "traceback": {"type": f"daxfs fsck exit status {rc}", "message": err[-300:],
                                                  "last_frame": "", "daxfs_frame": ""}}


class MountCase:
    """One mount case's resources, so that an interrupt can clean them up."""
    active: "MountCase | None" = None

    def __init__(self, image: str, mnt: str) -> None:
        self.image, self.mnt = image, mnt
        self.child: subprocess.Popen | None = None

    def cleanup(self) -> list[str]:
        did = []
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            with contextlib.suppress(Exception):
                self.child.wait(timeout=5)
            did.append("killed the walk child")
        did += force_unmount(self.mnt, self.image)
        return did


def phase2_case(corpus: Corpus, case: int, workdir: str, timeout: float, keep: bool = False) -> dict[str, Any]:
    d = os.path.join(workdir, f"m{case}")
    os.makedirs(d, exist_ok=True)
    image = os.path.join(d, "image.img")
    mut = corpus.write_case(case, image)
    res = mount_check(image, d, mut.detail, timeout, case)
    res = {"case": case, "mutator": mut.mutator, **res}
    if not keep:
        shutil.rmtree(d, ignore_errors=True)
    return res


def mount_check(image: str, d: str, detail: dict, timeout: float, case: int = 0) -> dict[str, Any]:
    """Phase 2 on one image in directory d: fsck, mount, walk + write, umount, fsck. `detail` says what
    was damaged (its ino/dir/owner is the walk's target)."""
    image = os.path.abspath(image)
    mnt, logf = os.path.join(d, "mnt"), os.path.join(d, "daemon.log")
    os.makedirs(mnt, exist_ok=True)
    res: dict[str, Any] = {"detail": detail}
    res["fsck_before"] = fsck_cli(image, timeout)
    mc = MountCase(image, mnt)
    MountCase.active = mc
    events: list[str] = []  # failures: "traceback", "daemon death", "hang"
    res["events"] = events
    pid = None
    try:
        orng = random.Random(f"daxfs-fuzz-mount-options:{case}")
        opts = [f"log={logf}"] + (["map_sync"] if orng.random() < 0.3 else []) + \
            (["commit=1"] if orng.random() < 0.2 else [])
        res["mount_options"] = ",".join(opts[1:])
        rc, out, err = run_cmd(daxfs_cli() + ["mount", image, mnt, "-o", ",".join(opts)], timeout)
        mounted = mountinfo(mnt) is not None
        if rc is None:
            events.append("hang")
            res["mount"] = {"result": "hang"}
        elif rc == 0 and not mounted:  # it answered, then went away before we looked
            res["mount"] = {"result": "mounted", "message": (out.strip().splitlines() or [""])[0][:300]}
            events.append("daemon death")
            res["death"] = {"mount_present": False, "when": "right after the mount answered"}
        elif rc != 0:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            one_line = rc != 0 and len(lines) == 1 and lines[0].startswith("daxfs: ") and "Traceback" not in out + err
            res["mount"] = {"result": "refused" if one_line else "bad refusal", "exit": rc,
                            "message": lines[-1] if lines else out.strip()[-300:]}
            if mounted:
                res["mount"]["still_mounted"] = True
        else:
            res["mount"] = {"result": "mounted", "message": (out.strip().splitlines() or [""])[0][:300]}
        pid_m = re.search(r"\(pid (\d+), log ", out)
        pid = int(pid_m.group(1)) if pid_m else None
        res["pid"] = pid
        if mounted and "hang" not in events:
            if pid is None:
                events.append("fuzzer error")
                res["mount"]["no_pid"] = True
            else:
                walk_and_write(mc, res, events, case, timeout)
                alive_mount = mountinfo(mnt) is not None
                alive_pid = process_alive(pid)
                if "daemon death" not in events and "hang" not in events and not (alive_mount and alive_pid):
                    events.append("daemon death")
                    res["death"] = {"mount_present": alive_mount, "pid_alive": alive_pid}
                if "hang" not in events and alive_mount:
                    rc, out, err = run_cmd(daxfs_cli() + ["umount", mnt], 2 * timeout)
                    res["umount"] = {"exit": rc, "message": (err or out).strip()[-300:]}
                    if rc is None:
                        events.append("hang")
                    elif rc != 0 or mountinfo(mnt) is not None:
                        res["umount"]["failed"] = True
                    elif not wait_exit(pid, timeout):
                        res["umount"]["daemon_lingers"] = True
    finally:
        if pid is not None and mountinfo(mnt) is None and not wait_exit(pid, 15):
            res["daemon_lingers"] = True  # no mount any more, but the daemon does not exit
        did = mc.cleanup()  # only now: a dying daemon may still be writing its traceback
        MountCase.active = None
    if did:
        res["cleanup"] = did
    log = open(logf, errors="replace").read() if os.path.exists(logf) else ""
    tbs = tracebacks_in(log)
    if tbs:
        events.append("traceback")
        res["log_tracebacks"] = tbs[:3]
    res["log_corruption"] = len(re.findall(r" ERROR corruption found", log))
    others = [ln for ln in log.splitlines() if " ERROR " in ln and " ERROR corruption found" not in ln]
    if others:
        res["log_errors"] = others[:5]
    res["fsck_after"] = fsck_cli(image, timeout)
    if res["fsck_after"]["verdict"] in ("traceback", "hang"):
        events.append(res["fsck_after"]["verdict"])
    res["events"] = sorted(set(events))
    return res


def walk_and_write(mc: MountCase, res: dict, events: list[str], case: int, timeout: float) -> None:
    """The walk and write phases in a child (`_walk`), so that a hung request cannot hang us."""
    d = res.get("detail") or {}
    target = d.get("ino") or d.get("dir") or d.get("owner") or 0
    child = subprocess.Popen([sys.executable, TOOL, "_walk", mc.mnt, "--case", str(case), "--target", str(target)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="backslashreplace",
                             stdin=subprocess.DEVNULL)
    mc.child = child
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            out, err = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # stuck in a FUSE request: fail the connection
            info = mountinfo(mc.mnt)
            if info:
                abort_connection(info["devid"])
            out, err = child.communicate(timeout=30)
        events.append("hang")
        lines = [ln for ln in out.splitlines() if ln.startswith("op ")]
        res["walk"] = {"hang_in": lines[-1][3:] if lines else "start"}
        return
    finally:
        mc.child = None
    result = next((json.loads(ln[7:]) for ln in out.splitlines() if ln.startswith("result ")), None)
    if result is None:
        events.append("fuzzer error")  # the walk child itself failed: the fuzzer's bug, not daxfs's
        res["walk"] = {"child_failed": err[-1500:]}
        return
    res["walk"] = result
    if result["dead"]:
        events.append("daemon death")


# --- the walk child -------------------------------------------------------------------------
class Dead(Exception):
    pass


def walk_child(mnt: str, case: int, target: int = 0) -> None:
    """Walk the tree, read everything, then write; print 'op NAME' before each step and a result line."""
    sys.stdout.reconfigure(errors="backslashreplace")  # damaged names are any bytes
    errnos: Counter = Counter()
    res: dict[str, Any] = {"entries": 0, "files_read": 0, "bytes_read": 0, "ops": 0, "dead": False}
    rng = random.Random(f"daxfs-fuzz-walk:{case}")

    def op(name: str, fn, *args):
        sys.stdout.write(f"op {name}\n")
        sys.stdout.flush()
        res["ops"] += 1
        try:
            return fn(*args)
        except OSError as e:
            if e.errno in DEAD_ERRNOS:
                res["dead_at"] = f"{name}: {e.strerror}"
                raise Dead from None
            errnos[errno.errorcode.get(e.errno, str(e.errno))] += 1
            return None

    files: list[tuple[str, int]] = []
    dirs: list[str] = [mnt]
    targets: list[tuple[str, os.stat_result]] = []  # paths of the damaged inode
    seen: set[tuple[int, int]] = set()

    def walk(path: str, depth: int) -> None:
        names = op(f"scandir {path}", lambda: [e.name for e in os.scandir(path)])
        if names is None:
            return
        for name in sorted(names):
            if res["entries"] >= 3000:
                return
            res["entries"] += 1
            p = os.path.join(path, name)
            st = op(f"lstat {p}", os.lstat, p)
            if st is None:
                continue
            if target and st.st_ino == target:
                targets.append((p, st))
            xs = op(f"listxattr {p}", lambda: os.listxattr(p, follow_symlinks=False)) or []
            for x in xs[:20]:
                op(f"getxattr {p} {x}", lambda: os.getxattr(p, x, follow_symlinks=False))
            if stat.S_ISLNK(st.st_mode):
                op(f"readlink {p}", os.readlink, p)
                op(f"stat {p}", os.stat, p)
            elif stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen and depth < 16:
                    seen.add((st.st_dev, st.st_ino))
                    dirs.append(p)
                    walk(p, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                files.append((p, st.st_size))
                read_file(p, st.st_size)
                op(f"getxattr map {p}", lambda: os.getxattr(p, "user.daxfs.map"))

    def read_file(p: str, size: int) -> None:
        fd = op(f"open {p}", os.open, p, os.O_RDONLY)
        if fd is None:
            return
        try:
            res["files_read"] += 1
            for off in (0, 1 << 16, 1 << 17):
                data = op(f"pread {p} {off}", os.pread, fd, 1 << 16, off)
                res["bytes_read"] += len(data or b"")
            for off in {max(size - 10, 0), size // 2, min(size, 1 << 62), (1 << 63) - 2}:
                op(f"pread {p} {off}", os.pread, fd, 4096, off)
            op(f"lseek {p} SEEK_DATA", os.lseek, fd, 0, os.SEEK_DATA)
            op(f"lseek {p} SEEK_HOLE", os.lseek, fd, 0, os.SEEK_HOLE)
            op(f"fstat {p}", os.fstat, fd)
        finally:
            op(f"close {p}", os.close, fd)

    def still_mounted() -> None:
        try:
            st = os.stat(mnt)
        except OSError as e:
            if e.errno in DEAD_ERRNOS:
                res["dead_at"] = f"stat of the mount point after op {res['ops']}: {e.strerror}"
                raise Dead from None
            return
        if st.st_dev == os.stat(os.path.dirname(mnt)).st_dev:  # the daemon went and took the mount along
            res["dead_at"] = f"mount gone after op {res['ops']}"
            raise Dead

    if os.environ.get("FUZZ_IMAGES_SELFTEST") == "walk-hang":  # the harness's own test
        op("selftest sleep", time.sleep, 3600)
    try:
        op("statvfs", os.statvfs, mnt)
        op("stat root", os.stat, mnt)
        walk(mnt, 0)
        still_mounted()
        res["walk_done"] = True
        res["targets"] = [t[0][len(mnt):] for t in targets]
        if target == fmt.ROOT_INO:
            st = op("stat root (target)", os.stat, mnt)
            if st is not None:
                targets.append((mnt, st))
        write_target(op, mnt, targets, rng)
        still_mounted()
        write_phase(op, mnt, files, dirs, rng)
        res["write_done"] = True
        op("statvfs", os.statvfs, mnt)
        still_mounted()
    except Dead:
        res["dead"] = True
    res["errnos"] = dict(errnos)
    res["eio"] = errnos.get("EIO", 0)
    sys.stdout.write("result " + json.dumps(res) + "\n")
    sys.stdout.flush()


def write_target(op, mnt: str, targets: list[tuple[str, os.stat_result]], rng: random.Random) -> None:
    """Every operation that reads or rewrites the damaged inode's structures: its extents, its
    directory chain, its xattr blob, and at last its removal (which frees all of them)."""
    for p, st in targets[:2]:
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
            fd = op(f"target open {p}", os.open, p, os.O_RDWR)
            if fd is not None:
                for off in (0, BS - 2, size // 2, max(size - 1, 0), size, size + 3 * BS):
                    op(f"target pwrite {p} {off}", os.pwrite, fd, b"T" * 5000, min(off, (1 << 62)))
                op(f"target fsync {p}", os.fsync, fd)
                op(f"target ftruncate {p} up", os.ftruncate, fd, min(size, 1 << 40) + 10 * BS)
                op(f"target ftruncate {p} down", os.ftruncate, fd, min(size, 1 << 40) // 3)
                op(f"target fallocate {p}", os.posix_fallocate, fd, 0, 4 * BS)
                op(f"target fdatasync {p}", os.fdatasync, fd)
                op(f"target close {p}", os.close, fd)
            op(f"target prealloc {p}", lambda: os.setxattr(p, "user.daxfs.prealloc", b"0 65536"))
            op(f"target punch {p}", lambda: os.setxattr(p, "user.daxfs.punch", b"4096 8192"))
            op(f"target map {p}", lambda: os.getxattr(p, "user.daxfs.map"))
            op(f"target map_sync {p}", lambda: os.setxattr(p, "user.daxfs.map_sync", b"1"))
            fd = op(f"target open O_TRUNC {p}", os.open, p, os.O_WRONLY | os.O_TRUNC)
            if fd is not None:
                op(f"target write after O_TRUNC {p}", os.write, fd, b"again")
                op(f"target close {p}", os.close, fd)
        elif stat.S_ISDIR(st.st_mode):
            for i in range(20):  # enough to need a new directory chain block
                fd = op(f"target create {p}/t{i}", os.open, os.path.join(p, f"t{i}"), os.O_CREAT | os.O_WRONLY, 0o644)
                if fd is not None:
                    op(f"target close {p}/t{i}", os.close, fd)
            op(f"target mkdir {p}/td", os.mkdir, os.path.join(p, "td"))
            op(f"target rename {p}/t0", os.rename, os.path.join(p, "t0"), os.path.join(p, "td", "t0"))
            names = op(f"target listdir {p}", os.listdir, p) or []
            for n in rng.sample(names, min(5, len(names))):
                q = os.path.join(p, n)
                op(f"target rename {q}", os.rename, q, q + ".r")
                op(f"target unlink {q}", os.unlink, q + ".r")
            op(f"target rmdir {p}/td", os.rmdir, os.path.join(p, "td"))
        elif stat.S_ISLNK(st.st_mode):
            op(f"target readlink {p}", os.readlink, p)
        for x in (op(f"target listxattr {p}", lambda: os.listxattr(p, follow_symlinks=False)) or [])[:10]:
            op(f"target getxattr {p} {x}", lambda: os.getxattr(p, x, follow_symlinks=False))
            op(f"target removexattr {p} {x}", lambda: os.removexattr(p, x, follow_symlinks=False))
        if not stat.S_ISLNK(st.st_mode):
            op(f"target setxattr {p}", lambda: os.setxattr(p, "user.target", b"t" * 3000))
            op(f"target setxattr big {p}", lambda: os.setxattr(p, "user.target2", b"u" * 6000))
        op(f"target chmod {p}", lambda: os.chmod(p, 0o600, follow_symlinks=False) if not stat.S_ISLNK(st.st_mode)
           else None)
        op(f"target utime {p}", lambda: os.utime(p, ns=(1, 2), follow_symlinks=False))
        if p != mnt:
            if stat.S_ISREG(st.st_mode):
                op(f"target link {p}", os.link, p, p + ".l")
                fd = op(f"target open-then-unlink {p}", os.open, p, os.O_RDWR)
                op(f"target unlink {p}.l", os.unlink, p + ".l")
                op(f"target unlink {p}", os.unlink, p)  # open: becomes an orphan
                if fd is not None:
                    op(f"target write to orphan {p}", os.pwrite, fd, b"orphan", 0)
                    op(f"target close orphan {p}", os.close, fd)
            elif stat.S_ISDIR(st.st_mode):
                op(f"target rename dir {p}", os.rename, p, p + ".moved")
                op(f"target rmdir {p}", os.rmdir, p + ".moved")
            else:
                op(f"target unlink {p}", os.unlink, p)


def write_phase(op, mnt: str, files: list[tuple[str, int]], dirs: list[str], rng: random.Random) -> None:
    def write_new(d: str, tag: str) -> None:
        p = os.path.join(d, f"fuzz-{tag}")
        fd = op(f"create {p}", os.open, p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        if fd is not None:
            op(f"write {p}", os.write, fd, b"x" * 10000)
            op(f"pwrite {p} 1M", os.pwrite, fd, b"far", 1 << 20)
            op(f"ftruncate {p} 3000", os.ftruncate, fd, 3000)
            op(f"ftruncate {p} 100000", os.ftruncate, fd, 100000)
            op(f"fsync {p}", os.fsync, fd)
            op(f"close {p}", os.close, fd)
            fd = op(f"open append {p}", os.open, p, os.O_WRONLY | os.O_APPEND)
            if fd is not None:
                op(f"append {p}", os.write, fd, b"appended" * 100)
                op(f"fdatasync {p}", os.fdatasync, fd)
                op(f"close {p}", os.close, fd)
            fd = op(f"open O_SYNC {p}", os.open, p, os.O_WRONLY | os.O_SYNC)
            if fd is not None:
                op(f"sync write {p}", os.pwrite, fd, b"s" * 5000, 200000)
                op(f"close {p}", os.close, fd)
            op(f"setxattr {p}", os.setxattr, p, "user.fuzz", b"value" * 10)
            op(f"setxattr map_sync {p}", os.setxattr, p, "user.daxfs.map_sync", b"1")
            op(f"link {p}", os.link, p, p + ".link")
            op(f"rename {p}", os.rename, p, p + ".renamed")
            op(f"unlink {p}.link", os.unlink, p + ".link")
            op(f"symlink {p}", os.symlink, "target-of-" + tag, p + ".sl")
        sub = os.path.join(d, f"fuzzdir-{tag}")
        op(f"mkdir {sub}", os.mkdir, sub)
        for i in range(3):
            fd = op(f"create {sub}/f{i}", os.open, os.path.join(sub, f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644)
            if fd is not None:
                op(f"write {sub}/f{i}", os.write, fd, b"%d" % i * 5000)
                op(f"close {sub}/f{i}", os.close, fd)
        op(f"rename {sub}", os.rename, sub, sub + ".moved")
        for i in range(3):
            op(f"unlink {sub}/f{i}", os.unlink, os.path.join(sub + ".moved", f"f{i}"))
        op(f"rmdir {sub}", os.rmdir, sub + ".moved")
        op(f"unlink {p}.renamed", os.unlink, p + ".renamed")
        op(f"unlink {p}.sl", os.unlink, p + ".sl")

    write_new(mnt, "root")
    if len(dirs) > 1:
        write_new(rng.choice(dirs[1:]), "sub")
    # The damaged structures themselves: existing files grown, cut, renamed, removed.
    for p, size in rng.sample(files, min(4, len(files))):
        fd = op(f"open rw {p}", os.open, p, os.O_RDWR)
        if fd is not None:
            op(f"append-at-eof {p}", os.pwrite, fd, b"more", size)
            op(f"overwrite {p}", os.pwrite, fd, b"over", 0)
            op(f"ftruncate {p} half", os.ftruncate, fd, size // 2)
            op(f"fsync {p}", os.fsync, fd)
            op(f"close {p}", os.close, fd)
        op(f"setxattr {p}", os.setxattr, p, "user.more", b"1")
        op(f"removexattr {p}", os.removexattr, p, "user.more")
    for p, _ in rng.sample(files, min(2, len(files))):
        op(f"rename {p}", os.rename, p, p + ".mv")
        op(f"unlink {p}", os.unlink, p + ".mv")
    for d in rng.sample(dirs[1:], min(2, len(dirs) - 1)):
        op(f"rmdir {d}", os.rmdir, d)  # ENOTEMPTY mostly; an emptied one goes
    fd = op("open root", os.open, mnt, os.O_RDONLY)
    if fd is not None:
        op("fsync root", os.fsync, fd)
        op("close root", os.close, fd)


# =============================================================================================
# The run: cases, summary, replay lines
# =============================================================================================
FAIL_EVENTS = ("traceback", "daemon death", "hang")


def phase1_events(r: dict) -> list[str]:
    ev = []
    for part in ("fsck", "inspect"):
        v = (r.get(part) or {}).get("verdict")
        if v in ("traceback", "hang"):
            ev.append(v)
    if r.get("fuzzer_error"):
        ev.append("fuzzer error")
    return sorted(set(ev))


def _norm(msg: str) -> str:
    msg = re.sub(r"/\S+", "PATH", msg)
    return re.sub(r"\d+", "N", msg)[:120]


def failure_keys(r: dict, phase: int) -> list[tuple[str, str]]:
    """(dedup key, description) of each failure of a case result."""
    out = []
    if phase == 1:
        for part in ("fsck", "inspect"):
            v = r.get(part) or {}
            if v.get("verdict") == "traceback":
                tb = v["traceback"]
                key = f"phase 1 {part}: {_tb_key(tb)}"
                out.append((key, f"{tb['type']}: {tb['message'][:200]} [{tb['daxfs_frame'] or tb['last_frame']}]"))
            elif v.get("verdict") == "hang":
                out.append((f"phase 1 {part}: hang ({r.get('mutator')})", "no answer within the deadline"))
        if r.get("fuzzer_error"):
            out.append(("fuzzer error", r["fuzzer_error"].strip().splitlines()[-1]))
    else:
        for tb in r.get("log_tracebacks", []):
            key = f"daemon: {_tb_key(tb)}"
            out.append((key, f"{tb['type']}: {tb['message'][:200]} [{tb['daxfs_frame'] or tb['last_frame']}]"))
        for part in ("fsck_before", "fsck_after"):
            v = r.get(part) or {}
            if v.get("verdict") == "traceback":
                tb = v["traceback"]
                out.append((f"{part}: {tb.get('type')} at {_strip_line(tb.get('daxfs_frame') or '')}",
                            f"{tb.get('type')}: {tb.get('message', '')[:200]}"))
        evs = r.get("events", [])
        if "daemon death" in evs and not r.get("log_tracebacks"):
            w = r.get("walk") or {}
            out.append((f"daemon death without traceback ({_field_key(r)})",
                        f"dead at {w.get('dead_at', r.get('stats_error', '?'))}"))
        if "hang" in evs:
            w = r.get("walk") or {}
            where = "mount" if (r.get("mount") or {}).get("result") == "hang" else \
                f"walk ({_norm(w.get('hang_in', ''))})" if w.get("hang_in") else "umount" \
                if (r.get("umount") or {}).get("exit", 0) is None else "stats"
            out.append((f"hang in {where.split(' PATH')[0]} ({_field_key(r)})", f"hang in {where}"))
        if r.get("fuzzer_error"):
            out.append(("fuzzer error (phase 2)", r["fuzzer_error"].strip().splitlines()[-1]))
        if (r.get("walk") or {}).get("child_failed"):
            out.append(("walk child failed (fuzzer)", r["walk"]["child_failed"].strip().splitlines()[-1]))
    return out


def _tb_key(tb: dict) -> str:
    """A cause: the exception type, the deepest daxfs function and, when the exception came from below
    daxfs (a library setter, struct), that last function too; line numbers left out."""
    where = _strip_line(tb.get("daxfs_frame") or tb.get("last_frame") or "")
    last = _strip_line(tb.get("last_frame") or "")
    below = f" (raised in {last.split(' in ')[-1]})" if last and last != where else ""
    return f"{tb.get('type')} at {where}{below}"


def _strip_line(frame: str) -> str:
    return re.sub(r":\d+ in ", " in ", frame)


def _field_key(r: dict) -> str:
    d = r.get("detail") or {}
    return f"{r.get('mutator')}: {d.get('structure', '')} {d.get('field', '')}".strip()


def finding_keys(p1: dict | None, p2: dict | None) -> list[tuple[str, str]]:
    """Non-fatal findings: fsck missing a spec violation, the daemon finding corruption fsck did not,
    damage done by the mount to an image fsck called clean, umount failing."""
    out = []
    if p1 and p1.get("must_detect") and (p1.get("fsck") or {}).get("verdict") == "clean":
        out.append((f"fsck missed: {_field_key(p1)}", json.dumps(p1.get("detail"), default=str)[:300]))
    if p2:
        before, after = (p2.get("fsck_before") or {}).get("verdict"), (p2.get("fsck_after") or {}).get("verdict")
        w = p2.get("walk") or {}
        if before == "clean" and (p2.get("log_corruption") or w.get("eio")):
            out.append((f"daemon found corruption on an fsck-clean image: {_field_key(p2)}",
                        f"{p2.get('log_corruption')} corruption log lines, {w.get('eio', 0)} EIO"))
        if before == "clean" and after in ("errors", "operational") and \
                (p2.get("mount") or {}).get("result") == "mounted":
            out.append((f"fsck-clean image damaged by mount+walk+write: {_field_key(p2)}",
                        "; ".join((p2.get("fsck_after") or {}).get("first", []))[:300]))
        if (p2.get("umount") or {}).get("failed"):
            out.append((f"umount failed: {_field_key(p2)}", (p2.get("umount") or {}).get("message", "")[:300]))
        if (p2.get("mount") or {}).get("result") == "bad refusal":
            out.append((f"mount refused without a one-line error: {_field_key(p2)}",
                        (p2.get("mount") or {}).get("message", "")[:300]))
    return out


def replay_cmd(seed: int, case: int, mount: bool) -> str:
    return f"{TOOL_REL} --seed {seed} --case {case}" + (" --mounts 1" if mount else "")


@dataclass
class Run:
    seed: int
    p1: dict[int, dict] = field(default_factory=dict)
    p2: dict[int, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def count(results: dict[int, dict], events_of) -> dict[str, int]:
            c: Counter = Counter()
            for r in results.values():
                for e in events_of(r):
                    c[e] += 1
            return c

        c1 = count(self.p1, phase1_events)
        c2 = count(self.p2, lambda r: r.get("events", []))
        fsck1 = Counter((r.get("fsck") or {}).get("verdict") for r in self.p1.values())
        insp = Counter((r.get("inspect") or {}).get("verdict") for r in self.p1.values())
        before = Counter((r.get("fsck_before") or {}).get("verdict") for r in self.p2.values())
        after = Counter((r.get("fsck_after") or {}).get("verdict") for r in self.p2.values())
        mounts = Counter((r.get("mount") or {}).get("result") for r in self.p2.values())
        eio = sum((r.get("walk") or {}).get("eio", 0) for r in self.p2.values())
        per_mut: dict[str, Counter] = defaultdict(Counter)
        for r in self.p1.values():
            pm = per_mut[r.get("mutator", "?")]
            pm["cases"] += 1
            pm["fsck " + str((r.get("fsck") or {}).get("verdict"))] += 1
            for e in phase1_events(r):
                pm[e] += 1
            if r.get("must_detect") and (r.get("fsck") or {}).get("verdict") == "clean":
                pm["fsck missed"] += 1
        for r in self.p2.values():
            pm = per_mut[r.get("mutator", "?")]
            pm["mounts"] += 1
            for e in r.get("events", []):
                pm["mount " + e] += 1
            pm["EIO"] += (r.get("walk") or {}).get("eio", 0)
            if (r.get("mount") or {}).get("result") == "refused":
                pm["refused"] += 1
        return {
            "seed": self.seed,
            "phase1": {"cases": len(self.p1), "tracebacks": c1["traceback"], "hangs": c1["hang"],
                       "fuzzer_errors": c1["fuzzer error"], "fsck": dict(fsck1), "inspect": dict(insp)},
            "phase2": {"cases": len(self.p2), "tracebacks": c2["traceback"], "daemon_deaths": c2["daemon death"],
                       "hangs": c2["hang"], "fuzzer_errors": c2["fuzzer error"], "eio": eio, "mount": dict(mounts), "fsck_before": dict(before),
                       "fsck_after": dict(after),
                       "daemon_lingers": sum(1 for r in self.p2.values() if r.get("daemon_lingers")),
                       "umount_failures": sum(1 for r in self.p2.values() if (r.get("umount") or {}).get("failed"))},
            "per_mutator": {k: dict(v) for k, v in sorted(per_mut.items())},
            "seconds": self.seconds,
        }

    def failures(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """Distinct failures and findings: key -> {description, cases, replay}."""
        fails: dict[str, dict] = {}
        finds: dict[str, dict] = {}

        def add(table, key, desc, case, mount, r):
            e = table.setdefault(key, {"description": desc, "cases": [], "replay": replay_cmd(self.seed, case, mount),
                                       "triggers": Counter()})
            e["cases"].append(case)
            e["triggers"][_field_key(r or {})] += 1

        for case, r in sorted(self.p1.items()):
            for key, desc in failure_keys(r, 1):
                add(fails, key, desc, case, False, r)
        for case, r in sorted(self.p2.items()):
            for key, desc in failure_keys(r, 2):
                add(fails, key, desc, case, True, r)
        for case in sorted(set(self.p1) | set(self.p2)):
            for key, desc in finding_keys(self.p1.get(case), self.p2.get(case)):
                add(finds, key, desc, case, case in self.p2 and not key.startswith("fsck missed"),
                    self.p1.get(case) or self.p2.get(case))
        for e in list(fails.values()) + list(finds.values()):
            e["triggers"] = dict(e["triggers"].most_common())
        return fails, finds

    def failed(self) -> bool:
        s = self.summary()
        return bool(s["phase1"]["tracebacks"] or s["phase1"]["hangs"] or s["phase1"]["fuzzer_errors"] or
                    s["phase2"]["tracebacks"] or s["phase2"]["daemon_deaths"] or s["phase2"]["hangs"] or
                    s["phase2"]["fuzzer_errors"])


def print_report(run: Run, console) -> None:
    from rich.table import Table

    s = run.summary()
    t = Table(title=f"daxfs image fuzzing, seed {run.seed}")
    for col in ("phase", "cases", "tracebacks", "daemon deaths", "hangs", "EIO", "refusals", "fsck verdicts"):
        t.add_column(col, justify="right" if col not in ("phase", "fsck verdicts") else "left")
    p1, p2 = s["phase1"], s["phase2"]
    t.add_row("1 fsck+inspect", str(p1["cases"]), str(p1["tracebacks"]), "-", str(p1["hangs"]), "-",
              str(p1["fsck"].get("operational", 0)), _fmt_counter(p1["fsck"]))
    if p2["cases"]:
        t.add_row("2 mount+walk+write", str(p2["cases"]), str(p2["tracebacks"]), str(p2["daemon_deaths"]),
                  str(p2["hangs"]), str(p2["eio"]), str(p2["mount"].get("refused", 0)),
                  f"before {_fmt_counter(p2['fsck_before'])}; after {_fmt_counter(p2['fsck_after'])}")
    console.print(t)
    m = Table(title="per mutator")
    cols = ["mutator", "cases", "fsck clean", "fsck errors", "fsck operational", "traceback", "hang", "fsck missed",
            "mounts", "refused", "EIO", "mount traceback", "mount daemon death", "mount hang"]
    for c in cols:
        m.add_column(c, justify="left" if c == "mutator" else "right")
    for name, v in s["per_mutator"].items():
        m.add_row(name, *(str(v.get(c, 0)) for c in cols[1:]))
    console.print(m)
    fails, finds = run.failures()
    if fails:
        console.print(f"[bold red]{len(fails)} distinct failures[/]")
        for key, e in fails.items():
            _print_entry(console, key, e)
    if finds:
        console.print(f"[bold yellow]{len(finds)} distinct findings (not failures)[/]")
        for key, e in finds.items():
            _print_entry(console, key, e)
    console.print(f"phase 1 {s['seconds'].get('phase1', 0):.0f} s, phase 2 {s['seconds'].get('phase2', 0):.0f} s, "
                  f"seeds {s['seconds'].get('seeds', 0):.1f} s")


def _print_entry(console, key: str, e: dict) -> None:
    console.print(f"- {key}  [{len(e['cases'])} cases]", markup=False, highlight=False)
    console.print(f"    {e['description']}", markup=False, highlight=False, soft_wrap=True)
    trig = "; ".join(f"{k} x{v}" for k, v in list(e["triggers"].items())[:6])
    console.print(f"    triggered by: {trig}", markup=False, highlight=False, soft_wrap=True)
    # The replay line unwrapped, whatever the terminal width, so that it can be pasted.
    print(f"    replay: {e['replay']}", flush=True)


def _fmt_counter(c: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))


def fuzz(seed: int, cases: list[int], mounts: list[int] | int, workdir: str, jobs: int, timeout: float,
         mount_timeout: float, mem_limit: int, console=None, progress: bool = True, keep: bool = False,
         journal_file: str | None = None) -> Run:
    """A whole run (also what tests/test_fuzz.py calls). Cleans up whatever happens. `journal_file`
    gets every case's outcome as one JSON line the moment it is known (a run cut short keeps them)."""
    journal = open(journal_file, "w") if journal_file else None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    run = Run(seed)
    seeds_dir = os.path.join(workdir, "seeds")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.monotonic()
    build_seeds(seed, seeds_dir)
    paths = {n: os.path.join(seeds_dir, f"seed-{n}.img") for n in SEED_BUILDERS}
    corpus = Corpus(seed, paths)
    run.seconds["seeds"] = round(time.monotonic() - t0, 2)
    show = progress and console is not None and console.is_terminal
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[bad]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not show)
    p1 = Phase1(seed, seeds_dir, workdir, jobs, timeout, mem_limit)
    last_note = [time.monotonic()]

    def note(phase: str, done: int, total: int, bad: int) -> None:
        if console is not None and not show and (time.monotonic() - last_note[0] > 30 or done == total):
            last_note[0] = time.monotonic()
            console.print(f"{phase}: {done}/{total} cases, {bad} failing, {time.monotonic() - t0:.0f} s", highlight=False)

    try:
        with bar:
            if cases:
                task = bar.add_task("phase 1 fsck+inspect", total=len(cases), bad="")
                t1 = time.monotonic()

                def got(r: dict) -> None:
                    if "mutator" not in r:  # its worker was lost: say what the case was
                        mut = corpus.mutate(r["case"])[1]
                        r.update(mutator=mut.mutator, seed_image=mut.seed_image, detail=mut.detail,
                                 must_detect=mut.must_detect)
                    run.p1[r["case"]] = r
                    if journal is not None:
                        journal.write(json.dumps({"phase": 1, **r}, default=str) + "\n")
                    nbad = sum(1 for x in run.p1.values() if phase1_events(x))
                    bar.update(task, advance=1, bad=f"{nbad} failing" if nbad else "")
                    note("phase 1", len(run.p1), len(cases), nbad)

                p1.run(cases, got)
                p1.close()
                run.seconds["phase1"] = round(time.monotonic() - t1, 1)
                if p1.digests and p1.digests != corpus.digests:
                    raise click.ClickException("the workers built other seed images than the main process")
            if isinstance(mounts, int):  # how many: chosen from the phase-1 verdicts
                mounts = choose_mounts(run.p1, mounts)
            if mounts:
                task = bar.add_task("phase 2 mount+walk+write", total=len(mounts), bad="")
                t2 = time.monotonic()
                for case in mounts:
                    try:
                        r = phase2_case(corpus, case, workdir, mount_timeout, keep)
                    except Exception as e:  # the fuzzer's own bug: record it, clean up, go on
                        if MountCase.active is not None:
                            MountCase.active.cleanup()
                            MountCase.active = None
                        r = {"case": case, "events": ["fuzzer error"],
                             "fuzzer_error": "".join(traceback.format_exception(e))[-2000:]}
                    run.p2[case] = r
                    if journal is not None:
                        journal.write(json.dumps({"phase": 2, **r}, default=str) + "\n")
                        journal.flush()
                    nbad = sum(1 for x in run.p2.values() if x.get("events"))
                    bar.update(task, advance=1, bad=f"{nbad} failing" if nbad else "")
                    note("phase 2", len(run.p2), len(mounts), nbad)
                run.seconds["phase2"] = round(time.monotonic() - t2, 1)
    finally:
        p1.close()
        for w in list(p1.workers):
            w.kill()
        if MountCase.active is not None:
            MountCase.active.cleanup()
        sweep(workdir)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if journal is not None:
            journal.close()
    run.digests = corpus.digests
    return run


def sweep(workdir: str) -> None:
    """Nothing of this run may stay mounted or running: every mount point under workdir, every daemon
    whose command line names one of our images."""
    with open("/proc/self/mountinfo") as f:
        mps = [ln.split()[4] for ln in f]
    for mp in mps:
        if mp.startswith(os.path.realpath(workdir) + "/"):
            force_unmount(mp, os.path.join(os.path.dirname(mp), "image.img"))
    for pid in set(_our_daemons(workdir)):
        kill_pid(pid)


def _our_daemons(workdir: str) -> list[int]:
    out = []
    prefix = (os.path.realpath(workdir) + "/").encode()
    for pid, args in cmdlines():
        if b"mount" in args and any(a.startswith(prefix) and a.endswith(b".img") for a in args):
            out.append(pid)
    return out


def choose_mounts(p1: dict[int, dict], n: int) -> list[int]:
    """n phase-1 cases to mount, evenly spread within three groups so that the choice depends only on
    the seed and the phase-1 verdicts: 10 % among the images fsck refused (the mount must refuse them as
    cleanly), half among the field edits fsck could read (semantic damage behind valid checksums: where
    the daemon has the most to get wrong), the rest among the other readable images."""
    def verdict(r):
        return (r.get("fsck") or {}).get("verdict")

    refused = sorted(c for c, r in p1.items() if verdict(r) == "operational")
    edits = sorted(c for c, r in p1.items() if verdict(r) != "operational" and r.get("mutator") == "field_edit")
    other = sorted(c for c, r in p1.items() if verdict(r) != "operational" and r.get("mutator") != "field_edit")
    k_ref = min(len(refused), max(n // 10, 1 if refused and n > 1 else 0))
    k_edit = min(len(edits), (n - k_ref) // 2)
    k_other = min(len(other), n - k_ref - k_edit)
    k_edit = min(len(edits), n - k_ref - k_other)
    chosen = [refused[i] for i in spread(k_ref, len(refused))]
    chosen += [edits[i] for i in spread(k_edit, len(edits))]
    chosen += [other[i] for i in spread(k_other, len(other))]
    return sorted(chosen)


def spread(n: int, total: int) -> list[int]:
    """n case numbers spread evenly over range(total)."""
    n = min(n, total)
    return sorted({i * total // n for i in range(n)}) if n else []


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seed", type=int, default=1, show_default=True, help="run seed: the seed images and every case")
@click.option("--cases", type=int, default=200, show_default=True, help="phase 1 cases (0..N-1)")
@click.option("--mounts", type=int, default=10, show_default=True,
              help="phase 2 cases, chosen among the phase 1 cases (choose_mounts); with --case, any M > 0 "
                   "mounts those cases")
@click.option("--case", "only", type=int, multiple=True, help="run only this case (repeatable): a replay")
@click.option("--jobs", type=click.IntRange(1, 2), default=2, show_default=True, help="phase 1 worker processes")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="phase 1 deadline per case, seconds")
@click.option("--mount-timeout", type=float, default=60.0, show_default=True,
              help="deadline of each phase 2 step (mount, walk+write, umount, fsck), seconds")
@click.option("--mem-limit", type=int, default=4 << 30, show_default=True,
              help="address-space limit of a phase 1 worker, bytes (0: none)")
@click.option("--dir", "base", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp", show_default=True,
              help="where the run's images and mount points go (a fresh subdirectory)")
@click.option("--json", "json_file", type=click.Path(dir_okay=False),
              help="write every case's outcome here at the end (and to FILE + 'l', one JSON line per case, "
                   "as the run goes)")
@click.option("--keep", is_flag=True, help="keep the run's directory (images, daemon logs)")
@click.option("--verbose", "-v", is_flag=True, help="print each case's outcome (replays)")
@click.pass_context
def main(ctx, seed, cases, mounts, only, jobs, timeout, mount_timeout, mem_limit, base, json_file, keep, verbose):
    """Corrupt daxfs images and check that fsck, inspect and the daemon survive them (see the module doc)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    self_check_layouts()
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if only:
        p1_cases = sorted(set(only))
        p2_cases = p1_cases if mounts > 0 else []
    else:
        p1_cases = list(range(cases))
        p2_cases = mounts
    workdir = os.path.join(base, f"daxfs-fuzz-{seed}-{os.getpid()}")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        run = fuzz(seed, p1_cases, p2_cases, workdir, jobs, timeout, mount_timeout, mem_limit, console,
                   keep=keep, journal_file=json_file + "l" if json_file else None)
    except KeyboardInterrupt:
        sweep(workdir)
        console.print("interrupted; everything unmounted")
        sys.exit(130)
    if verbose or only:
        for case in p1_cases:
            console.print_json(json.dumps({"phase1": run.p1.get(case), "phase2": run.p2.get(case)}, default=str))
    print_report(run, console)
    if json_file:
        fails, finds = run.failures()
        with open(json_file, "w") as f:
            json.dump({"summary": run.summary(), "seed_digests": run.digests, "failures": fails, "findings": finds,
                       "phase1": [run.p1[c] for c in sorted(run.p1)], "phase2": [run.p2[c] for c in sorted(run.p2)]},
                      f, indent=1, default=str)
        console.print(f"wrote {json_file}")
    if keep:
        console.print(f"kept {workdir}")
    sys.exit(1 if run.failed() else 0)


@main.command("_worker", hidden=True)
@click.option("--seed", type=int, required=True)
@click.option("--seeds-dir", required=True)
@click.option("--workdir", required=True)
@click.option("--mem-limit", type=int, default=0)
def _worker(seed, seeds_dir, workdir, mem_limit):
    worker_main(seed, seeds_dir, workdir, mem_limit)


@main.command("_walk", hidden=True)
@click.argument("mnt")
@click.option("--case", type=int, default=0)
@click.option("--target", type=int, default=0)
def _walk(mnt, case, target):
    walk_child(mnt, case, target)


if __name__ == "__main__":
    main()
