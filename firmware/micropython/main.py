# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Everything board-specific lives in hemsfw/boards/<board>.py (chosen by config "board"): the
# relay pin is created at its safe level first, then Wi-Fi (non-blocking, supervised with
# backoff), NTP, the watchdog and the same runner the lab runs.  Files on the device:
# /config.json, /hemsfw/ (.mpy), /lib/umqtt/simple.mpy, /main.py.  docs/firmware.md.

import sys

from hemsfw import halt

halt.filesystem_first(sys.path)   # /lib/umqtt (flash installs it) before the image's frozen copy

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Log


def make_log(name: str) -> "Log":
    prefix = "[" + name + "]"

    def log(*args: object) -> None:
        print(prefix, *args)

    return log


# Safe mode (the way back from a bad flash): the flag file `hems firmware flash` writes, or the
# button pressed within 1.5 s of boot: neither the app nor its watchdog starts.
rc = 0
if not halt.safe_mode("/" + halt.FLAG, "/config.json"):
    del halt
    from hemsfw.home import unload

    unload("halt")   # its code leaves the heap before the app loads
    from hemsfw import app

    rc = app.main("/config.json", make_log)
if rc == 2:
    # No usable config: blink the LED and fall through to the REPL.  Never sys.exit(): from
    # MicroPython 1.24 the ESP32 and rp2 ports soft-reset on SystemExit (a reboot loop).
    from hemsfw import halt

    halt.start("/config.json")
    make_log("hems")("stopped: fix /config.json (mpremote cp), then reset the board")
