"""``--metrics-port``: the coordinator serves its Prometheus samples while a round runs."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coordinator_kit import DAY, START, Homes, ManualClock, new_round

from backend.common.broker import REPO, Mosquitto, free_port
from backend.common.metrics import render
from backend.common.mqtt import MqttSettings
from backend.coordinator import metrics
from backend.coordinator.daemon import Daemon, DaemonConfig
from backend.coordinator.mqtt_adapter import MqttAdapter
from backend.coordinator.supply import SupplyBook
from hemsfw import protocol


def scrape(port: int) -> str:
    async def go() -> str:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), 5)
        w.close()
        return data.decode()

    return asyncio.run(go())


@pytest.mark.integration
def test_metrics_endpoint_during_a_round(tmp_path: Path) -> None:
    users = {u: secrets.token_hex(8) for u in ("coordinator", "mb1", "h1")}
    port = free_port()
    with Mosquitto(tmp_path / "mq", users, ["mb1"]) as mq:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.coordinator", "--day", DAY, "--start", str(START),
             "--frames", "4", "--brokers", "mb1", "--collect-s", "3", "--capacity-wait-s",
             "0.5", "--metrics-port", str(port), "--state-dir", str(tmp_path / "state"),
             "--result", str(tmp_path / "r.json"), "--port", str(mq.port)],
            cwd=REPO, env={**os.environ, "HEMS_MQTT_PASSWORD": users["coordinator"]},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            text = ""
            deadline = time.monotonic() + 20
            # the sample line, not the HELP line ("... collection_open 1 while plan reports ...")
            while "\nhems_coordinator_collection_open 1\n" not in text:
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
                try:
                    text = scrape(port)
                except OSError:
                    continue
            assert proc.wait(30) == 1  # no capacity, no homes: a clear failure
        finally:
            if proc.poll() is None:
                proc.kill()
    assert text.startswith("HTTP/1.1 200")
    body = text.split("\r\n\r\n", 1)[1]
    assert "hems_coordinator_connected 1" in body
    assert "hems_coordinator_reports_accepted_total 0" in body
    assert (f'hems_coordinator_round_phase{{day="{DAY}",phase="collecting",round="1"}} 1'
            in body)
    assert protocol.PREFIX not in body  # samples, not topics


def test_samples_count_what_the_current_round_took() -> None:
    kit = new_round(None, ManualClock())
    daemon = Daemon(DaemonConfig(kit.round.s), kit.clock, SupplyBook())
    daemon.attach(kit.out)
    daemon.open.append(kit.round)
    daemon.current = kit.round
    adapter = MqttAdapter(MqttSettings(), "coordinator", daemon)

    async def go() -> None:
        task = asyncio.create_task(kit.round.run())
        while kit.round.intake is None:
            await asyncio.sleep(0.001)
        plans, _ = Homes(["h1"], 8).reports()
        out: list[tuple[str, bytes]] = []
        for topic, payload in plans:
            daemon.dispatch(topic, payload, False, out, False)
        daemon.dispatch(protocol.t_plan("h1"), b"{", False, out, False)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    text = render(metrics.samples(daemon, adapter))
    assert "hems_coordinator_reports_accepted_total 1" in text
    assert 'hems_coordinator_rejected_total{kind="plan",reason="bad_json"} 1' in text
    assert "hems_coordinator_connected 0" in text
    assert all(line.startswith(("# ", "hems_coordinator_")) for line in text.splitlines())
