"""Mount options as ext4 takes them (issue 11): dev/suid/exec passed through to the kernel, the atime
policies behaving as their names say, and options daxfs does not know refused."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from daxfs.daemon.options import MountOptions, parse_options
from daxfs.engine.mounttab import mount_entry
from helpers import DAXFS, errno_of, read_file, write_file

pytestmark = pytest.mark.mount


def j(*parts) -> str:
    return os.path.join(*(str(p) for p in parts))


def flags(m) -> set[str]:
    return set(mount_entry(m.mnt)["flags"].split(","))


def test_the_kernel_flags_are_a_local_file_systems_and_pass_through_when_asked(daxmount):
    """Mounted by root, daxfs is dev,suid,exec like ext4 (mount(8) passes a helper only what differs from
    those defaults); nodev, nosuid and noexec pass through."""
    m = daxmount()
    assert not {"nodev", "nosuid", "noexec"} & flags(m), flags(m)
    os.mknod(j(m.mnt, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(j(m.mnt, "null"), "rb") as f:  # dev: it is /dev/null
        assert f.read() == b""
    m.umount()
    m.mount("nodev,nosuid,noexec")
    assert {"nodev", "nosuid", "noexec"} <= flags(m)
    assert errno_of(open, j(m.mnt, "null"), "rb") == errno.EACCES  # nodev: device nodes do not open
    write_file(j(m.mnt, "run.sh"), b"#!/bin/sh\necho hi\n", mode=0o755)
    assert errno_of(subprocess.run, [j(m.mnt, "run.sh")]) == errno.EACCES  # noexec


def atime_after_read(path: str) -> int:
    with open(path, "rb") as f:
        f.read()
    return os.stat(path).st_atime_ns


@pytest.mark.parametrize("opts, first, second", [
    ("", True, False),              # relatime: atime older than mtime is updated, then not again
    ("strictatime", True, True),    # every read
    ("noatime", False, False),      # never
])
def test_atime_policies(daxmount, opts, first, second):
    m = daxmount(opts)
    p = j(m.mnt, "f")
    write_file(p, b"data")
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))  # atime older than mtime
    a1 = atime_after_read(p)
    assert (a1 > 2_000_000_000) == first, a1
    a2 = atime_after_read(p)
    assert (a2 > a1) == second, (a1, a2)


def test_nodiratime_spares_directories_only(daxmount):
    m = daxmount("nodiratime")
    d = j(m.mnt, "d")
    os.mkdir(d)
    write_file(j(d, "f"), b"x")
    os.utime(d, ns=(1_000_000_000, 2_000_000_000))
    os.utime(j(d, "f"), ns=(1_000_000_000, 2_000_000_000))
    os.listdir(d)
    assert os.stat(d).st_atime_ns == 1_000_000_000
    assert atime_after_read(j(d, "f")) > 2_000_000_000


def test_lazytime_keeps_atime_in_memory_until_unmount_and_a_crash_loses_only_that(daxmount):
    m = daxmount("lazytime,commit=60")
    p = j(m.mnt, "f")
    write_file(p, b"data", fsync=True)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)  # the utime is committed; the read's atime is not, yet
    os.close(fd)
    a = atime_after_read(p)
    assert a > 2_000_000_000 and m.stats()["running_blocks"] == 0  # in memory only: no block changed
    m.crash()
    m.mount("lazytime,commit=60")
    assert os.stat(p).st_atime_ns == 1_000_000_000 and read_file(p) == b"data"
    a = atime_after_read(p)
    m.umount()  # unmount writes it
    m.mount()
    assert os.stat(p).st_atime_ns == a


def test_atime_options_round_trip_to_the_daemon():
    o = parse_options(["noatime,nodiratime,lazytime,dev,noexec"])
    again = parse_options([o.to_string()])
    assert (again.atime, again.diratime, again.lazytime, again.dev, again.exec) == ("noatime", False, True, True, False)
    assert parse_options(["strictatime,atime"]).atime == "relatime"


def test_spin_round_trips_to_the_daemon_and_defaults_to_50_microseconds():
    assert MountOptions().spin == 50
    assert parse_options([parse_options(["spin=0"]).to_string()]).spin == 0
    assert parse_options([parse_options(["spin=1000"]).to_string()]).spin == 1000


def test_remount_read_only_and_back_without_losing_the_mount(daxmount):
    m = daxmount()
    p = j(m.mnt, "f")
    write_file(p, b"before")
    pid = m.pid()
    r = subprocess.run([*DAXFS, "mount", "-o", "remount,ro", m.image, m.mnt], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ro" in flags(m) and m.pid() == pid
    assert errno_of(write_file, j(m.mnt, "g"), b"x") == errno.EROFS
    assert m.inspect()["state"] == "clean" and m.inspect()["journal transactions to replay"] == 0
    assert read_file(p) == b"before"
    if os.path.exists("/sbin/mount.fuse.daxfs"):  # as xfstests does it: mount(8) calls our helper
        subprocess.run(["mount", "-o", "remount,rw", m.mnt], check=True, capture_output=True)
    else:
        subprocess.run([*DAXFS, "mount", "-o", "remount,rw", m.image, m.mnt], check=True, capture_output=True)
    assert "rw" in flags(m) and m.pid() == pid
    write_file(j(m.mnt, "g"), b"after")
    assert read_file(j(m.mnt, "g")) == b"after"


def test_acl_options_round_trip_to_the_daemon():
    assert parse_options([""]).acl  # on by default, as on ext4
    assert not parse_options([parse_options(["noacl"]).to_string()]).acl
    assert parse_options(["noacl,acl"]).acl
