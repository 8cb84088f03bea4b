"""The services' bulk intake, broker-neutral: one interface, two adapters chosen by config.

``BulkTransport`` is what the coordinator (mqtt_adapter.py, workers.py) and the mask brokers
(service.py) use for their bulk topic (plans, sealed masks) and for the replies and adjustments
they send back: ``run`` / ``stop`` / ``wait_connected`` / ``connected`` / ``publish`` /
``flush`` / ``drop_connection``; ``on_batch`` gets ``[(topic, payload), ...]`` and a batch is
acknowledged once it returned.

* ``MqttSettings.broker == "mosquitto"``: ``BulkClient`` (backend/common/bulk_mqtt.py), MQTT 5,
  several processes of one service share the topic through ``$share/<group>/...``.
* ``"rabbitmq"``: ``AmqpIntake`` (backend/common/amqp_intake.py), AMQP 0-9-1 on the cluster's
  nodes (``MqttSettings.amqp_ports``): one quorum queue per service bound to ``amq.topic``,
  every connection a competing consumer of it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from backend.common.bulk_mqtt import BulkClient, Message
from backend.common.mqtt import MqttSettings

__all__ = ["BulkTransport", "bulk_transport"]


class BulkTransport(Protocol):
    stats: dict[str, int]

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None: ...

    async def wait_connected(self, timeout: float) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    async def flush(self, timeout: float) -> None: ...

    def stop(self) -> None: ...

    def drop_connection(self) -> None: ...


def bulk_transport(settings: MqttSettings, client_id: str, username: str | None,
                   topic: str, on_batch: Callable[[list[Message]], None], *, queue: str,
                   share_group: str | None = None, max_packet: int = 1 << 20,
                   tls: ssl.SSLContext | None = None,
                   log: logging.Logger | None = None) -> BulkTransport:
    """The intake of ``topic`` for one connection of a service.  ``queue``: the service's
    intake queue on RabbitMQ (``rabbitmq.intake_queues``); ``share_group``: on mosquitto, the
    shared subscription group when the service runs several processes (None: a plain
    subscription)."""
    if settings.broker == "rabbitmq":
        from backend.common.amqp_intake import AmqpIntake
        from backend.common.rabbitmq import routing_key

        if not settings.amqp_ports:
            raise ValueError("broker rabbitmq needs the cluster's AMQP ports (--amqp-ports)")
        urls = [f"amqp://{username}:{settings.password or ''}@{settings.host}:{p}/"
                f"{settings.vhost}" for p in settings.amqp_ports]
        return AmqpIntake(urls, queue, routing_key(topic), on_batch, log=log)
    flt = f"$share/{share_group}/{topic}" if share_group else topic
    return BulkClient(settings.host, settings.port, client_id, username, settings.password,
                      [(flt, 1)], on_batch, tls=tls, max_packet=max_packet,
                      reconnect_max_s=5.0, log=log)
