# Day plans: the special circuit's planned energy per frame, and the adjustment applied to it.
#
# The seed (JP5300899B2, adjustment unit 15) moves *all* of a group's load in one time frame to
# another frame.  Every member of the group receives the same moves and applies them to its own
# plan, so the group total moves exactly as the coordinator decided.  Semantics (shared with
# backend/coordinator/adjust/model.py): moves apply simultaneously to the original plan, each
# from-frame at most once; curtailment then keeps keep/65536 of each named frame (rounded down;
# a bare frame number, or keep 0, switches it off).  MicroPython subset only.

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterable, Sequence
    from typing import Any

#: a curtail entry [frame, keep] keeps keep / KEEP_SCALE of the frame's adjusted load
KEEP_SCALE = 65536


def to_quanta(plan_wh: list[int], quantum_wh: int) -> list[int]:
    """Wh per frame -> integer quanta of the round's `quantum_wh` (the wire unit).

    Rounds the running total rather than each frame, so the day's energy is kept to within half
    a quantum (rounding frames one by one could lose or invent half a quantum per frame)."""
    out = [0] * len(plan_wh)   # sized once: growing by append needs a larger block on a board
    acc = 0
    prev = 0
    for k in range(len(plan_wh)):
        acc += plan_wh[k]
        q = (acc + quantum_wh // 2) // quantum_wh
        out[k] = q - prev
        prev = q
    return out


def resample(values: list[int], frames: int) -> list[int]:
    """Stretch a plan given at a coarser step (e.g. 24 hourly values) onto `frames` frames.

    Each value is split evenly over its sub-frames, the remainder going to the first ones, so
    the day's total energy is preserved exactly."""
    n = len(values)
    if n == frames:
        return list(values)
    if n == 0 or frames % n:
        raise ValueError("plan length %d does not divide %d frames" % (n, frames))
    r = frames // n
    out = [0] * frames
    for i in range(n):
        q, rem = divmod(values[i], r)
        for j in range(r):
            out[i * r + j] = q + (1 if j < rem else 0)
    return out


def apply_adjustment(plan: list[int], moves: "Iterable[Sequence[int]]",
                     curtail: "Iterable[Any]") -> list[int]:
    """Adjusted plan: moves (from, to) applied simultaneously to `plan`, then each curtail
    entry [frame, keep] leaves out[frame] * keep // KEEP_SCALE (a bare frame: 0).  Rounding
    down here keeps the group's total at or below what the coordinator planned."""
    out = list(plan)
    for f, t in moves:
        out[f] -= plan[f]
        out[t] += plan[f]
    for c in curtail:
        if isinstance(c, int):
            out[c] = 0
        else:
            out[c[0]] = out[c[0]] * c[1] // KEEP_SCALE
    return out


def frame_at(now: float | None, start: int, frame_s: int, frames: int) -> int | None:
    """Index of the frame containing `now`, or None outside the planned day (or time unknown)."""
    if now is None or now < start:
        return None
    k = int((now - start) // frame_s)
    return k if k < frames else None
