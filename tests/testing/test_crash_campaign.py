"""Crash campaigns on real mounts: `daxfs crashtest`, its cases, and daxfs.testing as users call it.

The short campaigns here are what `make test` runs; `make crash` runs the long ones.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from daxfs.testing import campaign as crashtest
from daxfs.testing.campaign import Case
from helpers import BS, MiB, daxfs, pattern, read_file, write_file


pytestmark = pytest.mark.mount
DAXFS_BIN = os.path.join(os.path.dirname(sys.executable), "daxfs")  # the checkout's own `daxfs`


def campaign(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    p = daxfs("crashtest", "--json", report, "--jobs", "2", *args, timeout=600)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    r = json.loads(report.read_text())
    failed = [f"{c['replay']}: {c['violations']}" for c in r["cases"] if c["violations"]]
    p.failed = "\n".join(failed)  # what a failing assertion shows, rather than the table's first lines
    return p, r


def test_sync_mode_campaign_finds_no_violation(tmp_path):
    p, r = campaign(tmp_path, "--mode", "sync", "--seed", "11", "--points", "6", "--passes-per-point", "1",
                    "--workload", "appends", "--workload", "overwrites", "--workload", "namespace")
    assert p.returncode == 0 and r["failed_points"] == 0, p.failed
    injected = {c["crash"].split(":")[1] for c in r["cases"] if c["crash"].startswith("at:")}
    assert {"commit.records_written", "commit.done", "write.half_copied", "alloc.before_zero"} <= injected
    assert any(c["note"].startswith("died at") for c in r["cases"])  # the daemon really died there
    assert sum(c["crash"].startswith("after:") for c in r["cases"]) == 6
    assert "crash campaign: sync mode, seed 11" in p.stdout and "per minute" in p.stdout


def test_normal_mode_loses_acknowledged_writes_as_the_model_allows(tmp_path):
    p, r = campaign(tmp_path, "--mode", "normal", "--seed", "13", "--points", "2", "--no-inject",
                    "--workload", "overwrites")
    assert p.returncode == 0 and r["failed_points"] == 0, p.failed
    assert sum(row["lost_as_allowed"] for row in r["summary"]) > 0  # the contrast with map_sync
    assert "lost as allowed" in p.stdout


def test_the_oracle_catches_a_mount_that_breaks_the_map_sync_promise():
    """The same workload, mounted in normal mode but checked against the sync-mode guarantees: a checker
    that could not fail would pass this too."""
    r = crashtest.run_case(Case("appends", 3, "sync", "end"), opts="commit=60")
    kinds = {v.kind for v in r.verdict.violations}
    assert kinds & {"acknowledged data missing", "size wrong", "file missing"}, r.verdict
    assert crashtest.run_case(Case("appends", 3, "sync", "end")).verdict.violations == []


def test_a_failed_case_prints_the_command_that_replays_it(tmp_path):
    case = Case("namespace", 9, "sync", "at:commit.done:2")
    cmd = case.command()
    assert cmd == "daxfs crashtest --mode sync --workload namespace --workload-seed 9 --crash-at commit.done:2"
    p = daxfs(*cmd.split()[1:], "--keep", tmp_path / "kept", timeout=120)
    assert p.returncode == 0 and "died at commit.done" in p.stdout and "no violation" in p.stdout, p.stdout


def test_list_points_and_bad_arguments():
    p = daxfs("crashtest", "--list-points", check=True)
    assert "commit.records_written" in p.stdout and "write.before_ack" in p.stdout
    for args, words in ((["--workload", "nosuch"], "unknown workload"),
                        (["--cmd", "true"], "--check"),
                        (["--crash-at", "nowhere:1"], "unknown point")):
        p = daxfs("crashtest", *args)
        assert p.returncode != 0 and "Traceback" not in p.stderr and words in p.stderr, (args, p.stderr)


def test_crash_test_your_own_program_with_cmd_and_check(tmp_path):
    """A user's program logs what it was told is done; the checker says whether that survived."""
    cmd = ("for i in $(seq 1 200); do printf 'record %s' $i > $DAXFS_MNT/r$i && echo r$i >> $DAXFS_ORACLE; done")
    check = ("while read f; do [ \"$(cat $DAXFS_MNT/$f)\" = \"record ${f#r}\" ] || { echo lost $f; exit 1; }; "
             "done < $DAXFS_ORACLE")
    p, r = campaign(tmp_path, "--mode", "sync", "--seed", "3", "--points", "3", "--no-inject", "--cmd", cmd,
                    "--check", check)
    assert p.returncode == 0, p.stdout
    assert r["points"] == 4 and r["failed_points"] == 0  # a dry run and three crashes
    # and in normal mode with a long commit interval the same checker sees the loss
    p, r = campaign(tmp_path, "--mode", "normal", "--seed", "3", "--points", "1", "--no-inject", "--cmd", cmd,
                    "--check", check)
    assert p.returncode == 1 and r["cases"][0]["violations"][0]["kind"] == "check failed", p.stdout
    # a --cmd program's acknowledgements are its checker's business: no "lost as allowed 0/0" and its gloss
    assert "0/0" not in p.stdout and "normal mode permits" not in p.stdout, p.stdout
    # the replay command, copied from the piped output as a reader copies it from a CI log, runs as printed
    failed = [line for line in p.stdout.splitlines() if line.startswith("FAILED daxfs crashtest ")]
    failed = [line for line in failed if line.endswith("--crash-at end")]  # the one that always reproduces
    assert len(failed) == 1 and "--check" in failed[0], p.stdout
    again = subprocess.run(["bash", "-c", failed[0].removeprefix("FAILED ").replace("daxfs ", f"{DAXFS_BIN} ", 1)],
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert again.returncode == 1 and "check failed" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("opts,kept", [("map_sync", True), ("commit=60", False)])
def test_generic_470_one_mib_written_in_sync_mode_survives_a_kill_after_the_last_ack(daxmount, opts, kept):
    """As xfstests generic/470: 1 MiB written into an empty file, the daemon killed the moment the last
    write is acknowledged, replay: all of it allocated and holding its data. Normal mode loses it."""
    m = daxmount(opts)
    data = pattern(470, MiB)
    pid = m.pid()
    fd = os.open(m / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    for off in range(0, MiB, BS):
        assert os.pwrite(fd, data[off:off + BS], off) == BS
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        os.close(fd)
    m.crash(pid)
    m.mount()
    if kept:
        assert read_file(m / "f") == data
        assert os.stat(m / "f").st_blocks * 512 == MiB
        extents = json.loads(os.getxattr(m / "f", "user.daxfs.map"))["extents"]
        assert all(state == "written" and stable for _, _, _, state, stable in extents)
    else:
        assert not os.path.exists(m / "f") or os.path.getsize(m / "f") < MiB


def test_daxfs_mount_fixture_steers_the_daemon(daxfs_mount):
    """The pytest plugin's fixture and daxfs.testing's control calls, as a user's test would use them."""
    m = daxfs_mount("map_sync,commit=3600")  # no periodic commit to count
    m.mark("phase one")
    before = m.passes().get("commit.done", 0)
    m.crash_at("commit.done", 2)
    write_file(m / "a", b"a" * BS)  # new block: commit #1
    assert m.passes()["commit.done"] == before + 1
    with pytest.raises(OSError) as e:
        write_file(m / "b", b"b" * BS)  # commit #2: the daemon dies after its commit record, before the reply
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    m.crash()
    m.remount()
    assert read_file(m / "a") == b"a" * BS
    assert read_file(m / "b") == b"b" * BS  # committed before the daemon died, though never acknowledged
    assert "MARK phase one" in open(m.image + ".log").read()


def test_crash_at_replay_point_is_armed_before_the_replay():
    """Regression, found by the campaign's replay cases: `-o crash_at=replay.applied:N` was armed after
    the image was opened, so the daemon never died inside the replay it was asked to crash."""
    r = crashtest.run_case(Case("appends", 4, "sync", "at:replay.applied:1"))
    assert "died in replay" in r.note and r.verdict.violations == [], (r.note, r.verdict)


def test_umount_of_a_dead_mount_whose_last_request_was_aborted(monkeypatch):
    """Regression, found by random-delay cases once mounts got faster: a request queued while the killed
    daemon's last threads were still exiting fails with ECONNABORTED, not ENOTCONN; `daxfs umount`
    took that for a live daemon it could not reach, and refused to clean the dead mount."""
    from daxfs.daemon import mount as daemon

    calls = []
    monkeypatch.setattr(daemon, "mount_entry", lambda mnt: {"fstype": "fuse.daxfs", "source": "/img", "options": ""})

    def aborted(*args, **kw):
        raise OSError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED))

    monkeypatch.setattr(daemon.os, "getxattr", aborted)
    monkeypatch.setattr(daemon, "_fusermount", lambda mnt, lazy: calls.append((mnt, lazy)))
    said = []
    daemon.unmount("/mnt/x", said.append)
    assert calls == [("/mnt/x", True)] and "daemon was gone" in said[0]


