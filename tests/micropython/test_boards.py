# Board modules with stand-in `machine` / `network` / `ntptime` (ESP32, Pico W) and `gpiod` /
# sysfs (Raspberry Pi), under MicroPython and CPython.  Real boards: docs/firmware.md.

import os
import sys

from fakes import MemStore, tmpdir

from hemsfw import config
from hemsfw.boards import load

KEY = "c8" * 32


class _Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2
    PULL_DOWN = 3
    IRQ_FALLING = 4
    IRQ_RISING = 8
    pins = {}  # noqa: RUF012

    def __init__(self, n, mode=None, pull=None, value=None):
        self.n = n
        self.mode = mode
        self.levels = [value]
        self.input = 1 if pull == 2 else 0
        self.stuck = None
        _Pin.pins[n] = self

    def value(self, v=None):
        if v is None:
            if self.mode == 0:
                return self.input
            return self.stuck if self.stuck is not None else self.levels[-1]
        self.levels.append(v)
        return None

    def irq(self, handler=None, trigger=None, hard=False):
        self.handler = handler
        self.trigger = trigger

    # A level set by a test is an edge: the pin's IRQ handler (the button's latch) runs on it,
    # as on a board.  (The pulse counter's tests call the handler themselves, without a level.)
    @property
    def input(self):
        return self._input

    @input.setter
    def input(self, v):
        old = getattr(self, "_input", v)
        self._input = v
        h = getattr(self, "handler", None)
        if h is not None and old != v:
            edge = self.IRQ_FALLING if v == 0 else self.IRQ_RISING
            if self.trigger is None or self.trigger & edge:
                h(self)


class _WDT:
    made = []  # noqa: RUF012

    def __init__(self, timeout):
        self.timeout = timeout
        self.feeds = 0
        _WDT.made.append(self)

    def feed(self):
        self.feeds += 1


class _RTC:
    set_to = []  # noqa: RUF012

    def datetime(self, t=None):
        if t is not None:
            _RTC.set_to.append(t)


class _Machine:
    Pin = _Pin
    WDT = _WDT
    RTC = _RTC


class _WLAN:
    def __init__(self, iface):
        self.up = False
        self.connects = 0
        self.cfg = {}

    def active(self, on):
        self.on = on

    def isconnected(self):
        return self.up

    def connect(self, ssid, pw):
        self.connects += 1

    def disconnect(self):
        pass

    def ifconfig(self):
        return ("192.0.2.7", "", "", "")

    def config(self, **kw):
        self.cfg.update(kw)


class _Network:
    STA_IF = 0
    WLAN = _WLAN
    names = []  # noqa: RUF012

    @staticmethod
    def hostname(h):
        _Network.names.append(h)


class _Ntp:
    """Stands in for hemsfw.sntp (board.sntp): one DNS and one SNTP query, each bounded."""
    ok = False
    calls = 0
    resolved = []  # noqa: RUF012

    @staticmethod
    def resolve(host, server, timeout_s):
        _Ntp.resolved.append((host, server, timeout_s))
        return "192.0.2.123"

    @staticmethod
    def query(addr, timeout_s):
        _Ntp.calls += 1
        assert addr == "192.0.2.123" and timeout_s <= 1
        if not _Ntp.ok:
            raise OSError("timeout")
        return 1795824000   # 2026-11-28T00:00:00Z (a Saturday)


def _install():
    saved = {}
    for name, mod in (("machine", _Machine), ("network", _Network)):
        saved[name] = sys.modules.get(name)
        sys.modules[name] = mod
    return saved


def _restore(saved):
    for name, mod in saved.items():
        if mod is None:
            del sys.modules[name]
        else:
            sys.modules[name] = mod


