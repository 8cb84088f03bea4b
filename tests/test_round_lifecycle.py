"""The round's lifecycle (lifecycle.py) and its driver (round.py), stepped without a broker:
a list for the network, a clock the test moves, the mask broker's own core on the other side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from coordinator_kit import (
    NOW,
    Homes,
    capacity_message,
    new_round,
    take_all,
    until_phase,
    wire,
)

from backend.coordinator.lifecycle import TRANSITIONS, IllegalTransition, Lifecycle, Phase
from backend.coordinator.record import round_record
from backend.coordinator.round import RoundFailed
from backend.mask_broker.core import MaskBroker
from hemsfw import protocol

F = 8
HOMES = [f"h{i}" for i in range(9)]
#: the phases of a round that needs no refinement, in order
PATH = [Phase.COLLECTING, Phase.CLOSED, Phase.SUMMING, Phase.SOLVING, Phase.PUBLISHING,
        Phase.SERVING, Phase.ENDED]


def test_every_phase_but_the_terminal_ones_can_fail_and_nothing_leaves_a_terminal_one() -> None:
    for phase, nxt in TRANSITIONS.items():
        if phase in (Phase.ENDED, Phase.FAILED):
            assert nxt == frozenset()
        else:
            assert Phase.FAILED in nxt


def test_a_transition_outside_the_table_is_refused() -> None:
    life = Lifecycle()
    with pytest.raises(IllegalTransition):
        life.to(Phase.SOLVING, 0.0)
    life.to(Phase.COLLECTING, 1.0)
    assert life.phase is Phase.COLLECTING and life.entered(Phase.COLLECTING) == 1.0


async def one_round(tmp: Path | None, homes: Homes, cap: int,
                    stop_in: Phase | None = None) -> dict[str, object]:
    kit = new_round(tmp, capacity=capacity_message(F, cap), expected_homes=len(HOMES),
                    linger_s=0.0 if stop_in is None else 60.0)
    mb = MaskBroker("mb1", homes.broker_keys("mb1"), 3)
    wire(kit, {"mb1": mb})
    task = asyncio.create_task(kit.round.run())
    await until_phase(kit, Phase.COLLECTING)
    plans, masks = homes.reports()
    for topic, payload in masks["mb1"]:
        mb.handle(topic, payload)
    replies = take_all(kit, plans)
    assert len(replies) == len(HOMES)
    if stop_in is not None:
        await until_phase(kit, stop_in)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return {"phase": kit.round.phase}
    await task
    return round_record(kit.round, "completed")


def test_a_round_walks_every_phase_with_a_list_for_a_network() -> None:
    homes = Homes(HOMES, F)
    total = sum(homes.plans.values())
    rec = asyncio.run(one_round(None, homes, int(total.max())))  # no overload: no regrouping
    assert [p for p, _ in rec["phases"]] == [p.value for p in PATH]  # type: ignore[attr-defined]
    # the coordinator's view from masked plans and mask sums is the homes' summed plans
    assert rec["coordinator_load_before_wh"] == total.tolist()
    assert rec["homes"] == len(HOMES) and rec["adjusted_homes"] == len(HOMES)


def test_a_restarted_round_resumes_where_it_stood_with_the_same_result(tmp_path: Path) -> None:
    homes = Homes(HOMES, F, seed=4)
    cap = int(sum(homes.plans.values()).max()) * 9 // 10
    reference = asyncio.run(one_round(None, homes, cap))
    asyncio.run(one_round(tmp_path, homes, cap, stop_in=Phase.SERVING))

    async def resume() -> dict[str, object]:
        kit = new_round(tmp_path, capacity=capacity_message(F, cap), expected_homes=len(HOMES))
        await kit.round.run()  # every input is in the journal: no network needed
        assert kit.round.restarts == 1
        return round_record(kit.round, "completed")

    again = asyncio.run(resume())
    phases = [p for p, _ in reference["phases"]]  # type: ignore[attr-defined]
    assert phases.count("summing") >= 2  # the tight capacity made it regroup
    for key in ("coordinator_load_before_wh", "coordinator_load_after_wh", "moves", "curtail",
                "overload_after_wh"):
        assert again[key] == reference[key], key
    assert ([g["members"] for g in again["groups"]]  # type: ignore[attr-defined]
            == [g["members"] for g in reference["groups"]])  # type: ignore[attr-defined]


def test_a_round_without_capacity_fails_and_stays_failed_after_a_restart(
        tmp_path: Path) -> None:
    async def go() -> str | None:
        kit = new_round(tmp_path, expected_homes=1)
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        plans, _ = Homes(["h0"], F).reports()
        take_all(kit, plans)
        with pytest.raises(RoundFailed, match="no capacity profile"):
            await task
        assert kit.round.phase is Phase.FAILED
        return kit.round.life.reason

    reason = asyncio.run(go())

    async def again() -> None:
        kit = new_round(tmp_path, capacity=capacity_message(F, 100), expected_homes=1)
        with pytest.raises(RoundFailed, match="no capacity profile"):
            await kit.round.run()
        assert not kit.out.published  # nothing announced again

    asyncio.run(again())
    assert reason is not None


def test_collection_closes_at_the_deadline_on_the_deployment_clock() -> None:
    async def go() -> None:
        kit = new_round(None, capacity=capacity_message(F, 10_000))
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        await asyncio.sleep(0.05)
        assert kit.round.phase is Phase.COLLECTING  # the clock has not moved
        kit.clock.t = NOW + 31  # past the deadline (NOW + 30)
        with pytest.raises(RoundFailed, match="fewer than k"):
            await task
        assert [p for p, _ in kit.round.life.history][:2] == [Phase.COLLECTING, Phase.CLOSED]

    asyncio.run(go())


def test_a_report_for_a_round_not_announced_yet_is_refused_without_a_reply() -> None:
    kit = new_round(None)
    plans, _ = Homes(["h0"], F).reports()
    assert take_all(kit, plans) == []
    assert kit.round.rejections.as_dict() == {"plan:unknown_round": 1}


def test_the_announcement_is_journaled_before_it_is_published(tmp_path: Path) -> None:
    async def go() -> None:
        kit = new_round(tmp_path)
        seen: list[bool] = []
        journal = tmp_path / "round-2026-11-27-1.jsonl"
        kit.out.peer = lambda topic, payload: seen.append(
            topic == protocol.t_round() and b'"kind":"round"' in journal.read_bytes())
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [True]

    asyncio.run(go())


def test_group_totals_are_exact_with_two_mask_brokers() -> None:
    async def go() -> None:
        homes = Homes(HOMES, F, brokers=("mb1", "mb2"), seed=7)
        total = sum(homes.plans.values())
        kit = new_round(None, capacity=capacity_message(F, int(total.max()) * 2),
                        expected_homes=len(HOMES), brokers=("mb1", "mb2"))
        mbs = {b: MaskBroker(b, homes.broker_keys(b), 3) for b in ("mb1", "mb2")}
        wire(kit, mbs)
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        plans, masks = homes.reports()
        for b, msgs in masks.items():
            for topic, payload in msgs:
                mbs[b].handle(topic, payload)
        take_all(kit, plans)
        await task
        rec = round_record(kit.round, "completed")
        assert np.array_equal(rec["coordinator_load_before_wh"], total)

    asyncio.run(go())
