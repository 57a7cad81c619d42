"""POSIX access control lists: their xattr format, and the rules that keep them and the mode consistent.

The kernel checks permissions against ACLs itself (the daemon negotiates FUSE_POSIX_ACL) and stores them
as the extended attributes `system.posix_acl_access` and `system.posix_acl_default`, in the inode's
ordinary xattr records (xattr.py). What the kernel leaves to a FUSE file system, and this module does, is
what ext4 gets from fs/posix_acl.c (docs/design.md, "POSIX ACLs"): the mode that setting an access ACL
implies (`update_mode`), the ACL that chmod implies (`chmod`), and what a new inode inherits from its
directory's default ACL (`create`).

The value is the kernel's posix_acl_xattr format (include/uapi/linux/posix_acl_xattr.h), little-endian:

    version u32 (= 2) | entries: tag u16 | perm u16 | id u32   (8 bytes each)

Tags: USER_OBJ 0x01, USER 0x02, GROUP_OBJ 0x04, GROUP 0x08, MASK 0x10, OTHER 0x20; perm is rwx in the
low 3 bits; id is a uid or gid for USER and GROUP and 0xFFFFFFFF (undefined) for the others. A valid
ACL is what the kernel's posix_acl_valid() accepts, no more and no less: entries in tag order (USER_OBJ,
USER..., GROUP_OBJ, GROUP..., MASK, OTHER), exactly one USER_OBJ, GROUP_OBJ and OTHER, at most one
MASK and one whenever there are named entries, a defined id on each named entry (the kernel does not
ask for named entries sorted by id; libacl sorts them). `parse` refuses anything else with EINVAL
(a version other than 2 with EOPNOTSUPP, as the kernel does), whatever the bytes: values come from
clients, and from images.
"""

from __future__ import annotations

import errno
import stat
import struct
from dataclasses import dataclass, field

from daxfs.engine.errors import FsError

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
MAX_ENTRIES = (4096 - 4) // 8  # Linux refuses an ACL xattr larger than a page (fs/fuse/acl.c: E2BIG)

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
assert _HEADER.size == 4 and _ENTRY.size == 8
_ORDER = (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER)
_NAMED = (USER, GROUP)


@dataclass
class Entry:
    tag: int
    perm: int
    id: int = UNDEFINED_ID


Acl = list[Entry]


@dataclass(frozen=True)
class Caller:
    """Who makes a request, as far as the SGID rules need to know: fsuid, fsgid, supplementary groups,
    and whether it has CAP_FSETID (keeps S_ISGID whatever its groups)."""
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    cap_fsetid: bool = False

    def in_group_or_capable(self, gid: int) -> bool:
        """The kernel's in_group_or_capable(): may this caller keep S_ISGID on a file of group gid?"""
        return self.cap_fsetid or gid == self.gid or gid in self.groups


ROOT = Caller(0, 0, cap_fsetid=True)


def parse(value: bytes) -> Acl:
    """The entries of an ACL xattr value, checked as the kernel's posix_acl_valid() checks them; FsError
    EINVAL for anything malformed. A header alone is the empty ACL ([])."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise FsError(errno.EINVAL, f"an ACL is 4 + 8*n bytes, not {len(value)}")
    (version,) = _HEADER.unpack_from(value, 0)
    if version != VERSION:  # as posix_acl_from_xattr() answers
        raise FsError(errno.EOPNOTSUPP, f"ACL version {version}, not {VERSION}")
    n = (len(value) - _HEADER.size) // _ENTRY.size
    if n > MAX_ENTRIES:
        raise FsError(errno.E2BIG, f"an ACL of {n} entries (at most {MAX_ENTRIES})")
    acl = [Entry(*_ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size)) for i in range(n)]
    problem = _problem(acl) if acl else ""
    if problem:
        raise FsError(errno.EINVAL, f"invalid ACL: {problem}")
    for e in acl:
        e.perm &= 0o7
        if e.tag not in _NAMED:
            e.id = UNDEFINED_ID
    return acl


def _problem(acl: Acl) -> str:
    """What the kernel's posix_acl_valid() refuses, as its state machine walks the entries."""
    state, needs_mask = USER_OBJ, False
    for e in acl:
        if e.perm & ~0o7:
            return f"permission bits {e.perm:#o} beyond rwx"
        if e.tag in _NAMED and e.id == UNDEFINED_ID:
            return "a named entry without an id"
        if e.tag == USER_OBJ and state == USER_OBJ:
            state = USER
        elif e.tag == USER and state == USER:
            needs_mask = True
        elif e.tag == GROUP_OBJ and state == USER:
            state = GROUP
        elif e.tag == GROUP and state == GROUP:
            needs_mask = True
        elif e.tag == MASK and state == GROUP:
            state = OTHER
        elif e.tag == OTHER and (state == OTHER or (state == GROUP and not needs_mask)):
            state = 0
        elif e.tag not in _ORDER:
            return f"unknown tag {e.tag:#x}"
        else:
            return "entries missing, repeated or out of order (user::, user:..., group::, group:..., " \
                   "mask::, other::)"
    return "" if state == 0 else "entries missing (user::, group::, other::, and mask:: with named entries)"


