"""How the round's inputs are written in its journal (journal.py): the mask brokers' answers,
the solver's results, and the fingerprint that ties a journaled result to its problem."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from backend.coordinator.adjust import Problem, Result
from backend.coordinator.sums import Answer, Refusal

__all__ = ["answers_from_json", "answers_to_json", "fingerprint", "result_from_json",
           "result_to_json"]


def answers_to_json(results: Mapping[str, Answer]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gid, a in results.items():
        if isinstance(a, bytes):
            out[gid] = {"sum": base64.b64encode(a).decode()}
        elif isinstance(a, Refusal):
            out[gid] = {"reason": a.reason, "missing": list(a.missing)}
        else:
            out[gid] = None
    return out


def answers_from_json(obj: Mapping[str, Any]) -> dict[str, Answer]:
    out: dict[str, Answer] = {}
    for gid, a in obj.items():
        if a is None:
            out[gid] = None
        elif "sum" in a:
            out[gid] = base64.b64decode(a["sum"])
        else:
            out[gid] = Refusal(str(a["reason"]), tuple(str(m) for m in a["missing"]))
    return out


def result_to_json(r: Result) -> dict[str, Any]:
    """The journal's form of a result: :meth:`Result.to_json` (valid JSON, no Infinity)."""
    return r.to_json()


def result_from_json(d: Mapping[str, Any]) -> Result:
    return Result.from_json(d)


def fingerprint(p: Problem, solver: str) -> str:
    h = hashlib.sha256(solver.encode())
    for a in (p.totals, p.capacity, p.magnification):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    pol = p.policy
    h.update(repr((pol.window, pol.time_limit_s, pol.target_weight, pol.allow_curtail)).encode())
    if pol.target is not None:
        h.update(np.asarray(pol.target, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]
