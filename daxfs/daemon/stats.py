"""Counters the daemon keeps, and latency histograms in the seed's power-of-two microsecond buckets
("8 - 15 us: 508"), so that daxfs's figures print the way the MAP_SYNC cover letter printed its own."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field


@dataclass
class Histogram:
    """Latencies in microseconds, bucketed by powers of two: bucket k holds [2^k, 2^(k+1))."""
    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_us: float = 0.0
    min_us: float = float("inf")
    max_us: float = 0.0

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        k = max(0, int(us).bit_length() - 1)
        self.buckets[k] = self.buckets.get(k, 0) + 1
        self.count += 1
        self.total_us += us
        self.min_us = min(self.min_us, us)
        self.max_us = max(self.max_us, us)

    def as_dict(self) -> dict:
        return {"count": self.count,
                "min_us": round(self.min_us, 1) if self.count else None,
                "avg_us": round(self.total_us / self.count, 1) if self.count else None,
                "max_us": round(self.max_us, 1) if self.count else None,
                "buckets": {bucket_label(k): n for k, n in sorted(self.buckets.items())}}

    def lines(self) -> list[str]:
        return histogram_lines(self.as_dict())


def histogram_lines(h: dict) -> list[str]:
    """A histogram (Histogram.as_dict(), as `daxfs stats --json` carries it) in the seed's format:
    'min=9 avg=10 max=46', then one line per non-empty bucket."""
    if not h["count"]:
        return ["(none)"]
    return ([f"min={h['min_us']:.0f} avg={h['avg_us']:.0f} max={h['max_us']:.0f}"]
            + [f"{label}: {n}" for label, n in h["buckets"].items()])


def bucket_label(k: int) -> str:
    lo = 0 if k == 0 else 1 << k
    return f"{lo} - {(1 << (k + 1)) - 1} us"


@dataclass
class DaemonStats:
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    requests: dict[str, int] = field(default_factory=dict)  # FUSE requests served, by operation
    request_errors: int = 0  # requests that failed with an unexpected exception (answered EIO, logged)
    # the control and descriptor sockets (control.py)
    control_requests: int = 0  # lines received on the control socket, malformed ones too
    control_refusals: int = 0  # answered {"ok": false}: bad input, no permission, an op's own refusal
    connections_refused: int = 0  # closed at once: the peer's uid had too many connections open
    accept_failures: int = 0  # accept() failed for want of descriptors or memory (backed off, retried)
    fuse_shim: bool = False  # fallocate, SEEK_DATA/SEEK_HOLE and copy_file_range reach us (fuseshim.py)
    killpriv_v2: bool = False  # the kernel leaves clearing setid bits to us: no GETXATTR per write (fuseshim.py)
    # the FUSE session loop (session.py): "daxfs" (its own) or "pyfuse3" (pyfuse3.main)
    session_loop: str = "pyfuse3"
    detached_requests: int = 0  # requests that waited (for a commit) on a task of their own
    blocking_requests: int = 0  # requests that waited without detaching: the loop waited too (expect 0)
    spin_hits: int = 0  # requests the loop found while it polled (-o spin) instead of sleeping
    writes: int = 0
    bytes_written: int = 0
    reads: int = 0
    bytes_read: int = 0
    sync_writes: int = 0  # writes in sync mode
    sync_faults: int = 0  # sync-mode writes that had to wait for a commit
    fsyncs: int = 0
    commits: int = 0
    commit_latency: Histogram = field(default_factory=Histogram)
    # direct access (faults.py): faults as the daemon served them, from request to answer
    dax_maps: int = 0  # mappings made
    real_fault_maps: int = 0  # of which with real faults (userfaultfd: userfaults.py)
    sigbus_faults: int = 0  # real faults answered with SIGBUS: beyond EOF, ENOSPC
    read_faults: int = 0
    write_faults: int = 0
    sync_write_faults: int = 0  # write faults of MAP_SYNC mappings that waited for a commit
    read_fault_latency: Histogram = field(default_factory=Histogram)
    write_fault_latency: Histogram = field(default_factory=Histogram)  # those that did not wait
    sync_write_fault_latency: Histogram = field(default_factory=Histogram)

    def commit_done(self, seconds: float) -> None:
        self.commits += 1
        self.commit_latency.add(seconds)

    def fault_done(self, write: bool, waited: bool, seconds: float) -> None:
        if not write:
            self.read_faults += 1
            self.read_fault_latency.add(seconds)
        elif waited:
            self.write_faults += 1
            self.sync_write_faults += 1
            self.sync_write_fault_latency.add(seconds)
        else:
            self.write_faults += 1
            self.write_fault_latency.add(seconds)

    def as_dict(self, **extra) -> dict:
        """Counters, then every histogram as a dict (keys ending in _latency)."""
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, Histogram)}
        d["uptime_s"] = round(time.time() - self.started, 1)
        d.update(extra)
        d.update({k: v.as_dict() for k, v in self.__dict__.items() if isinstance(v, Histogram)})
        return d
