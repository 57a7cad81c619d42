"""Summarize an xfstests run (tools/xfstests/run.sh): passed / failed / not run, each failure with the
first lines of its diff, the not-run tests grouped by reason. Prints text and writes JSON.

Reads xfstests' own results: RESULT_BASE/check.log (which tests ran, failed, did not run), the per-test
files RESULT_BASE/<dir>/<test>.notrun / .out.bad / .dmesg / .full, and check's console output
(RESULT_BASE/check.out, kept by run.sh) for the status line of a test that failed without an .out.bad.
Standard library only: it runs under any Python 3.11.

    python3 tools/xfstests/summarize.py RESULTS [--xfstests DIR] [--seconds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections import defaultdict

TEST = re.compile(r"^[a-z0-9]+/[0-9]+$")
DIFF_LINES = 8


def parse_check_log(path: str) -> dict | None:
    """The last run recorded in check.log (check appends one block per run)."""
    try:
        text = open(path, errors="replace").read()
    except FileNotFoundError:
        return None
    runs, cur = [], None
    for line in text.splitlines():
        if line.startswith("Kernel version:"):
            cur = {"ran": [], "not_run": [], "failures": [], "interrupted": False}
            runs.append(cur)
        elif cur is None:
            continue
        elif line.startswith("Ran:"):
            cur["ran"] = line.split()[1:]
        elif line.startswith("Not run:"):
            cur["not_run"] = line.split()[2:]
        elif line.startswith("Failures:"):
            cur["failures"] = line.split()[1:]
        elif line.startswith("Interrupted!"):
            cur["interrupted"] = True
    return runs[-1] if runs else None


def console_blocks(path: str) -> dict[str, list[str]]:
    """check's console output, per test: its status line and the indented lines after it."""
    blocks: dict[str, list[str]] = {}
    cur = None
    try:
        lines = open(path, errors="replace").read().splitlines()
    except FileNotFoundError:
        return blocks
    for line in lines:
        line = re.sub(r"^\[\d+/\d+ \d+:\d\d\] ", "", line)  # run.sh's progress prefix
        first = line.split(" ", 1)[0]
        if TEST.match(first):
            cur = blocks.setdefault(first, [])
            cur.append(line)
        elif cur is not None and line.startswith((" ", "\t")):
            cur.append(line)
        else:
            cur = None
    return blocks


