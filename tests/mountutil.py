"""Helpers and fixtures of the integration tests: real daxfs mounts driven through the `daxfs` CLI.

Use it from a test module with

    pytest_plugins = ["mountutil"]          # registers the fixtures below
    from mountutil import Mount, daxfs, mounted, ...

(tests/ has no __init__.py, so pytest's rootdir-relative import puts tests/ itself on sys.path; the
modules also insert it themselves, so that they can be run from anywhere.)

Every mount a helper makes is unmounted when its fixture or context ends, whatever the test did:
`daxfs umount` first, `fusermount3 -uz` (and a SIGTERM/SIGKILL of the daemon) when that fails. Then the
image is checked with `daxfs fsck`, and the test fails if it is not clean: every scenario ends on a
consistent image.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_BIN = REPO / ".venv" / "bin" / "daxfs"
DAXFS = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "daxfs.cli"]
MiB = 1 << 20
BS = 4096
STATS_XATTR = "user.daxfs.stats"


# --- running the CLI --------------------------------------------------------------------------------
def daxfs(*args, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    """Run `daxfs ARGS...`; returns the CompletedProcess (text stdout/stderr)."""
    cmd = DAXFS + [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[-len(args):])} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: non-zero exit, exactly one line on stderr starting with 'daxfs: ', no traceback."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {p.stderr!r} (stdout {p.stdout!r})"
    assert lines[0].startswith("daxfs: "), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# --- mounts, daemons --------------------------------------------------------------------------------
def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape") if "\\" in s else s


def mount_entry(path) -> dict | None:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if _unescape(parts[4]) == target:
                fstype, source = (right.split() + ["", ""])[:2]
                return {"fstype": fstype, "source": _unescape(source), "options": parts[5]}
    return None


def is_mounted(path) -> bool:
    return mount_entry(path) is not None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed daemon may stay unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still alive after {timeout} s")
        time.sleep(0.005)


class Mount:
    """An image and its mount point. os.fspath(m) is the mount point, m / "name" a path in it."""

    def __init__(self, image: str, mnt: str, opts: str = "") -> None:
        self.image = image
        self.mnt = mnt
        self.opts = opts
        self.last_pid: int | None = None

    def __fspath__(self) -> str:
        return self.mnt

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.mnt, name)

    def __repr__(self) -> str:
        return f"Mount({self.image!r} on {self.mnt!r}, -o {self.opts!r})"

    # --- life -----------------------------------------------------------------------------------
    def mount(self, opts: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """`daxfs mount IMAGE MNT [-o opts]`; with check, asserts it worked and the mount answers."""
        if opts is not None:
            self.opts = opts
        args = ["mount", self.image, self.mnt] + (["-o", self.opts] if self.opts else [])
        p = daxfs(*args, timeout=60)
        if check:
            assert p.returncode == 0, f"mount failed ({p.returncode}): {p.stdout}{p.stderr}"
            assert is_mounted(self.mnt)
            self.last_pid = self.pid()
        return p

    def umount(self, check: bool = True, lazy: bool = False) -> subprocess.CompletedProcess:
        pid = self.last_pid
        p = daxfs("umount", self.mnt, *(["--lazy"] if lazy else []), timeout=60)
        if check:
            assert p.returncode == 0, f"umount failed ({p.returncode}): {p.stdout}{p.stderr}"
            assert not is_mounted(self.mnt)
            if pid is not None:
                wait_dead(pid)  # `daxfs umount` waits for it; make sure
        return p

    def remount(self, opts: str | None = None) -> subprocess.CompletedProcess:
        self.umount()
        return self.mount(opts)

    def crash(self, pid: int | None = None) -> subprocess.CompletedProcess:
        """SIGKILL the daemon (pid: read beforehand, so that a test can kill the moment a call returns;
        killing it twice is harmless), wait until it is dead, then clean the dead mount with
        `daxfs umount`, which must say so."""
        if pid is None:
            pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        t0 = time.monotonic()
        p = daxfs("umount", self.mnt, timeout=30)
        assert p.returncode == 0, f"umount of a dead mount failed: {p.stdout}{p.stderr}"
        assert "daemon was gone" in p.stdout, p.stdout
        assert time.monotonic() - t0 < 10
        assert not is_mounted(self.mnt)
        return p

    # --- looking at it ----------------------------------------------------------------------------
    def stats(self) -> dict:
        return json.loads(os.getxattr(self.mnt, STATS_XATTR))

    def pid(self) -> int:
        return self.stats()["pid"]

    def inspect(self) -> dict:
        return json.loads(daxfs("inspect", self.image, "--json", check=True).stdout)

    def fsck(self) -> subprocess.CompletedProcess:
        p = daxfs("fsck", self.image, timeout=120)
        assert p.returncode == 0, f"fsck {self.image} exited {p.returncode}:\n{p.stdout}{p.stderr}"
        return p

    # --- teardown ---------------------------------------------------------------------------------
    def cleanup(self, fsck: bool = True) -> list[str]:
        """Unmount whatever state the test left, then fsck. Returns the problems found."""
        problems: list[str] = []
        if is_mounted(self.mnt):
            pid = None
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = self.pid()
            try:
                p = daxfs("umount", self.mnt, timeout=30)
                ok = p.returncode == 0
                why = p.stdout + p.stderr
            except subprocess.TimeoutExpired:
                ok, why = False, "daxfs umount timed out"
            if not ok or is_mounted(self.mnt):
                problems.append(f"daxfs umount {self.mnt} failed: {why.strip()}")
                subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
                if is_mounted(self.mnt):
                    subprocess.run(["umount", "-l", self.mnt], capture_output=True)
            if pid is not None:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        wait_dead(pid, 15)
                        break
                    except AssertionError:
                        problems.append(f"daemon {pid} still alive after unmount: {sig.name}")
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                with contextlib.suppress(AssertionError):
                    wait_dead(pid, 5)
        if fsck and os.path.exists(self.image):
            p = daxfs("fsck", self.image, timeout=120)
            if p.returncode != 0:
                problems.append(f"fsck {self.image} exited {p.returncode}:\n{p.stdout}{p.stderr}")
        return problems


def new_mount(directory, size: str = "64M", mkfs_args=(), name: str = "img") -> Mount:
    """mkfs an image in `directory` and make a mount point beside it (not mounted yet)."""
    directory = os.fspath(directory)
    image = os.path.join(directory, f"{name}.img")
    mnt = os.path.join(directory, f"{name}.mnt")
    os.makedirs(mnt, exist_ok=True)
    daxfs("mkfs", image, "--size", size, *mkfs_args, check=True)
    return Mount(image, mnt)


@contextlib.contextmanager
def mounted(directory, opts: str = "", size: str = "64M", mkfs_args=(), name: str = "img"):
    """A fresh image mounted in `directory`; unmounted and fsck'ed at the end (fails if not clean)."""
    m = new_mount(directory, size, mkfs_args, name)
    try:
        m.mount(opts)
        yield m
    finally:
        problems = m.cleanup()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def daxmount(tmp_path):
    """Factory: daxmount(opts="", size="64M", mkfs_args=(), mount=True) -> Mount. Every Mount made is
    unmounted at teardown (even when the test failed), then fsck'ed; an unclean image fails the test."""
    made: list[Mount] = []

    def make(opts: str = "", size: str = "64M", mkfs_args=(), mount: bool = True) -> Mount:
        m = new_mount(tmp_path, size, mkfs_args, name=f"img{len(made)}")
        made.append(m)
        if mount:
            m.mount(opts)
        else:
            m.opts = opts
        return m

    yield make
    problems: list[str] = []
    for m in made:
        problems += m.cleanup()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


