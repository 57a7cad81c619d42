"""Direct-access clients and crash-test workers stay light: they load neither trio nor pyfuse3."""

from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT = ["daxfs.dax", "daxfs.testing.workload", "daxfs.engine.fs", "daxfs.engine.fsck", "daxfs.cli.main"]


@pytest.mark.parametrize("module", LIGHT)
def test_importing_loads_neither_trio_nor_pyfuse3(module):
    code = f"import sys, {module}; print(sorted(m for m in ('trio', 'pyfuse3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", (module, out)
