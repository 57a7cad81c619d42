"""`daxfs run`: unmodified C programs get real DAX mappings of daxfs files, with MAP_SYNC (the preload
library daxfs/dax/preload.c; docs/run.md). The programs are tests/dax/preload_prog.c, compiled here;
the images are on /dev/shm (real faults need a tmpfs image). Whatever may end in a signal is the
program's own process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import BS, MiB, crash_under, read_file, wait_until

pytestmark = pytest.mark.mount

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = [sys.executable, "-m", "daxfs.cli", "run", "--"]
MAP_SHARED, MAP_SHARED_VALIDATE, MAP_SYNC = 0x01, 0x03, 0x80000
PROT_RW = 0x3


def compile_c(out_dir, source: str, name: str, *libs: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = os.path.join(out_dir, name)
    p = subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", exe, source, *libs], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return exe


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> str:
    return compile_c(tmp_path_factory.mktemp("c"), os.path.join(HERE, "preload_prog.c"), "prog")


def run(prog: str, *args, preload: bool = True, timeout: float = 60, stdin: str | None = None):
    return subprocess.run([*(RUN if preload else []), prog, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def start(prog: str, *args) -> subprocess.Popen:
    return subprocess.Popen([*RUN, prog, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def sized(path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    return str(path)


@pytest.fixture
def shm(daxmount):
    return daxmount("fault_around=1", tmpfs=True)  # one page per fault, as the seed's kernel: countable


def test_map_sync_succeeds_under_daxfs_run_and_is_refused_without_it(shm, prog):
    f = sized(shm / "f", BS)
    flags = hex(MAP_SHARED_VALIDATE | MAP_SYNC)
    assert run(prog, "map", f, flags, PROT_RW, preload=False).stdout == "EOPNOTSUPP\n"  # FUSE: no DAX
    p = run(prog, "map", f, flags, PROT_RW)
    assert p.stdout == "ok\n" and p.returncode == 0, p.stderr
    assert shm.stats()["real_fault_maps"] == 1


def test_stores_from_c_land_in_the_file_each_page_a_fault(shm, prog):
    f = sized(shm / "f", 64 * BS)
    before = shm.stats()
    p = run(prog, "store", f, 64 * BS, "sync", 1)
    assert p.returncode == 0 and p.stdout == "stored\n", p.stdout + p.stderr
    after = shm.stats()
    assert after["write_faults"] - before["write_faults"] == 64
    assert after["sync_write_faults"] - before["sync_write_faults"] == 64  # new blocks: committed first
    assert run(prog, "check", f, 64 * BS, 1, preload=False).stdout == "bad 0\n"  # read through FUSE
    assert os.stat(f).st_blocks * 512 == 64 * BS
    assert wait_until(lambda: shm.stats()["dax_mappings"] == 0)


def kill_daemon_then_program(m, p: subprocess.Popen) -> None:
    """The program is frozen (waiting on stdin) right after its last store: SIGKILL the daemon at
    once, then the program, then clean the dead mount and remount."""
    pid = m.stats()["pid"]  # a getxattr: commits nothing
    os.kill(pid, signal.SIGKILL)
    p.kill()
    p.communicate(timeout=30)
    m.crash(pid)
    m.mount()


def test_a_map_sync_store_survives_sigkill_of_the_daemon_right_after_it(daxmount, prog):
    m = daxmount("commit=60", tmpfs=True)
    f = sized(m / "f", MiB)
    p = start(prog, "store", f, MiB, "sync", 470, "wait")
    assert p.stdout.readline() == "stored\n", p.stderr.read()
    kill_daemon_then_program(m, p)
    fmap = json.loads(os.getxattr(f, "user.daxfs.map"))
    assert fmap["blocks"] == MiB // BS and all(row[3] == "written" for row in fmap["extents"])
    assert run(prog, "check", f, MiB, 470, preload=False).stdout == "bad 0\n"


def test_msync_commits_a_window_without_map_sync_and_without_it_pages_are_lost(daxmount, prog):
    m = daxmount("commit=60", tmpfs=True)
    synced, lost = sized(m / "synced", MiB), sized(m / "lost", MiB)
    p = start(prog, "store", synced, MiB, "shared", 5, "msync", "wait")
    assert p.stdout.readline() == "stored\n", p.stderr.read()
    q = start(prog, "store", lost, MiB, "shared", 6, "wait")  # after the msync: its commit is the journal's
    assert q.stdout.readline() == "stored\n", q.stderr.read()
    q.kill()
    kill_daemon_then_program(m, p)
    q.communicate(timeout=30)
    assert run(prog, "check", synced, MiB, 5, preload=False).stdout == "bad 0\n"
    bad = int(run(prog, "check", lost, MiB, 6, preload=False).stdout.split()[1])
    assert bad > 0, "normal mode lost nothing without msync: the contrast shows nothing"


def test_mmap_flags_are_validated_bit_for_bit_as_this_kernel_validates_them(shm, prog, tmp_path):
    """Every flag bit, with MAP_SHARED and MAP_SHARED_VALIDATE: the answers for a daxfs file under
    `daxfs run` are the kernel's for a tmpfs file, MAP_SYNC aside (supported with VALIDATE)."""
    ref = os.path.join("/dev/shm", f"daxfs-flags-{os.getpid()}")
    with open(ref, "wb") as fh:
        fh.write(bytes(BS))
    try:
        kernel = dict(line.split() for line in run(prog, "flags", ref, preload=False).stdout.splitlines())
    finally:
        os.unlink(ref)
    ours = dict(line.split() for line in run(prog, "flags", sized(shm / "f", BS)).stdout.splitlines())
    assert len(kernel) == len(ours) == 56
    for flags, answer in kernel.items():
        if int(flags, 16) & MAP_SYNC:
            assert answer == ("EOPNOTSUPP" if int(flags, 16) & 0xF == MAP_SHARED_VALIDATE else "ok")  # no DAX
            assert ours[flags] == "ok", flags
        else:  # the same answer, refusals included (EINVAL for MAP_HUGETLB, MAP_GROWSDOWN, ...)
            assert ours[flags] == answer, (flags, answer, ours[flags])
    assert sum(a == "EOPNOTSUPP" for a in ours.values()) >= 8
    # the access mode as the kernel checks it: PROT_WRITE of a read-only descriptor
    f = shm / "f"
    assert run(prog, "map", f, hex(MAP_SHARED), PROT_RW, "ro").stdout == "EACCES\n"
    assert run(prog, "map", f, hex(MAP_SHARED), 0x1, "ro").stdout == "ok\n"
    assert run(prog, "map", f, hex(0x2), PROT_RW, "ro").stdout == "ok\n"  # MAP_PRIVATE: the kernel's
    assert run(prog, "protect", f).stdout == "mprotect: EACCES\n"


