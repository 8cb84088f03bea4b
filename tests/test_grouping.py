"""The coordinator's grouping (backend/coordinator/grouping.py): the initial grouping, splits,
refinement against real solves, and the release-rule mirror."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from release_oracle import atoms, atoms_ok

from backend.coordinator.adjust import Policy, Problem, apply_moves, solve
from backend.coordinator.grouping import (
    Group,
    child_id,
    contributing,
    initial_grouping,
    make_group,
    refine,
    split,
)
from hemsfw import protocol


def mags_of(spec: dict[int, int]) -> dict[str, int]:
    """{magnification: count} -> {home: magnification} with ids h<mag>-<n>."""
    return {f"h{m}-{i}": m for m, n in spec.items() for i in range(n)}


def by_mag(groups: list[Group]) -> list[tuple[int, int]]:
    return [(g.magnification, g.size) for g in groups]


# ---------------------------------------------------------------- initial grouping

CASES: list[tuple[str, int, dict[int, int], list[tuple[int, int]]]] = [
    ("one class", 3, {2: 7}, [(2, 7)]),
    ("one group per class", 3, {1: 3, 2: 4, 4: 5}, [(1, 3), (2, 4), (4, 5)]),
    ("small high class merges down", 3, {1: 3, 2: 4, 4: 2}, [(1, 3), (2, 6)]),
    ("two small high classes carry down together", 3, {1: 5, 3: 1, 4: 2}, [(1, 5), (3, 3)]),
    ("small lowest class joins the lowest group (min magnification)", 3, {1: 1, 2: 4, 4: 5},
     [(1, 5), (4, 5)]),
    ("every class small: one group", 3, {1: 1, 2: 1, 4: 1}, [(1, 3)]),
    ("fewer than k homes: no group", 3, {2: 2}, []),
    ("k = 1: every class alone", 1, {1: 1, 2: 1, 3: 1}, [(1, 1), (2, 1), (3, 1)]),
]


@pytest.mark.parametrize(("name", "k", "spec", "expect"), CASES, ids=[c[0] for c in CASES])
def test_initial_grouping_table(
    name: str, k: int, spec: dict[int, int], expect: list[tuple[int, int]]
) -> None:
    groups = initial_grouping(mags_of(spec), k, prefix="r1g")
    assert by_mag(groups) == expect
    assert [g.id for g in groups] == [f"r1g{i}" for i in range(1, len(groups) + 1)]


def test_initial_grouping_does_not_depend_on_input_order() -> None:
    m = mags_of({1: 4, 2: 5, 4: 2})
    a = initial_grouping(m, 3, "r1g")
    b = initial_grouping(dict(reversed(list(m.items()))), 3, "r1g")
    assert a == b


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError):
        initial_grouping({"a": 1}, 0, "r1g")


@settings(max_examples=200, deadline=None)
@given(
    mags=st.dictionaries(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
                         st.sampled_from([1, 2, 3, 4, 8]), max_size=40),
    k=st.integers(1, 6),
)
def test_initial_grouping_properties(mags: dict[str, int], k: int) -> None:
    groups = initial_grouping(mags, k, "r7g")
    if len(mags) < k:
        assert groups == []
        return
    members = [h for g in groups for h in g.members]
    assert sorted(members) == sorted(mags)  # a partition of every home
    assert all(g.size >= k for g in groups)
    assert all(g.magnification == min(mags[h] for h in g.members) for g in groups)
    assert all(protocol.valid_id(g.id) for g in groups)
    assert len({g.id for g in groups}) == len(groups)
    assert len(groups) <= len(set(mags.values()))  # never more than one group per class
    # fewest groups: a class of >= k homes that could stand alone is never merged into a lower one
    # unless it had to take a smaller higher class with it
    assert [g.magnification for g in groups] == sorted(g.magnification for g in groups)


# ---------------------------------------------------------------- split and ids


def test_split_halves_by_hash_not_by_id() -> None:
    homes = [f"h{i:02d}" for i in range(10)]
    g = make_group("r1g1", [(h, 2) for h in homes])
    halves = split(g, 3)
    assert halves is not None
    a, b = halves
    assert (a.id, b.id) == ("r1g1a", "r1g1b")
    assert a.size == b.size == 5
    assert a.member_set() | b.member_set() == set(homes)
    order = sorted(homes, key=lambda h: hashlib.sha256(h.encode()).digest())
    assert list(a.members) == order[:5]
    assert a.parent is g and b.parent is g
    assert list(a.members) != homes[:5]  # not the id order (true for these ids)


def test_split_needs_two_k_and_a_movable_half() -> None:
    assert split(make_group("g", [(f"h{i}", 2) for i in range(5)]), 3) is None
    assert split(make_group("g", [(f"h{i}", 1) for i in range(8)]), 3) is None
    mixed = make_group("g", [(f"h{i}", 1) for i in range(3)] + [(f"x{i}", 4) for i in range(3)])
    halves = split(mixed, 3)
    assert halves is not None
    assert [h.magnification for h in halves] == [1, 4]  # the large contracts get free


def test_child_id_stays_valid_when_long() -> None:
    gid = "r1073741824g96"
    for _ in range(40):
        gid = child_id(gid, "a")
        assert protocol.valid_id(gid)
    assert child_id("r1g1", "b") == "r1g1b"


def test_make_group_rejects_bad_ids_and_empty() -> None:
    with pytest.raises(ValueError):
        make_group("G1", [("a", 1)])
    with pytest.raises(ValueError):
        make_group("g1", [])


# ---------------------------------------------------------------- refinement on real solves


def problem(totals: list[list[int]], cap: list[int], mags: list[int],
            allow_curtail: bool = True) -> Problem:
    return Problem(totals=np.array(totals, dtype=np.int64), capacity=np.array(cap),
                   magnification=np.array(mags),
                   policy=Policy(window="defer", allow_curtail=allow_curtail))


def test_refine_splits_only_groups_in_overloaded_frames() -> None:
    g1 = make_group("r1g1", [(f"a{i}", 2) for i in range(6)])
    g2 = make_group("r1g2", [(f"b{i}", 2) for i in range(6)])
    g3 = make_group("r1g3", [(f"c{i}", 1) for i in range(6)])
    # frame 0: g1 alone is 30 > 15; moving all of it to frame 1 overloads frame 1 as well.
    p = problem([[30, 0, 0, 0], [0, 0, 5, 0], [5, 0, 0, 0]], [15, 15, 15, 15], [2, 2, 1])
    res = solve(p)
    assert res.overload_after_wh > 0
    finer = refine([g1, g2, g3], res, 3, p)
    assert finer is not None
    assert [g.id for g in finer] == ["r1g1a", "r1g1b", "r1g2", "r1g3"]  # g3 cannot move
    # the same answer without the problem (read from the curtailment)
    assert refine([g1, g2, g3], res, 3) == finer
    # frozen groups stay whole
    assert refine([g1, g2, g3], res, 3, p, frozen={"r1g1"}) is None


def test_refine_none_when_no_overload_or_nothing_to_split() -> None:
    g = make_group("r1g1", [(f"a{i}", 2) for i in range(6)])
    ok = problem([[5, 5]], [15, 15], [2])
    assert refine([g], solve(ok), 3, ok) is None
    small = make_group("r1g1", [(f"a{i}", 2) for i in range(5)])
    p = problem([[30, 0]], [15, 15], [2])
    assert refine([small], solve(p), 3, p) is None


def test_contributing_without_curtailment_needs_the_problem() -> None:
    p = problem([[30, 0, 0], [1, 0, 0], [0, 0, 1]], [15, 15, 15], [2, 1, 1], allow_curtail=False)
    res = solve(p)
    assert res.curtail == []
    moved = apply_moves(p.totals, res.moves)
    over = moved.sum(axis=0) > p.capacity
    assert over.any()
    c = contributing(3, res, p)
    assert c.tolist() == [bool(moved[g, over].sum() > 0) for g in range(3)]
    assert not c[2]  # its load is in no overloaded frame


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_groups=st.integers(1, 5),
    frames=st.integers(2, 6),
    k=st.integers(1, 3),
)
def test_refinement_keeps_every_atom_at_least_k(
    data: st.DataObject, n_groups: int, frames: int, k: int
) -> None:
    """Any sequence of refinements on any day: the family of all groups ever formed (what a mask
    broker would have released) never has an atom below k; sizes never drop below k."""
    sizes = data.draw(st.lists(st.integers(k, 4 * k + 3), min_size=n_groups, max_size=n_groups))
    mags = data.draw(st.lists(st.sampled_from([1, 2, 3, 4]), min_size=n_groups,
                              max_size=n_groups))
    groups = [make_group(f"r1g{i}", [(f"g{i}h{j}", mags[i]) for j in range(sizes[i])])
              for i in range(n_groups)]
    ever = [g.member_set() for g in groups]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    home_load = {h: rng.integers(0, 4, frames) for g in groups for h in g.members}
    cap = rng.integers(0, 10, frames)
    for _ in range(10):
        totals = np.stack([sum(home_load[h] for h in g.members) for g in groups])
        p = Problem(totals=totals, capacity=cap,
                    magnification=np.array([g.magnification for g in groups]))
        finer = refine(groups, solve(p), k, p)
        if finer is None:
            break
        assert len(finer) > len(groups)
        assert sorted(h for g in finer for h in g.members) == sorted(home_load)
        groups = finer
        ever += [g.member_set() for g in groups]
        assert all(g.size >= k for g in groups)
        assert atoms_ok(ever, k)
        assert len({g.id for g in groups}) == len(groups)


# ---------------------------------------------------------------- the release-rule mirror


def test_atoms() -> None:
    h = [f"h{i}" for i in range(1, 9)]
    assert sorted(atoms([h[:6], h[:2], h[4:8]])) == [2, 2, 2, 2]
    assert atoms_ok([h[:6], h[:3]], 3)
    assert not atoms_ok([h[:5], h[:3]], 3)  # split leaving a part of 2
    assert not atoms_ok([h[:3], h[3:6], [h[0], h[1], h[3]]], 3)  # reshuffle
    assert atoms_ok([], 3)
