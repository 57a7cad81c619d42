"""The metadata journal: transactions (journal.py), commit (commit.py), checkpoint (checkpoint.py),
replay at open (recovery.py) and the two superblock copies (superblock.py)."""

from __future__ import annotations

import threading
import time

import pytest

from daxfs.engine import crashpoint
from daxfs.engine import format as fmt
from daxfs.engine.crashpoint import PowerCut
from daxfs.engine.errors import CorruptImage, NotDaxfs
from daxfs.engine.fs import FileSystem
from daxfs.engine.pmem import PmemRegion
from daxfs.engine.fsck import check
from daxfs.engine.recovery import JournalDamaged, scan, seq_ceiling
from daxfs.engine.repair import repair_journal
from daxfs.engine.superblock import read_superblock, write_superblock
from daxfs.testing.power import CrashRegion
from helpers import crash, mkfile, power_cut, reopen


ROOT = fmt.ROOT_INO


def root_files(f: FileSystem) -> dict[bytes, bytes]:
    out = {}
    for _, name, ino, _ in f.readdir(ROOT):
        if name not in (b".", b".."):
            out[name] = f.read(ino, 0, f.inode(ino).size)
    return out


def commit_files(f: FileSystem, n: int, prefix: bytes = b"f") -> dict[bytes, bytes]:
    """n transactions, each creating one file with its own contents."""
    made = {}
    for i in range(n):
        name = b"%s%d" % (prefix, i)
        data = name * (i + 1)
        mkfile(f, name, data)
        f.commit()
        made[name] = data
    return made


def test_committed_transactions_are_replayed_after_a_crash(image):
    f = reopen(image)
    made = commit_files(f, 8)
    assert f.journal.stats_checkpoints == 0  # all 8 still only in the journal
    crash(f)
    g = reopen(image)
    assert g.open_report.replayed == 8
    assert g.open_report.was_dirty
    assert root_files(g) == made
    g.close()


def test_a_clean_close_leaves_nothing_to_replay(image):
    f = reopen(image)
    made = commit_files(f, 3)
    f.close()
    g = reopen(image)
    assert g.open_report.replayed == 0 and not g.open_report.was_dirty
    assert root_files(g) == made
    g.close()


def test_the_running_transaction_is_lost_in_a_crash(image):
    f = reopen(image)
    made = commit_files(f, 2)
    mkfile(f, b"uncommitted", b"x")
    crash(f)
    g = reopen(image)
    assert g.open_report.replayed == 2
    assert root_files(g) == made


@pytest.mark.parametrize("lose_unpersisted", [False, True])
@pytest.mark.parametrize("point", ["commit.ordered_data", "commit.records_written"])
def test_a_torn_commit_is_ignored_and_earlier_ones_survive(image, point, lose_unpersisted):
    f = FileSystem(CrashRegion(image, lose_unpersisted=lose_unpersisted))
    made = commit_files(f, 4)
    mkfile(f, b"torn", b"never committed")
    crashpoint.arm(point, 1, lambda name: (f.region.power_off(), power_cut(name)))
    with pytest.raises(PowerCut):
        f.commit()
    f.region.close()
    g = reopen(image)
    assert g.open_report.replayed == 4
    assert root_files(g) == made
    g.close()


@pytest.mark.parametrize("lose_unpersisted", [False, True])
def test_a_cut_after_the_commit_record_is_persisted_keeps_the_transaction(image, lose_unpersisted):
    f = FileSystem(CrashRegion(image, lose_unpersisted=lose_unpersisted))
    made = commit_files(f, 2)
    mkfile(f, b"done", b"committed")
    crashpoint.arm("commit.done", 1, lambda name: (f.region.power_off(), power_cut(name)))
    with pytest.raises(PowerCut):
        f.commit()
    f.region.close()
    g = reopen(image)
    assert g.open_report.replayed == 3
    assert root_files(g) == {**made, b"done": b"committed"}
    g.close()


