"""One round's plan collection (the seed's first reception unit 11): validate, dedupe, keep.

Pure state machine: ``RoundState.offer(topic, payload, now)`` takes one MQTT message on
``hems/v1/plan/<home>`` and returns a ``Verdict`` (accepted, or the rejection reason) with the reply
to send to the home.  It never raises on any input; the adapter (service.py) does the I/O.

Rules, in the order they are checked (reason codes as in docs/protocol.md):

* the topic must be ``hems/v1/plan/<home>`` with a valid home id: else ``bad_topic`` (no reply:
  there is nobody to reply to);
* the payload must decode and parse (``protocol.decode``, ``protocol_svc.parse_plan_report``):
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

Storage (docs/scaling.md): the accepted vectors go straight into one ``PlanSink`` (a
preallocated uint32 ``RowStore``, one row per home, grown by doubling), never into per-report
arrays; ``arranged()`` gathers them once into the coordinator's split order, so every group of
every refinement is a contiguous slice.  Payloads are decoded with orjson when installed.

Speed (docs/scaling.md): a report that the full parse would accept for the topic's home and this
round is recognised by ``backend.common.fastcheck.fast_plan_report`` (direct field checks);
everything else takes the full path above, which gives the reason, so decisions and reasons are
the same (tests/test_fastcheck.py compares both).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.common import fastjson
from backend.common.fastcheck import RoundKey, fast_plan_report
from backend.common.ingest import Arranged, PlanSink
from hemsfw import protocol, protocol_svc

__all__ = ["Capacity", "PlanReport", "Reports", "RoundConfig", "RoundState", "Verdict",
           "parse_capacity"]


@dataclass(frozen=True)
class RoundConfig:
    """The round as announced on ``hems/v1/round`` (protocol_svc.make_round)."""

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
            protocol_svc.make_round(
                self.day, self.round, self.frames, self.frame_s, self.quantum_wh, self.start,
                self.deadline, list(self.brokers),
            )
        )

    def validate(self) -> None:
        """Raise ValueError(reason) unless the announcement passes protocol.parse_round."""
        protocol.parse_round(self.announcement())

    @cached_property
    def key(self) -> RoundKey:
        """(day, round) for the fast accept path, and the accepted reply's template."""
        return RoundKey(self.day, self.round, "")

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
        topic = _REPLY_TOPIC + self.home  # protocol.t_reply("coordinator", home)
        if self.accepted and self.report_id is not None:
            return topic, cfg.key.accepted_reply(self.report_id)  # the same bytes, pre-built
        msg = protocol_svc.make_reply(cfg.day, cfg.round, self.report_id, self.accepted,
                                      self.reason)
        return topic, fastjson.dumps(msg)


_REPLY_TOPIC = protocol.t_reply("coordinator", "")
#: ``protocol.valid_id`` as a pattern (a topic level matching it holds no "/")
_ID = re.compile(f"[a-z0-9_-]{{1,{protocol.ID_MAX}}}")


_REPORT_ID = re.compile(f"[0-9a-f]{{{protocol.REPORT_ID_HEX}}}")


def _readable_report_id(obj: object) -> str | None:
    if not isinstance(obj, dict):
        return None
    r = obj.get("report_id")
    if isinstance(r, str) and _REPORT_ID.fullmatch(r):
        return r
    return None


def _is_other_round(obj: dict[str, Any], cfg: RoundConfig) -> bool:
    rnd = obj.get("round")
    return obj.get("day") != cfg.day or not isinstance(rnd, int) or rnd != cfg.round


_PLAN_HEAD = protocol.PREFIX + "/plan/"
_PLAN_HEAD_LEN = len(_PLAN_HEAD)


class Reports(Mapping[str, PlanReport]):
    """The accepted reports by home, a read-only view of the rows (nothing copied)."""

    def __init__(self, sink: PlanSink) -> None:
        self._sink = sink

    def __getitem__(self, home: str) -> PlanReport:
        sink = self._sink
        r = sink.store.row_of[home]
        return PlanReport(home, sink.report_ids[r], int(sink.mags[r]), sink.store.rows[r])

    def __contains__(self, home: object) -> bool:
        return home in self._sink.store

    def __iter__(self) -> Iterator[str]:
        return iter(self._sink.store.keys)

    def __len__(self) -> int:
        return self._sink.store.count


