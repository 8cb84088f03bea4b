"""The coordinator's MQTT adapter (aiomqtt): runs one round end to end.

Every decision is taken by the pure modules: round.py (which plan reports count), grouping.py
(which homes form a group), sums.py (what to ask the mask brokers and what their answers mean) and
adjust/ (the moves).  This module moves bytes, keeps time and writes down what happened:

1. connect (persistent session, client id ``coordinator``), subscribe at QoS 1 to
   ``hems/v1/plan/+``, ``hems/v1/groupsum/+`` and ``hems/v1/capacity``;
2. announce the round, retained, on ``hems/v1/round``; collect plan reports until the deadline or
   until ``expected_homes`` homes were accepted; every report gets a reply;
3. take the capacity profile (file, or the retained ``hems/v1/capacity``);
4. group the homes, ask every mask broker for every group's mask sum, compute the group totals;
5. solve; while overload remains after the moves and a group can be split, split, ask for the new
   groups' sums and solve again;
6. send every member of every group the same adjustment (QoS 1, not retained) and wait until the
   broker has acknowledged each one.

One reader task dispatches every incoming message for the whole run (late reports are still
answered while the round is being solved); the round itself is the main task.  Failure has one
signal: ``CoordinatorError`` with a message for the operator.

Accepted homes that cannot be counted (exclusions, sums.py) get a second reply, ``rejected`` with
the exclusion reason (``mask_missing``, ``atom_guard``, ``group_too_small``, ``refused``,
``no_answer``, ``too_few_homes``), and no adjustment: they follow their own plan.

The round's record (``Coordinator.result``, written by ``--result``)
--------------------------------------------------------------------
``status`` "completed" | "failed", ``error`` (the reason, or null); ``day``, ``round``,
``start``, ``deadline`` (null if the round was never announced), ``k``, ``brokers``, ``window``;
``homes`` (reports accepted), ``adjusted_homes`` (adjustments acknowledged by the broker),
``excluded`` ([{home, reason, group, broker, detail}]); ``frames``, ``frame_s``, ``quantum_wh``;
``capacity_wh``, ``target_wh`` (Wh per frame, or null); ``coordinator_load_before_wh`` and
``coordinator_load_after_wh`` (per frame, from the group totals: before, and after moves and
curtailment); ``overload_before_wh``, ``overload_after_wh`` (after moves, before curtailment),
``residual_overload_wh`` (after curtailment), ``moved_wh``, ``curtailed_wh``; ``groups`` (the
final grouping: [{id, size, magnification, members, total_wh}]), ``moves`` ([group id, from,
to]), ``curtail`` ([group id, frame]); ``regroup_rounds`` (refinements asked for), ``solver``,
``solve_status``, ``mip_gap``, ``best_bound`` (from the engine); ``released_groups``
([{id, broker, size}]), ``refused_groups`` ([{id, broker, reason, missing?}]), ``rejections``
(counts by "kind:reason"), ``timings`` (collect_s, sums_s, solve_s, publish_s).  Values not
reached by a failed round are null (or empty lists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import numpy as np
import numpy.typing as npt

from backend.common.mqtt import MqttSettings
from backend.common.rejects import Rejections
from backend.coordinator.adjust import Policy, Problem, Result, solve
from backend.coordinator.grouping import Group, initial_grouping, refine
from backend.coordinator.round import Capacity, RoundConfig, RoundState, parse_capacity
from backend.coordinator.sums import Answer, Exclusion, SumLedger, parse_answer, settle
from hemsfw import protocol

__all__ = ["Coordinator", "CoordinatorError", "ServiceConfig"]

log = logging.getLogger("hems.coordinator")

TOPICS = (protocol.t_plan("+"), protocol.t_groupsum("+"), protocol.t_capacity())
MAX_REGROUP = 32  # refinement rounds (each at least doubles a group count; 2^32 >> any N)
PUBLISH_TIMEOUT_S = 60.0
INFLIGHT = 200  # concurrent QoS 1 publishes


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


def _bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()


def _failed(granted: object) -> bool:
    """A SUBACK return code (int in MQTT 3.1.1, ReasonCode in 5) that refuses the subscription."""
    v = getattr(granted, "value", granted)
    return isinstance(v, int) and v >= 0x80


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
        self.capacity: Capacity | None = None
        self.groups: list[Group] = []
        self.solution: Result | None = None
        self.regroup_rounds = 0
        self.adjusted_homes = 0
        self.timings: dict[str, float] = {"collect_s": 0.0, "sums_s": 0.0, "solve_s": 0.0,
                                          "publish_s": 0.0}
        self._client: aiomqtt.Client | None = None
        self._enough = asyncio.Event()
        self._capacity_seen = asyncio.Event()
        self._pending: dict[tuple[str, str], asyncio.Future[dict[str, Answer]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(INFLIGHT)
        self._nreq = 0
        self._replied: set[str] = set()
        self._refused_logged = 0

    # ------------------------------------------------------------ entry point

    async def run(self) -> None:
        """Run the round; raises CoordinatorError when it cannot complete."""
        cfg = self.cfg
        if cfg.capacity_file is not None:
            self.capacity = self._read_capacity_file(cfg.capacity_file)
        deadline = math.ceil(self.clock() + cfg.collect_s)
        self.round_cfg = replace(self.round_cfg, deadline=deadline)
        try:
            self.round_cfg.validate()
        except ValueError as e:
            raise CoordinatorError(f"invalid round parameters: {e}") from None
        self.state = RoundState(self.round_cfg)
        s = self.settings
        try:
            async with s.client(clean_session=False, max_inflight_messages=INFLIGHT) as client:
                client.pending_calls_threshold = 100_000
                self._client = client
                granted = await client.subscribe([(t, 1) for t in TOPICS])
                if any(_failed(q) for q in granted):
                    raise CoordinatorError(
                        f"broker refused a subscription to {TOPICS} as user {s.username!r} "
                        f"(granted {list(granted)}): check the ACL"
                    )
                async with asyncio.TaskGroup() as tg:
                    reader = tg.create_task(self._read(client), name="reader")
                    main = tg.create_task(self._round(), name="round")
                    main.add_done_callback(lambda _: reader.cancel())
        except BaseExceptionGroup as eg:
            exc = _leaf(eg)
            if isinstance(exc, CoordinatorError):
                raise exc from None
            if isinstance(exc, aiomqtt.MqttError):
                raise CoordinatorError(f"MQTT connection lost: {exc}") from exc
            raise
        except aiomqtt.MqttError as e:
            raise CoordinatorError(
                f"MQTT: cannot use broker {s.host}:{s.port} as {s.username!r}: {e}"
            ) from e
        finally:
            self._client = None
            for t in list(self._background):
                t.cancel()

    def _read_capacity_file(self, path: Path) -> Capacity:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CoordinatorError(f"capacity file {path}: {e.strerror or e}") from None
        try:
            return parse_capacity(raw, self.cfg.frames)
        except ValueError as e:
            raise CoordinatorError(
                f"capacity file {path}: {e} (expected protocol.make_capacity JSON for "
                f"{self.cfg.frames} frames)"
            ) from None

    # ------------------------------------------------------------ incoming messages

    async def _read(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            topic = msg.topic.value
            payload = _bytes(msg.payload)
            try:
                self._dispatch(topic, payload, bool(msg.retain))
            except Exception:  # no payload may stop the service
                log.exception("internal error handling a message on %r", topic)
                self.rejections.reject("message", "internal_error", topic)

    def _dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic.startswith(protocol.PREFIX + "/plan/"):
            self._on_plan(topic, payload, retained)
        elif topic.startswith(protocol.PREFIX + "/groupsum/"):
            self._on_groupsum(topic, payload)
        elif topic == protocol.t_capacity():
            self._on_capacity(topic, payload)
        else:
            self.rejections.reject("message", "unexpected_topic", topic)

    def _on_plan(self, topic: str, payload: bytes, retained: bool) -> None:
        assert self.state is not None
        v = self.state.offer(topic, payload, self.clock(), retained)
        if v.accepted:
            log.info("plan from %s accepted (%d)", v.home, self.state.accepted)
            n = self.cfg.expected_homes
            if n is not None and self.state.accepted >= n:
                self._enough.set()
        else:
            self.rejections.reject("plan", v.reason, topic, "(retained)" if retained else "")
        reply = v.reply(self.round_cfg)
        if reply is not None:
            self._publish_soon(*reply)

    def _on_groupsum(self, topic: str, payload: bytes) -> None:
        try:
            broker, req, results = parse_answer(topic, payload, self.round_cfg)
        except ValueError as e:
            self.rejections.reject("groupsum", str(e), topic)
            return
        fut = self._pending.get((broker, req))
        if fut is None or fut.done():
            self.rejections.reject("groupsum", "unknown_req", topic, req)
            return
        fut.set_result(results)

    def _on_capacity(self, topic: str, payload: bytes) -> None:
        if self.cfg.capacity_file is not None:
            log.info("capacity on %s ignored: --capacity-file given", topic)
            return
        try:
            cap = parse_capacity(payload, self.cfg.frames)
        except ValueError as e:
            self.rejections.reject("capacity", str(e), topic)
            return
        self.capacity = cap
        self._capacity_seen.set()
        log.info("capacity profile received (%d frames)", self.cfg.frames)

    # ------------------------------------------------------------ publishing

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self._client is not None
        async with self._sem:
            await self._client.publish(topic, payload, qos=1, retain=retain,
                                       timeout=PUBLISH_TIMEOUT_S)

    def _publish_soon(self, topic: str, payload: bytes) -> None:
        """Fire-and-track (replies): the reader must not wait for acknowledgements."""
        task = asyncio.get_running_loop().create_task(self._publish(topic, payload))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reply not delivered: %s", task.exception())

    async def _drain(self, timeout: float) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    # ------------------------------------------------------------ the round

    async def _round(self) -> None:
        cfg, rc = self.cfg, self.round_cfg
        state = self.state
        assert state is not None
        t0 = time.monotonic()
        await self._publish(protocol.t_round(), protocol.encode(rc.announcement()), retain=True)
        log.info("round %s/%d announced: %d frames of %ds, quantum %d Wh, deadline %d, brokers %s",
                 rc.day, rc.round, rc.frames, rc.frame_s, rc.quantum_wh, rc.deadline,
                 ",".join(rc.brokers))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._enough.wait(), max(0.0, rc.deadline - self.clock()))
        state.close()
        self.timings["collect_s"] = time.monotonic() - t0
        log.info("collection closed: %d homes accepted, %d rejections", state.accepted,
                 self.rejections.total())

        capacity = await self._await_capacity()

        homes, masked = state.masked_matrix()
        mags = {h: state.reports[h].mag for h in homes}
        groups = initial_grouping(mags, cfg.k, prefix=f"r{rc.round}g")
        if not groups:
            for h in homes:
                self.excluded[h] = Exclusion(h, "too_few_homes", "", None,
                                             f"{len(homes)} homes < k={cfg.k}")
            self._reply_excluded()
            await self._drain(PUBLISH_TIMEOUT_S)
            raise CoordinatorError(
                f"only {len(homes)} home(s) accepted: fewer than k={cfg.k}, no group can be formed"
            )
        ledger = SumLedger(rc.brokers, cfg.k, homes, masked,
                           {h: state.reports[h].report_id for h in homes})
        self.ledger = ledger
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
            t = time.monotonic()
            try:
                result = await asyncio.to_thread(solve, problem, cfg.solver)
            except Exception as e:
                log.exception("adjustment engine failed")
                raise CoordinatorError(f"adjustment engine ({cfg.solver}) failed: {e!r}") from e
            self.timings["solve_s"] += time.monotonic() - t
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
        await self._send_adjustments(groups, result)
        self.timings["publish_s"] = time.monotonic() - t
        await self._drain(PUBLISH_TIMEOUT_S)

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
                f"no capacity profile: none on {protocol.t_capacity()} (retained, "
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
            await asyncio.sleep(self.cfg.missing_grace_s)

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
        req = f"q{self._nreq}-{secrets.token_hex(6)}"
        fut: asyncio.Future[dict[str, Answer]] = asyncio.get_running_loop().create_future()
        self._pending[(broker, req)] = fut
        rc = self.round_cfg
        msg = protocol.make_group_request(req, rc.day, rc.round,
                                          [ledger.request_entry(g) for g in groups])
        try:
            await self._publish(protocol.t_groupreq(broker), protocol.encode(msg))
            log.info("asked %s for %d group sum(s) (req %s)", broker, len(groups), req)
            return await asyncio.wait_for(fut, self.cfg.answer_timeout_s)
        except TimeoutError:
            log.error("mask broker %s did not answer req %s within %ss", broker, req,
                      self.cfg.answer_timeout_s)
            return {}
        finally:
            self._pending.pop((broker, req), None)

    def _reply_excluded(self) -> None:
        assert self.state is not None
        rc = self.round_cfg
        for h, ex in self.excluded.items():
            if h in self._replied or h not in self.state.reports:
                continue
            self._replied.add(h)
            log.error("home %s excluded: %s (group %s, broker %s%s)", h, ex.reason, ex.group,
                      ex.broker, f", {ex.detail}" if ex.detail else "")
            msg = protocol.make_reply(rc.day, rc.round, self.state.reports[h].report_id, False,
                                      ex.reason)
            self._publish_soon(protocol.t_reply("coordinator", h), protocol.encode(msg))

    # ------------------------------------------------------------ adjustments

    async def _send_adjustments(self, groups: Sequence[Group], result: Result) -> None:
        rc = self.round_cfg
        moves: list[list[tuple[int, int]]] = [[] for _ in groups]
        curtail: list[list[int]] = [[] for _ in groups]
        for g, f, t in result.moves:
            moves[g].append((f, t))
        for g, f in result.curtail:
            curtail[g].append(f)
        jobs: list[Coroutine[Any, Any, None]] = []
        for i, grp in enumerate(groups):
            adj = protocol.make_adjustment(rc.day, rc.round, grp.id, sorted(moves[i]),
                                           sorted(curtail[i]), rc.expires)
            payload = protocol.encode(adj)
            jobs += [self._publish(protocol.t_adjust(h), payload) for h in grp.members]
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), PUBLISH_TIMEOUT_S)
        except (TimeoutError, aiomqtt.MqttError) as e:
            raise CoordinatorError(f"adjustments not acknowledged by the broker: {e!r}") from e
        self.adjusted_homes = len(jobs)
        log.info("adjustments sent to %d homes in %d groups", len(jobs), len(groups))

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
        }

