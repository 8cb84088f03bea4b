# The resident's page: a password the resident sets (stored hashed), sessions, lock-out; what an
# unauthenticated client gets; clock times, the Wh scale, the adjustment in words, refresh.
# MicroPython subset, under MicroPython and CPython.  Over real HTTP:
# tests/test_firmware_resident.py

import binascii

from fakes import CountingRandom, FakeClient, FakeClock, FakeRelay, MemStore, Ticks

from hemsfw import (
    auth,
    authgate,
    config,
    pagestate,
    protocol,
    protocol_svc,
    runner,
    web,
    webpage,
    webreq,
)

KEY = "c8" * 32
START = 1795824000
DAY = "2026-11-28"


def _auth(store=None):
    tk = Ticks()
    return auth.Auth(store or MemStore(), tk, CountingRandom()), tk


def test_pbkdf2_matches_the_published_vectors():
    # RFC 7914 section 11 (c=1) and the widely published c=2 vector for PBKDF2-HMAC-SHA256
    h1 = auth.pbkdf2(b"passwd", b"salt", 1)
    assert binascii.hexlify(h1) == (b"55ac046e56e3089fec1691c22544b605"
                                    b"f94185216dde0465e68b9d57c20dacbc")
    h2 = auth.pbkdf2(b"password", b"salt", 2)
    assert binascii.hexlify(h2) == (b"ae4d0c95af6b46d32d0adff928f06dd0"
                                    b"2a303f8ef3c251dfd6e2d85a95474c43")


def test_the_password_is_stored_hashed_never_in_clear():
    st = MemStore()
    a, _ = _auth(st)
    assert a.set_password("4711") is None
    text = st.files[auth.FILE]
    assert "4711" not in text
    rec = st.read(auth.FILE)
    assert rec["iter"] == auth.ITER and len(rec["hash"]) == 64 and len(rec["salt"]) == 32
    assert auth.Auth(st, Ticks(), CountingRandom()).is_set()     # survives a reboot


def test_too_short_a_password_is_refused():
    a, _ = _auth()
    assert "4 to 64" in a.set_password("123")
    assert not a.is_set()


def test_login_gives_a_session_only_for_the_right_password():
    a, _ = _auth()
    a.set_password("4711")
    assert a.login("4712") is None
    tok = a.login("4711")
    assert tok and a.valid(tok) and not a.valid("0" * 32) and not a.valid(None)
    a.logout(tok)
    assert not a.valid(tok)


def test_sessions_expire():
    a, tk = _auth()
    a.set_password("4711")
    tok = a.login("4711")
    tk.ms += 1000 * auth.SESSION_S
    assert not a.valid(tok)


def test_wrong_passwords_lock_logins_for_longer_each_time():
    a, tk = _auth()
    a.set_password("4711")
    for _ in range(auth.FREE_FAILS):
        assert a.login("0000") is None
    assert a.locked()
    assert a.login("4711") is None          # even the right one, while locked
    tk.ms += 1000
    assert not a.locked()
    assert a.login("0000") is None          # the next failure locks for 2 s
    tk.ms += 1000
    assert a.locked()
    tk.ms += 1000
    assert a.login("4711")


def test_the_setup_window_closes_after_boot_and_stays_closed():
    a, tk = _auth()
    assert a.setup_open()
    tk.ms += 1000 * auth.SETUP_S
    assert not a.setup_open()
    tk.ms += 1 << 29                       # a ticks_diff wrap does not reopen it
    assert not a.setup_open()


def test_a_new_password_logs_everyone_out():
    a, _ = _auth()
    a.set_password("4711")
    tok = a.login("4711")
    a.set_password("8888")
    assert not a.valid(tok)


def _runner():
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "127.0.0.1", "user": "h1",
                                                   "password": "pw"},
                        "plan_wh": [0] * 76 + [800] * 3 + [0] * 17, "keys": {"mb1": KEY},
                        "state_dir": "/tmp/x", "clock": "lab"})
    cl = FakeClient()
    ck = FakeClock(topic=protocol.t_clock())
    r = runner.Runner(cfg, cl, ck, FakeRelay(), MemStore(), lambda *a: None, CountingRandom(),
                      ticks=Ticks())
    r.step()
    cl.inject("hems/v1/round", protocol.encode(protocol_svc.make_round(
        DAY, 1, 96, 900, 100, START, START - 60, ["mb1"])))
    r.step()
    r.step()
    moves = [[76, 82], [77, 83], [78, 84]]
    cl.inject("hems/v1/adjust/h1", protocol.encode(protocol_svc.make_adjustment(
        DAY, 1, "g1", moves, [10, 11], START + 86400)))
    r.step()
    ck.t = START + 77 * 900 + 10
    r.step()
    return r


def test_the_page_shows_clock_times_not_frame_numbers():
    html = "".join(web.page(_runner()))
    assert "frame 0" not in html and "frame 95" not in html
    for t in ("00:00", "06:00", "12:00", "18:00", "24:00"):
        assert ">" + t + "</text>" in html, t
    assert "now 19:15-19:30" in html


def test_the_page_has_a_wh_scale():
    html = "".join(web.page(_runner()))
    assert '<text class="scale" x="2" y="12" font-size="12">800 Wh</text>' in html
    assert "in Wh per 15 minutes" in html


def test_the_page_explains_the_adjustment_in_words():
    html = "".join(web.page(_runner()))
    assert "<li>The grid moved 19:00-19:45 to 20:30-21:15.</li>" in html
    assert "<li>The grid cut 02:30-03:00: the circuit gets no power then.</li>" in html


def test_without_adjustment_the_page_says_the_plan_is_followed():
    assert pagestate.explain(None, 900) == [
        "No adjustment from the grid: the relay follows your plan."]


def test_the_page_refreshes_itself():
    html = "".join(web.page(_runner()))
    assert '<meta http-equiv="refresh" content="%d">' % webpage.REFRESH_S in html


def test_an_unauthenticated_client_sees_no_plan_no_relay_and_no_secret():
    a, _ = _auth()
    a.set_password("4711")
    html = "".join(authgate.gate("Special circuit of h1", a.gate()))
    assert 'action="/login"' in html and "<svg" not in html and "Relay" not in html
    assert "4711" not in html and "hash" not in html and "token" not in html


def test_the_setup_form_only_in_the_window_after_boot():
    a, tk = _auth()
    assert 'action="/password"' in "".join(authgate.gate("Special circuit of h1", a.gate()))
    tk.ms += 1000 * auth.SETUP_S
    html = "".join(authgate.gate("Special circuit of h1", a.gate()))
    assert 'action="/password"' not in html and "off and on again" in html


def test_form_values_are_url_decoded():
    f = webreq.form_fields("password=p%C3%A4ss+w%26rd&x=%zz")
    assert f == {"password": "päss w&rd", "x": "%zz"}


def test_the_old_token_key_is_refused_with_a_hint():
    try:
        config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                      "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                      "http": {"port": 8080, "token": "x"}})
    except config.ConfigError as e:
        assert "unknown key http.token" in str(e) and "password" in str(e)
        return
    raise AssertionError("accepted http.token")
