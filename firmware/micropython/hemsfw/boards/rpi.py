# Board "rpi": a Raspberry Pi (or any Linux SBC) running the firmware on CPython with paho-mqtt.
#
# Relay and optional button / LED on GPIO lines, through libgpiod's Python binding (`gpiod`, v2
# API `request_lines`, or the v1 `Chip.get_line` API of older distributions) or, with
# relay.driver "sysfs", the legacy /sys/class/gpio interface (line numbers are then the global
# GPIO numbers: on kernels >= 6.6 the Pi's header GPIO n is 512 + n, or 571 + n on a Pi 5).
# Without a "relay" section the relay is the lab's JSON-lines log (hemsfw.relay.LabRelay).
#
#   "relay": {"driver": "gpiod", "chip": "/dev/gpiochip0", "line": 17, "active_low": false,
#             "button": 27, "button_active_low": true, "led": 22, "led_active_low": false}
#
# Watchdog: systemd's (sd_notify WATCHDOG=1 on $NOTIFY_SOCKET) when the unit sets WatchdogSec=
# (docs/firmware.md has the unit file); the Pi's hardware watchdog is then systemd's business.
# Meter: an S0 pulse output on a GPIO line ("meter": {"pin": 23, ...}), counted from gpiod edge
# events (GpiodPulses).  Modbus meters are not supported (docs/firmware.md says why).
# Wi-Fi and time belong to the OS (NetworkManager, systemd-timesyncd): the clock is "unknown"
# until the system clock is plausible.  CPython only.

import os
import socket
import time

from hemsfw import relay
from hemsfw.boards.unix import HostBoard

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json, Log
    from hemsfw.store import Store

DEBOUNCE_S = 0.03
LONG_PRESS_S = 2.0


class _GpiodLines:
    """Output/input lines through libgpiod (v2 API, else v1)."""

    def __init__(self, chip: str, gpiod: "Any" = None) -> None:
        if gpiod is None:
            import gpiod  # type: ignore[no-redef]  # (the parameter: tests pass a stand-in)
        self.g = gpiod
        self.chip = chip
        self.v2 = hasattr(gpiod, "request_lines")
        self.reqs: dict[int, Any] = {}

    def output(self, line: int, level: int) -> None:
        g = self.g
        if self.v2:
            from gpiod.line import Direction, Value

            val = Value.ACTIVE if level else Value.INACTIVE
            req = g.request_lines(self.chip, consumer="hems", config={
                line: g.LineSettings(direction=Direction.OUTPUT, output_value=val)})
        else:
            chip = g.Chip(self.chip)
            req = chip.get_line(line)
            req.request(consumer="hems", type=g.LINE_REQ_DIR_OUT, default_vals=[level])
        self.reqs[line] = req

    def input(self, line: int) -> None:
        g = self.g
        if self.v2:
            from gpiod.line import Direction

            req = g.request_lines(self.chip, consumer="hems", config={
                line: g.LineSettings(direction=Direction.INPUT)})
        else:
            req = g.Chip(self.chip).get_line(line)
            req.request(consumer="hems", type=g.LINE_REQ_DIR_IN)
        self.reqs[line] = req

    def set(self, line: int, level: int) -> None:
        req = self.reqs[line]
        if self.v2:
            from gpiod.line import Value

            req.set_value(line, Value.ACTIVE if level else Value.INACTIVE)
        else:
            req.set_value(level)

    def get(self, line: int) -> int:
        req = self.reqs[line]
        if self.v2:
            from gpiod.line import Value

            return 1 if req.get_value(line) == Value.ACTIVE else 0
        return int(req.get_value())


