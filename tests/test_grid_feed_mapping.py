"""OpenADR events -> per-frame capacity (backend/grid_feed/mapping.py): every rule of
docs/grid-feed.md on hand-computed cases.  Events are the dicts openleadr's VEN gets."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backend.grid_feed import mapping
from backend.grid_feed.mapping import DayFrames, Rejected

UTC = dt.UTC
DAY = "2026-12-30"
T0 = dt.datetime(2026, 12, 30, tzinfo=UTC)  # midnight UTC of DAY
START = int(T0.timestamp())
Q = dt.timedelta(minutes=15)


def event(intervals: list[tuple[dt.datetime, dt.timedelta, Any]], *, eid: str = "ev1",
          mod: int = 0, name: str = "LOAD_DISPATCH", typ: str = "setpoint",
          base: str | None = "energyReal", unit: str = "Wh", scale: str = "none",
          status: str = "far", extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    sig: dict[str, Any] = {
        "signal_name": name, "signal_type": typ, "signal_id": "s1",
        "intervals": [{"dtstart": a, "duration": d, "signal_payload": v, "uid": i}
                      for i, (a, d, v) in enumerate(intervals)]}
    if base is not None:
        sig["measurement"] = {"name": base, "unit": unit, "scale": scale, "description": "x"}
    return {"event_descriptor": {"event_id": eid, "modification_number": mod,
                                 "event_status": status},
            "event_signals": [sig, *(extra or [])]}


def day96() -> DayFrames:
    return DayFrames(DAY, START, 96, 900)


def capacity(ev: dict[str, Any], default: list[int] | None = None,
             day: DayFrames | None = None) -> list[int]:
    return mapping.day_capacity(day or day96(), mapping.read_event(ev).limits, default)


def test_aligned_energy_intervals_give_their_values_back() -> None:
    ev = event([(T0 + 68 * Q, Q, 4000.0), (T0 + 69 * Q, Q, 3500.0)])
    cap = capacity(ev, [9000] * 96)
    assert cap[68:70] == [4000, 3500]
    assert cap[:68] == [9000] * 68 and cap[70:] == [9000] * 26


def test_power_in_kilowatts_is_energy_per_frame() -> None:
    # 12 kW for a quarter hour is 3000 Wh; 10.5 kW is 2625 Wh.
    ev = event([(T0 + 4 * Q, 2 * Q, 12.0), (T0 + 6 * Q, Q, 10.5)],
               base="powerReal", unit="W", scale="k")
    assert capacity(ev, [1] * 96)[3:8] == [1, 3000, 3000, 2625, 1]


def test_an_hour_of_energy_is_spread_over_its_frames() -> None:
    ev = event([(T0 + 8 * Q, 4 * Q, 4001.0)])  # 4001 Wh over an hour: 1000.25 per quarter
    assert capacity(ev, [7] * 96)[7:13] == [7, 1000, 1000, 1000, 1000, 7]


def test_a_partial_overlap_holds_for_the_whole_frame() -> None:
    # 17:05-17:50 at 2000 W: frames 17:00, 17:15, 17:30 and 17:45 all get 2000 W x 900 s.
    ev = event([(T0 + 68 * Q + dt.timedelta(minutes=5), dt.timedelta(minutes=45), 2000.0)],
               base="powerReal", unit="W")
    cap = capacity(ev, [9000] * 96)
    assert cap[67:73] == [9000, 500, 500, 500, 500, 9000]


def test_a_frame_takes_the_lowest_of_the_intervals_it_touches() -> None:
    # 1 kW until 17:10, 4 kW after: frame 17:00-17:15 gets the lower.
    t = T0 + 68 * Q
    ev = event([(t - Q, Q + dt.timedelta(minutes=10), 1.0),
                (t + dt.timedelta(minutes=10), dt.timedelta(minutes=20), 4.0)],
               base="powerReal", unit="W", scale="k")
    assert capacity(ev, [9000] * 96)[66:71] == [9000, 250, 250, 1000, 9000]


def test_overlapping_events_give_the_tighter_limit() -> None:
    a = mapping.read_event(event([(T0 + 10 * Q, 4 * Q, 800.0)], base="powerReal", unit="W"))
    b = mapping.read_event(event([(T0 + 12 * Q, 4 * Q, 400.0)], eid="ev2",
                                 base="powerReal", unit="W"))
    cap = mapping.day_capacity(day96(), [*a.limits, *b.limits], [9000] * 96)
    assert cap[9:17] == [9000, 200, 200, 100, 100, 100, 100, 9000]


def test_a_limit_above_the_default_replaces_it() -> None:
    assert capacity(event([(T0, Q, 5000.0)]), [100] * 96)[:2] == [5000, 100]


def test_no_default_leaves_the_rest_of_the_day_unlimited() -> None:
    assert capacity(event([(T0, Q, 5.0)]))[:2] == [5, mapping.MAX_WH]


def test_frames_follow_the_local_midnight_of_the_time_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    day = mapping.local_day(DAY, tokyo, 96, 900)
    assert day.start == START - 9 * 3600  # 2026-12-30 00:00 JST = 12-29 15:00 UTC
    # 08:00 UTC is 17:00 in Tokyo: frame 68 of the Tokyo day.
    ev = event([(T0 + dt.timedelta(hours=8), Q, 321.0)])
    assert capacity(ev, [0] * 96, day)[68] == 321
    assert mapping.days_overlapping(START, START + 900, tokyo, 96, 900) == [DAY]
    assert mapping.days_overlapping(START - 3600, START + 900, UTC, 96, 900) == [
        "2026-12-29", DAY]


def test_a_day_with_a_clock_change_keeps_frames_times_frame_s_from_midnight() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = mapping.local_day("2026-03-29", berlin, 96, 900)  # 23-hour day (CET -> CEST)
    assert day.start == int(dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC).timestamp())
    assert day.end - day.start == 86400


def test_a_cancelled_event_is_read_without_its_signals() -> None:
    ev = mapping.read_event(event([], status="cancelled", base=None))
    assert ev.cancelled and ev.limits == ()


def test_other_signals_beside_a_capacity_signal_are_ignored() -> None:
    simple = {"signal_name": "SIMPLE", "signal_type": "level", "intervals": []}
    ev = mapping.read_event(event([(T0, Q, 5.0)], extra=[simple]))
    assert ev.ignored == ("SIMPLE/level",) and len(ev.limits) == 1


def test_load_control_setpoint_is_accepted() -> None:
    ev = event([(T0, Q, 7.0)], name="LOAD_CONTROL", typ="x-loadControlSetpoint")
    assert capacity(ev, [0] * 96)[0] == 7


REJECTED = [
    ("simple_level_only", dict(name="SIMPLE", typ="level"), [(T0, Q, 1.0)],
     "no_capacity_signal"),
    ("load_control_capacity_fraction", dict(name="LOAD_CONTROL", typ="x-loadControlCapacity"),
     [(T0, Q, 0.5)], "no_capacity_signal"),
    ("no_item_base", dict(base=None), [(T0, Q, 1.0)], "bad_item_base"),
    ("price_item_base", dict(base="currency", unit="USD"), [(T0, Q, 1.0)], "bad_item_base"),
    ("power_in_wh", dict(base="powerReal", unit="Wh"), [(T0, Q, 1.0)], "bad_item_base"),
    ("unknown_scale", dict(scale="X"), [(T0, Q, 1.0)], "bad_scale"),
    ("negative", {}, [(T0, Q, -1.0)], "out_of_range"),
    ("too_large", dict(scale="T"), [(T0, Q, 1e6)], "out_of_range"),
    ("nan", {}, [(T0, Q, float("nan"))], "bad_value"),
    ("text", {}, [(T0, Q, "10")], "bad_value"),
    ("zero_duration", {}, [(T0, dt.timedelta(0), 1.0)], "bad_interval"),
    ("naive_start", {}, [(T0.replace(tzinfo=None), Q, 1.0)], "bad_interval"),
    ("no_intervals", {}, [], "bad_interval"),
    ("overlap", {}, [(T0, 2 * Q, 1.0), (T0 + Q, Q, 1.0)], "overlapping_intervals"),
]


@pytest.mark.parametrize(("name", "kw", "intervals", "reason"), REJECTED,
                         ids=[r[0] for r in REJECTED])
def test_malformed_or_out_of_range_events_are_rejected_with_a_reason(
        name: str, kw: dict[str, Any], intervals: list[Any], reason: str) -> None:
    with pytest.raises(Rejected) as e:
        mapping.read_event(event(intervals, **kw))
    assert e.value.reason == reason and e.value.event_id == "ev1"


def test_an_event_without_an_id_is_rejected() -> None:
    ev = event([(T0, Q, 1.0)])
    del ev["event_descriptor"]["event_id"]
    with pytest.raises(Rejected) as e:
        mapping.read_event(ev)
    assert e.value.reason == "bad_event"


def outcome(after: list[int], reserve: list[int]) -> dict[str, Any]:
    n = len(after)
    return {"day": DAY, "round": 1, "frames": n, "frame_s": 900, "start": START,
            "capacity_wh": [0] * n, "load_before_wh": [9] * n, "load_after_wh": after,
            "reserve_wh": reserve, "overload_after_wh": 0, "curtailed_wh": 0}


def test_violations_compare_planned_load_and_reserve_with_the_events_own_limit() -> None:
    ev = mapping.read_event(event([(T0 + Q, 2 * Q, 200.0)]))  # 100 Wh in frames 1 and 2
    assert mapping.violations(ev, outcome([500, 90, 95, 500], [0, 10, 10, 0])) == [2]
    assert mapping.violations(ev, outcome([500, 90, 90, 500], [0, 10, 10, 0])) == []
    assert mapping.planned_wh(outcome([1, 2], [3, 4])) == [4, 6]
    assert mapping.baseline_wh(outcome([1, 2], [3, 4])) == [12, 13]
