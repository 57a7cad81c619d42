"""Running a crash campaign for a person: progress bar, summary table, JSON report, replay commands.

The campaign itself (cases, crashes, the oracle) is crashtest.py; this module drives it with a thread
pool (each case spends its time waiting for daemons and workers) and prints what it found.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from daxfs.engine.errors import DaxfsError
from daxfs.testing import campaign as crashtest
from daxfs.testing import workload
from daxfs.testing.campaign import Case, Plan, Result, Summary

# soft_wrap: a line longer than the terminal is not cut with real newlines, so every printed replay
# command stays one line a reader can copy from a CI log.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 140, soft_wrap=True)
SECONDS_PER_POINT = 1.0  # a crash point's cost at one job on these machines (mount, run, kill, remount, fsck)


def print_points() -> None:
    width = max(len(p) for p, _ in crashtest.list_points())
    for point, what in crashtest.list_points():
        console.print(f"{point:<{width}}  {what}", highlight=False)


def main(*, mode: str, points: int, seed: int | None, workloads: list[str], cmd: str, check: str, jobs: int,
         json_file: str | None, inject: bool, passes_per_point: int, sequences: int | None, keep: str | None,
         workload_seed: int | None, sequence: int | None, crash_after: float | None, crash_at: str | None) -> int:
    workloads = _validate(workloads, cmd, check, crash_at)
    if crash_after is not None or crash_at is not None:
        return _replay(workloads[0], mode, workload_seed if workload_seed is not None else (seed or 0),
                       sequence, crash_after, crash_at, cmd, check, keep)
    if seed is None:
        seed = random.randrange(1 << 31)
    plan = Plan(mode, seed, workloads, points, inject, passes_per_point, sequences, cmd, check)
    console.print(f"daxfs crashtest: {mode} mode, seed {seed}, workloads {', '.join(workloads)}; "
                  f"reproduce with --seed {seed}", highlight=False)
    console.print("first a dry run of each workload (it finds the injection points each one passes), then the "
                  f"crash points, {jobs} at a time; Ctrl-C stops early with a summary of what ran", highlight=False)
    summary = Summary()
    interrupted = False
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[bad]} failed"), console=console, transient=False) as progress, \
            concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        task = progress.add_task("dry runs", total=None, bad=0)

        def done(r: Result) -> None:
            summary.add(r)
            progress.update(task, advance=1, bad=summary.violations)

        try:
            if workloads == ["ace"]:
                cases = crashtest.ace_cases(plan, pool, done)
            else:
                cases = crashtest.make_cases(plan, crashtest.dry_runs(plan, pool, done))
            progress.update(task, description="crash points", total=len(summary.results) + len(cases))
            progress.console.print(f"{len(cases)} crash points to run: about "
                                   f"{max(1, round(len(cases) * SECONDS_PER_POINT / jobs / 60))} minutes",
                                   highlight=False)
            futures = [pool.submit(crashtest.run_case, c, keep, cmd, check) for c in cases]
            for f in concurrent.futures.as_completed(futures):
                done(f.result())
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)
    _print_summary(summary, plan, interrupted)
    if json_file:
        with open(json_file, "w") as f:
            json.dump({**summary.as_dict(plan), "interrupted": interrupted}, f, indent=1)
        console.print(f"JSON report: {json_file}")
    # An interrupted campaign proved nothing about the points it skipped: never exit as a pass.
    return 130 if interrupted else 1 if summary.violations else 0


def _validate(workloads: list[str], cmd: str, check: str, crash_at: str | None) -> list[str]:
    if bool(cmd) != bool(check):
        raise DaxfsError("--cmd and --check go together: the check decides what may survive the crash")
    if cmd:
        if workloads and workloads != ["cmd"]:
            raise DaxfsError("--cmd replaces the built-in workloads; leave out --workload")
        workloads = ["cmd"]
    known = list(workload.WORKLOADS) + ["ace", "cmd"]
    for w in workloads:
        if w not in known:
            raise DaxfsError(f"unknown workload {w!r}; the built-in ones: {', '.join(workload.WORKLOADS)}, ace")
    if "ace" in workloads and len(workloads) > 1:
        raise DaxfsError("--workload ace (the exhaustive generator) runs on its own")
    if crash_at is not None and crash_at != "end":
        point = crash_at.rpartition(":")[0] or crash_at
        if point not in dict(crashtest.list_points()):
            raise DaxfsError(f"--crash-at {crash_at}: unknown point (see --list-points)")
    return workloads or list(workload.WORKLOADS)


def _replay(name: str, mode: str, seed: int, sequence: int | None, crash_after: float | None,
            crash_at: str | None, cmd: str, check: str, keep: str | None) -> int:
    if name == "ace" and sequence is None:
        raise DaxfsError("--workload ace with --crash-at needs --sequence K")
    if crash_after is not None:
        crash = f"after:{crash_after}"
    elif crash_at == "end":
        crash = "end"
    else:
        crash = f"at:{crash_at}" if ":" in crash_at else f"at:{crash_at}:1"
    case = Case(name, seed, mode, crash, sequence if sequence is not None else -1)
    r = crashtest.run_case(case, keep, cmd, check)
    console.print(f"{case.command(cmd, check)}\n  {r.note}; {r.seconds:.2f} s; operations in the recovered "
                  f"state per writer: {r.verdict.prefixes}", highlight=False)
    if case.mode == "normal":
        console.print(f"  acknowledged writes lost as the model allows: {r.verdict.lost}", highlight=False)
    for v in r.verdict.violations:
        console.print(f"  [red]{v.kind}[/]: {v.detail}", highlight=False)
    if r.kept:
        console.print(f"  images and logs kept in {r.kept}", highlight=False)
    if not r.verdict.violations:
        console.print("  no violation", highlight=False)
    return 1 if r.verdict.violations else 0


def _print_summary(summary: Summary, plan: Plan, interrupted: bool = False) -> None:
    d = summary.as_dict(plan)
    t = Table(title=f"crash campaign: {plan.mode} mode, seed {plan.seed}{' (INTERRUPTED)' if interrupted else ''}")
    for col in ("workload", "points", "injected", "violations", "lost as allowed", "s/point"):
        t.add_column(col, justify="left" if col in ("workload", "violations") else "right")
    for row in d["summary"]:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(row["violations"].items())) or "0"
        lost = f"{row['lost_as_allowed']}/{row['acked_writes']}" if plan.mode == "normal" and row["acked_writes"] else "-"
        t.add_row(row["workload"], str(row["points"]), str(row["injected"]), kinds, lost,
                  f"{row['seconds_per_point']:.2f}")
    console.print(t)
    console.print(f"{d['points']} crash points in {d['elapsed_s']} s ({d['points_per_minute']} per minute), "
                  f"{d['failed_points']} with violations.", highlight=False)
    if interrupted:
        console.print("INTERRUPTED: only the points above ran; this is no pass.", highlight=False)
    if plan.mode == "normal" and any(row["acked_writes"] for row in d["summary"]):
        console.print("lost as allowed: acknowledged writes (of all acknowledged) that were not committed when "
                      "the daemon died, which normal mode permits; map_sync mode would have kept them.",
                      highlight=False)
    for r in summary.results:
        if r.verdict.violations:
            console.print(f"[red]FAILED[/] {r.case.command(plan.cmd, plan.check)}", highlight=False)
            for v in r.verdict.violations[:5]:
                console.print(f"    {v.kind}: {v.detail}", highlight=False)
