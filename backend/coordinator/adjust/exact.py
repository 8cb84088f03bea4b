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

Solved lexicographically, all before the caller's ``deadline`` (a
:func:`time.monotonic` value; model building included: HiGHS gets only the
time left, minus a small reserve for reading the solution back):

1. ``min sum_f o[f] + eps1 * sum_j s_j x_j`` (overload that moves cannot remove; the
   tie-break ``eps1 = 0.5 / (sum_j s_j + 1)`` is worth less than half a Wh in all, so among
   plans of equal overload the one moving less wins and stage 2 starts from it).  The overload
   is integral at integral ``x``, so HiGHS runs with an absolute gap of 0.499: the incumbent's
   overload is then optimal, and the overload bound is ``floor(dual bound - 0.5) + 1``.
2. add ``sum_f o[f] <= o1 + 0.5`` (``o1`` = stage-1 incumbent; the 0.5 is
   the tolerance, below 1 Wh) and ``min sum_j (s_j + eps) x_j +
   target_weight * sum_f (dp[f] + dm[f])`` with ``eps = 1 / (n_moves + 1)``,
   so the move count only breaks ties between equal energies.
3. curtailment: the fair, minimal rule of :func:`model.plan_curtailment`
   (it curtails exactly what the moves leave over, so it needs no search).

