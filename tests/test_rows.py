"""backend/common/rows.py: RowStore, Arranged slice sums, partial sums, PlanSink."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.common.rows import U32, Arranged, PlanSink, RowStore, add_partials
from backend.coordinator.grouping import initial_grouping, split, split_key
from hemsfw import masking, protocol

DAY = "2026-11-28"
F = 8


def rows_for(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, size=(n, F), dtype=np.uint32)


def store_of(n: int, seed: int = 1) -> tuple[RowStore, np.ndarray]:
    data = rows_for(n, seed)
    s = RowStore(n, F)
    for i in range(n):
        s.add(f"h{i}", data[i].tobytes() if i % 2 else data[i])
    return s, data


def ref_sum(data: np.ndarray, idx: list[int]) -> np.ndarray:
    """Python-int reference: the sum mod 2^32."""
    return np.array([sum(int(data[i, f]) for i in idx) % 2**32 for f in range(F)],
                    dtype=np.uint32)


def test_rowstore_appends_in_place_and_refuses() -> None:
    s, data = store_of(5)
    assert s.count == 5 and s.capacity == 5
    assert np.array_equal(s.view(), data)
    assert s.lookup(["h3", "nope", "h0"]).tolist() == [3, -1, 0]
    with pytest.raises(ValueError, match="duplicate"):
        s.add("h1", data[0])
    with pytest.raises(ValueError, match="full"):
        s.add("h9", data[0])
    s.grow(6)
    with pytest.raises(ValueError, match="bad_length"):
        s.add("h9", b"\x00" * (4 * F - 1))
    with pytest.raises(ValueError, match="bad_length"):
        s.add("h9", np.zeros(F + 1, dtype=U32))
    assert s.count == 5  # nothing stored on error
    s.add("h9", data[0])
    assert s.count == 6 and np.array_equal(s.view()[5], data[0])


def test_group_sums_wrap_mod_2_32() -> None:
    s = RowStore(3, F)
    for i in range(3):
        s.add(f"h{i}", np.full(F, 0xFFFFFFFF, dtype=U32))
    arr = s.arrange(["h0", "h1", "h2"])
    assert arr.interval_sums([0], [3]).tolist() == [[0xFFFFFFFD] * F]  # 3 * (2^32 - 1)
    assert arr.group_sum(["h2", "h0"]).tolist() == [0xFFFFFFFE] * F


def test_arrange_intervals_and_gather_agree_with_reference() -> None:
    s, data = store_of(50)
    order = [f"h{i}" for i in np.random.default_rng(2).permutation(50)]
    arr = s.arrange([*order, "missing"])  # keys not stored are left out
    assert len(arr) == 50
    starts, stops = [0, 7, 7, 30], [7, 30, 7, 50]
    got = arr.interval_sums(starts, stops)
    for g, (a, b) in enumerate(zip(starts, stops, strict=True)):
        want = ref_sum(data, [int(k[1:]) for k in order[a:b]])
        assert np.array_equal(got[g], want)
    assert arr.span(order[7:30]) == (7, 30)
    assert arr.span(list(reversed(order[7:30]))) == (7, 30)  # a set, in any order
    assert arr.span([*order[7:29], order[31]]) is None
    assert arr.span([*order[7:29], order[7]]) is None  # a duplicate is not an interval
    scattered = order[::3]
    assert np.array_equal(arr.group_sum(scattered),
                          ref_sum(data, [int(k[1:]) for k in scattered]))
    with pytest.raises(KeyError):
        arr.group_sum(["missing", order[0]])
    with pytest.raises(ValueError):
        arr.interval_sums([3], [2])
    with pytest.raises(ValueError):
        arr.interval_sums([0], [51])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 59), min_size=1, max_size=80), st.integers(1, 4))
def test_partial_sums_over_workers_add_up(members: list[int], workers: int) -> None:
    """Rows spread over workers (like $share delivery): partials add to the whole."""
    data = rows_for(60, 3)
    homes = sorted(set(members))
    groups = [[f"h{i}" for i in homes[j::3]] for j in range(3)]
    groups = [g for g in groups if g]
    stores = [RowStore(60, F) for _ in range(workers)]
    for i in range(60):
        stores[i % workers].add(f"h{i}", data[i])
    sums, counts = add_partials([s.partial_sums(groups) for s in stores])
    for g, grp in enumerate(groups):
        assert counts[g] == len(grp)
        assert np.array_equal(sums[g], ref_sum(data, [int(h[1:]) for h in grp]))


def test_partial_sums_count_only_held_members() -> None:
    s, data = store_of(4)
    sums, counts = s.partial_sums([["h0", "x", "h3"], ["y"]])
    assert counts.tolist() == [2, 0]
    assert np.array_equal(sums[0], ref_sum(data, [0, 3]))
    assert sums[1].tolist() == [0] * F
    with pytest.raises(ValueError):
        add_partials([])


def test_coordinator_groups_are_intervals_of_split_key_order() -> None:
    """The premise of contiguous group sums: initial groups and every refinement split are
    intervals of one order (magnification, SHA-256 of the id)."""
    rng = np.random.default_rng(5)
    mags = {f"h{i:04d}": int(m) for i, m in enumerate(rng.choice([1, 2, 4, 8], 400))}
    mags |= {"tiny1": 16, "tiny2": 16}  # a class below k, carried down
    order = sorted(mags, key=lambda h: split_key(h, mags[h]))
    s = RowStore(len(order), F)
    data = rows_for(len(order), 6)
    for i, h in enumerate(mags):
        s.add(h, data[i])
    arr = s.arrange(order)
    groups = initial_grouping(mags, 5, prefix="r1g")
    index = {h: i for i, h in enumerate(mags)}
    todo = list(groups)
    seen = 0
    while todo and seen < 200:  # every group down to the smallest split
        g = todo.pop()
        seen += 1
        assert arr.span(g.members) is not None, g.id
        np.testing.assert_array_equal(
            arr.group_sum(g.members),
            ref_sum(data, [index[h] for h in g.members]))
        halves = split(g, 5)
        if halves:
            todo.extend(halves)
    assert seen > 20


# ------------------------------------------------------------------ PlanSink


def plan_payload(home: str, rid: str | None = None, rnd: int = 1, mag: int = 2,
                 frames: int = F, masked: bytes | None = None) -> bytes:
    rid = rid or secrets.token_hex(16)
    masked = masked if masked is not None else masking.from_words(list(range(frames)))
    return protocol.encode(protocol.make_plan_report(home, DAY, rnd, rid, mag, masked))


def test_plan_sink_accepts_and_stores_rows() -> None:
    sink = PlanSink(DAY, 1, F, 10)
    vec = masking.from_words([7, 0xFFFFFFFF, 3, 0, 1, 2, 3, 4])
    assert sink.offer("hems/v1/plan/h1", plan_payload("h1", masked=vec, mag=4)) == ("h1", "")
    assert sink.store.count == 1
    assert sink.store.view()[0].tolist() == [7, 0xFFFFFFFF, 3, 0, 1, 2, 3, 4]
    assert sink.mags[0] == 4 and len(sink.report_ids) == 1


@pytest.mark.parametrize(("topic", "payload", "want"), [
    ("hems/v1/other/h1", plan_payload("h1"), (None, "bad_topic")),
    ("hems/v1/plan/H1", plan_payload("h1"), (None, "bad_topic")),
    ("hems/v1/plan/h1/x", plan_payload("h1"), (None, "bad_topic")),
    ("hems/v1/plan/h1", b"{not json", ("h1", "bad_json")),
    ("hems/v1/plan/h1", b"[1]", ("h1", "bad_json")),
    ("hems/v1/plan/h1", b'{"v": 2}', ("h1", "bad_version")),
    ("hems/v1/plan/h1", b" " * (protocol.MAX_PAYLOAD + 1), ("h1", "too_large")),
    ("hems/v1/plan/h1", plan_payload("h2"), ("h1", "home_mismatch")),
    ("hems/v1/plan/h1", plan_payload("h1", rnd=2), ("h1", "unknown_round")),
    ("hems/v1/plan/h1", plan_payload("h1", mag=0), ("h1", "bad_mag")),
    ("hems/v1/plan/h1", plan_payload("h1", masked=b"\x00" * (4 * F + 4), frames=F + 1),
     ("h1", "bad_length")),
])
def test_plan_sink_rejects_with_the_coordinators_reasons(
        topic: str, payload: bytes, want: tuple[str | None, str]) -> None:
    sink = PlanSink(DAY, 1, F, 10)
    assert sink.offer(topic, payload) == want
    assert sink.store.count == 0


def test_plan_sink_replay_duplicate_full_and_malformed_vectors() -> None:
    sink = PlanSink(DAY, 1, F, 2)
    rid = secrets.token_hex(16)
    assert sink.offer("hems/v1/plan/h1", plan_payload("h1", rid)) == ("h1", "")
    assert sink.offer("hems/v1/plan/h2", plan_payload("h2", rid)) == ("h2", "replay")
    assert sink.offer("hems/v1/plan/h1", plan_payload("h1")) == ("h1", "duplicate_home")
    obj = json.loads(plan_payload("h3"))
    obj["masked"] = "!" * len(obj["masked"])
    assert sink.offer("hems/v1/plan/h3", json.dumps(obj).encode()) == ("h3", "bad_vector")
    assert sink.offer("hems/v1/plan/h3", plan_payload("h3")) == ("h3", "")
    assert sink.offer("hems/v1/plan/h4", plan_payload("h4")) == ("h4", "full")
    assert sink.store.count == 2


def test_plan_sink_with_another_decoder() -> None:
    orjson = pytest.importorskip("orjson")
    sink = PlanSink(DAY, 1, F, 2, orjson.loads)
    assert sink.offer("hems/v1/plan/h1", plan_payload("h1")) == ("h1", "")
    assert sink.offer("hems/v1/plan/h2", b"\xff") == ("h2", "bad_json")


def test_arranged_direct() -> None:
    arr = Arranged(["a", "b"], np.array([[1] * F, [2] * F], dtype=U32))
    assert arr.interval_sums([0, 1], [2, 2]).tolist() == [[3] * F, [2] * F]


def test_plan_sink_split_order_is_grouping_split_key_order() -> None:
    rng = np.random.default_rng(9)
    sink = PlanSink(DAY, 1, F, 200)
    mags = {}
    for i in rng.permutation(200):
        h = f"h{i:03d}"
        mags[h] = int(rng.choice([1, 2, 4]))
        assert sink.offer(protocol.t_plan(h), plan_payload(h, mag=mags[h])) == (h, "")
    arr = sink.store.arrange_rows(sink.split_order())
    assert arr.keys == sorted(mags, key=lambda h: split_key(h, mags[h]))
    for g in initial_grouping(mags, 10, prefix="g"):
        assert arr.span(g.members) is not None
    buf = np.empty((200, F), dtype=U32)
    again = sink.store.arrange_rows(sink.split_order(), out=buf)
    assert again.block is buf and np.array_equal(buf, arr.block)
    with pytest.raises(ValueError):
        sink.store.arrange_rows([200])


def test_plan_sink_split_order_after_more_reports_and_growth() -> None:
    """The split-order tags are computed at ``split_order`` (not per report): reports stored
    after a first call, and across the store's growth, are tagged at the next one."""
    sink = PlanSink(DAY, 1, F, 2, grow=True)
    mags: dict[str, int] = {}

    def add(i: int) -> None:
        h = f"h{i:03d}"
        mags[h] = 1 + i % 3
        assert sink.offer(protocol.t_plan(h), plan_payload(h, mag=mags[h])) == (h, "")

    for i in range(5):
        add(i)
    first = sink.store.arrange_rows(sink.split_order()).keys
    assert first == sorted(mags, key=lambda h: split_key(h, mags[h]))
    for i in range(5, 40):  # the store doubles several times
        add(i)
    keys = sink.store.arrange_rows(sink.split_order()).keys
    assert keys == sorted(mags, key=lambda h: split_key(h, mags[h]))
