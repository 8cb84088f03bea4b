"""The mask broker's MQTT adapter: aiomqtt in, MaskBroker (core.py) in the middle, files out.

One persistent session (clean_session=False, client id = broker id), so QoS 1 masks published
while the service was briefly away are delivered when it is back.  Each message goes through
`MaskBroker.handle`; its records are persisted (state dir) before its publishes are sent.
Connection loss is the one failure this layer recovers from: reconnect with jittered backoff.
SIGTERM / SIGINT end it cleanly, stats flushed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from backend.common.mqtt import MqttSettings
from hemsfw import protocol

from .core import MaskBroker, Publish, Record
from .store import StateDir, write_atomic

log = logging.getLogger("hems.mask_broker")

#: Publishes awaiting their PUBACK at once (replies and group sums are sent in the background).
MAX_INFLIGHT = 1000
#: How long a stop or a lost connection waits for those publishes before giving up on them.
DRAIN_S = 2.0


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


def _code(g: int | ReasonCode) -> int:
    return g if isinstance(g, int) else int(g.value)


class Service:
    def __init__(self, core: MaskBroker, settings: MqttSettings,
                 state: StateDir | None = None, stats_file: Path | None = None,
                 stats_interval: float = 1.0) -> None:
        self.core = core
        self.settings = dataclasses.replace(settings, client_id=core.id)
        self.state = state
        self.stats_file = stats_file
        self.stats_interval = stats_interval
        self.backoff = Backoff()
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self._written = -1  # core.version last written to the stats file
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM / SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._mqtt(), name="mqtt"),
                         tg.create_task(self._stats(), name="stats")]
                await stop.wait()
                log.info("stopping")
                for t in tasks:
                    t.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.connected = False
            self.write_stats(force=True)
            if self.state is not None:
                self.state.close()

    async def _mqtt(self) -> None:
        s = self.settings
        while True:
            try:
                async with s.client(clean_session=False) as client:
                    for topic, qos in self.core.subscriptions():
                        granted = await client.subscribe(topic, qos=qos)
                        if any(_code(g) >= 0x80 for g in granted):
                            log.error("the broker refused the subscription to %s (ACL?)", topic)
                    self.connected, self.last_error = True, None
                    self.connects += 1
                    self.backoff.reset()
                    log.info("connected to %s:%d as %s", s.host, s.port, s.username)
                    self.write_stats(force=True)
                    try:
                        async for message in client.messages:
                            await self._on_message(client, message)
                    finally:  # also on a clean stop: let answers already made go out
                        if self._tasks:
                            await asyncio.wait(self._tasks, timeout=DRAIN_S)
            except aiomqtt.MqttError as e:
                self.last_error = str(e)
            finally:
                self.connected = False
                for t in list(self._tasks):
                    t.cancel()
            delay = self.backoff.next()
            log.warning("MQTT: %s; reconnecting in %.1fs", self.last_error, delay)
            self.write_stats(force=True)
            await asyncio.sleep(delay)

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            self.write_stats()

    # ------------------------------------------------------------ messages

    async def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        p = message.payload
        payload = bytes(p) if isinstance(p, bytes | bytearray) else b""
        answered = False
        groupsum = protocol.t_groupsum(self.core.id)
        for out in self.core.handle(message.topic.value, payload):
            if isinstance(out, Record):
                if self.state is not None:
                    self.state.write(out)  # before anything that depends on it is published
            else:
                await self._inflight.acquire()
                task = asyncio.create_task(self._publish(client, out))
                self._tasks.add(task)
                task.add_done_callback(self._done)
                answered |= out.topic == groupsum
        if answered:
            self.write_stats(force=True)

    async def _publish(self, client: aiomqtt.Client, p: Publish) -> None:
        try:
            await client.publish(p.topic, p.payload, qos=p.qos)
        except aiomqtt.MqttError as e:
            # Lost with the connection: a home re-sends its report, the coordinator re-asks
            # (answering the same group again is allowed and gives the same sum).
            log.warning("publish to %s failed: %s", p.topic, e)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight.release()

    # ------------------------------------------------------------ stats

    def stats_dict(self) -> dict[str, Any]:
        d = self.core.stats_dict()
        d["mqtt"] = {"connected": self.connected, "connects": self.connects,
                     "last_error": self.last_error}
        d["state_dir"] = None if self.state is None else str(self.state.path)
        d["pid"] = os.getpid()
        d["written_at"] = time.time()
        return d

    def write_stats(self, force: bool = False) -> None:
        if self.stats_file is None or (not force and self._written == self.core.version):
            return
        self._written = self.core.version
        try:
            write_atomic(self.stats_file, json.dumps(self.stats_dict(), indent=1), 0o644)
        except OSError as e:
            log.error("cannot write %s: %s", self.stats_file, e)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # paho's own chatter is the adapter's business; keep it at warning.
    logging.getLogger("mqtt").setLevel(max(logging.WARNING, logging.getLogger().level))

