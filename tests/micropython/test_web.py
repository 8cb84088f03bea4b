# The resident's page (SVG chart) and Home Assistant discovery, with fake adapters, under
# MicroPython and CPython.  The real-process versions are in tests/test_firmware_resident.py.

import json

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

from hemsfw import config, pagestate, protocol, protocol_svc, runner, web, webchart, webreq

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"


def _runner(local=False):
    cfg = {"home_id": "h1", "mqtt": {"host": "127.0.0.1", "user": "h1", "password": "pw"},
           "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY}, "state_dir": "/tmp/x",
           "clock": "lab"}
    if local:
        cfg["local"] = {"host": "127.0.0.1"}
    cfg = config.check(cfg)
    cl = FakeClient()
    lc = FakeClient() if local else None
    ck = FakeClock(topic=protocol.t_clock())
    r = runner.Runner(cfg, cl, ck, FakeRelay(), MemStore(), lambda *a: None, CountingRandom(),
                      ticks=Ticks(), local=lc)
    return r, cl, lc, ck


def _round_and_adjust(r, cl):
    r.step()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START - 60, ["mb1"])))
    r.step()
    r.step()
    cl.inject("hems/v1/adjust/h1", protocol.encode(protocol_svc.make_adjustment(
        DAY, 1, "g1", [[1, 2]], [], START + 3600)))
    r.step()


def _rects(chunks, cls):
    out = {}
    for c in chunks:
        if c.startswith('<rect class="' + cls + '"'):
            k = int(c.split('data-k="')[1].split('"')[0])
            out[k] = int(c.split('data-wh="')[1].split('"')[0])
    return out


def test_svg_shows_planned_and_adjusted():
    r, cl, _, ck = _runner()
    _round_and_adjust(r, cl)
    ck.t = START + 1000
    r.step()
    s = pagestate.state(r, wh=True)   # as GET /state.json gives it
    assert s["planned_wh"] == [0, 300, 0, 500] and s["adjusted_wh"] == [0, 0, 300, 500]
    assert s["relay"] == "off" and s["frame"] == 1
    chunks = list(web.page(r))   # a generator: one small string at a time
    html = "".join(chunks)
    assert "<svg" in html and "</svg>" in html and "Relay: <b id=\"relay\">OFF" in html
    assert _rects(chunks, "p") == {0: 0, 1: 300, 2: 0, 3: 500}
    assert _rects(chunks, "a") == {0: 0, 1: 0, 2: 300, 3: 500}
    assert '<rect class="now" x="180.0"' in html


def test_page_state_holds_the_stored_plans_not_copies():
    """The page scales the stored round's lists as it draws them (a copy of each in Wh was
    ~1 KB of heap at the page's peak on a 32-bit port)."""
    r, cl, _, ck = _runner()
    _round_and_adjust(r, cl)
    ck.t = START + 1000
    r.step()
    s = pagestate.state(r)
    st = r.home.new
    assert s["plan"] is st["plan"] and s["adjusted"] is st["adjusted"]
    assert s["quantum_wh"] == 100 and "planned_wh" not in s


def test_page_is_drawn_a_small_piece_at_a_time():
    """The 96-frame chart is ~200 strings, ~30 KB if they all lived at once (they did, as a
    list): drawn as a generator, the live heap grows by one chunk at a time (MicroPython)."""
    import gc

    if not hasattr(gc, "mem_alloc"):
        return   # CPython: no heap to look at
    planned = [100 * (k % 7) for k in range(96)]
    adjusted = [100 * (k % 5) for k in range(96)]
    gc.collect()
    base = gc.mem_alloc()
    peak = n = size = 0
    for c in webchart.svg(planned, adjusted, 5):
        n += 1
        size += len(c)
        gc.collect()
        peak = max(peak, gc.mem_alloc() - base)
    assert n == 2 * 96 + 9 and size > 20000   # + open, scale, now, 5 clock times, close
    assert peak < 2048, peak


def test_page_without_plan():
    r, _, _, _ = _runner()
    assert "No plan yet" in "".join(web.page(r))
    assert webreq.form_fields("state=on&until=day&x") == {"state": "on", "until": "day"}


def test_home_assistant_discovery_and_commands():
    r, cl, lc, ck = _runner(local=True)
    r.step()
    assert lc.connects == 1 and lc.clean is True
    assert lc.will == ("hems/h1/availability", b"offline", True, 1)
    pub = {t: (p, ret) for t, p, ret, q in lc.published}
    sw = json.loads(pub["homeassistant/switch/hems_h1/relay/config"][0])
    sen = json.loads(pub["homeassistant/sensor/hems_h1/plan/config"][0])
    assert pub["homeassistant/switch/hems_h1/relay/config"][1] is True   # retained
    assert sw["command_topic"] == "hems/h1/relay/set" and sw["state_topic"] == "hems/h1/relay"
    assert sw["availability_topic"] == "hems/h1/availability"
    assert sw["unique_id"] == "hems_h1_relay" and sen["unique_id"] == "hems_h1_plan"
    assert sen["json_attributes_topic"] == "hems/h1/plan/attributes"
    assert sw["device"]["identifiers"] == ["hems_h1"]
    assert ("hems/h1/relay/set", 0) in lc.subscribed and ("homeassistant/status", 0) in \
        lc.subscribed
    _round_and_adjust(r, cl)
    ck.t = START + 1000
    r.step()
    last = {}
    for t, p, _ret, _q in lc.published:
        last[t] = p
    attrs = json.loads(last["hems/h1/plan/attributes"])
    assert attrs["adjusted_wh"] == [0, 0, 300, 500] and attrs["day"] == DAY
    assert last["hems/h1/relay"] == b"OFF" and last["hems/h1/plan"] == b"0"
    # no command topic is ever published by the device, nothing on the utility's broker
    assert not [t for t, _, _, _ in lc.published if t.endswith("/set")]
    assert not [t for t, _, _, _ in cl.published if not t.startswith("hems/v1/")]
    # HA restarts: its birth message makes the device announce again
    n = len([t for t, _, _, _ in lc.published if t.endswith("/config")])
    lc.inject("homeassistant/status", b"online")
    r.step()
    # again: the switch, the plan, the mode selector and the 4 diagnostics
    assert len([t for t, _, _, _ in lc.published if t.endswith("/config")]) == n + 7
    # the switch: an override until the end of the frame
    lc.inject("hems/h1/relay/set", b"ON")
    r.step()
    assert r.relay.on is True and r.resident.ovr["until"] == START + 1800
    assert lc.published[-2][:2] == ("hems/h1/relay", b"ON") or \
        ("hems/h1/relay", b"ON", True, 0) in lc.published
    lc.inject("hems/h1/relay/set", b"AUTO")
    r.step()
    assert r.resident.ovr is None and r.relay.on is False
    # the local plan command
    lc.inject("hems/h1/plan/set", b'{"plan_wh": [1, 2, 3, 4], "day": "2026-11-29"}')
    r.step()
    assert r.resident.days == {"2026-11-29": [1, 2, 3, 4]}
