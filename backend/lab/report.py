"""`hems lab --report PATH`: one self-contained HTML file from the lab summary.

Sections (element ids): ``summary`` (key figures and the checks), ``capacity`` (capacity and
load per frame before and after), ``heatmap`` (the group totals per frame, before and after the
moves), ``moves``, ``relays`` (relay timelines for a sample of homes), ``groups`` (released and
refused group sums with reasons, excluded homes, the mask brokers' counters), ``timings`` and
``details`` (the parameters and the command that reproduces the run); ``failures`` when a part
failed.  Figures are inline SVG (plots.py); no script, no stylesheet, no font is fetched.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backend.common.files import write_atomic
from backend.lab import plots
from backend.lab.days import relays_as_decided
from backend.lab.outdir import REPORT_TAG


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _hhmm(frame: int, frame_s: int) -> str:
    m = frame * frame_s // 60
    return f"{m // 60:02d}:{m % 60:02d}"


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _section(sid: str, title: str, body: str, lead: str = "") -> str:
    p = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{p}{body}</section>'


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{value}</div><div class="sub">{_e(sub)}</div></div>')


def _check(ok: bool, text: str) -> str:
    mark = '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'
    return f"<li>{mark} {_e(text)}</li>"


def summary_section(s: dict[str, Any]) -> str:
    peak_b, peak_a = max(s["true_load_wh"]), max(s["relay_load_after_wh"])
    cap = max(s["capacity_wh"])
    t = s.get("timings_s") or {}
    cards = "".join([
        _card("homes", str(s["homes"]), f"k = {s['k']} · {s['mask_brokers']} mask broker"
              + ("s" if s["mask_brokers"] != 1 else "")),
        _card("groups", str(len(s["groups"])), f"regroup rounds {s['regroup_rounds']}"),
        _card("moves", str(len(s["moves"])), f"{s.get('moved_wh') or 0} Wh moved"),
        _card("peak", f"{peak_b} → {peak_a}", f"Wh/frame; capacity {cap}"),
        _card("overload", f"{s['overload_before_wh']} → {s['overload_after_wh']}",
              f"Wh; curtailed {s['curtailed_wh']} Wh"),
        _card("reserve", f"{max(s.get('reserve_wh') or [0])}",
              f"Wh/frame for {len(s.get('reserve_homes') or [])} home(s) outside the totals"),
        _card("days", str(s.get("days_run", 1)), f"whole lab {t.get('total', '–')} s"),
    ])
    k = int(s["k"])
    days = s.get("days") or [s]
    checks = "".join([
        _check(all(d["true_load_wh"] == d["coordinator_load_before_wh"] for d in days),
               "exact masking: every day, the coordinator's group totals, from masked plans "
               "and mask sums only, add up to the counted homes' own plans in every frame"),
        _check(all(relays_as_decided(d) for d in days),
               "the relays did what was decided: every day, the energy the counted homes' "
               "relays switched equals the coordinator's load after the moves in every frame"),
        _check(s["overload_after_wh"] == 0, "no overload left after the adjustment"),
        _check(all(d.get("true_overload_after_wh", 0) == 0 for d in days),
               "nobody is invisible load: every day, the counted homes' relays plus every other "
               "home drawing its full contracted cap stay under capacity (the coordinator "
               "reserved their caps)"),
        _check(all(g["size"] >= k for g in s["groups"]),
               f"every group has at least k = {k} homes"),
    ])
    return _section("summary", "Summary", f'<div class="cards">{cards}</div>'
                    f'<ul id="checks" class="checks">{checks}</ul>')


def moves_section(s: dict[str, Any]) -> str:
    frame_s = int(s["frame_s"])
    mag = {g["id"]: g["magnification"] for g in s["groups"]}
    totals = {g["id"]: g.get("total_wh") for g in s["groups"]}
    rows = []
    for g, f, t in sorted(s["moves"], key=lambda m: (str(m[0]), m[1])):
        tw = totals.get(g)
        rows.append((g, mag.get(g, "?"), f"{f}  ({_hhmm(f, frame_s)})",
                     f"{t}  ({_hhmm(t, frame_s)})", f"{(t - f) * frame_s // 60:+d} min",
                     tw[f] if tw else "?"))
    if not rows:
        return _section("moves", "Moves", "<p>No move was needed.</p>")
    lead = ("Each move shifts <em>all</em> of a group's load in one frame to a later frame "
            "inside its magnification window; every member of the group gets the same "
            "adjustment.")
    return _section("moves", f"Moves ({len(rows)})", _table(
        ["group", "m", "from frame", "to frame", "shift", "energy moved (Wh)"], rows, "num"),
        lead)


_RESOLVED = {"re-ask": "released on a re-ask",
             "re-formed": "re-formed without the missing or mismatched homes",
             None: "left the round"}


def groups_section(s: dict[str, Any]) -> str:
    released = s.get("released_groups", [])
    refused = s.get("refusals", s.get("refused_groups", []))
    parts = [f"<h3>Released ({len(released)})</h3>"]
    parts.append(_table(["group", "mask broker", "homes"],
                        [(r.get("id"), r.get("broker"), r.get("size")) for r in released])
                 if released else "<p>No group sum was released.</p>")
    later = sum(1 for r in refused if r.get("resolved"))
    title = f"Refused ({len(refused)}" + (f"; {later} of them released later)" if later else ")")
    parts.append(f"<h3>{_e(title)}</h3>")
    parts.append(_table(["group", "mask broker", "reason", "members named", "then"],
                        [(r.get("id"), r.get("broker"), r.get("reason"),
                          ", ".join(r.get("missing") or r.get("mismatched") or []) or "–",
                          _RESOLVED.get(r.get("resolved"), "?"))
                         for r in refused])
                 if refused else "<p>No group sum was refused.</p>")
    rej = s.get("coordinator_rejections") or {}
    resends = s.get("coordinator_resends", 0)
    parts.append("<h3>Messages the coordinator turned away</h3>")
    parts.append("<p>" + (", ".join(f"{_e(k)} {v}" for k, v in sorted(rej.items())) or "none")
                 + f". Harmless re-sends (a home repeating a report it had no reply to yet, "
                 f"answered <code>replay</code>): {resends}.</p>")
    excl = s.get("excluded_homes", [])
    if excl:
        parts.append(f"<h3>Excluded homes ({len(excl)})</h3>")
        parts.append(_table(["home", "reason", "group", "mask broker"],
                            [(x.get("home"), x.get("reason"), x.get("group"), x.get("broker"))
                             for x in excl]))
    stats = s.get("mask_broker_stats") or {}
    if stats:
        rows = []
        for b, st in sorted(stats.items()):
            g = st.get("groups", {})
            refused_by = ", ".join(f"{k} {v}" for k, v in g.get("refused_by_reason", {}).items())
            rej = ", ".join(f"{k} {v}" for k, v in (st.get("rejections") or {}).items())
            rows.append((b, st.get("masks", {}).get("accepted_total"), g.get("requests"),
                         g.get("released"), refused_by or "none", rej or "none",
                         st.get("atoms", {}).get("min_size")))
        parts.append("<h3>Mask brokers</h3>")
        parts.append(_table(["broker", "masks accepted", "requests", "released",
                             "refused (by reason)", "rejected messages", "smallest atom"],
                            rows))
    lead = ("A mask broker answers a group's mask sum only under its release rule: at least "
            "k homes, every member's mask present, the same member set on both sides, and no "
            "cell of the day's partition below k homes (docs/privacy.md).")
    return _section("groups", "Released and refused groups", "".join(parts), lead)


def days_section(s: dict[str, Any]) -> str:
    days = s.get("days") or []
    if len(days) < 2:
        return ""
    rows = []
    for d in days:
        cap = max(d["capacity_wh"]) if d["capacity_wh"] else 0
        refused = d.get("refusals", [])
        rows.append((d["day"], f"{d['homes_reporting']}/{s['homes']}",
                     ", ".join(d["absent_homes"]) or "–", cap,
                     max(d.get("reserve_wh") or [0]), d.get("true_overload_after_wh", 0),
                     f"{d['peak_before_wh']} → {d['peak_after_wh']}",
                     f"{d['overload_before_wh']} → {d['overload_after_wh']}",
                     d.get("moved_wh") or 0, d["curtailed_wh"], len(d["groups"]),
                     f"{len(refused)} ({sum(1 for r in refused if r.get('resolved'))} later "
                     "released)" if refused else "0"))
    lead = ("One long-running coordinator served every day: each day's round was announced "
            "the day before, and homes that had no network over their round followed their "
            "own plan that day (their load is in the peak and overload after, not in the "
            "coordinator's view).")
    body = _table(["day", "reporting", "absent", "capacity (Wh/frame)",
                   "reserve (Wh/frame)", "overload, outside homes at cap (Wh)", "peak (Wh)",
                   "overload (Wh)", "moved (Wh)", "curtailed (Wh)", "groups", "refusals"],
                  rows, "num")
    p = s.get("period") or {}
    homes = p.get("per_home") or {}
    if homes:
        top = sorted(homes.items(), key=lambda kv: -(kv[1].get("moved_wh", 0)
                                                     + kv[1].get("curtailed_wh", 0)))
        body += (f"<h3>Per home over the period ({len(days)} days)</h3>"
                 + _table(["home", "days counted", "energy moved (Wh)", "curtailed (Wh)"],
                          [(h, v.get("days_counted", 0), v.get("moved_wh", 0),
                            v.get("curtailed_wh", 0)) for h, v in top], "num"))
    return _section("days", f"Day by day ({len(days)} days)", body, lead)


def timings_section(s: dict[str, Any]) -> str:
    fig = plots.timings_figure(s)
    rows = [(f"lab: {k}", plots.secs(v)) for k, v in (s.get("timings_s") or {}).items()]
    rows += [(f"coordinator: {k.removesuffix('_s')}", plots.secs(v))
             for k, v in (s.get("coordinator_timings_s") or {}).items()]
    return _section("timings", "Timings", (fig or "") + _table(["step", "time"], rows, "num"))


def command(s: dict[str, Any]) -> str:
    argv = ["hems", "lab", "--homes", s["homes"], "--seed", s["seed"]]
    for key, flag, default in (("days_run", "--days", 1), ("frames", "--frames", 96),
                               ("frame_real_s", "--frame-real-s", 0.2), ("k", "--k", 3),
                               ("mask_brokers", "--mask-brokers", 1),
                               ("solver", "--solver", "heuristic")):
        if key in s and s[key] != default:
            argv += [flag, s[key]]
    return " ".join(str(a) for a in argv)


def details_section(s: dict[str, Any]) -> str:
    keys = ("day", "homes", "frames", "frame_s", "frame_real_s", "seed", "k", "mask_brokers",
            "solver", "solve_status", "capacity_fraction", "lab_dir")
    rows = [(k, s[k]) for k in keys if s.get(k) is not None
            and (k != "lab_dir" or Path(s[k]).exists())]  # a temporary one is gone
    return _section("details", "Details", _table(["parameter", "value"], rows)
                    + f"<p>Reproduce: <code>{_e(command(s))}</code></p>")


def _figure(sid: str, title: str, svg: str | None, lead: str) -> str:
    body = f'<figure>{svg}</figure>' if svg else "<p>No data.</p>"
    return _section(sid, title, body, lead)


def render(s: dict[str, Any]) -> str:
    """The whole report as one HTML document."""
    failures = s.get("failures") or []
    ok = not failures
    head = (f"{s['homes']} homes · {s['frames']} frames of {int(s['frame_s']) // 60} min · "
            f"seed {s['seed']}" + (f" · day {s['day']}" if s.get("day") else "")
            + (f" · {s['days_run']} days" if s.get("days_run", 1) > 1 else "")
            + (f" · grid feed {s['grid_feed']}" if s.get("grid_feed") else ""))
    parts = [
        f'<header><h1>hems lab report</h1><p class="meta">{_e(head)}</p>'
        f'<p class="status {"ok" if ok else "bad"}">'
        f'{"all checks passed" if ok else "FAILED"}</p></header>',
    ]
    if failures:
        parts.append(_section("failures", "Failures",
                              "<ul>" + "".join(f"<li>{_e(f)}</li>" for f in failures) + "</ul>"))
    parts += [
        summary_section(s),
        days_section(s),
        _figure("capacity", "Capacity and load per frame", plots.capacity_figure(s),
                "The homes' summed plans (grey) exceed the grid's capacity in the red area; "
                "after the adjustment the relays (blue) keep the load under it."),
        _figure("heatmap", "Group totals per frame", plots.heatmap_figure(s),
                "The only per-frame figures the coordinator ever learns: each group's total. "
                "Arrows mark the moves."),
        moves_section(s),
        _figure("relays", "Relay timelines", plots.relay_figure(s),
                f"{len(s.get('relay_timelines') or [])} of {s['homes']} homes, as their relays "
                "recorded the day: the plan above, the relay below."),
        groups_section(s),
        timings_section(s),
        details_section(s),
    ]
    title = f"hems lab report: {s['homes']} homes, seed {s['seed']}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"{REPORT_TAG}"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main>"
            "<footer>Made by <code>hems lab</code>. Self-contained: no script, no network."
            "</footer></body></html>\n")


def write(s: dict[str, Any], path: Path) -> Path:
    """Render and write atomically (a half-written report is never left at `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render(s), 0o644)
    return path


CSS = """
:root { --ink:#24292f; --mute:#57606a; --line:#d0d7de; --bg:#f6f8fa; --ok:#1a7f37;
        --bad:#cf222e; --blue:#0969da; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 8px; }
header { display:flex; align-items:baseline; gap:18px; flex-wrap:wrap; margin-bottom:8px; }
h1 { font-size:26px; margin:0; }
.meta { color:var(--mute); margin:0; }
.status { margin:0 0 0 auto; padding:3px 12px; border-radius:999px; font-weight:600;
          font-size:13px; }
.status.ok { background:#dafbe1; color:var(--ok); }
.status.bad { background:#ffebe9; color:var(--bad); }
section { background:#fff; border:1px solid var(--line); border-radius:10px;
          padding:16px 22px 18px; margin:16px 0; }
h2 { font-size:18px; margin:0 0 6px; }
h3 { font-size:15px; margin:16px 0 6px; }
.lead { color:var(--mute); margin:0 0 10px; font-size:14px; }
.cards { display:grid; grid-template-columns:repeat(6, 1fr); gap:10px; margin:8px 0 12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.card .label { color:var(--mute); font-size:12px; text-transform:uppercase;
               letter-spacing:.04em; }
.card .value { font-size:22px; font-weight:650; white-space:nowrap; }
.card .sub { color:var(--mute); font-size:12px; }
.checks { list-style:none; padding:0; margin:0; }
.checks li { padding:3px 0; }
.ok { color:var(--ok); font-weight:700; }
.bad { color:var(--bad); font-weight:700; }
figure { margin:0; }
svg.plot { width:100%; height:auto; display:block; }
table { border-collapse:collapse; font-size:13.5px; margin:4px 0 8px; }
th, td { text-align:left; padding:4px 14px 4px 0; border-bottom:1px solid #eaeef2; }
th { color:var(--mute); font-weight:600; }
table.num td:last-child { text-align:right; }
code { background:var(--bg); padding:1px 5px; border-radius:4px; font-size:13px; }
#failures { border-color:var(--bad); }
footer { max-width:1180px; margin:0 auto; padding:0 28px 28px; color:var(--mute);
         font-size:12.5px; }
@media (max-width: 900px) { .cards { grid-template-columns:repeat(3, 1fr); } }
"""
