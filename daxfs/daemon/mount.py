"""The mount's life: start a daemon (init, run, close), and unmount it.

Start-up is pyfuse3's usual init, run, close:
  revoke the direct mappings a killed predecessor handed out (faults.revoke_stale) -> open the
  image (replay the journal, free orphans) -> pyfuse3.init (the kernel mount exists) -> tell whoever
  started us that the mount answers -> trio runs pyfuse3.main beside the periodic committer, the
  control socket and the fault service until the file system is unmounted or a signal asks us to
  stop -> pyfuse3.close -> revoke every direct mapping -> FileSystem.close (commit, checkpoint,
  mark the image clean).
A SIGKILL skips the last three steps; the next mount's replay does their work.

While mounted, the daemon holds an exclusive flock on the image, so that no second daemon, mkfs or
writer can open it underneath.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

from daxfs.daemon.options import MountOptions
from daxfs.daemon.proc import wait_exit
from daxfs.dax.protocol import DEAD_MOUNT_ERRNOS, STATS_XATTR
from daxfs.engine import crashpoint
from daxfs.engine.errors import DaxfsError
from daxfs.engine.mounttab import mount_entry
from daxfs.engine.pmem import lock_image

log = logging.getLogger("daxfs")


def control_socket_path(image: str) -> str:
    """One directory per image (a killed daemon's socket is replaced by the next mount's, not
    leaked), mode 0711: other users reach the socket by the name the xattr gives, cannot list."""
    digest = hashlib.sha1(os.path.realpath(image).encode()).hexdigest()[:16]
    d = os.path.join(tempfile.gettempdir(), f"daxfs-{os.getuid()}-{digest}")
    try:
        os.mkdir(d, 0o711)
    except FileExistsError:
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise DaxfsError(f"{d}: exists and is not a directory of ours; remove it") from None
    os.chmod(d, 0o711)
    return os.path.join(d, "control")


def serve(image: str, mountpoint: str, opts: MountOptions, tell) -> None:
    """Run the file system in this process until it is unmounted. `tell(line)` reports progress to
    whoever started us; the line 'ready' means the mount answers."""
    # The daemon's own imports, here: the CLI, daxfs.testing and the crash-test tools import this
    # module for start_background and unmount, and need neither trio nor pyfuse3. The FUSE shim
    # first: it must be in the global symbol scope before pyfuse3's extension is loaded.
    from daxfs.daemon import fuseshim
    shim = fuseshim.load()

    import pyfuse3
    import trio

    from daxfs.daemon.committer import Committer
    from daxfs.daemon.control import ControlServer, kill_self, register_crash_ops
    from daxfs.daemon.faults import FaultService, revoke_stale
    from daxfs.daemon.fuseops import DaxOperations
    from daxfs.daemon.stats import DaemonStats
    from daxfs.daemon.syncrule import SyncRule
    from daxfs.engine.fs import FileSystem

    if not os.path.isdir(mountpoint):
        raise DaxfsError(f"{mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        raise DaxfsError(f"{mountpoint}: something is already mounted there")
    # Exclusive even read-only: the control socket and the direct-access board are per image, so a
    # second mount would take them over from the first.
    lock_fd = lock_image(image)
    state_dir = os.path.dirname(control_socket_path(image))
    revoke_stale(state_dir)  # direct mappings a killed predecessor handed out, before any block is reused
    for point, nth in opts.crash_at:  # before the open: replay has crash points too
        crashpoint.arm(point, nth, kill_self)
    fs = FileSystem.open(image, readonly=opts.ro, durable=opts.msync)
    r = fs.open_report
    if r.was_dirty:
        tell(f"{image} was not unmounted cleanly: replayed {r.replayed} committed transactions, "
             f"freed {r.orphans} orphan inodes")
    stats = DaemonStats()
    committer = Committer(fs, stats)
    rule = SyncRule(fs, committer, opts.map_sync)
    ops = DaxOperations(fs, committer, rule, stats)
    fuse_opts = {"fsname=" + image, "subtype=daxfs", "default_permissions"}
    fuse_opts |= {name for name in ("ro", "allow_other", "debug") if getattr(opts, name)}
    if shim is not None:
        shim.attach(ops)
    try:
        pyfuse3.init(ops, mountpoint, fuse_opts)
    except RuntimeError as e:
        fs.close()
        raise DaxfsError(f"cannot mount on {mountpoint}: {e}") from None
    stats.fuse_shim = shim is not None and shim.sessions() == 1
    if shim is not None and not stats.fuse_shim:
        log.warning("pyfuse3 did not create its session through the FUSE shim: no fallocate, "
                    "SEEK_DATA/SEEK_HOLE or copy_file_range on this mount (docs/design.md)")

    control = ControlServer(control_socket_path(image), os.getuid())
    register_crash_ops(control)
    faults = FaultService(fs, rule, stats, state_dir, image, opts.allow_other)
    faults.register(control)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if shim is not None:
                shim.spawn = nursery.start_soon  # the replies that wait for a commit
            if not opts.ro:
                nursery.start_soon(committer.commit_periodically, opts.commit)
            nursery.start_soon(_stop_on_signal)
            await nursery.start(control.serve)
            await nursery.start(faults.run)
            ops.control_path = control.path
            log.info("mounted %s on %s (%s)", image, mountpoint, opts.to_string())
            tell("ready")
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for sig in signals:
                log.info("signal %d: unmounting", sig)
                pyfuse3.terminate()
                return

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        faults.close()  # revokes every direct mapping
        fs.close()
        os.close(lock_fd)
        shutil.rmtree(os.path.dirname(control.path), ignore_errors=True)  # a SIGKILL leaves it for the next mount
        log.info("unmounted %s; image is clean", mountpoint)


def start_background(image: str, mountpoint: str, opts: MountOptions, echo, warn=None) -> int:
    """Start `daxfs mount -f` as a daemon with its output in the log file; return once the mount
    answers (0) or the daemon gave up (1), echoing what it reported. `warn` (default: echo) gets the
    daemon's error lines, and a line of our own if it died without one."""
    logpath = opts.log or image + ".log"
    read_fd, write_fd = os.pipe()
    logfd = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    cmd = [sys.executable, "-m", "daxfs.cli", "mount", image, mountpoint, "-f", "--ready-fd", str(write_fd),
           "-o", opts.to_string()]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, pass_fds=(write_fd,),
                            start_new_session=True)
    os.close(write_fd)
    os.close(logfd)
    warn = warn or echo
    ready = errors = False
    with os.fdopen(read_fd) as messages:
        for line in messages:
            line = line.rstrip("\n")
            if line == "ready":
                ready = True
                break
            if line.startswith("daxfs: "):  # the daemon's one-line error (cli.mount's tell)
                errors = True
                warn(line)
            else:
                echo(line)
    if ready:
        echo(f"daxfs mounted {image} on {mountpoint} (pid {proc.pid}, log {logpath})")
        return 0
    code = proc.wait()
    if not errors:
        warn(f"daxfs: the daemon exited (status {code}) before the mount answered; see {logpath}")
    return 1


