"""Capacity (and target) profiles for `hems capacity`: from a file or built in.

The grid monitoring device of the seed publishes the supply capacity per frame; where no feed is
at hand, a built-in profile stands in for it.  Built-ins are shapes scaled to `level` Wh/frame:

* ``flat``:     `level` in every frame.
* ``evening``:  `level`, but 75 % of it from 17:00 to 21:00 (a feeder loaded by the evening peak
  of ordinary power, leaving less room for special power then).
* ``solar``:    `level`, and 130 % of it from 10:00 to 15:00 (a feeder with much rooftop PV,
  where midday special power is welcome).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

BUILTIN = ("flat", "evening", "solar")


def builtin_profile(name: str, level: int, frames: int) -> list[int]:
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in profile {name!r} (one of {', '.join(BUILTIN)})")
    if level < 0 or frames < 1:
        raise ValueError("level must be >= 0 and frames >= 1")
    out = []
    for k in range(frames):
        hour = 24.0 * k / frames
        factor = 1.0
        if name == "evening" and 17.0 <= hour < 21.0:
            factor = 0.75
        elif name == "solar" and 10.0 <= hour < 15.0:
            factor = 1.3
        out.append(int(level * factor))
    return out


def read_profile(path: Path, key: str = "capacity_wh") -> list[int]:
    """Wh per frame from JSON (a list, or an object with `key`) or CSV (last column)."""
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        vals = obj[key] if isinstance(obj, dict) else obj
    else:
        with path.open() as f:
            vals = [row[-1].strip() for row in csv.reader(f) if row and row[-1].strip()]
        vals = [v for v in vals if v.lstrip("-").replace(".", "", 1).isdigit()]  # skip headers
    if not isinstance(vals, list):
        raise ValueError(f"{path}: expected a list of Wh values")
    return [int(float(v)) for v in vals]
