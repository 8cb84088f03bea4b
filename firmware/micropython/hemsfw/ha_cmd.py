# Home Assistant's commands on the resident's own broker (hemsfw/ha.py handle): the relay, the
# mode and the plan set from Home Assistant, and its birth message.  Rare, so loaded for one
# command and dropped right after it (its code is not in the heap between commands).
# MicroPython subset only.

import json

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any


def handle(h: "Any", topic: str, msg: bytes) -> None:
    """One of HA's topics (ha.HA.handle checked it is)."""
    if topic == h.t_birth:
        if bytes(msg) == b"online":
            h.r.log("home assistant online: announcing again")
            h.up(h.link)
        return
    if topic == h.t_relay_set:
        words = bytes(msg).decode().strip().upper().split()
        if not words or words[0] not in ("ON", "OFF", "AUTO", "TOGGLE"):
            h.r.log("local relay command ignored:", msg)
            return
        until = "day" if len(words) > 1 and words[1] == "DAY" else "frame"
        h.r.override(words[0].lower(), until)
        return
    if topic == h.t_mode_set:
        m = bytes(msg).decode().strip().lower()
        if m not in h.MODES:
            h.r.log("local mode command ignored:", msg)
            return
        h.r.override(m, "day")      # a mode holds until the end of the day
        h.poll()
        return
    if topic == h.t_plan_set:
        try:
            obj = json.loads(msg)
        except ValueError:
            obj = None
        why = h.r.resident.on_plan_command(obj)
        h.r.log("local plan", "stored" if why is None else "ignored: " + why)
