"""Adjustment engine: bring every frame's total load under the supply capacity
by whole-frame moves of a group's load within its contract-magnification
window, curtailing (fairly, in proportion to load) only as a last resort.

    from backend.coordinator.adjust import Problem, Policy, Result, solve
    result = solve(Problem(totals, capacity, magnification, Policy()))

See docs/adjustment.md for the window definition, the move semantics and the
objective.  Pure module: no I/O; the only clock read is the deadline.
"""

from __future__ import annotations

import time
from typing import Literal

from .model import (
    KEEP_SCALE,
    Policy,
    Problem,
    Result,
    apply_moves,
    evaluate,
    gap_pct,
    plan_curtailment,
    window,
    window_offsets,
)

__all__ = [
    "KEEP_SCALE",
    "SOLVERS",
    "Policy",
    "Problem",
    "Result",
    "SolverName",
    "apply_moves",
    "evaluate",
    "gap_pct",
    "plan_curtailment",
    "solve",
    "window",
    "window_offsets",
]

SolverName = Literal["portfolio", "heuristic", "exact"]
SOLVERS: tuple[SolverName, ...] = ("portfolio", "heuristic", "exact")


def solve(problem: Problem, solver: SolverName = "portfolio",
          deadline: float | None = None) -> Result:
    """Solve ``problem`` before ``deadline`` (a :func:`time.monotonic` value; default
    ``problem.policy.time_limit_s`` from now), model building and every stage included.

    ``"portfolio"`` (default): the heuristic, then the exact model where it fits in the time
    left, the better plan of the two; ``"heuristic"``: the heuristic alone; ``"exact"``: the
    exact model alone, cold.  A deadline already past still gives a valid plan from the
    heuristic (or doing nothing from the exact solver)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (expected one of {', '.join(SOLVERS)})")
    if deadline is None:
        deadline = time.monotonic() + problem.policy.time_limit_s
    if solver == "heuristic":
        from .heuristic import solve_heuristic

        return solve_heuristic(problem, deadline=deadline)
    if solver == "exact":
        from .exact import solve_exact

        return solve_exact(problem, deadline=deadline)
    from .portfolio import solve_portfolio

    return solve_portfolio(problem, deadline=deadline)
