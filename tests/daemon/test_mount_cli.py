"""The daxfs CLI around real mounts: mount/umount life cycle, its errors (one line, non-zero exit, never
a traceback), read-only mounts, dead mounts, clean/dirty images, stats/map/prealloc errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from daxfs.engine import format as fmt
from helpers import (DAXFS, MiB, assert_one_line_error, daxfs, errno_of, flip, is_mounted, load, mount_entry,
                     pid_alive, read_file, superblock, wait_dead, wait_until, write_file)


pytestmark = pytest.mark.mount


def j(*parts) -> str:
    return os.path.join(*parts)


def test_mkfs_image_is_0600(tmp_path):
    old = os.umask(0)
    try:
        p = daxfs("mkfs", tmp_path / "i.img", "--size", "8M", check=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "i.img").st_mode) == 0o600
    assert "i.img" in p.stdout and p.stderr == ""
    assert daxfs("fsck", tmp_path / "i.img").returncode == 0


def test_mount_returns_once_the_mount_answers(daxmount):
    m = daxmount(mount=False)
    p = daxfs("mount", m.image, m.mnt, timeout=60)
    assert p.returncode == 0, p.stderr
    # no retry, no sleep: it answers now
    assert os.path.ismount(m.mnt)
    st = json.loads(os.getxattr(m.mnt, "user.daxfs.stats"))
    assert os.listdir(m.mnt) == []
    write_file(j(m.mnt, "f"), b"x")
    assert f"pid {st['pid']}" in p.stdout and "mounted" in p.stdout
    assert p.stderr == ""
    e = mount_entry(m.mnt)
    assert e["fstype"] == "fuse.daxfs" and e["source"] == m.image
    log = read_file(m.image + ".log").decode()
    assert "mounted" in log
    p = m.umount()
    assert "unmounted" in p.stdout and "clean" in p.stdout
    assert not pid_alive(st["pid"])


def test_image_clean_after_umount_dirty_while_mounted(daxmount):
    m = daxmount(mount=False)
    info = m.inspect()
    assert info["state"] == "clean" and info["mount count"] == 0
    m.mount()
    write_file(j(m.mnt, "f"), b"data")
    assert m.inspect()["state"] == "dirty"
    m.umount()
    info = m.inspect()
    assert info["state"] == "clean" and info["mount count"] == 1
    m.fsck()
    # a clean image mounts without a replay line
    p = m.mount()
    assert "not unmounted cleanly" not in p.stdout + p.stderr
    assert read_file(j(m.mnt, "f")) == b"data"


def test_replay_line_when_mounting_a_dirty_image(daxmount):
    m = daxmount("commit=60")
    write_file(j(m.mnt, "f"), b"committed", fsync=True)
    write_file(j(m.mnt, "g"), b"committed too", fsync=True)
    p = m.crash()
    assert "was gone" in p.stdout and m.image in p.stdout
    assert m.inspect()["state"] == "dirty"
    p = m.mount()
    lines = p.stdout.splitlines()
    assert any("was not unmounted cleanly: replayed" in ln and "committed transactions" in ln for ln in lines), \
        p.stdout
    assert any(ln.startswith("daxfs mounted") for ln in lines)
    assert p.stderr == ""
    assert read_file(j(m.mnt, "g")) == b"committed too"
    m.umount()
    assert m.inspect()["state"] == "clean"


def test_mount_already_mounted_image(daxmount, tmp_path):
    """Regression: the daemon's error line reached the user on stdout."""
    m = daxmount()
    other = tmp_path / "other"
    other.mkdir()
    p = daxfs("mount", m.image, other)
    assert_one_line_error(p, "in use")
    assert not is_mounted(other)
    # the same mount point again
    p = daxfs("mount", m.image, m.mnt)
    assert_one_line_error(p)
    assert is_mounted(m.mnt)
    # a second image onto a busy mount point
    m2 = daxmount(mount=False)
    p = daxfs("mount", m2.image, m.mnt)
    assert_one_line_error(p, "already mounted")
    assert mount_entry(m.mnt)["source"] == m.image
    write_file(j(m.mnt, "still"), b"works")


