"""Hostile images (issue 9): the fuzzer of tools/fuzz_images.py, a bounded run of it, and the hostile
images it is known to have found, each rebuilt by hand.

`make fuzz` is the long run (thousands of images through fsck/inspect, hundreds through a mount). Here:
  * the mutators are deterministic per (seed, case), and a field edit keeps every checksum valid (also
    through the journal: the commit record's CRC is recomputed, so replay accepts the edited image);
  * the fuzzer's own classification: a DaxfsError is a refusal, anything else a traceback, and a
    daemon's log (exception groups included) yields the exception and the daxfs frame;
  * a bounded run (200 images through fsck and inspect, 10 through mount + walk + write + umount):
    no traceback, no daemon death, no hang, nothing left mounted;
  * known hostile images, built with the fuzzer's helpers (field edits, resealed), as regression tests:
    each must be refused or survived, and fsck must call each one damaged.
"""

from __future__ import annotations

import importlib.util
import os
import random
import struct
import sys

import pytest

from helpers import REPO

# tools/ is no package: load the fuzzer from its path, as `python tools/fuzz_images.py` runs it
_spec = importlib.util.spec_from_file_location("fuzz_images", os.path.join(REPO, "tools", "fuzz_images.py"))
fz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_images"] = fz
_spec.loader.exec_module(fz)

