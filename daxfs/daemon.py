"""The daxfs daemon: mount options, the mount's life (init, run, close), and unmounting.

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

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from daxfs import crashpoint
from daxfs.control import ControlError, ControlServer
from daxfs.errors import DaxfsError

log = logging.getLogger("daxfs")

# Options mount(8) and fstab pass along that mean nothing to daxfs.
IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "_netdev", "nofail",
                   "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "atime", "noatime", "relatime",
                   "strictatime", "lazytime", "nodiratime"}


@dataclass
class MountOptions:
    map_sync: bool = False  # sync mode for every file
    commit: float = 5.0  # normal-mode commit interval, seconds
    ro: bool = False
    allow_other: bool = False
    debug: bool = False
    msync: bool = True  # persist with msync (host-crash safety); nomsync for RAM-backed images
    log: str | None = None
    crash_at: list[tuple[str, int]] = field(default_factory=list)

    def to_string(self) -> str:
        opts = []
        if self.map_sync:
            opts.append("map_sync")
        opts.append(f"commit={self.commit:g}")
        for flag in ("ro", "allow_other", "debug"):
            if getattr(self, flag):
                opts.append(flag)
        if not self.msync:
            opts.append("nomsync")
        if self.log:
            opts.append(f"log={self.log}")
        opts += [f"crash_at={p}:{n}" for p, n in self.crash_at]
        return ",".join(opts)


def parse_options(texts: list[str]) -> MountOptions:
    """Options as other FUSE file systems spell them: -o map_sync,commit=10 -o ro."""
    o = MountOptions()
    for text in texts:
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, _, value = item.partition("=")
            if key in ("map_sync", "ro", "allow_other", "debug") and not value:
                setattr(o, key, True)
            elif key == "nomsync" and not value:
                o.msync = False
            elif key == "commit":
                try:
                    o.commit = float(value)
                except ValueError:
                    raise DaxfsError(f"commit={value}: not a number of seconds") from None
                if not 0 < o.commit <= 3600:
                    raise DaxfsError(f"commit={value}: must be between 0 and 3600 seconds")
            elif key == "log" and value:
                o.log = os.path.abspath(value)
            elif key == "crash_at":
                point, _, nth = value.partition(":")
                if point not in crashpoint.POINTS:
                    raise DaxfsError(f"crash_at={value}: unknown point (see `daxfs crashtest --list-points`)")
                try:
                    o.crash_at.append((point, int(nth or "1")))
                except ValueError:
                    raise DaxfsError(f"crash_at={value}: N must be a number") from None
            elif key in IGNORED_OPTIONS or key.startswith("x-"):
                continue
            else:
                raise DaxfsError(f"unknown mount option {item!r}")
    return o


def lock_image(path: str) -> int:
    """An fd holding an exclusive flock on the image; DaxfsError if a daemon already has it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaxfsError(f"{path} is in use by a mounted daxfs (unmount it first)") from None
    return fd


def _kill_self(point: str) -> None:
    log.warning("crash point %s reached: SIGKILL", point)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


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


def register_control_ops(control: ControlServer) -> None:
    """What a crash test may ask of a running daemon (control.py): die now, die at the next pass of
    a crash point, write a mark into the log, or how often each crash point was passed. Each answers
    once it has taken effect."""
    async def crash(peer, req):
        log.warning("crash requested by pid %d: SIGKILL", peer.pid)
        return {"_after": lambda: _kill_self("control")}

    async def crash_at(peer, req):
        point, nth = req["point"], int(req.get("nth", 1))
        if point not in crashpoint.POINTS:
            raise ControlError(f"unknown crash point {point!r}")
        crashpoint.arm(point, nth, _kill_self)
        log.info("crash point %s armed for pass %d by pid %d", point, nth, peer.pid)
        return {}

    async def mark(peer, req):
        log.info("MARK %s", str(req["text"])[:1000])
        for h in logging.getLogger().handlers:
            h.flush()
        return {}

    async def passes(peer, req):
        return {"passes": dict(crashpoint.passes)}

    control.register("crash", crash, privileged=True)
    control.register("passes", passes)
    control.register("crash_at", crash_at, privileged=True)
    control.register("mark", mark, privileged=True)


def serve(image: str, mountpoint: str, opts: MountOptions, tell) -> None:
    """Run the file system in this process until it is unmounted. `tell(line)` reports progress to
    whoever started us; the line 'ready' means the mount answers."""
    import pyfuse3
    import trio

    from daxfs.committer import Committer
    from daxfs.faults import FaultService, revoke_stale
    from daxfs.fs import FileSystem
    from daxfs.fuseops import DaxOperations
    from daxfs.stats import Stats

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
        crashpoint.arm(point, nth, _kill_self)
    fs = FileSystem.open(image, readonly=opts.ro, durable=opts.msync)
    r = fs.open_report
    if r.was_dirty:
        tell(f"{image} was not unmounted cleanly: replayed {r.replayed} committed transactions, "
             f"freed {r.orphans} orphan inodes")
    stats = Stats()
    committer = Committer(fs, stats)
    ops = DaxOperations(fs, committer, stats, opts.map_sync)
    fuse_opts = {"fsname=" + image, "subtype=daxfs", "default_permissions"}
    fuse_opts |= {name for name in ("ro", "allow_other", "debug") if getattr(opts, name)}
    try:
        pyfuse3.init(ops, mountpoint, fuse_opts)
    except RuntimeError as e:
        fs.close()
        raise DaxfsError(f"cannot mount on {mountpoint}: {e}") from None

    control = ControlServer(control_socket_path(image), os.getuid())
    register_control_ops(control)
    faults = FaultService(fs, committer, stats, state_dir, image, opts.map_sync, opts.allow_other)
    faults.register(control)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if not opts.ro:
                nursery.start_soon(committer.run_periodic, opts.commit)
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


def mount_entry(mountpoint: str) -> dict | None:
    """The /proc/self/mountinfo entry of a mount point: fstype, source, options."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if _unescape(parts[4]) == target:
                fstype, source, sopts = (right.split() + ["", "", ""])[:3]
                return {"fstype": fstype, "source": _unescape(source), "options": sopts}
    return None


def _unescape(s: str) -> str:
    return s.encode().decode("unicode_escape") if "\\" in s else s


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
        import json

        pid = json.loads(os.getxattr(mountpoint, "user.daxfs.stats"))["pid"]
    except OSError as e:
        # ECONNABORTED: the request was queued when the connection died (a killed daemon's last
        # threads were still exiting); ENOTCONN afterwards.
        if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
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


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed daemon may stay unreaped), or while
    any of its threads is still exiting: only then are its files, its FUSE connection among them, closed."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(") ", 1)[-1][:1] != "Z":
                return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it vanished while we read
        return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process_alive(pid) is false; False if it still is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