def test_an_interrupted_campaign_says_so_and_never_exits_as_a_pass(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "daxfs.cli", "crashtest", "--mode", "sync", "--seed", "2", "--points",
                          "40", "--workload", "appends", "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, stdin=subprocess.DEVNULL)
    seen = []
    for line in p.stdout:  # wait until the crash points have started
        seen.append(line)
        if "crash points to run" in line:
            break
    p.send_signal(signal.SIGINT)
    out = "".join(seen) + p.stdout.read()
    assert p.wait(timeout=120) == 130, out
    assert "INTERRUPTED" in out and "this is no pass" in out, out


def test_a_program_storing_through_real_faults_keeps_every_acknowledged_page(tmp_path):
    """--cmd with direct mappings: the program maps a file MAP_SYNC (the campaign's images are on
    tmpfs, so the faults are real) and logs a page once its store has returned; the campaign freezes
    the program before each random kill of the daemon, so no store lands after the crash instant."""
    prog = tmp_path / "stores.py"
    prog.write_text(textwrap.dedent("""
        import ctypes, os, sys
        from daxfs import dax
        mnt, oracle = os.environ["DAXFS_MNT"], os.environ["DAXFS_ORACLE"]
        path = os.path.join(mnt, "f")
        with open(path, "wb") as f:
            f.truncate(256 * 4096)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        log = os.open(oracle, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        m = dax.mmap(path, 256 * 4096, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC, faults="real")
        for p in range(256):
            ctypes.memset(m.address + p * 4096, p % 250 + 1, 4096)
            os.write(log, b"%d\\n" % p)  # acknowledged: the store returned
    """))
    check = tmp_path / "check.py"
    check.write_text(textwrap.dedent("""
        import os, sys
        path, oracle = os.path.join(os.environ["DAXFS_MNT"], "f"), os.environ["DAXFS_ORACLE"]
        acked = open(oracle).read().split() if os.path.exists(oracle) else []
        data = open(path, "rb").read() if os.path.exists(path) else b""  # killed before it was made
        for line in acked:
            p = int(line)
            if data[p * 4096:(p + 1) * 4096] != bytes([p % 250 + 1]) * 4096:
                sys.exit(f"page {p} was acknowledged and is lost")
    """))
    py = sys.executable
    p, r = campaign(tmp_path, "--mode", "sync", "--seed", "5", "--points", "4", "--no-inject",
                    "--cmd", f"{py} {prog}", "--check", f"{py} {check}")
    assert p.returncode == 0, p.stdout
    assert r["points"] == 5 and r["failed_points"] == 0
