"""The mask broker's sans-I/O core (backend/mask_broker/core.py): messages in, records and
publishes out.  Masks are built exactly as the firmware builds them (hemsfw.seal/masking)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.mask_broker.core import DayWindow, MaskBroker, Publish, Record
from backend.mask_broker.state_dir import StateDir
from hemsfw import masking, protocol, protocol_svc, seal

B = "mb1"
DAY = "2025-06-01"
FRAMES = 8
K = 2


def homes(n: int) -> dict[str, bytes]:
    return {f"h{i}": bytes([i]) * 32 for i in range(1, n + 1)}


KEYS = homes(6)


class Home:
    """One home's side of the mask protocol (what hemsfw.home.Home does for one broker)."""

    def __init__(self, hid: str, key: bytes | None = None) -> None:
        self.id = hid
        self.key = KEYS.get(hid, b"\x00" * 32) if key is None else key

    def report(self, day: str = DAY, rnd: int = 1, seed: bytes | None = None,
               rid: str | None = None, broker: str = B, key: bytes | None = None,
               home: str | None = None) -> tuple[str, bytes, bytes, str]:
        """(topic, payload, seed, report id) of a sealed mask report."""
        seed = os.urandom(protocol.SEED_LEN) if seed is None else seed
        rid = os.urandom(16).hex() if rid is None else rid
        who = self.id if home is None else home
        ad = protocol.mask_ad(broker, who, day, rnd, rid)
        blob = seal.seal(key or self.key, ad, seed, os.urandom(seal.NONCE_LEN))
        msg = protocol.make_mask_report(who, day, rnd, rid, blob)
        return protocol.t_mask(broker, self.id), protocol.encode(msg), seed, rid


def announce(day: str = DAY, rnd: int = 1, frames: int = FRAMES) -> tuple[str, bytes]:
    ann = protocol_svc.make_round(day, rnd, frames, 900, 1, 0, 3600, [B])
    return protocol.t_round(), protocol.encode(ann)


def publishes(out: list[Any]) -> list[Publish]:
    return [o for o in out if isinstance(o, Publish)]


def reply(out: list[Any]) -> dict[str, Any]:
    (p,) = publishes(out)
    assert p.topic.startswith(f"hems/v1/reply/{B}/") and p.qos == 1
    obj: dict[str, Any] = json.loads(p.payload)
    return obj


def group_request(groups: list[tuple[str, list[str], list[str]]], day: str = DAY,
                  rnd: int = 1, req: str = "r1") -> tuple[str, bytes]:
    """groups: (id, members, their report ids)."""
    gs = [(g, m, protocol_svc.report_checksum(r)) for g, m, r in groups]
    return protocol_svc.t_groupreq(B), protocol.encode(
        protocol_svc.make_group_request(req, day, rnd, gs))


def sums(out: list[Any]) -> dict[str, Any]:
    (p,) = publishes(out)
    assert p.topic == protocol_svc.t_groupsum(B)
    obj = json.loads(p.payload)
    _, broker, _, _, res = protocol_svc.parse_group_sums(obj, FRAMES)
    assert broker == B
    return res


def expected_sum(seeds: list[bytes]) -> bytes:
    acc = bytearray(4 * FRAMES)
    for s in seeds:
        masking.add_words(acc, masking.expand_seed(s, FRAMES))
    return bytes(acc)


class World:
    """A core with a round announced and masks from some homes."""

    def __init__(self, n_masks: int = 4, k: int = K) -> None:
        self.core = MaskBroker(B, KEYS, k)
        assert self.core.handle(*announce())[0] == Record(
            "round", {"day": DAY, "round": 1, "frames": FRAMES})
        self.seeds: dict[str, bytes] = {}
        self.rids: dict[str, str] = {}
        self.day = DAY
        for i in range(1, n_masks + 1):
            self.submit(f"h{i}")

    def submit(self, hid: str, rnd: int = 1) -> None:
        topic, payload, seed, rid = Home(hid).report(day=self.day, rnd=rnd)
        assert reply(self.core.handle(topic, payload))["status"] == "accepted"
        self.seeds[hid], self.rids[hid] = seed, rid

    def ask(self, *groups: tuple[str, list[str]], rnd: int = 1) -> dict[str, Any]:
        spec = [(g, m, [self.rids.get(h, "00" * 16) for h in m]) for g, m in groups]
        return sums(self.core.handle(*group_request(spec, rnd=rnd)))

    def total(self, members: list[str]) -> bytes:
        return expected_sum([self.seeds[h] for h in members])


