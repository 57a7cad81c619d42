"""`daxfs demo faults`: the MAP_SYNC cover letter's experiment, redone on daxfs, beside its own numbers.

Jan Kara timed the page faults of 512 pages (the first store to each) in six cases: the file
preallocated or empty, with MAP_SYNC or without, with a file copy running in the background or not.
This does the same through daxfs.dax on a fresh mount on tmpfs, where the faults are real
(userfaultfd: the first store to each page, made by compiled code through ctypes.memset, stops in the
kernel until the daemon has answered), prints each histogram in the letter's format
next to the letter's own, says in one line what MAP_SYNC cost, and then shows what it buys: a SIGKILL
of the daemon right after the last store, a remount, and the pages each mapping kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from rich.console import Console

from daxfs.daemon import mount as daemon
from daxfs.dax.protocol import read_stats
from daxfs.daemon.options import parse_options
from daxfs.daemon.proc import wait_exit
from daxfs.engine.mounttab import mount_entry
from daxfs import dax
from daxfs.engine.errors import DaxfsError
from daxfs.engine.mkfs import mkfs
from daxfs.daemon.stats import Histogram

PAGES = 512
PAGE = dax.PAGE
LOAD_FILE = 32 << 20  # what the background copy copies, over and over
KEEP_PAGES = 256  # pages stored before the SIGKILL

# "The seed": the document daxfs was made from, the cover letter of the Linux patch series that added
# MAP_SYNC. Its numbers were measured on ext4 over a ramdisk (no real pmem), Linux 4.14-rc4.
SEED = 'the cover letter of "dax, ext4, xfs: Synchronous page faults" (v6, Jan Kara, 2017)'
SEED_SHORT = "the letter (Linux 4.14, ext4 on a ramdisk)"
NOISE = 1.25  # averages closer than this factor are within this shared machine's noise


@dataclass
class Scenario:
    title: str  # the cover letter's own words
    prealloc: bool
    sync: bool
    load: bool
    seed: tuple[int, int, int, list[tuple[str, int]]]  # min, avg, max, buckets, as the letter printed them
    ours: Histogram = field(default_factory=Histogram)
    samples: list[float] = field(default_factory=list)  # seconds

    @property
    def avg_us(self) -> float:
        return statistics.fmean(self.samples) * 1e6


def scenarios() -> list[Scenario]:
    return [
        Scenario("File preallocated, no background load no MAP_SYNC", True, False, False,
                 (9, 10, 46, [("8 - 15 us", 508), ("16 - 31 us", 3), ("32 - 63 us", 1)])),
        Scenario("File preallocated, no background load, MAP_SYNC", True, True, False,
                 (9, 10, 47, [("8 - 15 us", 508), ("16 - 31 us", 2), ("32 - 63 us", 2)])),
        Scenario("File empty, no background load, no MAP_SYNC", False, False, False,
                 (21, 22, 70, [("16 - 31 us", 506), ("32 - 63 us", 5), ("64 - 127 us", 1)])),
        Scenario("File empty, no background load, MAP_SYNC", False, True, False,
                 (40, 124, 242, [("32 - 63 us", 1), ("64 - 127 us", 333), ("128 - 255 us", 178)])),
        Scenario("File empty, background load, no MAP_SYNC", False, False, True,
                 (21, 23, 67, [("16 - 31 us", 507), ("32 - 63 us", 4), ("64 - 127 us", 1)])),
        Scenario("File empty, background load, MAP_SYNC", False, True, True,
                 (94, 112, 181, [("64 - 127 us", 489), ("128 - 255 us", 23)])),
    ]


# The background load: a plain file copy through the mount, in another process, until stopped.
_COPY = """
import os, sys
src, dst = sys.argv[1], sys.argv[2]
buf = bytearray(1 << 20)
while True:
    with open(src, "rb", buffering=0) as i, open(dst, "wb", buffering=0) as o:
        while n := i.readinto(buf):
            o.write(memoryview(buf)[:n])
    os.unlink(dst)
