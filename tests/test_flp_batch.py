"""The services' range-proof verification (backend/common/flp_batch.py) over hemsfw.flp."""

from __future__ import annotations

import secrets

from backend.common import flp_batch
from hemsfw import flp, masking

RID = "0123456789abcdef0123456789abcdef"
QSEED = bytes(32)


def _report(plan: list[int], cap: int = 7, brokers: int = 1, rid: str = RID,
            broker_rid: str = RID) -> tuple[flp_batch.LeaderInput, list[flp_batch.HelperInput]]:
    c = flp.Circuit(len(plan), cap, brokers)
    seeds = [secrets.token_bytes(32) for _ in range(brokers)]
    masks = [masking.expand_seed(s, len(plan)) for s in seeds]
    masked = masking.add_plan(masking.mask_from_seeds(seeds, len(plan)), plan)
    n = flp.nonce("h1", "2026-12-05", 1, rid)
    share, blind, hparts = flp.prove_report(c, plan, masked, seeds, masks, n,
                                            secrets.token_bytes(64))
    leader = flp_batch.LeaderInput("h1", n, c, bytes(masked), bytes(share), blind, tuple(hparts))
    bn = flp.nonce("h1", "2026-12-05", 1, broker_rid)
    helpers = [flp_batch.HelperInput("h1", bn, c, b + 1, seeds[b], bytes(masks[b]))
               for b in range(brokers)]
    return leader, helpers


def _verify(leader: flp_batch.LeaderInput, helpers: list[flp_batch.HelperInput]) -> str | None:
    lv = flp_batch.leader_verify([leader], QSEED)["h1"]
    parts = {"h1": flp_batch.leader_parts(leader)}
    hv = [flp_batch.helper_verify([h], parts, QSEED)["h1"] for h in helpers]
    return flp_batch.decide(leader.circuit, [lv, *hv])


def test_honest_report_verifies_with_two_brokers() -> None:
    leader, helpers = _report([0, 7, 3, 5, 1, 0], brokers=2)
    assert _verify(leader, helpers) is None


def test_claimed_helper_part_that_differs_is_part_mismatch() -> None:
    leader, helpers = _report([1, 2, 3])
    bad = flp_batch.LeaderInput(leader.home, leader.nonce, leader.circuit, leader.masked,
                                leader.share, leader.blind, (bytes(32),))
    parts = {"h1": flp_batch.leader_parts(bad)}
    assert flp_batch.helper_verify(helpers, parts, QSEED)["h1"].reason == "part_mismatch"
    assert _verify(bad, helpers) == "proof_failed"


def test_different_report_ids_on_plan_and_seal_fail_the_proof() -> None:
    leader, helpers = _report([1, 2, 3], broker_rid="f" * 32)
    assert _verify(leader, helpers) == "proof_failed"


def test_truncated_share_is_bad_flp() -> None:
    leader, _ = _report([1, 2, 3])
    short = flp_batch.LeaderInput(leader.home, leader.nonce, leader.circuit, leader.masked,
                                  leader.share[:-1], leader.blind, leader.helper_parts)
    assert flp_batch.leader_verify([short], QSEED)["h1"].reason == "bad_flp"


def test_cap_from_registry_smaller_than_the_homes_fails() -> None:
    leader, helpers = _report([7, 7, 7], cap=7)
    c = flp.Circuit(3, 3, 1)          # the registry says 3: other lengths, other weights
    lv = flp_batch.LeaderInput(leader.home, leader.nonce, c, leader.masked, leader.share,
                               leader.blind, leader.helper_parts)
    hs = [flp_batch.HelperInput(h.home, h.nonce, c, h.party, h.seed, h.mask) for h in helpers]
    assert _verify(lv, hs) == "proof_failed"
