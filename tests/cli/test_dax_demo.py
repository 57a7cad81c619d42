"""`daxfs demo faults`: the seed's six fault-latency cases beside the seed's numbers, then what MAP_SYNC keeps."""

from __future__ import annotations

import re

import pytest
from helpers import daxfs


pytestmark = pytest.mark.mount


def _demo_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if "daxfs-demo-faults-" in line]


def test_demo_faults_prints_the_six_cases_beside_the_seed_and_what_map_sync_kept(tmp_path):
    png = tmp_path / "faults.png"
    args = ["demo", "faults"]
    try:
        import matplotlib  # noqa: F401
        args += ["--png", str(png)]
    except ImportError:
        png = None
    p = daxfs(*args, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    out = re.sub(r"\s+", " ", p.stdout)
    for case in ("File preallocated, no background load no MAP_SYNC:", "File preallocated, no background load, MAP_SYNC:",
                 "File empty, no background load, no MAP_SYNC:", "File empty, no background load, MAP_SYNC:",
                 "File empty, background load, no MAP_SYNC:", "File empty, background load, MAP_SYNC:"):
        assert case in out
    assert out.count("min=") == 12  # ours and the seed's, six times
    assert "min=40 avg=124 max=242" in out and "64 - 127 us: 333" in out  # the seed's own
    for block in p.stdout.split("MAP_SYNC:")[1:7]:  # our column: 512 faults in its buckets
        ours = [re.match(r"  (\d+) - \d+ us: (\d+)", line) for line in block.splitlines()]  # left column
        assert sum(int(m.group(2)) for m in ours if m) == 512, block
    assert re.search(r"MAP_SYNC minus no MAP_SYNC, per fault \(average\): preallocated [+-]\d+ us( \(within noise\))? "
                     r"\(seed \+0\), empty [+-]\d+ us( \(within noise\))? \(seed \+102\)", out)
    assert "Synchronous page faults" in out and "Jan Kara" in out  # the seed is named
    kept = re.search(r"MAP_SYNC kept (\d+)/256 pages, the plain mapping kept (\d+)/256", out)
    assert kept and int(kept.group(1)) == 256 and int(kept.group(2)) < 256
    assert not _demo_mounts()
    if png is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