``start`` (optional) is a plan handed to HiGHS as the first incumbent (the
portfolio passes the heuristic's); without it the model runs cold.  The
result reports proven bounds: ``best_bound`` on the overload, and when stage 1
is proven optimal ``moved_bound_wh`` (stage 2's dual bound, less the move
count term) on the moved energy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np

from .highs import Interrupter, new_highs, set_lp_time_limit, to_csc
from .model import (
    IntArray,
    Move,
    Problem,
    Result,
    apply_moves,
    finish,
    overload_wh,
    window_offsets,
)

__all__ = ["Candidates", "MipModel", "candidate_count", "candidates", "moved_energy_bound",
           "solve_exact"]

#: seconds kept back from HiGHS for reading its solution and building the result
RESERVE_S = 0.15
#: HiGHS's own time limit first; its interrupt callbacks stop it this much later
INTERRUPT_GRACE_S = 0.05
#: a HiGHS call still busy this long before the deadline is left behind (and told to stop), so
#: that the incumbent so far is turned into a result before the deadline: the portfolio waits
#: for this solver until the deadline and not a moment longer
HANDBACK_S = 0.1
#: the neighbourhood search's time slice per sub-model, and the least time worth a slice.
#: Almost every step of a 10-50 group day's stage 2 improves the plan, so the number of steps
#: decides: 0.25 s and a first neighbourhood of 150 candidates did better than 0.5 s and 300
#: on most of 21 days of 10-200 groups (docs/adjustment.md, "Neighbourhood search")
LNS_SLICE_S = 0.25
LNS_MIN_SLICE_S = 0.05
#: candidates set free in the search's first neighbourhood
LNS_START_FREE = 150
#: with ``improve``, the share of a stage's time the whole model gets first (it may prove the
#: start optimal, or find better at once); the neighbourhood search takes most of the rest and
#: the whole model, warm-started from the search's plan, the last ``FINAL_SHARE`` (its bound)
PROBE_SHARE = 0.15
FINAL_SHARE = 0.25
#: from this many candidate moves on (about 100 groups), the portfolio's whole-model runs go
#: without HiGHS's presolve: it takes 0.4 s at 8,000 candidates and 2-7 s at 15,000-43,000
#: (100-200 groups; longer on a loaded machine), most or all of a stage's first run, which then
#: ends before searching at all (a 200-group curtailment day: presolve on, the heuristic's plan
#: 8.1 % above the overload bound after the whole 10 s; off, 0.9-1.6 %).  Below it presolve is
#: cheap and its effect varies by day (a 20-group day finds its plan without overload only with
#: it), so it stays on.  The neighbourhood search's sub-models keep it: there it removes the
#: fixed columns.  Bound-only runs (no ``improve``) keep it everywhere.
PRESOLVE_OFF_FROM = 8_000
#: below ``PRESOLVE_OFF_FROM``, with ``improve``, stage 1's whole-model time is split between a
#: run with presolve and one without, started from the first's plan: which of the two finds the
#: least overload varies by day (a 10-group curtailment day: 162.2 kWh with presolve, 155.3 kWh,
#: the proven minimum, without; a 20-group day reaches zero overload only with it).  Each gets
#: this share of stage 1's time (together the half a single run had)
STAGE1_SPLIT_SHARE = 0.25
#: with ``improve``, stage 1 first runs the neighbourhood search with fill steps from the
#: caller's plan for at most this share of its time, and stops it after
#: ``FILL_STALL_STEPS`` steps in a row without a better plan (``MipModel.fill_neighbourhood``)
FILL_SHARE = 0.6
#: ... but only from a plan within this much of the overload bound: far above it (a 100-group
#: 70 % day's heuristic plan, 7.8 % above) the fill steps are slow and the whole model's runs
#: remove more overload in the same time
FILL_NEAR_PCT = 1.0
FILL_STALL_STEPS = 3
#: a fill step's time slice: its sub-model (about 1,500 candidates on a 200-group day) takes
#: 0.3-0.6 s, and one step can remove all the overload a plan has above the least
FILL_SLICE_S = 1.0

@dataclass
class Candidates:
    g: IntArray
    f: IntArray
    t: IntArray
    s: IntArray
    cell: IntArray  # cell index (g * F + f) of each candidate


def candidate_count(problem: Problem) -> int:
    """Number of binary variables of the model (candidate moves), without building it."""
    totals = problem.totals
    f_n = int(totals.shape[1])
    n = 0
    for m in np.unique(problem.magnification).tolist():
        cells = (totals[problem.magnification == m] > 0).sum(axis=0)
        for d in window_offsets(int(m), problem.policy.window):
            n += int(cells[max(0, -d):min(f_n, f_n - d)].sum())
    return n


def candidates(problem: Problem) -> Candidates:
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
    return Candidates(g=g, f=f, t=t, s=totals[g, f].astype(np.int64), cell=g * f_n + f)


class MipModel:
    """The MIP, kept in one Highs instance across the stages."""

    def __init__(self, problem: Problem, cand: Candidates,
                 stop: threading.Event | None = None, presolve: bool = True) -> None:
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
        self.set_presolve(presolve)
        # HiGHS checks its own time limit rarely in some phases: the interrupt callbacks stop
        # it at the deadline (``interrupt.stop_at``)
        self.interrupt = Interrupter(h, stop)
        self.abandoned = False
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

    def set_presolve(self, on: bool) -> None:
        """HiGHS's presolve on ("choose") or off for the runs that follow."""
        self.presolve = "choose" if on else "off"
        self.h.setOptionValue("presolve", self.presolve)

    def set_cost(self, cost: np.ndarray) -> None:
        self.cost = cost
        self.h.changeColsCost(self.n_col, np.arange(self.n_col, dtype=np.int32), cost)

    def _bounded_run(self, hard_end: float) -> bool:
        """``h.run()`` in a thread, waited for until ``hard_end`` at most.  False: HiGHS is
        still busy (a phase that checks neither its time limit nor the interrupt callbacks);
        it is told to stop and left to finish on its own, and this model is not used again."""
        # not a daemon: an interpreter exiting while HiGHS runs would abort; told to stop, it
        # ends at its next interrupt check
        th = threading.Thread(target=self.h.run, name="highs")
        th.start()
        th.join(max(0.0, hard_end - time.monotonic()))
        if th.is_alive():
            self.interrupt.stop_at = float("-inf")
            self.abandoned = True
            return False
        return True

    def run(self, time_limit: float, start: list[Move] | None, hard_end: float,
            ) -> tuple[list[Move] | None, str, float, float]:
        """Run HiGHS; return (moves or None, status, gap, dual bound).  ``hard_end`` (monotonic)
        is when the caller must have its answer, whatever HiGHS does.

        Work-around: with a user start solution HiGHS 1.16 can report an
        improved objective after presolve yet hand back the start solution
        (seen on tiny models).  When the returned solution does not attain the
        reported objective, the solve is repeated with presolve off."""
        h = self.h
        t_end = time.monotonic() + max(float(time_limit), 1e-3)
        self.interrupt.stop_at = t_end + INTERRUPT_GRACE_S
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        if start is not None:
            sol = self.full_solution(start)
            h.setSolution(self.n_col, np.arange(self.n_col, dtype=np.int32), sol)
        if not self._bounded_run(hard_end):
            return None, "time_limit", float("inf"), float("-inf")
        info = h.getInfo()
        if info.primal_solution_status == 2:
            got = float(np.dot(self.cost, np.asarray(h.getSolution().col_value)))
            rep = float(info.objective_function_value)
            left = t_end - time.monotonic()
            if got > rep + 1e-6 * max(1.0, abs(rep)) + 0.5 and left > 0.01:
                h.setOptionValue("presolve", "off")
                h.setOptionValue("time_limit", left)
                if start is not None:
                    h.setSolution(self.n_col, np.arange(self.n_col, dtype=np.int32),
                                  self.full_solution(start))
                if not self._bounded_run(hard_end):
                    return None, "time_limit", float("inf"), float("-inf")
                h.setOptionValue("presolve", self.presolve)
        ms = h.getModelStatus()
        info = h.getInfo()
        if ms == highspy.HighsModelStatus.kOptimal:
            status = "optimal"
        elif ms in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
            status = "time_limit"
        else:
            status = h.modelStatusToString(ms).lower().replace(" ", "_")
        moves: list[Move] | None = None
        if info.primal_solution_status == 2:  # feasible
            moves = self.moves_of_x(np.asarray(h.getSolution().col_value))
        return moves, status, float(info.mip_gap), float(info.mip_dual_bound)


    def relaxation(self, time_limit: float, hard_end: float) -> np.ndarray | None:
        """The x of the linear relaxation's optimum under the current cost and rows (None when
        not solved in ``time_limit``); the model is a MIP again afterwards."""
        nx = self.nx
        idx = np.arange(nx, dtype=np.int32)
        h = self.h
        h.changeColsIntegrality(nx, idx, np.zeros(nx, dtype=np.uint8))
        set_lp_time_limit(h, time_limit)
        self.interrupt.stop_at = time.monotonic() + max(float(time_limit), 1e-3) + INTERRUPT_GRACE_S
        done = self._bounded_run(hard_end)
        out: np.ndarray | None = None
        if done and h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
            out = np.asarray(h.getSolution().col_value)[:nx].copy()
        if not self.abandoned:
            h.changeColsIntegrality(nx, idx, np.ones(nx, dtype=np.uint8))
        return out

    def fill_neighbourhood(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """The candidates free in a "fill" step of the search (None: no such step): one frame
        ``r`` below its capacity under plan ``x`` that a candidate from an overloaded frame can
        still move load into, picked at random, and every frame with such a candidate into
        ``r``: every candidate leaving or entering any of them.  Why: at the least overload
        every frame a move can reach is filled to its capacity to the Wh, and the whole
        model's plans reach that by moving much more than needed (a 200-group curtailment day:
        11 % above the moved-energy bound after 10 s).  The heuristic's plan moves little but
        leaves a few such frames short; one sub-model over the frames that can fill one of them
        (about 1,400 candidates there, solved in 0.3 s) fills it exactly."""
        c = self.cand
        s = c.s.astype(np.float64) * x
        after = (self.load - np.bincount(c.f, weights=s, minlength=self.f_n)
                 + np.bincount(c.t, weights=s, minlength=self.f_n))
        cap = self.problem.capacity
        into = (after[c.t] < cap[c.t]) & (after[c.f] > cap[c.f]) & (x < 0.5)
        if not into.any():
            return None
        r = int(rng.choice(np.unique(c.t[into])))
        frames = np.zeros(self.f_n, dtype=bool)
        frames[r] = True
        frames[c.f[into & (c.t == r)]] = True
        return np.asarray(frames[c.f] | frames[c.t])

    def neighbourhood_search(self, moves: list[Move], until: float, hard_end: float,
                             key: Callable[[list[Move]], tuple[float, ...]],
                             enough: Callable[[tuple[float, ...]], bool] | None = None,
                             fill: int = 0, stall: int | None = None) -> list[Move]:
        """Large-neighbourhood search around ``moves`` under the model's current cost and rows
        until ``until`` (monotonic): each step fixes every candidate outside a neighbourhood
        (a few groups, or a window of frames) at its value in the incumbent and lets HiGHS
        solve what is left, started from the incumbent, for a short slice; a better plan under
        ``key`` (smaller) becomes the incumbent.  The neighbourhood grows while its sub-models
        are solved to optimality in their slice and shrinks when they are not.  Why: on 10-200
        group days the whole model's branch and bound rarely improves a good start within
        seconds (it spends them on the bound), while small sub-models are solved in
        milliseconds each (docs/adjustment.md, "Exact model").  ``enough`` (optional): the
        search stops once it holds for the incumbent's key (a proven bound reached).  ``fill``
        (stage 1): every ``fill``-th step (0: none) frees the frames around one frame left below
        its capacity that an overloaded frame can still move load into
        (:meth:`fill_neighbourhood`), when there is one, for a longer slice (``FILL_SLICE_S``).
        ``stall`` (optional): the search stops after that many steps in a row without a better
        plan."""
        c = self.cand
        nx = self.nx
        if nx == 0:
            return moves
        groups = np.unique(c.g)
        n_g = int(groups.shape[0])
        rng = np.random.default_rng(len(moves) * 7919 + nx)
        idx = np.arange(nx, dtype=np.int32)
        ones = np.ones(nx)
        per_group = np.bincount(c.g, minlength=int(groups.max()) + 1)
        best, best_key = moves, key(moves)
        whole_presolve = self.presolve == "choose"
        self.set_presolve(True)  # it removes the fixed columns of each sub-model
        target = float(LNS_START_FREE)  # candidates set free, adapted to what solves in a slice
        x_lp: np.ndarray | None = None  # the relaxation's optimum, computed at the first need
        step = 0
        since = 0  # steps since the last better plan
        while not self.abandoned and (self.interrupt.stop is None
                                      or not self.interrupt.stop.is_set()):
            if enough is not None and enough(best_key):
                break
            if stall is not None and since >= stall:
                break
            left = until - time.monotonic()
            if left < LNS_MIN_SLICE_S:
                break
            x = self.x_of_moves(best)
            kind = step % 3
            fill_free = self.fill_neighbourhood(x, rng) if fill and step % fill == 0 else None
            if fill_free is not None:
                kind = 3
            if kind == 2 and x_lp is None:
                x_lp = self.relaxation(min(LNS_SLICE_S, left), hard_end)
                left = until - time.monotonic()
                if x_lp is None or left < LNS_MIN_SLICE_S:
                    kind, x_lp = 0, np.zeros(0)
            if kind == 3 and fill_free is not None:
                free = fill_free
            elif kind == 2 and x_lp is not None and x_lp.shape[0] == nx:
                # where the plan and the relaxation's optimum disagree (the relaxation bounds
                # the moved energy within a few % on these days, so its choices are mostly
                # right): those candidates, topped up at random to ``target``, are free
                differ = np.flatnonzero(np.abs(x_lp - x) > 0.1)
                if differ.shape[0] > target:
                    differ = rng.choice(differ, size=int(target), replace=False)
                free = np.zeros(nx, dtype=bool)
                free[differ] = True
                extra = int(target) - int(differ.shape[0])
                if extra > 0:
                    free[rng.choice(nx, size=min(extra, nx), replace=False)] = True
            elif kind == 0 or n_g < 3:
                # a window of frames around a random one, grown until it holds ``target``
                # candidates: every candidate leaving or entering it is free
                mid = int(rng.integers(0, self.f_n))
                lo_f, hi_f = mid, mid + 1
                while True:
                    free = (((c.f >= lo_f) & (c.f < hi_f)) | ((c.t >= lo_f) & (c.t < hi_f)))
                    if int(free.sum()) >= target or (lo_f == 0 and hi_f == self.f_n):
                        break
                    lo_f, hi_f = max(0, lo_f - 1), min(self.f_n, hi_f + 1)
            else:
                # random groups until they hold ``target`` candidates
                order = rng.permutation(groups)
                k = int(np.searchsorted(np.cumsum(per_group[order]), target)) + 1
                free = np.isin(c.g, order[:k])
            step += 1
            lo = np.where(free, 0.0, x)
            hi = np.where(free, ones, x)
            self.h.changeColsBounds(nx, idx, lo, hi)
            got, status, _, _ = self.run(
                min(FILL_SLICE_S if kind == 3 else LNS_SLICE_S, left), best, hard_end)
            since += 1
            if got is not None and key(got) < best_key:
                best, best_key = got, key(got)
                since = 0
            if status == "optimal":
                target = min(float(nx), target * 1.25)
            else:
                target = max(20.0, target * 0.7)
        self.h.changeColsBounds(nx, idx, np.zeros(nx), ones)
        self.set_presolve(whole_presolve)
        return best


def _stage2_value(problem: Problem, moves: list[Move], eps: float) -> float:
    totals = problem.totals
    val = float(sum(int(totals[g, f]) for g, f, _ in moves)) + eps * len(moves)
    target = problem.target_array()
    if target is not None:
        after = apply_moves(totals, moves).sum(axis=0)
        val += problem.policy.target_weight * float(np.abs(after - target).sum())
    return val



def solve_exact(problem: Problem, *, deadline: float | None = None,
                start: list[Move] | None = None, overload_bound: float | None = None,
                stop: threading.Event | None = None, improve: bool = False) -> Result:
    """Lexicographic MIP (see the module docstring), returning before ``deadline``
    (default: ``policy.time_limit_s`` from now) up to HiGHS's own overshoot.

    ``overload_bound``: a proven lower bound on the overload (the LP's); when ``start``
    reaches it, stage 1 is already solved and stage 2 gets all the time.  ``stop`` (optional):
    once set, no further step starts and a running HiGHS call is interrupted (the portfolio
    sets it when it stops waiting).  ``improve``: spend part of each stage's time on a
    neighbourhood search for better plans (:meth:`MipModel.neighbourhood_search`) rather than all
    of it on the whole model's search; the bounds come from the whole model's runs only.  The
    portfolio sets it; a bound-only run (the benchmark's cold run) does not."""
    t0 = time.monotonic()
    if deadline is None:
        deadline = t0 + problem.policy.time_limit_s
    totals = problem.totals
    cap = problem.capacity
    before = overload_wh(totals.sum(axis=0), cap)
    cand = candidates(problem)
    target = problem.target_array()
    if cand.g.shape[0] == 0 or (before == 0 and target is None):
        # nothing can move, or nothing needs to: doing nothing is optimal
        return finish(problem, [], solver="exact", t_start=t0, status="optimal",
                      mip_gap=0.0, best_bound=float(before), moved_bound=0.0)

    def left() -> float:
        if stop is not None and stop.is_set():
            return -1.0
        return deadline - time.monotonic() - RESERVE_S

    seed = list(start) if start is not None else []
    o_seed = overload_wh(apply_moves(totals, seed).sum(axis=0), cap)
    if left() <= 0.01:
        return finish(problem, seed, solver="exact", t_start=t0, status="time_limit",
                      best_bound=None)
    model = MipModel(problem, cand, stop,
                     presolve=not (improve and cand.g.shape[0] >= PRESOLVE_OFF_FROM))
    h = model.h
    statuses: list[str] = []

    # ---- stage 1: min overload ------------------------------------------
    if before == 0 or (overload_bound is not None and o_seed <= overload_bound + 0.5):
        moves1: list[Move] = seed if before else []
        o1 = o_seed if before else 0
        bound1 = float(o1)
        gap1 = 0.0
        stage1_status = "optimal"
    elif left() <= 0.01:
        moves1, o1, bound1, gap1, stage1_status = seed, o_seed, float("-inf"), float("inf"), \
            "time_limit"
    else:
        # the overload plus a tie-break on the moved energy, worth less than half a Wh in all:
        # among plans of equal overload HiGHS keeps the one moving less (stage 2 starts there)
        eps1 = 0.5 / (float(cand.s.sum()) + 1.0)
        cost1 = model.cost.copy()
        cost1[:model.nx] = eps1 * cand.s.astype(np.float64)
        model.set_cost(cost1)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.499)
        budget = 0.6 * left()
        t1_end = time.monotonic() + budget

        def key1(m: list[Move]) -> tuple[float, ...]:
            return (overload_wh(apply_moves(totals, m).sum(axis=0), cap),
                    _stage2_value(problem, m, 0.0))

        got: list[Move] | None
        start1 = seed
        # fill steps only where moves cannot remove all overload (a proven bound above 0): there
        # every reachable frame must be filled to the Wh.  Where all can go, a frame below its
        # capacity needs no exact fill, and the whole model's runs do better first (a 20-group
        # 70 % day: 0.7 kWh left with fill steps first, none without)
        lp_bound = float(overload_bound) if overload_bound is not None else 0.0
        fill = improve and lp_bound > 0
        if fill and o_seed <= lp_bound * (1.0 + FILL_NEAR_PCT / 100.0):
            # the fill steps first, from the caller's plan (``FILL_SHARE``): they often reach
            # the least overload while moving little more than that plan (``fill_neighbourhood``)
            def at_lp(k: tuple[float, ...]) -> bool:
                return k[0] <= lp_bound

            start1 = model.neighbourhood_search(
                seed, min(t1_end, time.monotonic() + FILL_SHARE * budget),
                deadline - HANDBACK_S, key1, at_lp, fill=1, stall=FILL_STALL_STEPS)
        key_start = key1(start1)
        split = improve and model.presolve == "choose"
        if fill and key_start[0] <= lp_bound:
            got, stage1_status, gap1, bound1 = start1, "optimal", 0.0, lp_bound
        else:
            # the fill steps' time is stage 1's too: the whole model gets what is left of it
            # (at least a slice)
            whole = min(budget * (STAGE1_SPLIT_SHARE if split else 0.5 if improve else 1.0),
                        max(t1_end - time.monotonic(), LNS_SLICE_S) / (2 if split else 1))
            got, stage1_status, gap1, bound1 = model.run(whole, start1, deadline - HANDBACK_S)
        if split and stage1_status != "optimal" and not model.abandoned:
            # the same model without presolve, from the first run's plan (STAGE1_SPLIT_SHARE)
            model.set_presolve(False)
            got_b, status_b, gap_b, bound_b = model.run(
                whole, got if got is not None else start1, deadline - HANDBACK_S)
            model.set_presolve(True)
            if got_b is not None and (got is None or key1(got_b) <= key1(got)):
                got = got_b
            if np.isfinite(bound_b) and not bound_b <= bound1:  # both bound the same model
                bound1, gap1 = bound_b, gap_b
            if status_b == "optimal":
                stage1_status = "optimal"
        if np.isfinite(bound1):
            # overload = objective - tie-break > bound - 0.5, and the overload is integral
            bound1 = float(np.floor(bound1 - 0.5 - 1e-6 * max(1.0, abs(bound1))) + 1.0)
        moves1 = got if got is not None else start1
        k1 = key1(moves1)
        if key_start < k1:
            moves1, k1 = start1, key_start
        o1 = int(k1[0])  # key1's first part is the plan's overload
        if overload_bound is not None:
            # both bound the same overload: the caller's (the LP's, often the higher one on
            # curtailment days) may already prove a plan that the whole model has not
            bound1 = (max(bound1, float(overload_bound)) if np.isfinite(bound1)
                      else float(overload_bound))
        if improve and stage1_status != "optimal" and not (np.isfinite(bound1)
                                                           and o1 <= bound1):
            known = bound1

            def reached(k: tuple[float, ...]) -> bool:
                # stage 1's own objective is the overload: once it is at its proven bound
                # the rest of the time is stage 2's
                return bool(np.isfinite(known) and k[0] <= known)

            moves1 = model.neighbourhood_search(moves1, t1_end, deadline - HANDBACK_S, key1,
                                                reached, fill=2 if fill else 0)
            o1 = overload_wh(apply_moves(totals, moves1).sum(axis=0), cap)
        if np.isfinite(bound1) and o1 <= bound1:
            stage1_status = "optimal"
        if stage1_status == "optimal":
            gap1 = 0.0
            bound1 = float(o1)
    statuses.append(stage1_status)

    # ---- stage 2: min moved energy (+ target deviation, + move count) ----
    eps = 1.0 / (model.nx + 1)
    incumbent = moves1
    if o_seed <= o1 and _stage2_value(problem, seed, eps) < _stage2_value(problem, moves1, eps):
        incumbent = seed
    gap2: float | None = None
    moved_bound: float | None = None
    budget = left()
    if budget > 0.01 and not model.abandoned:
        cost = np.zeros(model.n_col)
        cost[:model.nx] = cand.s.astype(np.float64) + eps
        if target is not None:
            cost[model.nx + model.f_n:] = problem.policy.target_weight
        model.set_cost(cost)
        o_idx = np.arange(model.nx, model.nx + model.f_n, dtype=np.int32)
        h.addRow(-np.inf, float(o1) + 0.5, model.f_n, o_idx, np.ones(model.f_n))
        h.setOptionValue("mip_rel_gap", 1e-4)
        h.setOptionValue("mip_abs_gap", 1.0)

        def take(got2: list[Move] | None, incumbent: list[Move]) -> list[Move]:
            if got2 is not None:
                o2 = overload_wh(apply_moves(totals, got2).sum(axis=0), cap)
                if o2 <= o1 and (_stage2_value(problem, got2, eps)
                                 <= _stage2_value(problem, incumbent, eps)):
                    return got2
            return incumbent

        t2_end = time.monotonic() + budget
        got2, stage2_status, gap2, bound2 = model.run(
            budget * (PROBE_SHARE if improve else 1.0), incumbent, deadline - HANDBACK_S)
        incumbent = take(got2, incumbent)
        if improve and stage2_status != "optimal" and not model.abandoned:
            def key2(m: list[Move]) -> tuple[float, ...]:
                return (_stage2_value(problem, m, eps),)
            incumbent = model.neighbourhood_search(
                incumbent, t2_end - FINAL_SHARE * budget, deadline - HANDBACK_S, key2)
            last = t2_end - time.monotonic()
            if last > LNS_MIN_SLICE_S and not model.abandoned:
                got2, stage2_status, gap2, b2 = model.run(last, incumbent, deadline - HANDBACK_S)
                incumbent = take(got2, incumbent)
                if np.isfinite(b2):
                    bound2 = max(bound2, b2) if np.isfinite(bound2) else b2
        if stage1_status == "optimal" and target is None and np.isfinite(bound2):
            # eps * (number of moves) < 1 Wh: the energy is at least the bound less 1
            moved_bound = max(0.0, float(bound2) - 1.0)
    else:
        stage2_status = "time_limit"
    statuses.append(stage2_status)

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
                  mip_gap=mip_gap, best_bound=best_bound, moved_bound=moved_bound)


