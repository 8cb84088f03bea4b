"""Benchmark of the adjustment engine: heuristic vs exact (HiGHS) on seeded
realistic days (see bench/daygen.py).

    .venv/bin/python bench/adjust.py            # table on stdout
    .venv/bin/python bench/adjust.py --json     # table on stderr, JSON on stdout
    .venv/bin/python bench/adjust.py --quick    # small subset
    .venv/bin/python bench/adjust.py --time-limit 10 --cold

Instances: G in {10, 100, 200, 1000, 5000} groups x 96 frames x {weekday,
weekend} x window {defer, symmetric} x capacity {flat 95 %, flat 90 %,
flat 80 %, shaped 90 %} of the day's peak (seed 1).  The heuristic runs
everywhere (three times; the median runtime is reported and the three plans
must be identical); the exact model runs where G <= 200, with the time limit
(default 10 s), started from the heuristic's plan as `solve(..., "exact")`
does.  ``--cold`` also runs the exact model without that start, to show what
the MIP alone reaches in the same time.
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

from backend.coordinator.adjust import Policy, Problem, Result, solve  # noqa: E402
from backend.coordinator.adjust.exact import solve_exact  # noqa: E402
from backend.coordinator.adjust.heuristic import lower_bounds  # noqa: E402
from bench.daygen import capacity_profile, generate_day  # noqa: E402

SIZES = (10, 100, 200, 1000, 5000)
DAYS = ("weekday", "weekend")
WINDOWS = ("defer", "symmetric")
CAPACITIES = (("flat", 0.95), ("flat", 0.90), ("flat", 0.80), ("shaped", 0.90))
EXACT_MAX_GROUPS = 200
SEED = 1


def _figures(res: Result) -> dict[str, Any]:
    return {
        "overload_after_wh": res.overload_after_wh,
        "moved_wh": res.moved_wh,
        "moves": len(res.moves),
        "curtailed_wh": res.curtailed_wh,
        "runtime_s": round(res.runtime_s, 4),
        "status": res.status,
        "mip_gap": None if res.mip_gap is None else float(res.mip_gap),
        "best_bound": None if res.best_bound is None else float(res.best_bound),
    }


def _extra_pct(h: int, e: int) -> float:
    if e == 0:
        return 0.0 if h == 0 else 100.0
    return 100.0 * (h / e - 1.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = (10, 200, 5000) if args.quick else SIZES
    days = ("weekday",) if args.quick else DAYS
    caps = (("flat", 0.90), ("flat", 0.80)) if args.quick else CAPACITIES
    out: list[dict[str, Any]] = []
    for g_n in sizes:
        for day_kind in days:
            day = generate_day(g_n, SEED, day_kind)  # type: ignore[arg-type]
            load = day.totals.sum(axis=0)
            for window in WINDOWS:
                for profile, ratio in caps:
                    cap = capacity_profile(load, ratio, profile)  # type: ignore[arg-type]
                    problem = Problem(day.totals, cap, day.magnification,
                                      Policy(window=window,  # type: ignore[arg-type]
                                             time_limit_s=args.time_limit))
                    row: dict[str, Any] = {
                        "groups": g_n, "frames": int(load.shape[0]), "day": day_kind,
                        "window": window, "capacity": f"{profile} {int(ratio * 100)}%",
                        "homes": int(day.homes.sum()),
                        "overload_before_wh": int(np.maximum(load - cap, 0).sum()),
                    }
                    lb_over, lb_energy = lower_bounds(problem)
                    row["lp_overload_bound_wh"] = round(lb_over, 1)
                    row["lp_energy_bound_wh"] = None if lb_energy is None else round(lb_energy, 1)
                    runs = [solve(problem, solver="heuristic") for _ in range(3)]
                    h = runs[0]
                    if any(r.moves != h.moves or r.curtail != h.curtail for r in runs[1:]):
                        raise SystemExit("heuristic is not deterministic")
                    row["heuristic"] = _figures(h)
                    row["heuristic"]["runtime_s"] = round(
                        statistics.median(r.runtime_s for r in runs), 4)
                    if g_n <= EXACT_MAX_GROUPS and not args.no_exact:
                        e = solve(problem, solver="exact")
                        row["exact"] = _figures(e)
                        row["heuristic_not_worse"] = h.overload_after_wh <= e.overload_after_wh
                        if h.overload_after_wh == e.overload_after_wh:
                            row["extra_moved_energy_pct"] = round(
                                _extra_pct(h.moved_wh, e.moved_wh), 3)
                        if args.cold:
                            c = solve_exact(problem)
                            row["exact_cold"] = _figures(c)
                    out.append(row)
                    _print_row(row, args)
    return {"config": {"seed": SEED, "time_limit_s": args.time_limit, "quick": args.quick,
                       "cold": args.cold, "exact_max_groups": EXACT_MAX_GROUPS},
            "instances": out, "summary": _summary(out)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ex = [r for r in rows if "exact" in r]
    same = [r for r in ex if "extra_moved_energy_pct" in r]
    h5000 = [r["heuristic"]["runtime_s"] for r in rows if r["groups"] == 5000]
    e200 = [r["exact"]["runtime_s"] for r in ex if r["groups"] == 200]
    big = [r for r in rows if r["lp_energy_bound_wh"] and r["groups"] >= 1000
           and r["heuristic"]["overload_after_wh"] <= r["lp_overload_bound_wh"] + 0.5]
    s: dict[str, Any] = {
        "instances": len(rows),
        "exact_instances": len(ex),
        "exact_proved_optimal": sum(1 for r in ex if r["exact"]["status"] == "optimal"),
        "heuristic_not_worse_fraction": (
            round(sum(1 for r in ex if r["heuristic_not_worse"]) / len(ex), 4) if ex else None),
        "mean_extra_moved_energy_pct": (
            round(statistics.fmean(r["extra_moved_energy_pct"] for r in same), 3)
            if same else None),
        "max_extra_moved_energy_pct": (
            round(max(r["extra_moved_energy_pct"] for r in same), 3) if same else None),
        "heuristic_s_5000_groups": max(h5000) if h5000 else None,
        "heuristic_s_max": max(r["heuristic"]["runtime_s"] for r in rows) if rows else None,
        "exact_s_200_groups": max(e200) if e200 else None,
        "mean_heuristic_energy_over_lp_bound_pct_1000plus": (
            round(statistics.fmean(100.0 * (r["heuristic"]["moved_wh"]
                                             / r["lp_energy_bound_wh"] - 1.0) for r in big), 3)
            if big else None),
    }
    cold = [r for r in ex if "exact_cold" in r]
    if cold:
        s["cold_exact_worse_overload_than_heuristic"] = sum(
            1 for r in cold
            if r["exact_cold"]["overload_after_wh"] > r["heuristic"]["overload_after_wh"])
        s["cold_exact_better_overload_than_heuristic"] = sum(
            1 for r in cold
            if r["exact_cold"]["overload_after_wh"] < r["heuristic"]["overload_after_wh"])
    targets = {
        "heuristic_not_worse_ge_95pct": (s["heuristic_not_worse_fraction"] is not None
                                         and s["heuristic_not_worse_fraction"] >= 0.95),
        "mean_extra_moved_energy_le_5pct": (s["mean_extra_moved_energy_pct"] is not None
                                            and s["mean_extra_moved_energy_pct"] <= 5.0),
        "heuristic_5000_le_1s": (s["heuristic_s_5000_groups"] is not None
                                 and s["heuristic_s_5000_groups"] <= 1.0),
        "exact_200_le_10s": (s["exact_s_200_groups"] is not None
                             and s["exact_s_200_groups"] <= 10.0),
    }
    s["targets_met"] = targets
    return s


_HEADER = (f"{'G':>5} {'day':7} {'window':9} {'capacity':11} {'over0 kWh':>10} "
           f"{'H over':>8} {'H moved':>9} {'H n':>5} {'H curt':>8} {'H s':>6} | "
           f"{'E over':>8} {'E moved':>9} {'E n':>5} {'E s':>5} {'E status':10} "
           f"{'gap':>7} | {'H/E':>6}")


def _kwh(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.1f}"


def _print_row(row: dict[str, Any], args: argparse.Namespace) -> None:
    stream = sys.stderr if args.json else sys.stdout
    if not getattr(args, "_header_done", False):
        print(_HEADER, file=stream)
        print("(energies in kWh; H = heuristic, E = exact started from H; "
              "H/E = moved-energy ratio at equal overload)", file=stream)
        args._header_done = True
    h = row["heuristic"]
    line = (f"{row['groups']:>5} {row['day']:7} {row['window']:9} {row['capacity']:11} "
            f"{_kwh(row['overload_before_wh']):>10} {_kwh(h['overload_after_wh']):>8} "
            f"{_kwh(h['moved_wh']):>9} {h['moves']:>5} {_kwh(h['curtailed_wh']):>8} "
            f"{h['runtime_s']:>6.3f} | ")
    e = row.get("exact")
    if e:
        gap = "-" if e["mip_gap"] is None else f"{e['mip_gap']:.2g}"
        ratio = "-"
        if "extra_moved_energy_pct" in row:
            ratio = f"{1 + row['extra_moved_energy_pct'] / 100:.4f}"
        elif not row["heuristic_not_worse"]:
            ratio = "H worse"
        line += (f"{_kwh(e['overload_after_wh']):>8} {_kwh(e['moved_wh']):>9} "
                 f"{e['moves']:>5} {e['runtime_s']:>5.1f} {e['status']:10} {gap:>7} | "
                 f"{ratio:>6}")
        c = row.get("exact_cold")
        if c:
            line += (f" | cold: over {_kwh(c['overload_after_wh'])} moved "
                     f"{_kwh(c['moved_wh'])} {c['status']}")
    else:
        line += f"{'(exact not run)':>40} | LP bound moved {_kwh(row['lp_energy_bound_wh'])}"
    print(line, file=stream, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    ap.add_argument("--quick", action="store_true", help="small subset (about 1.5 min)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="exact time limit (s)")
    ap.add_argument("--cold", action="store_true",
                    help="also run the exact model without the heuristic start")
    ap.add_argument("--no-exact", action="store_true", help="heuristic only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args)
    result["config"]["wall_s"] = round(time.perf_counter() - t0, 1)
    stream = sys.stderr if args.json else sys.stdout
    print(json.dumps(result["summary"], indent=2), file=stream)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
