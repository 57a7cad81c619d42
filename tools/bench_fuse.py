#!/usr/bin/env python3
"""daxfs against pyfuse3's own examples/passthroughfs.py, like for like, same machine, same run.

Table 1 compares a mounted daxfs with two baselines, both passthroughfs.py mirroring a tmpfs
directory (the daxfs image lives in /dev/shm too: everything is RAM-backed):

  passthroughfs+xattr  the FAIR baseline (the ratios' goals are against it): passthroughfs.py plus
                       getxattr/setxattr/listxattr/removexattr and fsync/fsyncdir forwarded to the
                       source. On a mount that answers getxattr the kernel asks for
                       `security.capability` before every write(2), so a write costs it two
                       requests (GETXATTR + WRITE). daxfs negotiates FUSE_HANDLE_KILLPRIV_V2 through
                       its shim (docs/design.md) and clears setid bits itself, so its writes cost
                       one; a file system could do the same, but this baseline is pyfuse3's as it
                       is, with the xattrs any real one needs. fsync likewise: both answer it. (tools/passthrough_counted.py says exactly what it adds, and why
                       flush is not among it.)
  passthroughfs        as shipped: no getxattr, no fsync. Its first answer to each is ENOSYS, after
                       which the kernel sends neither for the whole mount: one request per write,
                       fsync for free. Printed as a second column, for reference.

daxfs is measured twice: its default (msync on) and `-o nomsync`; the headline (--headline) is the
default. Every row also reports requests per operation, from each daemon's own counters:
passthroughfs's through the counting launcher (tools/passthrough_counted.py wraps every request
handler at run time), daxfs's from the `requests` dict of `daxfs stats --json` where the daemon keeps
one ("n/a" where it does not). A second table breaks requests per operation down by FUSE op.

Rows (each mount gets the same layout: the rows work in pop/d00, readdir lists pop/d01):
  4 KiB pwrite         random 4 KiB-aligned pwrites into a 16 MiB file written and fsync'd beforehand
                       (on daxfs every block it hits is committed: "stable"); per-call latency.
  4 KiB append         os.write of 4 KiB at the end of a new file (allocates); per-call latency.
  1 MiB seq write      os.write of 1 MiB buffers to a new file, then fsync; the fsync IS included
                       (the figure is "MiB made durable per second"), close is not.
  1 MiB seq read cold  that file after posix_fadvise(DONTNEED) (its pages only, not a shared machine's
                       caches) and a reopen: every byte comes from the daemon.
  1 MiB seq read warm  the same file opened and read again at once, as a second `cat` would: whatever
                       the kernel's page cache kept (passthroughfs opens with keep_cache; daxfs drops a
                       file's cached pages at open).
  stat                 os.stat of the pwrite file; per-call latency.
  create+unlink        open(O_CREAT|O_WRONLY) + close + unlink of a new name; pairs/s.
  mkdir+rmdir          pairs/s.        rename    a -> b -> a, ...; renames/s.
  readdir              os.listdir of a directory of 10,000 empty files; ms per listing.
  SQLite               Python's sqlite3, journal_mode=WAL, synchronous=FULL, one 100-byte row per
                       transaction; inserts/s.
  untar, find + cat    a deterministic tar (built in memory once a run) of ~5,000 files of 100 B to
                       16 KiB, 50 to a directory in nested directories, like a source checkout:
                       `tar -xf` into a new directory on the mount; then
                       `find DIR -type f -print0 | xargs -0 cat > /dev/null` over it; files/s each.

Ratios are daxfs/baseline for throughput and baseline/daxfs for latency, so >= 1.0 always means
"daxfs at least as good". Goals, against the fair baseline (measured here, never asserted): every row
>= 1.0; 4 KiB pwrite and append >= 1.3.

--scale adds a daxfs mount (the headline configuration) of a 64 GiB sparse image populated
in-process through the engine (bench_fuse_mounts.build_scale_image): 100,000 files in 10 directories
(the rows' pop/d00 and the readdir row's pop/d01 among them, 10,000 files each), and a pwrite file of
100,000 one-block extents (a hole between each); the pwrite row writes about as many of its written blocks
as the small image's pwrite file has (2,084 with --quick, 4,167 without), spread evenly over all 100,000
extents, so that the row measures the extent map's size rather than a 50x larger working set of cold pages. It runs the
same rows in the same rounds, and table 3 gives each row's growth (cost on the large image / cost on
the small one); goal <= 1.2.

Table 2 is daxfs alone: sync mode (`-o map_sync`) against normal mode, for a 4 KiB write that
allocates a NEW block (appending to a file, so it allocates and grows i_size: in sync mode it waits
for a journal commit) and for a 4 KiB write to a STABLE block (already committed: never commits).
Goals: new-block sync/normal <= 2.0 (the seed's kernel pays ~5x), stable sync/normal <= 1.05.
The two modes alternate every 50 calls and the ratio is the median over adjacent pairs of chunks of
(sync chunk median / normal chunk median): at a 5% goal, comparing pooled medians taken seconds
apart on this machine swings by more than the goal. Then the sync mount's commit latency histogram
(`daxfs stats --json`), and a check that every append, and no stable write, waited for a commit.

Method: every file system is mounted once for the whole run. In each round every row runs once on
every mount, the mounts in a shuffled order for each row (table 2's two modes alternate every 50
calls), so that a noisy neighbour on this shared 2-core machine hits them all alike. Latency rows
report the median of all per-call samples of all rounds (p90 in --json); throughput rows the median
over rounds. Ratios (and table 3's growth) are paired, as in table 2: each round gives one figure per
mount (for per-call rows, that round's median), a round's ratio compares figures taken back to back,
and the tables print the median over rounds of those ratios. Figures taken a minute apart on this
machine swing by up to 2x, which the ratio of two medians would carry; so a printed ratio may differ
from the ratio of the two printed medians (--json has both, and every round's figures and ratios).
Requests are counted around the measured region only (snapshots are taken outside the timers, and
wait for what the kernel sends in the background, such as RELEASE and FORGET) and divided by the
operations in it, summed over all rounds.

Placement (--cpu N). Every row here is a ping-pong between the workload and one daemon, and on these
2-vCPU virtual machines a wakeup across CPUs costs tens of microseconds each way: a 4 KiB pwrite to
daxfs measured 22 us with the workload and the daemon on the same CPU and 96 us on different ones
(taskset, same mount, same minute). Where the scheduler puts them changes from run to run, which is
most of this benchmark's noise, for every file system alike. --cpu N runs the benchmark, and so every
daemon it starts and every workload, on CPU N: the figures then leave out the cross-CPU wakeup and
vary far less; the default leaves placement to the scheduler, as a user's machine would.

passthroughfs.py is not kept in this repository: it is taken from the pyfuse3 sdist of the installed
pyfuse3 version at run time (`pip download --no-binary :all:`) into a temporary directory.

    .venv/bin/python tools/bench_fuse.py                 # full run (about 12 minutes here)
    .venv/bin/python tools/bench_fuse.py --quick         # short run
    .venv/bin/python tools/bench_fuse.py --scale         # and the 64 GiB, 100,000-file image (+5 minutes)
    .venv/bin/python tools/bench_fuse.py --rows pwrite,append --rounds 9 --json out.json
    .venv/bin/python tools/bench_fuse.py --quick --cpu 0   # everything on CPU 0: steadier figures

Every mount is unmounted and every temporary file, directory and image removed on exit, on error and
on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import signal
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fuse_mounts import BASE, BS, GiB, MiB, PWRITE_FILE, READDIR_DIR, REPO, Meter, Workspace, build_scale_image  # noqa: E402
from bench_fuse_rows import (CHUNK, Cell, Ctx, Params, Row, Samples2, make_tree_tar, median, p90,  # noqa: E402
                             prepare_file, prepare_layout, rows, table2_round)

console = Console(width=None if sys.stdout.isatty() else 200)

FAIR, PLAIN, SCALE = "passthroughfs+xattr", "passthroughfs", "scale"
SCALE_SIZE, SCALE_FILES, SCALE_DIRS, SCALE_EXTENTS = 64 * GiB, 100_000, 10, 100_000


# --- report ----------------------------------------------------------------------------------------
def goodness(r: Row, daxfs: float, base: float) -> float:
    """>= 1.0: daxfs at least as good as base."""
    return daxfs / base if r.higher_better else base / daxfs


def paired(fn, r: Row, a: Cell, b: Cell) -> float:
    """fn(r, a, b) for each round's figures (taken back to back), and the median over rounds."""
    return median([fn(r, x, y) for x, y in zip(a.rounds, b.rounds)])


