"""The mask broker as a real process against a real mosquitto (loopback, free port).

Homes, the coordinator and the mask broker each connect with their own credentials under the
generated ACL.  Covers: garbage and refused reports do not disturb valid traffic, released sums
equal the members' expanded seeds summed mod 2^32, refusals carry their reasons, the release
partition and the round's masks survive a restart, masks published while the service is down
arrive through its persistent session, and it reconnects after a broker restart.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mask_broker_kit import (  # the real service + mosquitto fixture
    DAY,
    FRAMES,
    HOMES,
    B,
    HomeSide,
    Lab,
    ask,
    connected,
    expected,
    lab,
    next_json,
    report,
)

from backend.common.backoff import Backoff
from backend.common.mqtt import MqttSettings
from backend.mask_broker.__main__ import main as cli_main
from backend.mask_broker.core import MaskBroker, Record
from backend.mask_broker.service import Service
from backend.mask_broker.state_dir import StateDir
from hemsfw import protocol, protocol_svc

__all__ = ["lab"]  # the fixture, re-exported for pytest

# ---------------------------------------------------------------- the scenario


@pytest.mark.integration
def test_mask_broker_service(lab: Lab) -> None:
    lab.start_service()
    h = {name: HomeSide(lab.keys, name) for name in HOMES}
    h1, h2, h3, h4, h5, h6 = (h[n] for n in HOMES)

    async def first_run() -> None:
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            ann = protocol_svc.make_round(DAY, 1, FRAMES, 900, 1, 0, 3600, [B])
            await coord.publish(protocol.t_round(), protocol.encode(ann), qos=1, retain=True)
            lab.wait_stats(lambda s: s["round"] is not None)

            # Garbage and refused reports first, each answered with its reason.
            bad = await report(lab, "h1", h1.payload(key=b"\x55" * 32))
            assert (bad["status"], bad["reason"]) == ("rejected", "bad_mac")
            bad = await report(lab, "h2", b"{this is not json")
            assert (bad["status"], bad["reason"]) == ("rejected", "bad_json")
            bad = await report(lab, "h3", h3.payload(rnd=2))
            assert (bad["status"], bad["reason"]) == ("rejected", "unknown_round")
            # Then the four homes' real masks.
            for home in (h1, h2, h3, h4):
                ok = await report(lab, home.id, home.payload())
                assert (ok["status"], ok["report_id"]) == ("accepted", home.rid), ok
            again = await report(lab, "h1", h1.payload())
            assert again["reason"] == "replay"

            await coord.publish(protocol_svc.t_groupreq(B), b"\xff garbage", qos=1)
            res = await ask(coord, "r1", [
                ("all", [h1, h2, h3, h4]),
                ("small", [h1]),
                ("a", [h1, h2]), ("b", [h3, h4]),  # a split of "all": a refinement
                ("missing", [h1, h2, h5]),
            ])
            assert res["all"] == expected([h1, h2, h3, h4])
            assert res["small"] == ("too_small", [])
            assert res["a"] == expected([h1, h2]) and res["b"] == expected([h3, h4])
            assert res["missing"] == ("missing_members", ["h5"])

            res = await ask(coord, "r2", [("shuffle", [h2, h3]), ("a", [h1, h2]),
                                          ("forged", [h3, h4])],
                            checksums={"forged": "0" * 64})
            assert res["shuffle"] == ("would_isolate", [])
            assert res["a"] == expected([h1, h2])  # the same set again: the same sum
            assert res["forged"] == ("checksum_mismatch", [])

        s = lab.wait_stats(lambda s: s["groups"]["requests"] == 2)
        assert s["groups"]["released"] == 4
        assert s["groups"]["refused_by_reason"] == {
            "too_small": 1, "missing_members": 1, "would_isolate": 1, "checksum_mismatch": 1}
        assert s["masks"] == {"accepted_total": 4, "this_round": 4}
        for reason in ("mask:bad_mac", "mask:bad_json", "mask:unknown_round", "mask:replay",
                       "groupreq:bad_json"):
            assert s["rejections"][reason] == 1, s["rejections"]
        assert s["atoms"] == {"count": 2, "min_size": 2}

    asyncio.run(asyncio.wait_for(first_run(), 90))

    # A clean stop, then masks published while the service is away.
    assert lab.stop_service() == 0, lab.log_tail()
    assert lab.read_stats() is not None and not lab.read_stats()["mqtt"]["connected"]

    async def while_down_and_after() -> None:
        async with AsyncExitStack() as stack:
            clients = {}
            for home in (h5, h6):
                c = await stack.enter_async_context(
                    connected(lab, home.id, protocol.t_reply(B, home.id)))
                await c.publish(protocol.t_mask(B, home.id), home.payload(), qos=1)
                clients[home.id] = c
            await asyncio.to_thread(lab.start_service)
            for home in (h5, h6):  # delivered by the persistent session, answered now
                ok = await next_json(clients[home.id], protocol.t_reply(B, home.id))
                assert ok["status"] == "accepted", ok

        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            res = await ask(coord, "r3", [
                ("shuffle", [h2, h3]),  # still refused: today's releases were kept
                ("new", [h5, h6]),
                ("union", [h1, h2, h3, h4, h5, h6]),  # a union of atoms of two
                ("b", [h3, h4]),  # masks kept across the restart
            ])
            assert res["shuffle"] == ("would_isolate", [])
            assert res["new"] == expected([h5, h6])
            assert res["union"] == expected([h1, h2, h3, h4, h5, h6])
            assert res["b"] == expected([h3, h4])

        # The broker goes away and comes back: the service reconnects by itself.
        connects = lab.wait_stats(lambda s: s["mqtt"]["connected"])["mqtt"]["connects"]
        lab.mq.stop()
        lab.mq.start()
        lab.wait_stats(lambda s: s["mqtt"]["connects"] > connects and s["mqtt"]["connected"])
        async with connected(lab, "coordinator", protocol_svc.t_groupsum(B)) as coord:
            res = await ask(coord, "r4", [("new", [h5, h6])])
            assert res["new"] == expected([h5, h6])

    asyncio.run(asyncio.wait_for(while_down_and_after(), 90))
    assert lab.stop_service() == 0, lab.log_tail()
    s = lab.read_stats()
    assert s is not None and s["rejections"].get("internal:internal_error") is None


# ---------------------------------------------------------------- the adapter without a broker


class FakePaho:
    def __init__(self, state: list[str]) -> None:
        self.log = state

    def ack(self, mid: int, qos: int) -> None:
        self.log.append(f"ack {mid}")


class FakeClient:
    def __init__(self, state: list[str]) -> None:
        self.log = state
        self._client = FakePaho(state)  # manual PUBACKs go through paho's client

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.log.append(f"publish {topic}")


class LoggingState(StateDir):
    def __init__(self, path: Path, log: list[str], fail: bool = False) -> None:
        super().__init__(path)
        self.log, self.fail = log, fail

    def write(self, rec: Record, flush: bool = True) -> None:
        if self.fail and rec.kind == "release":
            raise OSError("disk full")
        super().write(rec, flush)
        self.log.append(f"record {rec.kind}")


def _core_with_masks(keys: dict[str, bytes]) -> tuple[MaskBroker, list[HomeSide]]:
    core = MaskBroker(B, keys, 2)
    core.handle(protocol.t_round(),
                protocol.encode(protocol_svc.make_round(DAY, 1, FRAMES, 900, 1, 0, 1, [B])))
    homes = [HomeSide(keys, h) for h in keys]
    for home in homes:
        core.handle(protocol.t_mask(B, home.id), home.payload())
    return core, homes


def _groupreq(homes: list[HomeSide]) -> aiomqtt.Message:
    gs = [("g", [h.id for h in homes], protocol_svc.report_checksum([h.rid for h in homes]))]
    payload = protocol.encode(protocol_svc.make_group_request("r", DAY, 1, gs))
    return aiomqtt.Message(protocol_svc.t_groupreq(B), payload, 1, False, 1, None)


@pytest.mark.parametrize("fail", [False, True])
def test_release_is_recorded_before_its_sum_is_published(tmp_path: Path, fail: bool) -> None:
    core, homes = _core_with_masks({"h1": b"\x01" * 32, "h2": b"\x02" * 32})
    log: list[str] = []
    state = LoggingState(tmp_path / "state", log, fail=fail)

    async def go() -> None:
        svc = Service(core, MqttSettings(), state, tmp_path / "stats.json")
        client: Any = FakeClient(log)
        if fail:
            with pytest.raises(OSError):
                await svc._on_message(client, _groupreq(homes))
        else:
            await svc._on_message(client, _groupreq(homes))
        await asyncio.gather(*svc._tasks)

    asyncio.run(go())
    if fail:  # fail closed: nothing published whose release was not recorded, and no PUBACK
        assert log == []  # (mosquitto delivers the request again to the restarted broker)
    else:  # the request is acknowledged only once its release is on disk
        assert log == ["record release", "ack 1", f"publish {protocol_svc.t_groupsum(B)}"]
        assert json.loads((tmp_path / "stats.json").read_text())["groups"]["released"] == 1


def test_backoff_is_jittered_exponential_and_capped() -> None:
    lo = Backoff(base=1.0, cap=8.0, rng=lambda: 0.0)
    hi = Backoff(base=1.0, cap=8.0, rng=lambda: 1.0)
    assert [lo.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [hi.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    hi.reset()
    assert hi.next() == 1.0


def test_cli_refuses_a_bad_registry(tmp_path: Path) -> None:
    reg = tmp_path / "reg.json"
    for bad in ('{"homes": {"h1": {"key": "abc"}}}', '{"homes": []}', "not json",
                '{"homes": {"H!": {"key": "' + "00" * 32 + '"}}}'):
        reg.write_text(bad)
        assert cli_main(["--broker-id", B, "--registry", str(reg), "--k", "2"]) == 2
    reg.write_text('{"homes": {}}')
    assert cli_main(["--broker-id", B, "--registry", str(reg), "--k", "1"]) == 2
    assert cli_main(["--broker-id", B, "--registry", str(tmp_path / "missing.json")]) == 2
