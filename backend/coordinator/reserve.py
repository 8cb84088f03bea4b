"""Nobody is invisible load: the reserve for homes outside every released total.

The coordinator sees only the totals of released groups.  A registered home that is in none of
them with this round's report (absent, excluded, refused, late; and a *carried* member, counted
with an earlier report but given no adjustment) still draws what it likes within its contract,
so the adjustment keeps room for it: its **cap per frame**, the circuit's rated power times the
frame's length (Wh, rounded up).  ``reserve_wh`` is the sum of those caps per frame; the solver
plans the released groups against ``capacity - reserve`` (never below 0), so the grid stays
under capacity whatever the reserved homes draw within their contracts (docs/adjustment.md,
"Reserve").

The homes and their ratings come from the coordinator's home registry (``--homes``: JSON
``{"homes": {"<home id>": {"rated_w": 6000}, ...}}``, ``rated_w`` optional), read at start;
every home the round knows of besides (its reports, its late homes, the members and carried
reports of earlier groups) counts too, at ``--rated-w`` (default ``DEFAULT_RATED_W``) unless
the registry rates it.  Pure: no I/O but ``HomeCaps.load``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hemsfw import protocol

__all__ = ["DEFAULT_RATED_W", "MAX_RATED_W", "HomeCaps", "Reserve"]

#: a special-power circuit of 200 V x 30 A, the common rating of an EV charger or heat-pump
#: water heater circuit: the cap of a home the registry does not rate
DEFAULT_RATED_W = 6000
MAX_RATED_W = 1_000_000


@dataclass(frozen=True)
class Reserve:
    """The round's reserve: per frame (Wh) and the homes it holds, sorted."""

    wh: npt.NDArray[np.int64]
    homes: tuple[str, ...]


@dataclass(frozen=True)
class HomeCaps:
    """The registered homes and the rated power (W) of each one's controlled circuit."""

    rated_w: Mapping[str, int | None] = field(default_factory=dict)
    default_w: int = DEFAULT_RATED_W

    def cap_wh(self, home: str, frame_s: int) -> int:
        """The home's contracted cap per frame: rated power x frame length, in Wh (ceil)."""
        w = self.rated_w.get(home)
        return -(-(self.default_w if w is None else w) * frame_s // 3600)

    def reserve(self, known: Iterable[str], counted: Iterable[str], frames: int,
                frame_s: int) -> Reserve:
        """Every registered or ``known`` home that is not ``counted`` (in a released total)
        reserved at its cap, in every frame."""
        homes = sorted((set(self.rated_w) | set(known)) - set(counted))
        per_frame = sum(self.cap_wh(h, frame_s) for h in homes)
        return Reserve(np.full(frames, per_frame, dtype=np.int64), tuple(homes))

    @classmethod
    def parse(cls, obj: object, default_w: int = DEFAULT_RATED_W) -> HomeCaps:
        """A registry's JSON; ValueError(one line) if it is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("homes"), dict):
            raise ValueError('expected {"homes": {"<home id>": {"rated_w": W}, ...}}')
        out: dict[str, int | None] = {}
        for h, e in obj["homes"].items():
            if not isinstance(h, str) or not protocol.valid_id(h):
                raise ValueError(f"bad home id {h!r}")
            if not isinstance(e, dict):
                raise ValueError(f"{h}: expected an object")
            if "key" in e:  # a mask broker's registry: the coordinator must never hold keys
                raise ValueError(f"{h}: holds a mask broker key; give the coordinator a "
                                 "registry without keys")
            w = e.get("rated_w")
            if w is not None and (not isinstance(w, int) or isinstance(w, bool)
                                  or not 0 <= w <= MAX_RATED_W):
                raise ValueError(f"{h}: rated_w must be an integer 0..{MAX_RATED_W} (W)")
            out[h] = w
        return cls(out, default_w)

    @classmethod
    def load(cls, path: Path, default_w: int = DEFAULT_RATED_W) -> HomeCaps:
        """ValueError(one line) for a file that cannot be read or is not a registry."""
        try:
            obj = json.loads(path.read_text())
        except OSError as e:
            raise ValueError(f"{path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        try:
            return cls.parse(obj, default_w)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
