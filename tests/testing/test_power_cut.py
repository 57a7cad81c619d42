"""Power-cut property test of the engine: random operations, a power cut anywhere, replay, compare.

Every example makes a fresh image and applies a random sequence of operations to both a FileSystem and
the in-memory model (model.py), snapshotting the model at every completed commit. Then the power is cut
in one of three ways:

  drop    between two operations: the running transaction is simply gone;
  point   at an armed crash point (daxfs.crashpoint: inside a commit, a checkpoint, an allocation or a
          write), reached during the operations or during a few extra commits and checkpoints;
  stores  right after the k-th store to the region from some moment on: any step of any operation.

Half of the examples also lose every store that was never persisted (CrashRegion.lose_unpersisted),
which is what a power cut may do to pmem that nobody msync'ed. Some also cut again during replay.

After the cut the image is reopened (replay) and must equal the model as of the last completed commit:
the namespace, link counts, sizes, extended attributes and symlinks exactly; file bytes equal, or equal
to a value they were given since (DAX data is not journaled). The one exception is a cut after the
commit record was stored: then the state before or after that commit is accepted. fsck
must find the image clean, before and after replay.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine import fsck
from daxfs.engine.crashpoint import PowerCut
from daxfs.engine.errors import DaxfsError, FsError
from daxfs.engine.fs import FileSystem
from daxfs.engine.mkfs import mkfs
from daxfs.engine.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from daxfs.engine.xattr import XATTR_CREATE, XATTR_REPLACE

from daxfs.testing.model import DIR, FILE, LINK, ROOT, Model, Snapshot
from daxfs.testing.power import CrashRegion
from helpers import SHM


BS = fmt.BLOCK_SIZE
NAMES = [b"a", b"b", b"c", b"d"]  # few names: collisions (EEXIST, replace, ENOTEMPTY) are frequent
XNAMES = [b"user.x", b"user.y"]
# Crash points the engine passes while running (replay.applied is cut separately, at reopen).
RUN_POINTS = sorted(p for p in crashpoint.POINTS if p.split(".")[0] in ("commit", "checkpoint", "alloc")
                    or p == "write.half_copied")
OPS = ["create", "create", "mkdir", "symlink", "write", "write", "write", "write", "truncate", "unlink", "rmdir",
       "rename", "rename", "link", "setxattr", "removexattr", "prealloc", "commit", "commit", "checkpoint",
       "fsync", "open_unlink", "forget", "remount", "arm"]


@dataclass
class Plan:
    kind: str  # drop | point | stores
    lose: bool  # lose every unpersisted store at the cut
    point: str = ""
    nth: int = 1
    stores: int = 1
    replay_cut: bool = False  # cut once more, during the replay at reopen
    image_mib: int = 16  # small images fill up: blocks get reused, ENOSPC makes _begin commit and checkpoint

    def __str__(self) -> str:
        what = {"drop": "drop", "point": f"{self.point} #{self.nth}", "stores": f"after {self.stores} stores"}
        return f"{self.image_mib} MiB image, cut: {what[self.kind]}" \
               f"{', losing unpersisted stores' if self.lose else ''}{', and again in replay' if self.replay_cut else ''}"


plans = st.builds(
    Plan,
    kind=st.sampled_from(["drop", "point", "point", "stores", "stores"]),
    lose=st.booleans(),
    point=st.sampled_from(RUN_POINTS),
    nth=st.integers(1, 3),
    stores=st.integers(1, 60),
    replay_cut=st.booleans(),
    image_mib=st.sampled_from([2, 4, 16]),
)


class Harness:
    def __init__(self, path: str, plan: Plan) -> None:
        self.path = path
        self.plan = plan
        self.model = Model()
        self.ino: dict[int, int] = {ROOT: fmt.ROOT_INO}  # model node -> inode number
        self.base: dict[int, int] = {}  # node -> log position of its bytes as last made durable (fsync)
        self.inflight: list[tuple[int, int, bytes]] = []  # byte changes of the operation under way
        self.completed: Snapshot = self.model.capture("mkfs")  # as of the last completed commit
        self.candidate: Snapshot | None = None  # as of the commit whose record is stored, not yet returned
        self.dead = False
        self.armed = False
        self.step = 0
        self.mount()

    # --- mounting and the commit hook -------------------------------------------------------------
    def mount(self, carry: int | None = None) -> None:
        self.region = CrashRegion(self.path, lose_unpersisted=self.plan.lose)
        if carry is not None:
            self.region.arm_cut(carry)
        self.fs = FileSystem(self.region)
        self.region.on_commit_record = self._record_stored
        real_write = self.fs.journal.write_commit

        def write(txn):
            real_write(txn)
            if self.candidate is not None:  # the commit returned: its state is the committed one now
                self.completed, self.candidate = self.candidate, None

        self.fs.journal.write_commit = write

    def _record_stored(self) -> None:
        # The engine commits only between operations (FileSystem._begin commits before it changes
        # anything), and the model is updated only after the engine returns: the model now is
        # exactly what this commit makes durable.
        self.candidate = self.model.capture(f"commit during step {self.step}")

    def _cut_action(self, name: str) -> None:
        self.region.power_off()
        raise PowerCut(name)

    def arm(self) -> None:
        if self.armed or self.plan.kind == "drop":
            return
        self.armed = True
        if self.plan.kind == "point":
            crashpoint.arm(self.plan.point, self.plan.nth, self._cut_action)
        else:
            self.region.arm_cut(self.plan.stores)

    # --- running one operation on both sides ------------------------------------------------------
    def run(self, what: str, call, expect: int = 0, changes=(), then=None):
        """call() on the file system; it must fail with `expect` or, if 0, succeed, then then(result)
        updates the model."""
        if self.dead:
            return None
        note(f"step {self.step}: {what}")
        self.inflight = list(changes)
        try:
            result = call()
        except FsError as e:
            self.inflight = []
            if e.errno == errno.ENOSPC and expect == 0:
                return None  # the model does not count blocks; ENOSPC changes nothing (test_alloc)
            assert e.errno == expect, f"{what}: file system says {errno.errorcode[e.errno]}, model says " \
                                      f"{errno.errorcode.get(expect, 'success')}"
            return None
        except PowerCut:
            self.dead = True
            note(f"  power cut ({self.region.stores} stores)")
            return None
        assert expect in (0, -1), f"{what}: file system succeeded, model says {errno.errorcode[expect]}"
        self.inflight = []
        if then is not None:
            then(result)
        return result

    # --- random operations ------------------------------------------------------------------------
    def random_op(self, data) -> None:
        self.step += 1
        m, fs = self.model, self.fs
        op = data.draw(st.sampled_from(OPS), label="op")
        d = data.draw(st.sampled_from(m.dirs()), label="dir")
        name = data.draw(st.sampled_from(NAMES), label="name")
        files = m.files()
        if op in ("create", "mkdir", "symlink"):
            kind = {"create": FILE, "mkdir": DIR, "symlink": LINK}[op]
            target = b"t" * data.draw(st.sampled_from([1, 30, 3000])) if kind == LINK else b""
            pi = self.ino[d]
            call = {FILE: lambda: fs.create(pi, name, 0o644, 0, 0), DIR: lambda: fs.mkdir(pi, name, 0o755, 0, 0),
                    LINK: lambda: fs.symlink(pi, name, target, 0, 0)}[kind]
            self.run(f"{op} {d}/{name!r}", call, m.check_new(d, name),
                     then=lambda inode: self.ino.__setitem__(m.do_new(d, name, kind, target), inode.ino))
        elif op == "write" and files:
            nid = data.draw(st.sampled_from(files), label="file")
            off = data.draw(st.one_of(st.integers(0, 3 * BS), st.integers(0, 64 * BS), st.integers(0, 256 * BS)))
            big = (fs.sb.total_blocks - fs.sb.data_start) * 2 // 3 * BS  # big writes: blocks get reused
            n = data.draw(st.one_of(st.integers(1, 64), st.integers(1, 4 * BS), st.integers(1, big)))
            buf = bytes([self.step % 251 + 1]) * n  # every write its own byte value: a stale one stands out
            self.run(f"write {nid} [{off}, {off + n})", lambda: fs.write(self.ino[nid], off, buf),
                     changes=m.changes_of_write(nid, off, buf), then=lambda _: m.do_write(nid, off, buf))
        elif op == "truncate" and files:
            nid = data.draw(st.sampled_from(files), label="file")
            size = data.draw(st.one_of(st.integers(0, 2 * BS), st.integers(0, 64 * BS)))
            self.run(f"truncate {nid} {size}", lambda: fs.truncate(self.ino[nid], size),
                     changes=m.changes_of_resize(nid, size), then=lambda _: m.do_truncate(nid, size))
        elif op == "prealloc" and files:
            nid = data.draw(st.sampled_from(files), label="file")
            off = data.draw(st.integers(0, 64 * BS))
            n = data.draw(st.one_of(st.integers(1, 16 * BS), st.integers(1, 96 * BS)))
            keep = data.draw(st.booleans())
            grow = [] if keep else m.changes_of_resize(nid, max(len(m.nodes[nid].data), off + n))
            self.run(f"prealloc {nid} [{off}, {off + n}) keep_size={keep}",
                     lambda: fs.prealloc(self.ino[nid], off, n, keep_size=keep), changes=grow,
                     then=lambda _: m.do_prealloc(nid, off, n, keep))
        elif op == "unlink":
            self.run(f"unlink {d}/{name!r}", lambda: fs.unlink(self.ino[d], name), m.check_unlink(d, name),
                     then=lambda _: self._dropped(m.nodes[d].entries.get(name), lambda: m.do_unlink(d, name)))
        elif op == "rmdir":
            self.run(f"rmdir {d}/{name!r}", lambda: fs.rmdir(self.ino[d], name), m.check_rmdir(d, name),
                     then=lambda _: self._dropped(m.nodes[d].entries.get(name), lambda: m.do_rmdir(d, name)))
        elif op == "open_unlink" and any(m.nodes[c].kind == FILE for c in m.nodes[d].entries.values()):
            name = data.draw(st.sampled_from(sorted(n for n, c in m.nodes[d].entries.items()
                                                    if m.nodes[c].kind == FILE)))
            nid = m.nodes[d].entries[name]
            if nid not in m.open:
                fs.ref(self.ino[nid])  # a process opens it (no store: cannot be cut)
                m.open.add(nid)
            self.run(f"unlink open {d}/{name!r} ({nid})", lambda: fs.unlink(self.ino[d], name),
                     then=lambda _: m.do_unlink(d, name))
        elif op == "forget" and m.open:
            nid = data.draw(st.sampled_from(sorted(m.open)), label="open file")
            self.run(f"close {nid}", lambda: fs.forget(self.ino[nid]),
                     then=lambda _: self._dropped(nid, lambda: m.close(nid)))
        elif op == "rename":
            pairs = m.names()
            sd, sn = data.draw(st.sampled_from(pairs)) if pairs and data.draw(st.booleans()) else (d, name)
            dd = data.draw(st.sampled_from(m.dirs()), label="to dir")
            dn = data.draw(st.sampled_from(NAMES), label="to name")
            flags = data.draw(st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
            exchange = bool(flags & RENAME_EXCHANGE)
            expect = m.check_rename(sd, sn, dd, dn, exchange, bool(flags & RENAME_NOREPLACE))
            replaced = m.nodes[dd].entries.get(dn) if expect == 0 and not exchange else None
            self.run(f"rename {sd}/{sn!r} -> {dd}/{dn!r} flags={flags}",
                     lambda: fs.rename(self.ino[sd], sn, self.ino[dd], dn, flags), expect,
                     then=lambda _: None if expect == -1 else
                     self._dropped(replaced, lambda: m.do_rename(sd, sn, dd, dn, exchange)))
        elif op == "link" and files:
            nid = data.draw(st.sampled_from(files + [d]), label="link what")
            self.run(f"link {nid} as {d}/{name!r}", lambda: fs.link(self.ino[nid], self.ino[d], name),
                     m.check_link(nid, d, name), then=lambda _: m.do_link(nid, d, name))
        elif op == "setxattr":
            nid = data.draw(st.sampled_from(sorted(m.reachable())), label="node")
            xn = data.draw(st.sampled_from(XNAMES))
            value = data.draw(st.one_of(st.binary(max_size=40), st.binary(min_size=4000, max_size=9000)))
            flags = data.draw(st.sampled_from([0, XATTR_CREATE, XATTR_REPLACE]))
            self.run(f"setxattr {nid} {xn!r} ({len(value)} bytes) flags={flags}",
                     lambda: fs.setxattr(self.ino[nid], xn, value, flags),
                     m.check_setxattr(nid, xn, flags == XATTR_CREATE, flags == XATTR_REPLACE),
                     then=lambda _: m.do_setxattr(nid, xn, value))
        elif op == "removexattr":
            nid = data.draw(st.sampled_from(sorted(m.reachable())), label="node")
            xn = data.draw(st.sampled_from(XNAMES))
            self.run(f"removexattr {nid} {xn!r}", lambda: fs.removexattr(self.ino[nid], xn),
                     m.check_removexattr(nid, xn), then=lambda _: m.do_removexattr(nid, xn))
        elif op == "commit":
            self.run("commit", fs.commit)
        elif op == "checkpoint":
            self.run("checkpoint", self.checkpoint)
        elif op == "fsync" and files:
            nid = data.draw(st.sampled_from(files), label="file")
            self.run(f"fsync {nid}", lambda: fs.fsync(self.ino[nid]),
                     then=lambda _: self.base.__setitem__(nid, m.synced(nid)))
        elif op == "remount":
            self.run("clean unmount and mount", self.remount)
        elif op == "arm":
            note(f"step {self.step}: arm {self.plan}")
            self.arm()

    def _dropped(self, nid: int | None, apply) -> None:
        """Apply a model change after which node nid may be gone: forget its inode number then."""
        apply()
        if nid is not None and nid not in self.model.nodes:
            self.ino.pop(nid, None)
            self.base.pop(nid, None)

    def checkpoint(self) -> None:
        self.fs.journal.checkpoint()
        self.fs.after_commit()

    def remount(self) -> None:
        carry = self.region.cut_at - self.region.stores if self.region.cut_at is not None else None
        self.fs.close()  # commits: everything is durable now, and the kernel forgets every inode
        self.completed = self.model.capture(f"clean unmount at step {self.step}")
        for nid in sorted(self.model.open):
            self._dropped(nid, lambda: self.model.close(nid))
        for nid in self.model.files():
            self.base[nid] = self.model.synced(nid)  # msync of the whole image at close
        self.mount(carry)

    # --- the cut ----------------------------------------------------------------------------------
    def cut(self) -> None:
        if not self.dead and self.plan.kind != "drop":
            self.arm()
            for i in range(8):  # commits and checkpoints until the armed cut fires
                if self.dead:
                    break
                nid_name = b"burst%d" % i
                inode = self.run(f"create /{nid_name!r}", lambda: self.fs.create(fmt.ROOT_INO, nid_name, 0o644, 0, 0),
                                 self.model.check_new(ROOT, nid_name))
                if inode is not None:
                    self.ino[self.model.do_new(ROOT, nid_name, FILE)] = inode.ino
                    nid = self.model.nodes[ROOT].entries[nid_name]
                    buf = bytes([200 + i]) * (3 * BS + 10)
                    self.run(f"write {nid}", lambda: self.fs.write(inode.ino, 10, buf),
                             changes=self.model.changes_of_write(nid, 10, buf),
                             then=lambda _: self.model.do_write(nid, 10, buf))
                self.run("commit", self.fs.commit)
                self.run("checkpoint", self.checkpoint)
        if not self.dead:
            note("power cut between operations")
            self.region.power_off()
            self.dead = True
        crashpoint.disarm_all()
        self.region.close()

    # --- after the cut ----------------------------------------------------------------------------
    def allowed(self, snap: Snapshot, nid: int) -> list[tuple[int, bytes]]:
        """Byte changes a file may show beyond the snapshot's contents."""
        # Power kept: a store is never lost, so only changes since the snapshot can show. Unpersisted
        # stores lost: a byte may hold what it held when last persisted, so any change since the file's
        # last fsync (logged whole) or, never synced, since its creation; but what a truncation cut off
        # must not come back once the truncation is committed (growing again zeroes it, commit.py I1).
        log = self.model.log
        since = self.base.get(nid, 0) if self.plan.lose else snap.log_pos
        out: list[tuple[int, bytes]] = []
        for pos in range(since, len(log)):
            n, off, b = log[pos]
            if n != nid:
                continue
            if b is None:
                if pos < snap.log_pos:
                    out = [(o, d[:off - o]) for o, d in out if o < off]
                continue
            out.append((off, b))
        return out + [(off, b) for n, off, b in self.inflight if n == nid and b is not None]

    def recover_and_verify(self) -> None:
        fsck_clean(self.path, "the crashed image")
        if self.plan.replay_cut:
            r = CrashRegion(self.path, lose_unpersisted=self.plan.lose)

            def cut(name):
                r.power_off()
                raise PowerCut(name)

            crashpoint.arm("replay.applied", 1, cut)
            try:
                FileSystem(r).region.close()  # nothing was left to replay
            except PowerCut:
                note("power cut during replay")
                r.close()
            crashpoint.disarm_all()
        g = FileSystem.open(self.path, durable=False)
        event(f"cut: {self.plan.kind}{', losing unpersisted' if self.plan.lose else ''}")
        event("replayed" if g.open_report.replayed else "nothing to replay")
        event(f"steps: {'<10' if self.step < 10 else '10-29' if self.step < 30 else '30+'}")
        try:
            tried = []
            for snap in [self.completed] + ([self.candidate] if self.candidate is not None else []):
                problems = compare(g, snap, lambda nid: self.allowed(snap, nid))
                if not problems:
                    note(f"image matches the model {snap.label}")
                    event("matched the commit under way" if snap is self.candidate else "matched the last commit")
                    break
                tried.append(f"against the model {snap.label}:\n  " + "\n  ".join(problems[:12]))
            else:
                pytest.fail(f"{self.plan}\nafter replay ({g.open_report}) the image differs\n" + "\n".join(tried))
        finally:
            if g.region.mem is not None:
                g.close()
        fsck_clean(self.path, "the image after replay and a clean unmount")


