#!/usr/bin/env python3
"""daxfs against pyfuse3's own examples/passthroughfs.py, same machine, same run.

Table 1 compares a mounted daxfs with passthroughfs.py mirroring a tmpfs directory. Both are
RAM-backed: the daxfs image lives in /dev/shm, and so does passthroughfs's source directory. daxfs is
measured twice, with its default (msync on) and with `-o nomsync`:

  1 MiB seq write   os.write of 1 MiB buffers to a new file, then fsync; the fsync IS included
                    (the figure is "MiB made durable per second"), close is not.
  1 MiB seq read    the same file, after posix_fadvise(DONTNEED) on it and a reopen, so that both file
                    systems answer from their daemon, not from the kernel's page cache (passthroughfs
                    opens with keep_cache=True; daxfs with keep_cache=False). fadvise rather than
                    /proc/sys/vm/drop_caches: it drops this file's pages only, not a shared machine's.
  4 KiB pwrite      random 4 KiB-aligned pwrites into a file written and fsync'd beforehand (for daxfs
                    every block it hits is committed: "stable"); per-call latency.
  create+unlink     os.open(O_CREAT|O_WRONLY) + close + unlink of a new name, in a loop.
  stat              os.stat of an existing file, in a loop; per-call latency.

Ratios are daxfs/passthroughfs for throughput and passthroughfs/daxfs for latency, so >= 1.0 always
means "daxfs at least as good"; the target is >= 1.0 on every row.

Table 2 is daxfs alone: sync mode (`-o map_sync`) against normal mode, for a 4 KiB write that
allocates a NEW block (appending to a file, so it allocates and grows i_size: in sync mode it waits
for a journal commit) and for a 4 KiB write to a STABLE block (already committed: never commits).
Targets: new-block sync/normal <= 2.0 (the seed's kernel pays ~5x), stable sync/normal <= 1.05.
The two modes alternate every 50 calls and the ratio is the median over adjacent pairs of chunks of
(sync chunk median / normal chunk median): at a 5% target, comparing pooled medians taken seconds
apart on this machine swings by more than the target. Then the sync mount's commit latency histogram
(`daxfs stats --json`), and a check that every append, and no stable write, waited for a commit.

Method: every file system is mounted once for the whole run and the configurations are interleaved
in rounds (in a shuffled order each round; table 2's two modes alternate every 50 calls), so that a
noisy neighbour on this shared 2-core machine hits them all alike. Throughput rows report the median
over rounds; latency rows the median (and p90) of all per-call samples of all rounds.

Headline: daxfs's default (msync on). It is what `daxfs mount` gives, and on tmpfs msync buys nothing
and costs little, so it is the stricter comparison; the nomsync column is printed beside it.

passthroughfs.py is not kept in this repository: it is taken from the pyfuse3 sdist of the installed
pyfuse3 version at run time (`pip download --no-binary :all:`) into a temporary directory.

    .venv/bin/python tools/bench_fuse.py            # full run (about a minute)
    .venv/bin/python tools/bench_fuse.py --quick    # short run
    .venv/bin/python tools/bench_fuse.py --rounds 9 --seq-mib 128

Every mount is unmounted and every temporary file, directory and image removed on exit, on error and
on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

KiB, MiB = 1 << 10, 1 << 20
BS = 4 * KiB
PREFIX = "daxfs-bench-fuse"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

console = Console(width=None if sys.stdout.isatty() else 140)


# --- helpers ---------------------------------------------------------------------------------------
def daxfs_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "daxfs")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "daxfs.cli"]


def run(cmd: list[str], timeout: float = 120) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def is_mounted(path: str) -> bool:
    """True for a live mount and for a dead FUSE mount (whose daemon is gone: os.path.ismount says
    False there, because stat fails with ENOTCONN)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape") if "\\" in line else line.split()[4]
            if mp == target:
                return True
    return False


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.9 * len(s)))]


