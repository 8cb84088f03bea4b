"""The deployment's clock for the services: the host's (NTP-disciplined) clock, or the lab's
accelerated virtual one.  Both satisfy ``backend.coordinator.ports.Clock``: ``now()`` in epoch
seconds and ``sleep_until(t)``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["AcceleratedClock", "SystemClock"]


class SystemClock:
    """The host's clock (NTP-disciplined in production)."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        while True:
            left = t - time.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 60.0))  # re-read: the wall clock may step


@dataclass(frozen=True)
class AcceleratedClock:
    """The lab's virtual clock (the homes get the same anchor on ``hems/v1/lab/clock``):
    ``virtual + (time.time() - anchor) * speed``."""

    anchor: float
    virtual: float
    speed: float

    def now(self) -> float:
        return self.virtual + (time.time() - self.anchor) * self.speed

    async def sleep_until(self, t: float) -> None:
        while True:
            left = (t - self.now()) / self.speed
            if left <= 0:
                return
            await asyncio.sleep(min(left, 60.0))

    @classmethod
    def parse(cls, text: str) -> AcceleratedClock:
        """``ANCHOR,VIRTUAL,SPEED`` (the lab's --accelerate option); ValueError."""
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError("expected ANCHOR,VIRTUAL,SPEED")
        anchor, virtual, speed = (float(x) for x in parts)
        if not speed > 0:
            raise ValueError("SPEED must be > 0")
        return cls(anchor, virtual, speed)
