"""The namespace: names, links and the life of an inode (lookup, create, link, unlink, rename,
readdir), and the orphan directory that keeps unlinked-but-open inodes until the kernel forgets them.

Directories are slot chains indexed in memory (directory.py). An inode whose last link goes while the
kernel still holds references (lookup counts, ref/forget) is listed in the hidden orphan directory
(inode 2) and freed at its last forget, or by the next open after a crash.

A new inode's permissions: in a directory with a default ACL (and ACLs on), the new inode's access
ACL and mode come from that ACL and the mode asked for, and a new directory inherits the default ACL
itself (acl.create, ext4's posix_acl_create), all in the create's own step; no umask applies then.
Without one, the caller's umask (the kernel passes it separately) is applied here.
"""

from __future__ import annotations

import errno
import stat

from daxfs.engine import acl
from daxfs.engine import format as fmt
from daxfs.engine.core import BS, now_ns
from daxfs.engine.directory import Directory, Entry, name_problem
from daxfs.engine.errors import FsError
from daxfs.engine.inode import Inode
from daxfs.engine.xattr import Xattrs, pack_xattrs

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
LINK_MAX = 65000


class Namespace(Xattrs):
    def lookup(self, parent: int, name: bytes) -> Inode:
        d = self.inode(parent)
        if name == b".":
            return d
        if name == b"..":
            self._dir(d)
            return self.inode(d.parent)
        _check_name(name)
        e = self._dir(d).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        return self.inode(e.ino)

    def _new_entry_checks(self, parent: Inode, name: bytes) -> Directory:
        _check_name(name)
        d = self._dir(parent)
        if parent.nlink == 0:
            raise FsError(errno.ENOENT)  # the directory was removed
        if d.lookup(name) is not None:
            raise FsError(errno.EEXIST)
        return d

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0, umask: int = 0) -> Inode:
        """Regular files, fifos, sockets, device nodes (all plain inodes here)."""
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        return self._create(parent, name, mode, uid, gid, rdev, umask=umask)

    create = mknod

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int, umask: int = 0) -> Inode:
        return self._create(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid, umask=umask)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        if not target or len(target) >= BS:
            raise FsError(errno.ENAMETOOLONG if target else errno.ENOENT)
        inode = self._create(parent, name, stat.S_IFLNK | 0o777, uid, gid, extra_blocks=1, inherit=False)
        self._write(inode, 0, target, begin=False)
        return inode

    def _create(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                extra_blocks: int = 0, umask: int = 0, inherit: bool = True) -> Inode:
        parent = self.inode(parent_ino)
        d = self._new_entry_checks(parent, name)
        if stat.S_ISDIR(mode) and parent.nlink >= LINK_MAX:  # a subdirectory is a link of its parent
            raise FsError(errno.EMLINK)
        mode, acls = self._initial_acls(parent, mode, umask) if inherit else (mode, {})
        blob = pack_xattrs(acls)
        self._begin(extra_blocks + (len(blob) // fmt.PAYLOAD + 1 if acls else 0))
        if self.alloc.inodes.free_now < 1:
            raise FsError(errno.ENOSPC)
        if parent.mode & stat.S_ISGID:  # BSD group semantics for setgid directories
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inode = self.inodes.new(mode, uid, gid, now_ns(), rdev)
        if stat.S_ISDIR(mode):
            inode.nlink = 2
            inode.parent = parent.ino
            parent.nlink += 1
        else:
            inode.nlink = 1
        self.inodes.save(inode)
        if acls:
            self._write_xattrs(inode, acls, blob, touch=False)
        d.add(name, inode.ino, mode)
        self._touch(parent)
        return inode

    def _initial_acls(self, parent: Inode, mode: int, umask: int) -> tuple[int, dict[bytes, bytes]]:
        """The new inode's mode and ACL records (module doc): from the parent's default ACL if it has
        one, else the mode less the umask."""
        default = self._stored_acl(parent, acl.DEFAULT) if self.acls else None
        if default is None:
            return mode & ~(umask & 0o777), {}
        mode, access, inherited = acl.create(default, mode)
        records = {}
        if access is not None:
            records[acl.ACCESS] = acl.pack(access)
        if inherited is not None:
            records[acl.DEFAULT] = acl.pack(inherited)
        return mode, records

    def readlink(self, ino: int) -> bytes:
        inode = self.inode(ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL)
        return self.read(ino, 0, inode.size)

    def link(self, ino: int, new_parent: int, name: bytes) -> Inode:
        inode = self.inode(ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM)
        if inode.nlink >= LINK_MAX:
            raise FsError(errno.EMLINK)
        parent = self.inode(new_parent)
        d = self._new_entry_checks(parent, name)
        self._begin()
        was_orphan = inode.nlink == 0
        d.add(name, ino, inode.mode)
        inode.nlink += 1
        if was_orphan:  # linkat(O_TMPFILE-like) resurrection
            self._dir(self.inode(fmt.ORPHAN_INO)).remove(b"%d" % ino)
        self._touch(inode, m=False)
        self._touch(parent)
        return inode

    def unlink(self, parent: int, name: bytes) -> None:
        p = self.inode(parent)
        _check_name(name)
        e = self._dir(p).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        inode = self.inode(e.ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        self._begin(freeing=True)
        self._dir(p).remove(name)
        self._touch(p)
        self._drop_link(inode)

    def rmdir(self, parent: int, name: bytes) -> None:
        p = self.inode(parent)
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        _check_name(name)
        e = self._dir(p).lookup(name)
        if e is None:
            raise FsError(errno.ENOENT)
        inode = self.inode(e.ino)
        if len(self._dir(inode)):
            raise FsError(errno.ENOTEMPTY)
        self._begin(freeing=True)
        self._dir(p).remove(name)
        p.nlink -= 1
        self._touch(p)
        inode.nlink = 0
        self._unreferenced(inode)

    def _drop_link(self, inode: Inode) -> None:
        inode.nlink -= 1
        self._touch(inode, m=False)
        if inode.nlink == 0:
            self._unreferenced(inode)

    def _unreferenced(self, inode: Inode) -> None:
        """nlink reached 0: free now, or keep as an orphan while the kernel still references it."""
        self._dax_revoke(inode, 0, fmt.MAX_FILE_BLOCKS * BS, unlink=True)
        if inode.refs > 0:
            self.inodes.save(inode)
            self._dir(self.inode(fmt.ORPHAN_INO)).add(b"%d" % inode.ino, inode.ino, inode.mode)
        else:
            self._destroy(inode)

    def _destroy(self, inode: Inode) -> None:
        """Free an inode with no links and no references: its data, chains and record. The chain
        blocks are freed whole, not emptied slot by slot, so the transaction touches only bitmap
        blocks (mkfs sizes the journal to hold all of them) and the inode's table block."""
        for e in self._extents(inode):
            self.alloc.free_blocks(e.pblk, e.len)
        for blk in inode.extents.chain.blocks():
            self.alloc.free_blocks(blk, 1)
        if stat.S_ISDIR(inode.mode):
            for blk in self._dir(inode).chain.blocks():
                self.alloc.free_blocks(blk, 1)
        for blk in self._xattr_blocks(inode):
            self.alloc.free_blocks(blk, 1)
        self.inodes.delete(inode)

    def ref(self, ino: int, n: int = 1) -> None:
        """The kernel (or a test) holds n more references to ino (lookup counts)."""
        self.inode(ino).refs += n

    def forget(self, ino: int, n: int = 1) -> None:
        inode = self.inodes.cache.get(ino)
        if inode is None:
            return
        inode.refs = max(0, inode.refs - n)
        if inode.refs == 0 and inode.nlink == 0 and not self.readonly:
            self._begin(freeing=True)
            self._dir(self.inode(fmt.ORPHAN_INO)).remove(b"%d" % ino)
            self._destroy(inode)
        elif inode.refs == 0:
            if not self.readonly:
                self._save_lazy(ino)  # a lazytime atime must not be forgotten with the inode
            self.inodes.evict(inode, self.committed_tid)

    def _free_orphans(self) -> int:
        orphans = self._dir(self.inode(fmt.ORPHAN_INO))
        names = list(orphans.entries)
        for name in names:
            if self.journal.running_full():
                self.commit()  # each orphan is freed whole within one transaction
            inode = self.inode(orphans.lookup(name).ino)
            if inode.nlink == 0:
                orphans.remove(name)
                self._destroy(inode)
            else:  # a truncate that took several transactions was cut short: finish it
                self._truncate_down(inode, inode.size)
        return len(names)

    def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL)
        _check_name(old)
        _check_name(new)
        op, np_ = self.inode(old_parent), self.inode(new_parent)
        od, nd = self._dir(op), self._dir(np_)
        se = od.lookup(old)
        if se is None:
            raise FsError(errno.ENOENT)
        src = self.inode(se.ino)
        te = nd.lookup(new)
        target = self.inode(te.ino) if te is not None else None
        if target is not None and target.ino == src.ino:
            return  # POSIX: same file, nothing to do
        if flags & RENAME_NOREPLACE and target is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE and target is None:
            raise FsError(errno.ENOENT)
        if stat.S_ISDIR(src.mode) and new_parent != old_parent and self._is_ancestor(src.ino, np_):
            raise FsError(errno.EINVAL)
        if target is not None and stat.S_ISDIR(target.mode) and old_parent != new_parent \
                and self._is_ancestor(target.ino, op):
            raise FsError(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)
        if target is not None and not flags & RENAME_EXCHANGE:
            if stat.S_ISDIR(src.mode) and not stat.S_ISDIR(target.mode):
                raise FsError(errno.ENOTDIR)
            if not stat.S_ISDIR(src.mode) and stat.S_ISDIR(target.mode):
                raise FsError(errno.EISDIR)
            if stat.S_ISDIR(target.mode) and len(self._dir(target)):
                raise FsError(errno.ENOTEMPTY)
        if stat.S_ISDIR(src.mode) and np_ is not op and target is None and np_.nlink >= LINK_MAX:
            raise FsError(errno.EMLINK)
        self._begin(freeing=target is not None)
        if flags & RENAME_EXCHANGE:
            od.retarget(old, target.ino, target.mode)
            nd.retarget(new, src.ino, src.mode)
            self._reparent(target, np_, op)
            self._reparent(src, op, np_)
            for i in (src, target):
                self._touch(i, m=False)
        else:
            if target is not None:
                nd.retarget(new, src.ino, src.mode)
                if stat.S_ISDIR(target.mode):
                    np_.nlink -= 1
                    target.nlink = 0
                    self._unreferenced(target)
                else:
                    self._drop_link(target)
            else:
                nd.add(new, src.ino, src.mode)
            od.remove(old)
            self._reparent(src, op, np_)
            self._touch(src, m=False)
        self._touch(op)
        if np_ is not op:
            self._touch(np_)

    def _reparent(self, inode: Inode, old: Inode, new: Inode) -> None:
        if stat.S_ISDIR(inode.mode) and old is not new:
            inode.parent = new.ino
            old.nlink -= 1
            new.nlink += 1
            self.inodes.save(inode)

    def _is_ancestor(self, ino: int, d: Inode) -> bool:
        """Is inode `ino` the directory d or one of d's ancestors?"""
        seen = 0
        while True:
            if d.ino == ino:
                return True
            if d.ino == fmt.ROOT_INO or seen > self.sb.inode_count:
                return False
            d = self.inode(d.parent)
            seen += 1

    def readdir(self, ino: int, cookie: int = 0):
        """(cookie, name, inode number, dtype) after `cookie`, "." and ".." first."""
        inode = self.inode(ino)
        d = self._dir(inode)
        if cookie == 0:
            self._accessed(inode)
        if cookie < 1:
            yield 1, b".", inode.ino, stat.S_IFDIR >> 12
        if cookie < 2:
            yield 2, b"..", inode.parent, stat.S_IFDIR >> 12
        for c, e in d.after(max(cookie, 2)):
            yield c, e.name, e.ino, e.dtype

    def entry(self, parent: int, name: bytes) -> Entry | None:
        return self._dir(self.inode(parent)).lookup(name)


def _check_name(name: bytes) -> None:
    if name_problem(name):
        raise FsError(errno.ENAMETOOLONG if len(name) > fmt.MAX_NAME else errno.EINVAL)


