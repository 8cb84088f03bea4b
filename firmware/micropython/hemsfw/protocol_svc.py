# Wire protocol hems/v1, the services' half: what only the coordinator and the mask brokers (and
# the tests) need.  Reached through hemsfw.protocol (its module __getattr__), so callers write
# `protocol.make_group_request(...)` as before; the home firmware never loads this module.
# MicroPython subset only (the vectors test it under both interpreters).

import binascii
import hashlib

from hemsfw.protocol import (
    MAX_FRAMES,
    MAX_MAG,
    PREFIX,
    REPORT_ID_HEX,
    VERSION,
    _day,
    _id,
    _int,
    _version,
    int_list,
    valid_id,
)


def t_capacity():
    return PREFIX + "/capacity"


def t_groupreq(broker):
    return PREFIX + "/groupreq/" + broker


def t_groupsum(broker):
    return PREFIX + "/groupsum/" + broker


def _report_id(obj):
    r = obj.get("report_id")
    if not isinstance(r, str) or len(r) != REPORT_ID_HEX:
        raise ValueError("bad_report_id")
    for c in r:
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
            raise ValueError("bad_report_id")
    return r


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


def report_checksum(report_ids):
    """XOR of SHA-256(report id bytes) over a member set (DAP's batch checksum): order-free."""
    acc = bytearray(32)
    for rid in report_ids:
        d = hashlib.sha256(binascii.unhexlify(rid)).digest()
        for i in range(32):
            acc[i] ^= d[i]
    return binascii.hexlify(acc).decode()


def make_round(day, rnd, frames, frame_s, quantum_wh, start, deadline, brokers):
    return {"v": VERSION, "day": day, "round": rnd, "frames": frames, "frame_s": frame_s,
            "quantum_wh": quantum_wh, "start": start, "deadline": deadline, "brokers": brokers}


def parse_plan_report(obj, frames):
    """Returns (home, day, round, report_id, mag, masked bytes of 4*frames)."""
    _version(obj)
    return (_id(obj, "home"), _day(obj), _int(obj, "round", 1, 1 << 30), _report_id(obj),
            _int(obj, "mag", 1, MAX_MAG), unb64(obj.get("masked"), 4 * frames))

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

def make_adjustment(day, rnd, group, moves, curtail, expires):
    return {"v": VERSION, "day": day, "round": rnd, "group": group,
            "moves": [[f, t] for f, t in moves], "curtail": list(curtail), "expires": expires}


def make_reply(day, rnd, report_id, ok, reason):
    return {"v": VERSION, "day": day, "round": rnd, "report_id": report_id,
            "status": "accepted" if ok else "rejected", "reason": reason}

def make_group_request(req, day, rnd, groups):
    """groups: list of (group id, [member home ids], checksum hex[, [carried members]]).
    Carried members count with their latest released report of an earlier round (the
    checksum covers that report's id): docs/privacy.md, "Over time"."""
    out = []
    for g in groups:
        d = {"id": g[0], "members": g[1], "checksum": g[2]}
        if len(g) > 3 and g[3]:
            d["carried"] = g[3]
        out.append(d)
    return {"v": VERSION, "req": req, "day": day, "round": rnd, "groups": out}


def parse_group_request(obj, max_members):
    """Returns (req, day, round, [(group id, members, checksum, carried members)])."""
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
        carried = g.get("carried", [])
        if not isinstance(carried, list) or len(carried) > len(mem):
            raise ValueError("bad_carried")
        if carried:
            ms = set(mem)
            for h in carried:
                if h not in ms:
                    raise ValueError("bad_carried")
        out.append((gid, mem, c, carried))
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


# A day's own capacity profile (retained on hems/v1/capacity/<day>): the capacity message plus
# its day, which must be the topic's, and where it came from (docs/protocol.md, docs/grid-feed.md).
# hems/v1/capacity stays the default profile of every day without one.


def t_day_capacity(day):
    return PREFIX + "/capacity/" + day


def make_day_capacity(day, frames, capacity_wh, target_wh=None, source=None, events=None,
                      at=None):
    """events: [(event id, modification number)] the profile was built from; at: epoch s."""
    obj = make_capacity(frames, capacity_wh, target_wh)
    obj["day"] = day
    if source is not None:
        obj["source"] = source
    if events is not None:
        obj["events"] = [{"id": i, "mod": m} for i, m in events]
    if at is not None:
        obj["at"] = at
    return obj


def parse_day_capacity(obj, topic_day):
    """Returns (day, frames, capacity, target or None); 'day_mismatch' if the payload's day is
    not `topic_day` (the day its topic names)."""
    n, cap, tgt = parse_capacity(obj)
    day = _day(obj)
    if day != topic_day:
        raise ValueError("day_mismatch")
    src = obj.get("source")
    if src is not None and (not isinstance(src, str) or not 0 < len(src) <= 64):
        raise ValueError("bad_source")
    evs = obj.get("events")
    if evs is not None:
        if not isinstance(evs, list) or len(evs) > 64:
            raise ValueError("bad_events")
        for e in evs:
            if not isinstance(e, dict):
                raise ValueError("bad_events")
            i = e.get("id")
            m = e.get("mod")
            if (not isinstance(i, str) or not 0 < len(i) <= 128 or not isinstance(m, int)
                    or isinstance(m, bool) or m < 0 or m > 1 << 30):
                raise ValueError("bad_events")
    if "at" in obj:
        _int(obj, "at", 0, 1 << 40)
    return day, n, cap, tgt


# A round's outcome for the grid feed (retained, QoS 1, on hems/v1/outcome/<day>, readable by
# the grid only): aggregates only, sums of released group totals, never one home's value.


def t_outcome(day):
    return PREFIX + "/outcome/" + day


OUTCOME_VECTORS = ("capacity_wh", "load_before_wh", "load_after_wh", "reserve_wh")


def make_outcome(day, rnd, frames, frame_s, start, capacity_wh, load_before_wh, load_after_wh,
                 reserve_wh, overload_after_wh, curtailed_wh):
    """reserve_wh: load of homes outside every released total, reserved at their cap."""
    return {"v": VERSION, "day": day, "round": rnd, "frames": frames, "frame_s": frame_s,
            "start": start, "capacity_wh": list(capacity_wh),
            "load_before_wh": list(load_before_wh), "load_after_wh": list(load_after_wh),
            "reserve_wh": list(reserve_wh), "overload_after_wh": overload_after_wh,
            "curtailed_wh": curtailed_wh}


def parse_outcome(obj, topic_day):
    """Returns obj, checked; 'day_mismatch' if its day is not `topic_day`."""
    _version(obj)
    if _day(obj) != topic_day:
        raise ValueError("day_mismatch")
    _int(obj, "round", 1, 1 << 30)
    n = _int(obj, "frames", 1, MAX_FRAMES)
    _int(obj, "frame_s", 1, 86400)
    _int(obj, "start", 0, 1 << 40)
    for k in OUTCOME_VECTORS:
        int_list(obj.get(k), n, 0, 1 << 50, "bad_" + k)
    _int(obj, "overload_after_wh", 0, 1 << 60)
    _int(obj, "curtailed_wh", 0, 1 << 60)
    return obj
