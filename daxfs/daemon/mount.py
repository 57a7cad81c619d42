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

What the daemon creates outside the mount, it creates so that no other user can pre-create, replace
or redirect it (docs/dax.md, "Who may reach the sockets"):
  - the state directory (the control socket, the descriptor socket, the direct-access board): one per
    image inside a base directory private to the user who mounts (state_base), each made with mkdir
    and then checked through a descriptor opened without following symlinks: a directory, ours, of
    exactly the mode we want; anything else is refused with one line saying what to remove;
  - the log (open_log): O_NOFOLLOW, created 0600, refused unless it is a regular file of ours with
    no other hard link.
"""

from __future__ import annotations

import errno
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
from daxfs.dax.protocol import DEAD_MOUNT_ERRNOS, STATS_XATTR, ControlClient, ControlError, field, refusal
from daxfs.engine import crashpoint
from daxfs.engine.errors import DaxfsError
from daxfs.engine.mounttab import mount_entry
from daxfs.engine.pmem import lock_image

log = logging.getLogger("daxfs")


CONTROL_SOCKET = "control"
RUN_DIR = "/run"


def state_base(uid: int, environ=os.environ) -> str:
    """Where a user's daemons keep their state directories, a place no other user can create first:
    for root /run/daxfs; for others $XDG_RUNTIME_DIR/daxfs if that is a directory of theirs with mode
    0700 (systemd's /run/user/UID), else TMPDIR's daxfs-UID (which another user could make first:
    private_dir then refuses it, and says so)."""
    if uid == 0 and os.path.isdir(RUN_DIR):
        return os.path.join(RUN_DIR, "daxfs")
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if uid != 0 and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700:
            return os.path.join(xdg, "daxfs")
    return os.path.join(tempfile.gettempdir(), f"daxfs-{uid}")


def private_dir(path: str, mode: int, uid: int, fix_mode: bool = False) -> None:
    """Make directory `path` (mkdir, so that nothing already there is taken over) or find it, then check
    it through a descriptor of the name itself (O_PATH | O_NOFOLLOW, which never follows a symlink):
    a directory, owned by uid, with exactly `mode` (fix_mode: set it, for a directory inside one
    already checked). DaxfsError, one line saying what is wrong and what to remove, if it is not ours."""
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise DaxfsError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise DaxfsError(f"{path} is a symlink, not daxfs's own directory; refusing to follow it (remove it)")
        if not stat.S_ISDIR(st.st_mode):
            raise DaxfsError(f"{path} is not a directory; remove it (daxfs keeps its sockets there)")
        if st.st_uid != uid:
            raise DaxfsError(f"{path} belongs to uid {st.st_uid}, not to uid {uid} who mounts: another user made "
                             "it; remove it (daxfs keeps its sockets there)")
        if created or fix_mode:
            os.chmod(f"/proc/self/fd/{fd}", mode)  # this very directory (mkdir's mode went through the umask)
        elif stat.S_IMODE(st.st_mode) != mode:
            raise DaxfsError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not {mode:04o}: others could change "
                             f"what is in it; remove it, or chmod {mode:o} it")
    finally:
        os.close(fd)


def state_directory(image: str, image_owner: int) -> str:
    """The image's state directory, made or checked (private_dir): one per image, so that a killed
    daemon's sockets and board are found and replaced by the next mount of that image. It is the
    mounter's, mode 0700: only root and the mounter may reach the sockets in it. When root mounts
    another user's image, that user must reach them too (direct access is for root and the image's
    owner): then the base and the image's directory are 0711 (no one else may list or create in them)
    and the sockets themselves, 0600, belong to the image's owner (socket_owner)."""
    uid = os.getuid()
    d = state_path(image)
    private_dir(os.path.dirname(d), 0o711 if uid == 0 else 0o700, uid)
    private_dir(d, 0o711 if uid == 0 and image_owner != 0 else 0o700, uid, fix_mode=True)
    return d


def state_path(image: str) -> str:
    """Where state_directory(image) is, for this user (nothing is made or checked)."""
    digest = hashlib.sha1(os.path.realpath(image).encode()).hexdigest()[:16]
    return os.path.join(state_base(os.getuid()), digest)


