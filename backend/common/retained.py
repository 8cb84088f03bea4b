"""Retained messages on a cluster whose nodes keep them node-local (RabbitMQ 3.10).

RabbitMQ's MQTT plugin keeps a retained message on the node it was published on: a home that
connects to another node later never gets it (measured: retained on node 1, nothing on node 2).
The services publish what a home must find on connecting (the round announcement) through
``RetainFanout``: after their own publish on their node, the same retained message goes to every
other node (``MqttSettings.mqtt_ports``), each over a short connection of the service's own
identity (client id ``<client id>-retain<i>``: a publisher only, no session).  A node that cannot
be reached is retried every ``retry_s`` with the newest payload of each topic, so a node that
comes back gets the announcement again.  On one mosquitto (no other ports) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

import aiomqtt

from backend.common.mqtt import MqttSettings

__all__ = ["RetainFanout"]

log = logging.getLogger("hems.retained")


class RetainFanout:
    def __init__(self, settings: MqttSettings, client_id: str, retry_s: float = 5.0) -> None:
        self.settings = settings
        self.client_id = client_id
        self.ports = [p for p in settings.mqtt_ports if p != settings.port]
        self.retry_s = retry_s
        self.newest: dict[str, bytes] = {}
        self.due: dict[int, set[str]] = {p: set() for p in self.ports}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.ports)

    def publish(self, topic: str, payload: bytes) -> None:
        """Retain ``payload`` on ``topic`` on every other node (in the background)."""
        if not self.ports:
            return
        self.newest[topic] = payload
        for i, port in enumerate(self.ports):
            self.due[port].add(topic)
            task = self.tasks.get(port)
            if task is None or task.done():
                self.tasks[port] = asyncio.get_running_loop().create_task(
                    self._node(i, port), name=f"retain-{port}")

    async def _node(self, i: int, port: int) -> None:
        s = replace(self.settings, port=port, client_id=f"{self.client_id}-retain{i + 2}")
        while self.due[port]:
            try:
                async with s.client(clean_session=True) as c:
                    while self.due[port]:
                        topic = self.due[port].pop()
                        try:
                            await c.publish(topic, self.newest[topic], qos=1, retain=True)
                        except BaseException:
                            self.due[port].add(topic)
                            raise
                        self.sent += 1
            except aiomqtt.MqttError as e:
                log.warning("retained copy to 127.0.0.1:%d not published (%s): retry in %.0fs",
                            port, e, self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        for t in self.tasks.values():
            with contextlib.suppress(BaseException):
                await t
