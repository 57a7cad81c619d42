"""Mount options, as other FUSE file systems spell them (-o map_sync,commit=10 -o ro), parsed into
MountOptions and written back as one -o string for the daemon process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from daxfs.engine import crashpoint
from daxfs.engine.errors import DaxfsError

# Options mount(8) and fstab pass along that mean nothing to daxfs.
IGNORED_OPTIONS = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "_netdev", "nofail", "async"}
# FUSE's own options, which mount(8) hands back to the helper on a remount (from /proc/self/mountinfo):
# daxfs sets them itself (default_permissions always).
FUSE_OWN = {"user_id", "group_id", "rootmode", "max_read", "blksize", "fsname", "subtype", "default_permissions"}
# The kernel's own mount flags, passed through to the FUSE mount.
KERNEL_FLAGS = {"dev": ("dev", True), "nodev": ("dev", False), "suid": ("suid", True), "nosuid": ("suid", False),
                "exec": ("exec", True), "noexec": ("exec", False)}
ATIME_MODES = ("relatime", "strictatime", "noatime")
MAX_FAULT_AROUND = 512  # 2 MiB: a huge page's worth
MAX_SPIN_US = 1000


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
    # As a kernel file system mounted by root: dev and suid unless asked otherwise (mount(8) passes a
    # helper only the flags that differ from those defaults, so "dev" never reaches us); FUSE itself
    # forces nodev,nosuid on mounts by other users.
    dev: bool = field(default_factory=lambda: os.getuid() == 0)
    suid: bool = field(default_factory=lambda: os.getuid() == 0)
    exec: bool = True
    remount: bool = False  # -o remount: change a mounted daxfs between ro and rw (daemon.mount.remount)
    atime: str = "relatime"  # relatime, strictatime or noatime (engine.core.AtimePolicy)
    diratime: bool = True
    lazytime: bool = False
    fault_around: int = 16  # pages a real fault maps at once (daemon/userfaults.py); 1: one per fault
    acl: bool = True  # POSIX ACLs enforced by the kernel (FUSE_POSIX_ACL), as ext4's default; noacl: off
    spin: int = 50  # µs the session loop polls for the next request before it sleeps (daemon/session.py)

    def kernel_options(self) -> set[str]:
        """What FUSE's mount is told: its flags, spelled as mount(8) spells them."""
        return {name if getattr(self, name) else f"no{name}" for name in ("dev", "suid", "exec")}

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
        opts += sorted(self.kernel_options()) + [self.atime]
        if not self.diratime:
            opts.append("nodiratime")
        if self.lazytime:
            opts.append("lazytime")
        opts.append(f"fault_around={self.fault_around}")
        opts.append(f"spin={self.spin}")
        if not self.acl:
            opts.append("noacl")
        return ",".join(opts)


def parse_options(texts: list[str]) -> MountOptions:
    """Options as other FUSE file systems spell them: -o map_sync,commit=10 -o ro."""
    o = MountOptions()
    for text in texts:
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, _, value = item.partition("=")
            if key in ("map_sync", "ro", "allow_other", "debug") and not value:
                setattr(o, key, True)
            elif key == "rw" and not value:
                o.ro = False
            elif key == "remount" and not value:
                o.remount = True
            elif key == "nomsync" and not value:
                o.msync = False
            elif key == "commit":
                try:
                    o.commit = float(value)
                except ValueError:
                    raise DaxfsError(f"commit={value}: not a number of seconds") from None
                if not 0 < o.commit <= 3600:
                    raise DaxfsError(f"commit={value}: must be between 0 and 3600 seconds")
            elif key == "fault_around":
                if not value.isdigit() or not 1 <= int(value) <= MAX_FAULT_AROUND:
                    raise DaxfsError(f"fault_around={value}: a number of pages from 1 to {MAX_FAULT_AROUND}")
                o.fault_around = int(value)
            elif key == "spin":
                if not value.isdigit() or int(value) > MAX_SPIN_US:
                    raise DaxfsError(f"spin={value}: microseconds from 0 to {MAX_SPIN_US}")
                o.spin = int(value)
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
            elif key in KERNEL_FLAGS and not value:
                setattr(o, *KERNEL_FLAGS[key])
            elif key in ATIME_MODES and not value:
                o.atime = key
            elif key == "atime" and not value:
                o.atime = "relatime"  # "atime" undoes noatime; Linux then applies its default, relatime
            elif key in ("diratime", "nodiratime") and not value:
                o.diratime = key == "diratime"
            elif key in ("lazytime", "nolazytime") and not value:
                o.lazytime = key == "lazytime"
            elif key in ("acl", "noacl") and not value:
                o.acl = key == "acl"
            elif key in IGNORED_OPTIONS or key in FUSE_OWN or key.startswith("x-"):
                continue
            else:
                raise DaxfsError(f"unknown mount option {item!r}")
    return o
