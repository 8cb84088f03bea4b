# The device runtime around the core (runner, clocks, relays, config) with fake adapters, under
# MicroPython and CPython.  The real-network version is tests/test_firmware_mqtt.py.

import json

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

from hemsfw import clock, config, link, protocol, protocol_svc, relay, runner

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"


def _cfg(**kw):
    c = {"home_id": "h1",
         "mqtt": {"host": "127.0.0.1", "port": 1883, "user": "h1", "password": "pw"},
         "magnification": 2, "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY},
         "state_dir": "/tmp/x", "clock": "lab"}
    for k in kw:
        c[k] = kw[k]
    return config.check(c)


def _round(rnd=1):
    return protocol.encode(protocol_svc.make_round(DAY, rnd, 4, 900, 100, START, START - 60,
                                                   ["mb1"]))


def _adj(moves, rnd=1):
    return protocol.encode(protocol_svc.make_adjustment(DAY, rnd, "g1", moves, [], START + 86400))


def _setup(**kw):
    cl = FakeClient()
    ck = FakeClock(topic=protocol.t_clock())
    rl = FakeRelay()
    st = MemStore()
    logs = []
    tk = Ticks()
    r = runner.Runner(_cfg(**kw), cl, ck, rl, st, lambda *a: logs.append(a), CountingRandom(),
                      ticks=tk)
    return _Harness(r, cl, ck, rl, st, logs, tk)


class _Harness:
    def __init__(self, r, cl, ck, rl, st, logs, tk):
        self.r, self.cl, self.ck, self.rl, self.st, self.logs, self.tk = r, cl, ck, rl, st, logs, tk


def _logged(logs, text):
    return any(text in " ".join([str(x) for x in a]) for a in logs)

# ------------------------------------------------------------------ runner


def test_connect_sequence():
    h = _setup()
    h.r.step()
    assert h.cl.connects == 1 and h.cl.clean is False
    assert h.cl.will == ("hems/v1/status/h1", b"offline", True, 1)
    assert h.cl.published[0] == ("hems/v1/status/h1", b"online", True, 1)
    assert [t for t, q in h.cl.subscribed] == [
        "hems/v1/round", "hems/v1/adjust/h1", "hems/v1/reply/+/h1", "hems/v1/lab/clock"]
    assert h.rl.calls[-1] == (False, None)   # time unknown: safe state


def test_round_publishes_qos1_not_retained_then_marks_sent():
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    assert h.st.read("round.json")["sent"] is False   # one message per turn
    h.r.step()
    sent = h.cl.published[1:]
    assert [(t, ret, q) for t, _, ret, q in sent] == [
        ("hems/v1/plan/h1", False, 1), ("hems/v1/mask/mb1/h1", False, 1)]
    assert h.st.read("round.json")["sent"] is True
    # the retained round comes again (e.g. after a reconnect): nothing is re-sent
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    assert len(h.cl.published) == 3


def test_a_round_repeated_before_its_acks_is_published_and_logged_once():
    """The retained round may come twice at once (the broker's queued copy for the persistent
    session and the retained one on subscribing): each report message is published once, and
    the log says "publishing" once, not once per copy."""
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.cl.inject("hems/v1/round", _round())
    for _ in range(4):
        h.r.step()
    assert [t for t, _, _, _ in h.cl.published[1:]] == ["hems/v1/plan/h1", "hems/v1/mask/mb1/h1"]
    assert len([a for a in h.logs if "publishing" in " ".join([str(x) for x in a])]) == 1


def test_relay_follows_plan_and_adjustment():
    h = _setup(safe_state=True)
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    assert h.rl.on is True                       # time unknown: safe state (on here)
    h.cl.inject("hems/v1/lab/clock", ('{"v":1,"virtual":' + str(START + 1) + "}").encode())
    h.r.step()
    assert h.rl.calls[-1] == (False, 0)          # plan [0, 3, 0, 5]
    h.ck.t = START + 900
    h.r.step()
    assert h.rl.calls[-1] == (True, 1)
    h.cl.inject("hems/v1/adjust/h1", _adj([[1, 2]]))
    h.r.step()
    assert h.rl.calls[-1] == (False, 1)          # frame 1 moved to frame 2
    h.ck.t = START + 1800
    h.r.step()
    assert h.rl.calls[-1] == (True, 2)
    assert _logged(h.logs, "adjustment applied")