class RoundState:
    """Accepted plan reports of one round (see the module docstring for the rules)."""

    def __init__(self, cfg: RoundConfig, seen_report_ids: set[str] | None = None,
                 capacity: int = 1024) -> None:
        """``capacity``: homes to make room for up front (the store doubles past it)."""
        self.cfg = cfg
        #: the rows, report ids and magnifications; ``sink.seen`` holds the report ids accepted
        #: so far (shared across rounds by a long-running service)
        self.sink = PlanSink(cfg.day, cfg.round, cfg.frames, capacity, fastjson.loads,
                             seen_report_ids, grow=True)
        self.seen = self.sink.seen
        self.reports = Reports(self.sink)
        self.closed = False

    def close(self) -> None:
        """Stop accepting: everything offered from now on is ``late``."""
        self.closed = True

    @property
    def accepted(self) -> int:
        return self.sink.store.count

    def offer(self, topic: str, payload: bytes, now: float, retained: bool = False) -> Verdict:
        # The fast path (backend/common/fastcheck.py): a report the full parse below would
        # accept for this home and round, recognised with direct checks; anything else takes
        # the full path, which gives the reason.  Same decisions, same reasons.
        if topic.startswith(_PLAN_HEAD):
            home = topic[_PLAN_HEAD_LEN:]
            if _ID.fullmatch(home) is not None:
                cfg = self.cfg
                fast = fast_plan_report(payload, home, cfg.key, cfg.frames)
                if fast is not None:
                    rid, mag, raw = fast
                    if self.closed or now > cfg.deadline:
                        return Verdict(False, "late", home, rid, retained)
                    reason = self.sink.admit(home, rid, mag, raw)
                    return Verdict(not reason, reason, home, rid, retained)
        return self._offer(topic, payload, now, retained)

    def _offer(self, topic: str, payload: bytes, now: float, retained: bool) -> Verdict:
        """The full path: every check in order, with the parser's reason on a refusal."""
        tail = protocol.topic_tail(topic, "plan")
        if tail is None or len(tail) != 1 or not protocol.valid_id(tail[0]):
            return Verdict(False, "bad_topic", None, None, retained)
        home = tail[0]

        def no(reason: str, rid: str | None) -> Verdict:
            return Verdict(False, reason, home, rid, retained)

        try:
            obj = fastjson.decode(payload)
        except ValueError as e:
            return no(str(e), None)
        try:
            p_home, day, rnd, p_rid, mag, masked = protocol_svc.parse_plan_report(
                obj, self.cfg.frames)
        except ValueError as e:
            reason = str(e)
            if reason in ("bad_length", "bad_vector") and _is_other_round(obj, self.cfg):
                reason = "unknown_round"
            return no(reason, _readable_report_id(obj))
        if p_home != home:
            return no("home_mismatch", p_rid)
        if day != self.cfg.day or rnd != self.cfg.round:
            return no("unknown_round", p_rid)
        if self.closed or now > self.cfg.deadline:
            return no("late", p_rid)
        reason = self.sink.admit(home, p_rid, int(mag), masked)
        if reason:
            return no(reason, p_rid)
        return Verdict(True, "", home, p_rid, retained)

    def restore(self, home: str, report_id: str, mag: int, masked: bytes) -> None:
        """Re-admit a report accepted before a restart (store.py), without the time checks.
        ValueError when it does not fit this round or collides with one already held."""
        if (not protocol.valid_id(home) or len(masked) != 4 * self.cfg.frames
                or _readable_report_id({"report_id": report_id}) is None
                or not 0 <= mag <= protocol.MAX_MAG
                or self.sink.admit(home, report_id, mag, masked)):
            raise ValueError("report record does not fit the round")

    def masked_matrix(self) -> tuple[list[str], npt.NDArray[np.uint32]]:
        """Homes (acceptance order) and their masked vectors as one (N, F) uint32 matrix (a
        view of the rows)."""
        return list(self.sink.store.keys), self.sink.store.view()

    def arranged(self) -> Arranged:
        """The accepted rows gathered once into the coordinator's split order (grouping.py):
        every group ``initial_grouping`` forms, and every split ``refine`` makes, is a slice."""
        return self.sink.store.arrange_rows(self.sink.split_order())

    def magnifications(self) -> dict[str, int]:
        """Home -> magnification, for grouping.initial_grouping."""
        s = self.sink
        return dict(zip(s.store.keys, s.mags[: s.store.count].tolist(), strict=True))


@dataclass(frozen=True, eq=False)
class Capacity:
    """The supply profile for the day (Wh per frame) and an optional target profile."""

    capacity_wh: npt.NDArray[np.int64]
    target_wh: npt.NDArray[np.int64] | None


def parse_capacity(payload: bytes, frames: int) -> Capacity:
    """A capacity message (protocol_svc.make_capacity) for ``frames`` frames, else
    ValueError(reason) (the parser's reasons, or ``frames_mismatch``)."""
    n, cap, tgt = protocol_svc.parse_capacity(protocol.decode(payload))
    if n != frames:
        raise ValueError("frames_mismatch")
    return Capacity(
        np.asarray(cap, dtype=np.int64),
        None if tgt is None else np.asarray(tgt, dtype=np.int64),
    )
