"""The documentation's examples run as they are written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

DOCS = os.path.join(REPO, "docs")


def example(doc: str, name: str) -> str:
    """The code block that follows `<!-- example: NAME -->` in docs/DOC."""
    with open(os.path.join(DOCS, doc)) as f:
        text = f.read()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"no example {name} in docs/{doc}"
    return m.group(1)


@pytest.mark.mount
def test_crash_testing_example_runs_with_the_pytest_plugin(tmp_path):
    """docs/crash-testing.md's pytest example, run by pytest with daxfs's plugin as a user would."""
    (tmp_path / "test_log_survives.py").write_text(example("crash-testing.md", "test_log_survives.py"))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                        str(tmp_path / "test_log_survives.py")], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "2 passed" in p.stdout, p.stdout + p.stderr