def test_malformed_messages_are_logged_not_fatal():
    h = _setup()
    h.r.step()
    for t, p in (("hems/v1/round", b"{"), ("hems/v1/round", b'{"v":1}'),
                 ("hems/v1/adjust/h1", b"\xff\xfe"), ("hems/v1/adjust/h1", _adj([[0, 1]])),
                 ("hems/v1/lab/clock", b'{"v":1}'), ("hems/v1/other", b'{"v":1}'),
                 ("hems/v1/reply/mb1/h1", b'{"v":1,"status":"rejected","reason":"late"}')):
        h.cl.inject(t, p)
        h.r.step()
    assert _logged(h.logs, "bad_json")
    assert _logged(h.logs, "bad_day")
    assert _logged(h.logs, "adjustment ignored: no_plan")
    assert _logged(h.logs, "bad_clock")
    assert _logged(h.logs, "unexpected topic")
    assert _logged(h.logs, "reply from mb1: rejected late")
    assert h.r.main.online and h.st.read("round.json") is None


def test_link_loss_backoff_and_relay_keeps_running():
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    h.ck.t = START + 1
    h.cl.fail["check_msg"] = 1
    h.r.step()
    assert not h.r.main.online and h.cl.closed == 1
    # offline: the relay keeps following the stored plan
    h.ck.t = START + 900
    h.r.step()
    assert h.rl.on is True and h.rl.calls[-1] == (True, 1)
    assert h.cl.connects == 1                       # still waiting: backoff 0.5-1 s
    h.cl.fail["connect"] = 1
    h.tk.ms += 1000
    h.r.step()                                      # attempt fails: backoff doubles
    assert h.cl.connects == 1 and not h.r.main.online
    assert h.r.main.backoff == 4 * link.BACKOFF_MIN_MS
    h.tk.ms += 1000
    h.r.step()
    assert not h.r.main.online                           # 1-2 s now
    h.tk.ms += 1000
    h.r.step()
    assert h.r.main.online and h.cl.connects == 2
    assert _logged(h.logs, "link down")


def test_link_drops_when_the_network_goes_down_and_comes_back_after():
    h = _setup()
    h.r.step()
    assert h.r.main.online
    h.r.main.turn(False)                            # Wi-Fi lost: the link is down at once
    assert not h.r.main.online and h.cl.closed == 1
    h.tk.ms += 60000
    assert not h.r.main.turn(False)                 # no attempt while the network is down
    assert h.cl.connects == 1
    assert h.r.main.turn(True) and h.cl.connects == 2


def test_backoff_is_capped_by_config():
    mq = {"host": "127.0.0.1", "port": 1883, "user": "h1", "password": "pw", "backoff_max_s": 3}
    h = _setup(mqtt=mq)
    h.cl.fail["connect"] = 10
    waits = []
    for _ in range(8):
        h.r.step()                                   # the attempt fails and schedules the next
        waits.append(clock.ticks_diff(h.r.main.retry_at, h.tk.ms))
        h.tk.ms = h.r.main.retry_at
    assert not h.r.main.online and h.cl.connects == 0
    assert h.r.main.backoff == 3000
    assert max(waits) <= 3000 and min(waits[3:]) >= 1500   # uniform in [cap/2, cap] once capped
    assert _setup().r.main.backoff_max == link.BACKOFF_MAX_MS


def test_publish_failure_resends_same_report_after_reconnect():
    h = _setup()
    h.r.step()
    h.cl.fail["publish"] = 1
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    assert not h.r.main.online and h.st.read("round.json")["sent"] is False
    h.tk.ms += 1000
    h.r.step()                                       # reconnect; the retained round comes again
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    plans = [json.loads(p) for t, p, _, _ in h.cl.published if t == "hems/v1/plan/h1"]
    assert len(plans) == 1 and plans[0]["report_id"] == h.st.read("round.json")["report_id"]
    assert h.st.read("round.json")["sent"] is True


