"""The mask broker's MQTT adapter: MQTT in, MaskBroker (core.py) in the middle, files out.

Two persistent sessions (clean start off), so QoS 1 messages published while the service was
briefly away are delivered when it is back:

* the bulk topic, ``hems/v1/mask/<id>/+`` (one sealed seed per home and round), on a lean
  client (backend/common/bulk_mqtt.py, client id ``<id>-ingest``): every PUBLISH of one read
  goes through `MaskBroker.handle` in one synchronous batch, the batch's mask records are
  written with one write, and only then are the replies queued (pre-encoded QoS 1, written in
  batches on the same connection) and the batch's PUBACKs written (docs/scaling.md);
* everything else (the round announcement, group requests, and the group sums out) on aiomqtt
  (client id = broker id), one message at a time: records persisted before its publishes.

Connection loss is the one failure this layer recovers from: both reconnect with jittered
backoff.  SIGTERM / SIGINT end it cleanly, stats flushed.

With a metrics port, Prometheus metrics (``hems_mask_broker_*``, `Service.samples`) are served
on ``http://HOST:PORT/metrics`` (backend/common/metrics.py): masks accepted, messages rejected
by kind and reason, rounds, group requests, groups released and refused by reason, the
partition's atoms, time spent answering, and the round latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from backend.common import metrics
from backend.common.backoff import Backoff
from backend.common.bulk_mqtt import BulkClient, BulkMqttError, Message
from backend.common.files import write_atomic
from backend.common.metrics import Sample
from backend.common.mqtt import MqttSettings
from backend.common.sdnotify import notify, watchdog_interval_s
from hemsfw import protocol, protocol_svc

from .core import MaskBroker, Publish, Record
from .release_log import ReleaseLog
from .state_dir import StateDir

log = logging.getLogger("hems.mask_broker")

#: Publishes awaiting their PUBACK at once (replies and group sums are sent in the background).
MAX_INFLIGHT = 1000
#: The stats file is rewritten at least this often (seconds), changed or not.
HEARTBEAT_S = 30.0
#: How long a stop or a lost connection waits for those publishes before giving up on them.
DRAIN_S = 2.0


class Fatal(Exception):
    """The service stopped on its own: a refusal retrying cannot fix, or a state dir that
    cannot be written (the message says which)."""


class MetricsUnavailable(Exception):
    """The metrics port could not be bound (the message says where and why)."""


def _code(g: int | ReasonCode) -> int:
    return g if isinstance(g, int) else int(g.value)


class Service:
    def __init__(self, core: MaskBroker, settings: MqttSettings,
                 state: StateDir | None = None, stats_file: Path | None = None,
                 stats_interval: float = 1.0, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", release_log: ReleaseLog | None = None) -> None:
        self.core = core
        self.release_log = release_log
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
        # Metrics kept here (the core's counters are read as they are, at scrape time).
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.rounds = 0  # new rounds seen since start (a restored round is not counted)
        self._round = _round_key(core)
        self._round_t0: float | None = None
        self.round_latency_s: float | None = None
        self.groupreq_s = 0.0
        self.fatal: str | None = None  # why the service stopped on its own
        self._stop = asyncio.Event()
        self.bulk_topic = protocol.t_mask(core.id, "+")
        s = self.settings
        self.ingest = BulkClient(
            s.host, s.port, f"{core.id}-ingest", f"{s.username}-ingest", s.password,
            [(self.bulk_topic, 1)], self._on_batch, tls=s.tls_context(),
            max_packet=protocol.MAX_PAYLOAD + 1024, log=log)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM, SIGINT or SIGHUP."""
        stop = self._stop
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        server: asyncio.Server | None = None
        try:
            if self.metrics_port is not None:
                try:
                    server = await metrics.serve(self.metrics_port, self.samples,
                                                 self.metrics_host)
                except OSError as e:
                    raise MetricsUnavailable(
                        f"{self.metrics_host}:{self.metrics_port}: {e}") from e
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._mqtt(), name="mqtt"),
                         tg.create_task(self._stats(), name="stats")]
                ingest = tg.create_task(self._ingest(), name="ingest")
                ingest.add_done_callback(lambda _: stop.set())  # it ends only on a fatal refusal
                await stop.wait()
                log.info("stopping")
                with contextlib.suppress(TimeoutError):
                    await self.ingest.flush(DRAIN_S)  # replies already made go out
                self.ingest.stop()
                for t in tasks:
                    t.cancel()
        finally:
            if server is not None:
                server.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.connected = False
            self.write_stats(force=True)
            if self.state is not None:
                self.state.close()
            if self.release_log is not None:
                self.release_log.close()
        if self.fatal is not None:
            raise Fatal(self.fatal)

    async def _ingest(self) -> None:
        try:
            await self.ingest.run()
        except BulkMqttError as e:  # e.g. not authorised: retrying cannot help
            self.fatal = f"mask ingest connection refused: {e}"
            log.error("%s", self.fatal)

    async def _mqtt(self) -> None:
        s = self.settings
        while True:
            try:
                client = s.client(clean_session=False)
                # PUBACK only after a message was handled and its records written: a crash in
                # between gets it redelivered, not lost (docs/reliability.md).
                client._client.manual_ack_set(True)
                async with client:
                    for topic, qos in self.core.subscriptions():
                        if topic == self.bulk_topic:
                            continue  # on the lean ingest connection
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
        last = time.monotonic()
        beat_s = min(HEARTBEAT_S, watchdog_interval_s() or HEARTBEAT_S)
        notify("READY=1")
        wd = 0.0
        while True:
            await asyncio.sleep(self.stats_interval)
            if self.connected and time.monotonic() - wd >= beat_s:
                wd = time.monotonic()
                notify("WATCHDOG=1")  # systemd restarts a mask broker that stops saying so
            # rewritten when anything changed, and at least every HEARTBEAT_S anyway: a fresh
            # written_at is the health check's sign of life (--check)
            beat = time.monotonic() - last >= HEARTBEAT_S
            self.write_stats(force=beat)
            if beat:
                last = time.monotonic()

    # ------------------------------------------------------------ messages

    async def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        p = message.payload
        payload = bytes(p) if isinstance(p, bytes | bytearray) else b""
        answered = False
        groupsum = protocol_svc.t_groupsum(self.core.id)
        t0 = time.perf_counter()
        outs = self.core.handle(message.topic.value, payload)
        self._observe(message.topic.value, time.perf_counter() - t0)
        for out in outs:
            if isinstance(out, Record):
                if self.state is not None:
                    self.state.write(out)  # before anything that depends on it is published
                if self.release_log is not None:
                    self.release_log.write(out)
            else:
                await self._inflight.acquire()
                task = asyncio.create_task(self._publish(client, out))
                self._tasks.add(task)
                task.add_done_callback(self._done)
                answered |= out.topic == groupsum
        client._client.ack(message.mid, message.qos)
        if answered:
            self.write_stats(force=True)

    def _on_batch(self, batch: list[Message]) -> None:
        """The lean connection's PUBLISHes of one read (masks): handled in order, the records
        written with one write, then the replies queued; the PUBACKs follow on return."""
        replies: list[Publish] = []
        t0 = time.perf_counter()
        handle, state = self.core.handle, self.state
        try:
            for topic, payload in batch:
                for out in handle(topic, payload):
                    if isinstance(out, Record):
                        if state is not None:
                            state.write(out, flush=False)
                    else:
                        replies.append(out)
            if state is not None:
                state.flush()  # before the replies and the PUBACKs (kill -9 safe, not fsync'ed)
        except OSError as e:  # fail closed: no reply and no PUBACK for what was not written
            self.ingest.drop_connection()
            self.fatal = f"cannot write the state dir: {e}"
            log.error("%s", self.fatal)
            self._stop.set()
            return
        self._observe(self.bulk_topic, time.perf_counter() - t0)
        for p in replies:
            self.ingest.publish(p.topic, p.payload, p.qos)

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

    # ------------------------------------------------------------ metrics

    def _observe(self, topic: str, seconds: float) -> None:
        key = _round_key(self.core)
        if key is not None and key != self._round:
            self._round, self._round_t0, self.round_latency_s = key, time.monotonic(), None
            self.rounds += 1
        if topic == protocol_svc.t_groupreq(self.core.id):
            self.groupreq_s += seconds
            if self._round_t0 is not None:
                self.round_latency_s = time.monotonic() - self._round_t0

    def samples(self) -> list[Sample]:
        """The Prometheus samples, read from the live counters at each scrape."""
        c, st, p = self.core, self.core.stats, "hems_mask_broker_"
        atoms = c.partition.atom_sizes()
        out = [
            Sample(p + "info", "gauge", "This mask broker (labels: its id and k).", 1,
                   {"broker": c.id, "k": str(c.k)}),
            Sample(p + "connected", "gauge", "1 while connected to the MQTT broker.",
                   int(self.connected)),
            Sample(p + "connects_total", "counter", "MQTT connections made.", self.connects),
            Sample(p + "ingest_connected", "gauge",
                   "1 while the mask ingest connection is up and subscribed.",
                   int(self.ingest.connected)),
            Sample(p + "homes_registered", "gauge", "Homes in the registry.", len(c.homes)),
            Sample(p + "rounds_total", "counter", "New rounds announced since start.",
                   self.rounds),
            Sample(p + "masks_accepted_total", "counter", "Mask reports accepted.",
                   st.masks_accepted),
            Sample(p + "masks_this_round", "gauge", "Masks held for the current round.",
                   c.masks.count),
        ]
        for key, n in c.rejections.as_dict().items():
            kind, _, reason = key.partition(":")
            out.append(Sample(p + "rejected_total", "counter",
                              "Messages rejected, by kind and reason (docs/protocol.md).", n,
                              {"kind": kind, "reason": reason}))
        out += [
            Sample(p + "group_requests_total", "counter", "Group-sum requests answered.",
                   st.requests),
            Sample(p + "groups_released_total", "counter", "Group sums released.",
                   st.released),
        ]
        for reason, n in sorted(st.refused.items()):
            out.append(Sample(p + "groups_refused_total", "counter",
                              "Group sums refused, by reason (docs/privacy.md).", n,
                              {"reason": reason}))
        out += [
            Sample(p + "atoms", "gauge", "Cells of today's release partition.", len(atoms)),
            Sample(p + "atom_min_size", "gauge", "Homes in the smallest cell (0: none yet).",
                   int(atoms.min()) if len(atoms) else 0),
            Sample(p + "group_request_seconds_total", "counter",
                   "Time spent computing group-sum answers.", round(self.groupreq_s, 6)),
        ]
        if self.round_latency_s is not None:
            out.append(Sample(p + "round_latency_seconds", "gauge",
                              "From this round's announcement to its latest group-sum answer.",
                              round(self.round_latency_s, 6)))
        return out

    # ------------------------------------------------------------ stats

    def stats_dict(self) -> dict[str, Any]:
        d = self.core.stats_dict()
        d["mqtt"] = {"connected": self.connected, "connects": self.connects,
                     "last_error": self.last_error, "ingest_connected": self.ingest.connected,
                     "ingest": dict(self.ingest.stats)}
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


def _round_key(core: MaskBroker) -> tuple[str, int] | None:
    r = core.round
    return None if r is None else (r.day, r.round)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # paho's own chatter is the adapter's business; keep it at warning.
    logging.getLogger("mqtt").setLevel(max(logging.WARNING, logging.getLogger().level))

