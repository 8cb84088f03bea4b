"""Fast accept paths for the services' bulk reports (docs/scaling.md, "Per-report CPU").

The rules stay the firmware's (``hemsfw.protocol``): these functions only recognise the
common case, a report that the full parse would accept *and* that names the home of its topic
and the current round, with a few direct field checks instead of the parser's per-field calls
(~1.5 us instead of ~5 us per report).  They return ``None`` for anything else, and the caller
then runs the unchanged full path (``fastjson.decode`` + ``protocol.parse_*`` + its own checks),
which produces the reason code.  So accept/reject decisions and reason codes cannot differ:

* a fast result is returned only when every check of the full parse passes on the same decoded
  object (``v`` == 1; the home equals the topic's home, itself a valid id; the day equals the
  round's day and the round equals the round's number, both checked valid once in ``RoundKey``;
  the report id matches ``[0-9a-f]{32}``; ``mag`` an int (not a bool) in 1..MAX_MAG; the vector
  or the sealed blob decoded exactly as ``protocol_svc.unb64`` / ``parse_mask_report`` decode it);
* the values returned are the ones the full parse returns on that object, and the checks that
  follow the parse in the services (home mismatch, round) pass on them by construction.

tests/test_fastcheck.py compares both paths on random and mutated payloads (hypothesis).
"""

from __future__ import annotations

import binascii
import re

from backend.common import fastjson
from hemsfw import protocol, protocol_svc

__all__ = ["RoundKey", "fast_mask_report", "fast_plan_report", "valid_day"]

#: ``protocol_svc._report_id`` (its own check): exactly REPORT_ID_HEX lowercase hex digits
REPORT_ID = re.compile(f"[0-9a-f]{{{protocol.REPORT_ID_HEX}}}")
_a2b = binascii.a2b_base64
_loads = fastjson.loads
_MAX_PAYLOAD = protocol.MAX_PAYLOAD
_MAX_MAG = protocol.MAX_MAG


def valid_day(day: object) -> bool:
    """``protocol.day_field`` as a predicate."""
    try:
        protocol.day_field({"day": day})
    except ValueError:
        return False
    return True


class RoundKey:
    """The current (day, round) and the accepted reply's payload template for it.

    ``ok`` is False when the pair would not pass the parsers (a round restored from a file
    nobody validated): the fast paths are then off and every report takes the full path."""

    def __init__(self, day: str, rnd: int, ok_reason: str) -> None:
        self.day = day
        self.round = rnd
        self.ok = (valid_day(day) and type(rnd) is int and 1 <= rnd <= 1 << 30)
        self._ok_reason = ok_reason
        marker = b'"' + b"0" * protocol.REPORT_ID_HEX + b'"'
        #: None when there is no safe template (a day or round nobody validated)
        self._parts: tuple[bytes, bytes] | None = None
        try:
            full = fastjson.dumps(protocol_svc.make_reply(day, rnd, marker[1:-1].decode(), True,
                                                      ok_reason))
        except (TypeError, ValueError):
            return
        head, sep, tail = full.partition(marker)
        if sep and marker not in tail:
            self._parts = (head + b'"', b'"' + tail)

    def accepted_reply(self, rid: str) -> bytes:
        """``fastjson.dumps(protocol_svc.make_reply(day, round, rid, True, ok_reason))``; the
        template is used for a report id that matched ``REPORT_ID`` (hex: nothing to escape)."""
        parts = self._parts
        if parts is None or REPORT_ID.fullmatch(rid) is None:
            return fastjson.dumps(protocol_svc.make_reply(self.day, self.round, rid, True,
                                                      self._ok_reason))
        return parts[0] + rid.encode() + parts[1]


def _report(payload: bytes, home: str, key: RoundKey) -> tuple[dict[str, object], str] | None:
    """The decoded report and its report id when the fields both reports share pass: version,
    ``home``, ``key``'s day and round, a well-formed report id; else None."""
    if not key.ok or len(payload) > _MAX_PAYLOAD:
        return None
    try:
        obj = _loads(payload)
    except ValueError:
        return None
    if type(obj) is not dict:
        return None
    g = obj.get
    rid = g("report_id")
    rnd = g("round")
    if (g("v") != protocol.VERSION or g("home") != home or g("day") != key.day
            or type(rnd) is not int or rnd != key.round
            or type(rid) is not str or REPORT_ID.fullmatch(rid) is None):
        return None
    return obj, rid


def fast_plan_report(payload: bytes, home: str, key: RoundKey,
                     frames: int) -> tuple[str, int, bytes] | None:
    """(report id, mag, masked bytes) of a plan report of ``home`` (a valid id: the topic's)
    for ``key``'s round that the full path would parse and find in round; else None."""
    r = _report(payload, home, key)
    if r is None:
        return None
    obj, rid = r
    mag = obj.get("mag")
    s = obj.get("masked")
    if type(mag) is not int or not 1 <= mag <= _MAX_MAG or type(s) is not str:
        return None
    nbytes = 4 * frames
    if len(s) != 4 * ((nbytes + 2) // 3):
        return None
    try:
        raw = _a2b(s)
    except Exception:  # as protocol_svc.unb64: anything a2b_base64 refuses
        return None
    if len(raw) != nbytes:
        return None
    return rid, mag, raw


def fast_mask_report(payload: bytes, home: str, key: RoundKey) -> tuple[str, bytes] | None:
    """(report id, sealed blob) of a mask report of ``home`` (a valid id: the topic's) for
    ``key``'s round that ``protocol_svc.parse_mask_report(fastjson.decode(payload))`` would parse
    (and whose home and round the mask broker's checks would find right); else None."""
    r = _report(payload, home, key)
    if r is None:
        return None
    obj, rid = r
    s = obj.get("sealed")
    if type(s) is not str or len(s) > 200:
        return None
    try:
        blob = _a2b(s)
    except Exception:  # as protocol_svc.parse_mask_report
        return None
    return rid, blob
