"""The home firmware as a real process against a real mosquitto (integration).

run_home.py runs under the MicroPython unix port (umqtt.simple) and under CPython (paho adapter).
The test plays the coordinator, the mask broker mb1 and the lab clock with paho clients, and
checks end to end: the masked plan unmasks exactly with the sealed seed, the adjustment is applied,
and the relay log follows the adjusted plan frame by frame over an accelerated day.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
from firmware_peers import (
    CURTAIL,
    DAY,
    DAY_REAL_S,
    FRAME_S,
    FRAMES,
    HOME,
    MOVES,
    PLAN_WH,
    QUANTUM,
    START,
    Lab,
    Peer,
    announce,
    check_relay_log,
    check_unmasks,
    lab,
    publish_clock,
    read_state,
    start_home,
    stop,
    tls_lab,
    wait_until,
    write_config,
)

from backend.common.broker import Mosquitto
from backend.common.tls import make_pki
from hemsfw import plan, protocol, protocol_svc

__all__ = ["lab", "tls_lab"]  # the fixtures, re-exported for pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("impl", ["micropython", "cpython"])
def test_home_day_end_to_end(lab: Lab, impl: str) -> None:
    state = lab.tmp / "state"
    cfg = write_config(lab, state)
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    clock = Peer(lab, "lab", [])
    log = lab.tmp / "home.log"
    proc = start_home(impl, cfg, log)
    try:
        assert coord.get(protocol.t_status(HOME)) == b"online"
        announce(coord)
        values = check_unmasks(lab, coord.get(protocol.t_plan(HOME)),
                               mb1.get(protocol.t_mask("mb1", HOME)))

        # Malformed and foreign adjustments are ignored without stopping the loop.
        coord.publish(protocol.t_adjust(HOME), b"not json")
        other = protocol_svc.make_adjustment(DAY, 2, "g1", [(1, 2)], [], START + 86400)
        coord.publish(protocol.t_adjust(HOME), protocol.encode(other))
        adj = protocol_svc.make_adjustment(DAY, 1, "g1", MOVES, CURTAIL, START + 86400)
        coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
        coord.publish(protocol.t_reply("coordinator", HOME),
                      protocol.encode(protocol_svc.make_reply(DAY, 1, "0" * 32, True, "ok")))
        adjusted = plan.apply_adjustment(values, [tuple(m) for m in MOVES], CURTAIL)
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == adjusted, 10,
                   "adjustment not applied")

        publish_clock(clock)
        assert proc.wait(DAY_REAL_S + 15) == 0
        assert coord.get(protocol.t_status(HOME)) == b"offline"
    finally:
        stop(proc)
        for p in (coord, mb1, clock):
            p.close()
    text = log.read_text()
    assert "ignored message on hems/v1/adjust/h1: bad_json" in text, text
    assert "adjustment ignored: other_round" in text, text
    assert "reply from coordinator: accepted ok" in text, text
    st = read_state(state)
    assert st is not None and st["sent"] is True and st["plan"] == values
    check_relay_log(state, adjusted)


def test_home_survives_broker_restart(lab: Lab) -> None:
    """Broker down after the report: the home keeps retrying with backoff, and the adjustment
    sent while it was offline is queued in its persistent session and applied on reconnect."""
    state = lab.tmp / "state"
    cfg = write_config(lab, state)
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME)])
    log = lab.tmp / "home.log"
    proc = start_home("micropython", cfg, log)
    try:
        announce(coord)
        coord.get(protocol.t_plan(HOME))
        wait_until(lambda: (read_state(state) or {}).get("sent") is True, 10, "not sent")
        coord.close()
        lab.broker.stop()                       # saves retained messages and sessions
        wait_until(lambda: "link down" in log.read_text(), 10, "link loss not noticed")
        lab.broker.start()
        coord = Peer(lab, "coordinator", [])
        adj = protocol_svc.make_adjustment(DAY, 1, "g1", MOVES, CURTAIL, START + 86400)
        coord.publish(protocol.t_adjust(HOME), protocol.encode(adj))
        values = plan.to_quanta(PLAN_WH, QUANTUM)
        adjusted = plan.apply_adjustment(values, [tuple(m) for m in MOVES], CURTAIL)
        wait_until(lambda: (read_state(state) or {}).get("adjusted") == adjusted, 20,
                   "queued adjustment not applied after reconnect")
        assert proc.poll() is None
    finally:
        stop(proc)
        coord.close()
    assert log.read_text().count("connected") >= 2


@pytest.mark.parametrize("impl", ["micropython", "cpython"])
def test_home_over_tls(tls_lab: Lab, impl: str) -> None:
    """The home reaches the broker's TLS listener, verifying it with a DER CA (mbedTLS on
    MicroPython, OpenSSL on CPython); the test's peers use the plain loopback listener."""
    lab = tls_lab
    state = lab.tmp / "state"
    mq = {"host": "127.0.0.1", "port": lab.broker.tls_port, "user": HOME,
          "password": lab.passwords[HOME], "keepalive": 30,
          "cafile_der": str(lab.tmp / "pki" / "ca.der"), "timeout_s": 5}
    cfg = write_config(lab, state, mqtt=mq, exit_after_day=False)
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    log = lab.tmp / "home.log"
    proc = start_home(impl, cfg, log)
    try:
        assert coord.get(protocol.t_status(HOME)) == b"online", log.read_text()
        announce(coord)
        check_unmasks(lab, coord.get(protocol.t_plan(HOME)),
                      mb1.get(protocol.t_mask("mb1", HOME)))
    finally:
        stop(proc)
        coord.close()
        mb1.close()


