"""Named crash-injection points.

Engine and daemon call `hit("name")` at the places where a crash is most interesting. Nothing happens
unless a point is armed: `arm("commit.records_written", 3, action)` runs `action` on its third pass. The
daemon arms points from `-o crash_at=POINT:N` with an action that SIGKILLs itself; unit tests arm them
with an action that raises PowerCut, leaving in the image whatever had been stored.
"""

from __future__ import annotations

from typing import Callable

POINTS: dict[str, str] = {
    "alloc.before_zero": "a block is allocated, its zeroing not yet stored",
    "write.half_copied": "half of a write's data is stored into pmem",
    "write.before_ack": "a write is stored (and committed if it had to be), not yet acknowledged",
    "fault.before_reply": "a write fault is served (committed if MAP_SYNC needs it), the page not yet writable",
    "commit.ordered_data": "new data blocks of the transaction are persisted, no journal record written",
    "commit.records_written": "journal descriptor and block images are persisted, commit record not written",
    "commit.done": "the commit record is persisted, the caller not yet told",
    "checkpoint.half_written": "half of the checkpointed blocks are written to their home locations",
    "checkpoint.before_tail": "home locations persisted, journal tail in the superblock not yet advanced",
    "replay.applied": "replay wrote the committed blocks home, tail not yet advanced",
}


class PowerCut(BaseException):
    """Raised by tests at an armed point; BaseException so that no `except Exception` swallows it."""


_armed: dict[str, list] = {}
passes: dict[str, int] = {}  # how often each point was passed: a crash campaign learns from a dry run
                             # which passes exist, then crashes at each


def arm(name: str, nth: int, action: Callable[[str], None]) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; see `daxfs crashtest --list-points`")
    _armed[name] = [nth, action]


def disarm_all() -> None:
    _armed.clear()


def hit(name: str) -> None:
    passes[name] = passes.get(name, 0) + 1
    slot = _armed.get(name)
    if slot is None:
        return
    slot[0] -= 1
    if slot[0] <= 0:
        del _armed[name]
        slot[1](name)
