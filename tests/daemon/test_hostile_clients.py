"""Hostile input to a root daemon (issue 9): no request, client or planted file can take it down.

The attacker is uid 65534 (nobody), the image's owner: the one user besides root and the mounter who
may connect to the daemon's sockets (0600, docs/dax.md), so the one who can send them anything; a
third user cannot even connect. The mount is root's, with allow_other. For every attack the test
asserts the refusal where one is due, then that the daemon lives on: the same pid, a mount that
answers (stat, write, read) and `daxfs stats` with no request_errors. The requests tried are counted
and printed (`pytest -s`).

Also here: a root daxfs.dax client SIGKILLed in the middle of write faults, many times; the state
directory and the log, which another user must not be able to plant or redirect.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import pickle
import random
import resource
import select
import shutil
import signal
import socket
import stat
import threading
import time
import traceback

import pytest

from daxfs import dax
from daxfs.daemon import control as ctl
from daxfs.daemon import mount as daemon_mount
from daxfs.dax.protocol import MAX_FAULT_PAGES
from daxfs.engine.errors import DaxfsError
from daxfs.engine.format import MAX_FILE_BLOCKS
from daxfs.testing import Mount
from helpers import BS, as_user, assert_one_line_error, daxfs, errno_as_user, is_mounted, read_file, wait_until

pytestmark = pytest.mark.mount

USER = 65534  # the attacker: the image's owner, not the mounter
THIRD = 65533  # a user with no business with the sockets at all
VALIDATE_SYNC = dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC
TRIED = {"requests": 0, "alive": 0}  # requests and connections tried; checks that the daemon lived on


def tried(n: int) -> None:
    TRIED["requests"] += n


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nhostile clients: {TRIED['requests']} requests and connections tried; the daemon was alive, same pid, "
          f"mount answering, no request errors, at all {TRIED['alive']} checks")


# --- the target -----------------------------------------------------------------------------------------
class Target:
    def __init__(self, m: Mount) -> None:
        self.m = m
        self.pid = m.pid()
        self.control = os.getxattr(m.mnt, "user.daxfs.control").decode()
        self.fds = os.path.join(os.path.dirname(self.control), "dax")
        self.victim = m / "victim"  # the attacker's own file, for fault ops
        fd = os.open(self.victim, os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(fd, 64 * BS)
        os.fsync(fd)
        os.close(fd)
        os.chown(self.victim, USER, USER)
        self.ino = os.stat(self.victim).st_ino
        self.rounds = 0

    def alive(self) -> None:
        """The daemon that was attacked still serves: same pid, stat, write, read, no request errors."""
        m = self.m
        assert is_mounted(m.mnt)
        s = m.stats()
        assert s["pid"] == self.pid, "the daemon was replaced or restarted"
        assert s["request_errors"] == 0, "an op failed unexpectedly: see the log"
        self.rounds += 1
        path = m / "canary"
        data = b"alive %d\n" % self.rounds
        with open(path, "wb") as f:
            f.write(data)
        os.stat(path)
        assert read_file(path) == data
        assert os.kill(self.pid, 0) is None
        TRIED["alive"] += 1


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    m = Mount.create(d, "64M", "allow_other")
    os.chown(m.image, USER, USER)  # the attacker owns the image: it may connect, it did not mount
    m.mount()
    t = Target(m)
    yield t
    try:
        t.alive()
        m.umount()
    finally:
        problems = m.cleanup()
    assert not problems, problems


# --- the attacker's side (runs in a child as USER) ------------------------------------------------------
def _connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def _send(s: socket.socket, data: bytes) -> bool:
    """False if the daemon closed before it took everything (which it may, for a message too long)."""
    try:
        s.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _reply(s: socket.socket) -> dict | None:
    """The next line from the daemon as JSON; None if it closed the connection first."""
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return json.loads(buf) if buf.strip() else None
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def _closed(s: socket.socket, timeout: float) -> bool:
    """Does the daemon close s (EOF, after whatever it sent) within timeout?"""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([s], [], [], left)
        if r:
            try:
                if not s.recv(65536):
                    return True
            except ConnectionResetError:
                return True


def _lines(path: str, lines: list[bytes]) -> list[dict | None]:
    """Each line on its own connection: the daemon's first answer (None: closed without one)."""
    out = []
    for line in lines:
        with _connect(path) as s:
            _send(s, line + b"\n")
            out.append(_reply(s))
    return out


