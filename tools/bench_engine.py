#!/usr/bin/env python3
"""Engine benchmarks: commit latency vs image size, open + replay of 100k files, fsck of a full image.

Figures are measured and printed, not asserted (this machine is shared and noisy): medians and p90s
over several interleaved rounds, and ratios against a baseline measured in the same run. The targets
are printed next to the figures.

    .venv/bin/python tools/bench_engine.py            # all three, default sizes (`make bench`)
    .venv/bin/python tools/bench_engine.py commit     # a. commit latency, 1 GiB vs 64 GiB image
    .venv/bin/python tools/bench_engine.py replay     # b. open + replay of a 64 GiB image, 100k files
    .venv/bin/python tools/bench_engine.py fsck       # c. fsck of a full 1 GiB image
    .venv/bin/python tools/bench_engine.py replay --files 20000 --profile

Images are sparse files in --dir (default /dev/shm); every one is deleted on exit, error, Ctrl-C or
SIGTERM (and images of an earlier run that was SIGKILLed are swept at start).
"""

from __future__ import annotations

import cProfile
import errno
import gc
import importlib
import importlib.util
import os
import pstats
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, REPO)

from daxfs.engine.errors import FsError  # noqa: E402
from daxfs.engine.fs import FileSystem  # noqa: E402
from daxfs.engine.mkfs import mkfs  # noqa: E402
from daxfs.cli.sizes import SizeType  # noqa: E402

PREFIX = "daxfs-bench-engine"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BS = 4096

console = Console(width=None if sys.stdout.isatty() else 160)