def test_an_access_beyond_eof_gets_sigbus(shm, prog):
    p = run(prog, "eof", sized(shm / "f", BS))
    assert p.returncode == -signal.SIGBUS and p.stdout == "page 0 ok\n", p.stderr
    assert shm.stats()["sigbus_faults"] >= 1


def test_an_access_after_munmap_gets_sigsegv_and_the_daemon_is_told(shm, prog):
    p = run(prog, "segv", sized(shm / "f", BS))
    assert p.returncode == -signal.SIGSEGV and p.stdout == "munmap 0\n", p.stderr
    assert read_file(shm / "f")[:1] == b"x"


def test_the_daemons_end_takes_the_window_away_sigbus(shm, prog):
    p = start(prog, "revoke", sized(shm / "f", 2 * BS))
    try:
        assert p.stdout.readline() == "mapped\n", p.stderr.read()
        out, err = crash_under(shm, p)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGBUS and out == "", err
    shm.mount()


def test_once_the_daemon_is_killed_no_store_lands_without_a_fault(shm, prog):
    """The daemon SIGKILLed, the program goes on at once: a store into a page it never faulted must
    not land, unregistered, in a block the file does not own. It waits until the watcher has put
    SIGBUS memory over the window, then gets SIGBUS (without the library's own copy of the
    userfaultfd, all 255 stores did land)."""
    p = start(prog, "after-death", sized(shm / "f", 256 * BS))
    try:
        assert p.stdout.readline() == "mapped\n", p.stderr.read()
        pid = shm.stats()["pid"]
        os.kill(pid, signal.SIGKILL)
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out == "stored 0\n", out + err
    shm.crash(pid)
    shm.mount()