fmt = fz.fmt  # the daxfs modules, through the fuzzer's one adapter section
BS = fmt.BLOCK_SIZE
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = SHM or str(tmp_path_factory.mktemp("fuzz"))
    d = os.path.join(base, f"daxfs-test-fuzz-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    yield d
    fz.sweep(d)
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(workdir) -> fz.Corpus:
    return fz.Corpus(7, fz.build_seeds(7, os.path.join(workdir, "seeds")))


# --- the mutators ------------------------------------------------------------------------------------
def test_layout_tables_match_format():
    fz.self_check_layouts()


def test_seed_images_are_reproducible(workdir, corpus):
    again = fz.Corpus(7, fz.build_seeds(7, os.path.join(workdir, "seeds-again")))
    assert again.digests == corpus.digests
    other = fz.Corpus(8, fz.build_seeds(8, os.path.join(workdir, "seeds-other")))
    assert other.digests["clean"] != corpus.digests["clean"]
    assert corpus.models["crashed"].txns and corpus.models["wrapped"].txns, "crashed seeds hold transactions"
    assert not corpus.models["clean"].txns
    for name in corpus.paths:
        report = fz.check(corpus.paths[name])
        assert report.clean, (name, report.lines())


def test_mutators_are_deterministic_per_seed_and_case(corpus):
    mutators, images = set(), set()
    for case in range(200):
        a, ma = corpus.mutate(case)
        b, mb = corpus.mutate(case)
        assert a == b and ma == mb, case
        mutators.add(ma.mutator)
        images.add(bytes(a))
    assert mutators == set(fz.MUTATORS), "200 cases use every mutator"
    assert len(images) > 190, "cases differ from each other"
    other = fz.Corpus.__new__(fz.Corpus)
    other.__dict__.update(corpus.__dict__, seed=corpus.seed + 1)
    assert any(other.mutate(c)[0] != corpus.mutate(c)[0] for c in range(5)), "another run seed, other cases"


def _field_edit_cases(corpus, n: int, **where) -> list[int]:
    out = []
    for case in range(20000):
        _, mut = corpus.mutate(case)
        if mut.mutator == "field_edit" and all(mut.detail.get(k) == v for k, v in where.items()):
            out.append(case)
            if len(out) == n:
                break
    return out


def _changed_blocks(seed: bytes, buf: bytes) -> list[int]:
    n = min(len(seed), len(buf)) // BS
    return [b for b in range(n) if seed[b * BS:(b + 1) * BS] != buf[b * BS:(b + 1) * BS]]


def test_field_edits_keep_every_checksum_valid(corpus):
    cases = _field_edit_cases(corpus, 150)
    assert len(cases) == 150
    for case in cases:
        buf, mut = corpus.mutate(case)
        seed = corpus.bytes[mut.seed_image]
        changed = _changed_blocks(seed, buf)
        assert changed or mut.detail.get("unchanged"), (case, mut.describe())
        for b in changed:
            block = buf[b * BS:(b + 1) * BS]
            crc = struct.unpack_from("<I", block, 8)[0]
            assert crc == fmt.block_crc(block), f"case {case}: block {b} fails its CRC after {mut.describe()}"


def test_field_edit_through_the_journal_is_replayed(corpus, workdir):
    """An edit of a block that a committed transaction holds goes into the journal image; the commit
    record's CRC is recomputed, so the scan still accepts every transaction."""
    cases = [c for c in _field_edit_cases(corpus, 400) if "in_journal_image_of_txn" in corpus.mutate(c)[1].detail]
    assert cases
    path = os.path.join(workdir, "journal-edit.img")
    for case in cases[:25]:
        mut = corpus.write_case(case, path)
        model = corpus.models[mut.seed_image]
        r = fz.guarded(lambda: fz.check(path))
        if r[0] != "ok":
            continue  # the edit made the image unreadable (a geometry field, say): nothing to replay
        assert r[1].journal.pending == len(model.txns), (case, mut.describe(), r[1].journal)


def test_a_named_field_is_set_and_resealed(corpus):
    """The root's size, as the fuzzer sets it: the field holds the new value, the block still verifies."""
    model = corpus.models["clean"]
    buf = bytearray(corpus.bytes["clean"])
    ctx = fz.Ctx(buf, model, random.Random(0), fz.Mutation("field_edit", "clean"))
    blk, off = fmt.inode_location(model.sb.itable_start, fmt.ROOT_INO)
    ctx.edit_block(blk, lambda o: fz.put_field(buf, o + off, fz.INODE_F["size"], 1 << 63))
    block = bytes(buf[blk * BS:(blk + 1) * BS])
    fmt.read_header(block, blk, fmt.K_INODES)  # magic, kind, crc and self all verify
    assert fmt.INODE.unpack_from(block, off)[8] == 1 << 63


# --- the fuzzer's classification ---------------------------------------------------------------------
def test_guarded_tells_refusals_from_tracebacks():
    def refuse():
        raise fz.DaxfsError("no")

    def crash():
        return {}["missing"]

    assert fz.guarded(lambda: 3) == ("ok", 3)
    assert fz.guarded(refuse) == ("refused", "DaxfsError: no")
    status, info = fz.guarded(crash)
    assert status == "traceback" and info["type"] == "KeyError" and "crash" in info["last_frame"]


def test_tracebacks_are_read_from_a_daemon_log():
    pkg = fz.DAXFS_PACKAGE_DIR
    log = f"""2026-01-01 00:00:00,000 daxfs[1] INFO mounted x on y
  + Exception Group Traceback (most recent call last):
  |   File "{pkg}/daemon.py", line 233, in serve
  |     trio.run(main)
  | ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/venv/site-packages/pyfuse3/_pyfuse3.py", line 58, in wrapper
    |   File "{pkg}/fuseops.py", line 108, in attrs
    |     a.st_size = inode.size
    |   File "src/pyfuse3/__init__.pyx", line 272, in pyfuse3.EntryAttributes.st_size.__set__
    | OverflowError: Python int too large to convert to C long
    +------------------------------------
Traceback (most recent call last):
  File "{pkg}/fs.py", line 10, in close
    x()
ValueError: plain one
"""
    tbs = fz.tracebacks_in(log)
    assert [t["type"] for t in tbs] == ["OverflowError", "ValueError"]
    assert tbs[0]["daxfs_frame"] == "daxfs/fuseops.py:108 in attrs"
    assert tbs[1]["message"] == "plain one" and tbs[1]["daxfs_frame"] == "daxfs/fs.py:10 in close"


def test_phase1_catches_hangs_deaths_and_tracebacks(tmp_path, monkeypatch):
    """The harness itself: a worker that hangs is a hang, one that dies or raises is a traceback; each
    is replaced and the run goes on; each failing case gets a replay line."""
    monkeypatch.setenv("FUZZ_IMAGES_SELFTEST", "hang:2,die:4,raise:6")
    workdir = os.path.join(SHM or str(tmp_path), f"daxfs-test-fuzzself-{os.getpid()}")
    run = fz.fuzz(3, list(range(9)), 0, workdir, jobs=2, timeout=5, mount_timeout=30, mem_limit=4 << 30)
    verdicts = {c: r["fsck"]["verdict"] for c, r in run.p1.items()}
    assert verdicts[2] == "hang" and verdicts[4] == "traceback" and verdicts[6] == "traceback", verdicts
    assert "worker died" in run.p1[4]["fsck"]["traceback"]["type"]
    assert run.p1[6]["fsck"]["traceback"]["type"] == "IndexError"
    assert all(v in ("clean", "errors", "operational") for c, v in verdicts.items() if c not in (2, 4, 6))
    assert run.p1[2]["mutator"] in fz.MUTATORS, "a lost case still says what it was"
    s = run.summary()["phase1"]
    assert (s["cases"], s["hangs"], s["tracebacks"]) == (9, 1, 2)
    assert run.failed()
    fails, _ = run.failures()
    replays = {e["replay"] for e in fails.values()}
    assert "tools/fuzz_images.py --seed 3 --case 2" in replays, replays


@pytest.mark.mount
def test_phase2_catches_a_hung_walk_and_leaves_nothing_behind(corpus, workdir, monkeypatch):
    monkeypatch.setenv("FUZZ_IMAGES_SELFTEST", "walk-hang")
    d = os.path.join(workdir, "walk-hang")
    os.makedirs(d, exist_ok=True)
    image = os.path.join(d, "image.img")
    with open(image, "wb") as f:
        f.write(corpus.bytes["clean"])
    res = fz.mount_check(image, d, {}, timeout=5, case=0)
    assert res["mount"]["result"] == "mounted" and res["pid"]
    assert "hang" in res["events"], res
    assert res["walk"]["hang_in"] == "selftest sleep"
    assert fz.mountinfo(os.path.join(d, "mnt")) is None, "left mounted"
    assert not fz.process_alive(res["pid"]), "the daemon was left running"


# --- a bounded run -------------------------------------------------------------------------------------
@pytest.mark.mount
def test_bounded_fuzz_run(tmp_path):
    base = SHM or str(tmp_path)
    workdir = os.path.join(base, f"daxfs-test-fuzzrun-{os.getpid()}")
    run = fz.fuzz(1, list(range(200)), 10, workdir, jobs=2, timeout=60, mount_timeout=60,
                  mem_limit=4 << 30, console=None, progress=False)
    assert not os.path.exists(workdir)
    assert not [ln for ln in open("/proc/self/mountinfo") if workdir in ln], "a mount was left behind"
    s = run.summary()
    assert s["phase1"]["cases"] == 200 and s["phase2"]["cases"] == 10
    fails, _ = run.failures()
    report = "\n".join(f"{k} ({len(e['cases'])} cases): {e['description']}\n    replay: {e['replay']}"
                       for k, e in fails.items())
    assert not run.failed(), "hostile images broke daxfs:\n" + report


# --- known hostile images, rebuilt by hand --------------------------------------------------------------
def _edit_root(corpus, seed: str, field: str, value) -> bytearray:
    model = corpus.models[seed]
    buf = bytearray(corpus.bytes[seed])
    ctx = fz.Ctx(buf, model, random.Random(0), fz.Mutation("field_edit", seed))
    blk, off = fmt.inode_location(model.sb.itable_start, fmt.ROOT_INO)
    ctx.edit_block(blk, lambda o: fz.put_field(buf, o + off, fz.INODE_F[field], value))
    return buf


def _edit_file(corpus, seed: str, name: bytes, field: str, value) -> bytearray:
    model = corpus.models[seed]
    blk, so = next((b, so) for (b, so, _, n) in model.dirents if n == name)
    ino = fmt.DIRENT.unpack_from(corpus.bytes[seed], model.where(blk) + so)[0]
    buf = bytearray(corpus.bytes[seed])
    ctx = fz.Ctx(buf, model, random.Random(0), fz.Mutation("field_edit", seed))
    tblk, off = fmt.inode_location(model.sb.itable_start, ino)
    ctx.edit_block(tblk, lambda o: fz.put_field(buf, o + off, fz.INODE_F[field], value))
    return buf


def _xattr_name_with_nul(corpus, seed: str = "clean") -> bytearray:
    model = corpus.models[seed]
    buf = bytearray(corpus.bytes[seed])
    ctx = fz.Ctx(buf, model, random.Random(0), fz.Mutation("field_edit", seed))
    ino = min(i for i, k in model.chains if k == fmt.K_XATTR)
    blk = model.chains[(ino, fmt.K_XATTR)][0]

    def change(o: int) -> None:
        nl = buf[o + fmt.HEADER_SIZE]
        assert nl > 2
        buf[o + fmt.HEADER_SIZE + 5 + 1] = 0  # "u\0er.color"

    ctx.edit_block(blk, change)
    return buf


def _root_marked_free(corpus, seed: str = "clean") -> bytearray:
    model = corpus.models[seed]
    buf = bytearray(corpus.bytes[seed])
    ctx = fz.Ctx(buf, model, random.Random(0), fz.Mutation("field_edit", seed))

    def change(o: int) -> None:
        buf[o + fmt.HEADER_SIZE] &= ~(1 << fmt.ROOT_INO) & 0xFF

    ctx.edit_block(model.sb.ibitmap_start, change)
    return buf


KNOWN = {
    "root size 2^63": lambda c: _edit_root(c, "clean", "size", 1 << 63),
    "root size 2^64-1": lambda c: _edit_root(c, "crashed", "size", (1 << 64) - 1),
    "file size 2^63": lambda c: _edit_file(c, "clean", b"small", "size", 1 << 63),
    "root blocks 2^60": lambda c: _edit_root(c, "clean", "blocks", 1 << 60),
    "file blocks 2^62": lambda c: _edit_file(c, "clean", b"big", "blocks", 1 << 62),
    "root mtime -1": lambda c: _edit_root(c, "clean", "mtime_ns", -1),
    "root nlink 2^32-1": lambda c: _edit_root(c, "clean", "nlink", (1 << 32) - 1),
    "xattr name with a NUL": _xattr_name_with_nul,
    "root inode marked free": _root_marked_free,
}
NOT_DAMAGE = {"root mtime -1"}  # legal values: fsck may call these clean


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_hostile_image_is_seen_by_fsck(corpus, workdir, name):
    path = os.path.join(workdir, "known-fsck.img")
    with open(path, "wb") as f:
        f.write(KNOWN[name](corpus))
    status, value = fz.guarded(lambda: fz.check(path))
    assert status != "traceback", value
    if name not in NOT_DAMAGE:
        assert status == "refused" or not value.clean, f"fsck calls an image with {name} clean"
    status, value = fz.guarded(lambda: fz.describe(path))
    assert status != "traceback", value


@pytest.mark.mount
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_hostile_image_survives_a_mount(corpus, workdir, name):
    """Mount, walk, write, unmount: refused with one line, or survived: no traceback in the daemon's
    log, no daemon death, no hang, and `daxfs umount` works."""
    d = os.path.join(workdir, "known-" + name.replace(" ", "-").replace("^", ""))
    os.makedirs(d, exist_ok=True)
    image = os.path.join(d, "image.img")
    with open(image, "wb") as f:
        f.write(KNOWN[name](corpus))
    res = fz.mount_check(image, d, {"structure": name}, timeout=60, case=0)
    assert fz.mountinfo(os.path.join(d, "mnt")) is None, "left mounted"
    mount = res.get("mount", {})
    assert mount.get("result") in ("mounted", "refused"), res
    assert not res["events"], f"{name}: {res['events']}: {res.get('log_tracebacks') or res.get('walk')}"
    if mount.get("result") == "mounted":
        assert not (res.get("umount") or {}).get("failed"), f"{name}: daxfs umount failed: {res['umount']}"
