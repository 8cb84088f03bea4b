"""The VEN's state, sans I/O: OpenADR events, round announcements, the default profile and the
rounds' outcomes in; the day profiles to publish, the opt changes and the reports out.

Every input method returns the actions it calls for; the adapter (ven.py) carries them out
(MQTT publish, oadrCreatedEvent, oadrUpdateReport) and logs each with its time.  The rules:

* A day's profile (`hems/v1/capacity/<day>`) is published when an event that limits some of its
  frames arrives, changes (a new modification number), is cancelled, or when the default profile
  or the day's round geometry changes; only when the profile or its list of events differs from
  what was last published.  Frames no event limits keep the default (mapping.day_capacity); once
  the last event of a day is cancelled the day's profile is the default, published with
  ``events: []`` so the coordinator sees the change.
* An update that is rejected leaves the event's last accepted version in force (bad input
  changes no capacity) and opts out of it, with the reason.
* Opt (docs/grid-feed.md, "Opting in and out"): an accepted event is opted in on receipt; each
  round's outcome for a day the event limits is then checked against the event's own limits
  (mapping.violations): any frame over the limit opts out, none opts back in.  A change is sent
  as it happens; the same opt is never sent twice.
* Each outcome is reported (planned and baseline aggregate per frame) to the VTN; the same
  outcome again (retained, after an MQTT reconnect) is not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from hemsfw import protocol_svc

from . import mapping
from .mapping import DayFrames, EventLimits, Limit, Rejected

OPT_IN, OPT_OUT = "optIn", "optOut"
#: Days, events and outcomes older than this are forgotten (the coordinator is done with them).
KEEP_S = 2 * 86400
#: The report's data points (r_id -> what it holds), in the order registered with the VTN.
REPORT_POINTS = {"planned_load": "the planned aggregate per frame: load_after_wh + reserve_wh",
                 "baseline_load": "the same before the adjustment: load_before_wh + reserve_wh"}


@dataclass(frozen=True)
class Publish:
    """Retain `payload` on hems/v1/capacity/<day>."""

    day: str
    payload: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Opt:
    """Tell the VTN the new opt for an event (oadrCreatedEvent)."""

    event_id: str
    mod: int
    opt: str
    reason: str


@dataclass(frozen=True)
class Report:
    """Report an outcome: r_id -> [(frame start epoch, Wh)] (REPORT_POINTS)."""

    day: str
    round: int
    frame_s: int
    rows: dict[str, list[tuple[int, int]]]


Action = Publish | Opt | Report


class Feed:
    def __init__(self, tz: dt.tzinfo, frames: int, frame_s: int,
                 default_wh: int | None = None, source: str = "openadr") -> None:
        self.tz, self.frames, self.frame_s = tz, frames, frame_s
        self.default_wh, self.source = default_wh, source
        self.events: dict[str, EventLimits] = {}        # accepted, in force
        self.rejected: dict[str, dict[str, Any]] = {}   # event id -> mod, reason, detail, at
        self.opts: dict[str, dict[str, Any]] = {}       # event id -> opt, reason, mod, at
        self.rounds: dict[str, dict[str, Any]] = {}     # day -> round, deadline, geometry
        self.published: dict[str, dict[str, Any]] = {}  # day -> last payload published
        self.outcomes: dict[str, dict[str, Any]] = {}   # day -> latest outcome
        self.default: list[int] | None = None           # hems/v1/capacity, when known

    # ------------------------------------------------------------ inputs

    def event(self, raw: Mapping[str, Any], now: float) -> tuple[str, list[Action]]:
        """An event (new, updated or cancelled) -> the opt to answer with, and the actions."""
        try:
            ev = mapping.read_event(raw)
        except Rejected as r:
            self.rejected[r.event_id] = {"mod": r.mod, "reason": r.reason, "detail": r.detail,
                                         "at": int(now)}
            self._set_opt(r.event_id, r.mod, OPT_OUT, f"rejected: {r.reason}: {r.detail}", now)
            return OPT_OUT, []
        self.rejected.pop(ev.event_id, None)
        old = self.events.get(ev.event_id)
        if ev.cancelled:
            self.events.pop(ev.event_id, None)
            days = self._days_of(old) if old is not None else set()
            acts = self._recompute(days, f"event {ev.event_id} cancelled (mod {ev.mod})", now)
            self._set_opt(ev.event_id, ev.mod, OPT_IN, "cancellation acknowledged", now)
            return OPT_IN, acts
        if old is not None and old.mod == ev.mod:
            # The same version again (a re-send): the same answer.
            return self.opts.get(ev.event_id, {}).get("opt", OPT_IN), []
        self.events[ev.event_id] = ev
        days = self._days_of(ev) | (self._days_of(old) if old is not None else set())
        what = "updated" if old is not None else "received"
        acts = self._recompute(days, f"event {ev.event_id} {what} (mod {ev.mod})", now)
        opt, reason = self._judge(ev)
        self._set_opt(ev.event_id, ev.mod, opt, reason, now)
        return opt, acts

    def round(self, obj: Mapping[str, Any], now: float) -> list[Action]:
        """A round announcement (protocol.parse_round'ed): its day's geometry and deadline."""
        day = obj["day"]
        geom = DayFrames(day, obj["start"], obj["frames"], obj["frame_s"])
        before = self.geometry(day)
        self.rounds[day] = {"round": obj["round"], "deadline": obj["deadline"],
                            "start": geom.start, "frames": geom.frames, "frame_s": geom.frame_s}
        if geom == before:
            return []
        days = {day} if day in self.published or any(
            mapping.touches(geom, e) for e in self.events.values()) else set()
        return self._recompute(days, f"round {obj['round']} of {day} sets its frames", now)

    def set_default(self, capacity_wh: list[int], now: float) -> list[Action]:
        """The default profile (hems/v1/capacity) changed: the days it fills in follow."""
        if capacity_wh == self.default:
            return []
        self.default = list(capacity_wh)
        return self._recompute(set(self.published), "the default profile changed", now)

    def outcome(self, obj: Mapping[str, Any], now: float) -> list[Action]:
        """A round's outcome (protocol_svc.parse_outcome'd): report it, re-judge its events."""
        day = obj["day"]
        if self.outcomes.get(day) == obj:
            return []  # the retained outcome again (an MQTT reconnect): already reported
        self.outcomes[day] = dict(obj)
        start, step = obj["start"], obj["frame_s"]
        rows = {"planned_load": mapping.planned_wh(obj), "baseline_load": mapping.baseline_wh(obj)}
        acts: list[Action] = [Report(day, obj["round"], step, {
            r: [(start + k * step, v) for k, v in enumerate(vals)] for r, vals in rows.items()})]
        geom = mapping.outcome_frames(obj)
        for ev in self.events.values():
            if not mapping.touches(geom, ev) or ev.event_id in self.rejected:
                continue  # a rejected update stays opted out until a good one comes
            opt, reason = self._judge(ev)
            if self.opts.get(ev.event_id, {}).get("opt") != opt:
                self._set_opt(ev.event_id, ev.mod, opt, reason, now)
                acts.append(Opt(ev.event_id, ev.mod, opt, reason))
        return acts

    def prune(self, now: float) -> None:
        """Forget what ended more than KEEP_S ago."""
        old = now - KEEP_S
        for day in [d for d in self.published if self.geometry(d).end < old]:
            del self.published[day]
        for table in (self.outcomes, self.rounds):
            for day in [d for d in table if self.geometry(d).end < old]:
                del table[day]
        for eid in [e for e, ev in self.events.items() if max(x.t1 for x in ev.limits) < old]:
            del self.events[eid]
        for table in (self.rejected, self.opts):
            for eid in [e for e, v in table.items() if v["at"] < old and e not in self.events]:
                del table[eid]

    # ------------------------------------------------------------ views

    def geometry(self, day: str) -> DayFrames:
        r = self.rounds.get(day)
        if r is not None:
            return DayFrames(day, r["start"], r["frames"], r["frame_s"])
        return mapping.local_day(day, self.tz, self.frames, self.frame_s)

    def deadline(self, day: str) -> tuple[int, int] | None:
        """(round, deadline) of the day's latest announced round, if any."""
        r = self.rounds.get(day)
        return None if r is None else (r["round"], r["deadline"])

    def status(self) -> dict[str, Any]:
        return {
            "events": {e.event_id: {"mod": e.mod, "status": e.status,
                                    "days": sorted(self._days_of(e)),
                                    "ignored_signals": list(e.ignored),
                                    **self.opts.get(e.event_id, {})}
                       for e in self.events.values()},
            "rejected": self.rejected,
            "days": {d: {k: p[k] for k in ("capacity_wh", "events", "at")}
                     for d, p in sorted(self.published.items())},
            "default_known": self.default is not None,
            "rounds": self.rounds,
        }

    # ------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        return {"events": {e.event_id: {"mod": e.mod, "status": e.status,
                                        "ignored": list(e.ignored),
                                        "limits": [[x.t0, x.t1, str(x.wh_per_s)]
                                                   for x in e.limits]}
                           for e in self.events.values()},
                "rejected": self.rejected, "opts": self.opts, "rounds": self.rounds,
                "published": self.published}
        # Not the outcomes: they are retained on MQTT and come back after a restart, which
        # reports them again (a report the VTN had not acknowledged is not lost).

    def restore(self, d: Mapping[str, Any]) -> None:
        self.events = {
            eid: EventLimits(eid, e["mod"], e["status"],
                             tuple(Limit(a, b, Fraction(r)) for a, b, r in e["limits"]),
                             tuple(e["ignored"]))
            for eid, e in d["events"].items()}
        self.rejected, self.opts = dict(d["rejected"]), dict(d["opts"])
        self.rounds, self.published = dict(d["rounds"]), dict(d["published"])

    # ------------------------------------------------------------ internals

    def _days_of(self, ev: EventLimits) -> set[str]:
        if not ev.limits:
            return set()
        t0, t1 = min(x.t0 for x in ev.limits), max(x.t1 for x in ev.limits)
        days = set(mapping.days_overlapping(t0, t1, self.tz, self.frames, self.frame_s))
        return days | {d for d in self.rounds if mapping.touches(self.geometry(d), ev)}

    def _default_for(self, geom: DayFrames) -> list[int] | None:
        if self.default is not None and len(self.default) == geom.frames:
            return self.default
        if self.default_wh is not None:
            return [self.default_wh] * geom.frames
        return None

    def _recompute(self, days: set[str], reason: str, now: float) -> list[Action]:
        acts: list[Action] = []
        for day in sorted(days):
            geom = self.geometry(day)
            evs = sorted((e for e in self.events.values() if mapping.touches(geom, e)),
                         key=lambda e: e.event_id)
            prev = self.published.get(day)
            if prev is None and not evs:
                continue  # never published, nothing to say
            cap = mapping.day_capacity(geom, [x for e in evs for x in e.limits],
                                       self._default_for(geom))
            ids = [(e.event_id, e.mod) for e in evs]
            if prev is not None and prev["capacity_wh"] == cap and prev["frames"] == geom.frames \
                    and [(x["id"], x["mod"]) for x in prev.get("events", [])] == ids:
                continue
            payload = protocol_svc.make_day_capacity(day, geom.frames, cap, source=self.source,
                                                 events=ids, at=int(now))
            self.published[day] = payload
            acts.append(Publish(day, payload, reason))
        return acts

    def _judge(self, ev: EventLimits) -> tuple[str, str]:
        """The opt rule: over the event's limit in any frame of a known outcome -> opt out."""
        over, met = [], []
        for day, out in sorted(self.outcomes.items()):
            if not mapping.touches(mapping.outcome_frames(out), ev):
                continue
            bad = mapping.violations(ev, out)
            if bad:
                over.append(f"{day} round {out['round']} frames {bad[:8]}"
                            f"{'...' if len(bad) > 8 else ''}")
            else:
                met.append(f"{day} round {out['round']}")
        if over:
            return OPT_OUT, "planned load over the event's limit: " + "; ".join(over)
        if met:
            return OPT_IN, "the plan meets the event's limits: " + ", ".join(met)
        return OPT_IN, "accepted; no round has planned its days yet"

    def _set_opt(self, eid: str, mod: int, opt: str, reason: str, now: float) -> None:
        self.opts[eid] = {"opt": opt, "reason": reason, "mod": mod, "at": int(now)}
