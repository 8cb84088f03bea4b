"""``--metrics-port``: the coordinator serves its Prometheus samples while a round runs."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from backend.common.broker import Mosquitto, free_port
from backend.common.mqtt import MqttSettings
from backend.coordinator.service import Coordinator, CoordinatorError, ServiceConfig
from hemsfw import protocol

pytestmark = pytest.mark.integration


async def scrape(port: int) -> str:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await w.drain()
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return data.decode()


def test_metrics_endpoint_during_a_round(tmp_path: Path) -> None:
    users = {u: secrets.token_hex(8) for u in ("coordinator", "mb1", "h1")}
    port = free_port()
    cfg = ServiceConfig(day="2026-11-27", round=1, frames=4, frame_s=900, quantum_wh=1,
                        start=1_800_000_000, collect_s=3, brokers=("mb1",), k=3,
                        capacity_wait_s=0.5, metrics_port=port, state_dir=tmp_path / "state")

    async def go() -> str:
        with Mosquitto(tmp_path / "mq", users, ["mb1"]) as mq:
            settings = MqttSettings(port=mq.port, username="coordinator",
                                    password=users["coordinator"])
            c = Coordinator(cfg, settings)
            run = asyncio.create_task(c.run())
            for _ in range(200):  # until it is connected and collecting
                await asyncio.sleep(0.02)
                if c.link is not None and c.link.connected and c.state is not None:
                    break
            text = await scrape(port)
            with pytest.raises(CoordinatorError):  # no capacity, no homes: a clear failure
                await asyncio.wait_for(run, 30)
            return text

    text = asyncio.run(go())
    assert text.startswith("HTTP/1.1 200")
    body = text.split("\r\n\r\n", 1)[1]
    assert "hems_coordinator_collection_open 1" in body
    assert "hems_coordinator_connected 1" in body
    assert "hems_coordinator_reports_accepted_total 0" in body
    assert 'hems_coordinator_phase_seconds{phase="collect"}' in body
    assert protocol.PREFIX not in body  # samples, not topics
