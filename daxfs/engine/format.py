"""The on-image format: every structure's layout, size and checksum, in one place.

docs/format.md is the specification in prose; this module is the same specification in code, and both
mkfs and the running file system, fsck and the inspect tool read images through it alone.

Global rules:
  * little-endian integers; block size 4096; block 0 and 1 are the two superblock copies;
  * every metadata block (superblock, journal, inode table, bitmaps, extent/dirent/xattr chains) starts
    with the 48-byte block header below and carries a CRC-32C of the whole block, computed with the
    crc field zeroed;
  * block number 0 is never a valid pointer, so 0 means "none".

This module only packs and unpacks; it does no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

import crc32c

from daxfs.engine.errors import CorruptImage

BLOCK_SIZE = 4096
MAGIC = b"DXFS"
VERSION = 2  # what mkfs writes
VERSIONS = (1, 2)  # what the engine reads: 1 differs only in how an inode stores its times (see INODE_NSEC)

# Block kinds (header.kind).
K_SUPER = 1
K_JDESC = 2  # journal descriptor: the home block numbers of the images that follow it
K_JCOMMIT = 3  # journal commit record: the commit point of a transaction
K_INODES = 4  # inode table block
K_BITMAP = 5  # free-block bitmap block
K_IBITMAP = 6  # free-inode bitmap block
K_EXTENTS = 7  # extent slot chain block
K_DIRENTS = 8  # directory entry slot chain block
K_XATTR = 9  # extended-attribute blob chain block

KIND_NAMES = {
    K_SUPER: "superblock", K_JDESC: "journal descriptor", K_JCOMMIT: "journal commit",
    K_INODES: "inode table", K_BITMAP: "block bitmap", K_IBITMAP: "inode bitmap",
    K_EXTENTS: "extent chain", K_DIRENTS: "directory chain", K_XATTR: "xattr chain",
}

# --- block header -------------------------------------------------------------------------------
# magic 4s | kind u16 | used u16 | crc u32 | reserved u32 | self u64 | owner u64 | next u64 | seq u64
HEADER = struct.Struct("<4sHHIIQQQQ")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 48
KIND_OFFSET = 4
USED_OFFSET = 6
CRC_OFFSET = 8
NEXT_OFFSET = 32
SEQ_OFFSET = 40
assert (struct.calcsize("<4s"), struct.calcsize("<4sH"), struct.calcsize("<4sHH"), struct.calcsize("<4sHHIIQQ"),
        struct.calcsize("<4sHHIIQQQ")) == (KIND_OFFSET, USED_OFFSET, CRC_OFFSET, NEXT_OFFSET, SEQ_OFFSET)
PAYLOAD = BLOCK_SIZE - HEADER_SIZE
_ZERO_CRC = b"\0\0\0\0"


@dataclass(slots=True)
class BlockHeader:
    kind: int
    used: int = 0  # slots in use (chains), entries (journal descriptor)
    self_blk: int = 0  # the block's own number: catches misdirected writes
    owner: int = 0  # owning inode for chains; 0 otherwise
    next: int = 0  # next block of a chain; 0 ends it
    seq: int = 0  # transaction sequence number (journal blocks)


def block_crc(block: bytes | bytearray | memoryview) -> int:
    """CRC-32C of a block with its crc field taken as zero."""
    mv = memoryview(block)  # slices of a view copy nothing (every metadata block read is checked)
    c = crc32c.crc32c(mv[:CRC_OFFSET])
    c = crc32c.crc32c(_ZERO_CRC, c)
    return crc32c.crc32c(mv[CRC_OFFSET + 4:], c)


def new_block(h: BlockHeader) -> bytearray:
    b = bytearray(BLOCK_SIZE)
    put_header(b, h)
    return b


def put_header(b: bytearray, h: BlockHeader) -> None:
    HEADER.pack_into(b, 0, MAGIC, h.kind, h.used, 0, 0, h.self_blk, h.owner, h.next, h.seq)


def seal(b: bytearray) -> bytearray:
    """Write the block's checksum into its header; the last step before a block leaves memory."""
    b[CRC_OFFSET:CRC_OFFSET + 4] = _ZERO_CRC  # then one pass over the block gives block_crc(b)
    struct.pack_into("<I", b, CRC_OFFSET, crc32c.crc32c(b))
    return b


