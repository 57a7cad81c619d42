"""fsck passes 5 and 6: each inode, then the namespace (a part of fsck.Checker, in a file of its own).

  5 inodes       per allocated inode: record, type, extents, chains, directory entries, xattr blob (ACLs too),
                 symlink size; every block an inode owns is claimed in an owner-count array;
  6 namespace    link counts, parents, one name per directory, reachability, the orphan list.

The checks of a single structure are the engine's own (extent.slot_problem, directory.name_problem,
chain.links, xattr.unpack_xattrs, acl.parse): what loading refuses, fsck reports.
"""

from __future__ import annotations

import stat
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from daxfs.engine import acl
from daxfs.engine import format as fmt
from daxfs.engine.chain import BadLink, links
from daxfs.engine.directory import name_problem
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.extent import slot_problem
from daxfs.engine.inode import KNOWN_TYPES, Inode
from daxfs.engine.recovery import ReplayedImage
from daxfs.engine.xattr import unpack_xattrs

BS = fmt.BLOCK_SIZE


@dataclass(slots=True)
class Dirent:
    name: bytes
    ino: int
    dtype: int


@dataclass(slots=True)
class Claim:
    start: int
    n: int
    who: str


class InodeChecks:
    """Passes 5 and 6. The Checker that inherits them provides sb, img, records, dirs, ialloc,
    owners, claims, report and problem()."""
    sb: fmt.Superblock
    img: ReplayedImage
    records: dict[int, tuple[Inode, bytes]]
    dirs: dict[int, list[Dirent]]
    ialloc: np.ndarray
    owners: np.ndarray
    claims: list[Claim]

    def problem(self, where: str, what: str) -> None:
        raise NotImplementedError

    # --- pass 5: each inode -----------------------------------------------------------------------
    def check_inode(self, ino: int, rec: Inode, inline: bytes) -> None:
        where = f"inode {ino}"
        if rec.ino != ino:
            self.problem(where, f"record says it is inode {rec.ino}")
            del self.records[ino]
            return
        kind = stat.S_IFMT(rec.mode)
        what = rec.problem(self.sb)
        if what:
            self.problem(where, what)
        if kind not in KNOWN_TYPES:
            del self.records[ino]
            return
        nblocks = self.extents(ino, rec, inline)
        if kind == stat.S_IFDIR:
            if nblocks:
                self.problem(where, "directory has data blocks")
            self.dirs[ino] = self.dirents(ino, rec)
        elif rec.dirent_head:
            self.problem(where, f"{'symlink' if kind == stat.S_IFLNK else 'file'} has a directory chain")
        self.xattrs(ino, rec)

    def extents(self, ino: int, rec: Inode, inline: bytes) -> int:
        """Check and claim the inode's extents; return the data blocks they map."""
        where = f"inode {ino}"
        chain = self.chain(ino, rec.extent_head, fmt.K_EXTENTS)
        slots = [inline[i * fmt.EXTENT_SIZE:(i + 1) * fmt.EXTENT_SIZE] for i in range(fmt.INLINE_EXTENTS)]
        slots += self.used_slots(chain, fmt.EXTENT_SIZE)
        good: list[tuple[int, int, int]] = []
        bad = 0
        for slot in slots:
            if slot[:4] == b"\0\0\0\0":
                continue
            state, ln, lblk, pblk, _ = fmt.EXTENT.unpack(slot)
            what = slot_problem(state, ln, lblk, pblk, self.sb)
            if what:
                self.problem(where, f"extent at file block {lblk}: {what}")
                bad += 1
            else:
                good.append((lblk, ln, pblk))
        good.sort()
        for (alo, aln, _), (blo, _, _) in zip(good, good[1:]):
            if blo < alo + aln:
                self.problem(where, f"extent at file block {blo} overlaps the extent at file block {alo}")
        total = sum(ln for _, ln, _ in good)
        if not bad and total != rec.blocks:
            self.problem(where, f"blocks field says {rec.blocks}, its extents map {total}")
        for lblk, ln, pblk in good:
            self.claim(pblk, ln, f"inode {ino} data")
        self.report.stats.data_blocks += total
        return total

    def chain(self, ino: int, head: int, kind: int) -> list[tuple[int, bytes, fmt.BlockHeader]]:
        """The chain's valid blocks from head, claimed; the walk stops at the first bad link."""
        out = []
        try:
            for blk, raw, h in links(self.img.block, self.sb, head, kind, ino):
                self.claim(blk, 1, f"inode {ino} {fmt.KIND_NAMES[kind]}")
                out.append((blk, raw, h))
        except BadLink as e:
            self.problem(f"inode {ino}", e.what)
        return out

    def used_slots(self, chain: list[tuple[int, bytes, fmt.BlockHeader]], size: int) -> list[bytes]:
        """The chain's used slots; each block's header must count them."""
        out: list[bytes] = []
        for blk, raw, h in chain:
            slots = [raw[fmt.HEADER_SIZE + i * size:fmt.HEADER_SIZE + (i + 1) * size]
                     for i in range(fmt.slots_per_block(size))]
            used = [s for s in slots if s[:4] != b"\0\0\0\0"]
            if len(used) != h.used:
                self.problem(f"block {blk}", f"header counts {h.used} used slots, {len(used)} are in use")
            out += used
        return out

    def dirents(self, ino: int, rec: Inode) -> list[Dirent]:
        where = f"directory {ino}"
        out: list[Dirent] = []
        seen: set[bytes] = set()
        for slot in self.used_slots(self.chain(ino, rec.dirent_head, fmt.K_DIRENTS), fmt.DIRENT_SIZE):
            target, dtype, namelen, _, raw_name = fmt.DIRENT.unpack_from(slot)
            name = raw_name[:namelen]
            if name_problem(name):
                self.problem(where, f"entry with invalid name {_show(name)}")
            elif name in seen:
                self.problem(where, f"two entries named {_show(name)}")
            elif target >= self.sb.inode_count:
                self.problem(where, f"entry {_show(name)} names inode {target}, past the last inode")
            else:
                seen.add(name)
                out.append(Dirent(name, target, dtype))
        return out

    def xattrs(self, ino: int, rec: Inode) -> None:
        parts = []
        for blk, raw, h in self.chain(ino, rec.xattr_head, fmt.K_XATTR):
            if h.used > fmt.PAYLOAD:
                self.problem(f"block {blk}", f"xattr block says it holds {h.used} bytes")
                return
            parts.append(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + h.used])
        blob = b"".join(parts)
        if len(blob) > fmt.XATTR_BLOB_MAX[self.sb.version]:
            self.problem(f"inode {ino}", f"{len(blob)} bytes of extended attributes, more than the limit")
        try:
            xattrs = unpack_xattrs(blob, ino)
        except CorruptImage as e:
            self.problem(f"inode {ino}", str(e).removeprefix(f"inode {ino}: "))
            return
        for name in acl.NAMES:  # what an operation that needs the ACL refuses (xattr._stored_acl)
            if name in xattrs:
                try:
                    acl.parse(xattrs[name])
                except FsError as e:
                    self.problem(f"inode {ino}", f"extended attribute {name.decode()}: {e}")

    def claim(self, start: int, n: int, who: str) -> None:
        seg = self.owners[start:start + n]
        np.add(seg, 1, out=seg, where=seg < 255)
        self.claims.append(Claim(start, n, who))

    # --- pass 6: namespace ------------------------------------------------------------------------
    def namespace(self) -> None:
        names: dict[int, list[int]] = defaultdict(list)  # inode -> directories naming it
        orphans: set[int] = set()
        for d, entries in self.dirs.items():
            for e in entries:
                if not self.entry_ok(d, e):
                    continue
                if d == fmt.ORPHAN_INO:
                    orphans.add(e.ino)
                else:
                    names[e.ino].append(d)
        for ino, (rec, _) in self.records.items():
            self.link_count(ino, rec, names.get(ino, []), ino in orphans)
        self.reachability(orphans)

    def entry_ok(self, d: int, e: Dirent) -> bool:
        """Does the entry name a readable inode of its type? (Unreadable ones are reported already.)"""
        where, name = f"directory {d}", _show(e.name)
        if not self.ialloc[e.ino]:
            self.problem(where, f"entry {name} names free inode {e.ino}")
            return False
        if e.ino in (fmt.ROOT_INO, fmt.ORPHAN_INO):
            self.problem(where, f"entry {name} names reserved directory {e.ino}")
            return False
        if e.ino not in self.records:
            return False
        kind = stat.S_IFMT(self.records[e.ino][0].mode)
        if e.dtype != kind >> 12:
            self.problem(where, f"entry {name} has type {e.dtype}, inode {e.ino} is of type {kind >> 12}")
        if d == fmt.ORPHAN_INO and e.name != b"%d" % e.ino:
            self.problem(where, f"orphan entry {name} names inode {e.ino}")
        return True

    def subdirs(self, d: int) -> int:
        return sum(1 for e in self.dirs.get(d, []) if e.ino in self.records and self.is_dir(e.ino))

    def is_dir(self, ino: int) -> bool:
        return stat.S_ISDIR(self.records[ino][0].mode)

    def link_count(self, ino: int, rec: Inode, naming: list[int], orphan: bool) -> None:
        where = f"inode {ino}"
        is_dir = stat.S_ISDIR(rec.mode)
        if ino in (fmt.ROOT_INO, fmt.ORPHAN_INO):
            want = 2 + (self.subdirs(ino) if ino == fmt.ROOT_INO else 0)  # orphaned dirs are not links
            if rec.parent != ino:
                self.problem(where, f"reserved directory's parent is {rec.parent}, not itself")
        elif orphan:
            want = 0
            if naming:
                self.problem(where, f"on the orphan list, yet named in directories {naming}")
            if is_dir and self.dirs.get(ino):
                self.problem(where, "removed directory on the orphan list still has entries")
        elif is_dir:
            want = 2 + self.subdirs(ino)
            if len(naming) != 1:
                self.problem(where, f"directory named {len(naming)} times (in {naming}), not once")
            elif rec.parent != naming[0]:
                self.problem(where, f"parent field says {rec.parent}, but directory {naming[0]} names it")
        elif naming:
            want = len(naming)
        else:
            self.problem(where, "no directory entry names it and it is not on the orphan list")
            return
        if rec.nlink != want:
            self.problem(where, f"link count {rec.nlink}, expected {want}")

    def reachability(self, orphans: set[int]) -> None:
        """Every live directory hangs off the root: a cycle or a lost subtree is not reached."""
        if fmt.ROOT_INO not in self.dirs:
            return  # no root to start from; that is reported already
        reached, todo = {fmt.ROOT_INO}, [fmt.ROOT_INO]
        while todo:
            for e in self.dirs.get(todo.pop(), []):
                if e.ino in self.dirs and e.ino not in reached and e.ino not in (fmt.ROOT_INO, fmt.ORPHAN_INO):
                    reached.add(e.ino)
                    todo.append(e.ino)
        for d in sorted(set(self.dirs) - reached - orphans - {fmt.ORPHAN_INO}):
            self.problem(f"inode {d}", "directory is not reachable from the root")

    # --- pass 7: ownership ------------------------------------------------------------------------


def _show(name: bytes) -> str:
    return repr(name.decode(errors="backslashreplace"))