def test_damage_before_committed_transactions_refuses_the_open_until_a_repair_discards_them(image):
    """A flipped bit in the second of three committed transactions: replay would keep the first and
    silently lose the other two. The open refuses instead; --repair keeps what replays, reports what
    it discarded, and resets the journal so that nothing discarded comes back after a later crash."""
    f = reopen(image)
    made = commit_files(f, 1)
    start = f.journal.head
    mkfile(f, b"second", b"2")
    f.commit()
    mkfile(f, b"third", b"3")  # after the damaged one: lost with it
    f.commit()
    crash(f)
    sb = read_superblock(PmemRegion(image, writable=False))
    r = PmemRegion(image)
    first_image = (sb.journal_start + start + 1) * fmt.BLOCK_SIZE  # the block after "second"'s descriptor
    r.store(first_image + 3000, bytes([r.load(first_image + 3000, 1)[0] ^ 0x10]))
    r.close()
    with pytest.raises(JournalDamaged) as e:
        reopen(image)
    assert "2 committed transactions" in str(e.value) and "fsck --repair" in str(e.value)
    assert len(check(image).problems) == 2
    report = repair_journal(image)
    assert report.replayed == 1 and [x.seq for x in report.lost] == [sb.journal_seq + 1, sb.journal_seq + 2]
    assert check(image).clean
    g = reopen(image)
    assert g.open_report.replayed == 0  # the repair replayed it already
    assert root_files(g) == made  # commit.py I3: "second" failed its crc, "third" went with it
    mkfile(g, b"fourth", b"4")
    g.commit()
    crash(g)
    h = reopen(image)  # the new transaction must not be chained into the discarded ones
    assert root_files(h) == {**made, b"fourth": b"4"} and h.open_report.replayed == 1
    h.close()
    assert check(image).clean


def test_after_replay_new_transactions_are_numbered_past_every_sequence_in_the_journal(image):
    f = reopen(image)
    commit_files(f, 3)
    crash(f)
    r = PmemRegion(image, writable=False)
    ceiling = seq_ceiling(r, read_superblock(r))
    r.close()
    g = reopen(image)
    assert g.journal.running_tid >= ceiling
    g.close()


@pytest.mark.parametrize("point", ["checkpoint.half_written", "checkpoint.before_tail"])
@pytest.mark.parametrize("lose_unpersisted", [False, True])
def test_an_interrupted_checkpoint_replays_the_same_transactions_again(image, point, lose_unpersisted):
    f = FileSystem(CrashRegion(image, lose_unpersisted=lose_unpersisted))
    made = commit_files(f, 6)
    crashpoint.arm(point, 1, lambda name: (f.region.power_off(), power_cut(name)))
    with pytest.raises(PowerCut):
        f.journal.checkpoint()
    f.region.close()
    g = reopen(image)
    assert g.open_report.replayed == 6  # the tail was not advanced: all six are still in the journal
    assert root_files(g) == made
    g.close()
    h = reopen(image)
    assert h.open_report.replayed == 0 and root_files(h) == made
    h.close()


def test_a_crash_during_replay_replays_again(image):
    f = reopen(image)
    made = commit_files(f, 5)
    crash(f)
    crashpoint.arm("replay.applied", 1, power_cut)
    r = PmemRegion(image, durable=False)
    with pytest.raises(PowerCut):
        FileSystem(r)
    r.close()
    g = reopen(image)
    assert g.open_report.replayed == 5  # replay is idempotent: the same five, written home again
    assert root_files(g) == made
    g.close()


def test_after_a_torn_commit_the_next_mount_writes_in_its_place(image):
    # The torn transaction's blocks stay in the journal; the next mount's first transaction takes the
    # same sequence number and position. Replay must then find the new one, not a mix of both.
    f = reopen(image)
    made = commit_files(f, 2)
    for i in range(20):  # a big torn transaction: more blocks than the one that replaces it
        mkfile(f, b"torn%d" % i, b"t")
    crashpoint.arm("commit.records_written", 1, power_cut)
    with pytest.raises(PowerCut):
        f.commit()
    crash(f)
    g = reopen(image)
    assert g.open_report.replayed == 2
    mkfile(g, b"after", b"a")
    g.commit()
    mkfile(g, b"after2", b"b")
    g.commit()
    crash(g)
    h = reopen(image)
    assert h.open_report.replayed == 2
    assert root_files(h) == {**made, b"after": b"a", b"after2": b"b"}
    h.close()