def moved_energy_bound(problem: Problem, overload: float, *, deadline: float,
                       ) -> tuple[float | None, str]:
    """A proven lower bound on the energy any plan of overload at most ``overload`` moves:
    stage 2 alone, run *cold* (no start) with ``sum_f o[f] <= overload + 0.5`` until
    ``deadline`` (monotonic).  Used by the benchmark where the minimal overload is already
    proven (a plan attains a proven overload bound) but the cold run's stage 1 did not finish,
    so it gave no moved-energy bound.  Returns (bound or None, HiGHS status); None also with a
    target profile (stage 2 then minimises more than the moved energy)."""
    cand = candidates(problem)
    if problem.target_array() is not None:
        return None, "target"
    if cand.g.shape[0] == 0:
        return 0.0, "optimal"
    model = MipModel(problem, cand)
    h = model.h
    eps = 1.0 / (model.nx + 1)
    cost = np.zeros(model.n_col)
    cost[:model.nx] = cand.s.astype(np.float64) + eps
    model.set_cost(cost)
    o_idx = np.arange(model.nx, model.nx + model.f_n, dtype=np.int32)
    h.addRow(-np.inf, float(overload) + 0.5, model.f_n, o_idx, np.ones(model.f_n))
    h.setOptionValue("mip_rel_gap", 1e-4)
    h.setOptionValue("mip_abs_gap", 1.0)
    left = deadline - time.monotonic() - RESERVE_S
    if left <= 0.01:
        return None, "time_limit"
    _, status, _, bound = model.run(left, None, deadline)
    if status == "infeasible":
        # no plan reaches ``overload``: every plan's moved energy is unbounded below it
        raise ValueError(f"no plan has an overload of at most {overload} Wh")
    if not np.isfinite(bound):
        return None, status
    # eps * (number of moves) < 1 Wh: the energy is at least the bound less 1
    return max(0.0, float(bound) - 1.0), status

