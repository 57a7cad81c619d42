#!/usr/bin/env python3
"""What fallocate through the FUSE shim costs, and what it saves (docs/design.md, "Operations pyfuse3
cannot receive").

Two mounts of fresh images in /dev/shm, side by side: one daemon with the shim, one started with
DAXFS_FUSE_SHIM=0 (as daxfs was before: the kernel answers fallocate with EOPNOTSUPP). Rows:

  posix_fallocate     os.posix_fallocate of SIZE on a new file. With the shim: one FALLOCATE
                      request. Without: glibc emulates it with a 1-byte pwrite per 4 KiB block.
  + fdatasync         the same, then fdatasync (the commit that makes the preallocation durable)
  write zeros         what programs do when fallocate fails: SIZE of zeros in 1 MiB os.write
                      calls, then fdatasync
  requests            FUSE requests the daemon counted for one posix_fallocate of SIZE
  per call            median latency of fallocate(KEEP_SIZE) over a block already allocated (the
                      round trip through the shim, no allocation) and of lseek(SEEK_HOLE), against
                      a 4 KiB pwrite to a stable block (pyfuse3's own path), in microseconds

    .venv/bin/python tools/bench_falloc.py               # SIZE 1 GiB
    .venv/bin/python tools/bench_falloc.py --size 256M   # quicker

The two mounts alternate within each round; this shared machine is noisy, so compare orders of
magnitude, not percent. Both mounts are unmounted and their images removed at the end, also on error.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time

from daxfs.cli.sizes import parse_size
from daxfs.testing import Mount

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
MiB = 1 << 20


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fresh(m: Mount, name: str) -> int:
    path = m / name
    if os.path.exists(path):
        os.unlink(path)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def run_once(m: Mount, size: int, what: str) -> float:
    fd = fresh(m, "f")
    try:
        if what == "falloc":
            return timed(lambda: os.posix_fallocate(fd, 0, size))
        if what == "falloc+sync":
            return timed(lambda: (os.posix_fallocate(fd, 0, size), os.fdatasync(fd)))
        buf = bytes(MiB)

        def zeros():
            for _ in range(size // MiB):
                os.write(fd, buf)
            os.fdatasync(fd)
        return timed(zeros)
    finally:
        os.close(fd)
        os.unlink(m / "f")


def requests(m: Mount, size: int) -> dict[str, int]:
    def delta(a: dict, b: dict) -> dict:
        return {k: v - a.get(k, 0) for k, v in b.items() if v != a.get(k, 0)}
    a, b = m.stats()["requests"], m.stats()["requests"]
    stats_call = delta(a, b)  # what one stats() costs (os.getxattr may ask twice: size, then value)
    fd = fresh(m, "r")
    try:
        before = m.stats()["requests"]
        os.posix_fallocate(fd, 0, size)
        after = m.stats()["requests"]
    finally:
        os.close(fd)
        os.unlink(m / "r")
    d = delta(before, after)
    for k, v in stats_call.items():
        d[k] -= v
    return {k: v for k, v in d.items() if v}


def per_call(m: Mount, n: int = 2000) -> dict[str, float]:
    fd = fresh(m, "p")
    try:
        os.write(fd, bytes(64 * 1024))
        os.fsync(fd)
        out = {}
        for name, fn in (("fallocate", lambda: libc.fallocate(fd, 1, 0, 4096)),
                         ("lseek", lambda: os.lseek(fd, 0, os.SEEK_HOLE)),
                         ("pwrite", lambda: os.pwrite(fd, b"x" * 4096, 8192))):
            samples = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
            out[name] = statistics.median(samples) * 1e6
        return out
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="bytes to preallocate (default 1G)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="daxfs-falloc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    image = f"{2 * size // MiB + 256}M"
    mounts: dict[str, Mount] = {}
    try:
        for label, shim in (("shim", "1"), ("no shim", "0")):
            m = Mount.create(tmp, image, "commit=60", name=label.replace(" ", "-"))
            os.environ["DAXFS_FUSE_SHIM"] = shim
            m.mount()
            mounts[label] = m
        os.environ.pop("DAXFS_FUSE_SHIM")
        assert mounts["shim"].stats()["fuse_shim"] and not mounts["no shim"].stats()["fuse_shim"]
        rows: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for label, m in sorted(mounts.items(), reverse=r % 2 == 1):  # alternate which goes first
                for what in ("falloc", "falloc+sync", "zeros"):
                    if label == "no shim" and (what == "falloc+sync" or what == "falloc" and r > 0):
                        continue  # glibc's emulation takes long (a write per block): once is enough
                    rows.setdefault((label, what), []).append(run_once(m, size, what))
        print(f"{args.size} on a {image} image in /dev/shm, median of {args.rounds} rounds (ms):")
        names = {"falloc": "posix_fallocate", "falloc+sync": "posix_fallocate + fdatasync",
                 "zeros": "write zeros (1 MiB writes) + fdatasync"}
        for what, name in names.items():
            cells = [f"{statistics.median(rows[(label, what)]) * 1e3:9.1f}" if (label, what) in rows else "      n/a"
                     for label in mounts]
            print(f"  {name:42} shim {cells[0]}   no shim {cells[1]}")
        for label, m in mounts.items():
            print(f"  requests for one posix_fallocate, {label}: {requests(m, size)}")
        for label, m in mounts.items():
            us = per_call(m)
            print(f"  per call, {label} (us, median of 2000): " + ", ".join(f"{k} {v:.0f}" for k, v in us.items()))
    finally:
        for m in mounts.values():
            problems = m.cleanup()
            if problems:
                print("\n".join(problems), file=sys.stderr)
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                os.unlink(path)
            else:
                os.rmdir(path)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
