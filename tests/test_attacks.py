"""Attacks by a malicious coordinator on a real mask broker, through a real mosquitto.

The coordinator holds every masked plan; one mask sum of a single home, or two sums that differ by
one home, would unmask that home. Each attack below is refused with its documented reason
(docs/privacy.md) and releases nothing, while honest requests in the same session still work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from mask_broker_kit import (  # the real service + mosquitto fixture
    DAY,
    FRAMES,
    HOMES,
    B,
    HomeSide,
    Lab,
    ask,
    connected,
    expected,
    lab,
    next_json,
    report,
)

from backend.mask_broker.audit import audit, verdict
from backend.mask_broker.release_log import read_release_log
from hemsfw import protocol, protocol_svc

__all__ = ["lab"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.integration


def _released(res: dict[str, Any], gid: str) -> bool:
    return isinstance(res[gid], bytes)


def test_malicious_coordinator_is_refused(lab: Lab) -> None:
    lab.start_service()
    h = {n: HomeSide(lab.keys, n) for n in ("h1", "h2", "h3", "h4", "h5", "h6")}
    h1, h2, h3, h4, h5, h6 = h.values()

    async def attack() -> None:
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            ann = protocol_svc.make_round(DAY, 1, FRAMES, 900, 1, 0, 3600, [B])
            await coord.publish(protocol.t_round(), protocol.encode(ann), qos=1, retain=True)
            lab.wait_stats(lambda s: s["round"] is not None)
            for home in (h1, h2, h3, h4, h5):
                assert (await report(lab, home.id, home.payload()))["status"] == "accepted"

            # 1. A group of one home (k = 2 in this fixture): that home's mask alone.
            res = await ask(coord, "a1", [("tiny", [h1])])
            assert res["tiny"] == ("too_small", [])

            # 2. Padding a one-home group with invented ids to reach k.
            pad = protocol_svc.make_group_request("a2", DAY, 1, [(
                "padded", ["h1", "ghost1", "ghost2"],
                protocol_svc.report_checksum([h1.rid, "00" * 16, "11" * 16]))])
            await coord.publish(protocol_svc.t_groupreq(B), protocol.encode(pad), qos=1)
            res = await _answer(coord, "a2")
            assert res["padded"][0] == "unregistered_member"

            # 3. Replay: the same sealed report again, and a second report of a home.
            again = await report(lab, "h1", h1.payload())
            assert (again["status"], again["reason"]) == ("rejected", "replay")
            second = HomeSide(lab.keys, "h1")
            dup = await report(lab, "h1", second.payload())
            assert (dup["status"], dup["reason"]) == ("rejected", "duplicate_home")

            # 4. A split, then a reshuffle that would difference one home out:
            #    {h1,h2,h3,h4} and {h1,h2}, {h3,h4} are fine; {h2,h3} would isolate.
            res = await ask(coord, "a4", [("all", [h1, h2, h3, h4]),
                                          ("left", [h1, h2]), ("right", [h3, h4])])
            assert res["all"] == expected([h1, h2, h3, h4])
            res = await ask(coord, "a5", [("shuffle", [h2, h3])])
            assert res["shuffle"] == ("would_isolate", [])
            # ... and a superset that differs from a released group by one home.
            res = await ask(coord, "a6", [("plus1", [h1, h2, h3, h4, h5])])
            assert res["plus1"] == ("would_isolate", [])

            # 5. A member set that differs from the homes' reports (forged checksum, or a
            #    member list that does not match the report ids it claims).
            res = await ask(coord, "a7", [("forged", [h1, h2])],
                            checksums={"forged": protocol_svc.report_checksum([h1.rid, h3.rid])})
            assert res["forged"] == ("checksum_mismatch", [])

            # 6. Mixing rounds: a request for another round, and after round 2 starts, a group
            #    naming a home that reported only in round 1.
            other = protocol_svc.make_group_request("a8", DAY, 2, [(
                "r2", ["h1", "h2"], protocol_svc.report_checksum([h1.rid, h2.rid]))])
            await coord.publish(protocol_svc.t_groupreq(B), protocol.encode(other), qos=1)
            res = await _answer(coord, "a8")
            assert res["r2"][0] == "unknown_round"
            ann2 = protocol_svc.make_round(DAY, 2, FRAMES, 900, 1, 0, 3600, [B])
            await coord.publish(protocol.t_round(), protocol.encode(ann2), qos=1, retain=True)
            lab.wait_stats(lambda s: s["round"] and s["round"]["round"] == 2)
            n1, n6 = HomeSide(lab.keys, "h1"), h6
            for home in (n1, n6):
                assert (await report(lab, home.id, home.payload(rnd=2)))["status"] == "accepted"
            mixed = protocol_svc.make_group_request("a9", DAY, 2, [(
                "mixed", ["h1", "h5", "h6"],
                protocol_svc.report_checksum([n1.rid, h5.rid, n6.rid]))])
            await coord.publish(protocol_svc.t_groupreq(B), protocol.encode(mixed), qos=1)
            res = await _answer(coord, "a9")
            assert res["mixed"] == ("missing_members", ["h5"])

        s = lab.wait_stats(lambda s: s["groups"]["requests"] >= 8)
        # Only the honest split (3 groups) was ever released.
        assert s["groups"]["released"] == 3, s["groups"]

    asyncio.run(asyncio.wait_for(attack(), 120))


async def _answer(coord: Any, req: str) -> dict[str, Any]:
    """The broker's answer to a request published by hand (not through ask())."""
    while True:
        obj = await next_json(coord, protocol_svc.t_groupsum(B))
        if obj.get("req") == req:
            return protocol_svc.parse_group_sums(obj, FRAMES)[4]


