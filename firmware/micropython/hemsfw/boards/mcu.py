# What ESP32 and Pico W share: machine.Pin relay / button / LED, network.WLAN supervision with
# backoff, NTP, machine.WDT.  Imported only on those boards (and by the tests with stand-in
# `machine` / `network` / `ntptime` modules).  MicroPython only.
#
# Boot order (DESIGN.md decision 9): the relay pin is created *at its safe level* first, before
# Wi-Fi, NTP or MQTT, so a boot loop or a dead network never leaves the special circuit in an
# arbitrary state.  Until NTP has set the RTC to a plausible date the clock is "unknown" and the
# runner keeps the relay in the safe state.

import machine
import network

from hemsfw import clock, relay
from hemsfw.clock import ticks_add, ticks_diff, ticks_ms

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Clock, Json, Log, MqttClient, Urandom
    from hemsfw.store import Store

WIFI_MIN_MS = 5000          # first Wi-Fi retry; doubles up to WIFI_MAX_MS, jittered
WIFI_MAX_MS = 300000
NTP_MIN_MS = 2000           # NTP retry while the time is unknown; doubles up to NTP_MAX_MS
NTP_MAX_MS = 300000
NTP_EVERY_MS = 3600000      # re-sync hourly once known (ESP32/RP2040 RTCs drift s per day)
NTP_TIMEOUT_S = 1           # the DNS query and the SNTP query: each at most this
DEBOUNCE_MS = 30
LONG_PRESS_MS = 2000


def _jitter(ms: int, urandom: "Urandom") -> int:
    return ms // 2 + (ms // 2) * urandom(1)[0] // 255


class PinRelay(relay.Relay):
    """A GPIO driving the relay, active-high or active-low.  The pin is created already at the
    safe level (Pin(..., value=...)), so the output never glitches to the wrong state between
    pin setup and the first set(); ok() reads the pad back (a shorted or stuck output)."""

    def __init__(self, pin: "Any", active_low: bool = False, safe_state: bool = False) -> None:
        self.active_low = bool(active_low)
        self.pin = machine.Pin(pin, machine.Pin.OUT, value=self._level(bool(safe_state)))
        relay.Relay.__init__(self, safe_state)

    def _level(self, on: bool) -> int:
        return 0 if on == self.active_low else 1

    def _drive(self, on: bool) -> None:
        self.pin.value(self._level(on))

    def ok(self) -> bool:
        return self.on is None or self.pin.value() == self._level(self.on)


class Button:
    """A push button to ground (pull-up) or to 3V3 (active_low false, pull-down): debounced,
    reported as "short" or "long" (held >= 2 s) once released.

    Latched by a pin interrupt where the port has one, so a press made while the loop is
    blocked (an MQTT connect, up to timeout_s) is not lost: the handler only stores the ticks
    of the press and of the release (no allocation: it may run as a hard IRQ), poll() reads
    them later.  Without interrupts (a stand-in pin), the level is polled every turn."""

    def __init__(self, pin: "Any", active_low: bool = True) -> None:
        pull = machine.Pin.PULL_UP if active_low else machine.Pin.PULL_DOWN
        self.pin = machine.Pin(pin, machine.Pin.IN, pull)
        self.active_low = active_low
        self.down_at: int | None = None
        self.last = False
        self.changed = 0
        self.up_at: int | None = None      # latched release (IRQ)
        self.released: int | None = None   # the last release edge (IRQ)
        self.latched = self._irq()

    def _irq(self) -> bool:
        irq = getattr(self.pin, "irq", None)
        if irq is None:
            return False
        trig = machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING
        try:
            irq(handler=self._edge, trigger=trig, hard=True)
        except TypeError:              # a port without hard IRQs on pins
            irq(handler=self._edge, trigger=trig)
        return True

    def _edge(self, _pin: object) -> None:
        # contacts bounce: a release within DEBOUNCE_MS of the press, and a press within
        # DEBOUNCE_MS of a release, are the same press still going on
        t = ticks_ms()
        if self.pin.value() == (0 if self.active_low else 1):
            r = self.released
            if self.down_at is None and (r is None or ticks_diff(t, r) >= DEBOUNCE_MS):
                self.down_at = t
        else:
            d = self.down_at
            if d is not None and self.up_at is None and ticks_diff(t, d) >= DEBOUNCE_MS:
                self.up_at = t
            self.released = t

    def poll(self) -> str | None:
        if self.latched:
            d, u = self.down_at, self.up_at
            if d is None or u is None:
                return None
            self.down_at = self.up_at = None
            return "long" if ticks_diff(u, d) >= LONG_PRESS_MS else "short"
        now = ticks_ms()
        pressed = self.pin.value() == (0 if self.active_low else 1)
        if pressed != self.last:
            if ticks_diff(now, self.changed) < DEBOUNCE_MS:
                return None
            self.changed = now
            self.last = pressed
            if pressed:
                self.down_at = now
            elif self.down_at is not None:
                held = ticks_diff(now, self.down_at)
                self.down_at = None
                return "long" if held >= LONG_PRESS_MS else "short"
        return None


