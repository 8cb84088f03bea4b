# The firmware core (masking, seal, plan, protocol, home round flow) under MicroPython and CPython.
# Known-answer vectors are in test_vectors.py; these are properties and round trips.

import binascii

from fakes import CountingRandom, MemStore

from hemsfw import adjust, home, masking, plan, protocol, protocol_svc, seal

M32 = 4294967296
KEY = "c8" * 32


def _raises(fn, reason=None):
    try:
        fn()
    except ValueError as e:
        if reason is not None:
            assert str(e) == reason, str(e)
        return
    raise AssertionError("no ValueError")


def _sub(masked, mask):
    a, b = masking.words(masked), masking.words(mask)
    return [(a[i] - b[i]) % M32 for i in range(len(a))]

# ------------------------------------------------------------------ masking


def test_mask_unmask_round_trip():
    values = [0, 1, 2, 1000, 0x3FFFFFFF, 7]
    seed = bytes(range(32))
    mask = masking.expand_seed(seed, len(values))
    assert len(mask) == 4 * len(values)
    masked = masking.add_plan(mask, values)
    assert _sub(masked, mask) == values
    assert bytes(masked) != bytes(masking.from_words(values))


def test_expand_is_deterministic_and_seed_dependent():
    a = masking.expand_seed(b"\x01" * 32, 40)   # 160 bytes: several SHA-256 blocks
    assert bytes(a) == bytes(masking.expand_seed(b"\x01" * 32, 40))
    assert bytes(a) != bytes(masking.expand_seed(b"\x02" * 32, 40))
    # a prefix of a longer expansion is the shorter expansion (counter mode)
    assert bytes(masking.expand_seed(b"\x01" * 32, 9)) == bytes(a[:36])


def test_mask_from_seeds_is_the_sum_of_shares():
    s1, s2 = b"\x05" * 32, b"\x09" * 32
    total = masking.mask_from_seeds([s1, s2], 10)
    w1 = masking.words(masking.expand_seed(s1, 10))
    w2 = masking.words(masking.expand_seed(s2, 10))
    assert masking.words(total) == [(w1[i] + w2[i]) % M32 for i in range(10)]


def test_add_words_wraps_and_checks_lengths():
    acc = masking.from_words([M32 - 1, 5])
    masking.add_words(acc, masking.from_words([2, M32 - 5]))
    assert masking.words(acc) == [1, 0]
    _raises(lambda: masking.add_words(bytearray(8), bytearray(4)))
    _raises(lambda: masking.add_plan(bytearray(8), [1]))
    _raises(lambda: masking.add_plan(bytearray(4), [0x40000000]))

# ------------------------------------------------------------------ seal


def test_seal_round_trip_and_tamper():
    key = binascii.unhexlify(KEY)
    ad = protocol.mask_ad("mb1", "h1", "2026-11-28", 1, "ab" * 16)
    seed = bytes(range(100, 132))
    blob = seal.seal(key, ad, seed, b"\x07" * seal.NONCE_LEN)
    assert len(blob) == seal.NONCE_LEN + 32 + seal.TAG_LEN
    assert seal.open_sealed(key, ad, blob) == seed
    other = protocol.mask_ad("mb1", "h2", "2026-11-28", 1, "ab" * 16)
    _raises(lambda: seal.open_sealed(key, other, blob), "bad_mac")
    _raises(lambda: seal.open_sealed(b"\x00" * 32, ad, blob), "bad_mac")
    _raises(lambda: seal.open_sealed(key, ad, blob[:40]), "bad_mac")
    _raises(lambda: seal.seal(key, ad, seed, b"short"), "nonce")

# ------------------------------------------------------------------ plan