TODAY = (dt.date.fromisoformat(DAY) - dt.timedelta(days=1)).isoformat()


async def _announce(coord: Any, day: str, rnd: int = 1) -> None:
    ann = protocol_svc.make_round(day, rnd, FRAMES, 900, 1, 0, 3600, [B])
    await coord.publish(protocol.t_round(), protocol.encode(ann), qos=1, retain=True)


async def _a_day(lab: Lab, coord: Any, day: str, homes: list[str]) -> dict[str, HomeSide]:
    """Announce round 1 of `day`; `homes` report a fresh mask for it."""
    await _announce(coord, day)
    lab.wait_stats(lambda s: s["round"] is not None and s["round"]["day"] == day)
    sides = {n: HomeSide(lab.keys, n) for n in homes}
    for n, side in sides.items():
        assert (await report(lab, n, side.payload(day=day)))["status"] == "accepted"
    return sides


def test_a_new_day_cannot_difference_one_home_out(lab: Lab) -> None:
    """Issue 13, finding 1 (attacker): all homes on day D, all but h1 on D+1.  Plans may repeat
    exactly, so the two sums would differ by h1's plan: the broker refuses the second."""
    lab.start_service()

    async def attack() -> None:
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            d1 = await _a_day(lab, coord, TODAY, HOMES)
            res = await ask(coord, "d1", [("all", list(d1.values()))], day=TODAY)
            assert res["all"] == expected(list(d1.values()))
            d2 = await _a_day(lab, coord, DAY, HOMES)
            res = await ask(coord, "d2", [("but-h1", [d2[h] for h in HOMES[1:]])], day=DAY)
            assert res["but-h1"] == ("would_isolate", [])

    asyncio.run(asyncio.wait_for(attack(), 120))
    assert verdict(audit(r["members"] for r in read_release_log(lab.release_log))
                   )["exposed_homes"] == []


def test_a_home_missing_a_day_is_carried_and_the_others_are_still_served(lab: Lab) -> None:
    """Issue 13, finding 1 (no attacker) and 4: h1 misses day D+1.  Its group is asked with h1
    carried (its day-D report): released, so every other home is served, and what was released
    over both days isolates nobody (checked by the exact-span audit of the release log)."""
    lab.start_service()

    async def honest() -> None:
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            d1 = await _a_day(lab, coord, TODAY, HOMES)
            res = await ask(coord, "d1", [("g", list(d1.values()))], day=TODAY)
            assert res["g"] == expected(list(d1.values()))
            d2 = await _a_day(lab, coord, DAY, HOMES[1:])
            group = [d1["h1"], *(d2[h] for h in HOMES[1:])]
            res = await ask(coord, "d2", [("g", group)], day=DAY, carried={"g": ["h1"]})
            assert res["g"] == expected(group)

    asyncio.run(asyncio.wait_for(honest(), 120))
    released = read_release_log(lab.release_log)
    assert [r["carried"] for r in released] == [[], ["h1"]]
    assert verdict(audit(r["members"] for r in released))["exposed_homes"] == []


def test_a_later_round_of_the_day_serves_the_homes_present_with_the_absent_one_carried(
        lab: Lab) -> None:
    """Issue 13, finding 4: one home misses round 2 of the same day.  Without it the group would
    isolate it (would_isolate, correctly); with it carried the rest are served."""
    lab.start_service()

    async def later_round() -> None:
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            r1 = await _a_day(lab, coord, DAY, HOMES)
            res = await ask(coord, "r1", [("g", list(r1.values()))], day=DAY)
            assert res["g"] == expected(list(r1.values()))
            await _announce(coord, DAY, 2)
            lab.wait_stats(lambda s: s["round"]["round"] == 2)
            r2 = {n: HomeSide(lab.keys, n) for n in HOMES[1:]}
            for n, side in r2.items():
                assert (await report(lab, n, side.payload(rnd=2, day=DAY)))["status"] == \
                    "accepted"
            res = await ask(coord, "r2a", [("g", list(r2.values()))], day=DAY, rnd=2)
            assert res["g"] == ("would_isolate", [])
            group = [r1["h1"], *r2.values()]
            res = await ask(coord, "r2b", [("g", group)], day=DAY, rnd=2,
                            carried={"g": ["h1"]})
            assert res["g"] == expected(group)

    asyncio.run(asyncio.wait_for(later_round(), 120))
