"""PmemRegion: the one door every store to the image goes through."""

from __future__ import annotations

import os
import stat
import uuid

import numpy as np
import pytest

from daxfs.engine.errors import DaxfsError
from daxfs.engine.pmem import PAGE, PmemRegion
from helpers import image_dir



@pytest.fixture
def path(tmp_path):
    p = os.path.join(image_dir(tmp_path), f"pmem-{uuid.uuid4().hex}.img")
    yield p
    if os.path.exists(p):
        os.unlink(p)


def test_create_makes_a_sparse_file_readable_only_by_its_owner(path):
    old = os.umask(0)  # even a permissive umask must not widen an image that holds every file's data
    try:
        PmemRegion.create(path, 64 << 20)
    finally:
        os.umask(old)
    st = os.stat(path)
    assert st.st_size == 64 << 20
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_blocks * 512 < 1 << 20  # sparse: nothing allocated yet


def test_create_refuses_an_existing_file_unless_forced(path):
    PmemRegion.create(path, 1 << 20)
    with pytest.raises(FileExistsError):
        PmemRegion.create(path, 1 << 20)
    with open(path, "r+b") as f:
        f.write(b"old")
    PmemRegion.create(path, 2 << 20, force=True)
    assert os.path.getsize(path) == 2 << 20
    with open(path, "rb") as f:
        assert f.read(3) == b"\0\0\0"  # forced create truncates


def test_refuses_an_empty_file(path):
    open(path, "wb").close()
    with pytest.raises(DaxfsError, match="empty file"):
        PmemRegion(path)


def test_refuses_a_missing_file(path):
    with pytest.raises(DaxfsError):
        PmemRegion(path)


def test_store_then_load_round_trips_and_other_mappings_see_it(path):
    PmemRegion.create(path, 1 << 20)
    r = PmemRegion(path)
    other = PmemRegion(path, writable=False)
    r.store(5000, b"hello")
    r.store(10000, bytearray(b"ba"))
    r.store(20000, memoryview(b"mv"))
    r.store(30000, np.frombuffer(b"np", dtype=np.uint8))
    assert r.load(5000, 5) == b"hello"
    assert r.load(4999, 7) == b"\0hello\0"
    # A store lands in the shared page cache: any other mapping of the image sees it at once.
    assert other.load(5000, 5) == b"hello"
    assert other.load(10000, 2) == b"ba" and other.load(20000, 2) == b"mv" and other.load(30000, 2) == b"np"
    other.close()
    r.close()


def test_zero_clears_exactly_the_range(path):
    PmemRegion.create(path, 1 << 20)
    r = PmemRegion(path)
    r.store(0, b"\xff" * 3 * PAGE)
    r.zero(PAGE - 10, 20)
    assert r.load(0, PAGE - 10) == b"\xff" * (PAGE - 10)
    assert r.load(PAGE - 10, 20) == bytes(20)
    assert r.load(PAGE + 10, 2 * PAGE - 10) == b"\xff" * (2 * PAGE - 10)
    r.close()


def test_view_is_a_live_window_onto_the_image(path):
    PmemRegion.create(path, 1 << 20)
    r = PmemRegion(path)
    v = r.view(100, 4)
    v[:] = 7  # DAX: a store through the window is a store to the image
    assert r.load(100, 4) == b"\x07" * 4
    r.close()


def test_persist_msyncs_the_pages_covering_the_range(path, monkeypatch):
    PmemRegion.create(path, 16 * PAGE)
    r = PmemRegion(path)
    calls = []
    monkeypatch.setattr(r, "_mmap", type("M", (), {"flush": lambda self, off, n: calls.append((off, n))})())
    r.persist(PAGE + 100, 10)  # msync needs a page-aligned start
    r.persist(15 * PAGE + 1, 10 * PAGE)  # clamped at the end of the image
    r.persist(0, 0)  # nothing to persist: no msync at all
    assert calls == [(PAGE, 110), (15 * PAGE, PAGE)]
    for off, n in calls:
        assert off % PAGE == 0 and off + n <= r.size


def test_persist_is_a_no_op_when_not_durable(path, monkeypatch):
    PmemRegion.create(path, 16 * PAGE)
    r = PmemRegion(path, durable=False)
    calls = []
    monkeypatch.setattr(r, "_mmap", type("M", (), {"flush": lambda self, off, n: calls.append((off, n))})())
    r.persist(0, PAGE)
    assert calls == []


def test_persisted_stores_reach_the_file(path):
    PmemRegion.create(path, 16 * PAGE)
    r = PmemRegion(path)
    r.store(3 * PAGE + 5, b"durable")
    r.persist(3 * PAGE + 5, 7)
    r.fence()
    with open(path, "rb") as f:
        f.seek(3 * PAGE + 5)
        assert f.read(7) == b"durable"
    r.close()


def test_read_only_region_refuses_stores(path):
    PmemRegion.create(path, 1 << 20)
    r = PmemRegion(path, writable=False)
    with pytest.raises((ValueError, TypeError)):
        r.store(0, b"x")
    r.close()


def test_close_is_idempotent_and_flushes(path):
    PmemRegion.create(path, 1 << 20)
    r = PmemRegion(path)
    r.store(0, b"abc")
    r.close()
    r.close()
    assert r.mem is None
    with open(path, "rb") as f:
        assert f.read(3) == b"abc"
