"""The file systems tools/bench_fuse.py measures: mounting and unmounting them, their request
counters, and the populated image of `--scale`. The method is documented in bench_fuse.py.

Request counters:
  passthroughfs (both baselines)  tools/passthrough_counted.py counts every request handler call and
                                  writes the counts to a file on SIGUSR1.
  daxfs                           the daemon's own counters: the `requests` dict (FUSE op -> count) of
                                  `daxfs stats --json`, i.e. of the JSON in the `user.daxfs.stats`
                                  xattr, read here straight from the xattr. A daemon that does not
                                  keep it yet gives None, printed "n/a".
Reading daxfs's counters costs requests of its own (the getxattr); that cost is measured once per
mount (two snapshots back to back) and subtracted from every delta. The kernel sends some requests
in the background after the operation that caused them (RELEASE, RELEASEDIR, FORGET): a Meter waits
until the counts stop moving before its last snapshot.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The daxfs engine, used in-process to populate --scale images.
sys.path.insert(0, REPO)
from daxfs.engine.extent import WRITTEN  # noqa: E402
from daxfs.engine.fs import FileSystem  # noqa: E402
from daxfs.engine.mkfs import mkfs  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BS = 4 * KiB
PREFIX = "daxfs-bench-fuse"
STATS_XATTR = "user.daxfs.stats"  # what `daxfs stats --json` prints
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "passthrough_counted.py")

# The layout every mount gets (the rows work in BASE; READDIR_DIR holds the readdir row's entries).
# The --scale image has the same paths, with 10,000 files in BASE besides.
BASE = "pop/d00"
READDIR_DIR = "pop/d01"
PWRITE_FILE = "pop/d00/pw"


def daxfs_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "daxfs")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "daxfs.cli"]


def run(cmd: list[str], timeout: float = 120, env: dict | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=None if env is None else {**os.environ, **env})
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def is_mounted(path: str) -> bool:
    """True for a live mount and for a dead FUSE mount (whose daemon is gone: os.path.ismount says
    False there, because stat fails with ENOTCONN)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape") if "\\" in line else line.split()[4]
            if mp == target:
                return True
    return False


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    return {k: v for k, v in out.items() if v}


@dataclass
class Mount:
    name: str
    mountpoint: str
    kind: str  # "passthrough" or "daxfs"
    proc: subprocess.Popen | None = None  # passthroughfs runs as our child in the foreground
    image: str | None = None
    counts_path: str | None = None  # passthroughfs: where it dumps its counts on SIGUSR1
    mounted: bool = False
    pw_blocks: range = range(0)  # the blocks of PWRITE_FILE that are written (the pwrite row's targets)
    overhead: dict[str, int] = field(default_factory=dict)  # requests that one snapshot itself costs
    _seq: int = 0

    def path(self, rel: str) -> str:
        return os.path.join(self.mountpoint, rel)

    def stats(self) -> dict:
        return json.loads(os.getxattr(self.mountpoint, STATS_XATTR))

    def requests(self) -> dict[str, int] | None:
        """Requests served so far, by op; None where the daemon keeps no such counters."""
        if self.kind == "daxfs":
            req = self.stats().get("requests")
            return dict(req) if isinstance(req, dict) else None
        self._seq += 1
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(self.counts_path) as f:
                    doc = json.load(f)
                if doc["seq"] >= self._seq:
                    self._seq = doc["seq"]
                    return doc["requests"]
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.001)
        raise RuntimeError(f"{self.name}: no request counts in {self.counts_path} within 10 s of SIGUSR1")

    def calibrate(self) -> None:
        """What a snapshot costs in requests (daxfs: the stats getxattr), to subtract from deltas."""
        self.requests()
        a = self.requests()
        b = self.requests()
        self.overhead = diff(b, a) if a is not None and b is not None else {}


