# Code a MicroPython board needs rarely is loaded for its use and dropped right after, so that it
# is not in the heap between uses (hemsfw.unload; docs/benchmarks.md, Firmware memory).  On
# CPython unload() keeps every module: there these tests check only that the use works.

import sys

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

from hemsfw import config, protocol, protocol_svc, runner

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"
MP = sys.implementation.name == "micropython"


def _runner():
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [0, 300, 0, 500], "keys": {"mb1": KEY}, "state_dir": "/x",
                        "clock": "lab", "local": {"host": "127.0.0.1"}})
    cl, lc = FakeClient(), FakeClient()
    ck = FakeClock(topic=protocol.t_clock())
    r = runner.Runner(cfg, cl, ck, FakeRelay(), MemStore(), lambda *a: None, CountingRandom(),
                      ticks=Ticks(), local=lc)
    ck.t = START - 100
    r.step()
    return r, cl, lc


def test_a_round_announcement_is_taken_by_code_dropped_after_it():
    r, cl, _ = _runner()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 4, 900, 100, START, START + 3600, ["mb1"])))
    r.step()
    assert r.home.new is not None and r.home.new["status"] == "reported"
    if MP:
        assert "hemsfw.report" not in sys.modules


def test_a_home_assistant_command_is_handled_by_code_dropped_after_it():
    r, _, lc = _runner()
    lc.inject("hems/h1/mode/set", b"on")
    r.step()
    assert r.resident.ovr is not None and r.resident.ovr["on"] is True
    if MP:
        assert "hemsfw.ha_cmd" not in sys.modules
