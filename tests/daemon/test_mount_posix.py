"""POSIX behaviour of every operation, and its errors, through a real daxfs mount (os.* calls only).

One mount serves the module (mounting costs ~0.5 s); each test works in a directory of its own. The
mount has allow_other so that the permission tests (a child process as uid 65534) reach the file system
and meet default_permissions, rather than FUSE's own "only the mounter" rule.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import time

import pytest

from daxfs.engine.core import RESERVE, SLACK
from helpers import (BS, MiB, as_user, errno_as_user, errno_of, fresh_dir, j, mounted, pattern, read_file, wait_until,
                     write_file)


pytestmark = pytest.mark.mount

NOBODY = 65534
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    if hasattr(_libc, "renameat2"):
        fn = _libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        r = fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    else:  # x86_64 syscall number
        r = _libc.syscall(316, AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    with mounted(tmp_path_factory.mktemp("posix"), "allow_other", size="128M", mkfs_args=("--inodes", "16384")) as m:
        yield m


@pytest.fixture
def d(mnt):
    return fresh_dir(mnt, 0o755)



# --- lookup, getattr, setattr ---------------------------------------------------------------------------------
def test_stat_fields_of_new_file(d, umask022):
    p = j(d, "f")
    before = time.time_ns()
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666)
    os.close(fd)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644  # umask applied
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert st.st_nlink == 1 and st.st_size == 0 and st.st_blocks == 0
    assert st.st_blksize == 4096
    for t in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns):
        assert before - 10**9 <= t <= time.time_ns() + 10**9
    assert st.st_ino == os.lstat(p).st_ino
    assert os.stat(d).st_ino != st.st_ino
    # an entry seen by readdir has the same inode number
    assert {e.name: e.inode() for e in os.scandir(d)} == {"f": st.st_ino}


def test_size_blocks_and_times_move_with_writes(d):
    p = j(d, "f")
    write_file(p, b"")
    st0 = os.stat(p)
    time.sleep(0.002)
    with open(p, "r+b") as f:
        f.write(b"a" * 5000)
    st1 = os.stat(p)
    assert st1.st_size == 5000
    assert st1.st_blocks == 2 * 8  # two 4 KiB blocks in 512-byte units
    assert st1.st_mtime_ns > st0.st_mtime_ns and st1.st_ctime_ns > st0.st_ctime_ns
    assert st1.st_ino == st0.st_ino
    time.sleep(0.002)
    os.chmod(p, 0o600)
    st2 = os.stat(p)
    assert st2.st_ctime_ns > st1.st_ctime_ns and st2.st_mtime_ns == st1.st_mtime_ns  # chmod: ctime only


def test_read_updates_atime_relatime(d):
    p = j(d, "f")
    write_file(p, b"data")
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))  # atime older than mtime: relatime must update it
    with open(p, "rb") as f:
        assert f.read() == b"data"
    assert os.stat(p).st_atime_ns > 2_000_000_000


def test_chmod_chown(d):
    p = j(d, "f")
    write_file(p, b"x")
    os.chmod(p, 0o4751)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4751
    os.chmod(p, 0o640)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    os.chown(p, 1000, 2000)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1000, 2000)
    os.chown(p, -1, 3000)  # -1 keeps the uid
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1000, 3000)
    os.chown(p, 4000, -1)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (4000, 3000)
    os.chmod(d, 0o711)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o711
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert errno_of(os.chmod, j(d, "missing"), 0o644) == errno.ENOENT


def test_truncate_shrink_and_grow(d):
    p = j(d, "f")
    data = pattern(1, 3 * BS + 100)
    write_file(p, data)
    os.truncate(p, BS + 10)
    assert os.stat(p).st_size == BS + 10
    assert os.stat(p).st_blocks == 2 * 8
    assert read_file(p) == data[:BS + 10]
    os.truncate(p, 5 * BS)  # grow: the cut-off bytes must not come back
    assert read_file(p) == data[:BS + 10] + bytes(5 * BS - BS - 10)
    assert os.stat(p).st_blocks == 2 * 8
    with open(p, "r+b") as f:
        f.truncate(0)
        assert os.fstat(f.fileno()).st_size == 0
    assert os.stat(p).st_blocks == 0
    assert read_file(p) == b""
    assert errno_of(os.truncate, d, 0) == errno.EISDIR
    assert errno_of(os.truncate, j(d, "missing"), 0) == errno.ENOENT


def test_utime_ns(d):
    p = j(d, "f")
    write_file(p, b"x")
    os.utime(p, ns=(1_234_567_890_123_456_789, 987_654_321_987_654_321))
    st = os.stat(p)
    assert st.st_atime_ns == 1_234_567_890_123_456_789
    assert st.st_mtime_ns == 987_654_321_987_654_321
    before = time.time_ns()
    os.utime(p)  # now
    st = os.stat(p)
    assert st.st_mtime_ns >= before - 10**8 and st.st_atime_ns >= before - 10**8
    os.utime(d, ns=(5, 6))
    assert (os.stat(d).st_atime_ns, os.stat(d).st_mtime_ns) == (5, 6)


# --- create, mknod, mkdir, rmdir -------------------------------------------------------------------------
def test_create_excl(d):
    p = j(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == errno.EEXIST
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)  # without O_EXCL: opens it
    os.close(fd)
    assert errno_of(os.open, j(d, "nodir", "f"), os.O_CREAT | os.O_WRONLY) == errno.ENOENT
    assert errno_of(os.open, j(d, "missing"), os.O_RDONLY) == errno.ENOENT
    write_file(j(d, "file"), b"")
    assert errno_of(os.open, j(d, "file", "x"), os.O_CREAT | os.O_WRONLY) == errno.ENOTDIR


def test_o_trunc(mnt, d):
    """Regression: libfuse3 negotiates atomic O_TRUNC, so the kernel sends no setattr and open() must
    truncate (it did not: the old size and data stayed)."""
    p = j(d, "f")
    write_file(p, b"x" * 100000)
    free0 = os.statvfs(mnt.mnt).f_bfree
    os.utime(p, ns=(1, 1))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        st = os.fstat(fd)
        assert st.st_size == 0 and st.st_blocks == 0
        assert st.st_mtime_ns > 1 and st.st_ctime_ns > 1
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert read_file(p) == b"new"
    assert os.statvfs(mnt.mnt).f_bfree >= free0 + 24 - 1
    with open(p, "w") as f:  # open(..., "w") is O_CREAT|O_TRUNC
        f.write("again")
    assert read_file(p) == b"again"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.pread(fd, 10, 0) == b""  # no old bytes through the open handle either
        os.pwrite(fd, b"z", 8191)
        assert os.pread(fd, 8192, 0) == bytes(8191) + b"z"
    finally:
        os.close(fd)
    os.mkfifo(j(d, "fifo"))  # O_TRUNC on a fifo is ignored
    fd = os.open(j(d, "fifo"), os.O_RDWR | os.O_TRUNC)
    os.close(fd)
    assert stat.S_ISFIFO(os.stat(j(d, "fifo")).st_mode)


def test_mknod_fifo_socket_chr_blk_reg(d):
    os.mknod(j(d, "fifo"), stat.S_IFIFO | 0o640)
    os.mkfifo(j(d, "fifo2"), 0o600)
    os.mknod(j(d, "sock"), stat.S_IFSOCK | 0o644)
    os.mknod(j(d, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(j(d, "blk"), stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.mknod(j(d, "reg"), stat.S_IFREG | 0o600)
    st = os.lstat(j(d, "fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 0
    assert stat.S_ISFIFO(os.lstat(j(d, "fifo2")).st_mode)
    assert stat.S_ISSOCK(os.lstat(j(d, "sock")).st_mode)
    st = os.lstat(j(d, "null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    st = os.lstat(j(d, "blk"))
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 200)
    assert stat.S_ISREG(os.lstat(j(d, "reg")).st_mode)
    assert errno_of(os.mknod, j(d, "fifo"), stat.S_IFIFO | 0o600) == errno.EEXIST
    types = {e.name: (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False)) for e in os.scandir(d)}
    assert types == {"fifo": (False, False), "fifo2": (False, False), "sock": (False, False),
                     "null": (False, False), "blk": (False, False), "reg": (True, False)}
    # a fifo on the mount works as a fifo (the kernel does the piping)
    p = j(d, "fifo")
    pid = os.fork()
    if pid == 0:
        try:
            with open(p, "wb") as f:
                f.write(b"through the fifo")
        finally:
            os._exit(0)
    with open(p, "rb") as f:
        assert f.read() == b"through the fifo"
    os.waitpid(pid, 0)
    # mounted by root, daxfs is dev like ext4: the node is /dev/null (nodev: tests/daemon/test_mount_options.py)
    with open(j(d, "null"), "rb") as f:
        assert f.read() == b""


def test_mkdir_rmdir(d, umask022):
    sub = j(d, "sub")
    nlink0 = os.stat(d).st_nlink
    assert nlink0 == 2
    os.mkdir(sub, 0o750)
    st = os.stat(sub)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink == 2
    assert os.stat(d).st_nlink == nlink0 + 1
    assert errno_of(os.mkdir, sub) == errno.EEXIST
    write_file(j(d, "file"), b"")
    assert errno_of(os.mkdir, j(d, "file")) == errno.EEXIST
    assert errno_of(os.mkdir, j(d, "nope", "x")) == errno.ENOENT
    assert errno_of(os.mkdir, j(d, "file", "x")) == errno.ENOTDIR
    os.mkdir(j(sub, "inner"))
    assert os.stat(sub).st_nlink == 3
    write_file(j(sub, "f"), b"")
    assert errno_of(os.rmdir, sub) == errno.ENOTEMPTY
    assert errno_of(os.rmdir, j(d, "file")) == errno.ENOTDIR
    assert errno_of(os.rmdir, j(d, "missing")) == errno.ENOENT
    assert errno_of(os.rmdir, j(sub, ".")) == errno.EINVAL
    os.unlink(j(sub, "f"))
    assert errno_of(os.rmdir, sub) == errno.ENOTEMPTY  # still holds "inner"
    os.rmdir(j(sub, "inner"))
    assert os.stat(sub).st_nlink == 2
    os.rmdir(sub)
    assert not os.path.exists(sub)
    assert os.stat(d).st_nlink == nlink0
    # a removed directory that is still the cwd of someone cannot get new entries
    os.mkdir(sub)
    fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(sub)
        assert errno_of(os.open, "x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd) == errno.ENOENT
        assert os.listdir(fd) == []
    finally:
        os.close(fd)


def test_dot_and_dotdot(d):
    os.mkdir(j(d, "a"))
    os.mkdir(j(d, "a", "b"))
    assert os.stat(j(d, "a", "b", "..")).st_ino == os.stat(j(d, "a")).st_ino
    assert os.stat(j(d, "a", ".")).st_ino == os.stat(j(d, "a")).st_ino
    fd = os.open(j(d, "a", "b"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.stat("..", dir_fd=fd).st_ino == os.stat(j(d, "a")).st_ino
    finally:
        os.close(fd)


# --- symlinks and hard links ------------------------------------------------------------------------------------
def test_symlink_readlink(d):
    write_file(j(d, "target"), b"via the link")
    os.symlink("target", j(d, "ln"))
    assert os.readlink(j(d, "ln")) == "target"
    st = os.lstat(j(d, "ln"))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert stat.S_IMODE(st.st_mode) == 0o777
    assert read_file(j(d, "ln")) == b"via the link"
    assert os.stat(j(d, "ln")).st_ino == os.stat(j(d, "target")).st_ino
    long_target = "x/" * 500 + "end"
    os.symlink(long_target, j(d, "long"))
    assert os.readlink(j(d, "long")) == long_target
    os.symlink("/nowhere/at/all", j(d, "dangling"))
    assert os.readlink(j(d, "dangling")) == "/nowhere/at/all"
    assert errno_of(os.stat, j(d, "dangling")) == errno.ENOENT
    assert errno_of(os.symlink, "t", j(d, "ln")) == errno.EEXIST
    assert errno_of(os.readlink, j(d, "target")) == errno.EINVAL
    assert errno_of(os.readlink, j(d, "missing")) == errno.ENOENT
    os.symlink(".", j(d, "loop"))
    os.symlink("loop2", j(d, "loop1"))
    os.symlink("loop1", j(d, "loop2"))
    assert errno_of(os.stat, j(d, "loop1")) == errno.ELOOP
    os.unlink(j(d, "ln"))
    assert os.path.exists(j(d, "target"))


def test_link_counts(d):
    p, q = j(d, "f"), j(d, "g")
    write_file(p, b"shared")
    os.mkdir(j(d, "sub"))
    os.link(p, q)
    os.link(p, j(d, "sub", "h"))
    assert os.stat(p).st_nlink == 3
    assert os.stat(q).st_ino == os.stat(p).st_ino == os.stat(j(d, "sub", "h")).st_ino
    with open(q, "ab") as f:
        f.write(b"+more")
    assert read_file(p) == b"shared+more"
    assert errno_of(os.link, p, q) == errno.EEXIST
    assert errno_of(os.link, j(d, "sub"), j(d, "dirlink")) == errno.EPERM
    assert errno_of(os.link, j(d, "missing"), j(d, "x")) == errno.ENOENT
    os.unlink(p)
    assert os.stat(q).st_nlink == 2
    os.unlink(j(d, "sub", "h"))
    assert os.stat(q).st_nlink == 1
    assert read_file(q) == b"shared+more"


def test_unlink(d):
    write_file(j(d, "f"), b"x")
    os.mkdir(j(d, "sub"))
    assert errno_of(os.unlink, j(d, "sub")) == errno.EISDIR
    assert errno_of(os.unlink, j(d, "missing")) == errno.ENOENT
    assert errno_of(os.unlink, j(d, "f", "x")) == errno.ENOTDIR
    os.unlink(j(d, "f"))
    assert errno_of(os.stat, j(d, "f")) == errno.ENOENT
    assert sorted(os.listdir(d)) == ["sub"]


# --- rename ---------------------------------------------------------------------------------------------------
def test_rename_file_replaces_file(d):
    write_file(j(d, "a"), b"AAA")
    write_file(j(d, "b"), b"BBBB")
    ino_a = os.stat(j(d, "a")).st_ino
    fd = os.open(j(d, "b"), os.O_RDONLY)  # the replaced file stays readable while open
    try:
        os.rename(j(d, "a"), j(d, "b"))
        assert read_file(j(d, "b")) == b"AAA"
        assert os.stat(j(d, "b")).st_ino == ino_a
        assert not os.path.exists(j(d, "a"))
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 10, 0) == b"BBBB"
    finally:
        os.close(fd)
    assert sorted(os.listdir(d)) == ["b"]
    os.rename(j(d, "b"), j(d, "b"))  # same name: nothing happens
    assert read_file(j(d, "b")) == b"AAA"
    os.link(j(d, "b"), j(d, "c"))
    os.rename(j(d, "b"), j(d, "c"))  # hard links of one inode: POSIX says nothing happens
    assert sorted(os.listdir(d)) == ["b", "c"]


def test_rename_dirs(d):
    os.makedirs(j(d, "src", "inner"))
    write_file(j(d, "src", "inner", "f"), b"deep")
    os.mkdir(j(d, "empty"))
    os.mkdir(j(d, "full"))
    write_file(j(d, "full", "x"), b"")
    write_file(j(d, "file"), b"")
    assert errno_of(os.rename, j(d, "src"), j(d, "full")) == errno.ENOTEMPTY
    assert errno_of(os.rename, j(d, "src"), j(d, "file")) == errno.ENOTDIR
    assert errno_of(os.rename, j(d, "file"), j(d, "empty")) == errno.EISDIR
    assert errno_of(os.rename, j(d, "src"), j(d, "src", "inner", "moved")) == errno.EINVAL
    assert errno_of(os.rename, j(d, "src"), j(d, "src", "moved")) == errno.EINVAL
    assert errno_of(os.rename, j(d, "missing"), j(d, "x")) == errno.ENOENT
    assert errno_of(os.rename, j(d, "file"), j(d, "nodir", "x")) == errno.ENOENT
    nlink = os.stat(d).st_nlink
    os.rename(j(d, "src"), j(d, "empty"))  # replaces an empty directory
    assert read_file(j(d, "empty", "inner", "f")) == b"deep"
    assert not os.path.exists(j(d, "src"))
    assert os.stat(d).st_nlink == nlink - 1
    assert sorted(os.listdir(d)) == ["empty", "file", "full"]


def test_rename_across_directories(d):
    os.makedirs(j(d, "a", "moving", "deeper"))
    os.mkdir(j(d, "b"))
    write_file(j(d, "a", "f"), b"file")
    na, nb = os.stat(j(d, "a")).st_nlink, os.stat(j(d, "b")).st_nlink
    os.rename(j(d, "a", "f"), j(d, "b", "g"))
    assert read_file(j(d, "b", "g")) == b"file"
    assert os.listdir(j(d, "a")) == ["moving"]
    os.rename(j(d, "a", "moving"), j(d, "b", "moved"))
    assert os.stat(j(d, "a")).st_nlink == na - 1 and os.stat(j(d, "b")).st_nlink == nb + 1
    assert os.stat(j(d, "b", "moved", "..")).st_ino == os.stat(j(d, "b")).st_ino
    assert os.stat(j(d, "b", "moved", "deeper", "..", "..")).st_ino == os.stat(j(d, "b")).st_ino
    # the dir's '..' follows it: after a remount too (checked by the persistence tests); here by readdir
    fd = os.open(j(d, "b", "moved"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.stat("..", dir_fd=fd).st_ino == os.stat(j(d, "b")).st_ino
    finally:
        os.close(fd)


def test_renameat2_noreplace_exchange_whiteout(d):
    write_file(j(d, "a"), b"A")
    write_file(j(d, "b"), b"B")
    os.mkdir(j(d, "dir"))
    write_file(j(d, "dir", "inside"), b"I")
    with pytest.raises(OSError) as ei:
        renameat2(j(d, "a"), j(d, "b"), RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    assert read_file(j(d, "a")) == b"A" and read_file(j(d, "b")) == b"B"
    renameat2(j(d, "a"), j(d, "c"), RENAME_NOREPLACE)
    assert read_file(j(d, "c")) == b"A" and not os.path.exists(j(d, "a"))
    renameat2(j(d, "c"), j(d, "b"), RENAME_EXCHANGE)
    assert read_file(j(d, "c")) == b"B" and read_file(j(d, "b")) == b"A"
    # exchange a file and a directory across directories: parents' link counts follow the directory
    os.mkdir(j(d, "other"))
    write_file(j(d, "other", "f"), b"F")
    n_d, n_o = os.stat(d).st_nlink, os.stat(j(d, "other")).st_nlink
    renameat2(j(d, "dir"), j(d, "other", "f"), RENAME_EXCHANGE)
    assert read_file(j(d, "dir")) == b"F"
    assert read_file(j(d, "other", "f", "inside")) == b"I"
    assert os.stat(d).st_nlink == n_d - 1 and os.stat(j(d, "other")).st_nlink == n_o + 1
    assert os.stat(j(d, "other", "f", "..")).st_ino == os.stat(j(d, "other")).st_ino
    with pytest.raises(OSError) as ei:
        renameat2(j(d, "b"), j(d, "nothing"), RENAME_EXCHANGE)
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(OSError) as ei:
        renameat2(j(d, "b"), j(d, "c"), RENAME_NOREPLACE | RENAME_EXCHANGE)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        renameat2(j(d, "b"), j(d, "w"), RENAME_WHITEOUT)
    assert ei.value.errno == errno.EINVAL
    assert sorted(os.listdir(d)) == ["b", "c", "dir", "other"]


# --- data ----------------------------------------------------------------------------------------------------
def test_read_write_at_offsets(d):
    p = j(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.write(fd, b"hello world") == 11
        assert os.pread(fd, 5, 6) == b"world"
        assert os.pwrite(fd, b"WORLD", 6) == 5
        assert os.pread(fd, 100, 0) == b"hello WORLD"
        assert os.pread(fd, 10, 11) == b"" and os.pread(fd, 10, 1000) == b""
        # a write across block boundaries, unaligned
        data = pattern(2, 3 * BS + 123)
        assert os.pwrite(fd, data, BS - 7) == len(data)
        assert os.pread(fd, len(data), BS - 7) == data
        assert os.fstat(fd).st_size == BS - 7 + len(data)
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 11) == b"hello WORLD"
        assert os.read(fd, BS - 7 - 11) == bytes(BS - 7 - 11)  # the gap reads zeros
        # overwrite the middle of a block, neighbours intact
        os.pwrite(fd, b"XY", 2 * BS + 1)
        expect = bytearray(b"hello WORLD" + bytes(BS - 7 - 11) + data)
        expect[2 * BS + 1:2 * BS + 3] = b"XY"
        assert os.pread(fd, len(expect) + 10, 0) == bytes(expect)
        # a big write (many FUSE requests)
        big = pattern(3, 3 * MiB + 5)
        assert os.pwrite(fd, big, 1 * MiB) == len(big)
        assert os.pread(fd, len(big), 1 * MiB) == big
    finally:
        os.close(fd)
    assert read_file(p)[1 * MiB:] == big
    dfd = os.open(d, os.O_RDONLY)
    try:
        assert errno_of(os.read, dfd, 1) == errno.EISDIR
    finally:
        os.close(dfd)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert errno_of(os.write, fd, b"x") == errno.EBADF
    finally:
        os.close(fd)


def test_sparse_file(d):
    p = j(d, "sparse")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.lseek(fd, 10 * MiB, os.SEEK_SET)
        os.write(fd, b"end")
        st = os.fstat(fd)
        assert st.st_size == 10 * MiB + 3
        assert st.st_blocks == 8  # one 4 KiB block
        assert os.pread(fd, 8192, 5 * MiB) == bytes(8192)
        assert os.pread(fd, 6, 10 * MiB - 3) == b"\0\0\0end"
        os.pwrite(fd, b"mid", 3 * MiB + 100)
        assert os.fstat(fd).st_blocks == 16
        assert os.pread(fd, 200, 3 * MiB) == bytes(100) + b"mid" + bytes(97)
    finally:
        os.close(fd)
    # truncate up makes a hole, too
    q = j(d, "grown")
    write_file(q, b"abc")
    os.truncate(q, 64 * MiB)
    st = os.stat(q)
    assert st.st_size == 64 * MiB and st.st_blocks == 8
    with open(q, "rb") as f:
        f.seek(32 * MiB)
        assert f.read(4096) == bytes(4096)


def test_o_append(d):
    p = j(d, "log")
    write_file(p, b"start:")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(20):
            os.write(a if i % 2 else b, b"<%d>" % i)
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"!")  # O_APPEND ignores the offset
    finally:
        os.close(a)
        os.close(b)
    assert read_file(p) == b"start:" + b"".join(b"<%d>" % i for i in range(20)) + b"!"


@pytest.mark.parametrize("n", [0, 1, 5000])
def test_readdir(d, n):
    names = [f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(n)]
    for name in names:
        os.close(os.open(j(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == n and sorted(listed) == sorted(names)
    entries = list(os.scandir(d))
    assert len(entries) == n and sorted(e.name for e in entries) == sorted(names)
    if n:
        e = min(entries, key=lambda e: e.name)
        assert e.is_file() and e.inode() == os.stat(j(d, e.name)).st_ino
        assert len({e.inode() for e in entries}) == n
    # readdir of a directory that changes while it is read: every name not removed shows up exactly once
    if n == 5000:
        seen = []
        with os.scandir(d) as it:
            for k, e in enumerate(it):
                seen.append(e.name)
                if k == 100:
                    for name in names[-50:]:
                        if name not in seen:
                            os.unlink(j(d, name))
        removed = set(names[-50:]) - set(seen[:101])
        assert len(seen) == len(set(seen))
        assert set(names) - removed <= set(seen)
    # raw getdents through a small buffer: os.listdir with an fd
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(os.listdir(fd)) == len(os.listdir(d))
    finally:
        os.close(fd)


def test_fsync_fdatasync(mnt, d):
    p = j(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 10000)
        s0 = mnt.stats()
        os.fsync(fd)
        s1 = mnt.stats()
        assert s1["fsyncs"] == s0["fsyncs"] + 1
        assert s1["commits"] >= s0["commits"] + (1 if s0["unstable_blocks"] else 0)
        assert s1["unstable_blocks"] == 0
        os.write(fd, b"y" * 10000)
        os.fdatasync(fd)
        s2 = mnt.stats()
        assert s2["fsyncs"] == s1["fsyncs"] + 1 and s2["unstable_blocks"] == 0
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert mnt.stats()["fsyncs"] == s2["fsyncs"] + 1


def test_statvfs_moves_with_writes_and_deletes(mnt, d):
    def free():
        s = os.statvfs(mnt.mnt)
        return s.f_bfree, s.f_ffree

    s = os.statvfs(mnt.mnt)
    assert s.f_bsize == 4096 and s.f_frsize == 4096
    assert s.f_blocks > 0 and 0 < s.f_bfree <= s.f_blocks
    assert s.f_bavail == s.f_bfree - RESERVE - SLACK  # kept for unlink on a full fs
    assert s.f_namemax == 255
    assert s.f_files > 0 and s.f_ffree <= s.f_files
    b0, i0 = free()
    write_file(j(d, "big"), pattern(4, 4 * MiB))
    b1, i1 = free()
    assert i1 == i0 - 1
    assert 1024 <= b0 - b1 <= 1024 + 16  # 1024 data blocks plus a little metadata
    os.unlink(j(d, "big"))
    assert wait_until(lambda: free()[0] >= b0 - 16 and free()[1] == i0)
    b2, i2 = free()
    assert b2 - b1 >= 1024 - 16


def test_xattrs(d):
    p = j(d, "f")
    write_file(p, b"")
    assert os.listxattr(p) == []
    assert errno_of(os.getxattr, p, "user.missing") == errno.ENODATA
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"two")
    assert os.getxattr(p, "user.a") == b"1"
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    assert errno_of(os.setxattr, p, "user.a", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert os.getxattr(p, "user.a") == b"1"
    assert errno_of(os.setxattr, p, "user.c", b"x", os.XATTR_REPLACE) == errno.ENODATA
    assert "user.c" not in os.listxattr(p)
    os.setxattr(p, "user.a", b"replaced", os.XATTR_REPLACE)
    os.setxattr(p, "user.c", b"created", os.XATTR_CREATE)
    assert os.getxattr(p, "user.a") == b"replaced" and os.getxattr(p, "user.c") == b"created"
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.empty") == b""
    big = pattern(5, 20000)  # spans several metadata blocks
    os.setxattr(p, "user.big", big)
    assert os.getxattr(p, "user.big") == big
    os.removexattr(p, "user.b")
    assert errno_of(os.removexattr, p, "user.b") == errno.ENODATA
    assert errno_of(os.getxattr, p, "user.b") == errno.ENODATA
    assert sorted(os.listxattr(p)) == ["user.a", "user.big", "user.c", "user.empty"]
    # on directories and symlinks (no follow) too
    os.setxattr(d, "user.dir", b"d")
    assert os.getxattr(d, "user.dir") == b"d"
    os.symlink("f", j(d, "ln"))
    assert os.getxattr(j(d, "ln"), "user.a") == b"replaced"  # follows to f
    assert errno_of(os.getxattr, j(d, "missing"), "user.a") == errno.ENOENT
    # the daemon's side channels are read-only and never listed
    assert errno_of(os.setxattr, p, "user.daxfs.stats", b"x") in (errno.EPERM, errno.EEXIST)
    assert errno_of(os.setxattr, p, "user.daxfs.map", b"x") in (errno.EPERM, errno.EEXIST)
    assert not [n for n in os.listxattr(p) if n.startswith("user.daxfs.")]
    # ctime moves with an xattr change
    c0 = os.stat(p).st_ctime_ns
    time.sleep(0.002)
    os.setxattr(p, "user.a", b"again")
    assert os.stat(p).st_ctime_ns > c0


def test_enametoolong(d):
    ok = "n" * 255
    write_file(j(d, ok), b"")
    assert os.listdir(d) == [ok]
    long = "n" * 256
    assert errno_of(os.open, j(d, long), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, j(d, long)) == errno.ENAMETOOLONG
    assert errno_of(os.stat, j(d, long)) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", j(d, long)) == errno.ENAMETOOLONG
    assert errno_of(os.rename, j(d, ok), j(d, long)) == errno.ENAMETOOLONG
    assert errno_of(os.link, j(d, ok), j(d, long)) == errno.ENAMETOOLONG
    assert os.listdir(d) == [ok]


def test_enoent_cases(d):
    m = j(d, "missing")
    for fn, args in ((os.stat, (m,)), (os.lstat, (m,)), (os.open, (m, os.O_RDONLY)), (os.unlink, (m,)),
                     (os.rmdir, (m,)), (os.readlink, (m,)), (os.chmod, (m, 0o600)), (os.listdir, (m,)),
                     (os.rename, (m, j(d, "x"))), (os.link, (m, j(d, "x"))), (os.truncate, (m, 0)),
                     (os.utime, (m,)), (os.listxattr, (m,)), (os.mkdir, (j(m, "sub"),)),
                     (os.mknod, (j(m, "node"), stat.S_IFIFO | 0o600))):
        assert errno_of(fn, *args) == errno.ENOENT, fn.__name__


# --- permissions (default_permissions) ----------------------------------------------------------------------
def test_eacces_as_nobody(d):
    os.chmod(d, 0o755)
    os.mkdir(j(d, "private"), 0o700)
    os.chmod(j(d, "private"), 0o700)
    write_file(j(d, "private", "inside"), b"secret")
    write_file(j(d, "secret"), b"secret")
    os.chmod(j(d, "secret"), 0o600)
    write_file(j(d, "public"), b"public")
    os.chmod(j(d, "public"), 0o644)
    os.mkdir(j(d, "shared"))
    os.chmod(j(d, "shared"), 0o1777)

    def nobody(fn, *args):  # the child starts in d (paths relative to it)
        return errno_as_user(fn, *args, cwd=d)

    # positive control: the same child reads what is readable, so the EACCES below is default_permissions
    assert as_user(read_file, "public", cwd=d) == b"public"
    assert sorted(as_user(os.listdir, ".", cwd=d)) == ["private", "public", "secret", "shared"]
    assert nobody(read_file, "secret") == errno.EACCES
    assert nobody(os.listdir, "private") == errno.EACCES
    assert nobody(os.stat, "private/inside") == errno.EACCES
    assert nobody(read_file, "private/inside") == errno.EACCES
    assert nobody(os.open, "public", os.O_WRONLY) == errno.EACCES
    assert nobody(os.open, "new", os.O_CREAT | os.O_WRONLY, 0o644) == errno.EACCES
    assert nobody(os.mkdir, "newdir") == errno.EACCES
    assert nobody(os.unlink, "public") == errno.EACCES
    assert nobody(os.truncate, "public", 0) == errno.EACCES
    assert nobody(os.chmod, "public", 0o666) == errno.EPERM
    assert nobody(os.chown, "public", 65534, 65534) == errno.EPERM
    assert nobody(os.setxattr, "public", "user.x", b"1") in (errno.EACCES, errno.EPERM)
    assert sorted(os.listdir(d)) == ["private", "public", "secret", "shared"]
    assert read_file(j(d, "public")) == b"public"

    # a world-writable directory: the child's files are its own
    def make_own(path):
        write_file(path, b"mine", mode=0o600)
        st = os.stat(path)
        return st.st_uid, st.st_gid, read_file(path)

    assert as_user(make_own, "shared/own", cwd=d) == (NOBODY, NOBODY, b"mine")
    st = os.stat(j(d, "shared", "own"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert read_file(j(d, "shared", "own")) == b"mine"  # root reads anything
    # sticky directory: nobody cannot remove root's file in it, but its own
    write_file(j(d, "shared", "roots"), b"")
    assert nobody(os.unlink, "shared/roots") == errno.EPERM
    assert nobody(os.unlink, "shared/own") == 0
    assert os.listdir(j(d, "shared")) == ["roots"]


def test_setgid_directory_inherits_group(d):
    g = j(d, "g")
    os.mkdir(g)
    os.chown(g, 0, 4242)
    os.chmod(g, 0o2775)
    write_file(j(g, "f"), b"")
    os.mkdir(j(g, "sub"))
    assert os.stat(j(g, "f")).st_gid == 4242
    assert os.stat(j(g, "sub")).st_gid == 4242
    assert os.stat(j(g, "sub")).st_mode & stat.S_ISGID


# --- open files ------------------------------------------------------------------------------------------------
def test_unlinked_open_file_stays_usable_then_space_returns(mnt, d):
    def free_blocks():
        return os.statvfs(mnt.mnt).f_bfree

    p = j(d, "doomed")
    b0 = free_blocks()
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    closed = False
    try:
        data = pattern(6, 2 * MiB)
        os.write(fd, data)
        b1 = free_blocks()
        assert b0 - b1 >= 512
        os.unlink(p)
        assert not os.path.exists(p) and os.listdir(d) == []
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"still writable", 3 * MiB)
        assert os.pread(fd, 14, 3 * MiB) == b"still writable"
        assert os.fstat(fd).st_size == 3 * MiB + 14
        # the blocks are still held while the file is open
        assert free_blocks() <= b1
        os.close(fd)
        closed = True
    finally:
        if not closed:
            os.close(fd)
    # FUSE forgets the inode after the last close; its space comes back
    assert wait_until(lambda: free_blocks() >= b0 - 8), (b0, free_blocks())


def test_mmap_shared_read_write(d):
    p = j(d, "mapped")
    init = pattern(7, 3 * BS)
    write_file(p, init)
    fd = os.open(p, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 3 * BS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert mm[:] == init  # reads see the file
        mm[10:20] = b"0123456789"
        mm[2 * BS:2 * BS + 5] = b"store"
        mm.flush()  # msync
        assert os.pread(fd, 10, 10) == b"0123456789"
        mm[BS:BS + 4] = b"late"
        mm.close()  # munmap writes back
    finally:
        os.close(fd)
    expect = bytearray(init)
    expect[10:20] = b"0123456789"
    expect[2 * BS:2 * BS + 5] = b"store"
    expect[BS:BS + 4] = b"late"
    assert read_file(p) == bytes(expect)
    # a map of a sparse, ftruncate'd file: stores land in new blocks
    q = j(d, "mapped2")
    fd = os.open(q, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.ftruncate(fd, 4 * BS)
        mm = mmap.mmap(fd, 4 * BS)
        assert mm[:] == bytes(4 * BS)
        mm[3 * BS:3 * BS + 3] = b"new"
        mm.flush()
        mm.close()
    finally:
        os.close(fd)
    assert read_file(q) == bytes(3 * BS) + b"new" + bytes(BS - 3)
    assert os.stat(q).st_blocks >= 8


def test_touch_a_and_m_keep_the_other_time(d):
    """utimensat with UTIME_OMIT for one of the times (touch -a / touch -m)."""
    import subprocess

    p = j(d, "f")
    write_file(p, b"")
    os.utime(p, ns=(5_000_000_000, 7_000_000_000))
    subprocess.run(["touch", "-a", "-d", "@1000", p], check=True)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9, 7_000_000_000)
    subprocess.run(["touch", "-m", "-d", "@2000", p], check=True)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9, 2000 * 10**9)


def test_huge_offsets_and_efbig(d):
    p = j(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"far", 5 << 40) == 3  # 5 TiB: one block
        st = os.fstat(fd)
        assert st.st_size == (5 << 40) + 3 and st.st_blocks == 8
        assert os.pread(fd, 3, 5 << 40) == b"far"
        assert errno_of(os.pwrite, fd, b"x", 1 << 48) == errno.EFBIG  # past 256 TiB
        assert errno_of(os.ftruncate, fd, (1 << 48) + 1) == errno.EFBIG
        assert os.fstat(fd).st_size == (5 << 40) + 3
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_blocks == 0
    finally:
        os.close(fd)


def test_o_direct_and_copy_file_range(d):
    p, q = j(d, "direct"), j(d, "copy")
    buf = mmap.mmap(-1, 3 * BS)  # page-aligned buffer
    buf.write(pattern(12, 3 * BS))
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        assert os.pwrite(fd, buf, BS) == 3 * BS
        assert os.pread(fd, 4 * BS, 0) == bytes(BS) + pattern(12, 3 * BS)
        assert os.pread(fd, 2 * BS, 3 * BS) == pattern(12, 3 * BS)[2 * BS:]  # short at EOF
    finally:
        os.close(fd)
    assert read_file(p) == bytes(BS) + pattern(12, 3 * BS)
    src = os.open(p, os.O_RDONLY)
    dst = os.open(q, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        n = 0
        while n < 4 * BS:
            k = os.copy_file_range(src, dst, 4 * BS - n)
            assert k > 0
            n += k
    finally:
        os.close(src)
        os.close(dst)
    assert read_file(q) == read_file(p)


def test_user_xattrs_only_on_files_and_dirs(d):
    """The kernel refuses user.* attributes on fifos, sockets, devices and symlinks (EPERM)."""
    os.mkfifo(j(d, "fifo"))
    os.symlink("fifo", j(d, "ln"))
    assert errno_of(os.setxattr, j(d, "fifo"), "user.x", b"1") == errno.EPERM
    assert errno_of(os.setxattr, j(d, "ln"), "user.x", b"1", follow_symlinks=False) == errno.EPERM
    assert os.listxattr(j(d, "fifo")) == []
    assert errno_of(os.setxattr, j(d, "fifo"), "user." + "n" * 251, b"1") == errno.ERANGE
    write_file(j(d, "f"), b"")
    assert errno_of(os.setxattr, j(d, "f"), "user.big", bytes(70000)) == errno.E2BIG  # kernel: > 64 KiB
    os.setxattr(j(d, "f"), "user.almost", bytes(60000))
    assert os.getxattr(j(d, "f"), "user.almost") == bytes(60000)


def test_a_warm_read_is_served_by_the_page_cache_and_a_mapped_file_starts_afresh(mnt, d):
    """Opens keep the kernel's cached pages (every data change reaches them through the daemon's
    replies), except after a direct mapping stored behind their back."""
    p = j(d, "warm")
    write_file(p, pattern(5, 256 * 1024))
    read_file(p)
    before = mnt.stats()["requests"].get("read", 0)
    assert read_file(p) == pattern(5, 256 * 1024)
    assert mnt.stats()["requests"].get("read", 0) == before  # warm: no READ reached the daemon
    from daxfs import dax
    with dax.mmap(p, 4096, dax.MAP_SHARED) as m:
        m[0:4] = b"DAX!"  # behind the page cache's back
    assert read_file(p)[:4] == b"DAX!"  # the open after the mapping drops the stale pages
