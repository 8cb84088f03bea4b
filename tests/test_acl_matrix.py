"""ACL matrix against a real mosquitto and a real RabbitMQ: every role x every topic family x
publish/subscribe.

Only the intended cells may be allowed (docs/protocol.md, "ACL"). mosquitto drops an unauthorised
publish silently and never delivers to an unauthorised subscription, so each cell is checked by
what actually arrives: for "may R subscribe to T", the intended writer of T publishes and we see
whether R receives it; for "may R publish to T", R publishes and the intended reader of T reports
whether it arrived.

RabbitMQ (backend/common/rabbitmq.py: the same ACL as topic permissions) closes the connection
of a client whose publish or subscription is refused, so there every cell gets a connection of
its own (a subscriber's client id is its user name: RabbitMQ ties an identity's subscription
queues to it).  The RabbitMQ tests are skipped, with the reason, when it is not installed.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from backend.common import rabbitmq
from backend.common.broker import Mosquitto

pytestmark = pytest.mark.integration

ROLES = ["ha", "hb", "coordinator", "mb1", "mb2", "grid", "lab"]
P = "hems/v1"
# topic -> (intended writer, intended reader)
TOPICS: dict[str, tuple[str, str]] = {
    f"{P}/round": ("coordinator", "ha"),
    f"{P}/capacity": ("grid", "coordinator"),
    f"{P}/capacity/2026-11-28": ("grid", "coordinator"),
    f"{P}/outcome/2026-11-28": ("coordinator", "grid"),
    f"{P}/plan/ha": ("ha", "coordinator"),
    f"{P}/plan/hb": ("hb", "coordinator"),
    f"{P}/mask/mb1/ha": ("ha", "mb1"),
    f"{P}/mask/mb2/ha": ("ha", "mb2"),
    f"{P}/mask/mb1/hb": ("hb", "mb1"),
    f"{P}/reply/coordinator/ha": ("coordinator", "ha"),
    f"{P}/reply/mb1/ha": ("mb1", "ha"),
    f"{P}/groupreq/mb1": ("coordinator", "mb1"),
    f"{P}/groupsum/mb1": ("mb1", "coordinator"),
    f"{P}/adjust/ha": ("coordinator", "ha"),
    f"{P}/adjust/hb": ("coordinator", "hb"),
    f"{P}/status/ha": ("ha", "coordinator"),
    f"{P}/lab/clock": ("lab", "ha"),
}
# The intended policy, written out cell by cell (independently of the ACL generator).
# The round announcement and the lab clock are public to every identity (like NTP).
PUBLIC = {f"{P}/round", f"{P}/lab/clock"}
MAY_SUBSCRIBE = {
    "ha": {f"{P}/round", f"{P}/reply/coordinator/ha", f"{P}/reply/mb1/ha", f"{P}/adjust/ha",
           f"{P}/status/ha", f"{P}/lab/clock"},
    "hb": {f"{P}/round", f"{P}/adjust/hb", f"{P}/lab/clock"},
    "coordinator": {*PUBLIC, f"{P}/capacity", f"{P}/capacity/2026-11-28", f"{P}/plan/ha",
                    f"{P}/plan/hb", f"{P}/groupsum/mb1", f"{P}/status/ha"},
    "mb1": {*PUBLIC, f"{P}/mask/mb1/ha", f"{P}/mask/mb1/hb", f"{P}/groupreq/mb1"},
    "mb2": {*PUBLIC, f"{P}/mask/mb2/ha"},
    # The grid feed reads the default profile back and the rounds' aggregate outcomes (no one
    # else reads an outcome).
    "grid": {*PUBLIC, f"{P}/capacity", f"{P}/outcome/2026-11-28"},
    "lab": {*PUBLIC, f"{P}/status/ha"},
}
MAY_PUBLISH = {
    "ha": {f"{P}/plan/ha", f"{P}/mask/mb1/ha", f"{P}/mask/mb2/ha", f"{P}/status/ha"},
    "hb": {f"{P}/plan/hb", f"{P}/mask/mb1/hb"},
    "coordinator": {f"{P}/round", f"{P}/reply/coordinator/ha", f"{P}/groupreq/mb1",
                    f"{P}/adjust/ha", f"{P}/adjust/hb", f"{P}/outcome/2026-11-28"},
    "mb1": {f"{P}/reply/mb1/ha", f"{P}/groupsum/mb1"},
    "mb2": set(),
    "grid": {f"{P}/capacity", f"{P}/capacity/2026-11-28"},
    "lab": {f"{P}/lab/clock"},
}


class Client:
    def __init__(self, port: int, user: str | None, password: str | None,
                 client_id: str | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.suback = threading.Event()
        self.rc: object = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"t-{uuid.uuid4().hex}")
        self.c.on_subscribe = lambda *_: self.suback.set()
        # RabbitMQ answers a refused subscription by closing the connection
        self.c.on_disconnect = lambda *_: self.suback.set()
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_message = self._msg
        self.c.on_connect = self._conn
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _conn(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.rc = rc
        self.connected.set()

    def _msg(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, m.payload))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _settle(clients: list[Client], seconds: float = 1.0) -> None:
    """Wait for in-flight deliveries (a denied cell is an absence, so this is a fixed wait)."""
    time.sleep(seconds)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Mosquitto:
    users = {r: f"pw-{r}" for r in ROLES}
    m = Mosquitto(tmp_path_factory.mktemp("acl") / "mosq", users, ["mb1", "mb2"])
    m.start()
    yield m  # type: ignore[misc]
    m.stop()


def _connect_all(port: int) -> dict[str, Client]:
    cs = {r: Client(port, r, f"pw-{r}") for r in ROLES}
    for r, c in cs.items():
        assert c.connected.wait(5), r
        assert not getattr(c.rc, "is_failure", False), (r, c.rc)
    return cs


def test_anonymous_and_wrong_password_refused(broker: Mosquitto) -> None:
    for user, pw in [(None, None), ("ha", "wrong"), ("nobody", "x")]:
        c = Client(broker.port, user, pw)
        c.connected.wait(5)
        assert getattr(c.rc, "is_failure", True), (user, c.rc)
        c.close()


def test_subscribe_matrix(broker: Mosquitto) -> None:
    cs = _connect_all(broker.port)
    try:
        for c in cs.values():
            for t in TOPICS:
                c.c.subscribe(t, qos=1)
        time.sleep(0.5)
        tag = uuid.uuid4().hex.encode()
        for t, (writer, _reader) in TOPICS.items():
            cs[writer].c.publish(t, tag + b"|" + t.encode(), qos=1).wait_for_publish(5)
        _settle(list(cs.values()))
        for role, c in cs.items():
            with c.lock:
                received = {t for t, p in c.got if p.startswith(tag)}
            assert received == MAY_SUBSCRIBE[role], role
    finally:
        for c in cs.values():
            c.close()


def test_publish_matrix(broker: Mosquitto) -> None:
    cs = _connect_all(broker.port)
    try:
        for t, (_writer, reader) in TOPICS.items():
            cs[reader].c.subscribe(t, qos=1)
        time.sleep(0.5)
        tag = uuid.uuid4().hex.encode()
        for role, c in cs.items():
            for t in TOPICS:
                c.c.publish(t, tag + b"|" + role.encode(), qos=1).wait_for_publish(5)
        _settle(list(cs.values()))
        allowed: dict[str, set[str]] = {r: set() for r in ROLES}
        for t, (_writer, reader) in TOPICS.items():
            with cs[reader].lock:
                for topic, p in cs[reader].got:
                    if topic == t and p.startswith(tag):
                        allowed[p.split(b"|")[1].decode()].add(t)
        for role in ROLES:
            assert allowed[role] == MAY_PUBLISH[role], role
        # In particular: home A cannot publish as home B, the coordinator gets no mask.
        assert f"{P}/plan/hb" not in allowed["ha"]
    finally:
        for c in cs.values():
            c.close()


def test_coordinator_receives_nothing_from_mask_topics(broker: Mosquitto, tmp_path: Path) -> None:
    cs = _connect_all(broker.port)
    try:
        cs["coordinator"].c.subscribe("#", qos=1)
        cs["coordinator"].c.subscribe(f"{P}/mask/#", qos=1)
        time.sleep(0.5)
        for h in ("ha", "hb"):
            cs[h].c.publish(f"{P}/mask/mb1/{h}", b"sealed", qos=1).wait_for_publish(5)
        _settle(list(cs.values()))
        with cs["coordinator"].lock:
            assert not [t for t, _ in cs["coordinator"].got if "/mask/" in t]
    finally:
        for c in cs.values():
            c.close()


# ---------------------------------------------------------------- RabbitMQ

@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rabbitmq.RabbitCluster]:
    users = {r: f"pw-{r}" for r in ROLES}
    # one node: the permissions are the same on every node of a cluster
    c = rabbitmq.RabbitCluster(tmp_path_factory.mktemp("acl-rabbit") / "r", users,
                               ["mb1", "mb2"], nodes_n=1)
    with c:
        yield c


def _cell(port: int, role: str, client_id: str | None = None) -> Client:
    c = Client(port, role, f"pw-{role}", client_id)
    assert c.connected.wait(10), role
    assert not getattr(c.rc, "is_failure", False), (role, c.rc)
    return c


@pytest.mark.rabbitmq
@pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                    reason=str(rabbitmq.why_unavailable()))
def test_rabbitmq_anonymous_and_wrong_password_refused(rabbit: rabbitmq.RabbitCluster) -> None:
    port = rabbit.nodes[0].mqtt_port
    for user, pw in [(None, None), ("ha", "wrong"), ("nobody", "x")]:
        c = Client(port, user, pw)
        c.connected.wait(5)
        assert getattr(c.rc, "is_failure", True), (user, c.rc)
        c.close()


@pytest.mark.rabbitmq
@pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                    reason=str(rabbitmq.why_unavailable()))
def test_rabbitmq_subscribe_matrix(rabbit: rabbitmq.RabbitCluster) -> None:
    port = rabbit.nodes[0].mqtt_port
    received: dict[str, set[str]] = {r: set() for r in ROLES}
    for t, (writer, _reader) in TOPICS.items():
        subs = {r: _cell(port, r, r) for r in ROLES}
        try:
            for c in subs.values():
                c.c.subscribe(t, qos=1)
            for c in subs.values():  # a refused subscription closes the connection instead
                c.suback.wait(2)
            tag = uuid.uuid4().hex.encode()
            pub = _cell(port, writer, f"{writer}-pub")
            pub.c.publish(t, tag, qos=1).wait_for_publish(5)
            pub.close()
            _settle(list(subs.values()), 0.5)
            for r, c in subs.items():
                with c.lock:
                    if any(p == tag for topic, p in c.got if topic == t):
                        received[r].add(t)
        finally:
            for c in subs.values():
                c.close()
    for role in ROLES:
        assert received[role] == MAY_SUBSCRIBE[role], role


@pytest.mark.rabbitmq
@pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                    reason=str(rabbitmq.why_unavailable()))
def test_rabbitmq_publish_matrix(rabbit: rabbitmq.RabbitCluster) -> None:
    port = rabbit.nodes[0].mqtt_port
    readers = {r: _cell(port, r, r) for r in {rd for _w, rd in TOPICS.values()}}
    try:
        for t, (_writer, reader) in TOPICS.items():
            readers[reader].c.subscribe(t, qos=1)
        time.sleep(0.5)
        tag = uuid.uuid4().hex.encode()
        for role in ROLES:
            cells = [(_cell(port, role, f"{role}-p{i}"), t) for i, t in enumerate(TOPICS)]
            for c, t in cells:
                c.c.publish(t, tag + b"|" + role.encode(), qos=0)
            time.sleep(0.3)  # QoS 0: written before the DISCONNECT, in order
            for c, _t in cells:
                c.close()
        _settle(list(readers.values()))
        allowed: dict[str, set[str]] = {r: set() for r in ROLES}
        for t, (_writer, reader) in TOPICS.items():
            with readers[reader].lock:
                for topic, p in readers[reader].got:
                    if topic == t and p.startswith(tag):
                        allowed[p.split(b"|")[1].decode()].add(t)
        for role in ROLES:
            assert allowed[role] == MAY_PUBLISH[role], role
    finally:
        for c in readers.values():
            c.close()


@pytest.mark.rabbitmq
@pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                    reason=str(rabbitmq.why_unavailable()))
def test_rabbitmq_intake_queues_only_for_their_service(rabbit: rabbitmq.RabbitCluster) -> None:
    """Over AMQP too: a mask broker's queue is its own (the coordinator cannot read the masks),
    the coordinator's plan queue is its own (a home cannot read the plans)."""
    import aio_pika
    from aiormq.exceptions import ChannelAccessRefused

    port = rabbit.nodes[0].amqp_port
    queues = rabbitmq.intake_queues(["mb1", "mb2"])

    async def may_declare(user: str, queue: str) -> bool:
        url = f"amqp://{user}:pw-{user.split('-')[0]}@127.0.0.1:{port}/{rabbitmq.VHOST}"
        conn = await aio_pika.connect(url)
        async with conn:
            ch = await conn.channel()
            try:
                await ch.declare_queue(queue, durable=True,
                                       arguments={"x-queue-type": "quorum"})
            except ChannelAccessRefused:
                return False
            return True

    async def matrix() -> dict[tuple[str, str], bool]:
        return {(u, q): await may_declare(u, q)
                for u in ("coordinator-ingest", "mb1-ingest", "ha") for q in queues}

    got = asyncio.run(matrix())
    want = {(u, q): u == f"{svc}-ingest" for (u, q) in got for svc in [queues[q][0]]}
    assert got == want