# --- scratch images: always deleted ---------------------------------------------------------------
class Scratch:
    """Paths of images this run created; all unlinked on exit, whatever the exit."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.paths: list[str] = []

    def path(self, tag: str) -> str:
        p = os.path.join(self.directory, f"{PREFIX}-{os.getpid()}-{tag}.img")
        self.paths.append(p)
        return p

    def remove(self, p: str) -> None:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            console.print(f"[red]could not delete {p}: {e}")

    def __enter__(self) -> "Scratch":
        def stop(signum, frame):  # SIGTERM/SIGHUP: unwind through every finally block
            raise KeyboardInterrupt(f"signal {signum}")
        for s in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(s) is not signal.SIG_IGN:  # nohup stays nohup
                signal.signal(s, stop)
        sweep_stale(self.directory)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.paths:
            self.remove(p)


def sweep_stale(directory: str) -> None:
    """Images left by an earlier run that was SIGKILLed (its pid no longer exists)."""
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
                console.print(f"[yellow]removed stale image {os.path.join(directory, name)}")
            except OSError:
                pass


def sparse_copy(src: str, dst: str) -> None:
    """Copy only the data segments (SEEK_DATA/SEEK_HOLE): a 64 GiB sparse image stays sparse."""
    size = os.path.getsize(src)
    fi = os.open(src, os.O_RDONLY)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fo, size)
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fi, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data after pos
                        break
                    raise
                end = os.lseek(fi, start, os.SEEK_HOLE)
                os.lseek(fi, start, os.SEEK_SET)
                os.lseek(fo, start, os.SEEK_SET)
                left = end - start
                while left:
                    chunk = os.read(fi, min(left, 8 * MiB))
                    if not chunk:
                        break
                    os.write(fo, chunk)
                    left -= len(chunk)
                pos = end
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


# --- statistics and output -------------------------------------------------------------------------
@dataclass
class Samples:
    ns: list[int] = field(default_factory=list)

    def add(self, t: int) -> None:
        self.ns.append(t)

    def median(self) -> float:
        return float(np.median(self.ns)) if self.ns else float("nan")

    def p90(self) -> float:
        return float(np.percentile(self.ns, 90)) if self.ns else float("nan")

    def max(self) -> float:
        return float(max(self.ns)) if self.ns else float("nan")


def fus(ns: float) -> str:
    if ns != ns:
        return "-"
    x = ns / 1e3
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def fsec(ns: float) -> str:
    return "-" if ns != ns else f"{ns / 1e9:.3f}"


def size_text(n: int) -> str:
    for unit, v in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= v and n % v == 0:
            return f"{n // v}{unit}"
    return str(n)


IMAGE_DIR = "/dev/shm"


def repro(sub: str, **opts) -> str:
    args = [".venv/bin/python", "tools/bench_engine.py"]
    if IMAGE_DIR != "/dev/shm":
        args += ["--dir", shlex.quote(IMAGE_DIR)]
    args.append(sub)
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
        else:
            args += [flag, shlex.quote(size_text(v) if k.endswith("size") else str(v))]
    return " ".join(args)


def table(title: str, columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in ("image", "durable", "step", "what", "note") else "right")
    t.add_column("reproduce", overflow="fold", min_width=40)
    return t


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)


def print_profile(prof: cProfile.Profile, what: str, top: int = 15) -> None:
    st = pstats.Stats(prof)
    for key, label in (("tottime", "own time"), ("cumulative", "cumulative time")):
        t = Table(title=f"profile of {what}: top {top} by {label}", title_justify="left")
        for c in ("function (file:line)", "calls", "own s", "cum s"):
            t.add_column(c, justify="left" if c.startswith("function") else "right")
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2] if key == "tottime" else kv[1][3], reverse=True)
        for (fn, line, name), (cc, nc, tt, ct, _) in rows[:top]:
            fn = os.path.relpath(fn, REPO) if fn.startswith(REPO) else fn
            if "site-packages/" in fn:
                fn = fn.split("site-packages/", 1)[1]
            t.add_row(f"{fn}:{line} {name}", str(nc), f"{tt:.3f}", f"{ct:.3f}")
        console.print(t)


def check_room(directory: str, need: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < need:
        raise click.ClickException(f"{directory} has {free >> 20} MiB free, this step needs about {need >> 20} MiB")


# --- a. commit latency vs image size ---------------------------------------------------------------
def run_commit(scratch: Scratch, small: int, large: int, reps: int, rounds: int) -> None:
    """Many (write 4 KiB to a new block of a file; time fs.commit()) on each image, durable or not."""
    keys = [(size, durable) for size in (small, large) for durable in (True, False)]
    systems: dict[tuple[int, bool], FileSystem] = {}
    files: dict[tuple[int, bool], int] = {}
    nextblk: dict[tuple[int, bool], int] = {}
    meta: dict[tuple[int, bool], list[int]] = {k: [] for k in keys}
    samples = {k: Samples() for k in keys}
    data = b"\xa5" * BS
    paths = []
    try:
        for size, durable in keys:
            p = scratch.path(f"commit-{size_text(size)}-{'d' if durable else 'n'}")
            paths.append(p)
            mkfs(p, size, force=True)
            fs = FileSystem.open(p, durable=durable)
            systems[(size, durable)] = fs
            files[(size, durable)] = fs.create(1, b"commit-bench", 0o644, 0, 0).ino
            fs.commit()
            nextblk[(size, durable)] = 0

        def one(k: tuple[int, bool]) -> int:
            fs = systems[k]
            fs.write(files[k], nextblk[k] * BS, data)
            nextblk[k] += 1
            running = getattr(getattr(fs, "journal", None), "running", None)
            if running is not None:
                meta[k].append(len(running.blocks))
            t0 = time.perf_counter_ns()
            fs.commit()
            return time.perf_counter_ns() - t0

        for k in keys:  # warm-up
            for _ in range(10):
                one(k)
        rng = random.Random(3)
        per = max(1, reps // rounds)
        with progress() as prog:
            task = prog.add_task("commit latency", total=per * rounds * len(keys))
            for _ in range(rounds):
                order = keys[:]
                rng.shuffle(order)
                for k in order:
                    for _ in range(per):
                        samples[k].add(one(k))
                        prog.advance(task)
    finally:
        for fs in systems.values():
            try:
                fs.close()
            except Exception as e:  # noqa: BLE001 - report, keep cleaning up
                console.print(f"[red]close failed: {e!r}")
        for p in paths:
            scratch.remove(p)

    cmd = repro("commit", small_size=small, large_size=large, reps=reps, rounds=rounds)
    t = table(f"a. commit of a one-block change (4 KiB write to a new block), {per * rounds} samples/row "
              f"in {rounds} interleaved rounds, images in {scratch.directory}",
              ["image", "durable", "dirty meta blocks", "median µs", "p90 µs", "max µs",
               f"{size_text(large)}/{size_text(small)} median", f"{size_text(large)}/{size_text(small)} p90",
               "target"])
    for size, durable in keys:
        s = samples[(size, durable)]
        b = samples[(small, durable)]
        m = meta[(size, durable)]
        dirty = f"{np.median(m):.0f}" if m else "?"
        if size == large:
            r_med, r_p90 = s.median() / b.median(), s.p90() / b.p90()
            verdict = "[green]ok ≤1.2" if r_med <= 1.2 else "[red]MISSED >1.2"
            cols = [f"{r_med:.2f}", f"{r_p90:.2f}", verdict]
        else:
            cols = ["(baseline)", "", ""]
        t.add_row(size_text(size), str(durable), dirty, fus(s.median()), fus(s.p90()), fus(s.max()), *cols, cmd)
    console.print(t)


# --- b. open + replay of a 64 GiB image holding 100k files -----------------------------------------
def run_replay(scratch: Scratch, size: int, nfiles: int, ndirs: int, batch: int, file_bytes: int, repeats: int,
               durable: bool, profile: bool, target: float) -> None:
    check_room(scratch.directory, 3 * nfiles * (BS + 512) + 256 * MiB)
    cmd = repro("replay", size=size, files=nfiles, dirs=ndirs, batch=batch, file_bytes=file_bytes, repeats=repeats,
                no_durable=not durable, profile=profile)
    master = scratch.path("replay-master")
    work = scratch.path("replay-work")
    rows: list[tuple[str, ...]] = []
    try:
        mkfs(master, size, force=True)
        fs = FileSystem.open(master, durable=durable)
        try:
            dirs = [fs.mkdir(1, b"dir%03d" % d, 0o755, 0, 0).ino for d in range(ndirs)]
            fs.commit()
            payload = (b"daxfs-bench " * (file_bytes // 12 + 1))[:file_bytes]
            prof = None
            profiled_batch = -1
            nbatches = (nfiles + batch - 1) // batch
            if profile:
                profiled_batch = nbatches - 1
            t_start = time.perf_counter_ns()
            with progress() as prog:
                task = prog.add_task(f"populate {nfiles} files", total=nfiles)
                for b in range(nbatches):
                    if b == profiled_batch:
                        prof = cProfile.Profile()
                        prof.enable()
                    for i in range(b * batch, min(nfiles, (b + 1) * batch)):
                        ino = fs.create(dirs[i % ndirs], b"file%06d" % i, 0o644, 0, 0).ino
                        if file_bytes:
                            fs.write(ino, 0, payload)
                    fs.commit()
                    if b == profiled_batch and prof is not None:
                        prof.disable()
                    prog.update(task, completed=min(nfiles, (b + 1) * batch))
                    done = (b + 1) * batch
                    if profiled_batch < 0 and done >= nfiles // 10 and done < nfiles:
                        projected = (time.perf_counter_ns() - t_start) / done * nfiles / 1e9
                        if projected > 180:  # pathological: profile the last batch
                            console.print(f"[yellow]population projected at {projected:.0f} s (> 180 s): "
                                          "profiling the last batch")
                            profiled_batch = nbatches - 1
            t_pop = time.perf_counter_ns() - t_start
            jr = getattr(fs, "journal", None)
            pend = list(getattr(jr, "pending", []) or [])
            pending = f"{len(pend)} txns ({sum(getattr(x, 'jlen', 0) for x in pend):,} of " \
                      f"{getattr(jr, 'size', 0):,} journal blocks) pending at crash"
        finally:
            # Simulated crash: the last batch is committed, nothing is checkpointed or marked clean.
            fs.region.close()
        rows.append(("populate (durable=%s)" % durable, f"{t_pop / 1e9:.1f} s",
                     f"{nfiles / (t_pop / 1e9):,.0f} files/s", pending,
                     f"image {allocated(master) >> 20} MiB allocated"))
        if prof is not None:
            print_profile(prof, f"populating one batch of {batch} files")

        # Each timed open replays a fresh sparse copy of the crashed image (copying is not timed).
        replay_s = Samples()
        replayed: list[int] = []
        for r in range(repeats):
            sparse_copy(master, work)
            gc.collect()
            t0 = time.perf_counter_ns()
            fs = FileSystem.open(work, durable=durable)
            replay_s.add(time.perf_counter_ns() - t0)
            replayed.append(fs.open_report.replayed)
            if r == repeats - 1:
                verified = verify(fs, dirs, nfiles, ndirs, payload)
                t0 = time.perf_counter_ns()
                fs.close()
                t_close = time.perf_counter_ns() - t0
            else:
                fs.region.close()
        if profile or replay_s.median() / 1e9 > target:
            sparse_copy(master, work)
            prof = cProfile.Profile()
            prof.enable()
            fs = FileSystem.open(work, durable=durable)
            prof.disable()
            fs.region.close()
            print_profile(prof, "FileSystem.open with replay")
        scratch.remove(master)

        clean_s = Samples()
        for _ in range(repeats):
            gc.collect()
            t0 = time.perf_counter_ns()
            fs = FileSystem.open(work, durable=durable)
            clean_s.add(time.perf_counter_ns() - t0)
            assert fs.open_report.replayed == 0
            fs.close()
    finally:
        scratch.remove(work)
        scratch.remove(master)

    rep = replayed[0] if len(set(replayed)) == 1 else "/".join(map(str, replayed))
    t = table(f"b. open of a {size_text(size)} image holding {nfiles:,} files in {ndirs} directories "
              f"(commit every {batch}), {repeats} repetitions", ["step", "median s", "min s", "max s",
                                                                    "replayed txns", "vs clean open", "target"])
    for step, s, rp in (("open after crash (replay)", replay_s, str(rep)), ("open after clean close", clean_s, "0")):
        ok = s.median() / 1e9 <= target
        t.add_row(step, fsec(s.median()), fsec(min(s.ns)), fsec(s.max()), rp,
                  f"{s.median() / clean_s.median():.1f}x" if s is replay_s else "(baseline)",
                  f"[green]ok ≤{target:g} s" if ok else f"[red]MISSED >{target:g} s", cmd)
    console.print(t)
    for row in rows:
        console.print("  " + "; ".join(row))
    console.print(f"  after replay: {verified}; close (checkpoint of the replayed state) {t_close / 1e9:.3f} s")


def verify(fs: FileSystem, dirs: list[int], nfiles: int, ndirs: int, payload: bytes) -> str:
    """Spot-check the replayed file system: entry counts of a few directories, a few files' bytes."""
    rng = random.Random(4)
    bad = []
    for d in rng.sample(range(ndirs), min(5, ndirs)):
        names = [n for _, n, _, _ in fs.readdir(dirs[d]) if n not in (b".", b"..")]
        want = len(range(d, nfiles, ndirs))
        if len(names) != want:
            bad.append(f"dir{d:03d} has {len(names)} entries, expected {want}")
    for i in rng.sample(range(nfiles), min(20, nfiles)) + [nfiles - 1]:
        try:
            ino = fs.lookup(dirs[i % ndirs], b"file%06d" % i).ino
            got = fs.read(ino, 0, len(payload) + 1)
            if got != payload:
                bad.append(f"file{i:06d}: {len(got)} bytes, content differs")
        except FsError as e:
            bad.append(f"file{i:06d}: {e}")
    return "[green]spot check ok (5 directories, 21 files incl. the last)" if not bad else \
        "[red]SPOT CHECK FAILED: " + "; ".join(bad[:5])


