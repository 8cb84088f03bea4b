# Home round logic beyond one round: day-ahead slots, deadline, expiry, acknowledgements and
# restarts (the store survives, the Home object does not), under MicroPython and CPython.

from fakes import CountingRandom, MemStore

from hemsfw import home, protocol, protocol_svc

KEY = "c8" * 32
D1, D2, D3 = "2026-11-28", "2026-11-29", "2026-11-30"
S1 = 1795824000
S2 = S1 + 86400
S3 = S2 + 86400
FR = 4
FS = 900


def _cfg(plan=None):
    return {"home_id": "h1", "magnification": 1, "plan_wh": plan or [0, 300, 0, 500],
            "keys": {"mb1": KEY}}


def _ann(day=D1, start=S1, rnd=1, deadline=None):
    return protocol.parse_round(protocol_svc.make_round(
        day, rnd, FR, FS, 100, start, start - 60 if deadline is None else deadline, ["mb1"]))


def _adj(day=D1, rnd=1, moves=((1, 2),), curtail=(), expires=None):
    return protocol_svc.make_adjustment(day, rnd, "g1", list(moves), list(curtail),
                                    (S1 if day == D1 else S2) + FR * FS
                                    if expires is None else expires)


def _home(store, log=None):
    return home.Home(_cfg(), store, CountingRandom(), log)


def _ack_all(h):
    for i, _t, _p in h.pending():
        h.ack(i)


def test_day_ahead_round_keeps_today_running():
    st = MemStore()
    h = _home(st)
    h.on_round(_ann())
    _ack_all(h)
    assert h.on_adjustment(_adj(moves=((1, 2),))) is None     # today: [0, 0, 3, 5]
    # tomorrow's round arrives mid-day (frame 1 of today)
    now = S1 + FS + 5
    out = h.on_round(_ann(D2, S2), wall=S1 - 3600, now=now)
    assert len(out) == 2
    assert st.read(home.PREV)["day"] == D1 and st.read(home.NEW)["day"] == D2
    # the relay still follows today's adjusted plan, then tomorrow's plan
    assert h.relay_at(now) == (False, 1)
    assert h.relay_at(S1 + 2 * FS) == (True, 2)
    assert h.relay_at(S2 + FS) == (True, 1)
    # a restart keeps both
    h2 = _home(st)
    assert h2.relay_at(S1 + 2 * FS) == (True, 2) and h2.relay_at(S2 + FS) == (True, 1)
    # today's adjustment redelivered after tomorrow's round: still applies to today's slot
    assert h2.on_adjustment(_adj(moves=((1, 2),))) is None
    # the day after: today's slot is dropped once its day is over
    _ack_all(h2)
    h2.on_round(_ann(D3, S3), wall=S2 - 3600, now=S2 + 10)
    assert st.read(home.PREV)["day"] == D2 and h2.prev["day"] == D2


def test_round_after_a_finished_day_drops_it():
    st = MemStore()
    h = _home(st)
    h.on_round(_ann())
    _ack_all(h)
    h.on_round(_ann(D2, S2), wall=S2 - 3600, now=S2 - 10)   # D1 is over
    assert h.prev is None and st.read(home.PREV) is None


def test_cut_between_rotation_and_write_recovers():
    st = MemStore()
    h = _home(st)
    h.on_round(_ann())
    _ack_all(h)
    st.rename(home.NEW, home.PREV)       # as if cut right after the rename
    h2 = _home(st)
    assert h2.new["day"] == D1 and h2.prev is None and st.read(home.NEW)["day"] == D1


def test_old_and_repeated_rounds_are_ignored():
    logs = []
    st = MemStore()
    h = _home(st, lambda *a: logs.append(a))
    h.on_round(_ann(D2, S2))
    rid = st.read(home.NEW)["report_id"]
    assert h.on_round(_ann(D1, S1)) == []                  # an older day
    assert st.read(home.NEW)["report_id"] == rid
    assert len(h.on_round(_ann(D2, S2))) == 2               # repeat: the same unacked messages
    assert st.read(home.NEW)["report_id"] == rid