def test_mount_errors_are_one_line(daxmount, tmp_path):
    """Regression: a non-directory mount point was a 4-line click usage error; errors reported by the
    daemon went to stdout."""
    m = daxmount(mount=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(daxfs("mount", m.image, afile), "not a directory")
    assert_one_line_error(daxfs("mount", m.image, tmp_path / "nowhere"), "no such directory")
    assert_one_line_error(daxfs("mount", tmp_path / "noimage.img", m.mnt), "no such image")
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(4 * MiB))
    p = daxfs("mount", junk, m.mnt)
    assert_one_line_error(p)
    assert p.stdout == "" and not is_mounted(m.mnt)
    for bad in ("bogus", "commit=abc", "commit=0", "commit=-1", "crash_at=nowhere:1", "map_sync=1", "fault_around=0",
                "fault_around=513", "fault_around=x", "spin=1001", "spin=-1", "spin=x"):
        p = daxfs("mount", m.image, m.mnt, "-o", bad)
        assert_one_line_error(p)
        assert not is_mounted(m.mnt)
    assert "bogus" in daxfs("mount", m.image, m.mnt, "-o", "map_sync,bogus").stderr
    # options mount(8) passes along are accepted
    m.mount("rw,noatime,nodev,nosuid,map_sync,commit=2")
    assert m.stats()["mode"] == "map_sync"


def test_daemon_dying_without_a_word_is_reported(tmp_path, monkeypatch):
    """Regression: a daemon that died before the mount answered, saying nothing (a crash, a traceback in
    the log), left `daxfs mount` exiting 1 silently."""
    from daxfs.daemon import mount as daemon
    from daxfs.daemon.options import parse_options

    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(daemon.sys, "executable", str(fake))
    out, err = [], []
    image = str(tmp_path / "x.img")
    open(image, "w").close()
    rc = daemon.start_background(image, str(tmp_path), parse_options([]), out.append, err.append)
    assert rc == 1 and out == []
    assert len(err) == 1 and err[0].startswith("daxfs: the daemon exited (status 3)") and image + ".log" in err[0]


def test_ro_mount_refuses_writes(daxmount):
    m = daxmount()
    write_file(j(m.mnt, "f"), b"read me")
    os.mkdir(j(m.mnt, "d"))
    os.setxattr(j(m.mnt, "f"), "user.k", b"v")
    m.umount()
    m.mount("ro")
    assert "ro" in mount_entry(m.mnt)["options"].split(",")
    assert read_file(j(m.mnt, "f")) == b"read me"
    assert os.getxattr(j(m.mnt, "f"), "user.k") == b"v"
    assert errno_of(os.open, j(m.mnt, "f"), os.O_WRONLY) == errno.EROFS
    assert errno_of(os.open, j(m.mnt, "new"), os.O_CREAT | os.O_WRONLY) == errno.EROFS
    assert errno_of(os.mkdir, j(m.mnt, "d2")) == errno.EROFS
    assert errno_of(os.unlink, j(m.mnt, "f")) == errno.EROFS
    assert errno_of(os.rename, j(m.mnt, "f"), j(m.mnt, "g")) == errno.EROFS
    assert errno_of(os.chmod, j(m.mnt, "f"), 0o600) == errno.EROFS
    assert errno_of(os.truncate, j(m.mnt, "f"), 0) == errno.EROFS
    assert errno_of(os.setxattr, j(m.mnt, "f"), "user.k", b"w") == errno.EROFS
    assert errno_of(os.symlink, "f", j(m.mnt, "ln")) == errno.EROFS
    p = daxfs("prealloc", j(m.mnt, "f"), "0", "1M")
    assert_one_line_error(p, "Read-only file system")
    assert m.stats()["commits"] == 0
    m.umount()
    assert m.inspect()["state"] == "clean"
    m.mount()
    assert sorted(os.listdir(m.mnt)) == ["d", "f"]


def test_an_image_is_mounted_once_even_read_only(daxmount, tmp_path):
    """Its control socket and direct-access board are per image: a second mount would take them over."""
    m = daxmount("ro")
    other = tmp_path / "second"
    other.mkdir()
    p = daxfs("mount", m.image, other, "-o", "ro")
    assert_one_line_error(p, "in use by a mounted daxfs")
    assert not is_mounted(other) and m.answers()


def test_mkfs_refuses_a_mounted_image_even_with_force_and_fsck_says_it_is_live(daxmount):
    m = daxmount()
    write_file(j(m.mnt, "f"), b"keep", fsync=True)
    p = daxfs("mkfs", m.image, "--size", "64M", "--force")
    assert_one_line_error(p, "in use by a mounted daxfs", m.mnt)
    assert read_file(j(m.mnt, "f")) == b"keep"
    p = daxfs("fsck", m.image)
    assert p.returncode == 0 and "is mounted: this is the state on pmem now" in p.stdout, p.stdout
    p = daxfs("fsck", "--repair", m.image)  # a repair never runs under a daemon
    assert p.returncode == 8 and "in use by a mounted daxfs" in p.stderr