# --- c. fsck of a full image -----------------------------------------------------------------------
def fsck_check():
    """daxfs.fsck.check, or None while nobody has written it yet."""
    if importlib.util.find_spec("daxfs.fsck") is None:
        return None
    mod = importlib.import_module("daxfs.fsck")
    return getattr(mod, "check", None)


def run_fsck(scratch: Scratch, size: int, fill: float, repeats: int, small_files: int, profile: bool) -> None:
    cmd = repro("fsck", size=size, fill=fill, repeats=repeats, small_files=small_files, profile=profile)
    columns = ["what", "median s", "min s", "max s", "result"]
    title = f"c. fsck of a {size_text(size)} image filled to ≥{fill:.0%} with file data, {repeats} repetitions"
    try:
        check = fsck_check()
        import_error = ""
    except Exception as e:  # noqa: BLE001 - a half-written module must not stop the other benches
        check, import_error = None, f": import failed: {e!r}"
    if check is None:
        t = table(title, columns)
        t.add_row("fsck", "-", "-", "-", f"[yellow]fsck not available{import_error}", cmd)
        console.print(t)
        return
    check_room(scratch.directory, size + 64 * MiB)
    path = scratch.path(f"fsck-{size_text(size)}")
    try:
        mkfs(path, size, force=True)
        fs = FileSystem.open(path, durable=False)  # filling is setup: no msync
        chunk = b"\x3c" * MiB
        try:
            st = fs.statfs()
            total = st.blocks
            d = [fs.mkdir(1, b"small%d" % i, 0o755, 0, 0).ino for i in range(10)]
            for i in range(small_files):
                ino = fs.create(d[i % 10], b"s%05d" % i, 0o644, 0, 0).ino
                fs.write(ino, 0, chunk[:BS + i % BS])
            fs.commit()
            big = fs.mkdir(1, b"big", 0o755, 0, 0).ino
            n_big = 0
            with progress() as prog:
                task = prog.add_task(f"fill {size_text(size)}", total=total)
                full = False
                while not full:
                    ino = fs.create(big, b"b%04d" % n_big, 0o644, 0, 0).ino
                    n_big += 1
                    for j in range(64):  # 64 MiB files
                        free = fs.statfs().blocks_free
                        prog.update(task, completed=total - free)
                        if free <= total * (1 - fill):
                            full = True
                            break
                        n = min(MiB, (free - 64) * BS)  # leave room for metadata growth
                        if n <= 0:
                            full = True
                            break
                        try:
                            fs.write(ino, j * MiB, chunk[:n])
                        except FsError as e:
                            if e.errno != errno.ENOSPC:
                                raise
                            full = True
                            break
                    fs.commit()
            st = fs.statfs()
        finally:
            fs.close()
        used = 1 - st.blocks_free / st.blocks
        s = Samples()
        result = "?"
        prof = cProfile.Profile() if profile else None
        for r in range(repeats):
            gc.collect()
            if prof is not None and r == repeats - 1:
                prof.enable()
            t0 = time.perf_counter_ns()
            try:
                report = check(path)
            except Exception as e:  # noqa: BLE001 - someone else's module; report, do not crash
                result = f"[red]fsck raised {e!r}"
                break
            finally:
                if prof is not None:
                    prof.disable()
            s.add(time.perf_counter_ns() - t0)
            clean = getattr(report, "clean", None)
            result = {True: "[green]clean", False: "[red]NOT CLEAN", None: "?"}[clean]
            if clean is False and hasattr(report, "lines"):
                result += ": " + " | ".join(list(report.lines())[:3])
    finally:
        scratch.remove(path)
    t = table(title, columns)
    t.add_row(f"fsck.check ({used:.1%} used: {small_files} small files, {n_big} files ≤64 MiB)",
              fsec(s.median()), fsec(min(s.ns)) if s.ns else "-", fsec(s.max()), result, cmd)
    console.print(t)
    if prof is not None:
        print_profile(prof, "fsck.check")


