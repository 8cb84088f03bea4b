# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Everything board-specific lives in hemsfw/boards/<board>.py (chosen by config "board"): the
# relay pin is created at its safe level first, then Wi-Fi (non-blocking, supervised with
# backoff), NTP, the watchdog and the same runner the lab runs.  Files on the device:
# /config.json, /hemsfw/ (.mpy), /lib/umqtt/simple.mpy, /main.py.  docs/firmware.md.

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
    # No usable config: blink the LED and fall through to the REPL.  Never sys.exit(): from
    # MicroPython 1.24 the ESP32 and rp2 ports soft-reset on SystemExit (a reboot loop).
    from hemsfw import halt

    halt.start("/config.json")
    make_log("hems")("stopped: fix /config.json (mpremote cp), then reset the board")
