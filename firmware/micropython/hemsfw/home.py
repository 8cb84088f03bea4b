# The home controller's round logic (the seed's HEMS server 20), without any I/O.
#
# Inputs are decoded messages and the time; outputs are (topic, payload bytes) messages to
# publish and the relay state to drive.  Adapters (MQTT client, relay driver, clock, filesystem
# Store) live elsewhere and are passed in.
#
# Two slots, because rounds are planned a day ahead: `round.json` holds the newest round (the lab
# reads plan / adjusted / quantum_wh there) and `prev.json` the previous day's round until that day
# has been played out.  The relay follows whichever slot's day contains `now` (its adjusted plan
# while the adjustment has not expired, else its own plan), else the safe state.
#
# Power-cut safety: a round's report (masked plan + sealed seeds, one report id) is persisted
# *before* anything is published, each message is marked acknowledged (persisted) as soon as its
# PUBACK arrives, and a restart re-sends only the unacknowledged ones, the very same bytes: never a
# second draw, never a second report id.  A PUBACK means only that the broker holds the message; a
# broker that restarts without having saved it loses it (docs/reliability.md).  So each message
# stays in the outbox, `acked` 1, until its service replies for that report id (`acked` 2); the
# runner re-sends such messages (same bytes: the services answer `replay`) after a reconnect and
# after a silence, until the reply or the deadline.  Every write is atomic (store.py).  A round
# announced after its deadline (by the wall clock) is not reported (the coordinator would refuse
# it as "late"): the home just follows its own plan that day.  MicroPython subset only.

import binascii

from hemsfw import plan, protocol, unload

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Protocol

    from hemsfw.interfaces import Json, Log, Slot, Storage, Urandom

    class Planner(Protocol):
        """hemsfw.resident.Resident, as Home uses it."""

        def plan_for(self, day: str, frames: int) -> tuple[list[int], str]: ...
        def record(self, day: str, wh: list[int], source: str) -> None: ...

NEW = "round.json"
PREV = "prev.json"


def _service_of(topic: str) -> str:
    # hems/v1/plan/<home> goes to the coordinator, hems/v1/mask/<broker>/<home> to that broker
    tail = protocol.topic_tail(topic, "mask")
    return "coordinator" if tail is None else tail[0]


def day_end(st: "Slot") -> int:
    return st["start"] + st["frames"] * st["frame_s"]


