"""The RabbitMQ bulk intake (backend/common/amqp_intake.py) against a real RabbitMQ node.

Plan reports published over MQTT reach the AMQP consumers of the coordinator's quorum queue;
skipped, with the reason, when RabbitMQ or aio-pika is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from backend.common import rabbitmq
from backend.common.amqp_intake import AmqpIntake, mqtt_topic
from backend.common.bulk_mqtt import Message
from hemsfw import protocol

pytestmark = [
    pytest.mark.integration,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                       reason=str(rabbitmq.why_unavailable())),
]

HOMES = ["ha", "hb", "hc", "hd"]
QUEUE = "hems.coordinator.plan"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rabbitmq.RabbitCluster]:
    users = {"coordinator": "pw-c", **{h: f"pw-{h}" for h in HOMES}}
    c = rabbitmq.RabbitCluster(tmp_path_factory.mktemp("amqp") / "r", users, [], nodes_n=1)
    with c:
        yield c


def _url(c: rabbitmq.RabbitCluster) -> str:
    return c.amqp_urls("coordinator-ingest", "pw-c")[0]


def _publish(c: rabbitmq.RabbitCluster, n: int, tag: str) -> None:
    """``n`` plan messages from each home (its own identity), QoS 1."""
    for h in HOMES:
        m = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=h)
        m.username_pw_set(h, f"pw-{h}")
        m.connect("127.0.0.1", c.nodes[0].mqtt_port)
        m.loop_start()
        for i in range(n):
            m.publish(protocol.t_plan(h), f"{tag}:{h}:{i}".encode(), qos=1).wait_for_publish(10)
        m.disconnect()
        m.loop_stop()


def _intake(c: rabbitmq.RabbitCluster, on_batch: Callable[[list[Message]], None],
            prefetch: int = 1000) -> AmqpIntake:
    return AmqpIntake([_url(c)], QUEUE, rabbitmq.routing_key(protocol.t_plan("+")), on_batch,
                      prefetch=prefetch)


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.05)


def _run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def test_mqtt_topic_is_the_routing_key_mapped_back() -> None:
    assert mqtt_topic(rabbitmq.routing_key("hems/v1/plan/h.1")) == "hems/v1/plan/h.1"


def test_competing_consumers_each_message_once(node: rabbitmq.RabbitCluster) -> None:
    got: list[list[Message]] = [[], []]

    async def main() -> None:
        a = _intake(node, got[0].extend, prefetch=5)
        b = _intake(node, got[1].extend, prefetch=5)
        tasks = [asyncio.create_task(x.run()) for x in (a, b)]
        await a.wait_connected(30)
        await b.wait_connected(30)
        await asyncio.to_thread(_publish, node, 25, "once")
        await _until(lambda: len(got[0]) + len(got[1]) >= 100)
        await asyncio.sleep(0.5)
        for x in (a, b):
            x.stop()
        await asyncio.gather(*tasks)

    _run(main)
    mine = [(t, p) for t, p in got[0] + got[1] if p.startswith(b"once:")]
    assert len(mine) == 100 and len(set(mine)) == 100  # each exactly once
    assert got[0] and got[1]  # both consumers took a share
    assert all(t == protocol.t_plan(p.decode().split(":")[1]) for t, p in mine)


def test_dropped_batch_is_redelivered(node: rabbitmq.RabbitCluster) -> None:
    got: list[bytes] = []
    dropped: list[bytes] = []
    intake: AmqpIntake | None = None

    def on_batch(batch: list[Message]) -> None:
        assert intake is not None
        if not dropped:  # the first batch "cannot be stored"
            dropped.extend(p for _, p in batch)
            intake.drop_connection()
            return
        got.extend(p for _, p in batch)

    async def main() -> None:
        nonlocal intake
        intake = _intake(node, on_batch)
        task = asyncio.create_task(intake.run())
        await intake.wait_connected(30)
        await asyncio.to_thread(_publish, node, 5, "drop")
        await _until(lambda: len(set(got)) >= 20)
        intake.stop()
        await task
        assert intake.stats["dup_received"] >= len(dropped)

    _run(main)
    assert dropped and set(dropped) <= set(got)
    assert {p for p in got if p.startswith(b"drop:")} == {
        f"drop:{h}:{i}".encode() for h in HOMES for i in range(5)}


def test_publish_reaches_an_mqtt_subscriber(node: rabbitmq.RabbitCluster) -> None:
    received: list[tuple[str, bytes]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha")
    sub.username_pw_set("ha", "pw-ha")
    sub.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    sub.connect("127.0.0.1", node.nodes[0].mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(protocol.t_adjust("ha"), qos=1)

        async def main() -> None:
            intake = _intake(node, lambda _b: None)
            task = asyncio.create_task(intake.run())
            await intake.wait_connected(30)
            await asyncio.sleep(0.5)
            intake.publish(protocol.t_adjust("ha"), b"adjusted")
            intake.publish(protocol.t_adjust("hb"), b"not for ha")
            await intake.flush(10)
            await _until(lambda: bool(received))
            intake.stop()
            await task

        _run(main)
    finally:
        with contextlib.suppress(Exception):
            sub.disconnect()
        sub.loop_stop()
    assert received == [(protocol.t_adjust("ha"), b"adjusted")]
