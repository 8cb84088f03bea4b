"""A real round on a 3-node RabbitMQ cluster with a node killed mid-round (bench/cluster.py).

The coordinator and a mask broker run as processes with ``--broker rabbitmq`` (their bulk intake
over AMQP on the nodes, their MQTT link on nodes 1 and 2), the fleet publishes every home's real
firmware-core report through nodes 1 and 2, and node 3, which leads the intake queues and holds
the services' intake connections, is killed with SIGKILL once a third of the reports are
journaled.  The oracle is the same round without the kill, and the fleet's own list of homes.

Skipped, with the reason, when RabbitMQ or aio-pika is not installed (``./run test`` installs
both).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from backend.common import rabbitmq
from backend.lab.days import relays_as_decided
from backend.lab.lab import LabOptions, run_lab
from bench import cluster
from hemsfw import protocol, protocol_svc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                       reason=str(rabbitmq.why_unavailable())),
    pytest.mark.timeout(900),
]

HOMES = 200
ROOT = Path(__file__).resolve().parents[1]


def test_round_survives_a_node_killed_during_collection() -> None:
    r = cluster.run(3, HOMES, "collect", ("mb1",), 10, 1000, None)
    assert r["killed_node"] == 3
    assert (r["lost_reports"], r["duplicate_reports"], r["lost_adjustments"]) == (0, 0, 0)
    assert r["identical_to_reference"]
    # a refusal the failover can cause (an answer lost, a mask late), asked again; no other
    assert set(r["refusal_reasons"]) <= set(cluster.TRANSIENT_REFUSALS), r["refusal_reasons"]
    assert r["announcement_retained_on_every_node"]


def test_lab_round_with_real_firmware_on_three_nodes(tmp_path: Path) -> None:
    """``hems lab --broker rabbitmq --nodes 3``: MicroPython homes spread over the three nodes
    (each with the three as its failover list), the services' intake over AMQP; the round
    completes and the relays follow it."""
    summary, failures = run_lab(LabOptions(homes=6, k=3, seed=3, out_dir=tmp_path / "lab",
                                           broker="rabbitmq", nodes=3))
    assert not failures, failures
    assert len(summary["groups"]) >= 1
    assert summary["true_load_wh"] == summary["coordinator_load_before_wh"]
    # the relays drew what was decided (short by at most partial curtailment's rounding)
    assert relays_as_decided(summary["days"][0])
    hosts = {json.loads((d / "config.json").read_text())["mqtt"]["hosts"][0]
             for d in (Path(summary["lab_dir"]) / "homes").iterdir()}
    assert len(hosts) == 3  # every node has homes


def _peer(port: int, user: str, pw: str, topic: str | None,
          got: queue.Queue[tuple[str, bytes]]) -> mqtt.Client:
    """A paho client playing a service on one node (client id = user: RabbitMQ's ACL)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, pw)
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    if topic is not None:
        c.subscribe(topic, 1)
    return c


def test_micropython_home_fails_over_to_another_node_and_keeps_its_session(
        tmp_path: Path) -> None:
    """A MicroPython home on node 1 reports; node 1 is killed; the home moves to the next node
    of its mqtt.hosts, and the adjustment published meanwhile reaches it from its persistent
    session (a quorum queue: on every node)."""
    home, day, frames = "h1", "2026-11-28", 24
    pw = {home: secrets.token_hex(8), "coordinator": secrets.token_hex(8)}
    key = secrets.token_hex(32)
    cl = rabbitmq.RabbitCluster(tmp_path / "r", pw, ["mb1"], 3)
    with cl:
        ports = cl.mqtt_ports()
        state = tmp_path / "state"
        cfg = {"home_id": home, "magnification": 2, "plan_wh": [100] * frames,
               "keys": {"mb1": key}, "state_dir": str(state), "board": "unix", "clock": "lab",
               "safe_state": False, "loop_ms": 10,
               "mqtt": {"hosts": [f"127.0.0.1:{p}" for p in ports], "user": home,
                        "password": pw[home], "keepalive": 30, "timeout_s": 3}}
        (tmp_path / "home.json").write_text(json.dumps(cfg))
        log = tmp_path / "home.log"
        fw = ROOT / "firmware" / "micropython"
        env = {**os.environ, "MICROPYPATH": str(fw)}
        got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        coord = _peer(ports[1], "coordinator", pw["coordinator"], protocol.t_plan(home), got)
        with open(log, "wb") as f:
            proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "micropython"),
                                     str(fw / "run_home.py"), str(tmp_path / "home.json")],
                                    env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: "connected" in log.read_text(), 30, "home not connected")
            ann = protocol_svc.make_round(day, 1, frames, 3600, 100, 1795824000,
                                          int(time.time()) + 3600, ["mb1"])
            coord.publish(protocol.t_round(), protocol.encode(ann), 1, True).wait_for_publish(10)
            assert got.get(timeout=30)[0] == protocol.t_plan(home)
            _wait(lambda: json.loads((state / "round.json").read_text()).get("sent") is True,
                  30, "report not sent")
            cl.stop_node(1, kill=True)
            adj = protocol_svc.make_adjustment(day, 1, "g1", [[7, 9]], [], 1795824000 + 86400)
            coord.publish(protocol.t_adjust(home), protocol.encode(adj), 1).wait_for_publish(10)
            _wait(lambda: json.loads((state / "round.json").read_text()).get("adjusted")
                  is not None, 60, "adjustment not applied after the failover")
            text = log.read_text()
            assert f"next broker: 127.0.0.1 {ports[1]}" in text
            assert text.count("connected") >= 2
        finally:
            proc.kill()
            proc.wait(10)
            coord.disconnect()
            coord.loop_stop()


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except (OSError, ValueError):
            pass  # a state file being written
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.05)