def fmt_value(r: Row, v: float) -> str:
    if r.higher_better:
        return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def fmt_ratio(x: float, goal: float | None, below: bool = False) -> str:
    if goal is None:
        return f"{x:.2f}"
    ok = x <= goal if below else x >= goal
    return f"[{'green' if ok else 'red'}]{x:.2f}[/]"


def fmt_req(c: Cell) -> str:
    x = c.per_op()
    return "n/a" if x is None else f"{x:.2f}"


def table1(rs: list[Row], cells: dict[str, dict[str, Cell]], headline: str, other: str) -> Table:
    t = Table(title=f"Table 1: daxfs vs pyfuse3 passthroughfs.py over tmpfs — ratio >= 1.0 means daxfs at least as "
                    f"good; req = requests per operation")
    for col, just in [("row", "left"), ("unit", "left"), (FAIR, "right"), ("req", "right"), (PLAIN, "right"),
                      ("req", "right"), (f"daxfs {headline}", "right"), ("req", "right"), ("vs fair", "right"),
                      ("vs plain", "right"), (f"daxfs {other}", "right"), ("vs fair", "right"), ("goal", "right")]:
        t.add_column(col, justify=just)
    for r in rs:
        f, pl, hd, ot = (cells[n][r.key] for n in (FAIR, PLAIN, headline, other))
        vf, vp, vh, vo = (median(c.values) for c in (f, pl, hd, ot))
        t.add_row(r.label, r.unit, fmt_value(r, vf), fmt_req(f), fmt_value(r, vp), fmt_req(pl), fmt_value(r, vh),
                  fmt_req(hd), fmt_ratio(paired(goodness, r, hd, f), r.goal),
                  fmt_ratio(paired(goodness, r, hd, pl), None), fmt_value(r, vo),
                  fmt_ratio(paired(goodness, r, ot, f), r.goal), f"≥ {r.goal:.1f}")
    return t