def test_unreplied_report_is_resent_after_reconnect_and_silence():
    """The broker acknowledged the report but lost it (restart without persistence): no reply
    comes, so the same bytes go out again after the reconnect's grace, then after a silence
    (doubling); a reply for the report id stops it."""
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    h.r.step()
    first = [(t, p) for t, p, _, _ in h.cl.published[1:]]
    assert len(first) == 2 and h.st.read("round.json")["sent"] is True

    def sent_after(n):
        return [(t, p) for t, p, _, _ in h.cl.published[n:] if "/status/" not in t]

    n = len(h.cl.published)
    h.cl.fail["check_msg"] = 1
    h.r.step()                                       # link lost
    h.tk.ms += 1000
    h.r.step()                                       # reconnected
    assert h.r.main.online and sent_after(n) == []   # queued replies get their grace first
    h.tk.ms += runner.REPLY_GRACE_MS
    h.r.step()
    h.r.step()
    assert sent_after(n) == first                    # the very same bytes, one per turn
    h.r.step()
    assert sent_after(n) == first                    # then quiet for a while
    h.tk.ms += runner.REPLY_WAIT_MS
    h.r.step()
    h.r.step()
    assert sent_after(n) == first + first            # silence: once more
    rid = h.st.read("round.json")["report_id"]
    for svc in ("coordinator", "mb1"):
        h.cl.inject("hems/v1/reply/" + svc + "/h1", json.dumps(
            {"v": 1, "status": "rejected", "reason": "replay", "report_id": rid}).encode())
        h.r.step()
    st = h.st.read("round.json")
    assert st["acked"] == [2, 2] and st["outbox"] == []
    n = len(h.cl.published)
    h.tk.ms += runner.REPLY_WAIT_MAX_MS
    h.r.step()
    assert sent_after(n) == []


def test_keepalive_pings():
    h = _setup()
    h.r.step()
    h.tk.ms += 14000
    h.r.step()
    assert h.cl.pings == 0
    h.tk.ms += 1000
    h.r.step()
    assert h.cl.pings == 1


def test_exit_after_day():
    h = _setup(exit_after_day=True)
    h.r.step()
    assert h.r.step() is False                       # no plan yet
    h.cl.inject("hems/v1/round", _round())
    h.ck.t = START + 3599
    assert h.r.step() is False
    h.ck.t = START + 3600
    assert h.r.step() is True
    h.r.shutdown()
    assert h.cl.published[-1] == ("hems/v1/status/h1", b"offline", True, 1)
    assert not h.cl.connected


def test_corrupt_state_falls_back_to_safe_state():
    h = _setup(safe_state=True)
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    h.r.home.new["plan"] = []            # as if the stored plan were damaged
    h.r.home.new["adjusted"] = None
    h.ck.t = START + 10
    h.r.step()
    h.r.step()
    assert h.rl.calls[-1] == (True, None)
    assert len([a for a in h.logs if "relay:" in str(a[0])]) == 1

# ------------------------------------------------------------------ clocks


def test_lab_clock():
    real = [1000.0]
    c = clock.LabClock(lambda: real[0])
    assert c.now() is None
    c.update({"v": 1, "anchor": 1000.0, "virtual": START, "speed": 3600})
    real[0] = 1000.5
    assert c.now() == START + 1800
    for bad in ({"anchor": 1, "virtual": 2}, {"anchor": 1, "virtual": 2, "speed": 0},
                {"anchor": True, "virtual": 2, "speed": 1}, {"anchor": 1, "virtual": "x",
                                                              "speed": 1}):
        try:
            c.update(bad)
            raise AssertionError(f"accepted {bad!r}")
        except ValueError as e:
            assert str(e) == "bad_clock"
    assert c.now() == START + 1800
    assert clock.LabClock.topic == "hems/v1/lab/clock"


def test_system_clock_unknown_before_sync():
    assert clock.SystemClock(valid_after=1 << 40).now() is None
    t = clock.SystemClock(valid_after=0).now()
    assert t is not None and t > 1704067200
    assert clock.SystemClock.topic is None


def test_ticks():
    a = clock.ticks_ms()
    clock.sleep_ms(2)
    assert clock.ticks_diff(clock.ticks_ms(), a) >= 1
    assert clock.ticks_diff(clock.ticks_add(a, 5), a) == 5

