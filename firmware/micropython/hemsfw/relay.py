# Special-power relay drivers (the seed's HEMS server switching the special circuit).
#
# Interface: relay.set(on, frame) is called on every loop turn with the state the stored plan wants
# (home.relay_on) and the current frame index (None outside the planned day or while the time is
# unknown).  Drivers act only when the state changes.  Every driver puts the relay in the configured
# safe state at construction, i.e. at boot before any network or clock exists (DESIGN.md
# decision 9, the Tasmota/ESPHome "power-on state" convention).
#
# MicroPython subset, no hardware: the GPIO drivers live with their boards (hemsfw/boards/), the
# only modules that import `machine`.

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Clock
    from hemsfw.store import Store


class Relay:
    """Base driver: tracks the state; subclasses implement _drive(on) and may _record()."""

    def __init__(self, safe_state: bool = False) -> None:
        self.on: bool | None = None
        self.switches = 0
        self.set(bool(safe_state), None)

    def set(self, on: bool, frame: int | None) -> bool:
        on = bool(on)
        if on == self.on:
            return False
        self._drive(on)
        self.on = on
        self.switches += 1
        self._record(on, frame)
        return True

    def _drive(self, on: bool) -> None:
        pass

    def _record(self, on: bool, frame: int | None) -> None:
        pass


class LabRelay(Relay):
    """No hardware: appends one JSON line per switch to <state_dir>/relay.log (Store.append_line):
    {"frame": k or null, "on": bool, "t": virtual epoch s or null}; the first line is the boot
    safe state and also carries "boot": true.  The lab report and the tests replay this log."""

    LOG = "relay.log"

    def __init__(self, store: "Store", clock: "Clock", safe_state: bool = False) -> None:
        self.store = store
        self.clock = clock
        Relay.__init__(self, safe_state)

    def _record(self, on: bool, frame: int | None) -> None:
        rec = {"frame": frame, "on": on, "t": self.clock.now()}
        if self.switches == 1:
            rec["boot"] = True
        self.store.append_line(self.LOG, rec)
