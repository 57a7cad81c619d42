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
import os
import pickle
import subprocess
import time
import traceback

import pytest

from daxfs import testing
from daxfs.daemon import mount_entry  # noqa: F401 (re-exported)
from daxfs.testing import DAXFS, Mount, is_mounted, pid_alive, wait_dead  # noqa: F401 (re-exported)

MiB = 1 << 20
BS = 4096


# --- running the CLI, mounts, daemons: the public daxfs.testing, which users' own tests use too --------
def daxfs(*args, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    """Run `daxfs ARGS...`; returns the CompletedProcess (text stdout/stderr)."""
    return testing.run(*args, timeout=timeout, check=check)


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


def new_mount(directory, size: str = "64M", mkfs_args=(), name: str = "img") -> Mount:
    """mkfs an image in `directory` and make a mount point beside it (not mounted yet)."""
    return Mount.create(directory, size, "", name, mkfs_args)


@contextlib.contextmanager
def mounted(directory, opts: str = "", size: str = "64M", mkfs_args=(), name: str = "img"):
    """A fresh image mounted in `directory`; unmounted and fsck'ed at the end (fails if not clean)."""
    try:
        with testing.mounted(directory, opts, size, mkfs_args, name) as m:
            yield m
    except testing.CheckFailed as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def daxmount(daxfs_mount):
    """Factory: daxmount(opts="", size="64M", mkfs_args=(), mount=True) -> Mount: the daxfs_mount
    fixture of daxfs.pytest_plugin (unmounted and fsck'ed at teardown, even when the test failed)."""
    return daxfs_mount


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
