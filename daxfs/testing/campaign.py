"""`daxfs crashtest`: mount, run a workload, crash the daemon, remount, fsck, and check the oracle.

One case is one crash:

  1. mkfs a fresh image, mount it (sync mode: -o map_sync; normal mode: the default commit interval);
  2. run the workload's set-up (durable: it ends with an fsync of the root), then its operations in a
     worker process that logs every acknowledgement outside the file system (workload.py);
  3. crash: SIGKILL the daemon after a random delay, or let it kill itself on the N-th pass of a named
     injection point (-o crash_at=POINT:N, armed through the control channel after the set-up), or kill it
     once the workload is done; clean the dead mount;
  4. fsck the crashed image, remount (replay), read back every file, check the oracle (oracle.py),
     unmount, fsck again.

Which passes exist is learnt from a dry run of each workload (the daemon counts the passes of every
point); its duration bounds the random delays. Cases are made from the campaign seed alone, so a run is
reproducible, and each case has one command that replays exactly it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from daxfs.engine import crashpoint, fsck
from daxfs.engine.mkfs import mkfs
from daxfs.testing import oracle, workload
from daxfs.testing.mount import Mount, pid_alive, wait_dead
from daxfs.testing.oracle import Verdict, Violation

IMAGE_SIZE = 64 << 20
WORKER_TIMEOUT = 120.0
REPLAY_POINT = "replay.applied"  # passed at the next mount, not while the workload runs
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None


@dataclass
class Case:
    workload: str  # a built-in workload, "ace" (sequence `seq` of the exhaustive generator) or "cmd"
    seed: int  # the workload's seed: which operations, which bytes
    mode: str  # sync | normal
    crash: str  # "after:SECONDS" | "at:POINT:N" | "end"
    seq: int = -1

    @property
    def replay_point(self) -> str:
        """"POINT:N" if the case crashes at a point of the replay (at the next mount), else ""."""
        return self.crash[3:] if self.crash.startswith("at:replay.") else ""

    def command(self, cmd: str = "", check: str = "") -> str:
        """The one command that replays exactly this case."""
        args = ["daxfs", "crashtest", "--mode", self.mode, "--workload", self.workload]
        if self.workload == "ace":
            args += ["--sequence", str(self.seq)]
        elif self.workload == "cmd":
            args += ["--cmd", cmd, "--check", check]
        else:
            args += ["--workload-seed", str(self.seed)]
        kind, _, arg = self.crash.partition(":")
        args += {"after": ["--crash-after", arg], "at": ["--crash-at", arg], "end": ["--crash-at", "end"]}[kind]
        return " ".join(shlex.quote(a) for a in args)


@dataclass
class Result:
    case: Case
    verdict: Verdict
    seconds: float
    note: str = ""
    passes: dict[str, int] = field(default_factory=dict)  # crash-point passes during the operations
    duration: float = 0.0  # of the operations
    kept: str = ""  # where the images of a failed case were kept


def ops_of(case: Case) -> tuple[list[dict], list[dict]]:
    if case.workload == "ace":
        return workload.ace_sequences(case.seed)[case.seq]
    return workload.generate(case.workload, case.seed)


def run_case(case: Case, keep: str | None = None, cmd: str = "", check_cmd: str = "",
             opts: str | None = None) -> Result:
    """Run one case in a scratch directory of its own; always leaves nothing mounted. `opts` mounts with
    other options than the mode's, while the oracle still expects the mode's guarantees (a test uses it
    to show that the oracle catches a file system that breaks them)."""
    t0 = time.monotonic()
    wd = tempfile.mkdtemp(prefix="daxfs-crashtest-", dir=SCRATCH)
    if opts is None:
        opts = "map_sync" if case.mode == "sync" else ""
    m = Mount(os.path.join(wd, "img"), os.path.join(wd, "mnt"), opts, cli=False)
    os.mkdir(m.mnt)
    verdict, note, passes, duration = Verdict(), "", {}, 0.0
    try:
        mkfs(m.image, IMAGE_SIZE)
        m.mount()
        log = os.path.join(wd, "oracle.log")
        if case.workload == "cmd":
            note, duration = _crash_command(m, case, cmd, log)
        else:
            setup, ops = ops_of(case)
            _worker(m, setup, case.seed, log, wd, "setup").wait(WORKER_TIMEOUT)
            note, passes, duration = _crash_workload(m, case, ops, log, wd)
        verdict.violations += _fsck(m.image, "the crashed image")
        if case.replay_point:  # crash once more, inside the replay of the next mount
            p = m.mount(",".join(filter(None, [opts, f"crash_at={case.replay_point}"])), check=False)
            note += "; died in replay" if p.returncode else "; replay point not reached"
            if not p.returncode:
                _umount(m)
            verdict.violations += _fsck(m.image, "the image after a crash during replay")
        m.mount(opts)
        if case.workload == "cmd":
            verdict.violations += _check_command(m, check_cmd, log)
        else:
            v = oracle.check(setup, ops, case.seed, case.mode == "sync", log, m.mnt)
            v.violations = verdict.violations + v.violations
            verdict = v
        _umount(m)
        verdict.violations += _fsck(m.image, "the image after replay")
    except Exception as e:  # noqa: BLE001 - a case that cannot run is reported, the campaign goes on
        verdict.violations.append(Violation("case error", f"{type(e).__name__}: {e}"))
    finally:
        m.cleanup(fsck=False)
        kept = ""
        if verdict.violations and keep:
            kept = os.path.join(keep, f"case-{abs(hash(case.command())) % 10**8:08d}")
            shutil.copytree(wd, kept, ignore=shutil.ignore_patterns("mnt"), dirs_exist_ok=True)
        shutil.rmtree(wd, ignore_errors=True)
    return Result(case, verdict, time.monotonic() - t0, note, passes, duration, kept)


def _umount(m: Mount, tries: int = 20) -> None:
    """Unmount, retrying while busy: a case that just read files in the mount may overlap another job's
    fork, whose child holds copies of those descriptors until it execs (close-on-exec or not)."""
    for _ in range(tries - 1):
        if m.umount(check=False).returncode == 0:  # daemon.unmount waited for the daemon to exit
            return
        time.sleep(0.05)
    m.umount()


def _worker(m: Mount, ops: list[dict], seed: int, log: str, wd: str, name: str) -> subprocess.Popen:
    spec = os.path.join(wd, f"{name}.json")
    with open(spec, "w") as f:
        json.dump({"root": m.mnt, "oracle": log, "seed": seed, "ops": ops}, f)
    return subprocess.Popen([sys.executable, "-m", "daxfs.testing.workload", spec], stdin=subprocess.DEVNULL)


def _arm(m: Mount, case: Case) -> tuple[str, int]:
    kind, _, rest = case.crash.partition(":")
    if kind != "at" or case.replay_point:
        return "", 0
    point, _, nth = rest.rpartition(":")
    m.crash_at(point, int(nth))
    return point, int(nth)


def _crash_workload(m: Mount, case: Case, ops: list[dict], log: str, wd: str) -> tuple[str, dict, float]:
    pid = m.pid()
    before = m.passes()
    point, _ = _arm(m, case)
    t0 = time.monotonic()
    w = _worker(m, ops, case.seed, log, wd, "ops")
    note, passes = _crash(m, case, pid, w, point)
    if note == "ran to the end":  # a dry run: what the operations passed
        after = m.passes()
        passes = {p: after.get(p, 0) - before.get(p, 0) for p in after if after.get(p, 0) > before.get(p, 0)}
    duration = time.monotonic() - t0
    m.crash(pid)
    return note, passes, duration


def _crash(m: Mount, case: Case, pid: int, proc: subprocess.Popen, point: str,
           freeze: bool = False) -> tuple[str, dict]:
    """Wait for the crash the case asks for; the daemon is dead or about to be killed afterwards.
    With freeze, the workload (a process group of its own) is stopped before a random kill of the
    daemon and killed after it: a program with direct mappings could otherwise store into pmem after
    the crash instant, which a power cut would not let it do."""
    kind, _, arg = case.crash.partition(":")
    killed = False
    if kind == "after":
        try:
            proc.wait(float(arg))
        except subprocess.TimeoutExpired:
            if freeze:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGSTOP)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if freeze:
                wait_dead(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    try:
        proc.wait(WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"the workload hung for {WORKER_TIMEOUT:.0f} s") from None
    if kind == "at" and not case.replay_point:
        if pid_alive(pid):
            return f"{point} not reached: crashed after the last operation", {}
        return f"died at {point}", {}
    if killed:
        return "killed mid-workload", {}
    return "ran to the end", {}


def _crash_command(m: Mount, case: Case, cmd: str, log: str) -> tuple[str, float]:
    pid = m.pid()
    point, _ = _arm(m, case)
    env = dict(os.environ, DAXFS_MNT=m.mnt, DAXFS_ORACLE=log)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, shell=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    note, _ = _crash(m, case, pid, proc, point, freeze=True)
    duration = time.monotonic() - t0
    m.crash(pid)
    return note, duration


def _check_command(m: Mount, check_cmd: str, log: str) -> list[Violation]:
    env = dict(os.environ, DAXFS_MNT=m.mnt, DAXFS_ORACLE=log)
    p = subprocess.run(check_cmd, shell=True, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=WORKER_TIMEOUT)
    if p.returncode == 0:
        return []
    tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
    return [Violation("check failed", f"--check exited {p.returncode}: {' | '.join(tail)}")]


def _fsck(image: str, what: str) -> list[Violation]:
    report = fsck.check(image)
    return [Violation("fsck error", f"{what}: {p}") for p in report.problems[:5]]


# --- the campaign -------------------------------------------------------------------------------------
@dataclass
class Plan:
    mode: str
    seed: int
    workloads: list[str]
    points: int  # random crash points
    inject: bool = True  # also every injection point each workload passes
    passes_per_point: int = 3
    sequences: int | None = None  # ace: how many sequences (None: all)
    cmd: str = ""
    check: str = ""


def dry_runs(plan: Plan, pool, progress) -> dict[str, Result]:
    """One uncrashed run per workload (crashed only at the end): passes and duration."""
    cases = {w: Case(w, plan.seed, plan.mode, "end") for w in plan.workloads}
    futures = {w: pool.submit(run_case, c, None, plan.cmd, plan.check) for w, c in cases.items()}
    out = {}
    for w, f in futures.items():
        out[w] = f.result()
        progress(out[w])
    return out


def make_cases(plan: Plan, dry: dict[str, Result]) -> list[Case]:
    """The campaign's crashes after the dry runs, all derived from the plan's seed."""
    rng = random.Random(plan.seed)
    cases: list[Case] = []
    if plan.inject:
        for w in plan.workloads:
            for point, count in sorted(dry[w].passes.items()):
                for n in _spread(count, plan.passes_per_point):
                    cases.append(Case(w, plan.seed, plan.mode, f"at:{point}:{n}"))
            cases.append(Case(w, plan.seed, plan.mode, f"at:{REPLAY_POINT}:1"))
    for k in range(plan.points):
        w = plan.workloads[k % len(plan.workloads)]
        seed = plan.seed if w == "cmd" else rng.randrange(1 << 30)
        delay = rng.uniform(0, max(0.05, dry[w].duration) * 1.1)
        cases.append(Case(w, seed, plan.mode, f"after:{delay:.4f}"))
    return cases


def ace_cases(plan: Plan, pool, progress) -> list[Case]:
    """The bounded exhaustive generator: every sequence of up to two core operations, each run once to the
    end (the dry run) and then crashed at every pass of every injection point it passed."""
    seqs = workload.ace_sequences(plan.seed)
    chosen = list(range(len(seqs)))
    if plan.sequences is not None and plan.sequences < len(chosen):
        chosen = sorted(random.Random(plan.seed).sample(chosen, plan.sequences))
    dry = [pool.submit(run_case, Case("ace", plan.seed, plan.mode, "end", k)) for k in chosen]
    cases = []
    for k, f in zip(chosen, dry):
        r = f.result()
        progress(r)
        for point, count in sorted(r.passes.items()):
            cases += [Case("ace", plan.seed, plan.mode, f"at:{point}:{n}", k) for n in range(1, count + 1)]
        cases.append(Case("ace", plan.seed, plan.mode, f"at:{REPLAY_POINT}:1", k))
    return cases


def _spread(count: int, most: int) -> list[int]:
    """Up to `most` pass numbers out of 1..count, first and last included."""
    if count <= most:
        return list(range(1, count + 1))
    if most == 1:
        return [1 + count // 2]
    return sorted({1 + round(i * (count - 1) / (most - 1)) for i in range(most)})


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, r: Result) -> None:
        with self.lock:
            self.results.append(r)

    @property
    def violations(self) -> int:
        return sum(len(r.verdict.violations) > 0 for r in self.results)

    def rows(self) -> list[dict]:
        """One row per workload: points, violations by kind, losses allowed, time per point."""
        by: dict[str, list[Result]] = {}
        for r in self.results:
            by.setdefault(r.case.workload, []).append(r)
        rows = []
        for w, rs in sorted(by.items()):
            kinds: dict[str, int] = {}
            for r in rs:
                for v in r.verdict.violations:
                    kinds[v.kind] = kinds.get(v.kind, 0) + 1
            rows.append({"workload": w, "mode": rs[0].case.mode, "points": len(rs),
                         "injected": sum(r.case.crash.startswith("at:") for r in rs),
                         "failed_points": sum(bool(r.verdict.violations) for r in rs),
                         "violations": kinds, "lost_as_allowed": sum(r.verdict.lost for r in rs),
                         "acked_writes": sum(r.verdict.acked for r in rs),
                         "seconds_per_point": round(sum(r.seconds for r in rs) / len(rs), 2)})
        return rows

    def as_dict(self, plan: Plan) -> dict:
        elapsed = time.monotonic() - self.started
        return {"plan": asdict(plan), "points": len(self.results), "failed_points": self.violations,
                "elapsed_s": round(elapsed, 1),
                "points_per_minute": round(len(self.results) / elapsed * 60, 1) if elapsed else None,
                "summary": self.rows(),
                "cases": [{"workload": r.case.workload, "seed": r.case.seed, "sequence": r.case.seq,
                           "mode": r.case.mode, "crash": r.case.crash, "note": r.note,
                           "seconds": round(r.seconds, 3), "lost_as_allowed": r.verdict.lost,
                           "prefixes": r.verdict.prefixes,
                           "violations": [asdict(v) for v in r.verdict.violations],
                           "replay": r.case.command(plan.cmd, plan.check), "kept": r.kept}
                          for r in self.results]}


def list_points() -> list[tuple[str, str]]:
    return sorted(crashpoint.POINTS.items())


__all__ = ["Case", "Result", "Plan", "Summary", "run_case", "dry_runs", "make_cases", "ace_cases", "list_points"]
