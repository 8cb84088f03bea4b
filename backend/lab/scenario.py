"""Seeded lab scenario: the homes' special-circuit plans, magnifications and the capacity.

Plans are synthetic but shaped like the loads a special circuit carries (DESIGN.md, "Realistic
days"): wet appliances (washing machine, dishwasher: 1-2 kWh over 1-2 h) started in the evening
after people come home, which makes the evening peak; an electric water heater (2-3 kW for
30-90 min) in the morning or the evening; and, for a third of the homes, EV charging at 3.7 kW
from late evening.  Everything comes from one `random.Random(seed)`, so a seed reproduces a day.
Magnifications cycle through the contract classes 1, 2 and 4 (the seed's examples).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MAGNIFICATIONS = (1, 2, 4)


@dataclass(frozen=True)
class HomeSpec:
    home_id: str
    magnification: int
    plan_wh: list[int]


def _block(plan: list[int], start: int, frames: int, energy_wh: int) -> None:
    """Spread `energy_wh` evenly over `frames` frames from `start` (clipped to the day)."""
    n = len(plan)
    frames = max(1, frames)
    q, r = divmod(energy_wh, frames)
    for j in range(frames):
        k = start + j
        if 0 <= k < n:
            plan[k] += q + (1 if j < r else 0)


def home_plan(rng: random.Random, frames: int) -> list[int]:
    per_h = frames / 24.0

    def at(hour: float) -> int:
        return int(hour * per_h)

    plan = [0] * frames
    # Wet appliances in the evening peak (18:00-21:30 start).
    for _ in range(rng.choice((1, 1, 2))):
        _block(plan, at(rng.uniform(17.5, 21.0)), max(1, at(rng.uniform(1.0, 2.0))),
               rng.randint(900, 2000))
    # Water heater: morning or evening.
    if rng.random() < 0.7:
        hour = rng.uniform(5.5, 7.5) if rng.random() < 0.5 else rng.uniform(18.0, 20.5)
        _block(plan, at(hour), max(1, at(rng.uniform(0.5, 1.5))), rng.randint(1000, 3000))
    # EV charging from late evening for a third of the homes (3.7 kW).
    if rng.random() < 1 / 3:
        hours = rng.uniform(1.5, 4.0)
        _block(plan, at(rng.uniform(19.0, 23.0)), max(1, at(hours)), int(3700 * hours))
    return plan


def make_homes(n: int, seed: int, frames: int) -> list[HomeSpec]:
    rng = random.Random(seed)
    return [
        HomeSpec(f"h{i + 1:03d}", MAGNIFICATIONS[i % len(MAGNIFICATIONS)],
                 home_plan(rng, frames))
        for i in range(n)
    ]


def true_load(homes: list[HomeSpec]) -> NDArray[np.int64]:
    out: NDArray[np.int64] = np.array([h.plan_wh for h in homes], dtype=np.int64).sum(axis=0)
    return out


def rated_w(h: HomeSpec, frame_s: int) -> int:
    """The home's contracted circuit rating (W): the power of its fullest frame, rounded up to
    whole kW (at least 1 kW), so its plan never exceeds its cap (rating x frame length)."""
    peak_w = -(-max(h.plan_wh, default=0) * 3600 // frame_s)
    return max(1000, -(-peak_w // 1000) * 1000)
