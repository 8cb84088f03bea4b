"""Seeded generator of realistic demand-response days for the adjustment
benchmark (pure numpy, deterministic for a given seed).

A day has 96 frames of 15 minutes (frame 0 = 00:00-00:15).  Each home has a
random subset of special-circuit appliances; its load per frame is capped at
3 kWh (12 kW).  Appliances and their plans:

* EV charging (35 % of homes): one night session starting uniformly between
  20:30 and 01:00 (weekend: 25 % of the sessions are daytime, 10:00-16:00),
  3 kW or 6 kW (750 / 1500 Wh per frame) until 6-24 kWh are delivered.
  A session running past midnight is folded into the early morning of the
  same day (it stands for the previous night's session).
* Space-heating heat pump (45 %): morning block 05:30-09:00 (weekend shifted
  1.5 h later) at 1-2.5 kW, plus a weaker evening block 17:00-22:00.
* Heat-pump water heater (35 %): 2-4 h in the cheap night (01:00-06:00) at
  1-1.5 kW.
* Cooking (IH, 70 %): 30-75 min at 2-3 kW starting 17:15-19:15 (weekend: also
  a midday session 11:30-13:00).
* Air conditioning / other evening loads (60 %): 17:00-23:00 at 0.3-1.2 kW,
  random duration 1-4 h.
* Laundry dryer (25 %): 1-1.5 h at 1.2-2 kW, weekday 19:30-22:30, weekend
  09:00-15:00.

Every plan gets +-15 % multiplicative noise per frame.  A group has 10-50
homes (uniform) and its totals are the sums of its homes (integer Wh).
Magnifications are drawn from {1, 2, 4} with probabilities
(0.3, 0.4, 0.3).

Capacity profiles (``capacity_profile``): ``flat`` = ``round(r * peak)`` in
every frame, ``peak`` being the maximum of the day's total load; ``shaped`` =
``round(r * peak * s_f)`` with ``s_f`` = 1.05 in 00:00-06:00 and 10:00-16:00
(night surplus and midday solar), 0.95 in 16:00-22:00 (solar fades) and 1.0
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FRAMES = 96
HOME_CAP_WH = 3000
MAGNIFICATIONS = (1, 2, 4)
MAG_PROBS = (0.3, 0.4, 0.3)

DayKind = Literal["weekday", "weekend"]
ProfileKind = Literal["flat", "shaped"]


@dataclass(frozen=True)
class Day:
    totals: npt.NDArray[np.int64]  # (G, 96) Wh
    magnification: npt.NDArray[np.int64]  # (G,)
    homes: npt.NDArray[np.int64]  # (G,) homes per group


def _frame(h: float) -> int:
    return round(h * 4)


def _blocks(rng: np.random.Generator, n: int, start: npt.NDArray[np.int64],
            dur: npt.NDArray[np.int64], power: npt.NDArray[np.float64],
            wrap: bool) -> npt.NDArray[np.float64]:
    idx = np.arange(FRAMES)[None, :]
    s = start[:, None]
    on = ((idx - s) % FRAMES < dur[:, None]) if wrap else ((idx >= s) & (idx < s + dur[:, None]))
    return on * power[:, None]


def _homes(rng: np.random.Generator, n: int, day: DayKind) -> npt.NDArray[np.float64]:
    load = np.zeros((n, FRAMES))
    weekend = day == "weekend"

    def pick(p: float) -> npt.NDArray[np.bool_]:
        return rng.random(n) < p

    # EV charging
    has = pick(0.35)
    power = rng.choice([750.0, 1500.0], size=n, p=[0.6, 0.4])
    energy = rng.uniform(6000, 24000, size=n)
    dur = np.maximum(1, np.round(energy / power)).astype(np.int64)
    start = rng.integers(_frame(20.5), _frame(25.0), size=n) % FRAMES
    if weekend:
        daytime = rng.random(n) < 0.25
        start = np.where(daytime, rng.integers(_frame(10), _frame(16), size=n), start)
    load += _blocks(rng, n, start, dur, power, wrap=True) * has[:, None]
    # space-heating heat pump
    has = pick(0.45)
    shift = _frame(1.5) if weekend else 0
    start = rng.integers(_frame(5.5), _frame(6.5), size=n) + shift
    dur = rng.integers(_frame(1.5), _frame(3.5), size=n)
    power = rng.uniform(250, 625, size=n)
    load += _blocks(rng, n, start, dur, power, wrap=False) * has[:, None]
    start = rng.integers(_frame(17), _frame(20), size=n)
    dur = rng.integers(_frame(1), _frame(3), size=n)
    load += _blocks(rng, n, start, dur, power * 0.5, wrap=False) * has[:, None]
    # heat-pump water heater
    has = pick(0.35)
    start = rng.integers(_frame(1), _frame(3), size=n)
    dur = rng.integers(_frame(2), _frame(4), size=n)
    power = rng.uniform(250, 375, size=n)
    load += _blocks(rng, n, start, dur, power, wrap=False) * has[:, None]
    # cooking
    has = pick(0.7)
    start = rng.integers(_frame(17.25), _frame(19.25), size=n)
    dur = rng.integers(2, 6, size=n)
    power = rng.uniform(500, 750, size=n)
    load += _blocks(rng, n, start, dur, power, wrap=False) * has[:, None]
    if weekend:
        start = rng.integers(_frame(11.5), _frame(13), size=n)
        dur = rng.integers(2, 5, size=n)
        load += _blocks(rng, n, start, dur, power, wrap=False) * (has & pick(0.6))[:, None]
    # AC / other evening loads
    has = pick(0.6)
    start = rng.integers(_frame(17), _frame(21), size=n)
    dur = rng.integers(_frame(1), _frame(4), size=n)
    power = rng.uniform(75, 300, size=n)
    load += _blocks(rng, n, start, dur, power, wrap=False) * has[:, None]
    # dryer
    has = pick(0.25)
    if weekend:
        start = rng.integers(_frame(9), _frame(15), size=n)
    else:
        start = rng.integers(_frame(19.5), _frame(22.5), size=n)
    dur = rng.integers(4, 7, size=n)
    power = rng.uniform(300, 500, size=n)
    load += _blocks(rng, n, start, dur, power, wrap=False) * has[:, None]

    load *= rng.uniform(0.85, 1.15, size=load.shape)
    return np.minimum(load, HOME_CAP_WH)


def generate_day(n_groups: int, seed: int, day: DayKind = "weekday",
                 homes_range: tuple[int, int] = (10, 50)) -> Day:
    """Totals of ``n_groups`` groups of 10-50 homes for one day."""
    rng = np.random.default_rng(seed)
    homes = rng.integers(homes_range[0], homes_range[1] + 1, size=n_groups).astype(np.int64)
    mag = rng.choice(np.array(MAGNIFICATIONS, dtype=np.int64), size=n_groups,
                     p=list(MAG_PROBS)).astype(np.int64)
    totals = np.zeros((n_groups, FRAMES), dtype=np.int64)
    owner = np.repeat(np.arange(n_groups), homes)
    chunk = 20000
    for lo in range(0, owner.shape[0], chunk):
        own = owner[lo:lo + chunk]
        per_home = np.rint(_homes(rng, own.shape[0], day)).astype(np.int64)
        np.add.at(totals, own, per_home)
    return Day(totals=totals, magnification=mag, homes=homes)


def capacity_profile(load: npt.NDArray[np.int64], ratio: float,
                     profile: ProfileKind = "flat") -> npt.NDArray[np.int64]:
    """Capacity per frame: ``ratio`` times the day's peak, flat or shaped."""
    peak = float(load.max()) if load.size else 0.0
    shape = np.ones(FRAMES)
    if profile == "shaped":
        shape[_frame(0):_frame(6)] = 1.05
        shape[_frame(10):_frame(16)] = 1.05
        shape[_frame(16):_frame(22)] = 0.95
    return np.rint(ratio * peak * shape[: load.shape[0]]).astype(np.int64)


