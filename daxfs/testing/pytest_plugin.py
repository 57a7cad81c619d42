"""pytest fixtures for crash-testing on daxfs, registered when daxfs is installed (entry point pytest11).

    def test_my_program_survives(daxfs_mount):
        m = daxfs_mount("map_sync")            # a fresh 64 MiB image, mounted in tmp_path
        ...
        m.crash(); m.mount(); ...

Every Mount the factory made is unmounted at teardown, even when the test failed, and its image is
checked with `daxfs fsck`: a test that leaves an unclean image fails.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from daxfs.testing.mount import Mount


@pytest.fixture
def daxfs_mount(tmp_path):
    """Factory: daxfs_mount(opts="", size="64M", mkfs_args=(), mount=True, tmpfs=False) ->
    daxfs.testing.Mount. With tmpfs the image is on /dev/shm, where mappings get real faults
    (userfaultfd serves shared memory only)."""
    made: list[Mount] = []
    shm: list[str] = []

    def make(opts: str = "", size: str = "64M", mkfs_args=(), mount: bool = True, tmpfs: bool = False) -> Mount:
        where = tmp_path
        if tmpfs:
            shm.append(tempfile.mkdtemp(prefix="daxfs-test-", dir="/dev/shm"))
            where = shm[-1]
        m = Mount.create(where, size, opts, f"img{len(made)}", mkfs_args)
        made.append(m)
        if mount:
            m.mount()
        return m

    yield make
    problems: list[str] = []
    for m in made:
        problems += m.cleanup()
    for d in shm:
        shutil.rmtree(d, ignore_errors=True)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
