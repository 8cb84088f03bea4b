"""Exact adjustment via a mixed-integer model solved with HiGHS (highspy).

Model
-----
One binary ``x[j]`` per candidate move ``j = (g, f, t)`` (original total
``s_j = totals[g, f] > 0``, ``t`` in the window of ``(g, f)``), one continuous
overload ``o[f] >= 0`` per frame and, when a target profile is weighted,
deviations ``dp[f], dm[f] >= 0``::

    sum_t x[g, f, t] <= 1                                  for every cell
    L[f] - sum_{j: f_j = f} s_j x_j + sum_{j: t_j = f} s_j x_j - o[f] <= C[f]
    (same load expression) - dp[f] + dm[f] = target[f]       (target only)

Solved lexicographically, all within ``policy.time_limit_s``:

1. ``min sum_f o[f]`` (overload that moves cannot remove).  The objective is
   integral at integral ``x``, so HiGHS runs with an absolute gap < 1.
2. add ``sum_f o[f] <= o1 + 0.5`` (``o1`` = stage-1 incumbent; the 0.5 is
   the tolerance, below 1 Wh) and ``min sum_j (s_j + eps) x_j +
   target_weight * sum_f (dp[f] + dm[f])`` with ``eps = 1 / (n_moves + 1)``,
   so the move count only breaks ties between equal energies.
3. curtailment: the greedy of :func:`model.plan_curtailment`, improved by a
   small knapsack-cover MIP per overloaded frame when time remains.

By default the heuristic's plan is handed to HiGHS as the starting incumbent
(``warm_start=True``), so the exact result is never worse than the
heuristic's; the benchmark also runs it cold to compare the two honestly.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import highspy
import numpy as np

from .model import (
    Cell,
    IntArray,
    Move,
    Problem,
    Result,
    apply_moves,
    finish,
    overload_wh,
    plan_curtailment,
    window_offsets,
)

__all__ = ["new_highs", "solve_exact"]

_BANNER_LOCK = threading.Lock()
_BANNER_DONE = False


def new_highs() -> highspy.Highs:
    """A silent Highs instance.

    HiGHS prints its banner to the C-level stdout when the first instance of
    the process is created, before any option can be set; that one creation
    runs with file descriptor 1 pointed at /dev/null.
    """
    global _BANNER_DONE
    with _BANNER_LOCK:
        if not _BANNER_DONE:
            _BANNER_DONE = True
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
        else:
            h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    return h


def to_csc(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], n_col: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate triplets (pieces to concatenate) -> HiGHS's column-wise matrix: column start
    offsets (int32, n_col of them), row indices (int32) and values, sorted by column then row."""
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)
    order = np.lexsort((r, c))
    r, c, v = r[order], c[order], v[order]
    starts = np.zeros(n_col + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=n_col), out=starts[1:])
    return starts[:-1].astype(np.int32), r.astype(np.int32), v


@dataclass
class _Candidates:
    g: IntArray
    f: IntArray
    t: IntArray
    s: IntArray
    cell: IntArray  # cell index (g * F + f) of each candidate


def _candidates(problem: Problem) -> _Candidates:
    totals = problem.totals
    f_n = int(totals.shape[1])
    gs: list[IntArray] = []
    fs: list[IntArray] = []
    ts: list[IntArray] = []
    mags = problem.magnification
    for m in np.unique(mags).tolist():
        groups = np.flatnonzero(mags == m)
        for d in window_offsets(int(m), problem.policy.window):
            sub = totals[groups]
            rows, cols = np.nonzero(sub > 0)
            ok = (cols + d >= 0) & (cols + d < f_n)
            gs.append(groups[rows[ok]])
            fs.append(cols[ok].astype(np.int64))
            ts.append((cols[ok] + d).astype(np.int64))
    if gs:
        g = np.concatenate(gs).astype(np.int64)
        f = np.concatenate(fs).astype(np.int64)
        t = np.concatenate(ts).astype(np.int64)
    else:
        g = f = t = np.zeros(0, dtype=np.int64)
    order = np.lexsort((t, f, g))
    g, f, t = g[order], f[order], t[order]
    return _Candidates(g=g, f=f, t=t, s=totals[g, f].astype(np.int64), cell=g * f_n + f)