class _SysfsLines:
    """Legacy /sys/class/gpio (root may be a test directory)."""

    def __init__(self, root: str = "/sys/class/gpio") -> None:
        self.root = root

    def _export(self, line: int) -> str:
        d = self.root + "/gpio" + str(line)
        if not os.path.exists(d):
            with open(self.root + "/export", "w") as f:
                f.write(str(line))
            for _ in range(50):   # udev makes the files writable shortly after export
                if os.path.exists(d + "/direction"):
                    break
                time.sleep(0.01)
        return d

    def output(self, line: int, level: int) -> None:
        # "high"/"low" set the direction and the level in one write: no glitch.
        with open(self._export(line) + "/direction", "w") as f:
            f.write("high" if level else "low")

    def input(self, line: int) -> None:
        with open(self._export(line) + "/direction", "w") as f:
            f.write("in")

    def set(self, line: int, level: int) -> None:
        with open(self.root + "/gpio" + str(line) + "/value", "w") as f:
            f.write("1" if level else "0")

    def get(self, line: int) -> int:
        with open(self.root + "/gpio" + str(line) + "/value") as f:
            return 1 if f.read(1) == "1" else 0


class GpiodPulses:
    """The special circuit's S0 pulse output on a GPIO line (docs/firmware.md, "Wiring a pulse
    meter"): the kernel queues every edge with its timestamp (gpiod edge events), so no pulse is
    lost between two loop turns; take() drains the queue without blocking and ignores an edge
    closer than debounce_ms to the last counted one (the v2 API also asks the kernel to
    debounce).  Bias: the line's pull-up / pull-down where the chip has one."""

    def __init__(self, chip: str, line: int, pull: str = "up", edge: str = "falling",
                 debounce_ms: int = 30, gpiod: "Any" = None) -> None:
        if gpiod is None:
            import gpiod  # type: ignore[no-redef]  # (the parameter: tests pass a stand-in)
        self.g = gpiod
        self.line = line
        self.debounce_ns = debounce_ms * 1000000
        self.last_ns: int | None = None
        self.v2 = hasattr(gpiod, "request_lines")
        falling = edge == "falling"
        if self.v2:
            import datetime

            from gpiod.line import Bias, Direction, Edge

            bias = {"up": Bias.PULL_UP, "down": Bias.PULL_DOWN}.get(pull, Bias.DISABLED)
            self.req = gpiod.request_lines(chip, consumer="hems-meter", config={
                line: gpiod.LineSettings(
                    direction=Direction.INPUT, bias=bias,
                    edge_detection=Edge.FALLING if falling else Edge.RISING,
                    debounce_period=datetime.timedelta(milliseconds=debounce_ms))})
        else:
            self.req = gpiod.Chip(chip).get_line(line)
            flags = {"up": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_UP", 0),
                     "down": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_DOWN", 0)}.get(pull, 0)
            self.req.request(consumer="hems-meter", flags=flags,
                             type=gpiod.LINE_REQ_EV_FALLING_EDGE if falling
                             else gpiod.LINE_REQ_EV_RISING_EDGE)

    def _count(self, ns: int) -> int:
        if self.last_ns is not None and ns - self.last_ns < self.debounce_ns:
            return 0
        self.last_ns = ns
        return 1

    def take(self) -> int:
        n = 0
        if self.v2:
            while self.req.wait_edge_events(0):
                for ev in self.req.read_edge_events():
                    n += self._count(ev.timestamp_ns)
        else:
            while self.req.event_wait(sec=0):
                ev = self.req.event_read()
                n += self._count(ev.sec * 1000000000 + ev.nsec)
        return n


class LineRelay(relay.Relay):
    def __init__(self, lines: "_GpiodLines | _SysfsLines", line: int, active_low: bool = False,
                 safe_state: bool = False) -> None:
        self.lines = lines
        self.line = line
        self.active_low = bool(active_low)
        lines.output(line, self._level(bool(safe_state)))   # created at the safe level
        relay.Relay.__init__(self, safe_state)

    def _level(self, on: bool) -> int:
        return 0 if on == self.active_low else 1

    def _drive(self, on: bool) -> None:
        self.lines.set(self.line, self._level(on))

    def ok(self) -> bool:
        return self.on is None or self.lines.get(self.line) == self._level(self.on)


class _SdWatchdog:
    """systemd's software watchdog: WATCHDOG=1 datagrams to $NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        if path.startswith("@"):
            path = "\0" + path[1:]
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.last = 0.0
        self.sock.sendto(b"READY=1", path)

    def feed(self) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0:   # at most once a second
            self.last = now
            self.sock.sendto(b"WATCHDOG=1", self.path)


class Board(HostBoard):
    name = "rpi"

    def __init__(self, cfg: "Json", store: "Store", log: "Log", gpiod: "Any" = None) -> None:
        HostBoard.__init__(self, cfg, store, log)
        r = cfg.get("relay")
        safe = cfg.get("safe_state", False)
        self.btn_line: int | None = None
        self.led_line: int | None = None
        self.pulses: GpiodPulses | None = None
        if not r:
            self.relay: relay.Relay = relay.LabRelay(store, self.clock, safe)
            self._meter(cfg, gpiod)
            return
        if r.get("driver", "gpiod") == "sysfs":
            self.lines: _GpiodLines | _SysfsLines = _SysfsLines(r.get("sysfs_root",
                                                                      "/sys/class/gpio"))
        else:
            self.lines = _GpiodLines(r.get("chip", "/dev/gpiochip0"), gpiod)
        self.relay = LineRelay(self.lines, r["pin"], r.get("active_low", False), safe)  # first
        self._meter(cfg, gpiod)
        if r.get("button") is not None:
            self.btn_line = r["button"]
            self.btn_low = r.get("button_active_low", True)
            self.lines.input(self.btn_line)
            self.btn_last = False
            self.btn_since = 0.0
            self.btn_down: float | None = None
        if r.get("led") is not None:
            self.led_line = r["led"]
            self.led_low = r.get("led_active_low", False)
            self.lines.output(self.led_line, 1 if self.led_low else 0)
            self.led_lit = False

    def _meter(self, cfg: "Json", gpiod: "Any") -> None:
        mt = cfg.get("meter")
        if mt and mt.get("kind", "pulse") == "pulse":
            chip = mt.get("chip") or (cfg.get("relay") or {}).get("chip", "/dev/gpiochip0")
            self.pulses = GpiodPulses(chip, mt["pin"], mt.get("pull", "up"),
                                      mt.get("edge", "falling"), mt.get("debounce_ms", 30), gpiod)

    # (HostBoard's are one shared no-op taking any arguments: these take fewer)
    def button(self) -> str | None:  # type: ignore[override]
        if self.btn_line is None:
            return None
        now = time.monotonic()
        pressed = self.lines.get(self.btn_line) == (0 if self.btn_low else 1)
        if pressed == self.btn_last or now - self.btn_since < DEBOUNCE_S:
            return None
        self.btn_last = pressed
        self.btn_since = now
        if pressed:
            self.btn_down = now
            return None
        held = now - (self.btn_down or now)
        return "long" if held >= LONG_PRESS_S else "short"

    def show(self, on: bool | None, online: bool,  # type: ignore[override]
             override: bool) -> None:
        if self.led_line is None:
            return
        t = time.monotonic()
        if override:
            lit = int(t * 8) % 2 == 0
        elif not online:
            lit = int(t * 2) % 2 == 0
        else:
            lit = bool(on)
        if lit != self.led_lit:
            self.led_lit = lit
            self.lines.set(self.led_line, 1 if lit != self.led_low else 0)

    def watchdog(self, ms: int) -> "_SdWatchdog | None":  # type: ignore[override]
        path = os.environ.get("NOTIFY_SOCKET")
        if not path:
            return None
        dog = _SdWatchdog(path)   # READY=1 (Type=notify) even without WatchdogSec=
        return dog if os.environ.get("WATCHDOG_USEC") else None
