"""The mount table (/proc/self/mountinfo), read in one place: what kind of file system holds the
image (pmem.py: is it RAM?) and what is mounted at a path (the daemon, the CLI, daxfs.testing)."""

from __future__ import annotations

import os
from collections.abc import Iterator


def mounts() -> Iterator[dict[str, str]]:
    """Every mount of this process's namespace: target, fstype, source, options (the file system's),
    flags (the mount's own: ro, nodev, nosuid, noexec, noatime, ...)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, source, options = (right.split() + ["", "", ""])[:3]
            fields = left.split()
            yield {"target": _unescape(fields[4]), "fstype": fstype, "source": _unescape(source),
                   "options": options, "flags": fields[5]}


def mount_entry(path: str) -> dict[str, str] | None:
    """The mount whose mount point is `path`, or None (the last one, if several are stacked there)."""
    target = os.path.realpath(path)
    found = None
    for m in mounts():
        if m["target"] == target:
            found = m
    return found


def fs_type(path: str) -> str:
    """The type of the file system holding `path` (the longest mount point above it); '' if unknown."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        for m in mounts():
            mnt = m["target"]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, m["fstype"]
    except OSError:
        pass
    return fstype


def _unescape(s: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return s.encode().decode("unicode_escape") if "\\" in s else s
