"""OpenADR 2.0b events -> the coordinator's per-frame capacity (Wh per frame), and the opt rule.

Pure functions over the event dicts openleadr hands its VEN (`on_event`), no I/O and no clock:
every rule below is written out with a worked example in docs/grid-feed.md.

Accepted signals (any other signal of an event is ignored and logged; an event with none of them
is rejected, `no_capacity_signal`):

=================  =========================  ===========================================
signalName         signalType                 meaning of an interval's value
=================  =========================  ===========================================
``LOAD_DISPATCH``  ``setpoint``               the most the aggregate may draw in the interval
``LOAD_CONTROL``   ``x-loadControlSetpoint``  the same
=================  =========================  ===========================================

with an itemBase (OpenADR 2.0b profile spec, "Signal Types") of

* ``powerReal``, unit ``W``: an average power; the energy limit is value x seconds / 3600;
* ``energyReal``, unit ``Wh``: the energy of the whole interval, spread evenly over it;

and any SI scale code (``k`` = 1000, ``M`` = 10^6, ...).  Each interval becomes a `Limit`: a
rate in Wh per second over [dtstart, dtstart + duration).

Intervals to frames (`frame_rates`): a frame takes the *lowest* rate of every limit that
overlaps it, however short the overlap, and its capacity is floor(rate x frame_s).  So a limit
that covers part of a frame holds for the whole frame (the coordinator moves whole frames; it
cannot keep a limit for half of one), overlapping events give the tighter limit (meeting it meets
both: priorities are not needed for a limit), and an interval aligned with the frames gives its
own value back exactly.  A frame no limit overlaps keeps the day's default profile.

Times: OpenADR times are instants (UTC on the wire).  Day D's frames are the coordinator's: frame
k covers [start + k*frame_s, start + (k+1)*frame_s), where start is the round announcement's for
D or, before one is known, local midnight of D in the feed's time zone (`local_day`).

Rejected, with a reason (the event is opted out of and changes no capacity): ``bad_event`` (no
id or modification number), ``no_capacity_signal``, ``bad_item_base`` (no powerReal / energyReal
itemBase, or a unit that is not its unit), ``bad_scale``, ``bad_value`` (not a finite number),
``out_of_range`` (negative, or over 2^50 Wh in a day), ``bad_interval`` (no start, a naive time,
or a duration <= 0: OpenADR's open-ended 0 cannot be cut into days), ``overlapping_intervals``
(two intervals of one signal overlap).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

#: The protocol's bound on one frame's capacity (protocol_svc.parse_capacity).
MAX_WH = 1 << 50

ACCEPTED_SIGNALS = (("LOAD_DISPATCH", "setpoint"), ("LOAD_CONTROL", "x-loadControlSetpoint"))
#: itemBase name -> (its unit, seconds that turn value x scale into Wh per second: None = the
#: interval's own duration, for an energy).
ITEM_BASES: dict[str, tuple[str, int | None]] = {"powerReal": ("W", 3600),
                                                 "energyReal": ("Wh", None)}
SCALES = {"p": Fraction(1, 10**12), "n": Fraction(1, 10**9), "micro": Fraction(1, 10**6),
          "m": Fraction(1, 1000), "c": Fraction(1, 100), "d": Fraction(1, 10),
          "none": Fraction(1), "k": Fraction(1000), "M": Fraction(10**6),
          "G": Fraction(10**9), "T": Fraction(10**12)}
CANCELLED = "cancelled"


class Rejected(ValueError):
    """An event this feed will not use: `reason` is a short code, `detail` says what was wrong."""

    def __init__(self, event_id: str, mod: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.event_id, self.mod, self.reason, self.detail = event_id, mod, reason, detail


@dataclass(frozen=True)
class Limit:
    """At most `wh_per_s` Wh per second, on average, over [t0, t1) (epoch seconds)."""

    t0: int
    t1: int
    wh_per_s: Fraction


@dataclass(frozen=True)
class EventLimits:
    event_id: str
    mod: int
    status: str
    limits: tuple[Limit, ...]
    #: signals of the event that carry no capacity, as "NAME/type" (logged, not used)
    ignored: tuple[str, ...] = ()

    @property
    def cancelled(self) -> bool:
        return self.status == CANCELLED


@dataclass(frozen=True)
class DayFrames:
    """Day `day`'s frames: frame k covers [start + k*frame_s, start + (k+1)*frame_s)."""

    day: str
    start: int
    frames: int
    frame_s: int

    @property
    def end(self) -> int:
        return self.start + self.frames * self.frame_s