def fsck_clean(path: str, what: str) -> None:
    report = fsck.check(path)
    assert report.clean, f"fsck of {what}:\n" + "\n".join(str(p) for p in report.problems[:20])


def compare(g: FileSystem, snap: Snapshot, allowed) -> list[str]:
    """Differences between the mounted file system and a model snapshot."""
    problems: list[str] = []
    seen: dict[int, int] = {}

    def walk(nid: int, ino: int, path: str) -> None:
        if nid in seen:
            if seen[nid] != ino:
                problems.append(f"{path}: inode {ino}, but the same file elsewhere is inode {seen[nid]}")
            return
        if ino in seen.values():
            problems.append(f"{path}: inode {ino} is also a different file elsewhere")
            return
        seen[nid] = ino
        node = snap.nodes[nid]
        inode = g.inode(ino)
        kind = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: LINK}.get(stat.S_IFMT(inode.mode), "?")
        if kind != node.kind:
            problems.append(f"{path}: is a {kind}, expected a {node.kind}")
            return
        if inode.nlink != snap.nlink(nid):
            problems.append(f"{path}: nlink {inode.nlink}, expected {snap.nlink(nid)}")
        xattrs = {x: g.getxattr(ino, x) for x in g.listxattr(ino)}
        if xattrs != node.xattrs:
            problems.append(f"{path}: xattrs {sorted(xattrs)} ({[len(v) for v in xattrs.values()]} bytes), "
                            f"expected {sorted(node.xattrs)} ({[len(v) for v in node.xattrs.values()]} bytes)")
        if kind == DIR:
            entries = {n: i for _, n, i, _ in g.readdir(ino) if n not in (b".", b"..")}
            if set(entries) != set(node.entries):
                problems.append(f"{path}/: entries {sorted(entries)}, expected {sorted(node.entries)}")
            for n in sorted(set(entries) & set(node.entries)):
                child = node.entries[n]
                walk(child, entries[n], f"{path}/{n.decode()}")
                if snap.nodes[child].kind == DIR and g.inode(entries[n]).parent != ino:
                    problems.append(f"{path}/{n.decode()}: '..' is inode {g.inode(entries[n]).parent}, not {ino}")
        elif kind == LINK:
            if g.readlink(ino) != bytes(node.data):
                problems.append(f"{path}: symlink target differs")
        else:
            if inode.size != len(node.data):
                problems.append(f"{path}: size {inode.size}, expected {len(node.data)}")
                return
            bad = content_problem(g.read(ino, 0, inode.size), bytes(node.data), allowed(nid))
            if bad:
                problems.append(f"{path} (node {nid}): {bad}")

    try:
        walk(ROOT, fmt.ROOT_INO, "")
    except (DaxfsError, KeyError) as e:
        problems.append(f"reading the image failed: {type(e).__name__}: {e}")
    return problems