class Meter:
    """`with meter:` around a measured region: the requests the mount served inside it, by op
    (None where the mount has no counters). Snapshots are taken outside the timed code."""

    def __init__(self, m: Mount) -> None:
        self.m = m
        self.delta: dict[str, int] | None = None

    def __enter__(self):
        self.before = self.m.requests()
        return self

    def __exit__(self, *exc):
        after = self.m.requests()
        if self.before is None or after is None:
            self.delta = None
            return
        # Some requests the measured operations cause arrive after them: the kernel sends RELEASE,
        # RELEASEDIR and FORGET in the background. Wait (at most 50 ms, untimed) until none arrive.
        for _ in range(10):
            time.sleep(0.005)
            again = self.m.requests()
            if not diff(diff(again, after), self.m.overhead):
                break
            after = again
        self.delta = diff(diff(after, self.before), self.m.overhead)


@dataclass
class Workspace:
    """Everything this run creates; `close()` undoes all of it, whatever state it is in."""
    root: str = ""  # in /dev/shm: passthroughfs's sources, daxfs images, mount points, the tar
    sdist_dir: str = ""  # the pyfuse3 sdist and the extracted passthroughfs.py
    mounts: list[Mount] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/dev/shm")
        self.sdist_dir = tempfile.mkdtemp(prefix=f"{PREFIX}-sdist-")

    def fetch_passthroughfs(self) -> tuple[str, str]:
        """passthroughfs.py from the sdist of the installed pyfuse3 (never kept in this repository)."""
        import pyfuse3

        version = pyfuse3.__version__
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"pyfuse3=={version}", "-d", self.sdist_dir], timeout=300)
        tarballs = glob.glob(os.path.join(self.sdist_dir, "pyfuse3-*.tar.gz"))
        if not tarballs:
            raise RuntimeError(f"pip download gave no pyfuse3 sdist in {self.sdist_dir}")
        with tarfile.open(tarballs[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/examples/passthroughfs.py")), None)
            if member is None:
                raise RuntimeError(f"{os.path.basename(tarballs[0])} holds no examples/passthroughfs.py")
            data = tar.extractfile(member).read()
        path = os.path.join(self.sdist_dir, "passthroughfs.py")
        with open(path, "wb") as f:
            f.write(data)
        return path, version

    def mount_passthrough(self, script: str, name: str, xattr: bool) -> Mount:
        tag = name.replace(" ", "_").replace("+", "-")
        src = os.path.join(self.root, f"{tag}-src")
        mnt = os.path.join(self.root, f"{tag}-mnt")
        os.mkdir(src)
        os.mkdir(mnt)
        m = Mount(name, mnt, "passthrough", counts_path=os.path.join(self.root, f"{tag}-counts.json"))
        self.mounts.append(m)
        logpath = os.path.join(self.root, f"{tag}.log")
        cmd = [sys.executable, LAUNCHER, script, m.counts_path] + (["--xattr"] if xattr else []) + ["--", src, mnt]
        with open(logpath, "wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches us, and we unmount it in order.
            m.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if m.proc.poll() is not None:
                with open(logpath) as f:
                    raise RuntimeError(f"{name} exited {m.proc.returncode}: {f.read().strip()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not mount within 60 s")
            time.sleep(0.02)
        m.mounted = True
        return m

    def mount_daxfs(self, name: str, options: list[str], size: str = "1G", image: str | None = None,
                    env: dict | None = None) -> Mount:
        """A fresh image of `size` (daxfs mkfs), or the prepared `image`, mounted with `options` (the
        daemon gets `env` on top of ours)."""
        tag = name.replace(" ", "_").replace("=", "-")
        mnt = os.path.join(self.root, f"{tag}-mnt")
        os.mkdir(mnt)
        if image is None:
            image = os.path.join(self.root, f"{tag}.img")
            run(daxfs_cmd() + ["mkfs", image, "--size", size])
        m = Mount(name, mnt, "daxfs", image=image)
        self.mounts.append(m)
        cmd = daxfs_cmd() + ["mount", image, mnt] + (["-o", ",".join(options)] if options else [])
        run(cmd, timeout=600, env=env)  # returns once the mount answers
        m.mounted = os.path.ismount(mnt)
        if not m.mounted:
            raise RuntimeError(f"{shlex.join(cmd)} returned but {mnt} is not a mount")
        return m

    def unmount(self, m: Mount) -> None:
        if m.kind == "daxfs":
            if is_mounted(m.mountpoint):
                try:
                    run(daxfs_cmd() + ["umount", m.mountpoint], timeout=600)  # waits for the daemon to exit
                except Exception as e:  # busy, or the daemon is slow to exit: detach it, say what its log says
                    tail = ""
                    try:
                        with open(m.image + ".log", errors="replace") as f:
                            tail = "".join(f.readlines()[-5:])
                    except OSError:
                        pass
                    print(f"daxfs umount {m.mountpoint}: {e}; detaching. Its log ends:\n{tail}", file=sys.stderr)
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
        else:
            if m.proc is not None and m.proc.poll() is None and not is_mounted(m.mountpoint):
                # interrupted while it was starting: give it the time to mount, so that it can be unmounted
                deadline = time.monotonic() + 10
                while m.proc.poll() is None and not is_mounted(m.mountpoint) and time.monotonic() < deadline:
                    time.sleep(0.02)
            if is_mounted(m.mountpoint):
                p = subprocess.run(["fusermount3", "-u", m.mountpoint], capture_output=True, text=True)
                if p.returncode != 0:
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
                if is_mounted(m.mountpoint):  # killed: remove the dead mount it left
                    subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
        m.mounted = False

    def close(self) -> list[str]:
        """Unmount everything, remove everything; returns what could not be undone."""
        problems = []
        for m in reversed(self.mounts):
            try:
                self.unmount(m)
            except Exception as e:
                problems.append(f"could not unmount {m.mountpoint}: {e}")
        leftover = [m.mountpoint for m in self.mounts if is_mounted(m.mountpoint)]
        if leftover:  # never rmtree through a live mount
            problems.append(f"still mounted, left in place: {leftover}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sdist_dir, ignore_errors=True)
        return problems


def build_scale_image(path: str, size: int, nfiles: int, ndirs: int, extents: int, advance) -> dict:
    """A daxfs image of `size` bytes (sparse) populated in-process through the engine: `nfiles` files
    of 64 bytes in `ndirs` directories pop/d00, pop/d01, ... (BASE and READDIR_DIR among them), and
    PWRITE_FILE with `extents` written one-block extents (every other block: a hole between each).
    Committed and closed clean, so every block is stable when it is mounted."""
    t0 = time.perf_counter()
    mkfs(path, size)
    fs = FileSystem.open(path, durable=False)  # population is setup: no msync
    try:
        pop = fs.mkdir(1, b"pop", 0o755, os.getuid(), os.getgid()).ino
        dirs = [fs.mkdir(pop, b"d%02d" % d, 0o755, os.getuid(), os.getgid()).ino for d in range(ndirs)]
        payload = b"daxfs bench, a small file of sixty-four bytes, for --scale.....\n"
        for i in range(nfiles):
            ino = fs.create(dirs[i % ndirs], b"f%06d" % (i // ndirs), 0o100644, os.getuid(), os.getgid()).ino
            fs.write(ino, 0, payload)
            if i % 2000 == 1999:
                fs.commit()
                advance(2000)
        pw = fs.create(dirs[0], os.path.basename(PWRITE_FILE).encode(), 0o100644, os.getuid(), os.getgid()).ino
        block = bytes(range(256)) * (BS // 256)
        for i in range(extents):
            fs.write(pw, 2 * i * BS, block)
            if i % 2000 == 1999:
                fs.commit()
                advance(2000)
        fs.commit()
        written = sum(1 for m, _ in fs.map(pw) if m.state == WRITTEN)
        fs.close()
    except BaseException:
        fs.region.close()
        raise
    return {"files": nfiles, "dirs": ndirs, "pwrite_file_extents": written, "image_bytes": size,
            "populate_s": round(time.perf_counter() - t0, 1)}