def _requests(path: str, reqs: list[dict]) -> list[dict | None]:
    """Requests in order on one connection (a new one whenever the daemon closed the last)."""
    out = []
    s = _connect(path)
    try:
        for req in reqs:
            if not _send(s, json.dumps(req).encode() + b"\n"):
                out.append(None)
            else:
                out.append(_reply(s))
            if out[-1] is None:
                s.close()
                s = _connect(path)
    finally:
        s.close()
    return out


def _my_mapping(path: str, ino: int) -> tuple[socket.socket, int]:
    """A real mapping of this process (dax_map asked by hand), so that fault ops get past EBADF."""
    s = _connect(path)
    _send(s, json.dumps({"op": "dax_map", "ino": ino, "offset": 0, "length": 64 * BS, "write": True}).encode() + b"\n")
    r = _reply(s)
    assert r and r["ok"], r
    return s, r["id"]


def refused(reply: dict | None, *prefixes: str) -> str:
    assert reply is not None, "the daemon closed the connection without an answer"
    assert reply.get("ok") is False, reply
    err = reply["error"]
    assert err.startswith(prefixes), err
    assert not err.startswith("EIO"), err
    return err


# --- 1. messages that are not messages ------------------------------------------------------------------
GARBAGE = [
    b'{"op": "dax_fault", "id": Infinity, "page": 0, "count": 1}',
    b'{"op": "dax_fault", "id": -Infinity, "page": 0, "count": 1}',
    b'{"op": "dax_fault", "id": NaN, "page": 0, "count": 1}',
    b'{"op": "dax_map", "ino": 1, "offset": NaN, "length": 4096}',
    b'{"op": "crash_at", "point": "commit.done", "nth": Infinity}',
    b'{"op": "dax_fault", "id": 1e400, "page": 0, "count": 1}',  # a float, infinite
    b'{"op": "dax_map", "ino": 2, "offset": -1e400, "length": 4096}',
    b'{"op": "dax_fault", "id": 1, "page": 0, "count": 1E400, "write": true}',
    b'{"op": "dax_fault", "id": ' + b"9" * 5000 + b', "page": 0, "count": 1}',  # beyond int() of a string
    b"[" * 30000 + b"]" * 30000,  # nested 30,000 deep, within the size cap
    b'{"a": ' * 6000 + b"1" + b"}" * 6000,
    b'{"op": "\xff\xfe"}',  # invalid UTF-8
    b'{"op": "passes", "x": "\xc3\x28"}',
    b"\xef\xbb\xbf\xff",
    b"[1, 2, 3]", b'["op", "passes"]', b'"passes"', b"42", b"null", b"true", b"", b"   ", b"{", b"}", b'{"op": ',
    b"\x00\x00\x00", b'{"op": "passes"}{"op": "passes"}',
]
TOO_LONG = [b"[" * 100_000, b'{"op": "mark", "text": "' + b"x" * (10 << 20) + b'"}']  # 10^5 deep; a 10 MiB line


def test_messages_that_are_not_messages_are_refused_and_end_only_their_connection(target):
    replies = as_user(_lines, target.control, GARBAGE)
    tried(len(GARBAGE))
    for line, r in zip(GARBAGE, replies):
        refused(r, "EINVAL")
    target.alive()
    replies = as_user(_lines, target.control, TOO_LONG)
    tried(len(TOO_LONG))
    for r in replies:
        assert "EMSGSIZE" in refused(r, "EMSGSIZE")
    target.alive()


def _bad_ops() -> list[dict]:
    return [{}, {"op": None}, {"op": 5}, {"op": True}, {"op": ["passes"]}, {"op": {"op": "passes"}},
            {"op": "nope"}, {"op": "PASSES"}, {"op": "x" * 60000}, {"op": "dax_map\u0000"}, {"text": "no op"}]