def test_commits_wrap_around_a_small_journal_and_replay_across_the_end(new_image):
    image = new_image(16 << 20, journal_blocks=256)
    f = reopen(image)
    j = f.journal
    assert j.size == 256
    expect: dict[bytes, bytes] = {}
    wrapped = False
    for i in range(2000):
        name = b"w%d" % (i % 40)  # rewrite a working set of files: the journal wraps, the image does not fill
        ino = f.entry(ROOT, name).ino if f.entry(ROOT, name) else mkfile(f, name)
        data = b"%d:" % i * (1 + i % 7)
        f.truncate(ino, 0)
        f.write(ino, 0, data)
        expect[name] = data
        before = j.head
        f.commit()
        wrapped |= j.head < before
        # Stop once the committed, not yet checkpointed transactions straddle the end of the journal.
        if wrapped and j.pending and j.head < j.sb.journal_tail and j.stats_checkpoints >= 3:
            break
    else:
        pytest.fail("the journal never wrapped with pending transactions across its end")
    assert j.stats_checkpoints >= 3  # checkpoints happened by themselves (commit.py I4), none was asked for
    pending = len(j.pending)
    crash(f)
    g = reopen(image)
    assert g.open_report.replayed == pending
    assert root_files(g) == expect
    g.close()


def test_frozen_transactions_are_written_in_tid_order_whatever_the_thread_order(image):
    f = reopen(image)
    mkfile(f, b"one", b"1")
    t1 = f.start_commit()
    mkfile(f, b"two", b"2")
    t2 = f.start_commit()
    assert t2.tid == t1.tid + 1
    order: list[int] = []
    real = f.journal.write_commit

    def write(txn):
        real(txn)
        order.append(txn.tid)

    second = threading.Thread(target=write, args=(t2,))
    second.start()
    time.sleep(0.2)
    # t2 must wait for t1: writing it first would put tid t2 where replay expects t1 (commit.py I4).
    assert second.is_alive() and order == []
    first = threading.Thread(target=write, args=(t1,))
    first.start()
    first.join(5)
    second.join(5)
    assert order == [t1.tid, t2.tid]
    assert [t.tid for t in f.journal.pending] == [t1.tid, t2.tid]
    f.finish_commit(t1)
    f.finish_commit(t2)
    assert f.committed_tid == t2.tid
    crash(f)
    g = reopen(image)
    assert g.open_report.replayed == 2
    assert root_files(g) == {b"one": b"1", b"two": b"2"}
    g.close()


def test_changes_after_freeze_go_to_the_next_transaction_only(image):
    f = reopen(image)
    mkfile(f, b"a", b"1")
    t1 = f.start_commit()
    frozen = {b: bytes(img) for b, img in t1.blocks.items()}
    mkfile(f, b"b", b"2")  # touches the same root directory and inode table blocks
    assert {b: bytes(img) for b, img in t1.blocks.items()} == frozen
    f.journal.write_commit(t1)
    f.finish_commit(t1)
    crash(f)
    g = reopen(image)
    assert root_files(g) == {b"a": b"1"}
    g.close()


def test_an_empty_transaction_is_not_committed(image):
    f = reopen(image)
    tid = f.committed_tid
    assert f.journal.start_commit() is None
    assert f.commit() == tid
    assert f.journal.stats_commits == 0
    f.close()


def test_scan_reports_why_it_stopped(image):
    f = reopen(image)
    commit_files(f, 2)
    crash(f)
    r = PmemRegion(image, writable=False)
    res = scan(r, read_superblock(r))
    assert len(res.transactions) == 2
    assert "no transaction" in res.stop_reason or "magic" in res.stop_reason
    r.close()


def test_the_newer_valid_superblock_copy_wins_and_a_damaged_one_is_skipped(image):
    r = PmemRegion(image)
    sb = read_superblock(r)
    gen = sb.generation
    write_superblock(r, sb)  # the copies alternate: the other block now holds gen + 1
    assert read_superblock(r).generation == gen + 1
    newer = (gen + 1) % 2
    r.store(newer * fmt.BLOCK_SIZE + 200, b"\xee")  # torn write of the newer copy
    assert read_superblock(r).generation == gen
    r.store((1 - newer) * fmt.BLOCK_SIZE + 200, b"\xee")
    with pytest.raises(CorruptImage):
        read_superblock(r)
    r.zero(0, 2 * fmt.BLOCK_SIZE)
    with pytest.raises(NotDaxfs):
        read_superblock(r)
    r.close()
