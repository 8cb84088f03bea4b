"""The coordinator's journal (backend/coordinator/journal.py), its replay, and its metrics.

Pure tests: no broker.  The end-to-end proof (kill -9 mid-round, same result) is
tests/test_durability.py."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from backend.common.metrics import render
from backend.common.mqtt import MqttSettings
from backend.coordinator import metrics
from backend.coordinator.adjust import Policy, Problem, solve
from backend.coordinator.intake import RoundState
from backend.coordinator.journal import Journal, result_from_json, result_to_json
from backend.coordinator.service import Coordinator, CoordinatorError, ServiceConfig
from hemsfw import protocol

DAY = "2026-11-27"
F = 8
NOW = 1_700_000_000.0


def cfg(tmp: Path, **kw: object) -> ServiceConfig:
    base = ServiceConfig(day=DAY, round=1, frames=F, frame_s=900, quantum_wh=1,
                         start=1_800_000_000, collect_s=60, brokers=("mb1",), k=3,
                         state_dir=tmp / "state")
    return replace(base, **kw)  # type: ignore[arg-type]


def test_append_load_and_torn_tail(tmp_path: Path) -> None:
    d = tmp_path / "state"
    j = Journal(d, DAY, 1)
    assert j.load() == []
    j.append("round", deadline=5, k=3)  # a record may carry a field named "k"
    j.append("report", home="h1")
    asyncio.run(j.commit())
    assert not j.dirty
    j.close()
    with open(j.path, "ab") as f:  # a crash in the middle of a line
        f.write(b'{"kind":"report","home":"h2","mas')
    j2 = Journal(d, DAY, 1)
    recs = j2.load()
    assert [r["kind"] for r in recs] == ["round", "report"] and recs[0]["k"] == 3
    assert j.path.read_bytes().endswith(b"\n")  # the torn line is gone for good
    j2.append("closed", accepted=1)
    j2.close()
    assert [r["kind"] for r in Journal(d, DAY, 1).load()] == ["round", "report", "closed"]
    assert stat.S_IMODE(os.stat(j.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_group_commit_covers_every_append(tmp_path: Path) -> None:
    j = Journal(tmp_path, DAY, 1)

    async def go() -> None:
        j.append("a")
        j.append("b")
        await asyncio.gather(j.commit(), j.commit(), j.commit())
        assert not j.dirty

    asyncio.run(go())
    j.close()


def test_result_round_trips_through_json() -> None:
    p = Problem(totals=np.array([[5, 9, 0, 1], [3, 0, 7, 2]]), capacity=np.array([8, 8, 8, 8]),
                magnification=np.array([2, 4]), policy=Policy())
    r = solve(p)
    back = result_from_json(json.loads(json.dumps(result_to_json(r))))
    assert back.moves == r.moves and back.curtail == r.curtail
    assert np.array_equal(back.load_after, r.load_after)
    assert np.array_equal(back.group_after, r.group_after)
    assert (back.overload_after_wh, back.solver, back.status) == (
        r.overload_after_wh, r.solver, r.status)


def journaled(tmp: Path, c: Coordinator) -> None:
    """What a first process leaves behind: the round record, a start and some reports."""
    c.round_cfg = replace(c.round_cfg, deadline=int(NOW) + 30)
    j = c.journal
    assert j is not None
    j.append("round", **c._round_record(), at=NOW)
    j.append("start", pid=1, at=NOW)
    for h in ("h1", "h2"):
        j.append("report", home=h, report_id=os.urandom(16).hex(), mag=2,
                 masked=protocol.b64(bytes(4 * F)))
    j.close()


def test_restore_keeps_the_deadline_and_the_reports(tmp_path: Path) -> None:
    first = Coordinator(cfg(tmp_path), MqttSettings(), clock=lambda: NOW)
    journaled(tmp_path, first)
    again = Coordinator(cfg(tmp_path), MqttSettings(), clock=lambda: NOW + 1)
    again._restore()
    assert again.round_cfg.deadline == int(NOW) + 30  # not NOW + 1 + collect_s
    assert again.state is not None and sorted(again.state.reports) == ["h1", "h2"]
    assert again.restarts == 1 and again._journaled_round
    # a redelivered report is a replay and changes nothing
    rid = again.state.reports["h1"].report_id
    msg = protocol.make_plan_report("h1", DAY, 1, rid, 2, bytes(4 * F))
    out: list[tuple[str, bytes]] = []
    again.dispatch(protocol.t_plan("h1"), protocol.encode(msg), False, out)
    assert again.rejections.as_dict() == {"plan:replay": 1}
    assert again.state.accepted == 2


def test_restore_refuses_other_parameters(tmp_path: Path) -> None:
    first = Coordinator(cfg(tmp_path), MqttSettings(), clock=lambda: NOW)
    journaled(tmp_path, first)
    other = Coordinator(cfg(tmp_path, k=4), MqttSettings(), clock=lambda: NOW)
    with pytest.raises(CoordinatorError, match="other parameters"):
        other._restore()


def test_metrics_samples(tmp_path: Path) -> None:
    c = Coordinator(cfg(tmp_path, state_dir=None), MqttSettings(), clock=lambda: NOW)
    c.round_cfg = replace(c.round_cfg, deadline=int(NOW) + 30)
    c.state = RoundState(c.round_cfg)
    out: list[tuple[str, bytes]] = []
    msg = protocol.make_plan_report("h1", DAY, 1, os.urandom(16).hex(), 2, bytes(4 * F))
    c.dispatch(protocol.t_plan("h1"), protocol.encode(msg), False, out)
    c.dispatch(protocol.t_plan("h1"), b"{", False, out)
    text = render(metrics.samples(c))
    assert "hems_coordinator_reports_accepted_total 1" in text
    assert 'hems_coordinator_rejected_total{kind="plan",reason="bad_json"} 1' in text
    assert "hems_coordinator_collection_open 1" in text
    assert "hems_coordinator_connected 0" in text
    assert all(line.startswith(("# ", "hems_coordinator_")) for line in text.splitlines())
