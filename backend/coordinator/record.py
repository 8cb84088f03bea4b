"""A round's record: the result JSON (``--result``, and ``results/<day>-r<round>.json`` of the
daemon), made from the round's public state.

Fields: ``status`` "completed" | "failed", ``error`` (the reason, or null), ``phase`` (where the
round stands: lifecycle.py); ``day``, ``round``, ``start``, ``deadline`` (null if the round was
never announced), ``k``, ``brokers``, ``window``; ``homes`` (reports accepted), ``adjusted_homes``
(adjustments acknowledged by the broker), ``excluded`` ([{home, reason, group, broker, detail}]),
``late_homes`` (homes whose only plan report came after collection closed); ``frames``,
``frame_s``, ``quantum_wh``; ``capacity_wh``, ``target_wh`` (Wh per frame, or null),
``capacity_updates_after_close`` (grid-feed updates for the day that came after the round took its
capacity: they apply to the next round); ``coordinator_load_before_wh`` and
``coordinator_load_after_wh`` (per frame, from the group totals: before, and after moves and
curtailment); ``reserve_wh`` (per frame: the homes in no released total at their caps, which the
solver kept free: reserve.py) and ``reserve_homes`` (those homes); ``overload_before_wh``,
``overload_after_wh`` (after moves, before curtailment), ``residual_overload_wh`` (after
curtailment; the three against ``capacity_wh - reserve_wh``), ``moved_wh``, ``curtailed_wh``;
``groups`` (the final grouping: [{id, size, magnification, members, total_wh, carried}]:
``carried`` members count with their latest released report of an earlier round, and get no
adjustment), ``moves`` ([group id, from, to]), ``curtail`` ([group id, frame, keep]: the group
keeps keep/65536 of its post-move load in that frame, docs/adjustment.md); ``regroup_rounds``
(refinements asked for), ``solver``, ``solve_status``, ``mip_gap``, ``best_bound`` (from the
engine, null when not finite), ``gaps`` (proven gaps in %: ``overload_pct``, ``moved_pct``,
``curtailed_pct``, null where unknown); ``released_groups`` ([{id, broker, size}]),
``refused_groups`` ([{id, broker, reason, missing?}]), ``rejections`` (counts by
"kind:reason"); ``timings`` (collect_s, group_s, sums_s, solve_s, publish_s: this process);
``phases`` ([[phase, clock time entered]] of this process); ``resumed`` (this process continued
a journaled round), ``restarts`` (earlier processes of this round). Values not reached by a
failed round are null (or empty lists).
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from backend.coordinator.adjust.model import finite_or_none
from backend.coordinator.round import Round

__all__ = ["round_record"]


def _ints(a: npt.NDArray[Any] | None) -> list[int] | None:
    return None if a is None else [int(x) for x in a]


def round_record(r: Round, status: str, error: str | None = None) -> dict[str, Any]:
    """The round's record (the module docstring lists every field)."""
    c, s, res, ledger = r.cfg, r.s, r.solution, r.ledger
    q = s.quantum_wh
    groups = []
    for g in r.groups:
        total = ledger.total_quanta(g) * q if ledger is not None and ledger.complete(g) else None
        groups.append({"id": g.id, "size": g.size, "magnification": g.magnification,
                       "members": sorted(g.members), "total_wh": _ints(total),
                       "carried": ledger.carried_in(g) if ledger is not None else []})
    gid = [g.id for g in r.groups]
    cap = r.capacity
    return {
        "status": status,
        "error": error,
        "phase": r.phase.value,
        "day": c.day,
        "round": c.round,
        "start": c.start,
        "deadline": c.deadline if r.intake is not None else None,
        "k": s.k,
        "brokers": list(c.brokers),
        "homes": r.intake.accepted if r.intake is not None else 0,
        "adjusted_homes": r.adjusted_homes,
        "excluded": [e.as_json() for e in r.excluded.values()],
        "late_homes": sorted(r.late_homes),
        "frames": c.frames,
        "frame_s": c.frame_s,
        "quantum_wh": q,
        "capacity_wh": _ints(cap.capacity_wh) if cap else None,
        "target_wh": _ints(cap.target_wh) if cap else None,
        "capacity_updates_after_close": (
            r.supply.late_updates(c.day, r.capacity_taken_at)
            if r.capacity_taken_at is not None else 0),
        "coordinator_load_before_wh": _ints(res.load_before) if res else None,
        "coordinator_load_after_wh": _ints(res.load_after) if res else None,
        "reserve_wh": _ints(r.reserve.wh) if r.reserve is not None else None,
        "reserve_homes": list(r.reserve.homes) if r.reserve is not None else [],
        "overload_before_wh": res.overload_before_wh if res else None,
        "overload_after_wh": res.overload_after_wh if res else None,
        "residual_overload_wh": res.residual_overload_wh if res else None,
        "moved_wh": res.moved_wh if res else None,
        "curtailed_wh": res.curtailed_wh if res else None,
        "groups": groups,
        "moves": [[gid[g], f, t] for g, f, t in res.moves] if res else [],
        "curtail": [[gid[g], f, keep] for g, f, keep in res.curtail] if res else [],
        "regroup_rounds": r.regroup_rounds,
        "solver": res.solver if res else s.solver,
        "solve_status": res.status if res else None,
        "mip_gap": finite_or_none(res.mip_gap) if res else None,
        "best_bound": finite_or_none(res.best_bound) if res else None,
        "gaps": res.gaps() if res else None,
        "window": s.window,
        "released_groups": ledger.released if ledger else [],
        "refused_groups": ledger.refused if ledger else [],
        "rejections": r.rejections.as_dict(),
        "timings": {k: round(v, 6) for k, v in r.timings.items()},
        "phases": [[p.value, round(at, 3)] for p, at in r.life.history],
        "resumed": r.restarts > 0,
        "restarts": r.restarts,
    }
