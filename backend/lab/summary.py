"""The lab's summary as a table (stdout, or stderr with --json): day 1 in detail, then every
day and the whole period.  The figures come from days.py; this module only prints them."""

from __future__ import annotations

from typing import Any, TextIO

from backend.lab.days import relays_as_decided

__all__ = ["print_table"]


def _refusals(s: dict[str, Any]) -> str:
    refused = s.get("refusals", [])
    if not refused:
        return "refused 0"
    reask = sum(1 for r in refused if r.get("resolved") == "re-ask")
    reformed = sum(1 for r in refused if r.get("resolved") == "re-formed")
    left = len(refused) - reask - reformed
    parts = [f"refused {len(refused)}"]
    if reask:
        parts.append(f"{reask} released on a re-ask")
    if reformed:
        parts.append(f"{reformed} re-formed without the missing or mismatched homes")
    if left:
        parts.append(f"{left} left the round ("
                     + ", ".join(sorted({str(r.get('reason')) for r in refused
                                         if not r.get("resolved")})) + ")")
    return ", ".join(parts)


def print_table(s: dict[str, Any], out: TextIO) -> None:
    w = out.write
    n_days = s.get("days_run", 1)
    w(f"\nhems lab: {n_days} day{'s' if n_days != 1 else ''} of privacy-preserving rounds\n")
    w(f"  homes {s['homes']}  frames {s['frames']} x {s['frame_s']} s  "
      f"mask brokers {s['mask_brokers']}  k {s['k']}  seed {s['seed']}"
      + (f"  grid feed {s['grid_feed']}" if s.get("grid_feed") else "") + "\n")
    sch = s.get("schedule") or {}
    if sch:
        w(f"  schedule  announce {sch['announce']}, deadline {sch['deadline']} ({sch['timezone']}"
          f"), the day before; a lab day lasts {sch['day_real_s']} s\n")
    w(f"  day 1 ({s.get('day')})  groups {len(s['groups'])}: "
      + ", ".join(f"{g['id']}({g['size']} homes, m={g['magnification']})" for g in s["groups"])
      + "\n")
    w(f"  moves   {len(s['moves'])}  regroup rounds {s['regroup_rounds']}  "
      f"solver {s['solver']}\n")
    w(f"  group sums released {len(s.get('released_groups', []))}, {_refusals(s)}\n")
    for d in s.get("days", []):
        cap = max(d["capacity_wh"]) if d["capacity_wh"] else 0
        absent = d["absent_homes"]
        w(f"  {d['day']}  homes {d['homes_reporting']}/{s['homes']} reporting"
          + (f" ({len(absent)} absent)" if absent else "")
          + f"  capacity {cap} Wh/frame  peak {d['peak_before_wh']} -> {d['peak_after_wh']} Wh"
          f"  overload {d['overload_before_wh']} -> {d['overload_after_wh']} Wh"
          f"  curtailed {d['curtailed_wh']} Wh"
          f"  reserve {max(d.get('reserve_wh') or [0])} Wh/frame"
          f" ({len(d.get('reserve_homes') or [])} homes)"
          f"  overload with them at cap {d.get('true_overload_after_wh', 0)} Wh\n")
    p = s.get("period")
    if p and n_days > 1:
        r = p["refusals"]
        w(f"  period  moved {p['moved_wh']} Wh, curtailed {p['curtailed_wh']} Wh, "
          f"absent home-days {p['absent_home_days']}, refusals {r['total']} "
          f"({r['resolved_by_reask']} released on a re-ask, {r['resolved_by_reforming']} "
          f"re-formed, {r['unresolved']} not resolved)\n")
    if "coordinator_processes" in s:
        w(f"  coordinator processes {s['coordinator_processes']}\n")
    ok1 = all(d["true_load_wh"] == d["coordinator_load_before_wh"] for d in s.get("days", []))
    ok2 = all(relays_as_decided(d) for d in s.get("days", []))
    w(f"  exact masking (true load == coordinator's view)   {'yes' if ok1 else 'NO'}\n")
    w(f"  relays did what was decided                       {'yes' if ok2 else 'NO'}\n")
    if "openadr_report_sent" in s:
        w(f"  OpenADR report sent to the VTN                    "
          f"{'yes' if s['openadr_report_sent'] else 'NO'}\n")
    t = s.get("timings_s") or {}
    if t:
        w("  timings " + ", ".join(f"{k} {v} s" for k, v in t.items()) + "\n")
    for f in s.get("failures", []):
        w(f"  FAILED: {f}\n")
