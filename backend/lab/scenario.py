"""Seeded lab scenario: the homes' special-circuit plans, magnifications and the capacity.

Plans are synthetic but shaped like the loads a special circuit carries (DESIGN.md, "Realistic
days"): wet appliances (washing machine, dishwasher: 1-2 kWh over 1-2 h) started in the evening
after people come home, which makes the evening peak; an electric water heater (2-3 kW for
30-90 min) in the morning or the evening; and, for a third of the homes, EV charging at 3.7 kW
from late evening.  Everything comes from one `random.Random(seed)`, so a seed reproduces a day.
Magnifications cycle through the contract classes 1, 2 and 4 (the seed's examples).

What the appliances really draw (issue 15) is the lab's load model, the jobs of the home's
simulated meter (firmware hemsfw/simload.py, docs/firmware.md "The lab's simulated meter"), drawn
from a second seeded generator per home (so the plans do not change with it): each block of the
plan is one job, ready from the block's first frame, that needs less than was planned:

* EV: 3.7 kW until it has drawn 60-95 % of its block (the battery is full early);
* water heater: a heat pump that cycles, 20 min on / 10 min off at 1.5 x the block's mean power,
  until 85-100 % of its block;
* wet appliance: 1.25 x the block's mean power until 80-100 % of its block.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAGNIFICATIONS = (1, 2, 4)


@dataclass(frozen=True)
class HomeSpec:
    home_id: str
    magnification: int
    plan_wh: list[int]
    #: the simulated meter's jobs, [kind, start_s, need_wh, power_w, on_s, off_s] (simload.py)
    loads: list[list[Any]] = field(default_factory=list)

    @property
    def load_w(self) -> int:
        """The simulated appliances' power all at once: the meter's rated power for its
        stuck-meter fallback (not the contracted rating, ``rated_w`` below)."""
        return max(1, sum(int(j[3]) for j in self.loads))


#: a block of a plan: (kind, first frame, frames, Wh that fell inside the day)
Block = tuple[str, int, int, int]
EV_W = 3700
HP_ON_S, HP_OFF_S = 1200, 600


def _block(plan: list[int], start: int, frames: int, energy_wh: int) -> tuple[int, int]:
    """Spread `energy_wh` evenly over `frames` frames from `start` (clipped to the day); returns
    (frames, Wh) inside the day."""
    n = len(plan)
    frames = max(1, frames)
    q, r = divmod(energy_wh, frames)
    inside = kept = 0
    for j in range(frames):
        k = start + j
        if 0 <= k < n:
            plan[k] += q + (1 if j < r else 0)
            inside += 1
            kept += q + (1 if j < r else 0)
    return inside, kept


def home_blocks(rng: random.Random, frames: int) -> tuple[list[int], list[Block]]:
    """A home's plan and the blocks it is made of."""
    per_h = frames / 24.0

    def at(hour: float) -> int:
        return int(hour * per_h)

    plan = [0] * frames
    blocks: list[Block] = []

    def block(kind: str, start: int, n: int, wh: int) -> None:
        inside, kept = _block(plan, start, n, wh)
        if inside and kept:
            blocks.append((kind, start, inside, kept))

    # Wet appliances in the evening peak (18:00-21:30 start).
    for _ in range(rng.choice((1, 1, 2))):
        block("wet", at(rng.uniform(17.5, 21.0)), max(1, at(rng.uniform(1.0, 2.0))),
              rng.randint(900, 2000))
    # Water heater: morning or evening.
    if rng.random() < 0.7:
        hour = rng.uniform(5.5, 7.5) if rng.random() < 0.5 else rng.uniform(18.0, 20.5)
        block("hpwh", at(hour), max(1, at(rng.uniform(0.5, 1.5))), rng.randint(1000, 3000))
    # EV charging from late evening for a third of the homes (3.7 kW).
    if rng.random() < 1 / 3:
        hours = rng.uniform(1.5, 4.0)
        block("ev", at(rng.uniform(19.0, 23.0)), max(1, at(hours)), int(EV_W * hours))
    return plan, blocks


def home_plan(rng: random.Random, frames: int) -> list[int]:
    return home_blocks(rng, frames)[0]


def home_loads(rng: random.Random, blocks: list[Block], frame_s: int) -> list[list[Any]]:
    """The load model's jobs for a home's blocks (the module's docstring)."""
    out: list[list[Any]] = []
    for kind, start, n, wh in blocks:
        mean_w = wh * 3600 / (n * frame_s)
        if kind == "ev":
            out.append([kind, start * frame_s, int(wh * rng.uniform(0.6, 0.95)), EV_W, 0, 0])
        elif kind == "hpwh":
            out.append([kind, start * frame_s, int(wh * rng.uniform(0.85, 1.0)),
                        int(mean_w * 1.5) + 1, HP_ON_S, HP_OFF_S])
        else:
            out.append([kind, start * frame_s, int(wh * rng.uniform(0.8, 1.0)),
                        int(mean_w * 1.25) + 1, 0, 0])
    return out


def make_homes(n: int, seed: int, frames: int) -> list[HomeSpec]:
    rng = random.Random(seed)
    frame_s = 86400 // frames
    out = []
    for i in range(n):
        hid = f"h{i + 1:03d}"
        plan, blocks = home_blocks(rng, frames)
        loads = home_loads(random.Random(f"load:{seed}:{hid}"), blocks, frame_s)
        out.append(HomeSpec(hid, MAGNIFICATIONS[i % len(MAGNIFICATIONS)], plan, loads))
    return out


def true_load(homes: list[HomeSpec]) -> NDArray[np.int64]:
    out: NDArray[np.int64] = np.array([h.plan_wh for h in homes], dtype=np.int64).sum(axis=0)
    return out


def rated_w(h: HomeSpec, frame_s: int) -> int:
    """The home's contracted circuit rating (W): the power of its fullest frame, rounded up to
    whole kW (at least 1 kW), so its plan never exceeds its cap (rating x frame length)."""
    peak_w = -(-max(h.plan_wh, default=0) * 3600 // frame_s)
    return max(1000, -(-peak_w // 1000) * 1000)
