"""The two superblock copies (blocks 0 and 1).

A superblock is rewritten in place, so a torn write could destroy it; two copies alternate instead.
Each write goes to the copy the current one is not, with a higher generation, and is persisted before
anyone relies on it. Reading takes the valid copy with the higher generation.
"""

from __future__ import annotations

from daxfs.engine import format as fmt
from daxfs.engine.errors import CorruptImage, NotDaxfs
from daxfs.engine.pmem import PmemRegion


def read_superblock(region: PmemRegion) -> fmt.Superblock:
    if region.size < 2 * fmt.BLOCK_SIZE:
        raise NotDaxfs(f"{region.path}: too small to be a daxfs image ({region.size} bytes)")
    found: list[fmt.Superblock] = []
    errors: list[str] = []
    for blkno in (0, 1):
        raw = region.load(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)
        if raw[:4] != fmt.MAGIC:
            errors.append(f"block {blkno}: no daxfs magic")
            continue
        try:
            sb = fmt.Superblock.unpack(raw, blkno)
        except CorruptImage as e:
            errors.append(str(e))
            continue
        if sb.generation % 2 != blkno:  # write_superblock puts generation g at block g % 2
            errors.append(f"block {blkno}: superblock generation {sb.generation} belongs in block {sb.generation % 2}")
        elif sb.total_blocks * fmt.BLOCK_SIZE > region.size:
            errors.append(f"block {blkno}: superblock says {sb.total_blocks} blocks, the file holds "
                          f"{region.size // fmt.BLOCK_SIZE}")
        else:
            found.append(sb)
    if not found:
        if all("no daxfs magic" in e for e in errors):
            raise NotDaxfs(f"{region.path}: not a daxfs image (no superblock magic)")
        raise CorruptImage(f"{region.path}: no valid superblock ({'; '.join(errors)})", 0)
    return max(found, key=lambda s: s.generation)


def write_superblock(region: PmemRegion, sb: fmt.Superblock) -> None:
    """Write `sb` (with its generation advanced) to the other copy and persist it."""
    sb.generation += 1
    blkno = sb.generation % 2
    region.store(blkno * fmt.BLOCK_SIZE, sb.pack(blkno))
    region.persist(blkno * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)
    region.fence()


def check_geometry(sb: fmt.Superblock, region: PmemRegion) -> None:
    """Refuse superblocks whose areas overlap or leave the image (a valid checksum is not enough)."""
    areas = [("journal", sb.journal_start, sb.journal_blocks), ("inode bitmap", sb.ibitmap_start, sb.ibitmap_blocks),
             ("block bitmap", sb.bitmap_start, sb.bitmap_blocks), ("inode table", sb.itable_start, sb.itable_blocks)]
    pos = 2
    for name, start, n in areas:
        if start != pos or n <= 0:
            raise CorruptImage(f"{region.path}: superblock geometry: {name} at {start}+{n}, expected at {pos}", 0)
        pos += n
    if sb.data_start != pos or sb.data_start >= sb.total_blocks:
        raise CorruptImage(f"{region.path}: superblock geometry: data at {sb.data_start}", 0)
    if sb.bitmap_blocks != fmt.blocks_for_bits(sb.total_blocks) or \
            sb.ibitmap_blocks != fmt.blocks_for_bits(sb.inode_count) or \
            sb.itable_blocks * fmt.INODES_PER_BLOCK < sb.inode_count or not (0 <= sb.journal_tail < sb.journal_blocks) \
            or not 0 < sb.journal_seq < fmt.MAX_SEQ:
        raise CorruptImage(f"{region.path}: superblock geometry is inconsistent", 0)


