"""The FUSE operations pyfuse3 cannot receive: fallocate(2), lseek(2) SEEK_DATA/SEEK_HOLE and
copy_file_range(2), through the C shim fuseshim.c (docs/design.md, "Operations pyfuse3 cannot
receive", says why this route and what it costs to keep).

load() must run before the process first imports pyfuse3: the shim defines fuse_session_new, and
pyfuse3's extension binds that symbol when it is loaded (Python loads extensions RTLD_NOW), to the
first definition in the global scope, which is the shim's only if the shim is already there (loaded
RTLD_GLOBAL). mount.serve() does it first thing; sessions() tells afterwards whether it worked.

The shim's C handlers run inside pyfuse3's trio loop, on its thread, with the GIL held, while
libfuse processes a request: the callbacks here run the operation synchronously, as pyfuse3's
handlers run their engine calls, and return the result or -errno for the shim to reply. A handler
that must wait (a commit before the acknowledgement) returns a coroutine instead: it runs as a task
of the daemon's nursery and replies when it is done.

The shim also negotiates FUSE_HANDLE_KILLPRIV_V2 (fuseshim.c says how): the kernel then stops
asking for security.capability before every write, and the daemon clears S_ISUID/S_ISGID itself.
For a request the kernel flags (a write, truncate or O_TRUNC open by a caller without CAP_FSETID;
a chown), the shim calls ops.kill_setid(ino, opcode, setattr_valid) before the request runs;
caller() tells the handlers of fallocate and copy_file_range, which carry no flag, who asked.

This module imports neither trio nor pyfuse3 (it is loaded before them).
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import inspect
import logging
import os
import sys
import threading
from ctypes import c_int, c_int64, c_uint64, c_void_p
from typing import Callable

log = logging.getLogger("daxfs")

LIBRARY = "daxfs.daemon._fuseshim"  # built by setup.py from fuseshim.c
DEFERRED = -(1 << 63)  # "the reply comes later" (SHIM_DEFERRED in fuseshim.c)
OP_FALLOCATE, OP_LSEEK, OP_COPY_FILE_RANGE = 1, 2, 3

FALLOCATE = ctypes.CFUNCTYPE(c_int64, c_void_p, c_uint64, c_uint64, c_int, c_int64, c_int64)
LSEEK = ctypes.CFUNCTYPE(c_int64, c_void_p, c_uint64, c_uint64, c_int64, c_int)
COPY_FILE_RANGE = ctypes.CFUNCTYPE(c_int64, c_void_p, c_uint64, c_uint64, c_int64, c_uint64, c_uint64, c_int64,
                                   c_uint64, c_int)
KILL = ctypes.CFUNCTYPE(None, c_uint64, ctypes.c_uint32, ctypes.c_uint32)


class Shim:
    """The loaded shim. attach() gives it the handlers (DaxOperations' fallocate, lseek and
    copy_file_range: each returns an int, -errno, or a coroutine that returns one) and a way to
    start tasks (a trio nursery's start_soon) for the replies that must wait."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.lib = lib
        # The session loop's entry runs pyfuse3's handlers: it must keep the GIL, as only PyDLL does.
        self.serve_one = ctypes.PyDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_NOW).daxfs_shim_serve_one
        self.serve_one.restype = c_int
        lib.daxfs_shim_session_fd.restype = c_int
        lib.daxfs_shim_register.argtypes = [FALLOCATE, LSEEK, COPY_FILE_RANGE]
        lib.daxfs_shim_reply.argtypes = [c_void_p, c_int, c_int64]
        lib.daxfs_shim_sessions.restype = c_int
        lib.daxfs_shim_register_kill.argtypes = [KILL]
        lib.daxfs_shim_killpriv_v2.restype = c_int
        lib.daxfs_shim_caller.argtypes = [ctypes.c_void_p]
        self._caller = (ctypes.c_uint32 * 3)()
        self.spawn: Callable | None = None
        self._callbacks: tuple = ()  # ctypes callbacks must outlive every call from C

    def sessions(self) -> int:
        """How many FUSE sessions were created through the shim (1 once pyfuse3.init() used it)."""
        return self.lib.daxfs_shim_sessions()

    def session_fd(self) -> int:
        """The FUSE session's /dev/fuse descriptor (-1 before pyfuse3.init)."""
        return self.lib.daxfs_shim_session_fd()

    def killpriv_v2(self) -> bool:
        """Whether the kernel agreed to HANDLE_KILLPRIV_V2 (known once the mount's INIT is answered)."""
        return bool(self.lib.daxfs_shim_killpriv_v2())

    def caller(self) -> tuple[int, int, int]:
        """(uid, gid, pid) of the request being processed: valid inside a shim callback."""
        self.lib.daxfs_shim_caller(self._caller)
        return self._caller[0], self._caller[1], self._caller[2]

    def attach(self, ops) -> None:
        """Call on the thread that will run trio (and so pyfuse3's loop): the handlers refuse any other."""
        loop_thread = threading.get_ident()

        def call(op: int, fn: Callable, req: int, *args) -> int:
            if threading.get_ident() != loop_thread:  # pyfuse3 changed how it runs requests: unsafe
                log.error("FUSE shim: operation %d called off pyfuse3's loop thread; answered EIO", op)
                return -errno.EIO
            try:  # an exception must not escape: ctypes would print it and reply 0, success
                r = fn(*args)
                if inspect.iscoroutine(r):
                    if self.spawn is None:  # cannot happen: requests are served only inside the nursery
                        r.close()
                        return -errno.EIO
                    self.spawn(self._reply_later, req, op, r)
                    return DEFERRED
                return int(r)
            except Exception:
                log.exception("FUSE shim: operation %d failed; answered EIO", op)
                return -errno.EIO

        self._callbacks = (FALLOCATE(lambda req, *a: call(OP_FALLOCATE, ops.fallocate, req, *a)),
                           LSEEK(lambda req, *a: call(OP_LSEEK, ops.lseek, req, *a)),
                           COPY_FILE_RANGE(lambda req, *a: call(OP_COPY_FILE_RANGE, ops.copy_file_range, req, *a)))
        self.lib.daxfs_shim_register(*self._callbacks)

        def kill(ino: int, opcode: int, valid: int) -> None:
            try:  # nothing may escape into C; a failure leaves the bits, logged
                ops.kill_setid(ino, opcode, valid)
            except Exception:
                log.exception("FUSE shim: clearing setid bits of inode %d failed", ino)
        self._kill = KILL(kill)
        ops.request_caller = self.caller
        ops.killpriv_v2 = self.killpriv_v2
        self.lib.daxfs_shim_register_kill(self._kill)

    async def _reply_later(self, req: int, op: int, coro) -> None:
        self.lib.daxfs_shim_reply(req, op, await coro)


def load() -> Shim | None:
    """Load the shim into the global symbol scope; None (logged) if it cannot be: the daemon then
    works as before, and the kernel answers those operations itself. DAXFS_FUSE_SHIM=0 in the
    daemon's environment leaves it out (to compare, or should a libfuse upgrade break it)."""
    if os.environ.get("DAXFS_FUSE_SHIM", "1") == "0":
        log.info("DAXFS_FUSE_SHIM=0: no FUSE shim; no fallocate, SEEK_DATA/SEEK_HOLE or copy_file_range")
        return None
    if "pyfuse3" in sys.modules:
        log.warning("pyfuse3 was imported before the FUSE shim: no fallocate, SEEK_DATA/SEEK_HOLE or "
                    "copy_file_range on this mount")
    spec = importlib.util.find_spec(LIBRARY)
    if spec is None or spec.origin is None:
        log.warning("the FUSE shim (%s) is not built; reinstall daxfs (pip install): no fallocate, "
                    "SEEK_DATA/SEEK_HOLE or copy_file_range on this mount", LIBRARY)
        return None
    return Shim(ctypes.CDLL(spec.origin, mode=os.RTLD_GLOBAL | os.RTLD_NOW), spec.origin)
