"""Each service killed with SIGKILL mid-round: the round completes with the same result.

Real mosquitto, the real mask broker and coordinator (each with its --state-dir), nine homes
running the firmware under ``micropython`` (bench/chaos.py's Cluster).  Every scenario runs the
same scenario seed as one reference round without faults and must end with the very same
decision (groups, moves, curtailment, loads) and the very same adjustment stored by every home.
Faults are placed deterministically: a step waits for a condition (the coordinator's journal, a
mask broker's state, a log line), then acts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import chaos
from bench.chaos import (
    Options,
    Step,
    answered,
    freeze,
    journaled,
    kill,
    kill_restart,
    launch,
    logged,
    masks_stored,
    run_round,
    start_homes,
)

pytestmark = pytest.mark.integration

SEED = 5
OPTS = Options(homes=9, collect_s=120.0, round_s=180.0)
HOMES = [f"h{i + 1:03d}" for i in range(OPTS.homes)]


def always(_: chaos.Cluster) -> bool:
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ref = run_round(tmp_path_factory.mktemp("ref"), SEED, OPTS)
    assert not ref["failures"], ref["failures"]
    assert ref["result"]["homes"] == OPTS.homes and ref["result"]["excluded"] == []
    assert len(ref["result"]["moves"]) > 0  # a day that only shifting fixes
    return ref


def same(ref: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    cmp = chaos.compare(ref, run)
    assert cmp["identical"], (cmp["diffs"], run.get("events"))
    assert cmp["lost_reports"] == 0 and cmp["duplicate_reports"] == 0
    res: dict[str, Any] = run["result"]
    assert res["status"] == "completed"
    return res


def journal(run: dict[str, Any]) -> list[dict[str, Any]]:
    path = next((Path(run["work"]) / "coordinator-state").glob("round-*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_coordinator_killed_during_collection(reference: dict[str, Any], tmp_path: Path) -> None:
    """Killed after 5 reports; 4 more homes report while it is down (their reports wait in
    mosquitto for its persistent session); restarted, it keeps the 5, takes the 4 and announces
    the same deadline again."""
    script = [
        Step("kill the coordinator after 5 reports", journaled("report", 5), kill("coordinator")),
        Step("the other homes report while it is down", always, start_homes(HOMES[5:])),
        Step("restart it", always, launch("coordinator")),
    ]
    run = run_round(tmp_path, SEED, OPTS, script, first_homes=5)
    res = same(reference, run)
    assert res["resumed"] is True and res["restarts"] == 1
    rec = journal(run)
    rounds = [r for r in rec if r["kind"] == "round"]
    assert len(rounds) == 1 and rounds[0]["deadline"] == res["deadline"]
    assert sum(r["kind"] == "report" for r in rec) == OPTS.homes
    for h in HOMES:  # every home holds the one announcement: one deadline
        st = json.loads((Path(run["work"]) / "homes" / h / "round.json").read_text())
        assert st["deadline"] == res["deadline"]


def test_coordinator_killed_waiting_for_sums(reference: dict[str, Any], tmp_path: Path) -> None:
    """The mask broker is frozen, so the coordinator's request waits; the coordinator is killed
    right after asking; the mask broker answers while it is down; the restarted coordinator
    takes the queued answer to the request it journaled (no second, different request)."""
    script = [
        Step("kill the coordinator once its request is with mosquitto",
             logged("coordinator", "asked mb1"), kill("coordinator")),
        Step("thaw the mask broker", always, freeze("mb1", on=False)),
        Step("restart the coordinator after the answer", answered("mb1"), launch("coordinator")),
    ]
    run = run_round(tmp_path, SEED, OPTS, script, before_coordinator=freeze("mb1"))
    res = same(reference, run)
    assert res["resumed"] is True
    asks = [r for r in journal(run) if r["kind"] == "ask"]
    assert len({r["req"] for r in asks}) == len(asks)  # each request journaled once
    stats = run["mask_broker_stats"]["mb1"]
    assert stats["groups"]["refused_by_reason"].get("would_isolate", 0) == 0
    assert sorted(g["id"] for g in res["released_groups"]) == sorted(
        g["id"] for g in reference["result"]["released_groups"])


def test_coordinator_killed_after_some_adjustments(reference: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """Stopped after 3 adjustments went out, killed, restarted: it re-publishes all of them
    (the 3 homes ignore the identical copy) and every home ends with the reference's."""
    script = [Step("kill the coordinator while it publishes adjustments",
                   logged("coordinator", "pausing"), kill_restart("coordinator", 0.3))]
    run = run_round(tmp_path, SEED, OPTS, script,
                    coordinator_extra=["--debug-pause-at", "adjust:3"])
    res = same(reference, run)
    assert res["resumed"] is True
    assert sum(r["kind"] == "solve" for r in journal(run)) == sum(
        r["kind"] == "solve" for r in journal(reference))
    assert res["adjusted_homes"] == OPTS.homes


def test_mask_broker_killed_while_masks_arrive(reference: dict[str, Any],
                                              tmp_path: Path) -> None:
    script = [Step("kill mb1 after 4 masks", masks_stored("mb1", 4), kill_restart("mb1", 0.5))]
    run = run_round(tmp_path, SEED, OPTS, script)
    same(reference, run)
    assert run["starts"]["mb1"] == 2


def test_mask_broker_killed_holding_the_request(reference: dict[str, Any],
                                               tmp_path: Path) -> None:
    """Frozen before the round, killed once the coordinator asked: nothing of the round was
    acknowledged, so the restarted broker gets the announcement, the masks and the request
    again from its persistent session and answers."""
    script = [Step("kill the frozen mb1 once asked", journaled("ask"), kill_restart("mb1", 0.5))]
    run = run_round(tmp_path, SEED, OPTS, script, before_coordinator=freeze("mb1"))
    same(reference, run)
    assert run["mask_records"]["mb1"] == {h: 1 for h in HOMES}


def test_mosquitto_killed_mid_collection(reference: dict[str, Any], tmp_path: Path) -> None:
    """With the shipped template's time-based saves (autosave every 60 s): what mosquitto had
    acknowledged but not saved is lost in the kill, and the homes' re-sends (until the service
    replies) and the coordinator's re-sent adjustments make up for it."""
    script = [Step("kill mosquitto after 4 reports", journaled("report", 4),
                   kill_restart("mosquitto", 1.0))]
    run = run_round(tmp_path, SEED, replace(OPTS, autosave_on_changes=False), script)
    res = run.get("result", {})
    cmp = chaos.compare(reference, run)
    assert cmp["identical"], (cmp["diffs"], run.get("events"))
    assert cmp["lost_reports"] == 0 and cmp["duplicate_reports"] == 0
    assert res["mqtt_connects"] >= 2
