"""Real page faults through a real mount (image on tmpfs): any load or store into a daxfs.dax window,
from any code, faults through the daemon's userfaultfd service (daemon/userfaults.py), and the window
loses pages as Linux's mappings do: SIGBUS beyond EOF, after truncate and after the daemon went;
zeros after a hole punch. Whatever may end in SIGBUS runs in a child process.

The crash tests (MAP_SYNC under SIGKILL, both fault kinds) are in test_dax_crash.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from daxfs import dax
from daxfs.daemon.options import MountOptions
from daxfs.dax.protocol import decode, encode
from helpers import BS, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, crash_under, fallocate, read_file, wait_until

pytestmark = pytest.mark.mount

SYNC = dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC
AROUND = MountOptions().fault_around


@pytest.fixture
def shm(daxmount):
    return daxmount(tmpfs=True)


def sized(path: str, size: int, prealloc: bool = False) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        if prealloc:
            os.posix_fallocate(f.fileno(), 0, size)
        os.fsync(f.fileno())
    return path


def child(code: str, *args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a child (sys.argv[1:] = args); its death by a signal shows as returncode -SIG."""
    prelude = "import ctypes, os, sys, time\nfrom daxfs import dax\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def test_stores_from_any_code_fault_through_the_daemon_and_land_in_the_file(shm):
    span = AROUND * BS  # one fault maps AROUND pages: each store below is in a span of its own
    f = sized(shm / "f", 3 * span)
    before = shm.stats()
    with dax.mmap(f, 3 * span, SYNC) as m:
        assert m.real
        ctypes.memset(m.address, ord("c"), 100)  # a store from C
        a = np.frombuffer((ctypes.c_char * BS).from_address(m.address + span), dtype=np.uint8)
        a[:] = ord("n")  # a numpy kernel
        src = sized(shm / "src", 0)
        with open(src, "wb") as s:
            s.write(b"k" * BS)
        fd = os.open(src, os.O_RDONLY)
        try:  # a system call storing into the window: the kernel's copy faults too
            assert os.readv(fd, [memoryview((ctypes.c_char * BS).from_address(m.address + 2 * span)).cast("B")]) == BS
        finally:
            os.close(fd)
        del a
        m.persist()
    after = shm.stats()
    data = read_file(f)
    assert data[:100] == b"c" * 100 and data[span:span + BS] == b"n" * BS and data[2 * span:2 * span + BS] == b"k" * BS
    assert after["write_faults"] - before["write_faults"] == 3
    assert after["sync_write_faults"] - before["sync_write_faults"] == 3  # new blocks: each committed first
    assert after["real_fault_maps"] == before["real_fault_maps"] + 1
    assert os.stat(f).st_blocks * 512 == 3 * span  # each fault allocated the pages it mapped


def test_loads_of_holes_read_zeros_and_allocate_nothing_then_a_store_faults_again(shm):
    f = sized(shm / "f", 4 * BS)
    before = shm.stats()
    with dax.mmap(f, 4 * BS) as m:
        v = np.frombuffer((ctypes.c_char * (4 * BS)).from_address(m.address), dtype=np.uint8)
        assert int(v.sum()) == 0
        mid = shm.stats()
        assert mid["read_faults"] - before["read_faults"] == 1 and os.stat(f).st_blocks == 0  # fault-around
        v[5] = 9  # the page is mapped write-protected: its first store is a write fault
        v[BS + 5] = 9  # and so is the next page's: a write-protect fault lifts one page's protection
        del v
    after = shm.stats()
    assert after["write_faults"] - mid["write_faults"] == 2
    assert read_file(f)[5] == 9 and os.stat(f).st_blocks * 512 == 2 * BS


def test_fault_around_is_a_mount_option(daxmount):
    m = daxmount("fault_around=1", tmpfs=True)
    f = sized(m / "f", 4 * BS)
    before = m.stats()
    with dax.mmap(f, 4 * BS) as mp:
        assert int(np.frombuffer((ctypes.c_char * (4 * BS)).from_address(mp.address), dtype=np.uint8).sum()) == 0
    assert m.stats()["read_faults"] - before["read_faults"] == 4  # one per page


def test_writes_through_the_mount_are_seen_at_once_in_the_window_and_the_other_way(shm):
    f = sized(shm / "f", 4 * BS)
    with dax.mmap(f, 4 * BS) as m:
        assert m[BS:BS + 5] == bytes(5)  # a hole, read-faulted as zeros
        with open(f, "r+b") as w:
            w.seek(BS)
            w.write(b"write")  # fills the hole with the block the window points at
        assert m[BS:BS + 5] == b"write"
        m[3 * BS:3 * BS + 6] = b"direct"
        with open(f, "rb") as r:
            r.seek(3 * BS)
            assert r.read(6) == b"direct"


def test_an_access_beyond_eof_gets_sigbus(shm):
    f = sized(shm / "f", BS)
    p = child("""
        m = dax.mmap(sys.argv[1], 2 * 4096)
        ctypes.memset(m.address, 1, 1)
        print("page 0 ok", flush=True)
        ctypes.memset(m.address + 4096, 1, 1)
        print("page 1 ok")
    """, f)
    assert p.returncode == -signal.SIGBUS and p.stdout == "page 0 ok\n", p.stderr
    assert shm.stats()["sigbus_faults"] >= 1


