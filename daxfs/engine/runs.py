"""Runs: block numbers and bit masks merged into (start, length) runs, the unit of msync and of
every bitmap search and report."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def block_runs(sorted_blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Adjacent block numbers merged into (first, count) runs: one msync each."""
    out: list[tuple[int, int]] = []
    for b in sorted_blocks:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a boolean array."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends)]
