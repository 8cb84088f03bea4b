"""HiGHS plumbing shared by the exact solver and the heuristic's LP guidance: a silent
instance and the column-wise matrix format it takes."""

from __future__ import annotations

import os
import sys
import threading

import highspy
import numpy as np

__all__ = ["new_highs", "to_csc"]

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
