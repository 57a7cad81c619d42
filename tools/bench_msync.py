#!/usr/bin/env python3
"""What durability costs: msync (PmemRegion.persist) and a whole engine commit, on tmpfs and on disk.

Measured, not asserted. The figures decide whether daxfs msyncs by default (durable=True).

  raw persist   store a 4 KiB or 64 KiB range into a mapped image, then time PmemRegion.persist() of it
                (msync MS_SYNC of the pages that cover it), durable=True vs durable=False (no msync).
  commit        create a file, write 4 KiB into it, time FileSystem.commit(), durable=True vs False.
  batch         create 1000 files with 256 bytes each, time the one FileSystem.commit() of them all:
                a commit persists every data range it exposes (commit.py I1), one msync per range.

Both are run on an image in /dev/shm (tmpfs: RAM) and on a disk-backed image (default /var/tmp; the
tool prints the file system type it found for each directory). Configurations are interleaved in
rounds so that a noisy neighbour on this shared machine hits all of them alike; each figure is the
median (and p90) over all samples of all rounds, and every ratio is against durable=False measured in
the same run on the same backing.

    .venv/bin/python tools/bench_msync.py                 # everything, defaults
    .venv/bin/python tools/bench_msync.py --reps 2000 --rounds 10
    .venv/bin/python tools/bench_msync.py --disk-dir /work/tmp --only raw

Every image it creates is deleted on exit, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import gc
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import click
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from daxfs.engine.fs import FileSystem  # noqa: E402
from daxfs.engine.mkfs import mkfs  # noqa: E402
from daxfs.engine.pmem import PmemRegion  # noqa: E402

PREFIX = "daxfs-bench-msync"
KiB, MiB = 1 << 10, 1 << 20

console = Console(width=None if sys.stdout.isatty() else 180)


# --- scratch images: always deleted ---------------------------------------------------------------
class Scratch:
    """Paths of images this run created; all unlinked on exit, whatever the exit."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def path(self, directory: str, tag: str) -> str:
        p = os.path.join(directory, f"{PREFIX}-{os.getpid()}-{tag}.img")
        self.paths.append(p)
        return p

    def __enter__(self) -> "Scratch":
        def stop(signum, frame):  # SIGTERM/SIGHUP: unwind through the finally blocks
            raise KeyboardInterrupt(f"signal {signum}")
        for s in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(s) is not signal.SIG_IGN:  # nohup stays nohup
                signal.signal(s, stop)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                console.print(f"[red]could not delete {p}: {e}")


