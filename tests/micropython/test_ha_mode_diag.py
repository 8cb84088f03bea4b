# Home Assistant: the auto / on / off selector and the diagnostics (signal, uptime, reset cause,
# version), with fake adapters, under MicroPython and CPython.

import json

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

import hemsfw
from hemsfw import config, ha, protocol, runner
from hemsfw.clock import ticks_add

KEY = "c8" * 32
START = 1795824000


class _Board:
    """A board as far as HA's diagnostics go (McuBoard.diag)."""

    relay = None
    clock = None

    def service(self, runner):
        pass

    def net_up(self):
        return True

    def button(self):
        return None

    def show(self, on, online, override):
        pass

    def diag(self):
        return {"rssi": -61, "reset": "wdt"}


def _runner(board=None):
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY}, "state_dir": "/x",
                        "clock": "lab", "local": {"host": "127.0.0.1"}})
    lc, tk = FakeClient(), Ticks()
    ck = FakeClock(topic=protocol.t_clock())
    r = runner.Runner(cfg, FakeClient(), ck, FakeRelay(), MemStore(), lambda *a: None,
                      CountingRandom(), ticks=tk, board=board, local=lc)
    ck.t = START - 100
    r.step()
    return r, lc, tk


def _last(lc, topic):
    got = [p for t, p, _r, _q in lc.published if t == topic]
    return got[-1] if got else None


def test_discovery_announces_the_mode_selector():
    _r, lc, _ = _runner()
    sel = json.loads(_last(lc, "homeassistant/select/hems_h1/mode/config"))
    assert sel["options"] == ["auto", "on", "off"]
    assert sel["command_topic"] == "hems/h1/mode/set" and sel["state_topic"] == "hems/h1/mode"
    assert sel["unique_id"] == "hems_h1_mode" and sel["device"]["identifiers"] == ["hems_h1"]
    assert ("hems/h1/mode/set", 0) in lc.subscribed
    assert _last(lc, "hems/h1/mode") == b"auto"


def test_the_selector_sets_and_ends_an_override_for_the_day():
    r, lc, _ = _runner()
    lc.inject("hems/h1/mode/set", b"on")
    r.step()
    assert r.resident.ovr["on"] is True and r.relay.on is True
    assert _last(lc, "hems/h1/mode") == b"on"
    lc.inject("hems/h1/mode/set", b"auto")
    r.step()
    assert r.resident.ovr is None and _last(lc, "hems/h1/mode") == b"auto"
    lc.inject("hems/h1/mode/set", b"sideways")
    r.step()
    assert r.resident.ovr is None


def test_an_override_from_elsewhere_shows_in_the_selector():
    r, lc, _ = _runner()
    r.override("off", "frame")                 # the button or the page
    r.step()
    assert _last(lc, "hems/h1/mode") == b"off"


def test_diagnostics_are_announced_and_published():
    r, lc, tk = _runner(_Board())
    for key in ("rssi", "uptime_s", "reset", "version"):
        c = json.loads(_last(lc, "homeassistant/sensor/hems_h1/" + key + "/config"))
        assert c["entity_category"] == "diagnostic" and c["state_topic"] == "hems/h1/diag"
        assert c["value_template"] == "{{ value_json." + key + " }}"
    rssi = json.loads(_last(lc, "homeassistant/sensor/hems_h1/rssi/config"))
    assert rssi["unit_of_measurement"] == "dBm" and rssi["device_class"] == "signal_strength"
    d = json.loads(_last(lc, "hems/h1/diag"))
    assert d == {"rssi": -61, "uptime_s": 0, "reset": "wdt", "version": hemsfw.VERSION}
    tk.ms += ha.DIAG_MS
    r.step()
    assert json.loads(_last(lc, "hems/h1/diag"))["uptime_s"] == ha.DIAG_MS // 1000


def test_uptime_survives_the_tick_counter_wrapping():
    r, lc, tk = _runner(_Board())
    for _ in range(40):       # 40 x 2^28 ms, ~124 days: a board's ticks (2^30 ms) wrap 10 times
        tk.ms = ticks_add(tk.ms, 1 << 28)
        r.step()
    assert json.loads(_last(lc, "hems/h1/diag"))["uptime_s"] == 40 * (1 << 28) // 1000


def test_a_host_board_has_no_signal_or_reset_cause():
    _r, lc, _ = _runner()
    d = json.loads(_last(lc, "hems/h1/diag"))
    assert d["rssi"] is None and d["reset"] is None and d["version"] == hemsfw.VERSION
