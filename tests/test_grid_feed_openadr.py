"""`hems grid-feed openadr` against openleadr's real VTN and a real mosquitto on loopback.

The VEN runs as its own process (`python -m backend.grid_feed openadr`, identity `grid`); the
test watches the day topic as the coordinator and publishes outcomes as the coordinator would.
Expected capacities are computed here from the events' numbers, not with the feed's mapping.
Events are for tomorrow: openleadr's VTN drops an event whose time has passed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from openleadr import objects
from paho.mqtt.enums import CallbackAPIVersion

from backend.common.broker import Mosquitto
from backend.grid_feed.vtn import (
    LabVtn,
    capacity_event,
    published_capacity,
    start_vtn,
    ven_command,
)
from backend.lab import scenario
from backend.lab.lab import day_capacity
from hemsfw import protocol, protocol_svc

pytestmark = pytest.mark.integration

UTC = dt.UTC
DAY_DT = dt.datetime.now(UTC).date() + dt.timedelta(days=1)
DAY = DAY_DT.isoformat()
START = int(dt.datetime.combine(DAY_DT, dt.time(), UTC).timestamp())
FRAMES, FRAME_S = 96, 900
VEN = "hems-test"
USERS = {"grid": "pw-grid", "coordinator": "pw-coord"}
WAIT_S = 60.0


def wait_for(what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `cond` until it returns something truthy (a generous timeout: not a speed test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Coordinator:
    """A paho client as the coordinator: the latest payload per topic, and publishing."""

    def __init__(self, port: int) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.username_pw_set("coordinator", USERS["coordinator"])
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(protocol_svc.t_day_capacity("+"), qos=1)
        self.c.loop_start()

    def _msg(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.latest[m.topic] = json.loads(m.payload)

    def day(self) -> dict[str, Any] | None:
        with self.lock:
            return self.latest.get(protocol_svc.t_day_capacity(DAY))

    def publish(self, topic: str, obj: dict[str, Any]) -> None:
        self.c.publish(topic, protocol.encode(obj), qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Ven:
    def __init__(self, vtn_url: str, port: int, state: Path, log: Path) -> None:
        argv, env = ven_command(vtn_url, VEN, port, USERS["grid"], state)
        self.state = state
        with log.open("ab") as f:
            self.p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.log = log

    def status(self) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = json.loads((self.state / "status.json").read_text())
            return obj
        except (OSError, ValueError):
            return {}

    def changes(self) -> list[dict[str, Any]]:
        path = self.state / "changes.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            raise AssertionError("the VEN did not stop:\n" + self.log.read_text()[-3000:]) from None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mq", USERS, ["mb1"]) as m:
        yield m


@pytest.fixture
def coord(broker: Mosquitto) -> Iterator[Coordinator]:
    c = Coordinator(broker.port)
    yield c
    c.close()


@pytest.fixture
def run(tmp_path: Path, broker: Mosquitto) -> Iterator[Callable[..., Any]]:
    """run(vtn_url) starts a VEN; run.vtn(...) a VTN; both stopped at the end."""
    vens: list[Ven] = []
    vtns: list[LabVtn] = []

    def ven(url: str) -> Ven:
        v = Ven(url, broker.port, tmp_path / "ven", tmp_path / "ven.log")
        vens.append(v)
        return v

    def vtn(capacity_wh: list[int] | None = None, **kw: Any) -> LabVtn:
        v = start_vtn(DAY, capacity_wh or [], START, FRAME_S, ven_name=VEN, **kw)
        vtns.append(v)
        return v

    ven.vtn = vtn  # type: ignore[attr-defined]
    yield ven
    for v in vens:
        v.stop()
    for t in vtns:
        t.stop()


def evening_event(values: list[int], first: int = 68) -> objects.Event:
    return capacity_event(f"hems-{DAY}", VEN, START + first * FRAME_S, FRAME_S, values)


def grid_may_publish_default(broker: Mosquitto, wh: int) -> list[int]:
    """The default profile, published as `hems capacity` would (identity grid)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.username_pw_set("grid", USERS["grid"])
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(protocol_svc.t_capacity(), protocol.encode(
            protocol_svc.make_capacity(FRAMES, [wh] * FRAMES)), qos=1, retain=True
        ).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return [wh] * FRAMES


# ---------------------------------------------------------------- events -> capacity


