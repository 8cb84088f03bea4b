"""The coordinator as a real process against a real mosquitto (loopback, free port).

The test plays the homes (each with its own credentials under the generated ACL) and a fake mask
broker with mb1's credentials that answers group requests from the masks the test drew (a test
peer: the real mask broker is exercised by the lab test).  Covers: exact group totals, the same
adjustment for every member of a group, a regrouping (split) when the first grouping cannot remove
the overload, a home whose mask never reached the broker, malformed / wrong-length / other-round /
replayed / duplicate / late reports rejected and answered while the round still completes, and
clear failures (exit 1 with the reason) without a capacity profile or with fewer than k homes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
from coordinator_peers import (
    DAY,
    FRAME_S,
    QUANTUM,
    START,
    WAIT,
    F,
    FakeMaskBroker,
    Peer,
    Run,
    finish,
    make_report,
    peer,
    start_coordinator,
    users_for,
)

from backend.common.broker import REPO, Mosquitto
from hemsfw import adjust as fw_adjust
from hemsfw import plan, protocol, protocol_svc

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- the full round

A = [f"a{i}" for i in range(6)]  # magnification 2: frame 0 needs a split to fit
B = [f"b{i}" for i in range(4)]  # magnification 4; b3's mask never reaches the broker
X = "x1"  # sends only bad reports (and one late one)
CAP = [20, 20] + [60] * (F - 2)


def day_plans(rng: np.random.Generator) -> dict[str, list[int]]:
    plans: dict[str, list[int]] = {}
    for h in A + B:
        v = [0] * F
        if h in A:
            v[0] = 1  # 6 homes x 5 Wh = 30 Wh > 20 Wh; 3 + 3 fit in frames 0 and 1
        for f in range(3, F):
            v[f] = int(rng.integers(0, 2))
        plans[h] = v
    return plans



async def scenario(tmp: Path) -> None:
    rng = np.random.default_rng(7)
    plans = day_plans(rng)
    masks = {h: rng.integers(0, 2**32, F, dtype=np.uint64).astype(np.uint32) for h in A + B}
    rids = {h: secrets.token_hex(16) for h in [*A, *B]}
    mags = {**{h: 2 for h in A}, **{h: 4 for h in B}}
    users = users_for([*A, *B, X])
    mq = Mosquitto(tmp / "broker", users, mask_brokers=["mb1"]).start()
    try:
        async with AsyncExitStack() as stack:
            async def mk(user: str, subs: Sequence[str]) -> Peer:
                return await stack.enter_async_context(
                    peer(stack, mq.port, user, users[user], subs))

            grid = await mk("grid", [])
            await grid.publish(protocol_svc.t_capacity(), protocol_svc.make_capacity(F, CAP),
                               retain=True)
            homes = {h: await mk(h, [protocol.t_round(), protocol.t_adjust(h),
                                     protocol.t_reply("coordinator", h)]) for h in [*A, *B, X]}
            fake = FakeMaskBroker("mb1", {h: masks[h] for h in A + B if h != "b3"}, rids)
            mb = await mk("mb1", [protocol_svc.t_groupreq("mb1")])
            served = asyncio.create_task(fake.serve(mb))

            proc, result_path, log_path = await start_coordinator(
                tmp, mq.port, users["coordinator"], "--collect-s", "30",
                "--expected-homes", str(len(A) + len(B)), "--capacity-wait-s", "5",
                "--rated-w", "0")  # no reserve for b3 and x1: the arithmetic of the groups

            # every home sees the retained announcement
            anns = {h: (await p.next(protocol.t_round()))[1] for h, p in homes.items()}
            ann = anns[X]
            assert protocol.parse_round(ann)
            assert (ann["day"], ann["round"], ann["frames"], ann["quantum_wh"], ann["brokers"]) \
                == (DAY, 1, F, QUANTUM, ["mb1"])
            assert all(a == ann for a in anns.values())

            async def expect_reply(h: str, status: str, reason: str) -> None:
                _, r = await homes[h].next(protocol.t_reply("coordinator", h))
                assert (r["status"], r["reason"]) == (status, reason), r

            def masked(h: str) -> np.ndarray:
                return (np.array(plans[h], dtype=np.uint32) + masks[h]).astype(np.uint32)

            # bad input first: each is answered, none is counted
            x = homes[X]
            await x.publish(protocol.t_plan(X), b'{"v": 1, "home": "x1", ')
            await expect_reply(X, "rejected", "bad_json")
            short = make_report(X, secrets.token_hex(16), 2, np.zeros(F - 1, np.uint32))
            await x.publish(protocol.t_plan(X), short)
            await expect_reply(X, "rejected", "bad_length")
            other = make_report(X, secrets.token_hex(16), 2, np.zeros(F, np.uint32), rnd=2)
            await x.publish(protocol.t_plan(X), other)
            await expect_reply(X, "rejected", "unknown_round")
            await x.publish(protocol.t_plan(X), make_report("a0", rids["a0"], 2, masked("a0")))
            await expect_reply(X, "rejected", "home_mismatch")

            # a0 reports, then its report is replayed, then it tries a second report
            a0 = make_report("a0", rids["a0"], 2, masked("a0"))
            await homes["a0"].publish(protocol.t_plan("a0"), a0)
            await expect_reply("a0", "accepted", "")
            await homes["a0"].publish(protocol.t_plan("a0"), a0)
            await expect_reply("a0", "rejected", "replay")
            await homes["a0"].publish(protocol.t_plan("a0"),
                                      make_report("a0", secrets.token_hex(16), 2, masked("a0")))
            await expect_reply("a0", "rejected", "duplicate_home")

            # hold the mask broker's first answer until a late report was turned away
            fake.hold.clear()
            for h in [*A[1:], *B]:
                await homes[h].publish(protocol.t_plan(h),
                                       make_report(h, rids[h], mags[h], masked(h)))
            for h in [*A[1:], *B]:
                await expect_reply(h, "accepted", "")
            await asyncio.wait_for(fake.first_request.wait(), WAIT)
            await x.publish(protocol.t_plan(X),
                            make_report(X, secrets.token_hex(16), 2, np.zeros(F, np.uint32)))
            await expect_reply(X, "rejected", "late")
            fake.hold.set()

            # adjustments: every counted home gets one; b3 is told why it was left out
            await expect_reply("b3", "rejected", "mask_missing")
            adj: dict[str, bytes] = {}
            for h in [*A, *B[:3]]:
                _, a = await homes[h].next(protocol.t_adjust(h))
                adj[h] = protocol.encode(a)
            run = await finish(proc, result_path, log_path)
            served.cancel()
    finally:
        mq.stop()

    assert run.rc == 0, run.log[-4000:]
    res = run.result
    assert res["status"] == "completed" and res["error"] is None
    assert res["homes"] == 10 and res["adjusted_homes"] == 9
    assert [(e["home"], e["reason"], e["broker"]) for e in res["excluded"]] == \
        [("b3", "mask_missing", "mb1")]
    assert (res["frames"], res["quantum_wh"], res["capacity_wh"]) == (F, QUANTUM, CAP)
    rej = res["rejections"]
    for reason in ("bad_json", "bad_length", "unknown_round", "home_mismatch", "replay",
                   "duplicate_home", "late"):
        assert rej.get(f"plan:{reason}") == 1, rej
    assert sum(rej.values()) == 7, rej

    # the groups: A had to be split once; B lost b3
    groups = {g["id"]: g for g in res["groups"]}
    assert sorted(groups) == ["r1g1a", "r1g1b", "r1g2m"]
    assert res["regroup_rounds"] == 1
    assert groups["r1g2m"]["members"] == ["b0", "b1", "b2"]
    assert sorted(groups["r1g1a"]["members"] + groups["r1g1b"]["members"]) == A
    assert all(g["size"] == 3 for g in groups.values())
    assert groups["r1g2m"]["magnification"] == 4 and groups["r1g1a"]["magnification"] == 2

    # exact totals, per group and per frame
    def wh(homes: Sequence[str]) -> list[int]:
        return [QUANTUM * sum(plans[h][f] for h in homes) for f in range(F)]

    for g in groups.values():
        assert g["total_wh"] == wh(g["members"]), g
    counted = [*A, "b0", "b1", "b2"]
    assert res["coordinator_load_before_wh"] == wh(counted)
    assert res["overload_before_wh"] == 10  # 30 Wh in frame 0 against 20
    assert res["overload_after_wh"] == 0 and res["curtailed_wh"] == 0

    # the same adjustment for every member of a group, and it does what the coordinator says
    by_group: dict[str, set[bytes]] = {}
    after = np.zeros(F, dtype=np.int64)
    for h, payload in adj.items():
        day, rnd, gid, moves, curtail, expires = fw_adjust.parse_adjustment(json.loads(payload), F)
        assert (day, rnd, expires) == (DAY, 1, START + F * FRAME_S)
        assert h in groups[gid]["members"]
        by_group.setdefault(gid, set()).add(payload)
        after += QUANTUM * np.array(plan.apply_adjustment(plans[h], moves, curtail))
    assert sorted(by_group) == sorted(groups)
    assert all(len(s) == 1 for s in by_group.values())
    assert after.tolist() == res["coordinator_load_after_wh"]
    assert all(a <= c for a, c in zip(after.tolist(), CAP, strict=True))
    assert sorted(m[0] for m in res["moves"]) in (["r1g1a"], ["r1g1b"])

    # what the mask broker was asked: r1g1 + r1g2, r1g2 again (grace), r1g2m, the two halves
    asked = [[g["id"] for g in r["groups"]] for r in fake.requests]
    assert asked == [["r1g1", "r1g2"], ["r1g2"], ["r1g2m"], ["r1g1a", "r1g1b"]]
    assert {(g["id"], g["broker"]) for g in res["released_groups"]} == {
        ("r1g1", "mb1"), ("r1g2m", "mb1"), ("r1g1a", "mb1"), ("r1g1b", "mb1")}
    assert [(g["id"], g["reason"]) for g in res["refused_groups"]] == [
        ("r1g2", "missing_members"), ("r1g2", "missing_members")]
    assert set(res["timings"]) == {"collect_s", "group_s", "sums_s", "solve_s", "publish_s"}


def test_round_end_to_end(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 120))


# ---------------------------------------------------------------- clear failures


async def failing(tmp: Path, homes: Sequence[str], *extra: str) -> Run:
    users = users_for(homes)
    mq = Mosquitto(tmp / "broker", users, mask_brokers=["mb1"]).start()
    try:
        async with AsyncExitStack() as stack:
            peers = {h: await stack.enter_async_context(
                peer(stack, mq.port, h, users[h], [protocol.t_round(),
                                                   protocol.t_reply("coordinator", h)]))
                for h in homes}
            proc, result, log = await start_coordinator(
                tmp, mq.port, users["coordinator"], "--collect-s", "1", *extra)
            for h, p in peers.items():
                await p.next(protocol.t_round())
                await p.publish(protocol.t_plan(h), make_report(
                    h, secrets.token_hex(16), 2, np.zeros(F, np.uint32)))
            run = await finish(proc, result, log)
            for h, p in peers.items():
                while True:
                    try:
                        _, r = await p.next(protocol.t_reply("coordinator", h), timeout=0.5)
                    except TimeoutError:
                        break
                    run.replies.setdefault(h, []).append(f"{r['status']}:{r['reason']}")
            return run
    finally:
        mq.stop()


def test_fails_clearly_without_capacity(tmp_path: Path) -> None:
    t0 = time.monotonic()
    run = asyncio.run(failing(tmp_path, ["h1", "h2", "h3"], "--capacity-wait-s", "0.5"))
    assert run.rc == 1
    assert "no capacity profile" in run.log
    assert run.result["status"] == "failed" and "no capacity profile" in run.result["error"]
    assert run.result["homes"] == 3
    assert run.replies == {h: ["accepted:"] for h in ("h1", "h2", "h3")}
    assert time.monotonic() - t0 < 30


def test_fails_clearly_with_fewer_than_k_homes(tmp_path: Path) -> None:
    cap = tmp_path / "capacity.json"
    cap.write_text(json.dumps(protocol_svc.make_capacity(F, [100] * F)))
    run = asyncio.run(failing(tmp_path, ["h1", "h2"], "--capacity-file", str(cap)))
    assert run.rc == 1
    assert "fewer than k=3" in run.log
    assert run.result["status"] == "failed" and run.result["capacity_wh"] == [100] * F
    assert sorted(e["reason"] for e in run.result["excluded"]) == ["too_few_homes"] * 2
    assert run.replies == {h: ["accepted:", "rejected:too_few_homes"] for h in ("h1", "h2")}


def test_bad_capacity_file_is_refused_before_connecting(tmp_path: Path) -> None:
    cap = tmp_path / "capacity.json"
    cap.write_text(json.dumps(protocol_svc.make_capacity(F + 1, [100] * (F + 1))))
    out = subprocess.run(
        [sys.executable, "-m", "backend.coordinator", "--day", DAY, "--start", str(START),
         "--frames", str(F), "--brokers", "mb1", "--capacity-file", str(cap), "--port", "1",
         "--result", str(tmp_path / "r.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "frames_mismatch" in out.stderr
    assert not (tmp_path / "r.json").exists()


def test_sigterm_leaves_a_record(tmp_path: Path) -> None:
    async def go() -> Run:
        users = users_for([])
        mq = Mosquitto(tmp_path / "broker", users, mask_brokers=["mb1"]).start()
        try:
            proc, result, log = await start_coordinator(
                tmp_path, mq.port, users["coordinator"], "--collect-s", "60")
            deadline = time.monotonic() + WAIT
            while "announced" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            proc.terminate()
            return await finish(proc, result, log)
        finally:
            mq.stop()

    run = asyncio.run(go())
    assert run.rc == 1, run.log
    assert run.result["status"] == "failed" and "terminated" in run.result["error"]
