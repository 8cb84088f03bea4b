"""Test support: a coordinator round with a list for a network, a clock the test moves, and the
mask broker's own core on the other side (h11's "two cores with a fake network link between").

Homes are made here from the firmware's own masking and sealing (hemsfw), so the messages are
what a real home sends; nothing is built with the coordinator code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.coordinator.daemon import Daemon, DaemonConfig
from backend.coordinator.journal import Journal
from backend.coordinator.lifecycle import Phase
from backend.coordinator.round import Round, RoundSettings
from backend.coordinator.supply import SupplyBook
from backend.mask_broker.core import MaskBroker, Publish
from hemsfw import masking, protocol, protocol_svc, seal

DAY = "2026-11-27"
START = 1_800_000_000
NOW = 1_700_000_000.0


class ListTransport:
    """ports.Transport that keeps everything: ``published`` (acknowledged at once) and ``sent``
    (the batched publishes).  ``peer(topic, payload)`` (if set) sees every publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []
        self.sent: list[tuple[str, bytes]] = []
        self.peer: Any = None

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))
        if self.peer is not None:
            self.peer(topic, payload)

    def send(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    async def flush(self, timeout: float) -> None:
        return None

    def topics(self) -> list[str]:
        return [t for t, _, _ in self.published] + [t for t, _ in self.sent]


class ManualClock:
    """ports.Clock on a number the test moves; ``sleep_until`` waits until it gets there."""

    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float) -> None:
        while self.t < t:
            await asyncio.sleep(0.001)


def settings(**kw: Any) -> RoundSettings:
    base = RoundSettings(day=DAY, round=1, frames=8, frame_s=900, quantum_wh=1, start=START,
                         brokers=("mb1",), k=3, deadline=int(NOW) + 30, capacity_wait_s=0.0,
                         answer_timeout_s=5.0, missing_grace_s=0.0)
    return replace(base, **kw)


def capacity_message(frames: int, wh: int | Sequence[int]) -> bytes:
    vals = [wh] * frames if isinstance(wh, int) else list(wh)
    return protocol.encode(protocol_svc.make_capacity(frames, vals))


@dataclass
class Kit:
    """A round, its transport and clock, its supply book and (optionally) its journal dir."""

    round: Round
    out: ListTransport
    clock: ManualClock
    supply: SupplyBook
    state_dir: Path | None = None


def new_round(state_dir: Path | None = None, clock: ManualClock | None = None,
              capacity: bytes | None = None, **kw: Any) -> Kit:
    s = settings(**kw)
    clock = clock or ManualClock()
    out = ListTransport()
    supply = SupplyBook(fixed=capacity, frames=s.frames)
    journal = Journal(state_dir, s.day, s.round) if state_dir is not None else None
    return Kit(Round(s, out, clock, supply, journal), out, clock, supply, state_dir)


