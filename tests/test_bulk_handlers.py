"""The services' batch handlers for the lean ingest connection (no MQTT: a fake connection).

What they promise (docs/scaling.md, "Integration steps"): every message of a batch is handled
in order with the same checks as one at a time; the batch's state is written once (the
coordinator: one fsync for the batch) *before* any reply is queued; the replies go out as
publishes on the lean connection; bad input is rejected with a reason and a counter."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_kit import ManualClock, announced, daemon_for, new_round

from backend.common.mqtt import MqttSettings
from backend.coordinator.mqtt_adapter import MqttAdapter
from backend.coordinator.round import Round
from backend.mask_broker.core import MaskBroker, Record
from backend.mask_broker.service import Service
from backend.mask_broker.state_dir import StateDir
from hemsfw import protocol, protocol_svc, seal

DAY = "2026-11-27"
F = 8
NOW = 1_700_000_000.0


class FakeIngest:
    """Records what the handler queued, and when (against a shared event log)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.published: list[tuple[str, bytes]] = []

    def drop_connection(self) -> None:
        self.log.append("drop")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.log.append(f"publish {topic}")
        self.published.append((topic, payload))


def plan(home: str, rid: str | None = None) -> bytes:
    masked = np.random.default_rng().integers(0, 2**32, F, dtype=np.uint64).astype("<u4")
    return protocol.encode(protocol.make_plan_report(
        home, DAY, 1, rid or secrets.token_hex(16), 2, masked.tobytes()))


def coordinator(tmp_path: Path, log: list[str]) -> tuple[MqttAdapter, Round, FakeIngest]:
    """The MQTT adapter of a coordinator whose round collects, its lean client a fake."""
    kit = new_round(tmp_path / "state", ManualClock(NOW), deadline=int(NOW) + 60)
    asyncio.run(announced(kit))
    adapter = MqttAdapter(MqttSettings(), "coordinator", daemon_for(kit))
    fake = FakeIngest(log)
    adapter.bulk = fake  # type: ignore[assignment]
    return adapter, kit.round, fake


def test_coordinator_batch_is_journaled_with_one_fsync_before_its_replies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    adapter, c, fake = coordinator(tmp_path, log)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        log.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rid = secrets.token_hex(16)
    batch = [(protocol.t_plan("h1"), plan("h1", rid)), (protocol.t_plan("h2"), plan("h2")),
             (protocol.t_plan("h3"), b"{not json"), (protocol.t_plan("h4"), plan("h4", rid)),
             ("hems/v1/plan/H!", plan("h5")), (protocol.t_plan("h6"), plan("h6"))]
    adapter.on_plan_batch(batch)
    assert log[0] == "fsync" and log.count("fsync") == 1  # one fsync, before any reply
    replies = {t.rsplit("/", 1)[1]: json.loads(p) for t, p in fake.published}
    assert {h: r["status"] for h, r in replies.items()} == {
        "h1": "accepted", "h2": "accepted", "h3": "rejected", "h4": "rejected",
        "h6": "accepted"}
    assert (replies["h3"]["reason"], replies["h4"]["reason"]) == ("bad_json", "replay")
    assert c.rejections.as_dict() == {"plan:bad_json": 1, "plan:replay": 1, "plan:bad_topic": 1}
    lines = [json.loads(x) for x in (tmp_path / "state").glob("round-*.jsonl").__next__()
             .read_bytes().splitlines()]
    assert [r["home"] for r in lines if r["kind"] == "report"] == ["h1", "h2", "h6"]
    assert c.intake is not None and c.intake.accepted == 3


class CountingState(StateDir):
    def __init__(self, path: Path, log: list[str]) -> None:
        super().__init__(path)
        self.log = log

    def write(self, rec: Record, flush: bool = True) -> None:
        super().write(rec, flush)
        self.log.append(f"record {rec.kind}{'' if flush else ' (buffered)'}")

    def flush(self) -> None:
        super().flush()
        self.log.append("flush")


def test_mask_broker_batch_writes_its_records_before_the_replies(tmp_path: Path) -> None:
    keys = {f"h{i}": bytes([i]) * 32 for i in range(1, 4)}
    core = MaskBroker("mb1", keys, 2)
    core.handle(protocol.t_round(),
                protocol.encode(protocol_svc.make_round(DAY, 1, F, 900, 1, 0, 1, ["mb1"])))
    log: list[str] = []

    def mask(home: str, key: bytes | None = None) -> tuple[str, bytes]:
        rid = os.urandom(16).hex()
        ad = protocol.mask_ad("mb1", home, DAY, 1, rid)
        blob = seal.seal(key or keys[home], ad, os.urandom(32), os.urandom(seal.NONCE_LEN))
        return protocol.t_mask("mb1", home), protocol.encode(
            protocol.make_mask_report(home, DAY, 1, rid, blob))

    async def go() -> Service:
        svc = Service(core, MqttSettings(), CountingState(tmp_path / "st", log))
        fake: Any = FakeIngest(log)
        svc.ingest = fake
        svc._on_batch([mask("h1"), mask("h2", key=bytes(32)), mask("h3"),
                       (protocol.t_mask("mb1", "h1"), b"\xff")])
        return svc

    svc = asyncio.run(go())
    assert log[:3] == ["record mask (buffered)", "record mask (buffered)", "flush"]
    assert [x.split()[0] for x in log[3:]] == ["publish"] * 4  # replies after the write
    assert core.masks.count == 2
    assert core.rejections.as_dict() == {"mask:bad_mac": 1, "mask:bad_json": 1}
    assert len((tmp_path / "st" / f"masks-{DAY}-1.jsonl").read_bytes().splitlines()) == 2
    assert svc.core is core


def test_coordinator_fails_closed_when_the_journal_cannot_be_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    adapter, _, _ = coordinator(tmp_path, log)

    def fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    adapter.on_plan_batch([(protocol.t_plan("h1"), plan("h1"))])
    assert log == ["drop"]  # no reply, and the batch is not acknowledged: redelivered
    assert "journal" in str(adapter.failure)


def test_mask_broker_fails_closed_when_the_state_dir_cannot_be_written(tmp_path: Path) -> None:
    keys = {"h1": b"\x01" * 32}
    core = MaskBroker("mb1", keys, 2)
    core.handle(protocol.t_round(),
                protocol.encode(protocol_svc.make_round(DAY, 1, F, 900, 1, 0, 1, ["mb1"])))
    log: list[str] = []

    class Broken(StateDir):
        def flush(self) -> None:
            raise OSError(28, "No space left on device")

    async def go() -> Service:
        svc = Service(core, MqttSettings(), Broken(tmp_path / "st"))
        fake: Any = FakeIngest(log)
        svc.ingest = fake
        rid = os.urandom(16).hex()
        blob = seal.seal(keys["h1"], protocol.mask_ad("mb1", "h1", DAY, 1, rid), os.urandom(32),
                         os.urandom(seal.NONCE_LEN))
        svc._on_batch([(protocol.t_mask("mb1", "h1"), protocol.encode(
            protocol.make_mask_report("h1", DAY, 1, rid, blob)))])
        return svc

    svc = asyncio.run(go())
    assert log == ["drop"] and svc.fatal is not None and "state dir" in svc.fatal
