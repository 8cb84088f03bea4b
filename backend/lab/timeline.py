"""The lab's days on its accelerated clock: when each round is announced and closed, when a day
starts and ends, when the lab looks at the homes, when an absent home goes off line.

Pure: a ``Timeline`` maps the lab's day numbers (1..N) to virtual epoch seconds.  The lab's clock
runs ``speed`` virtual seconds per real second (a frame of ``frame_s`` virtual seconds takes
``frame_real_s`` real ones); the homes get it on ``hems/v1/lab/clock`` and the coordinator as
``--accelerate``, so everyone agrees on the time.  Every round is day-ahead, as the service runs
it in production: day ``d``'s round is announced at ``ANNOUNCE`` of day ``d - 1`` and closes at
``DEADLINE``; the rest of day ``d - 1`` is for the group sums, the adjustment and the delivery.
The run begins a minute of virtual time before day 1's announcement and ends when day N ends.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["ANNOUNCE", "DAY_S", "DEADLINE", "Timeline"]

DAY_S = 86_400
#: local (UTC) times of day d - 1, as fractions of the day: the announcement and the deadline
ANNOUNCE = 0.5      # 12:00
DEADLINE = 0.75     # 18:00: a quarter of a day to report, a quarter to adjust and deliver
#: when an absent home's Wi-Fi goes down before the announcement, and comes back after the
#: deadline (fractions of a day)
OFFLINE_MARGIN = 1 / 48   # 30 min
#: when the lab reads what each home holds for its day (after midnight, before the next
#: announcement)
SNAPSHOT = 1 / 24         # 01:00 of the day itself


@dataclass(frozen=True)
class Timeline:
    first_day: dt.date  # day 1
    days: int
    frame_real_s: float
    frame_s: int

    @property
    def speed(self) -> float:
        """Virtual seconds per real second."""
        return self.frame_s / self.frame_real_s

    def date(self, d: int) -> dt.date:
        return self.first_day + dt.timedelta(days=d - 1)

    def start(self, d: int) -> int:
        """Epoch of day d's frame 0 (UTC midnight)."""
        return int(dt.datetime.combine(self.date(d), dt.time(), dt.UTC).timestamp())

    def end(self, d: int) -> int:
        return self.start(d) + DAY_S

    def announce(self, d: int) -> int:
        """Day d's round is announced (on day d - 1)."""
        return self.start(d) - DAY_S + int(ANNOUNCE * DAY_S)

    def deadline(self, d: int) -> int:
        return self.start(d) - DAY_S + int(DEADLINE * DAY_S)

    def offline(self, d: int) -> tuple[int, int]:
        """An absent home of day d has no network in [from, to): it misses day d's round."""
        m = int(OFFLINE_MARGIN * DAY_S)
        return self.announce(d) - m, self.deadline(d) + m

    def snapshot(self, d: int) -> int:
        return self.start(d) + int(SNAPSHOT * DAY_S)

    @property
    def begin(self) -> int:
        """Virtual time when the run begins: a minute before day 1's announcement."""
        return self.announce(1) - 60

    @property
    def finish(self) -> int:
        return self.end(self.days)

    def real_s(self, virtual_s: float) -> float:
        return virtual_s / self.speed

    @staticmethod
    def hhmm(fraction: float) -> str:
        m = round(fraction * 24 * 60)
        return f"{m // 60:02d}:{m % 60:02d}"
