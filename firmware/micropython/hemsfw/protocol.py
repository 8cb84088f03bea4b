# Wire protocol hems/v1: topics, payload builders and validators (docs/protocol.md).
#
# Sans-I/O and in the MicroPython subset: the home firmware and the backend services import this
# very module, so both sides validate with the same rules and the test vectors in tests/vectors/
# pin it down.  Every parser raises ValueError(reason) with a short machine-readable reason code;
# the services log and count rejections by that code.
#
# This is the home's half.  What only the services need (group requests and sums, capacity,
# replies, parsing the homes' reports, building rounds and adjustments) is protocol_svc.py,
# which the services import themselves (`from hemsfw import protocol_svc`): a home controller
# never loads it, which keeps ~4 KB of code out of a board's RAM.  The adjustment's parser is
# adjust.parse_adjustment, loaded by the home only while it handles its daily adjustment.  Both
# check their fields with the checks below (int_field, id_field, day_field, check_version).

import binascii
import json

if False:  # types for mypy only (docs/firmware.md, "Types"): no code on a board
    from typing import TypeGuard

    from hemsfw.interfaces import Json

VERSION = 1
PREFIX = "hems/v1"
ID_MAX = 32
REPORT_ID_HEX = 32          # 16 random bytes, hex
MAX_FRAMES = 1440           # one-minute frames over a day
MAX_WH = 0x3FFFFFFF         # plan values stay MicroPython small ints on 32-bit boards (< 2^30)
MAX_MAG = 96
MAX_PAYLOAD = 1 << 20       # a home's message: anything larger is rejected before parsing
# Group requests and group sums between the (authenticated) services name up to every home of
# a round: ~1.3 MB of JSON per 100,000 homes; mosquitto's max_packet_size caps them too.
MAX_GROUP_PAYLOAD = 16 << 20

# ---------------------------------------------------------------- topics


def t_round() -> str:
    return PREFIX + "/round"


def t_plan(home: str) -> str:
    return PREFIX + "/plan/" + home


def t_mask(broker: str, home: str) -> str:
    return PREFIX + "/mask/" + broker + "/" + home


def t_adjust(home: str) -> str:
    return PREFIX + "/adjust/" + home


def t_reply(service: str, home: str) -> str:
    return PREFIX + "/reply/" + service + "/" + home


def t_status(home: str) -> str:
    return PREFIX + "/status/" + home


def t_clock() -> str:
    # Lab only: the accelerated clock's anchor (the lab's stand-in for NTP).
    return PREFIX + "/lab/clock"


def topic_tail(topic: str, family: str) -> list[str] | None:
    """For 'hems/v1/<family>/<a>[/<b>]' return the list of segments after family, else None."""
    head = PREFIX + "/" + family + "/"
    if not topic.startswith(head):
        return None
    return topic[len(head):].split("/")

# ---------------------------------------------------------------- field checks


def valid_id(s: object) -> "TypeGuard[str]":
    """Home, broker and group ids: 1..32 chars of [a-z0-9_-] (safe as a topic level and %u)."""
    if not isinstance(s, str) or not 0 < len(s) <= ID_MAX:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "-" or c == "_"):
            return False
    return True


def int_field(obj: "Json", key: str, lo: int, hi: int) -> int:
    """obj[key], an int in lo..hi (not a bool); else ValueError("bad_<key>")."""
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise ValueError("bad_" + key)
    return v


def id_field(obj: "Json", key: str) -> str:
    """obj[key], a valid id (valid_id); else ValueError("bad_<key>")."""
    v = obj.get(key)
    if not valid_id(v):
        raise ValueError("bad_" + key)
    return v


def day_field(obj: "Json") -> str:
    """obj["day"], an ISO date YYYY-MM-DD; else ValueError("bad_day")."""
    d = obj.get("day")
    # ISO date YYYY-MM-DD; the exact calendar check is not needed for safety, only the shape.
    if not isinstance(d, str) or len(d) != 10 or d[4] != "-" or d[7] != "-":
        raise ValueError("bad_day")
    for i in (0, 1, 2, 3, 5, 6, 8, 9):
        if not "0" <= d[i] <= "9":
            raise ValueError("bad_day")
    return d


def check_version(obj: object) -> None:
    """obj is a dict of protocol VERSION; else ValueError("bad_json" | "bad_version")."""
    if not isinstance(obj, dict):
        raise ValueError("bad_json")
    if obj.get("v") != VERSION:
        raise ValueError("bad_version")


def decode(payload: bytes | str, limit: int = MAX_PAYLOAD) -> "Json":
    """bytes -> dict, or ValueError('too_large' | 'bad_json' | 'bad_version')."""
    if len(payload) > limit:
        raise ValueError("too_large")
    try:
        obj: Json = json.loads(payload)
    except Exception:
        raise ValueError("bad_json")
    check_version(obj)
    return obj


def encode(obj: "Json") -> bytes:
    return json.dumps(obj).encode()

# ---------------------------------------------------------------- vectors


def b64(buf: bytes | bytearray) -> str:
    return binascii.b2a_base64(buf, newline=False).decode()


def int_list(v: object, n: int, lo: int, hi: int, reason: str) -> list[int]:
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(reason)
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool) or x < lo or x > hi:
            raise ValueError(reason)
    return v

# ---------------------------------------------------------------- checksums and AD


def mask_ad(broker: str, home: str, day: str, rnd: int, report_id: str) -> bytes:
    """Associated data a sealed seed is bound to (seal.py)."""
    return ("hems/v1|mask|%s|%s|%s|%d|%s" % (broker, home, day, rnd, report_id)).encode()

# ---------------------------------------------------------------- round announcement (retained)


def parse_round(obj: "Json") -> "Json":
    check_version(obj)
    day_field(obj)
    int_field(obj, "round", 1, 1 << 30)
    int_field(obj, "frames", 1, MAX_FRAMES)
    int_field(obj, "frame_s", 1, 86400)
    int_field(obj, "quantum_wh", 1, 1 << 20)
    int_field(obj, "start", 0, 1 << 40)
    int_field(obj, "deadline", 0, 1 << 40)
    b = obj.get("brokers")
    if not isinstance(b, list) or not 0 < len(b) <= 8:
        raise ValueError("bad_brokers")
    for x in b:
        if not valid_id(x):
            raise ValueError("bad_brokers")
    if len(set(b)) != len(b):
        raise ValueError("bad_brokers")
    return obj

# ---------------------------------------------------------------- home -> coordinator


def make_plan_report(home: str, day: str, rnd: int, report_id: str, mag: int,
                     masked: bytes | bytearray, flp: "Json | None" = None) -> "Json":
    """flp: the range proof's coordinator share (hemsfw/flp.py, docs/integrity.md):
    {"share": b64, "blind": b64 of 32 bytes, "parts": [b64 of 32 bytes per mask broker]}."""
    out = {"v": VERSION, "home": home, "day": day, "round": rnd, "report_id": report_id,
           "mag": mag, "masked": b64(masked)}
    if flp is not None:
        out["flp"] = flp
    return out


# ---------------------------------------------------------------- home -> mask broker


def make_mask_report(home: str, day: str, rnd: int, report_id: str,
                     sealed: bytes) -> "Json":
    return {"v": VERSION, "home": home, "day": day, "round": rnd, "report_id": report_id,
            "sealed": b64(sealed)}


SEED_LEN = 32

