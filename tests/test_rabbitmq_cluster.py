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

import pytest

from backend.common import rabbitmq
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
