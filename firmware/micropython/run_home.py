# Run one home controller on a host: the MicroPython unix port (lab, CI) or CPython (Raspberry Pi).
#
#   export MICROPYPATH=firmware/micropython
#   micropython firmware/micropython/run_home.py CONFIG.json
#   python firmware/micropython/run_home.py CONFIG.json             (CPython + paho-mqtt)
#
# The board module (config "board": unix / rpi) picks the relay driver and the clock; the MQTT
# adapter follows the interpreter (the firmware's own client, hemsfw/net_umqtt.py, on
# MicroPython; paho-mqtt on CPython).  Logs go to stderr prefixed with the home id.  Exit
# status: 0 when the loop ends (exit_after_day), 2 on a usage or configuration error, 1 on an
# unexpected crash.
#
# MicroPython subset only (this file runs under both interpreters).

import sys

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Log


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: run_home.py CONFIG.json", file=sys.stderr)
        return 2
    from hemsfw import app, unload

    def make_log(name: str) -> "Log":
        prefix = "[" + name + "]"

        def log(*args: object) -> None:
            print(prefix, *args, file=sys.stderr)

        return log

    r = app.build(argv[1], make_log)
    del app
    unload("app")   # the wiring ran once: its code leaves the heap before the loop
    return r if isinstance(r, int) else r.serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