class _Model:
    """The MIP, kept in one Highs instance across the stages."""

    def __init__(self, problem: Problem, cand: _Candidates) -> None:
        self.problem = problem
        self.cand = cand
        f_n = problem.n_frames
        nx = int(cand.g.shape[0])
        self.nx = nx
        self.f_n = f_n
        target = problem.target_array()
        self.target = target
        n_col = nx + f_n + (2 * f_n if target is not None else 0)
        self.n_col = n_col
        load = problem.totals.sum(axis=0, dtype=np.int64).astype(np.float64)
        self.load = load
        s = cand.s.astype(np.float64)
        jx = np.arange(nx, dtype=np.int64)

        rows: list[IntArray] = []
        cols: list[IntArray] = []
        vals: list[np.ndarray] = []
        # frame rows 0..F-1
        rows += [cand.f, cand.t, np.arange(f_n, dtype=np.int64)]
        cols += [jx, jx, nx + np.arange(f_n, dtype=np.int64)]
        vals += [-s, s, -np.ones(f_n)]
        row_lo = [np.full(f_n, -np.inf)]
        row_hi = [problem.capacity.astype(np.float64) - load]
        n_row = f_n
        # cell rows: sum_t x <= 1 for cells with >= 2 candidates
        uniq, inv, counts = np.unique(cand.cell, return_inverse=True, return_counts=True)
        multi = counts[inv] >= 2
        if multi.any():
            cell_ids = np.unique(inv[multi])
            remap = np.full(uniq.shape[0], -1, dtype=np.int64)
            remap[cell_ids] = np.arange(cell_ids.shape[0])
            rows.append(n_row + remap[inv[multi]])
            cols.append(jx[multi])
            vals.append(np.ones(int(multi.sum())))
            row_lo.append(np.full(cell_ids.shape[0], -np.inf))
            row_hi.append(np.ones(cell_ids.shape[0]))
            n_row += int(cell_ids.shape[0])
        # target rows
        if target is not None:
            base = n_row
            fr = np.arange(f_n, dtype=np.int64)
            rows += [base + cand.f, base + cand.t, base + fr, base + fr]
            cols += [jx, jx, nx + f_n + fr, nx + 2 * f_n + fr]
            vals += [-s, s, -np.ones(f_n), np.ones(f_n)]
            row_lo.append(target - load)
            row_hi.append(target - load)
            n_row += f_n
        self.n_row = n_row

        starts, r, v = to_csc(rows, cols, vals, n_col)

        col_lo = np.zeros(n_col)
        col_hi = np.full(n_col, np.inf)
        col_hi[:nx] = 1.0
        cost = np.zeros(n_col)
        cost[nx:nx + f_n] = 1.0
        integrality = np.zeros(n_col, dtype=np.int32)
        integrality[:nx] = 1

        self.cost = cost
        h = new_highs()
        h.passModel(
            n_col, n_row, int(v.shape[0]), 1, 1, 0.0,
            cost, col_lo, col_hi,
            np.concatenate(row_lo), np.concatenate(row_hi),
            starts, r, v, integrality,
        )
        self.h = h
        # key of each candidate for warm starts
        self.keys = (cand.cell * f_n + cand.t).astype(np.int64)

    # ------------------------------------------------------------------
    def x_of_moves(self, moves: list[Move]) -> np.ndarray:
        x = np.zeros(self.nx)
        if moves:
            arr = np.asarray(moves, dtype=np.int64)
            k = (arr[:, 0] * self.f_n + arr[:, 1]) * self.f_n + arr[:, 2]
            pos = np.searchsorted(self.keys, k)
            x[pos] = 1.0
        return x

    def moves_of_x(self, x: np.ndarray) -> list[Move]:
        on = np.flatnonzero(x[:self.nx] > 0.5)
        c = self.cand
        return [(int(c.g[j]), int(c.f[j]), int(c.t[j])) for j in on]

    def full_solution(self, moves: list[Move]) -> np.ndarray:
        """Column values of a plan: x, o and (target) dp/dm."""
        x = self.x_of_moves(moves)
        after = apply_moves(self.problem.totals, moves).sum(axis=0).astype(np.float64)
        sol = np.zeros(self.n_col)
        sol[:self.nx] = x
        sol[self.nx:self.nx + self.f_n] = np.maximum(after - self.problem.capacity, 0.0)
        if self.target is not None:
            dev = after - self.target
            sol[self.nx + self.f_n:self.nx + 2 * self.f_n] = np.maximum(dev, 0.0)
            sol[self.nx + 2 * self.f_n:] = np.maximum(-dev, 0.0)
        return sol

    def set_cost(self, cost: np.ndarray) -> None:
        self.cost = cost
        self.h.changeColsCost(self.n_col, np.arange(self.n_col, dtype=np.int32), cost)

    def run(self, time_limit: float, start: list[Move] | None,
            ) -> tuple[list[Move] | None, str, float, float]:
        """Run HiGHS; return (moves or None, status, gap, dual bound).

        Work-around: with a user start solution HiGHS 1.16 can report an
        improved objective after presolve yet hand back the start solution
        (seen on tiny models).  When the returned solution does not attain the
        reported objective, the solve is repeated with presolve off."""
        h = self.h
        t_end = time.perf_counter() + max(float(time_limit), 1e-3)
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        if start is not None:
            sol = self.full_solution(start)
            h.setSolution(self.n_col, np.arange(self.n_col, dtype=np.int32), sol)
        h.run()
        info = h.getInfo()
        if info.primal_solution_status == 2:
            got = float(np.dot(self.cost, np.asarray(h.getSolution().col_value)))
            rep = float(info.objective_function_value)
            left = t_end - time.perf_counter()
            if got > rep + 1e-6 * max(1.0, abs(rep)) + 0.5 and left > 0.01:
                h.setOptionValue("presolve", "off")
                h.setOptionValue("time_limit", left)
                if start is not None:
                    h.setSolution(self.n_col, np.arange(self.n_col, dtype=np.int32),
                                  self.full_solution(start))
                h.run()
                h.setOptionValue("presolve", "choose")
        ms = h.getModelStatus()
        info = h.getInfo()
        if ms == highspy.HighsModelStatus.kOptimal:
            status = "optimal"
        elif ms == highspy.HighsModelStatus.kTimeLimit:
            status = "time_limit"
        else:
            status = h.modelStatusToString(ms).lower().replace(" ", "_")
        moves: list[Move] | None = None
        if info.primal_solution_status == 2:  # feasible
            moves = self.moves_of_x(np.asarray(h.getSolution().col_value))
        return moves, status, float(info.mip_gap), float(info.mip_dual_bound)


