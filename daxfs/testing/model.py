"""An in-memory model of a POSIX namespace and file contents: what daxfs must show after a crash.

Used by the engine's power-cut property test (tests/test_power_cut.py) and by the crash-test oracle
(daxfs/oracle.py), which replays a workload's operations on it to know which states a recovered
mount may be in.

The model is the specification in the simplest form: nodes (files, directories, symlinks) with names
in directories, bytes, extended attributes. Each operation comes in two halves: `check_*` says which
errno the file system must answer (0 for success) without changing anything, `do_*` applies a
successful operation.

Crash semantics need one more thing than the namespace: which bytes a file may hold after a power
cut. Metadata (names, sizes, attributes) is exactly that of the last completed commit. File data is
not journaled (DAX stores go straight to pmem), so a byte of a file may also hold a value it was
given since then: every change of file bytes is kept in `log` as (node, offset, bytes), truncations
as (node, size, None), and a Snapshot remembers how long the log was when it was taken.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

BLOCK = 4096
ROOT = 1
FILE, DIR, LINK = "f", "d", "l"


@dataclass
class Node:
    kind: str
    data: bytearray = field(default_factory=bytearray)  # file bytes, or a symlink's target
    entries: dict[bytes, int] = field(default_factory=dict)  # directories: name -> node
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    parent: int = 0  # directories
    written: set[int] = field(default_factory=set)  # files: blocks mapped and written
    unwritten: set[int] = field(default_factory=set)  # files: blocks preallocated, never written

    def copy(self) -> "Node":
        return Node(self.kind, bytearray(self.data), dict(self.entries), dict(self.xattrs), self.parent,
                    set(self.written), set(self.unwritten))


@dataclass
class Snapshot:
    nodes: dict[int, Node]
    log_pos: int  # log entries before this position are in the snapshot
    label: str = ""

    def nlink(self, nid: int) -> int:
        return _nlink(self.nodes, nid)


def _nlink(nodes: dict[int, Node], nid: int) -> int:
    node = nodes[nid]
    if node.kind == DIR:
        return 2 + sum(1 for c in node.entries.values() if nodes[c].kind == DIR)
    return sum(1 for d in nodes.values() if d.kind == DIR for c in d.entries.values() if c == nid)


class Model:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT: Node(DIR, parent=ROOT)}
        self.next_id = ROOT + 1
        # (node, offset, bytes) in the order they were stored; bytes None marks a truncation at offset
        self.log: list[tuple[int, int, bytes | None]] = []
        self.open: set[int] = set()  # nodes a process holds: kept when their last name goes

    # --- queries ----------------------------------------------------------------------------------
    def reachable(self) -> dict[int, Node]:
        seen: dict[int, Node] = {}
        todo = [ROOT]
        while todo:
            nid = todo.pop()
            if nid in seen:
                continue
            seen[nid] = self.nodes[nid]
            if self.nodes[nid].kind == DIR:
                todo.extend(self.nodes[nid].entries.values())
        return seen

    def dirs(self) -> list[int]:
        return sorted(n for n, node in self.reachable().items() if node.kind == DIR)

    def files(self) -> list[int]:
        """Regular files, reachable or held open."""
        ids = {n for n, node in self.reachable().items() if node.kind == FILE}
        return sorted(ids | {n for n in self.open if n in self.nodes})

    def names(self) -> list[tuple[int, bytes]]:
        return sorted((d, name) for d in self.dirs() for name in self.nodes[d].entries)

    def nlink(self, nid: int) -> int:
        return _nlink(self.nodes, nid)

    def is_ancestor(self, a: int, d: int) -> bool:
        """Is directory a the directory d or one of its ancestors?"""
        while True:
            if d == a:
                return True
            if d == ROOT:
                return False
            d = self.nodes[d].parent

    def resolve(self, path: str) -> int | None:
        """The node at a relative path ("" is the root), None if there is none."""
        nid = ROOT
        for name in filter(None, path.split("/")):
            node = self.nodes[nid]
            if node.kind != DIR or name.encode() not in node.entries:
                return None
            nid = node.entries[name.encode()]
        return nid

    def parent_of(self, path: str) -> tuple[int | None, bytes]:
        """(directory node, name) of a relative path; the node is None if the directory is missing."""
        head, _, name = path.rpartition("/")
        d = self.resolve(head)
        return (d if d is not None and self.nodes[d].kind == DIR else None), name.encode()

    def needs_commit(self, nid: int, off: int, n: int) -> bool:
        """Does a write of [off, off+n) touch a block whose mapping or size it changes (a hole, an
        unwritten block, growth)? daxfs's MAP_SYNC rule commits before acknowledging such a write.
        The file system may commit more often (a block can stay unstable from an earlier change), never
        less: a crash checker may rely on this answer as a lower bound."""
        node = self.nodes[nid]
        if n <= 0:
            return False
        if off + n > len(node.data):
            return True
        return any(b not in node.written for b in range(off // BLOCK, (off + n - 1) // BLOCK + 1))

    def capture(self, label: str = "") -> Snapshot:
        return Snapshot({n: node.copy() for n, node in self.reachable().items()}, len(self.log), label)

    # --- namespace --------------------------------------------------------------------------------
    def check_new(self, d: int, name: bytes) -> int:
        return errno.EEXIST if name in self.nodes[d].entries else 0

    def do_new(self, d: int, name: bytes, kind: str, target: bytes = b"") -> int:
        nid = self.next_id
        self.next_id += 1
        self.nodes[nid] = Node(kind, bytearray(target), parent=d if kind == DIR else 0)
        self.nodes[d].entries[name] = nid
        return nid

    def check_link(self, nid: int, d: int, name: bytes) -> int:
        if self.nodes[nid].kind == DIR:
            return errno.EPERM
        return self.check_new(d, name)

    def do_link(self, nid: int, d: int, name: bytes) -> None:
        self.nodes[d].entries[name] = nid

    def check_unlink(self, d: int, name: bytes) -> int:
        nid = self.nodes[d].entries.get(name)
        if nid is None:
            return errno.ENOENT
        return errno.EISDIR if self.nodes[nid].kind == DIR else 0

    def do_unlink(self, d: int, name: bytes) -> None:
        self._drop_name(d, name)

    def check_rmdir(self, d: int, name: bytes) -> int:
        nid = self.nodes[d].entries.get(name)
        if nid is None:
            return errno.ENOENT
        if self.nodes[nid].kind != DIR:
            return errno.ENOTDIR
        return errno.ENOTEMPTY if self.nodes[nid].entries else 0

    def do_rmdir(self, d: int, name: bytes) -> None:
        self._drop_name(d, name)

    def _drop_name(self, d: int, name: bytes) -> None:
        nid = self.nodes[d].entries.pop(name)
        self._maybe_forget(nid)

    def _maybe_forget(self, nid: int) -> None:
        if nid not in self.open and nid not in self.reachable():
            del self.nodes[nid]

    def close(self, nid: int) -> None:
        self.open.discard(nid)
        if nid in self.nodes:
            self._maybe_forget(nid)

    def check_rename(self, sd: int, sn: bytes, dd: int, dn: bytes, exchange: bool, noreplace: bool) -> int:
        """The errno FileSystem.rename answers, in the order it checks (-1: success doing nothing)."""
        src = self.nodes[sd].entries.get(sn)
        if src is None:
            return errno.ENOENT
        tgt = self.nodes[dd].entries.get(dn)
        if tgt == src:
            return -1
        if noreplace and tgt is not None:
            return errno.EEXIST
        if exchange and tgt is None:
            return errno.ENOENT
        sdir = self.nodes[src].kind == DIR
        if sdir and sd != dd and self.is_ancestor(src, dd):
            return errno.EINVAL
        if tgt is not None and self.nodes[tgt].kind == DIR and sd != dd and self.is_ancestor(tgt, sd):
            return errno.EINVAL if exchange else errno.ENOTEMPTY
        if tgt is not None and not exchange:
            tdir = self.nodes[tgt].kind == DIR
            if sdir and not tdir:
                return errno.ENOTDIR
            if not sdir and tdir:
                return errno.EISDIR
            if tdir and self.nodes[tgt].entries:
                return errno.ENOTEMPTY
        return 0

    def do_rename(self, sd: int, sn: bytes, dd: int, dn: bytes, exchange: bool) -> None:
        src = self.nodes[sd].entries[sn]
        if exchange:
            tgt = self.nodes[dd].entries[dn]
            self.nodes[sd].entries[sn], self.nodes[dd].entries[dn] = tgt, src
            for nid, parent in ((src, dd), (tgt, sd)):
                if self.nodes[nid].kind == DIR:
                    self.nodes[nid].parent = parent
            return
        old = self.nodes[dd].entries.get(dn)
        del self.nodes[sd].entries[sn]
        self.nodes[dd].entries[dn] = src
        if self.nodes[src].kind == DIR:
            self.nodes[src].parent = dd
        if old is not None:
            self._maybe_forget(old)

    # --- data -------------------------------------------------------------------------------------
    def changes_of_write(self, nid: int, off: int, data: bytes) -> list[tuple[int, int, bytes]]:
        """The byte changes a write makes: zeros over a gap it opens past EOF, then its data."""
        size = len(self.nodes[nid].data)
        out = []
        if off > size:
            out.append((nid, size, bytes(off - size)))
        out.append((nid, off, bytes(data)))
        return out

    def changes_of_resize(self, nid: int, size: int) -> list[tuple[int, int, bytes | None]]:
        """Growing: zeros from the old end. Shrinking: a cut mark (bytes None): once the truncation is
        committed, nothing the file held from `size` on may show again."""
        old = len(self.nodes[nid].data)
        if size > old:
            return [(nid, old, bytes(size - old))]
        return [(nid, size, None)] if size < old else []

    def do_write(self, nid: int, off: int, data: bytes) -> None:
        self.log += self.changes_of_write(nid, off, data)
        buf = self.nodes[nid].data
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
        if data:
            blocks = range(off // BLOCK, (off + len(data) - 1) // BLOCK + 1)
            self.nodes[nid].written.update(blocks)
            self.nodes[nid].unwritten.difference_update(blocks)

    def do_truncate(self, nid: int, size: int) -> None:
        self.log += self.changes_of_resize(nid, size)
        node = self.nodes[nid]
        buf = node.data
        if size < len(buf):
            del buf[size:]
            keep = -(-size // BLOCK)
            node.written = {b for b in node.written if b < keep}
            node.unwritten = {b for b in node.unwritten if b < keep}
        else:
            buf.extend(bytes(size - len(buf)))

    def do_prealloc(self, nid: int, off: int, length: int, keep_size: bool) -> None:
        node = self.nodes[nid]
        node.unwritten.update(b for b in range(off // BLOCK, (off + length - 1) // BLOCK + 1) if b not in node.written)
        if not keep_size and off + length > len(self.nodes[nid].data):
            self.do_truncate(nid, off + length)

    def synced(self, nid: int) -> int:
        """fsync: the node's bytes as they are now are durable. Logs them whole; returns the position."""
        self.log.append((nid, 0, bytes(self.nodes[nid].data)))
        return len(self.log) - 1

    # --- xattrs -----------------------------------------------------------------------------------
    def check_setxattr(self, nid: int, name: bytes, create: bool, replace: bool) -> int:
        exists = name in self.nodes[nid].xattrs
        if create and exists:
            return errno.EEXIST
        if replace and not exists:
            return errno.ENODATA
        return 0

    def do_setxattr(self, nid: int, name: bytes, value: bytes) -> None:
        self.nodes[nid].xattrs[name] = value

    def check_removexattr(self, nid: int, name: bytes) -> int:
        return 0 if name in self.nodes[nid].xattrs else errno.ENODATA

    def do_removexattr(self, nid: int, name: bytes) -> None:
        del self.nodes[nid].xattrs[name]
