"""A lab summary of the shape ``backend.lab.summary.summarise`` gives, for the report tests
(tests/test_report.py, tests/test_cli.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from backend.lab import plots

FRAMES, FRAME_S = 96, 900


def _home_plan(i: int) -> list[int]:
    plan = [0] * FRAMES
    start = 72 + (i * 5) % 14  # evening, 18:00-21:15
    for k in range(start, min(FRAMES, start + 4 + i % 3)):
        plan[k] = 300 + 40 * (i % 5)
    plan[24 + i % 6] = 500  # a morning block
    return plan


def make_summary(failures: list[str] | None = None) -> dict[str, Any]:
    """A lab summary with the shape summary.summarise gives (12 homes, 3 groups, 4 moves)."""
    homes = [f"h{i + 1:03d}" for i in range(12)]
    plans = {h: _home_plan(i) for i, h in enumerate(homes)}
    groups = []
    for gi, m in enumerate((1, 2, 4)):
        members = homes[gi::3]
        total = np.sum([plans[h] for h in members], axis=0).astype(np.int64)
        groups.append({"id": f"r1g{gi + 1}", "size": len(members), "magnification": m,
                       "members": members, "total_wh": total.tolist()})
    busy = [int(np.argmax(g["total_wh"])) for g in groups]
    moves = [["r1g2", busy[1], busy[1] + 1], ["r1g3", busy[2], busy[2] + 3],
             ["r1g3", busy[2] + 1, busy[2] + 2], ["r1g3", busy[2] + 2, busy[2] + 3]]
    ids = [g["id"] for g in groups]
    before = np.array([g["total_wh"] for g in groups], dtype=np.int64)
    after = plots.group_after(before, moves, [], ids)
    load_b, load_a = before.sum(axis=0), after.sum(axis=0)
    cap = int(load_b.max() * 0.9)
    over = lambda v: int(np.maximum(v - cap, 0).sum())  # noqa: E731
    timelines = []
    for g, row in zip(groups, after, strict=True):
        for h in g["members"][:3]:
            plan = np.array(plans[h])
            adj = plots.group_after(plan[None, :], [m for m in moves if m[0] == g["id"]], [],
                                    [g["id"]])[0]
            timelines.append({"home": h, "group": g["id"], "magnification": g["magnification"],
                              "plan_wh": plan.tolist(), "adjusted_wh": adj.tolist(),
                              "relay_on": (adj > 0).astype(int).tolist()})
        assert row.sum() == before[ids.index(g["id"])].sum()
    return {
        "homes": 12, "frame_s": FRAME_S, "frame_real_s": 0.2, "seed": 1, "k": 3,
        "day": "2030-01-02", "capacity_fraction": 0.9, "solver": "heuristic", "frames": FRAMES,
        "mask_brokers": 1, "capacity_wh": [cap] * FRAMES,
        "true_load_wh": load_b.tolist(), "coordinator_load_before_wh": load_b.tolist(),
        "coordinator_load_after_wh": load_a.tolist(), "relay_load_after_wh": load_a.tolist(),
        "metered_load_after_wh": (load_a * 9 // 10).tolist(), "metered_uncounted_wh": [0] * FRAMES,
        "meter_pulse_wh": 1.0, "over_budget": [], "homes_counted": 12,
        "overload_before_wh": over(load_b), "overload_after_wh": over(load_a),
        "curtailed_wh": 0, "moved_wh": 1234, "regroup_rounds": 1, "solve_status": "heuristic",
        "groups": groups, "moves": moves, "curtail": [],
        "released_groups": [{"id": g["id"], "broker": "mb1", "size": g["size"]} for g in groups],
        "refused_groups": [{"id": "r1g1", "broker": "mb1", "reason": "missing_members",
                            "missing": ["h001"]}],
        "excluded_homes": [], "relay_mismatches": 0, "relay_timelines": timelines,
        "coordinator_rejections": {},
        "coordinator_timings_s": {"collect_s": 0.07, "sums_s": 0.05, "solve_s": 0.07,
                                  "publish_s": 0.003},
        "mask_broker_stats": {"mb1": {"masks": {"accepted_total": 12}, "rejections": {},
                                      "groups": {"requests": 2, "released": 3,
                                                 "refused_by_reason": {"missing_members": 1}},
                                      "atoms": {"min_size": 4}}},
        "timings_s": {"services": 0.5, "fleet": 0.7, "round": 0.6, "day": 20.9, "total": 22.7},
        "failures": failures or [], "lab_dir": "/tmp/hems-lab-test", "report": None,
    }
