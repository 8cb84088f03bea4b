"""The coordinator's MQTT connection: survives broker restarts and acknowledges messages late.

* Persistent session (clean session off, client id ``coordinator``) and QoS 1 subscriptions, so
  what is published while the coordinator is away waits for it in mosquitto.
* Manual acknowledgement: paho would send the PUBACK of an incoming QoS 1 message as soon as it
  arrives, before it is handled; a crash in between would lose it.  Here the handler runs first,
  the service makes its effects durable (journal.py, group commit), and only then ``ack`` sends the
  PUBACK.  A message not acknowledged when the connection (or the process) dies is delivered again
  by mosquitto on the next connection: handling is idempotent (report ids, request ids).
* Reconnect with jittered exponential backoff (``backend.common.backoff``); after every
  (re)connect the subscriptions are renewed and ``on_up`` runs (the service re-publishes what a
  restarted mosquitto may have lost: the retained announcement, open group requests).
* ``publish`` waits for a connection and retries across reconnects until its deadline: every
  message the coordinator sends is idempotent at its receiver, so a duplicate is harmless.

Fatal, raised as ``LinkError`` from ``run``: the broker refuses the credentials or a subscription,
or no connection could be (re-)established for ``give_up_s`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from backend.common.backoff import Backoff
from backend.common.mqtt import MqttSettings, failover

__all__ = ["Conn", "Link", "LinkError"]

log = logging.getLogger("hems.coordinator")

#: CONNACK codes that no retry can fix (MQTT 3.1.1 codes and paho's MQTT 5 reason codes).
_FATAL_CONNACK = {4, 5, 0x86, 0x87}
ATTEMPT_S = 10.0  # one publish attempt's wait for its PUBACK before it is retried


class LinkError(Exception):
    """The connection cannot be used (credentials, ACL) or was lost for too long."""


def _code(x: object) -> int | None:
    v = getattr(x, "value", x)
    return v if isinstance(v, int) else None


@dataclass
class Conn:
    """One connection: its client, and an event set when it is gone."""

    client: aiomqtt.Client
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    number: int = 0

    def ack(self, msg: aiomqtt.Message) -> None:
        """Send the PUBACK of ``msg`` (no-op for QoS 0 or when this connection is gone: the
        broker delivers the message again on the next one)."""
        if msg.qos > 0 and not self.lost.is_set():
            self.client._client.ack(msg.mid, msg.qos)


class Link:
    def __init__(
        self,
        settings: MqttSettings,
        topics: Sequence[str],
        on_message: Callable[[Conn, aiomqtt.Message], None],
        on_up: Callable[[Conn], None],
        give_up_s: float = 60.0,
        inflight: int = 200,
    ) -> None:
        self.settings = settings
        self.topics = tuple(topics)
        self.on_message = on_message
        self.on_up = on_up
        self.give_up_s = give_up_s
        self.inflight = inflight
        self.backoff = Backoff(base=0.2, cap=5.0)
        self.conn: Conn | None = None
        self.connects = 0
        self.last_error: str | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.conn is not None

    async def run(self) -> None:
        """Stay connected until cancelled; LinkError when that is impossible."""
        down_since = time.monotonic()
        attempt = 0
        while True:
            # a cluster: after a lost connection or a failed attempt, the next node (the
            # persistent session is a quorum queue: it is on every node)
            s = failover(self.settings, attempt)
            attempt += 1
            try:
                client = s.client(clean_session=False, max_inflight_messages=self.inflight)
                client._client.manual_ack_set(True)
                client.pending_calls_threshold = 100_000
                async with client:
                    granted = await client.subscribe([(t, 1) for t in self.topics], timeout=30)
                    if any((_code(g) or 0) >= 0x80 for g in granted):
                        raise LinkError(
                            f"broker refused a subscription to {self.topics} as user "
                            f"{s.username!r} (granted {list(granted)}): check the ACL")
                    self.connects += 1
                    conn = Conn(client, number=self.connects)
                    self.conn, self.last_error = conn, None
                    self._up.set()
                    self.backoff.reset()
                    log.info("connected to %s:%d as %s (connection %d)", s.host, s.port,
                             s.username, self.connects)
                    try:
                        self.on_up(conn)
                        async for msg in client.messages:
                            self.on_message(conn, msg)
                    finally:
                        conn.lost.set()
                        self._up.clear()
                        self.conn = None
                        down_since = time.monotonic()
            except aiomqtt.MqttCodeError as e:
                if isinstance(e, MqttConnectError) and _code(e.rc) in _FATAL_CONNACK:
                    raise LinkError(f"MQTT: broker {s.host}:{s.port} refused user "
                                    f"{s.username!r}: {e}") from e
                self.last_error = str(e)
            except aiomqtt.MqttError as e:
                self.last_error = str(e)
            if time.monotonic() - down_since > self.give_up_s:
                raise LinkError(f"MQTT: no connection to {s.host}:{s.port} as {s.username!r} "
                                f"for {self.give_up_s:.0f}s: {self.last_error}")
            delay = self.backoff.next()
            log.warning("MQTT: %s; reconnecting in %.1fs", self.last_error, delay)
            await asyncio.sleep(delay)

    async def publish(self, topic: str, payload: bytes, retain: bool = False,
                      timeout: float = 60.0) -> None:
        """QoS 1 publish, acknowledged by the broker, retried across reconnects until
        ``timeout``; TimeoutError after it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"publish to {topic} not acknowledged within {timeout}s")
            conn = self.conn
            if conn is None:
                try:
                    await asyncio.wait_for(self._up.wait(), left)
                except TimeoutError:
                    continue
                continue
            attempt = asyncio.ensure_future(conn.client.publish(
                topic, payload, qos=1, retain=retain, timeout=min(left, ATTEMPT_S)))
            lost = asyncio.ensure_future(conn.lost.wait())
            try:
                await asyncio.wait((attempt, lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not attempt.done():
                    attempt.cancel()
            if attempt.done() and not attempt.cancelled():
                exc = attempt.exception()
                if exc is None:
                    return
                if not isinstance(exc, aiomqtt.MqttError):
                    raise exc
                log.debug("publish to %s: %s; retrying", topic, exc)
                if not conn.lost.is_set():
                    await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
