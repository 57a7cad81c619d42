"""Chains: an inode's variable-size metadata stored in a linked list of metadata blocks.

Two shapes:
  SlotChain  fixed-size slots (extents, directory entries). The order of slots on the image means
             nothing: the owner keeps its own in-memory index (sorted extents, a name dict), so one
             change touches one slot in one block, whatever the size of the file or directory.
             A slot whose leading u32 tag is 0 is free. New blocks are pushed at the head. Emptied
             blocks stay in the chain until the owner is freed (directories rarely shrink for good).
  blob       a byte string spread over a chain (extended attributes), rewritten whole on change.

A slot's address is (block, byte offset). Extent chains also use slots inside the inode record itself
(inline slots), so small files need no chain block at all.
"""

from __future__ import annotations

from typing import Callable, Iterator

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage
from daxfs.engine.journal import Journal

Addr = tuple[int, int]


class BadLink(CorruptImage):
    """A chain that cannot be followed further: `what` says how, for inode `owner`."""

    def __init__(self, owner: int, what: str, blkno: int) -> None:
        self.owner = owner
        self.what = what
        super().__init__(f"inode {owner}: {what}", blkno)


def links(read: Callable[[int], bytes | bytearray], sb: fmt.Superblock, head: int, kind: int, owner: int,
          check_crc: Callable[[int], bool] = lambda blk: True) -> Iterator[tuple[int, bytes | bytearray,
                                                                            fmt.BlockHeader]]:
    """(block, bytes, header) of each block of the chain from head, verified (kind, owner, checksum,
    no cycle, inside the data area); BadLink at the first block that fails. The engine and fsck both
    walk chains with it."""
    name = fmt.KIND_NAMES[kind]
    seen: set[int] = set()
    blk = head
    while blk:
        if blk in seen:
            raise BadLink(owner, f"{name} loops back to block {blk}", blk)
        if not sb.data_start <= blk < sb.total_blocks:
            raise BadLink(owner, f"{name} points at block {blk}, outside the data area", blk)
        seen.add(blk)
        raw = read(blk)
        try:
            h = fmt.read_header(raw, blk, kind, check_crc=check_crc(blk))
        except CorruptImage as e:
            raise BadLink(owner, f"{name}: {e}", blk) from None
        if h.owner != owner:
            raise BadLink(owner, f"{name} reaches block {blk}, which belongs to inode {h.owner}", blk)
        yield blk, raw, h
        blk = h.next


def walk(journal: Journal, head: int, kind: int, owner: int) -> list[tuple[int, bytes | bytearray,
                                                                        fmt.BlockHeader]]:
    """The chain's blocks through the journal's cache. Blocks in the running transaction carry a stale
    crc until they are sealed when their commit starts."""
    return list(links(journal.read, journal.sb, head, kind, owner, lambda blk: blk not in journal.cache))


class SlotChain:
    def __init__(self, journal: Journal, alloc_block: Callable[[], int], kind: int, owner: int,
                 slot_size: int, head: int, set_head: Callable[[int], None], inline: list[Addr] = ()) -> None:
        self.journal = journal
        self.alloc_block = alloc_block
        self.kind = kind
        self.owner = owner
        self.slot_size = slot_size
        self.per_block = fmt.slots_per_block(slot_size)
        self.head = head
        self.set_head = set_head
        self.inline = list(inline)
        self.free: list[Addr] = []
        self.block_list: list[int] = []
        self.block_set: set[int] = set()

    def load(self) -> list[tuple[Addr, bytes]]:
        """Every used slot with its bytes; remembers the free ones."""
        used: list[tuple[Addr, bytes]] = []
        for blk, off in self.inline:
            self._sort_slot(used, (blk, off), self.journal.read(blk))
        for blk, raw, _ in walk(self.journal, self.head, self.kind, self.owner):
            self.block_list.append(blk)
            self.block_set.add(blk)
            for i in range(self.per_block):
                self._sort_slot(used, (blk, fmt.HEADER_SIZE + i * self.slot_size), raw)
        self.free.reverse()  # pop() then hands out inline and early slots first
        return used

    def _sort_slot(self, used: list, addr: Addr, raw: bytes | bytearray) -> None:
        off = addr[1]
        data = bytes(raw[off:off + self.slot_size])
        if data[:4] == b"\0\0\0\0":
            self.free.append(addr)
        else:
            used.append((addr, data))

    def put(self, data: bytes) -> Addr:
        if not self.free:
            self._grow()
        addr = self.free.pop()
        self.update(addr, data)
        self._count(addr[0], +1)
        return addr

    def update(self, addr: Addr, data: bytes) -> None:
        blk, off = addr
        buf = self.journal.write_access(blk)
        buf[off:off + len(data)] = data

    def remove(self, addr: Addr) -> None:
        blk, off = addr
        buf = self.journal.write_access(blk)
        buf[off:off + self.slot_size] = bytes(self.slot_size)
        self._count(blk, -1)
        self.free.append(addr)

    def _count(self, blk: int, delta: int) -> None:
        if blk not in self.block_set:  # an inline slot: the inode record keeps no count
            return
        buf = self.journal.read(blk)
        used = fmt.get_used(buf) + delta
        if not 0 <= used <= self.per_block:  # the block is no longer what the chain holds (shared, overwritten)
            raise CorruptImage(f"inode {self.owner}: {fmt.KIND_NAMES[self.kind]} block {blk} would count {used} "
                               f"used slots of {self.per_block}", blk)
        fmt.set_used(self.journal.write_access(blk), used)

    def _grow(self) -> None:
        blk = self.alloc_block()
        self.journal.create(blk, fmt.BlockHeader(self.kind, owner=self.owner, next=self.head))
        self.head = blk
        self.block_list.append(blk)
        self.block_set.add(blk)
        self.set_head(blk)
        self.free.extend((blk, fmt.HEADER_SIZE + i * self.slot_size) for i in reversed(range(self.per_block)))

    def blocks(self) -> list[int]:
        return list(self.block_list)


def read_blob(journal: Journal, head: int, owner: int) -> tuple[bytes, list[int]]:
    """The blob's bytes and the chain blocks holding them."""
    parts = []
    blocks = []
    for blk, raw, h in walk(journal, head, fmt.K_XATTR, owner):
        parts.append(bytes(raw[fmt.HEADER_SIZE:fmt.HEADER_SIZE + h.used]))
        blocks.append(blk)
    return b"".join(parts), blocks


def write_blob(journal: Journal, alloc_block: Callable[[], int], free_block: Callable[[int], None],
               owner: int, blocks: list[int], data: bytes) -> list[int]:
    """Rewrite a blob over its chain, growing or shrinking it; returns the new block list (head first)."""
    need = (len(data) + fmt.PAYLOAD - 1) // fmt.PAYLOAD
    keep = blocks[:need]
    for blk in blocks[need:]:
        free_block(blk)
    while len(keep) < need:
        keep.append(alloc_block())
    for i, blk in enumerate(keep):
        piece = data[i * fmt.PAYLOAD:(i + 1) * fmt.PAYLOAD]
        nxt = keep[i + 1] if i + 1 < len(keep) else 0
        buf = journal.create(blk, fmt.BlockHeader(fmt.K_XATTR, used=len(piece), owner=owner, next=nxt))
        buf[fmt.HEADER_SIZE:fmt.HEADER_SIZE + len(piece)] = piece
    return keep