@dataclass
class Homes:
    """Homes that report for real: a plan, a mask from fresh seeds (one per broker, as the
    firmware draws them), the masked plan for the coordinator and the sealed seeds."""

    ids: Sequence[str]
    frames: int = 8
    brokers: Sequence[str] = ("mb1",)
    mags: dict[str, int] = field(default_factory=dict)
    seed: int = 1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.keys = {h: {b: os.urandom(32) for b in self.brokers} for h in self.ids}
        self.plans = {h: rng.integers(0, 500, self.frames) for h in self.ids}
        self.report_ids: dict[str, str] = {}

    def mag(self, h: str) -> int:
        return self.mags.get(h, 2)

    def reports(self, day: str = DAY, rnd: int = 1, homes: Iterable[str] | None = None,
                mismatched: Iterable[str] = (), bad_seal: Iterable[str] = ()
                ) -> tuple[list[tuple[str, bytes]], dict[str, list[tuple[str, bytes]]]]:
        """(plan messages, {broker: mask messages}) for ``homes`` (default all); the homes in
        ``mismatched`` seal their seeds under another report id than their plan's, those in
        ``bad_seal`` with a key the broker does not hold."""
        plans, masks = [], {b: [] for b in self.brokers}  # type: ignore[var-annotated]
        rogue, forged = set(mismatched), set(bad_seal)
        for h in homes if homes is not None else self.ids:
            rid = os.urandom(16).hex()
            self.report_ids[h] = rid
            seeds = {b: os.urandom(protocol.SEED_LEN) for b in self.brokers}
            mask = np.zeros(self.frames, dtype=np.uint32)
            for sd in seeds.values():
                mask += np.frombuffer(masking.expand_seed(sd, self.frames), dtype="<u4")
            masked = (self.plans[h].astype(np.uint32) + mask).astype("<u4").tobytes()
            plans.append((protocol.t_plan(h), protocol.encode(
                protocol.make_plan_report(h, day, rnd, rid, self.mag(h), masked))))
            mrid = os.urandom(16).hex() if h in rogue else rid
            for b, sd in seeds.items():
                key = os.urandom(32) if h in forged else self.keys[h][b]
                blob = seal.seal(key, protocol.mask_ad(b, h, day, rnd, mrid), sd,
                                 os.urandom(seal.NONCE_LEN))
                masks[b].append((protocol.t_mask(b, h), protocol.encode(
                    protocol.make_mask_report(h, day, rnd, mrid, blob))))
        return plans, masks

    def broker_keys(self, b: str) -> dict[str, bytes]:
        return {h: self.keys[h][b] for h in self.ids}


async def announced(kit: Kit) -> None:
    """Drive the round until it collects, then stop driving it (the test takes over)."""
    task = asyncio.create_task(kit.round.run())
    await until_phase(kit, Phase.COLLECTING)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def daemon_for(kit: Kit) -> Daemon:
    """A daemon whose current round is the kit's (the adapter's way in: ``dispatch``)."""
    d = Daemon(DaemonConfig(kit.round.s), kit.clock, kit.supply)
    d.attach(kit.out)
    d.open.append(kit.round)
    d.current = kit.round
    return d


def wire(kit: Kit, brokers: dict[str, MaskBroker]) -> None:
    """Connect the round to mask broker cores: a group request the round publishes is handled
    by the broker's core and its answer fed back to the round on the next loop turn."""
    loop = asyncio.get_running_loop()

    def peer(topic: str, payload: bytes) -> None:
        if topic == protocol.t_round():
            for mb in brokers.values():
                mb.handle(topic, payload)
            return
        tail = protocol.topic_tail(topic, "groupreq")
        if tail is None:
            return
        for o in brokers[tail[0]].handle(topic, payload):
            if isinstance(o, Publish):
                loop.call_soon(kit.round.take_groupsum, o.topic, o.payload)

    kit.out.peer = peer


def take_all(kit: Kit, plans: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Hand plan reports to the round as the adapter does; returns the replies."""
    out: list[tuple[str, bytes]] = []
    for topic, payload in plans:
        kit.round.take_plan(topic, payload, False, out)
    return out


async def until_phase(kit: Kit, *phases: Any, timeout: float = 10.0) -> None:
    async def wait() -> None:
        while kit.round.phase not in phases:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(wait(), timeout)


async def play(kit: Kit, homes: Homes, k: int = 3, mismatched: Iterable[str] = (),
               bad_seal: Iterable[str] = ()) -> None:
    """Run the kit's round to its end against mask broker cores (one per broker of the round):
    every home of ``homes`` reports once the round collects (``mismatched``, ``bad_seal``:
    Homes.reports)."""
    mbs = {b: MaskBroker(b, homes.broker_keys(b), k) for b in kit.round.s.brokers}
    wire(kit, mbs)
    task = asyncio.create_task(kit.round.run())
    await until_phase(kit, Phase.COLLECTING)
    plans, masks = homes.reports(mismatched=mismatched, bad_seal=bad_seal)
    for b, msgs in masks.items():
        for topic, payload in msgs:
            mbs[b].handle(topic, payload)
    take_all(kit, plans)
    await task
