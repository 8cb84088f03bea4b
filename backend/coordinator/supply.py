"""The grid's supply: the capacity profile each day's round must keep the load under.

A grid feed (``hems capacity``, or the OpenADR VEN: docs/grid-feed.md) publishes retained
profiles: ``hems/v1/capacity/<day>`` for one day, ``hems/v1/capacity`` as the default for any
day without its own.  ``SupplyBook`` keeps the latest of each as it arrives (the coordinator
re-reads capacity as the feed updates it); a round takes its day's profile when its collection
closes and journals it, so an update after that cannot change a decided round: it is logged and
counted, and applies to the next round.  With ``--capacity-file`` the book holds that one profile
for every day and ignores the topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hemsfw import protocol, protocol_svc

__all__ = ["Capacity", "SupplyBook", "capacity_topic", "parse_capacity", "valid_day"]

log = logging.getLogger("hems.coordinator")

_DEFAULT = ""  # the book's key of the profile without a day


@dataclass(frozen=True, eq=False)
class Capacity:
    """The supply profile for the day (Wh per frame) and an optional target profile."""

    capacity_wh: npt.NDArray[np.int64]
    target_wh: npt.NDArray[np.int64] | None

    def as_json(self) -> dict[str, Any]:
        return {"capacity_wh": self.capacity_wh.tolist(),
                "target_wh": None if self.target_wh is None else self.target_wh.tolist()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Capacity:
        tgt = obj.get("target_wh")
        return cls(np.array(obj["capacity_wh"], dtype=np.int64),
                   None if tgt is None else np.array(tgt, dtype=np.int64))

    def same(self, other: Capacity) -> bool:
        return self.as_json() == other.as_json()


def valid_day(day: str) -> bool:
    """An ISO date YYYY-MM-DD (the protocol's day)."""
    if len(day) != 10 or day[4] != "-" or day[7] != "-":
        return False
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        return False
    return True


def capacity_topic(day: str | None = None) -> str:
    """``hems/v1/capacity`` (the default profile) or ``hems/v1/capacity/<day>``."""
    topic: str = protocol_svc.t_capacity() if day is None else protocol_svc.t_day_capacity(day)
    return topic


def parse_capacity(payload: bytes, frames: int) -> Capacity:
    """A capacity message (protocol_svc.make_capacity) for ``frames`` frames, else
    ValueError(reason) (the parser's reasons, or ``frames_mismatch``)."""
    n, cap, tgt = protocol_svc.parse_capacity(protocol.decode(payload))
    if n != frames:
        raise ValueError("frames_mismatch")
    return Capacity(np.asarray(cap, dtype=np.int64),
                    None if tgt is None else np.asarray(tgt, dtype=np.int64))


class SupplyBook:
    """The latest capacity message per day and the default one (see the module docstring)."""

    def __init__(self, fixed: bytes | None = None, frames: int | None = None) -> None:
        """``fixed``: a capacity message used for every day (--capacity-file); topics ignored.
        ``frames``: the deployment's frames per day; a profile of another length is refused
        (``frames_mismatch``) when it arrives."""
        self.fixed = fixed
        self.frames = frames
        #: capacity messages accepted (a repeat of the latest counts too)
        self.accepted = 0
        self._latest: dict[str, bytes] = {}
        #: (day or None, when) of every accepted update: the record shows late ones
        self.updates: list[tuple[str | None, float]] = []
        self._changed = asyncio.Event()

    def to_json(self) -> dict[str, str]:
        """The latest messages by day ("" = the default), for the state dir."""
        return {k: v.decode() for k, v in self._latest.items()}

    def load(self, obj: object) -> None:
        """Take back what ``to_json`` saved (a restart while the grid feed is down)."""
        if not isinstance(obj, dict):
            return
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, str) and (k == _DEFAULT or valid_day(k)):
                self._latest[k] = v.encode()

    def offer(self, topic: str, payload: bytes, now: float) -> str | None:
        """One message on a capacity topic; the rejection reason, or None when kept."""
        head = protocol_svc.t_capacity()
        if topic == head:
            day = None
        elif topic.startswith(head + "/"):
            day = topic[len(head) + 1:]
            if not valid_day(day):
                return "bad_day"
        else:
            return "bad_topic"
        if self.fixed is not None:
            log.info("capacity on %s ignored: --capacity-file given", topic)
            return None
        try:
            obj = protocol.decode(payload)
            if day is None:
                n, _, _ = protocol_svc.parse_capacity(obj)
            else:  # the day's own profile names its day (protocol_svc.make_day_capacity)
                _, n, _, _ = protocol_svc.parse_day_capacity(obj, day)
        except ValueError as e:
            return str(e)
        if self.frames is not None and n != self.frames:
            return "frames_mismatch"
        self.accepted += 1
        key = day or _DEFAULT
        if self._latest.get(key) != payload:
            self._latest[key] = payload
            self.updates.append((day, now))
            log.info("capacity profile received for %s", day or "every day (the default)")
            self._changed.set()
            self._changed = asyncio.Event()
        return None

    def for_day(self, day: str, frames: int) -> tuple[Capacity | None, str | None]:
        """(the profile a round of ``day`` with ``frames`` frames uses, None) or (None, why not):
        the day's own profile, else the default; one of the wrong length does not count."""
        why = None
        sources = [self.fixed] if self.fixed is not None else [
            self._latest.get(day), self._latest.get(_DEFAULT)]
        for raw in sources:
            if raw is None:
                continue
            try:
                return parse_capacity(raw, frames), None
            except ValueError as e:
                why = str(e)
        return None, why

    async def wait(self, day: str, frames: int, timeout: float) -> Capacity | None:
        """The day's profile, waiting up to ``timeout`` seconds for one to arrive."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            cap, _ = self.for_day(day, frames)
            left = end - loop.time()
            if cap is not None or left <= 0:
                return cap
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def late_updates(self, day: str, after: float) -> int:
        """Updates that could have changed ``day``'s profile, received after ``after``."""
        return sum(1 for d, at in self.updates if (d is None or d == day) and at > after)
