# No round for today (coordinator or broker outage, a new install, a missed or refused
# announcement): the relay follows the home's own plan for today; with no plan, the safe state.
# MicroPython subset, under MicroPython and CPython.

from fakes import CountingRandom, MemStore

from hemsfw import home, protocol, protocol_svc
from hemsfw.resident import Resident

KEY = "c8" * 32
D1, D2 = "2026-11-28", "2026-11-29"
UTC_MIDNIGHT_D1 = 1795824000          # 2026-11-28T00:00:00Z
JST = 540                             # minutes east of UTC
S1 = UTC_MIDNIGHT_D1 - JST * 60       # local (JST) midnight of D1
EVENING = [0] * 19 + [900] + [0] * 4  # hourly Wh: only 19:00-20:00 local


def _home(store, **kw):
    cfg = {"home_id": "h1", "magnification": 1, "plan_wh": EVENING, "keys": {"mb1": KEY}}
    for k in kw:
        cfg[k] = kw[k]
    return home.Home(cfg, store, CountingRandom(), None, kw.get("planner"))


def _round(day, start):
    return protocol.parse_round(protocol_svc.make_round(day, 1, 96, 900, 100, start, start - 60,
                                                        ["mb1"]))


def test_a_new_install_without_any_round_follows_its_own_plan_by_local_time():
    h = _home(MemStore(), utc_offset_min=JST)
    assert h.relay_at(S1 + 19 * 3600 + 60) == (True, 76)
    assert h.relay_at(S1 + 18 * 3600 + 60) == (False, 72)
    assert h.relay_at(S1 + 20 * 3600 + 60)[0] is False


def test_the_day_after_the_last_round_follows_the_own_plan_on_its_grid():
    st = MemStore()
    h = _home(st)                      # utc offset unknown: the round's grid tells it
    h.on_round(_round(D1, S1), None, S1 - 3600)
    s2 = S1 + 86400
    assert h.slot_at(s2 + 19 * 3600) is None
    assert h.relay_at(s2 + 19 * 3600 + 1) == (True, 76)
    assert h.relay_at(s2 + 21 * 3600)[0] is False


def test_the_residents_plan_for_today_is_the_one_followed():
    st = MemStore()
    res = Resident({"plan_wh": EVENING}, st)
    assert res.on_plan_command({"day": D2, "plan_wh": [500] + [0] * 23}) is None
    h = _home(st, planner=res, utc_offset_min=JST)
    s2 = S1 + 86400
    assert h.relay_at(s2 + 60) == (True, 0)
    assert h.relay_at(s2 + 19 * 3600 + 60)[0] is False


def test_with_no_usable_plan_the_relay_stays_in_the_safe_state():
    h = _home(MemStore(), plan_wh=[1, 2, 3, 4, 5])   # 5 steps do not divide 96 frames
    assert h.relay_at(UTC_MIDNIGHT_D1 + 60, True) == (True, None)
    assert h.relay_at(UTC_MIDNIGHT_D1 + 60, False) == (False, None)


def test_time_unknown_is_the_safe_state():
    assert _home(MemStore()).relay_at(None, True) == (True, None)


def test_the_lab_clock_keeps_the_safe_state_outside_announced_days():
    h = _home(MemStore(), clock="lab", utc_offset_min=JST)
    assert h.relay_at(S1 + 19 * 3600 + 60) == (False, None)


def test_iso_day_matches_the_calendar():
    # oracle: dates known independently (epoch, a leap day, the tests' own day constants)
    assert home.iso_day(0) == "1970-01-01"
    assert home.iso_day(11016) == "2000-02-29"
    assert home.iso_day(UTC_MIDNIGHT_D1 // 86400) == D1
    assert home.iso_day(-1) == "1969-12-31"
    assert home.iso_day(20819) == "2027-01-01"
