# A board that cannot run stops cleanly: no reboot loop, the REPL reachable, an LED pattern.
# And safe mode, the way back from a bad flash: the app and its watchdog are not started.
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
SAFE_PATTERN = (1, 0)                      # safe mode: an even blink
TICK_MS = 200
FLAG = "safemode"     # in the board's root: `hems firmware flash` writes it, then resets
WINDOW_MS = 1500      # after boot, a press of the button within this starts safe mode
POLL_MS = 20

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any


def filesystem_first(path: "list[str]") -> None:
    """Move the frozen modules (".frozen") behind every filesystem entry of sys.path, in
    place: the stock ESP32 image freezes its own umqtt.simple, which would shadow the one
    `hems firmware flash` installs in /lib (the firmware's timeouts rely on that version)."""
    while ".frozen" in path:
        path.remove(".frozen")
    path.append(".frozen")


def ota_slot(log: "Any" = None, root: str = ".") -> str:
    """The code slot main.py runs (hemsfw/ota.py boot_slot); "" (the flashed code) when no
    update was ever staged, without loading the update code at all."""
    import os

    for name in ("ota_pending", "ota_trial", "ota_active"):
        try:
            os.stat(root + "/" + name)
        except OSError:
            continue
        from hemsfw import ota

        return ota.boot_slot(root, log)
    return ""


def _relay_cfg(path: str) -> "dict[str, Any]":
    try:
        with open(path) as f:
            r = json.loads(f.read()).get("relay")
        return r if isinstance(r, dict) else {}
    except Exception:
        return {}


def led_of(path: str) -> "tuple[Any, bool]":
    """(LED pin, active low) from the (maybe unusable) config file at path, best effort."""
    r = _relay_cfg(path)
    if r.get("led") is not None:
        return r["led"], bool(r.get("led_active_low", False))
    return ("LED" if sys.platform == "rp2" else None), False


def _machine(machine: "Any") -> "Any":
    if machine is None:
        try:
            import machine
        except ImportError:
            return None
    return machine


def _button(path: str, machine: "Any") -> "Any":
    """A function -> True while the override button is pressed, or None: the config's
    relay.button, else the board's own (ESP32 GPIO0 "BOOT", Pico W BOOTSEL)."""
    r = _relay_cfg(path)
    b = r.get("button")
    if b is None and sys.platform == "esp32":
        b = 0
    if b is not None and hasattr(machine, "Pin"):
        low = r.get("button_active_low", True)
        pin = machine.Pin(b, machine.Pin.IN, machine.Pin.PULL_UP if low else
                          machine.Pin.PULL_DOWN)
        return lambda: pin.value() == (0 if low else 1)
    try:
        import rp2

        return lambda: bool(rp2.bootsel_button())
    except (ImportError, AttributeError):
        return None


def safe_mode(flag: str, path: str, machine: "Any" = None, sleep_ms: "Any" = None) -> bool:
    """True when the board must not start the app (nor its watchdog): the flag file exists
    (written by `hems firmware flash`), or the button is pressed within WINDOW_MS of boot
    (while the LED flickers).  Then the LED blinks SAFE_PATTERN and the caller returns to the
    REPL.  Costs WINDOW_MS at every boot where there is a button."""
    machine = _machine(machine)
    try:
        open(flag).close()
        why = "flag file " + flag
    except OSError:
        why = None
    if why is None and machine is not None:
        pressed = _button(path, machine)
        if pressed is not None:
            if sleep_ms is None:
                import time

                sleep_ms = getattr(time, "sleep_ms", lambda ms: time.sleep(ms / 1000))
            led, low = led_of(path)
            pin = machine.Pin(led, machine.Pin.OUT) if led is not None else None
            for i in range(WINDOW_MS // POLL_MS):
                if pin is not None:
                    pin.value((i // 2) % 2)
                if pressed():
                    why = "button"
                    break
                sleep_ms(POLL_MS)
            if pin is not None:
                pin.value(1 if low else 0)
    if why is None:
        return False
    print("[hems] safe mode (" + why + "): app and watchdog not started; the REPL is yours."
          " Reset to leave it (delete /" + FLAG + " first if it exists).")
    start(path, machine, SAFE_PATTERN)
    return True


def start(path: str, machine: "Any" = None, pattern: "tuple[int, ...]" = PATTERN) -> "Any":
    """Blink `pattern` on the status LED from a periodic timer and return at once (the caller
    returns to the REPL).  Returns the timer, or None where there is no LED or no `machine`."""
    machine = _machine(machine)
    if machine is None:
        return None
    led, low = led_of(path)
    if led is None or not hasattr(machine, "Pin") or not hasattr(machine, "Timer"):
        return None
    pin = machine.Pin(led, machine.Pin.OUT, value=1 if low else 0)
    step = [0]

    def blink(_t: object) -> None:
        lit = pattern[step[0] % len(pattern)]
        step[0] += 1
        pin.value(1 if bool(lit) != low else 0)

    try:
        t = machine.Timer(-1)        # rp2, and other ports with virtual timers
    except Exception:
        t = machine.Timer(0)         # esp32: hardware timer 0
    t.init(period=TICK_MS, mode=machine.Timer.PERIODIC, callback=blink)
    return t
