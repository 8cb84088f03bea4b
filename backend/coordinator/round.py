"""One round, driven through its lifecycle (lifecycle.py) by one coroutine over injected ports.

``Round.run()`` walks the phases SCHEDULED -> COLLECTING -> CLOSED -> SUMMING <-> SOLVING ->
PUBLISHING -> SERVING -> ENDED (or FAILED), one step function per phase (``_STEPS``).  Every
decision is taken by the pure modules: intake.py (which plan reports count), grouping.py (which
homes form a group), sums.py (what to ask the mask brokers and what their answers mean), adjust/
(the moves).  The world comes in through ports (ports.py): a ``Transport`` to publish, a ``Clock``,
the ``SupplyBook`` (capacity), and the ``Journal``; so a test can step a round with a list as the
network and the mask broker's own core as the other side (tests/test_round_lifecycle.py).

Inputs arrive through ``take_plan``, ``take_groupsum`` and ``take_status`` (the MQTT adapter calls
them for every message, on the same event loop, in every phase: late reports are still answered
while the round is being solved).  Replies are appended to a list the adapter sends once the
journal covering them is durable.

Crashes (docs/reliability.md).  With a journal, every input of the round is written before
anything that depends on it leaves the process: the round record (with its deadline) before the
announcement is published, a report before its reply and its PUBACK, each group request before
it is published, each answer and each solver result before the next request or the adjustments.
A round restarted with the same journal replays it through the same steps: it re-announces the
*same* deadline, keeps the accepted reports, re-asks the very groups it asked before under the
same request ids (answers already journaled are not asked again), reuses the solver's results, and
re-publishes the adjustments (a home ignores an identical one).  A request not answered within
``reask_s`` is published again; after every reconnect the announcement (of the newest round
only: the retained topic holds one), the open requests and the adjustments are re-published.
All of that is idempotent at the receiver.

Accepted homes that cannot be counted (exclusions, sums.py) get a second reply, ``rejected`` with
the exclusion reason, and no adjustment: they follow their own plan.  record.py turns a round
into its result JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from backend.common import flp_batch
from backend.common.rejects import Rejections
from backend.coordinator import proofs
from backend.coordinator.adjust import Policy, Problem, Result, SolverName, solve
from backend.coordinator.codec import (
    answers_from_json,
    answers_to_json,
    fingerprint,
    result_from_json,
    result_to_json,
)
from backend.coordinator.grouping import Group, refine, stable_grouping
from backend.coordinator.intake import Intake, IntakeFailed, RoundConfig
from backend.coordinator.journal import Journal
from backend.coordinator.lifecycle import Lifecycle, Phase
from backend.coordinator.memory import Carried, Memory
from backend.coordinator.ports import Clock, Transport
from backend.coordinator.reserve import HomeCaps, Reserve
from backend.coordinator.sums import (
    Answer,
    Exclusion,
    SumLedger,
    parse_answer,
    settle,
    split_mismatch,
)
from backend.coordinator.supply import Capacity, SupplyBook
from backend.mask_broker.release import Partition
from hemsfw import protocol, protocol_svc

__all__ = ["MAX_REGROUP", "Round", "RoundFailed", "RoundSettings"]

log = logging.getLogger("hems.coordinator")

MAX_REGROUP = 32  # refinement rounds (each at least doubles a group count; 2^32 >> any N)
PUBLISH_TIMEOUT_S = 60.0
GRACE_STEP_S = 1.0  # one missing-members retry per second of missing_grace_s

Replies = list[tuple[str, bytes]]


_ADJUST = protocol.t_adjust("")  # the adjustment topic's prefix: home ids follow it


class RoundFailed(Exception):
    """The round could not complete; the message says why (for the operator)."""


@dataclass(frozen=True)
class RoundSettings:
    """What one round is and how it is run (the daemon builds these from its schedule)."""

    day: str
    round: int
    frames: int
    frame_s: int
    quantum_wh: int
    start: int
    brokers: tuple[str, ...]
    k: int
    #: the collection deadline (clock epoch s); None: ``collect_s`` after the announcement
    deadline: int | None = None
    collect_s: float = 10.0
    #: close collection early once this many homes were accepted
    expected_homes: int | None = None
    solver: SolverName = "portfolio"
    window: Literal["defer", "symmetric"] = "defer"
    #: wall-clock budget of all the round's solves together (every regrouping re-solve shares
    #: one deadline, set when the first solve starts)
    time_limit_s: float = 10.0
    target_weight: float = 0.0
    capacity_wait_s: float = 10.0
    answer_timeout_s: float = 10.0
    missing_grace_s: float = 1.0
    reask_s: float = 5.0
    #: SERVING lasts until this clock time (the daemon: the planned day's end) ...
    serve_until: float | None = None
    #: ... or, when None, this many seconds after the adjustments were acknowledged
    linger_s: float = 0.0
    #: fault injection: "adjust:N" stops (forever) after N adjustments were sent; "<day>:<phase>"
    #: stops once the round of that day is in that phase
    pause_at: str | None = None
    #: the registered homes and their circuits' ratings: the reserve (reserve.py), and the
    #: bound of the range proofs
    caps: HomeCaps = field(default_factory=HomeCaps)
    #: verify every accepted home's range proof (its plan in [0, its cap per frame]) with the
    #: mask brokers before grouping (docs/integrity.md)
    verify_proofs: bool = False

    def round_config(self, deadline: int) -> RoundConfig:
        return RoundConfig(self.day, self.round, self.frames, self.frame_s, self.quantum_wh,
                           self.start, deadline, self.brokers)

    @property
    def end(self) -> int:
        """End of the planned day (epoch s): adjustments expire then."""
        return self.start + self.frames * self.frame_s


@dataclass(frozen=True)
class _Ask:
    broker: str
    req: str
    entries: list[list[Any]]  # [[group id, members, checksum]]


class IntakePool(Protocol):
    """Other processes that take plan reports for the round (``--workers``, workers.py):
    started before the announcement, merged into the round's intake at the close."""

    def held(self) -> int:
        """Reports they hold now."""

    def homes(self) -> Sequence[str]:
        """The distinct homes they hold, in arrival order (only ever appended to): a report
        redelivered to two processes is one home (``Round.reports_held``)."""

    @property
    def up(self) -> bool:
        """Every one of them is subscribed."""

    async def start(self, cfg: RoundConfig, on_count: Callable[[], None]) -> None:
        """Start and wait until every one is subscribed; IntakeFailed."""

    async def merge(self, intake: Intake) -> tuple[int, int]:
        """Close them and add their rows to ``intake``; IntakeFailed."""

    async def stop(self) -> None: ...