class Timer:
    """perf_counter with the garbage collector held off while timing."""

    def __enter__(self):
        self.gc = gc.isenabled()
        gc.disable()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        if self.gc:
            gc.enable()


# --- the file systems under test -------------------------------------------------------------------
@dataclass
class Mount:
    name: str
    mountpoint: str
    kind: str  # "passthrough" or "daxfs"
    proc: subprocess.Popen | None = None  # passthroughfs runs as our child in the foreground
    image: str | None = None
    mounted: bool = False

    def stats(self) -> dict:
        return json.loads(run(daxfs_cmd() + ["stats", self.mountpoint, "--json"]))


@dataclass
class Workspace:
    """Everything this run creates; `close()` undoes all of it, whatever state it is in."""
    root: str = ""  # in /dev/shm: passthroughfs's source, daxfs images, mount points
    sdist_dir: str = ""  # the pyfuse3 sdist and the extracted passthroughfs.py
    mounts: list[Mount] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/dev/shm")
        self.sdist_dir = tempfile.mkdtemp(prefix=f"{PREFIX}-sdist-")

    # passthroughfs.py from the sdist of the installed pyfuse3
    def fetch_passthroughfs(self) -> tuple[str, str]:
        import pyfuse3

        version = pyfuse3.__version__
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"pyfuse3=={version}", "-d", self.sdist_dir], timeout=300)
        tarballs = glob.glob(os.path.join(self.sdist_dir, "pyfuse3-*.tar.gz"))
        if not tarballs:
            raise RuntimeError(f"pip download gave no pyfuse3 sdist in {self.sdist_dir}")
        with tarfile.open(tarballs[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/examples/passthroughfs.py")), None)
            if member is None:
                raise RuntimeError(f"{os.path.basename(tarballs[0])} holds no examples/passthroughfs.py")
            data = tar.extractfile(member).read()
        path = os.path.join(self.sdist_dir, "passthroughfs.py")
        with open(path, "wb") as f:
            f.write(data)
        return path, version

    def mount_passthrough(self, script: str) -> Mount:
        src = os.path.join(self.root, "passthrough-src")
        mnt = os.path.join(self.root, "passthrough-mnt")
        os.mkdir(src)
        os.mkdir(mnt)
        m = Mount("passthroughfs", mnt, "passthrough")
        self.mounts.append(m)
        log = open(os.path.join(self.root, "passthroughfs.log"), "wb")
        # Its own session: a Ctrl-C in the terminal reaches us, and we unmount it in order.
        m.proc = subprocess.Popen([sys.executable, script, src, mnt], stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if m.proc.poll() is not None:
                with open(os.path.join(self.root, "passthroughfs.log")) as f:
                    raise RuntimeError(f"passthroughfs.py exited {m.proc.returncode}: {f.read().strip()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("passthroughfs.py did not mount within 60 s")
            time.sleep(0.02)
        m.mounted = True
        return m

    def mount_daxfs(self, name: str, options: list[str], size: str = "1G") -> Mount:
        tag = name.replace(" ", "_").replace("=", "-")
        image = os.path.join(self.root, f"{tag}.img")
        mnt = os.path.join(self.root, f"{tag}-mnt")
        os.mkdir(mnt)
        m = Mount(name, mnt, "daxfs", image=image)
        self.mounts.append(m)
        run(daxfs_cmd() + ["mkfs", image, "--size", size])
        cmd = daxfs_cmd() + ["mount", image, mnt] + (["-o", ",".join(options)] if options else [])
        run(cmd)  # returns once the mount answers
        m.mounted = os.path.ismount(mnt)
        if not m.mounted:
            raise RuntimeError(f"{shlex.join(cmd)} returned but {mnt} is not a mount")
        return m

    def unmount(self, m: Mount) -> None:
        if m.kind == "daxfs":
            if is_mounted(m.mountpoint):
                try:
                    run(daxfs_cmd() + ["umount", m.mountpoint])  # waits for the daemon to exit
                except Exception as e:  # busy: detach it
                    console.print(f"[yellow]daxfs umount {m.mountpoint}: {e}; detaching[/]")
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
        else:
            if m.proc is not None and m.proc.poll() is None and not is_mounted(m.mountpoint):
                # interrupted while it was starting: give it the time to mount, so that it can be unmounted
                deadline = time.monotonic() + 10
                while m.proc.poll() is None and not is_mounted(m.mountpoint) and time.monotonic() < deadline:
                    time.sleep(0.02)
            if is_mounted(m.mountpoint):
                p = subprocess.run(["fusermount3", "-u", m.mountpoint], capture_output=True, text=True)
                if p.returncode != 0:
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
                if is_mounted(m.mountpoint):  # killed: remove the dead mount it left
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
        m.mounted = False

    def close(self) -> None:
        for m in reversed(self.mounts):
            try:
                self.unmount(m)
            except Exception as e:
                console.print(f"[red]could not unmount {m.mountpoint}: {e}[/]")
        leftover = [m.mountpoint for m in self.mounts if is_mounted(m.mountpoint)]
        if leftover:  # never rmtree through a live mount
            console.print(f"[red]still mounted, left in place: {leftover}[/]")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sdist_dir, ignore_errors=True)


# --- the measurements ------------------------------------------------------------------------------
@dataclass
class Params:
    rounds: int
    seq_mib: int
    pwrite_file_mib: int
    pwrites: int
    creates: int
    stats: int
    appends: int
    stable_writes: int


def drop_file_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seq_write_read(mnt: str, tag: str, mib: int) -> tuple[float, float, float]:
    """(write MiB/s incl. fsync, read MiB/s, the fsync's ms) for one `mib` MiB file, then the file is removed."""
    path = os.path.join(mnt, f"seq-{tag}")
    buf = os.urandom(MiB)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        with Timer() as tw:
            for _ in range(mib):
                os.write(fd, buf)
            t_fsync = time.perf_counter()
            os.fsync(fd)
            t_fsync = time.perf_counter() - t_fsync
    finally:
        os.close(fd)
    drop_file_cache(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        total = 0
        with Timer() as tr:
            while True:
                chunk = os.read(fd, MiB)
                if not chunk:
                    break
                total += len(chunk)
    finally:
        os.close(fd)
    os.unlink(path)
    if total != mib * MiB:
        raise RuntimeError(f"{path}: read back {total} bytes, wrote {mib * MiB}")
    return mib / tw.seconds, mib / tr.seconds, t_fsync * 1e3


def prepare_file(path: str, nbytes: int) -> None:
    """A file written in full and fsync'd: every block allocated and committed (stable on daxfs)."""
    buf = os.urandom(MiB)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left:
            left -= os.write(fd, buf[:min(MiB, left)])
        os.fsync(fd)
    finally:
        os.close(fd)


def timed_writes(fd: int, buf: bytes, offsets: list[int] | None, calls: int) -> list[float]:
    """Per-call µs of `calls` writes of buf: pwrite at each offset, or appending os.write if offsets is None."""
    out = [0.0] * calls
    pc = time.perf_counter
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if offsets is None:
            for i in range(calls):
                t0 = pc()
                os.write(fd, buf)
                out[i] = pc() - t0
        else:
            for i, off in enumerate(offsets):
                t0 = pc()
                os.pwrite(fd, buf, off)
                out[i] = pc() - t0
    finally:
        if gc_was:
            gc.enable()
    return [x * 1e6 for x in out]


def pwrite_existing(path: str, nblocks: int, calls: int, rng: random.Random) -> list[float]:
    """Per-call µs of random 4 KiB-aligned pwrites into an existing, fsync'd file."""
    offsets = [rng.randrange(nblocks) * BS for _ in range(calls)]
    fd = os.open(path, os.O_WRONLY)
    try:
        return timed_writes(fd, os.urandom(BS), offsets, calls)
    finally:
        os.close(fd)


def create_unlink(mnt: str, tag: str, n: int) -> float:
    """ops/s of open(O_CREAT|O_WRONLY) + close + unlink, each on a new name."""
    d = os.path.join(mnt, f"cu-{tag}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i}") for i in range(n)]
    flags = os.O_CREAT | os.O_WRONLY
    with Timer() as t:
        for p in names:
            os.close(os.open(p, flags, 0o644))
            os.unlink(p)
    os.rmdir(d)
    return n / t.seconds


def stat_loop(path: str, n: int) -> list[float]:
    """Per-call µs of os.stat of an existing file."""
    out = [0.0] * n
    pc = time.perf_counter
    st = os.stat
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            st(path)
            out[i] = pc() - t0
    finally:
        if gc_was:
            gc.enable()
    return [x * 1e6 for x in out]


@dataclass
class Samples:
    write_mibs: list[float] = field(default_factory=list)
    read_mibs: list[float] = field(default_factory=list)
    fsync_ms: list[float] = field(default_factory=list)
    pwrite_us: list[float] = field(default_factory=list)
    create_ops: list[float] = field(default_factory=list)
    stat_us: list[float] = field(default_factory=list)


def table1_round(m: Mount, s: Samples, p: Params, rnd: int, rng: random.Random, advance) -> None:
    w, r, f = seq_write_read(m.mountpoint, str(rnd), p.seq_mib)
    s.write_mibs.append(w)
    s.fsync_ms.append(f)
    s.read_mibs.append(r)
    advance()
    s.pwrite_us += pwrite_existing(os.path.join(m.mountpoint, "pw"), p.pwrite_file_mib * MiB // BS, p.pwrites, rng)
    advance()
    s.create_ops.append(create_unlink(m.mountpoint, str(rnd), p.creates))
    advance()
    s.stat_us += stat_loop(os.path.join(m.mountpoint, "pw"), p.stats)
    advance()


@dataclass
class Samples2:
    """Table 2's samples for both modes. The modes alternate in chunks of CHUNK calls; each chunk of
    map_sync calls is paired with the normal-mode chunk next to it, and `*_pairs[round]` holds the
    ratios (sync chunk median / normal chunk median) of that round's pairs."""
    new_us: dict[str, list[float]] = field(default_factory=lambda: {"map_sync": [], "normal": []})
    stable_us: dict[str, list[float]] = field(default_factory=lambda: {"map_sync": [], "normal": []})
    new_pairs: list[list[float]] = field(default_factory=list)
    stable_pairs: list[list[float]] = field(default_factory=list)


CHUNK = 50


def table2_round(mounts: dict[str, Mount], s: Samples2, p: Params, rnd: int, rng: random.Random, advance) -> None:
    """One round of table 2: both modes alternate every CHUNK calls (which goes first is drawn anew for
    each pair), so that each ratio compares calls made within milliseconds of each other."""
    buf = os.urandom(BS)
    names = list(mounts)
    paths = {n: os.path.join(mounts[n].mountpoint, f"append-{rnd}") for n in names}
    fds = {n: os.open(paths[n], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644) for n in names}
    pairs = []
    try:
        for start in range(0, p.appends, CHUNK):
            k = min(CHUNK, p.appends - start)
            rng.shuffle(names)
            got = {n: timed_writes(fds[n], buf, None, k) for n in names}
            for n in names:
                s.new_us[n] += got[n]
            pairs.append(median(got["map_sync"]) / median(got["normal"]))
    finally:
        for n, fd in fds.items():
            os.close(fd)
            os.unlink(paths[n])
    s.new_pairs.append(pairs)
    advance()
    nblocks = p.pwrite_file_mib * MiB // BS
    fds = {n: os.open(os.path.join(mounts[n].mountpoint, "stable"), os.O_WRONLY) for n in names}
    pairs = []
    try:
        for start in range(0, p.stable_writes, CHUNK):
            k = min(CHUNK, p.stable_writes - start)
            offsets = [rng.randrange(nblocks) * BS for _ in range(k)]
            rng.shuffle(names)
            got = {n: timed_writes(fds[n], buf, offsets, k) for n in names}  # the same offsets for both modes
            for n in names:
                s.stable_us[n] += got[n]
            pairs.append(median(got["map_sync"]) / median(got["normal"]))
    finally:
        for fd in fds.values():
            os.close(fd)
    s.stable_pairs.append(pairs)
    advance()


# --- report ----------------------------------------------------------------------------------------
def fmt_ratio(r: float, ok: bool) -> str:
    return f"[{'green' if ok else 'red'}]{r:.2f}[/]"


def table1(results: dict[str, Samples], headline: str, other: str) -> Table:
    pt = results["passthroughfs"]
    hd = results[headline]
    ot = results[other]
    t = Table(title=f"Table 1: daxfs ({headline}) vs pyfuse3 passthroughfs.py over tmpfs — "
                    "ratio >= 1.0 means daxfs at least as good")
    for col, just in [("row", "left"), ("unit", "left"), ("passthroughfs", "right"), (f"daxfs ({headline})", "right"),
                      ("ratio", "right"), (f"daxfs ({other})", "right"), ("ratio", "right"), ("target", "right")]:
        t.add_column(col, justify=just)

    def add(row: str, unit: str, a: list[float], b: list[float], c: list[float], higher_better: bool,
            pct90: bool = False) -> None:
        ma, mb, mc = median(a), median(b), median(c)
        if higher_better:
            rb, rc = mb / ma, mc / ma
            fmt = (lambda x: f"{x:,.0f}") if ma >= 100 else (lambda x: f"{x:,.1f}")
            cells = [fmt(ma), fmt(mb), fmt(mc)]
        else:
            rb, rc = ma / mb, ma / mc
            cells = [f"{median(x):.1f} (p90 {p90(x):.1f})" if pct90 else f"{median(x):.1f}" for x in (a, b, c)]
        t.add_row(row, unit, cells[0], cells[1], fmt_ratio(rb, rb >= 1.0), cells[2], fmt_ratio(rc, rc >= 1.0),
                  "≥ 1.0")

    add("1 MiB seq write (+fsync)", "MiB/s", pt.write_mibs, hd.write_mibs, ot.write_mibs, True)
    add("1 MiB seq read (uncached)", "MiB/s", pt.read_mibs, hd.read_mibs, ot.read_mibs, True)
    add("4 KiB pwrite, existing blocks", "µs/call", pt.pwrite_us, hd.pwrite_us, ot.pwrite_us, False, True)
    add("create+unlink", "ops/s", pt.create_ops, hd.create_ops, ot.create_ops, True)
    add("stat", "µs/call", pt.stat_us, hd.stat_us, ot.stat_us, False, True)
    return t


def table2(s: Samples2, label: str) -> Table:
    t = Table(title=f"Table 2: daxfs ({label}) sync mode (-o map_sync) vs normal mode, 4 KiB writes")
    for col in ("write", "normal median µs", "normal p90 µs", "map_sync median µs", "map_sync p90 µs",
                "sync/normal", "per-round", "target"):
        t.add_column(col, justify="left" if col == "write" else "right")
    for name, us, pairs, target in (("to a NEW block (append)", s.new_us, s.new_pairs, 2.0),
                                    ("to a STABLE block", s.stable_us, s.stable_pairs, 1.05)):
        a, b = us["normal"], us["map_sync"]
        r = median([x for rnd in pairs for x in rnd])
        per_round = [median(rnd) for rnd in pairs]
        t.add_row(name, f"{median(a):.1f}", f"{p90(a):.1f}", f"{median(b):.1f}", f"{p90(b):.1f}",
                  fmt_ratio(r, r <= target), f"{min(per_round):.2f}–{max(per_round):.2f}", f"≤ {target:g}")
    return t


def histogram_table(st: dict, title: str) -> tuple[Table, str]:
    h = st["commit_latency"]
    t = Table(title=title, title_justify="left")
    t.add_column("commit latency", justify="right")
    t.add_column("commits", justify="right")
    for label, n in h["buckets"].items():
        t.add_row(label, str(n))
    summary = (f"commits: count={h['count']} min={h['min_us']} avg={h['avg_us']} max={h['max_us']} µs; "
               f"daemon counters: writes={st['writes']} sync_writes={st['sync_writes']} "
               f"sync_faults={st['sync_faults']} fsyncs={st['fsyncs']} commits={st['commits']}")
    return t, summary


# --- main ------------------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="short run: fewer rounds and samples (noisier)")
@click.option("--rounds", type=int, default=None, help="rounds per configuration (default 7; --quick 2)")
@click.option("--seq-mib", type=int, default=None, help="MiB per sequential write/read (default 64; --quick 16)")
@click.option("--headline", type=click.Choice(["msync", "nomsync"]), default="msync", show_default=True,
              help="which daxfs configuration the ratios and table 2 are about")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random pwrite offsets")
@click.option("--skip-table2", is_flag=True, help="table 1 only")
def main(quick: bool, rounds: int | None, seq_mib: int | None, headline: str, seed: int, skip_table2: bool) -> None:
    """daxfs vs pyfuse3's passthroughfs.py over tmpfs (table 1), and daxfs sync vs normal mode (table 2)."""
    if quick:
        p = Params(rounds=rounds or 2, seq_mib=seq_mib or 16, pwrite_file_mib=8, pwrites=500, creates=300,
                   stats=2000, appends=300, stable_writes=500)
    else:
        p = Params(rounds=rounds or 7, seq_mib=seq_mib or 64, pwrite_file_mib=16, pwrites=2000, creates=1000,
                   stats=5000, appends=1000, stable_writes=2000)
    if p.rounds < 1 or p.seq_mib < 1:
        raise click.BadParameter("--rounds and --seq-mib must be at least 1")
    other = "nomsync" if headline == "msync" else "msync"
    rng = random.Random(seed)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ws = Workspace()
    code = 0
    try:
        with console.status("fetching passthroughfs.py from the pyfuse3 sdist…"):
            script, version = ws.fetch_passthroughfs()
        console.print(f"passthroughfs.py from pyfuse3-{version} sdist; scratch in {ws.root}")
        with console.status("mounting passthroughfs and daxfs (msync, nomsync)…"):
            pt = ws.mount_passthrough(script)
            dx = {"msync": ws.mount_daxfs("msync", []), "nomsync": ws.mount_daxfs("nomsync", ["nomsync"])}
        t1_mounts = {"passthroughfs": pt, "msync": dx["msync"], "nomsync": dx["nomsync"]}
        for m in t1_mounts.values():
            prepare_file(os.path.join(m.mountpoint, "pw"), p.pwrite_file_mib * MiB)
        results = {name: Samples() for name in t1_mounts}

        t2 = {}
        if not skip_table2:
            with console.status("mounting daxfs map_sync and normal for table 2…"):
                base = [] if headline == "msync" else ["nomsync"]
                t2 = {"map_sync": ws.mount_daxfs(f"t2 map_sync {headline}", base + ["map_sync"]),
                      "normal": ws.mount_daxfs(f"t2 normal {headline}", base)}
            for m in t2.values():
                prepare_file(os.path.join(m.mountpoint, "stable"), p.pwrite_file_mib * MiB)
            sync_base = t2["map_sync"].stats()
        results2 = Samples2()

        steps = p.rounds * (4 * len(t1_mounts) + (2 if t2 else 0))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("measuring", total=steps)
            for rnd in range(p.rounds):
                order = list(t1_mounts.items())
                rng.shuffle(order)
                for name, m in order:
                    progress.update(task, description=f"round {rnd + 1}/{p.rounds}: table 1, {name}")
                    table1_round(m, results[name], p, rnd, rng, lambda: progress.advance(task))
                if t2:
                    progress.update(task, description=f"round {rnd + 1}/{p.rounds}: table 2, map_sync/normal")
                    table2_round(t2, results2, p, rnd, rng, lambda: progress.advance(task))
        sync_stats = t2["map_sync"].stats() if t2 else None
        normal_stats = t2["normal"].stats() if t2 else None

        console.print()
        console.print(table1(results, headline, other))
        fs_ms = {n: median(r.fsync_ms) for n, r in results.items()}
        console.print(f"Headline: daxfs {headline}"
                      + (" — the default, what `daxfs mount` does without options, and the stricter of the two: on "
                         "tmpfs msync buys no durability, and counting it keeps the comparison with passthroughfs "
                         "(whose fsync on tmpfs is a no-op) from being flattered."
                         if headline == "msync" else
                         " (not the default: `daxfs mount` msyncs unless told -o nomsync)."))
        console.print(f"Median fsync of the {p.seq_mib} MiB file (inside the seq write figure): passthroughfs "
                      f"{fs_ms['passthroughfs']:.1f} ms, daxfs msync {fs_ms['msync']:.1f} ms, "
                      f"nomsync {fs_ms['nomsync']:.1f} ms.")
        console.print(f"passthroughfs: pyfuse3-{version} examples/passthroughfs.py over {ws.root}/passthrough-src "
                      "(tmpfs); daxfs: 1 GiB image in /dev/shm (tmpfs). "
                      f"{p.rounds} rounds; seq {p.seq_mib} MiB/round; pwrite {p.pwrites}/round into a "
                      f"{p.pwrite_file_mib} MiB file; create+unlink {p.creates}/round; stat {p.stats}/round. "
                      "Throughput: median of rounds. Latency: median (p90) of all calls.")
        if t2:
            console.print()
            console.print(table2(results2, headline))
            console.print(f"{p.appends} appends and {p.stable_writes} stable pwrites (random, into a "
                          f"{p.pwrite_file_mib} MiB file written and fsync'd first) per round and mode, {p.rounds} "
                          f"rounds. µs columns: median and p90 of all calls. sync/normal: the median over all pairs of "
                          f"adjacent {CHUNK}-call chunks (the modes alternate every {CHUNK} calls) of the ratio of "
                          "their medians; per-round: the lowest and highest round's median of those ratios.")
            console.print()
            hist, summary = histogram_table(sync_stats, "Commit latency (map_sync mount)")
            console.print(hist)
            console.print(f"from `daxfs stats --json` of the map_sync mount ({headline}), whole run: {summary}")
            faults = sync_stats["sync_faults"] - sync_base["sync_faults"]
            expected = p.appends * p.rounds
            check = "[green]as expected[/]" if faults == expected else "[red]NOT as expected[/]"
            console.print(f"sync faults while measuring: {faults} for {expected} appends and "
                          f"{p.stable_writes * p.rounds} stable writes ({check}: every append, no stable write)")
            console.print(f"normal-mode mount for comparison: commits={normal_stats['commits']} "
                          f"sync_faults={normal_stats['sync_faults']}")
        argv = [".venv/bin/python", "tools/bench_fuse.py"] + sys.argv[1:]
        if "--seed" not in sys.argv[1:]:
            argv += ["--seed", str(seed)]
        console.print()
        console.print(f"reproduce (from {REPO}): [bold]{shlex.join(argv)}[/]")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: unmounting and cleaning up[/]")
        code = 130
    except Exception as e:
        console.print(f"[red]bench_fuse: {type(e).__name__}: {e}[/]")
        if not isinstance(e, RuntimeError):
            console.print_exception()
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ws.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(code)


if __name__ == "__main__":
    main()
