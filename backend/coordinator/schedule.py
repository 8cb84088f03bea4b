"""When each day's round(s) are announced and closed: pure functions of the operator's schedule.

A planned day ``D`` is a date in the deployment's time zone (an IANA name, e.g. ``Asia/Tokyo``).
Its frames start at local midnight of ``D``: frame ``k`` covers ``[start + k*frame_s, start +
(k+1)*frame_s)`` and ``frames * frame_s`` must be 24 h.  Each round of ``D`` is announced at a
local time of the day before (``days_ahead`` days before, default 1) and closes at its deadline,
a later local time of the same day (e.g. announce 12:00, deadline 13:00: the day-ahead market's
rhythm).  Several rounds per day are several (announce, deadline) pairs, in order.

Daylight saving time: the frames always cover 24 hours from local midnight, so on a day when the
clocks change the last hour of frames overlaps the next day's first hour (spring forward; the
homes follow the newer day there) or ends an hour before the next local midnight (fall back; the
homes follow their own plan for that hour).  Zones without DST (Japan, UTC) have neither.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["RoundTime", "Schedule", "ScheduleError", "parse_clock_time"]

DAY_S = 86_400


class ScheduleError(ValueError):
    """A schedule that cannot run; the message says what to change."""


@dataclass(frozen=True, order=True)
class RoundTime:
    """One scheduled round (epoch seconds)."""

    announce_at: int
    day: str
    round: int
    deadline: int
    start: int
    end: int


def parse_clock_time(text: str) -> dt.time:
    """``HH:MM`` (24 h) -> time; ScheduleError."""
    try:
        h, m = text.split(":")
        t = dt.time(int(h), int(m))
    except ValueError:
        raise ScheduleError(f"not a time of day HH:MM: {text!r}") from None
    return t


@dataclass(frozen=True)
class Schedule:
    timezone: str
    #: (announce, deadline) local times per round, on the day ``days_ahead`` before the day
    rounds: tuple[tuple[dt.time, dt.time], ...]
    frames: int = 96
    frame_s: int = 900
    days_ahead: int = 1

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"unknown time zone {self.timezone!r} (an IANA name such as "
                                "Asia/Tokyo or UTC)") from None
        if self.frames * self.frame_s != DAY_S:
            raise ScheduleError(f"frames x frame_s must be 24 h ({DAY_S} s), got "
                                f"{self.frames} x {self.frame_s}")
        if not self.rounds:
            raise ScheduleError("at least one round (announce, deadline) is needed")
        if not 0 <= self.days_ahead <= 7:
            raise ScheduleError(f"days_ahead must be 0-7, got {self.days_ahead}")
        prev: dt.time | None = None
        for i, (a, d) in enumerate(self.rounds, 1):
            if not a < d:
                raise ScheduleError(f"round {i}: the deadline {d:%H:%M} must come after the "
                                    f"announcement {a:%H:%M}")
            if prev is not None and not prev <= a:
                raise ScheduleError(f"round {i} is announced at {a:%H:%M}, before round {i - 1}"
                                    f"'s deadline {prev:%H:%M}")
            prev = d

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _at(self, day: dt.date, t: dt.time) -> int:
        return int(dt.datetime.combine(day, t, self.zone).timestamp())

    def rounds_of(self, day: dt.date) -> list[RoundTime]:
        """The rounds planned for ``day``, in order."""
        start = self._at(day, dt.time())
        before = day - dt.timedelta(days=self.days_ahead)
        out = []
        for i, (a, d) in enumerate(self.rounds, 1):
            ann, dl = self._at(before, a), self._at(before, d)
            if dl > start + DAY_S:
                raise ScheduleError(f"round {i} of {day} would close after the day ended")
            out.append(RoundTime(ann, day.isoformat(), i, dl, start, start + DAY_S))
        return out

    def local_date(self, epoch: float) -> dt.date:
        return dt.datetime.fromtimestamp(epoch, self.zone).date()

    def from_(self, epoch: float, back_days: int = 2) -> Iterator[RoundTime]:
        """Every round whose planned day ends after ``epoch`` or a little before (``back_days``
        days back: a restarted daemon finishes what is still open), in announcement order,
        for ever."""
        day = self.local_date(epoch) - dt.timedelta(days=back_days)
        while True:
            yield from self.rounds_of(day)
            day += dt.timedelta(days=1)


def current(schedule: Schedule, now: float) -> Sequence[RoundTime]:
    """The rounds whose planned day has not ended at ``now`` and whose announcement is due
    (announce_at <= now), in order: what a daemon starting at ``now`` must be running."""
    out = []
    for rt in schedule.from_(now):
        if rt.announce_at > now:
            break
        if rt.end > now:
            out.append(rt)
    return out
