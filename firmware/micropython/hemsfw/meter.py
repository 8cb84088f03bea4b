# The special circuit's meter: pulses counted per frame, persisted, and the relay's budget gate.
#
# A pulse source (an S0 / pulse output of a sub-meter) is an adapter with take() -> pulses counted
# since the previous call: an IRQ counter on ESP32 / Pico W (hemsfw/boards/mcu.py), gpiod edge
# events on a Raspberry Pi (hemsfw/boards/rpi.py), the lab's simulated load (hemsfw/simload.py).
# Everything here is pure bookkeeping on (time, frame, pulses).
#
# Counts per frame: the pulses taken on a loop turn belong to the frame that was running before
# that turn (a pulse arrives after its energy was drawn), then the frame of the turn's time
# begins.  The running frame's count is persisted in meter.json when the frame ends and when its
# budget is reached (so a reboot after the relay opened does not close it again):
#
#   meter.json = {"day": "2026-12-05", "p": [pulses per frame], "k": frame, "cur": pulses,
#                 "total": pulses ever}
#
# so a reboot loses at most the pulses of the current frame since its last save.  Pulses outside a
# planned day (or while the time is unknown) count in "total" only.  With frame_log (the lab) each
# closed frame is also appended to meter.log: {"day": D, "k": k, "p": pulses}.  When a day has been
# played out (its last frame closed, or another day begins) its metered Wh per frame go to
# on_day(day, wh) (the resident's history).  MicroPython subset only.

from hemsfw.budget import Budget

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Protocol

    from hemsfw.interfaces import Json, Log, SimCircuit, Slot, Storage
    from hemsfw.interfaces import PulseSource as Source

    class Home(Protocol):
        def plan_at(self, now: float | None) -> "tuple[Slot, int, int] | None": ...

FILE = "meter.json"
LOG = "meter.log"
DEFAULTS = {"pulses_per_kwh": 1000, "debounce_ms": 30, "rated_w": 3000, "stuck_s": 900}


def wh(pulses: int, ppkwh: int) -> int:
    """Pulses -> whole Wh (rounded)."""
    return (pulses * 1000 + ppkwh // 2) // ppkwh


class Meter:
    """Pulses per frame of the day being played, persisted (see the top of this file)."""

    def __init__(self, store: "Storage", ppkwh: int, frame_log: bool = False,
                 log: "Log | None" = None) -> None:
        self.store = store
        self.ppkwh = ppkwh
        self.frame_log = frame_log
        self.log = log or (lambda *a: None)
        d = store.read(FILE) or {}
        self.day: str | None = d.get("day")
        self.p: list[int] = d.get("p") or []
        self.k: int | None = d.get("k")       # the running frame (None: none)
        self.cur: int = d.get("cur", 0)       # its pulses
        self.total: int = d.get("total", 0)
        self.on_day: Callable[[str, list[int]], None] | None = None

    def _save(self) -> None:
        self.store.write(FILE, {"day": self.day, "p": self.p, "k": self.k, "cur": self.cur,
                                "total": self.total})

    def add(self, n: int) -> None:
        """n pulses taken now: they belong to the running frame."""
        if n:
            self.cur += n
            self.total += n

    def move(self, day: str | None, frames: int, k: int | None) -> None:
        """The time is now in frame k of `day` (None, None: outside any planned day)."""
        if k == self.k and (day == self.day or k is None):
            return
        if self.k is not None and self.day is not None and self.k < len(self.p):
            self.p[self.k] = self.cur
            append = getattr(self.store, "append_line", None)   # (hemsfw.store.Store)
            if self.frame_log and append is not None:
                append(LOG, {"day": self.day, "k": self.k, "p": self.cur})
            done = (day is not None and day != self.day) or self.k == len(self.p) - 1
            if done and self.on_day is not None:
                self.on_day(self.day, [wh(v, self.ppkwh) for v in self.p])
        if day is not None and day != self.day:
            self.day = day
            self.p = [0] * frames
        self.k = k
        self.cur = 0
        self._save()

    def save(self) -> None:
        """Persist the running frame's count now (its budget was reached)."""
        self._save()

    def today_wh(self) -> list[int]:
        """Metered Wh per frame of the day held, the running frame included."""
        out = [wh(v, self.ppkwh) for v in self.p]
        if self.k is not None and self.k < len(out):
            out[self.k] = wh(self.cur, self.ppkwh)
        return out


class Metering:
    """The runner's meter: the source, the counts and the budget gate, per loop turn."""

    def __init__(self, mcfg: "Json", store: "Storage", source: "Source",
                 log: "Log | None" = None) -> None:
        self.source = source
        self.ppkwh: int = mcfg.get("pulses_per_kwh", DEFAULTS["pulses_per_kwh"])
        self.meter = Meter(store, self.ppkwh, mcfg.get("frame_log", False), log)
        self.budget = Budget(mcfg.get("rated_w", DEFAULTS["rated_w"]),
                             mcfg.get("stuck_s", DEFAULTS["stuck_s"]), log)
        self.sim: SimCircuit | None = source if hasattr(source, "step") else None  # type: ignore[assignment]
        self.wh_now = 0        # the current frame's budget (Wh), for the page
        self.reached: int | None = None   # the last frame whose budget was reached (saved)

    def gate(self, now: float | None, home: "Home", on: bool) -> bool:
        """Count the pulses taken now, move to the frame of `now`, and return whether the relay
        may be closed (on: what the plan wants; False stays False)."""
        n = self.source.take()
        m = self.meter
        m.add(n)
        at = home.plan_at(now)
        if at is None:
            m.move(None, 0, None)
            self.budget.account(now, None, n)
            self.wh_now = 0
            return on
        st, k, q = at
        m.move(st["day"], st["frames"], k)
        self.budget.account(now, (st["day"], k), n)
        self.wh_now = q * st["quantum_wh"]
        if not on:
            return False
        ok = self.budget.allow(self.wh_now, m.cur, self.ppkwh)
        if not ok and self.reached != k:
            self.reached = k     # saved once per frame whose budget is reached
            m.save()
        return ok

    def driven(self, on: bool | None) -> None:
        """The relay as driven after gate() (an override may differ from the gate)."""
        self.budget.closed = bool(on)
