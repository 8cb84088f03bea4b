"""The resident's side of a real firmware process (MicroPython unix port, real mosquitto):

* the page: fetched over HTTP from the running firmware, its SVG shows the adjusted plan, and
  a POST /override holds the relay until the end of the frame;
* Home Assistant: on a second (local) mosquitto, the retained discovery configs appear, are
  announced again when HA's birth message arrives, and the switch's command overrides the relay.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from firmware_peers import (
    DAY,
    FRAME_S,
    FRAMES,
    HOME,
    MOVES,
    PLAN_WH,
    QUANTUM,
    START,
    Lab,
    Peer,
    lab,
    read_state,
    start_home,
    stop,
    wait_until,
    write_config,
)

from backend.common.broker import free_port, start_resident_broker
from hemsfw import plan, protocol, protocol_svc

pytestmark = pytest.mark.integration
__all__ = ["lab"]

CURTAIL = [10]
ADJUSTED = plan.apply_adjustment(plan.to_quanta(PLAN_WH, QUANTUM), [tuple(m) for m in MOVES],
                                 CURTAIL)


def play_round(lab: Lab, state: Path) -> tuple[Peer, Peer]:
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    clock = Peer(lab, "lab", [])
    assert coord.get(protocol.t_status(HOME)) == b"online"
    ann = protocol_svc.make_round(DAY, 1, FRAMES, FRAME_S, QUANTUM, START, int(time.time()) + 3600,
                              ["mb1"])
    coord.publish(protocol.t_round(), protocol.encode(ann), retain=True)
    coord.get(protocol.t_plan(HOME))
    adj = protocol_svc.make_adjustment(DAY, 1, "g1", MOVES, CURTAIL, START + 86400)
    coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
    wait_until(lambda: (read_state(state) or {}).get("adjusted") == ADJUSTED, 10, "not adjusted")
    # a very slow clock parked in frame 2 (plan off there): one frame lasts 10 real minutes
    msg = {"v": 1, "anchor": time.time(), "virtual": START + 2 * FRAME_S + 1,
           "speed": FRAME_S / 600}
    clock.publish(protocol.t_clock(), json.dumps(msg).encode(), retain=True)
    return coord, clock


def last_relay(state: Path) -> dict[str, Any]:
    return json.loads((state / "relay.log").read_text().splitlines()[-1])  # type: ignore[no-any-return]


def http(port: int, path: str, form: dict[str, str] | None = None,
         cookie: str | None = None) -> tuple[int, str]:
    return http_full(port, path, form, cookie)[:2]  # type: ignore[return-value]


def http_full(port: int, path: str, form: dict[str, str] | None = None,
              cookie: str | None = None) -> tuple[int, str, str | None]:
    """(status, body, the session cookie the answer sets or None)."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if cookie:
        req.add_header("Cookie", "hems=" + cookie)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    def session(h: Any) -> str | None:
        c = h.get("Set-Cookie")
        return c.split(";")[0].split("=", 1)[1] if c and c.startswith("hems=") else None

    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode(), session(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), session(e.headers)


def test_resident_page_shows_the_adjusted_plan_and_overrides(lab: Lab) -> None:
    state = lab.tmp / "state"
    port = free_port()
    cfg = write_config(lab, state, exit_after_day=False,
                       http={"port": port, "bind": "127.0.0.1"})
    log = lab.tmp / "home.log"
    proc = start_home("micropython", cfg, log)
    peers: list[Peer] = []
    try:
        peers += play_round(lab, state)
        wait_until(lambda: "web page on port" in log.read_text(), 10, "no page")
        # no password yet: the set-up form, and nothing of the home's state for anyone
        status, gate = http(port, "/")
        assert status == 200 and 'action="/password"' in gate and "<svg" not in gate
        assert http(port, "/state.json")[0] == 401
        assert http(port, "/override", {"state": "on"})[0] == 401
        code, _, sid = http_full(port, "/password", {"new": "p4ss wörd"})
        assert code == 303 and sid
        assert "p4ss" not in (state / "auth.json").read_text()
        wait_until(lambda: json.loads(http(port, "/state.json", cookie=sid)[1])["frame"] == 2,
                   10, "clock not applied")
        # once set, the page asks for it; a wrong one is refused, the right one logs in
        status, gate = http(port, "/")
        assert 'action="/login"' in gate and 'action="/password"' not in gate
        assert "<svg" not in gate and "relay" not in gate.lower()
        assert http_full(port, "/login", {"password": "nope"})[:1] == (403,)
        code, _, sid2 = http_full(port, "/login", {"password": "p4ss wörd"})
        assert code == 303 and sid2 and sid2 != sid
        status, page = http(port, "/", cookie=sid2)
        assert status == 200, page
        svg = page[page.index("<svg"):page.index("</svg>")]
        adj = {int(k): int(v) for k, v in
               re.findall(r'<rect class="a" data-k="(\d+)" data-wh="(\d+)"', svg)}
        planned = {int(k): int(v) for k, v in
                   re.findall(r'<rect class="p" data-k="(\d+)" data-wh="(\d+)"', svg)}
        assert adj == {k: v * QUANTUM for k, v in enumerate(ADJUSTED)}
        assert planned == {k: v * QUANTUM for k, v in enumerate(plan.to_quanta(PLAN_WH,
                                                                               QUANTUM))}
        # bar heights follow the values (the tallest bar is the chart's full height)
        top = max(adj.values())
        h = re.search(r'<rect class="a" data-k="7"[^>]*height="([0-9.]+)"', svg)
        assert h is not None and abs(float(h.group(1)) - 160 * adj[7] / top) < 0.2
        assert 'id="relay">OFF' in page and '<rect class="now"' in svg
        st = json.loads(http(port, "/state.json", cookie=sid)[1])
        assert st["frame"] == 2 and st["adjusted_wh"][9] == ADJUSTED[9] * QUANTUM

        # the override: refused without a session (or with a made-up one), then on until the
        # end of frame 2
        assert http(port, "/override", {"state": "on", "until": "frame"}, "0" * 32)[0] == 401
        assert last_relay(state)["on"] is False and last_relay(state).get("boot")
        code, _ = http(port, "/override", {"state": "on", "until": "frame"}, sid)
        assert code == 303
        wait_until(lambda: last_relay(state)["on"] is True, 5, "override not applied")
        assert 'id="relay">ON' in http(port, "/", cookie=sid)[1]
        ovr = json.loads((state / "resident.json").read_text())["override"]
        assert ovr == {"on": True, "until": START + 3 * FRAME_S}
        assert http(port, "/override", {"state": "auto"}, sid)[0] == 303
        wait_until(lambda: last_relay(state)["on"] is False, 5, "override not cleared")
        assert http(port, "/nope")[0] == 404
        assert proc.poll() is None
    finally:
        stop(proc)
        for p in peers:
            p.close()


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[int]:
    """The resident's own mosquitto (anonymous on loopback), where Home Assistant lives."""
    p, port = start_resident_broker(tmp_path / "local")
    try:
        yield port
    finally:
        p.terminate()
        p.wait(10)


