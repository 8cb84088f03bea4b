"""One home with its own credentials attacks the grid (issue 14); real coordinator and mask
broker over a real mosquitto, the homes' messages built by the firmware's code (bench/integrity.py
runs the same rounds and prints the figures).  Each offender is excluded alone, with a reason;
every honest home is still served; the grid's true load stays under capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.integrity import ATTACKER, run_round, score

pytestmark = pytest.mark.integration

REASONS = {"plus_2_31": "proof_failed", "wrapped_negative": "proof_failed",
           "above_cap": "proof_failed", "malformed_proof": "proof_failed",
           "mismatched_report_ids": "report_mismatch"}


@pytest.mark.parametrize("attack", sorted(REASONS))
def test_offender_is_excluded_alone_and_honest_homes_are_served(tmp_path: Path,
                                                                attack: str) -> None:
    s = score(attack, run_round(tmp_path, 9, 8, attack))
    assert s["status"] == "completed", s["error"]
    assert s["offender_excluded"] and s["offender_reason"] == REASONS[attack]
    assert s["honest_excluded"] == []
    assert s["honest_members_served_fraction"] == 1.0
    assert s["true_overload_after_wh"] == 0


def test_without_proofs_the_plus_2_31_attack_goes_through(tmp_path: Path) -> None:
    s = score("plus_2_31", run_round(tmp_path, 9, 8, "plus_2_31", proofs=False))
    assert not s["offender_excluded"]
    assert s["coordinator_overload_before_wh"] > 1 << 31
    assert ATTACKER not in s["honest_excluded"]