def _reset_cause() -> str | None:
    """machine.reset_cause() by name ("pwron", "hard", "wdt", "deepsleep", "soft")."""
    try:
        c = machine.reset_cause()
    except Exception:
        return None
    for name in dir(machine):
        if name.endswith("_RESET") and getattr(machine, name) == c:
            return name[:-6].lower()
    return str(c)


MASK30 = 0x3FFFFFFF   # the IRQ's counter wraps inside a small int (32-bit ports)


class PulseCounter:
    """The special circuit's S0 pulse output on a GPIO (docs/firmware.md, "Wiring a pulse
    meter"): every edge counted by a (soft) IRQ handler, an edge closer than debounce_ms to the
    last counted one ignored (contact bounce; S0 pulses are >= 30 ms, IEC 62053-31).  Only the
    handler writes the counter and take() only reads it, so no pulse is lost between the two."""

    def __init__(self, pin: "Any", pull: str = "up", edge: str = "falling",
                 debounce_ms: int = 30) -> None:
        pl = machine.Pin.PULL_UP if pull == "up" else (
            machine.Pin.PULL_DOWN if pull == "down" else None)
        self.pin = machine.Pin(pin, machine.Pin.IN, pl)
        self.debounce = debounce_ms
        self.n = 0
        self.seen = 0
        self.last = ticks_add(ticks_ms(), -debounce_ms)
        trig = machine.Pin.IRQ_FALLING if edge == "falling" else machine.Pin.IRQ_RISING
        self.pin.irq(self._irq, trig)

    def _irq(self, _pin: "Any") -> None:
        now = ticks_ms()
        if ticks_diff(now, self.last) >= self.debounce:
            self.last = now
            self.n = (self.n + 1) & MASK30

    def take(self) -> int:
        n = self.n
        d = (n - self.seen) & MASK30
        self.seen = n
        return d


