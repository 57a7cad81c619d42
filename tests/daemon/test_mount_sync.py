"""MAP_SYNC semantics through real mounts, proven with SIGKILLs of the daemon.

Sync mode (-o map_sync, the per-file xattr user.daxfs.map_sync=1, or an O_SYNC/O_DSYNC handle): a write
that touches an unstable block (new allocation, unwritten -> written, i_size growth) is acknowledged
only after the journal has committed it, so a SIGKILL the moment write() returns loses nothing. Normal
mode with commit=60: the very same sequence loses the new block. Writes to stable blocks never commit,
and a daemon kill never loses them either (the bytes are in pmem, whose mapping was committed).
"""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
from helpers import BS, MiB, daxfs, pattern, read_file, write_file


pytestmark = pytest.mark.mount

SYNC_XATTR = "user.daxfs.map_sync"
PREALLOC_XATTR = "user.daxfs.prealloc"


def j(*parts) -> str:
    return os.path.join(*parts)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as e:  # the daemon is dead: FUSE's flush fails, the fd is closed all the same
        assert e.errno in (errno.ENOTCONN, errno.ECONNABORTED), e


def write_and_kill(m, path: str, data: bytes, offset: int | None = None, flags: int = 0,
                   before_write=None) -> None:
    """Open path, write data (at offset, or append), SIGKILL the daemon the moment write() returns,
    then clean the dead mount."""
    pid = m.pid()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | flags, 0o644)
    try:
        if before_write is not None:
            before_write(fd)
        n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
        os.kill(pid, signal.SIGKILL)
        assert n == len(data)
    finally:
        close_quietly(fd)
    m.crash(pid)


def prealloc(path: str, off: int, length: int) -> None:
    os.setxattr(path, PREALLOC_XATTR, f"{off} {length}".encode())


def file_map(path: str) -> dict:
    return json.loads(os.getxattr(path, "user.daxfs.map"))


def check(m, expect: dict[str, bytes]) -> None:
    for name, data in expect.items():
        p = j(m.mnt, name)
        assert os.path.exists(p), f"{name} lost"
        got = read_file(p)
        assert len(got) == len(data), f"{name}: size {len(got)}, expected {len(data)}"
        assert got == data, f"{name}: contents differ"