def test_mount_refuses_a_damaged_journal_until_fsck_repair_says_what_it_discarded(daxmount):
    m = daxmount("commit=60")
    for i in range(3):
        write_file(j(m.mnt, f"f{i}"), b"%d" % i, fsync=True)  # one committed transaction each, at least
    m.crash()
    sb = superblock(m.image)
    commits = [b for b in range(sb.journal_start + sb.journal_tail, sb.journal_start + sb.journal_blocks)
               if load(m.image, b)[:4] == fmt.MAGIC and fmt.header_kind(load(m.image, b)) == fmt.K_JCOMMIT]
    assert len(commits) >= 3
    flip(m.image, sb.journal_start + sb.journal_tail + 1, 3000)  # inside the first transaction's images
    p = m.mount(check=False)
    assert_one_line_error(p, "journal damaged", "committed transactions", "daxfs fsck --repair")
    assert not is_mounted(m.mnt)
    p = daxfs("fsck", m.image)
    assert p.returncode == 4 and "lies past where replay stops" in p.stdout
    p = daxfs("fsck", "--repair", m.image)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "discarded" in p.stdout and p.stdout.count("lost transaction") == len(commits)
    assert p.stdout.splitlines()[-1].startswith(f"{m.image}: clean")
    m.mount()
    write_file(j(m.mnt, "after"), b"a", fsync=True)
    m.crash()
    m.mount()  # no discarded transaction comes back
    assert sorted(os.listdir(m.mnt)) == ["after"]


def test_ro_mount_of_a_dirty_image_is_refused(daxmount):
    m = daxmount("commit=60")
    write_file(j(m.mnt, "f"), b"x", fsync=True)
    m.crash()
    p = daxfs("mount", m.image, m.mnt, "-o", "ro")
    assert_one_line_error(p, "not unmounted cleanly")
    assert not is_mounted(m.mnt)
    m.mount()  # read-write replays it
    assert read_file(j(m.mnt, "f")) == b"x"


