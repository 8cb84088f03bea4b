"""The coordinator's MQTT adapter: two connections, every message to the dispatcher, PUBACKs
only after what a message changed is durable.

1. The bulk topic ``hems/v1/plan/+`` on the bulk transport (backend/common/transport.py: the
   lean MQTT client of bulk_mqtt.py, client id ``<client id>-ingest``, persistent session; on
   RabbitMQ the AMQP consumer of the quorum queue ``hems.coordinator.plan``): each read's
   reports are handed to the dispatcher as one batch (journaled with one fsync), then their
   replies are queued and their PUBACKs written.  Replies and adjustments go out on the same
   connection as pre-encoded QoS 1 publishes written in batches (``send``; docs/scaling.md),
   re-sent after a reconnect until acknowledged.
2. Everything else (``groupsum/+``, ``capacity``, ``capacity/+``, ``status/+``) on aiomqtt
   (link.py, client id ``coordinator``, persistent session, manual acknowledgement): a message is
   dispatched at once and acknowledged after the group commit that covers it.

The adapter implements ``ports.Transport`` for the rounds.  After every reconnect of the link it
re-publishes what the dispatcher says a restarted broker may have lost (the newest announcement,
open group requests, adjustments).  Failure has one signal: ``AdapterError`` (the credentials or
the ACL are refused, the broker is unreachable for too long, the journal cannot be written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Protocol

import aiomqtt

from backend.common.bulk_mqtt import BulkMqttError, Message
from backend.common.mqtt import MqttSettings
from backend.common.retained import RetainFanout
from backend.common.transport import BulkTransport, bulk_transport
from backend.coordinator.link import Conn, Link, LinkError
from backend.coordinator.supply import capacity_topic
from hemsfw import protocol, protocol_svc

__all__ = ["BULK_TOPIC", "INTAKE_QUEUE", "TOPICS", "AdapterError", "Dispatcher", "MqttAdapter"]

log = logging.getLogger("hems.coordinator")

#: on aiomqtt (link.py); the plan reports come on the lean connection (BULK_TOPIC)
TOPICS = (protocol_svc.t_groupsum("+"), capacity_topic(), capacity_topic("+"),
          protocol.t_status("+"))
BULK_TOPIC = protocol.t_plan("+")
#: RabbitMQ: the coordinator's intake queue (rabbitmq.intake_queues)
INTAKE_QUEUE = "hems.coordinator.plan"
PUBLISH_TIMEOUT_S = 60.0
INFLIGHT = 200  # concurrent QoS 1 publishes on the link

Replies = list[tuple[str, bytes]]


class AdapterError(Exception):
    """The MQTT side cannot go on; the message says why."""


class Dispatcher(Protocol):
    """What the adapter hands messages to (daemon.py)."""

    def dispatch(self, topic: str, payload: bytes, retained: bool, out: Replies,
                 batch: bool) -> None:
        """One message; replies to send once it is durable go to ``out``.  ``batch``: inside a
        batch of plan reports (journal lines are written once, by ``sync``).  Never raises."""

    async def commit(self) -> None:
        """fsync what the messages dispatched so far changed (group commit)."""

    def sync(self) -> None:
        """The same, blocking (the lean client's batch callback is synchronous); OSError."""

    def republish(self) -> list[tuple[str, bytes, bool]]:
        """After a reconnect: (topic, payload, retain) a restarted broker may have lost."""


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


class MqttAdapter:
    def __init__(self, settings: MqttSettings, client_id: str, dispatcher: Dispatcher,
                 reconnect_s: float = 60.0, share_group: str | None = None) -> None:
        """``share_group``: the shared subscription of the --workers processes (mosquitto;
        on RabbitMQ they are competing consumers of one queue anyway)."""
        self.settings = replace(settings, client_id=client_id)
        self.client_id = client_id
        self.dispatcher = dispatcher
        self.link = Link(self.settings, TOPICS, self._on_message, self._on_up,
                         give_up_s=reconnect_s, inflight=INFLIGHT)
        s = self.settings
        # its own identity: mosquitto binds client ids to user names (broker.connection_users)
        self.bulk: BulkTransport = bulk_transport(
            s, f"{client_id}-ingest", f"{s.username}-ingest", BULK_TOPIC, self.on_plan_batch,
            queue=INTAKE_QUEUE, share_group=share_group, tls=s.tls_context(),
            max_packet=protocol.MAX_PAYLOAD + 1024, log=log)
        self.fanout = RetainFanout(self.settings, client_id)
        self._sem = asyncio.Semaphore(INFLIGHT)
        self._unacked: list[tuple[Conn, aiomqtt.Message, Replies]] = []
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._failed = asyncio.Event()
        self._failure: str | None = None

    # ------------------------------------------------------------ running

    async def serve(self, main: Callable[[], Coroutine[object, object, None]]) -> None:
        """Run the connections while ``main()`` runs; stop them when it returns.  AdapterError
        when the MQTT side fails first (``main`` is cancelled then)."""
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self.link.run(), name="link")
                bulk = tg.create_task(self.bulk.run(), name="bulk")
                committer = tg.create_task(self._committer(), name="committer")
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                job = tg.create_task(main(), name="main")

                def stop(_: object) -> None:
                    reader.cancel()
                    committer.cancel()
                    watchdog.cancel()
                    # DISCONNECT after the last PUBACKs are written (run() returns within
                    # ~2 s); cancelling at once could lose them (redelivered, deduped: waste)
                    self.bulk.stop()
                    asyncio.get_running_loop().call_later(5.0, bulk.cancel)

                job.add_done_callback(stop)
        except BaseExceptionGroup as eg:
            exc = _leaf(eg)
            if isinstance(exc, LinkError | BulkMqttError):
                raise AdapterError(str(exc)) from exc
            raise exc from None
        finally:
            for t in list(self._background):
                t.cancel()
            await self.fanout.close()

    def fail(self, message: str) -> None:
        """Stop everything with ``message`` (from a callback that cannot raise)."""
        if self._failure is None:
            self._failure = message
        self._failed.set()

    @property
    def failure(self) -> str | None:
        """Why the adapter stopped (``fail``), or None."""
        return self._failure

    async def _watchdog(self) -> None:
        await self._failed.wait()
        raise AdapterError(self._failure or "failed")

    @property
    def connects(self) -> int:
        return self.link.connects

    @property
    def connected(self) -> bool:
        return self.link.connected and self.bulk.connected

    # ------------------------------------------------------------ incoming

    def on_plan_batch(self, batch: list[Message]) -> None:
        """The lean connection's plan reports of one read: dispatched, journaled with one
        fsync, then their replies are queued; the broker gets the PUBACKs when this returns.
        The lean client does not pass the retain flag on (homes never retain plans)."""
        out: Replies = []
        for topic, payload in batch:
            self.dispatcher.dispatch(topic, payload, False, out, True)
        try:
            self.dispatcher.sync()  # durable before replies and PUBACKs
        except OSError as e:  # fail closed: no reply and no PUBACK for what is not durable
            self.bulk.drop_connection()
            self.fail(f"cannot write the journal: {e}")
            return
        for topic, payload in out:
            self.bulk.publish(topic, payload)

    def _on_message(self, conn: Conn, msg: aiomqtt.Message) -> None:
        """The link's reader: dispatch now, acknowledge (and answer) once durable."""
        out: Replies = []
        self.dispatcher.dispatch(msg.topic.value, _bytes(msg.payload), bool(msg.retain), out,
                                 False)
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
        try:
            await self.dispatcher.commit()
        except OSError as e:
            self.fail(f"cannot write the journal: {e}")
            return
        for conn, msg, out in batch:
            conn.ack(msg)
            for topic, payload in out:
                self._publish_soon(topic, payload)

    def _on_up(self, conn: Conn) -> None:
        """After every reconnect: re-publish what a restarted broker may have lost."""
        if conn.number == 1:
            return  # the rounds publish everything on the first connection
        again = self.dispatcher.republish()
        if again:
            log.info("reconnected: re-publishing %d message(s)", len(again))
        for topic, payload, retain in again:
            if retain or topic.startswith(protocol.PREFIX + "/groupreq/"):
                self._publish_soon(topic, payload, retain)
            else:
                self.bulk.publish(topic, payload)

    # ------------------------------------------------------------ ports.Transport

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        async with self._sem:
            await self.link.publish(topic, payload, retain, timeout=PUBLISH_TIMEOUT_S)
        if retain:  # a cluster keeps retained messages per node: a copy on every other one
            self.fanout.publish(topic, payload)

    def send(self, topic: str, payload: bytes) -> None:
        self.bulk.publish(topic, payload)

    async def flush(self, timeout: float) -> None:
        await self._flush_acks()
        await self.bulk.flush(timeout)
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    def _publish_soon(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Fire-and-track (replies, re-publishes): the reader must not wait for PUBACKs."""
        task = asyncio.get_running_loop().create_task(self.publish(topic, payload, retain))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("publish not delivered: %s", task.exception())

    async def drain(self, timeout: float) -> None:
        """What is queued goes out before a stop (best effort)."""
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout)