class HA:
    n = 0

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []
        HA.n += 1
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha{HA.n}")

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            self.seen.append((m.topic, m.payload, m.retain))

        c.on_message = on_message
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        c.subscribe([("homeassistant/#", 0), ("hems/#", 0)])
        self.c = c

    def configs(self) -> list[tuple[str, bytes, bool]]:
        return [m for m in list(self.seen) if m[0].endswith("/config")]

    def last(self, topic: str) -> bytes | None:
        got = [p for t, p, _ in list(self.seen) if t == topic]
        return got[-1] if got else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_home_assistant_discovery_switch_and_birth(lab: Lab, local_broker: int) -> None:
    state = lab.tmp / "state"
    ha = HA(local_broker)
    time.sleep(0.2)
    cfg = write_config(lab, state, exit_after_day=False,
                       local={"host": "127.0.0.1", "port": local_broker})
    log = lab.tmp / "home.log"
    proc = start_home("micropython", cfg, log)
    peers: list[Peer] = []
    try:
        wait_until(lambda: len(ha.configs()) >= 2, 10, "no discovery: " + log.read_text())
        topics = {t: (json.loads(p), ret) for t, p, ret in ha.configs()}
        sw, _ret = topics["homeassistant/switch/hems_h1/relay/config"]
        assert sw["command_topic"] == "hems/h1/relay/set" and sw["unique_id"] == "hems_h1_relay"
        sensor, _ = topics["homeassistant/sensor/hems_h1/plan/config"]
        assert sensor["json_attributes_topic"] == "hems/h1/plan/attributes"
        assert ha.last("hems/h1/availability") == b"online"
        peers += play_round(lab, state)
        wait_until(lambda: ha.last("hems/h1/plan/attributes") is not None and
                   json.loads(ha.last("hems/h1/plan/attributes") or b"{}").get("adjusted_wh")
                   == [v * QUANTUM for v in ADJUSTED], 10, "no plan attributes")
        wait_until(lambda: ha.last("hems/h1/relay") == b"OFF", 10, "no relay state")
        # retained: a late subscriber (HA restarting) gets the configs from the broker...
        late = HA(local_broker)
        wait_until(lambda: len(late.configs()) >= 2 and all(r for _, _, r in late.configs()),
                   10, "configs not retained")
        late.close()
        # ...and HA's birth message makes the device announce again
        n = len(ha.configs())
        ha.c.publish("homeassistant/status", b"online").wait_for_publish(5)
        wait_until(lambda: len(ha.configs()) >= n + 2, 10, "no re-announce on birth")
        # the switch: ON holds the relay on until the end of the frame
        ha.c.publish("hems/h1/relay/set", b"ON").wait_for_publish(5)
        wait_until(lambda: last_relay(state)["on"] is True, 10, "switch command not applied")
        wait_until(lambda: ha.last("hems/h1/relay") == b"ON", 10, "state not published")
        # the command topic is never retained (nothing is replayed to a new subscriber)
        late = HA(local_broker)
        time.sleep(0.5)
        assert not [t for t, _, _ in late.seen if t.endswith("/set")]
        late.close()
        ha.c.publish("hems/h1/relay/set", b"AUTO").wait_for_publish(5)
        wait_until(lambda: last_relay(state)["on"] is False, 10, "AUTO not applied")
        # a local plan command for tomorrow is stored for the next round
        ha.c.publish("hems/h1/plan/set", json.dumps(
            {"day": "2026-11-29", "plan_wh": [100] * 24}).encode()).wait_for_publish(5)
        wait_until(lambda: (state / "resident.json").exists() and json.loads(
            (state / "resident.json").read_text())["days"].get("2026-11-29") == [100] * 24,
            10, "plan command not stored")
        # a dead device is shown unavailable (its will)
        stop(proc)
        wait_until(lambda: ha.last("hems/h1/availability") == b"offline", 10, "no will")
    finally:
        stop(proc)
        for p in peers:
            p.close()
        ha.close()
