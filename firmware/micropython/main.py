# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Everything board-specific lives in hemsfw/boards/<board>.py (chosen by config "board"): the
# relay pin is created at its safe level first, then Wi-Fi (non-blocking, supervised with
# backoff), NTP, the watchdog and the same runner the lab runs.  Files on the device:
# /config.json, /hemsfw/ (.mpy), /lib/umqtt/simple.mpy, /main.py.  docs/firmware.md.

import sys

from hemsfw import app


def make_log(name):
    prefix = "[" + name + "]"

    def log(*args):
        print(prefix, *args)

    return log


rc = app.main("/config.json", make_log)
if rc == 2:
    # No usable config: there is no relay pin to make safe; stop here (no reboot loop).
    sys.exit(2)
