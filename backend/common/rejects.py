"""Rejections: every message a service refuses is logged with its reason and counted.

One object per service; handlers call `reject(...)` and carry on serving valid traffic.
"""

from __future__ import annotations

import logging
from collections import Counter


class Rejections:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()

    def reject(self, kind: str, reason: str, topic: str = "", detail: str = "") -> None:
        self.counts[f"{kind}:{reason}"] += 1
        self.log.warning("rejected %s on %r: %s %s", kind, topic, reason, detail)

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
