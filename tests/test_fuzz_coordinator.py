"""Hostile input, interleaved with valid traffic, through every handler of the coordinator.

``Daemon.dispatch`` is what the MQTT adapter calls for each message (plan reports, mask-broker
answers, the capacity profile, anything else), routing it to the current round.  Hypothesis
draws a batch of hostile messages (tests/fuzz_kit.py) and interleaves it with a round's valid
messages; every message must end in exactly one outcome: accepted (the state changed as it
should) or rejected with a documented reason, counted and logged.  Nothing may raise, and every
valid message is processed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_kit import ManualClock, announced, daemon_for, new_round
from fuzz_kit import CountingHandler, hostile_payloads, reasons_known, tried
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.coordinator.daemon import Daemon
from backend.coordinator.round import Round
from hemsfw import protocol, protocol_svc

DAY = "2026-11-27"
F = 8
START = 1_800_000_000
NOW = 1_700_000_000.0
DEADLINE = int(NOW) + 60
VALID = [f"home-a{i}" for i in range(8)]
ROGUES = [f"rogue-{i}" for i in range(3)]
BROKERS = ("mb1", "mb2")
EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def coordinator(state_dir: Path | None = None) -> tuple[Daemon, Round]:
    """A daemon whose current round is collecting (resumed from ``state_dir`` if given)."""
    kit = new_round(state_dir, ManualClock(NOW), brokers=BROKERS, deadline=DEADLINE)
    asyncio.run(announced(kit))
    return daemon_for(kit), kit.round


def asked(state_dir: Path, asks: dict[int, tuple[str, str]]) -> None:
    """A journal of a round that has sent these group requests (seq -> (broker, req)) and
    waits for their answers: what a restarted coordinator resumes from."""
    kit = new_round(state_dir, ManualClock(NOW), brokers=BROKERS, deadline=DEADLINE)
    asyncio.run(announced(kit))
    j = kit.round.journal
    assert j is not None
    for seq, (b, req) in asks.items():
        j.append("ask", seq=seq, broker=b, req=req, groups=[])
    j.close()


def report(home: str, rid: str | None = None, mag: int = 2) -> dict[str, Any]:
    masked = np.random.default_rng().integers(0, 2**32, F, dtype=np.uint64).astype("<u4")
    return dict(protocol.make_plan_report(home, DAY, 1, rid or secrets.token_hex(16), mag,
                                          masked.tobytes()))


def family(topic: str, default: str) -> str:
    if topic == protocol_svc.t_capacity():
        return "capacity"
    if topic.startswith(protocol.PREFIX + "/plan/"):
        return "plan"
    if topic.startswith(protocol.PREFIX + "/groupsum/"):
        return "groupsum"
    return "other topics"


def feed(d: Daemon, c: Round, msgs: list[tuple[str, bytes, bool]], handler: str,
         changed: Any) -> None:
    """Dispatch every message; each must be either a change (``changed()`` returns something
    new) or exactly one counted rejection, and every rejection is logged."""
    counter = CountingHandler()
    logging.getLogger("hems.coordinator").addHandler(counter)
    try:
        for topic, payload, retained in msgs:
            before_rej, before = c.rejections.total(), changed()
            out: list[tuple[str, bytes]] = []
            d.dispatch(topic, payload, retained, out, False)
            rejected = c.rejections.total() - before_rej
            assert rejected + (changed() != before) == 1, (topic, payload[:200])
            for t, p in out:  # replies go to a home's own reply topic, well-formed
                assert protocol.topic_tail(t, "reply")[0] == "coordinator"
                protocol.decode(p)
    finally:
        logging.getLogger("hems.coordinator").removeHandler(counter)
    for topic, _, _ in msgs:
        tried(f"coordinator: {family(topic, handler)}")
    assert counter.rejected == c.rejections.total()
    assert not reasons_known(c.rejections.counts), c.rejections.counts
    assert c.rejections.counts["message:internal_error"] == 0


# ---------------------------------------------------------------- plan reports


def hostile_plans() -> st.SearchStrategy[tuple[str, bytes, bool]]:
    base = report(ROGUES[0])
    topics = st.one_of(
        st.sampled_from([protocol.t_plan(h) for h in ROGUES]),
        st.sampled_from([protocol.t_plan(VALID[0]), "hems/v1/plan/", "hems/v1/plan/A",
                         "hems/v1/plan/a/b", "hems/v1/plan/" + "x" * 33, "hems/v1/plan/+",
                         "hems/v1/plan/\u00e9"]),
    )
    payloads = st.one_of(
        hostile_payloads(base),
        st.sampled_from([  # well-formed, but not for this round / home / length
            report(ROGUES[1]) | {"round": 2}, report(ROGUES[1]) | {"day": "2026-11-28"},
            report(ROGUES[1]) | {"home": VALID[1]}, report(ROGUES[2]) | {"mag": 0},
            report(ROGUES[2]) | {"masked": protocol.b64(bytes(4 * F + 4))},
        ]).map(lambda o: json.dumps(o).encode()),
    )
    return st.tuples(topics, payloads, st.booleans())


HOSTILE_PLANS = hostile_plans()


@FUZZ
@given(data=st.data())
def test_plan_reports(data: st.DataObject) -> None:
    d, c = coordinator()
    valid = {h: report(h) for h in VALID}
    msgs = [(protocol.t_plan(h), protocol.encode(r), False) for h, r in valid.items()]
    msgs += data.draw(st.lists(HOSTILE_PLANS, min_size=8, max_size=30))
    msgs = data.draw(st.permutations(msgs))
    # redelivery and replay of valid reports after their originals: rejected, nothing changes
    again = data.draw(st.lists(st.sampled_from(VALID), max_size=4))
    msgs += [(protocol.t_plan(h), protocol.encode(valid[h]), False) for h in again]
    msgs += [(protocol.t_plan(h), protocol.encode(report(h)), False) for h in again[:1]]

    assert c.intake is not None
    state = c.intake.state
    feed(d, c, msgs, "plan", lambda: state.accepted)
    for h, r in valid.items():  # every valid report was accepted, intact
        got = state.reports[h]
        assert got.report_id == r["report_id"] and got.mag == r["mag"]
        assert protocol.b64(got.masked.tobytes()) == r["masked"]
    assert set(state.reports) <= set(VALID) | set(ROGUES)


# ---------------------------------------------------------------- mask-broker answers


def answer(broker: str, req: str, frames: int = F) -> dict[str, Any]:
    return dict(protocol_svc.make_group_sums(req, broker, DAY, 1, [
        {"id": "g1", "status": "released", "sum": protocol.b64(secrets.token_bytes(4 * frames))},
        {"id": "g2", "status": "refused", "reason": "missing_members", "missing": ["home-a1"]},
    ]))


def hostile_answers() -> st.SearchStrategy[tuple[str, bytes, bool]]:
    base = answer("mb1", "zz-unknown")
    topics = st.sampled_from([protocol_svc.t_groupsum("mb1"), protocol_svc.t_groupsum("mb2"),
                              protocol_svc.t_groupsum("mb9"), "hems/v1/groupsum/",
                              "hems/v1/groupsum/mb1/x", "hems/v1/groupsum/MB1"])
    payloads = st.one_of(
        hostile_payloads(base, protocol.MAX_GROUP_PAYLOAD),
        st.sampled_from([answer("mb1", "q1") | {"round": 2}, answer("mb1", "q1") | {"day": "x"},
                         answer("mb2", "q1"), answer("mb1", "q1", frames=F + 1),
                         answer("mb9", "q9")]).map(lambda o: json.dumps(o).encode()),
    )
    return st.tuples(topics, payloads, st.booleans())


HOSTILE_ANSWERS = hostile_answers()


@FUZZ
@given(data=st.data())
def test_mask_broker_answers(data: st.DataObject) -> None:
    asks = {i: (b, f"q{i}") for i, b in enumerate(["mb1", "mb2", "mb1", "mb2"], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        asked(Path(tmp), asks)  # requests journaled as asked, awaiting their answers
        d, c = coordinator(Path(tmp))
    valid = {(b, r): answer(b, r) for b, r in asks.values()}
    msgs = [(protocol_svc.t_groupsum(b), protocol.encode(o), False) for (b, _), o in valid.items()]
    msgs += data.draw(st.lists(HOSTILE_ANSWERS, min_size=8, max_size=30))
    msgs = data.draw(st.permutations(msgs))
    msgs += [(protocol_svc.t_groupsum(b), protocol.encode(valid[(b, r)]), False)  # duplicates
             for b, r in data.draw(st.lists(st.sampled_from(sorted(valid)), max_size=3))]

    feed(d, c, msgs, "groupsum", lambda: len(c.answers))
    assert set(c.answers) == set(valid)
    for key, obj in valid.items():
        got = c.answers[key]
        assert got["g1"] == protocol_svc.unb64(obj["results"][0]["sum"], 4 * F)
        assert got["g2"] is not None and not isinstance(got["g2"], bytes)


# ---------------------------------------------------------------- capacity and anything else


def hostile_other() -> dict[str, st.SearchStrategy[tuple[str, bytes, bool]]]:
    base = dict(protocol_svc.make_capacity(F, [100] * F, [50] * F))
    cap = st.tuples(st.just(protocol_svc.t_capacity()), st.one_of(
        hostile_payloads(base),
        st.sampled_from([protocol_svc.make_capacity(F + 1, [1] * (F + 1)),
                         protocol_svc.make_capacity(F, [-1] * F),
                         protocol_svc.make_capacity(F, [2**70] * F)]).map(protocol.encode),
    ), st.booleans())
    other = st.tuples(st.one_of(st.text(max_size=40), st.sampled_from(
        ["hems/v1/round", "hems/v1/mask/mb1/home-a1", "hems/v1/adjust/home-a1", "#", ""])),
        st.binary(max_size=100), st.booleans())
    return {"capacity": cap, "other topics": other.filter(lambda m: not m[0].startswith(
        (protocol.PREFIX + "/plan/", protocol.PREFIX + "/groupsum/", protocol_svc.t_capacity())))}


HOSTILE_OTHER = hostile_other()


@pytest.mark.parametrize("focus", sorted(HOSTILE_OTHER))
@FUZZ
@given(data=st.data())
def test_capacity_and_other_topics(focus: str, data: st.DataObject) -> None:
    d, c = coordinator()
    good = protocol_svc.make_capacity(F, list(range(100, 100 + F)))
    msgs = data.draw(st.lists(HOSTILE_OTHER[focus], min_size=8, max_size=30))
    msgs.append((protocol_svc.t_capacity(), protocol.encode(good), True))
    feed(d, c, msgs, "capacity", lambda: d.supply.accepted)
    cap, _ = d.supply.for_day(DAY, F)
    assert cap is not None
    assert cap.capacity_wh.tolist() == good["capacity_wh"]
