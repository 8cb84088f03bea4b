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

from typing import Protocol

from backend.common.clock import AcceleratedClock, SystemClock

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
