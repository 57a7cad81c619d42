"""Processes as /proc shows them, read in one place: is a daemon alive, is a client the process it
was (a pid with its start time names one process), and a client's supplementary groups."""

from __future__ import annotations

import os
import time

_STARTTIME = 19  # field 22 of /proc/PID/stat, counted from the state field (3)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it vanished while we read
        return None


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed daemon may stay unreaped), or while
    any of its threads is still exiting: only then are its files, its FUSE connection among them, closed."""
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] != "Z":
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process_alive(pid) is false; False if it still is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def start_time(pid: int) -> str:
    """The start time of process pid ('' if it is gone or a zombie): with the pid, it names one process."""
    fields = _stat(pid)
    return "" if fields is None or fields[0] == "Z" else fields[_STARTTIME]


def groups(pid: int) -> set[int]:
    """The supplementary groups of process pid (SO_PEERCRED carries only the primary one)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (FileNotFoundError, ProcessLookupError):
        pass
    return set()


CAP_FSETID = 4


def has_fsetid(pid: int) -> bool:
    """Whether thread pid's effective capabilities hold CAP_FSETID (False if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_FSETID & 1)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass
    return False