def test_unknown_and_mistyped_ops_are_refused_and_the_connection_goes_on(target):
    reqs = _bad_ops()
    replies = as_user(_requests, target.control, reqs + [{"op": "passes"}])
    tried(len(reqs) + 1)
    for r in replies[:-1]:
        assert "unknown op" in refused(r, "EINVAL")
    refused(replies[-1], "EPERM")  # the same connection still answers
    target.alive()


# --- 2. every op with each field missing or mistyped ------------------------------------------------------
INT_BAD = [None, True, False, 1.5, -0.5, 1e300, 4096.0, "1", "", [], [1], {}, {"n": 1}, -1, 2 ** 63, 2 ** 64, 10 ** 30,
           -(2 ** 70)]
BOOL_BAD = [None, 0, 1, 2, "true", "false", "", 1.5, [], {}]
STR_BAD = [None, 5, 1.5, True, [], ["commit.done"], {}]
# op -> {field: (kind, optional, too big)}
OPS = {
    "dax_map": {"ino": (int, False, 2 ** 63), "offset": (int, False, MAX_FILE_BLOCKS * BS + BS),
                "length": (int, False, MAX_FILE_BLOCKS * BS + 1), "write": (bool, True, None),
                "sync": (bool, True, None)},
    "dax_fault": {"id": (int, False, 2 ** 63), "page": (int, False, MAX_FILE_BLOCKS + 1),
                  "count": (int, False, MAX_FAULT_PAGES + 1), "write": (bool, True, None)},
    "dax_sync": {"id": (int, False, 2 ** 63)},
    "dax_unmap": {"id": (int, False, 2 ** 63)},
    "crash_at": {"point": (str, False, "x" * 101), "nth": (int, True, 10 ** 6 + 1)},
    "mark": {"text": (str, False, "x" * 1001)},
}


def _variants(op: str, base: dict) -> list[tuple[str, dict]]:
    """(field, request) for each field of op missing (unless optional) and for each bad value."""
    out = []
    for name, (kind, optional, too_big) in OPS[op].items():
        bad = {int: INT_BAD, bool: BOOL_BAD, str: STR_BAD}[kind] + [too_big] * (too_big is not None)
        if kind is int and name in ("ino", "id", "length", "count", "nth"):
            bad = bad + [0]
        if not optional:
            out.append((name, {k: v for k, v in base.items() if k != name}))
        out += [(name, {**base, name: v}) for v in bad]
    return out


def _bases(ino: int, map_id: int) -> dict[str, dict]:
    return {"dax_map": {"op": "dax_map", "ino": ino, "offset": 0, "length": BS, "write": False, "sync": False},
            "dax_fault": {"op": "dax_fault", "id": map_id, "page": 0, "count": 1, "write": False},
            "dax_sync": {"op": "dax_sync", "id": map_id},
            "dax_unmap": {"op": "dax_unmap", "id": map_id},
            "crash_at": {"op": "crash_at", "point": "commit.done", "nth": 1},
            "mark": {"op": "mark", "text": "a mark"}}


def _fault_ops_mistyped(path: str, ino: int) -> list[tuple[str, str, dict | None]]:
    s, map_id = _my_mapping(path, ino)
    with s:
        bases = _bases(ino, map_id)
        out = []
        for op in ("dax_map", "dax_fault", "dax_sync", "dax_unmap"):
            variants = _variants(op, bases[op])
            replies = _requests_on(s, [req for _, req in variants])
            out += [(name, json.dumps(req)[:200], r) for (name, req), r in zip(variants, replies)]
        # unknown fields are ignored: a valid request with extra ones works
        extra = _requests_on(s, [{**bases["dax_fault"], "zzz": [1, {"a": None}], "id2": 1.5},
                                 {**bases["dax_sync"], "more": "please"}])
        out += [("", "extra fields", r) for r in extra]
        return out


def _requests_on(s: socket.socket, reqs: list[dict]) -> list[dict | None]:
    out = []
    for req in reqs:
        _send(s, json.dumps(req).encode() + b"\n")
        out.append(_reply(s))
    return out


def test_every_fault_op_with_each_field_missing_or_mistyped_is_refused_naming_the_field(target):
    results = as_user(_fault_ops_mistyped, target.control, target.ino)
    tried(len(results))
    for name, req, r in results:
        if not name:
            assert r is not None and r["ok"], (req, r)
            continue
        err = refused(r, "EINVAL")
        assert repr(name) in err, (req, err)
    target.alive()


