# What a resident or hobbyist meets when installing the firmware (issue 16): a config error stops
# cleanly, every config key is checked.  MicroPython subset, with a stand-in `machine`.

import sys

from hemsfw import config, halt

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
MAIN = _HERE + "/../../firmware/micropython/main.py"
KEY = "c8" * 32


def _cfg(**kw):
    c = {"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
         "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s"}
    for k in kw:
        c[k] = kw[k]
    return c


def _refused(c):
    try:
        config.check(c)
    except config.ConfigError as e:
        return str(e)
    raise AssertionError("accepted " + repr(c))


class _Pin:
    OUT = 1
    made = []  # noqa: RUF012

    def __init__(self, n, mode=None, pull=None, value=None):
        self.n = n
        self.levels = [value]
        _Pin.made.append(self)

    def value(self, v=None):
        if v is not None:
            self.levels.append(v)
        return self.levels[-1]


class _Timer:
    PERIODIC = 1
    made = []  # noqa: RUF012

    def __init__(self, n):
        self.n = n
        self.cb = None
        _Timer.made.append(self)

    def init(self, period, mode, callback):
        self.period, self.mode, self.cb = period, mode, callback


class _Machine:
    Pin = _Pin
    Timer = _Timer


def test_an_unknown_top_level_key_is_refused_with_its_name():
    e = _refused(_cfg(safe_stat=True))
    assert "unknown key safe_stat" in e, e


def test_an_unknown_key_in_a_section_is_refused_with_its_path():
    e = _refused(_cfg(mqtt={"host": "h", "user": "h1", "password": "p", "prot": 1884}))
    assert "unknown key mqtt.prot" in e, e
    e = _refused(_cfg(http={"port": 8080, "tokn": "x"}))
    assert "unknown key http.tokn" in e, e


def test_every_documented_key_is_accepted():
    c = _cfg(board="esp32", relay={"pin": 4, "active_low": True, "button": 0,
                                   "button_active_low": True, "led": 2, "led_active_low": False},
             wifi={"ssid": "s", "password": "p", "hostname": "x", "country": "JP"},
             ntp={"host": "pool.ntp.org", "every_s": 3600}, safe_state=False,
             planner={"mode": "history", "alpha_pct": 25, "min_days": 1})
    assert config.check(c)["relay"]["pin"] == 4


def test_a_config_error_at_boot_returns_to_the_repl_and_blinks():
    # main.py on a board whose /config.json is unusable (absent here): no SystemExit (from
    # MicroPython 1.24 the ESP32 and rp2 ports soft-reset on it: a reboot loop), a blinking LED.
    saved = sys.modules.get("machine")
    sys.modules["machine"] = _Machine
    _Timer.made.clear()
    try:
        with open(MAIN) as f:
            src = f.read()
        try:
            exec(src, {"__name__": "__main__"})
        except SystemExit:
            raise AssertionError("main.py raised SystemExit on a config error") from None
    finally:
        if saved is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = saved


def test_halt_blinks_the_configured_led_pattern():
    d = "/tmp/hems-halt-cfg.json"
    with open(d, "w") as f:
        f.write('{"relay": {"pin": 4, "led": 2, "led_active_low": true}, "board": "esp32"}')
    _Timer.made.clear()
    t = halt.start(d, _Machine)
    assert t is _Timer.made[0] and t.mode == _Timer.PERIODIC and t.period == halt.TICK_MS
    pin = _Pin.made[-1]
    assert pin.n == 2 and pin.levels == [1]       # created dark (active low: high)
    for _ in range(len(halt.PATTERN)):
        t.cb(t)
    lit = [1 - v for v in pin.levels[1:]]
    assert lit == list(halt.PATTERN)


def test_a_missing_ca_at_boot_is_a_config_error_naming_it():
    import json

    path = "/tmp/hems-ca-cfg.json"
    c = _cfg(mqtt={"host": "h", "user": "h1", "password": "p",
                   "cafile_der": "/nonexistent/ca.der"})
    with open(path, "w") as f:
        f.write(json.dumps(c))
    try:
        config.load(path)
    except config.ConfigError as e:
        assert "mqtt.cafile_der: no file /nonexistent/ca.der" in str(e), str(e)
        return
    raise AssertionError("booted without its CA")


def test_an_input_only_relay_pin_is_refused_on_esp32():
    c = _cfg(board="esp32", relay={"pin": 35}, wifi={"ssid": "s", "password": "p"})
    assert "relay.pin: GPIO35 is input-only" in _refused(c)


