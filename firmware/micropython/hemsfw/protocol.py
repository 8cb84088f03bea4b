# Wire protocol hems/v1: topics, payload builders and validators (docs/protocol.md).
#
# Sans-I/O and in the MicroPython subset: the home firmware and the backend services import this
# very module, so both sides validate with the same rules and the test vectors in tests/vectors/
# pin it down.  Every parser raises ValueError(reason) with a short machine-readable reason code;
# the services log and count rejections by that code.

import binascii
import hashlib
import json

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


def t_round():
    return PREFIX + "/round"


def t_capacity():
    return PREFIX + "/capacity"


def t_plan(home):
    return PREFIX + "/plan/" + home


def t_mask(broker, home):
    return PREFIX + "/mask/" + broker + "/" + home


def t_adjust(home):
    return PREFIX + "/adjust/" + home


def t_reply(service, home):
    return PREFIX + "/reply/" + service + "/" + home


def t_status(home):
    return PREFIX + "/status/" + home


def t_groupreq(broker):
    return PREFIX + "/groupreq/" + broker


def t_groupsum(broker):
    return PREFIX + "/groupsum/" + broker


def t_clock():
    # Lab only: the accelerated clock's anchor (the lab's stand-in for NTP).
    return PREFIX + "/lab/clock"


def topic_tail(topic, family):
    """For 'hems/v1/<family>/<a>[/<b>]' return the list of segments after family, else None."""
    head = PREFIX + "/" + family + "/"
    if not topic.startswith(head):
        return None
    return topic[len(head):].split("/")

# ---------------------------------------------------------------- field checks


def valid_id(s):
    """Home, broker and group ids: 1..32 chars of [a-z0-9_-] (safe as a topic level and %u)."""
    if not isinstance(s, str) or not 0 < len(s) <= ID_MAX:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "-" or c == "_"):
            return False
    return True


def _int(obj, key, lo, hi):
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise ValueError("bad_" + key)
    return v


def _id(obj, key):
    v = obj.get(key)
    if not valid_id(v):
        raise ValueError("bad_" + key)
    return v


def _day(obj):
    d = obj.get("day")
    # ISO date YYYY-MM-DD; the exact calendar check is not needed for safety, only the shape.
    if not isinstance(d, str) or len(d) != 10 or d[4] != "-" or d[7] != "-":
        raise ValueError("bad_day")
    for i in (0, 1, 2, 3, 5, 6, 8, 9):
        if not "0" <= d[i] <= "9":
            raise ValueError("bad_day")
    return d


def _report_id(obj):
    r = obj.get("report_id")
    if not isinstance(r, str) or len(r) != REPORT_ID_HEX:
        raise ValueError("bad_report_id")
    for c in r:
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
            raise ValueError("bad_report_id")
    return r


def _version(obj):
    if not isinstance(obj, dict):
        raise ValueError("bad_json")
    if obj.get("v") != VERSION:
        raise ValueError("bad_version")


def decode(payload, limit=MAX_PAYLOAD):
    """bytes -> dict, or ValueError('too_large' | 'bad_json' | 'bad_version')."""
    if len(payload) > limit:
        raise ValueError("too_large")
    try:
        obj = json.loads(payload)
    except Exception:
        raise ValueError("bad_json")
    _version(obj)
    return obj


def encode(obj):
    return json.dumps(obj).encode()

# ---------------------------------------------------------------- vectors


def b64(buf):
    return binascii.b2a_base64(buf).decode().strip()


def unb64(s, nbytes):
    """Base64 of exactly `nbytes` bytes: 'bad_length' for a wrong size, 'bad_vector' for
    anything that is not canonical base64 of that size."""
    if not isinstance(s, str):
        raise ValueError("bad_vector")
    if len(s) != 4 * ((nbytes + 2) // 3):
        raise ValueError("bad_length")
    try:
        raw = binascii.a2b_base64(s)
    except Exception:
        raise ValueError("bad_vector")
    if len(raw) != nbytes:
        raise ValueError("bad_vector")
    return raw


def int_list(v, n, lo, hi, reason):
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(reason)
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool) or x < lo or x > hi:
            raise ValueError(reason)
    return v