def unmount(mountpoint: str, echo, lazy: bool = False, timeout: float = 60.0) -> None:
    """Unmount a daxfs mount; the daemon commits, checkpoints and marks the image clean before it
    exits, and we wait for that. A dead mount (daemon killed) is detached and said to be so."""
    entry = mount_entry(mountpoint)
    if entry is None:
        raise DaxfsError(f"{mountpoint}: not mounted")
    if entry["fstype"] != "fuse.daxfs":
        raise DaxfsError(f"{mountpoint}: not a daxfs mount ({entry['fstype']})")
    pid = None
    try:
        pid = json.loads(os.getxattr(mountpoint, STATS_XATTR))["pid"]
    except OSError as e:
        # ECONNABORTED: the request was queued when the connection died (a killed daemon's last
        # threads were still exiting); ENOTCONN afterwards.
        if e.errno not in DEAD_MOUNT_ERRNOS:
            raise DaxfsError(f"{mountpoint}: cannot reach the daemon: {e.strerror}") from None
    if pid is None:
        _fusermount(mountpoint, lazy=True)
        echo(f"{mountpoint}: the daemon was gone (killed?); removed the dead mount. "
             f"The next mount of {entry['source']} replays its journal.")
        return
    _fusermount(mountpoint, lazy=lazy)
    if not wait_exit(pid, timeout):
        raise DaxfsError(f"{mountpoint}: unmounted, but daemon {pid} has not exited after {timeout:.0f} s")
    echo(f"unmounted {mountpoint}; {entry['source']} is clean")


def _fusermount(mountpoint: str, lazy: bool) -> None:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"fusermount3 exited {p.returncode}"
        if "busy" in msg.lower():
            msg += " (files are open there; close them, or use --lazy)"
        raise DaxfsError(msg)
