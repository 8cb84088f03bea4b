"""The lab's homes meter their simulated loads (issue 15): what the meters counted, per frame,
never exceeds what the coordinator decided by more than one pulse per home; the relay log and
the meter log read back as the lab's accounting says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.lab import days
from backend.lab.lab import LabOptions, run_lab
from backend.lab.timeline import Timeline

FIRST = Timeline(__import__("datetime").date(2026, 12, 6), 1, 0.2, 3600)


def _log(path: Path, recs: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_relay_closed_at_any_moment_of_a_frame_counts_for_it(tmp_path: Path) -> None:
    s = FIRST.start(1)
    log = _log(tmp_path / "relay.log", [
        {"frame": None, "on": False, "t": None, "boot": True},
        {"frame": 0, "on": True, "t": s},            # closed at frame 0's start
        {"frame": 0, "on": False, "t": s + 1200},    # budget reached
        {"frame": 1, "on": False, "t": s + 3600},    # (no change)
        {"frame": 2, "on": True, "t": s + 7200},
        {"frame": 3, "on": False, "t": s + 3 * 3600},  # opened exactly at frame 3's start
    ])
    got = days.relay_days(log, FIRST, 24)[1]
    assert got[:4] == [True, False, True, False]


def test_metered_days_reads_the_frame_log(tmp_path: Path) -> None:
    log = _log(tmp_path / "meter.log", [{"day": "2026-12-06", "k": 3, "p": 500},
                                        {"day": "2026-12-06", "k": 4, "p": 7}])
    got = days.metered_days(log, 24, 500)
    assert got["2026-12-06"][3:5] == [1000, 14]


def test_metered_within_budget_allows_one_pulse_per_home() -> None:
    d = {"metered_load_after_wh": [10, 21], "coordinator_load_after_wh": [10, 20],
         "meter_pulse_wh": 1.0, "homes_counted": 1, "over_budget": []}
    assert days.metered_within_budget(d)
    d["metered_load_after_wh"] = [10, 22]
    assert not days.metered_within_budget(d)


@pytest.mark.integration
def test_lab_homes_meter_below_what_was_decided(tmp_path: Path) -> None:
    s, failures = run_lab(LabOptions(homes=6, seed=9, frames=24, frame_s=3600,
                                     frame_real_s=0.25, out_dir=tmp_path / "lab"))
    assert failures == []
    m = np.array(s["metered_load_after_wh"])
    after = np.array(s["coordinator_load_after_wh"])
    homes = s["days"][0]["homes_counted"]
    assert homes == 6
    assert np.all(m <= after + s["meter_pulse_wh"] * homes)
    assert 0 < m.sum() < after.sum()       # appliances finish early: below the decided day
    assert s["over_budget"] == []
    assert s["relay_load_after_wh"] == s["coordinator_load_after_wh"]
    for t in s["relay_timelines"]:
        assert len(t["metered_wh"]) == 24
        assert all(w <= a + 1 for w, a in zip(t["metered_wh"], t["adjusted_wh"], strict=True))
