"""The lab's summary: what every home recorded, checked against what the coordinator decided.

`summarise` reads each home's own record (its plan, its adjusted plan, its relay's switch log)
and the coordinator's result, checks the two invariants, and returns the JSON summary that
`hems lab --json` prints and `backend/lab/report.py` draws.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from backend.coordinator.adjust.model import overload_wh
from backend.lab import scenario

#: Homes whose plan, adjusted plan and relay are kept per frame in the summary (the report's
#: relay timelines); a sample, so the summary stays small for large labs.
TIMELINE_HOMES = 12


def relay_per_frame(log_path: Path, frames: int) -> list[bool]:
    """Relay state in each frame from the lab relay driver's switch log (state changes only,
    each with the frame it happened in; before the first frame the boot safe state)."""
    state = False
    changes: dict[int, bool] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("frame") is None:
                if not changes:
                    state = bool(rec["on"])
                continue
            changes[int(rec["frame"])] = bool(rec["on"])
    out = []
    for k in range(frames):
        if k in changes:
            state = changes[k]
        out.append(state)
    return out


def timeline_sample(groups: list[dict[str, Any]], moves: list[list[Any]],
                    n: int = TIMELINE_HOMES) -> list[str]:
    """Up to n homes, round-robin over the groups (groups with moves first), so every group
    and the homes whose relays were shifted are shown."""
    moved = {m[0] for m in moves}
    order = sorted(groups, key=lambda g: (g["id"] not in moved, g["id"]))
    queues = [sorted(g.get("members", [])) for g in order]
    out: list[str] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def summarise(
    work: Path,
    homes: list[scenario.HomeSpec],
    result: dict[str, Any],
    capacity: NDArray[np.int64],
    params: dict[str, Any],
    brokers: list[str],
    failures: list[str],
) -> dict[str, Any]:
    """The summary; appends to `failures` what the invariants found wrong."""
    frames = int(params["frames"])
    true_load = np.zeros(frames, dtype=np.int64)
    relay_load = np.zeros(frames, dtype=np.int64)
    mismatched = 0
    group_of = {m: g for g in result["groups"] for m in g.get("members", [])}
    sample = set(timeline_sample(result["groups"], result["moves"]))
    timelines: list[dict[str, Any]] = []
    for h in homes:
        sdir = work / "homes" / h.home_id
        st = json.loads((sdir / "round.json").read_text())
        q = int(st["quantum_wh"])
        plan = np.array(st["plan"], dtype=np.int64) * q
        adj = np.array(st["adjusted"] if st.get("adjusted") is not None else st["plan"],
                       dtype=np.int64) * q
        on = np.array(relay_per_frame(sdir / "relay.log", frames), dtype=bool)
        true_load += plan
        relay_load += np.where(on, adj, 0)
        mismatched += int(np.count_nonzero(on != (adj > 0)))
        if h.home_id in sample:
            g = group_of.get(h.home_id)
            timelines.append({
                "home": h.home_id, "group": g["id"] if g else None,
                "magnification": h.magnification, "plan_wh": plan.tolist(),
                "adjusted_wh": adj.tolist(), "relay_on": on.astype(int).tolist()})
    before = np.array(result["coordinator_load_before_wh"], dtype=np.int64)
    after = np.array(result["coordinator_load_after_wh"], dtype=np.int64)
    if not np.array_equal(true_load, before):
        failures.append("true_load_wh != coordinator_load_before_wh")
    if not np.array_equal(relay_load, after):
        failures.append("relay_load_after_wh != coordinator_load_after_wh")
    if mismatched:
        failures.append(f"{mismatched} home-frames where the relay disagreed with the plan")
    stats = {}
    for b in brokers:
        p = work / f"stats-{b}.json"
        if p.exists():
            stats[b] = json.loads(p.read_text())
    return {
        "homes": len(homes),
        **params,
        "frames": frames,
        "mask_brokers": len(brokers),
        "capacity_wh": capacity.tolist(),
        "true_load_wh": true_load.tolist(),
        "coordinator_load_before_wh": before.tolist(),
        "coordinator_load_after_wh": after.tolist(),
        "relay_load_after_wh": relay_load.tolist(),
        "overload_before_wh": overload_wh(true_load, capacity),
        "overload_after_wh": overload_wh(relay_load, capacity),
        "curtailed_wh": result.get("curtailed_wh", 0),
        "moved_wh": result.get("moved_wh"),
        "regroup_rounds": result.get("regroup_rounds", 0),
        "solver": result.get("solver", params.get("solver")),
        "solve_status": result.get("solve_status"),
        "groups": [{"id": g["id"], "size": g["size"], "magnification": g["magnification"],
                    "members": g.get("members", []), "total_wh": g.get("total_wh")}
                   for g in result["groups"]],
        "moves": result["moves"],
        "curtail": result.get("curtail", []),
        "released_groups": result.get("released_groups", []),
        "refused_groups": result.get("refused_groups", []),
        "excluded_homes": result.get("excluded", []),
        "relay_mismatches": mismatched,
        "relay_timelines": sorted(timelines, key=lambda t: (t["group"] or "", t["home"])),
        "coordinator_rejections": result.get("rejections", {}),
        "coordinator_timings_s": result.get("timings", {}),
        "mask_broker_stats": stats,
    }


def print_table(s: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w("\nhems lab: one privacy-preserving round\n")
    w(f"  homes {s['homes']}  frames {s['frames']} x {s['frame_s']} s  "
      f"mask brokers {s['mask_brokers']}  k {s['k']}  seed {s['seed']}\n")
    w(f"  groups  {len(s['groups'])}: "
      + ", ".join(f"{g['id']}({g['size']} homes, m={g['magnification']})" for g in s["groups"])
      + "\n")
    w(f"  moves   {len(s['moves'])}  regroup rounds {s['regroup_rounds']}  "
      f"solver {s['solver']}\n")
    refused = s.get("refused_groups", [])
    w(f"  group sums released {len(s.get('released_groups', []))}, refused {len(refused)}"
      + (" (" + ", ".join(sorted({str(r.get('reason')) for r in refused})) + ")"
         if refused else "") + "\n")
    cap = max(s["capacity_wh"])
    w(f"  capacity {cap} Wh/frame; peak before {max(s['true_load_wh'])} Wh, "
      f"after {max(s['relay_load_after_wh'])} Wh\n")
    w(f"  overload before {s['overload_before_wh']} Wh, after {s['overload_after_wh']} Wh, "
      f"curtailed {s['curtailed_wh']} Wh\n")
    ok1 = s["true_load_wh"] == s["coordinator_load_before_wh"]
    ok2 = s["relay_load_after_wh"] == s["coordinator_load_after_wh"]
    w(f"  exact masking (true load == coordinator's view)   {'yes' if ok1 else 'NO'}\n")
    w(f"  relays did what was decided                       {'yes' if ok2 else 'NO'}\n")
    t = s.get("timings_s") or {}
    if t:
        w("  timings " + ", ".join(f"{k} {v} s" for k, v in t.items()) + "\n")
    for f in s.get("failures", []):
        w(f"  FAILED: {f}\n")