def socket_owner(image_owner: int) -> int:
    """Who, besides root, may connect to the daemon's sockets (they are 0600): the image's owner if
    root mounts it, else the user who mounts (another user cannot be given a file)."""
    return image_owner if os.getuid() == 0 else os.getuid()


def open_log(path: str) -> int:
    """The daemon's log, opened to append as its stdout and stderr: never through a symlink (O_NOFOLLOW),
    created 0600, and refused unless it is a regular file owned by the user who mounts with no other
    hard link; someone who can write the log's directory must not make the daemon append elsewhere."""
    uid = os.getuid()
    try:  # O_NONBLOCK: a FIFO planted there must not block the open
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DaxfsError(f"{path} is a symlink; refusing to follow it (remove it, or give -o log=FILE)") from None
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):  # a directory, a FIFO (ENXIO)
            raise DaxfsError(f"{path} is not a regular file; refusing it as the log (remove it, or give -o log=FILE)") \
                from None
        raise DaxfsError(f"{path}: cannot open the log: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DaxfsError(f"{path} is not a regular file; refusing it as the log (remove it, or give -o log=FILE)")
        if st.st_uid != uid:
            raise DaxfsError(f"{path} belongs to uid {st.st_uid}, not to uid {uid} who mounts; refusing to append "
                             "to it (remove it, or give -o log=FILE)")
        if st.st_nlink != 1:
            raise DaxfsError(f"{path} has {st.st_nlink} hard links; refusing to append to a file linked elsewhere "
                             "(remove it, or give -o log=FILE)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_mountpoint(mountpoint: str) -> None:
    """Refuse, in words that say what to do, a mount point that cannot take a mount."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise DaxfsError(f"{mountpoint}: no such directory (create it first)") from None
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            raise DaxfsError(f"{mountpoint}: a dead daxfs mount is there (its daemon was killed); run "
                             f"`daxfs umount {mountpoint}` first") from None
        raise DaxfsError(f"{mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DaxfsError(f"{mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        entry = mount_entry(mountpoint)
        what = f" ({entry['fstype']} of {entry['source']})" if entry else ""
        raise DaxfsError(f"{mountpoint}: something is already mounted there{what}; unmount it first")


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
    from daxfs.daemon.session import SessionLoop, unsupported as session_unsupported
    from daxfs.daemon.stats import DaemonStats
    from daxfs.daemon.syncrule import SyncRule
    from daxfs.engine.fs import FileSystem

    check_mountpoint(mountpoint)
    # Exclusive even read-only: the control socket and the direct-access board are per image, so a
    # second mount would take them over from the first.
    lock_fd = lock_image(image)
    image_owner = os.fstat(lock_fd).st_uid
    try:
        state_dir = state_directory(image, image_owner)
    except BaseException:
        os.close(lock_fd)
        raise
    revoke_stale(state_dir)  # direct mappings a killed predecessor handed out, before any block is reused
    for point, nth in opts.crash_at:  # before the open: replay has crash points too
        crashpoint.arm(point, nth, kill_self)
    try:
        fs = FileSystem.open(image, readonly=opts.ro, durable=opts.msync)
    except BaseException:
        shutil.rmtree(state_dir, ignore_errors=True)  # empty: its board is revoked, no socket yet
        raise
    r = fs.open_report
    if r.was_dirty:
        tell(f"{image} was not unmounted cleanly: replayed {r.replayed} committed transactions, "
             f"freed {r.orphans} orphan inodes")
    stats = DaemonStats()
    committer = Committer(fs, stats)
    rule = SyncRule(fs, committer, opts.map_sync)
    ops = DaxOperations(fs, committer, rule, stats)
    fs.times.mode, fs.times.diratime, fs.times.lazytime = opts.atime, opts.diratime, opts.lazytime
    # acl: the kernel checks permissions against ACLs (FUSE_POSIX_ACL, which pyfuse3 asks for at init),
    # the engine keeps mode and ACLs consistent and inherits default ACLs (docs/design.md, "POSIX ACLs")
    ops.enable_acl = fs.acls = opts.acl
    fuse_opts = {"fsname=" + image, "subtype=daxfs", "default_permissions"} | opts.kernel_options()
    fuse_opts |= {name for name in ("ro", "allow_other", "debug") if getattr(opts, name)}
    if opts.atime == "noatime":
        fuse_opts.add("noatime")  # the kernel then updates no atime of its own either
    if shim is not None:
        shim.attach(ops)
    loop = None  # pyfuse3.main() serves instead (docs/design.md, "The session loop")
    if shim is not None and os.environ.get("DAXFS_SESSION_LOOP", "daxfs") != "pyfuse3":
        why = session_unsupported()
        if why is None:
            loop = SessionLoop(shim, stats, opts.spin)
            loop.install(ops)
        else:
            log.warning("%s: pyfuse3's own session loop serves this mount (slower)", why)
    try:
        pyfuse3.init(ops, mountpoint, fuse_opts)
    except RuntimeError as e:
        fs.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        raise DaxfsError(f"cannot mount on {mountpoint}: {e}") from None
    stats.fuse_shim = shim is not None and shim.sessions() == 1
    if shim is not None and not stats.fuse_shim:
        log.warning("pyfuse3 did not create its session through the FUSE shim: no fallocate, "
                    "SEEK_DATA/SEEK_HOLE or copy_file_range on this mount (docs/design.md)")

    owner = socket_owner(image_owner)
    control = ControlServer(os.path.join(state_dir, CONTROL_SOCKET), os.getuid(), stats, owner)
    register_crash_ops(control)

    async def remount_op(peer, req) -> dict:
        """mount -o remount,ro|rw: read-only commits, checkpoints and marks the image clean first."""
        readonly = field(req, "readonly", bool)
        await committer.wait_commit()
        try:
            fs.remount(readonly)
        except DaxfsError as e:
            raise refusal(errno.EROFS, str(e)) from None
        log.info("remounted %s by pid %d", "read-only" if readonly else "read-write", peer.pid)
        return {}

    control.register("remount", remount_op, privileged=True)
    faults = FaultService(fs, rule, stats, state_dir, image, opts.allow_other, owner, opts.fault_around)
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
            if loop is not None:
                await loop.run()
            else:
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
        # The state directory goes before the lock: once the lock is free, the next daemon of this image
        # may make its own sockets there. (A SIGKILL leaves the directory for the next mount.)
        shutil.rmtree(os.path.dirname(control.path), ignore_errors=True)
        log.info("unmounted %s; image is clean", mountpoint)
        os.close(lock_fd)


def start_background(image: str, mountpoint: str, opts: MountOptions, echo, warn=None) -> int:
    """Start `daxfs mount -f` as a daemon with its output in the log file; return once the mount
    answers (0) or the daemon gave up (1), echoing what it reported. `warn` (default: echo) gets the
    daemon's error lines, and a line of our own if it died without one."""
    logpath = opts.log or image + ".log"
    logfd = open_log(logpath)
    read_fd, write_fd = os.pipe()
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


def remount(mountpoint: str, readonly: bool, echo) -> None:
    """`mount -o remount,ro|rw`: switch a mounted daxfs without unmounting it. The daemon first (a
    read-only remount commits and checkpoints), then the kernel's own flag, as mount(8) would set it
    (`mount -i`: no helper, this is the helper), so that writes fail with EROFS in the kernel too."""
    entry = mount_entry(mountpoint)
    if entry is None or entry["fstype"] != "fuse.daxfs":
        raise DaxfsError(f"{mountpoint}: not a daxfs mount" if entry else f"{mountpoint}: not mounted")
    want = "ro" if readonly else "rw"
    try:
        with ControlClient.for_path(mountpoint) as c:
            c.call("remount", readonly=readonly)
    except ControlError as e:
        raise DaxfsError(f"{mountpoint}: remount,{want}: {e}") from None
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            raise DaxfsError(f"{mountpoint}: dead mount (the daemon was killed); run `daxfs umount` on it") from None
        raise DaxfsError(f"{mountpoint}: cannot reach the daemon: {e.strerror or e}") from None
    p = subprocess.run(["mount", "-i", "-o", f"remount,{want}", mountpoint], capture_output=True, text=True)
    if p.returncode != 0:
        why = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"mount exited {p.returncode}"
        raise DaxfsError(f"{mountpoint}: the daemon is {want} now, but the kernel's remount failed: {why}")
    echo(f"{mountpoint}: remounted {'read-only' if readonly else 'read-write'}")


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