# ---------------------------------------------------------------- checksums and AD


def report_checksum(report_ids):
    """XOR of SHA-256(report id bytes) over a member set (DAP's batch checksum): order-free."""
    acc = bytearray(32)
    for rid in report_ids:
        d = hashlib.sha256(binascii.unhexlify(rid)).digest()
        for i in range(32):
            acc[i] ^= d[i]
    return binascii.hexlify(acc).decode()


def mask_ad(broker, home, day, rnd, report_id):
    """Associated data a sealed seed is bound to (seal.py)."""
    return ("hems/v1|mask|%s|%s|%s|%d|%s" % (broker, home, day, rnd, report_id)).encode()

# ---------------------------------------------------------------- round announcement (retained)


def make_round(day, rnd, frames, frame_s, quantum_wh, start, deadline, brokers):
    return {"v": VERSION, "day": day, "round": rnd, "frames": frames, "frame_s": frame_s,
            "quantum_wh": quantum_wh, "start": start, "deadline": deadline, "brokers": brokers}


def parse_round(obj):
    _version(obj)
    _day(obj)
    _int(obj, "round", 1, 1 << 30)
    _int(obj, "frames", 1, MAX_FRAMES)
    _int(obj, "frame_s", 1, 86400)
    _int(obj, "quantum_wh", 1, 1 << 20)
    _int(obj, "start", 0, 1 << 40)
    _int(obj, "deadline", 0, 1 << 40)
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


def make_plan_report(home, day, rnd, report_id, mag, masked):
    return {"v": VERSION, "home": home, "day": day, "round": rnd, "report_id": report_id,
            "mag": mag, "masked": b64(masked)}


def parse_plan_report(obj, frames):
    """Returns (home, day, round, report_id, mag, masked bytes of 4*frames)."""
    _version(obj)
    return (_id(obj, "home"), _day(obj), _int(obj, "round", 1, 1 << 30), _report_id(obj),
            _int(obj, "mag", 1, MAX_MAG), unb64(obj.get("masked"), 4 * frames))

# ---------------------------------------------------------------- home -> mask broker


def make_mask_report(home, day, rnd, report_id, sealed):
    return {"v": VERSION, "home": home, "day": day, "round": rnd, "report_id": report_id,
            "sealed": b64(sealed)}


SEED_LEN = 32


def parse_mask_report(obj):
    """Returns (home, day, round, report_id, sealed blob)."""
    _version(obj)
    s = obj.get("sealed")
    if not isinstance(s, str) or len(s) > 200:
        raise ValueError("bad_sealed")
    try:
        blob = binascii.a2b_base64(s)
    except Exception:
        raise ValueError("bad_sealed")
    return (_id(obj, "home"), _day(obj), _int(obj, "round", 1, 1 << 30), _report_id(obj), blob)

# ---------------------------------------------------------------- coordinator -> home


def make_adjustment(day, rnd, group, moves, curtail, expires):
    return {"v": VERSION, "day": day, "round": rnd, "group": group,
            "moves": [[f, t] for f, t in moves], "curtail": list(curtail), "expires": expires}


def parse_adjustment(obj, frames):
    """Returns (day, round, group, moves [(from, to)], curtail [frames], expires)."""
    _version(obj)
    day = _day(obj)
    rnd = _int(obj, "round", 1, 1 << 30)
    group = _id(obj, "group")
    mv = obj.get("moves")
    if not isinstance(mv, list) or len(mv) > frames:
        raise ValueError("bad_moves")
    moves = []
    seen = set()
    for m in mv:
        int_list(m, 2, 0, frames - 1, "bad_moves")
        if m[0] == m[1] or m[0] in seen:
            raise ValueError("bad_moves")
        seen.add(m[0])
        moves.append((m[0], m[1]))
    cu = obj.get("curtail")
    if not isinstance(cu, list) or len(cu) > frames:
        raise ValueError("bad_curtail")
    int_list(cu, len(cu), 0, frames - 1, "bad_curtail")
    return day, rnd, group, moves, cu, _int(obj, "expires", 0, 1 << 40)

