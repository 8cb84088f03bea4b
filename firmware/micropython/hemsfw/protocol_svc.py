# Wire protocol hems/v1, the services' half: what only the coordinator and the mask brokers (and
# the tests) need.  The services import it themselves (`from hemsfw import protocol_svc`); the
# home firmware never loads it (hemsfw/protocol.py is the home's half, whose field checks this
# module shares).  MicroPython subset only (the vectors test it under both interpreters).

import binascii
import hashlib

from hemsfw.protocol import (
    MAX_FRAMES,
    MAX_MAG,
    PREFIX,
    REPORT_ID_HEX,
    VERSION,
    check_version,
    day_field,
    id_field,
    int_field,
    int_list,
    valid_id,
)

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Sequence
    from typing import Any

    from hemsfw.interfaces import Json

    # a group's result: its sum (released) or (reason, the members it names) (refused: the
    # `missing` of missing_members, the `mismatched` of report_mismatch)
    GroupResult = bytes | tuple[str, list[str]]
    # a requested group: (id, members, checksum, carried members, report ids or [])
    GroupEntry = tuple[str, list[str], str, list[str], list[str]]
    # a range-proof request's homes: (home, report id, every party's joint-randomness part)
    FlpHomes = list[tuple[str, str, list[bytes]]]


def t_capacity() -> str:
    return PREFIX + "/capacity"


def t_groupreq(broker: str) -> str:
    return PREFIX + "/groupreq/" + broker


def t_groupsum(broker: str) -> str:
    return PREFIX + "/groupsum/" + broker


def _is_hex(r: str) -> bool:
    for c in r:
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
            return False
    return True


def _report_id(obj: "Json") -> str:
    r = obj.get("report_id")
    if not isinstance(r, str) or len(r) != REPORT_ID_HEX or not _is_hex(r):
        raise ValueError("bad_report_id")
    return r


def unb64(s: object, nbytes: int) -> bytes:
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


def report_checksum(report_ids: "Iterable[str]") -> str:
    """XOR of SHA-256(report id bytes) over a member set (DAP's batch checksum): order-free."""
    acc = bytearray(32)
    for rid in report_ids:
        d = hashlib.sha256(binascii.unhexlify(rid)).digest()
        for i in range(32):
            acc[i] ^= d[i]
    return binascii.hexlify(acc).decode()


def make_round(day: str, rnd: int, frames: int, frame_s: int, quantum_wh: int, start: int,
               deadline: int, brokers: list[str]) -> "Json":
    return {"v": VERSION, "day": day, "round": rnd, "frames": frames, "frame_s": frame_s,
            "quantum_wh": quantum_wh, "start": start, "deadline": deadline, "brokers": brokers}


def parse_plan_report(obj: "Any", frames: int) -> tuple[str, str, int, str, int, bytes]:
    """Returns (home, day, round, report_id, mag, masked bytes of 4*frames)."""
    check_version(obj)
    return (id_field(obj, "home"), day_field(obj), int_field(obj, "round", 1, 1 << 30),
            _report_id(obj), int_field(obj, "mag", 1, MAX_MAG),
            unb64(obj.get("masked"), 4 * frames))

def parse_mask_report(obj: "Any") -> tuple[str, str, int, str, bytes]:
    """Returns (home, day, round, report_id, sealed blob)."""
    check_version(obj)
    s = obj.get("sealed")
    if not isinstance(s, str) or len(s) > 200:
        raise ValueError("bad_sealed")
    try:
        blob = binascii.a2b_base64(s)
    except Exception:
        raise ValueError("bad_sealed")
    return (id_field(obj, "home"), day_field(obj), int_field(obj, "round", 1, 1 << 30),
            _report_id(obj), blob)

def make_adjustment(day: str, rnd: int, group: str, moves: "Iterable[Sequence[int]]",
                    curtail: "Iterable[Any]", expires: int) -> "Json":
    """``curtail``: (frame, keep) pairs (keep/65536 of the frame stays), or bare frames (off)."""
    return {"v": VERSION, "day": day, "round": rnd, "group": group,
            "moves": [[f, t] for f, t in moves],
            "curtail": [c if isinstance(c, int) else [c[0], c[1]] for c in curtail],
            "expires": expires}


