"""Setid bits through a real mount: the daemon clears them, as Linux's VFS does.

The shim negotiates FUSE_HANDLE_KILLPRIV_V2 (daxfs/daemon/fuseshim.c), so the kernel asks no
GETXATTR security.capability before each write and leaves S_ISUID/S_ISGID to the daemon: a write,
truncate, O_TRUNC open, fallocate (every mode) or copy_file_range into the file by a caller without
CAP_FSETID clears S_ISUID, and S_ISGID when the file is group-executable or the caller is not in its
group; the same by root keeps them; a chown clears S_ISUID always. The expected modes are xfstests
generic/683-685's (fallocate, punch, zero), for every way to change a file's data or size.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from helpers import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, as_user, daxfs, fallocate,
                     fresh_dir, mounted)

pytestmark = pytest.mark.mount

USER = 65534  # the caller without CAP_FSETID, in no group of the files (root's)


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    with mounted(tmp_path_factory.mktemp("setid"), "allow_other") as m:
        yield m


@pytest.fixture
def d(mnt):
    return fresh_dir(mnt, 0o777)


def requests(m) -> dict[str, int]:
    return json.loads(daxfs("stats", m.mnt, "--json", check=True).stdout)["requests"]


def write(p):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"y", 4096)
    finally:
        os.close(fd)


def write_cached(p):  # an O_RDWR handle: the page-cache path (write-only handles use direct_io)
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"y", 4096)
    finally:
        os.close(fd)


def append(p):
    with open(p, "ab") as f:
        f.write(b"more")


def truncate(p):
    os.truncate(p, 100)


def open_trunc(p):
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))


def falloc(mode):
    def change(p):
        fd = os.open(p, os.O_WRONLY)
        try:
            fallocate(fd, mode, 0, 65536)
        finally:
            os.close(fd)
    change.__name__ = {0: "falloc", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: "fpunch",
                       FALLOC_FL_ZERO_RANGE: "fzero"}[mode]
    return change


def copy_into(p):
    src = p + ".src"
    with open(src, "rb") as s, open(p, "r+b") as f:
        assert os.copy_file_range(s.fileno(), f.fileno(), 4096, 0, 0) == 4096


CHANGES = [write, write_cached, append, truncate, open_trunc, falloc(0), falloc(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
           falloc(FALLOC_FL_ZERO_RANGE), copy_into]
# generic/683's tests 1-4 and 9-10 (the caller is not in the file's group): before -> after
BY_USER = {0o6666: 0o666, 0o6676: 0o676, 0o6766: 0o766, 0o6777: 0o777, 0o2676: 0o676, 0o2777: 0o777}


def make(d, name, mode, gid=0):
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(b"x" * 196608)
    with open(p + ".src", "wb") as f:
        f.write(b"s" * 4096)
    os.chmod(p + ".src", 0o644)
    os.chown(p, 0, gid)
    os.chmod(p, mode)
    return p


def mode_of(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
def test_a_change_by_a_user_without_cap_fsetid_clears_setid_bits_as_the_vfs_does(d, change):
    for before, after in BY_USER.items():
        p = make(d, f"{before:o}", before)
        as_user(change, os.path.basename(p), uid=USER, gid=USER, cwd=d)
        assert (oct(before), oct(mode_of(p))) == (oct(before), oct(after))


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
def test_the_same_change_by_root_keeps_them(d, change):
    for before in BY_USER:
        p = make(d, f"{before:o}", before)
        change(p)
        assert oct(mode_of(p)) == oct(before)


@pytest.mark.parametrize("change", [write, write_cached, truncate, falloc(0)], ids=lambda c: c.__name__)
def test_a_caller_in_the_files_group_keeps_sgid_without_group_exec(d, change):
    p = make(d, "g", 0o6666, gid=USER)
    as_user(change, "g", uid=USER, gid=USER, cwd=d)
    assert oct(mode_of(p)) == oct(0o2666)  # S_ISUID goes; S_ISGID (no group exec) stays for a member
    p = make(d, "gx", 0o2676, gid=USER)
    as_user(change, "gx", uid=USER, gid=USER, cwd=d)
    assert oct(mode_of(p)) == oct(0o676)  # group-executable: S_ISGID goes even for a member


def test_chown_clears_setuid_even_by_root_and_sgid_only_if_group_executable(d):
    p = make(d, "c", 0o6755)
    os.chown(p, 1, 1)
    assert oct(mode_of(p)) == oct(0o755)
    p = make(d, "c2", 0o2645)
    os.chown(p, 1, 1)
    assert oct(mode_of(p)) == oct(0o2645)
    q = os.path.join(d, "dir")
    os.mkdir(q)
    os.chmod(q, 0o2775)
    os.chown(q, 1, 1)  # a directory's setgid bit is its group inheritance: it stays
    assert oct(mode_of(q)) == oct(0o2775)


def test_the_cleared_mode_is_what_the_kernel_reports_at_once_and_after_a_remount(tmp_path):
    with mounted(tmp_path, "allow_other") as m:
        p = make(m.mnt, "f", 0o6777)
        os.stat(p)  # the kernel caches the setid mode
        as_user(write, "f", uid=USER, gid=USER, cwd=m.mnt)
        assert oct(mode_of(p)) == oct(0o777)
        m.remount()
        assert oct(mode_of(p)) == oct(0o777)


def test_killpriv_v2_is_negotiated_and_writes_cost_one_request(mnt, d):
    assert json.loads(daxfs("stats", mnt.mnt, "--json", check=True).stdout)["killpriv_v2"] is True
    p = make(d, "w", 0o644)
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"q", 0)  # the file's first write after its attributes came: one GETXATTR
        before = requests(mnt)
        for i in range(200):
            os.pwrite(fd, b"q" * 4096, i % 16 * 4096)
        after = requests(mnt)
    finally:
        os.close(fd)
    assert after.get("write", 0) - before.get("write", 0) == 200
    assert after.get("getxattr", 0) - before.get("getxattr", 0) <= 2  # was 200: one per write