def local_day(day: str, tz: dt.tzinfo, frames: int, frame_s: int) -> DayFrames:
    """Day `day` starting at local midnight in `tz` (as Python's zoneinfo resolves it)."""
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tz)
    return DayFrames(day, int(start.timestamp()), frames, frame_s)


def days_overlapping(t0: int, t1: int, tz: dt.tzinfo, frames: int, frame_s: int) -> list[str]:
    """The days (local to `tz`) whose frames overlap [t0, t1)."""
    span = dt.timedelta(seconds=frames * frame_s)
    d = (dt.datetime.fromtimestamp(t0, tz) - span).date()
    last = dt.datetime.fromtimestamp(t1, tz).date()
    out = []
    while d <= last:
        g = local_day(d.isoformat(), tz, frames, frame_s)
        if g.start < t1 and t0 < g.end:
            out.append(g.day)
        d += dt.timedelta(days=1)
    return out


# ---------------------------------------------------------------- events -> limits


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def _instant(v: Any) -> dt.datetime | None:
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v
    return None


def read_event(event: Mapping[str, Any]) -> EventLimits:
    """One event as openleadr parsed it -> its limits, or Rejected(reason).  A cancelled event
    is read as cancelled whatever its signals: a cancellation is always honoured."""
    desc = _get(event, "event_descriptor")
    eid, mod = _get(desc, "event_id"), _get(desc, "modification_number")
    if not isinstance(eid, str) or not eid or not isinstance(mod, int) or mod < 0:
        raise Rejected(str(eid), -1, "bad_event", "no event id or modification number")
    status = _get(desc, "event_status")
    status = status if isinstance(status, str) else "none"
    if status == CANCELLED:
        return EventLimits(eid, mod, status, ())
    signals = _get(event, "event_signals")
    if isinstance(signals, Mapping):  # one signal, not in a list
        signals = [signals]
    if not isinstance(signals, list):
        raise Rejected(eid, mod, "no_capacity_signal", "the event has no signals")
    limits: list[Limit] = []
    ignored: list[str] = []
    for sig in signals:
        name, typ = _get(sig, "signal_name"), _get(sig, "signal_type")
        if (name, typ) not in ACCEPTED_SIGNALS:
            ignored.append(f"{name}/{typ}")
            continue
        limits += _signal_limits(eid, mod, sig)
    if not limits:
        raise Rejected(eid, mod, "no_capacity_signal",
                       f"no LOAD_DISPATCH/setpoint or LOAD_CONTROL/x-loadControlSetpoint "
                       f"signal with intervals (got {', '.join(ignored) or 'none'})")
    return EventLimits(eid, mod, status, tuple(limits), tuple(ignored))


