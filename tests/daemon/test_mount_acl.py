"""POSIX ACLs through a real mount, with setfacl/getfacl (apt package `acl`, which `make deps` installs):
the kernel enforces them, the daemon keeps mode and ACL consistent, inherits default ACLs and applies
the S_ISGID rule of setfacl. The other users are uid 1000 and 1001 with no groups (setpriv), so the
mount has allow_other.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from daxfs.engine import acl
from helpers import errno_of, fresh_dir, j, mounted, read_file, write_file

pytestmark = pytest.mark.mount

ALICE, BOB = 1000, 1001  # no names needed: setfacl takes numeric ids
TEAM = 4242


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    with mounted(tmp_path_factory.mktemp("acl"), "allow_other") as m:
        yield m


@pytest.fixture
def d(mnt):
    return fresh_dir(mnt, 0o755)



def run(*cmd: str, uid: int | None = None, groups: tuple[int, ...] = (), cwd: str | None = None,
        umask: int = 0o022) -> subprocess.CompletedProcess:
    """A command, as root or (uid) as that user with gid = uid and only `groups` besides."""
    if uid is not None:
        g = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        cmd = ("setpriv", "--reuid", str(uid), "--regid", str(uid), *g, *cmd)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, preexec_fn=lambda: os.umask(umask))


def ok(*cmd: str, **kw) -> str:
    p = run(*cmd, **kw)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


def facl(path: str) -> list[str]:
    """getfacl's entries (no comments, ids numeric), effective rights left out."""
    return [line.split("\t")[0] for line in ok("getfacl", "-cnp", path).splitlines() if line]


def can_read(path: str, uid: int) -> bool:
    return run("cat", os.path.basename(path), uid=uid, cwd=os.path.dirname(path)).returncode == 0


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_named_user_entry_lets_one_user_in_and_the_mask_limits_it(d):
    p = j(d, "secret")
    write_file(p, b"for alice", mode=0o600)
    os.chmod(p, 0o600)
    assert not can_read(p, ALICE) and not can_read(p, BOB)
    ok("setfacl", "-m", f"u:{ALICE}:r", p)
    assert can_read(p, ALICE) and not can_read(p, BOB)
    assert mode(p) == 0o640  # the mask (r) shows as the group bits
    ok("setfacl", "-m", "m::---", p)  # the mask limits named entries
    assert not can_read(p, ALICE)
    ok("setfacl", "-m", "m::r", p)
    assert can_read(p, ALICE)
    ok("setfacl", "-x", f"u:{ALICE}", p)
    assert not can_read(p, ALICE)
    # a named group entry, and the caller's supplementary groups count
    ok("setfacl", "-m", f"g:{TEAM}:r", p)
    assert not can_read(p, BOB)
    assert run("cat", "secret", uid=BOB, groups=(TEAM,), cwd=d).returncode == 0
    # write through an ACL entry
    ok("setfacl", "-m", f"u:{ALICE}:rw", p)
    assert run("sh", "-c", "echo more >> secret", uid=ALICE, cwd=d).returncode == 0
    assert read_file(p) == b"for alicemore\n"


def test_mode_and_access_acl_stay_consistent(d):
    p = j(d, "f")
    write_file(p, b"", mode=0o644)
    os.chmod(p, 0o644)
    ok("setfacl", "-m", f"u:{ALICE}:rwx", p)
    assert mode(p) == 0o674  # group bits = the new mask, rwx (setfacl recalculates it)
    assert facl(p) == ["user::rw-", f"user:{ALICE}:rwx", "group::r--", "mask::rwx", "other::r--"]
    os.chmod(p, 0o640)  # chmod writes user::, the mask and other::
    assert facl(p) == ["user::rw-", f"user:{ALICE}:rwx", "group::r--", "mask::r--", "other::---"]
    assert not can_read(p, BOB) and can_read(p, ALICE)
    ok("setfacl", "-m", "u::r,o::r", p)
    assert mode(p) == 0o474  # setfacl recalculated the mask: rwx again
    ok("setfacl", "-b", p)  # back to a plain mode: no ACL record left
    assert acl.ACCESS.decode() not in os.listxattr(p)
    assert facl(p) == ["user::r--", "group::r--", "other::r--"] and mode(p) == 0o444
    assert "+" not in ok("ls", "-l", p).split()[0]
    # the kernel refuses a malformed ACL before the daemon sees it; either way it is EINVAL
    assert errno_of(os.setxattr, p, acl.ACCESS, b"\x02\x00\x00\x00\x01\x00") == errno.EINVAL
    assert errno_of(os.setxattr, p, acl.ACCESS, b"\x02\x00\x00\x00" + b"\x01\x00\x07\x00\xff\xff\xff\xff") \
        == errno.EINVAL
    assert mode(p) == 0o444


