"""One round's plan collection (the seed's first reception unit 11): validate, dedupe, keep.

Pure state machine: ``RoundState.offer(topic, payload, now)`` takes one MQTT message on
``hems/v1/plan/<home>`` and returns a ``Verdict`` (accepted, or the rejection reason) with the reply
to send to the home.  It never raises on any input; the adapter (service.py) does the I/O.

Rules, in the order they are checked (reason codes as in docs/protocol.md):

* the topic must be ``hems/v1/plan/<home>`` with a valid home id: else ``bad_topic`` (no reply:
  there is nobody to reply to);
* the payload must decode and parse (``protocol.decode``, ``protocol.parse_plan_report``):
  ``too_large``, ``bad_json``, ``bad_version``, ``bad_home``, ``bad_day``, ``bad_round``,
  ``bad_report_id``, ``bad_mag``, ``bad_vector``, ``bad_length``.  A vector of the wrong length
  for a *different* round is reported as ``unknown_round`` (the likelier cause);
* the payload's home must be the topic's: ``home_mismatch``;
* day and round must be this round's: ``unknown_round``;
* collection must still be open (before the deadline and before the round was closed because every
  expected home had reported): ``late``;
* the report id must be new (accepted before, by any home, this run): ``replay``;
* a home has one report per round; a second one with a new report id: ``duplicate_home``.  The
  first report stands.

A rejected message that the broker delivered as *retained* (a stale report left on the topic) is
counted but not answered: the home is not talking to us right now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.common.vectors import u32
from hemsfw import protocol

__all__ = ["Capacity", "PlanReport", "RoundConfig", "RoundState", "Verdict", "parse_capacity"]


@dataclass(frozen=True)
class RoundConfig:
    """The round as announced on ``hems/v1/round`` (protocol.make_round)."""

    day: str
    round: int
    frames: int
    frame_s: int
    quantum_wh: int
    start: int
    deadline: int
    brokers: tuple[str, ...]

    def announcement(self) -> dict[str, Any]:
        return dict(
            protocol.make_round(
                self.day, self.round, self.frames, self.frame_s, self.quantum_wh, self.start,
                self.deadline, list(self.brokers),
            )
        )

    def validate(self) -> None:
        """Raise ValueError(reason) unless the announcement passes protocol.parse_round."""
        protocol.parse_round(self.announcement())

    @property
    def expires(self) -> int:
        """End of the planned day: adjustments expire then."""
        return self.start + self.frames * self.frame_s


@dataclass(frozen=True, eq=False)
class PlanReport:
    home: str
    report_id: str
    mag: int
    masked: npt.NDArray[np.uint32]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # "" when accepted
    home: str | None  # the topic's home id when valid: who gets the reply
    report_id: str | None  # from the payload when readable
    retained: bool = False

    def reply(self, cfg: RoundConfig) -> tuple[str, bytes] | None:
        """(topic, payload) of the reply to the home, or None when nobody is to be answered."""
        if self.home is None or (self.retained and not self.accepted):
            return None
        msg = protocol.make_reply(cfg.day, cfg.round, self.report_id, self.accepted, self.reason)
        return protocol.t_reply("coordinator", self.home), protocol.encode(msg)


def _readable_report_id(obj: object) -> str | None:
    if not isinstance(obj, dict):
        return None
    r = obj.get("report_id")
    if isinstance(r, str) and len(r) == protocol.REPORT_ID_HEX and all(
        c in "0123456789abcdef" for c in r
    ):
        return r
    return None


def _is_other_round(obj: dict[str, Any], cfg: RoundConfig) -> bool:
    rnd = obj.get("round")
    return obj.get("day") != cfg.day or not isinstance(rnd, int) or rnd != cfg.round


class RoundState:
    """Accepted plan reports of one round (see the module docstring for the rules)."""

    def __init__(self, cfg: RoundConfig, seen_report_ids: set[str] | None = None) -> None:
        self.cfg = cfg
        #: report ids accepted so far (shared across rounds by a long-running service)
        self.seen: set[str] = seen_report_ids if seen_report_ids is not None else set()
        self.reports: dict[str, PlanReport] = {}
        self.closed = False

    def close(self) -> None:
        """Stop accepting: everything offered from now on is ``late``."""
        self.closed = True

    @property
    def accepted(self) -> int:
        return len(self.reports)

    def offer(self, topic: str, payload: bytes, now: float, retained: bool = False) -> Verdict:
        tail = protocol.topic_tail(topic, "plan")
        if tail is None or len(tail) != 1 or not protocol.valid_id(tail[0]):
            return Verdict(False, "bad_topic", None, None, retained)
        home = tail[0]

        def no(reason: str, rid: str | None) -> Verdict:
            return Verdict(False, reason, home, rid, retained)

        try:
            obj = protocol.decode(payload)
        except ValueError as e:
            return no(str(e), None)
        rid = _readable_report_id(obj)
        try:
            p_home, day, rnd, p_rid, mag, masked = protocol.parse_plan_report(obj, self.cfg.frames)
        except ValueError as e:
            reason = str(e)
            if reason in ("bad_length", "bad_vector") and _is_other_round(obj, self.cfg):
                reason = "unknown_round"
            return no(reason, rid)
        if p_home != home:
            return no("home_mismatch", rid)
        if day != self.cfg.day or rnd != self.cfg.round:
            return no("unknown_round", rid)
        if self.closed or now > self.cfg.deadline:
            return no("late", rid)
        if p_rid in self.seen:
            return no("replay", rid)
        if home in self.reports:
            return no("duplicate_home", rid)
        self.seen.add(p_rid)
        self.reports[home] = PlanReport(home, p_rid, int(mag), u32(bytes(masked)))
        return Verdict(True, "", home, p_rid, retained)

    def restore(self, home: str, report_id: str, mag: int, masked: bytes) -> None:
        """Re-admit a report accepted before a restart (store.py), without the time checks.
        ValueError when it does not fit this round or collides with one already held."""
        if (not protocol.valid_id(home) or len(masked) != 4 * self.cfg.frames
                or _readable_report_id({"report_id": report_id}) is None
                or report_id in self.seen or home in self.reports):
            raise ValueError("report record does not fit the round")
        self.seen.add(report_id)
        self.reports[home] = PlanReport(home, report_id, int(mag), u32(bytes(masked)))

    def masked_matrix(self) -> tuple[list[str], npt.NDArray[np.uint32]]:
        """Homes (acceptance order) and their masked vectors as one (N, F) uint32 matrix."""
        homes = list(self.reports)
        mat = np.zeros((len(homes), self.cfg.frames), dtype=np.uint32)
        for i, h in enumerate(homes):
            mat[i] = self.reports[h].masked
        return homes, mat


@dataclass(frozen=True, eq=False)
class Capacity:
    """The supply profile for the day (Wh per frame) and an optional target profile."""

    capacity_wh: npt.NDArray[np.int64]
    target_wh: npt.NDArray[np.int64] | None


def parse_capacity(payload: bytes, frames: int) -> Capacity:
    """A capacity message (protocol.make_capacity) for ``frames`` frames, else ValueError(reason)
    (the parser's reasons, or ``frames_mismatch``)."""
    n, cap, tgt = protocol.parse_capacity(protocol.decode(payload))
    if n != frames:
        raise ValueError("frames_mismatch")
    return Capacity(
        np.asarray(cap, dtype=np.int64),
        None if tgt is None else np.asarray(tgt, dtype=np.int64),
    )