def _signal_limits(eid: str, mod: int, sig: Mapping[str, Any]) -> list[Limit]:
    what = f"signal {_get(sig, 'signal_name')}/{_get(sig, 'signal_type')}"
    m = _get(sig, "measurement")
    base, unit, scale = _get(m, "name"), _get(m, "unit"), _get(m, "scale")
    if base not in ITEM_BASES or unit != ITEM_BASES[base][0]:
        raise Rejected(eid, mod, "bad_item_base",
                       f"{what}: itemBase {base!r} in {unit!r}; accepted: powerReal in W, "
                       "energyReal in Wh")
    scale = "none" if scale is None else scale
    if scale not in SCALES:
        raise Rejected(eid, mod, "bad_scale", f"{what}: unknown SI scale code {scale!r}")
    per_s = ITEM_BASES[base][1]
    intervals = _get(sig, "intervals")
    if not isinstance(intervals, list) or not intervals:
        raise Rejected(eid, mod, "bad_interval", f"{what}: no intervals")
    out: list[Limit] = []
    for i, iv in enumerate(intervals):
        t0, dur, v = _instant(_get(iv, "dtstart")), _get(iv, "duration"), _get(iv, "signal_payload")
        if t0 is None or not isinstance(dur, dt.timedelta) or dur <= dt.timedelta(0):
            raise Rejected(eid, mod, "bad_interval",
                           f"{what}, interval {i}: needs a time-zone-aware start and a "
                           f"duration > 0 (got {t0!r}, {dur!r})")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise Rejected(eid, mod, "bad_value", f"{what}, interval {i}: value {v!r}")
        # str(float) is the shortest decimal that reads back as the same float: the value the
        # XML carried, kept exact from here on.
        value = Fraction(str(v)) * SCALES[scale]
        seconds = Fraction(dur.total_seconds())
        rate = value / (per_s if per_s is not None else seconds)
        if value < 0 or rate * 86400 > MAX_WH:
            raise Rejected(eid, mod, "out_of_range",
                           f"{what}, interval {i}: {v} {scale} {unit} (0 .. 2^50 Wh a day)")
        # Sub-second edges round outwards: the limit never covers less than the event said.
        start = t0.timestamp()
        out.append(Limit(math.floor(start), math.ceil(start + float(seconds)), rate))
    spans = sorted((lim.t0, lim.t1) for lim in out)
    for (_a0, a1), (b0, _b1) in itertools.pairwise(spans):
        if b0 < a1:
            raise Rejected(eid, mod, "overlapping_intervals",
                           f"{what}: intervals overlap at {b0}")
    return out


# ---------------------------------------------------------------- limits -> frames


def frame_rates(day: DayFrames, limits: Iterable[Limit]) -> list[Fraction | None]:
    """Per frame of `day`, the lowest rate among the limits overlapping it (None: no limit)."""
    rates: list[Fraction | None] = [None] * day.frames
    for lim in limits:
        if lim.t1 <= day.start or lim.t0 >= day.end:
            continue
        k0 = max(0, (lim.t0 - day.start) // day.frame_s)
        k1 = min(day.frames, -((day.start - lim.t1) // day.frame_s))  # ceil
        for k in range(k0, k1):
            r = rates[k]
            rates[k] = lim.wh_per_s if r is None else min(r, lim.wh_per_s)
    return rates


def frame_wh(rate: Fraction, frame_s: int) -> int:
    return min(MAX_WH, math.floor(rate * frame_s))


def day_capacity(day: DayFrames, limits: Iterable[Limit],
                 default: Sequence[int] | None) -> list[int]:
    """The day's capacity: the limits where they are, the default elsewhere (no default:
    2^50, i.e. the grid set no limit there)."""
    base = list(default) if default is not None and len(default) == day.frames \
        else [MAX_WH] * day.frames
    return [base[k] if r is None else frame_wh(r, day.frame_s)
            for k, r in enumerate(frame_rates(day, limits))]


def touches(day: DayFrames, ev: EventLimits) -> bool:
    return any(lim.t0 < day.end and day.start < lim.t1 for lim in ev.limits)


# ---------------------------------------------------------------- outcome -> opt and report


def outcome_frames(outcome: Mapping[str, Any]) -> DayFrames:
    return DayFrames(outcome["day"], outcome["start"], outcome["frames"], outcome["frame_s"])


def planned_wh(outcome: Mapping[str, Any]) -> list[int]:
    """What the grid will see from the special circuits: the adjusted released totals plus the
    homes reserved at their cap."""
    return [a + r for a, r in zip(outcome["load_after_wh"], outcome["reserve_wh"], strict=True)]


def baseline_wh(outcome: Mapping[str, Any]) -> list[int]:
    """The same before the adjustment: what the event's limits changed."""
    return [b + r for b, r in zip(outcome["load_before_wh"], outcome["reserve_wh"], strict=True)]


def violations(ev: EventLimits, outcome: Mapping[str, Any]) -> list[int]:
    """The frames of the outcome's day where the planned aggregate exceeds the event's own
    limit (the opt rule: opt in while there are none)."""
    day = outcome_frames(outcome)
    planned = planned_wh(outcome)
    return [k for k, r in enumerate(frame_rates(day, ev.limits))
            if r is not None and planned[k] > frame_wh(r, day.frame_s)]
