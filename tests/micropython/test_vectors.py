# Known-answer vectors (tests/vectors/*.json, made by an independent CPython implementation)
# checked against the firmware core.  MicroPython subset: runs under `micropython` and CPython.

import binascii
import json

from hemsfw import adjust, masking, plan, protocol, protocol_svc, seal

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_VEC = _HERE + "/../vectors/"


def _load(name):
    with open(_VEC + name) as f:
        return json.loads(f.read())


def test_seed_worked_example():
    v = _load("masking.json")["seed_example"]
    masked_sum = bytearray(4 * 3)
    mask_sum = bytearray(4 * 3)
    for home in ("alpha", "beta"):
        masked = masking.add_plan(masking.from_words(v["masks"][home]), v["plans"][home])
        assert masking.words(masked) == v["masked"][home]
        masking.add_words(masked_sum, masked)
        masking.add_words(mask_sum, masking.from_words(v["masks"][home]))
    assert masking.words(masked_sum) == v["masked_sum"]
    assert masking.words(mask_sum) == v["mask_sum"]
    # group total = masked sum - mask sum (mod 2^32): add the two's complement of the mask sum
    neg = masking.from_words([(-w) % 4294967296 for w in masking.words(mask_sum)])
    assert masking.words(masking.add_words(masked_sum, neg)) == v["group_total"]


def test_wrap_around():
    v = _load("masking.json")["wrap"]
    masked = masking.add_plan(masking.from_words(v["mask"]), v["plan"])
    assert masking.words(masked) == v["masked"]
    assert protocol.b64(masked) == v["masked_b64"]
    assert bytes(protocol_svc.unb64(v["masked_b64"], 16)) == bytes(masked)


def test_seed_expansion():
    v = _load("masking.json")["expansion"]
    seed = binascii.unhexlify(v["seed_hex"])
    assert masking.words(masking.expand_seed(seed, v["frames"])) == v["words"]
    t = v["two_brokers"]
    seeds = [binascii.unhexlify(s) for s in t["seeds_hex"]]
    assert masking.words(masking.mask_from_seeds(seeds, t["frames"])) == t["mask"]


def test_sealing():
    v = _load("masking.json")["sealing"]
    key = binascii.unhexlify(v["key_hex"])
    ad = v["ad"].encode()
    blob = seal.seal(key, ad, binascii.unhexlify(v["plaintext_hex"]),
                     binascii.unhexlify(v["nonce_hex"]))
    assert binascii.hexlify(blob).decode() == v["blob_hex"]
    assert binascii.hexlify(seal.open_sealed(key, ad, blob)).decode() == v["plaintext_hex"]
    ka = v["hmac_known_answer"]
    got = seal.hmac_sha256(ka["key"].encode(), ka["msg"].encode())
    assert binascii.hexlify(got).decode() == ka["hex"]
    for bad_ad in (ad + b"x", ad[:-1]):
        try:
            seal.open_sealed(key, bad_ad, blob)
            assert False, "tampered AD accepted"
        except ValueError as e:
            assert str(e) == "bad_mac"
    flipped = bytearray(blob)
    flipped[20] ^= 1
    try:
        seal.open_sealed(key, ad, bytes(flipped))
        assert False, "tampered ciphertext accepted"
    except ValueError as e:
        assert str(e) == "bad_mac"


def test_checksum():
    v = _load("masking.json")["checksum"]
    assert protocol_svc.report_checksum(v["report_ids"]) == v["checksum"]
    rev = list(v["report_ids"])
    rev.reverse()
    assert protocol_svc.report_checksum(rev) == v["checksum"]


def test_adjustment():
    v = _load("masking.json")["adjustment"]
    moves = [(m[0], m[1]) for m in v["moves"]]
    assert plan.apply_adjustment(v["plan"], moves, v["curtail"]) == v["adjusted"]


def _parse(kind, obj, frames):
    if kind == "round":
        return protocol.parse_round(obj)
    if kind == "plan":
        return protocol_svc.parse_plan_report(obj, frames)
    if kind == "mask":
        return protocol_svc.parse_mask_report(obj)
    if kind == "adjustment":
        return adjust.parse_adjustment(obj, frames)
    if kind == "group_request":
        return protocol_svc.parse_group_request(obj, 1000)
    if kind == "capacity":
        return protocol_svc.parse_capacity(obj)
    if kind == "day_capacity":
        return protocol_svc.parse_day_capacity(obj, "2026-11-28")
    if kind == "outcome":
        return protocol_svc.parse_outcome(obj, "2026-11-28")
    raise AssertionError(kind)


def test_valid_messages_parse():
    v = _load("messages.json")
    for kind, obj in v["valid"].items():
        _parse(kind, protocol.decode(json.dumps(obj).encode()), v["frames"])


def test_malformed_messages_rejected_with_reason():
    v = _load("messages.json")
    n = 0
    for case in v["invalid"]:
        try:
            if case["kind"] == "any":
                protocol.decode(case["payload"].encode())
            else:
                obj = dict(v["valid"][case["kind"]])
                for k, val in case["patch"].items():
                    obj[k] = val
                _parse(case["kind"], protocol.decode(json.dumps(obj).encode()), v["frames"])
        except ValueError as e:
            assert str(e) == case["reason"], (case, str(e))
            n += 1
            continue
        raise AssertionError("accepted: " + json.dumps(case))
    assert n == len(v["invalid"])
