"""Every example in README.md and docs/*.md runs as it is written, against a real mount.

An example is a code block right after a `<!-- example: NAME -->` line. NAME says how it runs:
  *.py with a `def test_`  pytest, with daxfs's plugin, as a user would run it;
  *.py                     python, with /mnt/pm standing for a fresh mount;
  *.sh                     bash -e in a fresh directory, with /mnt/pm a fresh (unmounted) directory and
                           .venv/bin/ the checkout's own; it must leave nothing mounted.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, is_mounted

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\s*```\w*\n(.*?)```", re.S)
BIN = os.path.dirname(sys.executable)


def examples() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        with open(doc) as f:
            found += [(os.path.relpath(doc, REPO), name, code) for name, code in EXAMPLE.findall(f.read())]
    return found


def test_the_docs_have_examples():
    names = {name for _, name, _ in examples()}
    assert {"by-hand.sh", "readme-dax.py", "dax.py", "test_log_survives.py"} <= names, names


@pytest.mark.mount
@pytest.mark.parametrize("doc, name, code", examples(), ids=[f"{d}:{n}" for d, n, _ in examples()])
def test_example_runs_as_written(doc, name, code, tmp_path, daxmount):
    if name.endswith(".py") and "def test_" in code:
        (tmp_path / name).write_text(code)
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                            str(tmp_path / name)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0 and " passed" in p.stdout and "failed" not in p.stdout, p.stdout + p.stderr
    elif name.endswith(".py"):
        m = daxmount()
        p = subprocess.run([sys.executable, "-c", code.replace("/mnt/pm", m.mnt)], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
    elif name.endswith(".sh"):
        mnt = str(tmp_path / "pm")
        script = code.replace("/mnt/pm", mnt).replace(".venv/bin/", BIN + "/")
        try:
            p = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=300,
                               stdin=subprocess.DEVNULL, cwd=tmp_path)
        finally:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-uz", mnt])
                pytest.fail(f"{doc}:{name} left {mnt} mounted")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "Traceback" not in p.stdout + p.stderr
    else:
        pytest.fail(f"{doc}: example {name}: name it *.py or *.sh")