def test_truncate_takes_the_pages_away_and_a_punched_page_reads_zeros_then_takes_a_store(shm):
    f = sized(shm / "f", 4 * BS)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import ctypes, sys
        from daxfs import dax
        m = dax.mmap(sys.argv[1], 4 * 4096)
        for i in range(4):
            ctypes.memset(m.address + i * 4096, 65 + i, 4096)
        print("stored", flush=True)
        sys.stdin.readline()  # the parent punches page 1 and truncates to 3 pages
        print(ctypes.string_at(m.address + 4096, 4).hex(), flush=True)
        ctypes.memset(m.address + 4096, 90, 1)
        print(ctypes.string_at(m.address + 2 * 4096, 1).decode(), flush=True)
        ctypes.memset(m.address + 3 * 4096, 1, 1)
        print("page 3 still there")
    """), f], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "stored\n"
        fd = os.open(f, os.O_RDWR)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BS, BS)
            os.ftruncate(fd, 3 * BS)
        finally:
            os.close(fd)
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out == "00000000\nC\n" and p.returncode == -signal.SIGBUS, err
    data = read_file(f)
    assert data == b"A" * BS + b"Z" + bytes(BS - 1) + b"C" * BS


def test_an_unlinked_file_stays_mapped_until_unmapped(shm):
    f = sized(shm / "f", 2 * BS)
    st = os.statvfs(shm.mnt)
    with dax.mmap(f, 2 * BS) as m:
        m[0:4] = b"live"
        os.unlink(f)
        m[BS:BS + 4] = b"more"
        assert m[0:4] == b"live" and m[BS:BS + 4] == b"more"
    assert wait_until(lambda: shm.stats()["dax_mappings"] == 0)
    shm.umount()
    shm.mount()
    now = os.statvfs(shm.mnt)  # the orphan went with the mapping, its blocks with it (the orphan
    assert now.f_ffree == st.f_ffree + 1 and now.f_bfree >= st.f_bfree - 1  # directory keeps one block)


def test_the_daemons_end_takes_the_window_away(shm):
    f = sized(shm / "f", 2 * BS)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import ctypes, sys
        from daxfs import dax
        m = dax.mmap(sys.argv[1], 2 * 4096)
        ctypes.memset(m.address, 7, 1)
        print("mapped", flush=True)
        sys.stdin.readline()
        ctypes.memset(m.address + 4096, 7, 1)
        print("stored after the daemon went")
    """), f], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "mapped\n"
        out, err = crash_under(shm, p)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGBUS and out == "", err
    shm.mount()


def test_a_forked_child_has_no_window_and_the_parents_goes_on(shm):
    f = sized(shm / "f", BS)
    p = child("""
        m = dax.mmap(sys.argv[1], 4096)
        ctypes.memset(m.address, 3, 1)
        pid = os.fork()
        if pid == 0:
            ctypes.memset(m.address, 4, 1)  # MADV_DONTFORK: nothing mapped here
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited")
        ctypes.memset(m.address, 5, 1)
        m.close()
        print(open(sys.argv[1], "rb").read(1)[0])
    """, f)
    assert p.stdout.split() == [str(int(signal.SIGSEGV)), "5"], p.stderr


def test_a_read_only_window_refuses_stores_with_sigsegv(shm):
    f = sized(shm / "f", BS)
    p = child("""
        m = dax.mmap(sys.argv[1], 4096, prot=dax.PROT_READ)
        print(ctypes.string_at(m.address, 1) == b"\\0", flush=True)
        ctypes.memset(m.address, 1, 1)
    """, f)
    assert p.stdout == "True\n" and p.returncode == -signal.SIGSEGV, p.stderr


def test_a_client_killed_with_faults_pending_costs_the_daemon_nothing(shm):
    f = sized(shm / "f", 2048 * BS)
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import ctypes, sys
        from daxfs import dax
        m = dax.mmap(sys.argv[1], 2048 * 4096, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC)
        print("mapped", flush=True)
        for i in range(2048):
            ctypes.memset(m.address + i * 4096, 1, 1)
    """), f], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "mapped\n"
    assert wait_until(lambda: shm.stats()["write_faults"] > 20, timeout=30)
    p.kill()
    p.wait()
    assert wait_until(lambda: shm.stats()["dax_mappings"] == 0, timeout=10)  # its window was dropped
    with dax.mmap(f, BS) as m:  # and the service goes on
        m[0:2] = b"ok"
    assert read_file(f)[:2] == b"ok"


def test_a_window_request_must_carry_a_userfaultfd_of_a_mapping_of_the_caller(shm):
    import socket
    f = sized(shm / "f", BS)
    with dax.mmap(f, BS, faults="explicit") as m:  # a mapping without a layout
        for fds, req, word in (([], {"uffd": m._id, "base": 4096}, "exactly one descriptor"),
                               ([0], {"uffd": m._id, "base": 4096}, "explicit faults"),
                               ([0], {"uffd": m._id, "base": 4097}, "explicit faults"),
                               ([0], {"uffd": 999, "base": 4096}, "no such mapping")):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(m._fds_path)
                socket.send_fds(s, [encode(req)], fds) if fds else s.sendall(encode(req))
                reply = decode(s.recv(4096).split(b"\n")[0])
            assert not reply["ok"] and (word in reply["error"] or "EINVAL" in reply["error"]), reply
        m[0:2] = b"ok"  # the daemon took no harm
    assert read_file(f)[:2] == b"ok"


def test_without_tmpfs_the_mapping_falls_back_to_explicit_faults_and_says_why(daxmount):
    m = daxmount()
    f = sized(m / "f", BS)
    with pytest.raises(OSError) as e:
        dax.mmap(f, BS, faults="real")
    assert e.value.errno == errno.EOPNOTSUPP and "not tmpfs" in str(e.value)
    p = child("""
        m = dax.mmap(sys.argv[1], 4096)
        m2 = dax.mmap(sys.argv[1], 4096)
        m[0:2] = b"ok"
        print(m.real, m2.real)
    """, f)
    assert p.stdout == "False False\n" and p.stderr.count("ExplicitFaults") == 1 and "not tmpfs" in p.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_file(f)[:2] == b"ok"
