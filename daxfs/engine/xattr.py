"""Extended attributes: one blob per inode in an xattr chain (chain.py), and their record format.

The blob is a sequence of records, each `name_len u8 | value_len u32 | name | value`, rewritten
whole on every change; fsck reads it through unpack_xattrs. `user.daxfs.map_sync` is no record: it
is the inode's FLAG_MAP_SYNC (sync mode for this file, like chattr +S), shown as an attribute.
"""

from __future__ import annotations

import errno
import struct

from daxfs.engine import format as fmt
from daxfs.engine.attrs import Attributes
from daxfs.engine.chain import read_blob, write_blob
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.inode import Inode

XATTR_CREATE = 1
XATTR_REPLACE = 2
MAP_SYNC_XATTR = b"user.daxfs.map_sync"
NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")
_XA = struct.Struct("<BI")


class Xattrs(Attributes):
    def _xattr_blocks(self, inode: Inode) -> list[int]:
        self._xattrs(inode)
        return inode.xattr_blocks

    def _xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        if inode.xattrs is None:
            blob, inode.xattr_blocks = read_blob(self.journal, inode.xattr_head, inode.ino)
            inode.xattrs = unpack_xattrs(blob, inode.ino)
        return inode.xattrs

    def getxattr(self, ino: int, name: bytes) -> bytes:
        inode = self.inode(ino)
        if name == MAP_SYNC_XATTR:
            if inode.flags & fmt.FLAG_MAP_SYNC:
                return b"1"
            raise FsError(errno.ENODATA)
        try:
            return self._xattrs(inode)[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    def listxattr(self, ino: int) -> list[bytes]:
        inode = self.inode(ino)
        names = list(self._xattrs(inode))
        if inode.flags & fmt.FLAG_MAP_SYNC:
            names.append(MAP_SYNC_XATTR)
        return names

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        inode = self.inode(ino)
        if not name or len(name) > fmt.MAX_NAME:
            raise FsError(errno.ERANGE)
        if name_problem(name):
            raise FsError(errno.EINVAL, name_problem(name))
        if name == MAP_SYNC_XATTR:
            exists = bool(inode.flags & fmt.FLAG_MAP_SYNC)
            _check_xattr_flags(flags, exists)
            if value.strip() not in (b"0", b"1"):
                raise FsError(errno.EINVAL, "user.daxfs.map_sync takes 0 or 1")
            self._set_map_sync(inode, value.strip() == b"1")
            return
        if len(value) > fmt.XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG)
        xattrs = self._xattrs(inode)
        _check_xattr_flags(flags, name in xattrs)
        new = dict(xattrs)
        new[name] = bytes(value)
        self._store_xattrs(inode, new)

    def removexattr(self, ino: int, name: bytes) -> None:
        inode = self.inode(ino)
        if name == MAP_SYNC_XATTR:
            if not inode.flags & fmt.FLAG_MAP_SYNC:
                raise FsError(errno.ENODATA)
            self._set_map_sync(inode, False)
            return
        xattrs = self._xattrs(inode)
        if name not in xattrs:
            raise FsError(errno.ENODATA)
        new = dict(xattrs)
        del new[name]
        self._store_xattrs(inode, new)

    def _set_map_sync(self, inode: Inode, on: bool) -> None:
        self._begin()
        inode.flags = (inode.flags & ~fmt.FLAG_MAP_SYNC) | (fmt.FLAG_MAP_SYNC if on else 0)
        self._touch(inode, m=False)

    def _store_xattrs(self, inode: Inode, xattrs: dict[bytes, bytes]) -> None:
        blob = pack_xattrs(xattrs)
        limit = fmt.XATTR_BLOB_MAX[self.sb.version]
        if len(blob) > limit:
            raise FsError(errno.ENOSPC, f"extended attributes of one inode are limited to {limit >> 10} KiB")
        self._begin(len(blob) // fmt.PAYLOAD + 1, freeing=len(xattrs) < len(inode.xattrs or {}))
        blocks = write_blob(self.journal, self.alloc.alloc_block, lambda b: self.alloc.free_blocks(b, 1),
                            inode.ino, inode.xattr_blocks, blob)
        inode.xattr_blocks = blocks
        inode.xattr_head = blocks[0] if blocks else 0
        inode.xattrs = xattrs
        self._touch(inode, m=False)


def _check_xattr_flags(flags: int, exists: bool) -> None:
    if flags & XATTR_CREATE and exists:
        raise FsError(errno.EEXIST)
    if flags & XATTR_REPLACE and not exists:
        raise FsError(errno.ENODATA)



def pack_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    out = bytearray()
    for name, value in xattrs.items():
        out += _XA.pack(len(name), len(value)) + name + value
    return bytes(out)


def unpack_xattrs(blob: bytes, ino: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(blob):
        if pos + _XA.size > len(blob):
            raise CorruptImage(f"inode {ino}: truncated extended attribute")
        nl, vl = _XA.unpack_from(blob, pos)
        pos += _XA.size
        if nl == 0 or pos + nl + vl > len(blob):
            raise CorruptImage(f"inode {ino}: bad extended attribute lengths")
        name = blob[pos:pos + nl]
        what = name_problem(name) or ("a second attribute of that name" if name in out else "")
        if what:
            raise CorruptImage(f"inode {ino}: extended attribute {name!r}: {what}")
        out[name] = blob[pos + nl:pos + nl + vl]
        pos += nl + vl
    return out


def name_problem(name: bytes) -> str:
    """What the kernel would refuse in an attribute name ("" if nothing): listxattr hands names out
    NUL-separated, so a NUL inside one breaks every listing."""
    if b"\0" in name:
        return "name contains NUL"
    if not name.startswith(NAMESPACES):
        return "name has no namespace (user., trusted., security., system.)"
    return ""


