"""Write-only handles are opened with direct_io (fuseops._open_handle): no page-cache copy of what
they write. What must hold all the same, through a real mount: every other handle, cached reads and
shared mappings included, sees those writes at once, and stores through a shared mapping are not
lost to them (the kernel writes back and drops the cached range before each direct write)."""

from __future__ import annotations

import mmap
import os

import pytest
from helpers import BS

pytestmark = pytest.mark.mount


@pytest.fixture
def f(daxmount):
    p = daxmount() / "f"
    with open(p, "wb") as out:
        out.write(b"a" * 4 * BS)
    return p


def test_a_cached_reader_sees_writes_through_a_write_only_handle(f):
    r = os.open(f, os.O_RDONLY)
    w = os.open(f, os.O_WRONLY)
    try:
        assert os.pread(r, 8, BS) == b"a" * 8  # now cached
        os.pwrite(w, b"b" * 8, BS)
        assert os.pread(r, 8, BS) == b"b" * 8
        os.pwrite(w, b"c" * 100, BS + 4000)  # across a page boundary
        assert os.pread(r, 200, BS + 3950) == b"a" * 50 + b"c" * 100 + b"a" * 50
    finally:
        os.close(r)
        os.close(w)


def test_appends_through_a_write_only_handle_show_in_size_and_reads(f):
    r = os.open(f, os.O_RDONLY)
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        assert os.pread(r, 4 * BS, 0) == b"a" * 4 * BS
        for i in range(10):
            os.write(a, bytes([65 + i]) * 1000)
        assert os.fstat(r).st_size == 4 * BS + 10000
        assert os.pread(r, 2000, 4 * BS + 8000) == b"I" * 1000 + b"J" * 1000
    finally:
        os.close(r)
        os.close(a)


def test_a_shared_mapping_sees_them_and_keeps_its_own_stores(f):
    fd = os.open(f, os.O_RDWR)
    w = os.open(f, os.O_WRONLY)
    m = mmap.mmap(fd, 4 * BS)
    try:
        assert m[:4] == b"aaaa"
        os.pwrite(w, b"bbbb", 0)
        assert m[:4] == b"bbbb"
        m[BS:BS + 4] = b"dddd"  # a dirty page of the mapping...
        os.pwrite(w, b"eeee", BS + 4)  # ...then a direct write into the same page
        assert m[BS:BS + 8] == b"ddddeeee"
        m.flush()
        assert os.pread(fd, 8, BS) == b"ddddeeee"
    finally:
        m.close()
        os.close(fd)
        os.close(w)
    with open(f, "rb") as back:
        assert back.read(BS + 8)[-8:] == b"ddddeeee"
