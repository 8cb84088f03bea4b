"""``coordinator --workers 2``: the plan ingest shared over ``$share`` by two processes.

The whole round runs for real (bench/scale.py's harness: mosquitto, the mask broker, the
coordinator with one extra ingest worker, the fleet publishing real reports): every home must be
counted once and adjusted, and mosquitto must have spread the reports over both processes.  The
merge rules (which copy of a duplicate stays) are checked without MQTT."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.common.broker import free_port
from backend.common.fleet_acl import FLEET_USER, FleetMosquitto
from backend.common.mqtt import MqttSettings
from backend.common.rejects import Rejections
from backend.coordinator import workers
from backend.coordinator.intake import Intake, RoundConfig
from backend.coordinator.ports import SystemClock
from bench import fleet as fl
from bench import scale
from hemsfw import protocol, protocol_svc

F = 8
DAY = "2026-11-27"


@pytest.mark.integration
def test_two_workers_share_the_plan_topic_and_every_home_counts_once(tmp_path: Path) -> None:
    row = scale.run_once(300, ("mb1",), 10, 0.95, None, 1000, tmp_path,
                         "homes", 1000, workers=2)
    assert row["homes"] == 300 and row["workers"] == 2
    main, other = row["worker_reports"]
    assert main + other == 300 and main > 0 and other > 0  # both processes took reports


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def test_merge_keeps_the_main_processes_copy_and_counts_the_dropped_ones() -> None:
    cfg = RoundConfig(DAY, 1, F, 900, 1, 1_800_000_000, 2_000_000_000, ("mb1",))
    intake = Intake(cfg, None, Rejections(logging.getLogger("test")))
    rid1 = secrets.token_hex(16)
    intake.state.restore("h1", rid1, 2, bytes(4 * F))
    rows = np.arange(3 * F, dtype="<u4").reshape(3, F)
    rids = [secrets.token_hex(16), rid1, secrets.token_hex(16)]
    pool = workers.WorkerPool(2, MqttSettings(), "coordinator", None, SystemClock())
    w: Any = workers.WorkerHandle(1, None, FakeConn())  # type: ignore[arg-type]
    w.rows = (["h1", "h2", "h3"], rids, [4, 4, 1], rows.tobytes(),
              {"plan:bad_json": 2}, ["h9", "h3"])
    w.ready.set()
    pool.workers.append(w)
    added, dropped = asyncio.run(pool.merge(intake))
    assert (added, dropped) == (1, 2)  # h1: this process's copy stays; h2: its id is a replay
    assert w.conn.sent == [("close",)]
    reports = intake.state.reports
    assert reports["h1"].report_id == rid1 and reports["h1"].mag == 2
    assert reports["h3"].masked.tolist() == rows[2].tolist()
    assert "h2" not in reports
    assert intake.rejections.as_dict() == {"plan:bad_json": 2, "plan:duplicate_home": 1,
                                           "plan:replay": 1}
    assert intake.late_homes == {"h9"}  # h3 was accepted by a worker: not late


@pytest.mark.integration
def test_a_killed_coordinator_with_workers_resumes_with_every_report(tmp_path: Path) -> None:
    spec = fl.FleetSpec(200, ("mb1",))
    fleet = fl.build(spec)
    users = {FLEET_USER: "fleet-pw", scale.COORD: "coord-pw", "mb1": "mb1-pw"}
    regs = fl.write_registry(spec, tmp_path)
    cap = tmp_path / "capacity.json"
    cap.write_bytes(protocol.encode(protocol_svc.make_capacity(
        spec.frames, [int(fleet.plans.sum(axis=0).max())] * spec.frames)))
    procs: list[scale.Service] = []
    with FleetMosquitto(tmp_path / "mq", users, ["mb1"]) as mq:
        try:
            port = free_port()
            mb = scale.start("mb1", [
                sys.executable, "-m", "backend.mask_broker", "--broker-id", "mb1",
                "--registry", str(regs["mb1"]), "--k", "10", "--metrics-port", str(port),
                "--port", str(mq.port)], {"HEMS_MQTT_PASSWORD": "mb1-pw"}, tmp_path, port)
            procs.append(mb)
            scale.wait_until(lambda: mb.metrics().get("hems_mask_broker_ingest_connected") == 1,
                             30, "the mask broker", procs)

            def coordinator(name: str) -> scale.Service:
                port = free_port()
                c = scale.start(name, [
                    sys.executable, "-m", "backend.coordinator", "--day", spec.day,
                    "--frames", str(spec.frames), "--start", str(spec.start),
                    "--collect-s", "600", "--expected-homes", str(spec.homes),
                    "--brokers", "mb1", "--k", "10", "--capacity-file", str(cap),
                    "--result", str(tmp_path / "result.json"), "--workers", "2",
                    "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port),
                    "--port", str(mq.port), "--user", scale.COORD],
                    {"HEMS_MQTT_PASSWORD": "coord-pw"}, tmp_path, port)
                procs.append(c)
                scale.wait_until(
                    lambda: c.metrics().get("hems_coordinator_ingest_connected") == 1, 30,
                    f"{name}'s ingest connection", procs)
                return c

            first = coordinator("coordinator-1")
            half = 2 * (spec.homes // 2)  # each home's plan and mask, in home order
            fl.publish_raw(fleet.messages[:half], "127.0.0.1", mq.port, FLEET_USER,
                           users[FLEET_USER])
            scale.wait_until(lambda: first.metrics().get(
                "hems_coordinator_reports_accepted_total") == spec.homes // 2, 30,
                "the first half of the reports", procs)
            first.proc.kill()  # kill -9: its worker sees the pipe close and exits
            first.proc.wait()
            procs.remove(first)
            second = coordinator("coordinator-2")
            fl.publish_raw(fleet.messages[half:], "127.0.0.1", mq.port, FLEET_USER,
                           users[FLEET_USER])
            scale.reap(second, 120)
            procs.remove(second)
            assert second.proc.returncode == 0, second.tail()
        finally:
            for p in procs:
                scale.stop(p)
    res = json.loads((tmp_path / "result.json").read_text())
    assert (res["status"], res["homes"], res["adjusted_homes"], res["restarts"]) == (
        "completed", spec.homes, spec.homes, 1)
    worker_journal = tmp_path / "state" / f"round-{spec.day}-1.w1.jsonl"
    kinds = [json.loads(x)["kind"] for x in worker_journal.read_bytes().splitlines()]
    assert kinds.count("round") == 1 and "report" in kinds and kinds[-1] == "closed"