# --- command line ----------------------------------------------------------------------------------
def header(directory: str) -> None:
    console.print(f"[bold]bench_engine[/]  {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, images in "
                  f"{directory}; commit {_git_head()}")


def _git_head() -> str:
    """The commit measured, and whether daxfs/ had uncommitted changes (other people edit it live)."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "daxfs"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes in daxfs/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


dir_option = click.option("--dir", "directory", default="/dev/shm", show_default=True,
                          help="where the sparse images go (tmpfs: sparse files cost no RAM until written)")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@dir_option
@click.pass_context
def main(ctx: click.Context, directory: str) -> None:
    """Engine benchmarks. Without a subcommand: commit, replay and fsck with their defaults."""
    global IMAGE_DIR
    ctx.obj = IMAGE_DIR = directory
    if ctx.invoked_subcommand is None:
        header(directory)
        with Scratch(directory) as scratch:
            run_commit(scratch, GiB, 64 * GiB, 1000, 5)
            run_replay(scratch, 64 * GiB, 100_000, 100, 1000, 256, 5, True, False, 2.0)
            run_fsck(scratch, GiB, 0.98, 3, 1000, False)


@main.command()
@click.option("--small-size", type=SizeType(), default="1G", show_default=True)
@click.option("--large-size", type=SizeType(), default="64G", show_default=True)
@click.option("--reps", default=1000, show_default=True, help="samples per configuration")
@click.option("--rounds", default=5, show_default=True, help="interleaved rounds the samples are split into")
@click.pass_obj
def commit(directory: str, small_size: int, large_size: int, reps: int, rounds: int) -> None:
    """(a) Commit latency of a one-block change, small vs large image, durable and not."""
    header(directory)
    with Scratch(directory) as scratch:
        run_commit(scratch, small_size, large_size, reps, rounds)


@main.command()
@click.option("--size", type=SizeType(), default="64G", show_default=True)
@click.option("--files", default=100_000, show_default=True)
@click.option("--dirs", default=100, show_default=True)
@click.option("--batch", default=1000, show_default=True, help="files per commit")
@click.option("--file-bytes", default=256, show_default=True, help="bytes written into each file")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="timed opens of each kind")
@click.option("--no-durable", is_flag=True, help="populate and open with durable=False")
@click.option("--profile", is_flag=True, help="cProfile the last population batch and one replay open")
@click.option("--target", default=2.0, show_default=True, help="seconds")
@click.pass_obj
def replay(directory: str, size: int, files: int, dirs: int, batch: int, file_bytes: int, repeats: int,
           no_durable: bool, profile: bool, target: float) -> None:
    """(b) Open + replay after a crash, and a clean open, of an image holding many files."""
    header(directory)
    with Scratch(directory) as scratch:
        run_replay(scratch, size, files, dirs, batch, file_bytes, repeats, not no_durable, profile, target)


@main.command()
@click.option("--size", type=SizeType(), default="1G", show_default=True)
@click.option("--fill", default=0.98, show_default=True, help="fraction of data blocks to fill")
@click.option("--small-files", default=1000, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--profile", is_flag=True, help="cProfile the last fsck run")
@click.pass_obj
def fsck(directory: str, size: int, fill: float, small_files: int, repeats: int, profile: bool) -> None:
    """(c) fsck (daxfs.fsck.check) of a nearly full image."""
    header(directory)
    with Scratch(directory) as scratch:
        run_fsck(scratch, size, fill, repeats, small_files, profile)


if __name__ == "__main__":
    main()
