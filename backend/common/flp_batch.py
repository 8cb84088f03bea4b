"""Range-proof verification for the services, a round's homes at a time (docs/integrity.md).

Both verifiers run the same pure functions of ``hemsfw.flp``; this module only arranges them per
home and per round:

* the coordinator (party 0) holds each home's masked plan ``M`` and its share of the proof
  (``flp`` field of the plan report): ``leader_verify`` gives its joint-randomness part and its
  verifier share;
* a mask broker (party ``b``) holds the home's mask seed: ``helper_verify`` re-derives its share
  from the seed, checks the part the home claimed for it (``part_mismatch``), and gives its
  verifier share;
* ``decide`` adds the verifier shares up: ``None`` (valid) or the reason ``proof_failed``.

Field128 elements are Python ints: numpy has no 128-bit modular arithmetic, and the per-home
work (a few thousand multiplications) is dominated by the ints, not by loops numpy could take
over.  Measured cost: ``bench/integrity_cost.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hemsfw import flp

__all__ = ["HelperInput", "LeaderInput", "Verdict", "decide", "helper_verify", "leader_verify"]


@dataclass(frozen=True)
class LeaderInput:
    """What the coordinator holds for one home's report."""

    home: str
    nonce: bytes
    circuit: flp.Circuit
    masked: bytes            # M, 4*frames bytes
    share: bytes             # the coordinator's share (flp.ENC * share_len bytes)
    blind: bytes
    helper_parts: tuple[bytes, ...]   # the parts the home claims for brokers 1..B


@dataclass(frozen=True)
class HelperInput:
    """What mask broker ``party`` (1..B) holds for one home's report."""

    home: str
    nonce: bytes
    circuit: flp.Circuit
    party: int
    seed: bytes              # the home's mask seed for this broker
    mask: bytes              # its expansion (4*frames bytes)


@dataclass(frozen=True)
class Verdict:
    """One party's answer for one home: its verifier share, or why it has none."""

    home: str
    verifier: tuple[int, ...] | None
    reason: str | None = None


def leader_parts(x: LeaderInput) -> tuple[bytes, ...]:
    """All joint-randomness parts as the coordinator sees them: its own (computed from its share)
    and the brokers' as claimed by the home.  The coordinator sends them to every broker."""
    meas = x.share[:flp.ENC * x.circuit.meas_len]
    return (flp.leader_part(x.nonce, x.blind, meas, x.masked), *x.helper_parts)


def leader_verify(items: Iterable[LeaderInput], qseed: bytes) -> dict[str, Verdict]:
    """The coordinator's verifier shares (``bad_flp`` for a share that does not decode)."""
    out: dict[str, Verdict] = {}
    for x in items:
        c = x.circuit
        try:
            meas, proof = flp.decode_share(c, x.share)
        except ValueError as e:
            out[x.home] = Verdict(x.home, None, str(e))
            continue
        if len(x.helper_parts) != c.brokers:
            out[x.home] = Verdict(x.home, None, "bad_flp")
            continue
        jr = flp.joint_rand(leader_parts(x))
        t = flp.query_rand(qseed, x.nonce, c.p)
        v = flp.query(c, meas, flp.leader_dshare(x.masked), proof, jr, t)
        out[x.home] = Verdict(x.home, tuple(v))
    return out


def helper_verify(items: Iterable[HelperInput], parts: Mapping[str, Sequence[bytes]],
                  qseed: bytes) -> dict[str, Verdict]:
    """A broker's verifier shares.  ``parts[home]``: every party's part as the coordinator
    forwarded them; the broker's own entry must be the part it computes from its seed."""
    out: dict[str, Verdict] = {}
    for x in items:
        c = x.circuit
        ps = parts.get(x.home)
        if ps is None or len(ps) != c.shares:
            out[x.home] = Verdict(x.home, None, "bad_flp")
            continue
        if ps[x.party] != flp.helper_part(x.party, x.nonce, x.seed):
            out[x.home] = Verdict(x.home, None, "part_mismatch")
            continue
        meas, proof = flp.helper_share(c, x.seed)
        jr = flp.joint_rand(ps)
        t = flp.query_rand(qseed, x.nonce, c.p)
        v = flp.query(c, meas, flp.helper_dshare(x.mask), proof, jr, t)
        out[x.home] = Verdict(x.home, tuple(v))
    return out


def decide(circuit: flp.Circuit, verdicts: Sequence[Verdict]) -> str | None:
    """None when the proof holds; else the first party's reason or ``proof_failed``."""
    shares = []
    for v in verdicts:
        if v.verifier is None:
            return "proof_failed"
        shares.append(v.verifier)
    if len(shares) != circuit.shares or not flp.decide(circuit, shares):
        return "proof_failed"
    return None