class Round:
    """One round (see the module docstring).  Everything public is read by record.py, the
    metrics and the status file; only the driver changes it."""

    def __init__(self, s: RoundSettings, out: Transport, clock: Clock, supply: SupplyBook,
                 journal: Journal | None = None, pool: IntakePool | None = None,
                 memory: Memory | None = None) -> None:
        """``memory``: what earlier rounds left (memory.py); None: nothing (a first round)."""
        if s.k < 2:
            raise RoundFailed("k must be >= 2")
        self.s = s
        self.out = out
        self.clock = clock
        self.supply = supply
        self.journal = journal
        self.pool = pool
        self.memory = memory or Memory(s.k, s.brokers)
        #: the memory as this round uses it (journaled as the ``basis`` record at close)
        self.basis: Memory | None = None
        self.life = Lifecycle()
        #: called after every phase change (the daemon's status file)
        self.life_changed: Callable[[Round], None] | None = None
        self.rejections = Rejections(log)
        self.cfg: RoundConfig = s.round_config(0)  # the deadline is set when announced
        self.intake: Intake | None = None
        self.ledger: SumLedger | None = None
        self.excluded: dict[str, Exclusion] = {}
        self.capacity: Capacity | None = None
        self.capacity_taken_at: float | None = None
        self.groups: list[Group] = []
        self.solution: Result | None = None
        #: homes outside every released total, at their caps (reserve.py), as last solved
        self.reserve: Reserve | None = None
        self.regroup_rounds = 0
        self.adjusted_homes = 0
        self.timings: dict[str, float] = {"collect_s": 0.0, "group_s": 0.0, "sums_s": 0.0,
                                          "solve_s": 0.0, "publish_s": 0.0}
        self.restarts = 0
        self.announced_at: float | None = None
        self.finished_at: float | None = None
        self.announced = False  # published by this process (re-published after a reconnect)
        self.merged = pool is None  # the pool's rows are in the round's intake
        # reports_held before the merge: the distinct homes of this process and the pool
        self._held: set[str] = set()
        self._held_seen = (0, 0)  # how far this process's keys and the pool's homes were read
        self.pool_stopped = False
        # journal state, for the replay
        self._journaled_round = False
        self._journaled_done = False
        self._failed_reason: str | None = None
        self._asks: dict[int, _Ask] = {}
        self._answers: dict[tuple[str, str], dict[str, Answer]] = {}
        self._solves: dict[int, dict[str, Any]] = {}
        self._nsolve = 0
        self._solve_deadline: float | None = None  # time.monotonic(): the round's solve budget
        self._nreq = 0
        self._enough = asyncio.Event()
        self._pending: dict[tuple[str, str], asyncio.Future[dict[str, Answer]]] = {}
        self._open: dict[tuple[str, str], tuple[str, bytes]] = {}  # requests awaiting answers
        self._replied: set[str] = set()
        self._refused_logged = 0
        #: range proofs: the verdict once taken (journaled), the brokers' pending answers
        self._proofs_failed: dict[str, str] | None = None
        self._flp_pending: dict[tuple[str, str], asyncio.Future[dict[str, bytes | str]]] = {}
        self._adjustments: Replies | None = None
        self._adjustment_of: dict[str, bytes] = {}  # home -> its adjustment's payload
        self._restore()

    # ------------------------------------------------------------ the public view

    @property
    def phase(self) -> Phase:
        return self.life.phase

    @property
    def key(self) -> tuple[str, int]:
        return self.s.day, self.s.round

    def reports_held(self) -> int:
        """Reports accepted so far, by this process and (until merged) by its workers."""
        n = self.intake.accepted if self.intake is not None else 0
        if self.merged or self.pool is None:
            return n
        # Distinct homes: a report redelivered to another process (a broker redelivers what a
        # lost consumer had not acknowledged, to whichever consumer is there) is one home, and
        # counting it twice would close collection before the last homes are in.
        mine = self.intake.state.sink.store.keys if self.intake is not None else []
        theirs = self.pool.homes()
        i, j = self._held_seen
        self._held.update(mine[i:])
        self._held.update(theirs[j:])
        self._held_seen = (len(mine), len(theirs))
        return len(self._held)

    @property
    def late_homes(self) -> set[str]:
        return self.intake.late_homes if self.intake is not None else set()

    def check_enough(self) -> None:
        """Close collection early once the expected homes are in (workers call it too)."""
        n = self.s.expected_homes
        if n is not None and self.reports_held() >= n:
            self._enough.set()

    # ------------------------------------------------------------ the journal

    def _round_record(self) -> dict[str, Any]:
        c, s = self.cfg, self.s
        return {"day": c.day, "round": c.round, "frames": c.frames, "frame_s": c.frame_s,
                "quantum_wh": c.quantum_wh, "start": c.start, "deadline": c.deadline,
                "brokers": list(c.brokers), "k": s.k, "solver": s.solver, "window": s.window}

    def _append(self, kind: str, flush: bool = True, **data: Any) -> None:
        if self.journal is not None:
            self.journal.append(kind, flush, **data)

    async def commit(self) -> None:
        """fsync what was journaled so far (group commit; a no-op without a journal)."""
        if self.journal is not None:
            await self.journal.commit()

    def _restore(self) -> None:
        """Load the journal (if any) and stand where the previous process stood."""
        j = self.journal
        if j is None:
            return
        try:
            records = j.load()
        except OSError as e:
            raise RoundFailed(f"journal {j.path}: {e}") from None
        for rec in records:
            try:
                self._replay(rec)
            except (KeyError, TypeError, ValueError) as e:
                raise RoundFailed(
                    f"journal {j.path}: cannot use a {rec.get('kind')!r} record ({e!r}); move "
                    "the file away to start the round afresh") from None
        if records:
            log.info("resuming round %s/%d from %s: %d reports%s, %d requests, %d answers, "
                     "%d solves%s (start %d)", self.s.day, self.s.round, j.path,
                     self.intake.accepted if self.intake else 0,
                     " (closed)" if self.intake and self.intake.closed else "",
                     len(self._asks), len(self._answers), len(self._solves),
                     ", adjustments sent" if self._journaled_done else "", self.restarts + 1)

    def _replay(self, rec: dict[str, Any]) -> None:
        kind = rec["kind"]
        if kind == "round":
            self.cfg = replace(self.cfg, deadline=int(rec["deadline"]))
            diff = {k: (rec.get(k), v) for k, v in self._round_record().items()
                    if rec.get(k) != v}
            if diff:
                raise RoundFailed(
                    f"the journal holds this round with other parameters {diff} (journal, "
                    "arguments): run with the same arguments or another --state-dir")
            self._open_intake()
            self.announced_at = float(rec.get("at", 0.0)) or None
            self._journaled_round = True
            return
        if self.intake is None:
            raise ValueError("record before the round record")
        if self.intake.replay(rec):
            return
        if kind == "start":
            self.restarts += 1
        elif kind in ("capacity", "capacity_seen"):
            # capacity_seen: written by coordinators before the supply book; same meaning now
            self.capacity = Capacity.from_json(rec)
            self.capacity_taken_at = float(rec.get("at", 0.0))
        elif kind == "ask":
            self._asks[int(rec["seq"])] = _Ask(str(rec["broker"]), str(rec["req"]),
                                               list(rec["groups"]))
        elif kind == "answer":
            results = {} if rec.get("timeout") else answers_from_json(rec["results"])
            self._answers[(str(rec["broker"]), str(rec["req"]))] = results
        elif kind == "solve":
            self._solves[int(rec["i"])] = rec
        elif kind == "done":
            self._journaled_done = True
            self.finished_at = float(rec.get("at", 0.0)) or None
        elif kind == "failed":
            self._failed_reason = str(rec.get("reason", "failed"))
        elif kind == "basis":
            self.basis = Memory.from_json(rec, self.s.k, self.cfg.brokers)
        elif kind == "proofs":
            self._proofs_failed = {str(h): str(w) for h, w in rec["failed"].items()}
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _basis_json(self, m: Memory, intake: Intake) -> dict[str, Any]:
        """The part of the memory this round uses: the earlier grouping, the carried reports of
        its members and of this round's reporters, the brokers' partitions."""
        wanted = m.answered() | set(intake.state.reports)
        return {"k": m.k, "brokers": list(m.brokers),
                "partitions": {b: p.snapshot() for b, p in m.partitions.items()},
                "carried": {h: c.as_json() for h, c in m.carried.items() if h in wanted},
                "groups": [[g, ms] for g, ms in m.groups], "last": list(m.last)}

    def settled(self) -> tuple[dict[str, Partition], list[tuple[str, Carried]],
                               list[tuple[str, list[str]]]]:
        """What the memory absorbs once the sums are in and the groups final: the brokers'
        partitions, the reports counted (each member's, this round's or carried), the final
        groups."""
        ledger, intake = self.ledger, self.intake
        assert ledger is not None and intake is not None
        reports = intake.state.reports
        counted: list[tuple[str, Carried]] = []
        for g in self.groups:
            for h in ledger.current(g):
                r = reports[h]
                counted.append((h, Carried(r.report_id, r.mag, r.masked.astype("<u4").tobytes())))
            counted += [(h, ledger.carried[h]) for h in ledger.carried_in(g)]
        final = [(g.id, sorted(g.members)) for g in self.groups]
        members = {h for _, ms in final for h in ms}
        kept = [(g, ms) for g, ms in self.basis.groups if members.isdisjoint(ms)] \
            if self.basis is not None else []
        return dict(ledger.partitions), counted, [*final, *kept]

    def _open_intake(self) -> None:
        rows = max(16, self.s.expected_homes or 1024)
        self.intake = Intake(self.cfg, self.journal, self.rejections, rows)

    # ------------------------------------------------------------ the driver

    async def run(self) -> None:
        """Drive the round to ENDED; RoundFailed (after FAILED is reached and journaled) when it
        cannot complete."""
        try:
            while not self.life.terminal:
                await _STEPS[self.life.phase](self)
                await self._pause_here()
        except IntakeFailed as e:
            self._fail(str(e))
            raise RoundFailed(str(e)) from None
        except RoundFailed as e:
            self._fail(str(e))
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: still a clear record
            log.exception("internal error in round %s/%d", self.s.day, self.s.round)
            self._fail(f"internal error: {e!r}")
            raise RoundFailed(f"internal error: {e!r}") from e
        finally:
            if self.pool is not None and not self.pool_stopped:
                self.pool_stopped = True
                await self.pool.stop()
        if self.life.phase is Phase.FAILED:
            raise RoundFailed(self.life.reason or "failed")

    async def _pause_here(self) -> None:
        """Fault injection (tests, the lab's --kill-coordinator): ``pause_at = "<day>:<phase>"``
        stops this process in that phase for good, so a kill -9 lands exactly there."""
        if self.s.pause_at == f"{self.s.day}:{self.phase.value}":
            log.warning("pausing in %s (--debug-pause-at)", self.s.pause_at)
            await asyncio.Event().wait()

    def _fail(self, reason: str) -> None:
        if self.life.terminal:
            return
        self.life.to(Phase.FAILED, self.clock.now(), reason)
        if self._failed_reason is None and self._journaled_round:
            self._failed_reason = reason
            self._append("failed", reason=reason, at=self.clock.now())
            if self.journal is not None:
                with contextlib.suppress(OSError):
                    self.journal.sync()
        log.error("round %s/%d failed: %s", self.s.day, self.s.round, reason)
        self._changed()

    def expire(self, reason: str) -> None:
        """End a round that will not run (its day is over, or it was missed): FAILED with
        ``reason``, journaled, without publishing anything."""
        self._fail(self._failed_reason or reason)

    def _to(self, phase: Phase) -> None:
        self.life.to(phase, self.clock.now())
        log.debug("round %s/%d: %s", self.s.day, self.s.round, phase.value)
        self._changed()

    def _changed(self) -> None:
        if self.life_changed is not None:
            self.life_changed(self)

    async def _scheduled(self) -> None:
        """Announce: the round record (with its deadline) is durable before it is published."""
        if self._failed_reason is not None:
            raise RoundFailed(self._failed_reason)  # a journaled failure is final
        s = self.s
        if not self._journaled_round:
            now = self.clock.now()
            deadline = s.deadline if s.deadline is not None else math.ceil(now + s.collect_s)
            self.cfg = replace(self.cfg, deadline=deadline)
            try:
                self.cfg.validate()
            except ValueError as e:
                raise RoundFailed(f"invalid round parameters: {e}") from None
            self._open_intake()
            self.announced_at = now
            self._append("round", **self._round_record(), at=now)
            self._journaled_round = True
        self._append("start", pid=os.getpid(), at=self.clock.now())
        await self.commit()
        if self.pool is not None:  # before the announcement: every worker subscribed
            await self.pool.start(self.cfg, self.check_enough)
        if self._journaled_done:  # adjusted before the restart: serve, nothing to announce
            self._to(Phase.COLLECTING)
            return
        await self._publish(protocol.t_round(), protocol.encode(self.cfg.announcement()),
                            retain=True)
        self.announced = True
        c = self.cfg
        log.info("round %s/%d announced: %d frames of %ds, quantum %d Wh, deadline %d, "
                 "brokers %s", c.day, c.round, c.frames, c.frame_s, c.quantum_wh, c.deadline,
                 ",".join(c.brokers))
        self.check_enough()
        self._to(Phase.COLLECTING)

    async def _collecting(self) -> None:
        intake = self.intake
        assert intake is not None
        t0 = time.monotonic()
        if not intake.closed:
            await self._until_closed()
            intake.close(self.clock.now(), self.reports_held())
            await self.commit()
        if not self.merged and self.pool is not None:
            await self.pool.merge(intake)
            self.merged = True
            self.pool_stopped = True
            await self.pool.stop()
        self.timings["collect_s"] = time.monotonic() - t0
        log.info("collection closed: %d homes accepted, %d rejections", intake.accepted,
                 self.rejections.total())
        self._to(Phase.CLOSED)

    async def _until_closed(self) -> None:
        """Until the deadline on the deployment's clock, or every expected home is in."""
        deadline = asyncio.ensure_future(self.clock.sleep_until(self.cfg.deadline))
        enough = asyncio.ensure_future(self._enough.wait())
        try:
            await asyncio.wait((deadline, enough), return_when=asyncio.FIRST_COMPLETED)
        finally:
            deadline.cancel()
            enough.cancel()

    async def _closed(self) -> None:
        """Take the day's capacity (journaled: it cannot change afterwards) and group."""
        intake = self.intake
        assert intake is not None
        if self.capacity is None:
            cap = await self.supply.wait(self.s.day, self.s.frames, self.s.capacity_wait_s)
            if cap is None:
                _, why = self.supply.for_day(self.s.day, self.s.frames)
                raise RoundFailed(
                    f"no capacity profile for {self.s.day}: none on "
                    f"{protocol_svc.t_capacity()} or {protocol_svc.t_day_capacity(self.s.day)} "
                    f"(retained, {self.s.frames} frames)"
                    f" within {self.s.capacity_wait_s}s and no --capacity-file"
                    + (f" ({why})" if why else ""))
            self.capacity = cap
            self.capacity_taken_at = self.clock.now()
            self._append("capacity", **cap.as_json(), at=self.capacity_taken_at)
        if self.basis is None:  # what the earlier rounds left (memory.py), pinned for replay
            rec = self._basis_json(self.memory, intake)
            self.basis = Memory.from_json(rec, self.s.k, self.cfg.brokers)
            self._append("basis", **rec)
        basis = self.basis
        t = time.monotonic()
        state = intake.state
        arranged = state.arranged()  # split order: every group below is a contiguous slice
        homes = arranged.keys
        mags = state.magnifications()
        failed = await self._verify_proofs(intake)
        for h, why in failed.items():  # excluded alone, before any group is formed
            self.excluded[h] = Exclusion(h, why, "", None, "range proof (docs/integrity.md)")
            mags.pop(h, None)
        carried_mags = {h: c.mag for h, c in basis.carried.items()}
        groups, carried, waiting, holes = stable_grouping(
            mags, basis.cells(), carried_mags, self.s.k, prefix=f"r{self.s.round}g")
        if holes:
            log.warning("%d member(s) of earlier groups have neither a report nor a carried "
                        "one: their groups cannot be answered (%s)", len(holes),
                        ", ".join(holes[:5]))
        retries = max(1, math.ceil(self.s.missing_grace_s / GRACE_STEP_S))
        sink = state.sink
        ledger = SumLedger(self.cfg.brokers, self.s.k, homes, arranged.block,
                           dict(zip(sink.store.keys, sink.report_ids, strict=True)),
                           retries, partitions=basis.partitions, carried=basis.carried)
        for h in sorted(carried):
            ledger.carry(h)
        for h in waiting:  # new homes become a new atom only together with k - 1 others
            self.excluded[h] = Exclusion(h, "too_few_homes", "", None,
                                         f"{len(waiting)} new home(s) < k={self.s.k}")
        ok = []
        for g in groups:  # an earlier atom with a member missing: the brokers would refuse
            why = next((r for b in self.cfg.brokers
                        if (r := ledger.partitions[b].check(list(g.members))) is not None), None)
            if why is None:
                ok.append(g)
                continue
            for h in ledger.current(g):
                self.excluded[h] = Exclusion(h, "atom_incomplete", g.id, None, why)
        if not ok:
            self._reply_excluded()
            await self._drain(PUBLISH_TIMEOUT_S)
            raise RoundFailed(f"only {len(homes)} home(s) accepted: fewer than k={self.s.k}, "
                              "no group can be formed" if len(homes) < self.s.k else
                              f"{len(homes)} homes accepted, but no group can be formed "
                              "(see excluded in the result)")
        self.ledger = ledger
        self.groups = ok
        self.timings["group_s"] = time.monotonic() - t
        self._to(Phase.SUMMING)

    async def _summing(self) -> None:
        ledger = self.ledger
        assert ledger is not None
        first = self.solution is None
        groups = await self._settle(ledger, self.groups)
        self.excluded.update(ledger.excluded)
        reports = self.intake.state.reports if self.intake is not None else {}
        for g in groups:  # a broker lacked their mask: counted with their previous report
            for h in ledger.carried_in(g):
                if h in reports and h not in self.excluded:
                    self.excluded[h] = Exclusion(h, "counted_with_previous_report", g.id, None,
                                                 "follows its own plan this round")
        self._reply_excluded()
        if not groups:
            raise RoundFailed(
                "no group total could be obtained from the mask brokers (see refused_groups "
                "and excluded in the result)" if first else "no group left after regrouping")
        why = None if first else split_mismatch(ledger, groups)
        if why is not None:
            raise RoundFailed(why)
        self.groups = groups
        self._to(Phase.SOLVING)

    async def _solving(self) -> None:
        ledger, capacity = self.ledger, self.capacity
        assert ledger is not None and capacity is not None
        s = self.s
        policy = Policy(window=s.window, time_limit_s=s.time_limit_s,
                        target=capacity.target_wh,
                        target_weight=s.target_weight if capacity.target_wh is not None else 0.0)
        problem = self._problem(ledger, self.groups, capacity, policy)
        result = await self._solve(problem)
        self.solution = result
        log.info("solve %d (%s, %d groups): overload %d -> %d Wh after moves, %d Wh curtailed "
                 "(reserve %d Wh per frame for %d home(s) outside every total)",
                 self.regroup_rounds, result.solver, len(self.groups), result.overload_before_wh,
                 result.overload_after_wh, result.curtailed_wh,
                 int(self.reserve.wh.max(initial=0)) if self.reserve else 0,
                 len(self.reserve.homes) if self.reserve else 0)
        if result.overload_after_wh > 0 and self.regroup_rounds < MAX_REGROUP:
            finer = refine(self.groups, result, s.k, problem, frozen=ledger.frozen)
            if finer is not None:
                self.regroup_rounds += 1
                self.groups = finer
                self._to(Phase.SUMMING)
                return
            log.info("no group can be split further: curtailment covers the rest")
        self._to(Phase.PUBLISHING)

    async def _publishing(self) -> None:
        t = time.monotonic()
        result = self.solution
        assert result is not None
        await self.commit()  # every input of the decision is durable before it goes out
        await self._send_adjustments(self.groups, result)
        self.timings["publish_s"] = time.monotonic() - t
        if not self._journaled_done:
            self._journaled_done = True
            self.finished_at = self.clock.now()
            self._append("done", at=self.finished_at, adjusted=self.adjusted_homes)
        await self._drain(PUBLISH_TIMEOUT_S)
        await self._publish(*self._outcome())
        self._to(Phase.SERVING)

    def _outcome(self) -> tuple[str, bytes, bool]:
        """The round's aggregate for the grid feed (retained on ``hems/v1/outcome/<day>``,
        readable by the grid identity only): sums of released group totals, never a home's
        value (docs/grid-feed.md)."""
        res, cap, c = self.solution, self.capacity, self.cfg
        assert res is not None and cap is not None
        msg = protocol_svc.make_outcome(
            c.day, c.round, c.frames, c.frame_s, c.start, cap.capacity_wh.tolist(),
            [int(x) for x in res.load_before], [int(x) for x in res.load_after],
            self._reserve_list(), int(res.residual_overload_wh), int(res.curtailed_wh))
        return protocol_svc.t_outcome(c.day), protocol.encode(msg), True

    def _reserve_list(self) -> list[int]:
        r = self.reserve if self.reserve is not None else self._reserve(self.groups)
        return [int(x) for x in r.wh]

    async def _serving(self) -> None:
        """Until the day is over: a home that comes back gets its adjustment again
        (take_status).  A one-shot round serves ``linger_s`` instead."""
        s = self.s
        if s.serve_until is not None:
            await self.clock.sleep_until(s.serve_until)
        elif s.linger_s > 0:
            log.info("round complete; serving %.0f s more for homes that reconnect", s.linger_s)
            await asyncio.sleep(s.linger_s)
        await self._drain(PUBLISH_TIMEOUT_S)
        self._to(Phase.ENDED)

    # ------------------------------------------------------------ inputs

    def take_plan(self, topic: str, payload: bytes, retained: bool, out: Replies,
                  flush: bool = True) -> None:
        """A plan report; its reply (sent once durable) is appended to ``out``."""
        intake = self.intake
        if intake is None:  # not announced yet (a report for another round): not ours
            self.rejections.reject("plan", "unknown_round", topic)
            return
        if intake.take(topic, payload, self.clock.now(), retained, out, flush):
            n = self.s.expected_homes
            if n is not None and (intake.accepted >= n or not self.merged):
                self.check_enough()

    @property
    def answers(self) -> dict[tuple[str, str], dict[str, Answer]]:
        """(broker, request id) -> that broker's answers (a read-only view, please)."""
        return self._answers

    def asked(self, req: str) -> bool:
        """This round sent a group request with id ``req``."""
        return any(a.req == req for a in self._asks.values())

    def take_groupsum(self, topic: str, payload: bytes) -> None:
        try:
            broker, req, results = parse_answer(topic, payload, self.cfg)
        except ValueError as e:
            self.rejections.reject("groupsum", str(e), topic)
            return
        key = (broker, req)
        if key in self._answers:
            self.rejections.reject("groupsum", "duplicate_answer", topic, req)
            return
        fut = self._pending.get(key)
        if fut is None and not any((a.broker, a.req) == key for a in self._asks.values()):
            self.rejections.reject("groupsum", "unknown_req", topic, req)
            return
        self._answers[key] = results
        self._append("answer", broker=broker, req=req, results=answers_to_json(results))
        if fut is not None and not fut.done():
            fut.set_result(results)

    def asked_flp(self, req: str) -> bool:
        """This round sent a range-proof request with id ``req``."""
        return any(r == req for _, r in self._flp_pending)

    def take_flpver(self, topic: str, payload: bytes) -> None:
        """A mask broker's verifier shares (docs/integrity.md)."""
        try:
            req, broker, day, rnd, results = protocol_svc.parse_flp_verifiers(
                protocol.decode(payload, protocol.MAX_GROUP_PAYLOAD))
        except ValueError as e:
            self.rejections.reject("flpver", str(e), topic)
            return
        fut = self._flp_pending.get((broker, req))
        if fut is None or topic != protocol_svc.t_flpver(broker) or \
                (day, rnd) != (self.cfg.day, self.cfg.round):
            self.rejections.reject("flpver", "unknown_req", topic, req)
            return
        if not fut.done():
            fut.set_result(results)

    async def _verify_proofs(self, intake: Intake) -> dict[str, str]:
        """home -> reason for every home whose range proof fails; journaled once taken."""
        if self._proofs_failed is not None:
            return self._proofs_failed
        if not self.s.verify_proofs:
            return {}
        t = time.monotonic()
        state = intake.state
        reports = state.reports
        leaders, failed = proofs.prepare(self.cfg, self.s.caps, reports, state.proofs)
        if leaders:
            qseed = secrets.token_bytes(32)
            mine = flp_batch.leader_verify(leaders, qseed)
            rids = {x.home: reports[x.home].report_id for x in leaders}
            brokers = list(enumerate(self.cfg.brokers, 1))
            results: dict[str, dict[str, bytes | str]] = {b: {} for _, b in brokers}
            asked = {b: list(leaders) for _, b in brokers}
            # A mask still in flight when collection closed is "missing" at the broker: those
            # homes are asked again (same qseed: the same evaluation point) for missing_grace_s
            retries = max(1, math.ceil(self.s.missing_grace_s / GRACE_STEP_S))
            for attempt in range(retries + 1):
                todo = [(p, b) for p, b in brokers if asked[b]]
                got = await asyncio.gather(*[self._ask_flp(b, p, qseed, asked[b], rids)
                                             for p, b in todo])
                for (_, b), ans in zip(todo, got, strict=True):
                    results[b].update(ans or {})
                    asked[b] = [] if ans is None else [x for x in asked[b]
                                                       if ans.get(x.home) == "missing"]
                if not any(asked.values()) or attempt == retries:
                    break
                await asyncio.sleep(min(GRACE_STEP_S, self.s.missing_grace_s))
            failed.update(proofs.conclude(leaders, mine, results))
        for h, why in sorted(failed.items()):
            log.error("home %s: range proof refused (%s)", h, why)
        self._proofs_failed = failed
        self._append("proofs", failed=failed, verified=len(leaders))
        await self.commit()
        self.timings["proofs_s"] = time.monotonic() - t
        return failed

    async def _ask_flp(self, broker: str, party: int, qseed: bytes,
                       leaders: Sequence[flp_batch.LeaderInput], rids: Mapping[str, str]
                       ) -> dict[str, bytes | str] | None:
        req = f"p{self.s.round}-{secrets.token_hex(6)}"
        key = (broker, req)
        topic = protocol_svc.t_flpreq(broker)
        payload = proofs.request(self.cfg, party, req, qseed, leaders, rids)
        fut: asyncio.Future[dict[str, bytes | str]] = \
            asyncio.get_running_loop().create_future()
        self._flp_pending[key] = fut
        self._open[key] = (topic, payload)
        deadline = time.monotonic() + self.s.answer_timeout_s
        try:
            while True:  # asked again every reask_s: the broker answers a request id the same
                await self._publish(topic, payload)
                left = deadline - time.monotonic()
                try:
                    return await asyncio.wait_for(asyncio.shield(fut),
                                                  max(0.0, min(left, self.s.reask_s)))
                except TimeoutError:
                    if deadline - time.monotonic() <= 0:
                        break
                    log.warning("no answer from %s to range-proof request %s yet: asking "
                                "again", broker, req)
            log.error("mask broker %s did not answer range-proof request %s within %ss",
                      broker, req, self.s.answer_timeout_s)
            return None
        finally:
            self._flp_pending.pop(key, None)
            self._open.pop(key, None)

    def take_status(self, home: str, payload: bytes, retained: bool) -> None:
        """A home's availability.  A live ``online`` (not the retained copy a subscription
        brings) once the adjustments are out means the home reconnected, maybe to a broker that
        lost what was queued for it: send its adjustment again (identical: applied once)."""
        adj = self._adjustment_of.get(home)
        if payload == b"online" and not retained and adj is not None:
            log.info("%s is back online: re-sending its adjustment", home)
            self.out.send(protocol.t_adjust(home), adj)

    def republish(self, announcement: bool) -> list[tuple[str, bytes, bool]]:
        """After a reconnect: what a restarted MQTT broker may have lost (``announcement``:
        this is the newest round, whose announcement the retained topic must hold)."""
        again: list[tuple[str, bytes, bool]] = []
        if announcement and self.announced and not self.life.terminal:
            again.append((protocol.t_round(), protocol.encode(self.cfg.announcement()), True))
        again += [(t, p, False) for t, p in self._open.values()]
        again += [(t, p, False) for t, p in self._adjustments or []]
        if self.life.adjusted and not self.life.terminal:
            again.append(self._outcome())
        return again

    # ------------------------------------------------------------ publishing

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        try:
            await self.out.publish(topic, payload, retain)
        except TimeoutError as e:
            raise RoundFailed(f"the MQTT broker did not acknowledge {topic}: {e}") from None

    async def _drain(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await self.out.flush(timeout)

    # ------------------------------------------------------------ solving

    async def _solve(self, problem: Problem) -> Result:
        """The engine's result for the i-th solve of the round (journaled: a restart reuses it,
        so a time-limited exact solve cannot come out differently the second time)."""
        i = self._nsolve
        self._nsolve += 1
        fp = fingerprint(problem, self.s.solver)
        logged = self._solves.get(i)
        if logged is not None:
            if logged.get("fp") != fp:
                raise RoundFailed(f"journal diverged at solve {i}: the problem differs")
            return result_from_json(logged["result"])
        t = time.monotonic()
        if self._solve_deadline is None:
            self._solve_deadline = t + self.s.time_limit_s
        try:
            result = await asyncio.to_thread(solve, problem, self.s.solver, self._solve_deadline)
        except Exception as e:
            log.exception("adjustment engine failed")
            raise RoundFailed(f"adjustment engine ({self.s.solver}) failed: {e!r}") from e
        self.timings["solve_s"] += time.monotonic() - t
        self._append("solve", i=i, fp=fp, result=result_to_json(result))
        return result

    def _reserve(self, groups: Sequence[Group]) -> Reserve:
        """Every home the round knows of (registered, reported, late, excluded, in an earlier
        group) that is in no released total with this round's report, at its cap."""
        known: set[str] = set(self.excluded) | self.late_homes
        if self.intake is not None:
            known.update(self.intake.state.reports)
        if self.basis is not None:
            known.update(self.basis.answered())
            known.update(self.basis.carried)
        # a carried member is in its group's total with an earlier plan, but gets no
        # adjustment and follows its own plan: reserved as well (counted twice: conservative)
        ledger = self.ledger
        counted = {h for g in groups
                   for h in (ledger.current(g) if ledger is not None else g.members)}
        return self.s.caps.reserve(known, counted, self.s.frames, self.s.frame_s)

    def _problem(self, ledger: SumLedger, groups: Sequence[Group], capacity: Capacity,
                 policy: Policy) -> Problem:
        """The released groups against the capacity minus the reserve (never below 0)."""
        totals = np.stack([ledger.total_quanta(g) for g in groups]) * self.s.quantum_wh
        mags = np.array([g.magnification for g in groups], dtype=np.int64)
        self.reserve = self._reserve(groups)
        room = np.maximum(capacity.capacity_wh - self.reserve.wh, 0)
        return Problem(totals=totals, capacity=room, magnification=mags, policy=policy)

    # ------------------------------------------------------------ mask brokers

    async def _settle(self, ledger: SumLedger, groups: list[Group]) -> list[Group]:
        t = time.monotonic()

        async def ask(broker: str, gs: list[Group]) -> dict[str, Answer]:
            return await self._ask(broker, gs, ledger)

        async def grace() -> None:
            if self._nreq + 1 not in self._asks:  # replaying journaled answers: no need
                await asyncio.sleep(min(GRACE_STEP_S, self.s.missing_grace_s))

        try:
            return await settle(ledger, groups, ask, grace)
        finally:
            self.timings["sums_s"] += time.monotonic() - t
            for r in ledger.refused[self._refused_logged:]:
                named = next((f" ({k} {r[k]})" for k in ("missing", "mismatched") if k in r), "")
                log.error("mask broker %s refused group %s: %s%s", r["broker"], r["id"],
                          r["reason"], named)
            self._refused_logged = len(ledger.refused)

    async def _ask(self, broker: str, groups: list[Group], ledger: SumLedger
                   ) -> dict[str, Answer]:
        self._nreq += 1
        seq = self._nreq
        entries = [list(ledger.request_entry(g)) for g in groups]
        logged = self._asks.get(seq)
        if logged is not None:
            if logged.broker != broker or logged.entries != entries:
                raise RoundFailed(
                    f"journal diverged at group request {seq} ({logged.req}): it asked "
                    f"{logged.broker} for {[e[0] for e in logged.entries]}, this run would ask "
                    f"{broker} for {[e[0] for e in entries]}")
            req = logged.req
        else:
            req = f"q{seq}-{secrets.token_hex(6)}"
            self._asks[seq] = _Ask(broker, req, entries)
            self._append("ask", seq=seq, broker=broker, req=req, groups=entries)
            await self.commit()
        key = (broker, req)
        if key in self._answers:
            return self._answers[key]
        fut: asyncio.Future[dict[str, Answer]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        c = self.cfg
        topic = protocol_svc.t_groupreq(broker)
        payload = protocol.encode(protocol_svc.make_group_request(
            req, c.day, c.round, [tuple(e) for e in entries]))
        self._open[key] = (topic, payload)
        deadline = time.monotonic() + self.s.answer_timeout_s
        try:
            while True:
                await self._publish(topic, payload)
                log.info("asked %s for %d group sum(s) (req %s)", broker, len(groups), req)
                left = deadline - time.monotonic()
                try:
                    return await asyncio.wait_for(asyncio.shield(fut),
                                                  min(left, self.s.reask_s))
                except TimeoutError:
                    if deadline - time.monotonic() <= 0:
                        break
                    log.warning("no answer from %s to req %s yet: asking again", broker, req)
            log.error("mask broker %s did not answer req %s within %ss", broker, req,
                      self.s.answer_timeout_s)
            self._answers[key] = {}
            self._append("answer", broker=broker, req=req, timeout=True)
            return {}
        finally:
            self._pending.pop(key, None)
            self._open.pop(key, None)

    def _reply_excluded(self) -> None:
        intake = self.intake
        assert intake is not None
        c = self.cfg
        reports = intake.state.reports
        for h, ex in self.excluded.items():
            if h in self._replied or h not in reports:
                continue
            self._replied.add(h)
            log.error("home %s excluded: %s (group %s, broker %s%s)", h, ex.reason, ex.group,
                      ex.broker, f", {ex.detail}" if ex.detail else "")
            msg = protocol_svc.make_reply(c.day, c.round, reports[h].report_id, False, ex.reason)
            self.out.send(protocol.t_reply("coordinator", h), protocol.encode(msg))

    # ------------------------------------------------------------ adjustments

    async def _send_adjustments(self, groups: Sequence[Group], result: Result) -> None:
        c = self.cfg
        moves: list[list[tuple[int, int]]] = [[] for _ in groups]
        curtail: list[list[tuple[int, int]]] = [[] for _ in groups]
        for g, f, t in result.moves:
            moves[g].append((f, t))
        for g, f, keep in result.curtail:
            curtail[g].append((f, keep))
        out: Replies = []
        ledger = self.ledger
        assert ledger is not None
        reports = self.intake.state.reports if self.intake is not None else {}
        for i, grp in enumerate(groups):
            adj = protocol_svc.make_adjustment(c.day, c.round, grp.id, sorted(moves[i]),
                                           sorted(curtail[i]), c.expires)
            payload = protocol.encode(adj)
            # carried members did not report this round (or their report is not the one
            # counted): they follow their own plan
            out += [(protocol.t_adjust(h), payload) for h in ledger.current(grp)
                    if h in reports]
        self._adjustments = out
        self._adjustment_of = {t[len(_ADJUST):]: p for t, p in out}
        pause = self.s.pause_at
        limit = len(out)
        if pause is not None and pause.startswith("adjust:"):
            # fault injection (tests): only the first N adjustments go out, then nothing moves
            limit = min(limit, int(pause.split(":", 1)[1]))
        for topic, payload in out[:limit]:
            self.out.send(topic, payload)
        try:
            await self.out.flush(PUBLISH_TIMEOUT_S)
        except TimeoutError as e:
            raise RoundFailed(
                f"adjustments not acknowledged by the broker within {PUBLISH_TIMEOUT_S}s") from e
        if limit < len(out):
            log.warning("pausing (--debug-pause-at %s)", pause)
            await asyncio.Event().wait()
        self.adjusted_homes = len(out)
        log.info("adjustments sent to %d homes in %d groups", len(out), len(groups))


_STEPS: dict[Phase, Callable[[Round], Awaitable[None]]] = {
    Phase.SCHEDULED: Round._scheduled,
    Phase.COLLECTING: Round._collecting,
    Phase.CLOSED: Round._closed,
    Phase.SUMMING: Round._summing,
    Phase.SOLVING: Round._solving,
    Phase.PUBLISHING: Round._publishing,
    Phase.SERVING: Round._serving,
}
