"""The coordinator's MQTT adapter (aiomqtt): runs one round end to end, and survives crashes.

Every decision is taken by the pure modules: round.py (which plan reports count), grouping.py
(which homes form a group), sums.py (what to ask the mask brokers and what their answers mean) and
adjust/ (the moves).  This module moves bytes, keeps time and writes down what happened:

1. connect twice, both persistent sessions with PUBACK only after a message was handled and
   made durable: the bulk topic ``hems/v1/plan/+`` on a lean client (client id
   ``<client id>-ingest``, backend/common/ingest_mqtt.py: each read's reports are validated
   into the row store and journaled as one batch with one fsync, then their replies are queued
   and their PUBACKs written), and ``hems/v1/groupsum/+`` and ``hems/v1/capacity`` on aiomqtt
   (link.py, client id ``coordinator``, QoS 1, reconnect with backoff);
2. announce the round, retained, on ``hems/v1/round``; collect plan reports until the deadline or
   until ``expected_homes`` homes were accepted; every report gets a reply;
3. take the capacity profile (file, or the retained ``hems/v1/capacity``);
4. group the homes, ask every mask broker for every group's mask sum, compute the group totals;
5. solve; while overload remains after the moves and a group can be split, split, ask for the new
   groups' sums and solve again;
6. send every member of every group the same adjustment (QoS 1, not retained) and wait until the
   broker has acknowledged each one.  Replies and adjustments are pre-encoded QoS 1 publishes
   written in batches on the lean connection (docs/scaling.md), not one task per message;
7. with ``linger_s``, serve on that long: a home that comes back (a live ``online`` on
   ``hems/v1/status/<home>``, published by the firmware once it has subscribed) gets its
   adjustment again, since a broker that crashed before saving lost the copy queued for it.

Two readers (the lean connection for plan reports, the link for the rest) dispatch every incoming
message for the whole run, on one event loop (late reports are still answered while the round is
being solved); the round itself is the main task.  Failure has one
signal: ``CoordinatorError`` with a message for the operator.

Crashes and outages (docs/reliability.md)
-----------------------------------------
With ``state_dir`` every input of the round goes to a journal (store.py) before anything that
depends on it leaves the process: the announcement (with its deadline) before it is published, a
report before its reply and its PUBACK, each group request before it is published, each answer
and each solver result before the next request or the adjustments.  A coordinator restarted with
the same arguments replays the journal through the same code: it re-announces the *same* deadline,
keeps the accepted reports (a redelivered copy is turned away: ``replay``, or ``late`` once
collection has closed, and changes nothing), re-asks the very groups it asked
before under the same request ids (answers already journaled are not asked again), reuses the
solver's results, and re-publishes the adjustments (a home ignores an identical one).  A request
not answered within ``reask_s`` is published again (mosquitto may have lost it in a restart); after
every reconnect the announcement, the open requests and the adjustments already decided are
re-published.  All of that is idempotent at the receiver.

Accepted homes that cannot be counted (exclusions, sums.py) get a second reply, ``rejected`` with
the exclusion reason (``mask_missing``, ``atom_guard``, ``group_too_small``, ``refused``,
``no_answer``, ``too_few_homes``), and no adjustment: they follow their own plan.

The round's record (``Coordinator.result``, written by ``--result``)
--------------------------------------------------------------------
``status`` "completed" | "failed", ``error`` (the reason, or null); ``day``, ``round``,
``start``, ``deadline`` (null if the round was never announced), ``k``, ``brokers``, ``window``;
``homes`` (reports accepted), ``adjusted_homes`` (adjustments acknowledged by the broker),
``excluded`` ([{home, reason, group, broker, detail}]), ``late_homes`` (homes whose only plan
report came after collection closed); ``frames``, ``frame_s``, ``quantum_wh``;
``capacity_wh``, ``target_wh`` (Wh per frame, or null); ``coordinator_load_before_wh`` and
``coordinator_load_after_wh`` (per frame, from the group totals: before, and after moves and
curtailment); ``overload_before_wh``, ``overload_after_wh`` (after moves, before curtailment),
``residual_overload_wh`` (after curtailment), ``moved_wh``, ``curtailed_wh``; ``groups`` (the
final grouping: [{id, size, magnification, members, total_wh}]), ``moves`` ([group id, from,
to]), ``curtail`` ([group id, frame]); ``regroup_rounds`` (refinements asked for), ``solver``,
``solve_status``, ``mip_gap``, ``best_bound`` (from the engine); ``released_groups``
([{id, broker, size}]), ``refused_groups`` ([{id, broker, reason, missing?}]), ``rejections``
(counts by "kind:reason"), ``timings`` (collect_s, group_s, sums_s, solve_s, publish_s: this
process); ``state_dir`` (or null), ``resumed`` (this process continued a journaled round),
``restarts`` (earlier processes of this round), ``mqtt_connects``, ``ingest`` (the lean
connection's counters: received, batches, published, ...).  Values not reached by a failed
round are null (or empty lists).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import numpy as np
import numpy.typing as npt

from backend.common.ingest_mqtt import IngestError, LeanIngest, Message
from backend.common.metrics import serve
from backend.common.mqtt import MqttSettings
from backend.common.rejects import Rejections
from backend.coordinator import metrics, workers
from backend.coordinator.adjust import Policy, Problem, Result, solve
from backend.coordinator.grouping import Group, initial_grouping, refine
from backend.coordinator.link import Conn, Link, LinkError
from backend.coordinator.round import Capacity, RoundConfig, RoundState, parse_capacity
from backend.coordinator.store import (
    Journal,
    answers_from_json,
    answers_to_json,
    fingerprint,
    result_from_json,
    result_to_json,
)
from backend.coordinator.sums import Answer, Exclusion, SumLedger, parse_answer, settle
from hemsfw import protocol, protocol_svc

__all__ = ["Coordinator", "CoordinatorError", "ServiceConfig"]

log = logging.getLogger("hems.coordinator")

#: on aiomqtt (link.py); the plan reports come on the lean ingest connection (BULK_TOPIC)
TOPICS = (protocol_svc.t_groupsum("+"), protocol_svc.t_capacity(), protocol.t_status("+"))
BULK_TOPIC = protocol.t_plan("+")
MAX_REGROUP = 32  # refinement rounds (each at least doubles a group count; 2^32 >> any N)
PUBLISH_TIMEOUT_S = 60.0
INFLIGHT = 200  # concurrent QoS 1 publishes
GRACE_STEP_S = 1.0  # one missing-members retry per second of --missing-grace-s


class CoordinatorError(Exception):
    """The round could not complete; the message says why."""


@dataclass(frozen=True)
class ServiceConfig:
    day: str
    round: int
    frames: int
    frame_s: int
    quantum_wh: int
    start: int
    collect_s: float
    brokers: tuple[str, ...]
    k: int
    expected_homes: int | None = None
    solver: Literal["heuristic", "exact"] = "heuristic"
    window: Literal["defer", "symmetric"] = "defer"
    time_limit_s: float = 10.0
    target_weight: float = 0.0
    capacity_file: Path | None = None
    capacity_wait_s: float = 10.0
    answer_timeout_s: float = 10.0
    missing_grace_s: float = 1.0
    client_id: str = "coordinator"
    state_dir: Path | None = None
    reask_s: float = 5.0
    reconnect_s: float = 60.0
    metrics_port: int | None = None
    #: after the round, keep serving this long, re-sending adjustments to homes that reconnect
    linger_s: float = 0.0
    #: fault-injection tests: "adjust:N" stops (forever) after N adjustments were acknowledged
    pause_at: str | None = None
    #: plan ingest processes sharing ``$share/coordinator/hems/v1/plan/+`` (workers.py)
    workers: int = 1
    #: this process's index among them (0: the main process; set by workers.py)
    worker: int = 0


@dataclass(frozen=True)
class _Ask:
    broker: str
    req: str
    entries: list[list[Any]]  # [[group id, members, checksum]]


def _capacity_json(cap: Capacity) -> dict[str, Any]:
    return {"capacity_wh": cap.capacity_wh.tolist(),
            "target_wh": None if cap.target_wh is None else cap.target_wh.tolist()}


def _bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Coordinator:
    """One round (see the module docstring).  ``result()`` describes it, finished or not."""

    def __init__(
        self, cfg: ServiceConfig, settings: MqttSettings, clock: Callable[[], float] = time.time
    ) -> None:
        if cfg.k < 1:
            raise CoordinatorError("k must be >= 1")
        self.cfg = cfg
        self.settings = replace(settings, client_id=cfg.client_id)
        self.clock = clock
        self.rejections = Rejections(log)
        self.round_cfg = RoundConfig(
            cfg.day, cfg.round, cfg.frames, cfg.frame_s, cfg.quantum_wh, cfg.start,
            cfg.start, cfg.brokers,
        )
        self.state: RoundState | None = None
        self.ledger: SumLedger | None = None
        self.excluded: dict[str, Exclusion] = {}
        self.late_homes: set[str] = set()
        self.capacity: Capacity | None = None
        self.groups: list[Group] = []
        self.solution: Result | None = None
        self.regroup_rounds = 0
        self.adjusted_homes = 0
        self.timings: dict[str, float] = {"collect_s": 0.0, "group_s": 0.0, "sums_s": 0.0,
                                          "solve_s": 0.0, "publish_s": 0.0}
        self.link: Link | None = None
        self.ingest: LeanIngest | None = None
        self.journal = (Journal(cfg.state_dir, cfg.day, cfg.round,
                                f"w{cfg.worker}" if cfg.worker else "")
                        if cfg.state_dir is not None else None)
        #: what the journal says happened before this process (store.py)
        self.restarts = 0
        self.announced_at: float | None = None  # wall clock of the first announcement
        self.finished_at: float | None = None
        self.completed = False
        self._journaled_round = False
        self._capacity_taken = False
        self._asks: dict[int, _Ask] = {}
        self._answers: dict[tuple[str, str], dict[str, Answer]] = {}
        self._solves: dict[int, dict[str, Any]] = {}
        self._nsolve = 0
        self._enough = asyncio.Event()
        self._capacity_seen = asyncio.Event()
        self._pending: dict[tuple[str, str], asyncio.Future[dict[str, Answer]]] = {}
        self._open: dict[tuple[str, str], tuple[str, bytes]] = {}  # requests awaiting answers
        self._background: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(INFLIGHT)
        self._nreq = 0
        self._replied: set[str] = set()
        self._refused_logged = 0
        self._announced = False
        self._adjustments: list[tuple[str, bytes]] | None = None
        self._adjustment_of: dict[str, bytes] = {}  # home -> its adjustment's payload
        #: called once the adjustments are acknowledged (before lingering): __main__ writes
        #: the round's record then, so it is there while the process serves on
        self.on_complete: Callable[[], None] | None = None
        self._unacked: list[tuple[Conn, aiomqtt.Message, list[tuple[str, bytes]]]] = []
        self._wake = asyncio.Event()
        self._batch = False  # inside _on_batch: journal lines are flushed once per batch
        self._failed = asyncio.Event()  # set from a callback that cannot raise to the round
        self._failure: CoordinatorError | None = None
        self._workers: list[workers.Worker] = []
        self._merged = False  # the workers' rows were added to this process's

    # ------------------------------------------------------------ entry point

    async def run(self) -> None:
        """Run the round; raises CoordinatorError when it cannot complete."""
        cfg = self.cfg
        self._restore()
        if self.capacity is None and cfg.capacity_file is not None:
            self.capacity = self._read_capacity_file(cfg.capacity_file)
        if not self._journaled_round:
            deadline = math.ceil(self.clock() + cfg.collect_s)
            self.round_cfg = replace(self.round_cfg, deadline=deadline)
        try:
            self.round_cfg.validate()
        except ValueError as e:
            raise CoordinatorError(f"invalid round parameters: {e}") from None
        if self.state is None:
            self.state = RoundState(self.round_cfg, capacity=self._expected_rows())
        self._check_enough()
        server = None
        if cfg.metrics_port is not None:
            try:
                server = await serve(cfg.metrics_port, lambda: metrics.samples(self))
            except OSError as e:
                raise CoordinatorError(f"metrics port {cfg.metrics_port}: {e}") from None
        self.link = Link(self.settings, TOPICS, self._on_message, self._on_up,
                         give_up_s=cfg.reconnect_s, inflight=INFLIGHT)
        s = self.settings
        bulk_topic = BULK_TOPIC
        if cfg.workers > 1:
            bulk_topic = workers.shared_topic(BULK_TOPIC)
            self._workers = workers.start_workers(cfg, self.settings, self.round_cfg.deadline)
            loop = asyncio.get_running_loop()
            for w in self._workers:
                loop.add_reader(w.conn.fileno(), workers.on_message, self, w)
        self.ingest = ingest = LeanIngest(
            s.host, s.port, f"{cfg.client_id}-ingest", s.username, s.password,
            [(bulk_topic, 1)], self._on_batch, tls=s.tls_context(),
            max_packet=protocol.MAX_PAYLOAD + 1024, reconnect_max_s=5.0, log=log)
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self.link.run(), name="link")
                bulk = tg.create_task(ingest.run(), name="ingest")
                committer = tg.create_task(self._committer(), name="committer")
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                main = tg.create_task(self._round(), name="round")

                def stop(_: object) -> None:
                    reader.cancel()
                    committer.cancel()
                    watchdog.cancel()
                    # DISCONNECT after the last PUBACKs are written (run() returns within
                    # ~2 s); cancelling at once could lose them (redelivered, deduped: waste)
                    ingest.stop()
                    asyncio.get_running_loop().call_later(5.0, bulk.cancel)

                main.add_done_callback(stop)
        except BaseExceptionGroup as eg:
            exc = _leaf(eg)
            if isinstance(exc, CoordinatorError):
                raise exc from None
            if isinstance(exc, LinkError | IngestError):
                raise CoordinatorError(str(exc)) from exc
            raise
        finally:
            for t in list(self._background):
                t.cancel()
            if self._workers:
                loop = asyncio.get_running_loop()
                for w in self._workers:
                    if not w.gone:
                        loop.remove_reader(w.conn.fileno())
                await asyncio.to_thread(workers.stop_workers, self._workers)
            if server is not None:
                server.close()
            if self.journal is not None:
                self.journal.close()

    def _fail(self, message: str) -> None:
        """Stop the round with ``message`` (from a callback that cannot raise to it)."""
        if self._failure is None:
            self._failure = CoordinatorError(message)
        self._failed.set()

    def reports_held(self) -> int:
        """Reports accepted so far, by this process and (until merged) by its workers."""
        n = self.state.accepted if self.state is not None else 0
        if not self._merged:
            n += sum(w.accepted for w in self._workers)
        return n

    def _check_enough(self) -> None:
        n = self.cfg.expected_homes
        if n is not None and self.reports_held() >= n:
            self._enough.set()

    async def _watchdog(self) -> None:
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    def _expected_rows(self) -> int:
        """Rows to allocate up front for the plan vectors (the store doubles past it)."""
        return max(16, self.cfg.expected_homes or 1024)

    def _read_capacity_file(self, path: Path) -> Capacity:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CoordinatorError(f"capacity file {path}: {e.strerror or e}") from None
        try:
            return parse_capacity(raw, self.cfg.frames)
        except ValueError as e:
            raise CoordinatorError(
                f"capacity file {path}: {e} (expected protocol_svc.make_capacity JSON for "
                f"{self.cfg.frames} frames)"
            ) from None

    # ------------------------------------------------------------ the journal

    def _round_record(self) -> dict[str, Any]:
        rc, cfg = self.round_cfg, self.cfg
        return {"day": rc.day, "round": rc.round, "frames": rc.frames, "frame_s": rc.frame_s,
                "quantum_wh": rc.quantum_wh, "start": rc.start, "deadline": rc.deadline,
                "brokers": list(rc.brokers), "k": cfg.k, "solver": cfg.solver,
                "window": cfg.window}

    def _restore(self) -> None:
        """Load the journal (if any) and stand where the previous process stood."""
        j = self.journal
        if j is None:
            return
        try:
            records = j.load()
        except OSError as e:
            raise CoordinatorError(f"state dir {self.cfg.state_dir}: {e}") from None
        for rec in records:
            try:
                self._replay(rec)
            except (KeyError, TypeError, ValueError) as e:
                raise CoordinatorError(
                    f"journal {j.path}: cannot use a {rec.get('kind')!r} record ({e!r}); move the "
                    "file away to start the round afresh") from None
        if records:
            st = self.state
            log.info("resuming round %s/%d from %s: %d reports%s, %d requests, %d answers, "
                     "%d solves%s (start %d)", self.cfg.day, self.cfg.round, j.path,
                     st.accepted if st else 0, " (closed)" if st and st.closed else "",
                     len(self._asks), len(self._answers), len(self._solves),
                     ", adjustments sent" if self.completed else "", self.restarts + 1)

    def _replay(self, rec: dict[str, Any]) -> None:
        kind = rec["kind"]
        if kind == "round":
            diff = {k: (rec.get(k), v) for k, v in self._round_record().items()
                    if k != "deadline" and rec.get(k) != v}
            if diff:
                raise CoordinatorError(
                    f"the state dir holds this round with other parameters {diff} "
                    "(journal, arguments): run with the same arguments or another --state-dir")
            self.round_cfg = replace(self.round_cfg, deadline=int(rec["deadline"]))
            self.state = RoundState(self.round_cfg, capacity=self._expected_rows())
            self.announced_at = float(rec.get("at", 0.0)) or None
            self._journaled_round = True
            return
        st = self.state
        if st is None:
            raise ValueError("record before the round record")
        if kind == "start":
            self.restarts += 1
        elif kind == "report":
            st.restore(str(rec["home"]), str(rec["report_id"]), int(rec["mag"]),
                       base64.b64decode(rec["masked"]))
        elif kind == "closed":
            st.close()
        elif kind in ("capacity", "capacity_seen"):
            tgt = rec.get("target_wh")
            self.capacity = Capacity(np.array(rec["capacity_wh"], dtype=np.int64),
                                     None if tgt is None else np.array(tgt, dtype=np.int64))
            self._capacity_taken = kind == "capacity"
            self._capacity_seen.set()
        elif kind == "ask":
            self._asks[int(rec["seq"])] = _Ask(str(rec["broker"]), str(rec["req"]),
                                               list(rec["groups"]))
        elif kind == "answer":
            results = {} if rec.get("timeout") else answers_from_json(rec["results"])
            self._answers[(str(rec["broker"]), str(rec["req"]))] = results
        elif kind == "solve":
            self._solves[int(rec["i"])] = rec
        elif kind == "done":
            self.completed = True
            self.finished_at = float(rec.get("at", 0.0)) or None
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _append(self, kind: str, flush: bool = True, **data: Any) -> None:
        if self.journal is not None:
            self.journal.append(kind, flush, **data)

    async def _commit(self) -> None:
        if self.journal is not None:
            await self.journal.commit()

    # ------------------------------------------------------------ incoming messages

    def _on_batch(self, batch: list[Message]) -> None:
        """The lean connection's plan reports of one read: validated into the rows and
        journaled (one write, one fsync for the batch), then the replies are queued; the
        broker gets the batch's PUBACKs when this returns.  The lean client does not pass the
        retain flag on: a stale retained report gets a reply (homes never retain plans)."""
        out: list[tuple[str, bytes]] = []
        self._batch = True
        try:
            for topic, payload in batch:
                try:
                    self.dispatch(topic, payload, False, out)
                except Exception:  # no payload may stop the service
                    log.exception("internal error handling a message on %r", topic)
                    self.rejections.reject("message", "internal_error", topic)
        finally:
            self._batch = False
        if self.journal is not None:
            try:
                self.journal.sync()  # blocking, once per batch: durable before replies, PUBACKs
            except OSError as e:  # fail closed: no reply and no PUBACK for what is not durable
                assert self.ingest is not None
                self.ingest.drop_connection()
                self._fail(f"cannot write the journal: {e}")
                return
        for topic, payload in out:
            self._bulk(topic, payload)

    def _on_message(self, conn: Conn, msg: aiomqtt.Message) -> None:
        """The link's reader: handle now, acknowledge (and answer) once durable."""
        topic = msg.topic.value
        out: list[tuple[str, bytes]] = []
        try:
            self.dispatch(topic, _bytes(msg.payload), bool(msg.retain), out)
        except Exception:  # no payload may stop the service
            log.exception("internal error handling a message on %r", topic)
            self.rejections.reject("message", "internal_error", topic)
        self._unacked.append((conn, msg, out))
        self._wake.set()

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        """Group commit: one fsync for every message handled since the last one, then their
        PUBACKs and replies."""
        batch, self._unacked = self._unacked, []
        if not batch:
            return
        await self._commit()
        for conn, msg, out in batch:
            conn.ack(msg)
            for topic, payload in out:
                self._publish_soon(topic, payload)

    def dispatch(self, topic: str, payload: bytes, retained: bool,
                 out: list[tuple[str, bytes]]) -> None:
        """One incoming message; replies to send (once it is durable) are appended to ``out``.
        Never raises on any input (the fuzz tests hold it to that)."""
        if topic.startswith(protocol.PREFIX + "/plan/"):
            self._on_plan(topic, payload, retained, out)
        elif topic.startswith(protocol.PREFIX + "/groupsum/"):
            self._on_groupsum(topic, payload)
        elif topic == protocol_svc.t_capacity():
            self._on_capacity(topic, payload)
        elif topic.startswith(protocol.PREFIX + "/status/"):
            self._on_status(topic, payload, retained)
        else:
            self.rejections.reject("message", "unexpected_topic", topic)

    def _on_plan(self, topic: str, payload: bytes, retained: bool,
                 out: list[tuple[str, bytes]]) -> None:
        state = self.state
        assert state is not None
        v = state.offer(topic, payload, self.clock(), retained)
        if v.accepted:
            sink, accepted = state.sink, state.accepted
            r = accepted - 1  # the row just stored
            self._append("report", not self._batch, home=v.home, report_id=v.report_id,
                         mag=int(sink.mags[r]), masked=binascii.b2a_base64(
                             sink.store.row_bytes(r), newline=False).decode())
            log.debug("plan from %s accepted (%d)", v.home, accepted)
            n = self.cfg.expected_homes
            if n is not None and (accepted >= n or self._workers):
                self._check_enough()
        else:
            self.rejections.reject("plan", v.reason, topic, "(retained)" if retained else "")
            if v.reason == "late" and v.home is not None and v.home not in state.reports:
                self.late_homes.add(v.home)
        reply = v.reply(self.round_cfg)
        if reply is not None:
            out.append(reply)

    def _on_groupsum(self, topic: str, payload: bytes) -> None:
        try:
            broker, req, results = parse_answer(topic, payload, self.round_cfg)
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

    def _on_capacity(self, topic: str, payload: bytes) -> None:
        if self.cfg.capacity_file is not None or self._capacity_taken:
            log.info("capacity on %s ignored: %s", topic, "--capacity-file given"
                     if self.cfg.capacity_file is not None else "this round's is already taken")
            return
        try:
            cap = parse_capacity(payload, self.cfg.frames)
        except ValueError as e:
            self.rejections.reject("capacity", str(e), topic)
            return
        if self.capacity is None or _capacity_json(self.capacity) != _capacity_json(cap):
            # journaled on receipt: a mosquitto crash may lose the retained profile, and a
            # coordinator restarted after that must still have the one it saw
            self._append("capacity_seen", **_capacity_json(cap))
        self.capacity = cap
        self._capacity_seen.set()
        log.info("capacity profile received (%d frames)", self.cfg.frames)

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        """A home's availability.  A live ``online`` (not the retained copy a subscription
        brings) once the adjustments are out means the home reconnected, maybe to a broker that
        lost what was queued for it: send its adjustment again (identical: applied once)."""
        home = topic[len(protocol.PREFIX + "/status/"):]
        if not protocol.valid_id(home):
            self.rejections.reject("status", "bad_home", topic)
            return
        if payload not in (b"online", b"offline"):
            self.rejections.reject("status", "bad_status", topic)
            return
        adj = self._adjustment_of.get(home)
        if payload == b"online" and not retained and adj is not None:
            log.info("%s is back online: re-sending its adjustment", home)
            self._bulk(protocol.t_adjust(home), adj)

    # ------------------------------------------------------------ publishing

    def _on_up(self, conn: Conn) -> None:
        """After every (re)connect: re-publish what a restarted broker may have lost."""
        if conn.number == 1:
            return  # the round itself publishes everything on the first connection
        again: list[tuple[str, bytes, bool]] = []
        if self._announced:
            again.append((protocol.t_round(),
                          protocol.encode(self.round_cfg.announcement()), True))
        again += [(t, p, False) for t, p in self._open.values()]
        if again or self._adjustments:
            log.info("reconnected: re-publishing %d message(s)",
                     len(again) + len(self._adjustments or []))
        for topic, payload, retain in again:
            self._publish_soon(topic, payload, retain)
        for topic, payload in self._adjustments or []:
            self._bulk(topic, payload)

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self.link is not None
        async with self._sem:
            await self.link.publish(topic, payload, retain, timeout=PUBLISH_TIMEOUT_S)

    def _publish_soon(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Fire-and-track (replies, re-publishes): the reader must not wait for PUBACKs."""
        task = asyncio.get_running_loop().create_task(self._publish(topic, payload, retain))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _bulk(self, topic: str, payload: bytes) -> None:
        """A reply or an adjustment: a pre-encoded QoS 1 publish, queued on the lean connection
        and written in batches (re-sent after a reconnect until acknowledged)."""
        assert self.ingest is not None
        self.ingest.publish(topic, payload)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reply not delivered: %s", task.exception())

    async def _drain(self, timeout: float) -> None:
        await self._flush_acks()
        if self.ingest is not None:
            with contextlib.suppress(TimeoutError):
                await self.ingest.flush(timeout)
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    # ------------------------------------------------------------ the round

    async def _round(self) -> None:
        cfg, rc = self.cfg, self.round_cfg
        state = self.state
        assert state is not None
        t0 = time.monotonic()
        if not self._journaled_round:
            self.announced_at = self.clock()
            self._append("round", **self._round_record(), at=self.announced_at)
            self._journaled_round = True
        self._append("start", pid=os.getpid(), at=self.clock())
        await self._commit()  # the round (and this start) are durable before the announcement
        if self._workers:
            try:
                await workers.wait_up(self._workers)
            except TimeoutError:
                raise CoordinatorError(
                    f"ingest worker(s) not subscribed within {workers.UP_TIMEOUT_S}s") from None
        await self._publish(protocol.t_round(), protocol.encode(rc.announcement()), retain=True)
        self._announced = True
        log.info("round %s/%d announced: %d frames of %ds, quantum %d Wh, deadline %d, brokers %s",
                 rc.day, rc.round, rc.frames, rc.frame_s, rc.quantum_wh, rc.deadline,
                 ",".join(rc.brokers))
        if not state.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._enough.wait(), max(0.0, rc.deadline - self.clock()))
            state.close()
            self._append("closed", accepted=self.reports_held(), at=self.clock())
            await self._commit()
        if self._workers and not self._merged:
            added, dropped = await workers.merge(self, self._workers)
            self._merged = True
            log.info("%d report(s) from %d ingest worker(s) added, %d duplicate(s) dropped",
                     added, len(self._workers), dropped)
        self.timings["collect_s"] = time.monotonic() - t0
        log.info("collection closed: %d homes accepted, %d rejections", state.accepted,
                 self.rejections.total())

        capacity = await self._await_capacity()
        if not self._capacity_taken:
            self._capacity_taken = True
            self._append("capacity", **_capacity_json(capacity))

        t = time.monotonic()
        arranged = state.arranged()  # split order: every group below is a contiguous slice
        homes = arranged.keys
        groups = initial_grouping(state.magnifications(), cfg.k, prefix=f"r{rc.round}g")
        if not groups:
            for h in homes:
                self.excluded[h] = Exclusion(h, "too_few_homes", "", None,
                                             f"{len(homes)} homes < k={cfg.k}")
            self._reply_excluded()
            await self._drain(PUBLISH_TIMEOUT_S)
            raise CoordinatorError(
                f"only {len(homes)} home(s) accepted: fewer than k={cfg.k}, no group can be formed"
            )
        retries = max(1, math.ceil(cfg.missing_grace_s / GRACE_STEP_S))
        sink = state.sink
        ledger = SumLedger(rc.brokers, cfg.k, homes, arranged.block,
                           dict(zip(sink.store.keys, sink.report_ids, strict=True)), retries)
        self.ledger = ledger
        self.timings["group_s"] = time.monotonic() - t
        groups = await self._settle(ledger, groups)
        self.excluded.update(ledger.excluded)
        self._reply_excluded()
        if not groups:
            raise CoordinatorError(
                "no group total could be obtained from the mask brokers (see refused_groups "
                "and excluded in the result)"
            )
        policy = Policy(window=cfg.window, time_limit_s=cfg.time_limit_s,
                        target=None if capacity.target_wh is None else capacity.target_wh,
                        target_weight=cfg.target_weight if capacity.target_wh is not None else 0.0)
        while True:
            problem = self._problem(ledger, groups, capacity, policy)
            result = await self._solve(problem)
            self.groups, self.solution = groups, result
            log.info("solve %d (%s, %d groups): overload %d -> %d Wh after moves, %d Wh curtailed",
                     self.regroup_rounds, result.solver, len(groups), result.overload_before_wh,
                     result.overload_after_wh, result.curtailed_wh)
            if result.overload_after_wh <= 0 or self.regroup_rounds >= MAX_REGROUP:
                break
            finer = refine(groups, result, cfg.k, problem, frozen=ledger.frozen)
            if finer is None:
                log.info("no group can be split further: curtailment covers the rest")
                break
            self.regroup_rounds += 1
            groups = await self._settle(ledger, finer)
            self.excluded.update(ledger.excluded)
            self._reply_excluded()
            if not groups:
                raise CoordinatorError("no group left after regrouping")
            self._check_splits(ledger, groups)

        t = time.monotonic()
        await self._commit()  # every input of the decision is durable before it goes out
        await self._send_adjustments(groups, result)
        self.timings["publish_s"] = time.monotonic() - t
        if not self.completed:
            self.completed = True
            self.finished_at = self.clock()
            self._append("done", at=self.finished_at, adjusted=self.adjusted_homes)
        await self._drain(PUBLISH_TIMEOUT_S)
        if self.on_complete is not None:
            self.on_complete()
        if cfg.linger_s > 0:
            log.info("round complete; serving %.0f s more for homes that reconnect",
                     cfg.linger_s)
            await asyncio.sleep(cfg.linger_s)
            await self._drain(PUBLISH_TIMEOUT_S)

    async def _solve(self, problem: Problem) -> Result:
        """The engine's result for the i-th solve of the round (journaled: a restart reuses it,
        so a time-limited exact solve cannot come out differently the second time)."""
        i = self._nsolve
        self._nsolve += 1
        fp = fingerprint(problem, self.cfg.solver)
        logged = self._solves.get(i)
        if logged is not None:
            if logged.get("fp") != fp:
                raise CoordinatorError(f"journal diverged at solve {i}: the problem differs")
            return result_from_json(logged["result"])
        t = time.monotonic()
        try:
            result = await asyncio.to_thread(solve, problem, self.cfg.solver)
        except Exception as e:
            log.exception("adjustment engine failed")
            raise CoordinatorError(f"adjustment engine ({self.cfg.solver}) failed: {e!r}") from e
        self.timings["solve_s"] += time.monotonic() - t
        self._append("solve", i=i, fp=fp, result=result_to_json(result))
        return result

    @staticmethod
    def _check_splits(ledger: SumLedger, groups: Sequence[Group]) -> None:
        """The halves of a split must add up to their parent (mod 2^32): the brokers' sums are
        consistent with each other and over time, or nothing they said can be trusted."""
        families: dict[str, list[Group]] = {}
        for g in groups:
            if g.parent is not None:
                families.setdefault(g.parent.id, []).append(g)
        for kids in families.values():
            parent = kids[0].parent
            assert parent is not None
            got = sum(ledger.total_quanta(g) for g in kids) % (1 << 32)
            if not np.array_equal(got, ledger.total_quanta(parent)):
                raise CoordinatorError(
                    f"inconsistent mask sums: the parts of group {parent.id} "
                    f"({', '.join(g.id for g in kids)}) do not add up to it"
                )

    async def _await_capacity(self) -> Capacity:
        if self.capacity is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity_seen.wait(), self.cfg.capacity_wait_s)
        if self.capacity is None:
            raise CoordinatorError(
                f"no capacity profile: none on {protocol_svc.t_capacity()} (retained, "
                f"{self.cfg.frames} frames) within {self.cfg.capacity_wait_s}s and no "
                "--capacity-file"
            )
        return self.capacity

    def _problem(self, ledger: SumLedger, groups: Sequence[Group], capacity: Capacity,
                 policy: Policy) -> Problem:
        totals = np.stack([ledger.total_quanta(g) for g in groups]) * self.cfg.quantum_wh
        mags = np.array([g.magnification for g in groups], dtype=np.int64)
        return Problem(totals=totals, capacity=capacity.capacity_wh, magnification=mags,
                       policy=policy)

    # ------------------------------------------------------------ mask brokers

    async def _settle(self, ledger: SumLedger, groups: list[Group]) -> list[Group]:
        t = time.monotonic()

        async def ask(broker: str, gs: list[Group]) -> dict[str, Answer]:
            return await self._ask(broker, gs, ledger)

        async def grace() -> None:
            if self._nreq + 1 not in self._asks:  # replaying journaled answers: no need
                await asyncio.sleep(min(GRACE_STEP_S, self.cfg.missing_grace_s))

        try:
            return await settle(ledger, groups, ask, grace)
        finally:
            self.timings["sums_s"] += time.monotonic() - t
            for r in ledger.refused[self._refused_logged:]:
                log.error("mask broker %s refused group %s: %s%s", r["broker"], r["id"],
                          r["reason"], f" (missing {r['missing']})" if "missing" in r else "")
            self._refused_logged = len(ledger.refused)

    async def _ask(self, broker: str, groups: list[Group], ledger: SumLedger
                   ) -> dict[str, Answer]:
        self._nreq += 1
        seq = self._nreq
        entries = [list(ledger.request_entry(g)) for g in groups]
        logged = self._asks.get(seq)
        if logged is not None:
            if logged.broker != broker or logged.entries != entries:
                raise CoordinatorError(
                    f"journal diverged at group request {seq} ({logged.req}): it asked "
                    f"{logged.broker} for {[e[0] for e in logged.entries]}, this run would ask "
                    f"{broker} for {[e[0] for e in entries]}")
            req = logged.req
        else:
            req = f"q{seq}-{secrets.token_hex(6)}"
            self._asks[seq] = _Ask(broker, req, entries)
            self._append("ask", seq=seq, broker=broker, req=req, groups=entries)
            await self._commit()
        key = (broker, req)
        if key in self._answers:
            return self._answers[key]
        fut: asyncio.Future[dict[str, Answer]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        rc = self.round_cfg
        topic = protocol_svc.t_groupreq(broker)
        payload = protocol.encode(protocol_svc.make_group_request(
            req, rc.day, rc.round, [(e[0], e[1], e[2]) for e in entries]))
        self._open[key] = (topic, payload)
        deadline = time.monotonic() + self.cfg.answer_timeout_s
        try:
            while True:
                await self._publish(topic, payload)
                log.info("asked %s for %d group sum(s) (req %s)", broker, len(groups), req)
                left = deadline - time.monotonic()
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(left, self.cfg.reask_s))
                except TimeoutError:
                    if deadline - time.monotonic() <= 0:
                        break
                    log.warning("no answer from %s to req %s yet: asking again", broker, req)
            log.error("mask broker %s did not answer req %s within %ss", broker, req,
                      self.cfg.answer_timeout_s)
            self._answers[key] = {}
            self._append("answer", broker=broker, req=req, timeout=True)
            return {}
        finally:
            self._pending.pop(key, None)
            self._open.pop(key, None)

    def _reply_excluded(self) -> None:
        assert self.state is not None
        rc = self.round_cfg
        for h, ex in self.excluded.items():
            if h in self._replied or h not in self.state.reports:
                continue
            self._replied.add(h)
            log.error("home %s excluded: %s (group %s, broker %s%s)", h, ex.reason, ex.group,
                      ex.broker, f", {ex.detail}" if ex.detail else "")
            msg = protocol_svc.make_reply(rc.day, rc.round, self.state.reports[h].report_id, False,
                                      ex.reason)
            self._bulk(protocol.t_reply("coordinator", h), protocol.encode(msg))

    # ------------------------------------------------------------ adjustments

    async def _send_adjustments(self, groups: Sequence[Group], result: Result) -> None:
        rc = self.round_cfg
        moves: list[list[tuple[int, int]]] = [[] for _ in groups]
        curtail: list[list[int]] = [[] for _ in groups]
        for g, f, t in result.moves:
            moves[g].append((f, t))
        for g, f in result.curtail:
            curtail[g].append(f)
        out: list[tuple[str, bytes]] = []
        for i, grp in enumerate(groups):
            adj = protocol_svc.make_adjustment(rc.day, rc.round, grp.id, sorted(moves[i]),
                                           sorted(curtail[i]), rc.expires)
            payload = protocol.encode(adj)
            out += [(protocol.t_adjust(h), payload) for h in grp.members]
        self._adjustments = out
        self._adjustment_of = {protocol.topic_tail(t, "adjust")[0]: p  # type: ignore[index]
                               for t, p in out}
        pause = self.cfg.pause_at
        limit = len(out)
        if pause is not None and pause.startswith("adjust:"):
            # fault injection (tests): only the first N adjustments go out, then nothing moves
            limit = min(limit, int(pause.split(":", 1)[1]))
        for topic, payload in out[:limit]:
            self._bulk(topic, payload)
        assert self.ingest is not None
        try:
            await self.ingest.flush(PUBLISH_TIMEOUT_S)
        except TimeoutError as e:
            raise CoordinatorError(
                f"adjustments not acknowledged by the broker within {PUBLISH_TIMEOUT_S}s") from e
        if limit < len(out):
            log.warning("pausing (--debug-pause-at %s)", pause)
            await asyncio.Event().wait()
        self.adjusted_homes = len(out)
        log.info("adjustments sent to %d homes in %d groups", len(out), len(groups))

    # ------------------------------------------------------------ the record

    def result(self, status: str, error: str | None = None) -> dict[str, Any]:
        """The round's record (the --result JSON; the module docstring lists every field)."""
        rc, res, ledger = self.round_cfg, self.solution, self.ledger
        q = self.cfg.quantum_wh

        def ints(a: npt.NDArray[Any] | None) -> list[int] | None:
            return None if a is None else [int(x) for x in a]

        groups = []
        for g in self.groups:
            total = ledger.total_quanta(g) * q if ledger is not None else None
            groups.append({"id": g.id, "size": g.size, "magnification": g.magnification,
                           "members": sorted(g.members), "total_wh": ints(total)})
        gid = [g.id for g in self.groups]
        return {
            "status": status,
            "error": error,
            "day": rc.day,
            "round": rc.round,
            "start": rc.start,
            "deadline": rc.deadline if self.state is not None else None,
            "k": self.cfg.k,
            "brokers": list(rc.brokers),
            "homes": self.state.accepted if self.state is not None else 0,
            "adjusted_homes": self.adjusted_homes,
            "excluded": [e.as_json() for e in self.excluded.values()],
            "late_homes": sorted(self.late_homes),
            "frames": rc.frames,
            "frame_s": rc.frame_s,
            "quantum_wh": q,
            "capacity_wh": ints(self.capacity.capacity_wh) if self.capacity else None,
            "target_wh": ints(self.capacity.target_wh) if self.capacity else None,
            "coordinator_load_before_wh": ints(res.load_before) if res else None,
            "coordinator_load_after_wh": ints(res.load_after) if res else None,
            "overload_before_wh": res.overload_before_wh if res else None,
            "overload_after_wh": res.overload_after_wh if res else None,
            "residual_overload_wh": res.residual_overload_wh if res else None,
            "moved_wh": res.moved_wh if res else None,
            "curtailed_wh": res.curtailed_wh if res else None,
            "groups": groups,
            "moves": [[gid[g], f, t] for g, f, t in res.moves] if res else [],
            "curtail": [[gid[g], f] for g, f in res.curtail] if res else [],
            "regroup_rounds": self.regroup_rounds,
            "solver": res.solver if res else self.cfg.solver,
            "solve_status": res.status if res else None,
            "mip_gap": res.mip_gap if res else None,
            "best_bound": res.best_bound if res else None,
            "window": self.cfg.window,
            "released_groups": ledger.released if ledger else [],
            "refused_groups": ledger.refused if ledger else [],
            "rejections": self.rejections.as_dict(),
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "state_dir": None if self.cfg.state_dir is None else str(self.cfg.state_dir),
            "resumed": self.restarts > 0,
            "restarts": self.restarts,
            "mqtt_connects": self.link.connects if self.link is not None else 0,
            "ingest": dict(self.ingest.stats) if self.ingest is not None else None,
        }
