"""Hostile input, interleaved with valid traffic, through every handler of the mask broker.

``MaskBroker.handle`` takes each MQTT message (sealed masks, group requests, round announcements,
anything else).  Hypothesis draws hostile messages (tests/fuzz_kit.py) and interleaves them with a
round's valid masks; after each message exactly one thing happened: a mask was accepted, a request
was answered, the round changed, or the message was rejected with a documented reason, counted and
logged.  Nothing raises, every valid mask is kept, and the round's valid group request at the end
is released with the exact sum.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest
from fuzz_kit import CountingHandler, hostile_payloads, reasons_known, tried
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.mask_broker.core import MaskBroker, Publish
from hemsfw import masking, protocol, protocol_svc, seal

B = "mb1"
DAY = "2026-11-27"
F = 8
K = 2
VALID = [f"home-a{i}" for i in range(6)]
ROGUES = [f"rogue-{i}" for i in range(3)]
KEYS = {h: os.urandom(32) for h in VALID + ROGUES}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def announcement(day: str = DAY, rnd: int = 1, frames: int = F) -> dict[str, Any]:
    return dict(protocol_svc.make_round(day, rnd, frames, 900, 1, 0, 3600, [B]))


def mask(home: str, rid: str | None = None, seed: bytes | None = None, rnd: int = 1,
         key_of: str | None = None) -> tuple[dict[str, Any], bytes, str]:
    seed = os.urandom(protocol.SEED_LEN) if seed is None else seed
    rid = os.urandom(16).hex() if rid is None else rid
    blob = seal.seal(KEYS[key_of or home], protocol.mask_ad(B, home, DAY, rnd, rid), seed,
                     os.urandom(seal.NONCE_LEN))
    return dict(protocol.make_mask_report(home, DAY, rnd, rid, blob)), seed, rid


def request(req: str, groups: list[tuple[str, list[str], str]], rnd: int = 1) -> dict[str, Any]:
    return dict(protocol_svc.make_group_request(req, DAY, rnd, groups))


def hostile() -> dict[str, st.SearchStrategy[tuple[str, bytes]]]:
    rogue_mask, _, _ = mask(ROGUES[0])
    masks = st.tuples(
        st.one_of(st.sampled_from([protocol.t_mask(B, h) for h in ROGUES]),
                  st.sampled_from([protocol.t_mask(B, VALID[0]), protocol.t_mask("mb2", ROGUES[1]),
                                   protocol.t_mask(B, "stranger"), f"hems/v1/mask/{B}/",
                                   f"hems/v1/mask/{B}/a/b", f"hems/v1/mask/{B}/A"])),
        st.one_of(
            hostile_payloads(rogue_mask),
            st.sampled_from([  # well-formed, but wrong key, round, home, seed size
                mask(ROGUES[1], key_of=ROGUES[2])[0], mask(ROGUES[1], rnd=2)[0],
                mask(ROGUES[2])[0] | {"home": VALID[2]}, mask("stranger", key_of=ROGUES[0])[0],
                mask(ROGUES[2], seed=b"short")[0],
            ]).map(protocol.encode)))
    bad_checksum = "0" * 64
    base_req = request("zz", [("g", VALID[:3], bad_checksum)])
    requests = st.tuples(st.just(protocol_svc.t_groupreq(B)), st.one_of(
        hostile_payloads(base_req, protocol.MAX_GROUP_PAYLOAD),
        st.sampled_from([  # parse, but are refused without touching the partition
            request("r-x", [("g", VALID, bad_checksum)], rnd=2),
            request("r-y", [("g", [*VALID[:2], "stranger"], bad_checksum)]),
            request("r-z", [("g", VALID[:1], bad_checksum)]),
            request("r-w", [("g", [VALID[0], VALID[0], VALID[1]], bad_checksum)]),
            request("r-v", [("g", VALID[:3], bad_checksum), ("g", VALID[3:], bad_checksum)]),
        ]).map(protocol.encode)))
    stale = announcement(day="2026-01-01")
    rounds = st.tuples(st.just(protocol.t_round()), st.one_of(
        hostile_payloads(stale),
        st.sampled_from([announcement(frames=F + 1), stale]).map(protocol.encode)))
    other = st.tuples(st.one_of(st.text(max_size=40), st.sampled_from(
        ["hems/v1/plan/home-a1", f"hems/v1/groupsum/{B}", "hems/v1/groupreq/mb2", "#", ""])),
        st.binary(max_size=100))
    return {"mask": masks, "groupreq": requests, "round": rounds, "other topics": other}


HOSTILE = hostile()
ANY = st.one_of(*HOSTILE.values())


def family(topic: str) -> str:
    for f in ("mask", "groupreq", "round"):
        if topic.startswith(f"{protocol.PREFIX}/{f}"):
            return f
    return "other topics"


def outcome(core: MaskBroker) -> tuple[Any, ...]:
    s = core.stats
    return (s.masks_accepted, s.requests, core.round)


@pytest.mark.parametrize("focus", sorted(HOSTILE))
@FUZZ
@given(data=st.data())
def test_handlers_survive_hostile_traffic(focus: str, data: st.DataObject) -> None:
    """Hostile messages mostly for one handler (``focus``), a few for the others."""
    core = MaskBroker(B, KEYS, K)
    core.handle(protocol.t_round(), protocol.encode(announcement()))
    good = {h: mask(h) for h in VALID}
    msgs = [(protocol.t_mask(B, h), protocol.encode(m)) for h, (m, _, _) in good.items()]
    msgs += data.draw(st.lists(HOSTILE[focus], min_size=8, max_size=30))
    msgs += data.draw(st.lists(ANY, max_size=4))
    msgs = data.draw(st.permutations(msgs))
    again = data.draw(st.lists(st.sampled_from(VALID), max_size=3))  # redelivered: replay
    msgs += [(protocol.t_mask(B, h), protocol.encode(good[h][0])) for h in again]
    msgs += [(protocol.t_mask(B, h), protocol.encode(mask(h)[0])) for h in again[:1]]

    counter = CountingHandler()
    logging.getLogger("hems.mask_broker").addHandler(counter)
    try:
        for topic, payload in msgs:
            before_rej, before = core.rejections.total(), outcome(core)
            out = core.handle(topic, payload)
            assert (core.rejections.total() > before_rej) or (outcome(core) != before), \
                (topic, payload[:200])
            for o in out:
                if isinstance(o, Publish):
                    tail = protocol.topic_tail(o.topic, "reply")
                    assert o.topic == protocol_svc.t_groupsum(B) or (tail is not None
                                                                 and tail[0] == B)
                    protocol.decode(o.payload, protocol.MAX_GROUP_PAYLOAD)
        # the round's real request: every valid home, the right checksum
        rids = [good[h][2] for h in VALID]
        req = request("final", [("all", VALID, protocol_svc.report_checksum(rids))])
        out = core.handle(protocol_svc.t_groupreq(B), protocol.encode(req))
    finally:
        logging.getLogger("hems.mask_broker").removeHandler(counter)
    for topic, _ in msgs:
        tried(f"mask broker: {family(topic)}")
    tried("mask broker: groupreq")

    (pub,) = [o for o in out if isinstance(o, Publish)]
    res = json.loads(pub.payload)["results"]
    assert res[0]["status"] == "released", res
    acc = bytearray(4 * F)
    for h in VALID:
        masking.add_words(acc, masking.expand_seed(good[h][1], F))
    assert protocol_svc.unb64(res[0]["sum"], 4 * F) == bytes(acc)
    assert counter.rejected == core.rejections.total()
    assert not reasons_known(core.rejections.counts), core.rejections.counts
    assert core.rejections.counts["internal:internal_error"] == 0
    assert core.round is not None and (core.round.day, core.round.round) == (DAY, 1)