def test_every_privileged_op_with_each_field_missing_or_mistyped_is_refused_to_root_too(target):
    """The mounter's own mistakes in crash_at and mark are EINVAL naming the field, never an error
    of the daemon (and never an armed crash point)."""
    bases = _bases(target.ino, 1)
    variants = _variants("crash_at", bases["crash_at"]) + _variants("mark", bases["mark"])
    replies = _requests(target.control, [req for _, req in variants])  # as root
    tried(len(variants))
    for (name, req), r in zip(variants, replies):
        assert repr(name) in refused(r, "EINVAL"), req
    assert _requests(target.control, [{"op": "crash_at", "point": "no.such.point"}])[0]["error"].startswith("EINVAL")
    target.alive()


def _descriptor_requests(path: str, lines: list[bytes]) -> list[tuple[dict | None, int]]:
    out = []
    for line in lines:
        with _connect(path) as s:
            _send(s, line)
            try:
                msg, fds, _, _ = socket.recv_fds(s, 4096, 2)
            except ConnectionResetError:
                msg, fds = b"", []
            for fd in fds:
                os.close(fd)
            out.append((json.loads(msg.split(b"\n")[0]) if msg.strip() else None, len(fds)))
    return out


def test_the_descriptor_socket_refuses_what_is_no_request_and_hands_the_owner_its_descriptors(target):
    bad = [b'{"write": "yes"}\n', b'{"write": 1}\n', b'{"write": null}\n', b'{"write": Infinity}\n', b"[true]\n",
           b"\xff\n", b"[" * 3000 + b"\n", b"x" * 5000 + b"\n", b"{" * 100_000]
    results = as_user(_descriptor_requests, target.fds, bad + [b'{"write": true}\n', b'{"extra": [1]}\n'])
    tried(len(bad) + 2)
    for (r, nfds) in results[:len(bad)]:
        refused(r, "EINVAL", "EMSGSIZE")
        assert nfds == 0
    for r, nfds in results[len(bad):]:
        assert r == {"ok": True} and nfds == 2  # the image's owner may have them
    target.alive()


# --- 3. peers that go away, stall, or never read ----------------------------------------------------------
def _hit_and_run(path: str, fds_path: str, ino: int) -> int:
    n = 0
    for i in range(40):  # a request, then gone before the answer: each kind of op
        with _connect(path) as s:
            s.sendall(json.dumps({"op": "dax_map", "ino": ino, "offset": 0, "length": 4 * BS,
                                  "write": True, "sync": True}).encode() + b"\n")
            if i % 2:
                r = _reply(s)
                s.sendall(json.dumps({"op": "dax_fault", "id": r["id"], "page": i % 4, "count": 1,
                                      "write": True}).encode() + b"\n")
                n += 1
        n += 1
    with _connect(path) as s:  # 500 requests in one go, not one answer read
        s.sendall(b'{"op": "passes"}\n' * 500)
        n += 500
    for i in range(40):  # the descriptor socket: asked, and gone
        with _connect(fds_path) as s:
            s.sendall(b'{"write": true}\n')
            if i % 2:
                s.shutdown(socket.SHUT_RDWR)
        n += 1
    return n


def test_a_peer_that_closes_before_reading_its_answer_ends_only_its_connection(target):
    tried(as_user(_hit_and_run, target.control, target.fds, target.ino))
    target.alive()
    assert wait_until(lambda: target.m.stats()["dax_mappings"] == 0, timeout=10)  # its mappings were reaped
    target.alive()


