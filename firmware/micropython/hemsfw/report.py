# A round announcement taken by the home (hemsfw/home.py on_round): refused, or its plan drawn
# and reported (the masked plan and each mask broker's sealed seed).  Needed once or a few
# times a day, so home.py loads it for an announcement and drops it after (its code is not in
# the heap between rounds).  MicroPython subset only.

import binascii
import gc
import json

from hemsfw import plan, protocol, unload

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any

    from hemsfw.interfaces import Json, Slot


# h: the hemsfw.home.Home taking the round (typed Any: a type-only import would be a cycle)
def take(h: "Any", ann: "Json", wall: float | None, now: float | None) -> "Slot | None":
    """A validated announcement of a round newer than the stored one: None if refused (not
    stored), else the new slot, its report built if the home takes part (Home.on_round stores
    it)."""
    day, rnd = ann["day"], ann["round"]
    why = refuse(h, ann, now)
    if why:
        # not stored: a genuine announcement of the same day and round still counts
        h.log("round", day, rnd, "refused:", why, "(following the own plan)")
        return None
    frames = ann["frames"]
    values, source = plan_for(h, day, frames, ann["quantum_wh"])
    brokers = ann["brokers"]
    status = "reported"
    if wall is not None and wall > ann["deadline"]:
        status = "late"
    else:
        for b in brokers:
            if b not in h.keys:
                status = "no_key"
    new: Slot = {"day": day, "round": rnd, "start": ann["start"], "frame_s": ann["frame_s"],
                 "frames": frames, "quantum_wh": ann["quantum_wh"],
                 "deadline": ann["deadline"], "source": source, "status": status,
                 "report_id": None, "plan": values, "outbox": [], "acked": [], "sent": True,
                 "adjustment": None, "adjusted": None}
    if status == "reported":
        report(h, new, brokers)
    else:
        h.log("round", day, rnd, "not reported:", status, "(following the own plan)")
    return new


def plan_for(h: "Any", day: str, frames: int, quantum_wh: int) -> tuple[list[int], str]:
    # (the day's plan in quanta, its source), the plan recorded in the history.  A function
    # of its own: once it has returned, no stack slot (which the collector scans
    # conservatively) still points at the Wh list or the history it read while the report
    # is built, the round's heap peak.
    if h.planner is None:
        wh, source = plan.resample(h.plan_wh, frames), "config"
    else:
        wh, source = h.planner.plan_for(day, frames)
        h.planner.record(day, wh, source)
    return plan.to_quanta(wh, quantum_wh), source


def refuse(h: "Any", ann: "Json", now: float | None) -> str | None:
    """Why this home will not take part in an announced round, or None.  The broker set is
    the home's own (provisioned), not the announcer's: every named broker must be one of
    the home's, and at least ``min_mask_brokers`` of them (else one colluding broker would
    see every seed).  The day follows the home's clock: a day already over, or more than
    ``days_ahead`` days ahead, is refused, and so is a round beyond the day's limit."""
    brokers = ann["brokers"]
    for b in brokers:
        if b not in h.brokers:
            return "brokers_not_provisioned"
    if len(brokers) < h.min_brokers:
        return "too_few_brokers"
    if ann["round"] > h.max_rounds:
        return "too_many_rounds"
    if now is not None:
        start = ann["start"]
        if start + ann["frames"] * ann["frame_s"] <= now or \
                start > now + (h.days_ahead + 1) * 86400:
            return "day_window"
    return None


def report(h: "Any", new: "Slot", brokers: list[str]) -> None:
    # masking and seal are needed once a day: each is loaded only for its step and dropped
    # right after it, so their code is never in the heap at the same time.
    from hemsfw import masking

    day, rnd, frames = new["day"], new["round"], new["frames"]
    rid = binascii.hexlify(h.urandom(16)).decode()
    seeds = [h.urandom(protocol.SEED_LEN) for _ in brokers]
    proof = None
    if h.rated_w is None:
        masked = masking.add_plan(masking.mask_from_seeds(seeds, frames), new["plan"])
    else:   # the range proof (docs/integrity.md): its code is loaded for this step only
        from hemsfw import flp

        # The proof makes ~1 MB of short-lived 128-bit field elements.  Under the loop's GC
        # threshold (hemsfw/app.py GC_LOOP: a collection per 4 KB allocated) that is hundreds
        # of collections, each sweeping the whole heap: on the unix port's 2 MB heap 0.5 s
        # alone and 1.3-2.6 s per lab home (50 ms collecting only when full), and six homes
        # missed a 4.8 s collection window on a loaded 2-core machine.  A collection costs
        # in proportion to the heap, so collect after a quarter of what is free: on a board's
        # small heap that is about GC_LOOP anyway (collecting only when full was measured:
        # the proof round's smallest 32-bit heap from files 80 -> 93 KB, its results strewn).
        th = getattr(gc, "threshold", None)   # MicroPython only
        was = th() if th is not None else -1
        if th is not None and was > 0:
            th(max(was, gc.mem_free() // 4))   # type: ignore[attr-defined]  # (MicroPython)
        try:
            masked, proof = flp.home_report(h.id, new, rid, h.rated_w, seeds,
                                            h.urandom(2 * flp.SEED_LEN))
        finally:
            if th is not None:
                th(was)
        del flp
        unload("flp")
    del masking            # (the local name too: else the module stays referenced)
    unload("masking")
    # Stored as the encoded JSON text: a re-send after a reboot is byte for byte what was
    # sent first (a dict read back from the file would encode with another key order).
    out = [[protocol.t_plan(h.id), json.dumps(protocol.make_plan_report(
        h.id, day, rnd, rid, h.mag, masked, proof))]]
    del masked, proof
    from hemsfw import seal

    for b, s in zip(brokers, seeds):
        ad = protocol.mask_ad(b, h.id, day, rnd, rid)
        blob = seal.seal(h.keys[b], ad, s, h.urandom(seal.NONCE_LEN))
        out.append([protocol.t_mask(b, h.id),
                    json.dumps(protocol.make_mask_report(h.id, day, rnd, rid, blob))])
    # Only the sealed seeds are kept (in the outbox, until acknowledged); the mask itself
    # never reaches the storage.
    h.phase("sealed")   # the round's code peak (bench/firmware_mem.py samples it)
    del seal
    unload("seal", "hmacsha")
    new["report_id"] = rid
    new["outbox"] = out
    new["acked"] = [0] * len(out)
    new["sent"] = False
