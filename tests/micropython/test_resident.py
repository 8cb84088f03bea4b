# The resident's plans (config, local command, per-weekday history) and override, under
# MicroPython and CPython.

from fakes import CountingRandom, MemStore

from hemsfw import history, home, protocol, protocol_svc, resident

KEY = "c8" * 32


def _cfg(**planner):
    return {"home_id": "h1", "plan_wh": [100, 200], "keys": {"mb1": KEY},
            "planner": planner}


def test_weekday_matches_the_calendar():
    # 2026-11-28 is a Saturday; 2024-02-29 a Thursday; 2000-01-01 a Saturday; 1999-12-31 Friday
    assert history.weekday("2026-11-28") == 5
    assert history.weekday("2024-02-29") == 3
    assert history.weekday("2000-01-01") == 5
    assert history.weekday("1999-12-31") == 4
    assert history.weekday("2026-11-30") == 0
    assert [history.weekday("2026-03-0%d" % d) for d in range(1, 8)] == [6, 0, 1, 2, 3, 4, 5]


def test_ewma_fixed_point():
    st = MemStore()
    assert history.record(st, "2026-11-02", [400, 0, 100], 25)      # a Monday
    assert history.predict(st, "2026-11-09", 3) == [400, 0, 100]    # first sample: itself
    assert not history.record(st, "2026-11-02", [0, 0, 0], 25)      # the same day: once only
    assert history.record(st, "2026-11-09", [0, 800, 100], 25)
    # h = 400 + 0.25 * (0 - 400) = 300; 0 + 0.25 * 800 = 200; 100 stays
    assert history.predict(st, "2026-11-16", 3) == [300, 200, 100]
    for d in ("2026-11-16", "2026-11-23", "2026-11-30", "2026-12-07", "2026-12-14",
              "2026-12-21", "2026-12-28", "2027-01-04", "2027-01-11", "2027-01-18"):
        history.record(st, d, [0, 800, 100], 25)
    # converges to the new habit: 0.75^11 = 4 % of the old values is left
    p = history.predict(st, "2027-01-25", 3)
    assert p == [17, 766, 100], p
    assert history.predict(st, "2026-11-10", 3) is None              # no Tuesday yet
    assert history.predict(st, "2026-11-16", 4) is None              # other resolution
    assert history.predict(st, "2026-11-16", 3, min_days=100) is None


def test_one_file_per_weekday_and_the_old_file_migrated():
    st = MemStore()
    history.record(st, "2026-11-02", [400, 0, 100], 25)      # a Monday
    history.record(st, "2026-11-07", [1, 2, 3], 25)          # a Saturday
    assert sorted(st.files) == ["history0.json", "history5.json"]
    # the layout before the split: every weekday in one history.json
    old = MemStore()
    old.write("history.json", {"0": st.read("history0.json"), "5": st.read("history5.json")})
    old.write("history5.json", {"n": 1, "last": "2026-11-14", "h": [0, 0, 16]})   # newer: kept
    history.migrate(old)
    assert sorted(old.files) == ["history0.json", "history5.json"]
    assert history.predict(old, "2026-11-09", 3) == [400, 0, 100]
    assert history.predict(old, "2026-11-21", 3) == [0, 0, 1]
    history.migrate(old)                                     # nothing left to do
    assert sorted(old.files) == ["history0.json", "history5.json"]


def test_plan_sources_in_order():
    st = MemStore()
    r = resident.Resident(_cfg(mode="history", min_days=2), st)
    assert r.plan_for("2026-11-28", 4) == ([50, 50, 100, 100], "config")
    assert r.on_plan_command({"plan_wh": [1, 2, 3, 4]}) is None
    assert r.plan_for("2026-11-28", 4) == ([1, 2, 3, 4], "resident")
    assert r.on_plan_command({"plan_wh": [9, 9], "day": "2026-11-28"}) is None
    assert r.plan_for("2026-11-28", 4) == ([5, 4, 5, 4], "resident_day")
    assert r.on_plan_command({"plan_wh": [-1]}) == "bad_plan_wh"
    assert r.on_plan_command({"plan_wh": [1], "day": "tomorrow"}) == "bad_day"
    assert r.on_plan_command([1]) == "bad_json"
    # persisted
    r2 = resident.Resident(_cfg(mode="history", min_days=2), st)
    assert r2.default == [1, 2, 3, 4] and r2.days == {"2026-11-28": [9, 9]}
    # recording the day forgets its day plan and learns it; two Saturdays make a prediction
    r2.record("2026-11-28", [5, 4, 5, 4], "resident_day")
    assert r2.days == {}
    assert r2.plan_for("2026-12-05", 4) == ([1, 2, 3, 4], "resident")   # min_days 2
    r2.record("2026-12-05", [1, 2, 3, 4], "resident")
    wh, src = r2.plan_for("2026-12-12", 4)
    assert src == "history" and wh == [4, 4, 5, 4], wh   # 5 + .25*(1-5) = 4, 4 + .25*(2-4) = 3.5
    r2.record("2026-12-12", wh, "history")                # a prediction is not learnt again
    assert history.predict(st, "2026-12-19", 4) == wh


def test_home_uses_the_planner_and_records():
    st = MemStore()
    r = resident.Resident(_cfg(), st)
    r.on_plan_command({"plan_wh": [0, 0, 700, 0], "day": "2026-11-28"})
    h = home.Home(_cfg(), st, CountingRandom(), planner=r)
    h.on_round(protocol.parse_round(protocol_svc.make_round(
        "2026-11-28", 1, 4, 900, 100, 1795824000, 1795823000, ["mb1"])))
    s = st.read(home.NEW)
    assert s["plan"] == [0, 0, 7, 0] and s["source"] == "resident_day"
    assert history.predict(st, "2026-12-05", 4) == [0, 0, 700, 0]


def test_override_until_and_persistence():
    st = MemStore()
    logs = []
    r = resident.Resident(_cfg(), st, lambda *a: logs.append(a))
    assert r.override(100) is None
    r.set_override(True, 200)
    assert r.override(150) is True and r.override(None) is True
    assert resident.Resident(_cfg(), st).override(199) is True       # survives a reboot
    assert r.override(200) is None and logs
    assert resident.Resident(_cfg(), st).ovr is None
    r.set_override(False, None)                                       # set with the time unknown
    assert r.override(None) is False
    assert r.override(5) is None                                      # ends once the time is known
    r.set_override(True, 300)
    r.set_override(None, None)
    assert r.override(10) is None
