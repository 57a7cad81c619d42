"""inspect: what `daxfs inspect` prints about an image (geometry, usage, state, journal), read as
replay would leave it. It describes, it does not verify: that is fsck's job."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from daxfs.engine import format as fmt
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.recovery import ReplayedImage, ScanResult, Stop
from daxfs.engine.superblock import check_geometry, read_superblock


def describe(path: str) -> dict[str, Any]:
    """What `daxfs inspect` prints: geometry, usage, state and journal, as replay would leave it.
    It describes, it does not verify: bitmap blocks are counted whatever their headers say."""
    region = PmemRegion(path, writable=False)
    try:
        sb = read_superblock(region)
        check_geometry(sb, region)
        img, result = ReplayedImage.of(region, sb)
        blocks_used = _count_bits(img, sb.bitmap_start, sb.bitmap_blocks, sb.total_blocks)
        inodes_used = _count_bits(img, sb.ibitmap_start, sb.ibitmap_blocks, sb.inode_count) - 1  # inode 0
        size = region.size
    finally:
        region.close()
    return {
        "image": path,
        "uuid": sb.uuid.hex(),
        "state": "clean" if sb.state == fmt.STATE_CLEAN else "dirty",
        "created": _when(sb.mkfs_time_ns),
        "last mounted": _when(sb.last_mount_ns) if sb.last_mount_ns else "never",
        "mount count": sb.mount_count,
        "superblock generation": sb.generation,
        "size bytes": size,
        "block size": sb.block_size,
        "total blocks": sb.total_blocks,
        "journal start": sb.journal_start,
        "journal blocks": sb.journal_blocks,
        "inode bitmap start": sb.ibitmap_start,
        "inode bitmap blocks": sb.ibitmap_blocks,
        "block bitmap start": sb.bitmap_start,
        "block bitmap blocks": sb.bitmap_blocks,
        "inode table start": sb.itable_start,
        "inode table blocks": sb.itable_blocks,
        "data start": sb.data_start,
        "blocks used": blocks_used,
        "blocks free": sb.total_blocks - blocks_used,
        "inodes": sb.inode_count,
        "inodes used": inodes_used,
        "inodes free": sb.inode_count - 1 - inodes_used,
        "journal tail": sb.journal_tail,
        "journal seq": sb.journal_seq,
        "journal transactions to replay": len(result.transactions),
        "journal blocks to replay": sum(len(t) for t in result.transactions),
        "journal ends": _journal_end(result),
    }


def _count_bits(img: ReplayedImage, start: int, nblocks: int, nbits: int) -> int:
    """Set bits among the first nbits of a bitmap (bit i is bit i % 8 of byte i // 8)."""
    payload = img.blocks(start, nblocks)[:, fmt.HEADER_SIZE:].reshape(-1)
    whole, rest = divmod(nbits, 8)
    tail = int(payload[whole]) & ((1 << rest) - 1) if rest else 0
    return int(np.bitwise_count(payload[:whole]).sum(dtype=np.int64)) + tail.bit_count()


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ns / 1e9))


def _journal_end(result: ScanResult) -> str:
    """Where replay's scan ends, in words that say whether that is normal."""
    if result.stop in (Stop.END, Stop.WRAPPED):
        return "after the last committed transaction (normal)"
    if result.stop is Stop.TORN:
        return f"at a transaction torn by a crash, never committed (normal after a crash; {result.detail})"
    return f"DAMAGED: {result.stop_reason} (run daxfs fsck)"