def _stall(path: str) -> dict:
    """A half line then silence; a line one byte every half second; a flood of requests whose answers
    are never read. Each must be closed by the daemon about LINE_TIMEOUT or SEND_TIMEOUT later."""
    t0 = time.monotonic()
    half = _connect(path)
    half.sendall(b'{"op": "pass')
    loris = _connect(path)
    flood = _connect(path)
    flood.setblocking(False)
    sent = 0
    last = time.monotonic()
    while time.monotonic() - last < 1:  # until the daemon, its replies unread, takes nothing more
        try:
            flood.send(b'{"op": "passes"}\n')
            sent += 1
            last = time.monotonic()
        except BlockingIOError:
            time.sleep(0.05)
    closed: dict[str, float] = {}
    while time.monotonic() - t0 < ctl.LINE_TIMEOUT + 6 and len(closed) < 2:
        if "loris" not in closed:
            try:
                loris.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed["loris"] = time.monotonic() - t0
        if "half" not in closed and _closed(half, 0.5):
            closed["half"] = time.monotonic() - t0
    time.sleep(max(0.0, ctl.SEND_TIMEOUT + 1 - (time.monotonic() - t0)))
    flood.setblocking(True)
    closed["flood"] = time.monotonic() - t0 if _closed(flood, 5) else -1
    for s in (half, loris, flood):
        s.close()
    return {"closed": closed, "flood_requests": sent}


def test_a_peer_that_stalls_is_cut_off_and_the_mount_answers_meanwhile(target):
    out: dict = {}

    def attack() -> None:
        try:
            out["result"] = as_user(_stall, target.control)
        except BaseException as e:
            out["error"] = e

    attacker = threading.Thread(target=attack)
    attacker.start()
    while attacker.is_alive():
        target.alive()
        attacker.join(1)
    if "error" in out:
        raise out["error"]
    r = out["result"]
    tried(3 + r["flood_requests"])
    closed = r["closed"]
    assert ctl.LINE_TIMEOUT - 1 <= closed["half"] <= ctl.LINE_TIMEOUT + 3, closed
    assert ctl.LINE_TIMEOUT - 1 <= closed.get("loris", 99) <= ctl.LINE_TIMEOUT + 3, closed  # from its first byte
    assert closed["flood"] > 0, closed
    target.alive()


# --- 4. many connections ------------------------------------------------------------------------------------
class Held:
    """fn(*args) run in a child as USER, which reports what fn returned and then holds everything it
    opened until release()."""

    def __init__(self, fn, *args, uid: int = USER) -> None:
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(r)
                os.close(go_w)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                try:
                    result = ("ok", fn(*args))
                except BaseException:
                    result = ("error", traceback.format_exc())
                os.write(w, pickle.dumps(result))
                os.close(w)
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(w)
        os.close(go_r)
        self.go = go_w
        with os.fdopen(r, "rb") as f:
            kind, value = pickle.loads(f.read())
        if kind != "ok":
            self.release()
            raise AssertionError(f"child failed:\n{value}")
        self.result = value

    def release(self) -> None:
        os.write(self.go, b"x")
        os.close(self.go)
        os.waitpid(self.pid, 0)


def _many(path: str, n: int) -> tuple[list[socket.socket], int, int]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        socks.append(s)
    # the daemon closes those beyond the cap at once: wait until what is open stops changing
    by_fd = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    open_ = set(by_fd)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        events = poller.poll(500)
        if not events and len(open_) <= ctl.MAX_CONNECTIONS_PER_UID:
            break
        for fd, _ in events:
            try:
                data = by_fd[fd].recv(1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                open_.discard(fd)
                poller.unregister(fd)
    return socks, len(open_), n - len(open_)


def _idle(control: str, fds: str, n: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 100)), hard))
    global _kept
    a, open_a, closed_a = _many(control, n)
    b, open_b, closed_b = _many(fds, n)
    _kept = a + b
    return open_a, closed_a, open_b, closed_b


def _one_more(path: str) -> dict | None:
    with _connect(path, timeout=5) as s:
        _send(s, b'{"op": "passes"}\n')
        return _reply(s)


