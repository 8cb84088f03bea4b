# The day's adjustment from the coordinator: check it (the wire format, docs/protocol.md) and
# apply it to the stored round it is for.  Once a day, so this code is loaded only while an
# adjustment is handled (hemsfw.home.Home.on_adjustment) and dropped right after: it is never in
# the heap during the round's report, the firmware's heap peak.  parse_adjustment is part of
# the wire protocol all the same (docs/protocol.md): the tests and the vectors call it here.
# MicroPython subset only.

from hemsfw import plan
from hemsfw.protocol import check_version, day_field, id_field, int_field, int_list

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import HomeView, Json


def parse_adjustment(obj: "Any", frames: int
                     ) -> "tuple[str, int, str, list[tuple[int, int]], list[Any], int]":
    """Returns (day, round, group, moves [(from, to)], curtail [[frame, keep] or frame],
    expires)."""
    check_version(obj)
    day = day_field(obj)
    rnd = int_field(obj, "round", 1, 1 << 30)
    group = id_field(obj, "group")
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
    seen = set()
    for c in cu:   # [frame, keep] (keep/65536 of the frame stays) or a bare frame (keep 0)
        if isinstance(c, list):
            int_list(c, 2, 0, plan.KEEP_SCALE - 1, "bad_curtail")
            f = c[0]
            int_list([f], 1, 0, frames - 1, "bad_curtail")
        else:
            int_list([c], 1, 0, frames - 1, "bad_curtail")
            f = c
        if f in seen:
            raise ValueError("bad_curtail")
        seen.add(f)
    return day, rnd, group, moves, cu, int_field(obj, "expires", 0, 1 << 40)


def apply(home: "HomeView", obj: "Json", now: float | None) -> str | None:
    """Home.on_adjustment: a decoded adjustment for one of home's two rounds (hemsfw/home.py);
    returns a reason string if ignored, else None (applied and persisted, or a redelivery)."""
    slots = [s for s in (home.new, home.prev) if s]
    if not slots:
        return "no_plan"
    st = None
    for s in slots:
        if obj.get("day") == s["day"] and obj.get("round") == s["round"]:
            st = s
    try:
        _d, _r, group, moves, curtail, expires = parse_adjustment(obj, (st or slots[0])["frames"])
    except ValueError as e:
        return str(e)
    if st is None:
        return "other_round"
    if st.get("status") != "reported":
        return "not_reported"
    if now is not None and now >= expires:
        return "expired"
    adj = {"group": group, "moves": [list(m) for m in moves], "curtail": curtail,
           "expires": expires}
    if st.get("adjustment") == adj:
        return None   # a redelivery: already applied and stored
    st["adjustment"] = adj
    st["adjusted"] = plan.apply_adjustment(st["plan"], moves, curtail)
    home.store.write("round.json" if st is home.new else "prev.json", st)
    return None
