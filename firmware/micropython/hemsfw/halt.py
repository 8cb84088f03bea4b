# A board that cannot run stops cleanly: no reboot loop, the REPL reachable, an LED pattern.
#
# main.py calls start() when the config is unusable.  It must not raise SystemExit: from
# MicroPython 1.24 the ESP32 and rp2 ports soft-reset on it, main.py runs again and fails again,
# for ever (a busy loop that also makes `mpremote` fight for the REPL).  Instead the status LED
# blinks a pattern from a timer (three short flashes, a pause: "config error") and main.py
# returns, so the board sits at the REPL where `mpremote` or a terminal finds it.  The relay pin
# stays as the ROM left it (an input: the external pull resistor decides, docs/firmware.md,
# "Wiring"); the LED is the config's relay.led when the file still says so, else the board's
# on-board LED ("LED" on a Pico W).  A soft reset (Ctrl-D) stops the timer.  MicroPython subset.

import json
import sys

PATTERN = (1, 0, 1, 0, 1, 0, 0, 0, 0, 0)   # one step per TICK_MS: 3 short flashes, a pause
TICK_MS = 200

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any


def led_of(path: str) -> "tuple[Any, bool]":
    """(LED pin, active low) from the (unusable) config file at path, best effort."""
    try:
        with open(path) as f:
            r = json.loads(f.read()).get("relay") or {}
        if r.get("led") is not None:
            return r["led"], bool(r.get("led_active_low", False))
    except Exception:
        pass
    return ("LED" if sys.platform == "rp2" else None), False


def start(path: str, machine: "Any" = None) -> "Any":
    """Blink PATTERN on the status LED from a periodic timer and return at once (the caller
    returns to the REPL).  Returns the timer, or None where there is no LED or no `machine`."""
    if machine is None:
        try:
            import machine
        except ImportError:
            return None
    led, low = led_of(path)
    if led is None or not hasattr(machine, "Pin") or not hasattr(machine, "Timer"):
        return None
    pin = machine.Pin(led, machine.Pin.OUT, value=1 if low else 0)
    step = [0]

    def blink(_t: object) -> None:
        lit = PATTERN[step[0] % len(PATTERN)]
        step[0] += 1
        pin.value(1 if bool(lit) != low else 0)

    try:
        t = machine.Timer(-1)        # rp2, and other ports with virtual timers
    except Exception:
        t = machine.Timer(0)         # esp32: hardware timer 0
    t.init(period=TICK_MS, mode=machine.Timer.PERIODIC, callback=blink)
    return t
