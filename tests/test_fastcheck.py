"""The fast accept paths (backend/common/fastcheck.py) decide exactly like the full path.

The coordinator's ``RoundState.offer`` and the mask broker's ``MaskBroker._on_mask`` recognise
the common case (a report the full parse accepts, for the topic's home and this round) with direct
field checks, and hand everything else to the unchanged full path (``RoundState._offer``,
``MaskBroker._on_mask_full``: ``fastjson.decode`` + ``hemsfw.protocol.parse_*`` + the service's
checks).  Hypothesis feeds both the same valid, mutated and hostile payloads, on states that
went through the same history, and requires the same verdict (accepted or the same reason, same
reply bytes), the same stored rows and the same records.  Also: the pre-built accepted replies
are byte-identical to ``fastjson.dumps(protocol_svc.make_reply(...))``, and the lean client's
PUBLISH header encoding is the MQTT one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from fuzz_kit import WEIRD, hostile_payloads, mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.common import fastjson
from backend.common.bulk_mqtt import BulkClient, mqtt_string, varlen
from backend.common.fastcheck import RoundKey, fast_mask_report, fast_plan_report
from backend.coordinator.intake import RoundConfig, RoundState
from backend.mask_broker.core import MaskBroker
from hemsfw import protocol, protocol_svc, seal

DAY = "2026-11-27"
F = 8
NOW = 1_700_000_000.0
DEADLINE = int(NOW) + 60
HOMES = ["h1", "h2", "home-a_3"]
B = "mb1"
KEYS = {h: bytes([i + 1]) * 32 for i, h in enumerate(HOMES)}
SETTINGS = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])

# ------------------------------------------------------------------ coordinator: plan reports


def round_cfg(frames: int = F) -> RoundConfig:
    return RoundConfig(DAY, 1, frames, 900, 1, 1_800_000_000, DEADLINE, (B,))


def plan(home: str = "h1", rid: str | None = None, mag: int = 2, frames: int = F,
         day: str = DAY, rnd: int = 1) -> dict[str, Any]:
    masked = np.random.default_rng(7).integers(0, 2**32, frames, dtype=np.uint64).astype("<u4")
    return dict(protocol.make_plan_report(home, day, rnd, rid or secrets.token_hex(16), mag,
                                          masked.tobytes()))


def _b64_variants(s: str) -> list[str]:
    """Same-length and near-length vectors that a2b_base64 reads differently."""
    return [s[:-1] + "!", "!" + s[1:], s[:-2] + "==", s[:4] + "=" + s[5:], s[:-1],
            s + "A", s.upper(), s[:10] + " " + s[11:], s[:10] + "\u00e9" + s[11:],
            s[:-4] + "AAA=", s[:-4] + "AA==", base64.b64encode(b"\x00" * 4 * F).decode(),
            "\n" + s[1:], s[:-1] + "\n"]


def plan_mutants() -> list[bytes]:
    """A valid report, and the report with one field set to an odd value (every one of them is
    fed to both paths by ``test_plan_mutants_decide_like_the_full_parse``)."""
    base = plan()
    rid = base["report_id"]
    odd_values = {
        "home": ["h2", "H1", "h1 ", "", "x" * 33, "h/1", 1, None],
        "day": ["2026-11-28", "2026-11-27 ", "2026-1127", "２０２６-11-27", 20261127],
        "round": [2, 0, True, 1.0, "1", 2**30, 2**30 + 1, -1],
        "report_id": [rid.upper(), rid[:-1], rid + "0", "g" * 32, rid[:-1] + "\u0660", 7],
        "mag": [0, 1, 96, 97, True, 2.0, "2", -1, 2**70],
        "masked": _b64_variants(base["masked"]),
        "v": [1.0, True, 2, "1"],
    }
    out = [json.dumps({**base, k: v}).encode() for k, vs in odd_values.items() for v in vs]
    out += [json.dumps({k: v for k, v in base.items() if k != drop}).encode() for drop in base]
    out += [
        json.dumps(base).encode(),
        json.dumps(plan(mag=96)).encode(),
        json.dumps(plan(frames=F + 1)).encode(),
        json.dumps(plan(rnd=2)).encode(),
        json.dumps(plan(frames=F + 3, rnd=2)).encode(),
        json.dumps(base, separators=(",", ":")).encode(),
        json.dumps({**base, "v": 1, "extra": [1]}).encode(),
        b'{"v":1,"v":2,' + json.dumps(base).encode()[1:],
        json.dumps(base).encode()[:-1] + b',"home":"h2"}',
        b" " * (protocol.MAX_PAYLOAD - 10) + json.dumps(base).encode(),
    ]
    return out


PLAN_MUTANTS = plan_mutants()


def plan_payloads() -> st.SearchStrategy[bytes]:
    base = plan()
    return st.one_of(st.sampled_from(PLAN_MUTANTS),
                     mutated(base).map(lambda o: json.dumps(o).encode()),
                     hostile_payloads(base))


TOPICS = st.sampled_from([protocol.t_plan("h1")] * 6 + [
    protocol.t_plan("h2"), protocol.t_plan("H1"), protocol.t_plan(""), protocol.t_plan("h1/x"),
    protocol.t_plan("x" * 33), protocol.t_plan("x" * 32), "hems/v1/plan", "hems/v2/plan/h1",
    "hems/v1/mask/h1", protocol.t_plan("h\u00e9")])


def verdict(state: RoundState, topic: str, payload: bytes, now: float,
            full: bool) -> tuple[Any, ...]:
    v = (state._offer(topic, payload, now, False) if full
         else state.offer(topic, payload, now, False))
    return (v.accepted, v.reason, v.home, v.report_id, v.reply(state.cfg))


def stored(state: RoundState) -> tuple[Any, ...]:
    s = state.sink
    n = s.store.count
    return (list(s.store.keys), s.report_ids, s.mags[:n].tolist(), s.store.view().tobytes(),
            sorted(s.seen))


@SETTINGS
@given(st.lists(st.tuples(TOPICS, plan_payloads()), min_size=1, max_size=6),
       st.sampled_from([NOW, float(DEADLINE), DEADLINE + 1.0]), st.booleans())
def test_plan_fast_path_decides_like_the_full_parse(
        msgs: list[tuple[str, bytes]], now: float, closed: bool) -> None:
    fast, full = RoundState(round_cfg(), capacity=2), RoundState(round_cfg(), capacity=2)
    if closed:
        fast.close()
        full.close()
    for topic, payload in msgs + msgs:  # and again: replays, duplicates
        assert verdict(fast, topic, payload, now, False) == \
            verdict(full, topic, payload, now, True)
    assert stored(fast) == stored(full)


@pytest.mark.parametrize("payload", PLAN_MUTANTS)
@pytest.mark.parametrize("closed,now", [(False, NOW), (True, NOW), (False, DEADLINE + 1.0)])
def test_plan_mutants_decide_like_the_full_parse(payload: bytes, closed: bool,
                                                 now: float) -> None:
    fast, full = RoundState(round_cfg(), capacity=1), RoundState(round_cfg(), capacity=1)
    if closed:
        fast.close()
        full.close()
    good = json.dumps(plan("h1")).encode()
    for topic in (protocol.t_plan("h1"), protocol.t_plan("h2"), protocol.t_plan("h1/x")):
        for p in (payload, good, payload):
            assert verdict(fast, topic, p, now, False) == verdict(full, topic, p, now, True)
    assert stored(fast) == stored(full)


@SETTINGS
@given(plan_payloads(), st.sampled_from(["h1", "h2", "home-a_3"]))
def test_fast_plan_report_returns_what_the_parser_returns(payload: bytes, home: str) -> None:
    key = RoundKey(DAY, 1, "")
    got = fast_plan_report(payload, home, key, F)
    if got is None:
        return
    p_home, day, rnd, rid, mag, masked = protocol_svc.parse_plan_report(
        fastjson.decode(payload), F)
    assert (p_home, day, rnd) == (home, DAY, 1)
    assert got == (rid, mag, masked)


@pytest.mark.parametrize("day,rnd", [("bad", 1), (DAY, 0), (DAY, True), (DAY, 2**30 + 1)])
def test_fast_paths_are_off_for_a_round_the_parsers_would_not_accept(day: Any, rnd: Any) -> None:
    key = RoundKey(day, rnd, "")
    assert not key.ok
    payload = json.dumps(plan(day=day, rnd=rnd)).encode()
    assert fast_plan_report(payload, "h1", key, F) is None
    assert fast_mask_report(payload, "h1", key) is None


# ------------------------------------------------------------------ replies


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.just(DAY), st.text(max_size=12), WEIRD.filter(lambda x: isinstance(x, str))),
       st.one_of(st.integers(min_value=1, max_value=2**30), st.just(0)),
       st.sampled_from(["", "ok"]),
       st.one_of(st.builds(lambda: secrets.token_hex(16)), st.text(max_size=40)))
def test_accepted_reply_is_the_encoded_make_reply(day: str, rnd: int, ok: str, rid: str) -> None:
    assert RoundKey(day, rnd, ok).accepted_reply(rid) == fastjson.dumps(
        protocol_svc.make_reply(day, rnd, rid, True, ok))


def test_lean_publish_header_is_mqtt_encoding() -> None:
    for v5 in (True, False):
        li = BulkClient("127.0.0.1", 1, "c", None, None, [("x", 1)], lambda b: None,
                        protocol=5 if v5 else 4)
        props = b"\x00" if v5 else b""
        for lt in [1, 2, 60, 127, 128, 300, 5000]:
            for pl in [0, 1, 60, 126, 127, 128, 129, 16_000, 16_380, 16_383, 16_384, 200_000]:
                for qos in (0, 1):
                    for retain in (False, True):
                        li._out.clear()
                        li.publish("a" * lt, b"x" * pl, qos, retain)
                        _, head, tail = li._out[0]
                        size = 2 + lt + 2 * qos + len(props) + pl
                        b0 = 0x30 | (qos << 1) | int(retain)
                        assert head == bytes((b0,)) + varlen(size) + mqtt_string(b"a" * lt)
                        assert tail == props + b"x" * pl


# ------------------------------------------------------------------ mask broker: sealed masks


def broker() -> MaskBroker:
    mb = MaskBroker(B, KEYS, 2)
    mb.handle(protocol.t_round(), protocol.encode(
        protocol_svc.make_round(DAY, 1, F, 900, 1, 0, 3600, [B])))
    return mb


def mask(home: str = "h1", key_of: str | None = None, rid: str | None = None,
         seed_len: int = protocol.SEED_LEN, rnd: int = 1) -> dict[str, Any]:
    rid = rid or os.urandom(16).hex()
    rng = np.random.default_rng(abs(hash((home, rid))) % 2**32)
    blob = seal.seal(KEYS[key_of or home], protocol.mask_ad(B, home, DAY, rnd, rid),
                     rng.bytes(seed_len), rng.bytes(seal.NONCE_LEN))
    return dict(protocol.make_mask_report(home, DAY, rnd, rid, blob))


def mask_mutants() -> list[bytes]:
    base = mask()
    rid = base["report_id"]
    odd = {
        "home": ["h2", "H1", "stranger", "", 1],
        "day": ["2026-11-28", "2026-11-27 ", 20261127],
        "round": [2, 0, True, 1.0, "1"],
        "report_id": [rid.upper(), rid[:-1], "g" * 32],
        "sealed": [base["sealed"][:-1] + "!", base["sealed"][:-4], "A" * 201, "A" * 204, "", 5,
                   base["sealed"] + "\u00e9", "!" * 10],
        "v": [1.0, True, 2],
    }
    out = [json.dumps({**base, k: v}).encode() for k, vs in odd.items() for v in vs]
    out += [json.dumps({k: v for k, v in base.items() if k != drop}).encode() for drop in base]
    out += [
        json.dumps(base).encode(),
        json.dumps(mask("h2")).encode(),
        json.dumps(mask("h1", key_of="h2")).encode(),  # bad_mac
        json.dumps(mask("h1", seed_len=31)).encode(),  # bad_seed
        json.dumps(mask("h1", rid=os.urandom(16).hex())).encode(),  # duplicate_home after base
        json.dumps(mask("h1", rid=rid)).encode(),  # replay of base's id
        json.dumps(mask("h1", rnd=2)).encode(),
        b" " * (protocol.MAX_PAYLOAD - 10) + json.dumps(base).encode(),
    ]
    return out


MASK_BASE = mask()
MASK_MUTANTS = mask_mutants()


def mask_payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(MASK_MUTANTS),
                     mutated(MASK_BASE).map(lambda o: json.dumps(o).encode()),
                     hostile_payloads(MASK_BASE))


MASK_TOPICS = st.sampled_from([protocol.t_mask(B, "h1")] * 6 + [
    protocol.t_mask(B, "h2"), protocol.t_mask(B, "stranger"), protocol.t_mask(B, "H1"),
    protocol.t_mask("mb2", "h1"), protocol.t_mask(B, "h1/x")])


@pytest.mark.parametrize("payload", MASK_MUTANTS)
def test_mask_mutants_decide_like_the_full_parse(payload: bytes) -> None:
    fast, full = broker(), broker()
    full.key = None  # the full path only
    good = json.dumps(mask("h2")).encode()
    for topic in (protocol.t_mask(B, "h1"), protocol.t_mask(B, "h2"),
                  protocol.t_mask(B, "stranger")):
        for p in (payload, good, payload):
            assert fast.handle(topic, p) == full.handle(topic, p)
    assert fast.rejections.as_dict() == full.rejections.as_dict()
    assert fast.masks.rows.tobytes() == full.masks.rows.tobytes()


@SETTINGS
@given(st.lists(st.tuples(MASK_TOPICS, mask_payloads()), min_size=1, max_size=6))
def test_mask_fast_path_decides_like_the_full_parse(msgs: list[tuple[str, bytes]]) -> None:
    fast, full = broker(), broker()
    full.key = None  # the full path only
    for topic, payload in msgs + msgs:
        assert fast.handle(topic, payload) == full.handle(topic, payload)
    assert fast.rejections.as_dict() == full.rejections.as_dict()
    assert fast.masks.count == full.masks.count
    assert fast.masks.rows.tobytes() == full.masks.rows.tobytes()
    assert fast.masks.digests.tobytes() == full.masks.digests.tobytes()


def test_mask_fast_path_is_taken_and_same_as_full_for_valid_masks() -> None:
    fast, full = broker(), broker()
    full.key = None
    payloads = [(protocol.t_mask(B, h), json.dumps(mask(h)).encode()) for h in HOMES]
    for topic, payload in payloads:
        assert fast_mask_report(payload, topic.rsplit("/", 1)[1], replace_key(fast)) is not None
        assert fast.handle(topic, payload) == full.handle(topic, payload)
    assert fast.stats.masks_accepted == 3


def replace_key(mb: MaskBroker) -> RoundKey:
    assert mb.key is not None
    return mb.key


def test_plan_fast_path_is_taken_for_valid_reports() -> None:
    state = RoundState(replace(round_cfg()), capacity=1)
    p = plan("h1")
    payload = json.dumps(p).encode()
    assert fast_plan_report(payload, "h1", state.cfg.key, F) == (
        p["report_id"], 2, base64.b64decode(p["masked"]))
    v = state.offer(protocol.t_plan("h1"), payload, NOW)
    assert v.accepted and state.accepted == 1
