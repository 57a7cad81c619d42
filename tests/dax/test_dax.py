"""daxfs.dax through real mounts: flags as mmap(2) takes them, faults, permissions, revocation, coherence
with read() and write(), and the fault counters of `daxfs stats`.

The crash tests (generic/470 and its contrast) are in test_dax_crash.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import re
import subprocess
import sys

import numpy as np
import pytest


from daxfs import dax
from daxfs.dax import mapping as dax_mapping
from daxfs.dax.protocol import ControlClient, ControlError
from helpers import (BS, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, REPO, as_user, daxfs,
                     errno_as_user, fallocate, mounted, pattern, read_file, wait_until, write_file)

pytestmark = pytest.mark.mount

VALIDATE_SYNC = dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC


def j(*parts) -> str:
    return os.path.join(*parts)


def sparse(path: str, size: int, mode: int = 0o644) -> None:
    """A file of `size` bytes with no blocks (truncate), committed."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, mode)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def stats(m) -> dict:
    return m.stats()


def dax_error(fn, *args, **kw) -> tuple[type, int]:
    try:
        fn(*args, **kw)
    except OSError as e:
        return type(e), e.errno
    return type(None), 0


# --- flags ----------------------------------------------------------------------------------------------
def _kernel_mmap_errno(fd: int, flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, BS, mmap.PROT_READ, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return ctypes.get_errno()
    libc.munmap(addr, BS)
    return 0


def test_flags_are_validated_bit_for_bit_as_this_kernel_validates_them(tmp_path):
    """For every flag bit: with MAP_SHARED_VALIDATE, daxfs.dax refuses with EOPNOTSUPP exactly the bits
    this kernel refuses with EOPNOTSUPP on a tmpfs file (MAP_SYNC aside: daxfs supports it); with
    MAP_SHARED it never does (unknown flags are dropped). tmpfs, because a file system may add its own
    refusals (ext4 on this kernel refuses MAP_SHARED | MAP_SYNC, which mmap(2) says is ignored)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    path = os.path.join(shm, f"daxfs-flags-{os.getpid()}")
    with open(path, "wb") as f:
        f.write(bytes(BS))
    fd = os.open(path, os.O_RDONLY)
    try:
        for bit in range(4, 32):
            flag = 1 << bit
            for kind in (dax.MAP_SHARED, dax.MAP_SHARED_VALIDATE):
                kernel = _kernel_mmap_errno(fd, kind | flag)
                if kernel not in (0, errno.EOPNOTSUPP):
                    continue  # refused before the flags were validated (placement, hugetlb, ...)
                try:
                    dax_mapping._check_flags(kind | flag)
                    ours = 0
                except OSError as e:
                    ours = e.errno
                if flag == dax.MAP_SYNC:
                    assert ours == 0  # supported with MAP_SHARED_VALIDATE, ignored with MAP_SHARED
                    assert kernel == (errno.EOPNOTSUPP if kind == dax.MAP_SHARED_VALIDATE else 0)  # no DAX here
                else:
                    assert (ours == errno.EOPNOTSUPP) == (kernel == errno.EOPNOTSUPP), (hex(flag), kind, kernel, ours)
    finally:
        os.close(fd)
        os.unlink(path)


def test_mmap_refuses_what_mmap2_refuses(daxmount, tmp_path):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, 4 * BS)
    assert dax_error(dax.mmap, f, BS, dax.MAP_SHARED_VALIDATE | 0x400)[1] == errno.EOPNOTSUPP
    with dax.mmap(f, BS, dax.MAP_SHARED | 0x400) as ok:  # unknown flags are dropped by MAP_SHARED
        assert ok[0] == 0
    assert dax_error(dax.mmap, f, BS, 0x02)[1] == errno.EINVAL  # MAP_PRIVATE
    assert dax_error(dax.mmap, f, BS, 0x0)[1] == errno.EINVAL  # no type
    assert dax_error(dax.mmap, f, BS, dax.MAP_SHARED | 0x10)[1] == errno.EINVAL  # MAP_FIXED
    assert dax_error(dax.mmap, f, 0)[1] == errno.EINVAL
    assert dax_error(dax.mmap, f, BS, offset=100)[1] == errno.EINVAL
    assert dax_error(dax.mmap, f, BS, prot=mmap.PROT_EXEC)[1] == errno.EINVAL
    os.mkdir(j(m.mnt, "d"))
    assert dax_error(dax.mmap, j(m.mnt, "d"), BS, prot=dax.PROT_READ)[1] == errno.ENODEV
    plain = str(tmp_path / "plain")
    write_file(plain, bytes(BS))
    assert dax_error(dax.mmap, plain, BS)[1] == errno.ENODEV  # not on a daxfs mount
    assert dax_error(dax.mmap, plain, BS, VALIDATE_SYNC)[1] == errno.EOPNOTSUPP  # as on any non-DAX fs


def test_map_sync_needs_map_shared_validate_and_the_mount_s_sync_mode_implies_it(daxmount):
    m = daxmount("commit=60")
    f = j(m.mnt, "f")
    sparse(f, 4 * BS)
    with dax.mmap(f, BS, dax.MAP_SHARED | dax.MAP_SYNC) as ignored, dax.mmap(f, BS, VALIDATE_SYNC) as synced:
        assert not ignored.sync and synced.sync
        before = stats(m)
        ignored[0] = 1  # a new block, uncommitted: the fault answers at once
        after = stats(m)
        assert after["write_faults"] == before["write_faults"] + 1 and after["commits"] == before["commits"]
        assert after["unstable_blocks"] >= 1
        synced[100] = 1  # the same page, still unstable: through the MAP_SYNC mapping the fault commits
        assert stats(m)["sync_write_faults"] == before["sync_write_faults"] + 1
        assert stats(m)["unstable_blocks"] == 0
    os.setxattr(f, "user.daxfs.map_sync", b"1")
    with dax.mmap(f, BS) as flagged:
        assert flagged.sync


# --- faults ---------------------------------------------------------------------------------------------
def test_slices_views_and_persist_see_the_file_and_the_file_sees_them(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    data = pattern(1, 8 * BS)
    write_file(f, data, fsync=True)
    with dax.mmap(f, 8 * BS) as mp:
        assert len(mp) == 8 * BS and mp[:] == data and mp[5] == data[5] and mp[-1] == data[-1]
        assert mp[BS - 3:BS + 3] == data[BS - 3:BS + 3]
        mp[100:105] = b"hello"
        mp[2 * BS] = 0x7A
        mp[3 * BS:4 * BS] = np.full(BS, 9, dtype=np.uint8)
        v = mp.view(5 * BS, 2 * BS, write=True)
        v[:] = 0x42
        mp.persist(0, 8 * BS)
        expect = bytearray(data)
        expect[100:105] = b"hello"
        expect[2 * BS] = 0x7A
        expect[3 * BS:4 * BS] = b"\x09" * BS
        expect[5 * BS:7 * BS] = b"\x42" * (2 * BS)
        assert read_file(f) == expect  # read() sees the stores at once
        ro = mp.view(0, BS)
        assert not ro.flags.writeable and ro[100:105].tobytes() == b"hello"
        with pytest.raises(BufferError):
            mp.close()  # views alive: refused, as mmap.close() refuses with exports
        del v, ro
        with pytest.raises(ValueError):
            mp[0:3] = b"toolong"
        with pytest.raises(IndexError):
            mp[8 * BS]
    assert mp.closed
    with pytest.raises(ValueError):
        mp[0]


def test_holes_read_as_zeros_without_allocating_and_populate_faults_them_in_one_go(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, 64 * BS)
    before = stats(m)
    with dax.mmap(f, 64 * BS, dax.MAP_SHARED | dax.MAP_POPULATE, prot=dax.PROT_READ) as mp:
        after = stats(m)
        assert after["read_faults"] == before["read_faults"] + 1  # one request for all 64 pages
        assert mp[:] == bytes(64 * BS)
        assert stats(m)["read_faults"] == after["read_faults"]  # all there already
    assert os.stat(f).st_blocks == 0 and stats(m)["write_faults"] == before["write_faults"]


def test_only_the_first_store_to_a_page_asks_the_daemon(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, 4 * BS)
    with dax.mmap(f, 4 * BS) as mp:
        s0 = stats(m)
        mp[10] = 1
        s1 = stats(m)
        for i in range(2000):
            mp[i] = i & 0xFF
        mp[0:BS] = bytes(BS)
        s2 = stats(m)
        assert s1["write_faults"] == s0["write_faults"] + 1
        assert s2["write_faults"] == s1["write_faults"] and s2["read_faults"] == s1["read_faults"]
        # a read fault of a page that is writable already keeps it writable
        mp[BS:3 * BS]  # pages 1 and 2: read faults
        mp[0:2 * BS] = bytes(2 * BS)  # page 0 writable already, page 1 faulted for write
        assert stats(m)["write_faults"] == s2["write_faults"] + 1
    assert os.stat(f).st_blocks == 2 * BS // 512


def test_a_read_only_mapping_refuses_writes(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    write_file(f, pattern(2, 2 * BS), fsync=True)
    with dax.mmap(f, 2 * BS, prot=dax.PROT_READ) as mp:
        assert mp[0:4] == pattern(2, 4)
        with pytest.raises(PermissionError):
            mp[0] = 1
        with pytest.raises(PermissionError):
            mp.view(0, BS, write=True)
        with pytest.raises(ValueError):
            mp.view(0, BS)[0] = 1  # numpy refuses stores into a read-only view
    assert read_file(f) == pattern(2, 2 * BS)


def test_access_beyond_the_end_of_the_file_is_a_bus_error(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, BS + 10)
    with dax.mmap(f, 4 * BS) as mp:
        mp[BS + 20] = 1  # inside the EOF page: allowed, as on Linux
        with pytest.raises(dax.BusError):
            mp[2 * BS] = 1
        with pytest.raises(dax.BusError):
            mp[3 * BS]


# --- permissions ----------------------------------------------------------------------------------------
USER = 65534


def _map_rw(name: str) -> bytes:
    with dax.mmap(name, BS) as mp:
        mp[0:4] = b"mine"
        return mp[0:4]


def _map_ro(name: str) -> bytes:
    with dax.mmap(name, BS, prot=dax.PROT_READ) as mp:
        return mp[0:4]


def _ask_map(name: str, write: bool) -> str:
    """The daemon's own check, without the kernel's open() in front of it."""
    ino = os.stat(name).st_ino
    with ControlClient(os.getxattr(".", "user.daxfs.control").decode()) as c:  # (cwd: the mount)
        try:
            c.call("dax_map", ino=ino, offset=0, length=BS, write=write)
        except ControlError as e:
            return str(e)
    return "ok"


def test_the_image_owner_maps_what_its_modes_allow_and_other_users_map_nothing(tmp_path):
    """Direct access hands out the image, so only root and the image's owner get it; the file's owner
    and mode still decide what the owner may map (checked by the daemon, not only by open())."""
    with mounted(tmp_path, "allow_other", size="16M") as m:
        for name, mode, uid, gid in (("mine", 0o644, USER, USER), ("readonly", 0o444, USER, USER),
                                     ("secret", 0o600, 0, 0), ("group", 0o640, 0, USER), ("open", 0o666, 0, 0)):
            write_file(j(m.mnt, name), b"data" * 1024, mode=mode, fsync=True)
            os.chown(j(m.mnt, name), uid, gid)
            os.chmod(j(m.mnt, name), mode)
        # the image belongs to root: another user is refused even for a file anyone may write, and
        # cannot even reach the daemon's socket (0600, root's)
        e = pytest.raises(PermissionError, as_user, _map_rw, "open", cwd=m.mnt)
        assert "image" in str(e.value)
        assert errno_as_user(_ask_map, "open", False, cwd=m.mnt) == errno.EACCES
        m.umount()
        os.chown(m.image, USER, USER)
        m.mount()
        assert as_user(_map_rw, "mine", cwd=m.mnt) == b"mine"
        assert as_user(_map_ro, "readonly", cwd=m.mnt) == b"data"
        assert as_user(_map_ro, "group", cwd=m.mnt) == b"data"
        for name in ("readonly", "group"):
            assert pytest.raises(PermissionError, as_user, _map_rw, name, cwd=m.mnt)
            assert as_user(_ask_map, name, True, cwd=m.mnt).startswith("EACCES")
        assert as_user(_ask_map, "secret", False, cwd=m.mnt).startswith("EACCES")
        assert as_user(_ask_map, "mine", True, cwd=m.mnt) == "ok"
        assert as_user(_ask_map, "open", True, cwd=m.mnt) == "ok"
        # a third user cannot reach the sockets (0600, now the image owner's) ...
        control = os.getxattr(m.mnt, "user.daxfs.control").decode()
        assert errno_as_user(_ask_map, "open", False, uid=USER - 1, gid=USER - 1, cwd=m.mnt) == errno.EACCES
        assert as_user(_ask_fds, control, uid=USER - 1, gid=USER - 1).startswith("EACCES")
        # ... and if the owner opens them to everyone, the daemon itself refuses the third user, and
        # hands it no descriptors either
        as_user(_open_sockets, control)
        assert "image" in as_user(_ask_map, "open", False, uid=USER - 1, gid=USER - 1, cwd=m.mnt)
        fds = as_user(_ask_fds, control, uid=USER - 1, gid=USER - 1)
        assert fds.startswith("EACCES") and "image" in fds


def _open_sockets(control: str) -> None:
    for name in ("control", "dax"):
        os.chmod(os.path.join(os.path.dirname(control), name), 0o666)


def _ask_fds(control: str) -> str:
    try:
        dax_mapping._receive_fds(os.path.join(os.path.dirname(control), "dax"), False)
    except OSError as e:
        return f"{errno.errorcode[e.errno]}: {e.strerror}"
    return "got the image's descriptor"


# --- revocation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncate", "punch", "fallocate punch", "fallocate zero", "unlink"])
def test_taking_a_mapped_range_away_revokes_the_mapping(daxmount, how):
    m = daxmount()
    f = j(m.mnt, "f")
    write_file(f, pattern(3, 8 * BS), fsync=True)
    inside = dax.mmap(f, 2 * BS, offset=4 * BS)
    before = dax.mmap(f, 2 * BS)
    inside[0] = 1
    before[0] = 1
    if how == "truncate":
        os.truncate(f, 3 * BS)
    elif how == "punch":
        os.setxattr(f, "user.daxfs.punch", f"{4 * BS} {2 * BS}".encode())
    elif how.startswith("fallocate"):
        fd = os.open(f, os.O_RDWR)
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if how.endswith("punch") else FALLOC_FL_ZERO_RANGE
        fallocate(fd, mode, 4 * BS + 10, 100)  # part of one block is enough
        os.close(fd)
    else:
        os.unlink(f)
    with pytest.raises(dax.BusError):
        inside[0] = 2
    with pytest.raises(dax.BusError):
        inside[BS]  # a page never touched: the whole mapping is gone
    if how == "unlink":
        with pytest.raises(dax.BusError):
            before[0]
    else:
        before[1] = 2  # its range was not touched
        assert read_file(f)[:2] == b"\x01\x02"
    inside.close()
    before.close()
    assert stats(m)["dax_mappings"] == 0


@pytest.mark.parametrize("how", ["umount", "sigkill"])
def test_a_daemon_restart_revokes_every_mapping(daxmount, how):
    m = daxmount()
    f = j(m.mnt, "f")
    write_file(f, pattern(4, 4 * BS), fsync=True)
    mp = dax.mmap(f, 4 * BS)
    mp[0] = 1
    if how == "umount":
        m.umount()
    else:
        m.crash(m.pid())
    m.mount()
    with pytest.raises(dax.BusError):
        mp[0] = 2
    with pytest.raises(dax.BusError):
        mp[2 * BS]
    mp.close()
    with dax.mmap(f, 4 * BS) as again:  # a new mapping of the new daemon works
        assert again[0] == 1 and again[1:4] == pattern(4, 4)[1:4]


def test_blocks_of_a_revoked_mapping_are_not_reused_until_it_is_closed(daxmount):
    """Truncate frees the blocks of a mapped range; while the mapping lives they stay out of the
    allocator, so that a store through a stale view (no check, raw memory) can hurt no other file."""
    m = daxmount(size="16M")
    f = j(m.mnt, "f")
    sparse(f, 16 * BS)
    mp = dax.mmap(f, 16 * BS)
    mp[:] = b"\x11" * (16 * BS)
    view = mp.view(0, 16 * BS, write=True)
    ext = json.loads(os.getxattr(f, "user.daxfs.map"))["extents"]
    held = {pblk + i for _, n, pblk, _, _ in ext for i in range(n)}
    assert len(held) == 16
    os.truncate(f, 0)
    fd = os.open(j(m.mnt, "filler"), os.O_CREAT | os.O_WRONLY, 0o644)
    chunk = b"\x22" * (64 * BS)
    off = 0
    try:
        while True:  # fill the file system: the allocator commits and checkpoints to find space
            off += os.pwrite(fd, chunk, off)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    try:
        while True:
            off += os.pwrite(fd, chunk[:BS], off)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    os.fsync(fd)
    ext = json.loads(os.getxattr(j(m.mnt, "filler"), "user.daxfs.map"))["extents"]
    got = {pblk + i for _, n, pblk, _, _ in ext for i in range(n)}
    assert not got & held
    view[:] = 0xEE  # the stale view: lands in the held blocks only
    filler = read_file(j(m.mnt, "filler"))
    assert len(filler) == off and filler.count(b"\x22") == off
    del view
    mp.close()
    os.fsync(fd)  # commit + checkpoint happen as the allocator needs them
    os.pwrite(fd, chunk[:BS * 8], off)  # the 16 blocks came back
    os.close(fd)


def test_a_process_that_dies_without_closing_loses_its_mappings(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, 4 * BS)
    code = ("import sys, time; from daxfs import dax; m = dax.mmap(sys.argv[1], 4096); m[0] = 7; "
            "print('mapped', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, f], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "mapped\n"
        assert stats(m)["dax_mappings"] == 1
    finally:
        child.kill()  # no close(), no unmap: the daemon must notice by itself
        child.wait()
        child.stdout.close()
    assert wait_until(lambda: stats(m)["dax_mappings"] == 0, timeout=10)
    assert read_file(f)[0] == 7


# --- coherence ------------------------------------------------------------------------------------------
def test_read_sees_direct_stores_at_once_through_every_handle(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    write_file(f, bytes(4 * BS), fsync=True)
    early = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(early, 4 * BS, 0) == bytes(4 * BS)  # now in the page cache
        with dax.mmap(f, 4 * BS) as mp:
            during = os.open(f, os.O_RDONLY)
            try:
                assert os.pread(during, BS, 0) == bytes(BS)
                mp[0:5] = b"first"
                assert os.pread(during, 5, 0) == b"first"  # a handle opened while mapped: direct_io
                assert os.pread(early, 5, 0) == b"first"  # mapping dropped the cached pages
                mp[0:6] = b"second"
                assert os.pread(during, 6, 0) == b"second"
                assert read_file(f)[:6] == b"second"
                with pytest.raises(OSError) as e:  # no page cache for this handle (FUSE-FACTS)
                    mmap.mmap(during, BS, prot=mmap.PROT_READ)
                assert e.value.errno == errno.ENODEV
            finally:
                os.close(during)
        after = os.open(f, os.O_RDWR)  # no mapping: ordinary handles, ordinary mmap again
        try:
            with mmap.mmap(after, BS) as mm:
                assert mm[:6] == b"second"
        finally:
            os.close(after)
    finally:
        os.close(early)


def test_a_mapping_sees_write_into_a_hole_it_had_read_as_zeros(daxmount):
    m = daxmount()
    f = j(m.mnt, "f")
    sparse(f, 4 * BS)
    with dax.mmap(f, 4 * BS, prot=dax.PROT_READ) as mp:
        assert mp[:] == bytes(4 * BS)  # the zero page, four times
        fd = os.open(f, os.O_WRONLY)
        try:
            os.pwrite(fd, b"through the mount", 2 * BS + 7)
        finally:
            os.close(fd)
        assert mp[2 * BS + 7:2 * BS + 24] == b"through the mount"
        assert mp[:2 * BS] == bytes(2 * BS)


def test_daxfs_stats_shows_fault_counters_and_histograms(daxmount):
    m = daxmount("commit=60")
    f = j(m.mnt, "f")
    sparse(f, 8 * BS)
    with dax.mmap(f, 8 * BS, VALIDATE_SYNC) as mp:
        mp[0:BS]
        for p in range(1, 8):
            mp[p * BS] = p
    s = json.loads(daxfs("stats", m.mnt, "--json", check=True).stdout)
    assert s["read_faults"] == 1 and s["write_faults"] == 7 and s["sync_write_faults"] == 7
    assert s["sync_write_fault_latency"]["count"] == 7 and s["read_fault_latency"]["count"] == 1
    text = daxfs("stats", m.mnt, check=True).stdout
    for title in ("commit latency:", "read fault latency:", "write fault latency:", "sync write fault latency:"):
        assert title in text
    block = text.split("sync write fault latency:")[1].splitlines()
    assert block[1].strip().startswith("min=") and block[2].strip().split(": ")[1].isdigit()


def test_the_example_of_docs_dax_md_runs_as_written(daxmount):
    m = daxmount()
    doc = os.path.join(REPO, "docs", "dax.md")
    with open(doc) as f:
        code = re.search(r"<!-- example: dax.py -->\s*```python\n(.*?)```", f.read(), re.S).group(1)
    p = subprocess.run([sys.executable, "-c", code.replace("/mnt/pm", m.mnt)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    data = read_file(j(m.mnt, "log"))
    assert data[:5] == b"hello" and data[4096:4096 + 8192] == b"\x07" * 8192 and len(data) == 1 << 20