def sweep_stale(directory: str) -> None:
    """Images left by an earlier run that was SIGKILLed (its pid is gone)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX + "-"):
            continue
        try:
            pid = int(name[len(PREFIX) + 1:].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(directory, name))
                console.print(f"[yellow]removed stale {os.path.join(directory, name)}")
            except OSError:
                pass


def fstype(directory: str) -> str:
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", directory], capture_output=True,
                             text=True, timeout=10).stdout.split()
        return "/".join(out) if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def git_head() -> str:
    """The commit measured, and whether daxfs/ had uncommitted changes (other people edit it live)."""
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "daxfs"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes in daxfs/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- statistics ------------------------------------------------------------------------------------
@dataclass
class Samples:
    ns: list[int] = field(default_factory=list)

    def add(self, t: int) -> None:
        self.ns.append(t)

    def median_us(self) -> float:
        return float(np.median(self.ns)) / 1e3 if self.ns else float("nan")

    def p90_us(self) -> float:
        return float(np.percentile(self.ns, 90)) / 1e3 if self.ns else float("nan")

    def max_us(self) -> float:
        return max(self.ns) / 1e3 if self.ns else float("nan")


def us(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def ratio(a: float, b: float) -> str:
    if b != b or a != a or b <= 0:
        return "-"
    return f"{a / b:,.1f}x" if a / b < 1000 else f"{a / b:,.0f}x"


def repro(*args: str) -> str:
    return " ".join([".venv/bin/python", "tools/bench_msync.py", *[shlex.quote(a) for a in args]])


# --- raw persist -----------------------------------------------------------------------------------
def prefill(path: str, size: int) -> None:
    """Write the whole image once and fsync: blocks allocated, so msync measures writeback, not
    first-time block allocation of a sparse file (the commit bench below does use sparse images)."""
    chunk = b"\x5a" * MiB
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def bench_raw(scratch: Scratch, backings: dict[str, str], sizes: list[int], reps: int, rounds: int,
              image_mib: int) -> dict[tuple[str, int, bool], tuple[Samples, Samples]]:
    """(backing, range, durable) -> (persist samples, store samples)."""
    image = image_mib * MiB
    regions: dict[tuple[str, bool], PmemRegion] = {}
    out: dict[tuple[str, int, bool], tuple[Samples, Samples]] = {}
    try:
        for name, d in backings.items():
            p = scratch.path(d, f"raw-{name}")
            prefill(p, image)
            for durable in (True, False):
                regions[(name, durable)] = PmemRegion(p, durable=durable)
        rng = random.Random(1)
        per_round = max(1, reps // rounds)
        payload = {n: [np.full(n, v, dtype=np.uint8) for v in (1, 2)] for n in sizes}
        keys = [(name, n, durable) for name in backings for n in sizes for durable in (True, False)]
        for k in keys:
            out[k] = (Samples(), Samples())
        with console.status("raw persist") as status:
            for r in range(rounds):
                order = keys[:]
                rng.shuffle(order)
                for name, n, durable in order:
                    status.update(f"raw persist: round {r + 1}/{rounds}, {name} {n // KiB} KiB "
                                  f"durable={durable}")
                    reg = regions[(name, durable)]
                    ps, ss = out[(name, n, durable)]
                    for i in range(per_round + (3 if r == 0 else 0)):
                        off = rng.randrange(0, image // (64 * KiB)) * 64 * KiB
                        data = payload[n][i & 1]
                        t0 = time.perf_counter_ns()
                        reg.store(off, data)
                        t1 = time.perf_counter_ns()
                        reg.persist(off, n)
                        t2 = time.perf_counter_ns()
                        if r == 0 and i < 3:
                            continue  # warm-up
                        ss.add(t1 - t0)
                        ps.add(t2 - t1)
    finally:
        for reg in regions.values():
            reg.close()
    return out


# --- engine commit ---------------------------------------------------------------------------------
def bench_commit(scratch: Scratch, backings: dict[str, str], reps: int, rounds: int, image_mib: int,
                 files_per_commit: int = 1, file_bytes: int = 4096, warmup: int = 10, tag: str = "commit"
                 ) -> dict[tuple[str, bool], tuple[Samples, float]]:
    """(backing, durable) -> (commit samples, msyncs per commit). Each sample: create files_per_commit
    files and write file_bytes into each (untimed), then time fs.commit()."""
    systems: dict[tuple[str, bool], FileSystem] = {}
    state: dict[tuple[str, bool], list[int]] = {}
    out: dict[tuple[str, bool], tuple[Samples, float]] = {}
    paths: list[str] = []
    data = b"\xc3" * file_bytes
    try:
        for name, d in backings.items():
            for durable in (True, False):
                p = scratch.path(d, f"{tag}-{name}-{'d' if durable else 'n'}")
                paths.append(p)
                mkfs(p, image_mib * MiB, force=True)
                fs = FileSystem.open(p, durable=durable)
                systems[(name, durable)] = fs
                dirs = [fs.mkdir(1, b"d%d" % i, 0o755, 0, 0).ino for i in range(8 if files_per_commit == 1 else 64)]
                fs.commit()
                state[(name, durable)] = dirs
        keys = list(systems)
        counts: dict[tuple[str, bool], list[int]] = {k: [0, 0] for k in keys}
        serial = 0

        def one(k: tuple[str, bool]) -> int:
            nonlocal serial
            fs = systems[k]
            dirs = state[k]
            for _ in range(files_per_commit):
                serial += 1
                ino = fs.create(dirs[serial % len(dirs)], b"f%07d" % serial, 0o644, 0, 0).ino
                fs.write(ino, 0, data)
            t0 = time.perf_counter_ns()
            fs.commit()
            return time.perf_counter_ns() - t0

        # Warm-up, counting msyncs on the way (the counting wrapper is not in the timed runs).
        for k in keys:
            reg = systems[k].region
            real = reg.persist

            def counting(off, n, real=real, c=counts[k], durable=reg.durable):
                if durable and n > 0:
                    c[0] += 1
                real(off, n)
            reg.persist = counting
            for _ in range(warmup):
                one(k)
                counts[k][1] += 1
            del reg.persist
        rng = random.Random(2)
        per_round = max(1, reps // rounds)
        samples = {k: Samples() for k in keys}
        with console.status(tag) as status:
            for r in range(rounds):
                order = keys[:]
                rng.shuffle(order)
                for k in order:
                    status.update(f"{tag}: round {r + 1}/{rounds}, {k[0]} durable={k[1]}")
                    for _ in range(per_round):
                        samples[k].add(one(k))
        for k in keys:
            out[k] = (samples[k], counts[k][0] / max(1, counts[k][1]))
    finally:
        for fs in systems.values():
            try:
                fs.close()
            except Exception as e:  # noqa: BLE001 - report, keep cleaning up
                console.print(f"[red]close failed: {e!r}")
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass
    return out


def commit_table(title: str, res: dict[tuple[str, bool], tuple[Samples, float]], backings: dict[str, str],
                 cmd: str, unit: str = "µs") -> Table:
    t = Table(title=title, title_justify="left")
    for c in ("backing", "durable", "msyncs/commit", f"median {unit}", f"p90 {unit}", f"max {unit}",
              "vs durable=False"):
        t.add_column(c, justify="left" if c in ("backing", "durable") else "right")
    t.add_column("reproduce", overflow="fold")
    scale = 1.0 if unit == "µs" else 1e-3
    for name in backings:
        base = res[(name, False)][0].median_us()
        for durable in (True, False):
            s, per = res[(name, durable)]
            t.add_row(name, str(durable), f"{per:.1f}", us(s.median_us() * scale), us(s.p90_us() * scale),
                      us(s.max_us() * scale), ratio(s.median_us(), base), cmd)
    return t


# --- main ------------------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--shm-dir", default="/dev/shm", show_default=True, help="tmpfs directory")
@click.option("--disk-dir", default="/var/tmp", show_default=True, help="disk-backed directory")
@click.option("--reps", default=2000, show_default=True, help="raw persist samples per configuration")
@click.option("--commit-reps", default=500, show_default=True, help="commit samples per configuration")
@click.option("--rounds", default=5, show_default=True, help="interleaved rounds the samples are split into")
@click.option("--raw-image", default=64, show_default=True, help="raw persist image size, MiB")
@click.option("--commit-image", default=256, show_default=True, help="commit bench image size, MiB")
@click.option("--batch", default=1000, show_default=True, help="files per commit in the batch part")
@click.option("--batch-commits", default=20, show_default=True, help="batch commit samples per configuration")
@click.option("--batch-image", default=1024, show_default=True, help="batch bench image size, MiB")
@click.option("--only", type=click.Choice(["raw", "commit", "batch"]), default=None, help="run one part only")
def main(shm_dir: str, disk_dir: str, reps: int, commit_reps: int, rounds: int, raw_image: int,
         commit_image: int, batch: int, batch_commits: int, batch_image: int, only: str | None) -> None:
    """Cost of msync (PmemRegion.persist) and of an engine commit, tmpfs vs disk, durable vs not."""
    backings = {"tmpfs": shm_dir, "disk": disk_dir}
    types = {name: fstype(d) for name, d in backings.items()}
    console.print(f"[bold]bench_msync[/]  {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, commit {git_head()}; "
                  + ", ".join(f"{n}: {backings[n]} ({types[n]})" for n in backings))
    if types["tmpfs"].split("/")[0] != "tmpfs":
        console.print(f"[yellow]warning: {shm_dir} is not tmpfs")
    if types["disk"].split("/")[0] in ("tmpfs", "ramfs"):
        console.print(f"[yellow]warning: {disk_dir} is {types['disk']}, not disk-backed")
    common = [f"--rounds={rounds}"]
    if shm_dir != "/dev/shm":
        common.append(f"--shm-dir={shm_dir}")
    if disk_dir != "/var/tmp":
        common.append(f"--disk-dir={disk_dir}")
    for d in backings.values():
        sweep_stale(d)
    gc.collect()
    with Scratch() as scratch:
        if only in (None, "raw"):
            sizes = [4 * KiB, 64 * KiB]
            res = bench_raw(scratch, backings, sizes, reps, rounds, raw_image)
            t = Table(title=f"PmemRegion.persist (msync) of a freshly stored range; {reps} samples/row, "
                            f"{rounds} rounds, {raw_image} MiB prefilled image", title_justify="left")
            for c in ("backing", "range", "durable", "persist med µs", "persist p90 µs", "persist max µs",
                      "store med µs", "store+persist vs durable=False"):
                t.add_column(c, justify="right" if "µs" in c or "vs" in c else "left")
            t.add_column("reproduce", overflow="fold")
            for name in backings:
                for n in sizes:
                    base_p, base_s = res[(name, n, False)]
                    base = base_p.median_us() + base_s.median_us()
                    for durable in (True, False):
                        ps, ss = res[(name, n, durable)]
                        t.add_row(name, f"{n // KiB} KiB", str(durable), us(ps.median_us()), us(ps.p90_us()),
                                  us(ps.max_us()), us(ss.median_us()),
                                  ratio(ps.median_us() + ss.median_us(), base),
                                  repro("--only=raw", f"--reps={reps}", f"--raw-image={raw_image}", *common))
            console.print(t)
        if only in (None, "commit"):
            res2 = bench_commit(scratch, backings, commit_reps, rounds, commit_image)
            console.print(commit_table(
                f"FileSystem.commit() after create + 4 KiB write; {commit_reps} samples/row, {rounds} rounds, "
                f"{commit_image} MiB sparse image", res2, backings,
                repro("--only=commit", f"--commit-reps={commit_reps}", f"--commit-image={commit_image}", *common)))
        if only in (None, "batch"):
            res3 = bench_commit(scratch, backings, batch_commits, rounds, batch_image, files_per_commit=batch,
                                file_bytes=256, warmup=2, tag="batch")
            console.print(commit_table(
                f"FileSystem.commit() of a batch: {batch} files created, 256 bytes written into each; "
                f"{batch_commits} samples/row, {rounds} rounds, {batch_image} MiB sparse image", res3, backings,
                repro("--only=batch", f"--batch={batch}", f"--batch-commits={batch_commits}",
                      f"--batch-image={batch_image}", *common), unit="ms"))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("[red]interrupted; images deleted")
        sys.exit(130)
