"""The fixtures of every test suite: small engine images in /dev/shm, a file system on one, real
mounts (daxmount: daxfs.testing's daxfs_mount fixture), a umask. Helper functions are in helpers.py.

A "crash" in the engine tests is what a killed daemon or a power cut leaves behind: the image file as
the region had stored it (daxfs.testing.power.CrashRegion can also throw away whatever was never
persisted), reopened without FileSystem.close() having run.
"""

from __future__ import annotations

import os
import uuid

import pytest

from daxfs.engine import crashpoint
from daxfs.engine.fs import FileSystem
from daxfs.engine.mkfs import mkfs
from helpers import MiB, image_dir


@pytest.fixture
def new_image(tmp_path):
    """Factory: new_image(size=16 MiB, **mkfs options) -> path of a fresh image, removed afterwards."""
    made: list[str] = []

    def make(size: int = 16 * MiB, **kw) -> str:
        path = os.path.join(image_dir(tmp_path), f"daxfs-test-{uuid.uuid4().hex}.img")
        made.append(path)
        mkfs(path, size, **kw)
        return path

    yield make
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def image(new_image) -> str:
    return new_image()


@pytest.fixture
def fs(image):
    """A mounted 16 MiB file system; closed cleanly at the end unless the test crashed it."""
    f = FileSystem.open(image, durable=False)
    yield f
    if f.region.mem is not None:
        f.close()


@pytest.fixture(autouse=True)
def _disarm_crashpoints():
    # An armed point that a test did not reach must not fire in the next test.
    crashpoint.disarm_all()
    yield
    crashpoint.disarm_all()


@pytest.fixture
def daxmount(daxfs_mount):
    """Factory: daxmount(opts="", size="64M", mkfs_args=(), mount=True) -> Mount: the daxfs_mount
    fixture of daxfs.pytest_plugin (unmounted and fsck'ed at teardown, even when the test failed)."""
    return daxfs_mount


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)