class _Rp2:
    pressed = False

    @staticmethod
    def bootsel_button():
        return 1 if _Rp2.pressed else 0


class _InPin(_Pin):
    IN = 0
    PULL_UP = 2
    PULL_DOWN = 3
    level = 1

    def value(self, v=None):
        if v is None and self.levels == [None]:
            return _InPin.level
        return _Pin.value(self, v)


class _Machine2:
    Pin = _InPin
    Timer = _Timer


def _write(path, obj):
    import json

    with open(path, "w") as f:
        f.write(json.dumps(obj))
    return path


def test_safe_mode_when_the_flag_file_exists():
    flag = "/tmp/hems-test-safemode"
    with open(flag, "w") as f:
        f.write("")
    try:
        _Timer.made.clear()
        assert halt.safe_mode(flag, "/nonexistent.json", _Machine2, lambda ms: None)
    finally:
        import os

        os.remove(flag)


def test_safe_mode_when_the_button_is_pressed_after_boot():
    cfg = _write("/tmp/hems-safe-cfg.json", {"relay": {"pin": 26, "button": 4, "led": 2}})
    slept = []
    _InPin.level = 1                            # released (pull-up)

    def sleep(ms):
        slept.append(ms)
        if len(slept) == 10:
            _InPin.level = 0                    # pressed 200 ms after boot

    _Timer.made.clear()
    try:
        assert halt.safe_mode("/tmp/hems-no-flag", cfg, _Machine2, sleep)
    finally:
        _InPin.level = 1
    assert sum(slept) == 200
    t = _Timer.made[-1]                         # the safe-mode blink
    pin = _Pin.made[-1]
    for _ in range(4):
        t.cb(t)
    assert pin.levels[-4:] == [1, 0, 1, 0]


def test_no_safe_mode_without_flag_or_press_costs_the_window_only():
    cfg = _write("/tmp/hems-safe-cfg.json", {"relay": {"pin": 26, "button": 4}})
    slept = []
    _InPin.level = 1
    assert not halt.safe_mode("/tmp/hems-no-flag", cfg, _Machine2, slept.append)
    assert sum(slept) == halt.WINDOW_MS


def test_safe_mode_reads_the_pico_bootsel_button():
    saved = sys.modules.get("rp2")
    sys.modules["rp2"] = _Rp2
    _Rp2.pressed = True
    try:
        assert halt.safe_mode("/tmp/hems-no-flag", "/nonexistent.json", _Machine, lambda ms: 0)
    finally:
        _Rp2.pressed = False
        if saved is None:
            del sys.modules["rp2"]
        else:
            sys.modules["rp2"] = saved


def test_main_in_safe_mode_starts_neither_the_app_nor_the_watchdog():
    saved = {n: sys.modules.get(n) for n in ("rp2", "machine", "hemsfw.app")}
    sys.modules["rp2"] = _Rp2
    sys.modules["machine"] = _Machine
    sys.modules.pop("hemsfw.app", None)
    _Rp2.pressed = True                         # BOOTSEL pressed just after boot
    try:
        with open(MAIN) as f:
            exec(f.read(), {"__name__": "__main__"})
        assert "hemsfw.app" not in sys.modules  # app.build (and its watchdog) never ran
    finally:
        _Rp2.pressed = False
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_the_flashed_umqtt_comes_before_the_frozen_one():
    p = ["", ".frozen", "/lib"]                 # the stock ESP32 image's sys.path
    halt.filesystem_first(p)
    assert p == ["", "/lib", ".frozen"]


def test_main_puts_the_filesystem_first_on_sys_path():
    saved = list(sys.path)
    sys.path.insert(0, ".frozen")
    try:
        with open(MAIN) as f:
            exec(f.read(), {"__name__": "__main__"})
        assert sys.path[-1] == ".frozen" and sys.path.count(".frozen") == 1
    finally:
        sys.path[:] = saved


def test_the_update_settings_are_checked():
    assert "ota.url must be an http:// URL" in _refused(_cfg(ota={"url": "ftp://x/",
                                                                  "key": KEY}))
    assert "ota.key must be 64 hex digits" in _refused(_cfg(ota={"url": "http://x/",
                                                                 "key": "zz"}))
    c = config.check(_cfg(ota={"url": "http://192.0.2.5:8000/fw/", "key": KEY}))
    assert c["ota"]["every_s"] == 21600 and c["ota"]["timeout_s"] == 3
