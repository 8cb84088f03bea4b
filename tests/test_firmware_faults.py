"""The real firmware (MicroPython unix port) against a real mosquitto, under faults.

* SIGKILL at each phase of the round (the firmware stops dead at a named phase with the test hook
  `debug_pause_at`, so the kill lands exactly there), then a restart: the relay is back on the
  stored plan within 1 s, nothing is lost, nothing is reported twice;
* SIGKILL at random moments, repeatedly;
* the broker stopped and restarted in the middle of the round (between persisting the report and
  publishing it);
* the broker unreachable at boot (nothing listening; a tarpit that accepts TCP and never answers)
  and the Wi-Fi down at boot: the relay follows the stored plan meanwhile, and the home catches up
  once the network is back, with no second report.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from firmware_peers import (
    DAY,
    FRAME_S,
    FRAMES,
    HOME,
    MOVES,
    PLAN_WH,
    QUANTUM,
    START,
    Lab,
    Peer,
    check_unmasks,
    lab,
    read_state,
    start_home,
    stop,
    wait_until,
    write_config,
)

from hemsfw import plan, protocol, protocol_svc

pytestmark = pytest.mark.integration
__all__ = ["lab"]  # the fixture, re-exported for pytest

CURTAIL: list[int] = []
EXPECTED = plan.apply_adjustment(plan.to_quanta(PLAN_WH, QUANTUM), [tuple(m) for m in MOVES],
                                 CURTAIL)


class Rec(Peer):
    """A Peer that keeps every message it received and, like the real services, replies to each
    plan / mask report (`accepted`, with its report id: the home stops re-sending it).  With
    reply=False it stays silent, as a service that never got the report."""

    def __init__(self, lab: Lab, user: str, subs: list[str], reply: bool = True) -> None:
        self.seen: list[tuple[str, bytes]] = []
        super().__init__(lab, user, subs)
        inner = self.c.on_message

        def on_message(c: Any, u: Any, m: Any) -> None:
            self.seen.append((m.topic, m.payload))
            if reply and (protocol.topic_tail(m.topic, "plan") is not None
                          or protocol.topic_tail(m.topic, "mask") is not None):
                rep = protocol.decode(m.payload)
                ans = {"v": 1, "day": rep["day"], "round": rep["round"],
                       "report_id": rep["report_id"], "status": "accepted", "reason": None}
                c.publish(protocol.t_reply(user, rep["home"]), protocol.encode(ans), 1)
            inner(c, u, m)

        self.c.on_message = on_message

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in list(self.seen) if t == topic]


def persistent_peer(lab: Lab, user: str, subs: list[str], reply: bool = True) -> Rec:
    import paho.mqtt.client as mqtt

    orig = mqtt.Client.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        kw["clean_session"] = False
        orig(self, *a, **kw)

    mqtt.Client.__init__ = init  # type: ignore[method-assign]
    try:
        return Rec(lab, user, subs, reply)
    finally:
        mqtt.Client.__init__ = orig  # type: ignore[method-assign]


def announce(coord: Peer, start: int = START, frames: int = FRAMES, frame_s: int = FRAME_S,
             deadline: int | None = None) -> None:
    ann = protocol_svc.make_round(DAY, 1, frames, frame_s, QUANTUM, start,
                              deadline if deadline is not None else int(time.time()) + 3600,
                              ["mb1"])
    coord.publish(protocol.t_round(), protocol.encode(ann), retain=True)


def adjust(coord: Peer, expires: int = START + 86400) -> None:
    adj = protocol_svc.make_adjustment(DAY, 1, "g1", MOVES, CURTAIL, expires)
    coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))


def publish_clock(peer: Peer, day_real_s: float) -> tuple[float, float, float]:
    speed = FRAMES * FRAME_S / day_real_s
    anchor, virtual = time.time(), START - FRAME_S / 2
    msg = {"v": 1, "anchor": anchor, "virtual": virtual, "speed": speed}
    peer.publish(protocol.t_clock(), json.dumps(msg).encode(), retain=True)
    return anchor, virtual, speed


def relay_records(state: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (state / "relay.log").read_text().splitlines()]


def check_relay(state: Path, want_values: list[int], safe: bool, start: int = START,
                frame_s: float = FRAME_S, late_s: float = 0.0,
                own_wh: list[int] | None = None) -> list[list[dict[str, Any]]]:
    """Every boot starts in the safe state; every logged state is the plan's for its frame
    (in time, up to late_s late); the last process made every switch of the frames it lived
    through and left the relay safe.  Returns the records split per boot.

    Before its first round a home on the system clock follows its own plan (own_wh, default
    PLAN_WH) for the UTC day (docs/firmware.md, "No round for today"): such records come
    before `start`, on that day's grid of 96 x 15 min."""
    own = [v > 0 for v in plan.resample(own_wh or PLAN_WH, 96)]
    want = [v > 0 for v in want_values]
    frames = len(want)
    end = start + frames * frame_s
    segs: list[list[dict[str, Any]]] = []
    for r in relay_records(state):
        if r.get("boot"):
            assert r["on"] == safe and r["frame"] is None, r
            segs.append([r])
            continue
        segs[-1].append(r)
        k, t = r["frame"], r["t"]
        if k is None:
            assert r["on"] == safe and (t < start + late_s or t >= end), r
        elif t < start:
            assert r["on"] == own[k] and k == int(t % 86400 // 900), ("not the own plan", r)
        else:
            assert r["on"] == want[k], ("wrong state for frame", r)
            assert start + k * frame_s <= t < start + (k + 1) * frame_s + late_s, r
    last = segs[-1]
    framed = [r for r in last if r["frame"] is not None and r["t"] >= start]
    first = framed[0]["frame"] if framed else 0
    got = {r["frame"] for r in framed}
    for k in range(first + 1, frames):
        if want[k] != want[k - 1]:
            assert k in got, ("missed the switch into frame", k, last)
    assert last[-1]["on"] == safe, "relay not back in the safe state after the day"
    return segs


def killed(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def log_has(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


PHASES = ["boot", "drawn", "reported", "acked", "sent", "adjusted", "frame"]


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_each_phase(lab: Lab, phase: str) -> None:
    state = lab.tmp / "state"
    coord = Rec(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Rec(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    day_s = 12.0 if phase == "frame" else 3.0
    log1, log2 = lab.tmp / "home1.log", lab.tmp / "home2.log"
    proc = start_home("micropython", write_config(lab, state, safe_state=True,
                                                  debug_pause_at=phase), log1)
    adjusted = clocked = False
    clk: tuple[float, float, float] | None = None
    try:
        if phase != "boot":
            assert coord.get(protocol.t_status(HOME)) == b"online"
            announce(coord)
        if phase in ("adjusted", "frame"):
            coord.get(protocol.t_plan(HOME))
            wait_until(lambda: (read_state(state) or {}).get("sent") is True, 10, "not sent")
            adjust(coord)
            adjusted = True
        if phase == "frame":
            wait_until(lambda: (read_state(state) or {}).get("adjusted") == EXPECTED, 10,
                       "not adjusted")
            clk = publish_clock(clock, day_s)
            clocked = True
        wait_until(lambda: log_has(log1, "PAUSED at " + phase), 15, "never reached " + phase)
        killed(proc)

        t_restart = time.time()
        proc = start_home("micropython", write_config(lab, state, safe_state=True), log2)
        if phase == "boot":
            wait_until(lambda: log_has(log2, "connected"), 10, "no connect")
            announce(coord)
        if not adjusted:
            wait_until(lambda: (read_state(state) or {}).get("sent") is True, 10, "not sent")
            adjust(coord)
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == EXPECTED, 10,
                   "adjustment lost")
        if not clocked:
            clk = publish_clock(clock, day_s)
        assert proc.wait(day_s + 20) == 0, log2.read_text()
    finally:
        stop(proc)
        for p in (coord, mb1, clock):
            p.close()
    plans = coord.payloads(protocol.t_plan(HOME))
    masks = mb1.payloads(protocol.t_mask("mb1", HOME))
    # One report.  A kill after a PUBACK may cost the service's reply (umqtt acknowledges an
    # incoming message before the loop handles it), and then the home re-sends the *same* bytes
    # once (the services answer `replay`); never a second draw or report id.
    assert len(set(plans)) == 1 and len(set(masks)) == 1, (plans, masks, log2.read_text())
    assert len(plans) + len(masks) <= 3, log2.read_text()
    check_unmasks(lab, plans[0], masks[0])
    st = read_state(state)
    assert st is not None and st["sent"] is True and st["adjusted"] == EXPECTED
    segs = check_relay(state, EXPECTED, safe=True)
    if phase == "frame":
        assert clk is not None
        anchor, virtual, speed = clk
        assert len(segs) == 2
        rec = next(r for r in segs[1] if r["frame"] is not None)
        real = anchor + (rec["t"] - virtual) / speed
        assert real - t_restart < 1.0, ("relay back on the plan too late", real - t_restart)


def test_sigkill_at_random_moments(lab: Lab) -> None:
    rnd = random.Random(7)
    state = lab.tmp / "state"
    coord = Rec(lab, "coordinator", [protocol.t_plan(HOME)])
    mb1 = Rec(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    cfg = write_config(lab, state)
    proc = start_home("micropython", cfg, lab.tmp / "home0.log")
    try:
        time.sleep(0.2)
        announce(coord)
        for i in range(6):
            time.sleep(rnd.uniform(0.0, 0.25))
            killed(proc)
            proc = start_home("micropython", cfg, lab.tmp / f"home{i + 1}.log")
        wait_until(lambda: (read_state(state) or {}).get("sent") is True, 15, "not sent")
        adjust(coord)
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == EXPECTED, 10, "lost")
        publish_clock(clock, 3.0)
        assert proc.wait(20) == 0
    finally:
        stop(proc)
        for p in (coord, mb1, clock):
            p.close()
    plans = coord.payloads(protocol.t_plan(HOME))
    masks = mb1.payloads(protocol.t_mask("mb1", HOME))
    # One report: a kill between a PUBACK and the persisted ack may repeat the *same* message
    # (the services answer "replay"), never a second draw.
    rids = {protocol.decode(p)["report_id"] for p in plans + masks}
    assert len(rids) == 1 and 1 <= len(plans) <= 2 and 1 <= len(masks) <= 2
    check_unmasks(lab, plans[0], masks[0])
    check_relay(state, EXPECTED, safe=False)


def test_broker_restart_between_persist_and_publish(lab: Lab) -> None:
    state = lab.tmp / "state"
    coord = persistent_peer(lab, "coordinator", [protocol.t_plan(HOME)])
    mb1 = persistent_peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    log = lab.tmp / "home.log"
    proc = start_home("micropython", write_config(
        lab, state, debug_pause_at="reported:1500",
        mqtt={"host": "127.0.0.1", "port": lab.broker.port, "user": HOME,
              "password": lab.passwords[HOME], "keepalive": 5, "timeout_s": 1}), log)
    try:
        time.sleep(0.3)
        announce(coord)
        wait_until(lambda: log_has(log, "STALLED at reported"), 10, "no stall")
        lab.broker.stop()                 # the home publishes into a dead link
        wait_until(lambda: log_has(log, "link down"), 10, "link loss not noticed")
        assert (read_state(state) or {}).get("sent") is False
        time.sleep(0.5)
        lab.broker.start()
        wait_until(lambda: (read_state(state) or {}).get("sent") is True, 20, "never sent")
        wait_until(lambda: coord.payloads(protocol.t_plan(HOME)) != [], 10, "plan lost")
        wait_until(lambda: mb1.payloads(protocol.t_mask("mb1", HOME)) != [], 10, "mask lost")
        adjust(coord)
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == EXPECTED, 10, "lost")
        publish_clock(clock, 3.0)
        assert proc.wait(20) == 0
    finally:
        stop(proc)
        for p in (coord, mb1, clock):
            p.close()
    plans = coord.payloads(protocol.t_plan(HOME))
    masks = mb1.payloads(protocol.t_mask("mb1", HOME))
    # One report.  On a loaded machine the publish can reach the broker as it stops, its PUBACK
    # lost: the home then sends the *same* message again after reconnecting (QoS 1 is at least
    # once; the services drop the copy by its report id), never a second draw.
    rids = {protocol.decode(p)["report_id"] for p in plans + masks}
    assert len(rids) == 1 and 1 <= len(plans) <= 2 and 1 <= len(masks) <= 2
    assert len(set(plans)) == 1 and len(set(masks)) == 1
    check_unmasks(lab, plans[0], masks[0])
    check_relay(state, EXPECTED, safe=False)
    assert log.read_text().count("mqtt connected") >= 2


def test_report_lost_by_the_broker_after_its_puback_is_resent(lab: Lab) -> None:
    """mosquitto acknowledged the report, queued it for the (offline) services' persistent
    sessions, and died with SIGKILL before saving it (the shipped config autosaves every 60 s):
    the home gets no reply, so after reconnecting it sends the very same bytes again, and the
    services get the report exactly once."""
    state = lab.tmp / "state"
    subs_c, subs_m = [protocol.t_plan(HOME)], [protocol.t_mask("mb1", HOME)]
    coord = Peer(lab, "coordinator", [])
    announce(coord)                               # retained: the home gets it on subscribing
    coord.close()
    for user, subs in (("coordinator", subs_c), ("mb1", subs_m)):
        persistent_peer(lab, user, subs).close()          # sessions exist, services away
    log = lab.tmp / "home.log"
    proc = start_home("micropython", write_config(
        lab, state, mqtt={"host": "127.0.0.1", "port": lab.broker.port, "user": HOME,
                          "password": lab.passwords[HOME], "keepalive": 5, "timeout_s": 1,
                          "backoff_max_s": 2}), log)
    recs: list[Rec] = []
    try:
        wait_until(lambda: (read_state(state) or {}).get("sent") is True, 10, "not sent")
        first = (read_state(state) or {})["outbox"]
        lab.broker.stop(kill=True)                # queued for the services, never saved
        lab.broker.start()
        recs = [persistent_peer(lab, "coordinator", subs_c, reply=False),
                persistent_peer(lab, "mb1", subs_m)]
        wait_until(lambda: log_has(log, "re-sending"), 15, "never re-sent")
        wait_until(lambda: recs[0].payloads(subs_c[0]) != [], 10, "plan lost")
        wait_until(lambda: recs[1].payloads(subs_m[0]) != [], 10, "mask lost")
        wait_until(lambda: (read_state(state) or {}).get("acked") == [1, 2], 10, "no reply")
        assert recs[0].payloads(subs_c[0]) == [first[0][1].encode()]
        assert recs[1].payloads(subs_m[0]) == [first[1][1].encode()]
        # the silent coordinator is asked again only after REPLY_WAIT_MS (5 s), not before
        time.sleep(2)
        assert len(recs[0].payloads(subs_c[0])) == 1
    finally:
        stop(proc)
        for r in recs:
            r.close()


# ------------------------------------------------------------------ unreachable at boot

SYS_FRAMES = 8
SYS_FRAME_S = 2
SYS_PLAN = [0, 300, 0, 300, 300, 0, 300, 0]   # Wh; quantum 100
SYS_MOVES = [[1, 2], [6, 7]]


def system_day(lab: Lab, state: Path, lead_s: int, **extra: Any) -> tuple[Path, int, list[int]]:
    """Run 1 (network fine): report and adjust a round on the *real* clock starting lead_s
    from now; then SIGKILL the home.  Returns (config, start, adjusted plan)."""
    start = int(time.time()) + lead_s
    mq = {"host": "127.0.0.1", "port": lab.broker.port, "user": HOME,
          "password": lab.passwords[HOME], "keepalive": 5, "timeout_s": 1,
          # capped so the reconnect after the broker's return is due within the waits below
          # (uncapped, the 5th retry may be 16 s away on a slow machine)
          "backoff_max_s": 2}
    cfg = write_config(lab, state, clock="system", plan_wh=SYS_PLAN, mqtt=mq, safe_state=True)
    coord = Rec(lab, "coordinator", [protocol.t_plan(HOME)])
    proc = start_home("micropython", cfg, lab.tmp / "run1.log")
    try:
        time.sleep(0.3)
        announce(coord, start, SYS_FRAMES, SYS_FRAME_S)
        wait_until(lambda: (read_state(state) or {}).get("sent") is True, 10, "not sent")
        adj = protocol_svc.make_adjustment(DAY, 1, "g1", SYS_MOVES, [], start + 86400)
        coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
        values = plan.to_quanta(SYS_PLAN, QUANTUM)
        adjusted = plan.apply_adjustment(values, [tuple(m) for m in SYS_MOVES], [])
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == adjusted, 10, "lost")
        killed(proc)
        assert len(coord.payloads(protocol.t_plan(HOME))) == 1
    finally:
        stop(proc)
        coord.close()
    cfg = write_config(lab, state, clock="system", plan_wh=SYS_PLAN, mqtt=mq, safe_state=True,
                       **extra)
    return cfg, start, adjusted


def test_broker_down_at_boot_relay_follows_stored_plan(lab: Lab) -> None:
    state = lab.tmp / "state"
    cfg, start, adjusted = system_day(lab, state, lead_s=3)
    lab.broker.stop()
    log = lab.tmp / "run2.log"
    t0 = time.time()
    proc = start_home("micropython", cfg, log)
    try:
        wait_until(lambda: log.read_text().count("link down") >= 2, 10, "no retries")
        time.sleep(start + 4 * SYS_FRAME_S - time.time())   # half the day without a broker
        lab.broker.start()
        wait_until(lambda: log_has(log, "mqtt connected"), 20, "never reconnected")
        assert proc.wait(start + SYS_FRAMES * SYS_FRAME_S - time.time() + 10) == 0
    finally:
        stop(proc)
    assert time.time() - t0 < 40
    segs = check_relay(state, adjusted, safe=True, start=start, frame_s=SYS_FRAME_S,
                       late_s=0.2, own_wh=SYS_PLAN)
    # the whole day was played by the process that booted without a broker, and the retained
    # round it saw again after the reconnect did not make it report a second time
    assert len(segs) == 2 and segs[1][1]["frame"] == 0 and segs[1][1]["on"] is False
    assert "publishing" not in log.read_text()


def test_broker_tarpit_at_boot_bounds_the_loop(lab: Lab) -> None:
    """Something accepts TCP on the broker's port and never answers: each connect attempt is
    bounded by timeout_s (1 s here) and the relay keeps switching on time meanwhile."""
    state = lab.tmp / "state"
    cfg, start, adjusted = system_day(lab, state, lead_s=2)
    lab.broker.stop()
    tarpit = socket.socket()
    tarpit.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tarpit.bind(("127.0.0.1", lab.broker.port))
    tarpit.listen(64)                       # the kernel completes handshakes; nobody answers
    log = lab.tmp / "run2.log"
    proc = start_home("micropython", cfg, log)
    try:
        wait_until(lambda: log.read_text().count("link down (OSError") >= 2, 15, "no timeouts")
        time.sleep(max(0.0, start + 5 * SYS_FRAME_S - time.time()))
        tarpit.close()
        lab.broker.start()
        wait_until(lambda: log_has(log, "mqtt connected"), 70, "never connected")
        assert proc.wait(start + SYS_FRAMES * SYS_FRAME_S - time.time() + 10) == 0
    finally:
        tarpit.close()
        stop(proc)
    # switches at most one connect budget (1 s) + a turn late
    check_relay(state, adjusted, safe=True, start=start, frame_s=SYS_FRAME_S, late_s=1.2,
                own_wh=SYS_PLAN)


def test_wifi_down_at_boot(lab: Lab) -> None:
    state = lab.tmp / "state"
    flag = lab.tmp / "wifi-up"
    cfg, start, adjusted = system_day(lab, state, lead_s=2, unix={"wifi_file": str(flag)})
    log = lab.tmp / "run2.log"
    coord = Rec(lab, "coordinator", [protocol.t_plan(HOME)])
    proc = start_home("micropython", cfg, log)
    try:
        wait_until(lambda: log_has(log, "wifi down"), 10, "wifi not down")
        time.sleep(max(0.0, start + 3 * SYS_FRAME_S - time.time()))
        text = log.read_text()
        assert "connected" not in text and "link down" not in text, text  # no attempt at all
        flag.write_text("up")
        wait_until(lambda: log_has(log, "mqtt connected"), 10, "never connected")
        assert proc.wait(start + SYS_FRAMES * SYS_FRAME_S - time.time() + 10) == 0
    finally:
        stop(proc)
        coord.close()
    assert coord.payloads(protocol.t_plan(HOME)) == []       # nothing re-sent after the restart
    check_relay(state, adjusted, safe=True, start=start, frame_s=SYS_FRAME_S, late_s=0.2,
                own_wh=SYS_PLAN)
