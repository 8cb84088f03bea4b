"""The coordinator's range-proof phase (backend/coordinator/proofs.py and Round._verify_proofs)
against the mask broker's own core, on a list for a network (tests/coordinator_kit.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from coordinator_kit import DAY, capacity_message, new_round, take_all, until_phase, wire

from backend.coordinator.lifecycle import Phase
from backend.coordinator.record import round_record
from backend.coordinator.reserve import HomeCaps
from backend.mask_broker.core import MaskBroker
from hemsfw import flp, masking, protocol, seal

F = 8
CAP = 300                       # Wh per 900-s frame (quantum 1 Wh): a 1200 W circuit
CAPS = HomeCaps({}, default_w=1200)
HOMES = [f"h{i}" for i in range(7)]
KEYS = {h: bytes([i + 1]) * 32 for i, h in enumerate(HOMES)}


def reports(bad: dict[str, str]) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(plan messages, mask messages): honest homes prove their plans; ``bad`` names homes that
    send no proof ("none") or a proof for another plan than the one they mask ("lie")."""
    plans, masks = [], []
    for i, h in enumerate(HOMES):
        p = [(37 * i + 11 * k) % (CAP + 1) for k in range(F)]
        rid = os.urandom(16).hex()
        seed = os.urandom(32)
        mask = masking.expand_seed(seed, F)
        masked = masking.add_plan(mask, p)
        c = flp.Circuit(F, CAP, 1)
        share, blind, parts = flp.prove_report(c, p, masked, [seed], [mask],
                                               flp.nonce(h, DAY, 1, rid), os.urandom(64))
        proof: Any = {"share": protocol.b64(share), "blind": protocol.b64(blind),
                      "parts": [protocol.b64(x) for x in parts]}
        if bad.get(h) == "none":
            proof = None
        if bad.get(h) == "lie":
            masked = masking.add_words(masked, masking.from_words([1 << 31] + [0] * (F - 1)))
        plans.append((protocol.t_plan(h), protocol.encode(
            protocol.make_plan_report(h, DAY, 1, rid, 2, masked, proof))))
        blob = seal.seal(KEYS[h], protocol.mask_ad("mb1", h, DAY, 1, rid), seed,
                         os.urandom(seal.NONCE_LEN))
        masks.append((protocol.t_mask("mb1", h), protocol.encode(
            protocol.make_mask_report(h, DAY, 1, rid, blob))))
    return plans, masks


async def one_round(tmp: Path | None, bad: dict[str, str], late_mask_s: float | None = None
                    ) -> dict[str, Any]:
    """late_mask_s: the last home's mask reaches the broker that long after the plans."""
    kit = new_round(tmp, capacity=capacity_message(F, 10_000), expected_homes=len(HOMES),
                    caps=CAPS, verify_proofs=True, missing_grace_s=1.0)
    mb = MaskBroker("mb1", KEYS, 3, caps=CAPS)
    wire(kit, {"mb1": mb})
    task = asyncio.create_task(kit.round.run())
    await until_phase(kit, Phase.COLLECTING)
    plans, masks = reports(bad)
    for topic, payload in masks if late_mask_s is None else masks[:-1]:
        mb.handle(topic, payload)
    if late_mask_s is not None:
        asyncio.get_running_loop().call_later(late_mask_s, mb.handle, *masks[-1])
    take_all(kit, plans)
    await task
    return round_record(kit.round, "completed")


def excluded(rec: dict[str, Any]) -> dict[str, str]:
    return {e["home"]: e["reason"] for e in rec["excluded"]}


def test_homes_that_fail_their_proof_are_excluded_alone_before_grouping() -> None:
    rec = asyncio.run(one_round(None, {"h1": "lie", "h4": "none"}))
    assert excluded(rec) == {"h1": "proof_failed", "h4": "proof_failed"}
    grouped = sorted(m for g in rec["groups"] for m in g["members"])
    assert grouped == ["h0", "h2", "h3", "h5", "h6"]
    assert rec["adjusted_homes"] == 5


def test_every_honest_proof_passes() -> None:
    rec = asyncio.run(one_round(None, {}))
    assert excluded(rec) == {} and rec["adjusted_homes"] == len(HOMES)


def test_the_verdict_is_journaled_and_a_restart_does_not_ask_again(tmp_path: Path) -> None:
    first = asyncio.run(one_round(tmp_path, {"h2": "lie"}))

    async def resume() -> dict[str, Any]:
        kit = new_round(tmp_path, capacity=capacity_message(F, 10_000),
                        expected_homes=len(HOMES), caps=CAPS, verify_proofs=True)
        await kit.round.run()  # every input is in the journal: no network needed
        assert not any(t.startswith("hems/v1/flpreq/") for t in kit.out.topics())
        return round_record(kit.round, "completed")

    again = asyncio.run(resume())
    assert excluded(again) == excluded(first) == {"h2": "proof_failed"}


def test_a_mask_still_in_flight_at_the_close_is_waited_for() -> None:
    rec = asyncio.run(one_round(None, {}, late_mask_s=0.3))
    assert excluded(rec) == {} and rec["adjusted_homes"] == len(HOMES)
