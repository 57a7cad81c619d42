"""Crash-test workloads: operations, their generators, and the worker that runs them and logs each ack.

An operation is a small dict, so that a campaign can write it into a spec file, a worker run it, and
the oracle replay it on daxfs.model:

    {"i": 7, "op": "write", "path": "d0/f0", "off": 8192, "len": 4096, "p": 0}

`i` is its index in the workload; a write's bytes are content(seed, i, len), so nobody has to store
them; `p` is the writer process (workloads with several writers give each its own directory). A "dax"
operation stores the same bytes through a direct mapping (daxfs.dax) instead of write(2): within
the file's size, acknowledged once the store is done (its page faults answered).

The worker (`python -m daxfs.testing.workload SPEC`) runs the operations against a mount and appends to the
oracle log, a file outside the file system, one line before and one after each operation:

    B i t           about to start operation i (t: CLOCK_MONOTONIC ns, comparable across processes)
    A i t           operation i returned successfully: acknowledged
    E i errno t     operation i failed; ENOTCONN/ECONNABORTED mean the daemon died under it

A writer stops at its first "daemon died" error. This module imports nothing heavy: workers start fast.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time

from daxfs.dax.protocol import DEAD_MOUNT_ERRNOS as DEAD
from daxfs.dax.protocol import PREALLOC_XATTR
from daxfs.testing.model import BLOCK, DIR, FILE, Model

DATA_OPS = ("write", "dax")  # operations that store bytes into a file
CORE_OPS = ("creat", "write", "append", "overwrite", "truncate", "link", "unlink", "rename", "mkdir", "rmdir",
            "setxattr", "fsync", "fdatasync")


def content(seed: int, i: int, n: int) -> bytes:
    """The bytes operation i of a workload with this seed writes."""
    return random.Random(seed * 1_000_003 + i).randbytes(n)


# --- operations on the model --------------------------------------------------------------------------
def apply(m: Model, op: dict, seed: int) -> int:
    """Apply op to the model; returns the errno the file system must answer (0: done)."""
    kind, path = op["op"], op["path"]
    if kind in ("creat", "mkdir", "unlink", "rmdir"):
        d, name = m.parent_of(path)
        if d is None:
            return errno.ENOENT
        if kind in ("creat", "mkdir"):
            e = m.check_new(d, name)
            if not e:
                m.do_new(d, name, FILE if kind == "creat" else DIR)
            return e
        e = m.check_unlink(d, name) if kind == "unlink" else m.check_rmdir(d, name)
        if not e:
            (m.do_unlink if kind == "unlink" else m.do_rmdir)(d, name)
        return e
    if kind == "rename":
        sd, sn = m.parent_of(path)
        dd, dn = m.parent_of(op["dst"])
        if sd is None or dd is None:
            return errno.ENOENT
        e = m.check_rename(sd, sn, dd, dn, False, False)
        if e == 0:
            m.do_rename(sd, sn, dd, dn, False)
        return max(e, 0)
    nid = m.resolve(path)
    if nid is None:
        return errno.ENOENT
    node = m.nodes[nid]
    if kind == "link":
        dd, dn = m.parent_of(op["dst"])
        if dd is None:
            return errno.ENOENT
        e = m.check_link(nid, dd, dn)
        if not e:
            m.do_link(nid, dd, dn)
        return e
    if kind == "setxattr":
        m.do_setxattr(nid, op["name"].encode(), content(seed, op["i"], 16))
        return 0
    if kind in ("fsync", "fdatasync"):
        return 0
    if node.kind == DIR:
        return errno.EISDIR
    if kind == "dax" and op["off"] + op["len"] > len(node.data):
        return errno.EINVAL  # a mapping does not grow the file
    if kind in DATA_OPS:
        m.do_write(nid, op["off"], content(seed, op["i"], op["len"]))
    elif kind == "truncate":
        m.do_truncate(nid, op["size"])
    elif kind == "prealloc":
        m.do_prealloc(nid, op["off"], op["len"], keep_size=False)
    else:
        raise ValueError(f"unknown operation {kind!r}")
    return 0


# --- operations on a real mount -----------------------------------------------------------------------
def execute(root: str, op: dict, seed: int) -> None:
    """Run op on the mount at root; raises OSError as the system call did."""
    kind = op["op"]
    path = os.path.join(root, op["path"])
    if kind == "creat":
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    elif kind == "mkdir":
        os.mkdir(path, 0o755)
    elif kind == "write":
        fd = os.open(path, os.O_WRONLY)
        try:
            data = memoryview(content(seed, op["i"], op["len"]))
            off = op["off"]
            while data:
                n = os.pwrite(fd, data, off)
                data, off = data[n:], off + n
        finally:
            _close(fd)
    elif kind == "dax":
        _dax_store(path, op["off"], content(seed, op["i"], op["len"]))
    elif kind == "truncate":
        os.truncate(path, op["size"])
    elif kind == "link":
        os.link(path, os.path.join(root, op["dst"]))
    elif kind == "unlink":
        os.unlink(path)
    elif kind == "rename":
        os.rename(path, os.path.join(root, op["dst"]))
    elif kind == "rmdir":
        os.rmdir(path)
    elif kind == "setxattr":
        os.setxattr(path, op["name"], content(seed, op["i"], 16))
    elif kind in ("fsync", "fdatasync"):
        fd = os.open(path, os.O_RDONLY)
        try:
            (os.fsync if kind == "fsync" else os.fdatasync)(fd)
        finally:
            _close(fd)
    elif kind == "prealloc":
        os.setxattr(path, PREALLOC_XATTR, f"{op['off']} {op['len']}".encode())
    else:
        raise ValueError(f"unknown operation {kind!r}")


def _dax_store(path: str, off: int, data: bytes) -> None:
    """Store through a mapping of the whole file (MAP_SHARED: the mount's mode decides whether its write
    faults are synchronous). Done once the store is: a daemon dying under the unmap loses nothing."""
    from daxfs import dax  # imports numpy: only workloads that map pay for it

    size = os.path.getsize(path)
    m = dax.mmap(path, -(-size // dax.PAGE) * dax.PAGE, dax.MAP_SHARED)
    try:
        m[off:off + len(data)] = data
    finally:
        try:
            m.close()
        except OSError:  # the daemon died after the store: the next operation will say so
            pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as e:  # the fd is closed all the same; a dead daemon shows at the next operation
        if e.errno not in DEAD:
            raise


def run_writer(root: str, ops: list[dict], seed: int, oracle: str) -> None:
    """Run ops in order, logging each; stop when the daemon dies."""
    fd = os.open(oracle, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for op in ops:
            os.write(fd, b"B %d %d\n" % (op["i"], time.monotonic_ns()))
            try:
                execute(root, op, seed)
            except OSError as e:
                # a control-channel ConnectionError carries no errno: the daemon died as well
                code = e.errno if e.errno else errno.ENOTCONN if isinstance(e, ConnectionError) else 0
                os.write(fd, b"E %d %d %d\n" % (op["i"], code, time.monotonic_ns()))
                if code in DEAD:
                    return
                continue
            os.write(fd, b"A %d %d\n" % (op["i"], time.monotonic_ns()))
    finally:
        os.close(fd)


def run_spec(spec: dict) -> int:
    """Run a spec's operations, one writer process per distinct `p`; returns an exit status."""
    writers = sorted({op.get("p", 0) for op in spec["ops"]})
    if len(writers) <= 1:
        run_writer(spec["root"], spec["ops"], spec["seed"], spec["oracle"])
        return 0
    pids = []
    for p in writers:
        pid = os.fork()
        if pid == 0:
            try:
                run_writer(spec["root"], [op for op in spec["ops"] if op.get("p", 0) == p], spec["seed"],
                           spec["oracle"])
                os._exit(0)
            except BaseException:
                os._exit(1)
        pids.append(pid)
    return max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids)