def test_event_received_sets_the_days_capacity_per_frame(
        run: Any, coord: Coordinator, broker: Mosquitto, tmp_path: Path) -> None:
    base = grid_may_publish_default(broker, 5000)
    limits = [3000 + 10 * k for k in range(16)]  # 17:00-21:00, one value per quarter hour
    vtn = run.vtn()
    vtn.add(evening_event(limits))
    run(vtn.url)
    day = wait_for("the day profile", coord.day)
    assert day["capacity_wh"] == base[:68] + limits + base[84:]
    assert day["day"] == DAY and day["source"] == "openadr"
    assert day["events"] == [{"id": f"hems-{DAY}", "mod": 0}]
    assert protocol_svc.parse_day_capacity(day, DAY)[2] == day["capacity_wh"]
    assert wait_for("the status", lambda: published_capacity(tmp_path / "ven", DAY)) == \
        day["capacity_wh"]
    assert wait_for("the opt", lambda: vtn.opts) == [(f"hems-{DAY}", 0, "optIn")]


def test_a_power_limit_in_kilowatts_becomes_wh_per_frame(run: Any, coord: Coordinator) -> None:
    t0 = dt.datetime.fromtimestamp(START, UTC)
    hour = dt.timedelta(hours=1)
    sig = objects.EventSignal(
        signal_name="LOAD_CONTROL", signal_type="x-loadControlSetpoint", signal_id="s1",
        measurement=objects.Measurement(name="powerReal", description="RealPower", unit="W",
                                        scale="k", power_attributes=objects.PowerAttributes()),
        intervals=[objects.Interval(dtstart=t0 + 18 * hour, duration=hour, signal_payload=8.5),
                   objects.Interval(dtstart=t0 + 19 * hour, duration=hour, signal_payload=6.0)])
    vtn = run.vtn()
    vtn.add(objects.Event(event_descriptor=objects.EventDescriptor(
        event_id="kw", modification_number=0, market_context="http://x", event_status="far",
        created_date_time=dt.datetime.now(UTC)), event_signals=[sig],
        targets=[{"ven_id": VEN}]))
    run(vtn.url)
    cap = wait_for("the day profile", coord.day)["capacity_wh"]
    # 8.5 kW for 900 s = 2125 Wh; 6 kW = 1500 Wh.  No default known: 2^50 elsewhere.
    assert cap[72:80] == [2125] * 4 + [1500] * 4
    assert cap[71] == cap[80] == 1 << 50


def test_update_and_cancel_republish_the_day_and_are_logged_against_the_deadline(
        run: Any, coord: Coordinator, broker: Mosquitto) -> None:
    base = grid_may_publish_default(broker, 5000)
    now = int(time.time())
    coord.publish(protocol.t_round(), protocol_svc.make_round(
        DAY, 1, FRAMES, FRAME_S, 1, START, now + 3600, ["mb1"]))
    vtn = run.vtn()
    ven = run(vtn.url)
    wait_for("the round seen", lambda: DAY in ven.status().get("rounds", {}))
    vtn.add(capacity_event(f"hems-{DAY}", VEN, START, FRAME_S, [4000] * FRAMES))
    wait_for("mod 0", lambda: (coord.day() or {}).get("events") == [
        {"id": f"hems-{DAY}", "mod": 0}])
    assert coord.day()["capacity_wh"] == [4000] * FRAMES  # type: ignore[index]
    new = [3500] * 48 + [3900] * 48
    assert vtn.update(f"hems-{DAY}", START, FRAME_S, new) == 1
    wait_for("mod 1", lambda: (coord.day() or {}).get("capacity_wh") == new)
    assert coord.day()["events"] == [{"id": f"hems-{DAY}", "mod": 1}]  # type: ignore[index]
    vtn.cancel(f"hems-{DAY}")
    wait_for("the default back", lambda: (coord.day() or {}).get("events") == [])
    assert coord.day()["capacity_wh"] == base  # type: ignore[index]
    caps = [c for c in ven.changes() if c["kind"] == "capacity"]
    assert [c["capacity_wh"] for c in caps] == [[4000] * FRAMES, new, base]
    assert all(c["round"] == 1 and c["deadline"] == now + 3600 and c["before_deadline"]
               for c in caps)
    assert [c["at"] for c in caps] == sorted(c["at"] for c in caps)
    assert "cancelled" in caps[-1]["reason"]


