"""Hostile inputs for the services' handlers (tests/test_fuzz_*.py), and the count of inputs tried.

``hostile_payloads(base)`` turns one well-formed message into the families every handler must
survive: malformed and truncated JSON, bytes that are not UTF-8, JSON that is not an object,
wrong types, missing fields, unknown versions, negative and overflowing numbers (beyond 2^31,
2^32, 2^53, 2^64, 1e999), NaN and infinities, deep nesting, and payloads above the size limit.

The tests count every message they feed per handler (``tried``); with ``HEMS_FUZZ_STATS=<file>``
the counts are written there as JSON (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from hemsfw import protocol

#: every reason code a service may count (docs/protocol.md, "Error replies and reason codes")
KNOWN_REASONS = {
    "too_large", "bad_json", "bad_version", "bad_home", "bad_day", "bad_round",
    "bad_report_id", "bad_mag", "bad_length", "bad_vector", "bad_moves", "bad_curtail",
    "bad_groups", "bad_members", "bad_checksum", "duplicate_group", "bad_capacity",
    "bad_frames", "bad_frame_s", "bad_quantum_wh", "bad_start", "bad_deadline", "bad_brokers",
    "bad_req", "bad_broker", "bad_results", "bad_sum", "bad_status", "bad_reason", "bad_id",
    "bad_sealed", "bad_target", "bad_missing",
    "bad_topic", "home_mismatch", "unknown_round", "late", "replay", "duplicate_home",
    "unregistered", "bad_mac", "bad_seed", "unexpected_topic", "broker_mismatch",
    "unknown_broker", "unknown_req", "duplicate_answer", "frames_mismatch", "stale_round",
    "round_conflict", "too_many_members",
}

_tried: Counter[str] = Counter()


def tried(handler: str, n: int = 1) -> None:
    """Count ``n`` inputs fed to ``handler``; rewrite $HEMS_FUZZ_STATS when set."""
    _tried[handler] += n
    path = os.environ.get("HEMS_FUZZ_STATS")
    if path:
        p = Path(path)
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            old = {}
        merged = {**old, **{k: v for k, v in _tried.items()}}
        p.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


WEIRD: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 2**30, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**100, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "1", "2026-02-30", "9999-99-99", "a" * 33, "A1", "h/1", "+", "#",
                     "\x00", "\u00e9", "0" * 64, "==", "AAAA"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def mutated(base: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one field replaced by a weird value, or dropped, or an unknown version,
    or an extra field."""
    keys = sorted(base)
    return st.one_of(
        st.tuples(st.sampled_from(keys), WEIRD).map(lambda kv: {**base, kv[0]: kv[1]}),
        st.sampled_from(keys).map(lambda k: {kk: v for kk, v in base.items() if kk != k}),
        st.sampled_from([0, 2, -1, "1", 1.5, None, 2**64, True]).map(lambda v: {**base, "v": v}),
        st.tuples(st.text(min_size=1, max_size=8), WEIRD).map(lambda kv: {**base, **{kv[0]: kv[1]}}
                                                              if kv[0] not in base else dict(base)),
    )


def specials(limit: int) -> list[bytes]:
    """Payloads that break parsers: empty, not an object, deep nesting, BOM, NaN, oversize."""
    return [
        b"", b"null", b"[]", b"1e999", b"-0", b'"x"', b"true", b"NaN", b"[" * 100_000,
        b"{" * 50_000, b"\xef\xbb\xbf{}", b"\xff\xfe\x00", b'{"v": 1, "v": 2}',
        b" " * (limit + 1), b'{"v":1,' + b"9" * (limit + 1) + b"}",
    ]


def hostile_payloads(base: Mapping[str, Any], limit: int = protocol.MAX_PAYLOAD
                     ) -> st.SearchStrategy[bytes]:
    text = json.dumps(base)
    return st.one_of(
        mutated(base).map(lambda o: json.dumps(o).encode()),
        st.integers(min_value=0, max_value=len(text) - 1).map(lambda n: text[:n].encode()),
        st.binary(max_size=300),
        st.text(max_size=100).map(str.encode),
        st.sampled_from(specials(limit)),
    )


class CountingHandler(logging.Handler):
    """Counts the "rejected ..." warnings a Rejections object logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.rejected = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("rejected "):
            self.rejected += 1


def reasons_known(counts: Mapping[str, int]) -> list[str]:
    """Counted keys ("kind:reason") whose reason is not a documented code."""
    return [k for k in counts if k.partition(":")[2] not in KNOWN_REASONS]
