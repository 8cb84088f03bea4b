"""The default solver: a portfolio of the heuristic and the exact model under one deadline.

1. The heuristic runs first (fractions of a second; its guidance LP gives proven lower bounds
   on the overload and on the moved energy).  Its improvement phases stop, at the latest,
   when half the time is spent (``HEURISTIC_SHARE``): on a loaded machine, where its work
   budget takes longer than the deadline, the exact model still gets the other half.
2. When the heuristic's plan is not already proven optimal by those bounds, the exact model
   is small enough to build and search (at most ``EXACT_MAX_CANDIDATES`` candidate moves) and
   at least ``EXACT_MIN_LEFT_S`` are left, the exact model runs, started from the heuristic's
   plan, with the time left before the deadline.  It runs in a worker thread that is waited
   for until the deadline and no longer: model building, warm start and every HiGHS call
   included.  A run still busy then (a machine too loaded to build the model in time, or a
   HiGHS phase late to check its interrupt) is told to stop and left behind; the heuristic's
   plan is used.
3. The better plan under the lexicographic objective (overload, then moved energy plus target
   term, then number of moves) is returned, curtailed by the fair rule, with the best proven
   bounds of both runs (the larger bound is the better one; a bound stays valid whichever
   solver found it).

``status`` is ``"optimal"`` when the bounds prove the plan optimal in overload and moved
energy, else ``"time_limit"`` (exact ran out of time), or ``"heuristic"`` (exact did not run).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np

from .exact import candidate_count, solve_exact
from .heuristic import solve_heuristic
from .model import Move, Problem, Result, apply_moves, finish

__all__ = ["EXACT_MAX_CANDIDATES", "EXACT_MIN_LEFT_S", "HEURISTIC_SHARE", "solve_portfolio"]

#: larger models (about 1000 groups and more) are left to the heuristic: building them alone
#: takes seconds
EXACT_MAX_CANDIDATES = 60_000
#: the heuristic's improvement phases stop when this share of the time to the deadline is spent
HEURISTIC_SHARE = 0.5
#: the exact model is not started with less time than this left (it could not even be built)
EXACT_MIN_LEFT_S = 0.2


def _exact_before(problem: Problem, deadline: float, start: list[Move],
                  overload_bound: float | None) -> Result | None:
    """:func:`solve_exact` in a worker thread, waited for until ``deadline`` at most; None when
    it has not answered by then (it is told to stop, and does at its next check)."""
    box: list[Result | BaseException] = []
    stop = threading.Event()

    def work() -> None:
        try:
            box.append(solve_exact(problem, deadline=deadline, start=start,
                                   overload_bound=overload_bound, stop=stop,
                                   improve=True))
        except BaseException as e:  # handed to the caller below
            box.append(e)

    # not a daemon: an interpreter exiting while HiGHS runs would abort; told to stop, the
    # thread ends at its next check
    th = threading.Thread(target=work, name="adjust-exact")
    th.start()
    th.join(max(0.0, deadline - time.monotonic()))
    if th.is_alive():
        stop.set()
    if not box:
        return None
    got = box[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _key(problem: Problem, r: Result) -> tuple[int, float, int]:
    second = float(r.moved_wh)
    target = problem.target_array()
    if target is not None:
        after = apply_moves(problem.totals, r.moves).sum(axis=0)
        second += problem.policy.target_weight * float(np.abs(after - target).sum())
    return (r.overload_after_wh, second, len(r.moves))


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def solve_portfolio(problem: Problem, *, deadline: float | None = None) -> Result:
    """Best plan of the heuristic and the exact model before ``deadline`` (a
    :func:`time.monotonic` value; default ``policy.time_limit_s`` from now)."""
    t0 = time.monotonic()
    if deadline is None:
        deadline = t0 + problem.policy.time_limit_s
    heur = solve_heuristic(problem, deadline=deadline,
                           improve_until=t0 + HEURISTIC_SHARE * (deadline - t0))
    bound, moved_bound = heur.best_bound, heur.moved_bound_wh
    best = heur
    ran_exact = False
    exact_optimal = False
    if ((not heur.proven_optimal() or problem.target_array() is not None)
            and deadline - time.monotonic() >= EXACT_MIN_LEFT_S
            and candidate_count(problem) <= EXACT_MAX_CANDIDATES):
        ex = _exact_before(problem, deadline, heur.moves, heur.best_bound)
        ran_exact = True
        if ex is not None:
            exact_optimal = ex.status == "optimal"
            # a moved-energy bound holds only at the overload bound it came with: the LP's at
            # the LP's, the exact stage 2's at the proven optimal overload
            hb, eb = heur.best_bound, ex.best_bound
            if eb is not None and (hb is None or eb > hb):
                bound, moved_bound = eb, ex.moved_bound_wh
            elif eb is not None and eb == hb:
                moved_bound = _max(moved_bound, ex.moved_bound_wh)
            if _key(problem, ex) < _key(problem, best):
                best = ex
    if bound is not None:
        bound = min(bound, float(best.overload_after_wh))
    res = finish(problem, best.moves, solver=f"portfolio:{best.solver}", t_start=t0,
                 status="heuristic", mip_gap=best.mip_gap, best_bound=bound,
                 moved_bound=moved_bound, curtail=best.curtail)
    if exact_optimal or res.proven_optimal():
        status = "optimal"
    else:
        status = "time_limit" if ran_exact else "heuristic"
    return replace(res, status=status, runtime_s=time.monotonic() - t0)
