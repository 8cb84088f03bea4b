"""An auditor's check of everything released, independent of the release rule (release.py).

Takes released groups as 0/1 combinations of homes (one unknown per home: the worst case where
every home's plan repeats exactly, day after day) and answers, with exact rational arithmetic,
whether any unit vector ``e_h`` (one home's plan) or any difference ``e_h - e_g`` (two homes'
plans against each other) lies in their linear span, i.e. whether *some* linear combination of
the released sums isolates a home.  release.py's atom rule is a sufficient condition for "no";
this is the definition, so it can catch a rule (or a broker) that is wrong.

Method: the rows are brought to reduced row echelon form over the rationals (sparse, one row at a
time).  A vector ``v`` lies in the row space iff ``N^T v = 0`` for a basis ``N`` of the null space;
with pivot columns ``P`` and free columns ``F``, row ``h`` of ``N`` is the unit vector of ``h`` if
``h`` is free and ``-R[h, F]`` if ``h`` is a pivot.  So ``e_h`` is in the span iff that row is zero,
and ``e_h - e_g`` iff the rows of ``h`` and ``g`` are equal: one pass, no pair enumeration.

    python -m backend.mask_broker.audit mb1-releases.jsonl [mb2-releases.jsonl ...]

prints a JSON verdict and exits 1 if any home or pair is isolated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

Row = dict[int, Fraction]


@dataclass
class Span:
    """The row space of the sets added so far, in reduced row echelon form."""

    homes: dict[str, int] = field(default_factory=dict)  # home id -> column
    rows: dict[int, Row] = field(default_factory=dict)  # pivot column -> its row
    sets: int = 0

    def add(self, members: Collection[str]) -> bool:
        """Add one released set; True if it was not in the span already."""
        self.sets += 1
        v: Row = {}
        for h in members:
            c = self.homes.setdefault(h, len(self.homes))
            v[c] = v.get(c, Fraction(0)) + 1
        # Reduce by every pivot row it touches: a reduced row is zero on the other pivots,
        # so one pass suffices.
        for p in [c for c in v if c in self.rows]:
            f = v.get(p)
            if f:
                for c, x in self.rows[p].items():
                    y = v.get(c, Fraction(0)) - f * x
                    if y:
                        v[c] = y
                    else:
                        v.pop(c, None)
        v = {c: x for c, x in v.items() if x}
        if not v:
            return False
        p = min(v)
        lead = v[p]
        v = {c: x / lead for c, x in v.items()}
        for row in self.rows.values():  # keep the form reduced: clear column p elsewhere
            f = row.get(p)
            if f:
                for c, x in v.items():
                    y = row.get(c, Fraction(0)) - f * x
                    if y:
                        row[c] = y
                    else:
                        row.pop(c, None)
        self.rows[p] = v
        return True

    @property
    def rank(self) -> int:
        return len(self.rows)

    def isolated(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(homes h with e_h in the span, pairs (h, g) with e_h - e_g in the span)."""
        name = {c: h for h, c in self.homes.items()}
        null_row: dict[int, frozenset[tuple[int, Fraction]]] = {}
        for c in name:
            row = self.rows.get(c)
            if row is None:  # a free column: its own unit vector in N
                null_row[c] = frozenset({(c, Fraction(1))})
            else:
                null_row[c] = frozenset((f, -x) for f, x in row.items() if f != c)
        single = sorted(name[c] for c, r in null_row.items() if not r)
        by_row: dict[frozenset[tuple[int, Fraction]], list[str]] = {}
        for c, r in null_row.items():
            if r:
                by_row.setdefault(r, []).append(name[c])
        pairs = sorted((a, b) for hs in by_row.values() if len(hs) > 1
                       for i, a in enumerate(sorted(hs)) for b in sorted(hs)[i + 1:])
        return single, pairs


def audit(sets: Iterable[Collection[str]]) -> Span:
    span = Span()
    for s in sets:
        span.add(s)
    return span


def verdict(span: Span) -> dict[str, Any]:
    single, pairs = span.isolated()
    exposed = sorted(set(single) | {h for p in pairs for h in p})
    return {"sets": span.sets, "homes": len(span.homes), "rank": span.rank,
            "isolated_homes": single, "isolated_pairs": [list(p) for p in pairs],
            "exposed_homes": exposed}


def main(argv: list[str] | None = None) -> int:
    from .release_log import read_release_log

    p = argparse.ArgumentParser(
        prog="python -m backend.mask_broker.audit",
        description="Check that no linear combination of the released groups isolates one "
        "home or the difference of two (exact rational arithmetic; docs/privacy.md).")
    p.add_argument("logs", nargs="+", type=Path, help="--release-log files of the mask brokers")
    a = p.parse_args(argv)
    for f in a.logs:
        if not f.is_file():
            p.error(f"{f}: no such file")
    span = audit(r["members"] for f in a.logs for r in read_release_log(f))
    v = verdict(span)
    print(json.dumps(v))
    return 1 if v["exposed_homes"] else 0


if __name__ == "__main__":
    sys.exit(main())
