"""Rounds after rounds (issue 13): the coordinator remembers the brokers' partitions, the last
grouping and each home's latest released report (memory.py), so a home that misses a round is
carried forward and costs nobody else their round.  Stepped without a broker: a list for the
network, the mask broker's own core on the other side (tests/coordinator_kit.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from coordinator_kit import Homes, Kit, capacity_message, new_round, take_all, until_phase, wire

from backend.coordinator.grouping import stable_grouping
from backend.coordinator.lifecycle import Phase
from backend.coordinator.memory import Carried, Memory
from backend.coordinator.record import round_record
from backend.mask_broker.core import MaskBroker
from hemsfw import protocol

F = 8
HOMES = [f"h{i}" for i in range(9)]
DAYS = ["2026-11-27", "2026-11-28", "2026-11-29"]


# ------------------------------------------------------------------ the grouping


def test_the_grouping_stays_the_last_one_with_absent_members_carried() -> None:
    previous = [("g1", ["a", "b", "c"]), ("g2", ["d", "e", "f"])]
    mags = {"a": 2, "b": 2, "d": 1, "e": 1, "f": 1}  # c is absent
    groups, carried, waiting, holes = stable_grouping(mags, previous, {"c": 2}, 3, "r1g")
    assert [sorted(g.members) for g in groups] == [["a", "b", "c"], ["d", "e", "f"]]
    assert carried == {"c"} and waiting == [] and holes == []


def test_new_homes_form_a_new_group_of_k_or_wait() -> None:
    previous = [("g1", ["a", "b", "c"])]
    mags = {"a": 2, "b": 2, "c": 2, "n1": 1, "n2": 1}
    groups, _, waiting, _ = stable_grouping(mags, previous, {}, 3, "r1g")
    assert [sorted(g.members) for g in groups] == [["a", "b", "c"]]
    assert waiting == ["n1", "n2"]  # two new homes cannot be an atom of their own yet
    mags["n3"] = 4
    groups, _, waiting, _ = stable_grouping(mags, previous, {}, 3, "r1g")
    assert [sorted(g.members) for g in groups] == [["a", "b", "c"], ["n1", "n2", "n3"]]
    assert waiting == [] and [g.id for g in groups] == ["r1g1", "r1g2"]


def test_a_member_with_no_report_and_nothing_to_carry_is_a_hole() -> None:
    groups, carried, _, holes = stable_grouping({"a": 1, "b": 1}, [("g", ["a", "b", "c"])],
                                                {}, 2, "r1g")
    assert holes == ["c"] and carried == set()
    assert [sorted(g.members) for g in groups] == [["a", "b"]]  # the dry run refuses it


def test_homes_a_round_dropped_are_grouped_as_the_atom_they_form_at_a_broker() -> None:
    # mb1 answered the full group, mb2 lacked g's mask: the coordinator dropped g with e and f
    # (atom_guard) and both answered the rest.  At mb1 {e, f, g} is now an atom: regrouped with
    # a new home (as the last round's grouping alone would do) it is refused for good.
    m = Memory(3, ("mb1", "mb2"))
    full, rest = ["a", "b", "c", "d", "e", "f", "g"], ["a", "b", "c", "d"]
    assert m.partitions["mb1"].release(full) is None
    for b in m.brokers:
        assert m.partitions[b].release(rest) is None
    m.absorb(("2026-11-28", 1), m.partitions, [], [("g1m", rest)])
    assert m.cells() == [("c1", rest), ("c2", ["e", "f", "g"])]
    mags = dict.fromkeys([*full, "n1", "n2", "n3"], 1)
    groups, _, waiting, holes = stable_grouping(mags, m.cells(), {}, 3, "r1g")
    assert [sorted(g.members) for g in groups] == [rest, ["e", "f", "g"], ["n1", "n2", "n3"]]
    assert waiting == [] and holes == []
    assert all(m.partitions[b].check(list(g.members)) is None
               for g in groups for b in m.brokers)


def test_memory_round_trips_and_ignores_an_older_round(tmp_path: Path) -> None:
    m = Memory(3, ("mb1",))
    m.partitions["mb1"].release(["a", "b", "c", "d"])
    c = Carried("ab" * 16, 2, bytes(range(32)))
    assert m.absorb(("2026-11-28", 1), m.partitions, [("a", c)], [("g", ["a", "b", "c", "d"])])
    m.save(tmp_path)
    back = Memory.load(tmp_path, 3, ["mb1", "mb2"])
    assert back.carried == {"a": c} and back.groups == [("g", ["a", "b", "c", "d"])]
    assert back.partitions["mb1"].check(["a", "b"]) == "too_small"
    assert back.partitions["mb2"].check(["a", "b", "c"]) is None  # a new broker: empty
    assert not back.absorb(("2026-11-27", 1), {}, [], [])  # older: changes nothing
    with pytest.raises(ValueError, match="k=3"):
        Memory.load(tmp_path, 4, ["mb1"])


# ------------------------------------------------------------------ days of rounds


class Days:
    """Consecutive days of rounds: one memory carried from round to round (as the daemon does),
    one mask broker core for the whole time (its partition outlives the days)."""

    def __init__(self, homes: Homes, k: int = 3) -> None:
        self.homes = homes
        self.memory = Memory(k, ("mb1",))
        self.mb = MaskBroker("mb1", homes.broker_keys("mb1"), k)
        self.kits: list[Kit] = []

    async def day(self, day: str, present: Sequence[str], lose_mask: Sequence[str] = (),
                  cap: int = 100_000) -> Kit:
        kit = new_round(None, capacity=capacity_message(F, cap), expected_homes=len(present),
                        day=day, linger_s=0.0)
        kit.round.memory = self.memory
        wire(kit, {"mb1": self.mb})
        task = asyncio.create_task(kit.round.run())
        await until_phase(kit, Phase.COLLECTING)
        plans, masks = self.homes.reports(day=day, homes=present)
        for topic, payload in masks["mb1"]:
            if protocol.topic_tail(topic, "mask")[1] not in lose_mask:  # type: ignore[index]
                self.mb.handle(topic, payload)
        take_all(kit, plans)
        await task
        self.memory.absorb(kit.round.key, *kit.round.settled())
        self.kits.append(kit)
        return kit


def adjusted(kit: Kit) -> set[str]:
    return {protocol.topic_tail(t, "adjust")[0] for t, _ in kit.out.sent  # type: ignore[index]
            if t.startswith(protocol.PREFIX + "/adjust/")}


def test_an_absent_home_is_carried_and_every_other_home_is_still_served() -> None:
    homes = Homes(HOMES, F, seed=3)

    async def go() -> None:
        days = Days(homes)
        first = await days.day(DAYS[0], HOMES)
        assert adjusted(first) == set(HOMES)
        second = await days.day(DAYS[1], [h for h in HOMES if h != "h4"])
        rec = round_record(second.round, "completed")
        assert rec["status"] == "completed" or rec["phase"] == "ended"
        carried = {h for g in rec["groups"] for h in g["carried"]}
        assert carried == {"h4"}
        assert adjusted(second) == set(HOMES) - {"h4"}  # everyone else served
        assert not [e for e in rec["excluded"] if e["home"] != "h4"]
        # the total still adds up exactly: h4 counts with day 1's plan (plans repeat here)
        total = sum(homes.plans[h] for h in HOMES)
        assert np.array_equal(rec["coordinator_load_before_wh"], total)

    asyncio.run(go())


def test_a_lost_mask_costs_only_its_home() -> None:
    homes = Homes(HOMES, F, seed=5)

    async def go() -> None:
        days = Days(homes)
        await days.day(DAYS[0], HOMES)
        second = await days.day(DAYS[1], HOMES, lose_mask=["h2"])
        rec = round_record(second.round, "completed")
        assert {e["home"]: e["reason"] for e in rec["excluded"]} == {
            "h2": "counted_with_previous_report"}
        assert adjusted(second) == set(HOMES) - {"h2"}

    asyncio.run(go())


def test_the_days_never_release_a_set_that_isolates_a_home() -> None:
    """Over three days with a different home absent each day, every released member set is a
    union of the atoms of the first day's groups (checked independently of the release code:
    each set of day 2 and 3 equals a set released on day 1, or a union of them)."""
    homes = Homes(HOMES, F, seed=7)

    async def go() -> list[list[frozenset[str]]]:
        days = Days(homes)
        for day, absent in zip(DAYS, [None, "h1", "h7"], strict=True):
            await days.day(day, [h for h in HOMES if h != absent])
        return [[frozenset(g["members"]) for g in round_record(k.round, "completed")["groups"]]
                for k in days.kits]

    per_day = asyncio.run(go())
    first = per_day[0]
    for sets in per_day[1:]:
        for s in sets:
            assert any(s == f for f in first) or s == frozenset().union(
                *[f for f in first if f <= s])


def test_memory_is_kept_in_the_state_dir_and_a_restart_uses_it(tmp_path: Path) -> None:
    homes = Homes(HOMES, F, seed=9)

    async def go() -> None:
        days = Days(homes)
        await days.day(DAYS[0], HOMES)
        days.memory.save(tmp_path)
        days.memory = Memory.load(tmp_path, 3, ["mb1"])  # a restarted coordinator
        second = await days.day(DAYS[1], [h for h in HOMES if h != "h0"])
        assert adjusted(second) == set(HOMES) - {"h0"}

    asyncio.run(go())
    assert json.loads((tmp_path / "memory.json").read_text())["k"] == 3
