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
    return {
        "moves": [[int(g), int(f), int(t)] for g, f, t in r.moves],
        "curtail": [[int(g), int(f)] for g, f in r.curtail],
        "group_after": np.asarray(r.group_after, dtype=np.int64).tolist(),
        "load_before": np.asarray(r.load_before, dtype=np.int64).tolist(),
        "load_after": np.asarray(r.load_after, dtype=np.int64).tolist(),
        "overload_before_wh": int(r.overload_before_wh),
        "overload_after_wh": int(r.overload_after_wh),
        "residual_overload_wh": int(r.residual_overload_wh),
        "moved_wh": int(r.moved_wh), "curtailed_wh": int(r.curtailed_wh),
        "solver": r.solver, "runtime_s": float(r.runtime_s), "status": r.status,
        "mip_gap": r.mip_gap, "best_bound": r.best_bound,
    }


def result_from_json(d: Mapping[str, Any]) -> Result:
    return Result(
        moves=[(int(g), int(f), int(t)) for g, f, t in d["moves"]],
        curtail=[(int(g), int(f)) for g, f in d["curtail"]],
        group_after=np.array(d["group_after"], dtype=np.int64),
        load_before=np.array(d["load_before"], dtype=np.int64),
        load_after=np.array(d["load_after"], dtype=np.int64),
        overload_before_wh=int(d["overload_before_wh"]),
        overload_after_wh=int(d["overload_after_wh"]),
        residual_overload_wh=int(d["residual_overload_wh"]),
        moved_wh=int(d["moved_wh"]), curtailed_wh=int(d["curtailed_wh"]),
        solver=str(d["solver"]), runtime_s=float(d["runtime_s"]), status=str(d["status"]),
        mip_gap=d["mip_gap"], best_bound=d["best_bound"],
    )


def fingerprint(p: Problem, solver: str) -> str:
    h = hashlib.sha256(solver.encode())
    for a in (p.totals, p.capacity, p.magnification):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    pol = p.policy
    h.update(repr((pol.window, pol.time_limit_s, pol.target_weight, pol.allow_curtail)).encode())
    if pol.target is not None:
        h.update(np.asarray(pol.target, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]
