"""Problem, policy and result types of the adjustment engine, and the one
shared implementation of the move/curtailment semantics.

Everything here is pure (no I/O) and deterministic.

Magnification window
--------------------
A group with contract magnification ``m`` may move the whole load of a frame
``k`` to one other frame of its *window*:

* ``"defer"`` (default): frames ``k+1 .. k+m-1``;
* ``"symmetric"``: frames ``k-(m-1) .. k+(m-1)`` except ``k``.

``m = 1`` means the group cannot move at all (empty window); ``m = 2`` with
``"defer"`` allows the next frame only, ``m = 4`` up to three frames later.
The window is clipped to the day's frames ``[0, F)``: load never wraps into
the previous or the next day.

Move semantics (identical to the home firmware)
-----------------------------------------------
``moves`` is a list of ``(group, from_frame, to_frame)``; each
``(group, from_frame)`` appears at most once, ``to_frame`` lies in the
window and the original total of ``(group, from_frame)`` is positive.  All
moves are applied *simultaneously on the original totals*::

    after = totals.copy()
    for g, f, t in moves:
        after[g, f] -= totals[g, f]
        after[g, t] += totals[g, f]

``curtail`` is then a list of ``(group, frame, keep)`` entries, each
``(group, frame)`` at most once, ``0 <= keep < KEEP_SCALE`` (65536): the
group keeps ``keep / 65536`` of its post-move load there, rounded down::

    after[g, frame] = after[g, frame] * keep // KEEP_SCALE

``keep = 0`` switches the cell off.  Every member applies the same rule to its
own post-move load (``hemsfw.plan.apply_adjustment``); rounding down per home
keeps the group's real total at or below the engine's figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Move = tuple[int, int, int]
Cell = tuple[int, int, int]  # (group, frame, keep in 1/KEEP_SCALE of the post-move load)
WindowKind = Literal["defer", "symmetric"]

#: curtailment keeps ``keep / KEEP_SCALE`` of a cell's post-move load (rounded down)
KEEP_SCALE = 1 << 16

__all__ = [
    "KEEP_SCALE",
    "OPT_TOL_PCT",
    "Cell",
    "Move",
    "Policy",
    "Problem",
    "Result",
    "WindowKind",
    "apply_curtailment",
    "apply_moves",
    "evaluate",
    "finite_or_none",
    "gap_pct",
    "overload_wh",
    "plan_curtailment",
    "target_deviation_wh",
    "validate_curtailment",
    "validate_moves",
    "window",
    "window_offsets",
]


@dataclass(frozen=True)
class Policy:
    """How the coordinator wants the day adjusted.

    ``window``: magnification window kind (see the module docstring).
    ``time_limit_s``: wall-clock budget of a solve when ``solve`` is given no
    deadline (model building, every stage and curtailment included).
    ``target``/``target_weight``: optional per-frame target profile (Wh).
    When given with a positive weight, the second (moved-energy) objective
    stage becomes ``moved_wh + target_weight * sum_f |load_f - target_f|``,
    with ``load`` the per-frame load after moves (before curtailment).  It is
    always of lower priority than the overload.
    ``allow_curtail``: when False, no curtailment is planned and the residual
    overload is reported instead.
    """

    window: WindowKind = "defer"
    time_limit_s: float = 10.0
    target: np.ndarray | None = None
    target_weight: float = 0.0
    allow_curtail: bool = True

    def __post_init__(self) -> None:
        if self.window not in ("defer", "symmetric"):
            raise ValueError(f"unknown window kind {self.window!r}")
        if not (self.time_limit_s > 0):
            raise ValueError("time_limit_s must be positive")
        if not (self.target_weight >= 0) or not np.isfinite(self.target_weight):
            raise ValueError("target_weight must be a finite non-negative number")


def _as_int64(name: str, value: object, ndim: int) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and (
            not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr))):
        raise ValueError(f"{name} must hold integers")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Problem:
    """One day's adjustment problem.

    ``totals``: (G, F) int64, group totals of planned special-power load (Wh)
    per frame, >= 0.  ``capacity``: (F,) int64 supply capacity per frame (Wh),
    >= 0.  ``magnification``: (G,) int64 contract magnification, >= 1.
    The arrays are converted to read-only int64 copies.
    """

    totals: np.ndarray
    capacity: np.ndarray
    magnification: np.ndarray
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        totals = _as_int64("totals", self.totals, 2)
        capacity = _as_int64("capacity", self.capacity, 1)
        mag = _as_int64("magnification", self.magnification, 1)
        g, f = totals.shape
        if capacity.shape != (f,):
            raise ValueError(f"capacity must have shape ({f},), got {capacity.shape}")
        if mag.shape != (g,):
            raise ValueError(f"magnification must have shape ({g},), got {mag.shape}")
        if totals.size and totals.min() < 0:
            raise ValueError("totals must be >= 0")
        if capacity.size and capacity.min() < 0:
            raise ValueError("capacity must be >= 0")
        if mag.size and mag.min() < 1:
            raise ValueError("magnification must be >= 1")
        if self.policy.target is not None:
            target = np.asarray(self.policy.target, dtype=np.float64)
            if target.shape != (f,):
                raise ValueError(f"policy.target must have shape ({f},), got {target.shape}")
            if not np.all(np.isfinite(target)):
                raise ValueError("policy.target must be finite")
        object.__setattr__(self, "totals", totals)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "magnification", mag)

    @property
    def n_groups(self) -> int:
        return int(self.totals.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.totals.shape[1])

    def target_array(self) -> FloatArray | None:
        """The target profile as float64, or None when it plays no role."""
        p = self.policy
        if p.target is None or p.target_weight <= 0:
            return None
        return np.asarray(p.target, dtype=np.float64)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None when absent or not finite (JSON has no Infinity/NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


#: a plan within this many % of its proven bounds counts as proven optimal (the exact model's
#: relative MIP gap tolerance on moved energy, 1e-4; the LP bound's tie-break term is smaller)
OPT_TOL_PCT = 0.01


def gap_pct(value: float, bound: float | None) -> float | None:
    """How far ``value`` is above a proven lower ``bound``, in % of the bound (0 when both are
    0; None when no bound is known; 100 * value when the bound is 0 and the value is not)."""
    if bound is None:
        return None
    b = max(0.0, float(bound))
    excess = max(0.0, float(value) - b)
    if excess <= 0.5:  # integer Wh: below half a Wh is equality
        return 0.0
    return 100.0 * excess / max(b, 1.0)


@dataclass(frozen=True, eq=False)
class Result:
    """Outcome of a solve (see docs/adjustment.md for every field).

    ``best_bound``, ``moved_bound_wh`` and ``curtailed_bound_wh`` are proven lower bounds (None:
    unknown) on the overload after moves, on the moved energy of any plan at that overload, and
    on the energy any plan must curtail; :meth:`gaps` turns them into proven gaps."""

    moves: list[Move]
    curtail: list[Cell]
    group_after: np.ndarray
    load_before: np.ndarray
    load_after: np.ndarray
    overload_before_wh: int
    overload_after_wh: int
    residual_overload_wh: int
    moved_wh: int
    curtailed_wh: int
    solver: str
    runtime_s: float
    status: str
    mip_gap: float | None
    best_bound: float | None
    moved_bound_wh: float | None = None
    curtailed_bound_wh: float | None = None

    def proven_optimal(self) -> bool:
        """Overload and moved energy proven within :data:`OPT_TOL_PCT` of their bounds."""
        g = self.gaps()
        return all(v is not None and v <= OPT_TOL_PCT for v in (g["overload_pct"],
                                                               g["moved_pct"]))

    def gaps(self) -> dict[str, float | None]:
        """Proven gaps in % of the bounds: overload after moves, moved energy (only meaningful
        when the overload is at its bound), curtailed energy; None where no bound is known."""
        at_bound = gap_pct(self.overload_after_wh, self.best_bound) == 0.0
        moved_b = self.moved_bound_wh if at_bound else None
        return {"overload_pct": gap_pct(self.overload_after_wh, self.best_bound),
                "moved_pct": gap_pct(self.moved_wh, moved_b),
                "curtailed_pct": gap_pct(self.curtailed_wh, self.curtailed_bound_wh)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (valid JSON: a non-finite gap or bound is written as null)."""
        return {
            "moves": [[int(g), int(f), int(t)] for g, f, t in self.moves],
            "curtail": [[int(g), int(f), int(k)] for g, f, k in self.curtail],
            "group_after": np.asarray(self.group_after, dtype=np.int64).tolist(),
            "load_before": np.asarray(self.load_before, dtype=np.int64).tolist(),
            "load_after": np.asarray(self.load_after, dtype=np.int64).tolist(),
            "overload_before_wh": int(self.overload_before_wh),
            "overload_after_wh": int(self.overload_after_wh),
            "residual_overload_wh": int(self.residual_overload_wh),
            "moved_wh": int(self.moved_wh), "curtailed_wh": int(self.curtailed_wh),
            "solver": self.solver, "runtime_s": float(self.runtime_s), "status": self.status,
            "mip_gap": finite_or_none(self.mip_gap), "best_bound": finite_or_none(self.best_bound),
            "moved_bound_wh": finite_or_none(self.moved_bound_wh),
            "curtailed_bound_wh": finite_or_none(self.curtailed_bound_wh),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Result:
        """The inverse of :meth:`to_json` (a curtail entry ``[group, frame]`` from before
        partial curtailment reads as keep 0)."""
        return cls(
            moves=[(int(g), int(f), int(t)) for g, f, t in d["moves"]],
            curtail=[(int(c[0]), int(c[1]), int(c[2]) if len(c) > 2 else 0)
                     for c in d["curtail"]],
            group_after=np.array(d["group_after"], dtype=np.int64),
            load_before=np.array(d["load_before"], dtype=np.int64),
            load_after=np.array(d["load_after"], dtype=np.int64),
            overload_before_wh=int(d["overload_before_wh"]),
            overload_after_wh=int(d["overload_after_wh"]),
            residual_overload_wh=int(d["residual_overload_wh"]),
            moved_wh=int(d["moved_wh"]), curtailed_wh=int(d["curtailed_wh"]),
            solver=str(d["solver"]), runtime_s=float(d["runtime_s"]), status=str(d["status"]),
            mip_gap=finite_or_none(d.get("mip_gap")),
            best_bound=finite_or_none(d.get("best_bound")),
            moved_bound_wh=finite_or_none(d.get("moved_bound_wh")),
            curtailed_bound_wh=finite_or_none(d.get("curtailed_bound_wh")),
        )


# --------------------------------------------------------------------------
# window
# --------------------------------------------------------------------------


def window_offsets(m: int, kind: WindowKind = "defer") -> list[int]:
    """Frame offsets allowed for magnification ``m`` before clipping, ascending."""
    m = int(m)
    if m < 1:
        raise ValueError("magnification must be >= 1")
    if kind == "defer":
        return list(range(1, m))
    if kind == "symmetric":
        return [d for d in range(-(m - 1), m) if d != 0]
    raise ValueError(f"unknown window kind {kind!r}")


def window(m: int, k: int, n_frames: int, kind: WindowKind = "defer") -> list[int]:
    """Frames that the load of frame ``k`` may move to (clipped to [0, F))."""
    return [k + d for d in window_offsets(m, kind) if 0 <= k + d < n_frames]


# --------------------------------------------------------------------------
# semantics
# --------------------------------------------------------------------------


def _move_array(moves: Iterable[Sequence[int]]) -> IntArray:
    if isinstance(moves, np.ndarray):
        return np.asarray(moves, dtype=np.int64).reshape(-1, 3)
    lst = list(moves)
    for mv in lst:
        if len(mv) != 3:
            raise ValueError(f"a move is (group, from_frame, to_frame), got {mv!r}")
    return np.asarray(lst, dtype=np.int64).reshape(-1, 3)


def validate_moves(problem: Problem, moves: Iterable[Sequence[int]]) -> list[Move]:
    """Check ``moves`` against the problem; return them as int tuples.

    Raises ValueError on a repeated (group, from_frame), a move to the same
    frame or outside the window, an index out of range, or a move of a cell
    whose original total is 0.
    """
    return _tuples3(_checked_moves(problem, _move_array(moves)))


def _tuples3(arr: IntArray) -> list[Move]:
    return [(a, b, c) for a, b, c in arr.tolist()]


def _checked_moves(problem: Problem, arr: IntArray) -> IntArray:
    g_n, f_n = problem.totals.shape
    if arr.shape[0] == 0:
        return arr
    g, f, t = arr[:, 0], arr[:, 1], arr[:, 2]
    bad = ~((g >= 0) & (g < g_n) & (f >= 0) & (f < f_n) & (t >= 0) & (t < f_n))
    if bad.any():
        raise ValueError(f"move {tuple(arr[np.argmax(bad)].tolist())} out of range")
    key = g * f_n + f
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        k = int(uniq[np.argmax(counts > 1)])
        raise ValueError(f"(group, from_frame) {(k // f_n, k % f_n)} moved twice")
    d = t - f
    if (d == 0).any():
        raise ValueError(f"move {tuple(arr[np.argmax(d == 0)].tolist())} to the same frame")
    m = problem.magnification[g]
    if problem.policy.window == "defer":
        ok = (d >= 1) & (d <= m - 1)
    else:
        ok = (np.abs(d) >= 1) & (np.abs(d) <= m - 1)
    if not ok.all():
        i = int(np.argmax(~ok))
        raise ValueError(f"move {tuple(arr[i].tolist())} outside the window of magnification "
                         f"{int(m[i])} ({problem.policy.window})")
    empty = problem.totals[g, f] <= 0
    if empty.any():
        raise ValueError(f"move {tuple(arr[np.argmax(empty)].tolist())} of an empty cell")
    return arr


def apply_moves(totals: np.ndarray, moves: Iterable[Sequence[int]]) -> IntArray:
    """Apply moves simultaneously on the original totals (firmware semantics).

    Does not validate; see :func:`validate_moves`.
    """
    tot = np.asarray(totals, dtype=np.int64)
    after = tot.copy()
    arr = _move_array(moves)
    if arr.shape[0]:
        g, f, t = arr[:, 0], arr[:, 1], arr[:, 2]
        v = tot[g, f]
        np.subtract.at(after, (g, f), v)
        np.add.at(after, (g, t), v)
    return after


def validate_curtailment(problem: Problem, curtail: Iterable[Sequence[int]]) -> list[Cell]:
    """Check ``curtail`` (each (group, frame) in range and at most once, ``0 <= keep <
    KEEP_SCALE``); return it as int tuples."""
    return _tuples3(_checked_cells(problem, _cell_array(curtail)))


def _checked_cells(problem: Problem, arr: IntArray) -> IntArray:
    g_n, f_n = problem.totals.shape
    if arr.shape[0] == 0:
        return arr
    g, f, k = arr[:, 0], arr[:, 1], arr[:, 2]
    bad = ~((g >= 0) & (g < g_n) & (f >= 0) & (f < f_n))
    if bad.any():
        raise ValueError(f"curtailment {tuple(arr[np.argmax(bad)].tolist())} out of range")
    bad = ~((k >= 0) & (k < KEEP_SCALE))
    if bad.any():
        raise ValueError(f"curtailment {tuple(arr[np.argmax(bad)].tolist())}: keep must be "
                         f"0..{KEEP_SCALE - 1}")
    key = g * f_n + f
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        k2 = int(uniq[np.argmax(counts > 1)])
        raise ValueError(f"cell {(k2 // f_n, k2 % f_n)} curtailed twice")
    return arr


def _cell_array(cells: Iterable[Sequence[int]]) -> IntArray:
    if isinstance(cells, np.ndarray):
        return np.asarray(cells, dtype=np.int64).reshape(-1, 3)
    lst = list(cells)
    for c in lst:
        if len(c) != 3:
            raise ValueError(f"a curtailment is (group, frame, keep), got {c!r}")
    return np.asarray(lst, dtype=np.int64).reshape(-1, 3)


def apply_curtailment(group_after: np.ndarray, curtail: Iterable[Sequence[int]]) -> IntArray:
    """Curtail a post-move matrix (copy): each ``(g, f, keep)`` leaves
    ``after[g, f] * keep // KEEP_SCALE``."""
    out = np.array(group_after, dtype=np.int64, copy=True)
    arr = _cell_array(curtail)
    if arr.shape[0]:
        g, f = arr[:, 0], arr[:, 1]
        out[g, f] = out[g, f] * arr[:, 2] // KEEP_SCALE
    return out


def overload_wh(load: np.ndarray, capacity: np.ndarray) -> int:
    """sum_f max(0, load_f - capacity_f)."""
    return int(np.maximum(np.asarray(load, dtype=np.int64) - capacity, 0).sum())


def target_deviation_wh(load: np.ndarray, target: np.ndarray) -> float:
    """sum_f |load_f - target_f|."""
    return float(np.abs(np.asarray(load, dtype=np.float64) - target).sum())


def plan_curtailment(group_after: np.ndarray, capacity: np.ndarray) -> list[Cell]:
    """Fair, minimal curtailment of a post-move matrix: in every frame whose load ``L``
    exceeds its capacity ``C``, every group with load ``a_g`` there keeps its share
    ``a_g * C / L`` (the same fraction for all): the frame sheds exactly its excess
    ``L - C``, spread over the groups in proportion to their load.  Shares are made integer
    by largest remainder (ties to the lower group), then written as ``keep`` (1/65536 of the
    cell) rounded so that the group never keeps more than its share; a group whose share is
    its whole load gets no entry.  Sorted by (frame, group)."""
    return _tuples3(_curtail_array(group_after, capacity))


def _curtail_array(group_after: np.ndarray, capacity: np.ndarray) -> IntArray:
    """:func:`plan_curtailment` as an (N, 3) array of (group, frame, keep) rows."""
    ga = np.asarray(group_after, dtype=np.int64)
    cap = np.asarray(capacity, dtype=np.int64)
    empty = np.zeros((0, 3), dtype=np.int64)
    if ga.size == 0:
        return empty
    load = ga.sum(axis=0)
    rows: list[IntArray] = []
    for f in np.flatnonzero(load > cap).tolist():
        gs = np.flatnonzero(ga[:, f] > 0)
        a = ga[gs, f]
        total, keep_total = int(load[f]), int(cap[f])
        share = a * keep_total // total
        rem = a * keep_total - share * total
        extra = keep_total - int(share.sum())
        if extra > 0:
            share[np.lexsort((gs, -rem))[:extra]] += 1
        q = -(-share * KEEP_SCALE // a)  # ceil: a * q // S >= share
        q = np.where(a * q // KEEP_SCALE > share, q - 1, q)
        q = np.minimum(q, KEEP_SCALE - 1)
        cut = share < a
        n = int(cut.sum())
        rows.append(np.stack([gs[cut], np.full(n, f, dtype=np.int64), q[cut]], axis=1))
    return np.concatenate(rows) if rows else empty


def evaluate(
    problem: Problem,
    moves: Iterable[Sequence[int]],
    curtail: Iterable[Sequence[int]],
    *,
    solver: str = "evaluate",
    runtime_s: float = 0.0,
    status: str = "evaluated",
    mip_gap: float | None = None,
    best_bound: float | None = None,
) -> Result:
    """Validate a plan and compute every figure of its :class:`Result`.

    Moves are sorted by (group, from_frame) and curtailment by (frame, group)
    so that equal plans give equal results.
    """
    mv_arr = _checked_moves(problem, _move_array(moves))
    mv_arr = mv_arr[np.lexsort((mv_arr[:, 1], mv_arr[:, 0]))]
    ct_arr = _checked_cells(problem, _cell_array(curtail))
    ct_arr = ct_arr[np.lexsort((ct_arr[:, 0], ct_arr[:, 1]))]
    totals = problem.totals
    cap = problem.capacity
    moved = apply_moves(totals, mv_arr)
    final = apply_curtailment(moved, ct_arr)
    load_before = totals.sum(axis=0, dtype=np.int64)
    load_moved = moved.sum(axis=0, dtype=np.int64)
    load_after = final.sum(axis=0, dtype=np.int64)
    moved_wh = int(totals[mv_arr[:, 0], mv_arr[:, 1]].sum())
    curtailed_wh = int(load_moved.sum() - load_after.sum())
    mv = _tuples3(mv_arr)
    ct = _tuples3(ct_arr)
    return Result(
        moves=mv,
        curtail=ct,
        group_after=final,
        load_before=load_before,
        load_after=load_after,
        overload_before_wh=overload_wh(load_before, cap),
        overload_after_wh=overload_wh(load_moved, cap),
        residual_overload_wh=overload_wh(load_after, cap),
        moved_wh=moved_wh,
        curtailed_wh=curtailed_wh,
        solver=solver,
        runtime_s=float(runtime_s),
        status=status,
        mip_gap=mip_gap,
        best_bound=best_bound,
    )


def finish(
    problem: Problem,
    moves: Sequence[Move],
    *,
    solver: str,
    t_start: float,
    status: str,
    mip_gap: float | None = None,
    best_bound: float | None = None,
    moved_bound: float | None = None,
    curtail: Sequence[Cell] | None = None,
) -> Result:
    """Plan curtailment (unless given or disallowed) and build the Result.

    ``t_start`` is a :func:`time.monotonic` value; the runtime includes
    curtailment planning and evaluation.  Any plan curtails at least the overload its moves
    leave, so the overload bound is also the curtailed-energy bound.
    """
    plan: Sequence[Cell] | IntArray
    if curtail is not None:
        plan = curtail
    elif problem.policy.allow_curtail:
        plan = _curtail_array(apply_moves(problem.totals, moves), problem.capacity)
    else:
        plan = []
    res = evaluate(problem, moves, plan, solver=solver, runtime_s=0.0,
                   status=status, mip_gap=mip_gap, best_bound=best_bound)
    cb = (best_bound if problem.policy.allow_curtail else 0.0) if best_bound is not None else None
    return replace(res, runtime_s=time.monotonic() - t_start, moved_bound_wh=moved_bound,
                   curtailed_bound_wh=cb)
