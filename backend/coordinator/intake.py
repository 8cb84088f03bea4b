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

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from backend.common import fastjson
from backend.common.fastcheck import RoundKey, fast_plan_report
from backend.common.rejects import Rejections
from backend.common.rows import Arranged, PlanSink
from backend.coordinator.journal import Journal
from hemsfw import protocol, protocol_svc

__all__ = ["Intake", "IntakeFailed", "PlanReport", "Reports", "RoundConfig", "RoundState",
           "Verdict"]


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
        #: home -> the "flp" field of its accepted report (its range proof's coordinator share,
        #: docs/integrity.md), kept as sent until the round verifies it
        self.proofs: dict[str, Any] = {}

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
        """Re-admit a report accepted before a restart (journal.py), without the time checks.
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


def _proof_field(payload: bytes) -> Any:
    """The "flp" field of an accepted report (checked when the round verifies it), or None."""
    if b'"flp"' not in payload:
        return None
    try:
        obj = fastjson.loads(payload)
    except ValueError:
        return None
    return obj.get("flp") if isinstance(obj, dict) else None


class IntakeFailed(Exception):
    """Another process that takes plan reports for the round (workers.py) failed."""


class Intake:
    """One process's plan collection for one round: the rules (``RoundState``), the journal
    records of what it accepted and of its close, the replies, and what it refused.  The round
    driver (round.py) has one; each ``--workers`` process (workers.py) has its own."""

    def __init__(self, cfg: RoundConfig, journal: Journal | None, rejections: Rejections,
                 rows: int = 1024) -> None:
        self.cfg = cfg
        self.journal = journal
        self.rejections = rejections
        self.state = RoundState(cfg, capacity=rows)
        #: homes whose only report came after collection closed
        self.late_homes: set[str] = set()

    @property
    def accepted(self) -> int:
        return self.state.accepted

    @property
    def closed(self) -> bool:
        return self.state.closed

    def replay(self, rec: Mapping[str, Any]) -> bool:
        """Re-apply a journal record of this intake (``report``, ``closed``); False for any
        other kind.  ValueError/KeyError/TypeError when the record does not fit."""
        kind = rec["kind"]
        if kind == "report":
            self.state.restore(str(rec["home"]), str(rec["report_id"]), int(rec["mag"]),
                               base64.b64decode(rec["masked"]))
            if rec.get("flp") is not None:
                self.state.proofs[str(rec["home"])] = rec["flp"]
            return True
        if kind == "closed":
            self.state.close()
            return True
        return False

    def take(self, topic: str, payload: bytes, now: float, retained: bool,
             out: list[tuple[str, bytes]], flush: bool = True) -> bool:
        """One plan report: decide, journal an accepted one (``flush=False`` inside a batch:
        the caller syncs the journal once), append the reply to ``out``.  Never raises on any
        input.  Returns whether it was accepted."""
        st = self.state
        v = st.offer(topic, payload, now, retained)
        if v.accepted:
            sink = st.sink
            r = st.accepted - 1  # the row just stored
            proof = _proof_field(payload)
            if proof is not None and v.home is not None:
                st.proofs[v.home] = proof
            if self.journal is not None:
                extra = {} if proof is None else {"flp": proof}
                self.journal.append(
                    "report", flush, home=v.home, report_id=v.report_id, mag=int(sink.mags[r]),
                    masked=binascii.b2a_base64(sink.store.row_bytes(r), newline=False).decode(),
                    **extra)
        else:
            self.rejections.reject("plan", v.reason, topic, "(retained)" if retained else "")
            if v.reason == "late" and v.home is not None and v.home not in st.reports:
                self.late_homes.add(v.home)
        reply = v.reply(self.cfg)
        if reply is not None:
            out.append(reply)
        return v.accepted

    def close(self, now: float, held: int | None = None) -> None:
        """Stop accepting (later reports are ``late``, also after a restart).  ``held``: the
        reports of every process of the round (workers), for the record."""
        if not self.state.closed:
            self.state.close()
            if self.journal is not None:
                self.journal.append("closed", accepted=self.accepted if held is None else held,
                                    at=now)