def test_a_change_after_the_rounds_deadline_is_logged_as_after(
        run: Any, coord: Coordinator) -> None:
    closed = int(time.time()) - 60  # round 1 of the day has already closed its collection
    coord.publish(protocol.t_round(), protocol_svc.make_round(
        DAY, 1, FRAMES, FRAME_S, 1, START, closed, ["mb1"]))
    vtn = run.vtn()
    ven = run(vtn.url)
    wait_for("the round seen", lambda: DAY in ven.status().get("rounds", {}))
    vtn.add(capacity_event(f"hems-{DAY}", VEN, START, FRAME_S, [4000] * FRAMES))
    wait_for("the day profile", coord.day)
    (c,) = wait_for("the change", lambda: [c for c in ven.changes() if c["kind"] == "capacity"])
    assert c["round"] == 1 and c["deadline"] == closed and c["before_deadline"] is False


# ---------------------------------------------------------------- a VTN that is down


def test_a_vtn_down_at_start_keeps_the_last_known_capacity_and_says_so(
        run: Any, coord: Coordinator) -> None:
    vtn = run.vtn([4000] * FRAMES)
    port = vtn.port
    ven = run(vtn.url)
    first = wait_for("the day profile", coord.day)
    assert ven.stop() == 0
    vtn.stop()
    ven = run(vtn.url)  # the same state dir; nothing listens on the VTN's port now
    st = wait_for("vtn_unreachable", lambda: ven.status().get("state") == "vtn_unreachable"
                  and ven.status())
    assert "keeping the last known capacity" in st["note"] and DAY in st["note"]
    assert st["days"][DAY]["capacity_wh"] == [4000] * FRAMES
    assert "keeping the last known capacity" in ven.log.read_text()
    assert coord.day() == first  # nothing published over it
    # The VTN comes back (same port) with a changed event: the VEN registers and follows it.
    vtn2 = run.vtn(port=port)
    vtn2.add(capacity_event(f"hems-{DAY}", VEN, START, FRAME_S, [3000] * FRAMES, mod=1))
    wait_for("online", lambda: ven.status().get("state") == "online")
    wait_for("mod 1", lambda: (coord.day() or {}).get("capacity_wh") == [3000] * FRAMES)


# ---------------------------------------------------------------- bad events


def _event(eid: str, sig: objects.EventSignal) -> objects.Event:
    return objects.Event(event_descriptor=objects.EventDescriptor(
        event_id=eid, modification_number=0, market_context="http://x", event_status="far",
        created_date_time=dt.datetime.now(UTC)), event_signals=[sig], targets=[{"ven_id": VEN}])


def _signal(name: str, typ: str, value: float, energy: bool = True) -> objects.EventSignal:
    # (A signal openleadr's XML schema refuses never reaches the feed: openleadr drops the
    # whole message and logs it.  These pass the schema and break the feed's rules.)
    m = objects.Measurement(name="energyReal", description="RealEnergy", unit="Wh",
                            scale="none") if energy else None
    t0 = dt.datetime.fromtimestamp(START + 3600, UTC)
    return objects.EventSignal(signal_name=name, signal_type=typ, signal_id="s", measurement=m,
                               intervals=[objects.Interval(dtstart=t0, duration=dt.timedelta(
                                   seconds=FRAME_S), signal_payload=value)])


def test_malformed_and_out_of_range_signals_are_rejected_with_a_reason(
        run: Any, coord: Coordinator) -> None:
    vtn = run.vtn()
    vtn.add(_event("negative", _signal("LOAD_DISPATCH", "setpoint", -100.0)))
    vtn.add(_event("simple", _signal("SIMPLE", "level", 2.0, energy=False)))
    vtn.add(_event("no-item-base", _signal("LOAD_DISPATCH", "setpoint", 5.0, energy=False)))
    vtn.add(_event("too-large", _signal("LOAD_DISPATCH", "setpoint", 1e17)))
    vtn.add(_event("good", _signal("LOAD_DISPATCH", "setpoint", 700.0)))
    ven = run(vtn.url)
    day = wait_for("the good event's profile", coord.day)
    assert day["events"] == [{"id": "good", "mod": 0}] and day["capacity_wh"][4] == 700
    rej = wait_for("four rejections", lambda: len(ven.status().get("rejected", {})) == 4
                   and ven.status()["rejected"])
    assert {e: r["reason"] for e, r in rej.items()} == {
        "negative": "out_of_range", "simple": "no_capacity_signal",
        "no-item-base": "bad_item_base", "too-large": "out_of_range"}
    assert all(r["detail"] for r in rej.values())
    opts = wait_for("five answers", lambda: len(vtn.opts) == 5 and vtn.opts)
    assert sorted((e, o) for e, _m, o in opts) == [
        ("good", "optIn"), ("negative", "optOut"), ("no-item-base", "optOut"),
        ("simple", "optOut"), ("too-large", "optOut")]