# ------------------------------------------------------------------ relays


def test_lab_relay_logs_switches_only():
    st = MemStore()
    ck = FakeClock()
    r = relay.LabRelay(st, ck, safe_state=False)
    ck.t = 5
    r.set(False, 0)
    r.set(True, 1)
    r.set(True, 2)
    ck.t = 9
    r.set(False, None)
    assert st.lines["relay.log"] == [
        {"frame": None, "on": False, "t": None, "boot": True},
        {"frame": 1, "on": True, "t": 5},
        {"frame": None, "on": False, "t": 9}]


# ------------------------------------------------------------------ config


def _bad(patch, text):
    c = {"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
         "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s"}
    for k in patch:
        c[k] = patch[k]
    try:
        config.check(c)
    except config.ConfigError as e:
        assert text in str(e), str(e)
        return
    raise AssertionError(f"accepted {patch!r}")


def test_config_defaults():
    c = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                      "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s"})
    assert c["mqtt"]["port"] == 1883 and c["mqtt"]["keepalive"] == 30
    assert c["mqtt"]["cafile_der"] is None and c["mqtt"]["timeout_s"] == 5
    assert (c["board"], c["clock"], c["safe_state"], c["exit_after_day"], c["loop_ms"],
            c["magnification"]) == ("unix", "system", False, False, 20, 1)


def test_config_errors():
    _bad({"home_id": "H 1"}, "home_id")
    _bad({"mqtt": {"host": "h", "user": "h2", "password": "p"}}, "mqtt.user must equal")
    _bad({"mqtt": {"user": "h1", "password": "p"}}, "missing key mqtt.host")
    _bad({"mqtt": {"host": "h", "user": "h1", "password": "p", "port": 0}}, "mqtt.port")
    _bad({"keys": {"mb1": "zz"}}, "keys.mb1")
    _bad({"keys": {}}, "keys")
    _bad({"plan_wh": [1, -1]}, "plan_wh")
    _bad({"plan_wh": "x"}, "plan_wh")
    _bad({"board": "arduino"}, "board")
    _bad({"clock": "gps"}, "clock")
    _bad({"safe_state": 1}, "safe_state")
    _bad({"board": "esp32"}, "missing key relay")
    _bad({"state_dir": None}, "state_dir")


def test_config_hosts_default_to_host_and_port():
    c = _cfg()
    assert c["mqtt"]["hosts"] == [["127.0.0.1", 1883]]


def test_config_hosts_take_a_port_each_or_mqtt_port():
    c = config.check({"home_id": "h1", "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                      "mqtt": {"hosts": ["n1:1884", "n2"], "port": 1999, "user": "h1",
                               "password": "p"}})
    m = c["mqtt"]
    assert m["hosts"] == [["n1", 1884], ["n2", 1999]] and (m["host"], m["port"]) == ("n1", 1884)


def test_config_hosts_errors():
    for hosts in ([], "n1", ["n1:x"], ["n1:0"], [":1883"], [5], ["a:1:2"]):
        _bad({"mqtt": {"hosts": hosts, "user": "h1", "password": "p"}}, "mqtt.hosts")


def test_link_fails_over_to_the_next_broker_and_wraps_around():
    h = _setup(mqtt={"hosts": ["n1:1", "n2:2", "n3:3"], "user": "h1", "password": "pw"})
    h.cl.server, h.cl.port = "n1", 1
    h.r.step()
    assert h.r.main.online
    seen = []
    for _ in range(3):
        h.cl.fail["check_msg"] = 1
        h.r.step()                          # link lost: the next broker for the next attempt
        seen.append((h.cl.server, h.cl.port))
        h.tk.ms += 120000
        h.r.step()
        assert h.r.main.online
    assert seen == [("n2", 2), ("n3", 3), ("n1", 1)]


def test_config_load_errors():
    try:
        config.load("/nonexistent/config.json")
        raise AssertionError("loaded")
    except config.ConfigError as e:
        assert "cannot read" in str(e)

# ------------------------------------------------------------------ hardening


class _Dog:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


