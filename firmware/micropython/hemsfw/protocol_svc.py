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

    # a group's result: its sum (released) or (reason, missing homes) (refused)
    GroupResult = bytes | tuple[str, list[str]]


def t_capacity() -> str:
    return PREFIX + "/capacity"


def t_groupreq(broker: str) -> str:
    return PREFIX + "/groupreq/" + broker


def t_groupsum(broker: str) -> str:
    return PREFIX + "/groupsum/" + broker


def _report_id(obj: "Json") -> str:
    r = obj.get("report_id")
    if not isinstance(r, str) or len(r) != REPORT_ID_HEX:
        raise ValueError("bad_report_id")
    for c in r:
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
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
                    curtail: "Iterable[int]", expires: int) -> "Json":
    return {"v": VERSION, "day": day, "round": rnd, "group": group,
            "moves": [[f, t] for f, t in moves], "curtail": list(curtail), "expires": expires}


def make_reply(day: str | None, rnd: int | None, report_id: str | None, ok: bool,
               reason: str | None) -> "Json":
    return {"v": VERSION, "day": day, "round": rnd, "report_id": report_id,
            "status": "accepted" if ok else "rejected", "reason": reason}

def make_group_request(req: str, day: str, rnd: int,
                       groups: "Iterable[Sequence[Any]]") -> "Json":
    """groups: (group id, [member home ids], checksum hex) triples."""
    return {"v": VERSION, "req": req, "day": day, "round": rnd,
            "groups": [{"id": g, "members": m, "checksum": c} for g, m, c in groups]}


def parse_group_request(obj: "Any", max_members: int
                        ) -> tuple[str, str, int, list[tuple[str, list[str], str]]]:
    """Returns (req, day, round, [(group id, members, checksum)])."""
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
        out.append((gid, mem, c))
    return req, day, rnd, out


def make_group_sums(req: str, broker: str, day: str, rnd: int,
                    results: "list[Json]") -> "Json":
    """results: list of dicts {"id", "status": "released", "sum": b64} or
    {"id", "status": "refused", "reason", "missing": [...]}."""
    return {"v": VERSION, "req": req, "broker": broker, "day": day, "round": rnd,
            "results": results}


def parse_group_sums(obj: "Any", frames: int
                     ) -> "tuple[str, str, str, int, dict[str, GroupResult]]":
    """Returns (req, broker, day, round, {gid: bytes sum or (reason, missing)})."""
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
            missing = r.get("missing", [])
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
