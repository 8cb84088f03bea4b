# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Everything board-specific lives in hemsfw/boards/<board>.py (chosen by config "board"): the
# relay pin is created at its safe level first, then Wi-Fi (non-blocking, supervised with
# backoff), NTP, the watchdog and the same runner the lab runs.  Files on the device:
# /config.json, /hemsfw/ (.mpy), /lib/umqtt/simple.mpy, /main.py.  docs/firmware.md.

import sys

from hemsfw import app

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Log


def make_log(name: str) -> "Log":
    prefix = "[" + name + "]"

    def log(*args: object) -> None:
        print(prefix, *args)

    return log


rc = app.main("/config.json", make_log)
if rc == 2:
    # No usable config: there is no relay pin to make safe; stop here (no reboot loop).
    sys.exit(2)
