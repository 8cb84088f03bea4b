"""bench/fleet.py: the fleet simulator's reports are the firmware's, and reach mosquitto intact.

The publisher is a load generator of our own (pre-encoded QoS 1 frames), so it is checked
against a real mosquitto: every report arrives byte for byte, PUBACKs are counted in order with
packet ids cycling past 65535, refusals and closed ports raise FleetError.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from backend.common.broker import acl_text
from backend.common.fleet_acl import FLEET_USER, FleetMosquitto, fleet_acl_text
from bench import fleet as fl
from hemsfw import masking, protocol, protocol_svc, seal

PW = {FLEET_USER: "fleet-pw", "coordinator": "coord-pw", "mb1": "mb1-pw", "mb2": "mb2-pw",
      "h000001": "home-pw"}


def test_fleet_reports_are_the_firmwares_and_unmask_to_the_plans(tmp_path: Path) -> None:
    spec = fl.FleetSpec(12, ("mb1", "mb2"), seed=7)
    fleet = fl.build(spec)
    assert [t for t, _ in fleet.messages[:3]] == [
        "hems/v1/plan/h000001", "hems/v1/mask/mb1/h000001", "hems/v1/mask/mb2/h000001"]
    assert len(fleet.messages) == 36 and fleet.plans.shape == (12, 96)
    assert int(fleet.plans.sum()) > 0 and set(fleet.mags.tolist()) <= {1, 2, 4}
    regs = fl.write_registry(spec, tmp_path)
    keys = {b: {h: bytes.fromhex(e["key"]) for h, e in json.loads(p.read_text())["homes"].items()}
            for b, p in regs.items()}
    rids = {}
    for i, h in enumerate(spec.ids()):
        (_, plan), *masks = [m for m in fleet.messages if m[0].endswith("/" + h)]
        home, day, rnd, rid, mag, masked = protocol_svc.parse_plan_report(
            protocol.decode(plan), 96)
        assert (home, day, rnd, mag) == (h, spec.day, 1, fleet.mags[i])
        acc = bytearray(masked)
        for (topic, payload), b in zip(masks, spec.brokers, strict=True):
            assert topic == protocol.t_mask(b, h)
            mh, _d, _r, mrid, blob = protocol_svc.parse_mask_report(protocol.decode(payload))
            assert (mh, mrid) == (h, rid)
            s = seal.open_sealed(keys[b][h], protocol.mask_ad(b, h, day, rnd, rid), blob)
            mask = masking.expand_seed(s, 96)
            # masked - mask: add the two's complement of the mask word by word
            neg = masking.from_words([(-w) % 2**32 for w in masking.words(mask)])
            masking.add_words(acc, neg)
        assert masking.words(acc) == fleet.plans[i].tolist()
        rids[h] = rid
    assert len(set(rids.values())) == 12  # a fresh report id per home
    assert fl.home_passwords(spec)["h000001"] == fl.home_password(7, "h000001")


def test_fleet_cache_reuses_the_same_reports(tmp_path: Path) -> None:
    spec = fl.FleetSpec(3)
    a = fl.load_or_build(spec, tmp_path / "c.pkl")
    b = fl.load_or_build(spec, tmp_path / "c.pkl")
    assert a.messages == b.messages and np.array_equal(a.plans, b.plans)
    c = fl.load_or_build(fl.FleetSpec(3, seed=2), tmp_path / "c.pkl")  # another spec: rebuilt
    assert c.messages != a.messages


def test_fleet_identity_is_not_in_the_production_acl() -> None:
    assert f"user {FLEET_USER}" not in acl_text(["mb1"])
    assert f"user {FLEET_USER}" in fleet_acl_text()
    assert "TEST ONLY" in fleet_acl_text()


def test_packet_encoding() -> None:
    assert fl.publish_packet("a/b", b"xy", 7) == b"\x32\x09\x00\x03a/b\x00\x07xy"
    big = fl.publish_packet("t", b"x" * 200, 1)
    assert big[1:3] == bytes((0x80 | (205 % 128), 205 // 128))
    assert fl.mid_of(0) == 1 and fl.mid_of(65534) == 65535 and fl.mid_of(65535) == 1


# ------------------------------------------------------------------ against mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[FleetMosquitto]:
    with FleetMosquitto(tmp_path / "mq", dict(PW), ["mb1", "mb2"]) as mq:
        yield mq


def listener(mq: FleetMosquitto, user: str, topic: str, qos: int = 1) -> fl.Listener:
    return fl.Listener("127.0.0.1", mq.port, user, PW[user], [topic], qos=qos,
                       client_id=f"t-{user}-{time.monotonic_ns()}", keep=lambda t, p: True)


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["raw", "paho"])
def test_every_report_reaches_its_service_intact(broker: FleetMosquitto, engine: str) -> None:
    fleet = fl.build(fl.FleetSpec(300, ("mb1", "mb2")))
    with listener(broker, "coordinator", protocol.t_plan("+")) as coord, \
            listener(broker, "mb1", protocol.t_mask("mb1", "+")) as mb1, \
            listener(broker, "mb2", protocol.t_mask("mb2", "+")) as mb2:
        stats = fl.publish(fleet.messages, "127.0.0.1", broker.port, FLEET_USER,
                           PW[FLEET_USER], engine, window=50)  # type: ignore[arg-type]
        assert stats.messages == 900 and stats.msgs_per_s > 0
        for lis, fam in ((coord, "plan"), (mb1, "mask/mb1"), (mb2, "mask/mb2")):
            assert lis.wait(300, 20)
            time.sleep(0.1)
            assert sorted(lis.kept) == sorted(fleet.topics(fam))


@pytest.mark.integration
def test_raw_publisher_cycles_packet_ids_and_paces(broker: FleetMosquitto) -> None:
    msgs = [(protocol.t_plan(f"x{i}"), i.to_bytes(4, "little")) for i in range(70_000)]
    with listener(broker, "coordinator", protocol.t_plan("+"), qos=0) as coord:
        stats = fl.publish_raw(msgs, "127.0.0.1", broker.port, FLEET_USER, PW[FLEET_USER],
                               window=60_000, chunk=1000)
        assert stats.messages == 70_000
        assert coord.wait(70_000, 60)
    paced = fl.publish_raw(msgs[:2000], "127.0.0.1", broker.port, FLEET_USER, PW[FLEET_USER],
                           rate=10_000)
    assert paced.seconds >= 0.15  # 2000 messages at 10k/s: ~0.2 s


@pytest.mark.integration
def test_raw_publisher_errors(broker: FleetMosquitto) -> None:
    msgs = [(protocol.t_plan("h000001"), b"{}")]
    with pytest.raises(fl.FleetError, match=r"refused|closed"):
        fl.publish_raw(msgs, "127.0.0.1", broker.port, FLEET_USER, "wrong")
    with pytest.raises(fl.FleetError, match="cannot connect"):
        fl.publish_raw(msgs, "127.0.0.1", fl_free_port(), FLEET_USER, "x")
    with pytest.raises(ValueError):
        fl.publish_raw(msgs, "127.0.0.1", broker.port, FLEET_USER, "x", window=70_000)
    with pytest.raises(fl.FleetError, match="refused"):
        fl.publish_paho(msgs, "127.0.0.1", broker.port, FLEET_USER, "wrong", timeout=5)
    # A home identity cannot borrow the fleet's power: mosquitto drops its publish for
    # another home (QoS 1 still acknowledged, MQTT 3.1.1), so the coordinator sees nothing.
    with listener(broker, "coordinator", protocol.t_plan("+")) as coord:
        fl.publish_raw([(protocol.t_plan("h000002"), b"{}")], "127.0.0.1", broker.port,
                       "h000001", PW["h000001"], client_id="h000001")
        fl.publish_raw(msgs, "127.0.0.1", broker.port, "h000001", PW["h000001"],
                       client_id="h000001")
        assert coord.wait(1, 5)
        time.sleep(0.3)
        assert [t for t, _ in coord.kept] == [protocol.t_plan("h000001")]


def fl_free_port() -> int:
    from backend.common.broker import free_port

    return free_port()


@pytest.mark.integration
def test_listener_hears_adjustments(broker: FleetMosquitto) -> None:
    with listener(broker, FLEET_USER, protocol.t_adjust("+"), qos=0) as ears:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="coord")
        c.username_pw_set("coordinator", PW["coordinator"])
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:
            for h in ("h000001", "h000002"):
                c.publish(protocol.t_adjust(h), b'{"v":1}', qos=1).wait_for_publish(5)
            assert ears.wait(2, 10)
        finally:
            c.disconnect()
            c.loop_stop()
    assert {t for t, _ in ears.kept} == {protocol.t_adjust("h000001"),
                                          protocol.t_adjust("h000002")}