def test_plan_quanta_and_resample():
    assert plan.to_quanta([0, 49, 50, 149, 151], 100) == [0, 0, 1, 1, 2]
    # the running total is rounded, so energy split over frames is not lost
    assert plan.to_quanta([45, 45], 100) == [0, 1]
    assert sum(plan.to_quanta([33] * 30, 100)) == 10
    hourly = [7, 0, 4]
    r = plan.resample(hourly, 12)
    assert r == [2, 2, 2, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    assert sum(r) == sum(hourly)
    assert plan.resample(hourly, 3) == hourly
    _raises(lambda: plan.resample(hourly, 10))


def test_apply_adjustment_is_simultaneous():
    p = [1, 2, 3, 4]
    # a swap: both moves read the original plan
    assert plan.apply_adjustment(p, [(0, 1), (1, 0)], []) == [2, 1, 3, 4]
    assert plan.apply_adjustment(p, [(2, 3)], [0]) == [0, 2, 0, 7]
    assert p == [1, 2, 3, 4]


def test_apply_adjustment_partial_curtailment():
    p = [8, 3, 10, 5]
    # [frame, keep]: keep/65536 of the adjusted load stays, rounded down; keep 0 is off
    got = plan.apply_adjustment(p, [(0, 1)], [[1, 49152], [2, 0], [3, 32768]])
    assert got == [0, 8, 0, 2]   # 11 * 3/4 = 8.25 -> 8; 5 / 2 = 2.5 -> 2
    assert plan.apply_adjustment(p, [], [[0, 65535]]) == [7, 3, 10, 5]   # never rounds up


def test_adjustment_partial_curtail_parse():
    adj = protocol_svc.make_adjustment("2026-11-28", 1, "g1", [], [(1, 40000), (3, 0)], 9)
    assert adjust.parse_adjustment(_rt(adj), 4)[4] == [[1, 40000], [3, 0]]
    for bad in ([[1, 65536]], [[4, 0]], [[1, -1]], [[1, 2], [1, 3]], [[1, 2], 1], [[1]]):
        obj = dict(adj)
        obj["curtail"] = bad
        _raises(lambda o=obj: adjust.parse_adjustment(o, 4), "bad_curtail")


def test_frame_at_bounds():
    assert plan.frame_at(None, 1000, 10, 3) is None
    assert plan.frame_at(999.9, 1000, 10, 3) is None
    assert plan.frame_at(1000, 1000, 10, 3) == 0
    assert plan.frame_at(1019.99, 1000, 10, 3) == 1
    assert plan.frame_at(1030, 1000, 10, 3) is None

# ------------------------------------------------------------------ protocol


def _rt(obj):
    return protocol.decode(protocol.encode(obj))


def test_round_make_parse():
    ann = protocol_svc.make_round("2026-11-28", 3, 96, 900, 10, 1795824000, 1795740000,
                                  ["mb1", "mb2"])
    assert protocol.parse_round(_rt(ann)) == ann
    bad = dict(ann)
    bad["brokers"] = ["mb1", "mb1"]
    _raises(lambda: protocol.parse_round(bad), "bad_brokers")
    bad = dict(ann)
    bad["frames"] = 0
    _raises(lambda: protocol.parse_round(bad), "bad_frames")


def test_reports_make_parse():
    masked = masking.from_words([1, 2, M32 - 1])
    rep = protocol.make_plan_report("h1", "2026-11-28", 1, "0f" * 16, 2, masked)
    h, d, r, rid, mag, got = protocol_svc.parse_plan_report(_rt(rep), 3)
    assert (h, d, r, rid, mag) == ("h1", "2026-11-28", 1, "0f" * 16, 2)
    assert bytes(got) == bytes(masked)
    _raises(lambda: protocol_svc.parse_plan_report(_rt(rep), 4), "bad_length")
    mrep = protocol.make_mask_report("h1", "2026-11-28", 1, "0f" * 16, b"\x01\x02\x03")
    assert protocol_svc.parse_mask_report(_rt(mrep))[4] == b"\x01\x02\x03"


def test_adjustment_make_parse():
    adj = protocol_svc.make_adjustment("2026-11-28", 1, "g1", [(0, 2), (1, 2)], [3], 1795910400)
    day, rnd, group, moves, curtail, exp = adjust.parse_adjustment(_rt(adj), 4)
    assert (day, rnd, group, moves, curtail, exp) == (
        "2026-11-28", 1, "g1", [(0, 2), (1, 2)], [3], 1795910400)
    dup = protocol_svc.make_adjustment("2026-11-28", 1, "g1", [(0, 2), (0, 3)], [], 1)
    _raises(lambda: adjust.parse_adjustment(_rt(dup), 4), "bad_moves")
    out = protocol_svc.make_adjustment("2026-11-28", 1, "g1", [(0, 4)], [], 1)
    _raises(lambda: adjust.parse_adjustment(_rt(out), 4), "bad_moves")
    _raises(lambda: protocol.decode(b"{"), "bad_json")
    _raises(lambda: protocol.decode(b'{"v": 9}'), "bad_version")


def test_topics_and_ids():
    assert protocol.t_mask("mb1", "h1") == "hems/v1/mask/mb1/h1"
    assert protocol.topic_tail("hems/v1/reply/coordinator/h1", "reply") == ["coordinator", "h1"]
    assert protocol.topic_tail("hems/v1/round", "reply") is None
    assert protocol.valid_id("h-1_a")
    for bad in ("", "H1", "a/b", "a+", "x" * 33, 5):
        assert not protocol.valid_id(bad)

# ------------------------------------------------------------------ home round flow


def _cfg(keys=None):
    return {"home_id": "h1", "magnification": 2, "plan_wh": [0, 200, 0, 200],
            "keys": keys or {"mb1": KEY, "mb2": "d1" * 32}}


def _ann(rnd=1, brokers=None):
    return protocol_svc.make_round("2026-11-28", rnd, 8, 900, 100, 1795824000, 1795740000,
                               brokers or ["mb1", "mb2"])


def _decoded(out):
    return [(t, protocol.decode(p)) for t, p in out]


def _unmask(out, cfg, frames):
    """What the coordinator + mask brokers would learn together: the plan of this home."""
    plan_obj = protocol.decode(out[0][1])
    _, day, rnd, rid, _, masked = protocol_svc.parse_plan_report(plan_obj, frames)
    mask = bytearray(4 * frames)
    for topic, payload in out[1:]:
        broker = protocol.topic_tail(topic, "mask")[0]
        h, d, r, rid2, blob = protocol_svc.parse_mask_report(protocol.decode(payload))
        assert (h, d, r, rid2) == ("h1", day, rnd, rid)
        key = binascii.unhexlify(cfg["keys"][broker])
        s = seal.open_sealed(key, protocol.mask_ad(broker, h, d, r, rid), blob)
        masking.add_words(mask, masking.expand_seed(s, frames))
    return _sub(masked, mask)


def _ack_all(h):
    for i, _t, _p in h.pending():
        h.ack(i)


def _plan(h):
    st = h.new
    return st["adjusted"] if st.get("adjusted") is not None else st["plan"]


def test_home_round_masks_and_persists():
    store = MemStore()
    cfg = _cfg()
    h = home.Home(cfg, store, CountingRandom())
    out = h.on_round(_ann())
    topics = [t for t, _ in out]
    assert topics == ["hems/v1/plan/h1", "hems/v1/mask/mb1/h1", "hems/v1/mask/mb2/h1"]
    # 4 hourly-ish values over 8 frames, quantum 100 Wh
    assert _unmask(out, cfg, 8) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert store.read(home.NEW)["sent"] is False
    # Before the acks, the same round re-sends byte-identical reports (same report id, seeds).
    assert h.on_round(_ann()) == out
    # A restart before the send completes re-sends them too, from the store (the same objects;
    # MicroPython's dict order may change the bytes after the JSON round trip).
    again = home.Home(cfg, store, CountingRandom(99)).on_round(_ann())
    assert _decoded(again) == _decoded(out)
    _ack_all(h)
    assert h.on_round(_ann()) == []
    assert home.Home(cfg, store, CountingRandom(99)).on_round(_ann()) == []
    # A new round draws a fresh report id and fresh masks.
    out2 = h.on_round(_ann(rnd=2))
    assert out2[0][1] != out[0][1]
    assert _unmask(out2, cfg, 8) == [0, 0, 1, 1, 0, 0, 1, 1]


def test_home_never_stores_the_mask_in_clear():
    store = MemStore()
    h = home.Home(_cfg(), store, CountingRandom())
    h.on_round(_ann())
    st = store.read(home.NEW)
    assert "mask" not in st and "seeds" not in st
    _ack_all(h)
    rid = h.new["report_id"]
    for svc in ("coordinator", "mb1", "mb2"):
        h.on_reply(svc, {"report_id": rid})
    st = store.read(home.NEW)
    assert st["outbox"] == [] and st["sent"] is True   # the sealed seeds are gone too


def test_home_without_key_reports_nothing():
    logged = []
    h = home.Home(_cfg({"mb1": KEY}), MemStore(), CountingRandom(), lambda *a: logged.append(a))
    assert h.on_round(_ann()) == []
    assert logged


def test_home_adjustment_and_relay():
    h = home.Home(_cfg(), MemStore(), CountingRandom())
    adj = protocol_svc.make_adjustment("2026-11-28", 1, "g1", [(2, 5)], [7], 1795910400)
    assert h.on_adjustment(adj) == "no_plan"
    assert h.relay_at(None, True)[0] is True and h.relay_at(1795824000, False)[0] is False
    h.on_round(_ann())
    assert h.on_adjustment(protocol_svc.make_adjustment("2026-11-28", 2, "g1", [], [], 1)) == \
        "other_round"
    bad = dict(adj)
    bad["moves"] = [[0, 99]]
    assert h.on_adjustment(bad) == "bad_moves"
    assert _plan(h) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert h.on_adjustment(adj) is None
    assert _plan(h) == [0, 0, 0, 1, 0, 1, 1, 0]
    start = 1795824000
    got = [h.relay_at(start + 900 * k + 1)[0] for k in range(8)]
    assert got == [False, False, False, True, False, True, True, False]
    assert h.relay_at(start - 1, True) == (True, None)
    assert h.relay_at(start + 8 * 900, True)[0] is True   # after the day: safe state
