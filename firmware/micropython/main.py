# Device entry point (ESP32 / Pico W): MicroPython runs /main.py at boot.
#
# Everything board-specific lives in hemsfw/boards/<board>.py (chosen by config "board"): the
# relay pin is created at its safe level first, then Wi-Fi (non-blocking, supervised with
# backoff), NTP, the watchdog and the same runner the lab runs.  Files on the device:
# /config.json, /hemsfw/ (.mpy, its own MQTT client included), /main.py.  docs/firmware.md.

import sys

from hemsfw import halt

halt.filesystem_first(sys.path)   # flashed modules before the image's frozen ones

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Log


def halt_trial() -> bool:
    try:
        open("/ota_trial").close()
        return True
    except OSError:
        return False


def make_log(name: str) -> "Log":
    prefix = "[" + name + "]"

    def log(*args: object) -> None:
        print(prefix, *args)

    return log


# Safe mode (the way back from a bad flash): the flag file `hems firmware flash` writes, or the
# button pressed within 1.5 s of boot: neither the app nor its watchdog starts.
rc = 0
if not halt.safe_mode("/" + halt.FLAG, "/config.json"):
    # Over-the-air updates (hemsfw/ota.py): the slot to run, "" for the flashed code; a trial
    # that never came up is rolled back here.
    slot = halt.ota_slot(make_log("hems"))
    del halt
    for name in [n for n in sys.modules if n == "hemsfw" or n.startswith("hemsfw.")]:
        del sys.modules[name]   # (their code leaves the heap; the slot's hemsfw loads next)
    if slot:
        sys.path.insert(0, slot)
    from hemsfw import app, unload

    try:
        r = app.build("/config.json", make_log)
        del app
        unload("app")   # the wiring ran once: its code leaves the heap before the loop
        rc = r if isinstance(r, int) else r.serve()
    except Exception:
        if slot and halt_trial():
            import machine  # the update on trial crashed: reset, the next boot rolls back

            machine.reset()
        raise
if rc == 2:
    # No usable config: blink the LED and fall through to the REPL.  Never sys.exit(): from
    # MicroPython 1.24 the ESP32 and rp2 ports soft-reset on SystemExit (a reboot loop).
    from hemsfw import halt

    halt.start("/config.json")
    make_log("hems")("stopped: fix /config.json (mpremote cp), then reset the board")
