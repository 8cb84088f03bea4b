"""HiGHS plumbing shared by the exact solver and the heuristic's LP guidance: a silent
instance, the column-wise matrix format it takes, and two rules for running one instance
more than once (HiGHS 1.16):

* its simplex compares ``time_limit`` with the instance's run clock, which keeps running
  across runs (the MIP solver's limit is per run): an LP solved after earlier runs needs the
  clock's reading added (:func:`set_lp_time_limit`), or it stops at once without a solution;
* an interrupt raised from a callback stays raised for the runs that follow, so the
  callback must lower it again (:class:`Interrupter`), or every later run on the instance
  stops at its first check.

Both were measured on the exact solver's 10-group curtailment day: after one interrupted
neighbourhood step, ~500 more steps of 5 ms each searched nothing, and the relaxation that
guides one kind of step was never solved (docs/adjustment.md, "Running HiGHS more than once")."""

from __future__ import annotations

import os
import sys
import threading
import time

import highspy
import numpy as np

__all__ = ["Interrupter", "new_highs", "set_lp_time_limit", "to_csc"]

_BANNER_LOCK = threading.Lock()
_BANNER_DONE = False


def new_highs() -> highspy.Highs:
    """A silent Highs instance.

    HiGHS prints its banner to the C-level stdout when the first instance of
    the process is created, before any option can be set; that one creation
    runs with file descriptor 1 pointed at /dev/null.
    """
    global _BANNER_DONE
    with _BANNER_LOCK:
        if not _BANNER_DONE:
            _BANNER_DONE = True
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
        else:
            h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    return h


def to_csc(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], n_col: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate triplets (pieces to concatenate) -> HiGHS's column-wise matrix: column start
    offsets (int32, n_col of them), row indices (int32) and values, sorted by column then row."""
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)
    order = np.lexsort((r, c))
    r, c, v = r[order], c[order], v[order]
    starts = np.zeros(n_col + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=n_col), out=starts[1:])
    return starts[:-1].astype(np.int32), r.astype(np.int32), v


def set_lp_time_limit(h: highspy.Highs, seconds: float) -> None:
    """The next LP run on ``h`` may take ``seconds`` (see the module docstring: the simplex's
    limit is read against the instance's run clock, not the run's)."""
    h.setOptionValue("time_limit", h.getRunTime() + max(float(seconds), 1e-3))


class Interrupter:
    """Stops the runs on one instance at ``stop_at`` (a :func:`time.monotonic` value; none
    while it is infinite) or once ``stop`` is set, through the simplex, IPM and MIP interrupt
    callbacks: HiGHS checks its own time limit rarely in some phases (seconds late on a
    200-group day).  The flag is written at every call, lowered too: HiGHS keeps a raised
    one for the runs that follow."""

    def __init__(self, h: highspy.Highs, stop: threading.Event | None = None) -> None:
        self.stop = stop
        self.stop_at = float("inf")
        h.cbSimplexInterrupt.subscribe(self)
        h.cbIpmInterrupt.subscribe(self)
        h.cbMipInterrupt.subscribe(self)

    def __call__(self, e: highspy.highs.HighsCallbackEvent) -> None:
        e.interrupt(time.monotonic() >= self.stop_at
                    or (self.stop is not None and self.stop.is_set()))
