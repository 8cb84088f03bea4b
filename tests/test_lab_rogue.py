"""Integrity over the whole system: real mosquitto, the real mask broker and coordinator
services, real firmware on `micropython` (the lab), plus one rogue home with its own credentials
that sends its plan and its seals under different report ids (backend/lab/rogue.py), and from
day 2 a home without network over its round.

* One bad report costs only its sender: the rogue is excluded alone, with its reason, and every
  honest home that reported is counted and adjusted (its relay did what was decided).
* Nobody is invisible load: the rogue and the absent home are in the coordinator's reserve at
  their caps, and the counted relays plus every home outside the totals drawing its full cap
  stay under capacity.

The oracle is the homes' own records (the lab's accounting, days.py) and the scenario's ratings,
never the coordinator's figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.lab import scenario
from backend.lab.days import relays_as_decided
from backend.lab.lab import LabOptions, run_lab

pytestmark = pytest.mark.integration

HOMES, SEED, FRAMES, FRAME_S = 12, 3, 96, 900


def test_a_rogue_home_is_excluded_alone_and_nobody_is_invisible_load(tmp_path: Path) -> None:
    summary, failures = run_lab(LabOptions(homes=HOMES, seed=SEED, days=2, dropout=0.1,
                                           rogue=True, out_dir=tmp_path / "lab"))
    assert not failures, failures
    rogue = summary["rogue"]
    homes = scenario.make_homes(HOMES, SEED, FRAMES)
    assert rogue == homes[-1].home_id
    cap = {h.home_id: -(-scenario.rated_w(h, FRAME_S) * FRAME_S // 3600) for h in homes}
    for h in homes:  # the contract covers the plan: a home's cap is a true bound of its load
        assert max(h.plan_wh) <= cap[h.home_id]

    day1, day2 = summary["days"]
    assert [(e["home"], e["reason"]) for e in day1["excluded_homes"]] == [
        (rogue, "report_mismatch")]
    assert any(r["reason"] == "report_mismatch" and r.get("mismatched") == [rogue]
               for r in day1["refusals"])
    # the rogue has no firmware process, so the lab's accounting lists it among the absent
    assert day1["absent_homes"] == [rogue]
    assert [h for h in day2["absent_homes"] if h != rogue]  # and a home without network
    for d in (day1, day2):
        assert [e["home"] for e in d["excluded_homes"]] == [rogue]
        # every honest home that reported is counted and its relay did what was decided
        assert d["homes_counted"] == d["homes_reporting"] == HOMES - len(d["absent_homes"])
        assert relays_as_decided(d)
        outside = {rogue, *d["absent_homes"]}
        assert set(d["reserve_homes"]) == outside
        assert d["reserve_wh"] == [sum(cap[h] for h in outside)] * FRAMES
        assert d["true_overload_after_wh"] == 0
        # the oracle from the homes' records: counted relays + every outside home at its cap
        worst = np.array(d["relay_load_after_wh"]) + sum(cap[h] for h in outside)
        assert bool(np.all(worst <= np.array(d["capacity_wh"])))