def make_reply(day: str | None, rnd: int | None, report_id: str | None, ok: bool,
               reason: str | None) -> "Json":
    return {"v": VERSION, "day": day, "round": rnd, "report_id": report_id,
            "status": "accepted" if ok else "rejected", "reason": reason}

def make_group_request(req: str, day: str, rnd: int,
                       groups: "Iterable[Sequence[Any]]") -> "Json":
    """groups: (group id, [member home ids], checksum hex[, [carried members][, [report ids]]]).
    Carried members count with their latest released report of an earlier round (the checksum
    covers that report's id): docs/privacy.md, "Over time".  Report ids (one per member, in
    member order) ask the broker to name the members whose report id differs from the one it
    holds (``report_mismatch``): the coordinator sends them only after a checksum mismatch."""
    out = []
    for g in groups:
        d = {"id": g[0], "members": g[1], "checksum": g[2]}
        if len(g) > 3 and g[3]:
            d["carried"] = g[3]
        if len(g) > 4 and g[4]:
            d["report_ids"] = g[4]
        out.append(d)
    return {"v": VERSION, "req": req, "day": day, "round": rnd, "groups": out}


def parse_group_request(obj: "Any", max_members: int
                        ) -> "tuple[str, str, int, list[GroupEntry]]":
    """Returns (req, day, round, [(group id, members, checksum, carried members, report ids)])
    (report ids: [] when the request names none)."""
    check_version(obj)
    req = id_field(obj, "req")
    day = day_field(obj)
    rnd = int_field(obj, "round", 1, 1 << 30)
    gs = obj.get("groups")
    if not isinstance(gs, list) or not gs:
        raise ValueError("bad_groups")
    out = []
    total = 0
    ids = set()
    for g in gs:
        if not isinstance(g, dict):
            raise ValueError("bad_groups")
        gid = id_field(g, "id")
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
        rids = g.get("report_ids", [])
        if not isinstance(rids, list) or (rids and len(rids) != len(mem)):
            raise ValueError("bad_report_ids")
        for r in rids:
            if not isinstance(r, str) or len(r) != REPORT_ID_HEX or not _is_hex(r):
                raise ValueError("bad_report_ids")
        out.append((gid, mem, c, carried, rids))
    return req, day, rnd, out


def make_group_sums(req: str, broker: str, day: str, rnd: int,
                    results: "list[Json]") -> "Json":
    """results: list of dicts {"id", "status": "released", "sum": b64} or
    {"id", "status": "refused", "reason", "missing": [...]} (``report_mismatch``:
    "mismatched": [...] instead of "missing")."""
    return {"v": VERSION, "req": req, "broker": broker, "day": day, "round": rnd,
            "results": results}


def parse_group_sums(obj: "Any", frames: int
                     ) -> "tuple[str, str, str, int, dict[str, GroupResult]]":
    """Returns (req, broker, day, round, {gid: bytes sum or (reason, named members)}): the
    members a refusal names are its ``missing`` (``missing_members``) or its ``mismatched``
    (``report_mismatch``)."""
    check_version(obj)
    req = id_field(obj, "req")
    broker = id_field(obj, "broker")
    day = day_field(obj)
    rnd = int_field(obj, "round", 1, 1 << 30)
    rs = obj.get("results")
    if not isinstance(rs, list):
        raise ValueError("bad_results")
    out: dict[str, GroupResult] = {}
    for r in rs:
        if not isinstance(r, dict):
            raise ValueError("bad_results")
        gid = id_field(r, "id")
        st = r.get("status")
        if st == "released":
            out[gid] = unb64(r.get("sum"), 4 * frames)
        elif st == "refused":
            reason = r.get("reason")
            missing = r.get("mismatched" if reason == "report_mismatch" else "missing", [])
            if not isinstance(reason, str) or not isinstance(missing, list):
                raise ValueError("bad_results")
            out[gid] = (reason, missing)
        else:
            raise ValueError("bad_results")
    return req, broker, day, rnd, out