def read_header(b: bytes | bytearray | memoryview, blkno: int, kind: int | None = None,
                check_crc: bool = True) -> BlockHeader:
    """Parse and verify a metadata block's header; raise CorruptImage naming the block on any mismatch."""
    magic, k, used, crc, _, self_blk, owner, nxt, seq = HEADER.unpack_from(b, 0)
    if magic != MAGIC:
        raise CorruptImage(f"block {blkno}: bad magic {magic!r}", blkno)
    if kind is not None and k != kind:
        raise CorruptImage(f"block {blkno}: is a {KIND_NAMES.get(k, k)}, expected a {KIND_NAMES[kind]}", blkno)
    if check_crc and crc != block_crc(b):
        raise CorruptImage(f"block {blkno}: {KIND_NAMES.get(k, k)} checksum mismatch", blkno)
    if self_blk != blkno:
        raise CorruptImage(f"block {blkno}: header says it is block {self_blk}", blkno)
    return BlockHeader(k, used, self_blk, owner, nxt, seq)


def header_kind(b: bytes | bytearray | memoryview) -> int:
    return struct.unpack_from("<H", b, KIND_OFFSET)[0]


def get_used(b: bytes | bytearray) -> int:
    return struct.unpack_from("<H", b, USED_OFFSET)[0]


def set_used(b: bytearray, used: int) -> None:
    struct.pack_into("<H", b, USED_OFFSET, used)


def set_next(b: bytearray, nxt: int) -> None:
    struct.pack_into("<Q", b, NEXT_OFFSET, nxt)


def describe_blocks(start: int, n: int) -> str:
    """'block 7' or 'blocks 7-9', as every report names block runs."""
    return f"block {start}" if n == 1 else f"blocks {start}-{start + n - 1}"


# --- superblock ---------------------------------------------------------------------------------
MAX_SEQ = 1 << 62  # journal sequence numbers (= transaction ids) stay below this: room to count up from any
STATE_CLEAN = 1
STATE_DIRTY = 2

_SUPER = struct.Struct("<IIQQIIQQQQQQQQQQQQQQ16sQQ")


@dataclass(slots=True)
class Superblock:
    version: int
    block_size: int
    total_blocks: int
    generation: int  # the copy with the higher valid generation wins
    state: int
    flags: int
    journal_start: int
    journal_blocks: int
    ibitmap_start: int
    ibitmap_blocks: int
    bitmap_start: int
    bitmap_blocks: int
    itable_start: int
    itable_blocks: int
    data_start: int
    inode_count: int
    journal_tail: int  # journal-relative block index of the oldest transaction not yet checkpointed
    journal_seq: int  # sequence number of the transaction expected at journal_tail
    mkfs_time_ns: int
    mount_count: int
    uuid: bytes
    last_mount_ns: int
    reserved: int = 0

    def pack(self, blkno: int) -> bytearray:
        b = new_block(BlockHeader(K_SUPER, self_blk=blkno))
        _SUPER.pack_into(b, HEADER_SIZE, *(getattr(self, f.name) for f in fields(self)))
        return seal(b)

    @classmethod
    def unpack(cls, b: bytes | memoryview, blkno: int) -> "Superblock":
        read_header(b, blkno, K_SUPER)
        sb = cls(*_SUPER.unpack_from(b, HEADER_SIZE))
        if sb.version not in VERSIONS:
            raise CorruptImage(f"superblock {blkno}: unsupported format version {sb.version}", blkno)
        if sb.state not in (STATE_CLEAN, STATE_DIRTY):
            raise CorruptImage(f"superblock {blkno}: state {sb.state} is neither clean (1) nor dirty (2)", blkno)
        if sb.block_size != BLOCK_SIZE:
            raise CorruptImage(f"superblock {blkno}: block size {sb.block_size}, only {BLOCK_SIZE} is supported",
                               blkno)
        return sb


