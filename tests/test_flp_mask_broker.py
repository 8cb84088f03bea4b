"""The mask broker's half of the range-proof check (MaskBroker._on_flp_request, docs/integrity.md):
real core, real firmware prover, the coordinator's half played with backend/common/flp_batch."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from backend.common import flp_batch
from backend.coordinator.reserve import HomeCaps
from backend.mask_broker.core import MaskBroker, Publish, Record
from backend.mask_broker.state_dir import StateDir
from hemsfw import flp, masking, protocol, protocol_svc, seal

B = "mb1"
DAY = "2025-06-01"
FRAMES = 8
QUANTUM = 100
KEYS = {f"h{i}": bytes([i + 1]) * 32 for i in range(3)}
# 900-s frames: caps of 700 and 300 Wh (7 and 3 quanta); h2 is rated by the default
CAPS = HomeCaps({"h0": 2800, "h1": 1200, "h2": None}, default_w=400)


class Report:
    """One home's plan report and mask report for broker mb1 (hemsfw.home does the same)."""

    def __init__(self, home: str, plan: list[int], cap: int, rid: str | None = None,
                 seal_rid: str | None = None) -> None:
        self.home = home
        self.rid = rid or os.urandom(16).hex()
        self.seed = os.urandom(32)
        mask = masking.expand_seed(self.seed, FRAMES)
        self.masked = bytes(masking.add_plan(mask, plan))
        self.circuit = flp.Circuit(FRAMES, cap, 1)
        self.nonce = flp.nonce(home, DAY, 1, self.rid)
        share, self.blind, self.parts = flp.prove_report(
            self.circuit, plan, self.masked, [self.seed], [mask], self.nonce, os.urandom(64))
        self.share = bytes(share)
        srid = seal_rid or self.rid
        ad = protocol.mask_ad(B, home, DAY, 1, srid)
        blob = seal.seal(KEYS[home], ad, self.seed, os.urandom(seal.NONCE_LEN))
        self.mask_msg = (protocol.t_mask(B, home),
                         protocol.encode(protocol.make_mask_report(home, DAY, 1, srid, blob)))

    def leader(self) -> flp_batch.LeaderInput:
        return flp_batch.LeaderInput(self.home, self.nonce, self.circuit, self.masked,
                                     self.share, self.blind, tuple(self.parts))


def broker(state: StateDir | None = None, caps: HomeCaps | None = CAPS) -> MaskBroker:
    mb = MaskBroker(B, KEYS, 2, caps=caps)
    if state is not None:
        for kind, data in state.records():
            mb.restore(kind, data)
    return mb


def start(mb: MaskBroker, reports: list[Report]) -> None:
    ann = protocol_svc.make_round(DAY, 1, FRAMES, 900, QUANTUM, 0, 3600, [B])
    mb.handle(protocol.t_round(), protocol.encode(ann))
    for r in reports:
        mb.handle(*r.mask_msg)


def ask(mb: MaskBroker, reports: list[Report], qseed: bytes = bytes(32), req: str = "f1"
        ) -> list[Any]:
    homes = [(r.home, r.rid, [base64.b64encode(p).decode()
                              for p in flp_batch.leader_parts(r.leader())]) for r in reports]
    msg = protocol_svc.make_flp_request(req, DAY, 1, 1, QUANTUM, 900, qseed, homes)
    return mb.handle(protocol_svc.t_flpreq(B), protocol.encode(msg))


def verdicts(out: list[Any]) -> dict[str, bytes | str]:
    pubs = [o for o in out if isinstance(o, Publish)]
    assert [p.topic for p in pubs] == [protocol_svc.t_flpver(B)]
    return protocol_svc.parse_flp_verifiers(protocol.decode(pubs[0].payload))[4]


def decided(r: Report, v: bytes | str, qseed: bytes = bytes(32)) -> str | None:
    if isinstance(v, str):
        return v
    lead = flp_batch.leader_verify([r.leader()], qseed)[r.home]
    helper = flp_batch.Verdict(r.home, tuple(flp.decode_vec(v, r.circuit.verifier_len)))
    return flp_batch.decide(r.circuit, [lead, helper])


def test_honest_reports_verify_jointly_with_the_coordinator() -> None:
    mb = broker()
    rs = [Report("h0", [0, 7, 3, 0, 1, 2, 7, 7], 7), Report("h1", [3, 3, 0, 0, 0, 1, 2, 3], 3),
          Report("h2", [1, 0, 0, 0, 0, 0, 0, 1], 1)]
    start(mb, rs)
    got = verdicts(ask(mb, rs))
    assert [decided(r, got[r.home]) for r in rs] == [None, None, None]


def test_plan_above_the_registry_cap_fails() -> None:
    mb = broker()
    r = Report("h1", [7, 0, 0, 0, 0, 0, 0, 0], 7)     # proves against 7; the registry says 3
    start(mb, [r])
    lead = flp_batch.LeaderInput(r.home, r.nonce, flp.Circuit(FRAMES, 3, 1), r.masked, r.share,
                                 r.blind, tuple(r.parts))
    got = verdicts(ask(mb, [r]))["h1"]
    assert isinstance(got, bytes)
    lv = flp_batch.leader_verify([lead], bytes(32))["h1"]
    hv = flp_batch.Verdict("h1", tuple(flp.decode_vec(got, lead.circuit.verifier_len)))
    assert flp_batch.decide(lead.circuit, [lv, hv]) == "proof_failed"


def test_second_request_for_a_report_is_refused() -> None:
    mb = broker()
    r = Report("h0", [1] * FRAMES, 7)
    start(mb, [r])
    verdicts(ask(mb, [r]))
    assert verdicts(ask(mb, [r], qseed=b"\x01" * 32, req="f2")) == {"h0": "already_verified"}


def test_mismatched_report_ids_are_named() -> None:
    mb = broker()
    bad = Report("h0", [1] * FRAMES, 7, seal_rid="ab" * 16)
    start(mb, [bad])
    assert verdicts(ask(mb, [bad])) == {"h0": "report_mismatch"}


def test_a_broker_without_ratings_verifies_nothing() -> None:
    mb = broker(caps=None)
    r = Report("h0", [1] * FRAMES, 7)
    start(mb, [r])
    assert verdicts(ask(mb, [r])) == {"h0": "no_cap"}


def test_verified_reports_survive_a_restart(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    mb = broker()
    r = Report("h0", [1] * FRAMES, 7)
    ann = protocol_svc.make_round(DAY, 1, FRAMES, 900, QUANTUM, 0, 3600, [B])
    for topic, payload in [(protocol.t_round(), protocol.encode(ann)), r.mask_msg]:
        for o in mb.handle(topic, payload):
            if isinstance(o, Record):
                state.write(o)
    for o in ask(mb, [r]):
        if isinstance(o, Record):
            state.write(o)
    state.close()
    again = broker(StateDir(tmp_path))
    assert verdicts(ask(again, [r], req="f2")) == {"h0": "already_verified"}


def test_a_request_asked_again_gets_the_same_answer() -> None:
    mb = broker()
    r = Report("h0", [1] * FRAMES, 7)
    start(mb, [r])
    first = [o for o in ask(mb, [r]) if isinstance(o, Publish)]
    again = [o for o in ask(mb, [r]) if isinstance(o, Publish)]
    assert again == first and verdicts(first)["h0"] != "already_verified"