def _stage2_value(problem: Problem, moves: list[Move], eps: float) -> float:
    totals = problem.totals
    val = float(sum(int(totals[g, f]) for g, f, _ in moves)) + eps * len(moves)
    target = problem.target_array()
    if target is not None:
        after = apply_moves(totals, moves).sum(axis=0)
        val += problem.policy.target_weight * float(np.abs(after - target).sum())
    return val


def _exact_curtailment(problem: Problem, moves: list[Move], deadline: float) -> list[Cell]:
    """Greedy curtailment, then a knapsack-cover MIP for frames it overshoots."""
    moved = apply_moves(problem.totals, moves)
    cap = problem.capacity
    greedy = plan_curtailment(moved, cap)
    if not greedy:
        return greedy
    load = moved.sum(axis=0)
    excess = load - cap
    by_frame: dict[int, list[Cell]] = {}
    for g, f in greedy:
        by_frame.setdefault(f, []).append((g, f))
    frames = [f for f, cells in by_frame.items()
              if sum(int(moved[g, ff]) for g, ff in cells) > int(excess[f])]
    remaining = deadline - time.perf_counter()
    if not frames or remaining < 0.05:
        return greedy
    # one block-diagonal MIP: min sum a y  s.t.  sum_{g in frame} a y >= excess
    ys_g: list[int] = []
    ys_f: list[int] = []
    for f in frames:
        gs = np.flatnonzero(moved[:, f] > 0).tolist()
        ys_g += gs
        ys_f += [f] * len(gs)
    n = len(ys_g)
    a = moved[np.asarray(ys_g), np.asarray(ys_f)].astype(np.float64)
    frow = {f: i for i, f in enumerate(frames)}
    r = np.asarray([frow[f] for f in ys_f], dtype=np.int32)
    # tiny tie-break towards lower group index keeps the choice deterministic
    cost = a + 1e-6 * (np.asarray(ys_g, dtype=np.float64) + 1) / (problem.n_groups + 1)
    starts = np.arange(n, dtype=np.int32)
    h = new_highs()
    h.passModel(
        n, len(frames), n, 1, 1, 0.0, cost, np.zeros(n), np.ones(n),
        np.asarray([float(excess[f]) for f in frames]), np.full(len(frames), np.inf),
        starts, r, a, np.ones(n, dtype=np.int32),
    )
    h.setOptionValue("time_limit", max(remaining, 1e-3))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.5)
    h.run()
    if h.getInfo().primal_solution_status != 2:
        return greedy
    y = np.asarray(h.getSolution().col_value) > 0.5
    out = [c for c in greedy if c[1] not in frow]
    for f in frames:
        pick = [(ys_g[i], f) for i in range(n) if ys_f[i] == f and y[i]]
        mip_e = sum(int(moved[g, f]) for g, _ in pick)
        gr_e = sum(int(moved[g, f]) for g, _ in by_frame[f])
        ok = mip_e >= int(excess[f])
        out.extend(pick if ok and mip_e < gr_e else by_frame[f])
    out.sort(key=lambda c: (c[1], c[0]))
    return out


