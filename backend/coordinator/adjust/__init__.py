"""Adjustment engine: bring every frame's total load under the supply capacity
by whole-frame moves of a group's load within its contract-magnification
window, curtailing only as a last resort.

    from backend.coordinator.adjust import Problem, Policy, Result, solve
    result = solve(Problem(totals, capacity, magnification, Policy()), solver="heuristic")

See docs/adjustment.md for the window definition, the move semantics and the
objective.  Pure module: no I/O.
"""

from __future__ import annotations

from typing import Literal

from .model import (
    Policy,
    Problem,
    Result,
    apply_moves,
    evaluate,
    plan_curtailment,
    window,
    window_offsets,
)

__all__ = [
    "Policy",
    "Problem",
    "Result",
    "apply_moves",
    "evaluate",
    "plan_curtailment",
    "solve",
    "window",
    "window_offsets",
]


def solve(problem: Problem, solver: Literal["heuristic", "exact"] = "heuristic") -> Result:
    """Solve ``problem`` with the fast heuristic or the exact HiGHS model."""
    if solver == "heuristic":
        from .heuristic import solve_heuristic

        return solve_heuristic(problem)
    if solver == "exact":
        from .exact import solve_exact

        return solve_exact(problem)
    raise ValueError(f"unknown solver {solver!r} (expected 'heuristic' or 'exact')")
