"""The pyfuse3 adapter: FUSE requests in, FileSystem calls out, and the MAP_SYNC rule (syncrule.py)
asked before a write or an fsync is acknowledged.

Thin by design: every handler checks nothing the engine or the kernel already checks
(default_permissions makes the kernel check access), turns FsError into FUSEError, and keeps only
what FUSE itself needs: file handles and lookup counts (FileSystem.ref/forget). No request may take
the daemon down: an unexpected exception in a handler is logged with its traceback, counted
(request_errors in `daxfs stats`) and answered EIO.

Each handler runs its engine calls without an await in between, so two requests never interleave
inside one metadata change; the only await in a request is the wait for a commit.

fallocate, lseek (SEEK_DATA/SEEK_HOLE) and copy_file_range are not pyfuse3's: the C shim delivers
them (fuseshim.py) to synchronous handlers that return the reply, or a coroutine when the reply
must wait for a commit.

Caching: the kernel may cache attributes and entries for ATTR_TIMEOUT seconds because every change
reaches the file system through this daemon, which invalidates the kernel's copy where it changes
something behind the kernel's back (preallocation through the side channel). The writeback cache
stays off: the kernel must never acknowledge a write the daemon has not seen.

Side channels, all through extended attributes so that the kernel checks permissions first, are
listed in daxfs.dax.protocol (stats, map, prealloc, punch, control); setting prealloc or punch needs
write permission, as setting any user.* attribute does.

POSIX ACLs: the kernel enforces them (enable_acl, FUSE_POSIX_ACL) and leaves keeping mode and ACL
consistent, inheritance and the umask to us (engine/acl.py): create, mknod and mkdir pass the
caller's umask on, and setting an access ACL passes who the caller is, for the S_ISGID rule.

Direct mappings (daxfs.dax, faults.py) store into pmem behind the page cache. So that read() sees
those stores at once, a file with a live direct mapping is opened with direct_io: its reads skip
the page cache. (Such handles cannot be mmap(2)ed MAP_SHARED; docs/dax.md.)
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from daxfs.daemon import proc
from daxfs.daemon.committer import Committer
from daxfs.daemon.stats import DaemonStats
from daxfs.daemon.syncrule import SyncRule
from daxfs.dax import protocol
from daxfs.engine import acl, crashpoint
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.extent import STATE_NAMES
from daxfs.engine.fs import FileSystem
from daxfs.engine.inode import Inode

log = logging.getLogger("daxfs")

ATTR_TIMEOUT = 60.0
STATS_XATTR = protocol.STATS_XATTR.encode()
CONTROL_XATTR = protocol.CONTROL_XATTR.encode()
MAP_XATTR = protocol.MAP_XATTR.encode()
PREALLOC_XATTR = protocol.PREALLOC_XATTR.encode()
PUNCH_XATTR = protocol.PUNCH_XATTR.encode()
SIDE_CHANNELS = (STATS_XATTR, MAP_XATTR, CONTROL_XATTR)  # read-only: setting them is EPERM
MAP_LIMIT = 60 * 1024  # an xattr value must fit in 64 KiB
# setattr: which of pyfuse3's SetattrFields flags carries which attribute, and its engine keyword.
SETATTR_FIELDS = (("update_mode", "mode", "st_mode"), ("update_uid", "uid", "st_uid"), ("update_gid", "gid", "st_gid"),
                  ("update_size", "size", "st_size"), ("update_atime", "atime_ns", "st_atime_ns"),
                  ("update_mtime", "mtime_ns", "st_mtime_ns"), ("update_ctime", "ctime_ns", "st_ctime_ns"))
# The requests the kernel flags for clearing setid bits (HANDLE_KILLPRIV_V2; fuseshim.py), and
# setattr's owner fields (linux/fuse.h).
FUSE_SETATTR, FUSE_OPEN, FUSE_WRITE = 4, 14, 16
FATTR_UID, FATTR_GID = 1 << 1, 1 << 2
SETID = stat.S_ISUID | stat.S_ISGID


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) >= (major, minor)
    except ValueError:
        return False


DIRECT_WRITES_COHERENT = _kernel_at_least(6, 6)  # FUSE direct writes invalidate the cached range


@dataclass
class Handle:
    ino: int
    sync: bool  # opened with O_SYNC or O_DSYNC


def fuse_errors(fn):
    """Count the request; engine errors become FUSE errors; corruption is logged and answered EIO, and
    so is any other exception, with its traceback: no request takes the mount down."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        requests = self.stats.requests
        requests[name] = requests.get(name, 0) + 1
        try:
            return await fn(self, *args, **kwargs)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except CorruptImage as e:
            log.error("corruption found during %s: %s", name, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except Exception:
            self.stats.request_errors += 1
            log.exception("%s%r failed; answered EIO", name, args)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def shim_request(fn):
    """fuse_errors for the operations the C shim delivers (fuseshim.py): they run synchronously and
    return the reply (an int) or -errno, never raise; one whose reply must wait returns a coroutine
    that does the same."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self, *args):
        requests = self.stats.requests
        requests[name] = requests.get(name, 0) + 1
        try:
            r = fn(self, *args)
        except Exception as e:
            return self._shim_error(name, args, e)
        return self._shim_later(name, args, r) if inspect.iscoroutine(r) else r
    return wrapper


class DaxOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # never: see the module doc
    enable_acl = True  # FUSE_POSIX_ACL; mount.py sets it from the acl / noacl option

    def __init__(self, fs: FileSystem, committer: Committer, rule: SyncRule, stats: DaemonStats) -> None:
        super().__init__()
        self.fs = fs
        self.committer = committer
        self.rule = rule
        self.stats = stats
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.control_path = ""  # the daemon's control socket (control.py), set once it listens
        self.request_caller = None  # (uid, gid, pid) of the request in a shim callback (fuseshim.py)
        self.killpriv_v2 = lambda: False  # the shim's: did the kernel agree to HANDLE_KILLPRIV_V2

    # --- helpers ----------------------------------------------------------------------------------
    def attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode.ino
        a.generation = inode.generation
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = inode.mode
        a.st_nlink = inode.nlink
        a.st_uid = inode.uid
        a.st_gid = inode.gid
        a.st_rdev = inode.rdev
        a.st_size = inode.size
        a.st_blksize = 4096
        a.st_blocks = inode.blocks * 8
        a.st_atime_ns = inode.atime_ns
        a.st_mtime_ns = inode.mtime_ns
        a.st_ctime_ns = inode.ctime_ns
        return a

    def _entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        """Reply to a request that gives the kernel a new reference (lookup count + 1)."""
        self.fs.ref(inode.ino)
        return self.attrs(inode)

    def _open_handle(self, ino: int, flags: int) -> pyfuse3.FileInfo:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(ino, bool(flags & (os.O_SYNC | os.O_DSYNC)))
        # Every change to a file's data reaches the kernel's page cache through this daemon's replies,
        # except stores through direct mappings: so an open keeps the cached pages (a warm read costs no
        # request) unless the file was mapped since the cache last started afresh (then it starts from
        # what pmem holds) While a direct mapping is live, stores go on behind the cache's back: then
        # no page cache at all (direct_io).
        mapped = self.fs.dax_mapped(ino)
        # ... and unless a read would update atime (relatime's rule, strictatime): a cached read never
        # reaches the daemon, so it could not.
        keep = ino not in self.fs.behind_cache and not self.fs.read_updates_atime(self.fs.inode(ino))
        if not mapped:
            self.fs.behind_cache.discard(ino)
        # A write-only handle cannot be mmap(2)ed at all (a mapping needs read access), so it loses
        # nothing by direct_io, and its writes skip the page-cache copy. Other handles' cached pages
        # stay coherent: before a direct write the kernel writes back and drops the cached pages of
        # the range (since Linux 6.6; tests/daemon/test_mount_direct_write.py checks it). Not for
        # O_SYNC/O_DSYNC: the kernel follows their cached writes with the fsync that persists the data.
        direct = mapped or (DIRECT_WRITES_COHERENT and (flags & os.O_ACCMODE) == os.O_WRONLY
                            and not flags & (os.O_SYNC | os.O_DSYNC))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=direct)

    # --- namespace --------------------------------------------------------------------------------
    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(self.fs.lookup(parent_inode, name))

    async def forget(self, inode_list):
        for ino, n in inode_list:
            try:
                self.fs.forget(ino, n)
            except (FsError, CorruptImage) as e:  # forget has no reply: log, never raise
                log.error("forget(%d): %s", ino, e)
            except Exception:
                self.stats.request_errors += 1
                log.exception("forget(%d) failed", ino)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self.attrs(self.fs.inode(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {key: getattr(attr, field) for flag, key, field in SETATTR_FIELDS if getattr(fields, flag)}
        return self.attrs(self.fs.setattr(inode, **kw))

    @fuse_errors
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(self.fs.mknod(parent_inode, name, mode, ctx.uid, ctx.gid, rdev, umask=ctx.umask))

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid, umask=ctx.umask))

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(self.fs.link(inode, new_parent_inode, new_name))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.rmdir(parent_inode, name)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # --- files ------------------------------------------------------------------------------------
    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        inode = self.fs.create(parent_inode, name, mode, ctx.uid, ctx.gid, umask=ctx.umask)
        return self._open_handle(inode.ino, flags), self._entry(inode)

    @fuse_errors
    async def open(self, inode, flags, ctx):
        mode = self.fs.inode(inode).mode
        if stat.S_ISDIR(mode):
            raise FsError(errno.EISDIR)
        if flags & os.O_TRUNC and stat.S_ISREG(mode):
            # libfuse3 turns on FUSE_CAP_ATOMIC_O_TRUNC by default (whatever pyfuse3's docs say): the
            # kernel then leaves O_TRUNC to open() instead of sending a setattr first.
            self.fs.setattr(inode, size=0)
        return self._open_handle(inode, flags)

    @fuse_errors
    async def read(self, fh, off, size):
        data = self.fs.read(self.handles[fh].ino, off, size)
        self.stats.reads += 1
        self.stats.bytes_read += len(data)
        return data

    @fuse_errors
    async def write(self, fh, off, buf):
        h = self.handles[fh]
        n = self.fs.write(h.ino, off, buf)
        self.stats.writes += 1
        self.stats.bytes_written += n
        if self.rule.is_sync(h.ino, h.sync):
            self.stats.sync_writes += 1
            tid = self.fs.tid_to_commit(h.ino, off, n)
            if tid and await self.rule.commit_before_ack(tid):  # stable blocks (tid 0): no await at all
                self.stats.sync_faults += 1
        crashpoint.hit("write.before_ack")
        return n

    async def flush(self, fh):
        pass  # close(2) promises nothing about durability; fsync does

    async def release(self, fh):
        self.handles.pop(fh, None)

    @fuse_errors
    async def fsync(self, fh, datasync):
        self.stats.fsyncs += 1
        ino = self.handles[fh].ino
        self.fs.persist_data(ino)
        # fdatasync commits only the metadata that finds the data (mappings, i_size): the kernel sends
        # one after every O_DSYNC write, which must not commit when it wrote stable blocks.
        await self.rule.commit_before_ack(self.fs.sync_tid(ino, datasync))

    # --- directories ------------------------------------------------------------------------------
    @fuse_errors
    async def opendir(self, inode, ctx):
        self.fs.inode(inode)
        return inode

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        for cookie, name, ino, _ in self.fs.readdir(fh, start_id):
            dot = name in (b".", b"..")
            inode = self.fs.inode(ino)
            if not pyfuse3.readdir_reply(token, name, self.attrs(inode), cookie):
                return
            if not dot:  # readdirplus hands the kernel a reference, except for . and ..
                self.fs.ref(ino)

    async def releasedir(self, fh):
        pass

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        self.stats.fsyncs += 1
        await self.committer.wait_commit()

    @fuse_errors
    async def statfs(self, ctx):
        s = self.fs.statfs()
        v = pyfuse3.StatvfsData()
        v.f_bsize = v.f_frsize = s.block_size
        v.f_blocks = s.blocks
        v.f_bfree = s.blocks_free
        v.f_bavail = s.blocks_avail
        v.f_files = s.files
        v.f_ffree = v.f_favail = s.files_free
        v.f_namemax = s.namemax
        return v

    # --- setid bits: with HANDLE_KILLPRIV_V2 the kernel leaves clearing them to us (fuseshim.py) ----
    def kill_setid(self, ino: int, opcode: int, valid: int) -> None:
        """The shim calls this before a request the kernel flagged: a write, truncate or O_TRUNC open by a
        caller without CAP_FSETID, or a chown by anyone. A setattr's reply carries the new mode; after
        the others, the kernel's cached mode is dropped."""
        owner_change = opcode == FUSE_SETATTR and bool(valid & (FATTR_UID | FATTR_GID))
        try:
            if not self.fs.inode(ino).mode & SETID:
                return
            _, gid, pid = self.request_caller()
            capable = (lambda: proc.has_fsetid(pid)) if owner_change else (lambda: False)
            killed = self.fs.kill_setid(ino, self._in_group(gid, pid), capable, owner_change)
        except (FsError, CorruptImage):  # the request itself meets the same error and answers it
            return
        if killed and opcode != FUSE_SETATTR:
            pyfuse3.invalidate_inode(ino, attr_only=True)

    def _kill_setid_unflagged(self, ino: int) -> None:
        """fallocate and copy_file_range change data but carry no flag: /proc says whether the caller
        has CAP_FSETID (asked only of a file with setid bits)."""
        if self.request_caller is None or not self.fs.inode(ino).mode & SETID:
            return
        _, gid, pid = self.request_caller()
        if self.fs.kill_setid(ino, self._in_group(gid, pid), lambda: proc.has_fsetid(pid)):
            pyfuse3.invalidate_inode(ino, attr_only=True)

    @staticmethod
    def _in_group(fsgid: int, pid: int):
        return lambda file_gid: file_gid == fsgid or file_gid in proc.groups(pid)

    # --- what pyfuse3 cannot receive: fuseshim.py hands these over from libfuse -------------------
    # The kernel has checked the request (open for writing, modes it forwards, ranges) and drops
    # its cached pages and attributes of the range itself once we reply.
    @shim_request
    def fallocate(self, ino: int, fh: int, mode: int, off: int, length: int):
        self._kill_setid_unflagged(ino)  # as the VFS's file_modified() does first
        self.fs.fallocate(ino, mode, off, length)
        h = self.handles.get(fh)
        if h is not None and h.sync:  # O_SYNC/O_DSYNC: committed before the reply, as ext4 and XFS do
            return self._after_commit(self.fs.sync_tid(ino, datasync=True), 0)
        return 0  # otherwise, as on Linux, durable only at fsync/fdatasync (or the next commit)

    @shim_request
    def lseek(self, ino: int, fh: int, off: int, whence: int) -> int:
        return self.fs.seek(ino, off, whence)

    @shim_request
    def copy_file_range(self, ino_in: int, fh_in: int, off_in: int, ino_out: int, fh_out: int, off_out: int,
                        length: int, flags: int):
        if flags:
            raise FsError(errno.EINVAL)
        self._kill_setid_unflagged(ino_out)
        n = self.fs.copy_range(ino_in, off_in, ino_out, off_out, length)
        self.stats.bytes_written += n
        h = self.handles.get(fh_out)
        if n and self.rule.is_sync(ino_out, h is not None and h.sync):  # a write: the MAP_SYNC rule holds
            self.stats.sync_writes += 1
            return self._after_commit(self.fs.tid_to_commit(ino_out, off_out, n), n, sync_write=True)
        return n

    def _after_commit(self, tid: int, result: int, sync_write: bool = False):
        """The reply now if tid is committed (or 0), else a coroutine that replies after the commit."""
        if not tid or self.fs.committed_tid >= tid:
            return result

        async def ack() -> int:
            if await self.rule.commit_before_ack(tid) and sync_write:
                self.stats.sync_faults += 1
            return result
        return ack()

    def _shim_error(self, name: str, args: tuple, e: Exception) -> int:
        if isinstance(e, (FsError, pyfuse3.FUSEError)):
            return -e.errno
        if isinstance(e, CorruptImage):
            log.error("corruption found during %s: %s", name, e)
        else:
            self.stats.request_errors += 1
            log.error("%s%r failed; answered EIO", name, args, exc_info=e)
        return -errno.EIO

    async def _shim_later(self, name: str, args: tuple, coro) -> int:
        try:
            return await coro
        except Exception as e:
            return self._shim_error(name, args, e)

    # --- extended attributes and side channels ----------------------------------------------------
    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if name == STATS_XATTR:
            return json.dumps(self.stats_dict()).encode()
        if name == MAP_XATTR:
            return self.map_json(inode)
        if name == CONTROL_XATTR and self.control_path:
            return self.control_path.encode()
        return self.fs.getxattr(inode, name)

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if name in (PREALLOC_XATTR, PUNCH_XATTR):
            try:
                off, length = (int(x) for x in value.split())
            except ValueError:
                raise FsError(errno.EINVAL) from None
            if name == PREALLOC_XATTR:
                self.fs.prealloc(inode, off, length)
                pyfuse3.invalidate_inode(inode, attr_only=True)  # size and blocks changed behind the kernel
            else:
                self.fs.punch(inode, off, length)
                # the cached pages of the range are zeros now; in a thread, as the kernel waits for
                # pages under read, and those reads need this loop
                await trio.to_thread.run_sync(functools.partial(_drop_cache, inode))
            return
        if name in SIDE_CHANNELS:
            raise FsError(errno.EPERM)
        if name == acl.ACCESS:  # may clear S_ISGID: the kernel's FUSE_SETXATTR_ACL_KILL_SGID never reaches us
            caller = acl.Caller(ctx.uid, ctx.gid, frozenset(proc.groups(ctx.pid)), proc.has_fsetid(ctx.pid))
            self.fs.setxattr(inode, name, value, caller=caller)
            return
        self.fs.setxattr(inode, name, value)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return self.fs.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        self.fs.removexattr(inode, name)

    def stats_dict(self) -> dict:
        j = self.fs.journal
        self.stats.killpriv_v2 = self.killpriv_v2()
        return self.stats.as_dict(
            mode="map_sync" if self.rule.map_sync else "normal",
            image=self.fs.region.path,
            unstable_blocks=self.fs.unstable_blocks(),
            committed_tid=self.fs.committed_tid,
            running_tid=j.running_tid,
            running_blocks=len(j.running.blocks),
            dax_mappings=sum(not m.revoked for maps in self.fs.dax.values() for m in maps),
            checkpoints=j.stats_checkpoints,
            journal_used_blocks=j.used,
            journal_blocks=j.size)

    def map_json(self, ino: int) -> bytes:
        inode = self.fs.inode(ino)
        rows = []
        for m, stable in self.fs.map(ino):
            rows.append([m.lblk, m.len, m.pblk, STATE_NAMES[m.state], stable])
        doc = {"ino": ino, "size": inode.size, "blocks": inode.blocks, "block_size": 4096,
               "size_unstable": inode.unstable.size_tid > self.fs.committed_tid,
               "columns": ["file_block", "blocks", "pmem_block", "state", "stable"], "extents": rows}
        out = json.dumps(doc, separators=(",", ":")).encode()
        while len(out) > MAP_LIMIT and doc["extents"]:
            doc["extents"] = doc["extents"][: len(doc["extents"]) // 2]
            doc["truncated"] = True
            out = json.dumps(doc, separators=(",", ":")).encode()
        return out


def _drop_cache(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino)
    except OSError:
        pass  # the kernel does not know the inode (no cache to drop)