def solve_exact(problem: Problem, *, warm_start: bool = True) -> Result:
    """Lexicographic MIP (see the module docstring) within the time limit."""
    t0 = time.perf_counter()
    deadline = t0 + problem.policy.time_limit_s
    totals = problem.totals
    cap = problem.capacity
    before = overload_wh(totals.sum(axis=0), cap)

    start: list[Move] = []
    if warm_start:
        from .heuristic import solve_heuristic

        start = solve_heuristic(problem).moves

    cand = _candidates(problem)
    target = problem.target_array()
    if cand.g.shape[0] == 0 or (before == 0 and target is None):
        # nothing can move, or nothing needs to: doing nothing is optimal
        return finish(problem, [], solver="exact", t_start=t0, status="optimal",
                      mip_gap=0.0, best_bound=float(before))

    model = _Model(problem, cand)
    h = model.h
    statuses: list[str] = []

    # ---- stage 1: min overload ------------------------------------------
    if before == 0:
        moves1: list[Move] = []
        o1 = 0
        bound1 = 0.0
        gap1 = 0.0
        stage1_status = "optimal"
    else:
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.999)
        budget = 0.6 * (deadline - time.perf_counter())
        got, stage1_status, gap1, bound1 = model.run(budget, start if warm_start else [])
        moves1 = got if got is not None else (start if warm_start else [])
        o1 = overload_wh(apply_moves(totals, moves1).sum(axis=0), cap)
        if warm_start:
            o_start = overload_wh(apply_moves(totals, start).sum(axis=0), cap)
            if o_start < o1 or (o_start == o1 and got is None):
                moves1, o1 = start, o_start
        if stage1_status == "optimal":
            gap1 = 0.0
            bound1 = float(o1)
    statuses.append(stage1_status)

    # ---- stage 2: min moved energy (+ target deviation, + move count) ----
    eps = 1.0 / (model.nx + 1)
    cost = np.zeros(model.n_col)
    cost[:model.nx] = cand.s.astype(np.float64) + eps
    if target is not None:
        cost[model.nx + model.f_n:] = problem.policy.target_weight
    model.set_cost(cost)
    o_idx = np.arange(model.nx, model.nx + model.f_n, dtype=np.int32)
    h.addRow(-np.inf, float(o1) + 0.5, model.f_n, o_idx, np.ones(model.f_n))
    h.setOptionValue("mip_rel_gap", 1e-4)
    h.setOptionValue("mip_abs_gap", 1.0)
    incumbent = moves1
    if (warm_start and overload_wh(apply_moves(totals, start).sum(axis=0), cap) <= o1
            and _stage2_value(problem, start, eps) < _stage2_value(problem, incumbent, eps)):
        incumbent = start
    budget = 0.9 * (deadline - time.perf_counter())
    gap2: float | None = None
    if budget > 0.01:
        got2, stage2_status, gap2, _ = model.run(budget, incumbent)
        if got2 is not None:
            o2 = overload_wh(apply_moves(totals, got2).sum(axis=0), cap)
            if o2 <= o1 and (_stage2_value(problem, got2, eps)
                             <= _stage2_value(problem, incumbent, eps)):
                incumbent = got2
    else:
        stage2_status = "time_limit"
    statuses.append(stage2_status)

    # ---- stage 3: curtailment ---------------------------------------------
    curtail: list[Cell] = []
    if problem.policy.allow_curtail:
        curtail = _exact_curtailment(problem, incumbent, deadline)

    if all(s == "optimal" for s in statuses):
        status = "optimal"
    elif "time_limit" in statuses:
        status = "time_limit"
    else:
        status = next(s for s in statuses if s != "optimal")
    mip_gap = gap1 if stage1_status != "optimal" else gap2  # None: stage 2 never ran
    best_bound: float | None = float(bound1) if np.isfinite(bound1) else None
    if best_bound is not None:
        best_bound = min(max(0.0, best_bound), float(o1))
    return finish(problem, incumbent, solver="exact", t_start=t0, status=status,
                  mip_gap=mip_gap, best_bound=best_bound, curtail=curtail)
