# Board "unix": the MicroPython unix port (or CPython) in the lab and in CI; HostBoard is what
# the host boards (unix, rpi) share: no `machine`, the clock from the config, the MQTT adapter for
# the interpreter (net_umqtt on MicroPython, paho-mqtt on CPython).
#
# Relay: hemsfw.relay.LabRelay, a JSON-lines log of switches in <state_dir>/relay.log that the lab
# and the tests replay.  Meter: config meter.kind "sim", the lab's simulated load (simload.py).
# Network: always up, unless the config names `unix.wifi_file`: then the
# "Wi-Fi" is up only while that file exists (the tests' stand-in for an access point that is
# down at boot).  No watchdog (a host process is supervised by whoever started it).
# MicroPython subset only.

import os
import sys

from hemsfw import clock, relay

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Clock, Json, Log, MqttClient
    from hemsfw.store import Store


def _nothing(*_args: object) -> "Any":   # (returns None: Any stands for each one's type)
    return None


class HostBoard:
    name = "host"
    # No Wi-Fi to supervise, no button, no LED, no watchdog: one shared no-op for the four
    # (every method is a function object and its bytecode in a MicroPython heap).
    service = button = show = watchdog = _nothing

    def __init__(self, cfg: "Json", store: "Store", log: "Log") -> None:
        self.cfg = cfg
        self.store = store
        self.log = log
        self.clock: Clock = clock.LabClock() if cfg.get("clock") == "lab" else clock.SystemClock()

    def make_client(self, mcfg: "Json", client_id: str) -> "MqttClient":
        if sys.implementation.name == "micropython":
            from hemsfw import net_umqtt as net
        else:
            from hemsfw import net_paho as net  # type: ignore[no-redef]  # (same interface)
        return net.make_client(mcfg, client_id)

    def net_up(self) -> bool:
        return True


class Board(HostBoard):
    name = "unix"

    def __init__(self, cfg: "Json", store: "Store", log: "Log") -> None:
        HostBoard.__init__(self, cfg, store, log)
        mt = cfg.get("meter")
        self.pulses = None
        rclock = self.clock
        if mt and mt.get("kind") == "sim":
            # The lab's simulated circuit (hemsfw/simload.py); the relay log then carries the
            # circuit's time of each switch, which the runner decides event by event.
            from hemsfw.simload import SimLoad

            self.pulses = SimLoad(mt.get("loads", []), mt.get("pulses_per_kwh", 1000))
            rclock = self.pulses  # type: ignore[assignment]  # (only now() is used)
        self.relay = relay.LabRelay(store, rclock, cfg.get("safe_state", False))
        self.wifi_file: str | None = (cfg.get("unix") or {}).get("wifi_file")
        self.wifi: bool | None = None

    def net_up(self) -> bool:
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