def read_config(path: str | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if path and os.path.exists(path):
        for line in open(path):
            m = re.match(r'\s*export\s+(\w+)=(.*)$', line)
            if m:
                values[m.group(1)] = m.group(2).strip().strip('"')
    return values


def normalize(reason: str, config: dict[str, str]) -> str:
    """Per-run paths out of a not-run reason, so that equal reasons group together."""
    paths = [(config[v], v) for v in ("TEST_DIR", "SCRATCH_MNT", "TEST_DEV", "SCRATCH_DEV") if config.get(v)]
    for path, var in sorted(paths, key=lambda pv: -len(pv[0])):  # the image paths extend the mount points'
        reason = reason.replace(path, "$" + var)
    reason = re.sub(r"/[\w./-]*/daxfs-xfstests\.\w+", "$RUN", reason)
    return " ".join(reason.split())


def failure_detail(test: str, results: str, xfstests: str | None, console: list[str]) -> dict:
    base = os.path.join(results, test)
    status = console[0].split(" ", 1)[1].strip() if console else ""
    status = re.sub(r"^\d+s \.\.\.\s*", "", status)
    detail = {"test": test, "status": status, "diff": [], "files": {}}
    for ext in ("out.bad", "full", "dmesg", "hints"):
        if os.path.exists(f"{base}.{ext}"):
            detail["files"][ext] = f"{base}.{ext}"
    golden = os.path.join(xfstests, "tests", test + ".out") if xfstests else None
    if "out.bad" in detail["files"] and golden and os.path.exists(golden):
        want = open(golden, errors="replace").read().splitlines()
        got = open(detail["files"]["out.bad"], errors="replace").read().splitlines()
        diff = [d for d in difflib.unified_diff(want, got, "expected", "got", n=0, lineterm="")][2:]
        detail["diff"] = diff
    elif console[1:]:
        detail["diff"] = [line.strip() for line in console[1:]]
    elif "dmesg" in detail["files"]:
        detail["diff"] = open(detail["files"]["dmesg"], errors="replace").read().splitlines()[-DIFF_LINES:]
    return detail


def summarize(results: str, xfstests: str | None, seconds: int | None, config_path: str | None) -> dict:
    config = read_config(config_path or os.path.join(results, "local.config"))
    log = parse_check_log(os.path.join(results, "check.log"))
    console = console_blocks(os.path.join(results, "check.out"))
    if log is None:  # check died before writing its log: make do with what the console shows
        log = {"ran": list(console), "failures": [], "not_run": [], "interrupted": True}
        for t, block in console.items():
            if "[not run]" in block[0]:
                log["not_run"].append(t)
            elif not re.search(r"\s\d+s$", block[0]):
                log["failures"].append(t)
    failed = [failure_detail(t, results, xfstests, console.get(t, [])) for t in log["failures"]]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for t in log["not_run"]:
        path = os.path.join(results, t + ".notrun")
        reason = open(path, errors="replace").read().strip() if os.path.exists(path) else "(no .notrun file)"
        by_reason[normalize(reason, config)].append(t)
    bad = set(log["failures"]) | set(log["not_run"])
    # check counts the test it was interrupted in as passed; its console line shows no time for it
    unfinished = [t for t in log["ran"] if t not in bad and t in console
                  and not re.search(r"\s\d+s$", console[t][0].rstrip())]
    passed = [t for t in log["ran"] if t not in bad and t not in unfinished]
    return {
        "results": results,
        "xfstests": xfstests,
        "seconds": seconds,
        "interrupted": log["interrupted"],
        "config": config,
        "counts": {"tests": len(log["ran"]), "passed": len(passed), "failed": len(failed),
                   "not_run": len(log["not_run"]), "unfinished": len(unfinished)},
        "passed": passed,
        "unfinished": unfinished,
        "failed": failed,
        "not_run": [{"reason": r, "count": len(ts), "tests": ts}
                    for r, ts in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
    }


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def print_summary(s: dict, out=sys.stdout) -> None:
    c = s["counts"]
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p()
    p(f"xfstests on daxfs: {c['tests']} test{'s' if c['tests'] != 1 else ''} in {duration(s['seconds'])}"
      f"{' (interrupted)' if s['interrupted'] else ''}: "
      f"{c['passed']} passed, {c['failed']} failed, {c['not_run']} not run"
      + (f", {c['unfinished']} unfinished ({' '.join(s['unfinished'])})" if c["unfinished"] else ""))
    if s["failed"]:
        p(f"\nFailed ({c['failed']}):")
        for f in s["failed"]:
            p(f"  {f['test']}  {f['status']}")
            for line in f["diff"][:DIFF_LINES]:
                p(f"      {line}")
            if len(f["diff"]) > DIFF_LINES:
                p(f"      ... ({len(f['diff']) - DIFF_LINES} more lines)")
    if s["not_run"]:
        p(f"\nNot run ({c['not_run']}), by reason:")
        for g in s["not_run"]:
            tests = " ".join(g["tests"][:6]) + (f" +{g['count'] - 6} more" if g["count"] > 6 else "")
            p(f"  {g['count']:4d}  {g['reason']}")
            p(f"        {tests}")
    p(f"\nResults: {s['results']} (summary.json, check.log, <test>.out.bad/.full/.notrun)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="xfstests' RESULT_BASE of the run")
    ap.add_argument("--xfstests", help="the checkout (for the expected output of failed tests)")
    ap.add_argument("--seconds", type=int, help="how long the run took")
    ap.add_argument("--config", help="the run's local.config (default RESULTS/local.config)")
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args(argv)
    s = summarize(os.path.abspath(a.results), a.xfstests, a.seconds, a.config)
    print_summary(s)
    text = json.dumps(s, indent=2) + "\n"
    for path in filter(None, [os.path.join(a.results, "summary.json"), a.json]):
        with open(path, "w") as f:
            f.write(text)
    return 0 if s["counts"]["tests"] else 1


if __name__ == "__main__":
    sys.exit(main())