# --- running code as another user ---------------------------------------------------------------------
def as_user(fn, *args, uid: int = 65534, gid: int = 65534, cwd=None):
    """Run fn(*args) in a forked child with uid/gid (no supplementary groups), in directory cwd (entered
    while still root: pytest's tmp dirs are 0700, so the child could not walk there itself; use paths
    relative to cwd). Returns what fn returned; an OSError it raised is raised again here (same errno),
    anything else becomes an AssertionError."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                if cwd is not None:
                    os.chdir(cwd)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                result = ("ok", fn(*args))
            except OSError as e:
                result = ("oserror", (e.errno, e.strerror, e.filename))
            except BaseException:
                result = ("error", traceback.format_exc())
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"child exited without a result (status {status})")
    kind, value = pickle.loads(data)
    if kind == "ok":
        return value
    if kind == "oserror":
        raise OSError(*value)
    raise AssertionError(f"child failed:\n{value}")


def errno_of(fn, *args, **kw) -> int:
    """The errno fn raises (0 if it returns)."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def errno_as_user(fn, *args, uid: int = 65534, gid: int = 65534, cwd=None) -> int:
    try:
        as_user(fn, *args, uid=uid, gid=gid, cwd=cwd)
    except OSError as e:
        return e.errno
    return 0


# --- file content helpers -------------------------------------------------------------------------------
def pattern(seed: int, n: int) -> bytes:
    """n bytes that depend on seed and on the position (cheap, no two blocks of a file alike)."""
    import hashlib

    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.blake2b(b"%d:%d" % (seed, i), digest_size=64).digest() * 64  # 4 KiB
        i += 1
    return bytes(out[:n])


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data: bytes, mode: int = 0o644, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def wait_until(cond, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll cond() until it is true (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


__all__ = ["BS", "MiB", "DAXFS", "Mount", "daxfs", "assert_one_line_error", "mount_entry", "is_mounted",
           "pid_alive", "wait_dead", "new_mount", "mounted", "as_user", "errno_of", "errno_as_user", "pattern",
           "read_file", "write_file", "wait_until", "errno"]
