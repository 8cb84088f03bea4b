"""The VEN's state (backend/grid_feed/feed.py): which day profiles it publishes, when it opts
in or out, what it reports; no I/O.  Expected profiles are written out by hand."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from backend.grid_feed.feed import OPT_IN, OPT_OUT, Feed, Opt, Publish, Report

UTC = dt.UTC
DAY = "2026-12-30"
T0 = dt.datetime(2026, 12, 30, tzinfo=UTC)
START = int(T0.timestamp())
F, S = 8, 10800  # 8 frames of 3 hours: short lists, easy to read
NOW = START - 86400


def event(values: dict[int, float], eid: str = "ev1", mod: int = 0,
          status: str = "far") -> dict[str, Any]:
    """Energy limits (Wh) on the given frames of DAY."""
    ivs = [{"dtstart": T0 + dt.timedelta(seconds=k * S), "duration": dt.timedelta(seconds=S),
            "signal_payload": v} for k, v in sorted(values.items())]
    return {"event_descriptor": {"event_id": eid, "modification_number": mod,
                                 "event_status": status},
            "event_signals": [{"signal_name": "LOAD_DISPATCH", "signal_type": "setpoint",
                               "measurement": {"name": "energyReal", "unit": "Wh",
                                               "scale": "none"},
                               "intervals": ivs}]}


def feed(default: list[int] | None = None) -> Feed:
    f = Feed(UTC, F, S)
    if default is not None:
        f.set_default(default, NOW)
    return f


def published(acts: list[Any]) -> list[list[int]]:
    return [a.payload["capacity_wh"] for a in acts if isinstance(a, Publish)]


def outcome(rnd: int, after: list[int]) -> dict[str, Any]:
    return {"day": DAY, "round": rnd, "frames": F, "frame_s": S, "start": START,
            "capacity_wh": [0] * F, "load_before_wh": [50] * F, "load_after_wh": after,
            "reserve_wh": [1] * F, "overload_after_wh": 0, "curtailed_wh": 0}


def test_an_event_publishes_its_days_profile_over_the_default() -> None:
    f = feed([100] * F)
    opt, acts = f.event(event({5: 60.0, 6: 70.0}), NOW)
    assert opt == OPT_IN
    assert published(acts) == [[100, 100, 100, 100, 100, 60, 70, 100]]
    (p,) = acts
    assert isinstance(p, Publish) and p.day == DAY
    assert p.payload["events"] == [{"id": "ev1", "mod": 0}] and p.payload["at"] == NOW


def test_the_same_modification_again_publishes_nothing() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    assert f.event(event({5: 60.0}), NOW + 1) == (OPT_IN, [])


def test_an_update_republishes_and_a_cancellation_brings_the_default_back() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    _, acts = f.event(event({5: 40.0, 7: 30.0}, mod=1), NOW + 1)
    assert published(acts) == [[100] * 5 + [40, 100, 30]]
    _, acts = f.event(event({}, mod=2, status="cancelled"), NOW + 2)
    assert published(acts) == [[100] * F]
    assert acts[0].payload["events"] == []  # type: ignore[union-attr]


def test_overlapping_events_list_both_and_the_tighter_wins() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    _, acts = f.event(event({4: 80.0, 5: 90.0}, eid="ev2"), NOW)
    assert published(acts) == [[100] * 4 + [80, 60, 100, 100]]
    assert acts[0].payload["events"] == [  # type: ignore[union-attr]
        {"id": "ev1", "mod": 0}, {"id": "ev2", "mod": 0}]


def test_a_new_default_reaches_the_frames_no_event_limits() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    assert published(f.set_default([90] * F, NOW)) == [[90] * 5 + [60, 90, 90]]


def test_a_rejected_update_keeps_the_last_good_version_and_opts_out() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    opt, acts = f.event(event({5: -1.0}, mod=1), NOW)
    assert (opt, acts) == (OPT_OUT, [])
    assert f.rejected["ev1"]["reason"] == "out_of_range"
    assert f.status()["days"][DAY]["capacity_wh"][5] == 60
    # An outcome that meets the old limits does not opt back in to the rejected update.
    assert [a for a in f.outcome(outcome(1, [10] * F), NOW) if isinstance(a, Opt)] == []


def test_the_rounds_frames_replace_the_local_midnight() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    rnd = {"day": DAY, "round": 1, "frames": F, "frame_s": S, "start": START - S,
           "deadline": NOW + 600}
    # The round's day starts 3 hours earlier: the limits fall one frame later.
    assert published(f.round(rnd, NOW)) == [[100] * 6 + [60, 100]]
    assert f.deadline(DAY) == (1, NOW + 600)


def test_an_outcome_is_reported_and_an_opt_change_is_sent_once() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    acts = f.outcome(outcome(1, [59] * F), NOW)  # 59 + reserve 1 = 60: meets the limit
    (rep,) = acts
    assert isinstance(rep, Report) and rep.round == 1
    assert rep.rows["planned_load"][5] == (START + 5 * S, 60)
    assert rep.rows["baseline_load"][0] == (START, 51)
    acts = f.outcome(outcome(2, [60] * F), NOW)  # 61 > 60 in frames 5
    opts = [a for a in acts if isinstance(a, Opt)]
    assert [(o.event_id, o.opt) for o in opts] == [("ev1", OPT_OUT)]
    assert "frames [5]" in opts[0].reason
    assert [a for a in f.outcome(outcome(3, [60] * F), NOW) if isinstance(a, Opt)] == []
    assert f.outcome(outcome(3, [60] * F), NOW) == []  # the retained one again: not reported
    assert [a.opt for a in f.outcome(outcome(4, [0] * F), NOW) if isinstance(a, Opt)] == [
        OPT_IN]


def test_the_state_survives_a_dump_and_restore_through_json() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.5}), NOW)
    f.outcome(outcome(1, [10] * F), NOW)
    g = Feed(UTC, F, S)
    g.restore(json.loads(json.dumps(f.dump())))
    g.set_default([100] * F, NOW)  # the default is not kept: it is retained on MQTT
    assert g.status() == f.status()
    assert g.events == f.events
    assert g.event(event({5: 60.5}), NOW) == (OPT_IN, [])  # already known: nothing new


def test_days_long_past_are_forgotten() -> None:
    f = feed([100] * F)
    f.event(event({5: 60.0}), NOW)
    f.prune(START + 86400 + 3 * 86400)
    assert f.published == {} and f.events == {}
