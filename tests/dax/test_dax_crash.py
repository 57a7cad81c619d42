"""MAP_SYNC's promise under SIGKILL, in the spirit of xfstests generic/470: MAP_SYNC-map 1 MiB of an
empty file, store into every page, kill the daemon the moment the last fault has returned, remount:
every page is allocated and holds its data. The contrast: without MAP_SYNC, on a mount that commits
every 60 s, the same stores leave pages whose block mapping died with the daemon. Both with explicit
faults (the image on the test's own directory) and with real ones (the image on tmpfs: the stores
are plain memory stores, and a userfaultfd fault maps AROUND pages at a time).
"""

from __future__ import annotations

import json
import os

import pytest


from daxfs import dax
from daxfs.daemon.options import MountOptions
from helpers import BS, MiB, pattern, read_file

pytestmark = pytest.mark.mount

PAGES = MiB // BS
AROUND = MountOptions().fault_around
FAULTS = pytest.mark.parametrize("tmpfs", [False, True], ids=["explicit-faults", "real-faults"])


def store_every_page_then_kill(m, flags: int) -> tuple[bytes, dict]:
    """Map 1 MiB of an empty (sparse, committed) file, store a page-sized pattern into each page in
    turn (one write fault each), SIGKILL the daemon right after the last store, clean the dead mount,
    remount. Returns what the file holds and its extent map."""
    f = os.path.join(m.mnt, "f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    os.ftruncate(fd, MiB)
    os.fsync(fd)
    os.close(fd)
    data = pattern(470, MiB)
    mp = dax.mmap(f, MiB, flags)
    assert mp.real == m.image.startswith("/dev/shm/")
    before = m.stats()
    for p in range(PAGES):
        mp[p * BS:(p + 1) * BS] = data[p * BS:(p + 1) * BS]
    after = m.stats()  # a getxattr: commits nothing
    m.crash(after["pid"])  # right after the last fault returned (and the last store landed)
    mp.close()
    faults = PAGES // AROUND if mp.real else PAGES  # real faults map AROUND pages at once (fault-around)
    assert after["write_faults"] == before["write_faults"] + faults
    assert after["sync_write_faults"] - before["sync_write_faults"] == (faults if mp.sync else 0)
    m.mount()
    return read_file(f), json.loads(os.getxattr(f, "user.daxfs.map"))


@FAULTS
def test_map_sync_pages_are_allocated_and_hold_their_data_after_sigkill(daxmount, tmpfs):
    m = daxmount("commit=60", tmpfs=tmpfs)
    got, fmap = store_every_page_then_kill(m, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC)
    assert fmap["blocks"] == PAGES and all(row[3] == "written" for row in fmap["extents"])
    assert got == pattern(470, MiB)


@FAULTS
def test_without_map_sync_the_same_stores_lose_their_pages(daxmount, tmpfs):
    m = daxmount("commit=60", tmpfs=tmpfs)
    got, fmap = store_every_page_then_kill(m, dax.MAP_SHARED)
    lost = sum(got[p * BS:(p + 1) * BS] != pattern(470, MiB)[p * BS:(p + 1) * BS] for p in range(PAGES))
    assert len(got) == MiB  # the file and its size were committed before the mapping
    assert lost > 0 and fmap["blocks"] < PAGES, "normal mode lost nothing: the contrast shows nothing"
