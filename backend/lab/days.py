"""The lab's accounting, day by day, from what every home recorded itself.

For each day the lab reads, at ``timeline.SNAPSHOT`` of that day, what each home holds for it
(its ``round.json``: its own plan, its adjusted plan, whether it reported), and, at the end, each
home's relay switch log (``relay.log``: every switch with the virtual time it happened).  The
coordinator's record of the day's round (``results/<day>-r1.json``) says which homes it counted
(the members of its final groups) and what it decided.  Two invariants per day, checked against
the homes' own records (an oracle the coordinator never computed):

* ``true_load_wh == coordinator_load_before_wh``: the counted homes' summed plans equal the
  group totals the coordinator got from masked plans and mask sums (exact masking);
* ``relay_load_after_wh == coordinator_load_after_wh``: the counted homes' relays drew what was
  decided (their adjusted plans, frame by frame, where the relay was on);
* ``metered_load_after_wh <= coordinator_load_after_wh`` plus one meter pulse per counted home,
  frame by frame, and no home metered more than its frame's budget plus one pulse (its adjusted
  plan if counted, else its own plan): what the homes' meters counted (``meter.log``, the lab's
  simulated loads), not what the plans say.  The appliances need less than planned (the load
  model, scenario.py), so the metered day is below the decided one.

A member that missed the round is *carried* (docs/privacy.md, "Over time"): its group's total
counts it with its latest released report, and it gets no adjustment.  The lab's homes repeat
their plan every day, so that report's plan is the home's plan of the day: the first invariant
counts carried members with it, and the second adds what the coordinator's view moved of it
(``carried_moved_wh``, the firmware's own ``plan.apply_adjustment`` on the group's adjustment)
to what the counted relays drew.  Homes the round did not count follow their own plans: their
relays' energy is ``uncounted_load_wh``, carried members included, and the grid's load after the
adjustment is everything together (``overload_after_wh`` is measured on it).

The worst case the coordinator must keep room for (docs/adjustment.md, "Reserve"): the counted
homes' relays plus every other home drawing its full contracted cap in every frame
(``true_overload_after_wh`` is the overload of that).  A third invariant: it is 0 whenever the
round left no residual overload and the capacity covers the reserve (``reserve_wh``, the
coordinator's) in every frame.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.coordinator.adjust.model import overload_wh
from backend.lab.timeline import Timeline
from hemsfw import plan as plan_mod

__all__ = ["day_summary", "metered_days", "metered_within_budget", "period_summary", "refusals",
           "relay_days", "relays_as_decided",
           "split_rejections"]

IntArray = NDArray[np.int64]
#: rejection reasons that are harmless re-sends, not faults: a home re-sends the very same
#: report until it has a reply (docs/protocol.md, Reply), and a copy gets ``replay``
RESEND_REASONS = frozenset({"replay"})


def relay_days(log_path: Path, tl: Timeline, frames: int) -> dict[int, list[bool]]:
    """Whether the relay was closed in each frame of every lab day (at the frame's start or at
    any moment in it), from the relay's switch log (state changes with their virtual time; the
    boot line gives the state before the first switch).  A relay holds its last state while
    nothing drives it, as a latching relay does.  Under the energy budget the relay closes at a
    frame's start when the frame has budget and opens when the metered energy reaches it, so
    "closed in the frame" is "the frame had budget"; the lab's homes switch at the simulated
    circuit's exact time (firmware hemsfw/meter.py), a switch at a frame's start belongs to it."""
    changes: list[tuple[float, bool]] = []
    boot = False
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("t") is None:
                if not changes:
                    boot = bool(rec["on"])
                continue
            changes.append((float(rec["t"]), bool(rec["on"])))
    changes.sort(key=lambda c: c[0])
    frame_s = tl.frame_s
    out: dict[int, list[bool]] = {}
    i, state = 0, boot
    for d in range(1, tl.days + 1):
        day = []
        for k in range(frames):
            start = tl.start(d) + k * frame_s
            end = start + frame_s
            while i < len(changes) and changes[i][0] <= start:
                state = changes[i][1]
                i += 1
            closed = state
            while i < len(changes) and changes[i][0] < end:
                state = changes[i][1]
                closed = closed or state
                i += 1
            day.append(closed)
        out[d] = day
    return out


def metered_days(log_path: Path, frames: int, ppkwh: int) -> dict[str, list[int]]:
    """Metered Wh per frame of every day a home's simulated meter played out, from its frame log
    (meter.log: {"day", "k", "p": pulses} per closed frame, firmware hemsfw/meter.py)."""
    out: dict[str, list[int]] = {}
    if not log_path.exists():
        return out
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        k = int(rec["k"])
        if 0 <= k < frames:
            out.setdefault(str(rec["day"]), [0] * frames)[k] = int(rec["p"]) * 1000 // ppkwh
    return out


def refusals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The mask brokers' refusals of the round, each with how it ended: ``re-ask`` (the same
    group released later by the same broker), ``re-formed`` (the rest released as a new group
    after the missing homes left), or ``None`` (the group left the round)."""
    released = {(g["id"], g["broker"]) for g in record.get("released_groups", [])}
    out = []
    for r in record.get("refused_groups", []):
        gid, b = r["id"], r["broker"]
        if (gid, b) in released:
            how: str | None = "re-ask"
        elif any(rid.startswith(gid) and rb == b for rid, rb in released):
            how = "re-formed"
        else:
            how = None
        out.append({**r, "resolved": how})
    return out