class _Board:
    def __init__(self):
        self.up = True
        self.events = []
        self.shown = None
        self.serviced = 0

    def net_up(self):
        return self.up

    def service(self, runner):
        self.serviced += 1

    def button(self):
        return self.events.pop(0) if self.events else None

    def show(self, on, online, override):
        self.shown = (on, online, override)


def test_watchdog_fed_only_while_healthy():
    h = _setup()
    dog = _Dog()
    h.r.watchdog = dog
    h.r.step()
    assert dog.feeds >= 1
    n = dog.feeds
    h.rl.stuck = True                       # the relay output does not follow
    h.r.step()
    h.r.step()
    assert dog.feeds == n and _logged(h.logs, "unhealthy: relay output does not read back")
    h.rl.stuck = False
    h.r.errors = runner.MAX_ERRORS          # the loop keeps failing
    h.r.step()
    assert dog.feeds == n
    h.r.errors = 0
    h.r.step()
    assert dog.feeds > n


def test_no_connect_attempt_while_the_network_is_down():
    h = _setup()
    b = _Board()
    b.up = False
    h.r.board = b
    for _ in range(3):
        h.tk.ms += 5000
        h.r.step()
    assert h.cl.connects == 0 and b.serviced == 3 and b.shown == (False, False, False)
    b.up = True
    h.r.step()
    assert h.cl.connects == 1 and b.shown[1] is True


def test_relay_is_driven_before_a_blocking_connect():
    h = _setup(safe_state=False)
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    h.r.step()
    h.cl.connected = False
    h.r.main.online = False
    order = []
    real_connect = h.cl.connect

    def connect(clean=True):
        order.append(("connect", h.rl.on))
        return real_connect(clean)

    h.cl.connect = connect
    h.ck.t = START + 900                    # the clock is known: frame 1 wants the relay on
    h.tk.ms += 60000
    h.r.step()
    assert order == [("connect", True)]     # switched before the connect attempt


def test_override_until_frame_end_then_back_to_plan():
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.ck.t = START + 10                     # frame 0: plan off
    h.r.step()
    assert h.rl.on is False
    h.r.override("on", "frame")
    assert h.rl.on is True and h.st.read("resident.json")["override"]["until"] == START + 900
    h.ck.t = START + 899
    h.r.step()
    assert h.rl.on is True
    h.ck.t = START + 900                    # frame 1: the plan says on anyway
    h.r.step()
    assert h.r.resident.ovr is None and h.rl.on is True
    h.r.override("off", "day")
    h.ck.t = START + 2700
    h.r.step()
    assert h.rl.on is False                 # frame 3 would be on: held off for the day
    h.r.override("auto")
    assert h.rl.on is True


def test_button_toggles_override():
    h = _setup()
    b = _Board()
    h.r.board = b
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.ck.t = START + 10
    h.r.step()
    b.events.append("short")
    h.r.step()
    assert h.rl.on is True and b.shown == (True, True, True)
    b.events.append("short")                # a second press: back to the plan
    h.r.step()
    assert h.rl.on is False and h.r.resident.ovr is None
    b.events.append("long")
    h.r.step()
    assert h.r.resident.ovr["until"] == START + 3600


def test_round_after_deadline_by_wall_clock_is_not_reported():
    h = _setup()
    h.ck.w = START - 30                     # deadline START - 60 has passed
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()
    h.r.step()
    assert [t for t, _, _, _ in h.cl.published] == ["hems/v1/status/h1"]
    assert h.st.read("round.json")["status"] == "late"
    assert _logged(h.logs, "not reported: late")


def test_partial_send_resumes_with_the_rest_after_reconnect():
    h = _setup()
    h.r.step()
    h.cl.inject("hems/v1/round", _round())
    h.r.step()                              # plan published and acknowledged
    h.cl.fail["publish"] = 1
    h.r.step()                              # the mask's publish fails: link lost
    assert not h.r.main.online
    st = h.st.read("round.json")
    assert st["acked"] == [1, 0] and st["sent"] is False
    h.tk.ms += 1000
    h.r.step()                              # reconnect; flushes the mask without the round
    h.r.step()
    topics = [t for t, _, _, _ in h.cl.published]
    assert topics.count("hems/v1/plan/h1") == 1 and topics.count("hems/v1/mask/mb1/h1") == 1
    assert h.st.read("round.json")["sent"] is True