def test_late_round_is_not_reported_but_followed():
    st = MemStore()
    h = _home(st)
    ann = _ann(deadline=S1 - 60)
    assert h.on_round(ann, wall=S1 - 59) == []
    s = st.read(home.NEW)
    assert s["status"] == "late" and s["report_id"] is None and s["sent"] is True
    assert h.relay_at(S1 + FS) == (True, 1)                 # follows its own plan
    assert h.on_adjustment(_adj()) == "not_reported"


def test_deadline_passing_before_the_ack_stops_sending():
    st = MemStore()
    h = _home(st)
    out = h.on_round(_ann(deadline=S1 - 60), wall=S1 - 3600)
    assert len(out) == 2
    h.ack(0)                                                # the plan got through
    assert h.pending(wall=S1 - 59) == []                    # the mask is late: not sent
    assert st.read(home.NEW)["status"] == "late"


def test_acks_persist_one_by_one_and_restart_resends_only_the_rest():
    st = MemStore()
    h = _home(st)
    out = h.on_round(_ann(), wall=S1 - 3600)
    h.ack(0)
    h2 = _home(st)                                          # power cut, reboot
    again = h2.pending(wall=S1 - 3600)
    assert [(i, t) for i, t, _p in again] == [(1, out[1][0])]
    assert protocol.decode(again[0][2]) == protocol.decode(out[1][1])   # the same bytes' object
    h2.ack(1)
    s = st.read(home.NEW)
    assert s["sent"] is True and s["acked"] == [1, 1]
    assert _home(st).pending() == []


def test_reports_are_kept_until_each_service_replies():
    """A PUBACK only says the broker holds a message (it may lose it in a restart): the outbox
    is kept, for re-sending, until the service replies for this report id."""
    st = MemStore()
    h = _home(st)
    out = h.on_round(_ann(), wall=S1 - 3600)
    rid = h.new["report_id"]
    h.ack(0)
    h.ack(1)
    assert h.pending() == []
    again = h.pending(resend=True)
    assert [(t, p.encode()) for _i, t, p in again] == out     # the very same bytes
    assert not h.on_reply("coordinator", {"report_id": "00" * 16})   # another report's
    assert not h.on_reply("mb2", {"report_id": rid})                 # not a service of ours
    assert h.on_reply("coordinator", {"status": "accepted", "report_id": rid})
    h2 = _home(st)                                          # persisted: survives a reboot
    assert [t for _i, t, _p in h2.pending(resend=True)] == [out[1][0]]
    assert h2.on_reply("mb1", {"status": "rejected", "reason": "replay", "report_id": rid})
    s = st.read(home.NEW)
    assert s["acked"] == [2, 2] and s["outbox"] == [] and s["sent"] is True
    assert h2.pending(resend=True) == [] and not h2.on_reply("mb1", {"report_id": rid})


def test_reply_before_the_puback_counts_and_deadline_drops_the_outbox():
    st = MemStore()
    h = _home(st)
    h.on_round(_ann(deadline=S1 - 60), wall=S1 - 3600)
    rid = h.new["report_id"]
    assert h.on_reply("mb1", {"report_id": rid})          # the reply overtook the PUBACK
    h.ack(1)
    assert st.read(home.NEW)["acked"] == [0, 2]
    h.ack(0)
    assert h.pending(wall=S1 - 61, resend=True)[0][0] == 0
    assert h.pending(wall=S1 - 59, resend=True) == []       # past the deadline: dropped
    s = st.read(home.NEW)
    assert s["outbox"] == [] and s["status"] == "reported"  # it did reach the broker