def split_rejections(counts: dict[str, int]) -> tuple[dict[str, int], int]:
    """(real rejections by "kind:reason", harmless re-sends)."""
    real = {k: n for k, n in counts.items() if k.partition(":")[2] not in RESEND_REASONS}
    return real, sum(counts.values()) - sum(real.values())


def day_summary(d: int, tl: Timeline, frames: int, snapshots: dict[str, dict[str, Any] | None],
                relays: dict[str, dict[int, list[bool]]], record: dict[str, Any] | None,
                capacity: IntArray, failures: list[str],
                caps: dict[str, int] | None = None,
                metered: dict[str, dict[str, list[int]]] | None = None,
                pulse_wh: float = 1.0) -> dict[str, Any]:
    """Day d's figures; what its invariants found wrong is appended to ``failures``.  ``caps``:
    each home's contracted cap per frame (Wh); ``metered``: home -> day -> metered Wh per frame
    (metered_days); ``pulse_wh``: the meters' Wh per pulse."""
    day = tl.date(d).isoformat()
    groups = (record or {}).get("groups", [])
    carried = {m: g["id"] for g in groups for m in g.get("carried", [])}
    counted = {m for g in groups for m in g.get("members", [])} - set(carried)
    moves: dict[str, list[tuple[int, int]]] = {}
    for gid, f, t in (record or {}).get("moves", []):
        moves.setdefault(gid, []).append((int(f), int(t)))
    curtail: dict[str, list[Any]] = {}
    for c in (record or {}).get("curtail", []):
        curtail.setdefault(c[0], []).append(c[1] if len(c) == 2 else c[1:])
    zero = np.zeros(frames, dtype=np.int64)
    true_load, relay_load = zero.copy(), zero.copy()
    uncounted_plan, uncounted = zero.copy(), zero.copy()
    carried_moved = zero.copy()
    metered_load, metered_uncounted = zero.copy(), zero.copy()
    over_budget: list[dict[str, Any]] = []
    reporting, absent = [], []
    per_home: dict[str, dict[str, int]] = {}
    for home, st in sorted(snapshots.items()):
        on = np.array(relays.get(home, {}).get(d, [False] * frames), dtype=bool)
        got = np.array((metered or {}).get(home, {}).get(day, [0] * frames), dtype=np.int64)
        if st is None or st.get("day") != day:
            absent.append(home)  # nothing for this day: the relay's safe state
            continue
        q = int(st["quantum_wh"])
        plan = np.array(st["plan"], dtype=np.int64) * q
        if st.get("status") == "reported":
            reporting.append(home)
        else:
            absent.append(home)
        if home in counted:
            if st.get("adjusted") is None:
                failures.append(f"day {d} ({day}): {home} was counted but holds no adjustment")
            adj = np.array(st["adjusted"] if st.get("adjusted") is not None else st["plan"],
                           dtype=np.int64) * q
            true_load += plan
            relay_load += np.where(on, adj, 0)
            metered_load += got
            _over_budget(home, got, adj, pulse_wh, over_budget)
            curtailed = int(plan.sum() - adj.sum())
            per_home[home] = {"moved_wh": int(np.maximum(plan - adj, 0).sum()) - curtailed,
                              "curtailed_wh": curtailed}
        else:
            if home in carried:  # counted with its (repeating) plan, moved with its group
                gid = carried[home]
                true_load += plan
                carried_moved += np.array(plan_mod.apply_adjustment(
                    list(st["plan"]), moves.get(gid, []), curtail.get(gid, [])),
                    dtype=np.int64) * q
            else:
                uncounted_plan += plan
            uncounted += np.where(on, plan, 0)
            metered_uncounted += got
            _over_budget(home, got, plan, pulse_wh, over_budget)
    before = np.array((record or {}).get("coordinator_load_before_wh") or zero, dtype=np.int64)
    after = np.array((record or {}).get("coordinator_load_after_wh") or zero, dtype=np.int64)
    if record is None or record.get("status") != "completed":
        failures.append(f"day {d} ({day}): the round did not complete: "
                        f"{(record or {}).get('error', 'no record')}")
    if not np.array_equal(true_load, before):
        failures.append(f"day {d} ({day}): true_load_wh != coordinator_load_before_wh")
    # partial curtailment: every home rounds its kept share down, so a curtailed frame may end
    # below the coordinator's group figure by less than one quantum per member of each
    # curtailed group there (docs/adjustment.md); every other frame matches exactly
    slack = zero.copy()
    size = {g["id"]: len(g.get("members", [])) for g in groups}
    quantum = int((record or {}).get("quantum_wh") or 1)
    for c in (record or {}).get("curtail", []):
        slack[int(c[1])] += size.get(c[0], 0) * quantum
    short = after - (relay_load + carried_moved)
    if (short < 0).any() or (short > slack).any():
        failures.append(f"day {d} ({day}): relay_load_after_wh + carried_moved_wh != "
                        "coordinator_load_after_wh")
    if metered is not None:
        pulse_slack = pulse_wh * len(counted)
        if np.any(metered_load > after + pulse_slack):
            failures.append(f"day {d} ({day}): metered_load_after_wh > coordinator_load_after_wh "
                            "+ one pulse per home")
        for o in over_budget:
            failures.append(f"day {d} ({day}): {o['home']} metered {o['metered_wh']} Wh in frame "
                            f"{o['frame']}, its budget was {o['budget_wh']} Wh")
    grid_before, grid_after = true_load + uncounted_plan, relay_load + uncounted
    # every home the round did not count with this round's report, at its cap
    outside = sum((caps or {}).get(h, 0) for h in snapshots if h not in counted)
    worst = relay_load + outside
    reserve = np.array((record or {}).get("reserve_wh") or zero, dtype=np.int64)
    true_overload = overload_wh(worst, capacity)
    if (caps and record is not None and record.get("residual_overload_wh") == 0
            and bool(np.all(capacity >= reserve)) and true_overload > 0):
        failures.append(f"day {d} ({day}): the counted relays plus every other home at its cap "
                        f"overload the grid by {true_overload} Wh")
    rejections, resends = split_rejections((record or {}).get("rejections", {}))
    return {
        "day": day,
        "index": d,
        "start": tl.start(d),
        "homes_reporting": len(reporting),
        "homes_counted": len(counted),
        # reporting homes whose load is in a released total: with this round's report, or with
        # their previous one when a mask broker lacked this round's mask (carried)
        "homes_in_totals": len(set(reporting) & (counted | set(carried))),
        "absent_homes": absent,
        "excluded_homes": (record or {}).get("excluded", []),
        "capacity_wh": capacity.tolist(),
        "true_load_wh": true_load.tolist(),
        "coordinator_load_before_wh": before.tolist(),
        "coordinator_load_after_wh": after.tolist(),
        "relay_load_after_wh": relay_load.tolist(),
        "metered_load_after_wh": metered_load.tolist(),
        "metered_uncounted_wh": metered_uncounted.tolist(),
        "meter_pulse_wh": pulse_wh,
        "over_budget": over_budget,
        "carried_homes": sorted(carried),
        "carried_moved_wh": carried_moved.tolist(),
        "rounding_slack_wh": slack.tolist(),
        "uncounted_load_wh": uncounted.tolist(),
        "peak_before_wh": int(grid_before.max(initial=0)),
        "peak_after_wh": int(grid_after.max(initial=0)),
        "overload_before_wh": overload_wh(grid_before, capacity),
        "overload_after_wh": overload_wh(grid_after, capacity),
        "reserve_wh": reserve.tolist(),
        "reserve_homes": (record or {}).get("reserve_homes", []),
        "true_overload_after_wh": true_overload,
        "moved_wh": (record or {}).get("moved_wh"),
        "curtailed_wh": (record or {}).get("curtailed_wh") or 0,
        "groups": [{"id": g["id"], "size": g["size"], "magnification": g["magnification"],
                    "members": g.get("members", []), "total_wh": g.get("total_wh")}
                   for g in (record or {}).get("groups", [])],
        "moves": (record or {}).get("moves", []),
        "curtail": (record or {}).get("curtail", []),
        "regroup_rounds": (record or {}).get("regroup_rounds", 0),
        "released_groups": (record or {}).get("released_groups", []),
        "refusals": refusals(record or {}),
        "coordinator_rejections": rejections,
        "coordinator_resends": resends,
        "coordinator_restarts": (record or {}).get("restarts", 0),
        "capacity_updates_after_close": (record or {}).get("capacity_updates_after_close", 0),
        "per_home": per_home,
    }


