"""`daxfs demo`'s sentences are computed from what it measured (daxfs/cli/demo.py)."""

from __future__ import annotations

from daxfs.cli.demo import NEW_BLOCKS, SYNCED_BLOCKS, ModeResult, compare, conclusions


def result(name, new_us, over_us, new_kept, over_kept=SYNCED_BLOCKS, synced=SYNCED_BLOCKS) -> ModeResult:
    return ModeResult(name, [new_us] * 8, [over_us] * 8, new_kept, synced, over_kept)


def test_a_difference_within_noise_is_called_so_and_a_real_one_is_measured():
    assert "within this machine's noise" in compare([100.0], [110.0])
    assert compare([87.0], [161.0]).startswith("1.9x as much (87 vs 161 µs)")


def test_the_conclusions_follow_the_figures():
    text = " ".join(conclusions(result("normal", 90, 87, 0), result("map_sync", 300, 161, NEW_BLOCKS)))
    assert f"map_sync kept every acknowledged write ({NEW_BLOCKS}/{NEW_BLOCKS}" in text
    assert f"Normal mode kept 0/{NEW_BLOCKS}" in text
    assert "overwriting a stable block costs 1.9x as much (87 vs 161 µs)" in text  # not "the same"
    text = " ".join(conclusions(result("normal", 90, 100, NEW_BLOCKS), result("map_sync", 300, 101, 60)))
    assert "breaks its guarantee" in text and "within this machine's noise" in text
    assert "a periodic commit happened to land before the kill" in text