@pytest.mark.parametrize("impl", ["micropython", "cpython"])
def test_home_rejects_unknown_broker_certificate(tls_lab: Lab, impl: str) -> None:
    """Certificate verification is real: with another CA the home never connects (and retries)."""
    lab = tls_lab
    other = make_pki(lab.tmp / "other-pki", days=2)
    mq = {"host": "127.0.0.1", "port": lab.broker.tls_port, "user": HOME,
          "password": lab.passwords[HOME], "cafile_der": str(other.cafile.with_suffix(".der")),
          "timeout_s": 2}
    cfg = write_config(lab, lab.tmp / "state", mqtt=mq, exit_after_day=False)
    log = lab.tmp / "home.log"
    proc = start_home(impl, cfg, log)
    try:
        wait_until(lambda: log.read_text().count("link down") >= 2, 15, "no retry")
        assert "connected" not in log.read_text()
        assert proc.poll() is None
    finally:
        stop(proc)


@pytest.mark.parametrize("impl", ["micropython", "cpython"])
def test_run_home_config_errors_exit_2(tmp_path: Path, impl: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"home_id": "h1", "mqtt": {"host": "x", "user": "h2"}}))
    log = tmp_path / "out.log"
    proc = start_home(impl, bad, log)
    try:
        assert proc.wait(30) == 2
    finally:
        stop(proc)
    assert "config: mqtt.user must equal home_id" in log.read_text()


def test_a_round_naming_one_broker_is_refused_by_a_home_provisioned_with_two(
        tmp_path: Path) -> None:
    """Issue 13: the broker set is the home's.  A coordinator (or the MQTT operator) announcing
    a round with `brokers: ["mb1"]` would get the home's only seed to mb1, and coordinator + mb1
    would unmask its plan.  The real firmware, provisioned with mb1 and mb2, sends nothing for
    that round and says why; the genuine two-broker announcement of the next round it reports."""
    pw = {u: secrets.token_hex(8) for u in (HOME, "coordinator", "mb1", "mb2", "lab")}
    broker = Mosquitto(tmp_path / "broker", pw, ["mb1", "mb2"]).start()
    lab = Lab(broker, pw, secrets.token_hex(32), tmp_path)
    state = tmp_path / "state"
    cfg = write_config(lab, state, keys={"mb1": lab.key_hex, "mb2": secrets.token_hex(32)})
    coord = Peer(lab, "coordinator", [protocol.t_plan(HOME), protocol.t_status(HOME)])
    mb1 = Peer(lab, "mb1", [protocol.t_mask("mb1", HOME)])
    log = tmp_path / "home.log"
    proc = start_home("micropython", cfg, log)
    try:
        assert coord.get(protocol.t_status(HOME)) == b"online"
        deadline = int(time.time()) + 3600
        one = protocol_svc.make_round(DAY, 1, FRAMES, FRAME_S, QUANTUM, START, deadline, ["mb1"])
        coord.publish(protocol.t_round(), protocol.encode(one), retain=True)
        wait_until(lambda: "too_few_brokers" in log.read_text(), 10, "refusal not logged")
        with pytest.raises(TimeoutError):
            mb1.get(protocol.t_mask("mb1", HOME), timeout=1.0)
        st = read_state(state)
        assert st is None or st.get("round") != 1  # the refused round was not taken up
        two = protocol_svc.make_round(DAY, 2, FRAMES, FRAME_S, QUANTUM, START, deadline,
                                      ["mb1", "mb2"])
        coord.publish(protocol.t_round(), protocol.encode(two), retain=True)
        rnd = protocol.decode(mb1.get(protocol.t_mask("mb1", HOME)))["round"]
        assert rnd == 2
    finally:
        stop(proc)
        for p in (coord, mb1):
            p.close()
        broker.stop()
