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
from pathlib import Path

import pytest

from backend.common import rabbitmq
from backend.lab.lab import LabOptions, run_lab
from bench import cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(rabbitmq.why_unavailable() is not None,
                       reason=str(rabbitmq.why_unavailable())),
    pytest.mark.timeout(900),
]

HOMES = 200


def test_round_survives_a_node_killed_during_collection() -> None:
    r = cluster.run(3, HOMES, "collect", ("mb1",), 10, 1000, None)
    assert r["killed_node"] == 3
    assert (r["lost_reports"], r["duplicate_reports"], r["lost_adjustments"]) == (0, 0, 0)
    assert r["identical_to_reference"]
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
    assert summary["relay_load_after_wh"] == summary["coordinator_load_after_wh"]
    hosts = {json.loads((d / "config.json").read_text())["mqtt"]["hosts"][0]
             for d in (Path(summary["lab_dir"]) / "homes").iterdir()}
    assert len(hosts) == 3  # every node has homes