def test_a_default_acl_is_inherited_and_replaces_the_umask(d):
    ok("setfacl", "-d", "-m", f"u:{ALICE}:rwx,g::r-x,o::---", d)
    assert f"default:user:{ALICE}:rwx" in facl(d)
    ok("touch", j(d, "f"), umask=0)
    assert mode(j(d, "f")) == 0o660
    assert facl(j(d, "f")) == ["user::rw-", f"user:{ALICE}:rwx", "group::r-x", "mask::rw-", "other::---"]
    ok("mkdir", j(d, "sub"), umask=0)
    assert mode(j(d, "sub")) == 0o770
    assert [e for e in facl(j(d, "sub")) if e.startswith("default:")] == [
        "default:user::rwx", f"default:user:{ALICE}:rwx", "default:group::r-x", "default:mask::rwx",
        "default:other::---"]
    ok("mkdir", j(d, "sub", "deeper"), umask=0)  # and on down
    assert f"default:user:{ALICE}:rwx" in facl(j(d, "sub", "deeper"))
    ok("mkfifo", "-m", "0644", j(d, "fifo"))  # mknod too; mkfifo -m chmods after: mask r
    assert f"user:{ALICE}:rwx" in facl(j(d, "fifo"))
    os.symlink("f", j(d, "ln"))
    assert stat.S_IMODE(os.lstat(j(d, "ln")).st_mode) == 0o777
    # the access ACL a file inherited is enforced
    write_file(j(d, "f"), b"team data")
    assert can_read(j(d, "f"), ALICE) and not can_read(j(d, "f"), BOB)
    # without a default ACL the umask applies as always
    ok("touch", j(d, "sub", "..", "..", "plain"), umask=0o027)
    assert mode(j(os.path.dirname(d), "plain")) == 0o640
    os.unlink(j(os.path.dirname(d), "plain"))


def test_a_default_acl_ignores_the_umask(d):
    ok("setfacl", "-d", "-m", f"u:{ALICE}:rwx,g::rwx,o::---", d)
    ok("touch", j(d, "f"), umask=0o022)
    ok("mkdir", j(d, "sub"), umask=0o022)
    assert (mode(j(d, "f")), mode(j(d, "sub"))) == (0o660, 0o770)
    assert "mask::rw-" in facl(j(d, "f"))


def test_setfacl_clears_sgid_unless_the_caller_is_in_the_group(d):
    os.chmod(d, 0o777)
    for name in ("file", "dir"):
        p = j(d, name)
        if name == "dir":
            os.mkdir(p)
        else:
            write_file(p, b"")
        os.chown(p, ALICE, TEAM)
        os.chmod(p, 0o2775)
        ok("setfacl", "-m", "u::rwx", name, uid=ALICE, groups=(TEAM,), cwd=d)  # in the group: S_ISGID stays
        assert os.stat(p).st_mode & 0o7777 == 0o2775
        # not in TEAM, no CAP_FSETID: S_ISGID goes (setfacl calls nothing when the ACL would not change)
        ok("setfacl", "-m", "o::r--", name, uid=ALICE, cwd=d)
        assert os.stat(p).st_mode & 0o7777 == 0o0774, name
        os.chmod(p, 0o2775)
        ok("setfacl", "-m", f"u:{BOB}:r", p)  # root has CAP_FSETID
        assert os.stat(p).st_mode & 0o7777 == 0o2775


def test_noacl_mount_refuses_acls_and_applies_the_umask(tmp_path):
    with mounted(tmp_path, "allow_other,noacl") as m:
        p = j(m.mnt, "f")
        write_file(p, b"x", mode=0o600)
        os.chmod(p, 0o600)
        assert run("setfacl", "-m", f"u:{ALICE}:r", p).returncode != 0
        assert errno_of(os.setxattr, p, acl.ACCESS, acl.pack(acl.parse(
            b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff\x04\x00\x04\x00\xff\xff\xff\xff"
            b"\x20\x00\x04\x00\xff\xff\xff\xff"))) == errno.EOPNOTSUPP
        assert not can_read(p, ALICE)
        ok("touch", j(m.mnt, "g"), umask=0o027)
        assert mode(j(m.mnt, "g")) == 0o640
