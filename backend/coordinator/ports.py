"""What the round driver needs from the world, as small interfaces passed in (sans-I/O).

* ``Transport``: publish to the MQTT broker.  ``publish`` waits for the broker's PUBACK (the
  announcement, group requests: the driver waits on them); ``send`` queues a QoS 1 publish that
  goes out in batches (replies and adjustments, thousands at a time); ``flush`` waits until every
  queued one was acknowledged.  mqtt_adapter.py implements it over mosquitto; tests use a list.
* ``Clock``: the deployment's time in epoch seconds (the real clock, or the lab's accelerated
  virtual clock) and a way to sleep until a time on it.  Durations that only measure this
  process (timings) use ``time.monotonic`` directly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["AcceleratedClock", "Clock", "SystemClock", "Transport"]


class Transport(Protocol):
    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1, acknowledged by the broker (retried across reconnects); TimeoutError."""

    def send(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 publish (not retained); it goes out with others in a batch."""

    async def flush(self, timeout: float) -> None:
        """Until every queued publish was acknowledged; TimeoutError after ``timeout``."""


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds on the deployment's clock."""

    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (at once if it already is)."""


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
