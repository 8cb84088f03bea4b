"""One bad report costs only its sender: a home that seals its seed under another report id than
its plan's makes the mask broker refuse its group (``checksum_mismatch``); asked again with each
member's report id, the broker names that home (``report_mismatch``), the coordinator excludes it
alone and re-forms the rest of its group within the release rule.

Stepped without MQTT: the round's driver, a list for a network, the mask broker's own core
(tests/coordinator_kit.py); the same over mosquitto with real firmware is in
tests/test_lab_rogue.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from coordinator_kit import Homes, capacity_message, new_round, play

from backend.coordinator.record import round_record
from backend.mask_broker.core import MaskBroker
from hemsfw import protocol, protocol_svc

F = 8
HOMES = [f"h{i}" for i in range(9)]


async def round_with(homes: Homes, rogue: list[str], brokers: tuple[str, ...] = ("mb1",),
                     cap: int | None = None, bad_seal: list[str] | None = None
                     ) -> dict[str, Any]:
    total = sum(homes.plans.values())
    kit = new_round(None, capacity=capacity_message(F, cap or int(total.max()) * 2),
                    expected_homes=len(homes.ids), brokers=brokers)
    await play(kit, homes, mismatched=rogue, bad_seal=bad_seal or [])
    rec = round_record(kit.round, "completed")
    rec["_sent"] = kit.out.sent
    return rec


def test_a_mismatched_report_id_excludes_its_sender_alone() -> None:
    homes = Homes(HOMES, F, seed=5)
    rec = asyncio.run(round_with(homes, ["h4"]))
    assert [(e["home"], e["reason"]) for e in rec["excluded"]] == [("h4", "report_mismatch")]
    assert rec["excluded"][0]["broker"] == "mb1"
    counted = sorted(h for g in rec["groups"] for h in g["members"])
    assert counted == sorted(set(HOMES) - {"h4"})
    honest = sum(homes.plans[h] for h in counted)
    assert rec["coordinator_load_before_wh"] == honest.tolist()
    assert rec["adjusted_homes"] == len(HOMES) - 1
    # the offender is told why, and gets no adjustment
    sent = rec["_sent"]
    assert not any(t == protocol.t_adjust("h4") for t, _ in sent)
    (reply,) = [protocol.decode(p) for t, p in sent if t == protocol.t_reply("coordinator", "h4")
                and protocol.decode(p)["status"] == "rejected"]
    assert reply["reason"] == "report_mismatch"
    why = {(r["reason"]) for r in rec["refused_groups"]}
    assert why == {"checksum_mismatch", "report_mismatch"}


def test_with_two_mask_brokers_the_offender_alone_leaves() -> None:
    homes = Homes(HOMES, F, brokers=("mb1", "mb2"), seed=6)
    rec = asyncio.run(round_with(homes, ["h2"], brokers=("mb1", "mb2")))
    assert [(e["home"], e["reason"]) for e in rec["excluded"]] == [("h2", "report_mismatch")]
    assert rec["adjusted_homes"] == len(HOMES) - 1


def test_a_bad_seal_excludes_its_sender_alone() -> None:
    homes = Homes(HOMES, F, seed=8)
    rec = asyncio.run(round_with(homes, [], bad_seal=["h7"]))
    assert [(e["home"], e["reason"]) for e in rec["excluded"]] == [("h7", "mask_missing")]
    assert rec["adjusted_homes"] == len(HOMES) - 1
    counted = sorted(h for g in rec["groups"] for h in g["members"])
    assert counted == sorted(set(HOMES) - {"h7"})


def test_the_broker_names_only_the_members_whose_report_id_differs() -> None:
    homes = Homes(["a", "b", "c", "d"], F, seed=2)
    mb = MaskBroker("mb1", homes.broker_keys("mb1"), 3)
    ann = protocol_svc.make_round("2026-11-27", 1, F, 900, 1, 0, 3600, ["mb1"])
    mb.handle(protocol.t_round(), protocol.encode(ann))
    _, masks = homes.reports(mismatched=["c"])
    for topic, payload in masks["mb1"]:
        mb.handle(topic, payload)
    rids = homes.report_ids  # the plan's report ids (what the coordinator holds)
    members = ["a", "b", "c", "d"]
    entry = ("g", members, protocol_svc.report_checksum([rids[h] for h in members]), [],
             [rids[h] for h in members])
    req = protocol_svc.make_group_request("r1", "2026-11-27", 1, [entry])
    (out,) = [o for o in mb.handle(protocol_svc.t_groupreq("mb1"), protocol.encode(req))
              if hasattr(o, "payload")]
    res = protocol_svc.parse_group_sums(protocol.decode(out.payload, 1 << 20), F)[4]
    assert res["g"] == ("report_mismatch", ["c"])
    # nothing was released: the same members without c are still answerable
    good = [h for h in members if h != "c"]
    entry2 = ("g2", good, protocol_svc.report_checksum([rids[h] for h in good]))
    req2 = protocol_svc.make_group_request("r2", "2026-11-27", 1, [entry2])
    (out2,) = [o for o in mb.handle(protocol_svc.t_groupreq("mb1"), protocol.encode(req2))
               if hasattr(o, "payload")]
    res2 = protocol_svc.parse_group_sums(protocol.decode(out2.payload, 1 << 20), F)[4]
    assert isinstance(res2["g2"], bytes)
    assert np.frombuffer(res2["g2"], dtype="<u4").shape == (F,)