def pack(acl: Acl) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in acl)


def _find(acl: Acl, tag: int) -> Entry | None:
    return next((e for e in acl if e.tag == tag), None)


def equiv_mode(acl: Acl, mode: int) -> tuple[int, bool]:
    """posix_acl_equiv_mode(): mode with its rwx bits as the ACL grants them (group bits: the mask's if
    there is one), and whether the ACL says more than a mode can (named entries or a mask)."""
    perms = 0
    extended = False
    for e in acl:
        if e.tag == USER_OBJ:
            perms |= e.perm << 6
        elif e.tag == GROUP_OBJ:
            perms |= e.perm << 3
        elif e.tag == OTHER:
            perms |= e.perm
        elif e.tag == MASK:
            perms = (perms & ~0o070) | (e.perm << 3)
            extended = True
        else:
            extended = True
    return (mode & ~0o777) | perms, extended


def update_mode(acl: Acl, mode: int, gid: int, caller: Caller) -> tuple[int, Acl | None]:
    """posix_acl_update_mode(): setting access ACL `acl` on an inode of mode `mode` and group `gid`.
    Returns the new mode and the ACL to store (None when the mode says it all: nothing to store). A
    caller neither in the file's group nor with CAP_FSETID loses S_ISGID, as on chmod."""
    mode, extended = equiv_mode(acl, mode)
    if not caller.in_group_or_capable(gid):
        mode &= ~stat.S_ISGID
    return mode, acl if extended else None


def chmod(acl: Acl, mode: int) -> Acl:
    """__posix_acl_chmod(): the access ACL after chmod to `mode`: user:: and other:: take the owner's
    and others' bits, the mask (group:: when there is no mask) the group bits; named entries stay."""
    out = [Entry(e.tag, e.perm, e.id) for e in acl]
    mask = _find(out, MASK) or _find(out, GROUP_OBJ)
    for e in out:
        if e.tag == USER_OBJ:
            e.perm = (mode >> 6) & 0o7
        elif e.tag == OTHER:
            e.perm = mode & 0o7
    if mask is not None:
        mask.perm = (mode >> 3) & 0o7
    return out


def create(default: Acl, mode: int) -> tuple[int, Acl | None, Acl | None]:
    """posix_acl_create() for a new inode of `mode` (with its type bits; not a symlink) in a directory
    whose default ACL is `default` (non-empty). No umask applies: the default ACL replaces it. Returns
    the new mode, its access ACL (None when the mode says it all) and, for a directory, its default
    ACL (the parent's, unchanged)."""
    acl = [Entry(e.tag, e.perm, e.id) for e in default]
    perms = mode & 0o777
    group_obj = mask = None
    extended = False
    for e in acl:  # posix_acl_create_masq(): each class keeps what both the mode and the ACL grant
        if e.tag == USER_OBJ:
            e.perm &= perms >> 6
            perms &= (e.perm << 6) | ~0o700
        elif e.tag == OTHER:
            e.perm &= perms & 0o7
            perms &= e.perm | ~0o007
        elif e.tag == GROUP_OBJ:
            group_obj = e
        elif e.tag == MASK:
            mask = e
            extended = True
        else:
            extended = True
    g = mask or group_obj
    if g is None:  # parse() never lets such an ACL through
        raise FsError(errno.EINVAL, "default ACL without group:: entry")
    g.perm &= (perms >> 3) & 0o7
    perms &= (g.perm << 3) | ~0o070
    new_mode = (mode & ~0o777) | perms
    return new_mode, acl if extended else None, default if stat.S_ISDIR(mode) else None