def breakdown(c: Cell) -> str:
    by = c.by_op()
    if by is None:
        return "n/a"
    return " ".join(f"{k} {v:.2f}" for k, v in by.items() if v >= 0.005) or "0"


def requests_table(rs: list[Row], cells: dict[str, dict[str, Cell]], names: list[str]) -> Table:
    t = Table(title="Requests per operation, by FUSE op (each daemon's own counters)")
    t.add_column("row")
    for n in names:
        t.add_column(n if n in (FAIR, PLAIN) else f"daxfs {n}")
    for r in rs:
        t.add_row(r.label, *(breakdown(cells[n][r.key]) for n in names))
    if any(cells[n][r.key].requests is None for n in names for r in rs):
        t.caption = "n/a: that daemon keeps no per-op request counters (no `requests` in `daxfs stats --json`)"
    return t


def growth(r: Row, small: float, large: float) -> float:
    """Cost on the large image / cost on the small one (> 1: dearer at scale)."""
    return small / large if r.higher_better else large / small


def table3(rs: list[Row], cells: dict[str, dict[str, Cell]], headline: str, scale_info: dict) -> Table:
    t = Table(title=f"Table 3: how cost grows — daxfs {headline}, 1 GiB image vs {scale_info['image_bytes'] // GiB} "
                    f"GiB image with {scale_info['files']:,} files and a {scale_info['pwrite_file_extents']:,}-extent "
                    "pwrite file; growth = cost large / cost small, median over rounds")
    for col, just in [("row", "left"), ("unit", "left"), ("small", "right"), ("req", "right"), ("large", "right"),
                      ("req", "right"), ("growth", "right"), ("goal", "right")]:
        t.add_column(col, justify=just)
    for r in rs:
        s, big = cells[headline][r.key], cells[SCALE][r.key]
        vs, vb = median(s.values), median(big.values)
        t.add_row(r.label, r.unit, fmt_value(r, vs), fmt_req(s), fmt_value(r, vb), fmt_req(big),
                  fmt_ratio(paired(growth, r, s, big), 1.2, below=True), "≤ 1.2")
    return t


