"""Only what pyproject.toml cannot say: the C shim that gives the daemon the FUSE operations pyfuse3
cannot receive (daxfs/daemon/fuseshim.c; docs/design.md, "Operations pyfuse3 cannot receive"). It is
a plain shared library loaded with ctypes, built as an Extension so that `pip install` compiles it
against the libfuse3 that pyfuse3 itself compiles against (the same apt packages: libfuse3-dev,
pkg-config)."""

import subprocess

from setuptools import Extension, setup


def fuse3(flag: str) -> list[str]:
    return subprocess.run(["pkg-config", flag, "fuse3"], check=True, capture_output=True, text=True).stdout.split()


setup(ext_modules=[Extension("daxfs.daemon._fuseshim", ["daxfs/daemon/fuseshim.c"],
                             extra_compile_args=fuse3("--cflags") + ["-Wall", "-Wextra", "-Wno-unused-parameter"],
                             extra_link_args=fuse3("--libs") + ["-ldl"])])
