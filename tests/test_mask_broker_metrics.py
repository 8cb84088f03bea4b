"""The mask broker's Prometheus metrics: the samples from its live counters, and the endpoint
of a real `hems mask-broker --metrics-port` process scraped over HTTP during a round."""

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
import urllib.request
from pathlib import Path

import pytest

from backend.common.broker import REPO, Mosquitto, free_port
from backend.common.metrics import Sample, render
from backend.common.mqtt import MqttSettings
from backend.mask_broker.core import MaskBroker
from backend.mask_broker.service import Service
from hemsfw import protocol, protocol_svc, seal

B, FRAMES = "mb1", 8
#: tomorrow: the mask broker accepts rounds for today and tomorrow on its own clock
DAY = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
WAIT = 20.0


def _mask(key: bytes, home: str, rnd: int = 1) -> tuple[str, bytes]:
    rid = os.urandom(16).hex()
    blob = seal.seal(key, protocol.mask_ad(B, home, DAY, rnd, rid), os.urandom(protocol.SEED_LEN),
                     os.urandom(seal.NONCE_LEN))
    return rid, protocol.encode(protocol.make_mask_report(home, DAY, rnd, rid, blob))


def _values(samples: list[Sample]) -> dict[str, float]:
    out = {}
    for s in samples:
        lab = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{lab}}}" if lab else s.name] = s.value
    return out


def test_samples_follow_the_core_counters() -> None:
    keys = {h: os.urandom(32) for h in ("h1", "h2", "h3")}
    svc = Service(MaskBroker(B, keys, 2), MqttSettings())
    ann = protocol.encode(protocol_svc.make_round(DAY, 1, FRAMES, 900, 1, 0, 3600, [B]))
    for topic, payload in [(protocol.t_round(), ann),
                           (protocol.t_mask(B, "h1"), _mask(keys["h1"], "h1")[1]),
                           (protocol.t_mask(B, "h2"), b"{not json"),
                           (protocol.t_round(), ann)]:  # the same round again: not a new one
        svc.core.handle(topic, payload)
        svc._observe(topic, 0.001)
    v = _values(svc.samples())
    assert v["hems_mask_broker_rounds_total"] == 1
    assert v["hems_mask_broker_masks_accepted_total"] == 1
    assert v["hems_mask_broker_masks_this_round"] == 1
    assert v["hems_mask_broker_rejected_total{kind=mask,reason=bad_json}"] == 1
    assert v["hems_mask_broker_connected"] == 0
    assert v["hems_mask_broker_homes_registered"] == 3
    assert v["hems_mask_broker_info{broker=mb1,k=2}"] == 1
    assert "hems_mask_broker_round_latency_seconds" not in v  # no group answered yet
    text = render(svc.samples())
    assert "# TYPE hems_mask_broker_rejected_total counter" in text


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.integration
def test_metrics_endpoint_of_a_running_mask_broker(tmp_path: Path) -> None:
    homes = ["h1", "h2", "h3"]
    pw = {u: secrets.token_hex(12) for u in ["coordinator", B, *homes]}
    keys = {h: os.urandom(32) for h in homes}
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"homes": {h: {"key": k.hex()} for h, k in keys.items()}}))
    mport = free_port()
    with Mosquitto(tmp_path / "mq", pw, mask_brokers=[B]) as mq:
        stats = tmp_path / "stats.json"
        proc = subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / "hems"), "mask-broker", "--broker-id", B,
             "--registry", str(reg), "--k", "2", "--port", str(mq.port),
             "--stats-file", str(stats), "--stats-interval", "0.1",
             "--metrics-port", str(mport)],
            cwd=REPO, env={**os.environ, "HEMS_MQTT_PASSWORD": pw[B]},
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "mb.log").open("wb"))
        try:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    if _scrape(mport)["hems_mask_broker_connected"] == 1:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, (tmp_path / "mb.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "mb.log").read_text()
                time.sleep(0.1)

            def settings(user: str) -> MqttSettings:
                return MqttSettings(port=mq.port, username=user, password=pw[user])

            async def round_() -> None:
                async with settings("coordinator").client() as coord:
                    await coord.subscribe(protocol_svc.t_groupsum(B), qos=1)
                    ann = protocol_svc.make_round(DAY, 1, FRAMES, 900, 1, 0, 3600, [B])
                    await coord.publish(protocol.t_round(), protocol.encode(ann), qos=1,
                                        retain=True)
                    await asyncio.sleep(0.5)
                    rids = {}
                    for h in ("h1", "h2"):
                        async with settings(h).client() as c:
                            rids[h], payload = _mask(keys[h], h)
                            await c.publish(protocol.t_mask(B, h), payload, qos=1)
                    async with settings("h3").client() as c:
                        await c.publish(protocol.t_mask(B, "h3"), b"garbage", qos=1)
                    await asyncio.sleep(0.5)
                    req = protocol_svc.make_group_request("q1", DAY, 1, [
                        ("g", ["h1", "h2"], protocol_svc.report_checksum(list(rids.values()))),
                        ("small", ["h1"], protocol_svc.report_checksum([rids["h1"]]))])
                    await coord.publish(protocol_svc.t_groupreq(B), protocol.encode(req), qos=1)
                    async with asyncio.timeout(WAIT):
                        async for _ in coord.messages:
                            break

            asyncio.run(round_())
            deadline = time.monotonic() + WAIT
            while (m := _scrape(mport)).get("hems_mask_broker_group_requests_total") != 1:
                assert time.monotonic() < deadline, m
                time.sleep(0.1)
            assert m["hems_mask_broker_rounds_total"] == 1
            assert m["hems_mask_broker_masks_accepted_total"] == 2
            assert m['hems_mask_broker_rejected_total{kind="mask",reason="bad_json"}'] == 1
            assert m["hems_mask_broker_groups_released_total"] == 1
            assert m['hems_mask_broker_groups_refused_total{reason="too_small"}'] == 1
            assert m["hems_mask_broker_round_latency_seconds"] > 0
            assert m["hems_mask_broker_group_request_seconds_total"] > 0
            assert m["hems_mask_broker_atom_min_size"] == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(WAIT) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(WAIT)


def test_metrics_port_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"homes": {"h1": {"key": "00" * 32}}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [str(Path(sys.prefix) / "bin" / "hems"), "mask-broker", "--broker-id", B,
             "--registry", str(reg), "--port", str(free_port()), "--metrics-port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cannot serve metrics" in r.stderr
