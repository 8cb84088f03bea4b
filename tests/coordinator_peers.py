"""Test support: the coordinator as a real process, and the MQTT identities a test plays
against it (homes, a fake mask broker answering from masks the test drew)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from backend.common.broker import REPO
from hemsfw import protocol, protocol_svc

DAY = "2026-11-27"
F = 8
FRAME_S = 900
QUANTUM = 5
START = 1_800_000_000
K = 3
WAIT = 20.0  # bound on every single wait
P = protocol.PREFIX


@dataclass
class Peer:
    """One MQTT identity played by the test: its client and what it received, per topic."""

    name: str
    client: aiomqtt.Client
    inbox: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)

    async def next(self, prefix: str, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
        """The next message whose topic starts with ``prefix`` (others are kept in order)."""
        skipped: list[tuple[str, bytes]] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    t, p = await self.inbox.get()
                    if t.startswith(prefix):
                        return t, json.loads(p)
                    skipped.append((t, p))
        finally:
            for item in skipped:
                self.inbox.put_nowait(item)

    async def publish(self, topic: str, payload: bytes | dict[str, Any],
                      retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else protocol.encode(payload)
        await self.client.publish(topic, data, qos=1, retain=retain)


@asynccontextmanager
async def peer(stack: AsyncExitStack, port: int, user: str, password: str,
               subs: Sequence[str]) -> AsyncIterator[Peer]:
    client = aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                            identifier=f"test-{user}-{secrets.token_hex(3)}")
    await stack.enter_async_context(client)
    p = Peer(user, client)

    async def pump() -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes | bytearray)
            p.inbox.put_nowait((m.topic.value, bytes(m.payload)))

    task = asyncio.create_task(pump())
    for s in subs:
        await client.subscribe(s, qos=1)
    try:
        yield p
    finally:
        task.cancel()


class FakeMaskBroker:
    """Answers group requests from masks it was given: missing members, wrong checksum and
    groups below k are refused like the real broker does; every request is recorded."""

    def __init__(self, name: str, masks: dict[str, np.ndarray], rids: dict[str, str]) -> None:
        self.name = name
        self.masks = masks
        self.rids = rids
        self.requests: list[dict[str, Any]] = []
        self.first_request = asyncio.Event()
        self.hold = asyncio.Event()  # answers wait for this
        self.hold.set()

    async def serve(self, p: Peer) -> None:
        while True:
            _, obj = await p.next(f"{P}/groupreq/{self.name}", timeout=3600)
            self.requests.append(obj)
            self.first_request.set()
            await self.hold.wait()
            req, day, rnd, groups = protocol_svc.parse_group_request(obj, 10_000)
            results = []
            for gid, members, checksum, *_ in groups:
                missing = [h for h in members if h not in self.masks]
                if missing:
                    results.append({"id": gid, "status": "refused", "reason": "missing_members",
                                    "missing": missing})
                elif checksum != protocol_svc.report_checksum([self.rids[h] for h in members]):
                    results.append({"id": gid, "status": "refused",
                                    "reason": "checksum_mismatch"})
                elif len(members) < K:
                    results.append({"id": gid, "status": "refused", "reason": "too_small"})
                else:
                    acc = np.zeros(F, dtype=np.uint32)
                    for h in members:
                        acc += self.masks[h]
                    results.append({"id": gid, "status": "released",
                                    "sum": protocol.b64(acc.tobytes())})
            await p.publish(protocol_svc.t_groupsum(self.name),
                            protocol_svc.make_group_sums(req, self.name, day, rnd, results))


@dataclass
class Run:
    rc: int
    result: dict[str, Any]
    log: str
    replies: dict[str, list[str]] = field(default_factory=dict)


async def start_coordinator(tmp: Path, port: int, password: str, *extra: str
                            ) -> tuple[asyncio.subprocess.Process, Path, Path]:
    result = tmp / "result.json"
    log = tmp / "coordinator.log"
    argv = [sys.executable, "-m", "backend.coordinator", "--day", DAY, "--round", "1",
            "--frames", str(F), "--frame-s", str(FRAME_S), "--quantum-wh", str(QUANTUM),
            "--start", str(START), "--brokers", "mb1", "--k", str(K), "--port", str(port),
            "--result", str(result), "--answer-timeout-s", "5", "--missing-grace-s", "0.3",
            *extra]
    env = {**os.environ, "HEMS_MQTT_PASSWORD": password}
    with open(log, "wb") as f:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env, stdout=f,
                                                    stderr=asyncio.subprocess.STDOUT)
    return proc, result, log


async def finish(proc: asyncio.subprocess.Process, result: Path, log: Path) -> Run:
    try:
        rc = await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("coordinator did not finish:\n" + log.read_text()[-4000:]) from None
    data = json.loads(result.read_text()) if result.exists() else {}
    return Run(rc, data, log.read_text())


def users_for(homes: Sequence[str]) -> dict[str, str]:
    return {u: secrets.token_hex(8) for u in ["coordinator", "mb1", "grid", *homes]}



def make_report(home: str, rid: str, mag: int, words: np.ndarray, rnd: int = 1
                ) -> dict[str, Any]:
    return dict(protocol.make_plan_report(home, DAY, rnd, rid, mag, words.astype("<u4").tobytes()))