"""


@contextlib.contextmanager
def background_copy(mnt: str, on: bool):
    if not on:
        yield
        return
    src = os.path.join(mnt, "load.src")
    if not os.path.exists(src):
        with open(src, "wb") as f:
            f.write(os.urandom(1 << 20) * (LOAD_FILE >> 20))
    p = subprocess.Popen([sys.executable, "-c", _COPY, src, os.path.join(mnt, "load.dst")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # let it get going
        yield
    finally:
        p.kill()
        p.wait()


def prepare(path: str, prealloc: bool, pages: int) -> None:
    """Preallocated: every block written and committed, so its faults change no metadata at all.
    Empty: the size set (truncate), not a block allocated. Both committed before the mapping."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if prealloc:
            os.pwrite(fd, bytes(pages * PAGE), 0)
        else:
            os.ftruncate(fd, pages * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(mnt: str, n: int, sc: Scenario) -> bool:
    """Time the first store to each page: one write fault each, as the letter's test did. A store
    from compiled code where the faults are real, through the mapping's method where they are
    explicit. Returns whether they were real."""
    path = os.path.join(mnt, f"faults{n}")
    prepare(path, sc.prealloc, PAGES)
    flags = dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC if sc.sync else dax.MAP_SHARED
    with background_copy(mnt, sc.load), dax.mmap(path, PAGES * PAGE, flags) as m:
        clock = time.perf_counter
        if m.real:
            def store(p: int) -> None:
                ctypes.memset(m.address + p * PAGE, 1, 1)
        else:
            def store(p: int) -> None:
                m[p * PAGE] = 1
        for p in range(PAGES):
            t0 = clock()
            store(p)
            dt = clock() - t0
            sc.ours.add(dt)
            sc.samples.append(dt)
        return m.real


def crash_contrast(image: str, mnt: str, quiet) -> tuple[int, int]:
    """Two empty files on the same mount (commit=60): `sync` mapped with MAP_SYNC, `plain` without.
    Store into every page of `sync`, then of `plain`; SIGKILL the daemon the moment the last store
    returned; remount; count the pages that hold what was stored."""
    data = [bytes([i % 251 + 1]) * PAGE for i in range(KEEP_PAGES)]
    paths = [os.path.join(mnt, name) for name in ("sync", "plain")]
    for path in paths:
        prepare(path, False, KEEP_PAGES)
    maps = [dax.mmap(paths[0], KEEP_PAGES * PAGE, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC),
            dax.mmap(paths[1], KEEP_PAGES * PAGE, dax.MAP_SHARED)]
    pid = read_stats(mnt)["pid"]
    for m in maps:  # plain last: a later MAP_SYNC commit would take plain's allocations along
        for p in range(KEEP_PAGES):
            m[p * PAGE:(p + 1) * PAGE] = data[p]
    os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 5)
    for m in maps:
        m.close()
    daemon.unmount(mnt, quiet, lazy=True)
    mount(image, mnt, "commit=60,fault_around=1", quiet)
    kept = []
    for path in paths:
        with open(path, "rb") as f:
            got = f.read()
        kept.append(sum(got[p * PAGE:(p + 1) * PAGE] == data[p] for p in range(KEEP_PAGES)))
    return kept[0], kept[1]


def mount(image: str, mnt: str, options: str, quiet) -> None:
    if daemon.start_background(image, mnt, parse_options([options, f"log={image}.log"]), quiet) != 0:
        raise DaxfsError(f"mount failed, see {image}.log")


# --- output -------------------------------------------------------------------------------------------
COL = 36


