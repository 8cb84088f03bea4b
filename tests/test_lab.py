"""The lab testbed as a test: real mosquitto, real services, real firmware on `micropython`."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.lab.lab import LabOptions, run_lab

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def test_hems_lab_json_default_scenario(tmp_path: Path) -> None:
    """`hems lab --json`, the main job, as a user runs it (20 homes, seed 1)."""
    report = tmp_path / "report.html"
    r = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "hems"), "lab", "--homes", "20", "--seed", "1", "--json",
         "--report", str(report)],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    for key in ("homes", "frames", "capacity_wh", "true_load_wh", "coordinator_load_before_wh",
                "coordinator_load_after_wh", "relay_load_after_wh", "overload_before_wh",
                "overload_after_wh", "groups", "moves"):
        assert key in s, key
    assert s["homes"] == 20 and s["frames"] == 96
    assert s["true_load_wh"] == s["coordinator_load_before_wh"]
    assert s["relay_load_after_wh"] == s["coordinator_load_after_wh"]
    # Only shifting can satisfy this day: there is overload before, none after, no curtailment.
    assert s["overload_before_wh"] > 0
    assert s["overload_after_wh"] == 0
    assert s["curtailed_wh"] == 0
    assert len(s["moves"]) > 0
    assert sum(g["size"] for g in s["groups"]) == 20
    assert all(g["size"] >= 3 for g in s["groups"])
    # The relays' energy equals the plan's energy: shifting moves load, it does not drop it.
    assert sum(s["relay_load_after_wh"]) == sum(s["true_load_wh"])
    # The report: written where asked, its path in the JSON, drawn from this run's data.
    assert s["report"] == str(report.resolve())
    page = report.read_text()
    for sid in ("summary", "capacity", "heatmap", "moves", "relays", "groups", "timings"):
        assert f'id="{sid}"' in page, sid
    assert "all checks passed" in page and page.count("<svg") >= 4
    # What the report draws is in the JSON: group totals add up to the coordinator's view,
    # and the relay timelines are the homes' own records.
    totals = np.sum([g["total_wh"] for g in s["groups"]], axis=0)
    assert totals.tolist() == s["coordinator_load_before_wh"]
    assert 0 < len(s["relay_timelines"]) <= 12
    for t in s["relay_timelines"]:
        assert len(t["relay_on"]) == 96
        assert t["relay_on"] == [int(a > 0) for a in t["adjusted_wh"]]


def _vectors(obj: Any, out: list[bytes]) -> None:
    """Every base64 string field of a message, decoded (vectors and sealed blobs)."""
    if isinstance(obj, dict):
        for v in obj.values():
            _vectors(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _vectors(v, out)
    elif isinstance(obj, str) and len(obj) >= 8:
        with contextlib.suppress(ValueError):
            out.append(base64.b64decode(obj, validate=True))


def test_no_service_ever_holds_a_home_plan_in_the_clear(tmp_path: Path) -> None:
    """Record everything the coordinator's and the mask brokers' identities can receive during a
    real lab round (TLS, two mask brokers: the documented production setup) and show that no
    single home's plan is in it: the coordinator sees masked plans (uniform mod 2^32) and sums of
    groups of >= k homes; each mask broker sees sealed seeds."""
    summary, failures = run_lab(LabOptions(homes=9, seed=7, out_dir=tmp_path / "lab", record=True,
                                           tls=True, mask_brokers=2))
    assert not failures, failures
    assert summary["true_load_wh"] == summary["coordinator_load_before_wh"]
    assert summary["relay_load_after_wh"] == summary["coordinator_load_after_wh"]
    released = {(g["id"], g["broker"]) for g in summary["released_groups"]}
    assert {b for _, b in released} == {"mb1", "mb2"}
    for g in summary["groups"]:  # every final group was released by both mask brokers
        assert (g["id"], "mb1") in released and (g["id"], "mb2") in released
    assert all("reason" in r for r in summary["refused_groups"])
    work = Path(summary["lab_dir"])
    plans: dict[str, bytes] = {}
    for home_dir in (work / "homes").iterdir():
        st = json.loads((home_dir / "round.json").read_text())
        plans[home_dir.name] = np.array(st["plan"], dtype="<u4").tobytes()
        assert "seeds" not in st and "mask" not in st  # only a digest of the mask is kept
    assert len(plans) == 9

    for ident in ("coordinator", "mb1", "mb2"):
        msgs = [json.loads(line) for line in (work / f"recorded-{ident}.jsonl").read_text()
                .splitlines()]
        assert msgs, ident
        topics = {m["topic"].split("/")[2] for m in msgs}
        if ident == "coordinator":
            assert "mask" not in topics  # the ACL keeps every mask topic away
            assert "plan" in topics
        else:
            assert "plan" not in topics
            assert "mask" in topics
        blobs: list[bytes] = []
        for m in msgs:
            try:
                _vectors(json.loads(m["payload"]), blobs)
            except json.JSONDecodeError:
                continue
        assert blobs
        for home, plan in plans.items():
            for b in blobs:
                assert plan not in b, f"{ident} received {home}'s plan in the clear"
        # Every group sum released covered at least k homes.
        for m in msgs:
            if m["topic"].startswith("hems/v1/groupreq/"):
                for g in json.loads(m["payload"])["groups"]:
                    assert len(g["members"]) >= 3
    # The coordinator's masked plans differ from the plans in every frame with overwhelming
    # probability (uniform masks): check that none of the 9 equals its plan even partially.
    coord = [json.loads(m["payload"]) for m in map(json.loads, (
        work / "recorded-coordinator.jsonl").read_text().splitlines())
        if m["topic"].startswith("hems/v1/plan/")]
    # day 1's reports (the service also collected day 2's while day 1 was played)
    coord = [rep for rep in coord if rep["day"] == summary["day"]]
    assert len(coord) == 9
    for rep in coord:
        masked = np.frombuffer(base64.b64decode(rep["masked"]), dtype="<u4")
        plan = np.frombuffer(plans[rep["home"]], dtype="<u4")
        assert np.count_nonzero(masked == plan) <= 1
