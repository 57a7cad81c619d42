"""Mount: an image and its mount point, driven as a user drives them (daxfs.testing's doc has the
example); m.cleanup() unmounts whatever a test left and runs fsck, and never raises.

Steering a running daemon (through its control socket; each call returns once it took effect):
`m.crash_at("commit.records_written", 3)` makes it die on the 3rd pass of that point,
`m.mark("phase 2")` writes a mark into its log. `daxfs crashtest --list-points` lists the points.

Everything goes through the `daxfs` command, exactly as a user would type it. With pytest, the
`daxfs_mount` fixture (daxfs.testing.pytest_plugin, registered by installing daxfs) makes Mounts that are
unmounted and fsck'ed at teardown. docs/crash-testing.md has a complete example.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

from daxfs.daemon import mount as daemon
from daxfs.daemon.options import parse_options
from daxfs.daemon.proc import process_alive, wait_exit
from daxfs.dax.protocol import STATS_XATTR, ControlClient, read_stats
from daxfs.engine.errors import DaxfsError
from daxfs.engine.mounttab import mount_entry

DAXFS = [sys.executable, "-m", "daxfs.cli"]


class CheckFailed(AssertionError):
    """A daxfs command that had to work did not (an AssertionError, so pytest reports it as a failure)."""


def run(*args, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    """Run `daxfs ARGS...`; returns the CompletedProcess (text stdout/stderr)."""
    cmd = DAXFS + [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise CheckFailed(f"daxfs {' '.join(cmd[len(DAXFS):])} exited {p.returncode}\n"
                          f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def is_mounted(path) -> bool:
    return mount_entry(os.fspath(path)) is not None


pid_alive = process_alive


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    if not wait_exit(pid, timeout):
        raise CheckFailed(f"process {pid} still alive after {timeout} s")


class Mount:
    """An image and its mount point. os.fspath(m) is the mount point, m / "name" a path in it.

    Mounting and unmounting go through the `daxfs` command, as a user types it; with cli=False they
    call the same functions in this process instead, which spares a Python start-up each (crash
    campaigns mount twice per crash)."""

    def __init__(self, image: str, mnt: str, opts: str = "", cli: bool = True) -> None:
        self.image = image
        self.mnt = mnt
        self.opts = opts
        self.cli = cli
        self.last_pid: int | None = None

    def _run(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        """`daxfs mount|umount ARGS`, through the command or in-process: the same outcome and output."""
        if self.cli:
            return run(*args, timeout=timeout)
        out: list[str] = []
        err: list[str] = []
        try:
            if args[0] == "mount":
                opts = parse_options(list(args[4:5]))
                code = daemon.start_background(os.path.abspath(args[1]), os.path.abspath(args[2]), opts,
                                               out.append, err.append)
            else:
                daemon.unmount(os.path.abspath(args[1]), out.append, lazy="--lazy" in args, timeout=timeout)
                code = 0
        except DaxfsError as e:
            err.append(f"daxfs: {e}")
            code = 1
        return subprocess.CompletedProcess(["daxfs", *args], code, "".join(f"{ln}\n" for ln in out),
                                           "".join(f"{ln}\n" for ln in err))

    @classmethod
    def create(cls, directory, size: str = "64M", opts: str = "", name: str = "img", mkfs_args=()) -> "Mount":
        """mkfs IMAGE in `directory` (NAME.img) and make a mount point beside it (NAME.mnt); not mounted."""
        directory = os.fspath(directory)
        image = os.path.join(directory, f"{name}.img")
        mnt = os.path.join(directory, f"{name}.mnt")
        os.makedirs(mnt, exist_ok=True)
        run("mkfs", image, "--size", size, *mkfs_args, check=True)
        return cls(image, mnt, opts)

    def __fspath__(self) -> str:
        return self.mnt

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.mnt, name)

    def __repr__(self) -> str:
        return f"Mount({self.image!r} on {self.mnt!r}, -o {self.opts!r})"

    # --- life -----------------------------------------------------------------------------------
    def mount(self, opts: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """`daxfs mount IMAGE MNT [-o opts]`; with check, raise unless it worked and the mount answers.
        After a crash this replays the journal; its stdout says how many transactions it replayed."""
        if opts is not None:
            self.opts = opts
        p = self._run("mount", self.image, self.mnt, *(["-o", self.opts] if self.opts else []))
        if check:
            if p.returncode != 0 or not is_mounted(self.mnt):
                raise CheckFailed(f"mount failed ({p.returncode}): {p.stdout}{p.stderr}")
            self.last_pid = self.pid()
        return p

    def umount(self, check: bool = True, lazy: bool = False) -> subprocess.CompletedProcess:
        """`daxfs umount`: commit, checkpoint, mark the image clean; waits for the daemon to exit."""
        pid = self.last_pid
        p = self._run("umount", self.mnt, *(["--lazy"] if lazy else []))
        if check:
            if p.returncode != 0 or is_mounted(self.mnt):
                raise CheckFailed(f"umount failed ({p.returncode}): {p.stdout}{p.stderr}")
            if pid is not None:
                wait_dead(pid)
        return p

    def remount(self, opts: str | None = None) -> subprocess.CompletedProcess:
        """Unmount (unless a crash() already took the mount down) and mount again: after a crash, the
        mount replays the journal."""
        if is_mounted(self.mnt):
            self.umount()
        return self.mount(opts)

    def crash(self, pid: int | None = None) -> subprocess.CompletedProcess:
        """SIGKILL the daemon and clean the dead mount. Pass the pid read beforehand to kill the moment
        a call returns (killing it twice is harmless); after crash_at() the daemon may be dead already."""
        if pid is None:
            pid = self.last_pid if self.last_pid is not None and not self.answers() else self.pid()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        p = self._run("umount", self.mnt, timeout=30)
        if p.returncode != 0 or "daemon was gone" not in p.stdout or is_mounted(self.mnt):
            raise CheckFailed(f"cleaning the dead mount failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p

    # --- steering the daemon ----------------------------------------------------------------------
    def control(self, timeout: float = 30.0) -> ControlClient:
        """A connection to the daemon's control socket (close it, or use it in a with statement)."""
        return ControlClient.for_path(self.mnt, timeout)

    def crash_at(self, point: str, nth: int = 1) -> None:
        """Make the daemon SIGKILL itself on the nth pass of a crash point from now on."""
        with self.control() as c:
            c.call("crash_at", point=point, nth=nth)

    def passes(self) -> dict[str, int]:
        """How often the daemon has passed each crash point so far."""
        with self.control() as c:
            return c.call("passes")["passes"]

    def mark(self, text: str) -> None:
        """Write 'MARK text' into the daemon's log (to line up a test's phases with the daemon's)."""
        with self.control() as c:
            c.call("mark", text=text)

    # --- looking at it ----------------------------------------------------------------------------
    def answers(self) -> bool:
        """Is the mount up and its daemon alive?"""
        try:
            os.getxattr(self.mnt, STATS_XATTR)
            return True
        except OSError:
            return False

    def stats(self) -> dict:
        return read_stats(self.mnt)

    def pid(self) -> int:
        return self.stats()["pid"]

    def inspect(self) -> dict:
        return json.loads(run("inspect", self.image, "--json", check=True).stdout)

    def fsck(self) -> subprocess.CompletedProcess:
        """`daxfs fsck IMAGE` (the image need not be unmounted cleanly); raises unless it is clean."""
        p = run("fsck", self.image, timeout=120)
        if p.returncode != 0:
            raise CheckFailed(f"fsck {self.image} exited {p.returncode}:\n{p.stdout}{p.stderr}")
        return p

    # --- teardown ---------------------------------------------------------------------------------
    def cleanup(self, fsck: bool = True) -> list[str]:
        """Unmount whatever state the test left, then fsck. Returns the problems found; never raises."""
        problems: list[str] = []
        if is_mounted(self.mnt):
            pid = None
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = self.pid()
            try:
                p = run("umount", self.mnt, timeout=30)
                ok, why = p.returncode == 0, p.stdout + p.stderr
            except subprocess.TimeoutExpired:
                ok, why = False, "daxfs umount timed out"
            if not ok or is_mounted(self.mnt):
                problems.append(f"daxfs umount {self.mnt} failed: {why.strip()}")
                subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
                if is_mounted(self.mnt):
                    subprocess.run(["umount", "-l", self.mnt], capture_output=True)
            if pid is not None:
                problems += _stop(pid)
        if fsck and os.path.exists(self.image):
            p = run("fsck", self.image, timeout=120)
            if p.returncode != 0:
                problems.append(f"fsck {self.image} exited {p.returncode}:\n{p.stdout}{p.stderr}")
        return problems


def _stop(pid: int) -> list[str]:
    """Make sure a daemon whose mount is gone has exited: SIGTERM, then SIGKILL."""
    problems = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            wait_dead(pid, 15)
            return problems
        except CheckFailed:
            problems.append(f"daemon {pid} still alive after unmount: {sig.name}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    with contextlib.suppress(CheckFailed):
        wait_dead(pid, 5)
    return problems


@contextlib.contextmanager
def mounted(directory, opts: str = "", size: str = "64M", mkfs_args=(), name: str = "img"):
    """A fresh image mounted in `directory`; unmounted and fsck'ed at the end (CheckFailed if not clean)."""
    m = Mount.create(directory, size, opts, name, mkfs_args)
    try:
        m.mount()
        yield m
    finally:
        problems = m.cleanup()
        if problems:
            raise CheckFailed("\n".join(problems))