def content_problem(actual: bytes, expect: bytes, allowed: list[tuple[int, bytes]]) -> str | None:
    """None if every byte is the expected one or one the file was given since; else what differs."""
    if actual == expect:
        return None
    a = np.frombuffer(actual, dtype=np.uint8)
    bad = a != np.frombuffer(expect, dtype=np.uint8)
    for off, data in allowed:
        hi = min(len(a), off + len(data))
        if hi > off:
            bad[off:hi] &= a[off:hi] != np.frombuffer(data, dtype=np.uint8, count=hi - off)
    left = np.flatnonzero(bad)
    if not len(left):
        return None
    i = int(left[0])
    return f"byte {i} is {a[i]:#04x}, expected {expect[i]:#04x} or a value written since; {len(left)} bytes differ"


def run_example(data, max_steps: int) -> None:
    plan = data.draw(plans, label="plan")
    note(str(plan))
    path = os.path.join(SHM if os.access(SHM, os.W_OK) else "/tmp", f"daxfs-pc-{uuid.uuid4().hex}.img")
    mkfs(path, plan.image_mib << 20)
    try:
        h = Harness(path, plan)
        for _ in range(data.draw(st.integers(5, max_steps), label="steps")):
            if h.dead:
                break
            h.random_op(data)
        h.cut()
        h.recover_and_verify()
    finally:
        crashpoint.disarm_all()
        os.unlink(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_after_a_power_cut_the_image_is_the_last_completed_commit(data):
    run_example(data, max_steps=40)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_after_a_power_cut_the_image_is_the_last_completed_commit_long(data):
    run_example(data, max_steps=120)
