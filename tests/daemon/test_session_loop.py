"""The daemon's own FUSE session loop (daxfs/daemon/session.py).

Without a mount: how a request's coroutine runs there. One that never suspends is done before the
loop reads the next request; one that awaits detach() finishes on a task of its own while the loop
goes on; one that suspends without detaching still finishes, with the loop waiting for it.

Through mounts: the loop is the one serving (stats), requests that wait for a commit detach (none
blocks the loop) and keep the MAP_SYNC guarantee under a SIGKILL, and DAXFS_SESSION_LOOP=pyfuse3
still gives pyfuse3's loop.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import trio
from helpers import BS, mounted, pattern, read_file

from daxfs.daemon import session
from daxfs.daemon.stats import DaemonStats


def loop_in(nursery) -> session.SessionLoop:
    loop = session.SessionLoop(shim=None, stats=DaemonStats())
    loop.nursery = nursery
    return loop


def test_a_request_that_never_suspends_is_done_when_run_eagerly_returns():
    done = []

    async def request():
        done.append("replied")

    async def main():
        async with trio.open_nursery() as nursery:
            loop = loop_in(nursery)
            # awaiting detach() on an ordinary task is a no-op too
            await session.detach()
            loop.run_eagerly(request())
            assert done == ["replied"]
            assert (loop.stats.detached_requests, loop.stats.blocking_requests, loop.pending) == (0, 0, [])

    trio.run(main)


def test_a_request_that_detaches_finishes_on_its_own_task_while_the_loop_goes_on():
    committed = trio.Event()
    log = []

    async def waits_for_a_commit(n):
        log.append(f"{n} started")
        await session.detach()
        await committed.wait()
        log.append(f"{n} replied")

    async def main():
        async with trio.open_nursery() as nursery:
            loop = loop_in(nursery)
            loop.run_eagerly(waits_for_a_commit(1))
            loop.run_eagerly(waits_for_a_commit(2))  # the loop was not held up by the first
            assert log == ["1 started", "2 started"]
            assert loop.stats.detached_requests == 2 and loop.pending == []
            await trio.sleep(0.01)
            assert log == ["1 started", "2 started"]  # both really wait
            committed.set()
        assert sorted(log[2:]) == ["1 replied", "2 replied"]

    trio.run(main)


def test_a_request_that_suspends_without_detaching_still_finishes_on_the_loops_task():
    log = []

    async def sleeps():
        await trio.sleep(0.01)
        log.append("replied")
        return 7

    async def cancelled():
        with trio.move_on_after(0.01):
            await trio.sleep(10)
        log.append("timed out")

    async def main():
        async with trio.open_nursery() as nursery:
            loop = loop_in(nursery)
            for request, said in ((sleeps, "replied"), (cancelled, "timed out")):
                loop.run_eagerly(request())  # as run() does: finished before the next request is read
                assert len(loop.pending) == 1 and log[-1:] != [said]
                await loop.finish_pending()
                assert log[-1] == said and loop.pending == []
            assert loop.stats.blocking_requests == 2

    trio.run(main)


def test_an_exception_in_a_request_is_logged_and_the_loop_goes_on(caplog):
    async def broken():
        raise RuntimeError("boom")

    async def main():
        async with trio.open_nursery() as nursery:
            loop = loop_in(nursery)
            loop.run_eagerly(broken())
            assert loop.pending == []

    trio.run(main)
    assert "got no reply" in caplog.text and "boom" in caplog.text


class FloodShim:
    """A session whose queue is never empty for `n` requests, then ends (stands in for fuseshim)."""

    def __init__(self, n: int) -> None:
        self.n, self.served = n, 0
        self.r, self.w = os.pipe()

    def session_fd(self) -> int:
        return self.r

    def serve_one(self) -> int:
        self.served += 1
        return 1 if self.served <= self.n else -1


def test_a_queue_that_never_empties_still_lets_the_other_tasks_run():
    """Detached requests, real faults, the control socket and the periodic commit are trio tasks
    beside the loop: a steady stream of requests must not keep them out (every BATCH requests)."""
    shim = FloodShim(10 * session.BATCH)
    seen = []

    async def other_task():
        while True:
            seen.append(shim.served)
            await trio.sleep(0)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await session.SessionLoop(shim, DaemonStats(), spin_us=0).run()
            nursery.cancel_scope.cancel()

    trio.run(main)
    during = [n for n in seen if 0 < n <= shim.n]
    assert len(during) >= 8, seen[:20]


# --- through mounts ---------------------------------------------------------------------------------
def sync_appends(path: str, n: int, seed: int) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        for i in range(n):
            assert os.write(fd, pattern(seed * 1000 + i, BS)) == BS
    finally:
        os.close(fd)


@pytest.mark.mount
def test_the_daemons_loop_serves_and_commit_waits_detach_and_keep_map_sync(tmp_path):
    """On an image on disk (tmp_path: not tmpfs) every commit is written on a worker thread, so each
    sync-mode append detaches. Two writers at once; then a SIGKILL: every acknowledged block is there."""
    n = 40
    with mounted(tmp_path, "map_sync") as m:
        ctx = multiprocessing.get_context("fork")
        writers = [ctx.Process(target=sync_appends, args=(m / f"f{w}", n, w)) for w in range(2)]
        for p in writers:
            p.start()
        for p in writers:
            p.join(60)
            assert p.exitcode == 0
        st = m.stats()
        assert st["session_loop"] == "daxfs"
        assert st["detached_requests"] >= n  # at least one writer's every append waited for a commit
        assert st["blocking_requests"] == 0
        pid = m.pid()
        os.kill(pid, signal.SIGKILL)
        m.crash(pid)
        m.mount()
        for w in range(2):
            assert read_file(m / f"f{w}") == b"".join(pattern(w * 1000 + i, BS) for i in range(n))


@pytest.mark.mount
def test_pyfuse3s_loop_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("DAXFS_SESSION_LOOP", "pyfuse3")  # the daemon inherits it
    with mounted(tmp_path) as m:
        sync_appends(m / "f", 4, 1)
        assert read_file(m / "f") == b"".join(pattern(1000 + i, BS) for i in range(4))
        st = m.stats()
        assert (st["session_loop"], st["detached_requests"]) == ("pyfuse3", 0)


def test_the_loop_serves_the_installed_pyfuse3_and_says_why_it_would_not(monkeypatch):
    assert session.unsupported() is None  # else every mount here would run pyfuse3.main()
    import pyfuse3
    monkeypatch.delattr(pyfuse3, "fuse_write_async")
    assert "has no fuse_write_async" in session.unsupported()
    monkeypatch.setattr(session, "version", lambda name: "4.0.0")
    assert session.unsupported() == "pyfuse3 4.0.0 (the session loop knows 3.x)"



@pytest.mark.mount
def test_the_loop_polls_for_the_next_request_unless_spin_is_0(tmp_path):
    for opts, polled in (("", True), ("spin=0", False)):
        with mounted(tmp_path, opts, name=f"spin{opts or 'default'}") as m:
            fd = os.open(m / "f", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                for i in range(300):
                    os.pwrite(fd, b"x" * BS, (i % 8) * BS)  # back to back, as a program's writes come
            finally:
                os.close(fd)
            assert (m.stats()["spin_hits"] > 0) == polled, opts
