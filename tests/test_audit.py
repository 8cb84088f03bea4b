"""The auditor's span check (backend/mask_broker/audit.py) against known cases, a float-rank
oracle on small random families, and the release rule (whatever the rule accepts, the audit must
find nothing isolated)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.mask_broker.audit import audit, main
from backend.mask_broker.release import Partition


def exposed(sets: list[list[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    return audit(sets).isolated()


def test_a_group_and_its_superset_by_one_home_isolate_that_home() -> None:
    assert exposed([["a", "b", "c"], ["a", "b", "c", "d"]]) == (["d"], [])


def test_the_new_day_differencing_attack_isolates_the_left_out_home() -> None:
    homes = [f"h{i:03d}" for i in range(1, 12)]
    assert exposed([homes, homes[1:]]) == (["h001"], [])


def test_two_overlapping_pairs_expose_a_difference_not_a_home() -> None:
    single, pairs = exposed([["a", "b"], ["a", "c"]])
    assert single == [] and pairs == [("b", "c")]


def test_disjoint_groups_and_their_union_isolate_nothing() -> None:
    assert exposed([["a", "b", "c"], ["d", "e", "f"], list("abcdef")]) == ([], [])


def test_an_exact_rational_combination_is_found() -> None:
    # e_a = ({a,b,c} + {a,d,e} - {b,c,d,e} ... ) / 2: needs a non-integer-free elimination.
    sets = [["a", "b", "c"], ["a", "d", "e"], ["b", "c", "d", "e"]]
    assert exposed(sets)[0] == ["a"]


def _float_oracle(sets: list[list[int]], n: int) -> set[int]:
    """Homes h with e_h or some e_h - e_g in the row space, by numpy's rank (small cases)."""
    a = np.zeros((len(sets), n))
    for i, s in enumerate(sets):
        a[i, s] = 1
    r = np.linalg.matrix_rank(a)
    out = set()
    for h in range(n):
        v = np.zeros(n)
        v[h] = 1
        if np.linalg.matrix_rank(np.vstack([a, v])) == r:
            out.add(h)
        for g in range(n):
            if g != h:
                w = v.copy()
                w[g] = -1
                if np.linalg.matrix_rank(np.vstack([a, w])) == r:
                    out |= {h, g}
    return out


families = st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
                    min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(families)
def test_agrees_with_a_float_rank_oracle_on_small_families(sets: list[list[int]]) -> None:
    involved = sorted({h for s in sets for h in s})
    single, pairs = exposed([[f"x{h}" for h in s] for s in sets])
    got = {int(h[1:]) for h in single} | {int(h[1:]) for p in pairs for h in p}
    want = _float_oracle(sets, 8) & set(involved)
    assert got == want


@settings(max_examples=100, deadline=None)
@given(families, st.sampled_from([2, 3]))
def test_nothing_the_release_rule_accepts_isolates_a_home(sets: list[list[int]], k: int) -> None:
    part = Partition(k)
    accepted = []
    for s in sets:
        members = [f"x{h}" for h in s]
        if part.check(members) is None:
            part.commit(members)
            accepted.append(members)
    assert exposed(accepted) == ([], [])


def test_the_command_reads_release_logs_and_fails_on_an_exposure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mb1-releases.jsonl"
    rows = [{"day": "2026-01-01", "round": 1, "req": "r", "group": "g1",
             "members": ["a", "b", "c"], "carried": []},
            {"day": "2026-01-02", "round": 1, "req": "r", "group": "g1",
             "members": ["a", "b"], "carried": []}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    assert main([str(log)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["isolated_homes"] == ["c"] and out["sets"] == 2
    log.write_text(json.dumps(rows[0]) + "\n")
    assert main([str(log)]) == 0