def test_a_partly_unmapped_window_keeps_the_rest_until_the_last_part_goes(shm, prog):
    f = sized(shm / "f", 4 * BS)
    p = start(prog, "partial", f)
    try:
        assert p.stdout.readline() == "munmap middle 0\n"
        assert p.stdout.readline() == "ends b c\n"
        assert shm.stats()["dax_mappings"] == 1
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline() == "munmap rest 0 0\n"
        assert shm.stats()["dax_mappings"] == 0  # dax_unmap returned before munmap did
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    assert read_file(f) == b"b" + b"a" * (3 * BS - 1) + b"c" + b"a" * (BS - 1)


def test_threads_make_and_unmap_windows_at_once_and_store_into_a_shared_one(shm, prog):
    f = sized(shm / "f", 128 * BS)
    p = run(prog, "threads", f, timeout=120)
    assert p.returncode == 0 and p.stdout == "failed 0 munmap 0\n", p.stdout + p.stderr
    data = read_file(f)
    for n in range(4):
        for i in range(16):
            page = data[(n * 16 + i) * BS:(n * 16 + i + 1) * BS]
            assert page[:8] == bytes([ord("a") + n]) * 8, (n, i)
        for r in range(8):
            assert data[(64 + n * 16 + r) * BS] == ord("A") + n
    assert wait_until(lambda: shm.stats()["dax_mappings"] == 0)


def test_mremap_grows_with_maymove_at_the_same_file_offset_and_shrinks_in_place(shm, prog):
    f = sized(shm / "f", 4 * BS)
    p = run(prog, "mremap", f)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines() == ["grow in place: ENOMEM", "grown: one", "shrunk in place: yes", "munmap 0"]
    data = read_file(f)
    assert data[:4] == b"one\0" and data[BS:BS + 4] == b"two\0" and data[3 * BS:3 * BS + 5] == b"four\0"
    assert wait_until(lambda: shm.stats()["dax_mappings"] == 0)


def test_a_forked_child_has_no_window_of_its_parent_but_makes_its_own(shm, prog):
    f = sized(shm / "f", 2 * BS)
    p = run(prog, "fork", f)
    assert p.stdout.splitlines() == ["dofork: EINVAL", f"child: signal {int(signal.SIGSEGV)}", "parent: PQ"], \
        p.stdout + p.stderr
    data = read_file(f)
    assert data[:2] == b"PQ" and data[BS:BS + 1] == b"C"


def test_madv_remove_punches_the_file_not_the_image(shm, prog):
    f = sized(shm / "f", 3 * BS)
    p = run(prog, "remove", f)
    assert p.stdout.splitlines() == ["remove: ok", "after: 114 0 114"], p.stdout + p.stderr
    assert read_file(f) == b"r" * BS + bytes(BS) + b"r" * BS
    assert os.stat(f).st_blocks * 512 == 2 * BS  # the punched page has no block


def test_a_file_elsewhere_passes_through_untouched(prog, tmp_path):
    for where in ("/dev/shm", str(tmp_path)):
        f = os.path.join(where, f"daxfs-plain-{os.getpid()}")
        sized(f, 4 * BS)
        try:
            p = run(prog, "store", f, 4 * BS, "shared", 9)
            assert p.returncode == 0 and p.stdout == "stored\n", p.stderr
            assert run(prog, "check", f, 4 * BS, 9, preload=False).stdout == "bad 0\n"
            assert run(prog, "map", f, hex(MAP_SHARED_VALIDATE | MAP_SYNC), PROT_RW).stdout == "EOPNOTSUPP\n"
        finally:
            os.unlink(f)


