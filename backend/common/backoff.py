"""Reconnect delays shared by the services (STYLE.md: jittered backoff on reconnect)."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with "equal jitter": a delay in [d/2, d], d doubling up to cap."""

    def __init__(self, base: float = 0.5, cap: float = 30.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.rng = base, cap, rng
        self.attempts = 0

    def next(self) -> float:
        d = min(self.cap, self.base * 2.0 ** min(self.attempts, 32))
        self.attempts += 1
        return d / 2 + self.rng() * d / 2

    def reset(self) -> None:
        self.attempts = 0