def table2(s: Samples2, label: str) -> Table:
    t = Table(title=f"Table 2: daxfs ({label}) sync mode (-o map_sync) vs normal mode, 4 KiB writes")
    for col in ("write", "normal median µs", "normal p90 µs", "map_sync median µs", "map_sync p90 µs",
                "sync/normal", "per-round", "goal"):
        t.add_column(col, justify="left" if col == "write" else "right")
    for name, us, pairs, goal in table2_rows(s):
        a, b = us["normal"], us["map_sync"]
        r = median([x for rnd in pairs for x in rnd])
        per_round = [median(rnd) for rnd in pairs]
        t.add_row(name, f"{median(a):.1f}", f"{p90(a):.1f}", f"{median(b):.1f}", f"{p90(b):.1f}",
                  fmt_ratio(r, goal, below=True), f"{min(per_round):.2f}–{max(per_round):.2f}", f"≤ {goal:g}")
    return t


def table2_rows(s: Samples2):
    return (("to a NEW block (append)", s.new_us, s.new_pairs, 2.0),
            ("to a STABLE block", s.stable_us, s.stable_pairs, 1.05))


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


def json_report(rs: list[Row], cells: dict[str, dict[str, Cell]], names: list[str], headline: str, other: str,
                extra: dict) -> dict:
    out_rows = []
    for r in rs:
        row = {"key": r.key, "label": r.label, "unit": r.unit, "higher_better": r.higher_better,
               "goal_vs_fair": r.goal, "systems": {}}
        for n in names:
            c = cells[n][r.key]
            row["systems"][n] = {"median": median(c.values), "p90": p90(c.values) if r.per_call else None,
                                 "per_round": c.rounds,
                                 "samples": len(c.values), "ops": c.ops, "requests_per_op": c.per_op(),
                                 "requests_by_op": c.by_op()}
        c = cells
        pairs = {f"{headline}_vs_fair": (goodness, headline, FAIR), f"{headline}_vs_plain": (goodness, headline, PLAIN),
                 f"{other}_vs_fair": (goodness, other, FAIR)}
        if SCALE in names:
            pairs["growth_scale"] = (growth, headline, SCALE)
        row["ratios"] = {k: paired(fn, r, c[a][r.key], c[b][r.key]) for k, (fn, a, b) in pairs.items()}
        row["ratios_per_round"] = {k: [fn(r, x, y) for x, y in zip(c[a][r.key].rounds, c[b][r.key].rounds)]
                                   for k, (fn, a, b) in pairs.items()}
        row["ratios_of_medians"] = {k: fn(r, median(c[a][r.key].values), median(c[b][r.key].values))
                                    for k, (fn, a, b) in pairs.items()}
        out_rows.append(row)
    return {"rows": out_rows, **extra}


def warm_up(m) -> None:
    """Before the first round: list the rows' directories and stat the pwrite file once, so that the
    first round does not pay for what the daemon loads on first touch (the large image is mounted
    cold; the small ones were populated through their mounts)."""
    for d in (BASE, READDIR_DIR):
        os.listdir(m.path(d))
    os.stat(m.path(PWRITE_FILE))


# --- main ------------------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="short run: fewer rounds and samples (noisier)")
@click.option("--rounds", type=int, default=None, help="rounds (default 7; --quick 2)")
@click.option("--seq-mib", type=int, default=None, help="MiB per sequential write/read (default 64; --quick 16)")
@click.option("--headline", type=click.Choice(["msync", "nomsync"]), default="msync", show_default=True,
              help="which daxfs configuration the ratios, table 2 and --scale are about")
