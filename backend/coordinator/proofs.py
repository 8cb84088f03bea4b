"""The coordinator's half of the range-proof check (docs/integrity.md), without I/O.

At the close of collection, before grouping (``--verify-proofs``), every accepted home is
verified against its cap (reserve.HomeCaps: ``--homes`` / ``--rated-w``, rated power x frame
length, in the round's quanta): the coordinator computes its verifier share from the home's
``flp`` field and masked plan (``backend.common.flp_batch``), asks every mask broker of the
round for theirs (``hems/v1/flpreq/<broker>``, one request per broker with every home) and adds
them up.  A home whose proof fails is excluded alone: ``proof_failed`` (or ``report_mismatch``
when a broker holds another report id for it), and its masked plan never enters a group sum (it
is reserved at its cap like every home outside the released totals).  round.py does the asking;
this module builds the requests and decides.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from backend.common import flp_batch
from backend.coordinator.intake import PlanReport, RoundConfig
from backend.coordinator.reserve import HomeCaps
from hemsfw import flp, protocol, protocol_svc

__all__ = ["conclude", "prepare", "request"]


def prepare(cfg: RoundConfig, caps: HomeCaps, reports: Mapping[str, PlanReport],
            fields: Mapping[str, Any]) -> tuple[list[flp_batch.LeaderInput], dict[str, str]]:
    """(the homes to verify, the homes failed already: no or malformed proof).  A home's
    bound: its cap (reserve.HomeCaps: rated power x frame length) in the round's quanta."""
    todo: list[flp_batch.LeaderInput] = []
    failed: dict[str, str] = {}
    nb = len(cfg.brokers)
    for home in reports:
        r = reports[home]
        try:
            c = flp.Circuit(cfg.frames, caps.cap_wh(home, cfg.frame_s) // cfg.quantum_wh, nb)
            share, blind, parts = protocol_svc.parse_flp({"flp": fields.get(home)},
                                                         flp.ENC * c.share_len, nb)
        except ValueError:
            failed[home] = "proof_failed"
            continue
        todo.append(flp_batch.LeaderInput(
            home, flp.nonce(home, cfg.day, cfg.round, r.report_id), c,
            r.masked.astype("<u4").tobytes(), share, blind, tuple(parts)))
    return todo, failed


def request(cfg: RoundConfig, party: int, req: str, qseed: bytes,
            leaders: Sequence[flp_batch.LeaderInput], report_ids: Mapping[str, str]) -> bytes:
    """The request to the mask broker that is party ``party`` (1..B, round order)."""
    homes = [(x.home, report_ids[x.home],
              [base64.b64encode(p).decode() for p in flp_batch.leader_parts(x)])
             for x in leaders]
    return protocol.encode(protocol_svc.make_flp_request(
        req, cfg.day, cfg.round, party, cfg.quantum_wh, cfg.frame_s, qseed, homes))


def conclude(leaders: Sequence[flp_batch.LeaderInput], mine: Mapping[str, flp_batch.Verdict],
             answers: Mapping[str, Mapping[str, bytes | str] | None]) -> dict[str, str]:
    """home -> reason for every home whose proof does not hold.  ``answers``: per broker its
    results (home -> verifier bytes or reason), None when it did not answer."""
    failed: dict[str, str] = {}
    for x in leaders:
        verdicts = [mine[x.home]]
        why = None
        for ans in answers.values():
            got = None if ans is None else ans.get(x.home)
            if got is None:
                why = "proof_unverified"
                break
            if isinstance(got, str):
                why = "report_mismatch" if got == "report_mismatch" else "proof_failed"
                break
            try:
                v = tuple(flp.decode_vec(got, x.circuit.verifier_len))
            except ValueError:
                why = "proof_failed"
                break
            verdicts.append(flp_batch.Verdict(x.home, v))
        if why is None:
            why = flp_batch.decide(x.circuit, verdicts)
        if why is not None:
            failed[x.home] = why
    return failed