class McuBoard:
    name = "mcu"
    wdt_max_ms = 30000
    led_default: "Any" = None

    def __init__(self, cfg: "Json", store: "Store", log: "Log",
                 urandom: "Urandom | None" = None) -> None:
        r = cfg["relay"]
        self.relay = PinRelay(r["pin"], r["active_low"], cfg.get("safe_state", False))  # first
        self.cfg = cfg
        self.log = log
        if urandom is None:
            import os

            urandom = os.urandom
        self.urandom = urandom
        b = r.get("button")
        self.btn = Button(b, r.get("button_active_low", True)) if b is not None else None
        led = r.get("led", self.led_default)
        self.led: machine.Pin | None = None
        self.led_low = r.get("led_active_low", False)
        if led is not None:
            self.led = machine.Pin(led, machine.Pin.OUT, value=1 if self.led_low else 0)
        self.clock: Clock = clock.LabClock() if cfg.get("clock") == "lab" else clock.SystemClock()
        self.reset_cause = _reset_cause()
        mt = cfg.get("meter")
        self.pulses: PulseCounter | None = None
        if mt and mt.get("kind", "pulse") == "pulse":
            self.pulses = PulseCounter(mt["pin"], mt.get("pull", "up"),
                                       mt.get("edge", "falling"), mt.get("debounce_ms", 30))
        w = cfg["wifi"]
        self.ssid, self.wpass = w["ssid"], w["password"]
        self._wifi_pre(w)
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        self._wifi_post(w)
        self.wifi_up = False
        self.wifi_tries = 0
        self.wifi_backoff = WIFI_MIN_MS
        self.wifi_at = ticks_ms()          # first attempt now (connect() does not block)
        ntp = cfg.get("ntp") or {}
        self.ntp_host = ntp.get("host") or "pool.ntp.org"
        self.ntp_addr: str | None = None   # resolved once, again after a failure
        from hemsfw import sntp

        self.sntp = sntp
        self.ntp_every = 1000 * ntp.get("every_s", NTP_EVERY_MS // 1000)
        self.ntp_ok = False
        self.ntp_backoff = NTP_MIN_MS
        self.ntp_at = ticks_ms()

    def _wifi_pre(self, w: "Json") -> None:
        h = w.get("hostname")
        if h:
            try:
                network.hostname(h)
            except Exception as e:   # older ports: per-interface config only
                self.log("wifi: hostname not set:", e)

    def _wifi_post(self, w: "Json") -> None:
        pass

    def make_client(self, mcfg: "Json", client_id: str) -> "MqttClient":
        from hemsfw import net_umqtt

        return net_umqtt.make_client(mcfg, client_id)

    # ------------------------------------------------------------ Wi-Fi and time

    def wifi_reason(self) -> str:
        """WLAN.status() by name ("wrong password", "no AP found", ...; ESP32 may also give a
        bare reason number from its Wi-Fi driver)."""
        try:
            st = self.wlan.status()
        except Exception as e:
            return "status unknown (" + str(e) + ")"
        for name in dir(network):
            if name.startswith("STAT_") and getattr(network, name) == st:
                return name[5:].lower().replace("_", " ") + " (" + str(st) + ")"
        return "status " + str(st)

    def net_up(self) -> bool:
        return self.wifi_up

    def diag(self) -> "Json":
        """Home Assistant diagnostics (hemsfw/ha.py): Wi-Fi signal, the last reset's cause."""
        rssi = None
        if self.wifi_up:
            try:
                rssi = self.wlan.status("rssi")
            except Exception:
                pass
        return {"rssi": rssi, "reset": self.reset_cause}

    def _wifi(self) -> None:
        up = self.wlan.isconnected()
        if up != self.wifi_up:
            self.wifi_up = up
            if up:
                self.wifi_backoff = WIFI_MIN_MS
                self.wifi_tries = 0
                self.log("wifi up", self.wlan.ifconfig()[0])
            else:
                self.log("wifi down:", self.wifi_reason())
                self.wifi_at = ticks_ms()
        if up or ticks_diff(ticks_ms(), self.wifi_at) < 0:
            return
        # Not connected and due: say why the last attempt failed, then (re)start an association.
        # WLAN.connect() returns at once; the next check comes after a jittered, doubling
        # backoff so a dead access point costs nothing per turn and a fleet does not retry in
        # step.
        wait = _jitter(self.wifi_backoff, self.urandom)
        if self.wifi_tries:
            self.log("wifi: not connected to", repr(self.ssid) + ":", self.wifi_reason(),
                     "- retry in", wait // 1000, "s")
        self.wifi_tries += 1
        try:
            self.wlan.disconnect()
            self.wlan.connect(self.ssid, self.wpass)
        except Exception as e:
            self.log("wifi connect:", e)
        self.wifi_at = ticks_add(ticks_ms(), wait)
        self.wifi_backoff = min(2 * self.wifi_backoff, WIFI_MAX_MS)

    def _ntp(self) -> None:
        if not self.wifi_up or ticks_diff(ticks_ms(), self.ntp_at) < 0:
            return
        # hemsfw/sntp.py, not ntptime: its getaddrinfo has no timeout.  One DNS query (first
        # time, or after a failure) and one SNTP query, each bounded by NTP_TIMEOUT_S.
        try:
            if self.ntp_addr is None:
                self.ntp_addr = self.sntp.resolve(self.ntp_host, self.wlan.ifconfig()[3],
                                                  NTP_TIMEOUT_S)
            self._set_rtc(self.sntp.query(self.ntp_addr, NTP_TIMEOUT_S))
            ok = True
        except Exception as e:   # no answer: the clock stays unknown (relay safe) or drifts on
            self.log("ntp failed:", e)
            self.ntp_addr = None
            ok = False
        if ok:
            if not self.ntp_ok:
                self.log("ntp: time set")
            self.ntp_ok = True
            self.ntp_backoff = NTP_MIN_MS
            self.ntp_at = ticks_add(ticks_ms(), self.ntp_every)
        else:
            self.ntp_at = ticks_add(ticks_ms(), _jitter(self.ntp_backoff, self.urandom))
            self.ntp_backoff = min(2 * self.ntp_backoff, NTP_MAX_MS)

    def _set_rtc(self, unix_s: int) -> None:
        """The RTC in UTC (as ntptime.settime sets it), from Unix seconds."""
        import time

        tm = time.gmtime(unix_s - clock.EPOCH_OFFSET)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

    def service(self, runner: object) -> None:
        self._wifi()
        if self.cfg.get("clock") != "lab":
            self._ntp()

    # ------------------------------------------------------------ resident interface

    def button(self) -> str | None:
        return self.btn.poll() if self.btn is not None else None

    def show(self, on: bool | None, online: bool, override: bool) -> None:
        """LED: steady = the relay's state; slow blink = no broker link; fast = override."""
        if self.led is None:
            return
        if override:
            lit = (ticks_ms() // 125) % 2 == 0
        elif not online:
            lit = (ticks_ms() // 500) % 2 == 0
        else:
            lit = bool(on)
        self.led.value(1 if lit != self.led_low else 0)

    def watchdog(self, ms: int) -> machine.WDT:
        return machine.WDT(timeout=min(ms, self.wdt_max_ms))
