"""The coordinator's journal (backend/coordinator/journal.py) and a round's replay of it.

Pure tests: no broker.  The end-to-end proof (kill -9 mid-round, same result) is
tests/test_durability.py."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from coordinator_kit import DAY, NOW, Homes, ManualClock, new_round, take_all, until_phase

from backend.coordinator.adjust import Policy, Problem, solve
from backend.coordinator.codec import result_from_json, result_to_json
from backend.coordinator.journal import Journal
from backend.coordinator.lifecycle import Phase
from backend.coordinator.round import RoundFailed
from hemsfw import protocol

F = 8


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


def first_process(tmp: Path) -> None:
    """What a first process leaves behind: the round announced (journaled), two reports."""
    async def go() -> None:
        kit = new_round(tmp / "state", collect_s=30, deadline=None)
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        plans, _ = Homes(["h1", "h2"], F).reports()
        take_all(kit, plans)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert kit.round.journal is not None
        kit.round.journal.close()

    asyncio.run(go())


def test_restore_keeps_the_deadline_and_the_reports(tmp_path: Path) -> None:
    first_process(tmp_path)
    again = new_round(tmp_path / "state", ManualClock(NOW + 1), collect_s=30, deadline=None)
    r = again.round
    assert r.cfg.deadline == int(NOW) + 30  # not NOW + 1 + collect_s
    assert r.intake is not None and sorted(r.intake.state.reports) == ["h1", "h2"]
    assert r.restarts == 1
    # a redelivered report is a replay and changes nothing
    rid = r.intake.state.reports["h1"].report_id
    msg = protocol.make_plan_report("h1", DAY, 1, rid, 2, bytes(4 * F))
    out: list[tuple[str, bytes]] = []
    r.take_plan(protocol.t_plan("h1"), protocol.encode(msg), False, out)
    assert r.rejections.as_dict() == {"plan:replay": 1}
    assert r.intake.accepted == 2


def test_restore_refuses_other_parameters(tmp_path: Path) -> None:
    first_process(tmp_path)
    with pytest.raises(RoundFailed, match="other parameters"):
        new_round(tmp_path / "state", collect_s=30, deadline=None, k=4)


def test_journal_files_are_the_operators_only(tmp_path: Path) -> None:
    first_process(tmp_path)
    d = tmp_path / "state"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.glob("round-*.jsonl"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