def side_by_side(sc: Scenario) -> list[str]:
    mn, avg, mx, buckets = sc.seed
    left = sc.ours.lines()
    right = [f"min={mn} avg={avg} max={mx}"] + [f"{label}: {n}" for label, n in buckets]
    rows = [f"  {'daxfs, this run':<{COL}}{SEED_SHORT}"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        rows.append(f"  {a:<{COL}}{b}")
    return rows


PAIRS = (("preallocated", 0, 1), ("empty", 2, 3), ("empty under load", 4, 5))


def cost_line(scs: list[Scenario]) -> str:
    """What MAP_SYNC adds per fault, average against average: the letter printed averages only."""
    parts = []
    for label, a, b in PAIRS:
        plain, sync = scs[a], scs[b]
        diff = sync.avg_us - plain.avg_us
        noise = " (within noise)" if 1 / NOISE < sync.avg_us / plain.avg_us < NOISE else ""
        parts.append(f"{label} {diff:+.0f} us{noise} (seed {sync.seed[1] - plain.seed[1]:+d})")
    return "MAP_SYNC minus no MAP_SYNC, per fault (average): " + ", ".join(parts)


def draw(scs: list[Scenario], png: str) -> None:
    """Six panels on one scale: fault counts per latency bucket, daxfs beside the letter, log counts so
    that the tails show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def seed_buckets(sc: Scenario) -> dict[int, int]:
        return {max(0, int(label.split()[0]).bit_length() - 1): n for label, n in sc.seed[3]}

    every = [k for sc in scs for k in list(sc.ours.buckets) + list(seed_buckets(sc))]
    ks = list(range(min(every), max(every) + 1))  # one x axis for all six panels
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True, sharey=True)
    for ax, sc in zip(axes.flat, scs):
        seed = seed_buckets(sc)
        ax.bar([k - 0.2 for k in ks], [sc.ours.buckets.get(k, 0) for k in ks], width=0.4, color="tab:blue",
               label=f"daxfs, this run (avg {sc.avg_us:.0f} us)")
        ax.bar([k + 0.2 for k in ks], [seed.get(k, 0) for k in ks], width=0.4, color="tab:orange",
               label=f"the letter (avg {sc.seed[1]} us)")
        ax.set_yscale("log")
        ax.set_ylim(0.8, 1000)
        ax.set_title(sc.title, fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xticks(ks, [f"{0 if k == 0 else 1 << k}-{(1 << (k + 1)) - 1}" for k in ks], rotation=45, fontsize=8)
        ax.set_xlabel("latency of one page fault, microseconds (power-of-two buckets, as the letter printed)")
    for ax in axes[:, 0]:
        ax.set_ylabel("faults, of 512 (log scale)")
    fig.suptitle("Page-fault latency, 512 pages per case: daxfs (FUSE daemon, faults served through userfaultfd)\n"
                 f"beside {SEED}, measured on ext4 over a ramdisk", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(png, dpi=100)


def main(png: str | None = None, console: Console | None = None) -> None:
    console = console or Console(highlight=False, soft_wrap=not sys.stdout.isatty())  # piped: no hard breaks
    if png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DaxfsError("--png needs matplotlib: pip install 'daxfs[plot]'") from None
    scs = scenarios()
    quiet = lambda line: None  # noqa: E731
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="daxfs-demo-faults-", dir=shm) as wd:
        image, mnt = os.path.join(wd, "pm.img"), os.path.join(wd, "mnt")
        os.mkdir(mnt)
        mkfs(image, 256 << 20)
        mount(image, mnt, "commit=60,fault_around=1", quiet)  # one fault per page, as the letter's kernel
        try:
            for n, sc in enumerate(scs):
                with console.status(f"{sc.title} ..."):
                    real = measure(mnt, n, sc)
            with console.status("SIGKILL after the last store, remount ..."):
                kept_sync, kept_plain = crash_contrast(image, mnt, quiet)
        finally:
            if mount_entry(mnt) is not None:
                daemon.unmount(mnt, quiet, lazy=True)
    report(console, scs, kept_sync, kept_plain, real)
    if png is not None:
        draw(scs, png)
        console.print(f"\nhistograms drawn in {png}")


def report(console: Console, scs: list[Scenario], kept_sync: int, kept_plain: int, real: bool) -> None:
    out = console.print
    how = ("real page faults: each first store, a plain store from C (ctypes.memset), stops in the kernel until "
           "the daemon has answered through userfaultfd" if real else
           "explicit faults (userfaultfd was not available here): each first store goes through the mapping's "
           "own method, which asks the daemon over its socket")
    out("[bold]daxfs demo faults[/]: the latency of faulting 512 pages (the first store to each), the experiment "
        f"of {SEED}, redone on daxfs through daxfs.dax, with {how}. That letter measured ext4 on a ramdisk with "
        "Linux 4.14-rc4; its numbers are printed beside ours. All numbers in microseconds.\n"
        "A MAP_SYNC write fault into a block whose mapping is not yet committed waits for a journal commit "
        "before the page becomes writable; 'preallocated' blocks were written and committed beforehand, "
        "'empty' files have only their size. Background load: a 32 MiB file copied through the mount, "
        "over and over, by another process.\n", markup=True)
    for sc in scs:
        out(f"{sc.title}:", markup=False)
        for row in side_by_side(sc):
            out(row, markup=False)
        out("")
    out(cost_line(scs), markup=False)
    out(ratio_line(scs), markup=False)
    out("\n" + kept_line(kept_sync, kept_plain), markup=False)


def ratio_line(scs: list[Scenario]) -> str:
    ours = scs[3].avg_us / scs[2].avg_us
    seed = scs[3].seed[1] / scs[2].seed[1]
    verdict = ("within noise: no measurable cost here" if 1 / NOISE < ours < NOISE else
               f"{'less' if ours < seed else 'more'} than the kernel's, relatively")
    return (f"Empty file, MAP_SYNC / no MAP_SYNC (averages): {ours:.1f}x here, {seed:.1f}x in the letter ({verdict}). "
            "A fault that allocates waits for one journal commit, a small one (that fault's blocks); a fault "
            "that allocates nothing waits for nothing. Every daxfs fault is answered by a Python daemon in "
            "another process (two context switches and its Python), so each costs more than a kernel's.")


def kept_line(kept_sync: int, kept_plain: int) -> str:
    head = (f"What it buys: {KEEP_PAGES} pages of an empty file stored through a MAP_SYNC mapping, then {KEEP_PAGES} "
            "through a plain one, SIGKILL of the daemon the moment the last store returned, remount: ")
    sync = (f"MAP_SYNC kept {kept_sync}/{KEEP_PAGES} pages" + ("" if kept_sync == KEEP_PAGES else
            " (that breaks its guarantee: please report it)"))
    plain = (f"the plain mapping kept {kept_plain}/{KEEP_PAGES}" + (
        " (its blocks were allocated in a transaction that died with the daemon; the mount commits every 60 s)"
        if kept_plain < KEEP_PAGES else " (a commit happened to land before the kill)"))
    return head + sync + ", " + plain + "."
