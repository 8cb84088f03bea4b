# Minimum on / off times per circuit (relay.min_on_s, relay.min_off_s: compressor loads), under
# MicroPython and CPython.

from fakes import CountingRandom, FakeClient, FakeClock, MemStore, Ticks

from hemsfw import config, protocol, protocol_svc, relay, runner

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"


class _Relay(relay.Relay):
    """The real base driver (safe state at construction), switches counted."""


def _runner(min_on=0, min_off=0):
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY}, "state_dir": "/x",
                        "clock": "lab", "relay": {"min_on_s": min_on, "min_off_s": min_off}})
    cl, ck, tk, logs = FakeClient(), FakeClock(topic=protocol.t_clock()), Ticks(), []
    rl = _Relay(False)
    r = runner.Runner(cfg, cl, ck, rl, MemStore(), lambda *a: logs.append(a), CountingRandom(),
                      ticks=tk)
    r.step()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START - 60, ["mb1"])))
    r.step()
    return r, rl, ck, tk, logs


def _at(r, ck, tk, t, ms):
    ck.t = t
    tk.ms = ms
    r.step()


def test_without_minimum_times_the_relay_follows_the_plan_at_once():
    r, rl, ck, tk, _ = _runner()
    _at(r, ck, tk, START + 900, 1000)
    assert rl.on is True


def test_the_relay_stays_off_for_the_minimum_off_time_after_boot():
    r, rl, ck, tk, logs = _runner(min_off=60)
    _at(r, ck, tk, START + 900, 30000)          # plan: on in frame 1, but off only 30 s
    assert rl.on is False
    assert any("held off for 30 s more" in " ".join([str(x) for x in a]) for a in logs), logs
    _at(r, ck, tk, START + 901, 59999)
    assert rl.on is False
    _at(r, ck, tk, START + 902, 60000)
    assert rl.on is True and rl.switches == 2   # boot (safe), then on once


def test_the_relay_stays_on_for_the_minimum_on_time():
    r, rl, ck, tk, _ = _runner(min_on=120)
    _at(r, ck, tk, START + 900, 1000)           # on at 1 s
    assert rl.on is True
    _at(r, ck, tk, START + 1800, 100000)        # plan off in frame 2: held until 121 s
    assert rl.on is True
    _at(r, ck, tk, START + 1801, 121000)
    assert rl.on is False


def test_an_override_waits_for_the_minimum_time_too():
    r, rl, ck, tk, _ = _runner(min_off=60)
    _at(r, ck, tk, START + 10, 70000)           # frame 0: off, 70 s after boot
    r.override("on")
    assert rl.on is True                        # off long enough
    r.override("off")
    assert rl.on is False                       # no minimum on time set
    tk.ms = 80000
    r.override("on")
    assert rl.on is False                       # off for only 10 s
    _at(r, ck, tk, START + 20, 130000)
    assert rl.on is True


def test_minimum_times_are_checked():
    for bad in ({"min_on_s": -1}, {"min_off_s": 3601}, {"min_on_s": "60"}):
        try:
            config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                          "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/x",
                          "relay": bad})
        except config.ConfigError as e:
            assert "relay.min_o" in str(e), str(e)
            continue
        raise AssertionError("accepted " + repr(bad))
