"""The crash-test oracle (oracle.py) on recovered states made from the model: it accepts every state the
guarantees allow, and names each kind of violation when it is shown one. No mount here."""

from __future__ import annotations

import pytest

from daxfs.testing import workload
from daxfs.testing.model import BLOCK, FILE, Model
from daxfs.testing.oracle import Found, Oracle, Status, model_tree
from daxfs.testing.workload import Builder, apply

SEED = 5


def scenario() -> tuple[list[dict], list[dict]]:
    """Set-up: data (2 blocks, durable). Then: append, create+write, fsync, overwrite, append."""
    b = Builder(SEED)
    b.add("creat", "data")
    b.add("write", "data", off=0, len=2 * BLOCK)
    b.add("fsync", "")
    n = len(b.ops)
    b.add("write", "data", off=2 * BLOCK, len=3000)  # 3: grows: sync mode commits first
    b.add("creat", "new")  # 4
    b.add("write", "new", off=0, len=5000)  # 5: new blocks
    b.add("fsync", "data")  # 6: commits everything
    b.add("write", "data", off=100, len=200)  # 7: stable blocks
    b.add("write", "data", off=2 * BLOCK + 3000, len=2000)  # 8: grows again
    return b.ops[:n], b.ops[n:]


def statuses(setup: list[dict], ops: list[dict], acked: int, inflight: bool = False) -> dict[int, Status]:
    """Set-up and the first `acked` operations acknowledged (then one in flight, if asked)."""
    out, t = {}, 0
    for op in setup + ops[:acked]:
        out[op["i"]] = Status(begin=t, ack=t + 1)
        t += 2
    if inflight and acked < len(ops):
        out[ops[acked]["i"]] = Status(begin=t)
    return out


def state(setup: list[dict], ops: list[dict], k: int) -> Model:
    m = Model()
    for op in setup + ops[:k]:
        assert apply(m, op, SEED) == 0
    return m


def tree_of(m: Model) -> dict[str, Found]:
    """What a mount showing exactly this model state would read back."""
    return {path: Found(m.nodes[nid].kind, nid, bytes(m.nodes[nid].data) if m.nodes[nid].kind == FILE else b"",
                        dict(m.nodes[nid].xattrs))
            for path, nid in model_tree(m, "").items()}


def verdict(setup, ops, log, tree, sync: bool):
    return Oracle(setup, ops, SEED, sync, log).check(tree)


@pytest.mark.parametrize("sync", [True, False])
def test_the_state_after_every_acknowledged_operation_passes(sync):
    setup, ops = scenario()
    v = verdict(setup, ops, statuses(setup, ops, len(ops)), tree_of(state(setup, ops, len(ops))), sync)
    assert not v.violations and v.lost == 0 and v.prefixes == {0: len(ops)}


def test_sync_mode_refuses_a_state_that_lost_an_acknowledged_growing_write():
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    v = verdict(setup, ops, log, tree_of(state(setup, ops, len(ops) - 1)), sync=True)  # lost write 8
    assert [x.kind for x in v.violations] == ["size wrong"]


def test_normal_mode_counts_the_same_loss_as_allowed():
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    v = verdict(setup, ops, log, tree_of(state(setup, ops, len(ops) - 1)), sync=False)
    assert not v.violations and v.lost == 1 and v.prefixes == {0: len(ops) - 1}


def test_an_acknowledged_fsync_is_a_floor_in_both_modes():
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    for sync in (True, False):
        v = verdict(setup, ops, log, tree_of(state(setup, ops, 2)), sync)  # before "new" existed
        assert v.violations, sync
        assert {x.kind for x in v.violations} <= {"file missing", "size wrong", "acknowledged data missing"}


def test_sync_mode_demands_acknowledged_overwrites_of_stable_blocks_after_the_prefix():
    """Write 7 touches stable blocks: it commits nothing, so the recovered metadata may predate it, but
    its bytes went to pmem before the ack: they must be there."""
    setup, ops = scenario()
    log = statuses(setup, ops, 5)  # up to and with write 7 acknowledged (ops 3..7)
    m = state(setup, ops, 4)  # metadata as of the fsync (op 6)
    v = verdict(setup, ops, log, tree_of(m), sync=True)
    assert [x.kind for x in v.violations] == ["acknowledged data missing"]
    data = m.nodes[m.resolve("data")].data
    data[100:300] = workload.content(SEED, ops[4]["i"], 200)  # now the overwrite is there
    assert not verdict(setup, ops, log, tree_of(m), sync=True).violations


def test_bytes_nobody_wrote_are_stale():
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    m = state(setup, ops, len(ops))
    m.nodes[m.resolve("new")].data[4096:4196] = b"\xee" * 100  # as if another file's freed block showed
    v = verdict(setup, ops, log, tree_of(m), sync=False)
    assert [x.kind for x in v.violations] == ["stale bytes"]


def test_a_torn_write_in_flight_may_have_grown_the_file_part_way():
    """The kernel sends a write that starts mid-page as several FUSE requests; a crash between them leaves
    the first ones, with the size they gave the file."""
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops) - 1, inflight=True)  # write 8 in flight
    m = state(setup, ops, len(ops) - 1)
    last = ops[-1]
    torn = 3 * BLOCK - last["off"]  # up to the end of the first page it touched
    m.do_write(m.resolve("data"), last["off"], workload.content(SEED, last["i"], last["len"])[:torn])
    assert not verdict(setup, ops, log, tree_of(m), sync=True).violations


def test_a_name_no_prefix_had_is_impossible():
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    tree = tree_of(state(setup, ops, len(ops)))
    tree["ghost"] = Found(FILE, 999)
    v = verdict(setup, ops, log, tree, sync=False)
    assert [x.kind for x in v.violations] == ["namespace impossible"]


def test_every_built_in_workload_generates_valid_operations():
    for name in workload.WORKLOADS:
        setup, ops = workload.generate(name, 3)
        m = Model()
        for op in setup + ops:
            assert apply(m, op, 3) == 0, (name, op)
        assert len({op["i"] for op in setup + ops}) == len(setup) + len(ops)
    seqs = workload.ace_sequences(1)
    kinds = {op["op"] for _, ops in seqs for op in ops}
    assert kinds == set(workload.CORE_OPS) - {"append", "overwrite"} and all(1 <= len(o) <= 2 for _, o in seqs)


def test_normal_mode_allows_an_acknowledged_write_committed_in_part_and_counts_it_lost():
    """Regression, found by `daxfs crashtest --mode normal --workload appends --workload-seed 7 --crash-at
    end`: an acknowledged append that began mid-page went to the daemon as two FUSE requests, and only
    the first was committed when the daemon died, leaving the file grown to the page boundary."""
    setup, ops = scenario()
    log = statuses(setup, ops, len(ops))
    m = state(setup, ops, len(ops) - 1)
    last = ops[-1]
    m.do_write(m.resolve("data"), last["off"], workload.content(SEED, last["i"], last["len"])[:3 * BLOCK - last["off"]])
    v = verdict(setup, ops, log, tree_of(m), sync=False)
    assert not v.violations and v.lost == 1
    assert verdict(setup, ops, log, tree_of(m), sync=True).violations  # sync mode commits it whole first
