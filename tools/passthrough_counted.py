#!/usr/bin/env python3
"""Run pyfuse3's examples/passthroughfs.py with request counters, and optionally with extended
attributes: the baselines of tools/bench_fuse.py.

    passthrough_counted.py PASSTHROUGHFS_PY COUNTS_JSON [--xattr] -- SOURCE MOUNTPOINT [passthroughfs options]

passthroughfs.py itself is not changed (nor kept in this repository): it is imported from the path
given, its `Operations` class is subclassed here at run time, and its own main() runs with that
subclass in its place.

Counting: every request handler of the class (every coroutine method pyfuse3.Operations defines) is
wrapped to count its calls, by pyfuse3 method name. That is one count per FUSE request, except that
pyfuse3 itself calls getxattr before a setxattr with XATTR_CREATE or XATTR_REPLACE. On SIGUSR1 the
counts are written as JSON, {"seq": N, "requests": {op: count}}, to COUNTS_JSON (a temporary file
renamed into place, so a reader never sees half a file); N counts the dumps, so that the reader can
tell the answer to its own signal from an older one.

--xattr makes the *fair* baseline: it answers what the kernel asks a file system that has extended
attributes, as daxfs has them. passthroughfs.py as shipped implements no getxattr: its first answer
is ENOSYS, and the kernel then stops asking for the whole mount, whereas on a mount that answers
getxattr the kernel asks for `security.capability` before every write(2) (file_remove_privs). The
same goes for fsync: passthroughfs.py answers ENOSYS, after which the kernel makes every fsync(2)
succeed without a request, i.e. passthroughfs would promise no durability over a real disk; daxfs
must answer fsync. So --xattr adds getxattr, setxattr, listxattr, removexattr (forwarded to os.* on
the source path) and fsync, fsyncdir (forwarded to os.fsync/os.fdatasync). Nothing else: flush in
particular stays unanswered (ENOSYS), as it promises nothing; a file system that answers it pays one
more request per close(2), and the benchmark should show that cost rather than hide it.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import inspect
import json
import os
import signal
import sys

import pyfuse3
from pyfuse3 import FUSEError


def load(path: str):
    spec = importlib.util.spec_from_file_location("passthroughfs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["passthroughfs"] = mod
    spec.loader.exec_module(mod)
    return mod


def oserror(exc: OSError) -> FUSEError:
    return FUSEError(exc.errno or errno.EIO)


def with_xattrs(base: type) -> type:
    """passthroughfs's Operations plus extended attributes and fsync, forwarded to the source."""

    class XattrOperations(base):
        async def getxattr(self, inode, name, ctx):
            try:
                return os.getxattr(self._inode_to_path(inode), name, follow_symlinks=False)
            except OSError as exc:
                raise oserror(exc) from None

        async def setxattr(self, inode, name, value, ctx):
            try:
                os.setxattr(self._inode_to_path(inode), name, value, follow_symlinks=False)
            except OSError as exc:
                raise oserror(exc) from None

        async def listxattr(self, inode, ctx):
            try:
                return [os.fsencode(n) for n in os.listxattr(self._inode_to_path(inode), follow_symlinks=False)]
            except OSError as exc:
                raise oserror(exc) from None

        async def removexattr(self, inode, name, ctx):
            try:
                os.removexattr(self._inode_to_path(inode), name, follow_symlinks=False)
            except OSError as exc:
                raise oserror(exc) from None

        async def fsync(self, fh, datasync):
            try:
                (os.fdatasync if datasync else os.fsync)(fh)  # passthroughfs's fh is the source's fd
            except OSError as exc:
                raise oserror(exc) from None

        async def fsyncdir(self, fh, datasync):
            try:  # passthroughfs's directory handle is the inode
                fd = os.open(self._inode_to_path(fh), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise oserror(exc) from None

    return XattrOperations


def counted(base: type, counts: dict[str, int]) -> type:
    """A subclass of `base` whose every request handler counts its calls in `counts`."""
    ops = {name for name, fn in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(fn)}
    namespace = {}
    for name in sorted(ops):
        fn = getattr(base, name)

        def make(name=name, fn=fn):
            @functools.wraps(fn)
            async def wrapper(self, *args, **kwargs):
                counts[name] = counts.get(name, 0) + 1
                return await fn(self, *args, **kwargs)
            return wrapper

        namespace[name] = make()
    return type("Counted" + base.__name__, (base,), namespace)


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv or len(argv[:argv.index("--")]) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[1])
    ours, theirs = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    script, counts_path = ours[0], ours[1]
    xattr = "--xattr" in ours[2:]
    mod = load(script)
    counts: dict[str, int] = {}
    seq = 0

    def dump(signum, frame):
        nonlocal seq
        seq += 1
        tmp = counts_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"seq": seq, "requests": dict(counts)}, f)
        os.replace(tmp, counts_path)

    signal.signal(signal.SIGUSR1, dump)
    base = with_xattrs(mod.Operations) if xattr else mod.Operations
    mod.Operations = counted(base, counts)
    sys.argv = [script] + theirs
    mod.main()


if __name__ == "__main__":
    main()