# --- inode records ------------------------------------------------------------------------------
INODE_SIZE = 256
INODES_PER_BLOCK = PAYLOAD // INODE_SIZE  # 15
INLINE_EXTENTS = 4
# ino u32 | generation u32 | mode u32 | uid u32 | gid u32 | nlink u32 | flags u32 | pad u32 |
# size u64 | blocks u64 | atime_ns i64 | mtime_ns i64 | ctime_ns i64 | rdev u64 |
# extent_head u64 | dirent_head u64 | xattr_head u64 | parent u64 (directories)
INODE = struct.Struct("<IIIIIIIIQQqqqQQQQQ")
INODE_FIXED = INODE.size  # 112; the inline extent slots follow at this offset
# Times. Version 2: the three time fields are whole seconds (signed), and their nanoseconds sit at
# INODE_NSEC_OFFSET (atime, mtime, ctime: u32 each, below 10^9), so any time Linux passes fits.
# Version 1: the time fields are nanoseconds since the epoch (1677-2262) and INODE_NSEC is zero;
# times outside that range are clamped, as Linux clamps to a file system's s_time_min/max.
INODE_NSEC = struct.Struct("<III")
INODE_NSEC_OFFSET = INODE_FIXED + INLINE_EXTENTS * 32  # 240
assert INODE_NSEC_OFFSET + INODE_NSEC.size <= INODE_SIZE
V1_TIME_RANGE = (-(1 << 63), (1 << 63) - 1)  # nanoseconds
TIME_RANGE = (-(1 << 63) * 10**9, ((1 << 63) - 1) * 10**9 + 10**9 - 1)  # nanoseconds, version 2

ROOT_INO = 1  # pyfuse3.ROOT_INODE
ORPHAN_INO = 2  # hidden directory listing unlinked-but-open inodes; replay frees them
FIRST_FREE_INO = 3

FLAG_MAP_SYNC = 1  # persistent per-file sync mode (user.daxfs.map_sync = 1)


def inode_location(itable_start: int, ino: int) -> tuple[int, int]:
    """(block, byte offset) of inode `ino`'s record in the inode table."""
    return itable_start + ino // INODES_PER_BLOCK, HEADER_SIZE + (ino % INODES_PER_BLOCK) * INODE_SIZE


# --- chain slots --------------------------------------------------------------------------------
# Every slot starts with a u32 tag that is 0 when the slot is free.

# Extent: state u32 | len u32 | lblk u64 | pblk u64 | reserved u64
EXTENT = struct.Struct("<IIQQQ")
EXTENT_SIZE = EXTENT.size
assert EXTENT_SIZE == 32
EXT_UNWRITTEN = 1
EXT_WRITTEN = 2
MAX_EXTENT_LEN = 1 << 20  # blocks; bounds the work of splitting one extent

# Dirent: ino u32 | type u8 | namelen u8 | reserved u16 | name 255s | pad
DIRENT = struct.Struct("<IBBH255s")
DIRENT_SIZE = 264
assert DIRENT.size <= DIRENT_SIZE
MAX_NAME = 255

# Journal descriptor payload: u64 home block numbers.
DESC_ENTRIES = PAYLOAD // 8
# Journal commit payload: nblocks u64 | images crc u32 | reserved u32 | commit time ns u64
COMMIT = struct.Struct("<QIIQ")

XATTR_VALUE_MAX = 64 * 1024  # one value, as Linux's XATTR_SIZE_MAX
# An inode's whole xattr blob: version 2 holds a value of XATTR_VALUE_MAX beside others; version 1
# images keep their 64 KiB limit (a version 1 reader refuses more).
XATTR_BLOB_MAX = {1: 64 * 1024, 2: 160 * 1024}  # v2: two values of XATTR_VALUE_MAX with their names
MAX_FILE_BLOCKS = 1 << 36  # 256 TiB; larger offsets are EFBIG


def slots_per_block(slot_size: int) -> int:
    return PAYLOAD // slot_size


def blocks_for_bits(nbits: int) -> int:
    per = PAYLOAD * 8
    return (nbits + per - 1) // per