# --------------------------------------------------------------------------
# hard families (bench/adjust.py): days that need curtailment or defeat moving
# --------------------------------------------------------------------------

Family = Literal["realistic", "curtail", "rigid", "same_frame", "past_end"]
FAMILIES: tuple[Family, ...] = ("realistic", "curtail", "rigid", "same_frame", "past_end")


def family_day(family: Family, n_groups: int, seed: int, ratio: float = 0.9
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64],
                          npt.NDArray[np.int64]]:
    """(totals, capacity, magnification, homes per group) of one benchmark instance:

    * ``realistic``: :func:`generate_day` (weekday for odd seeds, weekend for even ones),
      capacity ``ratio`` of the peak, flat for odd seeds, shaped for even ones;
    * ``curtail``: a realistic day at 55 % of its peak: moving alone cannot clear it;
    * ``rigid``: a realistic day where 70 % of the groups have magnification 1 (cannot move)
      and a 3-hour evening plateau at 1.3 times the groups' own evening peak; capacity 80 % of
      the peak;
    * ``same_frame``: every group has one block of 1-3 frames starting at 18:00 (frame 72)
      on top of a light base load; capacity 60 % of the peak;
    * ``past_end``: the realistic day's load shifted so that its evening peak falls in the
      last hour: windows reach past the day's end (clipped); capacity 85 % of the peak.
    """
    rng = np.random.default_rng(10_000 + seed)
    kind: DayKind = "weekday" if seed % 2 else "weekend"
    profile: ProfileKind = "flat" if seed % 2 else "shaped"
    day = generate_day(n_groups, seed, kind)
    totals = day.totals.copy()
    mag = day.magnification.copy()
    if family == "realistic":
        return totals, capacity_profile(totals.sum(axis=0), ratio, profile), mag, day.homes
    if family == "curtail":
        return totals, capacity_profile(totals.sum(axis=0), 0.55, profile), mag, day.homes
    if family == "rigid":
        rigid = rng.random(n_groups) < 0.7
        mag[rigid] = 1
        ev = slice(_frame(18), _frame(21))
        peak = totals[:, ev].max(axis=1, keepdims=True)
        totals[:, ev] = np.maximum(totals[:, ev], np.rint(1.3 * peak).astype(np.int64))
        return totals, capacity_profile(totals.sum(axis=0), 0.8, "flat"), mag, day.homes
    if family == "same_frame":
        base = totals // 4
        size = np.rint(day.homes * rng.uniform(400, 900, size=n_groups)).astype(np.int64)
        dur = rng.integers(1, 4, size=n_groups)
        for g in range(n_groups):
            base[g, _frame(18):_frame(18) + int(dur[g])] += size[g]
        return base, capacity_profile(base.sum(axis=0), 0.6, "flat"), mag, day.homes
    if family == "past_end":
        shifted = np.roll(totals, _frame(3), axis=1)  # the 17:00-21:00 peak -> 20:00-24:00
        return shifted, capacity_profile(shifted.sum(axis=0), 0.85, "flat"), mag, day.homes
    raise ValueError(f"unknown family {family!r}")
