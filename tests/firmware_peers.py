"""One firmware home against a real mosquitto, with paho peers playing the coordinator, the
mask broker mb1 and the lab clock: the fixtures and helpers the firmware integration tests
share (tests/test_firmware_mqtt.py, _faults, _resident, _tools)."""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from backend.common.broker import Mosquitto
from backend.common.tls import make_pki
from hemsfw import masking, plan, protocol, protocol_svc, seal

REPO = Path(__file__).resolve().parents[1]
FW = REPO / "firmware" / "micropython"
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"

HOME = "h1"
FRAMES = 24
FRAME_S = 3600
QUANTUM = 100
DAY = "2026-11-28"
START = 1795824000  # 2026-11-28T00:00:00Z
PLAN_WH = [0, 0, 0, 0, 0, 0, 500, 1200, 0, 0, 800, 0,
           0, 0, 0, 0, 0, 300, 1500, 2000, 0, 0, 0, 0]
MOVES = [[7, 9], [18, 21], [6, 0]]
CURTAIL = [10]
DAY_REAL_S = 3.0  # the whole accelerated day, in real seconds


@dataclass
class Lab:
    broker: Mosquitto
    passwords: dict[str, str]
    key_hex: str
    tmp: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    pw = {u: secrets.token_hex(8) for u in (HOME, "coordinator", "mb1", "lab")}
    broker = Mosquitto(tmp_path / "broker", pw, ["mb1"]).start()
    try:
        yield Lab(broker, pw, secrets.token_hex(32), tmp_path)
    finally:
        broker.stop()


@pytest.fixture
def tls_lab(tmp_path: Path) -> Iterator[Lab]:
    pw = {u: secrets.token_hex(8) for u in (HOME, "coordinator", "mb1", "lab")}
    tls = make_pki(tmp_path / "pki", days=2)
    broker = Mosquitto(tmp_path / "broker", pw, ["mb1"], tls=tls).start()
    try:
        yield Lab(broker, pw, secrets.token_hex(32), tmp_path)
    finally:
        broker.stop()


class Peer:
    """A paho client playing one service; received messages land in a queue."""

    def __init__(self, lab: Lab, user: str, subs: list[str]) -> None:
        self.q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.ready = queue.Queue[int]()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-" + user)
        c.username_pw_set(user, lab.passwords[user])
        c.on_message = lambda _c, _u, m: self.q.put((m.topic, m.payload, m.retain))
        c.on_subscribe = lambda _c, _u, mid, _rc, _p: self.ready.put(mid)
        c.connect("127.0.0.1", lab.broker.port, 30)
        c.loop_start()
        for t in subs:
            c.subscribe(t, 1)
            self.ready.get(timeout=10)
        self.c = c

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, 1, retain).wait_for_publish(10)

    def get(self, topic: str, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("nothing on " + topic)
            try:
                t, p, _ = self.q.get(timeout=left)
            except queue.Empty:
                raise TimeoutError("nothing on " + topic) from None
            if t == topic:
                return p

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def write_config(lab: Lab, state: Path, **extra: Any) -> Path:
    cfg = {
        "home_id": HOME,
        "mqtt": {"host": "127.0.0.1", "port": lab.broker.port, "user": HOME,
                 "password": lab.passwords[HOME], "keepalive": 30, "cafile_der": None,
                 "timeout_s": 3},
        "magnification": 2,
        "plan_wh": PLAN_WH,
        "keys": {"mb1": lab.key_hex},
        "state_dir": str(state),
        "board": "unix",
        "clock": "lab",
        "safe_state": False,
        "exit_after_day": True,
        "loop_ms": 10,
    }
    cfg.update(extra)
    path = lab.tmp / "home.json"
    path.write_text(json.dumps(cfg))
    return path


def start_home(impl: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if impl == "micropython":
        env["MICROPYPATH"] = str(FW)
        cmd = [str(MICROPYTHON), str(FW / "run_home.py"), str(cfg)]
    else:
        cmd = [sys.executable, str(FW / "run_home.py"), str(cfg)]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def read_state(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "round.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def announce(coord: Peer) -> None:
    # The deadline is a wall-clock instant (the home compares it with its real clock, not the
    # lab's virtual day), so it is an hour from now, not a fixed date.
    ann = protocol_svc.make_round(DAY, 1, FRAMES, FRAME_S, QUANTUM, START, int(time.time()) + 3600,
                              ["mb1"])
    coord.publish(protocol.t_round(), protocol.encode(ann), retain=True)


def check_unmasks(lab: Lab, plan_payload: bytes, mask_payload: bytes) -> list[int]:
    """masked - expand(open_sealed(seed)) == the quantised plan, exactly (mod 2^32)."""
    home, day, rnd, rid, mag, masked = protocol_svc.parse_plan_report(
        protocol.decode(plan_payload), FRAMES)
    assert (home, day, rnd, mag) == (HOME, DAY, 1, 2)
    home2, day2, rnd2, rid2, blob = protocol_svc.parse_mask_report(protocol.decode(mask_payload))
    assert (home2, day2, rnd2, rid2) == (HOME, DAY, 1, rid)
    ad = protocol.mask_ad("mb1", HOME, DAY, 1, rid)
    seed = seal.open_sealed(bytes.fromhex(lab.key_hex), ad, blob)
    mask = masking.words(masking.expand_seed(seed, FRAMES))
    got = [(m - k) % 2**32 for m, k in zip(masking.words(masked), mask, strict=True)]
    expected = plan.to_quanta(PLAN_WH, QUANTUM)
    assert got == expected
    return expected


def publish_clock(peer: Peer) -> None:
    speed = FRAMES * FRAME_S / DAY_REAL_S
    msg = {"v": 1, "anchor": time.time(), "virtual": START - FRAME_S / 2, "speed": speed}
    peer.publish(protocol.t_clock(), json.dumps(msg).encode(), retain=True)


def check_relay_log(state: Path, adjusted: list[int], safe: bool = False) -> None:
    """The relay switched exactly when the adjusted plan says, in the right frame's time."""
    recs = [json.loads(x) for x in (state / "relay.log").read_text().splitlines()]
    assert recs[0] == {"frame": None, "on": safe, "t": None, "boot": True}, recs[0]
    want = [v > 0 for v in adjusted]
    end = START + FRAMES * FRAME_S
    cur = safe
    switched_in = set()
    for r in recs[1:]:
        assert r["on"] != cur, ("logged a non-switch", r)
        cur = r["on"]
        k, t = r["frame"], r["t"]
        if k is None:
            assert cur == safe and (t < START or t >= end), r
        else:
            assert cur == want[k], ("wrong state for frame", r, want[k])
            assert START + k * FRAME_S <= t < START + (k + 1) * FRAME_S, r
            switched_in.add(k)
    prev = safe
    for k in range(FRAMES):
        if want[k] != prev:
            assert k in switched_in, ("missed the switch into frame", k, recs)
        prev = want[k]
    assert cur == safe, "relay not back in the safe state after the day"
