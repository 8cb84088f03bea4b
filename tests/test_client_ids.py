"""An identity owns its client id (issue 13): a home with its own valid password cannot take over
a service's client id or its persistent session, and the messages queued there survive the
attempt.  Real mosquitto, configured by backend/common/broker.py (use_username_as_clientid)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.common.broker import Mosquitto, connection_users
from hemsfw import protocol, protocol_svc

pytestmark = pytest.mark.integration

#: every client id a service connects with
SERVICE_IDS = [*connection_users("coordinator", 1), *connection_users("mb1")]
#: what each one subscribes to, and who may publish there (so something is queued for it
#: while it is away): (subscription, publisher, topic published)
QUEUED = {
    "coordinator": (protocol_svc.t_groupsum("+"), "mb1", protocol_svc.t_groupsum("mb1")),
    "coordinator-ingest": (protocol.t_plan("+"), "h001", protocol.t_plan("h001")),
    "mb1": (protocol_svc.t_groupreq("mb1"), "coordinator", protocol_svc.t_groupreq("mb1")),
    "mb1-ingest": (protocol.t_mask("mb1", "+"), "h001", protocol.t_mask("mb1", "h001")),
}


class Client:
    def __init__(self, port: int, user: str, password: str, client_id: str,
                 clean: bool = False) -> None:
        self.got: list[str] = []
        self.disconnects = 0
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean)
        self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda _c, _u, m: self.got.append(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{user} did not connect"

    def _on_connect(self, _c: object, _u: object, flags: object, rc: object,
                    _p: object = None) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connected.set()

    def _on_disconnect(self, *_a: object) -> None:
        self.disconnects += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture()
def broker(tmp_path: Path) -> tuple[Mosquitto, dict[str, str]]:
    users = {u: secrets.token_hex(8) for u in ("coordinator", "mb1", "h001")}
    mq = Mosquitto(tmp_path / "mq", users, ["mb1"]).start()
    yield mq, users  # type: ignore[misc]
    mq.stop()


@pytest.mark.parametrize("service_id", SERVICE_IDS)
def test_a_home_cannot_take_over_a_service_client_id_or_its_queued_messages(
        broker: tuple[Mosquitto, dict[str, str]], service_id: str) -> None:
    mq, users = broker
    svc_user = service_id.split("-")[0]
    # the service's persistent session, subscribed, then away
    sub, publisher, topic = QUEUED[service_id]
    svc = Client(mq.port, service_id, users[svc_user], service_id)
    svc.c.subscribe(sub, qos=1)
    time.sleep(0.3)
    svc.close()
    # something is queued for it, by an identity the ACL lets publish there
    pub = Client(mq.port, publisher, users[publisher], publisher, clean=True)
    pub.c.publish(topic, b"{}", qos=1).wait_for_publish(10)
    pub.close()
    # the home connects asking for the service's client id (clean session: it would wipe it)
    thief = Client(mq.port, "h001", users["h001"], service_id, clean=True)
    time.sleep(0.5)
    thief.close()
    # the service comes back: its session and the queued message are still there
    back = Client(mq.port, service_id, users[svc_user], service_id)
    deadline = time.monotonic() + 10
    while not back.got and time.monotonic() < deadline:
        time.sleep(0.05)
    back.close()
    assert back.session_present is True
    assert back.got == [topic]


def test_a_connected_service_is_not_kicked_by_a_home_using_its_client_id(
        broker: tuple[Mosquitto, dict[str, str]]) -> None:
    mq, users = broker
    svc = Client(mq.port, "coordinator", users["coordinator"], "coordinator")
    thieves = [Client(mq.port, "h001", users["h001"], "coordinator", clean=True)
               for _ in range(3)]
    time.sleep(0.5)
    for t in thieves:
        t.close()
    assert svc.disconnects == 0 and svc.c.is_connected()
    svc.close()
