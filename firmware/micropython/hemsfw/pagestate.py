# What the resident's page shows, as a dict (GET /state.json, and what hemsfw/webpage.py draws),
# with the grid's adjustment in words.  hemsfw/webreq.py loads this module for a request that shows
# the page or the state, takes the state and unloads it before the page's own code
# (webpage.py) loads: the two are never in the heap together (docs/benchmarks.md, Firmware
# memory).  MicroPython subset only.

from hemsfw.clock import hhmm

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Json, Slot
    from hemsfw.runner import Runner


def _slot(r: "Runner") -> "Slot | None":
    h = r.home
    return h.slot_at(r.clock.now()) or h.new


def state(r: "Runner", wh: bool = False) -> "Json":
    """What the page shows, as a dict; wh: as GET /state.json gives it, the plans in Wh
    (planned_wh, adjusted_wh).  Else the page's: the stored round's own lists, in quanta of
    quantum_wh (plan, adjusted), which the page scales as it draws them: two copies of a 96-frame
    plan were ~1 KB of heap at the page's peak (docs/benchmarks.md, Firmware memory)."""
    st = _slot(r)
    on, frame = r.state
    out: Json = {"home": r.id, "relay": "on" if on else "off", "frame": frame,
                 "online": r.main.online, "override": r.resident.ovr, "day": None}
    if st:
        q = st["quantum_wh"]
        adj = st.get("adjusted") or st["plan"]
        out["day"] = st["day"]
        out["round"] = st["round"]
        out["status"] = st.get("status")
        if wh:
            out["planned_wh"] = [v * q for v in st["plan"]]
            out["adjusted_wh"] = [v * q for v in adj]
        else:
            out["plan"], out["adjusted"], out["quantum_wh"] = st["plan"], adj, q
        out["frame_s"] = st["frame_s"]
        out["start"] = st["start"]
        out["adjustment"] = explain(st.get("adjustment"), st["frame_s"], r.clock.now())
        m = r.meter   # the special circuit's meter (hemsfw/meter.py), if it has one
        if m is not None and m.meter.day == st["day"]:
            out["metered_wh"] = m.meter.today_wh()
            out["meter"] = m.budget.state
    return out


def _runs(frames: "list[int]") -> "list[tuple[int, int]]":
    """Sorted frame indices -> [(first, count)] of consecutive runs."""
    out: list[tuple[int, int]] = []
    for k in frames:
        if out and out[-1][0] + out[-1][1] == k:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


def explain(adj: "Json | None", frame_s: int, now: float | None = None) -> "list[str]":
    """The grid's adjustment in words, one sentence per run of frames moved by the same
    shift ("The grid moved 19:00-19:45 to 20:30-21:15.") and per run cut."""
    if not adj:
        return ["No adjustment from the grid: the relay follows your plan."]
    out = []
    if now is not None and now >= adj["expires"]:
        out.append("The grid's adjustment has expired: the relay follows your plan.")
    mv = sorted([(m[0], m[1]) for m in adj["moves"]])
    i = 0
    while i < len(mv):
        j = i
        while j + 1 < len(mv) and mv[j + 1][0] == mv[j][0] + 1 and \
                mv[j + 1][1] == mv[j][1] + 1:
            j += 1
        n = j - i + 1
        f, t = mv[i]
        out.append("The grid moved %s-%s to %s-%s." % (
            hhmm(f * frame_s), hhmm((f + n) * frame_s), hhmm(t * frame_s),
            hhmm((t + n) * frame_s)))
        i = j + 1
    for f, n in _runs(sorted(adj["curtail"])):
        out.append("The grid cut %s-%s: the circuit gets no power then." % (
            hhmm(f * frame_s), hhmm((f + n) * frame_s)))
    return out
