"""Command-line checking shared by every `hems` command: one-line usage errors, value types.

A usage error is one line on stderr and exit status 2, before anything starts (the developers'
guide: arguments are checked before anything starts).  argparse's own ``error`` prints the whole
usage block first; ``Parser`` keeps the one line that says what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["Parser", "UsageError", "bounded_float", "bounded_int", "port"]

EXIT_USAGE = 2


class UsageError(Exception):
    """A value or a combination of values that cannot run; the message is the one line."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def usage_exit(prog: str, message: str) -> NoReturn:
    """The same one line and exit status for a check made after parsing."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def bounded_int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within [lo, hi] (either end open when None)."""

    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {v}")
        return v

    conv.__name__ = "integer"
    return conv


def bounded_float(lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number within [lo, hi] (``lo_open``: strictly above lo)."""

    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"not a finite number: {s!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if lo_open else 'at least'} {lo:g}, got {s}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:g}, got {s}")
        return v

    conv.__name__ = "number"
    return conv


def port(s: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a TCP port: {s!r}") from None
    if not 0 < v < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {s}")
    return v