def test_without_real_faults_map_sync_is_refused_once_with_the_reason_and_map_shared_uses_the_page_cache(
        daxmount, prog):
    m = daxmount()  # the image in the test's directory, not on tmpfs
    f = sized(m / "f", 4 * BS)
    p = run(prog, "map", f, hex(MAP_SHARED_VALIDATE | MAP_SYNC), PROT_RW)
    assert p.stdout == "EOPNOTSUPP\n"
    assert p.stderr.count("\n") == 1 and "MAP_SYNC" in p.stderr and "not tmpfs" in p.stderr, p.stderr
    p = run(prog, "store", f, 4 * BS, "shared", 3)
    assert p.returncode == 0 and p.stdout == "stored\n" and p.stderr == "", p.stderr
    assert run(prog, "check", f, 4 * BS, 3, preload=False).stdout == "bad 0\n"
    assert wait_until(lambda: m.stats()["dax_mappings"] == 0)


def test_daxfs_run_keeps_the_pid_the_exit_status_and_the_signals(tmp_path):
    p = subprocess.Popen([*RUN, "sh", "-c", 'echo $$; exit 7'], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 7 and out == f"{p.pid}\n"
    p = subprocess.run([*RUN, "sh", "-c", "kill -TERM $$"], timeout=60)
    assert p.returncode == -signal.SIGTERM
    p = subprocess.run([*RUN, "sh", "-c", 'case "$LD_PRELOAD" in */_preload*.so*) exit 0;; esac; exit 1'],
                       timeout=60, env={**os.environ, "LD_PRELOAD": ""})
    assert p.returncode == 0
    p = subprocess.run([*RUN, str(tmp_path / "no-such-program")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 127 and p.stderr.count("\n") == 1 and "command not found" in p.stderr


# --- PMDK: a real pmem client nobody here wrote ------------------------------------------------------------
@pytest.fixture(scope="module")
def pmem_prog(tmp_path_factory) -> str:
    if not all(os.path.exists(f"/usr/include/{h}") for h in ("libpmem.h", "libpmemobj.h")) or not shutil.which("pmempool"):
        pytest.skip("PMDK is not installed (apt: libpmem-dev libpmemobj-dev pmdk-tools; `make deps`)")
    return compile_c(tmp_path_factory.mktemp("pmdk"), os.path.join(HERE, "pmem_prog.c"), "pmem_prog",
                     "-lpmemobj", "-lpmem")


def test_libpmem_sees_pmem_under_daxfs_run_and_its_persisted_stores_survive_sigkill(daxmount, pmem_prog):
    m = daxmount("commit=60", tmpfs=True)
    assert run(pmem_prog, "map", m / "plain", MiB, preload=False).stdout == f"is_pmem=0 len={MiB}\n"  # msync path
    assert run(pmem_prog, "map", m / "dax", MiB).stdout == f"is_pmem=1 len={MiB}\n"  # MAP_SYNC worked
    f = m / "data"  # pmem_map_file creates it: open, posix_fallocate (FUSE fallocate), mmap
    p = start(pmem_prog, "write", f, MiB, 11)
    assert p.stdout.readline() == "persisted is_pmem=1\n", p.stderr.read()
    kill_daemon_then_program(m, p)
    assert run(pmem_prog, "check", f, MiB, 11, preload=False).stdout == "bad 0\n"


def read_until(p: subprocess.Popen, want: str, timeout: float = 60) -> str:
    """What p wrote to stdout up to (and with) the line `want`, read from the descriptor itself."""
    import select
    import time
    fd, out, deadline = p.stdout.fileno(), b"", time.monotonic() + timeout
    while f"\n{want}\n" not in "\n" + out.decode():
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], (want, out[-200:])
        chunk = os.read(fd, 65536)
        assert chunk, (want, out[-200:], p.stderr.read())
        out += chunk
    return out.decode()


def drain(p: subprocess.Popen) -> str:
    fd, out = p.stdout.fileno(), b""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out.decode()
        if not chunk:
            return out.decode()
        out += chunk


@pytest.mark.parametrize("opts", ["map_sync", "commit=60"], ids=["sync-mount", "normal-mount"])
def test_libpmemobj_transactions_survive_sigkill_of_the_daemon_every_committed_one_there(daxmount, pmem_prog,
                                                                                         opts):
    """pmemobj_create (posix_fallocate through FUSE), transactions in TX_BEGIN/TX_END, each reported
    once committed; the program frozen with SIGSTOP (no store lands after the crash instant), the
    daemon SIGKILLed, the program killed; remounted: pmemobj_open works, every reported transaction
    is there, pmempool check is clean. In a normal mount too: MAP_SYNC makes the windows sync."""
    m = daxmount(opts, tmpfs=True)
    pool = m / "pool"
    p = subprocess.Popen([*RUN, pmem_prog, "tx", pool, "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = read_until(p, "committed 300")
        os.kill(p.pid, signal.SIGSTOP)
        out += drain(p)
        pid = m.stats()["pid"]
        os.kill(pid, signal.SIGKILL)
        p.kill()
        p.wait(timeout=30)
    finally:
        p.kill()
    m.crash(pid)
    m.mount()
    committed = max(int(line.split()[1]) for line in out.splitlines() if line.startswith("committed"))
    p = run(pmem_prog, "verify", pool)
    assert p.returncode == 0, p.stdout + p.stderr
    count, bad = int(p.stdout.split()[1]), int(p.stdout.split()[3])
    assert bad == 0 and committed <= count <= committed + 1, (committed, p.stdout)
    check = subprocess.run(["pmempool", "check", "-v", pool], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "consistent" in check.stdout, check.stdout + check.stderr


CHECK_POOL = """#!/bin/bash
# after the remount: the pool opens, every transaction the program reported is there, pmempool is clean
pool=$DAXFS_MNT/pool
last=$(grep -o 'committed [0-9]*' "$DAXFS_ORACLE" 2>/dev/null | tail -1 | cut -d' ' -f2); last=${last:-0}
[ -e "$pool" ] || { [ "$last" = 0 ] && exit 0; echo "pool lost, $last committed"; exit 1; }
out=$(RUN PROG verify "$pool") || { [ "$last" = 0 ] && exit 0; echo "verify: $out"; exit 1; }
set -- $out
[ "$4" = 0 ] && [ "$2" -ge "$last" ] || { echo "count $2 bad $4, committed $last"; exit 1; }
pmempool check "$pool" >/dev/null || { echo "pmempool check failed"; exit 1; }
"""


@pytest.mark.parametrize("mode", ["sync", "normal"])
def test_a_pmdk_crash_campaign_under_daxfs_run_finds_no_violation(pmem_prog, tmp_path, mode):
    """`daxfs crashtest --cmd 'daxfs run -- ...'`: the libpmemobj program, frozen and its daemon
    killed at random points, then pmemobj_open, every reported transaction, pmempool check."""
    import shlex
    run_cmd = " ".join(map(shlex.quote, RUN))
    check = tmp_path / "check.sh"
    check.write_text(CHECK_POOL.replace("RUN", run_cmd).replace("PROG", shlex.quote(pmem_prog)))
    check.chmod(0o755)
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "daxfs.cli", "crashtest", "--mode", mode, "--points", "8", "--seed", "3",
                        "--no-inject", "--json", str(report),
                        "--cmd", f"{run_cmd} {shlex.quote(pmem_prog)} tx $DAXFS_MNT/pool 30000 > $DAXFS_ORACLE",
                        "--check", str(check)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    cases = json.loads(report.read_text())["cases"]
    assert sum(c["note"] == "killed mid-workload" for c in cases) >= 3, [c["note"] for c in cases]
