"""fsck --repair: keep what a damaged journal still replays, discard the committed transactions that
lie past the damage, reset the journal, and say exactly what was lost (e2fsck's exit code 1).

The rule it enforces (recovery.py): sequence numbers only grow, so after a repair no discarded
transaction can ever be chained into a later replay. A repair is refused while a daemon holds the
image. It repairs the journal only; fsck then reports whatever else is wrong.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from daxfs.engine import format as fmt
from daxfs.engine.pmem import PmemRegion, lock_image
from daxfs.engine.recovery import lost_commits, replay, scan
from daxfs.engine.superblock import check_geometry, read_superblock


@dataclass
class Lost:
    seq: int
    block: int  # where its commit record is
    blocks: int  # metadata blocks it changed
    committed_ns: int


@dataclass
class RepairReport:
    path: str
    replayed: int = 0
    stop_reason: str = ""
    lost: list[Lost] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.lost)

    def lines(self) -> list[str]:
        if not self.lost:
            return [f"{self.path}: journal intact ({self.replayed} committed transactions replayed); nothing to repair"]
        out = [f"{self.path}: journal damaged ({self.stop_reason}); replayed the {self.replayed} committed "
               f"transactions before it, discarded {len(self.lost)} after it:"]
        for x in self.lost:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x.committed_ns / 1e9))
            out.append(f"  lost transaction {x.seq} (commit record at block {x.block}, {x.blocks} metadata blocks, "
                       f"committed {when})")
        out.append("the journal was reset: no discarded transaction can come back")
        return out


def repair_journal(path: str) -> RepairReport:
    lock = lock_image(path)
    try:
        region = PmemRegion(path)
        try:
            sb = read_superblock(region)
            check_geometry(sb, region)
            result = scan(region, sb)
            report = RepairReport(path, len(result.transactions), result.stop_reason)
            for seq, blk in lost_commits(region, sb, result):
                raw = region.load(blk * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)
                nblocks, _, _, when = fmt.COMMIT.unpack_from(raw, fmt.HEADER_SIZE)
                report.lost.append(Lost(seq, blk, nblocks, when))
            replay(region, sb, discard_lost=True)
        finally:
            region.close()
    finally:
        os.close(lock)
    return report