# ---------------------------------------------------------------- masks


def test_accepts_a_sealed_mask_and_stores_its_expansion() -> None:
    core = MaskBroker(B, KEYS, K)
    core.handle(*announce())
    topic, payload, seed, rid = Home("h1").report()
    out = core.handle(topic, payload)
    rec, pub = out
    assert isinstance(rec, Record) and rec.kind == "mask"
    assert rec.data == {"day": DAY, "round": 1, "home": "h1", "report_id": rid,
                        "seed": seed.hex()}
    assert pub.topic == protocol.t_reply(B, "h1")
    assert json.loads(pub.payload) == protocol_svc.make_reply(DAY, 1, rid, True, "ok")
    row = core.masks.rows[core.masks.row_of[core.index["h1"]]]
    assert row.tobytes() == bytes(masking.expand_seed(seed, FRAMES))
    assert core.stats.masks_accepted == 1


def _tamper(topic: str, payload: bytes) -> tuple[str, bytes]:
    """The same report with one bit of its sealed blob flipped."""
    obj = json.loads(payload)
    blob = bytearray(base64.b64decode(obj["sealed"]))
    blob[20] ^= 1
    obj["sealed"] = protocol.b64(bytes(blob))
    return topic, json.dumps(obj).encode()


def _rejections() -> list[tuple[str, Any, str]]:
    """(name, how to make (topic, payload) given a World, expected reason)."""
    h1 = Home("h1")
    return [
        ("home_mismatch", lambda w: h1.report(home="h2")[:2], "home_mismatch"),
        ("unregistered", lambda w: Home("h99").report()[:2], "unregistered"),
        ("other day", lambda w: h1.report(day="2025-06-02")[:2], "unknown_round"),
        ("next round, not announced yet", lambda w: h1.report(rnd=2)[:2], "unknown_round"),
        ("wrong key", lambda w: h1.report(key=b"\x77" * 32)[:2], "bad_mac"),
        ("sealed for another broker", lambda w: (protocol.t_mask(B, "h1"),
                                                 h1.report(broker="mb2")[1]), "bad_mac"),
        ("flipped bit", lambda w: _tamper(*h1.report()[:2]), "bad_mac"),
        ("short seed", lambda w: h1.report(seed=b"\x01" * 16)[:2], "bad_seed"),
        ("bad json", lambda w: (protocol.t_mask(B, "h1"), b"{not json"), "bad_json"),
        ("bad version", lambda w: (protocol.t_mask(B, "h1"), b'{"v": 2}'), "bad_version"),
        ("too large", lambda w: (protocol.t_mask(B, "h1"), b" " * (protocol.MAX_PAYLOAD + 1)),
         "too_large"),
        ("bad report id", lambda w: h1.report(rid="XYZ")[:2], "bad_report_id"),
    ]


@pytest.mark.parametrize(("name", "make", "reason"), _rejections(),
                         ids=[r[0] for r in _rejections()])
def test_mask_rejections(name: str, make: Any, reason: str) -> None:
    w = World(n_masks=0)
    topic, payload = make(w)
    r = reply(w.core.handle(topic, payload))
    assert r["status"] == "rejected" and r["reason"] == reason
    assert w.core.rejections.counts[f"mask:{reason}"] == 1
    assert w.core.masks.count == 0
    w.submit("h1")  # and the home can still report afterwards


def test_replay_and_duplicate_home() -> None:
    w = World(n_masks=0)
    topic, payload, _, rid = Home("h1").report()
    assert reply(w.core.handle(topic, payload))["status"] == "accepted"
    again = reply(w.core.handle(topic, payload))
    assert (again["status"], again["reason"], again["report_id"]) == ("rejected", "replay", rid)
    r = reply(w.core.handle(*Home("h1").report()[:2]))
    assert r["reason"] == "duplicate_home"
    assert w.core.masks.count == 1


def test_no_reply_without_a_valid_home_in_the_topic() -> None:
    w = World(n_masks=0)
    _, payload, _, _ = Home("h1").report()
    for topic in (f"hems/v1/mask/{B}/H1", f"hems/v1/mask/{B}/h1/x", "hems/v1/mask/mb2/h1",
                  f"hems/v1/mask/{B}/"):
        assert w.core.handle(topic, payload) == []
    assert w.core.handle("hems/v1/plan/h1", payload) == []
    assert w.core.rejections.counts["mask:bad_topic"] == 4
    assert w.core.rejections.counts["topic:unexpected_topic"] == 1


