"""pytest fixtures for crash-testing on daxfs, registered when daxfs is installed (entry point pytest11).

    def test_my_program_survives(daxfs_mount):
        m = daxfs_mount("map_sync")            # a fresh 64 MiB image, mounted in tmp_path
        ...
        m.crash(); m.mount(); ...

Every Mount the factory made is unmounted at teardown, even when the test failed, and its image is
checked with `daxfs fsck`: a test that leaves an unclean image fails.
"""

from __future__ import annotations

import pytest

from daxfs.testing.mount import Mount


@pytest.fixture
def daxfs_mount(tmp_path):
    """Factory: daxfs_mount(opts="", size="64M", mkfs_args=(), mount=True) -> daxfs.testing.Mount."""
    made: list[Mount] = []

    def make(opts: str = "", size: str = "64M", mkfs_args=(), mount: bool = True) -> Mount:
        m = Mount.create(tmp_path, size, opts, f"img{len(made)}", mkfs_args)
        made.append(m)
        if mount:
            m.mount()
        return m

    yield make
    problems: list[str] = []
    for m in made:
        problems += m.cleanup()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
