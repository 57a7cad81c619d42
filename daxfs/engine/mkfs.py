"""mkfs: lay out a new image (docs/format.md's "Creating an image"): geometry, both bitmaps with the
metadata area and the reserved inodes in use, the root and orphan directories, two superblocks."""

from __future__ import annotations

import os

from daxfs.engine import format as fmt
from daxfs.engine.core import BS, now_ns
from daxfs.engine.errors import DaxfsError
from daxfs.engine.inode import Inode
from daxfs.engine.pmem import PmemRegion, image_in_use, where_mounted
from daxfs.engine.superblock import write_superblock


def mkfs(path: str, size: int, inodes: int | None = None, journal_blocks: int | None = None,
         force: bool = False) -> fmt.Superblock:
    """Create a daxfs image at `path` (sparse, 0600)."""
    total = size // BS
    if total < 512:
        raise DaxfsError(f"size {size} is too small: daxfs needs at least 2 MiB")
    if journal_blocks is None:
        journal_blocks = min(16384, max(256, total // 64), total // 4)
        journal_blocks = max(journal_blocks, min_journal_blocks(total))
    if inodes is None:
        inodes = max(64, min(size // 16384, 0xFFFFFFFF))
    inodes = min(inodes, 0xFFFFFFFF)
    if journal_blocks < min_journal_blocks(total):
        raise DaxfsError(f"a {journal_blocks}-block journal is too small for {total} blocks: an operation may "
                         f"change every bitmap block; use at least {min_journal_blocks(total)}")
    ibitmap = fmt.blocks_for_bits(inodes)
    bitmap = fmt.blocks_for_bits(total)
    itable = (inodes + fmt.INODES_PER_BLOCK - 1) // fmt.INODES_PER_BLOCK
    data_start = 2 + journal_blocks + ibitmap + bitmap + itable
    if data_start + 16 > total:
        raise DaxfsError(f"size {size} is too small for {inodes} inodes and a {journal_blocks}-block journal")
    if os.path.isfile(path) and image_in_use(path):  # even with force: reformatting under a daemon
        raise DaxfsError(f"{path} is in use by a mounted daxfs{where_mounted(path)}; unmount it first")
    if os.path.exists(path) and not force:
        existing = os.path.getsize(path) if os.path.isfile(path) else -1
        if existing != 0:
            with open(path, "rb") as f:
                head = f.read(4)
            what = "a daxfs image" if head == fmt.MAGIC else "an existing file"
            raise DaxfsError(f"{path} is {what}; use --force to overwrite it")
    PmemRegion.create(path, size, force=True)
    region = PmemRegion(path)
    t = now_ns()
    sb = fmt.Superblock(version=fmt.VERSION, block_size=BS, total_blocks=total, generation=0,
                        state=fmt.STATE_CLEAN, flags=0, journal_start=2, journal_blocks=journal_blocks,
                        ibitmap_start=2 + journal_blocks, ibitmap_blocks=ibitmap,
                        bitmap_start=2 + journal_blocks + ibitmap, bitmap_blocks=bitmap,
                        itable_start=2 + journal_blocks + ibitmap + bitmap, itable_blocks=itable,
                        data_start=data_start, inode_count=inodes, journal_tail=0, journal_seq=1,
                        mkfs_time_ns=t, mount_count=0, uuid=os.urandom(16), last_mount_ns=0)
    # Bitmaps: metadata area and the reserved inodes 0 (none), 1 (root), 2 (orphans) in use.
    _write_bitmap(region, sb.bitmap_start, bitmap, total, data_start, fmt.K_BITMAP)
    _write_bitmap(region, sb.ibitmap_start, ibitmap, inodes, fmt.FIRST_FREE_INO, fmt.K_IBITMAP)
    uid, gid = os.getuid(), os.getgid()
    table = fmt.new_block(fmt.BlockHeader(fmt.K_INODES, self_blk=sb.itable_start))
    for ino, mode, parent in ((fmt.ROOT_INO, 0o40755, fmt.ROOT_INO), (fmt.ORPHAN_INO, 0o40700, fmt.ORPHAN_INO)):
        rec = Inode(ino, generation=1, mode=mode, uid=uid, gid=gid, nlink=2, atime_ns=t, mtime_ns=t, ctime_ns=t,
                    parent=parent)
        _, off = fmt.inode_location(sb.itable_start, ino)
        fixed, nsec = rec.pack(sb.version)
        table[off:off + fmt.INODE_FIXED] = fixed
        table[off + fmt.INODE_NSEC_OFFSET:off + fmt.INODE_NSEC_OFFSET + fmt.INODE_NSEC.size] = nsec
    region.store(sb.itable_start * BS, fmt.seal(table))
    region.persist(0, region.size)
    write_superblock(region, sb)  # generation 1 -> block 1
    write_superblock(region, sb)  # generation 2 -> block 0: both copies valid
    region.close()
    return sb


def min_journal_blocks(total_blocks: int) -> int:
    """Freeing a file may touch every bitmap block in one transaction, which must fit in half the
    journal (journal.max_txn_blocks), with room for the inode and directory blocks beside them."""
    return 2 * (fmt.blocks_for_bits(total_blocks) + 16) + 8


def _write_bitmap(region: PmemRegion, start: int, nblocks: int, nbits: int, used: int, kind: int) -> None:
    per = fmt.PAYLOAD * 8
    for i in range(nblocks):
        b = fmt.new_block(fmt.BlockHeader(kind, self_blk=start + i))
        lo, hi = i * per, min(nbits, (i + 1) * per)
        ones = max(0, min(used, hi) - lo)  # bits [lo, used) are in use
        full, rest = divmod(ones, 8)
        b[fmt.HEADER_SIZE:fmt.HEADER_SIZE + full] = b"\xff" * full
        if rest:
            b[fmt.HEADER_SIZE + full] = (1 << rest) - 1
        region.store((start + i) * BS, fmt.seal(b))