def test_masks_before_the_first_announcement_are_held() -> None:
    core = MaskBroker(B, KEYS, K)
    topic, payload, _, _ = Home("h1").report()
    assert core.handle(topic, payload) == []
    assert core.handle(*Home("h2").report(rnd=2)[:2]) == []
    out = core.handle(*announce())
    assert [o.kind for o in out if isinstance(o, Record)] == ["round", "mask"]
    assert [json.loads(p.payload)["status"] for p in publishes(out)] == ["accepted", "rejected"]
    assert core.masks.count == 1


def test_round_changes() -> None:
    w = World(n_masks=4)
    # The retained announcement again (a reconnect) keeps the masks.
    assert w.core.handle(*announce()) == []
    assert w.core.masks.count == 4
    assert w.core.handle(*announce(frames=FRAMES + 1)) == []
    assert w.core.rejections.counts["round:round_conflict"] == 1
    # A new round of the same day: masks dropped, partition kept (compacted first).
    assert w.ask(("g", ["h1", "h2", "h3", "h4"]))["g"] == w.total(["h1", "h2", "h3", "h4"])
    assert [o.kind for o in w.core.handle(*announce(rnd=2))  # type: ignore[union-attr]
            ] == ["compact", "round"]
    assert w.core.masks.count == 0
    for h in ("h1", "h2", "h3", "h4"):
        w.submit(h, rnd=2)
    res = w.ask(("a", ["h1", "h2"]), ("b", ["h2", "h3"]), rnd=2)
    assert res["a"] == w.total(["h1", "h2"])
    assert res["b"] == ("would_isolate", [])  # atoms count across the rounds of a day
    # An earlier day is refused; a later day keeps the partition (plans may repeat).
    assert w.core.handle(*announce(day="2025-05-31")) == []
    assert w.core.rejections.counts["round:stale_round"] == 1
    atoms = sorted(w.core.partition.atom_sizes().tolist())
    w.core.handle(*announce(day="2025-06-02"))
    assert sorted(w.core.partition.atom_sizes().tolist()) == atoms
    assert w.core.handle(protocol.t_round(), b"[]") == []
    assert w.core.rejections.counts["round:bad_json"] == 1


# ---------------------------------------------------------------- group requests


def test_released_sum_is_the_members_mask_sum() -> None:
    w = World(n_masks=5)
    members = ["h1", "h2", "h3", "h4", "h5"]
    out = w.core.handle(*group_request([("g1", members, [w.rids[h] for h in members])]))
    rec, pub = out
    assert isinstance(rec, Record) and rec.kind == "release"
    assert rec.data["members"] == members and rec.data["group"] == "g1"
    res = sums([pub])
    assert res["g1"] == w.total(members)
    total = np.zeros(FRAMES, dtype=np.uint64)
    for h in members:
        total += np.frombuffer(bytes(masking.expand_seed(w.seeds[h], FRAMES)), dtype="<u4")
    assert res["g1"] == (total % 2**32).astype("<u4").tobytes()