def make_capacity(frames: int, capacity_wh: "Sequence[int]",
                  target_wh: "Sequence[int] | None" = None) -> "Json":
    obj = {"v": VERSION, "frames": frames, "capacity_wh": capacity_wh}
    if target_wh is not None:
        obj["target_wh"] = target_wh
    return obj


def parse_capacity(obj: "Any") -> tuple[int, list[int], list[int] | None]:
    check_version(obj)
    n = int_field(obj, "frames", 1, MAX_FRAMES)
    cap = int_list(obj.get("capacity_wh"), n, 0, 1 << 50, "bad_capacity")
    tgt = obj.get("target_wh")
    if tgt is not None:
        int_list(tgt, n, 0, 1 << 50, "bad_target")
    return n, cap, tgt


# A day's own capacity profile (retained on hems/v1/capacity/<day>): the capacity message plus
# its day, which must be the topic's, and where it came from (docs/protocol.md, docs/grid-feed.md).
# hems/v1/capacity stays the default profile of every day without one.


def t_day_capacity(day: str) -> str:
    return PREFIX + "/capacity/" + day


def make_day_capacity(day: str, frames: int, capacity_wh: "Sequence[int]",
                      target_wh: "Sequence[int] | None" = None, source: str | None = None,
                      events: "Iterable[tuple[str, int]] | None" = None,
                      at: int | None = None) -> "Json":
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


def parse_day_capacity(obj: "Any", topic_day: str
                       ) -> tuple[str, int, list[int], list[int] | None]:
    """Returns (day, frames, capacity, target or None); 'day_mismatch' if the payload's day is
    not `topic_day` (the day its topic names)."""
    n, cap, tgt = parse_capacity(obj)
    day = day_field(obj)
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
        int_field(obj, "at", 0, 1 << 40)
    return day, n, cap, tgt


# A round's outcome for the grid feed (retained, QoS 1, on hems/v1/outcome/<day>, readable by
# the grid only): aggregates only, sums of released group totals, never one home's value.


def t_outcome(day: str) -> str:
    return PREFIX + "/outcome/" + day


OUTCOME_VECTORS = ("capacity_wh", "load_before_wh", "load_after_wh", "reserve_wh")


def make_outcome(day: str, rnd: int, frames: int, frame_s: int, start: int,
                 capacity_wh: "Sequence[int]", load_before_wh: "Sequence[int]",
                 load_after_wh: "Sequence[int]", reserve_wh: "Sequence[int]",
                 overload_after_wh: int, curtailed_wh: int) -> "Json":
    """reserve_wh: load of homes outside every released total, reserved at their cap."""
    return {"v": VERSION, "day": day, "round": rnd, "frames": frames, "frame_s": frame_s,
            "start": start, "capacity_wh": list(capacity_wh),
            "load_before_wh": list(load_before_wh), "load_after_wh": list(load_after_wh),
            "reserve_wh": list(reserve_wh), "overload_after_wh": overload_after_wh,
            "curtailed_wh": curtailed_wh}


def parse_outcome(obj: "Any", topic_day: str) -> "Any":
    """Returns obj, checked; 'day_mismatch' if its day is not `topic_day`."""
    check_version(obj)
    if day_field(obj) != topic_day:
        raise ValueError("day_mismatch")
    int_field(obj, "round", 1, 1 << 30)
    n = int_field(obj, "frames", 1, MAX_FRAMES)
    int_field(obj, "frame_s", 1, 86400)
    int_field(obj, "start", 0, 1 << 40)
    for k in OUTCOME_VECTORS:
        int_list(obj.get(k), n, 0, 1 << 50, "bad_" + k)
    int_field(obj, "overload_after_wh", 0, 1 << 60)
    int_field(obj, "curtailed_wh", 0, 1 << 60)
    return obj


# ---------------------------------------------------------------- range proofs (docs/integrity.md)


def t_flpreq(broker: str) -> str:
    return PREFIX + "/flpreq/" + broker


def t_flpver(broker: str) -> str:
    return PREFIX + "/flpver/" + broker


