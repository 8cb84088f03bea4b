# Run one home controller on a host: the MicroPython unix port (lab, CI) or CPython (Raspberry Pi).
#
#   export MICROPYPATH=firmware/micropython:.venv/lib/micropython   (hemsfw + umqtt.simple)
#   micropython firmware/micropython/run_home.py CONFIG.json
#   python firmware/micropython/run_home.py CONFIG.json             (CPython + paho-mqtt)
#
# Picks the MQTT adapter for the interpreter (umqtt.simple on MicroPython, paho-mqtt on CPython),
# the lab relay (a JSON-lines log in state_dir) for board "unix"/"rpi", and the lab or system clock
# from the config.  Logs go to stderr prefixed with the home id.  Exit status: 0 when the loop
# ends (exit_after_day), 2 on a usage or configuration error, 1 on an unexpected crash.
#
# MicroPython subset only (this file runs under both interpreters).

import sys

from hemsfw import clock, config, relay, runner, store


def _logger(home_id):
    prefix = "[" + home_id + "]"

    def log(*args):
        print(prefix, *args, file=sys.stderr)

    return log


def main(argv):
    if len(argv) != 2:
        print("usage: run_home.py CONFIG.json", file=sys.stderr)
        return 2
    try:
        cfg = config.load(argv[1])
    except config.ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    log = _logger(cfg["home_id"])
    if sys.implementation.name == "micropython":
        from hemsfw import net_umqtt as net
    else:
        from hemsfw import net_paho as net

    st = store.Store(cfg["state_dir"])
    clk = clock.LabClock() if cfg["clock"] == "lab" else clock.SystemClock()
    if cfg["board"] in ("esp32", "picow"):
        rel = relay.PinRelay(cfg["relay"]["pin"], cfg["relay"]["active_low"], cfg["safe_state"])
    else:
        # unix (lab) and rpi: no GPIO driver on the host yet; the relay is a log of switches.
        rel = relay.LabRelay(st, clk, cfg["safe_state"])
    client = net.make_client(cfg["mqtt"], cfg["home_id"])
    r = runner.Runner(cfg, client, clk, rel, st, log)
    try:
        return r.run()
    except KeyboardInterrupt:
        log("interrupted")
        r.shutdown()
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv))
