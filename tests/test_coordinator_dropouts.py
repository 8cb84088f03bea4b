"""Dropouts and stragglers are excluded consistently by both services, and both report them.

The coordinator (its message handler, grouping and the sums ledger) asks the real mask broker core
(backend/mask_broker/core.py) through ``sums.settle``; no broker process, no MQTT.  Homes:

* a0..a3: masked plan and mask on time: counted;
* b0: masked plan, but its mask never reaches the mask broker: excluded (``mask_missing``),
  named ``missing`` by the mask broker;
* c0: mask, but its masked plan never reaches the coordinator: never asked for, listed
  ``unreleased`` by the mask broker;
* d0: mask on time, masked plan after the deadline: ``late`` at the coordinator, never asked for,
  ``unreleased`` at the mask broker.

Whatever the path, a home is either in a released group at the mask broker *and* counted by the
coordinator, or in neither, and each service lists the ones it left out.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping

import numpy as np
from coordinator_kit import ManualClock, announced, new_round

from backend.coordinator.grouping import Group, initial_grouping
from backend.coordinator.sums import Answer, SumLedger, parse_answer, settle
from backend.mask_broker.core import MaskBroker, Publish
from hemsfw import masking, protocol, protocol_svc, seal

DAY = "2026-11-27"
F = 8
B = "mb1"
K = 2
NOW = 1_700_000_000.0
DEADLINE = int(NOW) + 10
ON_TIME = ["a0", "a1", "a2", "a3"]
HOMES = [*ON_TIME, "b0", "c0", "d0"]
KEYS = {h: os.urandom(32) for h in HOMES}


def test_dropouts_and_stragglers_are_excluded_on_both_sides() -> None:
    clock = ManualClock(NOW)
    kit = new_round(None, clock, k=K, deadline=DEADLINE)
    coord = kit.round
    asyncio.run(announced(kit))
    assert coord.intake is not None
    state = coord.intake.state
    mb = MaskBroker(B, KEYS, K)
    mb.handle(protocol.t_round(), protocol.encode(coord.cfg.announcement()))

    rng = np.random.default_rng(3)
    plans = {h: rng.integers(0, 500, F) for h in HOMES}
    for h in HOMES:
        rid, seed = os.urandom(16).hex(), os.urandom(protocol.SEED_LEN)
        mask = np.frombuffer(masking.expand_seed(seed, F), dtype="<u4")
        masked = (plans[h].astype(np.uint32) + mask).astype("<u4").tobytes()
        if h != "b0":  # b0's sealed seed is lost on the way
            blob = seal.seal(KEYS[h], protocol.mask_ad(B, h, DAY, 1, rid), seed,
                             os.urandom(seal.NONCE_LEN))
            mb.handle(protocol.t_mask(B, h),
                      protocol.encode(protocol.make_mask_report(h, DAY, 1, rid, blob)))
        if h == "c0":  # c0's masked plan is lost on the way
            continue
        clock.t = DEADLINE + 5 if h == "d0" else NOW  # d0 reports after the deadline
        coord.take_plan(protocol.t_plan(h), protocol.encode(
            protocol.make_plan_report(h, DAY, 1, rid, 2, masked)), False, [])
    state.close()

    homes, masked_m = state.masked_matrix()
    ledger = SumLedger((B,), K, homes, masked_m, {h: state.reports[h].report_id for h in homes})
    nreq = [0]

    async def ask(broker: str, gs: list[Group]) -> Mapping[str, Answer]:
        nreq[0] += 1
        req = protocol_svc.make_group_request(f"q{nreq[0]}", DAY, 1,
                                          [ledger.request_entry(g) for g in gs])
        (pub,) = [o for o in mb.handle(protocol_svc.t_groupreq(B), protocol.encode(req))
                  if isinstance(o, Publish)]
        return parse_answer(pub.topic, pub.payload, coord.cfg)[2]

    async def grace() -> None:
        return None

    groups = initial_grouping({h: state.reports[h].mag for h in homes}, K, "r1g")
    groups = asyncio.run(settle(ledger, groups, ask, grace))

    counted = sorted(h for g in groups for h in g.members)
    assert counted == ON_TIME
    for g in groups:  # exact totals from masked plans and the broker's sums
        assert ledger.total_quanta(g).tolist() == sum(plans[h] for h in g.members).tolist()
    # the coordinator: b0 excluded (told why), d0 late; it never heard of c0
    assert {h: e.reason for h, e in ledger.excluded.items()} == {"b0": "mask_missing"}
    assert sorted(coord.late_homes) == ["d0"]
    assert coord.rejections.as_dict() == {"plan:late": 1}
    # the mask broker: released exactly the counted homes; lists the others
    rh = json.loads(json.dumps(mb.stats_dict()))["round_homes"]
    assert rh["released"] == len(ON_TIME)
    assert sorted(rh["unreleased"]) == ["c0", "d0"]
    assert rh["missing"] == ["b0"]
    left_out = set(HOMES) - set(counted)
    assert left_out == set(ledger.excluded) | coord.late_homes | set(rh["unreleased"])