def parse_flp(obj: "Any", share_bytes: int, brokers: int) -> tuple[bytes, bytes, list[bytes]]:
    """A plan report's "flp" field -> (coordinator share, blind, helper parts);
    ValueError("no_flp") when absent, ("bad_flp") when malformed."""
    f = obj.get("flp") if isinstance(obj, dict) else None
    if f is None:
        raise ValueError("no_flp")
    if not isinstance(f, dict):
        raise ValueError("bad_flp")
    parts = f.get("parts")
    if not isinstance(parts, list) or len(parts) != brokers:
        raise ValueError("bad_flp")
    try:
        return (unb64(f.get("share"), share_bytes), unb64(f.get("blind"), 32),
                [unb64(x, 32) for x in parts])
    except ValueError:
        raise ValueError("bad_flp")


def make_flp_request(req: str, day: str, rnd: int, party: int, quantum_wh: int, frame_s: int,
                     qseed: bytes, homes: "Iterable[Sequence[Any]]") -> "Json":
    """homes: (home, report_id, [parts of every party, b64]).  quantum_wh and frame_s: the
    round's (a home's cap is its rated power x frame_s, in quanta)."""
    return {"v": VERSION, "req": req, "day": day, "round": rnd, "party": party,
            "quantum_wh": quantum_wh, "frame_s": frame_s,
            "qseed": binascii.b2a_base64(qseed, newline=False).decode(),
            "homes": [{"home": h[0], "report_id": h[1], "parts": h[2]} for h in homes]}


def parse_flp_request(obj: "Any", max_homes: int
                      ) -> "tuple[str, str, int, int, int, int, bytes, FlpHomes]":
    """-> (req, day, round, party, quantum_wh, frame_s, qseed, [(home, report_id, [parts])])."""
    check_version(obj)
    req = id_field(obj, "req")
    day = day_field(obj)
    rnd = int_field(obj, "round", 1, 1 << 30)
    party = int_field(obj, "party", 1, 8)
    quantum = int_field(obj, "quantum_wh", 1, 1 << 20)
    frame_s = int_field(obj, "frame_s", 1, 86400)
    qseed = unb64(obj.get("qseed"), 32)
    hs = obj.get("homes")
    if not isinstance(hs, list) or not hs or len(hs) > max_homes:
        raise ValueError("bad_homes")
    out = []
    for x in hs:
        if not isinstance(x, dict):
            raise ValueError("bad_homes")
        ps = x.get("parts")
        if not isinstance(ps, list) or not 2 <= len(ps) <= 9:
            raise ValueError("bad_parts")
        out.append((id_field(x, "home"), _report_id(x), [unb64(p, 32) for p in ps]))
    return req, day, rnd, party, quantum, frame_s, qseed, out


def make_flp_verifiers(req: str, broker: str, day: str, rnd: int,
                       results: "list[Json]") -> "Json":
    """results: {"home", "verifier": b64} or {"home", "reason"}."""
    return {"v": VERSION, "req": req, "broker": broker, "day": day, "round": rnd,
            "results": results}


def parse_flp_verifiers(obj: "Any") -> tuple[str, str, str, int, "dict[str, bytes | str]"]:
    """-> (req, broker, day, round, {home: verifier bytes, or the broker's reason})."""
    check_version(obj)
    req = id_field(obj, "req")
    broker = id_field(obj, "broker")
    day = day_field(obj)
    rnd = int_field(obj, "round", 1, 1 << 30)
    rs = obj.get("results")
    if not isinstance(rs, list):
        raise ValueError("bad_results")
    out: dict[str, bytes | str] = {}
    for r in rs:
        if not isinstance(r, dict):
            raise ValueError("bad_results")
        h = id_field(r, "home")
        v = r.get("verifier")
        if v is None:
            why = r.get("reason")
            if not valid_id(why):
                raise ValueError("bad_results")
            out[h] = why
            continue
        if not isinstance(v, str) or len(v) > 4096:
            raise ValueError("bad_results")
        try:
            out[h] = binascii.a2b_base64(v)
        except Exception:
            raise ValueError("bad_results")
    return req, broker, day, rnd, out
