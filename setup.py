"""Only what pyproject.toml cannot say: two plain C shared libraries, built as Extensions so that
`pip install` compiles them (neither is a Python module, neither links libpython):
- the shim that gives the daemon the FUSE operations pyfuse3 cannot receive (daxfs/daemon/fuseshim.c;
  docs/design.md, "Operations pyfuse3 cannot receive"), loaded with ctypes and compiled against the
  libfuse3 that pyfuse3 itself compiles against (the same apt packages: libfuse3-dev, pkg-config);
- the preload library of `daxfs run` (daxfs/dax/preload.c; docs/run.md), which gives unmodified
  programs real DAX mappings with MAP_SYNC: it needs only libc."""

import subprocess

from setuptools import Extension, setup


def fuse3(flag: str) -> list[str]:
    return subprocess.run(["pkg-config", flag, "fuse3"], check=True, capture_output=True, text=True).stdout.split()


setup(ext_modules=[Extension("daxfs.daemon._fuseshim", ["daxfs/daemon/fuseshim.c"],
                             extra_compile_args=fuse3("--cflags") + ["-Wall", "-Wextra", "-Wno-unused-parameter"],
                             extra_link_args=fuse3("--libs") + ["-ldl"]),
                   Extension("daxfs.dax._preload", ["daxfs/dax/preload.c"],
                             extra_compile_args=["-Wall", "-Wextra", "-fvisibility=hidden", "-pthread"],
                             extra_link_args=["-pthread"])])
