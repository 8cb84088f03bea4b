# The resident's side of the controller: where the day plan comes from, and the local override.
#
# Plans (what the home reports and then follows), in this order for a day D:
#   1. a plan the resident set for day D on the local command topic ({"day": D, "plan_wh": [...]})
#   2. planner mode "history": the per-weekday EWMA prediction (hemsfw/history.py), once the
#      weekday has at least min_days recorded plans
#   3. the resident's default plan (local command without "day"), else the config file's plan_wh
# What the history learns (per weekday and frame): with a meter (config "meter"), the metered
# consumption of each day played out (learn(), from hemsfw/meter.py) and the resident's explicit
# plan for a day (1.), never the firmware's own plans; without a meter, every plan used except a
# prediction itself (nothing is measured, so it learns what the resident said).
# plan_wh may be given at any resolution that divides the round's frames (e.g. 24 hourly values
# for 96 frames); values are Wh per given step.
#
# Override (the resident's right, docs/firmware.md): from the button, the page or the local
# switch, the relay is held on or off until the end of the current frame ("frame") or of the
# planned day ("day"), whatever the plan or the adjustment says; "auto" ends it at once.  It
# survives a reboot (resident.json).  Set while the time is unknown, it holds until the time is
# known.  MicroPython subset only.

from hemsfw import plan, protocol, unload

if False:  # types for mypy only (docs/firmware.md, "Types")
    from typing import Any, TypeGuard

    from hemsfw.interfaces import Json, Log, Override, Storage

FILE = "resident.json"
MAX_DAYS = 7   # future day plans kept


def _plan_ok(p: object) -> "TypeGuard[list[int]]":
    if not isinstance(p, list) or not 0 < len(p) <= protocol.MAX_FRAMES:
        return False
    for v in p:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= protocol.MAX_WH:
            return False
    return True


class Resident:
    def __init__(self, cfg: "Json", store: "Storage", log: "Log | None" = None) -> None:
        self.store = store
        self.log = log or (lambda *a: None)
        self.cfg_plan = cfg["plan_wh"]
        pl = cfg.get("planner") or {}
        self.mode = pl.get("mode", "config")
        self.alpha = pl.get("alpha_pct", 25)
        self.min_days = pl.get("min_days", 1)
        self.metered = bool(cfg.get("meter"))
        d = store.read(FILE) or {}
        self.default: list[int] | None = d.get("default")
        self.days: dict[str, list[int]] = d.get("days") or {}
        self.ovr: Override | None = d.get("override")   # {"on": bool, "until": epoch s or None}

    def _save(self) -> None:
        self.store.write(FILE, {"default": self.default, "days": self.days,
                                "override": self.ovr})

    # ------------------------------------------------------------ plans

    def plan_for(self, day: str, frames: int) -> tuple[list[int], str]:
        """(plan in Wh per frame, source) for `day` at `frames` frames."""
        p = self.days.get(day)
        if p:
            return plan.resample(p, frames), "resident_day"
        if self.mode == "history":
            from hemsfw import history

            h = history.predict(self.store, day, frames, self.min_days)
            unload("history")
            if h is not None:
                return h, "history"
        if self.default:
            return plan.resample(self.default, frames), "resident"
        return plan.resample(self.cfg_plan, frames), "config"

    def record(self, day: str, wh: list[int], source: str) -> None:
        """The plan for `day` is fixed (its round was planned): learn from it, forget older
        day plans."""
        old = [d for d in self.days if d <= day]
        if old:
            for d in old:
                del self.days[d]
            self._save()
        if source == "resident_day" or (source != "history" and not self.metered):
            self.learn(day, wh)

    def learn(self, day: str, wh: list[int]) -> None:
        """Add a day's consumption (Wh per frame) to its weekday's history: the metered day
        (hemsfw/meter.py) or the resident's explicit plan; a day is learnt at most once."""
        from hemsfw import history

        history.record(self.store, day, wh, self.alpha)
        unload("history")

    def on_plan_command(self, obj: "Any") -> str | None:
        """{"plan_wh": [...], "day": "YYYY-MM-DD" (optional)}; returns None or a reason."""
        if not isinstance(obj, dict):
            return "bad_json"
        p = obj.get("plan_wh")
        if not _plan_ok(p):
            return "bad_plan_wh"
        day = obj.get("day")
        if day is None:
            self.default = p
        else:
            try:
                protocol.day_field(obj)
            except ValueError as e:
                return str(e)
            self.days[day] = p
            while len(self.days) > MAX_DAYS:
                del self.days[min(self.days)]
        self._save()
        return None

    # ------------------------------------------------------------ override

    def set_override(self, on: bool | None, until: float | None) -> None:
        """Hold the relay `on` (bool) until epoch `until` (None: until the time is known);
        on=None clears the override."""
        self.ovr = None if on is None else {"on": bool(on), "until": until}
        self._save()

    def override(self, now: float | None) -> bool | None:
        """The overriding relay state at `now`, or None (follow the plan)."""
        o = self.ovr
        if o is None:
            return None
        u = o["until"]
        if now is not None and (u is None or now >= u):
            self.ovr = None
            self._save()
            self.log("override ended")
            return None
        return o["on"]
