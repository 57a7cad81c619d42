"""The measurements of tools/bench_fuse.py: one function per row of table 1, the workloads behind
them, and table 2's round. The method is documented in bench_fuse.py.

A row function runs one round of its row on one mount and returns (values, ops): per-call latencies
(µs or ms) or a single per-round figure, and how many operations the requests are divided by. It
wraps the measured region in `with meter:` (bench_fuse_mounts.Meter), outside its timer, so that the
requests counted are those of the measured operations only.
"""

from __future__ import annotations

import gc
import io
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable

from bench_fuse_mounts import BASE, BS, MiB, PWRITE_FILE, READDIR_DIR, Meter, Mount


@dataclass
class Params:
    rounds: int
    seq_mib: int
    pwrite_file_mib: int
    pwrites: int
    appends: int
    stats: int
    creates: int
    mkdirs: int
    renames: int
    readdir_entries: int
    listings: int
    sqlite_inserts: int
    tar_files: int
    stable_writes: int  # table 2
    t2_appends: int  # table 2


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


def drop_file_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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


def prepare_layout(m: Mount, p: Params) -> float:
    """The small case's layout, through the mount: BASE with PWRITE_FILE (written and fsync'd), and
    READDIR_DIR with the readdir row's entries. Returns the seconds it took."""
    t0 = time.perf_counter()
    os.makedirs(m.path(BASE))
    os.makedirs(m.path(READDIR_DIR))
    prepare_file(m.path(PWRITE_FILE), p.pwrite_file_mib * MiB)
    m.pw_blocks = range(p.pwrite_file_mib * MiB // BS)
    d = m.path(READDIR_DIR)
    for i in range(p.readdir_entries):
        os.close(os.open(os.path.join(d, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
    return time.perf_counter() - t0


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


def timed_calls(fn: Callable, arg, n: int) -> list[float]:
    """Per-call µs of n calls fn(arg)."""
    out = [0.0] * n
    pc = time.perf_counter
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            fn(arg)
            out[i] = pc() - t0
    finally:
        if gc_was:
            gc.enable()
    return [x * 1e6 for x in out]


def make_tree_tar(nfiles: int, seed: int) -> tuple[bytes, int]:
    """A tar (in memory) of a source-tree-like directory: `nfiles` files of 100 B to 16 KiB (most
    small), 50 to a directory, in two levels of nested directories; deterministic for a given seed.
    Returns (tar bytes, bytes of file data)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    total = 0
    mtime = 1_700_000_000
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add_dir(name: str) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(ti)

        add_dir("tree")
        for i in range(nfiles):
            top, sub = divmod(i // 50, 10)
            d = f"tree/m{top:02d}/s{sub}"
            if i % 500 == 0:
                add_dir(f"tree/m{top:02d}")
            if i % 50 == 0:
                add_dir(d)
            size = min(16 * 1024, int(rng.lognormvariate(7.0, 1.2)) + 100)
            ti = tarfile.TarInfo(f"{d}/file{i:05d}.c")
            ti.size, ti.mode, ti.mtime = size, 0o644, mtime
            tar.addfile(ti, io.BytesIO(rng.randbytes(size)))
            total += size
    return buf.getvalue(), total


# --- the rows ---------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a row function gets: the mount, the run's parameters, the round, the shared rng, the meter,
    and the tar file of the many-small-files rows."""
    m: Mount
    p: Params
    rnd: int
    rng: random.Random
    meter: Meter
    tar_path: str


def row_pwrite(c: Ctx) -> tuple[list[float], int]:
    n = c.p.pwrites
    offsets = [c.rng.choice(c.m.pw_blocks) * BS for _ in range(n)]
    fd = os.open(c.m.path(PWRITE_FILE), os.O_WRONLY)
    try:
        with c.meter:
            us = timed_writes(fd, os.urandom(BS), offsets, n)
    finally:
        os.close(fd)
    return us, n


def row_append(c: Ctx) -> tuple[list[float], int]:
    n = c.p.appends
    path = c.m.path(f"{BASE}/ap{c.rnd}")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        with c.meter:
            us = timed_writes(fd, os.urandom(BS), None, n)
    finally:
        os.close(fd)
        os.unlink(path)
    return us, n


def seq_path(c: Ctx) -> str:
    return c.m.path(f"{BASE}/seq{c.rnd}")


def row_seq_write(c: Ctx) -> tuple[list[float], int]:
    """MiB/s of writing seq_mib MiB in 1 MiB os.write calls to a new file, fsync included."""
    buf = os.urandom(MiB)
    fd = os.open(seq_path(c), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        with c.meter, Timer() as t:
            for _ in range(c.p.seq_mib):
                os.write(fd, buf)
            os.fsync(fd)
    finally:
        os.close(fd)
    return [c.p.seq_mib / t.seconds], c.p.seq_mib


def read_all(path: str, mib: int, meter: Meter) -> float:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        with meter, Timer() as t:
            while True:
                chunk = os.read(fd, MiB)
                if not chunk:
                    break
                total += len(chunk)
    finally:
        os.close(fd)
    if total != mib * MiB:
        raise RuntimeError(f"{path}: read back {total} bytes, wrote {mib * MiB}")
    return mib / t.seconds


def row_read_cold(c: Ctx) -> tuple[list[float], int]:
    """The seq write row's file, its pages dropped from the kernel's cache first (fadvise DONTNEED)."""
    drop_file_cache(seq_path(c))
    return [read_all(seq_path(c), c.p.seq_mib, c.meter)], c.p.seq_mib


def row_read_warm(c: Ctx) -> tuple[list[float], int]:
    """The same file again, opened anew as a second `cat` would: what the kernel's cache still holds."""
    try:
        return [read_all(seq_path(c), c.p.seq_mib, c.meter)], c.p.seq_mib
    finally:
        os.unlink(seq_path(c))


def row_stat(c: Ctx) -> tuple[list[float], int]:
    with c.meter:
        us = timed_calls(os.stat, c.m.path(PWRITE_FILE), c.p.stats)
    return us, c.p.stats


def row_create_unlink(c: Ctx) -> tuple[list[float], int]:
    names = [c.m.path(f"{BASE}/cu{c.rnd}-{i}") for i in range(c.p.creates)]
    flags = os.O_CREAT | os.O_WRONLY
    with c.meter, Timer() as t:
        for p in names:
            os.close(os.open(p, flags, 0o644))
            os.unlink(p)
    return [len(names) / t.seconds], len(names)


def row_mkdir_rmdir(c: Ctx) -> tuple[list[float], int]:
    names = [c.m.path(f"{BASE}/md{c.rnd}-{i}") for i in range(c.p.mkdirs)]
    with c.meter, Timer() as t:
        for p in names:
            os.mkdir(p)
            os.rmdir(p)
    return [len(names) / t.seconds], len(names)


def row_rename(c: Ctx) -> tuple[list[float], int]:
    a, b = c.m.path(f"{BASE}/rn{c.rnd}a"), c.m.path(f"{BASE}/rn{c.rnd}b")
    os.close(os.open(a, os.O_CREAT | os.O_WRONLY, 0o644))
    n = c.p.renames - c.p.renames % 2
    try:
        with c.meter, Timer() as t:
            for _ in range(n // 2):
                os.rename(a, b)
                os.rename(b, a)
    finally:
        os.unlink(a)
    return [n / t.seconds], n


def row_readdir(c: Ctx) -> tuple[list[float], int]:
    d = c.m.path(READDIR_DIR)
    out = []
    with c.meter:
        for _ in range(c.p.listings):
            with Timer() as t:
                n = len(os.listdir(d))
            out.append(t.seconds * 1e3)
    if n != c.p.readdir_entries:
        raise RuntimeError(f"{d}: {n} entries, expected {c.p.readdir_entries}")
    return out, c.p.listings


def row_sqlite(c: Ctx) -> tuple[list[float], int]:
    """Inserts/s: journal_mode=WAL, synchronous=FULL, one row of 100 bytes per transaction."""
    path = c.m.path(f"{BASE}/sq{c.rnd}.db")
    payload = c.rng.randbytes(100)
    con = sqlite3.connect(path, isolation_level=None)  # autocommit: each INSERT is its own transaction
    try:
        if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise RuntimeError(f"{path}: SQLite refused journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        ins = "INSERT INTO t (v) VALUES (?)"
        with c.meter, Timer() as t:
            for _ in range(c.p.sqlite_inserts):
                con.execute(ins, (payload,))
        if con.execute("SELECT count(*) FROM t").fetchone()[0] != c.p.sqlite_inserts:
            raise RuntimeError(f"{path}: row count is wrong")
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    return [c.p.sqlite_inserts / t.seconds], c.p.sqlite_inserts


def tree_dir(c: Ctx) -> str:
    return c.m.path(f"{BASE}/tar{c.rnd}")


def row_untar(c: Ctx) -> tuple[list[float], int]:
    """Files/s of `tar -xf` of the tree into a new directory (tar's defaults: as root it restores
    owners, modes and mtimes)."""
    d = tree_dir(c)
    os.mkdir(d)
    with c.meter, Timer() as t:
        subprocess.run(["tar", "-xf", c.tar_path, "-C", d], check=True, stdin=subprocess.DEVNULL)
    return [c.p.tar_files / t.seconds], c.p.tar_files


def row_find_cat(c: Ctx) -> tuple[list[float], int]:
    """Files/s of `find DIR -type f -print0 | xargs -0 cat > /dev/null` over the tree just untarred
    (whatever the kernel's caches still hold of it, as after a real checkout); then it is removed."""
    d = tree_dir(c)
    try:
        with c.meter, Timer() as t:
            subprocess.run(["bash", "-o", "pipefail", "-c", 'find "$1" -type f -print0 | xargs -0 cat > /dev/null',
                            "find+cat", d], check=True, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(d)
    return [c.p.tar_files / t.seconds], c.p.tar_files


@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_better: bool
    goal: float  # daxfs vs the fair baseline, as a "how much better" ratio (>= goal)
    fn: Callable[[Ctx], tuple[list[float], int]]
    per_call: bool = False  # values are per-call samples: median of all; else one figure a round: median of rounds


def rows(p: Params) -> list[Row]:
    """Table 1's rows, in the order they run in each round (the read rows use the seq write's file;
    find+cat uses the untarred tree)."""
    return [
        Row("pwrite", "4 KiB pwrite, existing blocks", "µs", False, 1.3, row_pwrite, True),
        Row("append", "4 KiB append", "µs", False, 1.3, row_append, True),
        Row("seq_write", "1 MiB seq write + fsync", "MiB/s", True, 1.0, row_seq_write),
        Row("read_cold", "1 MiB seq read, cold cache", "MiB/s", True, 1.0, row_read_cold),
        Row("read_warm", "1 MiB seq read, warm cache", "MiB/s", True, 1.0, row_read_warm),
        Row("stat", "stat", "µs", False, 1.0, row_stat, True),
        Row("create_unlink", "create+unlink", "ops/s", True, 1.0, row_create_unlink),
        Row("mkdir_rmdir", "mkdir+rmdir", "ops/s", True, 1.0, row_mkdir_rmdir),
        Row("rename", "rename", "ops/s", True, 1.0, row_rename),
        Row("readdir", f"readdir, {p.readdir_entries:,} entries", "ms", False, 1.0, row_readdir, True),
        Row("sqlite", "SQLite WAL sync=FULL insert", "ins/s", True, 1.0, row_sqlite),
        Row("untar", f"untar {p.tar_files:,} small files", "files/s", True, 1.0, row_untar),
        Row("find_cat", f"find + cat {p.tar_files:,} files", "files/s", True, 1.0, row_find_cat),
    ]


@dataclass
class Cell:
    """One row on one mount, all rounds."""
    values: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # one figure a round: the value, or the round's median
    ops: int = 0
    requests: dict[str, int] | None = field(default_factory=dict)  # None: the mount has no counters

    def add(self, values: list[float], ops: int, delta: dict[str, int] | None) -> None:
        self.values += values
        self.rounds.append(median(values))
        self.ops += ops
        if delta is None or self.requests is None:
            self.requests = None
        else:
            for k, v in delta.items():
                self.requests[k] = self.requests.get(k, 0) + v

    def per_op(self) -> float | None:
        return None if self.requests is None or not self.ops else sum(self.requests.values()) / self.ops

    def by_op(self) -> dict[str, float] | None:
        if self.requests is None or not self.ops:
            return None
        return {k: v / self.ops for k, v in sorted(self.requests.items(), key=lambda kv: -kv[1])}


# --- table 2: sync mode vs normal mode --------------------------------------------------------------
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
    paths = {n: mounts[n].path(f"append-{rnd}") for n in names}
    fds = {n: os.open(paths[n], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644) for n in names}
    pairs = []
    try:
        for start in range(0, p.t2_appends, CHUNK):
            k = min(CHUNK, p.t2_appends - start)
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
    fds = {n: os.open(mounts[n].path("stable"), os.O_WRONLY) for n in names}
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
