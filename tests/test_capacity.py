"""`hems capacity`: built-in and file profiles, published retained to a real mosquitto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from backend.common.broker import Mosquitto
from backend.common.capacity import builtin_profile, read_profile
from hemsfw import protocol, protocol_svc


def test_builtin_shapes() -> None:
    assert builtin_profile("flat", 500, 4) == [500] * 4
    ev = builtin_profile("evening", 1000, 96)
    assert ev[68:84] == [750] * 16 and ev[:68] == [1000] * 68 and ev[84:] == [1000] * 12
    sol = builtin_profile("solar", 1000, 24)
    assert sol[10:15] == [1300] * 5 and sol[9] == 1000
    with pytest.raises(ValueError):
        builtin_profile("nope", 1, 1)


def test_read_profile_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("frame,capacity_wh\n0,10\n1,12.0\n")
    assert read_profile(tmp_path / "c.csv") == [10, 12]
    (tmp_path / "c.json").write_text(json.dumps({"capacity_wh": [3, 4]}))
    assert read_profile(tmp_path / "c.json") == [3, 4]


@pytest.mark.integration
def test_hems_capacity_publishes_retained(tmp_path: Path) -> None:
    users = {"grid": "g-pw", "coordinator": "c-pw"}
    with Mosquitto(tmp_path / "mq", users, ["mb1"]) as mq:
        (tmp_path / "t.json").write_text(json.dumps({"target_wh": [900] * 96}))
        r = subprocess.run(
            [str(Path(sys.prefix) / "bin" / "hems"), "capacity", "--builtin", "evening",
             "--level", "1000", "--target-file", str(tmp_path / "t.json"),
             "--port", str(mq.port), "--user", "grid"],
            env={**os.environ, "HEMS_MQTT_PASSWORD": "g-pw"}, capture_output=True, text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["min_wh"] == 750
        got: list[bytes] = []
        done = threading.Event()

        def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
            got.append(m.payload)
            done.set()

        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        c.username_pw_set("coordinator", "c-pw")
        c.on_message = on_message
        c.connect("127.0.0.1", mq.port)
        c.subscribe(protocol_svc.t_capacity(), qos=1)
        c.loop_start()
        try:
            assert done.wait(10), "no retained capacity"
        finally:
            c.disconnect()
            c.loop_stop()
        n, cap, tgt = protocol_svc.parse_capacity(protocol.decode(got[0]))
        assert n == 96 and cap == builtin_profile("evening", 1000, 96) and tgt == [900] * 96


def _retained(port: int, topic: str) -> bytes:
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        got.append(m.payload)
        done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.username_pw_set("coordinator", "c-pw")
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        assert done.wait(10), f"nothing retained on {topic}"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


@pytest.mark.integration
def test_hems_capacity_day_publishes_the_day_profile(tmp_path: Path) -> None:
    users = {"grid": "g-pw", "coordinator": "c-pw"}
    with Mosquitto(tmp_path / "mq", users, ["mb1"]) as mq:
        r = subprocess.run(
            [str(Path(sys.prefix) / "bin" / "hems"), "capacity", "--flat", "700", "--frames",
             "4", "--day", "2026-12-30", "--port", str(mq.port), "--user", "grid"],
            env={**os.environ, "HEMS_MQTT_PASSWORD": "g-pw"}, capture_output=True, text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["topic"] == "hems/v1/capacity/2026-12-30"
        obj = protocol.decode(_retained(mq.port, "hems/v1/capacity/2026-12-30"))
        assert protocol_svc.parse_day_capacity(obj, "2026-12-30") == (
            "2026-12-30", 4, [700] * 4, None)
        assert obj["source"] == "cli"


def test_hems_capacity_rejects_a_bad_day_before_connecting() -> None:
    r = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "hems"), "capacity", "--flat", "700", "--day",
         "2026-13-01", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a day" in r.stderr
