"""Mount options, as other FUSE file systems spell them (-o map_sync,commit=10 -o ro), parsed into
MountOptions and written back as one -o string for the daemon process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from daxfs.engine import crashpoint
from daxfs.engine.errors import DaxfsError

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
