# Board "unix": the MicroPython unix port (or CPython) in the lab and in CI; HostBoard is what
# the host boards (unix, rpi) share: no `machine`, the clock from the config, the MQTT adapter for
# the interpreter (umqtt.simple on MicroPython, paho-mqtt on CPython).
#
# Relay: hemsfw.relay.LabRelay, a JSON-lines log of switches in <state_dir>/relay.log that the lab
# and the tests replay.  Network: always up, unless the config names `unix.wifi_file`: then the
# "Wi-Fi" is up only while that file exists (the tests' stand-in for an access point that is
# down at boot).  No watchdog (a host process is supervised by whoever started it).
# MicroPython subset only.

import os
import sys

from hemsfw import clock, relay


def _nothing(*_args):
    return None


class HostBoard:
    name = "host"
    # No Wi-Fi to supervise, no button, no LED, no watchdog: one shared no-op for the four
    # (every method is a function object and its bytecode in a MicroPython heap).
    service = button = show = watchdog = _nothing

    def __init__(self, cfg, store, log):
        self.cfg = cfg
        self.store = store
        self.log = log
        self.clock = clock.LabClock() if cfg.get("clock") == "lab" else clock.SystemClock()

    def make_client(self, mcfg, client_id):
        if sys.implementation.name == "micropython":
            from hemsfw import net_umqtt as net
        else:
            from hemsfw import net_paho as net
        return net.make_client(mcfg, client_id)

    def net_up(self):
        return True


class Board(HostBoard):
    name = "unix"

    def __init__(self, cfg, store, log):
        HostBoard.__init__(self, cfg, store, log)
        self.relay = relay.LabRelay(store, self.clock, cfg.get("safe_state", False))
        self.wifi_file = (cfg.get("unix") or {}).get("wifi_file")
        self.wifi = None

    def net_up(self):
        if self.wifi_file is None:
            return True
        try:
            os.stat(self.wifi_file)
            up = True
        except OSError:
            up = False
        if up != self.wifi:
            self.wifi = up
            self.log("wifi", "up" if up else "down")
        return up