def iso_day(days: int) -> str:
    """Days since 1970-01-01 -> 'YYYY-MM-DD' (proleptic Gregorian; no time module needed)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02d" % (y, m, d)


class Home:
    def __init__(self, cfg: "Json", store: "Storage", urandom: "Urandom", log: "Log | None" = None,
                 planner: "Planner | None" = None) -> None:
        """cfg: dict with home_id, magnification, plan_wh (list), keys {broker: hex key}.
        planner: object with plan_for(day, frames) -> (Wh list, source) and record(day, wh,
        source) (hemsfw.resident.Resident); None = the config's plan_wh every day."""
        self.id = cfg["home_id"]
        if not protocol.valid_id(self.id):
            raise ValueError("bad home_id")
        self.mag = int(cfg.get("magnification", 1))
        self.plan_wh = cfg["plan_wh"]
        self.keys = {}
        for b, k in cfg.get("keys", {}).items():
            self.keys[b] = binascii.unhexlify(k)
        # provisioned, not announced (config.py checks them; these are its defaults)
        self.brokers: list[str] = cfg.get("mask_brokers") or sorted(self.keys)
        self.min_brokers: int = cfg.get("min_mask_brokers") or len(self.brokers)
        self.max_rounds: int = cfg.get("max_rounds_per_day", 8)
        self.rated_w: int | None = cfg.get("rated_w")   # range proofs (flp.home_report)
        self.days_ahead: int = cfg.get("days_ahead", 1)
        self.store = store
        self.urandom = urandom
        self.log = log or (lambda *a: None)
        self.planner = planner
        # Outside every stored round's day the relay follows the home's own plan for that day
        # (own_at); the lab clock's days exist only as announced: there, the safe state.
        self.own_plan: bool = cfg.get("clock", "system") != "lab"
        self.utc_offset_s: int = 60 * cfg.get("utc_offset_min", 0)
        self.own: tuple[int, int, bytes] | None = None   # (day start, frame_s, on per frame)
        self.phase: Callable[[str], None] = lambda name: None   # test hook (runner: debug_pause_at)
        self.new: Slot | None = store.read(NEW)
        self.prev: Slot | None = store.read(PREV)
        if self.new is None and self.prev is not None:
            # cut between moving round.json to prev.json and writing the new round.json
            store.rename(PREV, NEW)
            self.new, self.prev = self.prev, None

    # ------------------------------------------------------------ the round

    def on_round(self, ann: "Json", wall: float | None = None, now: float | None = None
                 ) -> list[tuple[str, bytes]]:
        """A validated round announcement -> [(topic, payload)] still to publish (maybe none;
        the runner publishes pending() one by one and ack()s each).

        wall: wall-clock epoch s (None = unknown) for the deadline; now: the frame clock (the
        lab's virtual time) to tell whether the previous round's day is still running."""
        day, rnd = ann["day"], ann["round"]
        st = self.new
        if st:
            if day < st["day"] or (day == st["day"] and rnd < st["round"]):
                self.log("round", day, rnd, "is older than the stored one: ignored")
                return []
            if day == st["day"] and rnd == st["round"]:
                return self._out(wall)   # a repeat (retained, reconnect): nothing new
        # The announcement taken (refused, or planned and reported) by code loaded for it only
        # (hemsfw/report.py): a new round comes once or a few times a day.
        from hemsfw import report

        try:
            new = report.take(self, ann, wall, now)
        finally:
            unload("report")
        if new is None:
            return []
        # Day-ahead: keep the running day's round until it has been played out.
        if st and day != st["day"]:
            if now is None or now < day_end(st):
                self.store.rename(NEW, PREV)
                self.prev = st
                if not st.get("sent", True):
                    self.log("dropped the unsent report of", st["day"], "(past its deadline)")
            elif self.prev is not None:
                self.store.remove(PREV)
                self.prev = None
        self.phase("drawn")
        self.store.write(NEW, new)   # persisted before anything is published
        self.new = new
        return self._out(wall)

    def _out(self, wall: float | None) -> list[tuple[str, bytes]]:
        return [(t, p.encode()) for _i, t, p in self.pending(wall)]

    def pending(self, wall: float | None = None, resend: bool = False
                ) -> list[tuple[int, str, str]]:
        """[(index, topic, payload text)] of the newest round's messages the broker has not
        acknowledged yet; with resend, also those it acknowledged but whose service has not
        replied.  None once the deadline has passed (the round is marked late if the report
        never reached the broker).  The text is the stored one: the caller encodes only what it
        publishes (the runner asks every turn; encoding all of them was ~1 KB of garbage)."""
        st = self.new
        if not st or not st.get("outbox"):
            return []
        if wall is not None and wall > st["deadline"]:
            if not st["sent"]:
                self.log("deadline passed before the report was acknowledged: not sending it")
                st["status"] = "late"
                st["sent"] = True
            st["outbox"] = []
            self.store.write(NEW, st)
            return []
        want = 2 if resend else 1
        out = []
        for i in range(len(st["outbox"])):
            if st["acked"][i] < want:
                t, m = st["outbox"][i]
                out.append((i, t, m))
        return out

    def ack(self, i: int) -> None:
        """Message i of the newest round's outbox was acknowledged (PUBACK): persist that."""
        st = self.new
        if not st or not st.get("outbox") or st["acked"][i]:
            return
        st["acked"][i] = 1
        self._settle(st)

    def on_reply(self, service: str, obj: "Json") -> bool:
        """A service's reply on hems/v1/reply/<service>/<home>: the messages of this report
        addressed to that service need no re-sending any more, whatever the status (accepted;
        `replay`: it already holds them; any other reason: re-sending cannot change it).
        Returns True when it confirmed something."""
        st = self.new
        if not st or not st.get("outbox") or obj.get("report_id") != st["report_id"]:
            return False
        hit = False
        for i in range(len(st["outbox"])):
            if st["acked"][i] < 2 and _service_of(st["outbox"][i][0]) == service:
                st["acked"][i] = 2
                hit = True
        if hit:
            self._settle(st)
        return hit

    def _settle(self, st: "Slot") -> None:
        if 0 not in st["acked"]:
            st["sent"] = True          # every message is with the broker
        if min(st["acked"]) == 2:
            st["outbox"] = []          # every service has it: drop the payloads (sealed seeds)
        self.store.write(NEW, st)

    def on_adjustment(self, obj: "Json", now: float | None = None) -> str | None:
        """A decoded adjustment; returns a reason string if ignored, else None.  Once a day:
        hemsfw/adjust.py is in the heap only while it runs."""
        from hemsfw import adjust

        try:
            return adjust.apply(self, obj, now)
        finally:
            unload("adjust")

    # ------------------------------------------------------------ the relay

    def slot_at(self, now: float | None) -> "Slot | None":
        if now is None:
            return None
        for st in (self.new, self.prev):
            if st and st["start"] <= now < day_end(st):
                return st
        return None

    def own_at(self, now: float, safe_state: bool = False) -> tuple[bool, int | None]:
        """No round for the day containing `now` (an outage, a new install, a missed or refused
        announcement): the home's own plan for that day (the planner's, as it would have
        reported it), on the frame grid of the newest stored round shifted by whole days, else
        96 x 15 min from local midnight (utc_offset_min).  No plan for it: the safe state."""
        ref = self.new or self.prev
        if ref:
            base, fs, n = ref["start"], ref["frame_s"], ref["frames"]
        else:
            base, fs, n = -self.utc_offset_s, 900, 96
        start = base + int((now - base) // 86400) * 86400
        own = self.own
        if own is None or own[0] != start or own[1] != fs or len(own[2]) != n:
            day = iso_day((start + 43200) // 86400)   # the local date of a day's midnight
            try:
                if self.planner is None:
                    wh = plan.resample(self.plan_wh, n)
                else:
                    wh = self.planner.plan_for(day, n)[0]
            except ValueError as e:   # a plan that does not fit the day's frames
                self.log("no own plan for", day + ":", e, "(safe state)")
                wh = []
            own = self.own = (start, fs, bytes([1 if v > 0 else 0 for v in wh]))
            self.log("no round for", day + ": following the own plan")
        k = int((now - start) // fs)
        if k >= len(own[2]):
            return safe_state, None
        return own[2][k] > 0, k

    def plan_at(self, now: float | None) -> "tuple[Slot, int, int] | None":
        """(slot, frame index, the frame's value in quanta) at `now`: the stored plan of the slot
        whose day contains now (adjusted while the adjustment holds); None outside any day."""
        st = self.slot_at(now)
        if st is None or now is None:   # (no slot without a time: for mypy)
            return None
        k = int((now - st["start"]) // st["frame_s"])
        p = st.get("adjusted")
        a = st.get("adjustment")
        if p is None or (a and now >= a["expires"]):
            p = st["plan"]
        return st, k, p[k]

    def relay_at(self, now: float | None, safe_state: bool = False) -> tuple[bool, int | None]:
        """(relay on?, frame index or None) at `now` (None = time unknown): on in a frame whose
        plan_at value is above 0 (the meter's budget gate may open it earlier: meter.py); no
        round for the day: the home's own plan (own_at; the lab clock: the safe state); time
        unknown: the safe state."""
        if now is None:
            return safe_state, None
        at = self.plan_at(now)
        if at is None:
            return self.own_at(now, safe_state) if self.own_plan else (safe_state, None)
        return at[2] > 0, at[1]

    def frame_end(self, now: float | None) -> float | None:
        """End (epoch s) of the frame containing now, None outside any planned day."""
        st = self.slot_at(now)
        if st is None or now is None:
            return None
        fs = st["frame_s"]
        return st["start"] + (int((now - st["start"]) // fs) + 1) * fs

    def day_end_at(self, now: float | None) -> int | None:
        st = self.slot_at(now)
        return None if st is None else day_end(st)

    def day_over(self, now: float | None) -> bool:
        """The newest round's day has been played out (lab: exit_after_day)."""
        st = self.new
        return now is not None and st is not None and bool(st) and now >= day_end(st)
