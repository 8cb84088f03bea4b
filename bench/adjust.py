"""Benchmark of the adjustment engine's default solver (the portfolio) against proven bounds.

    .venv/bin/python bench/adjust.py            # table on stdout
    .venv/bin/python bench/adjust.py --json     # table on stderr, JSON on stdout
    .venv/bin/python bench/adjust.py --quick    # a few small instances, 2 s budget (a test)
    .venv/bin/python bench/adjust.py --only real80/10/1,curtail/10/2 --bound-limit-retry 600
        # chosen instances (family/groups/seed, as the table names them) again, e.g. with a
        # longer bound run: how much of a gap is the plan's and how much the bound's
    .venv/bin/python bench/adjust.py --budget 10 --bound-limit 10 --bound-limit-small 20 \
        --bound-limit-retry 45

Instances (bench/daygen.py ``family_day``), seeds 1, 2, 3 (odd: weekday, flat capacity,
window "defer"; even: weekend, shaped capacity, window "symmetric"):

* realistic days at 95, 90, 85, 80 and 70 % of the peak, days needing curtailment (55 %),
  rigid plateaus, every group peaking in the same frame, peaks in the day's last hour (windows
  reaching past its end);
* 5, 10, 20, 50, 100 and 200 groups for every family and seed; 1000 and 5000 groups for a few
  (seed 1: realistic 80 %, curtailment, same frame at 1000; realistic 80 %, curtailment at 5000).

Every instance runs ``solve(problem)`` (the portfolio) with a deadline ``--budget`` seconds
ahead; when moving leaves overload (a round would regroup and solve again) it solves twice
more under the *same* deadline, as the round does.  ``wall_s_over_budget`` is the wall time of
all of it past the budget.

Scoring uses bounds computed here, independently of the plan scored: the LP relaxation's bounds
(``heuristic.lower_bounds``) and, unless they already prove the plan optimal, the exact model
run *cold* (no start) for ``--bound-limit`` seconds (up to 200 groups; ``--bound-limit-small``
for up to 20 groups, where a longer run often closes the moved-energy bound): its dual bounds. A
bound above a valid plan's value stops the run (it would be a bug). Where a gap is still above
``RETRY_GAP_PCT`` (1 %) after that, a second cold run of ``--bound-limit-retry`` seconds
tightens the weaker bound: the whole model again for the overload, or, where the overload is
proven minimal, stage 2 alone among the plans of that overload (``exact.moved_energy_bound``).
Gaps are in % of the bound (``model.gap_pct``): overload after moves vs the overload bound;
moved energy vs the moved-energy bound, only where the overload is proven minimal (else not
defined); curtailed energy vs the overload bound (any plan curtails at least the overload its
moves leave), in % of the bound but of no less than ``QUANTUM_WH`` per home of the day
(``curtail_floor_wh``): every member of a curtailed group rounds its own share down
(docs/adjustment.md), so the energy really curtailed in one frame exceeds the plan's figure by
up to one quantum per member; a difference below that is below the plan's resolution, and a
percentage of a bound of 0 Wh would be meaningless. The excess in Wh is reported as well
(``curtailed_excess_wh``). A plan within ``OPT_TOL_PCT`` (0.01 %) of both its overload and
moved-energy bounds counts as proven optimal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from backend.coordinator.adjust import Policy, Problem, Result, gap_pct, solve  # noqa: E402
from backend.coordinator.adjust.exact import moved_energy_bound, solve_exact  # noqa: E402
from backend.coordinator.adjust.heuristic import lower_bounds  # noqa: E402
from backend.coordinator.adjust.model import OPT_TOL_PCT  # noqa: E402
from bench.daygen import Family, family_day  # noqa: E402

SEEDS = (1, 2, 3)
SMALL = (5, 10, 20, 50, 100, 200)
#: (family, capacity ratio of the peak for "realistic", label)
CASES: tuple[tuple[Family, float, str], ...] = (
    ("realistic", 0.95, "real95"), ("realistic", 0.90, "real90"), ("realistic", 0.85, "real85"),
    ("realistic", 0.80, "real80"), ("realistic", 0.70, "real70"), ("curtail", 0.0, "curtail"),
    ("rigid", 0.0, "rigid"), ("same_frame", 0.0, "same_frame"), ("past_end", 0.0, "past_end"),
)
BIG = ((1000, "real80"), (1000, "curtail"), (1000, "same_frame"),
       (5000, "real80"), (5000, "curtail"))
BOUND_MAX_GROUPS = 200
#: instances up to this many groups get ``--bound-limit-small`` for their cold bound run
SMALL_BOUND_GROUPS = 20
#: the energy unit of the instances' totals: one quantum (``hems coordinator --quantum-wh``
#: default); the curtailed gap is in % of no less than one quantum per home
QUANTUM_WH = 1
RESOLVES = 2
#: a gap still above this after the first bound run gets a second, longer one
#: (``--bound-limit-retry``)
RETRY_GAP_PCT = 1.0
GOALS = {"default_overload_gap_to_bound_pct_p95": 1.0,
         "default_moved_energy_gap_to_bound_pct_p95": 2.0,
         "default_curtailed_gap_to_bound_pct_max": 3.0,
         "wall_s_over_budget_max": 0.5}


def _by_name() -> dict[str, tuple[int, int, Family, float, str]]:
    """Every instance of a full run under its name, family/groups/seed as the table prints it."""
    return {f"{lb}/{g}/{s}": (g, s, fam, r, lb) for g, s, fam, r, lb in _instances(False)}


def _instances(quick: bool, only: list[str] | None = None,
               ) -> list[tuple[int, int, Family, float, str]]:
    """The instances of a run: all, ``--quick``'s ten, or (``only``) the named ones of all, in
    the order given."""
    if only is not None:
        every = _by_name()
        return [every[n] for n in only]
    case = {label: (fam, ratio) for fam, ratio, label in CASES}
    if quick:
        return [(g, 1, case[lb][0], case[lb][1], lb)
                for g in (5, 20) for lb in ("real80", "curtail", "rigid", "same_frame",
                                             "past_end")]
    out = [(g, s, fam, ratio, label) for s in SEEDS for fam, ratio, label in CASES
           for g in SMALL]
    out += [(g, 1, case[lb][0], case[lb][1], lb) for g, lb in BIG]
    return out


def _default(problem: Problem, budget: float) -> tuple[Result, float, int]:
    """The portfolio under one deadline, re-solving like a regrouping round; (first result,
    wall seconds of everything, solves)."""
    t = time.monotonic()
    deadline = t + budget
    res = solve(problem, "portfolio", deadline)
    n = 1
    if res.overload_after_wh > 0:
        for _ in range(RESOLVES):
            solve(problem, "portfolio", deadline)
            n += 1
    return res, time.monotonic() - t, n


def _floor_gap_pct(value: float, bound: float, floor: float) -> float:
    """How far ``value`` is above a proven lower ``bound``, in % of ``max(bound, floor)`` (0
    below half a Wh, as :func:`gap_pct`)."""
    excess = max(0.0, float(value) - max(0.0, float(bound)))
    if excess <= 0.5:
        return 0.0
    return 100.0 * excess / max(float(bound), float(floor), 1.0)


def _bounds(problem: Problem, res: Result, limit: float, retry_limit: float) -> dict[str, Any]:
    """Proven bounds computed independently of ``res``: the LP's, then the cold exact model's
    where the LP's do not already prove ``res`` optimal, then (gap still above
    :data:`RETRY_GAP_PCT`) a second cold run of ``retry_limit`` seconds on the weaker bound.
    Only whether to look harder depends on ``res``, never the bound found: a bound is the same
    whichever plan is scored against it."""
    lb_o, lb_e = lower_bounds(problem)
    b: dict[str, Any] = {"lp_overload": lb_o, "lp_moved": lb_e, "cold": None}
    over_b: float = lb_o
    moved_b: float | None = lb_e
    g_m = gap_pct(res.moved_wh, lb_e)
    lp_proves = (gap_pct(res.overload_after_wh, lb_o) == 0.0
                 and g_m is not None and g_m <= OPT_TOL_PCT)
    if not lp_proves and problem.n_groups <= BOUND_MAX_GROUPS:
        cold = solve_exact(problem, deadline=time.monotonic() + limit)
        b["cold"] = {"status": cold.status, "overload_after_wh": cold.overload_after_wh,
                     "moved_wh": cold.moved_wh, "best_bound": cold.best_bound,
                     "moved_bound_wh": cold.moved_bound_wh, "runtime_s": cold.runtime_s}
        if cold.best_bound is not None and cold.best_bound > over_b + 0.5:
            over_b, moved_b = cold.best_bound, cold.moved_bound_wh
        elif cold.best_bound is not None and cold.moved_bound_wh is not None:
            moved_b = max(moved_b or 0.0, cold.moved_bound_wh)
    b["retry"] = None
    if problem.n_groups <= BOUND_MAX_GROUPS and retry_limit > 0:
        g_o = gap_pct(res.overload_after_wh, over_b)
        g_m = gap_pct(res.moved_wh, moved_b) if g_o == 0.0 else None
        if g_o is not None and g_o > RETRY_GAP_PCT:
            # the overload bound is the weak one: the whole model again, cold and longer
            cold = solve_exact(problem, deadline=time.monotonic() + retry_limit)
            b["retry"] = {"kind": "overload", "status": cold.status,
                          "best_bound": cold.best_bound, "moved_bound_wh": cold.moved_bound_wh,
                          "runtime_s": cold.runtime_s}
            if cold.best_bound is not None and cold.best_bound > over_b + 0.5:
                over_b, moved_b = cold.best_bound, cold.moved_bound_wh
            elif cold.best_bound is not None and cold.moved_bound_wh is not None:
                moved_b = max(moved_b or 0.0, cold.moved_bound_wh)
        elif g_o == 0.0 and (g_m is None or g_m > RETRY_GAP_PCT):
            # the overload is proven minimal (the plan attains its bound): stage 2 alone, cold,
            # among the plans of that overload
            t = time.monotonic()
            mb, status = moved_energy_bound(problem, over_b, deadline=t + retry_limit)
            b["retry"] = {"kind": "moved", "status": status, "moved_bound_wh": mb,
                          "runtime_s": time.monotonic() - t}
            if mb is not None:
                moved_b = max(moved_b or 0.0, mb)
    if over_b > res.overload_after_wh + 0.5:
        raise SystemExit(f"bound {over_b} above a valid plan's overload "
                         f"{res.overload_after_wh}: a bug")
    if moved_b is not None and gap_pct(res.overload_after_wh, over_b) == 0.0 and (
            moved_b > res.moved_wh + 1.0):
        raise SystemExit(f"moved-energy bound {moved_b} above a plan at the minimal overload "
                         f"({res.moved_wh}): a bug")
    b["overload"] = over_b
    b["moved"] = moved_b if gap_pct(res.overload_after_wh, over_b) == 0.0 else None
    return b


def _row(g_n: int, seed: int, fam: Family, ratio: float, label: str,
         args: argparse.Namespace) -> dict[str, Any]:
    totals, cap, mag, homes = family_day(fam, g_n, seed, ratio)
    floor = float(int(homes.sum()) * QUANTUM_WH)
    window = "defer" if seed % 2 else "symmetric"
    problem = Problem(totals, cap, mag,
                      Policy(window=window, time_limit_s=args.budget))  # type: ignore[arg-type]
    res, wall, n = _default(problem, args.budget)
    limit = args.bound_limit_small if g_n <= SMALL_BOUND_GROUPS else args.bound_limit
    b = _bounds(problem, res, limit, args.bound_limit_retry)
    gaps = {"overload": gap_pct(res.overload_after_wh, b["overload"]),
            "moved": gap_pct(res.moved_wh, b["moved"]),
            "curtailed": _floor_gap_pct(res.curtailed_wh, b["overload"], floor)}
    return {
        "family": label, "groups": g_n, "seed": seed, "window": window,
        "overload_before_wh": res.overload_before_wh,
        "default": {"solver": res.solver, "status": res.status,
                    "overload_after_wh": res.overload_after_wh, "moved_wh": res.moved_wh,
                    "moves": len(res.moves), "curtailed_wh": res.curtailed_wh,
                    "runtime_s": round(res.runtime_s, 3), "solves": n,
                    "wall_s": round(wall, 3), "own_gaps": res.gaps()},
        "bounds": b,
        "homes": int(homes.sum()), "curtail_floor_wh": floor,
        "curtailed_excess_wh": max(0.0, res.curtailed_wh - b["overload"]),
        "hard": bool(b["overload"] > 0.5 or fam in ("curtail", "rigid")),
        "gaps_pct": gaps,
        "proven_optimal": all(v is not None and v <= OPT_TOL_PCT
                              for v in (gaps["overload"], gaps["moved"])),
        "wall_s_over_budget": round(max(0.0, wall - args.budget), 3),
    }


def _pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    return float(np.percentile(np.asarray(vals), q, method="higher"))


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    over = [r["gaps_pct"]["overload"] for r in rows]
    moved = [r["gaps_pct"]["moved"] for r in rows if r["gaps_pct"]["moved"] is not None]
    curt = [r["gaps_pct"]["curtailed"] for r in rows]
    walls = [r["wall_s_over_budget"] for r in rows]
    s: dict[str, Any] = {
        "instances": len(rows),
        "seeds": sorted({r["seed"] for r in rows}),
        "hard_instances": sum(1 for r in rows if r["hard"]),
        "default_overload_gap_to_bound_pct_p95": _pct(over, 95),
        "default_overload_gap_to_bound_pct_max": max(over) if over else None,
        "default_moved_energy_gap_to_bound_pct_p95": _pct(moved, 95),
        "default_moved_energy_gap_to_bound_pct_max": max(moved) if moved else None,
        "moved_energy_gap_defined_instances": len(moved),
        "default_curtailed_gap_to_bound_pct_max": max(curt) if curt else None,
        "default_curtailed_excess_wh_max": (max(r["curtailed_excess_wh"] for r in rows)
                                            if rows else None),
        "proven_optimal_fraction": (round(sum(1 for r in rows if r["proven_optimal"])
                                          / len(rows), 4) if rows else None),
        "wall_s_over_budget_max": max(walls) if walls else None,
        "default_from_exact": sum(1 for r in rows if r["default"]["solver"].endswith("exact")),
        "default_wall_s_median": (statistics.median(r["default"]["wall_s"] for r in rows)
                                  if rows else None),
        "not_proven_optimal": sorted({f"{r['family']}/{r['groups']}" for r in rows
                                      if not r["proven_optimal"]}),
    }
    s["goals_met"] = {k: s[k] is not None and s[k] <= v for k, v in GOALS.items()}
    return s


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _print_row(row: dict[str, Any], stream: Any, first: bool) -> None:
    if first:
        print(f"{'family':11} {'G':>5} {'seed':>4} {'over0 kWh':>10} {'over kWh':>9} "
              f"{'moved kWh':>10} {'curt kWh':>9} {'solver':18} {'status':10} {'wall s':>7} "
              f"{'gap over%':>9} {'moved%':>7} {'curt%':>7}", file=stream)
    d, g = row["default"], row["gaps_pct"]
    print(f"{row['family']:11} {row['groups']:>5} {row['seed']:>4} "
          f"{row['overload_before_wh'] / 1000:>10.1f} {d['overload_after_wh'] / 1000:>9.1f} "
          f"{d['moved_wh'] / 1000:>10.1f} {d['curtailed_wh'] / 1000:>9.1f} {d['solver']:18} "
          f"{d['status']:10} {d['wall_s']:>7.2f} {_fmt(g['overload']):>9} "
          f"{_fmt(g['moved']):>7} {_fmt(g['curtailed']):>7}", file=stream, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    stream = sys.stderr if args.json else sys.stdout
    rows = []
    for i, (g_n, seed, fam, ratio, label) in enumerate(_instances(args.quick, args.only)):
        row = _row(g_n, seed, fam, ratio, label, args)
        rows.append(row)
        _print_row(row, stream, i == 0)
    return {"config": {"budget_s": args.budget, "bound_limit_s": args.bound_limit,
                       "bound_limit_small_s": args.bound_limit_small,
                       "bound_limit_retry_s": args.bound_limit_retry,
                       "retry_gap_pct": RETRY_GAP_PCT,
                       "small_bound_groups": SMALL_BOUND_GROUPS, "quantum_wh": QUANTUM_WH,
                       "quick": args.quick, "only": args.only, "seeds": list(SEEDS),
                       "resolves": RESOLVES,
                       "bound_max_groups": BOUND_MAX_GROUPS, "goals": GOALS},
            "instances": rows, "summary": _summary(rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    ap.add_argument("--quick", action="store_true",
                    help="10 small instances, budget and bound limit 2 s unless given")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock budget of the default solve (s, default 10)")
    ap.add_argument("--bound-limit", type=float, default=None,
                    help="time limit of the cold exact bound run (s, default 10)")
    ap.add_argument("--bound-limit-small", type=float, default=None,
                    help=f"the same for up to {SMALL_BOUND_GROUPS} groups (s, default 20; "
                         "--quick: the --bound-limit)")
    ap.add_argument("--bound-limit-retry", type=float, default=None,
                    help=f"a second, longer cold bound run where a gap is still above "
                         f"{RETRY_GAP_PCT} %% (s, default 45, 0 = none; --quick: the "
                         "--bound-limit)")
    ap.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                    help="only these instances, family/groups/seed as the table names them "
                         "(e.g. real80/10/1,curtail/10/2)")
    args = ap.parse_args(argv)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        every = _by_name()
        unknown = [n for n in names if n not in every]
        if not names or unknown:
            ap.error(f"--only: unknown instance {unknown[0] if unknown else args.only!r} "
                     "(family/groups/seed, e.g. real80/10/1)")
        if args.quick:
            ap.error("--only and --quick exclude each other")
        args.only = names
    if args.bound_limit_retry is not None and args.bound_limit_retry < 0:
        ap.error("--bound-limit-retry must be 0 or positive")
    for name in ("budget", "bound_limit", "bound_limit_small"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("budget", "bound_limit"):
        if getattr(args, name) is None:
            setattr(args, name, 2.0 if args.quick else 10.0)
    if args.bound_limit_small is None:
        args.bound_limit_small = args.bound_limit if args.quick else 20.0
    if args.bound_limit_retry is None:
        args.bound_limit_retry = args.bound_limit if args.quick else 45.0
    t0 = time.monotonic()
    result = run(args)
    result["config"]["wall_s"] = round(time.monotonic() - t0, 1)
    stream = sys.stderr if args.json else sys.stdout
    print(json.dumps(result["summary"], indent=2), file=stream)
    if args.json:
        print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