def test_masks_after_a_request_are_expanded_at_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds are expanded in one batch at the first request that needs the rows (not on
    ingest), and masks that arrive after it at the next request."""
    from backend.mask_broker import core as core_mod

    monkeypatch.setattr(core_mod, "EXPAND_CHUNK", 2)  # several chunks per expansion
    w = World(n_masks=3)
    assert w.core.masks._expanded == 0  # nothing expanded on ingest
    first = ["h1", "h2", "h3"]
    assert w.ask(("g1", first))["g1"] == w.total(first)
    assert w.core.masks._expanded == 3
    for h in ("h4", "h5", "h6"):
        w.submit(h)
    assert w.core.masks._expanded == 3
    later = ["h4", "h5", "h6"]
    assert w.ask(("g2", later))["g2"] == w.total(later)
    rows = w.core.masks.rows
    assert rows.shape == (6, FRAMES)
    for h in first + later:
        r = w.core.masks.row_of[w.core.index[h]]
        assert rows[r].tobytes() == bytes(masking.expand_seed(w.seeds[h], FRAMES))


def test_group_refusal_reasons_in_order() -> None:
    w = World(n_masks=4, k=3)
    res = w.ask(
        ("dup", ["h1", "h2", "h1"]),
        ("unreg", ["h1", "h2", "h3", "h99"]),
        ("small", ["h1", "h2"]),
        ("missing", ["h1", "h2", "h5", "h6"]),
        ("ok", ["h1", "h2", "h3"]),
    )
    assert res["dup"] == ("duplicate_members", [])
    assert res["unreg"] == ("unregistered_member", [])
    assert res["small"] == ("too_small", [])
    assert res["missing"] == ("missing_members", ["h5", "h6"])
    assert res["ok"] == w.total(["h1", "h2", "h3"])
    bad = w.core.handle(*group_request([("g", ["h1", "h2", "h4"],
                                         [w.rids["h1"], w.rids["h2"], w.rids["h3"]])]))
    assert sums(bad)["g"] == ("checksum_mismatch", [])
    assert w.core.stats.refused == {"duplicate_members": 1, "unregistered_member": 1,
                                    "too_small": 1, "missing_members": 1,
                                    "checksum_mismatch": 1}


def test_refinement_reshuffle_and_repeat() -> None:
    w = World(n_masks=6, k=2)
    everyone = [f"h{i}" for i in range(1, 7)]
    # One request: a group, then its split; the rule sees the earlier groups of the request.
    res = w.ask(("all", everyone), ("a", everyone[:3]), ("b", everyone[3:]),
                ("shuffle", ["h3", "h4"]))
    assert res["all"] == w.total(everyone)
    assert res["a"] == w.total(everyone[:3]) and res["b"] == w.total(everyone[3:])
    assert res["shuffle"] == ("would_isolate", [])
    # Later requests: a reshuffle is still refused, the same set again gives the same sum.
    again = w.ask(("a2", list(reversed(everyone[:3]))), ("x", ["h1", "h2", "h3", "h4"]))
    assert again["a2"] == res["a"]
    assert again["x"] == ("would_isolate", [])
    assert w.core.stats.released == 4


def test_group_request_for_another_round() -> None:
    w = World(n_masks=4)
    res = w.ask(("g", ["h1", "h2"]), rnd=2)
    assert res == {"g": ("unknown_round", [])}
    assert w.core.rejections.counts["groupreq:unknown_round"] == 1
    out = w.core.handle(protocol_svc.t_groupreq(B), b'{"v": 1, "req": "r"}')
    assert out == [] and w.core.rejections.counts["groupreq:bad_day"] == 1


def test_large_group_request_beyond_the_message_cap() -> None:
    keys = {f"home-{i:07d}-padding-padding": os.urandom(32) for i in range(40_000)}
    core = MaskBroker(B, keys, 3)
    core.handle(*announce())
    members = sorted(keys)
    req = protocol.encode(protocol_svc.make_group_request("r", DAY, 1, [("g", members, "0" * 64)]))
    assert len(req) > protocol.MAX_PAYLOAD
    res = sums(core.handle(protocol_svc.t_groupreq(B), req))
    assert res["g"][0] == "missing_members" and len(res["g"][1]) == len(members)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=20, unique=True))
def test_vectorised_checksum_equals_protocol(rids: list[bytes]) -> None:
    from backend.mask_broker.core import RoundMasks

    m = RoundMasks(len(rids), 2)
    for i, r in enumerate(rids):
        m.add(i, r.hex(), b"\x00" * 32)
    rows = np.arange(len(rids), dtype=np.int64)
    assert m.checksum(rows) == protocol_svc.report_checksum([r.hex() for r in rids])


# ---------------------------------------------------------------- restart


def test_restore_replays_to_the_same_state(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    w = World(n_masks=0)
    state.write(Record("round", {"day": DAY, "round": 1, "frames": FRAMES}))
    for h in ("h1", "h2", "h3", "h4"):
        topic, payload, seed, rid = Home(h).report()
        for o in w.core.handle(topic, payload):
            if isinstance(o, Record):
                state.write(o)
        w.seeds[h], w.rids[h] = seed, rid
    spec = [("a", ["h1", "h2"], [w.rids["h1"], w.rids["h2"]]),
            ("b", ["h3", "h4"], [w.rids["h3"], w.rids["h4"]])]
    for o in w.core.handle(*group_request(spec)):
        if isinstance(o, Record):
            state.write(o)
    state.close()
    with open(tmp_path / "state" / "releases.jsonl", "a") as f:
        f.write('{"torn": ')  # a crash mid-write

    fresh = MaskBroker(B, KEYS, K)
    for kind, data in StateDir(tmp_path / "state").records():
        fresh.restore(kind, data)
    w.core = fresh
    assert fresh.masks.count == 4
    res = w.ask(("a", ["h1", "h2"]), ("x", ["h2", "h3"]))
    assert res["a"] == w.total(["h1", "h2"])
    assert res["x"] == ("would_isolate", [])
    assert reply(fresh.handle(*Home("h1").report()[:2]))["reason"] == "duplicate_home"
    with pytest.raises(ValueError):
        fresh.restore("mask", {"day": DAY, "round": 1, "home": "h1"})
    with pytest.raises(ValueError):
        fresh.restore("release", {"day": "2025-06-09", "round": 1})


def test_state_dir_files(tmp_path: Path) -> None:
    d = tmp_path / "s"
    s = StateDir(d)
    s.write(Record("round", {"day": DAY, "round": 1, "frames": FRAMES}))
    s.write(Record("mask", {"day": DAY, "round": 1, "home": "h1", "report_id": "00" * 16,
                            "seed": "11" * 32}))
    masks1 = d / f"masks-{DAY}-1.jsonl"
    assert stat.S_IMODE(masks1.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    s.write(Record("release", {"day": DAY, "round": 1, "members": ["h1", "h2"]}))
    assert (d / "releases.jsonl").exists()
    s.write(Record("compact", {"partition": {}, "carried": {}}))
    assert not (d / "releases.jsonl").exists()  # folded into the compaction
    assert stat.S_IMODE((d / "state.json").stat().st_mode) == 0o600
    s.write(Record("round", {"day": DAY, "round": 2, "frames": FRAMES}))
    assert not masks1.exists()  # seeds of a past round are not kept
    assert [k for k, _ in StateDir(d).records()] == ["compact", "round"]
    with pytest.raises(ValueError):
        s.write(Record("other", {}))
    s.close()


# ---------------------------------------------------------------- robustness


def _near_valid(w: World) -> st.SearchStrategy[tuple[str, bytes]]:
    topic, payload, _, _ = Home("h4").report()  # h4 has no mask yet in _FUZZ_WORLD
    good = json.loads(payload)
    plausible = st.sampled_from(["h1", "h3", "h99", DAY, "2025-06-02", 1, 2, "ab" * 16])
    values = st.one_of(plausible, plausible, st.none(), st.booleans(), st.integers(-2, 2**40),
                       st.text(max_size=40),
                       st.lists(st.text(max_size=8), max_size=4),
                       st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
    mutated = st.builds(
        lambda key, v, drop: {**{k: x for k, x in good.items() if k != drop}, key: v},
        st.sampled_from([*good, "x"]), values, st.sampled_from([*good, *[None] * 12]))
    members = ["h1", "h2", "h3"]
    checksum = protocol_svc.report_checksum([w.rids[h] for h in members])
    gr = st.fixed_dictionaries({
        "v": st.sampled_from([1] * 6 + [2, "1"]), "req": st.sampled_from(["r"] * 6 + ["", 5]),
        "day": st.sampled_from([DAY] * 6 + ["2025-13-99", None]),
        "round": st.sampled_from([1] * 6 + [2, 0, "1"]),
        "groups": st.lists(st.fixed_dictionaries({
            "id": st.sampled_from(["g", "h", "i", "g", "h", "i", "G", 3]),
            "members": st.one_of(
                st.just(members),
                st.lists(st.sampled_from(["h1", "h2", "h3", "h4", "h99", "", 1]), max_size=5)),
            "checksum": st.sampled_from([checksum, checksum, "0" * 64, "x", None])}),
            max_size=3)})
    def sealed(home: str, day: str, rnd: int, rid: str, key: bytes, seed: bytes) -> bytes:
        ad = protocol.mask_ad(B, home, day, rnd, rid)
        blob = seal.seal(key, ad, seed, b"\x00" * seal.NONCE_LEN)
        return protocol.encode(protocol.make_mask_report(home, day, rnd, rid, blob))

    semantic = st.builds(
        sealed, st.sampled_from(["h4", "h4", "h1", "h99"]),
        st.sampled_from([DAY, DAY, "2025-06-02"]),
        st.sampled_from([1, 1, 2]), st.sampled_from([good["report_id"], "ab" * 16, "cd" * 16]),
        st.sampled_from([KEYS["h4"], KEYS["h4"], KEYS["h1"]]),
        st.binary(min_size=15, max_size=33))
    return st.one_of(
        st.tuples(st.just(topic), semantic),
        st.tuples(st.sampled_from([topic, protocol.t_mask(B, "h1"), f"hems/v1/mask/{B}/h2/x",
                                   "hems/v1/mask/mb1/\u00e9", protocol.t_round(), topic, topic]),
                  st.one_of(st.binary(max_size=300),
                            mutated.map(lambda o: json.dumps(o).encode()))),
        st.tuples(st.just(protocol_svc.t_groupreq(B)), st.one_of(
            st.binary(max_size=200), gr.map(lambda o: json.dumps(o).encode()))),
        st.tuples(st.text(max_size=30), st.binary(max_size=50)),
    )


_FUZZ_WORLD = World(n_masks=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_never_raises_and_only_answers_valid_topics(data: st.DataObject) -> None:
    w = _FUZZ_WORLD
    topic, payload = data.draw(_near_valid(w))
    out = w.core.handle(topic, payload)
    for o in out:
        if isinstance(o, Publish):
            tail = protocol.topic_tail(o.topic, "reply")
            if tail is not None:
                assert tail[0] == B and protocol.valid_id(tail[1])
                assert protocol.topic_tail(topic, "mask") == tail
            else:
                assert o.topic == protocol_svc.t_groupsum(B)
            protocol.decode(o.payload)
    assert w.core.rejections.counts["internal:internal_error"] == 0
    json.dumps(w.core.stats_dict())


def test_stats_dict() -> None:
    w = World(n_masks=3, k=2)
    w.ask(("g", ["h1", "h2", "h3"]), ("s", ["h1"]))
    w.core.handle(protocol.t_mask(B, "h1"), b"garbage")
    d = json.loads(json.dumps(w.core.stats_dict()))
    assert d["masks"] == {"accepted_total": 3, "this_round": 3}
    assert d["groups"] == {"requests": 1, "released": 1, "refused": 1,
                           "refused_by_reason": {"too_small": 1}}
    assert d["rejections"] == {"mask:bad_json": 1}
    assert d["atoms"] == {"count": 1, "min_size": 3}
    assert [g["status"] for g in d["recent_groups"]] == ["released", "refused"]
    assert d["round"] == {"day": DAY, "round": 1, "frames": FRAMES}


# ---------------------------------------------------------------- over time (docs/privacy.md)


def carried_request(groups: list[tuple[str, list[str], list[str], list[str]]],
                    day: str, rnd: int = 1, req: str = "r9") -> tuple[str, bytes]:
    """groups: (id, members, the report ids counted, carried members)."""
    gs = [(g, m, protocol_svc.report_checksum(r), c) for g, m, r, c in groups]
    return protocol_svc.t_groupreq(B), protocol.encode(
        protocol_svc.make_group_request(req, day, rnd, gs))


def next_day(w: World, day: str = "2025-06-02") -> None:
    assert w.core.handle(*announce(day=day))[-1].kind == "round"  # type: ignore[union-attr]
    w.day = day


def test_the_partition_outlives_the_day() -> None:
    w = World(n_masks=4)
    assert w.ask(("g", ["h1", "h2", "h3", "h4"]))["g"] == w.total(["h1", "h2", "h3", "h4"])
    next_day(w)
    for h in ("h1", "h2", "h3"):
        w.submit(h)  # h4 misses the day
    spec = [("g", ["h1", "h2", "h3"], [w.rids[h] for h in ("h1", "h2", "h3")])]
    res = sums(w.core.handle(*group_request(spec, day="2025-06-02")))
    assert res["g"] == ("would_isolate", [])  # day 1's total minus day 2's would be h4's plan


def test_a_carried_member_counts_with_its_latest_released_report() -> None:
    w = World(n_masks=4)
    w.ask(("g", ["h1", "h2", "h3", "h4"]))
    day1_h4 = w.seeds["h4"], w.rids["h4"]
    next_day(w)
    for h in ("h1", "h2", "h3"):
        w.submit(h)
    members = ["h1", "h2", "h3", "h4"]
    rids = [w.rids[h] for h in ("h1", "h2", "h3")] + [day1_h4[1]]
    res = sums(w.core.handle(*carried_request([("g", members, rids, ["h4"])], "2025-06-02")))
    assert res["g"] == expected_sum([w.seeds[h] for h in ("h1", "h2", "h3")] + [day1_h4[0]])


def test_a_carried_member_without_a_released_report_is_missing() -> None:
    w = World(n_masks=4)  # nothing released yet: nothing to carry
    members = ["h1", "h2", "h3", "h4"]
    rids = [w.rids[h] for h in members]
    res = sums(w.core.handle(*carried_request([("g", members, rids, ["h4"])], DAY)))
    assert res["g"] == ("missing_members", ["h4"])


def test_a_home_counts_with_one_report_per_round() -> None:
    w = World(n_masks=6)
    w.ask(("a", ["h1", "h2", "h3"]), ("b", ["h4", "h5", "h6"]))
    old = w.rids["h3"]
    next_day(w)
    for h in ("h1", "h2", "h3", "h4", "h5", "h6"):
        w.submit(h)
    # h3 carried in one group, then with this round's report in a union: refused
    first = [("a", ["h1", "h2", "h3"], [w.rids["h1"], w.rids["h2"], old], ["h3"])]
    assert sums(w.core.handle(*carried_request(first, "2025-06-02")))["a"][0] != "refused"
    both = [("ab", ["h1", "h2", "h3", "h4", "h5", "h6"],
             [w.rids[h] for h in ("h1", "h2", "h3", "h4", "h5", "h6")], [])]
    res = sums(w.core.handle(*carried_request(both, "2025-06-02", req="r10")))
    assert res["ab"] == ("report_conflict", [])


@pytest.mark.parametrize(("day", "rnd", "reason"), [
    ("2025-06-03", 1, "day_window"),   # the day after tomorrow
    ("2025-05-31", 1, "day_window"),   # yesterday
    ("2025-06-02", 9, "too_many_rounds"),
])
def test_days_follow_the_brokers_own_clock(day: str, rnd: int, reason: str) -> None:
    now = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC).timestamp()
    core = MaskBroker(B, KEYS, K, clock=lambda: now, window=DayWindow("UTC", 1), max_rounds=8)
    assert core.handle(*announce(day=day, rnd=rnd)) == []
    assert core.rejections.counts[f"round:{reason}"] == 1
    assert core.round is None
    assert core.handle(*announce(day="2025-06-02"))[-1].kind == "round"  # type: ignore[union-attr]


def test_compaction_keeps_the_partition_and_the_carried_reports(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    w = World(n_masks=0)
    state.write(Record("round", {"day": DAY, "round": 1, "frames": FRAMES}))

    def feed(out: list[Any]) -> None:
        for o in out:
            if isinstance(o, Record):
                state.write(o)

    for h in ("h1", "h2", "h3", "h4"):
        topic, payload, seed, rid = Home(h).report()
        feed(w.core.handle(topic, payload))
        w.seeds[h], w.rids[h] = seed, rid
    feed(w.core.handle(*group_request([("g", ["h1", "h2", "h3", "h4"],
                                        [w.rids[h] for h in ("h1", "h2", "h3", "h4")])])))
    old = w.seeds["h4"], w.rids["h4"]
    feed(w.core.handle(*announce(day="2025-06-02")))  # compaction, then the new round
    w.day = "2025-06-02"
    state.close()
    fresh = MaskBroker(B, KEYS, K)
    for kind, data in StateDir(tmp_path / "state").records():
        fresh.restore(kind, data)
    w.core = fresh
    for h in ("h1", "h2", "h3"):
        w.submit(h)
    spec = [("g", ["h1", "h2", "h3"], [w.rids[h] for h in ("h1", "h2", "h3")])]
    assert sums(fresh.handle(*group_request(spec, day="2025-06-02")))["g"] == (
        "would_isolate", [])
    members = ["h1", "h2", "h3", "h4"]
    rids = [w.rids[h] for h in ("h1", "h2", "h3")] + [old[1]]
    res = sums(fresh.handle(*carried_request([("g", members, rids, ["h4"])], "2025-06-02")))
    assert res["g"] == expected_sum([w.seeds[h] for h in ("h1", "h2", "h3")] + [old[0]])
