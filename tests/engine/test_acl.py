"""POSIX ACLs without FUSE: the xattr format and its validation (acl.py), and what the engine does with
them (xattr.py: mode <-> ACL, S_ISGID, chmod; namespace.py: default ACL inheritance, umask)."""

from __future__ import annotations

import errno
import stat
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxfs.engine import acl
from daxfs.engine import format as fmt
from daxfs.engine.acl import GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, Caller, Entry
from daxfs.engine.errors import CorruptImage, FsError
from daxfs.engine.xattr import XATTR_CREATE, pack_xattrs
from helpers import crash, err, mkfile, problems, reopen

ROOT = fmt.ROOT_INO
NOBODY = Caller(65534, 65534)  # in no group of ours, no CAP_FSETID


def value(*entries: tuple) -> bytes:
    """An ACL xattr value from (tag, perm[, id]) tuples, packed as given (no checks)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i[0] if i else acl.UNDEFINED_ID)
                                           for t, p, *i in entries)


MINIMAL = value((USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4))
NAMED = value((USER_OBJ, 6), (USER, 6, 1000), (GROUP_OBJ, 4), (MASK, 6), (OTHER, 4))  # u:1000:rw, mask rw


# --- the format ------------------------------------------------------------------------------------------------
def test_parse_and_pack_round_trip():
    entries = acl.parse(NAMED)
    assert [(e.tag, e.perm, e.id) for e in entries] == [
        (USER_OBJ, 6, acl.UNDEFINED_ID), (USER, 6, 1000), (GROUP_OBJ, 4, acl.UNDEFINED_ID),
        (MASK, 6, acl.UNDEFINED_ID), (OTHER, 4, acl.UNDEFINED_ID)]
    assert acl.pack(entries) == NAMED
    assert acl.parse(value()) == []  # the header alone: the empty ACL
    # the id of an unnamed entry means nothing (the kernel ignores it): stored as undefined
    assert acl.pack(acl.parse(value((USER_OBJ, 7, 5), (GROUP_OBJ, 5, 6), (OTHER, 0, 7)))) == \
        value((USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 0))


@pytest.mark.parametrize("bad, why", [
    (b"", "no header"),
    (b"\x02\x00\x00", "short header"),
    (MINIMAL + b"\x00", "not 4 + 8n bytes"),
    (value((USER_OBJ, 6), (GROUP_OBJ, 4)), "no other::"),
    (value((GROUP_OBJ, 4), (USER_OBJ, 6), (OTHER, 4)), "out of order"),
    (value((USER_OBJ, 6), (USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4)), "user:: twice"),
    (value((USER_OBJ, 6), (USER, 6, 5), (GROUP_OBJ, 4), (OTHER, 4)), "named entry without mask"),
    (value((USER_OBJ, 6), (USER, 6), (GROUP_OBJ, 4), (MASK, 6), (OTHER, 4)), "named entry without id"),
    (value((USER_OBJ, 6), (GROUP_OBJ, 4), (GROUP, 4), (MASK, 6), (OTHER, 4)), "named group without id"),
    (value((USER_OBJ, 6), (GROUP_OBJ, 4), (MASK, 6), (MASK, 6), (OTHER, 4)), "mask twice"),
    (value((USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4), (OTHER, 4)), "other:: twice"),
    (value((USER_OBJ, 8), (GROUP_OBJ, 4), (OTHER, 4)), "perm beyond rwx"),
    (value((USER_OBJ, 6), (0x40, 4), (GROUP_OBJ, 4), (OTHER, 4)), "unknown tag"),
    (value((USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4), (USER, 4, 3)), "named entry after other::"),
])
def test_parse_refuses_what_the_kernel_refuses_with_einval(bad, why):
    assert err(acl.parse, bad) == errno.EINVAL, why


def test_parse_version_and_size_limits():
    assert err(acl.parse, struct.pack("<I", 1) + MINIMAL[4:]) == errno.EOPNOTSUPP  # as posix_acl_from_xattr
    many = value((USER_OBJ, 6), *[(USER, 4, i) for i in range(acl.MAX_ENTRIES)], (GROUP_OBJ, 4), (MASK, 4), (OTHER, 0))
    assert err(acl.parse, many) == errno.E2BIG


def test_parse_accepts_what_the_kernel_accepts():
    # a mask without named entries, and named entries not sorted by id (posix_acl_valid asks neither)
    assert len(acl.parse(value((USER_OBJ, 6), (GROUP_OBJ, 4), (MASK, 4), (OTHER, 0)))) == 4
    assert len(acl.parse(value((USER_OBJ, 6), (USER, 4, 9), (USER, 4, 3), (GROUP_OBJ, 4), (MASK, 4), (OTHER, 0)))) == 6


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=80),
                 st.lists(st.tuples(st.sampled_from([0, 1, 2, 4, 8, 0x10, 0x20, 0x40, 0xFFFF]),
                                    st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)), max_size=9)
                 .map(lambda es: value(*es))))
def test_hostile_bytes_give_an_errno_never_a_traceback(raw):
    try:
        entries = acl.parse(raw)
    except FsError as e:
        assert e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.E2BIG)
    else:  # what it accepts packs back to a value it accepts again, unchanged
        assert acl.parse(acl.pack(entries)) == entries


# --- the rules, as fs/posix_acl.c has them ------------------------------------------------------------------
def test_equiv_mode_and_update_mode():
    assert acl.equiv_mode(acl.parse(MINIMAL), 0o100777) == (0o100644, False)
    assert acl.equiv_mode(acl.parse(NAMED), 0o100600) == (0o100664, True)  # group bits are the mask's
    mode, keep = acl.update_mode(acl.parse(MINIMAL), 0o102755, 50, NOBODY)
    assert mode == 0o100644 and keep is None  # S_ISGID dropped: not in group 50
    mode, keep = acl.update_mode(acl.parse(NAMED), 0o102755, 50, Caller(1, 50))
    assert mode == 0o102664 and keep == acl.parse(NAMED)
    assert acl.update_mode(acl.parse(MINIMAL), 0o102755, 50, Caller(1, 7, frozenset({50})))[0] == 0o102644
    assert acl.update_mode(acl.parse(MINIMAL), 0o102755, 50, Caller(1, 7, cap_fsetid=True))[0] == 0o102644


def test_chmod_sets_owner_mask_and_other():
    out = acl.chmod(acl.parse(NAMED), 0o750)
    assert [(e.tag, e.perm) for e in out] == [(USER_OBJ, 7), (USER, 6), (GROUP_OBJ, 4), (MASK, 5), (OTHER, 0)]
    out = acl.chmod(acl.parse(MINIMAL), 0o750)  # no mask: group:: takes the group bits
    assert [(e.tag, e.perm) for e in out] == [(USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 0)]


def test_create_masks_the_default_acl_with_the_mode():
    default = acl.parse(value((USER_OBJ, 7), (USER, 7, 1000), (GROUP_OBJ, 5), (MASK, 7), (OTHER, 0)))
    mode, access, inherited = acl.create(default, stat.S_IFREG | 0o666)
    assert mode == stat.S_IFREG | 0o660 and inherited is None
    assert [(e.tag, e.perm) for e in access] == [(USER_OBJ, 6), (USER, 7), (GROUP_OBJ, 5), (MASK, 6), (OTHER, 0)]
    mode, access, inherited = acl.create(default, stat.S_IFDIR | 0o755)
    assert mode == stat.S_IFDIR | 0o750 and inherited == default
    assert [(e.tag, e.perm) for e in access] == [(USER_OBJ, 7), (USER, 7), (GROUP_OBJ, 5), (MASK, 5), (OTHER, 0)]
    # a default ACL a mode can say: no access ACL, only the mode
    mode, access, _ = acl.create(acl.parse(value((USER_OBJ, 7), (GROUP_OBJ, 7), (OTHER, 5))), stat.S_IFREG | 0o666)
    assert mode == stat.S_IFREG | 0o664 and access is None


# --- the engine ----------------------------------------------------------------------------------------------
def acl_of(f, ino, name=acl.ACCESS):
    return [(e.tag, e.perm, e.id) for e in acl.parse(f.getxattr(ino, name))]


def test_setting_an_access_acl_sets_the_mode_and_a_minimal_one_is_no_record(fs):
    a = mkfile(fs, b"a", mode=0o600)
    c0 = fs.inode(a).ctime_ns
    fs.setxattr(a, acl.ACCESS, NAMED)
    assert stat.S_IMODE(fs.inode(a).mode) == 0o664 and fs.getxattr(a, acl.ACCESS) == NAMED
    assert fs.inode(a).ctime_ns > c0
    assert acl.ACCESS in fs.listxattr(a)
    fs.setxattr(a, acl.ACCESS, value((USER_OBJ, 7), (GROUP_OBJ, 0), (OTHER, 0)))  # setfacl -b, in effect
    assert stat.S_IMODE(fs.inode(a).mode) == 0o700
    assert err(fs.getxattr, a, acl.ACCESS) == errno.ENODATA and fs.listxattr(a) == []
    fs.removexattr(a, acl.ACCESS)  # removing an ACL there is not: no error, as on ext4
    assert err(fs.setxattr, a, acl.ACCESS, b"\x02\x00\x00\x00\x01") == errno.EINVAL
    assert stat.S_IMODE(fs.inode(a).mode) == 0o700  # a refused value changes nothing


def test_setfacl_by_a_caller_outside_the_group_clears_sgid(fs):
    a = mkfile(fs, b"a", mode=0o2775)
    fs.setattr(a, gid=50)
    fs.setxattr(a, acl.ACCESS, MINIMAL, caller=Caller(1000, 50))  # in the group: S_ISGID stays
    assert fs.inode(a).mode & 0o7777 == 0o2644
    fs.setxattr(a, acl.ACCESS, NAMED, caller=Caller(1000, 1000, frozenset({7})))
    assert fs.inode(a).mode & 0o7777 == 0o0664
    d = fs.mkdir(ROOT, b"d", 0o2775, 0, 50).ino
    fs.setxattr(d, acl.DEFAULT, NAMED, caller=NOBODY)  # a default ACL leaves the mode alone
    assert fs.inode(d).mode & 0o7777 == 0o2775


def test_default_acls_only_on_directories_and_no_acls_on_symlinks(fs):
    a = mkfile(fs, b"a")
    assert err(fs.setxattr, a, acl.DEFAULT, MINIMAL) == errno.EACCES
    fs.setxattr(a, acl.DEFAULT, value())  # an empty one is a removal: nothing to refuse
    ln = fs.symlink(ROOT, b"ln", b"a", 0, 0).ino
    assert err(fs.setxattr, ln, acl.ACCESS, MINIMAL) == errno.EOPNOTSUPP
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fs.setxattr(d, acl.DEFAULT, NAMED, XATTR_CREATE)
    assert err(fs.setxattr, d, acl.DEFAULT, NAMED, XATTR_CREATE) == errno.EEXIST
    fs.setxattr(d, acl.DEFAULT, value())
    assert err(fs.getxattr, d, acl.DEFAULT) == errno.ENODATA


def test_chmod_rewrites_the_access_acl(fs):
    a = mkfile(fs, b"a", mode=0o644)
    fs.setxattr(a, acl.ACCESS, NAMED)
    fs.setattr(a, mode=stat.S_IFREG | 0o640)
    assert acl_of(fs, a) == [(USER_OBJ, 6, acl.UNDEFINED_ID), (USER, 6, 1000), (GROUP_OBJ, 4, acl.UNDEFINED_ID),
                             (MASK, 4, acl.UNDEFINED_ID), (OTHER, 0, acl.UNDEFINED_ID)]
    assert stat.S_IMODE(fs.inode(a).mode) == 0o640
    fs.setattr(a, uid=5)  # no mode: the ACL stays as it is
    assert acl_of(fs, a)[3] == (MASK, 4, acl.UNDEFINED_ID)


def test_umask_applies_only_without_a_default_acl(fs):
    plain = fs.create(ROOT, b"plain", stat.S_IFREG | 0o666, 0, 0, umask=0o027)
    assert stat.S_IMODE(plain.mode) == 0o640 and fs.listxattr(plain.ino) == []
    assert stat.S_IMODE(fs.mkdir(ROOT, b"pd", 0o777, 0, 0, umask=0o022).mode) == 0o755
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    default = value((USER_OBJ, 7), (USER, 7, 1000), (GROUP_OBJ, 5), (MASK, 7), (OTHER, 0))
    fs.setxattr(d, acl.DEFAULT, default)
    f = fs.create(d, b"f", stat.S_IFREG | 0o666, 0, 0, umask=0o077)
    assert stat.S_IMODE(f.mode) == 0o660  # the umask's 077 does not apply
    assert acl_of(fs, f.ino) == [(USER_OBJ, 6, acl.UNDEFINED_ID), (USER, 7, 1000), (GROUP_OBJ, 5, acl.UNDEFINED_ID),
                                 (MASK, 6, acl.UNDEFINED_ID), (OTHER, 0, acl.UNDEFINED_ID)]
    assert err(fs.getxattr, f.ino, acl.DEFAULT) == errno.ENODATA  # files inherit no default ACL
    assert f.ctime_ns == f.mtime_ns
    sub = fs.mkdir(d, b"sub", 0o777, 0, 0, umask=0o077)
    assert stat.S_IMODE(sub.mode) == 0o770 and fs.getxattr(sub.ino, acl.DEFAULT) == default
    assert acl_of(fs, sub.ino)[3] == (MASK, 7, acl.UNDEFINED_ID)
    fifo = fs.mknod(d, b"fifo", stat.S_IFIFO | 0o644, 0, 0, umask=0o022)
    assert stat.S_IMODE(fifo.mode) == 0o640 and acl.ACCESS in fs.listxattr(fifo.ino)
    ln = fs.symlink(d, b"ln", b"f", 0, 0)  # symlinks take nothing from it
    assert stat.S_IMODE(ln.mode) == 0o777 and fs.listxattr(ln.ino) == []
    # and the inherited ACLs of a subdirectory go on down
    assert fs.getxattr(fs.mkdir(sub.ino, b"deeper", 0o700, 0, 0).ino, acl.DEFAULT) == default


def test_inherited_acls_and_mode_commit_with_the_create(image):
    f = reopen(image)
    d = f.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    f.setxattr(d, acl.DEFAULT, NAMED)
    f.commit()
    sub = f.mkdir(d, b"sub", 0o777, 0, 0, umask=0o022).ino
    a = mkfile(f, b"a", mode=0o600)
    f.setxattr(a, acl.ACCESS, NAMED)
    f.commit()
    crash(f)
    g = reopen(image)
    assert g.getxattr(sub, acl.DEFAULT) == NAMED and acl.ACCESS in g.listxattr(sub)
    assert stat.S_IMODE(g.inode(sub).mode) == 0o664  # 777 masked by user::rw, mask rw, other r
    assert stat.S_IMODE(g.inode(a).mode) == 0o664 and g.getxattr(a, acl.ACCESS) == NAMED
    g.close()


def test_noacl_refuses_acls_and_hides_stored_ones(fs):
    a = mkfile(fs, b"a", mode=0o600)
    fs.setxattr(a, acl.ACCESS, NAMED)
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fs.setxattr(d, acl.DEFAULT, NAMED)
    fs.acls = False
    for fn, args in ((fs.setxattr, (a, acl.ACCESS, NAMED)), (fs.getxattr, (a, acl.ACCESS)),
                     (fs.removexattr, (a, acl.ACCESS))):
        assert err(fn, *args) == errno.EOPNOTSUPP
    assert fs.listxattr(a) == []
    f = fs.create(d, b"f", stat.S_IFREG | 0o666, 0, 0, umask=0o022)  # no inheritance: the umask applies
    assert stat.S_IMODE(f.mode) == 0o644
    fs.setattr(a, mode=stat.S_IFREG | 0o600)  # chmod leaves the hidden ACL alone
    fs.acls = True
    assert fs.getxattr(a, acl.ACCESS) == NAMED and fs.listxattr(f.ino) == []


def test_a_damaged_stored_default_acl_is_corruption_not_a_traceback(fs):
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    fs.setxattr(d, b"user.x", b"1")
    inode = fs.inode(d)
    bad = {b"user.x": b"1", acl.DEFAULT: b"\x02\x00\x00\x00garbage!"}
    fs._store_xattrs(inode, bad)  # as a damaged image would hold it
    with pytest.raises(CorruptImage, match="posix_acl_default"):
        fs.create(d, b"f", stat.S_IFREG | 0o644, 0, 0)
    assert err(fs.lookup, d, b"f") == errno.ENOENT  # refused before it changed anything
    assert pack_xattrs(fs._xattrs(fs.inode(d))) == pack_xattrs(bad)


def test_fsck_reports_a_damaged_acl(image):
    f = reopen(image)
    a = mkfile(f, b"a")
    f.setxattr(a, acl.ACCESS, NAMED)
    assert problems_after_close(f, image) == []
    f = reopen(image)
    f._store_xattrs(f.inode(a), {acl.ACCESS: NAMED[:-8]})  # other:: cut off, as damage would
    assert problems_after_close(f, image) == [
        f"inode {a}: extended attribute system.posix_acl_access: invalid ACL: entries missing (user::, group::, "
        "other::, and mask:: with named entries): Invalid argument"]


def problems_after_close(f, image) -> list[str]:
    f.close()
    return problems(image)