def _over_budget(home: str, got: IntArray, budget: IntArray, pulse_wh: float,
                 out: list[dict[str, Any]]) -> None:
    """Frames where a home's metered energy exceeded its budget by more than one pulse."""
    for k in np.nonzero(got > budget + pulse_wh)[0]:
        out.append({"home": home, "frame": int(k), "metered_wh": int(got[k]),
                    "budget_wh": int(budget[k])})


def metered_within_budget(day: dict[str, Any]) -> bool:
    """The metering invariant for a day summary: per frame, the counted homes' metered energy is
    at most what was decided plus one pulse per home, and no home exceeded its own budget."""
    if "metered_load_after_wh" not in day:
        return True   # a summary from before the meters
    slack = day.get("meter_pulse_wh", 1.0) * day.get("homes_counted", 0)
    return not day.get("over_budget") and all(
        m <= a + slack for m, a in zip(day["metered_load_after_wh"],
                                       day["coordinator_load_after_wh"], strict=True))


def relays_as_decided(day: dict[str, Any]) -> bool:
    """The second invariant for a day summary: the relays (plus what the coordinator moved of
    carried members' plans) drew what was decided, short by at most the partial curtailment's
    rounding (``rounding_slack_wh``: each home rounds its kept share down; old summaries have
    neither carried members nor slack)."""
    n = len(day["relay_load_after_wh"])
    carried = day.get("carried_moved_wh") or [0] * n
    slack = day.get("rounding_slack_wh") or [0] * n
    return all(0 <= want - (a + b) <= s for a, b, want, s in zip(
        day["relay_load_after_wh"], carried, day["coordinator_load_after_wh"], slack,
        strict=True))


def period_summary(days: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole period: energy moved and curtailed per home, refusals and how they ended."""
    homes: dict[str, Counter[str]] = {}
    for day in days:
        for h, v in day["per_home"].items():
            homes.setdefault(h, Counter()).update(v)
            homes[h]["days_counted"] += 1
    ended = Counter(str(r["resolved"]) for day in days for r in day["refusals"])
    return {
        "days": len(days),
        "per_home": {h: dict(c) for h, c in sorted(homes.items())},
        "moved_wh": sum(int(d["moved_wh"] or 0) for d in days),
        "curtailed_wh": sum(int(d["curtailed_wh"] or 0) for d in days),
        "overload_before_wh": sum(d["overload_before_wh"] for d in days),
        "overload_after_wh": sum(d["overload_after_wh"] for d in days),
        "true_overload_after_wh": sum(d.get("true_overload_after_wh", 0) for d in days),
        "refusals": {"total": sum(ended.values()), "resolved_by_reask": ended["re-ask"],
                     "resolved_by_reforming": ended["re-formed"],
                     "unresolved": ended["None"]},
        "absent_home_days": sum(len(d["absent_homes"]) for d in days),
    }