# --- sync mode: nothing acknowledged is lost ------------------------------------------------------------
def test_map_sync_mount_acknowledged_writes_survive_sigkill(daxmount):
    """-o map_sync, 24 rounds of write-then-SIGKILL, each kind of unstable block in turn."""
    m = daxmount("map_sync,commit=60")
    # set-up, committed: a file that grows, a preallocated file
    write_file(j(m.mnt, "grow"), b"", fsync=True)
    write_file(j(m.mnt, "pre"), b"", fsync=True)
    prealloc(j(m.mnt, "pre"), 0, 64 * BS)
    fd = os.open(j(m.mnt, "pre"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    expect: dict[str, bytes] = {"grow": b"", "pre": bytes(64 * BS)}
    for r in range(24):
        kind = r % 4
        if kind == 0:  # a new file, one block
            name, data = f"new{r}", pattern(r, BS)
            write_and_kill(m, j(m.mnt, name), data)
            expect[name] = data
        elif kind == 1:  # a new file, several blocks and a partial one
            name, data = f"new{r}", pattern(r, 3 * BS + 777)
            write_and_kill(m, j(m.mnt, name), data)
            expect[name] = data
        elif kind == 2:  # a new block past EOF of a committed file (a hole before it, i_size grows)
            data = pattern(r, 100)
            off = (r + 1) * 2 * BS + 5
            write_and_kill(m, j(m.mnt, "grow"), data, offset=off)
            g = expect["grow"]
            expect["grow"] = g + bytes(off - len(g)) + data
        else:  # unwritten -> written inside a committed preallocation (no new block, no size change)
            data = pattern(r, BS)
            off = r * BS
            write_and_kill(m, j(m.mnt, "pre"), data, offset=off)
            p = bytearray(expect["pre"])
            p[off:off + BS] = data
            expect["pre"] = bytes(p)
        p = m.mount()
        assert "was not unmounted cleanly" in p.stdout
        check(m, expect)
    assert os.stat(j(m.mnt, "pre")).st_size == 64 * BS


def test_per_file_map_sync_flag_survives_sigkill(daxmount):
    """A normal-mode mount (commit=60); files with user.daxfs.map_sync=1 are in sync mode, and the flag
    persists. A file without the flag written after the flagged one in the same round is lost."""
    m = daxmount("commit=60")
    write_file(j(m.mnt, "flagged"), b"", fsync=True)
    os.setxattr(j(m.mnt, "flagged"), SYNC_XATTR, b"1")
    fd = os.open(j(m.mnt, "flagged"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    expect: dict[str, bytes] = {"flagged": b""}
    for r in range(10):
        if r % 2 == 0:  # a new file, flagged before its first write (create and flag are not committed yet)
            name, data = f"new{r}", pattern(r, 2 * BS + 1)

            def flag(fd):
                os.setxattr(j(m.mnt, name), SYNC_XATTR, b"1")
                assert os.getxattr(j(m.mnt, name), SYNC_XATTR) == b"1"

            pid = m.pid()
            fd = os.open(j(m.mnt, name), os.O_CREAT | os.O_WRONLY, 0o644)
            flag(fd)
            os.write(fd, data)
            # after the flagged write: a normal-mode file, whose creation nobody commits
            fd2 = os.open(j(m.mnt, f"unflagged{r}"), os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd2, b"will be lost")
            os.kill(pid, signal.SIGKILL)
            close_quietly(fd)
            close_quietly(fd2)
            m.crash(pid)
            expect[name] = data
        else:  # the persistent flag of "flagged", set in the first mount, still rules
            data = pattern(r, 300)
            g = expect["flagged"]
            off = len(g) + BS
            write_and_kill(m, j(m.mnt, "flagged"), data, offset=off)
            expect["flagged"] = g + bytes(off - len(g)) + data
        m.mount()
        check(m, expect)
        assert not os.path.exists(j(m.mnt, f"unflagged{r}"))
        assert os.getxattr(j(m.mnt, "flagged"), SYNC_XATTR) == b"1"
        assert SYNC_XATTR in os.listxattr(j(m.mnt, "flagged"))
    # the flag can be cleared: then the file is back in normal mode
    os.removexattr(j(m.mnt, "flagged"), SYNC_XATTR)
    assert SYNC_XATTR not in os.listxattr(j(m.mnt, "flagged"))
    fd = os.open(j(m.mnt, "flagged"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    s0 = m.stats()
    with open(j(m.mnt, "flagged"), "ab") as f:
        f.write(b"x" * BS)
    s1 = m.stats()
    assert s1["sync_writes"] == s0["sync_writes"] and s1["commits"] == s0["commits"]


def test_per_file_flag_values(daxmount):
    m = daxmount("commit=60")
    p = j(m.mnt, "f")
    write_file(p, b"")
    assert SYNC_XATTR not in os.listxattr(p)
    with pytest.raises(OSError) as ei:
        os.getxattr(p, SYNC_XATTR)
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError) as ei:
        os.setxattr(p, SYNC_XATTR, b"yes")
    assert ei.value.errno == errno.EINVAL
    os.setxattr(p, SYNC_XATTR, b"1")
    assert os.getxattr(p, SYNC_XATTR) == b"1"
    with pytest.raises(OSError) as ei:
        os.setxattr(p, SYNC_XATTR, b"1", os.XATTR_CREATE)
    assert ei.value.errno == errno.EEXIST
    os.setxattr(p, SYNC_XATTR, b"0")
    assert SYNC_XATTR not in os.listxattr(p)
    m.remount()
    assert SYNC_XATTR not in os.listxattr(p)


@pytest.mark.parametrize("flag", ["O_DSYNC", "O_SYNC"])
def test_o_dsync_handle_writes_survive_sigkill(daxmount, flag):
    m = daxmount("commit=60")
    flags = getattr(os, flag)
    expect: dict[str, bytes] = {}
    for r in range(5 if flag == "O_DSYNC" else 3):
        name, data = f"d{r}", pattern(r, BS + 3 * r)
        write_and_kill(m, j(m.mnt, name), data, flags=flags)
        expect[name] = data
        m.mount()
        check(m, expect)


def test_o_dsync_handle_is_sync_mode_others_are_not(daxmount):
    m = daxmount("commit=60")
    s0 = m.stats()
    fd = os.open(j(m.mnt, "plain"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * BS)
    os.close(fd)
    s1 = m.stats()
    assert s1["writes"] == s0["writes"] + 1
    assert s1["sync_writes"] == s0["sync_writes"] and s1["sync_faults"] == s0["sync_faults"]
    assert s1["commits"] == s0["commits"] and s1["unstable_blocks"] >= 1
    fd = os.open(j(m.mnt, "dsync"), os.O_CREAT | os.O_WRONLY | os.O_DSYNC, 0o644)
    os.write(fd, b"y" * BS)
    s2 = m.stats()
    assert s2["sync_writes"] == s1["sync_writes"] + 1
    assert s2["sync_faults"] == s1["sync_faults"] + 1
    assert s2["commits"] >= s1["commits"] + 1
    assert s2["unstable_blocks"] == 0  # the commit covered "plain" too
    # a second handle on the same file without O_DSYNC is normal mode
    fd2 = os.open(j(m.mnt, "dsync"), os.O_WRONLY | os.O_APPEND)
    os.write(fd2, b"z" * BS)
    s3 = m.stats()
    assert s3["sync_writes"] == s2["sync_writes"] and s3["unstable_blocks"] >= 1
    os.close(fd2)
    os.close(fd)


def test_o_dsync_write_to_stable_blocks_does_not_commit(daxmount):
    """Regression: the kernel follows every O_DSYNC write with FUSE_FSYNC(datasync=1); fsync committed
    the running transaction (the write's mtime) whatever, so O_DSYNC writes to stable blocks committed."""
    m = daxmount("commit=60")
    p = j(m.mnt, "f")
    write_file(p, pattern(1, 4 * BS), fsync=True)
    fd = os.open(p, os.O_WRONLY | os.O_DSYNC)
    try:
        s0 = m.stats()
        for i in range(5):
            os.pwrite(fd, pattern(10 + i, BS), i * 700)
        s1 = m.stats()
        assert s1["sync_writes"] == s0["sync_writes"] + 5
        assert s1["fsyncs"] == s0["fsyncs"] + 5  # the kernel's, one per write
        assert s1["commits"] == s0["commits"] and s1["sync_faults"] == s0["sync_faults"]
        # growing the file is unstable: the write itself commits, the kernel's fdatasync has nothing left
        os.pwrite(fd, b"grow", 4 * BS)
        s2 = m.stats()
        assert s2["sync_faults"] == s1["sync_faults"] + 1 and s2["commits"] == s1["commits"] + 1
    finally:
        os.close(fd)
    # fdatasync of overwrites: nothing to commit; fsync commits the timestamps
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"over", 0)
        s3 = m.stats()
        os.fdatasync(fd)
        s4 = m.stats()
        assert s4["commits"] == s3["commits"] and s4["fsyncs"] == s3["fsyncs"] + 1
        os.fsync(fd)
        assert m.stats()["commits"] == s4["commits"] + 1
        # fdatasync after an allocation does commit
        os.pwrite(fd, b"new block", 10 * BS)
        os.fdatasync(fd)
        s5 = m.stats()
        assert s5["commits"] == s4["commits"] + 2 and s5["unstable_blocks"] == 0
    finally:
        os.close(fd)
    # and what O_DSYNC wrote survives a kill
    mtime = os.stat(p).st_mtime_ns
    pid = m.pid()
    fd = os.open(p, os.O_WRONLY | os.O_DSYNC)
    os.pwrite(fd, b"DSYNC", 3 * BS)
    os.kill(pid, signal.SIGKILL)
    close_quietly(fd)
    m.crash(pid)
    m.mount()
    with open(p, "rb") as f:
        f.seek(3 * BS)
        assert f.read(5) == b"DSYNC"
    assert os.stat(p).st_mtime_ns >= mtime


# --- normal mode: the same sequence loses the new block ---------------------------------------------------
def test_normal_mode_loses_unsynced_new_blocks(daxmount):
    m = daxmount("commit=60")
    write_file(j(m.mnt, "existing"), b"", fsync=True)
    write_file(j(m.mnt, "pre"), b"", fsync=True)
    prealloc(j(m.mnt, "pre"), 0, 16 * BS)
    fd = os.open(j(m.mnt, "pre"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    # 1: a new file: gone entirely
    write_and_kill(m, j(m.mnt, "newfile"), pattern(1, BS))
    m.mount()
    assert not os.path.exists(j(m.mnt, "newfile"))
    # 2: a new block of a committed file: the file is there, the block and the size growth are not
    write_and_kill(m, j(m.mnt, "existing"), pattern(2, 2 * BS))
    m.mount()
    assert os.path.exists(j(m.mnt, "existing"))
    assert os.stat(j(m.mnt, "existing")).st_size == 0 and read_file(j(m.mnt, "existing")) == b""
    # 3: unwritten -> written: the bytes were stored, but the extent is still unwritten: reads zeros
    write_and_kill(m, j(m.mnt, "pre"), pattern(3, BS), offset=4 * BS)
    m.mount()
    assert read_file(j(m.mnt, "pre")) == bytes(16 * BS)
    assert [e[3] for e in file_map(j(m.mnt, "pre"))["extents"]] == ["unwritten"]


@pytest.mark.parametrize("opts", ["commit=60", "map_sync,commit=60"])
def test_fsynced_data_survives_sigkill(daxmount, opts):
    m = daxmount(opts)
    data = pattern(5, 5 * BS + 5)

    def write_fsync_kill(name, payload):
        pid = m.pid()
        fd = os.open(j(m.mnt, name), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.fsync(fd)
        os.kill(pid, signal.SIGKILL)
        close_quietly(fd)
        m.crash(pid)
        m.mount()

    write_fsync_kill("f", data)
    assert read_file(j(m.mnt, "f")) == data
    # fdatasync too, and a directory fsync covers a rename
    pid = m.pid()
    fd = os.open(j(m.mnt, "g"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data[::-1])
    os.fdatasync(fd)
    os.rename(j(m.mnt, "f"), j(m.mnt, "f2"))
    dfd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.kill(pid, signal.SIGKILL)
    close_quietly(fd)
    close_quietly(dfd)
    m.crash(pid)
    m.mount()
    assert read_file(j(m.mnt, "g")) == data[::-1]
    assert read_file(j(m.mnt, "f2")) == data and not os.path.exists(j(m.mnt, "f"))


@pytest.mark.parametrize("opts", ["commit=60", "map_sync,commit=60"])
def test_overwrite_of_stable_blocks_survives_sigkill_without_commit(daxmount, opts):
    """DAX: an overwrite of a committed block stores into pmem and needs no metadata; a daemon kill
    loses nothing, in either mode, and sync mode does not commit for it."""
    m = daxmount(opts)
    old = pattern(6, 4 * BS)
    write_file(j(m.mnt, "f"), old, fsync=True)
    new = pattern(7, 2 * BS)
    s0 = m.stats()
    pid = s0["pid"]
    fd = os.open(j(m.mnt, "f"), os.O_WRONLY)
    os.pwrite(fd, new, BS + 100)
    s1 = m.stats()
    os.kill(pid, signal.SIGKILL)
    close_quietly(fd)
    assert s1["commits"] == s0["commits"] and s1["sync_faults"] == s0["sync_faults"]
    # the kernel splits an unaligned write whose first page is not cached: 2 FUSE writes here
    assert s1["writes"] >= s0["writes"] + 1
    if "map_sync" in opts:
        assert s1["sync_writes"] - s0["sync_writes"] == s1["writes"] - s0["writes"]
    m.crash(pid)
    m.mount()
    expect = bytearray(old)
    expect[BS + 100:BS + 100 + len(new)] = new
    assert read_file(j(m.mnt, "f")) == bytes(expect)


# --- counters, map, prealloc ---------------------------------------------------------------------------
def test_stable_block_writes_do_not_commit_in_sync_mode(daxmount):
    m = daxmount("map_sync,commit=60")
    p = j(m.mnt, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        s0 = m.stats()
        assert s0["mode"] == "map_sync"
        os.write(fd, pattern(1, 2 * BS))  # new blocks: one sync fault, one commit
        s1 = m.stats()
        assert s1["sync_faults"] == s0["sync_faults"] + 1
        assert s1["commits"] == s0["commits"] + 1
        assert s1["sync_writes"] == s0["sync_writes"] + 1
        assert s1["unstable_blocks"] == 0
        assert all(e[4] for e in file_map(p)["extents"])
        for i in range(20):  # overwrites of the committed blocks, aligned or not: never a commit
            os.pwrite(fd, pattern(100 + i, 1000), (i * 397) % (BS + 1000))
        os.pwrite(fd, b"tail", 2 * BS - 4)  # up to EOF exactly: no growth
        s2 = m.stats()
        assert s2["commits"] == s1["commits"] and s2["sync_faults"] == s1["sync_faults"]
        assert s2["sync_writes"] == s1["sync_writes"] + 21 and s2["writes"] == s1["writes"] + 21
        # growing i_size inside the last allocated block is unstable: a commit
        os.pwrite(fd, b"x" * 10, 2 * BS - 5)
        s3 = m.stats()
        assert s3["sync_faults"] == s2["sync_faults"] + 1 and s3["commits"] == s2["commits"] + 1
        # reads count, and never commit
        assert os.pread(fd, 2 * BS + 5, 0)[:4] == pattern(100, 4)
        s4 = m.stats()
        assert s4["reads"] > s3["reads"] and s4["bytes_read"] >= s3["bytes_read"] + 2 * BS + 5
        assert s4["commits"] == s3["commits"]
    finally:
        os.close(fd)


def test_stats_counters_move(daxmount):
    m = daxmount("map_sync,commit=60")
    p = daxfs("stats", m.mnt, "--json", check=True)
    s0 = json.loads(p.stdout)
    assert s0["pid"] == m.pid() and s0["mode"] == "map_sync"
    for key in ("writes", "bytes_written", "reads", "sync_writes", "sync_faults", "fsyncs", "commits",
                "unstable_blocks", "committed_tid", "running_tid", "journal_blocks", "commit_latency"):
        assert key in s0, key
    for i in range(8):
        write_file(j(m.mnt, f"f{i}"), pattern(i, BS * (i + 1)))
    fd = os.open(j(m.mnt, "f0"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    s1 = json.loads(daxfs("stats", m.mnt, "--json", check=True).stdout)
    assert s1["writes"] >= s0["writes"] + 8
    assert s1["bytes_written"] == s0["bytes_written"] + sum(BS * (i + 1) for i in range(8))
    assert s1["sync_writes"] >= s0["sync_writes"] + 8
    assert s1["sync_faults"] >= s0["sync_faults"] + 8
    assert s1["fsyncs"] == s0["fsyncs"] + 1
    assert s1["commits"] >= s0["commits"] + 8
    assert s1["committed_tid"] > s0["committed_tid"]
    h = s1["commit_latency"]
    assert h["count"] == s1["commits"]
    assert sum(h["buckets"].values()) == h["count"]
    assert 0 < h["min_us"] <= h["avg_us"] <= h["max_us"]
    assert all(label.endswith(" us") for label in h["buckets"])
    # the text form prints the histogram
    text = daxfs("stats", m.mnt, check=True).stdout
    assert "commit latency:" in text and "sync_faults" in text
    assert any(line.strip().endswith(f": {n}") for line in text.splitlines() for n in h["buckets"].values())
    # stats on any path of the mount work, too
    assert json.loads(daxfs("stats", j(m.mnt, "f3"), "--json", check=True).stdout)["pid"] == s1["pid"]


def test_map_and_prealloc(daxmount):
    m = daxmount("commit=60")
    p = j(m.mnt, "f")
    write_file(p, b"", fsync=True)
    r = daxfs("prealloc", p, "0", "1M", check=True)
    assert r.stdout == ""
    st = os.stat(p)  # the kernel sees the new size and blocks right away
    assert st.st_size == MiB and st.st_blocks == MiB // 512
    assert read_file(p) == bytes(MiB)
    d = json.loads(daxfs("map", p, "--json", check=True).stdout)
    assert d["size"] == MiB and d["blocks"] == 256 and d["size_unstable"] is True
    assert sum(e[1] for e in d["extents"]) == 256
    assert {(e[3], e[4]) for e in d["extents"]} == {("unwritten", False)}
    assert d["extents"][0][0] == 0
    text = daxfs("map", p, check=True).stdout
    assert "unwritten" in text and "unstable" in text and f"File size of {p} is {MiB}" in text
    fd = os.open(p, os.O_RDWR)
    try:
        os.fsync(fd)
        d = json.loads(daxfs("map", p, "--json", check=True).stdout)
        assert {(e[3], e[4]) for e in d["extents"]} == {("unwritten", True)} and d["size_unstable"] is False
        assert "unstable" not in daxfs("map", p, check=True).stdout.split("stability:")[1]
        # a write converts one block: written + unstable; the rest stays unwritten + stable
        os.pwrite(fd, b"w" * BS, 2 * BS)
        d = json.loads(daxfs("map", p, "--json", check=True).stdout)
        rows = [(e[0], e[1], e[3], e[4]) for e in d["extents"]]
        assert rows == [(0, 2, "unwritten", True), (2, 1, "written", False), (3, 253, "unwritten", True)]
        assert os.stat(p).st_blocks == MiB // 512  # no new blocks
        # past EOF with a gap: a hole, then a new written block
        os.pwrite(fd, b"h" * 10, 2 * MiB)
        d = json.loads(daxfs("map", p, "--json", check=True).stdout)
        rows = [(e[0], e[1], e[3], e[4]) for e in d["extents"]]
        assert rows[3] == (256, 256, "hole", True) and rows[4] == (512, 1, "written", False)
        assert d["size"] == 2 * MiB + 10 and d["size_unstable"] is True
        os.fsync(fd)
        d = json.loads(daxfs("map", p, "--json", check=True).stdout)
        assert all(e[4] for e in d["extents"]) and d["size_unstable"] is False
        assert [e[3] for e in d["extents"]] == ["unwritten", "written", "unwritten", "hole", "written"]
        assert os.pread(fd, BS, 2 * BS) == b"w" * BS and os.pread(fd, 10, 2 * MiB) == b"h" * 10
    finally:
        os.close(fd)
    # prealloc inside the file keeps its size; past EOF grows it
    daxfs("prealloc", p, "1M", "64K", check=True)
    assert os.stat(p).st_size == 2 * MiB + 10
    assert os.stat(p).st_blocks == (256 + 1 + 16) * 8
    daxfs("prealloc", p, "3M", "4096", check=True)
    assert os.stat(p).st_size == 3 * MiB + BS
    assert read_file(p)[2 * MiB:] == b"h" * 10 + bytes(MiB + BS - 10)
    m.remount()
    d = file_map(p)
    assert d["size"] == 3 * MiB + BS and all(e[4] for e in d["extents"])


def test_map_sync_mode_prealloc_then_write_commits(daxmount):
    m = daxmount("map_sync,commit=60")
    p = j(m.mnt, "f")
    write_file(p, b"")
    prealloc(p, 0, 8 * BS)
    s0 = m.stats()
    with open(p, "r+b") as f:
        f.write(b"a" * BS)
    s1 = m.stats()
    assert s1["sync_faults"] == s0["sync_faults"] + 1 and s1["commits"] == s0["commits"] + 1
    d = file_map(p)
    assert all(e[4] for e in d["extents"])  # the commit made the whole preallocation stable


def test_mmap_stores_msynced_in_sync_mode_survive_sigkill(daxmount):
    """Real mmap(2) of a file on a map_sync mount: msync writes the dirty pages back through FUSE, each
    write is a sync-mode write, so a kill right after msync loses nothing, new blocks included."""
    import mmap

    m = daxmount("map_sync,commit=60")
    p = j(m.mnt, "mapped")
    write_file(p, pattern(1, BS), fsync=True)
    pid = m.pid()
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 4 * BS)  # grows: the new range is a hole, mapped on write-back
    mm = mmap.mmap(fd, 4 * BS)
    mm[0:5] = b"first"  # a stable block
    mm[3 * BS:3 * BS + 4] = b"last"  # a hole: a new block at write-back
    mm.flush()
    s = m.stats()
    assert s["unstable_blocks"] == 0 and s["sync_faults"] >= 1
    os.kill(pid, signal.SIGKILL)
    try:
        mm.close()
    except (OSError, ValueError):
        pass
    close_quietly(fd)
    m.crash(pid)
    m.mount()
    got = read_file(p)
    assert len(got) == 4 * BS
    assert got[:5] == b"first" and got[5:BS] == pattern(1, BS)[5:]
    assert got[3 * BS:3 * BS + 4] == b"last" and got[BS:3 * BS] == bytes(2 * BS)


def test_o_append_after_daxfs_prealloc_lands_at_the_new_eof(daxmount):
    """Regression: the daemon can only invalidate the kernel's attributes after a preallocation, and an
    O_APPEND write (no writeback cache) takes the kernel's cached i_size as EOF without a getattr, so it
    landed inside the preallocated range. `daxfs prealloc` now reloads the attributes before returning."""
    m = daxmount("commit=60")
    p = j(m.mnt, "log")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"a")
        daxfs("prealloc", p, "0", "8K", check=True)
        os.write(fd, b"b")
    finally:
        os.close(fd)
    got = read_file(p)
    assert len(got) == 8193 and got[:1] == b"a" and got[-1:] == b"b" and got[1:8192] == bytes(8191)
