# The special circuit's meter and the frame's energy budget (hemsfw/meter.py, budget.py,
# simload.py) with the runner, under MicroPython and CPython (issue 15).

import json

from fakes import CountingRandom, FakeClient, FakeClock, FakePulses, FakeRelay, MemStore

from hemsfw import config, history, meter, pagestate, runner, web
from hemsfw.simload import SimLoad

KEY = "c8" * 32
START = 1795824000          # 2026-11-28 00:00 UTC
DAY = "2026-11-28"
FS = 900


def _slot(plan, adjusted=None, frames=4):
    return {"day": DAY, "round": 1, "start": START, "frame_s": FS, "frames": frames,
            "quantum_wh": 1, "deadline": START - 60, "source": "config", "status": "reported",
            "report_id": "00", "plan": plan, "outbox": [], "acked": [], "sent": True,
            "adjustment": None, "adjusted": adjusted}


def _runner(st, plan=(0, 300, 0, 500), meter_cfg=None, pulses=None, lclient=None, **kw):
    c = {"home_id": "h1",
         "mqtt": {"host": "127.0.0.1", "port": 1883, "user": "h1", "password": "pw"},
         "plan_wh": list(plan), "keys": {"mb1": KEY}, "state_dir": "/tmp/x", "clock": "lab"}
    for k in kw:
        c[k] = kw[k]
    cfg = config.check(c)
    cfg["meter"] = meter_cfg or {"pulses_per_kwh": 1000, "rated_w": 2000, "stuck_s": 600}
    ck = FakeClock()
    rl = FakeRelay()
    logs = []
    src = pulses if pulses is not None else FakePulses()
    r = runner.Runner(cfg, FakeClient(), ck, rl, st, lambda *a: logs.append(a), CountingRandom(),
                      local=lclient, pulses=src)
    return r, ck, rl, src, logs


def _logged(logs, text):
    return any(text in " ".join([str(x) for x in a]) for a in logs)


def test_pulses_before_a_frame_boundary_count_in_the_frame_that_ended():
    st = MemStore()
    st.write("round.json", _slot([100, 100, 0, 0]))
    r, ck, _rl, src, _ = _runner(st)
    ck.t = START + 10
    r.step()
    src.pulse(40)
    ck.t = START + FS           # the turn that sees the boundary takes the last pulses
    r.step()
    src.pulse(7)
    ck.t = START + FS + 30
    r.step()
    m = r.meter.meter
    assert m.p[0] == 40 and m.k == 1 and m.cur == 7
    assert st.read("meter.json")["p"][0] == 40     # the closed frame is persisted
    assert r.meter.meter.today_wh() == [40, 7, 0, 0]


def test_reboot_mid_frame_keeps_closed_frames_and_loses_only_the_running_count():
    st = MemStore()
    st.write("round.json", _slot([100, 100, 0, 0]))
    r, ck, _rl, src, _ = _runner(st)
    ck.t = START + 10
    r.step()
    src.pulse(30)
    ck.t = START + FS + 10
    r.step()
    src.pulse(20)               # frame 1, never saved: lost at the reboot
    ck.t = START + FS + 20
    r.step()
    r2, ck2, _rl2, src2, _ = _runner(st)        # power cut and boot
    ck2.t = START + FS + 40
    src2.pulse(5)               # counted by the new boot, still in frame 1
    r2.step()
    ck2.t = START + 2 * FS
    r2.step()
    assert r2.meter.meter.p[:2] == [30, 5]


def test_reboot_after_the_budget_was_reached_keeps_the_relay_open():
    st = MemStore()
    st.write("round.json", _slot([50, 0, 0, 0]))
    r, ck, rl, src, _ = _runner(st)
    ck.t = START + 10
    r.step()
    assert rl.on is True
    src.pulse(50)
    ck.t = START + 300
    r.step()
    assert rl.on is False
    r2, ck2, rl2, _src2, _ = _runner(st)
    ck2.t = START + 310
    r2.step()
    assert rl2.on is False and r2.meter.meter.cur == 50


def test_each_frame_whose_budget_is_reached_is_saved_at_once():
    st = MemStore()
    st.write("round.json", _slot([10, 0, 10, 0]))
    r, ck, rl, src, _ = _runner(st)
    for k in (0, 2):
        ck.t = START + k * FS + 1
        r.step()
        src.pulse(10)
        ck.t = START + k * FS + 100
        r.step()
        assert rl.on is False
        assert st.read("meter.json")["k"] == k and st.read("meter.json")["cur"] == 10
        ck.t = START + k * FS + FS + 1
        r.step()


