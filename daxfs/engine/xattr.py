"""Extended attributes: one blob per inode in an xattr chain (chain.py), and their record format.

The blob is a sequence of records, each `name_len u8 | value_len u32 | name | value`, rewritten
whole on every change; fsck reads it through unpack_xattrs. `user.daxfs.map_sync` is no record: it
is the inode's FLAG_MAP_SYNC (sync mode for this file, like chattr +S), shown as an attribute.

POSIX ACLs are records too (`system.posix_acl_access`, `system.posix_acl_default`, in acl.py's
format), but setting one is more than storing it, as on ext4: the access ACL decides the mode's
permission bits (and is not stored at all when the mode says everything it says), setting it may
clear S_ISGID, and chmod rewrites it (setattr below). Each of these is one step: the mode and the
record change in the same transaction. With `acls` off (the mount's noacl) they are refused with
EOPNOTSUPP and not listed, as on ext4 mounted noacl. Inheritance at create is namespace.py's.
"""

from __future__ import annotations

import errno
import stat
import struct

from daxfs.engine import acl
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
    acls = True  # POSIX ACLs interpreted and enforced (mount option acl, the default; noacl: False)

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
        if name in acl.NAMES and not self.acls:
            raise FsError(errno.EOPNOTSUPP)
        try:
            return self._xattrs(inode)[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    def listxattr(self, ino: int) -> list[bytes]:
        inode = self.inode(ino)
        names = [n for n in self._xattrs(inode) if self.acls or n not in acl.NAMES]
        if inode.flags & fmt.FLAG_MAP_SYNC:
            names.append(MAP_SYNC_XATTR)
        return names

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0, caller: acl.Caller = acl.ROOT) -> None:
        """Set an attribute; `caller` matters only to an access ACL, which may clear S_ISGID."""
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
        if name in acl.NAMES:
            self._set_acl(inode, name, value, flags, caller)
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
        if name in acl.NAMES and not self.acls:
            raise FsError(errno.EOPNOTSUPP)
        xattrs = self._xattrs(inode)
        if name not in xattrs:
            if name in acl.NAMES:  # removing an ACL there is not is no error on ext4 either
                return
            raise FsError(errno.ENODATA)
        new = dict(xattrs)
        del new[name]
        self._store_xattrs(inode, new)

    # --- POSIX ACLs -------------------------------------------------------------------------------
    def _set_acl(self, inode: Inode, name: bytes, value: bytes, flags: int, caller: acl.Caller) -> None:
        """setxattr of an ACL: what ext4's set_posix_acl() and ext4_set_acl() do. An empty ACL (the
        header alone) removes it."""
        if not self.acls or stat.S_ISLNK(inode.mode):  # Linux has no ACLs on symlinks
            raise FsError(errno.EOPNOTSUPP)
        entries = acl.parse(value)
        xattrs = self._xattrs(inode)
        _check_xattr_flags(flags, name in xattrs)
        new = dict(xattrs)
        mode = inode.mode
        if name == acl.DEFAULT:
            if not stat.S_ISDIR(inode.mode):
                if entries:
                    raise FsError(errno.EACCES)  # only directories have default ACLs
                return
            keep: acl.Acl | None = entries or None
        else:
            keep = None
            if entries:
                mode, keep = acl.update_mode(entries, inode.mode, inode.gid, caller)
        if keep is None:
            new.pop(name, None)
        else:
            new[name] = acl.pack(keep)
        self._store_xattrs(inode, new, mode)

    def _stored_acl(self, inode: Inode, name: bytes) -> acl.Acl | None:
        """The ACL `name` of an inode as stored (None: none); a value that is no valid ACL is damage."""
        value = self._xattrs(inode).get(name)
        if value is None:
            return None
        try:
            return acl.parse(value) or None
        except FsError as e:
            raise CorruptImage(f"inode {inode.ino}: extended attribute {name.decode()}: {e}",
                               inode.xattr_head) from None

    def setattr(self, ino: int, *, mode: int | None = None, **kw) -> Inode:
        """setattr, and chmod's change to the access ACL (posix_acl_chmod) in the same step: the kernel
        leaves both to us."""
        inode = self.inode(ino)
        current = self._stored_acl(inode, acl.ACCESS) if mode is not None and self.acls else None
        if current is None:
            return super().setattr(ino, mode=mode, **kw)
        new = dict(self._xattrs(inode))
        new[acl.ACCESS] = acl.pack(acl.chmod(current, mode))
        blob = self._xattr_blob(new)
        self._begin(len(blob) // fmt.PAYLOAD + 1)  # room for both, so that no commit comes between
        inode = super().setattr(ino, mode=mode, **kw)
        self._write_xattrs(inode, new, blob)
        return inode

    def _set_map_sync(self, inode: Inode, on: bool) -> None:
        self._begin()
        inode.flags = (inode.flags & ~fmt.FLAG_MAP_SYNC) | (fmt.FLAG_MAP_SYNC if on else 0)
        self._touch(inode, m=False)

    def _store_xattrs(self, inode: Inode, xattrs: dict[bytes, bytes], mode: int | None = None) -> None:
        """Replace the inode's attributes (and its mode, for an access ACL) in one step."""
        blob = self._xattr_blob(xattrs)
        self._begin(len(blob) // fmt.PAYLOAD + 1, freeing=len(xattrs) < len(inode.xattrs or {}))
        if mode is not None:
            inode.mode = mode
        self._write_xattrs(inode, xattrs, blob)

    def _xattr_blob(self, xattrs: dict[bytes, bytes]) -> bytes:
        blob = pack_xattrs(xattrs)
        limit = fmt.XATTR_BLOB_MAX[self.sb.version]
        if len(blob) > limit:
            raise FsError(errno.ENOSPC, f"extended attributes of one inode are limited to {limit >> 10} KiB")
        return blob

    def _write_xattrs(self, inode: Inode, xattrs: dict[bytes, bytes], blob: bytes, touch: bool = True) -> None:
        """Write the blob into the running transaction: the caller has begun the step (_begin) with room
        for len(blob) // PAYLOAD + 1 blocks. `touch`: the change moves ctime (not for a new inode)."""
        self._xattrs(inode)  # the old chain's blocks, to reuse or free
        blocks = write_blob(self.journal, self.alloc.alloc_block, lambda b: self.alloc.free_blocks(b, 1),
                            inode.ino, inode.xattr_blocks, blob)
        inode.xattr_blocks = blocks
        inode.xattr_head = blocks[0] if blocks else 0
        inode.xattrs = xattrs
        if touch:
            self._touch(inode, m=False)
        else:
            self.inodes.save(inode)


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


