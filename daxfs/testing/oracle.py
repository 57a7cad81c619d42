"""The crash-test oracle: is what a recovered mount shows a state the workload's operations allow?

daxfs commits whole transactions in order, and each operation is one step of one transaction, so after
a crash the metadata (names, sizes, links, xattrs) is exactly that of some prefix of the operations a
writer issued. File data is not journaled: DAX stores reach pmem before the write returns, so a byte
may also show a value some later operation gave it. The oracle therefore looks, per writer, for a
prefix length k such that:

  * namespace, kinds, hard links, sizes and xattrs equal the model's after the set-up and k operations;
  * every byte equals the model's, or a value a later (begun) operation gave it: a write, or the zeros
    of a growth (daxfs.model's byte log);
  * k is at least every lower bound the acknowledgements prove:
      - an acknowledged fsync commits everything: every operation acknowledged before it began;
      - an acknowledged fdatasync commits its file's mapping: the operations before the last one that
        changed that mapping (or were acknowledged before it began);
      - sync mode: an acknowledged write that the MAP_SYNC rule commits (model.needs_commit), likewise;
  * sync mode: every acknowledged write shows its bytes, or later ones (except where a write still in
    flight may have torn them) — also writes to stable blocks after k, which commit nothing.

If no k fits, the prefix closest to the recovered state names the violations, by kind: file missing,
size wrong, acknowledged data missing, stale bytes (a value nobody ever wrote to that file at that
offset: another file's freed block showing through), namespace impossible. In normal mode, the
acknowledged writes after the chosen k whose bytes are gone are counted: lost as the model allows.

Writers work in disjoint directories (workload.py), so each writer's prefix is found on its own.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from daxfs.testing.model import DIR, FILE, Model
from daxfs.testing.workload import DATA_OPS, DEAD, apply, content

VIOLATION_KINDS = ("file missing", "size wrong", "acknowledged data missing", "stale bytes",
                   "namespace impossible", "fsck error", "check failed", "case error")


@dataclass
class Violation:
    kind: str
    detail: str


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    lost: int = 0  # acknowledged writes gone, as normal mode allows
    acked: int = 0
    prefixes: dict[int, int] = field(default_factory=dict)  # writer -> operations in the recovered state


@dataclass
class Status:
    begin: int | None = None
    ack: int | None = None
    err: int | None = None

    @property
    def acked(self) -> bool:
        return self.ack is not None

    @property
    def failed(self) -> bool:
        """It failed without effect (not because the daemon died under it)."""
        return self.err is not None and self.err not in DEAD

    @property
    def inflight(self) -> bool:
        return self.begin is not None and self.ack is None and not self.failed


def read_log(path: str) -> dict[int, Status]:
    out: dict[int, Status] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue  # a line the crash cut short cannot be one of ours: writers are not killed
        s = out.setdefault(int(parts[1]), Status())
        if parts[0] == "B":
            s.begin = int(parts[2])
        elif parts[0] == "A":
            s.ack = int(parts[2])
        elif parts[0] == "E" and len(parts) == 4:
            s.err, s.ack = int(parts[2]), None
    return out


# --- the recovered mount ------------------------------------------------------------------------------
@dataclass
class Found:
    """What the recovered mount holds at one path."""
    kind: str
    ino: int
    data: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def read_tree(root: str) -> dict[str, Found]:
    """Every name under root (root itself as ""), with kind, inode number, file bytes and user xattrs."""
    out: dict[str, Found] = {}

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = DIR if stat.S_ISDIR(st.st_mode) else FILE if stat.S_ISREG(st.st_mode) else "other"
        e = Found(kind, st.st_ino)
        if kind == FILE:
            with open(path, "rb") as f:
                e.data = f.read()
        for name in os.listxattr(path, follow_symlinks=False):
            if not name.startswith("user.daxfs."):
                e.xattrs[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
        out[rel] = e
        if kind == DIR:
            for d in os.scandir(path):
                visit(d.path, f"{rel}/{d.name}" if rel else d.name)

    visit(root, "")
    return out


def model_tree(m: Model, scope: str) -> dict[str, int]:
    """path -> node of everything under scope (scope itself included)."""
    out = {}
    todo = [(scope, m.resolve(scope))]
    while todo:
        path, nid = todo.pop()
        out[path] = nid
        if m.nodes[nid].kind == DIR:
            for name, child in m.nodes[nid].entries.items():
                todo.append((f"{path}/{name.decode()}" if path else name.decode(), child))
    return out


# --- the check ----------------------------------------------------------------------------------------
class Oracle:
    def __init__(self, setup: list[dict], ops: list[dict], seed: int, sync: bool, log: dict[int, Status]) -> None:
        self.seed = seed
        self.sync = sync
        self.log = log
        self.changes: dict[int, list] = {}  # op index -> byte changes it made (model log entries)
        self.base = Model()
        for op in setup:
            before = len(self.base.log)
            if apply(self.base, op, seed):
                raise ValueError(f"set-up operation {op} does not apply")
            self.changes[op["i"]] = self.base.log[before:]
        writers = sorted({op.get("p", 0) for op in ops})
        self.ops = {p: [op for op in ops if op.get("p", 0) == p] for p in writers}
        self.scopes = {p: (f"w{p}" if len(writers) > 1 else "") for p in writers}
        self.forced: list[tuple[int, int, int]] = []  # (writer, prefix it proves, begin time)
        for p in writers:
            self._simulate(p)

    def status(self, op: dict) -> Status:
        return self.log.get(op["i"], Status())

    def _simulate(self, p: int) -> None:
        """Run writer p's begun operations once: what each changes, and the lower bounds they prove."""
        m = self._copy(self.base)
        last_change: dict[int, tuple[int, int]] = {}  # node -> (position, begin) of its last mapping change
        for pos, op in enumerate(self.ops[p]):
            s = self.status(op)
            if s.begin is None:
                break
            if s.failed:
                continue
            nid = m.resolve(op["path"])
            forces = op["op"] in DATA_OPS and nid is not None and m.nodes[nid].kind == FILE and \
                m.needs_commit(nid, op["off"], op["len"])
            changes_mapping = forces or op["op"] in ("truncate", "prealloc")
            before = len(m.log)
            apply(m, op, self.seed)
            self.changes[op["i"]] = m.log[before:]
            if changes_mapping and nid is not None:
                last_change[nid] = (pos, s.begin)
            if not s.acked:
                continue
            if op["op"] == "fsync" or (self.sync and forces):
                self.forced.append((p, pos + 1, s.begin))
            elif op["op"] == "fdatasync" and nid in last_change:
                cpos, cbegin = last_change[nid]
                self.forced.append((p, cpos + 1, cbegin))

    def lower_bound(self, p: int) -> int:
        bound = 0
        for q, prefix, begin in self.forced:
            if q == p:
                bound = max(bound, prefix)
            else:  # a commit covers whatever the daemon had acknowledged before it began
                acked = [pos + 1 for pos, op in enumerate(self.ops[p])
                         if self.status(op).ack is not None and self.status(op).ack < begin]
                bound = max(bound, max(acked, default=0))
        return bound

    def check(self, tree: dict[str, Found]) -> Verdict:
        v = Verdict()
        for p, ops in self.ops.items():
            begun = sum(1 for op in ops if self.status(op).begin is not None)
            lo = self.lower_bound(p)
            best: tuple[list[Violation], int, int] | None = None
            # every state the writer may be in: (prefix length, model, acknowledged writes it lost part of)
            states: list[tuple[int, Model, int]] = []
            m = self._copy(self.base)
            for k in range(0, begun + 1):
                if k > 0 and not self.status(ops[k - 1]).failed:
                    # a write split into several FUSE requests may be committed in part: in flight, or
                    # in normal mode, where an acknowledged write need not be committed whole
                    s = self.status(ops[k - 1])
                    if k >= lo and (s.inflight or not self.sync):
                        states += [(k, torn, int(s.acked)) for torn in self._torn(m, ops[k - 1], tree)]
                    apply(m, ops[k - 1], self.seed)
                if k >= lo:
                    states.append((k, self._copy(m), 0))
            for k, cand, torn in reversed(states):  # the longest prefix that fits: the fewest losses to count
                problems, lost = self._compare(p, k, cand, tree)
                if best is None or len(problems) < len(best[0]):
                    best = (problems, lost + torn, k)
                if not problems:
                    break
            if best is None:  # the acknowledgements prove more operations than were begun: cannot be
                v.violations.append(Violation("namespace impossible", f"writer {p}: lower bound {lo} > {begun}"))
                continue
            problems, lost, k = best
            v.violations += problems
            v.lost += lost
            v.prefixes[p] = k
            v.acked += sum(1 for op in ops if op["op"] in DATA_OPS and self.status(op).acked)
        return v

    def _torn(self, before: Model, op: dict, tree: dict[str, Found]) -> list[Model]:
        """The kernel sends a write that starts mid-page (that page not cached) as several FUSE requests,
        each its own engine operation; a crash may keep the file grown by the first ones only: the
        model with that part of the write, if the recovered size says so."""
        nid, e = before.resolve(op["path"]), tree.get(op["path"])
        if op["op"] != "write" or nid is None or e is None or before.nodes[nid].kind != FILE:
            return []
        end = len(e.data)
        if not max(len(before.nodes[nid].data), op["off"]) < end < op["off"] + op["len"]:
            return []
        torn = self._copy(before)
        torn.do_write(nid, op["off"], content(self.seed, op["i"], op["len"])[:end - op["off"]])
        return [torn]

    def _compare(self, p: int, k: int, m: Model, tree: dict[str, Found]) -> tuple[list[Violation], int]:
        scope = self.scopes[p]
        want = model_tree(m, scope)
        have = {path: e for path, e in tree.items() if path == scope or path.startswith(scope + "/") or not scope}
        out: list[Violation] = []
        later = [op for op in self.ops[p][k:] if self.status(op).begin is not None and not self.status(op).failed]
        inflight = [op for op in self.ops[p][:k] if self.status(op).inflight]
        overlays = [c for op in later + inflight for c in self.changes.get(op["i"], ()) if c[2] is not None]
        for path in sorted(set(want) - set(have)):
            kind = "file missing" if m.nodes[want[path]].kind == FILE else "namespace impossible"
            out.append(Violation(kind, f"{path!r} missing (after {k} operations of writer {p})"))
        for path in sorted(set(have) - set(want)):
            out.append(Violation("namespace impossible", f"{path!r} should not exist (after {k} operations)"))
        inos: dict[int, int] = {}
        for path in sorted(set(want) & set(have)):
            nid, e = want[path], have[path]
            node = m.nodes[nid]
            if node.kind != e.kind:
                out.append(Violation("namespace impossible", f"{path!r} is a {e.kind}, expected a {node.kind}"))
                continue
            if inos.setdefault(nid, e.ino) != e.ino:
                out.append(Violation("namespace impossible", f"{path!r} is not the same file as its other links"))
            if node.xattrs != e.xattrs:
                out.append(Violation("namespace impossible", f"{path!r}: xattrs {sorted(e.xattrs)} "
                                                             f"expected {sorted(node.xattrs)}"))
            if node.kind == FILE:
                out += self._data(path, nid, node.data, e.data, [c for c in overlays if c[0] == nid])
        if len(set(inos.values())) != len(inos):
            out.append(Violation("namespace impossible", "two different files share an inode"))
        lost = 0
        for op in later:
            ok = self._visible(op, want, tree) if self.status(op).acked and op["op"] in DATA_OPS else True
            if not ok and self.sync:
                out.append(Violation("acknowledged data missing",
                                     f"write #{op['i']} of {op['len']} bytes at {op['off']} to {op['path']!r} "
                                     "was acknowledged but is not in the file"))
            lost += not ok
        return out, 0 if self.sync else lost

    def _data(self, path: str, nid: int, base: bytearray, data: bytes, overlays) -> list[Violation]:
        if len(data) != len(base):
            return [Violation("size wrong", f"{path!r} has {len(data)} bytes, expected {len(base)}")]
        have = np.frombuffer(data, dtype=np.uint8)
        ok = have == np.frombuffer(bytes(base), dtype=np.uint8)
        for _, off, val in overlays:
            n = min(len(val), len(data) - off)
            if n > 0:
                ok[off:off + n] |= have[off:off + n] == np.frombuffer(val, dtype=np.uint8, count=n)
        if ok.all():
            return []
        bad = np.flatnonzero(~ok)
        stale = self._never_written(nid, have, bad)
        kind = "stale bytes" if len(stale) else "acknowledged data missing"
        where = stale if len(stale) else bad
        return [Violation(kind, f"{path!r}: {len(where)} bytes differ from every allowed value, first at "
                                f"offset {int(where[0])} (0x{int(have[where[0]]):02x})")]

    def _never_written(self, nid: int, have: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Of the offsets `bad`, those whose nonzero byte no operation ever wrote there in this file."""
        seen = np.zeros(len(have), dtype=bool)
        for changes in self.changes.values():
            for cnid, off, val in changes:
                if cnid == nid and val is not None:
                    n = min(len(val), len(have) - off)
                    if n > 0:
                        seen[off:off + n] |= have[off:off + n] == np.frombuffer(val, dtype=np.uint8, count=n)
        return bad[(have[bad] != 0) & ~seen[bad]]

    def _visible(self, op: dict, want: dict[str, int], tree: dict[str, Found]) -> bool:
        """Are an acknowledged write's bytes (or later values) in the recovered file it wrote to?"""
        nid = next((c[0] for c in self.changes.get(op["i"], ())), None)
        paths = [path for path, n in want.items() if n == nid]
        if not paths or paths[0] not in tree:
            return False
        have = tree[paths[0]].data
        lo, hi = op["off"], op["off"] + op["len"]
        if hi > len(have):
            return False  # the size it gave the file is gone (a later truncate would be later still)
        ok = np.frombuffer(have[lo:hi], dtype=np.uint8) == \
            np.frombuffer(self.changes[op["i"]][-1][2][:hi - lo], dtype=np.uint8)
        after = False
        for later in self.ops[op.get("p", 0)]:
            if later["i"] == op["i"]:
                after = True
                continue
            s = self.status(later)
            if not after or s.begin is None or s.failed:
                continue
            for cnid, off, val in self.changes.get(later["i"], ()):
                if cnid != nid or val is None:
                    continue
                a, b = max(lo, off), min(hi, off + len(val))
                if a < b:
                    seg = np.frombuffer(have[a:b], dtype=np.uint8) == \
                        np.frombuffer(val[a - off:b - off], dtype=np.uint8)
                    if s.inflight:
                        seg[:] = True  # a write still in flight may have torn these bytes
                    ok[a - lo:b - lo] |= seg
        return bool(ok.all())

    @staticmethod
    def _copy(m: Model) -> Model:
        c = Model()
        c.nodes = {n: node.copy() for n, node in m.nodes.items()}
        c.next_id = m.next_id
        return c


def check(setup: list[dict], ops: list[dict], seed: int, sync: bool, log_path: str, root: str) -> Verdict:
    """Check the mount at root, recovered after a crash, against the workload and its oracle log."""
    log = read_log(log_path)
    missing = [op for op in setup if not log.get(op["i"], Status()).acked]
    if missing:
        raise ValueError(f"set-up operation {missing[0]} was not acknowledged")
    return Oracle(setup, ops, seed, sync, log).check(read_tree(root))


__all__ = ["VIOLATION_KINDS", "Violation", "Verdict", "Oracle", "check", "read_log", "read_tree", "errno"]
