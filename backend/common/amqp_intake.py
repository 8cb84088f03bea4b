"""The services' bulk intake on RabbitMQ: an AMQP 0-9-1 consumer of a quorum queue bound to
``amq.topic`` (aio-pika), with the same interface and guarantees as the mosquitto path's
``BulkClient`` (backend/common/bulk_mqtt.py; ``transport.BulkTransport``).

RabbitMQ's MQTT plugin (3.10) has no ``$share`` subscriptions (granted, then nothing arrives), so
the services spread their intake over the cluster the engine's own way: every MQTT publish is
routed by ``amq.topic`` with its topic as routing key (``hems/v1/plan/h1`` ->
``hems.v1.plan.h1``), one durable quorum queue per service (``rabbitmq.intake_queues``) is bound
with the service's topic filter (``hems.v1.plan.*``), and every connection of the service
consumes that queue (competing consumers; each message goes to one of them).  The queue has a
replica on every node: losing a node loses no message, and messages a consumer had not
acknowledged are redelivered to another consumer.

* Each connection tries the cluster's nodes in turn (``urls``, the first first: list a service's
  nearest node first, or spread the services by listing them in different orders), declares
  the queue (quorum, replicated on every node) and its binding, and consumes with a prefetch
  window.
* Messages that arrive in one event-loop turn are handed to ``on_batch`` as one batch
  ``[(MQTT topic, payload), ...]``; once it returned, the whole batch is acknowledged with one
  ``basic.ack(multiple)``.  ``drop_connection()`` from ``on_batch`` closes the connection without
  acknowledging: RabbitMQ redelivers the batch (the services dedupe by report id).  A handler
  that raises is logged and counted, and its batch acknowledged (as ``BulkClient`` does).
* ``publish(topic, payload)`` (replies, adjustments) goes to ``amq.topic`` with the mapped
  routing key, persistent, with publisher confirms; what is not confirmed when a connection is
  lost is sent again on the next one, in order (at least once, as ``BulkClient``).
* Refusals retrying cannot fix (bad credentials, a permission refused) make ``run()`` raise
  ``BulkMqttError``; a lost node is a reconnect to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from backend.common.bulk_mqtt import BulkMqttError, Message

__all__ = ["AmqpIntake", "mqtt_topic"]

_LOG = logging.getLogger(__name__)
_SWAP = str.maketrans("./", "/.")
PUBLISH_CHUNK = 256


def mqtt_topic(routing_key: str) -> str:
    """A routing key from the MQTT plugin -> the MQTT topic it was published on."""
    return routing_key.translate(_SWAP)


class AmqpIntake:
    """Competing consumer of one quorum queue (module docstring).  ``stats`` counts received,
    batches, acked, dup_received (redelivered), handler_errors, published, resent, connects,
    reconnects."""

    def __init__(self, urls: list[str], queue: str, binding: str,
                 on_batch: Callable[[list[Message]], None], *, prefetch: int = 1000,
                 replicas: int = 0, reconnect_min_s: float = 0.2,
                 reconnect_max_s: float = 5.0, connect_timeout: float = 10.0,
                 log: logging.Logger | None = None) -> None:
        """``binding``: the routing key pattern (``rabbitmq.routing_key(filter)``);
        ``replicas``: the quorum queue's initial group size (0: every node of ``urls``)."""
        if not urls:
            raise ValueError("no AMQP URL")
        self._urls = list(urls)
        self._queue = queue
        self._binding = binding
        self._on_batch = on_batch
        self._prefetch = prefetch
        self._replicas = replicas or len(urls)
        self._rmin = reconnect_min_s
        self._rmax = max(reconnect_max_s, reconnect_min_s)
        self._timeout = connect_timeout
        self._log = log or _LOG
        self._stopping = False
        self._stop_ev = asyncio.Event()
        self._connected = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._out: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._pending: list[Any] = []  # aio-pika incoming messages of the current batch
        self._scheduled = False
        self._conn: Any = None
        self._next = 0  # the first URL first (the operator's order), then the next ones
        self.session_present = True
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "batches", "acked", "dup_received", "handler_errors", "published",
             "resent", "connects", "reconnects"), 0)

    # ---------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one message for ``topic`` (published to ``amq.topic``; the MQTT plugin
        delivers it to the MQTT subscribers).  ``retain`` is not supported on this path."""
        if retain:
            raise ValueError("the AMQP path does not publish retained messages")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid topic name {topic!r}")
        self._out.append((topic.translate(_SWAP), payload))
        self._drained.clear()
        self._wake.set()

    async def flush(self, timeout: float) -> None:
        if self._out:
            await asyncio.wait_for(self._drained.wait(), timeout)

    def stop(self) -> None:
        """Let ``run()`` return (after the batch being handled is acknowledged)."""
        self._stopping = True
        self._stop_ev.set()

    def drop_connection(self) -> None:
        """Close the connection without acknowledging the current batch (redelivered)."""
        self._pending = []
        conn = self._conn
        if conn is not None:
            self._conn = None
            asyncio.get_running_loop().create_task(self._close(conn))

    async def run(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                url = self._urls[self._next % len(self._urls)]
                self._next += 1
                ok = False
                try:
                    ok = await self._session(url)
                except BulkMqttError:
                    raise
                except Exception as e:  # connection refused, node gone, channel closed
                    if not self._stopping:
                        self._log.warning("intake: %s: %s", _where(url), e or type(e).__name__)
                if self._stopping:
                    break
                attempt = 0 if ok else attempt + 1
                self.stats["reconnects"] += 1
                delay = min(self._rmax, self._rmin * (2 ** min(attempt, 20)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_ev.wait(), delay * random.uniform(0.5, 1))
        finally:
            self._connected.clear()

    # ---------------------------------------------------------------- one connection

    async def _session(self, url: str) -> bool:
        import aio_pika
        from aio_pika.exceptions import ProbableAuthenticationError
        from aiormq.exceptions import ChannelAccessRefused

        try:
            conn = await aio_pika.connect(url, timeout=self._timeout)
        except ProbableAuthenticationError as e:
            raise BulkMqttError(f"{_where(url)} refused the credentials: {e}") from e
        self._conn = conn
        closed = asyncio.Event()
        conn.close_callbacks.add(lambda *_: closed.set())
        pump: asyncio.Task[None] | None = None
        try:
            ch = await conn.channel(publisher_confirms=True)
            await ch.set_qos(prefetch_count=self._prefetch)
            try:
                q = await ch.declare_queue(self._queue, durable=True, arguments={
                    "x-queue-type": "quorum", "x-quorum-initial-group-size": self._replicas})
                await q.bind("amq.topic", self._binding)
            except ChannelAccessRefused as e:
                raise BulkMqttError(f"{_where(url)}: queue {self._queue!r} refused: {e}") from e
            exchange = await ch.get_exchange("amq.topic", ensure=False)
            loop = asyncio.get_running_loop()

            async def on_message(msg: Any) -> None:
                self._pending.append(msg)
                if not self._scheduled:
                    self._scheduled = True
                    loop.call_soon(self._handle, ch)

            tag = await q.consume(on_message, no_ack=False)
            self.stats["connects"] += 1
            self._connected.set()
            pump = loop.create_task(self._pump(exchange))
            stop = loop.create_task(self._stop_ev.wait())
            lost = loop.create_task(closed.wait())
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            lost.cancel()
            if self._stopping and not closed.is_set():
                with contextlib.suppress(Exception):
                    await q.cancel(tag)
                with contextlib.suppress(TimeoutError):
                    await self.flush(2.0)
            return True
        finally:
            self._connected.clear()
            self._pending = []  # not acknowledged: redelivered
            if pump is not None:
                pump.cancel()
            if self._conn is conn:
                self._conn = None
            await self._close(conn)

    @staticmethod
    async def _close(conn: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5.0)

    def _handle(self, ch: Any) -> None:
        """One event-loop turn's messages: on_batch, then one multiple ack."""
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.stats["received"] += len(batch)
        self.stats["batches"] += 1
        self.stats["dup_received"] += sum(1 for m in batch if m.redelivered)
        conn = self._conn
        try:
            self._on_batch([(mqtt_topic(m.routing_key or ""), m.body) for m in batch])
        except Exception:
            self.stats["handler_errors"] += 1
            self._log.exception("intake: batch handler failed (batch acknowledged)")
        if self._conn is not conn or conn is None:  # drop_connection(): not acknowledged
            return
        self.stats["acked"] += len(batch)
        last = batch[-1]
        task = asyncio.get_running_loop().create_task(last.ack(multiple=True))
        task.add_done_callback(_quiet)

    async def _pump(self, exchange: Any) -> None:
        import aio_pika

        resend = len(self._out)
        self.stats["resent"] += resend
        while True:
            if not self._out:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk = [self._out[i] for i in range(min(PUBLISH_CHUNK, len(self._out)))]
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=rk)
                for rk, body in chunk))
            for _ in chunk:
                self._out.popleft()
            self.stats["published"] += len(chunk)


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an ack on a lost channel: the message is redelivered


def _where(url: str) -> str:
    return url.split("@")[-1]