# --- generators ---------------------------------------------------------------------------------------
class Builder:
    """Makes valid operations: each is applied to a model first, and kept only if it succeeds there."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.model = Model()
        self.ops: list[dict] = []
        self.names = 0

    def add(self, op: str, path: str, p: int = 0, **args) -> bool:
        d = {"i": len(self.ops), "op": op, "path": path, "p": p, **args}
        if apply(self.model, d, self.seed):
            return False
        self.ops.append(d)
        return True

    def new_name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def size(self, path: str) -> int:
        return len(self.model.nodes[self.model.resolve(path)].data)

    def paths(self, scope: str, kind: str) -> list[str]:
        """Paths of the given kind under scope (scope itself included for directories)."""
        start = self.model.resolve(scope)
        out = [scope] if kind == DIR else []
        todo = [(scope, start)]
        while todo:
            path, nid = todo.pop()
            for name, child in sorted(self.model.nodes[nid].entries.items()):
                sub = f"{path}/{name.decode()}" if path else name.decode()
                if self.model.nodes[child].kind == kind:
                    out.append(sub)
                if self.model.nodes[child].kind == DIR:
                    todo.append((sub, child))
        return out


def _pick(rng: random.Random, b: Builder, scope: str, kind: str, p: int) -> bool:
    """Add one random operation of `kind` within scope; False if none applies now."""
    files, dirs = b.paths(scope, FILE), b.paths(scope, DIR)
    if kind in ("creat", "mkdir"):
        d = rng.choice(dirs)
        return b.add(kind, f"{d}/{b.new_name('f' if kind == 'creat' else 'd')}".lstrip("/"), p)
    if kind == "rmdir":
        empty = [d for d in dirs if d != scope and not b.model.nodes[b.model.resolve(d)].entries]
        return bool(empty) and b.add("rmdir", rng.choice(empty), p)
    if kind == "fsync" and rng.random() < 0.3:
        return b.add("fsync", rng.choice(dirs), p)
    if kind == "setxattr" and rng.random() < 0.3:
        return b.add("setxattr", rng.choice(dirs), p, name=f"user.x{rng.randrange(3)}")
    if not files:
        return False
    f = rng.choice(files)
    size = b.size(f)
    if kind == "append":
        return b.add("write", f, p, off=size, len=rng.randint(1, 3 * BLOCK))
    if kind == "write":  # into new blocks past EOF, leaving a hole now and then
        off = -(-size // BLOCK) * BLOCK + rng.choice((0, 0, 1, 3)) * BLOCK
        return b.add("write", f, p, off=off, len=rng.choice((BLOCK, 2 * BLOCK, BLOCK // 2)))
    if kind == "overwrite":
        if not size:
            return False
        off = rng.randrange(size)
        return b.add("write", f, p, off=off, len=min(size - off, rng.randint(1, 2 * BLOCK)))
    if kind == "prealloc":
        return b.add("prealloc", f, p, off=-(-size // BLOCK) * BLOCK, len=rng.randint(1, 4) * BLOCK)
    if kind == "dax":  # a store through a direct mapping, within the file
        if not size:
            return False
        off = rng.randrange(size)
        return b.add("dax", f, p, off=off, len=min(size - off, rng.randint(1, 2 * BLOCK)))
    if kind == "prewrite":  # into preallocated (unwritten) blocks: unwritten -> written
        node = b.model.nodes[b.model.resolve(f)]
        if not node.unwritten:
            return False
        blk = rng.choice(sorted(node.unwritten))
        return b.add("write", f, p, off=blk * BLOCK + rng.randrange(BLOCK // 2), len=rng.randint(1, BLOCK))
    if kind == "truncate":
        return b.add("truncate", f, p, size=rng.choice((rng.randrange(size + 1), size + rng.randint(1, 3 * BLOCK))))
    if kind in ("fsync", "fdatasync", "unlink"):
        return b.add(kind, f, p)
    if kind == "setxattr":
        return b.add("setxattr", f, p, name=f"user.x{rng.randrange(3)}")
    d = rng.choice(dirs)
    if kind == "link":
        return b.add("link", f, p, dst=f"{d}/{b.new_name('l')}".lstrip("/"))
    if kind == "rename":  # onto a new name, or over another file
        others = [o for o in files if o != f]
        dst = rng.choice(others) if others and rng.random() < 0.3 else f"{d}/{b.new_name('r')}".lstrip("/")
        return b.add("rename", f, p, dst=dst)
    raise ValueError(kind)


# name: (description, writers, operations per writer, {kind: weight}, setup)
WORKLOADS: dict[str, tuple[str, int, int, dict[str, int], str]] = {
    "appends": ("appends and writes into new blocks of a few files, some fsync'd", 1, 40,
                {"append": 6, "write": 4, "creat": 1, "fsync": 1, "fdatasync": 1}, "file"),
    "overwrites": ("overwrites of stable blocks and of preallocated (unwritten) blocks", 1, 40,
                   {"overwrite": 6, "prewrite": 4, "prealloc": 1, "fdatasync": 1}, "filled"),
    "truncates": ("writes, truncates down and up, writes again", 1, 40,
                  {"append": 3, "truncate": 3, "overwrite": 2, "write": 2, "fsync": 1}, "filled"),
    "namespace": ("creates, renames, links, unlinks, mkdir/rmdir, xattrs, with small writes", 1, 40,
                  {"creat": 3, "mkdir": 1, "rename": 2, "link": 1, "unlink": 2, "rmdir": 1, "setxattr": 1,
                   "append": 2, "fsync": 1}, "file"),
    "writers": ("three writer processes at once, each appending to and overwriting its own files", 3, 20,
                {"append": 4, "write": 2, "overwrite": 3, "creat": 1, "fdatasync": 1}, "file"),
    "dax": ("stores through direct mappings (holes, preallocated and stable blocks) beside write()", 1, 30,
            {"dax": 6, "prealloc": 1, "truncate": 1, "overwrite": 1, "fdatasync": 1}, "sparse"),
    "fsyncs": ("small appends and xattrs, each fsync'd, as a database's log does: the journal fills and checkpoints",
               1, 120, {"append": 3, "setxattr": 1, "fsync": 4}, "file"),
    "mixed": ("every operation, at random", 1, 50,
              {"creat": 2, "mkdir": 1, "append": 3, "write": 2, "overwrite": 3, "prealloc": 1, "prewrite": 1,
               "truncate": 1, "rename": 1, "link": 1, "unlink": 1, "rmdir": 1, "setxattr": 1, "fsync": 1,
               "fdatasync": 1}, "file"),
}


def generate(name: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(set-up operations, operations) of a built-in workload. The set-up ends with an fsync of the
    root, so it is durable before the crash window opens."""
    _, writers, count, weights, setup = WORKLOADS[name]
    rng = random.Random(seed)
    b = Builder(seed)
    scopes = [f"w{p}" if writers > 1 else "" for p in range(writers)]
    for p, scope in enumerate(scopes):
        if scope:
            b.add("mkdir", scope)
        f = f"{scope}/data".lstrip("/")
        b.add("creat", f)
        if setup == "filled":
            b.add("write", f, off=0, len=16 * BLOCK)
            b.add("prealloc", f, off=16 * BLOCK, len=16 * BLOCK)
        elif setup == "sparse":  # holes to fault in, a written block, preallocated blocks
            b.add("truncate", f, size=16 * BLOCK)
            b.add("write", f, off=0, len=BLOCK)
            b.add("prealloc", f, off=16 * BLOCK, len=8 * BLOCK)
    b.add("fsync", "")
    n_setup = len(b.ops)
    kinds, w = list(weights), list(weights.values())
    for _ in range(count):
        for p, scope in enumerate(scopes):
            for _attempt in range(100):  # some kinds cannot apply in some states (no unwritten block...)
                if _pick(rng, b, scope, rng.choices(kinds, w)[0], p):
                    break
    return b.ops[:n_setup], b.ops[n_setup:]


