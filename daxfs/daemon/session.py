"""The FUSE session loop: read a request, run it, reply; then the next, with no task switch between.

pyfuse3.main() runs each request in one of several trio worker tasks that pass a trio.Lock between
them around every wait for /dev/fuse: three or four task switches per request, about half of a small
request's time in the daemon (docs/design.md, "The session loop"). Nearly every daxfs request needs
no switch at all: its engine calls are synchronous, and it awaits only a commit, and most often not
even that (a small commit on a RAM image is written inline). So this loop, one trio task, reads the
session's non-blocking descriptor through the shim (fuseshim.c: daxfs_shim_serve_one) until it is
empty, and waits for it only then.

How a request runs here. libfuse calls pyfuse3's C handler, which makes the coroutine that runs the
operation and replies (pyfuse3's fuse_*_async) and leaves it for pyfuse3's loop to await. install()
wraps those coroutine functions (pyfuse3 looks them up as module globals on every call), so the
coroutine is run at once, on this task, from inside the handler (run_eagerly):
  * it returns without suspending (the common case): the reply is already written;
  * it awaits detach() (Committer.wait_commit does, before waiting for a commit): the rest of the
    request goes to a task of its own, and the loop reads the next request, as pyfuse3's spare worker
    would: the commit then serves every request that came meanwhile (group commit);
  * it suspends on anything else (it was not written to detach): it still runs correctly, on the
    loop's task, which waits for it as pyfuse3's worker would, serving nothing else meanwhile.
The order of requests, and that no two interleave inside one metadata change, is as under pyfuse3.
Every BATCH requests served back to back the loop lets trio's other tasks run (detached requests,
real faults, the control socket, the periodic commit). When the descriptor is empty it polls it for
`-o spin` microseconds (default 50) before it sleeps (_next_soon says why).

Needs the shim (it owns the session) and pyfuse3 3.x, whose handlers make their coroutines as above
(unsupported() says why not). Without them, or with DAXFS_SESSION_LOOP=pyfuse3 in the daemon's
environment (to compare), the daemon runs pyfuse3.main() as before.
"""

from __future__ import annotations

import logging
import os
import select
import time
import types
from importlib.metadata import version

import pyfuse3
import trio

log = logging.getLogger("daxfs")

BATCH = 16  # requests served back to back before the other trio tasks get a turn
_DETACH = object()  # what detach() yields: "finish me on a task of my own"
_eager = False  # True while run_eagerly runs a request on the loop's task


class _Detach:
    def __await__(self):
        if _eager:
            yield _DETACH


def detach() -> _Detach:
    """Await before a request waits (for a commit): under this loop the rest of the request runs on
    a task of its own, so that the loop goes on reading requests. Anywhere else, a no-op. Not inside
    a cancel scope or nursery the request opened itself: those belong to the task that opened them."""
    return _Detach()


@types.coroutine
def _resume(coro, trap=None, started=False):
    """Go on with `coro` as the current task, as `await coro` would: it has just yielded `trap` to
    this task (started), or waits to be resumed with None (it detached)."""
    if not started:
        try:
            trap = coro.send(None)
        except StopIteration as stop:
            return stop.value
    while True:
        try:
            value = yield trap
        except BaseException as e:  # trio's cancellation and the like: the coroutine's to handle
            step, value = coro.throw, e
        else:
            step = coro.send
        try:
            trap = step(value)
        except StopIteration as stop:
            return stop.value


async def _finish(coro) -> None:
    await _resume(coro)


# Request coroutines that every FUSE file system gets (pyfuse3 makes the others the same way).
_CORE = ("fuse_lookup_async", "fuse_getattr_async", "fuse_write_async", "fuse_read_async", "fuse_open_async")


def unsupported() -> str | None:
    """Why this loop cannot serve the installed pyfuse3 (None: it can)."""
    v = version("pyfuse3")
    if v.split(".")[0] != "3":
        return f"pyfuse3 {v} (the session loop knows 3.x)"
    missing = [name for name in _CORE if not callable(getattr(pyfuse3, name, None))]
    return f"pyfuse3 {v} has no {', '.join(missing)}" if missing else None


class SessionLoop:
    def __init__(self, shim, stats, spin_us: int = 0) -> None:
        self.shim = shim
        self.stats = stats
        self.spin = spin_us / 1e6
        self.nursery: trio.Nursery | None = None
        self.pending: list = []  # (coroutine, trap): requests that suspended without detaching
        stats.session_loop = "daxfs"

    def run_eagerly(self, coro) -> None:
        global _eager
        _eager = True
        try:
            trap = coro.send(None)
        except StopIteration:
            return
        except BaseException:  # pyfuse3's own reply code failed: nothing else can report it
            log.exception("a FUSE request failed outside its handler; it got no reply")
            return
        finally:
            _eager = False
        if trap is _DETACH:
            self.stats.detached_requests += 1
            self.nursery.start_soon(_finish, coro)
        else:
            self.stats.blocking_requests += 1
            self.pending.append((coro, trap))

    async def finish_pending(self) -> None:
        """Wait, on the loop's task, for a request that suspended it without detaching."""
        coro, trap = self.pending.pop()
        await _resume(coro, trap, started=True)

    def install(self, ops) -> None:
        """Route pyfuse3's request coroutines through run_eagerly (and forget, which pyfuse3 calls on
        the operations object itself)."""
        for name, fn in list(vars(pyfuse3).items()):
            if name.startswith("fuse_") and name.endswith("_async"):
                setattr(pyfuse3, name, self._eager_fn(fn))
        ops.forget = self._eager_fn(ops.forget)

    def _eager_fn(self, fn):
        def start(*args):
            self.run_eagerly(fn(*args))
        return start

    def _next_soon(self, poller) -> bool:
        """Poll for the next request for up to `spin` seconds, yielding the CPU between looks: a
        workload on this CPU runs at once, and one on the other CPU finds this one awake. On these
        2-vCPU virtual machines a wakeup across CPUs costs ~50 µs (a 4 KiB pwrite: 76 µs across CPUs
        sleeping, 34 spinning, 22 on one CPU). Trio's other tasks (real faults, the control socket)
        wait meanwhile, at most `spin`."""
        deadline = time.perf_counter() + self.spin
        while time.perf_counter() < deadline:
            os.sched_yield()
            if poller.poll(0):
                self.stats.spin_hits += 1
                return True
        return False

    async def run(self) -> None:
        """Serve until the session ends (unmount, pyfuse3.terminate())."""
        fd = self.shim.session_fd()
        os.set_blocking(fd, False)
        serve_one = self.shim.serve_one
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            pyfuse3.trio_token = trio.lowlevel.current_trio_token()
            try:
                served = 0  # since the loop last let trio's other tasks run
                while True:
                    r = serve_one()
                    if r > 0:
                        while self.pending:
                            await self.finish_pending()
                        served += 1
                        if served >= BATCH:  # a steady stream must not starve the other tasks
                            served = 0
                            await trio.lowlevel.checkpoint()
                        continue
                    if r < 0:
                        if r == -1:
                            return  # the session ended
                        raise OSError(-r, "reading /dev/fuse: " + os.strerror(-r))
                    if self.spin and self._next_soon(poller):
                        continue
                    served = 0
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    except trio.ClosedResourceError:
                        return  # pyfuse3.terminate()
            finally:
                pyfuse3.trio_token = None