def test_two_thousand_idle_connections_get_the_per_uid_cap_and_no_more(target):
    cap = ctl.MAX_CONNECTIONS_PER_UID
    before = target.m.stats()["connections_refused"]
    held = Held(_idle, target.control, target.fds, 2000)
    tried(4000)
    try:
        open_a, closed_a, open_b, closed_b = held.result
        assert (open_a, closed_a) == (cap, 2000 - cap)
        assert (open_b, closed_b) == (cap, 2000 - cap)
        # while they are held: the mount answers, root is served, a further connection of USER is closed
        target.alive()
        assert _requests(target.control, [{"op": "passes"}])[0]["ok"]
        assert as_user(_one_more, target.control) is None
        tried(1)
        s = target.m.stats()
        assert s["connections_refused"] - before >= 2 * (2000 - cap) + 1
        assert len(os.listdir(f"/proc/{target.pid}/fd")) < 2 * cap + 100
    finally:
        held.release()
    # once they are closed, USER is served again
    assert wait_until(lambda: as_user(_one_more, target.control) is not None, timeout=10)
    refused(as_user(_one_more, target.control), "EPERM")
    tried(2)
    log = read_file(target.m.image + ".log").decode()
    assert log.count(f"uid {USER} has {cap} connections open") == 2  # once per socket
    target.alive()


