# Clocks and loop timing for the home runtime (adapters of the sans-I/O core, DESIGN.md decision 6).
#
# A clock's now() returns epoch seconds (1970 epoch) or None while the time is unknown: the frame
# clock the relay follows.  wall() is the clock the round deadline is compared with: the same
# clock on every board, and in the lab too (the services run on the lab's virtual clock).  The core
# (home.relay_on) maps None to the configured safe state, so a controller that boots without
# network time never drives its relay from a guessed frame (DESIGN.md decision 9).
#
# MicroPython subset only: runs on the unix port, on boards and under CPython.

import time

from hemsfw import protocol

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Json

# MicroPython boards before 1.22 (and some ports still) count from 2000-01-01: normalise to 1970
# so the announcement's `start` (Unix epoch, docs/protocol.md) compares directly.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
EPOCH_OFFSET = _EPOCH_OFFSET   # (for the boards' RTC setting)

# An RTC that has never been set reads 2000-01-01 (boards) or whatever the host says; anything
# before 2024-01-01 is "not synchronised yet" (NTP has not run).
VALID_AFTER = 1704067200


# ------------------------------------------------------------------ loop timing (monotonic)

ticks_ms: "Callable[[], int]"                 # (declared for mypy: typeshed's time is
ticks_diff: "Callable[[int, int], int]"       # CPython's, without these)
ticks_add: "Callable[[int, int], int]"
sleep_ms: "Callable[[float], None]"

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff  # type: ignore[attr-defined]
    ticks_add = time.ticks_add    # type: ignore[attr-defined]
    sleep_ms = time.sleep_ms      # type: ignore[attr-defined]
    import sys

    if sys.platform == "linux":
        # The unix port's sleep_ms wakes up every millisecond (~4 % of a core for a 20 ms
        # sleep, per process); one nanosleep is ~1 %: it matters with 30 homes on 2 cores.
        def sleep_ms(ms: float) -> None:
            time.sleep(ms / 1000)
else:  # CPython
    from hemsfw._cpython import sleep_ms, ticks_add, ticks_diff, ticks_ms  # noqa: F401


# ------------------------------------------------------------------ wall clocks


class SystemClock:
    """The board's or host's clock, trusted only once it looks synchronised (NTP/RTC)."""

    topic = None  # nothing to subscribe to

    def __init__(self, valid_after: int = VALID_AFTER) -> None:
        self.valid_after = valid_after

    def now(self) -> float | None:
        # Boards return an int (float is single precision there, useless for epoch seconds);
        # the unix port and CPython return a float.  Both work with plan.frame_at.
        t = time.time() + _EPOCH_OFFSET
        return t if t >= self.valid_after else None

    wall = now   # the frame clock is the wall clock

    def update(self, obj: "Json") -> None:
        raise ValueError("not_lab_clock")


class LabClock:
    """Accelerated virtual time for the lab (the lab's stand-in for NTP).

    Set by the retained `hems/v1/lab/clock` message
    {"v":1, "anchor": <real epoch s>, "virtual": <virtual epoch s at anchor>, "speed": <float>}:
    now() = virtual + (real now - anchor) * speed.  A day of 96 frames can then play out in seconds
    while every component agrees on the frame (they all read the same retained anchor)."""

    topic = protocol.t_clock()

    def __init__(self, real: "Callable[[], float]" = time.time) -> None:
        self.real = real
        self.anchor: float | None = None
        self.virtual: float = 0
        self.speed = 1.0

    def update(self, obj: "Json") -> None:
        """A decoded lab/clock message; raises ValueError(reason) if malformed."""
        a: Any = obj.get("anchor")   # (numbers once checked below)
        v: Any = obj.get("virtual")
        s: Any = obj.get("speed")
        for x in (a, v, s):
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise ValueError("bad_clock")
        if not 0 < s <= 1e6 or a < 0 or v < 0:
            raise ValueError("bad_clock")
        self.anchor = a
        self.virtual = v
        self.speed = s

    def now(self) -> float | None:
        if self.anchor is None:
            return None
        return self.virtual + (self.real() - self.anchor) * self.speed

    # The lab's coordinator service runs on the same virtual clock (--accelerate): its round
    # deadlines are instants of the virtual day too, so the deadline check reads it as well.
    wall = now


def hhmm(s: int) -> str:
    """Seconds since the day's (local) midnight -> "HH:MM"."""
    return "%02d:%02d" % (s // 3600, s // 60 % 60)
