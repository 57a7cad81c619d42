"""The `daxfs` command end to end, as a subprocess: mkfs, inspect, fsck and their exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from daxfs.engine import format as fmt
from daxfs.engine.fs import FileSystem
from helpers import digest, populate, set_bit, superblock


MiB = 1 << 20


def daxfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daxfs.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def image(tmp_path) -> str:
    path = str(tmp_path / "cli.img")
    r = daxfs("mkfs", path, "--size", "64M")
    assert r.returncode == 0, r.stderr
    return path


def test_mkfs_makes_a_sparse_private_image(image, tmp_path):
    st = os.stat(image)
    assert st.st_size == 64 * MiB
    assert stat.S_IMODE(st.st_mode) == 0o600
    big = str(tmp_path / "big.img")
    r = daxfs("mkfs", big, "-s", "1G")
    assert r.returncode == 0 and r.stdout.startswith(f"{big}: 1024 MiB"), r
    st = os.stat(big)
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 2 * MiB  # only the written metadata takes space
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_mkfs_refuses_to_overwrite(image, tmp_path):
    before = digest(image)
    r = daxfs("mkfs", image, "--size", "32M")
    assert r.returncode != 0
    assert len(r.stderr.splitlines()) == 1 and "--force" in r.stderr and "daxfs image" in r.stderr
    assert digest(image) == before

    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    r = daxfs("mkfs", str(other), "--size", "32M")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "existing file" in r.stderr
    assert other.read_text() == "keep me"

    r = daxfs("mkfs", image, "--size", "32M", "--force")
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(image) == 32 * MiB


@pytest.mark.parametrize("size", ["lots", "12X", "-5M", ""])
def test_mkfs_bad_size_is_a_usage_error(tmp_path, size):
    path = tmp_path / "bad.img"
    r = daxfs("mkfs", str(path), "--size", size)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "size" in r.stderr
    assert not path.exists()


def test_inspect(image):
    r = daxfs("inspect", image)
    assert r.returncode == 0, r.stderr
    text = dict((k.strip(), v.strip()) for k, v in (line.split("  ", 1) for line in r.stdout.splitlines()))
    assert text["total blocks"] == str(64 * MiB // fmt.BLOCK_SIZE)
    assert text["state"] == "clean"
    r = daxfs("inspect", "--json", image)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    sb = superblock(image)
    assert info["total blocks"] == sb.total_blocks and info["data start"] == sb.data_start
    assert info["uuid"] == sb.uuid.hex() and info["size bytes"] == 64 * MiB
    assert info["blocks used"] == sb.data_start and info["inodes used"] == 2
    assert info["journal transactions to replay"] == 0


def test_fsck_exit_codes(image, tmp_path):
    f = FileSystem.open(image, durable=False)
    populate(f)
    f.close()
    r = daxfs("fsck", image)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines() == [r.stdout.splitlines()[-1]] and ": clean, 24 files, 3 directories" in r.stdout

    r = daxfs("fsck", "--json", image)
    assert r.returncode == 0 and json.loads(r.stdout)["clean"] is True

    leaked = superblock(image).total_blocks - 1
    set_bit(image, superblock(image).bitmap_start, leaked, True)
    r = daxfs("fsck", image)
    assert r.returncode == 4
    problem, summary = r.stdout.splitlines()
    assert problem == f"block {leaked}: marked in use, but nothing owns them"
    assert summary.startswith(f"{image}: 1 error, 24 files, 3 directories, ")
    report = json.loads(daxfs("fsck", "--json", image).stdout)
    assert report["problems"] == [{"where": f"block {leaked}", "what": "marked in use, but nothing owns them"}]

    r = daxfs("fsck", str(tmp_path / "missing.img"))
    assert r.returncode == 8 and len(r.stderr.splitlines()) == 1 and r.stdout == ""


def test_mkfs_takes_fractional_sizes(tmp_path):
    r = daxfs("mkfs", str(tmp_path / "f.img"), "--size", "1.5G")
    assert r.returncode == 0 and os.path.getsize(tmp_path / "f.img") == 3 << 29, r.stderr


def test_a_closed_pipe_ends_inspect_quietly(image):
    p = subprocess.run(f"{sys.executable} -m daxfs.cli inspect {image} | head -1", shell=True, capture_output=True,
                       text=True, timeout=60)
    assert p.stdout.startswith("image") and p.stderr == "", p.stderr


def test_inspect_says_a_healthy_journal_ends_normally(image):
    r = daxfs("inspect", image)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("journal ends"))
    assert "normal" in line and "magic" not in line, line


def test_top_level_help_cuts_no_description():
    r = daxfs("--help")
    commands = r.stdout.split("Commands:")[1]
    assert r.returncode == 0 and "..." not in commands and len(commands.splitlines()) > 8, r.stdout
