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

``curtail`` is then a list of ``(group, frame)`` cells, each at most once,
whose post-move load is switched off: ``after[g, frame] = 0``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Move = tuple[int, int, int]
Cell = tuple[int, int]
WindowKind = Literal["defer", "symmetric"]

__all__ = [
    "Cell",
    "Move",
    "Policy",
    "Problem",
    "Result",
    "WindowKind",
    "apply_curtailment",
    "apply_moves",
    "evaluate",
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
    ``time_limit_s``: wall-clock budget of a solve (the exact solver splits it
    over its stages; the heuristic ignores it, it is far faster).
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


@dataclass(frozen=True, eq=False)
class Result:
    """Outcome of a solve (see docs/adjustment.md for every field)."""

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


def _tuples2(arr: IntArray) -> list[Cell]:
    return [(a, b) for a, b in arr.tolist()]


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
    """Check ``curtail`` (each (group, frame) in range, at most once); return
    it as int tuples."""
    return _tuples2(_checked_cells(problem, _cell_array(curtail)))


def _checked_cells(problem: Problem, arr: IntArray) -> IntArray:
    g_n, f_n = problem.totals.shape
    if arr.shape[0] == 0:
        return arr
    g, f = arr[:, 0], arr[:, 1]
    bad = ~((g >= 0) & (g < g_n) & (f >= 0) & (f < f_n))
    if bad.any():
        raise ValueError(f"curtailment {tuple(arr[np.argmax(bad)].tolist())} out of range")
    key = g * f_n + f
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        k = int(uniq[np.argmax(counts > 1)])
        raise ValueError(f"cell {(k // f_n, k % f_n)} curtailed twice")
    return arr


def _cell_array(cells: Iterable[Sequence[int]]) -> IntArray:
    if isinstance(cells, np.ndarray):
        return np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    lst = list(cells)
    for c in lst:
        if len(c) != 2:
            raise ValueError(f"a curtailment is (group, frame), got {c!r}")
    return np.asarray(lst, dtype=np.int64).reshape(-1, 2)


def apply_curtailment(group_after: np.ndarray, curtail: Iterable[Sequence[int]]) -> IntArray:
    """Zero the curtailed (group, frame) cells of a post-move matrix (copy)."""
    out = np.array(group_after, dtype=np.int64, copy=True)
    arr = _cell_array(curtail)
    if arr.shape[0]:
        out[arr[:, 0], arr[:, 1]] = 0
    return out


def overload_wh(load: np.ndarray, capacity: np.ndarray) -> int:
    """sum_f max(0, load_f - capacity_f)."""
    return int(np.maximum(np.asarray(load, dtype=np.int64) - capacity, 0).sum())


def target_deviation_wh(load: np.ndarray, target: np.ndarray) -> float:
    """sum_f |load_f - target_f|."""
    return float(np.abs(np.asarray(load, dtype=np.float64) - target).sum())


def plan_curtailment(group_after: np.ndarray, capacity: np.ndarray) -> list[Cell]:
    """Choose whole (group, frame) cells to switch off so that no frame exceeds
    its capacity, curtailing little energy (greedy best fit).

    Per overloaded frame with excess ``e``: while no remaining cell holds the
    remaining excess, curtail the largest cell; then curtail the smallest cell
    that holds what is left (the best match for the excess).  Ties are broken
    by the lower group index.  Result sorted by (frame, group).
    """
    return _tuples2(_curtail_array(group_after, capacity))


def _curtail_array(group_after: np.ndarray, capacity: np.ndarray) -> IntArray:
    """:func:`plan_curtailment` as an (N, 2) array of (group, frame) rows."""
    ga = np.asarray(group_after, dtype=np.int64)
    cap = np.asarray(capacity, dtype=np.int64)
    empty = np.zeros((0, 2), dtype=np.int64)
    if ga.size == 0:
        return empty
    load = ga.sum(axis=0)
    out_g: list[IntArray] = []
    out_f: list[IntArray] = []
    for f in np.flatnonzero(load > cap).tolist():
        chosen = _cover_groups(ga[:, f], int(load[f] - cap[f]))
        out_g.append(chosen)
        out_f.append(np.full(chosen.shape[0], f, dtype=np.int64))
    if not out_g:
        return empty
    g = np.concatenate(out_g)
    f_arr = np.concatenate(out_f)
    o = np.lexsort((g, f_arr))
    return np.stack([g[o], f_arr[o]], axis=1)


def _cover_groups(col: IntArray, excess: int) -> IntArray:
    """Groups of one frame to curtail so that at least ``excess`` is removed."""
    idx = np.flatnonzero(col > 0)
    v = col[idx]
    o = np.lexsort((idx, -v))  # value descending, group ascending
    d, gi = v[o], idx[o]
    cs = np.cumsum(d)
    j = int(np.searchsorted(cs, excess, side="left"))  # first j with cs[j] >= excess
    if j >= d.shape[0]:  # pragma: no cover - capacity >= 0 makes the total suffice
        return np.sort(gi)
    remaining = excess - (int(cs[j - 1]) if j else 0)
    rest = d[j:]
    m = int(np.searchsorted(-rest, -remaining, side="right"))  # rest[:m] >= remaining
    smallest = rest[m - 1]
    first = int(np.searchsorted(-rest, -smallest, side="left"))
    return np.sort(np.concatenate([gi[:j], gi[j + first:j + first + 1]]))


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
    curtailed_wh = int(moved[ct_arr[:, 0], ct_arr[:, 1]].sum())
    mv = _tuples3(mv_arr)
    ct = _tuples2(ct_arr)
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
    curtail: Sequence[Cell] | None = None,
) -> Result:
    """Plan curtailment (unless given or disallowed) and build the Result.

    ``t_start`` is a :func:`time.perf_counter` value; the runtime includes
    curtailment planning and evaluation.
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
    return replace(res, runtime_s=time.perf_counter() - t_start)
