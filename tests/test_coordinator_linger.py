"""The coordinator after the round, and across a mosquitto that forgot its retained messages.

Real coordinator process, real mosquitto (loopback), the test playing the homes, the grid and a
fake mask broker (tests/coordinator_peers.py):

* with ``--linger-s`` the round's record is written at completion, a home that comes back online
  (a live ``online`` on its status topic) gets its adjustment again, byte for byte, ``offline``
  and garbage get nothing, and SIGTERM ends the linger with exit 0 and a completed record;
* a coordinator killed after it saw the retained capacity profile, restarted after that profile
  vanished from the broker (a mosquitto crash before its save), still has it (journal record
  ``capacity_seen``) and completes the round.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from coordinator_peers import (
    DAY,
    WAIT,
    F,
    FakeMaskBroker,
    Peer,
    finish,
    make_report,
    peer,
    start_coordinator,
    users_for,
)

from backend.common.broker import Mosquitto
from hemsfw import protocol, protocol_svc

pytestmark = pytest.mark.integration

HOMES = ["h0", "h1", "h2"]
CAP = [1000] * F


Homes = tuple[dict[str, Peer], dict[str, np.ndarray], dict[str, str]]


async def _round(stack: AsyncExitStack, mq: Mosquitto, users: dict[str, str]) -> Homes:
    """The homes (peers, masks, report ids) and a fake mask broker that answers them."""
    rng = np.random.default_rng(3)
    masks = {h: rng.integers(0, 2**32, F, dtype=np.uint64).astype(np.uint32) for h in HOMES}
    rids = {h: secrets.token_hex(16) for h in HOMES}
    homes = {}
    for h in HOMES:
        homes[h] = await stack.enter_async_context(peer(
            stack, mq.port, h, users[h],
            [protocol.t_round(), protocol.t_adjust(h), protocol.t_reply("coordinator", h)]))
    fake = FakeMaskBroker("mb1", masks, rids)
    mb = await stack.enter_async_context(
        peer(stack, mq.port, "mb1", users["mb1"], [protocol_svc.t_groupreq("mb1")]))
    stack.callback(asyncio.create_task(fake.serve(mb)).cancel)
    return homes, masks, rids


async def _report(fleet: Homes) -> None:
    homes, masks, rids = fleet
    for h, p in homes.items():
        await p.next(protocol.t_round())
        words = (np.ones(F, dtype=np.uint32) + masks[h]).astype(np.uint32)
        await p.publish(protocol.t_plan(h), make_report(h, rids[h], 2, words))
        _, r = await p.next(protocol.t_reply("coordinator", h))
        assert r["status"] == "accepted", r


async def _publish_capacity(stack: AsyncExitStack, mq: Mosquitto, users: dict[str, str]) -> Peer:
    """The grid operator, who has published the retained capacity profile of the round."""
    grid = await stack.enter_async_context(peer(stack, mq.port, "grid", users["grid"], []))
    await grid.publish(protocol_svc.t_capacity(), protocol_svc.make_capacity(F, CAP), retain=True)
    return grid


async def _linger(tmp: Path) -> None:
    users = users_for(HOMES)
    mq = Mosquitto(tmp / "broker", users, mask_brokers=["mb1"]).start()
    try:
        async with AsyncExitStack() as stack:
            await _publish_capacity(stack, mq, users)
            fleet = await _round(stack, mq, users)
            homes = fleet[0]
            proc, result, log = await start_coordinator(
                tmp, mq.port, users["coordinator"], "--collect-s", "30", "--expected-homes",
                "3", "--capacity-wait-s", "5", "--linger-s", "120")
            await _report(fleet)
            first = {h: (await p.next(protocol.t_adjust(h)))[1] for h, p in homes.items()}
            async with asyncio.timeout(WAIT):
                while not result.exists():
                    await asyncio.sleep(0.05)
            rec = json.loads(result.read_text())
            assert rec["status"] == "completed" and rec["adjusted_homes"] == 3
            assert proc.returncode is None                  # still serving

            h0 = homes["h0"]
            await h0.publish(protocol.t_status("h0"), b"offline", retain=True)
            await h0.publish(protocol.t_status("h0"), b"garbage")
            await h0.publish(protocol.t_status("h0"), b"online", retain=True)
            _, again = await h0.next(protocol.t_adjust("h0"))
            assert again == first["h0"]
            with pytest.raises(TimeoutError):                # once, and only for h0
                await h0.next(protocol.t_adjust("h0"), timeout=1.0)
            with pytest.raises(TimeoutError):
                await homes["h1"].next(protocol.t_adjust("h1"), timeout=0.2)

            proc.send_signal(signal.SIGTERM)
            run = await finish(proc, result, log)
    finally:
        mq.stop()
    assert run.rc == 0, run.log[-3000:]
    assert run.result["status"] == "completed"
    assert run.result["rejections"].get("status:bad_status") == 1, run.result["rejections"]
    assert "h0 is back online: re-sending its adjustment" in run.log


def test_linger_resends_adjustment_to_a_home_back_online(tmp_path: Path) -> None:
    asyncio.run(_linger(tmp_path))


async def _capacity_lost(tmp: Path) -> None:
    users = users_for(HOMES)
    mq = Mosquitto(tmp / "broker", users, mask_brokers=["mb1"]).start()
    state = tmp / "state"
    try:
        async with AsyncExitStack() as stack:
            grid = await _publish_capacity(stack, mq, users)
            args = ("--collect-s", "30", "--expected-homes", "3", "--capacity-wait-s", "3",
                    "--state-dir", str(state))
            proc, result, log = await start_coordinator(tmp, mq.port, users["coordinator"],
                                                        *args)
            async with asyncio.timeout(WAIT):
                while "capacity profile received" not in log.read_text():
                    await asyncio.sleep(0.05)
                while not (state / "supply.json").exists():  # received *and* durable
                    await asyncio.sleep(0.05)
            proc.kill()
            await proc.wait()
            # what a crashed mosquitto would have forgotten: the retained profile is gone
            await grid.publish(protocol_svc.t_capacity(), b"", retain=True)

            fleet = await _round(stack, mq, users)
            proc, result, log = await start_coordinator(tmp, mq.port, users["coordinator"],
                                                        *args)
            await _report(fleet)
            for h, p in fleet[0].items():
                await p.next(protocol.t_adjust(h))
            run = await finish(proc, result, log)
    finally:
        mq.stop()
    assert run.rc == 0, run.log[-3000:]
    assert run.result["capacity_wh"] == CAP and run.result["restarts"] == 1
    assert run.result["day"] == DAY


def test_capacity_seen_survives_a_restart_without_the_retained_profile(tmp_path: Path) -> None:
    asyncio.run(_capacity_lost(tmp_path))