@click.option("--other", type=click.Choice(["msync-flipped", "pyfuse3-loop"]), default="msync-flipped", show_default=True,
              help="the second daxfs column: the headline with msync flipped, or the headline run by pyfuse3.main() "
                   "instead of daxfs's own session loop (DAXFS_SESSION_LOOP=pyfuse3)")
@click.option("--cpu", "pin_cpu", type=int, default=None,
              help="run this benchmark and every daemon it starts on this one CPU (see 'Placement' above)")
@click.option("--scale", is_flag=True, help="also run every row on a 64 GiB image with 100,000 files (table 3)")
@click.option("--rows", "only", default=None, help="comma-separated row keys to run (default: all)")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the random offsets and the tar tree")
@click.option("--skip-table2", is_flag=True, help="no table 2")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="also write every figure to this JSON file")
def main(quick: bool, rounds: int | None, seq_mib: int | None, headline: str, other: str, pin_cpu: int | None,
         scale: bool, only: str | None,
         seed: int, skip_table2: bool, json_path: str | None) -> None:
    """daxfs vs pyfuse3's passthroughfs.py, with and without xattrs, over tmpfs (table 1; table 3 with
    --scale), and daxfs sync vs normal mode (table 2)."""
    t_start = time.monotonic()
    if pin_cpu is not None:
        try:  # inherited by every mount's daemon, passthroughfs and the workloads' children
            os.sched_setaffinity(0, {pin_cpu})
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"cannot run on CPU {pin_cpu}: {e}", param_hint="--cpu") from None
    if quick:
        p = Params(rounds=rounds or 2, seq_mib=seq_mib or 16, pwrite_file_mib=8, pwrites=500, appends=500, stats=2000,
                   creates=300, mkdirs=300, renames=300, readdir_entries=2000, listings=1, sqlite_inserts=200,
                   tar_files=1000, stable_writes=500, t2_appends=300)
    else:
        p = Params(rounds=rounds or 7, seq_mib=seq_mib or 64, pwrite_file_mib=16, pwrites=2000, appends=2000,
                   stats=5000, creates=1000, mkdirs=1000, renames=1000, readdir_entries=10_000, listings=1,
                   sqlite_inserts=500, tar_files=5000, stable_writes=2000, t2_appends=1000)
    if scale:
        p.readdir_entries = SCALE_FILES // SCALE_DIRS  # the same directory size as on the large image
    if p.rounds < 1 or p.seq_mib < 1:
        raise click.BadParameter("--rounds and --seq-mib must be at least 1")
    all_rows = rows(p)
    if only:
        keys = [k.strip() for k in only.split(",") if k.strip()]
        unknown = set(keys) - {r.key for r in all_rows}
        if unknown:
            raise click.BadParameter(f"unknown rows {sorted(unknown)}; known: {[r.key for r in all_rows]}")
        needs = {"read_cold": ["seq_write"], "read_warm": ["seq_write", "read_cold"], "find_cat": ["untar"]}
        keys += [k2 for k in keys for k2 in needs.get(k, [])]  # rows that set up for another
        all_rows = [r for r in all_rows if r.key in keys]
    headline_opts = [] if headline == "msync" else ["nomsync"]
    if other == "pyfuse3-loop":
        other, other_opts, other_env = f"{headline} pyfuse3-loop", headline_opts, {"DAXFS_SESSION_LOOP": "pyfuse3"}
    else:
        other = "nomsync" if headline == "msync" else "msync"
        other_opts, other_env = ["nomsync"] if other == "nomsync" else [], None
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
        tar_path = os.path.join(ws.root, "tree.tar")
        tar_bytes, tar_data = make_tree_tar(p.tar_files, seed)
        with open(tar_path, "wb") as f:
            f.write(tar_bytes)
        with console.status(f"mounting both passthroughfs baselines and daxfs ({headline}, {other})…"):
            mounts = {FAIR: ws.mount_passthrough(script, FAIR, xattr=True),
                      PLAIN: ws.mount_passthrough(script, PLAIN, xattr=False),
                      headline: ws.mount_daxfs(headline, headline_opts),
                      other: ws.mount_daxfs(other, other_opts, env=other_env)}
        setup_s = {}
        for name, m in mounts.items():
            with console.status(f"preparing {name}: the pwrite file and {p.readdir_entries:,} readdir entries…"):
                setup_s[name] = prepare_layout(m, p)
        scale_info = None
        if scale:
            image = os.path.join(ws.root, "scale.img")
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=True) as progress:
                task = progress.add_task(f"populating the {SCALE_SIZE // GiB} GiB image in-process",
                                         total=SCALE_FILES + SCALE_EXTENTS)
                scale_info = build_scale_image(image, SCALE_SIZE, SCALE_FILES, SCALE_DIRS, SCALE_EXTENTS,
                                               lambda n: progress.advance(task, n))
            with console.status("mounting the large image…"):
                t0 = time.perf_counter()
                mounts[SCALE] = ws.mount_daxfs(SCALE, headline_opts, image=image)
                scale_info["mount_s"] = round(time.perf_counter() - t0, 1)
            # As many distinct blocks as the small image's pwrite file has, spread over all 100,000 extents:
            # the row then measures the extent map's size, not the page cache of a 400x larger working set.
            spread = 2 * (SCALE_EXTENTS // (p.pwrite_file_mib * MiB // BS))  # even: the written blocks
            mounts[SCALE].pw_blocks = range(0, 2 * SCALE_EXTENTS, spread)
            console.print(f"large image: {scale_info}")
        with console.status("warming up: one listing of each mount's directories, one stat…"):
            for m in mounts.values():
                warm_up(m)
                m.calibrate()
        names = list(mounts)
        cells = {n: {r.key: Cell() for r in all_rows} for n in names}

        t2 = {}
        if not skip_table2:
            with console.status("mounting daxfs map_sync and normal for table 2…"):
                t2 = {"map_sync": ws.mount_daxfs(f"t2 map_sync {headline}", headline_opts + ["map_sync"]),
                      "normal": ws.mount_daxfs(f"t2 normal {headline}", headline_opts)}
            for m in t2.values():
                prepare_file(m.path("stable"), p.pwrite_file_mib * MiB)
            sync_base = t2["map_sync"].stats()
        results2 = Samples2()

        steps = p.rounds * (len(all_rows) * len(names) + (2 if t2 else 0))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("measuring", total=steps)
            for rnd in range(p.rounds):
                for r in all_rows:
                    order = list(names)
                    rng.shuffle(order)
                    for name in order:
                        progress.update(task, description=f"round {rnd + 1}/{p.rounds}: {r.key}, {name}")
                        meter = Meter(mounts[name])
                        values, ops = r.fn(Ctx(mounts[name], p, rnd, rng, meter, tar_path))
                        cells[name][r.key].add(values, ops, meter.delta)
                        progress.advance(task)
                if t2:
                    progress.update(task, description=f"round {rnd + 1}/{p.rounds}: table 2, map_sync/normal")
                    table2_round(t2, results2, p, rnd, rng, lambda: progress.advance(task))
        sync_stats = t2["map_sync"].stats() if t2 else None
        normal_stats = t2["normal"].stats() if t2 else None

        console.print()
        console.print(table1(all_rows, cells, headline, other))
        console.print(f"{FAIR}: pyfuse3-{version} examples/passthroughfs.py with xattrs and fsync forwarded "
                      f"(tools/passthrough_counted.py); {PLAIN}: as shipped; both over tmpfs. daxfs: 1 GiB images "
                      f"in /dev/shm, normal mode; headline daxfs {headline}"
                      + (" (the default: `daxfs mount` msyncs; on tmpfs msync buys no durability, so counting it "
                         "is the stricter comparison)." if headline == "msync" else " (not the default)."))
        console.print(f"{p.rounds} rounds. Per round and mount: {p.pwrites} pwrites into a {p.pwrite_file_mib} MiB "
                      f"file, {p.appends} appends, {p.seq_mib} MiB seq, {p.stats} stats, {p.creates} create+unlink, "
                      f"{p.mkdirs} mkdir+rmdir, {p.renames} renames, {p.listings} listing(s) of {p.readdir_entries:,} "
                      f"entries, {p.sqlite_inserts} SQLite inserts, a {len(tar_bytes) / MiB:.1f} MiB tar of "
                      f"{p.tar_files:,} files ({tar_data / MiB:.1f} MiB of data). µs/ms rows: median of all calls; "
                      "others: median of rounds. Ratios: median over rounds of each round's ratio. "
                      "req: requests in the measured region / operations, all rounds; "
                      "seq rows: per 1 MiB read/write call.")
        console.print()
        console.print(requests_table(all_rows, cells, names))
        if scale_info:
            console.print()
            console.print(table3(all_rows, cells, headline, scale_info))
            console.print(f"large image populated in-process in {scale_info['populate_s']} s, mounted in "
                          f"{scale_info['mount_s']} s; the rows work in its pop/d00 (10,000 files and the pwrite "
                          "file), readdir lists pop/d01 (10,000 files).")
        if t2:
            console.print()
            console.print(table2(results2, headline))
            console.print(f"{p.t2_appends} appends and {p.stable_writes} stable pwrites (random, into a "
                          f"{p.pwrite_file_mib} MiB file written and fsync'd first) per round and mode, {p.rounds} "
                          f"rounds. µs columns: median and p90 of all calls. sync/normal: the median over all pairs of "
                          f"adjacent {CHUNK}-call chunks (the modes alternate every {CHUNK} calls) of the ratio of "
                          "their medians; per-round: the lowest and highest round's median of those ratios.")
            console.print()
            hist, summary = histogram_table(sync_stats, "Commit latency (map_sync mount)")
            console.print(hist)
            console.print(f"from `daxfs stats --json` of the map_sync mount ({headline}), whole run: {summary}")
            faults = sync_stats["sync_faults"] - sync_base["sync_faults"]
            expected = p.t2_appends * p.rounds
            check = "[green]as expected[/]" if faults == expected else "[red]NOT as expected[/]"
            console.print(f"sync faults while measuring: {faults} for {expected} appends and "
                          f"{p.stable_writes * p.rounds} stable writes ({check}: every append, no stable write)")
            console.print(f"normal-mode mount for comparison: commits={normal_stats['commits']} "
                          f"sync_faults={normal_stats['sync_faults']}")
        argv = [".venv/bin/python", "tools/bench_fuse.py"] + sys.argv[1:]
        if "--seed" not in sys.argv[1:]:
            argv += ["--seed", str(seed)]
        elapsed = time.monotonic() - t_start
        console.print()
        console.print(f"took {elapsed:.0f} s; reproduce (from {REPO}): [bold]{shlex.join(argv)}[/]")
        if json_path:
            t2_json = None
            if t2:
                t2_json = {name: {"normal_median_us": median(us["normal"]), "map_sync_median_us": median(us["map_sync"]),
                                  "sync_over_normal": median([x for rnd in pairs for x in rnd]), "goal": goal}
                           for name, us, pairs, goal in table2_rows(results2)}
                t2_json["sync_faults"] = faults
                t2_json["expected_sync_faults"] = expected
            extra = {"command": shlex.join(argv), "elapsed_s": round(elapsed, 1), "params": vars(p),
                     "headline": headline, "pyfuse3": version, "python": platform.python_version(),
                     "kernel": platform.release(), "setup_s": setup_s, "scale": scale_info, "table2": t2_json}
            with open(json_path, "w") as f:
                json.dump(json_report(all_rows, cells, names, headline, other, extra), f, indent=1)
            console.print(f"figures written to {json_path}")
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
        for problem in ws.close():
            console.print(f"[red]{problem}[/]")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(code)


if __name__ == "__main__":
    main()