# ---------------------------------------------------------------- outcome -> report, opt


def _outcome(rnd: int, after: list[int], reserve: list[int]) -> dict[str, Any]:
    return protocol_svc.make_outcome(DAY, rnd, FRAMES, FRAME_S, START, [4000] * FRAMES,
                                 [4500] * FRAMES, after, reserve, 0, 0)


def test_the_outcome_is_reported_and_decides_the_opt(run: Any, coord: Coordinator) -> None:
    vtn = run.vtn([4000] * FRAMES)
    ven = run(vtn.url)
    wait_for("the day profile", coord.day)
    wait_for("registered", lambda: ven.status().get("state") == "online")
    after = [3000 + k for k in range(FRAMES)]
    reserve = [k % 7 for k in range(FRAMES)]
    coord.publish(protocol_svc.t_outcome(DAY), _outcome(1, after, reserve))
    planned = wait_for("the report", lambda: vtn.report_values("planned_load"))
    assert planned == [(START + k * FRAME_S, after[k] + reserve[k]) for k in range(FRAMES)]
    assert wait_for("baseline", lambda: vtn.report_values("baseline_load")) == [
        (START + k * FRAME_S, 4500 + reserve[k]) for k in range(FRAMES)]
    wait_for("the ack", lambda: (ven.status().get("last_report") or {}).get("round") == 1)
    assert [o for _e, _m, o in vtn.opts] == ["optIn"]  # met: no change sent
    # Round 2 plans frame 80 over the event's 4000 Wh: the VEN opts out, with the reason.
    after2 = [3900] * FRAMES
    after2[80] = 4001
    coord.publish(protocol_svc.t_outcome(DAY), _outcome(2, after2, [0] * FRAMES))
    wait_for("opt out", lambda: [o for _e, _m, o in vtn.opts] == ["optIn", "optOut"])
    st = wait_for("opt out in status", lambda: ven.status().get("events", {}).get(
        f"hems-{DAY}", {}).get("opt") == "optOut" and ven.status())
    assert "frames [80]" in st["events"][f"hems-{DAY}"]["reason"]


def test_an_outcome_on_another_days_topic_is_ignored(run: Any, coord: Coordinator) -> None:
    vtn = run.vtn([4000] * FRAMES)
    ven = run(vtn.url)
    wait_for("registered", lambda: ven.status().get("state") == "online")
    wrong = (DAY_DT + dt.timedelta(days=1)).isoformat()
    coord.publish(protocol_svc.t_outcome(wrong), _outcome(1, [1] * FRAMES, [0] * FRAMES))
    wait_for("the rejection", lambda: ven.status().get("counts", {}).get("mqtt_rejected"))
    assert "day_mismatch" in ven.log.read_text() and vtn.reports == []


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_the_ven_stops_cleanly_on_a_signal(run: Any, sig: int) -> None:
    vtn = run.vtn([4000] * FRAMES)
    ven = run(vtn.url)
    wait_for("registered", lambda: ven.status().get("state") == "online")
    assert ven.stop(sig) == 0
    assert ven.status()["state"] == "stopped"


def test_hems_lab_with_the_openadr_grid_feed_plans_against_the_vtns_event(
        tmp_path: Path) -> None:
    """`hems lab --grid-feed openadr --homes 10 --json` as a user runs it: openleadr's VTN holds
    the day's capacity event, the VEN turns it into the day's capacity, the round plans against
    it, and the outcome goes back to the VTN as a report.  stdout is the JSON and nothing else
    (openleadr's start-up banner once broke that)."""
    r = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "hems"), "lab", "--grid-feed", "openadr", "--homes", "10",
         "--seed", "1", "--json", "--no-report"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["grid_feed"] == "openadr"
    assert s["openadr_report_sent"] is True
    # The event the lab put on the VTN for day 1: its scenario's capacity (independent of the
    # path VTN -> VEN -> MQTT -> coordinator that is under test).
    event, _ = day_capacity(scenario.make_homes(10, 1, 96), [], 1, 96)
    assert s["capacity_wh"] == event.tolist()
    assert s["true_load_wh"] == s["coordinator_load_before_wh"]
    assert s["relay_load_after_wh"] == s["coordinator_load_after_wh"]
    assert all(a <= c for a, c in zip(s["coordinator_load_after_wh"], s["capacity_wh"],
                                      strict=True))
