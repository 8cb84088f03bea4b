"""Running one HiGHS instance more than once (backend/coordinator/adjust/highs.py): what the
exact solver's neighbourhood search and its two stages rely on.  The models are built here,
not by the solver under test."""

from __future__ import annotations

import threading

import highspy
import numpy as np

from backend.coordinator.adjust.highs import Interrupter, new_highs, set_lp_time_limit


def _knapsack(h: highspy.Highs, n: int, seed: int) -> None:
    """max v.x subject to 8 knapsack rows, x binary: no proof of optimality within a second
    at n = 150, proven in milliseconds at n = 12."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 100, size=(8, n)).astype(np.float64)
    v = rng.integers(1, 100, size=n).astype(np.float64)
    h.passModel(n, 8, 8 * n, 1, -1, 0.0, v, np.zeros(n), np.ones(n),
                np.full(8, -highspy.kHighsInf), w.sum(axis=1) / 3,
                (np.arange(n) * 8).astype(np.int32), np.tile(np.arange(8), n).astype(np.int32),
                w.T.ravel(), np.ones(n, dtype=np.int32))


def test_an_lp_after_a_run_that_hit_its_time_limit_gets_a_limit_of_its_own() -> None:
    h = new_highs()
    _knapsack(h, 150, 1)
    h.setOptionValue("time_limit", 0.3)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kTimeLimit
    n = h.getNumCol()
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.uint8))
    set_lp_time_limit(h, 0.2)     # less than the instance's run clock already reads
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal


def test_a_run_after_an_interrupted_one_is_not_interrupted() -> None:
    h = new_highs()
    stop = threading.Event()
    cut = Interrupter(h, stop)
    _knapsack(h, 150, 2)
    h.setOptionValue("time_limit", 30.0)
    cut.stop_at = float("-inf")    # interrupt at the first check
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kInterrupt
    _knapsack(h, 12, 3)
    cut.stop_at = float("inf")
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal


def test_the_stop_event_interrupts_a_run() -> None:
    h = new_highs()
    stop = threading.Event()
    Interrupter(h, stop)
    _knapsack(h, 150, 4)
    h.setOptionValue("time_limit", 30.0)
    stop.set()
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kInterrupt