# --- the bounded exhaustive generator (CrashMonkey's Ace, in small) -----------------------------------
ACE_FILES = ("d0/f0", "d1/f1")
ACE_DIRS = ("d0", "d1")


def ace_setup(seed: int) -> Builder:
    b = Builder(seed)
    for d in ACE_DIRS:
        b.add("mkdir", d)
    b.add("creat", "d0/f0")
    b.add("write", "d0/f0", off=0, len=2 * BLOCK)
    b.add("fsync", "")
    return b


def ace_variants(b: Builder) -> list[dict]:
    """Every core operation, with each argument choice over two directories and two files that is
    valid in the builder's current state (not added)."""
    m = b.model
    files = [f for f in ACE_FILES if m.resolve(f) is not None and m.nodes[m.resolve(f)].kind == FILE]
    absent = [f for f in ACE_FILES if m.resolve(f) is None]
    dirs = [d for d in ACE_DIRS + ("d0/s", "d1/s") if m.resolve(d) is not None]
    out: list[dict] = []
    out += [{"op": "creat", "path": f} for f in absent]
    for f in files:
        size = b.size(f)
        out += [{"op": "write", "path": f, "off": -(-size // BLOCK) * BLOCK + BLOCK, "len": BLOCK},
                {"op": "write", "path": f, "off": size, "len": 1000},
                {"op": "truncate", "path": f, "size": size // 2},
                {"op": "truncate", "path": f, "size": size + 5000},
                {"op": "unlink", "path": f},
                {"op": "setxattr", "path": f, "name": "user.x"},
                {"op": "fsync", "path": f},
                {"op": "fdatasync", "path": f}]
        if size:
            out.append({"op": "write", "path": f, "off": 0, "len": min(size, 3000)})  # overwrite
        out += [{"op": "link", "path": f, "dst": g} for g in absent]
        out += [{"op": "rename", "path": f, "dst": g} for g in ACE_FILES if g != f]
    out += [{"op": "mkdir", "path": f"{d}/s"} for d in ACE_DIRS if m.resolve(f"{d}/s") is None and d in dirs]
    out += [{"op": "rmdir", "path": d} for d in dirs if not m.nodes[m.resolve(d)].entries]
    out += [{"op": "fsync", "path": d} for d in ACE_DIRS if d in dirs]
    out += [{"op": "setxattr", "path": "d1", "name": "user.x"}] if "d1" in dirs else []
    return out


def ace_sequences(seed: int) -> list[tuple[list[dict], list[dict]]]:
    """Every sequence of one or two core operations (as (set-up, operations)), in a fixed order."""
    out = []
    for first in ace_variants(ace_setup(seed)):
        b = ace_setup(seed)
        if not b.add(**first):
            continue
        out.append((b.ops[:-1], b.ops[-1:]))
        for second in ace_variants(b):
            b2 = ace_setup(seed)
            b2.add(**first)
            if b2.add(**second):
                out.append((b2.ops[:-2], b2.ops[-2:]))
    return out


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    sys.exit(run_spec(spec))


if __name__ == "__main__":
    main()
