"""The round's lifecycle: its named phases and the one table of the transitions allowed.

A round (one day, one round number) is always in exactly one phase.  ``round.py`` drives it from
phase to phase with one coroutine; nothing else changes the phase, and every change is checked
against ``TRANSITIONS`` below (h11's style: the rules in one table, not in booleans spread over
a class).  The phase is derived, never journaled: a restarted coordinator replays its journal
through the same driver, which walks the same transitions again (docs/operations.md).

The rules
---------
SCHEDULED -> COLLECTING   the round record is journaled, then the announcement is published
COLLECTING -> CLOSED      the deadline passed, or every expected home reported
CLOSED -> SUMMING         the capacity for the day was taken and the homes were grouped
SUMMING -> SOLVING        every group is settled at every mask broker (released, or it left)
SOLVING -> SUMMING        overload remains and a group can be split: ask for the parts' sums
SOLVING -> PUBLISHING     the plan is final: every member of every group gets its adjustment
PUBLISHING -> SERVING     the MQTT broker acknowledged every adjustment
SERVING -> ENDED          the planned day is over (a one-shot round: its linger time is over);
                          until then a home that comes back gets its adjustment again
any phase but ENDED -> FAILED   the round cannot complete (the reason is kept); homes follow
                                their own plans
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["TRANSITIONS", "IllegalTransition", "Lifecycle", "Phase"]


class Phase(enum.Enum):
    SCHEDULED = "scheduled"
    COLLECTING = "collecting"
    CLOSED = "closed"
    SUMMING = "summing"
    SOLVING = "solving"
    PUBLISHING = "publishing"
    SERVING = "serving"
    ENDED = "ended"
    FAILED = "failed"


P = Phase
#: phase -> the phases it may go to (the module docstring says when)
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.SCHEDULED: frozenset({P.COLLECTING, P.FAILED}),
    P.COLLECTING: frozenset({P.CLOSED, P.FAILED}),
    P.CLOSED: frozenset({P.SUMMING, P.FAILED}),
    P.SUMMING: frozenset({P.SOLVING, P.FAILED}),
    P.SOLVING: frozenset({P.SUMMING, P.PUBLISHING, P.FAILED}),
    P.PUBLISHING: frozenset({P.SERVING, P.FAILED}),
    P.SERVING: frozenset({P.ENDED, P.FAILED}),
    P.ENDED: frozenset(),
    P.FAILED: frozenset(),
}
TERMINAL = frozenset(p for p, nxt in TRANSITIONS.items() if not nxt)
#: phases in which the round's adjustments exist (a home that reconnects gets its own again)
ADJUSTED = frozenset({P.SERVING, P.ENDED})


class IllegalTransition(Exception):
    """A transition the table does not allow: a bug in the driver, never an input's fault."""


@dataclass
class Lifecycle:
    """The current phase, when each phase was entered, and why a round failed."""

    phase: Phase = Phase.SCHEDULED
    #: (phase, clock time it was entered) in order
    history: list[tuple[Phase, float]] = field(default_factory=list)
    reason: str | None = None

    def to(self, phase: Phase, at: float, reason: str | None = None) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"{self.phase.value} -> {phase.value}")
        self.phase = phase
        self.history.append((phase, at))
        if phase is Phase.FAILED:
            self.reason = reason

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def adjusted(self) -> bool:
        return self.phase in ADJUSTED

    def entered(self, phase: Phase) -> float | None:
        """When ``phase`` was (last) entered, or None."""
        for p, at in reversed(self.history):
            if p is phase:
                return at
        return None