def test_accept_out_of_descriptors_backs_off_and_serves_again(target):
    """EMFILE at accept(): the daemon's descriptor limit lowered to what it has open plus a few, then
    root (no per-uid cap) opens more connections than that."""
    assert wait_until(lambda: target.m.stats()["dax_mappings"] == 0, timeout=10)
    limit = resource.prlimit(target.pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{target.pid}/fd"))
    resource.prlimit(target.pid, resource.RLIMIT_NOFILE, (in_use + 8, limit[1]))
    socks = []
    try:
        for _ in range(60):
            socks.append(_connect(target.control))
        tried(60)
        assert wait_until(lambda: target.m.stats()["accept_failures"] > 0, timeout=10)
        target.alive()  # FUSE needs no new descriptor
        time.sleep(1)  # a second of backing off: ten more accept() tries, no more log lines
    finally:
        for s in socks:
            s.close()
        resource.prlimit(target.pid, resource.RLIMIT_NOFILE, limit)
    assert wait_until(lambda: bool(_requests(target.control, [{"op": "passes"}])[0]["ok"]), timeout=10)
    log = read_file(target.m.image + ".log").decode()
    assert log.count("accept failed") == 1 and "accepting connections again" in log
    target.alive()


# --- 5. who may ---------------------------------------------------------------------------------------------
def test_every_privileged_op_as_another_user_is_refused(target):
    reqs = [{"op": "crash"}, {"op": "crash_at", "point": "commit.done", "nth": 1},
            {"op": "crash_at", "point": "commit.done"}, {"op": "mark", "text": "MARK by nobody"}, {"op": "passes"},
            {"op": "crash", "extra": 1}]
    replies = as_user(_requests, target.control, reqs)
    tried(len(reqs))
    for r in replies:
        assert f"uid {USER}" in refused(r, "EPERM")
    assert "MARK by nobody" not in read_file(target.m.image + ".log").decode()
    target.alive()
    # the daemon took none of them: a commit passes no armed crash point
    with open(target.m / "commit-me", "wb") as f:
        f.write(b"x")
        os.fsync(f.fileno())
    target.alive()


def test_a_third_user_cannot_reach_the_sockets_at_all(target):
    for path in (target.control, target.fds):
        assert errno_as_user(_connect, path, uid=THIRD, gid=THIRD) == errno.EACCES
    tried(2)
    st = os.stat(target.control)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == USER
    d = os.path.dirname(target.control)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o711 and os.lstat(d).st_uid == 0
    assert stat.S_IMODE(os.lstat(os.path.dirname(d)).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(os.path.join(d, "board")).st_mode) == 0o600
    assert errno_as_user(os.listdir, d, uid=USER, gid=USER) == errno.EACCES  # no listing, no planting
    assert errno_as_user(os.mkdir, os.path.join(d, "x"), uid=USER, gid=USER) == errno.EACCES
    assert errno_as_user(os.unlink, target.control, uid=USER, gid=USER) == errno.EACCES
    target.alive()


def test_the_sockets_of_a_root_image_are_root_s_alone(daxmount):
    m = daxmount("allow_other")
    control = os.getxattr(m.mnt, "user.daxfs.control").decode()
    d = os.path.dirname(control)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700 and os.stat(control).st_uid == 0
    for path in (control, os.path.join(d, "dax")):
        assert errno_as_user(_connect, path) == errno.EACCES
    tried(2)
    assert m.answers()


# --- 6. a root client killed in the middle of write faults --------------------------------------------------
KILLS = 60
PAGES = 32


def _fault_forever(path: str, flag: mmap.mmap, ready: int) -> None:
    """Map, write-fault every page (MAP_SYNC: each fault commits), unmap, truncate, again, until killed.
    flag[0] is 1 while a store that faults is under way."""
    told = False
    while True:
        with dax.mmap(path, PAGES * BS, VALIDATE_SYNC) as mp:
            if not told:
                os.write(ready, b"r")
                told = True
            for p in range(PAGES):
                flag[0] = 1
                mp[p * BS] = p
                flag[0] = 0
        os.truncate(path, 0)
        os.truncate(path, PAGES * BS)


def test_a_root_client_sigkilled_during_write_faults_leaves_the_daemon_serving(daxmount):
    m = daxmount("allow_other")
    pid = m.pid()
    path = m / "faulted"
    with open(path, "wb") as f:
        f.truncate(PAGES * BS)
    flag = mmap.mmap(-1, mmap.PAGESIZE)  # shared with the children
    rng = random.Random(9)
    in_fault = 0
    faults_before = m.stats()["write_faults"]
    for _ in range(KILLS):
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(r)
                _fault_forever(path, flag, w)
            finally:
                os._exit(1)
        os.close(w)
        assert os.read(r, 1) == b"r"
        os.close(r)
        time.sleep(rng.uniform(0, 0.04))
        os.kill(child, signal.SIGKILL)
        in_fault += flag[0]
        os.waitpid(child, 0)
        flag[0] = 0
    s = m.stats()
    print(f"\nkill during faults: {KILLS} clients SIGKILLed, {in_fault} inside a write fault, "
          f"{s['write_faults'] - faults_before} write faults served")
    assert in_fault >= KILLS // 3  # most kills land where they should
    assert s["pid"] == pid and s["request_errors"] == 0
    assert wait_until(lambda: m.stats()["dax_mappings"] == 0, timeout=15)  # the dead clients' mappings reaped
    with open(m / "after", "wb") as f:
        f.write(b"still here")
    # a child killed between its two truncates leaves the file empty: either size is a whole story
    assert read_file(m / "after") == b"still here" and os.stat(path).st_size in (0, PAGES * BS)
    m.umount()  # succeeds: nothing is left pinned or busy
    m.fsck()


# --- 7. the state directory ---------------------------------------------------------------------------------
def test_a_state_directory_another_user_made_first_is_not_used_or_is_refused(tmp_path):
    m = Mount.create(tmp_path, "16M")
    # where daxfs kept its sockets before, anyone could make the directory first: no longer used
    import hashlib
    digest = hashlib.sha1(os.path.realpath(m.image).encode()).hexdigest()[:16]
    old = os.path.join("/tmp", f"daxfs-0-{digest}")
    os.mkdir(old)
    try:
        os.chown(old, USER, USER)
        m.mount()
        assert not os.getxattr(m.mnt, "user.daxfs.control").decode().startswith(old)
        m.umount()
    finally:
        os.rmdir(old)
    d = daemon_mount.state_path(m.image)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        # the image's own directory: a symlink in its place, or someone else's directory, is refused
        os.symlink(elsewhere, d)
        p = daxfs("mount", m.image, m.mnt)
        assert "is a symlink" in assert_one_line_error(p, d)
        assert not is_mounted(m.mnt) and os.listdir(elsewhere) == []
        os.unlink(d)
        os.mkdir(d, 0o700)
        os.chown(d, USER, USER)
        p = daxfs("mount", m.image, m.mnt)
        assert f"belongs to uid {USER}" in assert_one_line_error(p, d, "remove it")
        assert not is_mounted(m.mnt)
    finally:
        if os.path.islink(d):
            os.unlink(d)
        shutil.rmtree(d, ignore_errors=True)
    m.mount()
    m.umount()
    assert m.cleanup() == []


def _state_as_user(tmpdir: str, xdg: str | None) -> str:
    """state_directory() as this user would make it, with TMPDIR and XDG_RUNTIME_DIR as given."""
    import tempfile
    tempfile.tempdir = tmpdir
    os.environ.pop("XDG_RUNTIME_DIR", None)
    if xdg is not None:
        os.environ["XDG_RUNTIME_DIR"] = xdg
    try:
        return daemon_mount.state_directory("/some/image", os.getuid())
    except DaxfsError as e:
        return f"refused: {e}"


@pytest.fixture
def public_tmp():
    """A directory other users may walk through (pytest's tmp_path is under a root-only 0700 one)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="daxfs-hostile-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_another_user_s_state_base_is_private_or_refused(public_tmp):
    """For a user other than root: $XDG_RUNTIME_DIR/daxfs when that is theirs and 0700, else
    TMPDIR/daxfs-UID, which another user may have made first: then refused, saying what to remove."""
    j = os.path.join
    shared = j(public_tmp, "tmp")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    xdg = j(public_tmp, "run-user")
    os.mkdir(xdg, 0o700)
    os.chown(xdg, USER, USER)
    ours = j(shared, f"daxfs-{USER}")
    # XDG_RUNTIME_DIR, USER's and 0700: used, and what is made there is 0700
    d = as_user(_state_as_user, shared, xdg)
    assert os.path.dirname(d) == j(xdg, "daxfs"), d
    for path in (d, os.path.dirname(d)):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700 and os.lstat(path).st_uid == USER
    # an XDG_RUNTIME_DIR that is not private: TMPDIR's daxfs-UID instead
    os.chmod(xdg, 0o755)
    assert os.path.dirname(as_user(_state_as_user, shared, xdg)) == ours
    assert stat.S_IMODE(os.lstat(ours).st_mode) == 0o700 and os.lstat(ours).st_uid == USER
    shutil.rmtree(ours)
    # made first by someone else (root here), or a symlink there, or too open: refused
    os.mkdir(ours, 0o700)
    r = as_user(_state_as_user, shared, None)
    assert r.startswith("refused: ") and "belongs to uid 0" in r and "remove it" in r, r
    os.rmdir(ours)
    elsewhere = j(public_tmp, "elsewhere")
    os.mkdir(elsewhere)
    os.chown(elsewhere, USER, USER)
    os.symlink(elsewhere, ours)
    r = as_user(_state_as_user, shared, None)
    assert r.startswith("refused: ") and "is a symlink" in r and os.listdir(elsewhere) == [], r
    os.unlink(ours)
    os.mkdir(ours, 0o755)
    os.chown(ours, USER, USER)
    r = as_user(_state_as_user, shared, None)
    assert r.startswith("refused: ") and "mode 0755" in r, r
    os.rmdir(ours)
    with open(ours, "w"):
        pass
    assert "not a directory" in as_user(_state_as_user, shared, None)


# --- 8. the log ---------------------------------------------------------------------------------------------
def test_a_planted_log_is_refused_and_nothing_is_written_through_it(tmp_path):
    m = Mount.create(tmp_path, "16M")
    log = m.image + ".log"
    precious = tmp_path / "precious"
    precious.write_bytes(b"root's file\n")
    cases = [("symlink", lambda: os.symlink(precious, log), "is a symlink; refusing to follow it"),
             ("dangling symlink", lambda: os.symlink(tmp_path / "made-by-root", log), "is a symlink"),
             ("another user's", lambda: (open(log, "wb").close(), os.chown(log, USER, USER)),
              f"belongs to uid {USER}"),
             ("hard link", lambda: os.link(precious, log), "hard links"),
             ("fifo", lambda: os.mkfifo(log), "not a regular file"),
             ("directory", lambda: os.mkdir(log), "not a regular file")]
    for what, plant, message in cases:
        plant()
        t0 = time.monotonic()
        p = daxfs("mount", m.image, m.mnt, timeout=30)
        assert message in assert_one_line_error(p, log), what
        assert time.monotonic() - t0 < 20 and not is_mounted(m.mnt), what
        assert precious.read_bytes() == b"root's file\n" and not (tmp_path / "made-by-root").exists(), what
        if os.path.isdir(log) and not os.path.islink(log):
            os.rmdir(log)
        else:
            os.unlink(log)
    m.mount()  # a log of its own: made 0600, and used
    assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600 and "mounted" in read_file(log).decode()
    m.umount()
    assert m.cleanup() == []