# ---------------------------------------------------------------- service replies to a home


def make_reply(day, rnd, report_id, ok, reason):
    return {"v": VERSION, "day": day, "round": rnd, "report_id": report_id,
            "status": "accepted" if ok else "rejected", "reason": reason}

# ---------------------------------------------------------------- coordinator <-> mask broker


def make_group_request(req, day, rnd, groups):
    """groups: list of (group id, [member home ids], checksum hex)."""
    return {"v": VERSION, "req": req, "day": day, "round": rnd,
            "groups": [{"id": g, "members": m, "checksum": c} for g, m, c in groups]}


def parse_group_request(obj, max_members):
    """Returns (req, day, round, [(group id, members, checksum)])."""
    _version(obj)
    req = _id(obj, "req")
    day = _day(obj)
    rnd = _int(obj, "round", 1, 1 << 30)
    gs = obj.get("groups")
    if not isinstance(gs, list) or not gs:
        raise ValueError("bad_groups")
    out = []
    total = 0
    ids = set()
    for g in gs:
        if not isinstance(g, dict):
            raise ValueError("bad_groups")
        gid = _id(g, "id")
        if gid in ids:
            raise ValueError("duplicate_group")
        ids.add(gid)
        mem = g.get("members")
        if not isinstance(mem, list):
            raise ValueError("bad_members")
        total += len(mem)
        if total > max_members:
            raise ValueError("too_many_members")
        for h in mem:
            if not valid_id(h):
                raise ValueError("bad_members")
        c = g.get("checksum")
        if not isinstance(c, str) or len(c) != 64:
            raise ValueError("bad_checksum")
        out.append((gid, mem, c))
    return req, day, rnd, out


def make_group_sums(req, broker, day, rnd, results):
    """results: list of dicts {"id", "status": "released", "sum": b64} or
    {"id", "status": "refused", "reason", "missing": [...]}."""
    return {"v": VERSION, "req": req, "broker": broker, "day": day, "round": rnd,
            "results": results}


def parse_group_sums(obj, frames):
    """Returns (req, broker, day, round, {gid: bytes sum or (reason, missing)})."""
    _version(obj)
    req = _id(obj, "req")
    broker = _id(obj, "broker")
    day = _day(obj)
    rnd = _int(obj, "round", 1, 1 << 30)
    rs = obj.get("results")
    if not isinstance(rs, list):
        raise ValueError("bad_results")
    out = {}
    for r in rs:
        if not isinstance(r, dict):
            raise ValueError("bad_results")
        gid = _id(r, "id")
        st = r.get("status")
        if st == "released":
            out[gid] = unb64(r.get("sum"), 4 * frames)
        elif st == "refused":
            reason = r.get("reason")
            missing = r.get("missing", [])
            if not isinstance(reason, str) or not isinstance(missing, list):
                raise ValueError("bad_results")
            out[gid] = (reason, missing)
        else:
            raise ValueError("bad_results")
    return req, broker, day, rnd, out

# ---------------------------------------------------------------- capacity (retained)


def make_capacity(frames, capacity_wh, target_wh=None):
    obj = {"v": VERSION, "frames": frames, "capacity_wh": capacity_wh}
    if target_wh is not None:
        obj["target_wh"] = target_wh
    return obj


def parse_capacity(obj):
    _version(obj)
    n = _int(obj, "frames", 1, MAX_FRAMES)
    cap = int_list(obj.get("capacity_wh"), n, 0, 1 << 50, "bad_capacity")
    tgt = obj.get("target_wh")
    if tgt is not None:
        int_list(tgt, n, 0, 1 << 50, "bad_target")
    return n, cap, tgt
