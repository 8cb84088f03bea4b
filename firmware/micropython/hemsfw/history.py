# A compact per-weekday history of the special circuit's days, and the next-day prediction.  What
# a day's sample is comes from hemsfw/resident.py: with a meter, the day's metered consumption
# (or the resident's explicit plan for it); without one, the plan used.  "Plan" below means that.
#
# One entry per weekday (Monday = 0 .. Sunday = 6), each the exponentially weighted moving
# average (EWMA) of the plans of that weekday, in Wh per frame, kept as integers scaled by SCALE
# (fixed point: no floats, which are single precision on boards):
#
#     h_0 = x_0                      (the first plan recorded for that weekday)
#     h_n = h_(n-1) + alpha * (x_n - h_(n-1))      alpha = alpha_pct / 100, default 25 %
#
# so the weight of a plan n weeks old is alpha * (1 - alpha)^n (25 %: 25, 19, 14, 11, ... %): a
# resident's new habit dominates after about three weeks and an odd day fades.  The prediction
# for a day is h of its weekday, rounded to whole Wh.
#
# One file per weekday, so that a round reads and rewrites only its own weekday (frames integers,
# ~0.8 KB of list for 96 frames on a 64-bit port) and never the whole week (~6 KB of lists, which
# did not fit the round's 64 KB heap); nothing of it is kept in RAM between rounds:
#
#   history0.json (Monday) .. history6.json (Sunday) = {"n": 3, "last": "2026-11-23", "h": [...]}
#
# A day is recorded at most once ("last" guards against a restart recording it again).  Older
# firmware kept all seven in one history.json: migrate() splits it, once, at boot (hemsfw/app.py,
# while the heap is still nearly empty).  MicroPython subset only.

OLD_FILE = "history.json"   # all weekdays in one file (before the split)
SCALE = 16
N_MAX = 10000

_T = (0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4)

if False:  # types for mypy only (docs/firmware.md, "Types")
    from hemsfw.interfaces import Storage


def weekday(day: str) -> int:
    """ISO date 'YYYY-MM-DD' -> 0 (Monday) .. 6 (Sunday), like datetime.date.weekday()."""
    y, m, d = int(day[0:4]), int(day[5:7]), int(day[8:10])
    if m < 3:
        y -= 1
    sunday0 = (y + y // 4 - y // 100 + y // 400 + _T[m - 1] + d) % 7   # Sakamoto
    return (sunday0 + 6) % 7


def update(h: list[int], x: list[int], alpha_pct: int) -> list[int]:
    """One EWMA step in place: h (scaled ints) towards x (Wh ints); returns h."""
    for i in range(len(h)):
        d = x[i] * SCALE - h[i]
        h[i] += (d * alpha_pct + 50) // 100
    return h


def _file(w: int) -> str:
    return "history%d.json" % w


def record(store: "Storage", day: str, wh: list[int], alpha_pct: int = 25) -> bool:
    """Add day's plan (Wh per frame) to its weekday's average; False if already recorded."""
    name = _file(weekday(day))
    e = store.read(name)
    if e and e.get("last", "") >= day:
        return False
    if not e or len(e.get("h", ())) != len(wh):
        e = {"n": 0, "h": [v * SCALE for v in wh]}   # first sample (or the frame count changed)
    else:
        update(e["h"], wh, alpha_pct)
    e["n"] = min(e["n"] + 1, N_MAX)
    e["last"] = day
    store.write(name, e)
    return True


def predict(store: "Storage", day: str, frames: int, min_days: int = 1) -> list[int] | None:
    """The predicted plan for `day` (Wh per frame, `frames` values), or None without enough
    history for its weekday (fewer than min_days recorded) or at another frame resolution."""
    e = store.read(_file(weekday(day)))
    if not e or e.get("n", 0) < min_days or len(e["h"]) != frames:
        return None
    half = SCALE // 2
    return [(v + half) // SCALE if v > 0 else 0 for v in e["h"]]


def migrate(store: "Storage") -> None:
    """Split an old all-weekdays history.json into the per-weekday files (a weekday file that
    exists already is newer and wins), then remove it.  Nothing to do without the old file."""
    hs = store.read(OLD_FILE)
    if isinstance(hs, dict):
        for w in range(7):
            e = hs.get(str(w))
            if isinstance(e, dict) and store.read(_file(w)) is None:
                store.write(_file(w), e)
    store.remove(OLD_FILE)