def _mcu_cfg(board, **relay):
    r = {"pin": 5, "active_low": False}
    for k in relay:
        r[k] = relay[k]
    return config.check({"home_id": "h1", "board": board,
                         "mqtt": {"host": "h", "user": "h1", "password": "p"},
                         "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                         "relay": r, "wifi": {"ssid": "s", "password": "p", "hostname": "hems-h1"}})


def test_pulse_counter_counts_debounced_edges_from_its_irq():
    saved = _install()
    try:
        from hemsfw.boards import mcu

        cfg = _mcu_cfg("esp32")
        cfg["meter"] = {"kind": "pulse", "pin": 34, "pull": "none", "debounce_ms": 30}
        config.check(cfg)
        real = mcu.ticks_ms
        t = [1000]
        mcu.ticks_ms = lambda: t[0]
        try:
            b = load("esp32")(cfg, MemStore(), _logs()[1], urandom=lambda n: b"\x00" * n)
            pin = _Pin.pins[34]
            assert pin.mode == _Pin.IN and pin.trigger == _Pin.IRQ_FALLING
            for dt in (0, 10, 100, 129, 160):   # 10 and 129: bounces within 30 ms
                t[0] = 1000 + dt
                pin.handler(pin)
            assert b.pulses.take() == 3 and b.pulses.take() == 0
            b.pulses.n = mcu.MASK30          # the counter wraps inside a small int
            b.pulses.seen = mcu.MASK30 - 1
            t[0] = 5000
            pin.handler(pin)
            assert b.pulses.take() == 2
        finally:
            mcu.ticks_ms = real
    finally:
        _restore(saved)


def test_meter_config_errors():
    for meter, board, why in (({"kind": "x"}, "esp32", "meter.kind"),
                              ({"kind": "pulse"}, "esp32", "meter.pin"),
                              ({"kind": "pulse", "pin": 4}, "unix", "board with GPIO"),
                              ({"kind": "sim"}, "esp32", "needs board unix"),
                              ({"kind": "sim", "pulses_per_kwh": 0}, "unix", "pulses_per_kwh"),
                              ({"kind": "sim", "loads": [["ev", 1, 2]]}, "unix", "meter.loads")):
        cfg = _mcu_cfg("esp32")
        cfg["board"] = board
        cfg["meter"] = meter
        try:
            config.check(cfg)
        except config.ConfigError as e:
            assert why in str(e), (why, str(e))
            continue
        raise AssertionError("accepted " + repr(meter))


def _logs():
    out = []
    return out, lambda *a: out.append(" ".join([str(x) for x in a]))


def test_pin_relay_levels_and_readback():
    saved = _install()
    try:
        from hemsfw.boards.mcu import PinRelay

        hi = PinRelay(5, active_low=False, safe_state=False)
        hi.set(True, 0)
        hi.set(False, 1)
        # created at the safe level, driven to it again by the boot set(), then switched
        assert hi.pin.levels == [0, 0, 1, 0]
        assert hi.ok()
        hi.pin.stuck = 1            # the pad does not follow: a fault the watchdog must see
        assert not hi.ok()
        lo = PinRelay(6, active_low=True, safe_state=True)
        lo.set(False, 0)
        assert lo.pin.levels == [0, 0, 1]      # on = low (active-low), then off = high
    finally:
        _restore(saved)


def test_esp32_board_boot_wifi_backoff_and_ntp():
    saved = _install()
    try:
        logs, log = _logs()
        cfg = _mcu_cfg("esp32", active_low=True, button=0, led=2)
        b = load("esp32")(cfg, MemStore(), log, urandom=lambda n: b"\xff" * n)
        b.sntp = _Ntp
        # the relay pin exists at its safe level (off, active-low = high) before anything else
        assert _Pin.pins[5].levels[0] == 1 and b.relay.on is False
        assert _Network.names[-1] == "hems-h1"
        assert b.clock.now() is None or b.clock.now() > 0
        b.service(None)                        # first association attempt, at once
        assert b.wlan.connects == 1 and not b.net_up()
        b.service(None)                        # not due again yet (5 s backoff)
        assert b.wlan.connects == 1
        b.wifi_at -= 10000
        b.service(None)
        assert b.wlan.connects == 2 and b.wifi_backoff == 20000   # doubling
        b.wlan.up = True
        _Ntp.ok = False
        b.service(None)
        assert b.net_up() and b.wifi_backoff == 5000 and "wifi up 192.0.2.7" in logs
        assert _Ntp.calls == 1 and not b.ntp_ok and "ntp failed: timeout" in logs
        b.service(None)
        assert _Ntp.calls == 1                 # NTP retried after its own backoff only
        b.ntp_at -= 100000
        _Ntp.ok = True
        b.service(None)
        assert _Ntp.calls == 2 and b.ntp_ok and "ntp: time set" in logs
        # resolved with the DHCP resolver (ifconfig()[3]) within 1 s, again after the failure
        assert _Ntp.resolved[-2:] == [("pool.ntp.org", "", 1)] * 2
        assert _RTC.set_to[-1] == (2026, 11, 28, 6, 0, 0, 0, 0)   # weekday 1..7 (Sat = 6)
        wdt = b.watchdog(200000)
        assert wdt.timeout == 120000           # clamped to the board's maximum
    finally:
        _Ntp.ok = False
        _restore(saved)


def test_picow_board_limits():
    saved = _install()
    try:
        cfg = _mcu_cfg("picow")
        assert cfg["watchdog_ms"] == 8000
        b = load("picow")(cfg, MemStore(), _logs()[1])
        assert b.led is not None and _Pin.pins["LED"].levels[0] == 0   # on-board LED default
        assert b.wlan.cfg.get("pm") == 0xA11140
        assert b.watchdog(30000).timeout == 8388
        try:
            c = _mcu_cfg("picow")
            c["mqtt"]["timeout_s"] = 7
            config.check(c)
            raise AssertionError("accepted timeout_s 7 on picow")
        except config.ConfigError as e:
            assert "picow" in str(e)
    finally:
        _restore(saved)


def test_button_short_long_and_led():
    saved = _install()
    try:
        from hemsfw.boards import mcu

        b = load("esp32")(_mcu_cfg("esp32", button=0, led=2), MemStore(), _logs()[1])
        pin = _Pin.pins[0]
        assert b.button() is None
        t = [0]
        real = mcu.ticks_ms
        mcu.ticks_ms = lambda: t[0]
        try:
            t[0] = 100
            pin.input = 0                      # pressed (pull-up, to ground)
            assert b.button() is None
            t[0] = 110
            pin.input = 1                      # bounce within 30 ms: ignored
            t[0] = 115
            pin.input = 0
            assert b.button() is None
            t[0] = 400
            pin.input = 1                      # released (the pin's IRQ latches it)
            assert b.button() == "short"
            t[0] = 1000
            pin.input = 0
            b.button()
            t[0] = 3500
            pin.input = 1
            assert b.button() == "long"
            led = _Pin.pins[2]
            b.show(True, True, False)
            assert led.levels[-1] == 1
            b.show(True, False, False)         # offline: blinking (t=3500: phase 1 -> dark)
            assert led.levels[-1] == 1 if (3500 // 500) % 2 == 0 else led.levels[-1] == 0
        finally:
            mcu.ticks_ms = real
    finally:
        _restore(saved)


class _Value:
    ACTIVE = 1
    INACTIVE = 0


class _Direction:
    OUTPUT = "out"
    INPUT = "in"


class _Edge:
    FALLING = "falling"
    RISING = "rising"


class _Bias:
    PULL_UP = "up"
    PULL_DOWN = "down"
    DISABLED = "off"


class _Ev:
    def __init__(self, ns):
        self.timestamp_ns = ns


class _Req:
    def __init__(self, config):
        self.values = {}
        self.settings = config
        self.events = []
        for line, s in config.items():
            self.values[line] = s.kw.get("output_value", _Value.INACTIVE)

    def wait_edge_events(self, timeout):
        return bool(self.events)

    def read_edge_events(self):
        out = self.events[:2]      # (the kernel hands them over in batches)
        self.events = self.events[2:]
        return out

    def set_value(self, line, v):
        self.values[line] = v

    def get_value(self, line):
        return self.values[line]


class _Settings:
    def __init__(self, **kw):
        self.kw = kw


class _Gpiod:
    reqs = []  # noqa: RUF012
    LineSettings = _Settings

    @staticmethod
    def request_lines(chip, consumer, config):
        r = _Req(config)
        _Gpiod.reqs.append((chip, consumer, r))
        return r


class _GpiodLine:
    Value = _Value
    Direction = _Direction
    Edge = _Edge
    Bias = _Bias


def test_rpi_pulse_meter_from_gpiod_edge_events():
    if sys.implementation.name == "micropython":
        return   # the Pi board is CPython only
    saved = sys.modules.get("gpiod.line")
    sys.modules["gpiod.line"] = _GpiodLine
    try:
        cfg = config.check({"home_id": "h1", "board": "rpi",
                            "mqtt": {"host": "h", "user": "h1", "password": "p"},
                            "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                            "relay": {"pin": 17}, "meter": {"pin": 23, "debounce_ms": 30}})
        b = load("rpi")(cfg, MemStore(), _logs()[1], gpiod=_Gpiod)
        chip, consumer, req = _Gpiod.reqs[-1]
        assert consumer == "hems-meter" and chip == "/dev/gpiochip0"
        st = req.settings[23].kw
        assert st["edge_detection"] == "falling" and st["bias"] == "up"
        assert st["debounce_period"].total_seconds() == 0.03
        ms = 1000000
        req.events = [_Ev(n * ms) for n in (0, 5, 100, 200, 210, 300)]   # 5, 210: bounces
        assert b.pulses.take() == 4 and b.pulses.take() == 0
    finally:
        if saved is None:
            del sys.modules["gpiod.line"]
        else:
            sys.modules["gpiod.line"] = saved


def test_rpi_board_gpiod_and_sysfs():
    if sys.implementation.name == "micropython":
        return   # the Pi board is CPython only
    saved = sys.modules.get("gpiod.line")
    sys.modules["gpiod.line"] = _GpiodLine
    try:
        cfg = config.check({"home_id": "h1", "board": "rpi",
                            "mqtt": {"host": "h", "user": "h1", "password": "p"},
                            "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                            "safe_state": True, "relay": {"pin": 17, "active_low": True}})
        b = load("rpi")(cfg, MemStore(), _logs()[1], gpiod=_Gpiod)
        chip, consumer, req = _Gpiod.reqs[-1]
        assert chip == "/dev/gpiochip0" and consumer == "hems"
        assert req.values[17] == _Value.INACTIVE          # safe on, active-low: low at request
        b.relay.set(False, 0)
        assert req.values[17] == _Value.ACTIVE and b.relay.ok()
    finally:
        if saved is None:
            del sys.modules["gpiod.line"]
        else:
            sys.modules["gpiod.line"] = saved
    import tempfile

    root = tempfile.mkdtemp()
    os.mkdir(root + "/gpio529")
    cfg = config.check({"home_id": "h1", "board": "rpi",
                        "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                        "relay": {"pin": 529, "driver": "sysfs", "sysfs_root": root}})
    b = load("rpi")(cfg, MemStore(), _logs()[1])
    with open(root + "/gpio529/direction") as f:
        assert f.read() == "low"                          # output at the safe level at once
    b.relay.set(True, 3)
    with open(root + "/gpio529/value") as f:
        assert f.read() == "1"
    assert b.relay.ok()


def test_unix_board_wifi_file():
    d = tmpdir()
    flag = d + "/wifi-up"
    cfg = config.check({"home_id": "h1", "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": d,
                        "clock": "lab", "unix": {"wifi_file": flag}})
    logs, log = _logs()
    b = load("unix")(cfg, MemStore(), log)
    assert b.net_up() is False and b.watchdog(1000) is None
    with open(flag, "w") as f:
        f.write("1")
    assert b.net_up() is True and logs == ["wifi down", "wifi up"]
    os.remove(flag)


def test_rpi_systemd_watchdog():
    if sys.implementation.name == "micropython":
        return   # the Pi board is CPython only
    import socket

    d = tmpdir()
    path = d + "/notify"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    cfg = config.check({"home_id": "h1", "board": "rpi",
                        "mqtt": {"host": "h", "user": "h1", "password": "p"},
                        "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": d})
    b = load("rpi")(cfg, MemStore(), _logs()[1])
    saved = dict(os.environ)
    try:
        os.environ.pop("NOTIFY_SOCKET", None)
        assert b.watchdog(30000) is None
        os.environ["NOTIFY_SOCKET"] = path
        os.environ.pop("WATCHDOG_USEC", None)
        assert b.watchdog(30000) is None and srv.recv(64) == b"READY=1"
        os.environ["WATCHDOG_USEC"] = "30000000"
        dog = b.watchdog(30000)
        assert srv.recv(64) == b"READY=1"
        dog.feed()
        dog.feed()                       # rate-limited to one datagram a second
        assert srv.recv(64) == b"WATCHDOG=1"
        srv.settimeout(0.2)
        try:
            srv.recv(64)
            raise AssertionError("fed twice within a second")
        except socket.timeout:
            pass
    finally:
        os.environ.clear()
        os.environ.update(saved)
        srv.close()


class _IrqPin(_Pin):
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def irq(self, handler=None, trigger=0, hard=False):
        self.handler = handler
        self.trigger = trigger

    def edge(self, level):
        self.input = level
        self.handler(self)


def _irq_button(events):
    """A board whose button pin has interrupts; `events` [(ms, level)] happen while the loop
    is blocked (no poll); returns what the polls after them report."""
    saved = _install()
    _Machine.Pin = _IrqPin
    try:
        from hemsfw.boards import mcu

        b = load("esp32")(_mcu_cfg("esp32", button=4), MemStore(), _logs()[1])
        pin = _Pin.pins[4]
        assert pin.trigger == _IrqPin.IRQ_FALLING | _IrqPin.IRQ_RISING
        t = [0]
        real = mcu.ticks_ms
        mcu.ticks_ms = lambda: t[0]
        try:
            for ms, level in events:
                t[0] = ms
                pin.edge(level)
            t[0] += 5000
            return [b.button(), b.button()]
        finally:
            mcu.ticks_ms = real
    finally:
        _Machine.Pin = _Pin
        _restore(saved)


def test_a_press_while_the_loop_is_blocked_is_not_lost():
    assert _irq_button([(100, 0), (400, 1)]) == ["short", None]


def test_a_long_press_while_the_loop_is_blocked_is_long():
    assert _irq_button([(100, 0), (2600, 1)]) == ["long", None]


def test_contact_bounce_is_one_press():
    assert _irq_button([(100, 0), (103, 1), (105, 0), (400, 1), (404, 0), (406, 1)]) == \
        ["short", None]


def test_wifi_failure_reasons_are_logged_by_name():
    saved = _install()
    _Network.STAT_WRONG_PASSWORD = 202        # ESP32's values (rp2: -3, -2)
    _Network.STAT_NO_AP_FOUND = 201
    _WLAN.status = lambda self: self.st
    try:
        logs, log = _logs()
        b = load("esp32")(_mcu_cfg("esp32"), MemStore(), log, urandom=lambda n: b"\x00" * n)
        b.wlan.st = 1001
        b.service(None)                        # the first attempt: nothing failed yet
        b.wlan.st = 202
        b.wifi_at -= 100000
        b.service(None)
        assert "wifi: not connected to 's': wrong password (202) - retry in 5 s" in logs, logs
        b.wlan.st = 201
        b.wifi_at -= 100000
        b.service(None)
        assert "wifi: not connected to 's': no ap found (201) - retry in 10 s" in logs, logs
        b.wlan.st = 15                         # a driver reason without a name
        b.wifi_at -= 100000
        b.service(None)
        assert "wifi: not connected to 's': status 15 - retry in 20 s" in logs, logs
    finally:
        del _Network.STAT_WRONG_PASSWORD, _Network.STAT_NO_AP_FOUND, _WLAN.status
        _restore(saved)


def test_board_diagnostics_signal_and_reset_cause():
    saved = _install()
    _Machine.PWRON_RESET, _Machine.WDT_RESET = 1, 3
    _Machine.reset_cause = staticmethod(lambda: 3)
    _WLAN.status = lambda self, param=None: -67 if param == "rssi" else 1010
    try:
        b = load("esp32")(_mcu_cfg("esp32"), MemStore(), _logs()[1])
        assert b.diag() == {"rssi": None, "reset": "wdt"}      # no signal without Wi-Fi
        b.wlan.up = True
        b.service(None)
        assert b.diag() == {"rssi": -67, "reset": "wdt"}
    finally:
        del _Machine.PWRON_RESET, _Machine.WDT_RESET, _Machine.reset_cause, _WLAN.status
        _restore(saved)