def test_adjustment_expiry_and_other_day():
    h = _home(MemStore())
    h.on_round(_ann())
    _ack_all(h)
    assert h.on_adjustment(_adj(day=D2)) == "other_round"
    assert h.on_adjustment(_adj(expires=S1 + 100), now=S1 + 100) == "expired"
    assert h.new["adjusted"] is None
    assert h.on_adjustment(_adj(expires=S1 + FS + 10)) is None   # frame 1 -> 2
    assert h.relay_at(S1 + FS) == (False, 1)
    # past `expires` the relay falls back to the unadjusted plan
    assert h.relay_at(S1 + 2 * FS) == (False, 2)
    assert h.relay_at(S1 + FS + 10) == (True, 1)


def test_redelivered_adjustment_is_not_rewritten():
    class CountingStore(MemStore):
        writes = 0

        def write(self, name, obj):
            CountingStore.writes += 1
            MemStore.write(self, name, obj)

    st = CountingStore()
    h = _home(st)
    h.on_round(_ann())
    _ack_all(h)
    assert h.on_adjustment(_adj()) is None
    n = CountingStore.writes
    assert h.on_adjustment(_adj()) is None
    assert CountingStore.writes == n


def test_frame_and_day_ends():
    h = _home(MemStore())
    h.on_round(_ann())
    assert h.frame_end(S1 + 10) == S1 + FS and h.frame_end(S1 + FS) == S1 + 2 * FS
    assert h.day_end_at(S1 + 10) == S1 + FR * FS
    assert h.frame_end(S1 - 1) is None and h.day_end_at(None) is None
    assert not h.day_over(S1 + FR * FS - 1) and h.day_over(S1 + FR * FS)


# ------------------------------------------------------------------ who decides a round
# (docs/privacy.md: the broker set is the home's, days follow the home's clock)


def _ann_brokers(brokers, rnd=1, start=S1):
    return protocol.parse_round(protocol_svc.make_round(D1, rnd, FR, FS, 100, start,
                                                        start - 60, brokers))


def _two_broker_home(st, logs):
    cfg = _cfg()
    cfg["keys"] = {"mb1": KEY, "mb2": "d9" * 32}
    return home.Home(cfg, st, CountingRandom(), lambda *a: logs.append(a))


def test_a_round_naming_fewer_brokers_than_provisioned_is_refused():
    st, logs = MemStore(), []
    h = _two_broker_home(st, logs)
    assert h.on_round(_ann_brokers(["mb1"])) == []            # one broker would see every seed
    assert st.read(home.NEW) is None
    assert any("too_few_brokers" in " ".join(str(x) for x in a) for a in logs)
    # the genuine announcement of the same day and round still counts afterwards
    assert len(h.on_round(_ann_brokers(["mb1", "mb2"]))) == 3


def test_a_round_naming_a_broker_not_provisioned_is_refused():
    st, logs = MemStore(), []
    h = _two_broker_home(st, logs)
    assert h.on_round(_ann_brokers(["mb1", "evil"])) == []
    assert st.read(home.NEW) is None
    assert any("brokers_not_provisioned" in " ".join(str(x) for x in a) for a in logs)


def test_a_round_outside_the_homes_day_window_is_refused():
    st, logs = MemStore(), []
    h = home.Home(_cfg(), st, CountingRandom(), lambda *a: logs.append(a))
    far = S1 + 3 * 86400                                   # three days ahead of now
    assert h.on_round(_ann(D3, far), now=S1 - 3600) == []
    over = _ann(D1, S1)                                    # a day that has ended
    assert h.on_round(over, now=S1 + FR * FS + 1) == []
    assert st.read(home.NEW) is None
    assert len(h.on_round(_ann(D1, S1), now=S1 - 3600)) == 2   # tomorrow: fine


def test_a_round_beyond_the_days_limit_is_refused():
    st = MemStore()
    cfg = _cfg()
    cfg["max_rounds_per_day"] = 2
    h = home.Home(cfg, st, CountingRandom())
    assert h.on_round(_ann(rnd=3)) == []
    assert len(h.on_round(_ann(rnd=2))) == 2
