"""A real mask broker process against a real mosquitto (loopback, free port), and the home and
coordinator sides of its protocol: shared by the mask broker's service and attack tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from backend.common.broker import REPO, Mosquitto
from backend.common.mqtt import MqttSettings
from hemsfw import masking, protocol, protocol_svc, seal

B = "mb1"
#: tomorrow: the mask broker accepts rounds for today and tomorrow on its own clock
DAY = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
FRAMES = 8
HOMES = [f"h{i}" for i in range(1, 7)]
WAIT = 15.0  # bound on every single wait


@dataclass
class Lab:
    tmp: Path
    mq: Mosquitto
    passwords: dict[str, str]
    keys: dict[str, bytes]
    registry: Path
    stats: Path
    proc: subprocess.Popen[bytes] | None = None

    def settings(self, user: str) -> MqttSettings:
        return MqttSettings(port=self.mq.port, username=user, password=self.passwords[user])

    # ------------------------------------------------------------ the service process

    def start_service(self) -> None:
        env = {**os.environ, "HEMS_MQTT_PASSWORD": self.passwords[B]}
        argv = [sys.executable, "-m", "backend.mask_broker", "--broker-id", B,
                "--registry", str(self.registry), "--k", "2", "--port", str(self.mq.port),
                "--state-dir", str(self.tmp / "state"), "--stats-file", str(self.stats),
                "--stats-interval", "0.2", "--release-log", str(self.release_log)]
        with open(self.tmp / "mask_broker.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.wait_stats(lambda s: s["pid"] == self.proc.pid and s["mqtt"]["connected"])

    def stop_service(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self.proc = None

    @property
    def release_log(self) -> Path:
        return self.tmp / "releases.jsonl"

    def log_tail(self) -> str:
        p = self.tmp / "mask_broker.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def read_stats(self) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = json.loads(self.stats.read_text())
            return obj
        except (OSError, ValueError):
            return None

    def wait_stats(self, ok: Any) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            s = self.read_stats()
            if s is not None and ok(s):
                return s
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("mask broker exited:\n" + self.log_tail())
            time.sleep(0.05)
        raise AssertionError(f"stats never matched: {self.read_stats()}\n{self.log_tail()}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    users = ["coordinator", B, *HOMES]
    passwords = {u: secrets.token_hex(12) for u in users}
    keys = {h: os.urandom(32) for h in HOMES}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"homes": {h: {"key": k.hex()} for h, k in keys.items()}}))
    with Mosquitto(tmp_path / "mq", passwords, mask_brokers=[B]) as mq:
        lab = Lab(tmp_path, mq, passwords, keys, registry, tmp_path / "stats.json")
        try:
            yield lab
        finally:
            if lab.proc is not None:
                lab.proc.kill()
                lab.proc.wait(WAIT)


# ---------------------------------------------------------------- MQTT helpers


@asynccontextmanager
async def connected(lab: Lab, user: str, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    async with lab.settings(user).client() as c:
        for t in topics:
            await c.subscribe(t, qos=1)
        yield c


async def next_json(c: aiomqtt.Client, topic: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        async for m in c.messages:
            if m.topic.matches(topic):
                assert isinstance(m.payload, bytes)
                obj: dict[str, Any] = json.loads(m.payload)
                return obj
    raise AssertionError("unreachable")


class HomeSide:
    """A home's mask report, sealed exactly as the firmware seals it (hemsfw.home)."""

    def __init__(self, keys: dict[str, bytes], home: str) -> None:
        self.keys, self.id = keys, home
        self.seed = os.urandom(protocol.SEED_LEN)
        self.rid = os.urandom(16).hex()

    def payload(self, rnd: int = 1, key: bytes | None = None, day: str = DAY) -> bytes:
        ad = protocol.mask_ad(B, self.id, day, rnd, self.rid)
        blob = seal.seal(key or self.keys[self.id], ad, self.seed,
                         os.urandom(seal.NONCE_LEN))
        return protocol.encode(protocol.make_mask_report(self.id, day, rnd, self.rid, blob))

    def row(self) -> bytes:
        return bytes(masking.expand_seed(self.seed, FRAMES))


def expected(homes: list[HomeSide]) -> bytes:
    acc = bytearray(4 * FRAMES)
    for h in homes:
        masking.add_words(acc, h.row())
    return bytes(acc)


async def report(lab: Lab, home: str, payload: bytes) -> dict[str, Any]:
    """Publish on the home's mask topic as the home, return the broker's reply."""
    async with connected(lab, home, protocol.t_reply(B, home)) as c:
        await c.publish(protocol.t_mask(B, home), payload, qos=1)
        return await next_json(c, protocol.t_reply(B, home))


async def ask(coord: aiomqtt.Client, req: str, groups: list[tuple[str, list[HomeSide]]],
              checksums: dict[str, str] | None = None, day: str = DAY, rnd: int = 1,
              carried: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Ask for group sums; ``carried``: group -> members counted with their latest released
    report (a HomeSide of an earlier round: its report id is in the checksum)."""
    gs = [(g, [h.id for h in m],
           (checksums or {}).get(g) or protocol_svc.report_checksum([h.rid for h in m]),
           (carried or {}).get(g, []))
          for g, m in groups]
    msg = protocol_svc.make_group_request(req, day, rnd, gs)
    await coord.publish(protocol_svc.t_groupreq(B), protocol.encode(msg), qos=1)
    while True:
        obj = await next_json(coord, protocol_svc.t_groupsum(B))
        if obj.get("req") == req:
            _, broker, got_day, got_rnd, res = protocol_svc.parse_group_sums(obj, FRAMES)
            assert (broker, got_day, got_rnd) == (B, day, rnd)
            return res