def test_umount_of_a_dead_mount(daxmount):
    m = daxmount()
    pid = m.pid()
    fd = os.open(j(m.mnt, "open"), os.O_CREAT | os.O_WRONLY, 0o644)  # an fd left open on it, too
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    assert errno_of(os.stat, j(m.mnt, "open")) in (errno.ENOTCONN, errno.ECONNABORTED)
    # regression: click's exists=True stat()ed the dead mount and printed a usage error "does not exist"
    assert_one_line_error(daxfs("stats", m.mnt), "dead mount")
    assert_one_line_error(daxfs("map", j(m.mnt, "open")), "dead mount")
    assert_one_line_error(daxfs("prealloc", j(m.mnt, "open"), "0", "4096"), "dead mount")
    t0 = time.monotonic()
    p = daxfs("umount", m.mnt, timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 0, p.stderr
    assert "daemon was gone" in p.stdout and "replays its journal" in p.stdout
    assert not is_mounted(m.mnt)
    try:
        os.close(fd)
    except OSError:
        pass
    assert m.inspect()["state"] == "dirty"
    m.fsck()
    p = m.mount()
    assert "was not unmounted cleanly" in p.stdout


def test_a_mount_right_after_a_plain_umount_waits_for_the_old_daemon(daxmount):
    """umount(8) returns before the daemon has checkpointed and let go of the image: the next mount waits
    for it (bounded) instead of failing with "in use"."""
    m = daxmount()
    for i in range(200):
        write_file(j(m.mnt, f"f{i}"), b"x" * 4096)
    subprocess.run(["fusermount3", "-u", m.mnt], check=True)
    p = daxfs("mount", m.image, m.mnt)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(os.listdir(m.mnt)) == 200
    m.last_pid = m.pid()


def test_a_refused_mount_writes_nothing_into_the_running_mounts_log(daxmount, tmp_path):
    m = daxmount()
    log = m.image + ".log"
    before = os.path.getsize(log)
    (tmp_path / "second").mkdir()
    assert_one_line_error(daxfs("mount", m.image, tmp_path / "second"), "in use by a mounted daxfs", m.mnt)
    assert os.path.getsize(log) == before


def test_mounting_over_a_dead_mount_says_to_run_daxfs_umount(daxmount):
    m = daxmount()
    m.crash_at("write.before_ack")
    with pytest.raises(OSError):
        write_file(j(m.mnt, "f"), b"x")
    wait_dead(m.last_pid)
    p = daxfs("mount", m.image, m.mnt)
    assert_one_line_error(p, "dead daxfs mount", f"daxfs umount {m.mnt}")
    assert daxfs("umount", m.mnt).returncode == 0


def test_umount_not_mounted(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    assert_one_line_error(daxfs("umount", d), "not mounted")
    assert_one_line_error(daxfs("umount", tmp_path / "nowhere"), "not mounted")
    f = tmp_path / "f"
    f.write_text("")
    assert_one_line_error(daxfs("umount", f), "not mounted")
    assert_one_line_error(daxfs("umount", "/"), "not a daxfs mount")


def test_umount_busy_then_lazy(daxmount):
    m = daxmount()
    pid = m.pid()
    write_file(j(m.mnt, "f"), b"")
    fd = os.open(j(m.mnt, "f"), os.O_WRONLY)
    try:
        p = daxfs("umount", m.mnt)
        assert_one_line_error(p, "--lazy")
        assert is_mounted(m.mnt)
        # --lazy detaches at once; the daemon finishes (and the image becomes clean) at the last close
        proc = subprocess.Popen(DAXFS + ["umount", "--lazy", m.mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        assert wait_until(lambda: not is_mounted(m.mnt), 10)
        os.write(fd, b"after detach")
        assert pid_alive(pid)
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "clean" in out
    assert not pid_alive(pid)
    assert m.inspect()["state"] == "clean"
    m.mount()
    assert read_file(j(m.mnt, "f")) == b"after detach"


def test_sigterm_unmounts_cleanly(daxmount):
    m = daxmount("commit=60")
    write_file(j(m.mnt, "f"), b"terminated")
    pid = m.pid()
    os.kill(pid, signal.SIGTERM)
    wait_dead(pid, 20)
    assert wait_until(lambda: not is_mounted(m.mnt), 10)
    assert m.inspect()["state"] == "clean"
    m.fsck()
    p = m.mount()
    assert "not unmounted cleanly" not in p.stdout
    assert read_file(j(m.mnt, "f")) == b"terminated"


def test_stats_map_prealloc_errors(daxmount, tmp_path):
    m = daxmount()
    outside = tmp_path / "outside"
    outside.write_text("x")
    assert_one_line_error(daxfs("stats", tmp_path), "not on a daxfs mount")
    assert_one_line_error(daxfs("map", outside), "not on a daxfs mount")
    # regression: prealloc of a file elsewhere set a user.daxfs.prealloc xattr on it and said nothing
    assert_one_line_error(daxfs("prealloc", outside, "0", "4096"), "not on a daxfs mount")
    assert "user.daxfs.prealloc" not in os.listxattr(outside)
    assert_one_line_error(daxfs("stats", tmp_path / "nowhere"), "No such file")
    assert_one_line_error(daxfs("map", j(m.mnt, "nowhere")), "No such file")
    write_file(j(m.mnt, "f"), b"")
    for off, length in (("0", "0"), ("-1", "4096")):
        p = daxfs("prealloc", j(m.mnt, "f"), off, length)
        assert p.returncode != 0 and "Traceback" not in p.stdout + p.stderr
    p = daxfs("prealloc", j(m.mnt, "f"), "0", "lots")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    p = daxfs("prealloc", j(m.mnt, "f"), "0", "1G")  # more than the 64 MiB image
    assert_one_line_error(p, "No space left")
    assert os.stat(j(m.mnt, "f")).st_size == 0
    daxfs("prealloc", j(m.mnt, "f"), "4K", "8K", check=True)
    assert os.stat(j(m.mnt, "f")).st_size == 12 * 1024
    d = json.loads(daxfs("map", j(m.mnt, "f"), "--json", check=True).stdout)
    assert [(e[0], e[1], e[3]) for e in d["extents"]] == [(0, 1, "hole"), (1, 2, "unwritten")]


@pytest.mark.skipif(not os.path.exists("/sbin/mount.fuse.daxfs"), reason="/sbin/mount.fuse.daxfs not installed")
def test_mount_t_fuse_daxfs(daxmount):
    m = daxmount(mount=False)
    p = subprocess.run(["mount", "-t", "fuse.daxfs", m.image, m.mnt, "-o", "map_sync"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert is_mounted(m.mnt)
    m.last_pid = m.pid()
    assert m.stats()["mode"] == "map_sync"
    write_file(j(m.mnt, "f"), b"via mount(8)")
    m.umount()
    assert m.inspect()["state"] == "clean"
