#!/usr/bin/env python3
"""Dump a daxfs image, reading it from the specification (docs/format.md) alone.

    python tools/dump_image.py IMAGE [--json] [--no-replay]

Prints the superblock copies and geometry, the journal (committed transactions past the tail), the
allocated inodes with their extents, and the directory tree from the root. It never writes the image:
committed journal transactions are *overlaid* on the home blocks (docs/format.md §18), so a dirty
image shows the state replay would produce; --no-replay shows the home blocks as they are.

This file deliberately imports nothing from daxfs (only the standard library, numpy and crc32c): it
exists to prove that the specification is complete. Section numbers (§n) refer to docs/format.md.

Exit status: 0 image read, no problems found; 1 problems found (listed); 2 image unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import sys

import crc32c
import numpy as np

# --- §1, §3: global rules and the block header ------------------------------------------------------
BS = 4096
HDR_SIZE = 48
PAYLOAD = BS - HDR_SIZE  # 4048
MAGIC = b"DXFS"
CRC_OFF = 8
HEADER = struct.Struct("<4sHHIIQQQQ")  # magic kind used crc reserved self owner next seq

K_SUPER, K_JDESC, K_JCOMMIT, K_INODES, K_BITMAP, K_IBITMAP, K_EXTENTS, K_DIRENTS, K_XATTR = range(1, 10)
KIND_NAMES = {K_SUPER: "superblock", K_JDESC: "journal descriptor", K_JCOMMIT: "journal commit",
              K_INODES: "inode table", K_BITMAP: "block bitmap", K_IBITMAP: "inode bitmap",
              K_EXTENTS: "extent chain", K_DIRENTS: "directory chain", K_XATTR: "xattr chain"}

# --- §4: superblock fields, from block offset 48 ------------------------------------------------------
SB_FIELDS = [("version", "I"), ("block_size", "I"), ("total_blocks", "Q"), ("generation", "Q"),
             ("state", "I"), ("flags", "I"), ("journal_start", "Q"), ("journal_blocks", "Q"),
             ("ibitmap_start", "Q"), ("ibitmap_blocks", "Q"), ("bitmap_start", "Q"), ("bitmap_blocks", "Q"),
             ("itable_start", "Q"), ("itable_blocks", "Q"), ("data_start", "Q"), ("inode_count", "Q"),
             ("journal_tail", "Q"), ("journal_seq", "Q"), ("mkfs_time_ns", "Q"), ("mount_count", "Q"),
             ("uuid", "16s"), ("last_mount_ns", "Q"), ("reserved", "Q")]
SUPER = struct.Struct("<" + "".join(t for _, t in SB_FIELDS))
STATES = {1: "clean", 2: "dirty"}

# --- §5: journal ------------------------------------------------------------------------------------
DESC_ENTRIES = PAYLOAD // 8  # 506
COMMIT = struct.Struct("<QIIQ")  # nblocks crc reserved commit_time_ns

# --- §6, §7: bitmaps and inode records ------------------------------------------------------------
BITS_PER_BLOCK = PAYLOAD * 8  # 32384
INODE_SIZE = 256
INODES_PER_BLOCK = PAYLOAD // INODE_SIZE  # 15
INODE_FIELDS = ["ino", "generation", "mode", "uid", "gid", "nlink", "flags", "pad", "size", "blocks",
                "atime_ns", "mtime_ns", "ctime_ns", "rdev", "extent_head", "dirent_head", "xattr_head", "parent"]
INODE = struct.Struct("<IIIIIIIIQQqqqQQQQQ")
INLINE_OFF = 112
INLINE_SLOTS = 4
NSEC = struct.Struct("<III")  # version 2: atime, mtime, ctime nanoseconds; the time fields are seconds
NSEC_OFF = 240
VERSIONS = (1, 2)
ROOT_INO, ORPHAN_INO = 1, 2
FLAG_MAP_SYNC = 1

# --- §9, §10, §11: slots and blobs -------------------------------------------------------------------
EXTENT = struct.Struct("<IIQQQ")  # state len lblk pblk reserved
EXTENT_SIZE = 32
EXT_STATES = {1: "unwritten", 2: "written"}
MAX_EXTENT_LEN = 1 << 20
DIRENT = struct.Struct("<IBBH255s")  # ino type namelen reserved name
DIRENT_SIZE = 264
XATTR_REC = struct.Struct("<BI")  # namelen valuelen

TYPE_NAMES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
              stat.S_IFSOCK: "socket", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev"}


class Corrupt(Exception):
    pass


def block_crc(b: bytes) -> int:
    """CRC-32C of the whole block with the crc field (bytes 8..11) taken as zero (§1)."""
    return crc32c.crc32c(b[:CRC_OFF] + b"\0\0\0\0" + b[CRC_OFF + 4:])


def parse_header(b: bytes) -> dict:
    magic, kind, used, crc, _res, self_blk, owner, nxt, seq = HEADER.unpack_from(b, 0)
    return {"magic": magic, "kind": kind, "used": used, "crc": crc, "self": self_blk, "owner": owner,
            "next": nxt, "seq": seq}


def verify(b: bytes, blkno: int, kind: int | None = None, owner: int | None = None) -> dict:
    """§3: magic, kind, crc, self number, and (chains) owner."""
    h = parse_header(b)
    if h["magic"] != MAGIC:
        raise Corrupt(f"block {blkno}: no magic")
    if kind is not None and h["kind"] != kind:
        raise Corrupt(f"block {blkno}: is a {KIND_NAMES.get(h['kind'], h['kind'])}, expected a {KIND_NAMES[kind]}")
    if h["crc"] != block_crc(b):
        raise Corrupt(f"block {blkno}: {KIND_NAMES.get(h['kind'], h['kind'])} checksum mismatch")
    if h["self"] != blkno:
        raise Corrupt(f"block {blkno}: header says it is block {h['self']}")
    if owner is not None and h["owner"] != owner:
        raise Corrupt(f"block {blkno}: {KIND_NAMES[kind]} of inode {h['owner']}, reached from inode {owner}")
    return h


def fsname(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class Image:
    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        if self.size < 2 * BS:
            raise Corrupt(f"{path}: too small to be a daxfs image ({self.size} bytes)")
        self.mem = np.memmap(path, dtype=np.uint8, mode="r", shape=(self.size,))
        self.overlay: dict[int, bytes] = {}  # home block -> newest committed journal image (§18)
        self.problems: list[str] = []

    def home(self, blkno: int) -> bytes:
        if (blkno + 1) * BS > self.size:
            raise Corrupt(f"block {blkno} is past the end of the image")
        return self.mem[blkno * BS:(blkno + 1) * BS].tobytes()

    def block(self, blkno: int) -> bytes:
        img = self.overlay.get(blkno)
        return img if img is not None else self.home(blkno)

    # --- §4 superblock ------------------------------------------------------------------------------
    def superblocks(self) -> tuple[dict, list[dict]]:
        copies = []
        for blkno in (0, 1):
            raw = self.home(blkno)
            c = {"block": blkno, "valid": False, "generation": None, "error": None}
            try:
                verify(raw, blkno, K_SUPER)
                sb = dict(zip((n for n, _ in SB_FIELDS), SUPER.unpack_from(raw, HDR_SIZE)))
                c["generation"] = sb["generation"]
                if sb["version"] not in VERSIONS:
                    raise Corrupt(f"superblock {blkno}: unsupported version {sb['version']}")
                if sb["block_size"] != BS:
                    raise Corrupt(f"superblock {blkno}: block size {sb['block_size']}")
                if sb["generation"] % 2 != blkno:
                    self.problems.append(f"superblock {blkno}: generation {sb['generation']} is not at "
                                         f"block generation mod 2")
                c["valid"] = True
                c["sb"] = sb
            except Corrupt as e:
                c["error"] = str(e)
            copies.append(c)
        valid = [c for c in copies if c["valid"]]
        if not valid:
            if all(self.home(b)[:4] != MAGIC for b in (0, 1)):
                raise Corrupt(f"{self.path}: not a daxfs image (no superblock magic)")
            raise Corrupt(f"{self.path}: no valid superblock ("
                          + "; ".join(c["error"] for c in copies) + ")")
        best = max(valid, key=lambda c: c["generation"])
        sb = best["sb"]
        sb["copy"] = best["block"]
        if sb["total_blocks"] * BS > self.size:
            raise Corrupt(f"superblock says {sb['total_blocks']} blocks, the file holds {self.size // BS}")
        self.check_geometry(sb)
        return sb, [{k: v for k, v in c.items() if k != "sb"} for c in copies]

    @staticmethod
    def check_geometry(sb: dict) -> None:
        """§2: the areas follow each other exactly; sizes agree with the formulas."""
        pos = 2
        for name in ("journal", "ibitmap", "bitmap", "itable"):
            start, n = sb[f"{name}_start"], sb[f"{name}_blocks"]
            if start != pos or n <= 0:
                raise Corrupt(f"superblock geometry: {name} at {start}+{n}, expected at {pos}")
            pos += n
        if sb["data_start"] != pos or sb["data_start"] >= sb["total_blocks"]:
            raise Corrupt(f"superblock geometry: data at {sb['data_start']}")
        per = BITS_PER_BLOCK
        if (sb["bitmap_blocks"] != -(-sb["total_blocks"] // per)
                or sb["ibitmap_blocks"] != -(-sb["inode_count"] // per)
                or sb["itable_blocks"] * INODES_PER_BLOCK < sb["inode_count"]
                or not 0 <= sb["journal_tail"] < sb["journal_blocks"]):
            raise Corrupt("superblock geometry is inconsistent")

    # --- §16 journal scan -----------------------------------------------------------------------------
    def scan_journal(self, sb: dict) -> dict:
        start, size = sb["journal_start"], sb["journal_blocks"]
        pos, seq = sb["journal_tail"], sb["journal_seq"]
        txns: list[dict] = []
        scanned = 0
        reason = ""

        def at(p: int) -> tuple[int, bytes]:
            blkno = start + p % size
            return blkno, self.home(blkno)

        while not reason:
            p, crc = pos, 0
            homes: list[int] = []
            images: dict[int, bytes] = {}
            while True:
                if scanned + (p - pos) >= size:
                    reason = "journal wrapped"
                    break
                blkno, raw = at(p)
                try:
                    h = verify(raw, blkno)
                except Corrupt as e:
                    reason = str(e)
                    break
                if h["seq"] != seq or h["kind"] not in (K_JDESC, K_JCOMMIT):
                    reason = f"block {blkno}: no transaction {seq}"
                    break
                p += 1
                if h["kind"] == K_JCOMMIT:
                    n, want, _, t_ns = COMMIT.unpack_from(raw, HDR_SIZE)
                    if n != len(images) or want != crc:
                        reason = f"transaction {seq}: commit record does not match its blocks (torn)"
                        break
                    txns.append({"seq": seq, "start": pos % size, "length": p - pos, "nblocks": n,
                                 "homes": homes, "commit_time_ns": t_ns, "images": images})
                    scanned += p - pos
                    pos, seq = p, seq + 1
                    break
                if not 0 < h["used"] <= DESC_ENTRIES:
                    reason = f"block {blkno}: descriptor claims {h['used']} entries"
                    break
                crc = crc32c.crc32c(raw, crc)
                for home in struct.unpack_from(f"<{h['used']}Q", raw, HDR_SIZE):
                    if scanned + (p - pos) >= size:
                        reason = "journal wrapped"
                        break
                    _, image = at(p)
                    crc = crc32c.crc32c(image, crc)
                    if not sb["journal_start"] + size <= home < sb["total_blocks"]:
                        reason = f"block {blkno}: descriptor names home block {home} outside the image"
                        break
                    homes.append(home)
                    images[home] = image
                    p += 1
                if reason:
                    break
        return {"start": start, "blocks": size, "tail": sb["journal_tail"], "seq": sb["journal_seq"],
                "transactions": txns, "end": pos % size, "next_seq": seq, "stop_reason": reason}

    # --- §6 bitmaps ---------------------------------------------------------------------------------
    def bitmap(self, start: int, nblocks: int, nbits: int, kind: int) -> np.ndarray:
        bits = np.zeros(nbits, dtype=bool)
        for i in range(nblocks):
            raw = self.block(start + i)
            verify(raw, start + i, kind)
            lo, hi = i * BITS_PER_BLOCK, min(nbits, (i + 1) * BITS_PER_BLOCK)
            payload = np.frombuffer(raw, dtype=np.uint8, count=PAYLOAD, offset=HDR_SIZE)
            unpacked = np.unpackbits(payload, bitorder="little")
            bits[lo:hi] = unpacked[:hi - lo].astype(bool)
            if unpacked[hi - lo:].any():
                self.problems.append(f"{KIND_NAMES[kind]} block {start + i}: bits set past the end")
        return bits

    # --- §8 chains ---------------------------------------------------------------------------------
    def walk(self, head: int, kind: int, owner: int) -> list[tuple[int, bytes, dict]]:
        out, seen, blk = [], set(), head
        while blk:
            if blk in seen:
                raise Corrupt(f"inode {owner}: {KIND_NAMES[kind]} loops at block {blk}")
            seen.add(blk)
            raw = self.block(blk)
            h = verify(raw, blk, kind, owner)
            out.append((blk, raw, h))
            blk = h["next"]
        return out

    def slots(self, head: int, kind: int, owner: int, size: int) -> tuple[list[tuple[int, int, bytes]], list[int]]:
        """Used slots (block, offset, bytes) of a slot chain, and its blocks."""
        used, blocks = [], []
        for blk, raw, h in self.walk(head, kind, owner):
            blocks.append(blk)
            n = 0
            for i in range(PAYLOAD // size):
                off = HDR_SIZE + i * size
                data = raw[off:off + size]
                if data[:4] != b"\0\0\0\0":
                    used.append((blk, off, data))
                    n += 1
            if n != h["used"]:
                self.problems.append(f"block {blk}: header counts {h['used']} used slots, {n} found")
        return used, blocks


def type_name(mode: int) -> str:
    return TYPE_NAMES.get(stat.S_IFMT(mode), f"type{stat.S_IFMT(mode) >> 12}")


def read_inode(img: Image, sb: dict, ino: int) -> dict:
    """§7: the record, §9 extents, §10 entries, §11 xattrs, §13 symlink target."""
    blk = sb["itable_start"] + ino // INODES_PER_BLOCK
    off = HDR_SIZE + (ino % INODES_PER_BLOCK) * INODE_SIZE
    raw = img.block(blk)
    if raw[:4] != MAGIC:
        raise Corrupt(f"inode {ino} is allocated but its table block {blk} was never initialised")
    verify(raw, blk, K_INODES)
    rec = dict(zip(INODE_FIELDS, INODE.unpack_from(raw, off)))
    if sb["version"] >= 2:  # §7: seconds in the time fields, nanoseconds beside the inline slots
        for name, ns in zip(("atime_ns", "mtime_ns", "ctime_ns"), NSEC.unpack_from(raw, off + NSEC_OFF)):
            rec[name] = rec[name] * 10**9 + ns
    if rec["ino"] != ino:
        raise Corrupt(f"inode {ino}: record in block {blk} says it is inode {rec['ino']}")
    rec["type"] = type_name(rec["mode"])
    rec["perm"] = stat.S_IMODE(rec["mode"])

    # Extents: used inline slots, then the extent chain.
    found = [("inline", raw[off + INLINE_OFF + i * EXTENT_SIZE:off + INLINE_OFF + (i + 1) * EXTENT_SIZE])
             for i in range(INLINE_SLOTS)]
    used, ext_blocks = img.slots(rec["extent_head"], K_EXTENTS, ino, EXTENT_SIZE)
    found += [(b, data) for b, _, data in used]
    extents = []
    for where, data in found:
        state, ln, lblk, pblk, _ = EXTENT.unpack(data)
        if state == 0:
            continue
        if state not in EXT_STATES or ln == 0 or ln > MAX_EXTENT_LEN:
            raise Corrupt(f"inode {ino}: bad extent slot in {where} (state {state}, len {ln})")
        extents.append({"lblk": lblk, "len": ln, "pblk": pblk, "state": EXT_STATES[state], "slot": where})
    extents.sort(key=lambda e: e["lblk"])
    for a, b in zip(extents, extents[1:]):
        if b["lblk"] < a["lblk"] + a["len"]:
            raise Corrupt(f"inode {ino}: extents overlap at file block {b['lblk']}")
    rec["extents"] = extents
    rec["extent_chain"] = ext_blocks
    mapped = sum(e["len"] for e in extents)
    if mapped != rec["blocks"]:
        img.problems.append(f"inode {ino}: blocks field {rec['blocks']}, extents map {mapped}")

    # Directory entries.
    rec["dirent_chain"] = []
    if rec["type"] == "dir":
        used, rec["dirent_chain"] = img.slots(rec["dirent_head"], K_DIRENTS, ino, DIRENT_SIZE)
        entries = {}
        for b, soff, data in used:
            child, dtype, namelen, _, name = DIRENT.unpack_from(data)
            name = name[:namelen]
            if not name or b"/" in name or b"\0" in name or name in (b".", b"..") or name in entries:
                raise Corrupt(f"directory {ino}: bad or duplicate entry {name!r} in block {b}")
            cookie = 3 + 16 * b + (soff - HDR_SIZE) // DIRENT_SIZE
            entries[name] = {"ino": child, "dtype": dtype, "cookie": cookie}
        rec["entries"] = entries

    # Extended attributes: a blob chain.
    parts, xblocks = [], []
    for b, raw_x, h in img.walk(rec["xattr_head"], K_XATTR, ino):
        if not 0 < h["used"] <= PAYLOAD:
            raise Corrupt(f"block {b}: xattr chain block holds {h['used']} bytes")
        parts.append(raw_x[HDR_SIZE:HDR_SIZE + h["used"]])
        xblocks.append(b)
    blob = b"".join(parts)
    xattrs, pos = {}, 0
    while pos < len(blob):
        if pos + XATTR_REC.size > len(blob):
            raise Corrupt(f"inode {ino}: truncated extended attribute")
        nl, vl = XATTR_REC.unpack_from(blob, pos)
        pos += XATTR_REC.size
        if nl == 0 or pos + nl + vl > len(blob):
            raise Corrupt(f"inode {ino}: bad extended attribute lengths")
        xattrs[blob[pos:pos + nl]] = blob[pos + nl:pos + nl + vl]
        pos += nl + vl
    if rec["flags"] & FLAG_MAP_SYNC:
        xattrs[b"user.daxfs.map_sync"] = b"1"
    rec["xattrs"] = xattrs
    rec["xattr_chain"] = xblocks

    # Symlink target: file data in block 0.
    if rec["type"] == "symlink":
        first = next((e for e in extents if e["lblk"] == 0 and e["state"] == "written"), None)
        if first is None or not 0 < rec["size"] < BS:
            raise Corrupt(f"symlink {ino}: no target block or bad size {rec['size']}")
        rec["target"] = img.home(first["pblk"])[:rec["size"]]
    return rec


def dump(path: str, replay: bool = True) -> dict:
    img = Image(path)
    sb, copies = img.superblocks()
    journal = img.scan_journal(sb)
    if replay:
        for t in journal["transactions"]:  # later transactions win
            img.overlay.update(t["images"])
    ibits = img.bitmap(sb["ibitmap_start"], sb["ibitmap_blocks"], sb["inode_count"], K_IBITMAP)
    bbits = img.bitmap(sb["bitmap_start"], sb["bitmap_blocks"], sb["total_blocks"], K_BITMAP)
    if not ibits[:3].all():
        img.problems.append("inode bitmap: reserved inodes 0, 1, 2 not all marked")
    if not bbits[:sb["data_start"]].all():
        img.problems.append("block bitmap: metadata area not all marked")

    inodes: dict[int, dict] = {}
    for ino in np.flatnonzero(ibits).tolist():
        if ino == 0:
            continue
        try:
            inodes[ino] = read_inode(img, sb, ino)
        except Corrupt as e:
            img.problems.append(str(e))

    # Block ownership against the block bitmap (§6, §17).
    owner = np.zeros(sb["total_blocks"], dtype=np.int64)
    for ino, rec in inodes.items():
        runs = [(e["pblk"], e["len"]) for e in rec["extents"]]
        runs += [(b, 1) for b in rec["extent_chain"] + rec["dirent_chain"] + rec["xattr_chain"]]
        for lo, n in runs:
            if lo < sb["data_start"] or lo + n > sb["total_blocks"]:
                img.problems.append(f"inode {ino}: blocks {lo}+{n} outside the data area")
                continue
            if owner[lo:lo + n].any():
                img.problems.append(f"inode {ino}: blocks {lo}+{n} also belong to inode "
                                    f"{int(owner[lo:lo + n].max())}")
            owner[lo:lo + n] = ino
    data = slice(sb["data_start"], sb["total_blocks"])
    unmarked = int(np.count_nonzero((owner[data] != 0) & ~bbits[data]))
    leaked = int(np.count_nonzero((owner[data] == 0) & bbits[data]))
    if unmarked:
        img.problems.append(f"block bitmap: {unmarked} blocks in use are marked free")
    if leaked:
        img.problems.append(f"block bitmap: {leaked} blocks marked in use belong to no inode")

    # The tree from the root (§10), orphans (§12), link counts.
    paths: dict[str, int] = {}
    refs: dict[int, int] = {}
    subdirs: dict[int, int] = {}

    def walk_dir(ino: int, path: str, seen: set[int]) -> dict:
        rec = inodes.get(ino)
        node = {"ino": ino, "type": rec["type"] if rec else None}
        paths[path or "/"] = ino
        if rec is None:
            img.problems.append(f"{path or '/'}: names inode {ino}, which is not allocated")
            return node
        if rec["type"] != "dir":
            return node
        if ino in seen:
            img.problems.append(f"{path}: directory loop at inode {ino}")
            return node
        seen = seen | {ino}
        children = {}
        for name, e in sorted(rec["entries"].items()):
            child = inodes.get(e["ino"])
            refs[e["ino"]] = refs.get(e["ino"], 0) + 1
            if child is not None and child["type"] == "dir":
                subdirs[ino] = subdirs.get(ino, 0) + 1
                if child["parent"] != ino:
                    img.problems.append(f"{path}/{fsname(name)}: parent field {child['parent']}, is in {ino}")
            if child is not None and e["dtype"] != stat.S_IFMT(child["mode"]) >> 12:
                img.problems.append(f"{path}/{fsname(name)}: entry type {e['dtype']} != inode type")
            children[fsname(name)] = walk_dir(e["ino"], f"{path}/{fsname(name)}", seen)
        node["entries"] = children
        return node

    tree = walk_dir(ROOT_INO, "", set()) if ROOT_INO in inodes else None
    orphans = {}
    if ORPHAN_INO in inodes:
        for name, e in inodes[ORPHAN_INO].get("entries", {}).items():
            orphans[fsname(name)] = e["ino"]
            rec = inodes.get(e["ino"])
            if name != str(e["ino"]).encode():
                img.problems.append(f"orphan entry {name!r} names inode {e['ino']}")
            if rec is None or rec["nlink"] != 0:
                img.problems.append(f"orphan list names inode {e['ino']}, which is not an unlinked inode")
    reachable = set(paths.values()) | set(orphans.values()) | {ROOT_INO, ORPHAN_INO}
    for ino, rec in inodes.items():
        if ino not in reachable:
            img.problems.append(f"inode {ino}: allocated but in no directory")
        elif ino in (ROOT_INO, ORPHAN_INO) or rec["nlink"] == 0:
            continue
        elif rec["type"] == "dir":
            if rec["nlink"] != 2 + subdirs.get(ino, 0):
                img.problems.append(f"inode {ino}: nlink {rec['nlink']}, has {subdirs.get(ino, 0)} subdirectories")
        elif rec["nlink"] != refs.get(ino, 0):
            img.problems.append(f"inode {ino}: nlink {rec['nlink']}, {refs.get(ino, 0)} entries name it")

    for t in journal["transactions"]:
        del t["images"]
    sb_out = dict(sb)
    sb_out["uuid"] = sb["uuid"].hex()
    sb_out["state_name"] = STATES.get(sb["state"], str(sb["state"]))
    return {
        "image": path,
        "view": "committed (journal overlaid)" if replay else "home blocks only",
        "superblock_copies": copies,
        "superblock": sb_out,
        "journal": journal,
        "usage": {"blocks": sb["total_blocks"], "blocks_used": int(np.count_nonzero(bbits)),
                  "inodes": sb["inode_count"], "inodes_used": int(np.count_nonzero(ibits))},
        "inodes": {str(ino): _inode_json(rec) for ino, rec in sorted(inodes.items())},
        "tree": tree,
        "paths": paths,
        "orphans": orphans,
        "problems": img.problems,
    }


def _inode_json(rec: dict) -> dict:
    out = {k: rec[k] for k in INODE_FIELDS if k != "pad"}
    out.update(type=rec["type"], perm=oct(rec["perm"]), extents=rec["extents"], extent_chain=rec["extent_chain"],
               dirent_chain=rec["dirent_chain"], xattr_chain=rec["xattr_chain"],
               xattrs={fsname(k): v.hex() for k, v in rec["xattrs"].items()})
    if "entries" in rec:
        out["entries"] = {fsname(n): e for n, e in rec["entries"].items()}
    if "target" in rec:
        out["target"] = fsname(rec["target"])
    return out


# --- text output ----------------------------------------------------------------------------------------
def _fmt_extents(exts: list[dict]) -> str:
    if not exts:
        return "-"
    return " ".join(f"{e['lblk']}+{e['len']}@{e['pblk']}{'' if e['state'] == 'written' else '(u)'}" for e in exts)


def print_text(d: dict) -> None:
    sb = d["superblock"]
    print(f"image {d['image']}  view: {d['view']}")
    for c in d["superblock_copies"]:
        status = "valid" if c["valid"] else f"INVALID ({c['error']})"
        print(f"  superblock copy {c['block']}: generation {c['generation']}, {status}")
    print(f"  using copy {sb['copy']} (generation {sb['generation']}), state {sb['state_name']}, "
          f"mounted {sb['mount_count']} times, uuid {sb['uuid']}")
    print("geometry")
    print(f"  {sb['total_blocks']} blocks of {BS} bytes, {sb['inode_count']} inode numbers")
    for name in ("journal", "ibitmap", "bitmap", "itable"):
        print(f"  {name:<8} {sb[name + '_start']:>10} + {sb[name + '_blocks']}")
    print(f"  {'data':<8} {sb['data_start']:>10} + {sb['total_blocks'] - sb['data_start']}")
    u = d["usage"]
    print(f"  blocks used {u['blocks_used']}/{u['blocks']}, inodes used {u['inodes_used']}/{u['inodes']}")
    j = d["journal"]
    print(f"journal: tail {j['tail']} expecting seq {j['seq']}; "
          f"{len(j['transactions'])} committed transaction(s) past the tail")
    for t in j["transactions"]:
        homes = ", ".join(map(str, t["homes"][:16])) + (" ..." if len(t["homes"]) > 16 else "")
        print(f"  seq {t['seq']} at {t['start']} ({t['length']} journal blocks): {t['nblocks']} images -> {homes}")
    print(f"  scan ended at {j['end']} (next seq {j['next_seq']}): {j['stop_reason']}")
    print(f"inodes ({len(d['inodes'])} allocated)")
    print(f"  {'ino':>6} {'type':<8} {'mode':>6} {'size':>12} {'nlink':>5}  extents (lblk+len@pblk, (u) unwritten)")
    for ino, r in d["inodes"].items():
        extra = f"  -> {r['target']}" if "target" in r else ""
        chain = f" [chain {','.join(map(str, r['extent_chain']))}]" if r["extent_chain"] else ""
        print(f"  {ino:>6} {r['type']:<8} {r['perm'][2:]:>6} {r['size']:>12} {r['nlink']:>5}  "
              f"{_fmt_extents(r['extents'])}{chain}{extra}")
        for k, v in r["xattrs"].items():
            print(f"  {'':>6} xattr {k} = {bytes.fromhex(v)!r}")
    print("tree")

    def show(node: dict, name: str, depth: int) -> None:
        suffix = "/" if node.get("type") == "dir" else ""
        print(f"  {'  ' * depth}{name}{suffix}  ({node['ino']})")
        for child, sub in node.get("entries", {}).items():
            show(sub, child, depth + 1)

    if d["tree"] is not None:
        show(d["tree"], "", 0)
    print(f"orphans: {d['orphans'] or 'none'}")
    print("problems: " + ("none" if not d["problems"] else ""))
    for p in d["problems"]:
        print(f"  {p}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--no-replay", action="store_true", help="show home blocks, ignore the journal")
    args = ap.parse_args(argv)
    try:
        d = dump(args.image, replay=not args.no_replay)
    except (Corrupt, OSError, ValueError) as e:
        print(f"dump_image: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        print_text(d)
    return 1 if d["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