def test_budget_reached_mid_frame_opens_the_relay_on_that_loop_turn():
    st = MemStore()
    st.write("round.json", _slot([0, 300, 0, 500]))
    r, ck, rl, src, _ = _runner(st)
    ck.t = START + FS + 1
    r.step()
    assert rl.calls[-1] == (True, 1)
    src.pulse(299)
    ck.t = START + FS + 200
    r.step()
    assert rl.on is True                          # 299 of 300 Wh
    src.pulse(1)
    ck.t = START + FS + 201
    r.step()                                      # the turn that takes the 300th pulse
    assert rl.calls[-1] == (False, 1)
    ck.t = START + 2 * FS + 1
    r.step()
    assert rl.calls[-1] == (False, 2)             # frame 2: no budget
    ck.t = START + 3 * FS + 1
    r.step()
    assert rl.calls[-1] == (True, 3)              # frame 3: a new budget


def test_adjusted_plan_is_the_budget():
    st = MemStore()
    st.write("round.json", _slot([0, 300, 0, 500], adjusted=[0, 120, 0, 500]))
    r, ck, rl, src, _ = _runner(st)
    ck.t = START + FS + 1
    r.step()
    src.pulse(120)
    ck.t = START + FS + 100
    r.step()
    assert rl.on is False


def test_stuck_meter_falls_back_to_on_time_at_rated_power_and_says_so():
    st = MemStore()
    st.write("round.json", _slot([0, 300, 200, 0]))   # rated 2000 W: 540 s and 360 s
    r, ck, rl, src, logs = _runner(st)
    ck.t = START + FS
    r.step()
    assert rl.on is True
    ck.t = START + FS + 599
    r.step()
    assert r.meter.budget.state == "counting"
    ck.t = START + FS + 600                       # stuck_s of closed relay without a pulse
    r.step()
    assert r.meter.budget.state == "stuck" and _logged(logs, "FAULT")
    assert rl.on is False                         # 600 s at 2000 W > 300 Wh
    ck.t = START + 2 * FS
    r.step()
    assert rl.on is True                          # frame 2: 360 s of on-time
    ck.t = START + 2 * FS + 359
    r.step()
    assert rl.on is True
    ck.t = START + 2 * FS + 360
    r.step()
    assert rl.on is False
    src.pulse(1)                                   # the meter counts again
    ck.t = START + 2 * FS + 400
    r.step()
    assert r.meter.budget.state == "counting" and _logged(logs, "counting again")


def test_override_beats_the_budget_and_the_meter_keeps_counting():
    st = MemStore()
    st.write("round.json", _slot([0, 10, 0, 0]))
    r, ck, rl, src, _ = _runner(st)
    ck.t = START + FS + 1
    r.step()
    src.pulse(10)
    r.override("on", "frame")
    assert rl.on is True
    src.pulse(5)
    ck.t = START + FS + 50
    r.step()
    assert rl.on is True and r.meter.meter.cur == 15


def test_history_learns_the_metered_day_not_the_plan():
    st = MemStore()
    st.write("round.json", _slot([100, 100, 0, 0]))
    r, ck, _rl, src, _ = _runner(st, planner={"mode": "history"})
    ck.t = START + 1
    r.step()
    src.pulse(60)
    ck.t = START + FS + 1
    r.step()
    src.pulse(80)
    ck.t = START + 3 * FS
    r.step()
    ck.t = START + 4 * FS           # the day is over: its last frame closes
    r.step()
    assert history.predict(st, DAY, 4) == [60, 80, 0, 0]


def test_resident_day_plan_is_learnt_but_not_the_config_plan_with_a_meter():
    st = MemStore()
    r, _ck, _rl, _src, _ = _runner(st, planner={"mode": "history"})
    r.resident.record(DAY, [5, 5, 5, 5], "config")
    assert history.predict(st, DAY, 4) is None
    r.resident.record(DAY, [7, 0, 0, 7], "resident_day")
    assert history.predict(st, DAY, 4) == [7, 0, 0, 7]


def test_meter_frame_log_and_wh_rounding():
    st = MemStore()
    m = meter.Meter(st, 800, frame_log=True)
    m.move(DAY, 4, 0)
    m.add(4)                     # 4 pulses at 800/kWh = 5 Wh
    m.move(DAY, 4, 1)
    assert st.lines["meter.log"] == [{"day": DAY, "k": 0, "p": 4}]
    assert m.today_wh() == [5, 0, 0, 0] and meter.wh(1, 800) == 1


def _metered_day(local=None):
    st = MemStore()
    st.write("round.json", _slot([0, 300, 0, 500], adjusted=[0, 0, 300, 500]))
    kw = {"local": {"host": "127.0.0.1"}} if local is not None else {}
    r, ck, _rl, src, _ = _runner(st, lclient=local, meter_cfg={"stuck_s": 3600}, **kw)
    ck.t = START + 2 * FS + 1
    r.step()
    src.pulse(120)
    ck.t = START + 2 * FS + 60
    r.step()
    return r


def test_page_shows_metered_energy_today_against_plan_and_adjustment():
    r = _metered_day()
    s = pagestate.state(r)
    assert s["metered_wh"] == [0, 0, 120, 0] and s["meter"] == "counting"
    chunks = list(web.page(r))
    html = "".join(chunks)
    assert 'id="metered">120</b> Wh of 800 Wh' in html
    bars = [c for c in chunks if c.startswith('<rect class="m"')]
    assert len(bars) == 4 and 'data-k="2" data-wh="120"' in bars[2]


def test_home_assistant_gets_a_metered_sensor_with_plan_and_adjustment():
    lc = FakeClient()
    r = _metered_day(lc)
    r.step()
    ck = r.clock
    ck.t = START + 3 * FS + 1     # a frame change publishes the metered energy
    r.step()
    last = {}
    for t, p, _ret, _q in lc.published:
        last[t] = p
    cfg = json.loads(last["homeassistant/sensor/hems_h1/metered/config"])
    assert cfg["state_topic"] == "hems/h1/metered" and cfg["device_class"] == "energy"
    assert last["hems/h1/metered"] == b"120"
    a = json.loads(last["hems/h1/metered/attributes"])
    assert a["metered_wh"] == [0, 0, 120, 0] and a["meter"] == "counting" and a["day"] == DAY
    p = json.loads(last["hems/h1/plan/attributes"])    # against the plan and the adjustment
    assert p["adjusted_wh"] == [0, 0, 300, 500] and p["planned_wh"] == [0, 300, 0, 500]


# ------------------------------------------------------------------ the lab's simulated load


def test_sim_ev_draws_until_its_need_then_stops():
    s = SimLoad([["ev", 3600, 100, 3600, 0, 0]], 1000)   # 3.6 kW from 01:00, needs 100 Wh
    s.advance(START, True)
    s.advance(START + 3600, True)
    assert s.take() == 0                                 # not plugged in before 01:00
    s.advance(START + 3600 + 50, True)
    assert s.take() == 50                                # 1 Wh per second
    s.advance(START + 7200, True)
    assert s.take() == 50                                # finished early: 100 Wh, no more


def test_sim_heat_pump_cycles_and_waits_while_the_relay_is_open():
    s = SimLoad([["hpwh", 0, 10000, 3600, 600, 300]], 1000)   # 10 min on, 5 off
    s.advance(START, True)
    s.advance(START + 900, True)
    assert s.take() == 600
    s.advance(START + 1800, False)
    assert s.take() == 0
    s.advance(START + 1800 + 600, True)                  # 1800 s into the cycle: on phase
    assert s.take() == 600


def test_sim_stops_at_the_pulse_the_controller_waits_for():
    s = SimLoad([["ev", 0, 10000, 3600, 0, 0]], 1000)
    s.advance(START, True)
    t = s.advance(START + 900, True, 25)
    assert s.take() == 25 and abs(t - (START + 25)) < 1e-3


def test_lab_runner_meters_no_more_than_the_budget_plus_one_pulse_at_any_speed():
    # The lab's clock jumps 450 s per turn; the runner still decides at every budget pulse.
    st = MemStore()
    st.write("round.json", _slot([0, 300, 1000, 0], adjusted=[0, 300, 0, 1000]))
    mc = {"kind": "sim", "pulses_per_kwh": 1000, "rated_w": 4000, "stuck_s": 1800,
          "loads": [["ev", 0, 900, 3600, 0, 0]]}
    sim = SimLoad(mc["loads"], 1000)
    r, ck, _rl, _src, _ = _runner(st, meter_cfg=mc, pulses=sim)
    ck.t = START
    while ck.t <= START + 4 * FS:
        r.step()
        ck.t += 450
    got = r.meter.meter.p
    assert got[0] == 0 and got[1] == 300 and got[2] == 0, got
    assert got[3] == 600, got                      # the EV needed 900 Wh: done early


def test_sim_snaps_to_a_frame_end_a_rounding_error_away():
    s = SimLoad([["ev", 0, 100000, 3700, 0, 0]], 1000)
    end = 1796591700.0
    s.advance(end - 100, True)
    s.t = end - 5e-7                  # a pulse time computed just before the frame's end
    assert s.advance(end, True) == end
